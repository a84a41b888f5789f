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
