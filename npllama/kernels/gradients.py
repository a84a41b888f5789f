"""Passes over whole gradients outside the model, each one trip through memory.

    abs_max(g)                       max |g|: NaN if g holds a NaN, else inf if it holds an inf
    sum_of_squares(g)                sum of g^2, each square and the sum in float64
    weighted_sum_into(a, wa, b, wb)  a = a * wa + b * wb, in place

npllama.optim checks every gradient before an update with max |g|; NumPy's np.max(np.abs(g))
writes a temporary as large as g and reads memory twice.  Its global gradient norm (for
clipping, every step of `npllama train`) squared float32 gradients in float64 through a float64
copy of each: 140-250 ms a step at m42m on one core, ~15 ms here.  npllama.parallel adds the gradients of
a batch split's parts with their weights; NumPy took three passes (scale each part, then add).
At m42m (42M parameters) both together were ~150 ms of one core per training step against
~40 ms here (benchmarks/README.md).  Same results as the NumPy lines, bit for bit: a max is
exact, and the weighted sum rounds each product and then the sum, as NumPy does (no fused
multiply-add: no fast-math flags).  The sum of squares is the exception: like NumPy's dot
product it adds in several lanes at once, in a different order, so the two agree to the
round-off of a long float64 sum (4.5e-14 relative over m42m's 42M entries), not bit for bit.
"""
import numpy as np
from numba import njit

from ._simd import REDUCTION_FLAGS, row_abs_max


def abs_max(g: np.ndarray):
    """max |g| as g's dtype (0 for an empty g)."""
    if g.size == 0:
        return g.dtype.type(0)
    return g.dtype.type(_abs_max_flat(np.ascontiguousarray(g).reshape(-1)))


def sum_of_squares(g: np.ndarray) -> float:
    """sum(g**2) accumulated in float64 (float32 squares summed in float32 lose digits)."""
    if g.size == 0:
        return 0.0
    return float(_sum_of_squares_flat(np.ascontiguousarray(g).reshape(-1)))


def weighted_sum_into(a: np.ndarray, weight_a, b: np.ndarray, weight_b) -> None:
    """a = a * weight_a + b * weight_b in place; a and b C-contiguous, of one shape and dtype; the
    weights are rounded to that dtype first."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must have one shape and dtype, got {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    if not (a.flags.c_contiguous and a.flags.writeable and b.flags.c_contiguous):
        raise ValueError("a must be writeable and C-contiguous and b C-contiguous")
    as_dtype = a.dtype.type
    _weighted_sum_into_flat(a.reshape(-1), as_dtype(weight_a), b.reshape(-1), as_dtype(weight_b))


@njit(cache=True, error_model="numpy", nogil=True)
def _abs_max_flat(g):
    return row_abs_max(g)


@njit(cache=True, error_model="numpy", nogil=True, fastmath=REDUCTION_FLAGS)
def _sum_of_squares_flat(g):
    total = 0.0
    for i in range(g.size):
        x = np.float64(g[i])
        total += x * x
    return total


@njit(cache=True, error_model="numpy", nogil=True)
def _weighted_sum_into_flat(a, weight_a, b, weight_b):
    for i in range(a.size):
        a[i] = a[i] * weight_a + b[i] * weight_b
