"""Softmax kernels: max, exp, sum and scale of each row in one numba loop over the rows.

Same signatures and results as npllama.ops.softmax (derivations/softmax.md): -inf entries get
probability 0, a row that is entirely -inf gives all zeros.  The cache is p, as in the reference.
"""
import numpy as np
from numba import njit, prange

from ..ops._checks import require_shape
from ..ops.softmax import check_softmax_args, raise_nan_or_posinf
from ._simd import exp_nonpositive, row_dot, row_max, row_sum


def softmax_forward(x, check_values=True):
    """p = softmax(x, axis=-1).  Returns (p, cache = p).  See npllama.ops.softmax."""
    check_softmax_args(x, check_values=False)   # the values: in the pass below
    N = x.shape[-1]
    p = np.empty(x.shape, dtype=x.dtype)
    if _softmax_rows(np.ascontiguousarray(x).reshape(-1, N), p.reshape(-1, N)) and check_values:
        raise_nan_or_posinf()
    return p, p


def softmax_backward(dp, cache):
    """Returns dx = p * (dp - sum(dp * p, -1))."""
    p = cache
    require_shape("dp", dp, p.shape, "the shape of x", dtype=p.dtype)
    N = p.shape[-1]
    dx = np.empty_like(p)
    _softmax_backward_rows(p.reshape(-1, N), np.ascontiguousarray(dp, dtype=p.dtype).reshape(-1, N),
                           dx.reshape(-1, N))
    return dx


@njit(cache=True, error_model="numpy", nogil=True)
def _softmax_rows(x, p):
    """p[r] = softmax(x[r]) for each row of x (N, V).  Returns how many rows hold a NaN or +inf
    (the reference refuses those before it starts; here the pass that reads x finds them)."""
    one = x.dtype.type(1)
    bad_rows = 0
    for r in prange(x.shape[0]):
        x_row, p_row = x[r], p[r]
        row_max_value = row_max(x_row)   # +inf if the row holds +inf, NaN if a (positive) NaN
        if row_max_value == -np.inf:     # fully masked: all zeros, not 0/0 ...
            p_row[:] = 0
            for i in range(x_row.size):  # ... unless a NaN with its sign bit set hides there
                if x_row[i] != x_row[i]:
                    bad_rows += 1
                    break
            continue
        for i in range(x_row.size):
            p_row[i] = exp_nonpositive(x_row[i] - row_max_value)
        total = row_sum(p_row)           # NaN if any x was NaN or the max was +inf
        if not total < np.inf:
            bad_rows += 1
        inv_total = one / total
        for i in range(p_row.size):
            p_row[i] = p_row[i] * inv_total
    return bad_rows


@njit(cache=True, error_model="numpy", nogil=True)
def _softmax_backward_rows(p, dp, dx):
    """dx[r] = p[r] * (dp[r] - sum(dp[r] * p[r])) for each row."""
    for r in prange(p.shape[0]):
        p_row, dp_row, dx_row = p[r], dp[r], dx[r]
        row_term = row_dot(dp_row, p_row)
        for i in range(p_row.size):
            dx_row[i] = p_row[i] * (dp_row[i] - row_term)
