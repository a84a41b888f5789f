"""Token embedding: a table lookup, out = weight[tokens].

    tokens: integer (...) with values in [0, V)   weight: (V, D)   out: (..., D)

The backward is a scatter-add: every position that read row v of the table sends its gradient
back to row v, so a token that occurs several times collects the sum of their gradients.
Derivation: derivations/embedding.md
"""
from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_ids_in_range, require_int_array, require_shape


class EmbeddingCache(NamedTuple):
    """What embedding_backward needs: the ids and the table's shape, not the table itself."""

    tokens: np.ndarray       # (...) int ids in [0, V)
    weight_shape: tuple      # (V, D)
    dtype: np.dtype


def embedding_forward(tokens, weight):
    """out = weight[tokens].  Returns (out, EmbeddingCache(tokens, weight.shape, weight.dtype))."""
    if checking.get():
        check_embedding_args(tokens, weight)
    out = weight[tokens]  # (..., D): fancy indexing copies, so out never aliases weight
    return out, EmbeddingCache(tokens, weight.shape, weight.dtype)


def check_embedding_args(tokens, weight):
    """embedding_forward's checks: tokens an int array, weight a float (V, D) array, every id in [0, V)."""
    require_int_array("tokens", tokens)
    require_float_array("weight", weight, ndim=2)
    vocab_size = weight.shape[0]
    require_ids_in_range(tokens, vocab_size, "tokens contains id {id}, outside [0, V) with V = "
                         f"{vocab_size} (the embedding table has V rows)")


def embedding_backward(dout, cache):
    """Returns dweight (V, D): row v is the sum of dout over the positions where tokens == v."""
    tokens, weight_shape, dtype = cache
    if checking.get():
        check_embedding_backward_args(dout, cache)
    dweight = np.zeros(weight_shape, dtype=dtype)  # (V, D)
    # np.add.at, not dweight[ids] += ...: plain fancy-index assignment keeps only one of the
    # repeated ids, silently dropping the gradient of the others.
    np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, weight_shape[1]))
    return dweight


def check_embedding_backward_args(dout, cache):
    """dout must have the output's shape (shared with the kernel); returns the cache's parts."""
    tokens, weight_shape, dtype = cache
    expected = tokens.shape + (weight_shape[1],)
    require_shape("dout", dout, expected, "tokens.shape + (D,)", dtype=dtype)   # dtype: the table's
    return tokens, weight_shape, dtype
