"""RMSNorm kernels: one pass over each row forward, two backward.

Same signatures and results as npllama.ops.rmsnorm (derivations/rmsnorm.md):

    rstd = 1 / sqrt(mean(x**2, -1) + eps)       y = x * rstd * weight

The cache is the reference's RMSNormCache, x (..., D), rstd (..., 1), weight -- views of the rows
the kernels work on -- so a backward written against the documented cache runs on either side;
backward recomputes xhat = x * rstd on the fly instead of storing it.
"""
import numpy as np
from numba import njit, prange

from ..ops._checks import checking, require_shape
from ..ops.rmsnorm import RMSNormCache, check_rmsnorm_args
from ._simd import row_dot, row_dot3

ROW_CHUNKS = 4


def rmsnorm_forward(x, weight, eps):
    """y = x / sqrt(mean(x**2, -1) + eps) * weight.  Returns (y, cache)."""
    if checking.get():   # off inside Llama's public methods, which checked once
        eps = check_rmsnorm_args(x, weight, eps)
    x_rows = _as_rows(x)                                       # (N, D)
    y = np.empty_like(x_rows)
    rstd = np.empty(x_rows.shape[0], dtype=x.dtype)            # (N,)
    _rmsnorm_forward_rows(x_rows, weight, eps, y, rstd)
    # the reference's cache, shaped as the reference shapes it (views of the rows, no copy): an
    # rmsnorm_backward written against the documented cache (a student's, a use_op override)
    # runs under the kernels too
    return y.reshape(x.shape), RMSNormCache(x_rows.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), weight)


def rmsnorm_backward(dy, cache):
    """Returns (dx, dweight); see npllama.ops.rmsnorm.rmsnorm_backward for the formulas."""
    x, rstd, weight = cache
    shape = x.shape
    if checking.get():
        require_shape("dy", dy, shape, "the shape of x", dtype=x.dtype)
    x_rows, rstd = _as_rows(x), rstd.reshape(-1)                 # (N, D), (N,): views
    dy_rows = _as_rows(np.asarray(dy, dtype=x_rows.dtype))
    dx = np.empty_like(x_rows)
    # Rows in a few chunks, each summing its own dweight (so a prange over chunks has no races).
    # Not numba.get_num_threads(): asking starts numba's OpenMP thread pool, and a second OpenMP
    # runtime in the process slows PyTorch's down ~100x (measured; see benchmarks/README.md).
    n_chunks = min(ROW_CHUNKS, x_rows.shape[0])
    dweight_partial = np.zeros((n_chunks, x_rows.shape[1]), dtype=x_rows.dtype)
    _rmsnorm_backward_rows(dy_rows, x_rows, rstd, weight, dx, dweight_partial)
    return dx.reshape(shape), dweight_partial.sum(axis=0)


def _as_rows(a):
    """(..., D) -> contiguous (N, D) (a view when a is already contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


@njit(cache=True, error_model="numpy", nogil=True)
def _rmsnorm_forward_rows(x, weight, eps, y, rstd):
    N, D = x.shape
    one, size = x.dtype.type(1), x.dtype.type(D)  # typed, so float32 stays float32
    for r in prange(N):
        mean_square = row_dot(x[r], x[r]) / size
        rstd[r] = one / np.sqrt(mean_square + eps)
        for i in range(D):
            y[r, i] = x[r, i] * rstd[r] * weight[i]


@njit(cache=True, error_model="numpy", nogil=True)
def _rmsnorm_backward_rows(dy, x, rstd, weight, dx, dweight_partial):
    N, D = x.shape
    n_chunks = dweight_partial.shape[0]
    size = x.dtype.type(D)
    for chunk in prange(n_chunks):
        dweight = dweight_partial[chunk]
        for r in range(chunk * N // n_chunks, (chunk + 1) * N // n_chunks):
            s = rstd[r]
            # mean(dxhat * xhat) with dxhat = dy * weight, xhat = x * rstd
            projection = row_dot3(dy[r], weight, x[r]) * s / size
            for i in range(D):
                xhat = x[r, i] * s
                dx[r, i] = s * (dy[r, i] * weight[i] - xhat * projection)
                dweight[i] += dy[r, i] * xhat
