"""The embedding's backward scatter-add as a plain numba loop instead of np.add.at, which is ~100x
slower.  The forward lookup is NumPy's own (a row copy per token, nothing to fuse), so the
reference embedding_forward serves both backends; its cache is what this backward reads.

Same signatures and results as npllama.ops.embedding (derivations/embedding.md).
"""
import numpy as np
from numba import njit

from ..ops.embedding import check_embedding_backward_args


def embedding_backward(dout, cache):
    """Returns dweight (V, D): row v is the sum of dout over the positions where tokens == v."""
    tokens, weight_shape, dtype = check_embedding_backward_args(dout, cache)
    dweight = np.zeros(weight_shape, dtype=dtype)                          # (V, D)
    dout_rows = np.ascontiguousarray(dout, dtype=dtype).reshape(-1, weight_shape[1])
    _scatter_add_rows(tokens.reshape(-1).astype(np.int64), dout_rows, dweight)
    return dweight


@njit(cache=True, error_model="numpy", nogil=True)
def _scatter_add_rows(ids, rows, table):
    """table[ids[n]] += rows[n] for every n, repeated ids accumulating (one thread: no races)."""
    for n in range(ids.size):
        target = table[ids[n]]
        source = rows[n]
        for i in range(source.size):
            target[i] += source[i]
