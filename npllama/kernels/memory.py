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

`empty_like_same_page_offset(like)` is the other half of that bargain.  From the heap, a big
block starts wherever the last free left room, at any multiple of 16 bytes within a 4 KiB page;
glibc's mmap put every one of them 16 bytes into a fresh page.  A kernel that reads x[i] and
writes out[i] stalls when out starts a few bytes *after* x within a page ("4K aliasing": the
CPU compares only an address's low 12 bits to decide whether a load may pass an earlier store,
so each load of x[i + 4] waits for the store to out[i]).  Measured on the Intel Xeon, the
cross-entropy kernel over m42m's (1024, 32000) logits: 175 ms when dlogits sat 16 bytes after
the logits in the page, 55-67 ms when both sat at the same offset.  An output allocated with
this helper starts at its input's offset, so a load and a store that meet in the low 12 bits are
1024 float32 apart, further than the CPU ever looks ahead.
"""
import ctypes
import ctypes.util

import numpy as np

PAGE_BYTES = 4096   # the span of the address bits the CPU compares (x86: 12)

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


def empty_like_same_page_offset(like: np.ndarray, dtype=None) -> np.ndarray:
    """An uninitialised C-contiguous array of like's shape (and dtype, unless given) that starts
    at the same offset within a 4 KiB page as `like` does (module docstring: 4K aliasing).
    It is a view of a buffer one page longer than it needs; writing to it is safe."""
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    nbytes = like.size * dtype.itemsize
    buffer = np.empty(nbytes + PAGE_BYTES, dtype=np.uint8)
    shift = (like.ctypes.data - buffer.ctypes.data) % PAGE_BYTES
    if shift % dtype.itemsize:       # like is not aligned to its own items: plain alignment then
        shift = (-buffer.ctypes.data) % dtype.itemsize
    return buffer[shift:shift + nbytes].view(dtype).reshape(like.shape)
