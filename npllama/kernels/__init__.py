"""Numba versions of the hot loops, with the same signatures as their references in npllama.ops.

KERNELS maps an op function's name (e.g. "rmsnorm_forward") to its kernel; npllama.backend
swaps them in when the "numba" backend is in force.  Each is tested equal to its reference
(tests/kernels/).  A kernel's forward and backward come as a pair: the cache one returns is
only ever read by the other, so its format may differ from the reference's.

Matrix products stay in BLAS (NumPy's matmul); the kernels fuse what lies between them, and
shape the products so that BLAS gets few large ones (linear.py: one product over all B*T rows
instead of NumPy's one per batch row).

Every njit has cache=True (compiled once, then loaded from __pycache__), nogil=True (threads
that each train on a slice of the batch run the kernels side by side: npllama/parallel.py) and
error_model="numpy" (no Python division-by-zero checks, which would stop LLVM from vectorising
the loops), and no fast-math flags except 'reassoc'/'contract' on the row sums in _simd.py, so
NaN, Inf and -inf masks keep their meaning.

Threads: row loops are written with `prange` (their iterations are independent), but compiled
with parallel=False.  Measured on this 2-core machine, a training step got slower, not faster,
with parallel kernels: OpenBLAS's worker thread spins between matrix products and numba's
threads spin after each parallel loop, and each steals the core the other needs.  The two cores
go to BLAS, where nearly all the time is.  (parallel=True on one kernel is a one-word experiment.)
Attention split over two Python worker threads, which sleep when idle, was faster on its own
and still no faster in a training step (benchmarks/README.md has the numbers).  What does use
both cores is one level up: npllama/parallel.py splits a training batch's rows over threads,
each running whole steps with BLAS on one thread.

Not ops, and so not in KERNELS: `adamw.adamw_update` (one pass of the AdamW update, for
npllama.optim), `gradients.abs_max` and `gradients.weighted_sum_into` (optim's check of every
gradient before an update; npllama.parallel's sum of a split batch's gradients), `decode.FastDecoder`
(batch-1 decoding with a preallocated KV cache), `memory.keep_freed_memory` (stop glibc from
faulting freed blocks back in every training step) with `memory.empty_like_same_page_offset` (an
output placed so that a kernel's loads and stores do not falsely collide), and `precompile` (on a cold cache, a helper process compiles the kernels while a first training
run takes its first steps on the NumPy references).
"""
import hashlib
from pathlib import Path


def _drop_stale_numba_cache() -> None:
    """Delete numba's cached machine code here when any kernel source file changed.

    Numba keys each cached function on its own file only, but kernels inline helpers from other
    files (_simd.py's exp and row max, swiglu.py's SiLU in decode.py): an edit there would
    leave stale code in the cache.  One hash over all the sources catches every such edit."""
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
    cache_dir = here / "__pycache__"
    stamp = cache_dir / "kernel_sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for cached in [*cache_dir.glob("*.nbi"), *cache_dir.glob("*.nbc")]:
            cached.unlink(missing_ok=True)
        cache_dir.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: numba then caches elsewhere or not at all
        pass


_drop_stale_numba_cache()

from .compile_notice import install as _install_compile_notice  # noqa: E402

_install_compile_notice()  # a line on stderr if a kernel must be compiled (a cold cache)

from . import attention, cross_entropy, embedding, linear, rmsnorm, rope, softmax, swiglu  # noqa: E402

KERNELS: dict = {
    "embedding_backward": embedding.embedding_backward,
    "linear_forward": linear.linear_forward,
    "linear_backward": linear.linear_backward,
    "rmsnorm_forward": rmsnorm.rmsnorm_forward,
    "rmsnorm_backward": rmsnorm.rmsnorm_backward,
    "rope_forward": rope.rope_forward,
    "rope_backward": rope.rope_backward,
    "softmax_forward": softmax.softmax_forward,
    "softmax_backward": softmax.softmax_backward,
    "attention_forward": attention.attention_forward,
    "attention_backward": attention.attention_backward,
    "swiglu_act_forward": swiglu.swiglu_act_forward,
    "swiglu_act_backward": swiglu.swiglu_act_backward,
    "swiglu_forward": swiglu.swiglu_forward,
    "swiglu_backward": swiglu.swiglu_backward,
    "cross_entropy_forward": cross_entropy.cross_entropy_forward,
    "cross_entropy_backward": cross_entropy.cross_entropy_backward,
}
