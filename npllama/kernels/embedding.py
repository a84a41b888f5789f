"""Embedding kernels: the lookup is NumPy's own (a row copy per token, nothing to fuse); the
backward scatter-add is a plain numba loop instead of np.add.at, which is ~100x slower.

Same signatures and results as npllama.ops.embedding (derivations/embedding.md).
"""
import numpy as np
from numba import njit

from ..ops._checks import require_float_array, require_int_array


def embedding_forward(tokens, weight):
    """out = weight[tokens].  Returns (out, cache)."""
    require_int_array("tokens", tokens)
    require_float_array("weight", weight, ndim=2)
    vocab_size = weight.shape[0]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)].flat[0]
        raise ValueError(f"tokens contains id {int(bad)}, outside [0, V) with V = {vocab_size} "
                         "(the embedding table has V rows)")
    out = weight[tokens]                                     # (..., D), a copy
    return out, (tokens, weight.shape, weight.dtype)


def embedding_backward(dout, cache):
    """Returns dweight (V, D): row v is the sum of dout over the positions where tokens == v."""
    tokens, weight_shape, dtype = cache
    expected = tokens.shape + (weight_shape[1],)
    if np.shape(dout) != expected:
        raise ValueError(f"dout has shape {np.shape(dout)}, expected {expected} (tokens.shape + (D,))")
    dweight = np.zeros(weight_shape, dtype=dtype)                          # (V, D)
    dout_rows = np.ascontiguousarray(dout, dtype=dtype).reshape(-1, weight_shape[1])
    _scatter_add_rows(tokens.reshape(-1).astype(np.int64), dout_rows, dweight)
    return dweight


@njit(cache=True, error_model="numpy")
def _scatter_add_rows(ids, rows, table):
    """table[ids[n]] += rows[n] for every n, repeated ids accumulating (one thread: no races)."""
    for n in range(ids.size):
        target = table[ids[n]]
        source = rows[n]
        for i in range(source.size):
            target[i] += source[i]
