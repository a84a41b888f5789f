"""keep_freed_memory: freed blocks are reused instead of being faulted back in page by page."""
import subprocess
import sys
import textwrap

import pytest

from npllama.kernels.memory import keep_freed_memory

FAULTS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "keep":
        from npllama.kernels.memory import keep_freed_memory
        assert keep_freed_memory()
    def faults_of_one_round():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for size in (40 << 20, 3 << 20, 40 << 20):        # allocate, touch, free: like a step
            a = np.empty(size // 8); a.fill(1.0); del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_of_one_round()                                 # the first round faults in any case
    print(min(faults_of_one_round() for _ in range(3)))
""")


def minor_faults(mode):
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_blocks_are_reused_without_page_faults():
    # 83 MiB allocated, touched and freed per round; blocks over 32 MiB are always mmapped and
    # unmapped again by default, so each round faults them in anew (fewer faults where the
    # kernel backs them with 2 MiB huge pages, but never none).
    kept, default = minor_faults("keep"), minor_faults("default")
    assert kept < 10
    assert default > 10 * max(kept, 1)


def test_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold_bytes"):
        keep_freed_memory(0)
    with pytest.raises(ValueError, match="threshold_bytes"):
        keep_freed_memory(1.5)


@pytest.mark.parametrize("offset_bytes", [0, 16, 48, 2000, 4088])
@pytest.mark.parametrize("shape", [(7,), (33, 65), (2, 3, 5)])
def test_empty_like_same_page_offset_starts_where_like_does_within_a_page(offset_bytes, shape):
    """Whatever offset `like` has in its page, the new array has it too (4K aliasing: its docstring)."""
    import numpy as np

    from npllama.kernels.memory import PAGE_BYTES, empty_like_same_page_offset

    size = int(np.prod(shape))
    raw = np.empty(size * 4 + 2 * PAGE_BYTES, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE_BYTES + offset_bytes
    like = raw[start:start + size * 4].view(np.float32).reshape(shape)
    out = empty_like_same_page_offset(like)
    assert out.ctypes.data % PAGE_BYTES == like.ctypes.data % PAGE_BYTES == offset_bytes
    assert out.shape == like.shape and out.dtype == like.dtype
    assert out.flags.c_contiguous and out.flags.writeable
    out[...] = 1.5                                 # the whole array lies inside its buffer
    assert np.all(out == 1.5) and not np.shares_memory(out, like)
    as_int = empty_like_same_page_offset(like, dtype=np.int32)
    assert as_int.dtype == np.int32 and as_int.ctypes.data % PAGE_BYTES == offset_bytes


def test_cross_entropys_gradient_sits_at_the_logits_page_offset():
    """The kernel reads the logits and writes dlogits side by side: allocated to avoid 4K aliasing."""
    import numpy as np

    from npllama.kernels.cross_entropy import cross_entropy_backward, cross_entropy_forward
    from npllama.kernels.memory import PAGE_BYTES

    raw = np.empty(6 * 50 * 4 + 2 * PAGE_BYTES, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE_BYTES + 2000
    logits = raw[start:start + 6 * 50 * 4].view(np.float32).reshape(2, 3, 50)
    logits[...] = np.random.default_rng(0).standard_normal(logits.shape)
    targets = np.array([[1, 2, 3], [4, -100, 6]])
    for _ in range(2):                             # handed over, then recomputed
        _, cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, cache)
        assert dlogits.ctypes.data % PAGE_BYTES == 2000
    dlogits_again = cross_entropy_backward(1.0, cache)
    assert dlogits_again.ctypes.data % PAGE_BYTES == 2000
