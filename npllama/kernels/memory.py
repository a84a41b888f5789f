"""Keep freed memory in the process, so a training step stops paying page faults for it.

A training step allocates and frees the same large arrays every time (activations, gradients,
logits).  glibc's malloc serves big blocks with fresh mmap pages and gives them back on free, or
trims the top of the heap: the next step then takes them back one 4 KiB page fault at a time.
Measured here: ~13,000 page faults per step of the tiny config and ~45,000 for s15m, 10-20% of
the step's wall time, most of it kernel time zeroing pages (benchmarks/README.md).

`keep_freed_memory()` raises glibc's mmap and trim thresholds (mallopt) so freed blocks stay in
the heap and are reused: 0 page faults per step after the first.  The price is that the process
keeps its peak memory until it exits, which is what a training run wants anyway.  It changes the
whole process's allocator, so it is never called on import: a training job calls it once at
start.  On a non-glibc system it does nothing and returns False.
"""
import ctypes
import ctypes.util

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Serve allocations below threshold_bytes from the heap and never trim it.  True if applied."""
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int) or threshold_bytes <= 0:
        raise ValueError(f"threshold_bytes must be a positive int, got {threshold_bytes!r}")
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl, macOS): leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = min(threshold_bytes, 2**31 - 1)
    applied = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return applied and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
