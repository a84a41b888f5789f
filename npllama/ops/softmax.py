"""Softmax along the last axis (article §4.1.2: attention scores -> attention probabilities).

    p = exp(x - max(x)) / sum(exp(x - max(x)))      x, p: (..., N)

Entries of x may be -inf (masked out): they get probability 0.  A row that is entirely -inf
(every position masked) gives all zeros rather than 0/0 = NaN.
Derivation: derivations/softmax.md
"""
import numpy as np

from ._checks import checking, require_float_array, require_shape


def softmax_forward(x, check_values=True):
    """p = softmax(x, axis=-1), max-subtracted so exp never overflows.  Returns (p, cache = p).

    check_values=False lets NaN and +inf through (their rows come out NaN) instead of raising:
    attention passes its scores so, since a diverging model's scores overflow and the NaN must
    reach the loss, where the training loop reports it (as on the numba backend)."""
    if checking.get():
        check_softmax_args(x, check_values)
    row_max = np.max(x, axis=-1, keepdims=True)                 # (..., 1)
    # A fully masked row has max -inf, and -inf - (-inf) is NaN: shift such rows by 0 instead.
    row_max = np.where(np.isneginf(row_max), 0, row_max).astype(x.dtype, copy=False)
    exps = np.exp(x - row_max)                                  # (..., N), each in [0, 1]
    row_sum = np.sum(exps, axis=-1, keepdims=True)              # (..., 1), >= 1 unless fully masked
    p = exps / np.where(row_sum > 0, row_sum, 1)                # fully masked rows stay 0
    return p, p


def check_softmax_args(x, check_values=True):
    """The forward's argument checks (shared with the kernel, which checks the values itself
    in the pass that reads them: check_values=False)."""
    require_float_array("x", x)
    if x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension, got shape {x.shape}")
    if check_values and not np.all(x < np.inf):  # one pass catches NaN and +inf; -inf is a mask
        raise_nan_or_posinf()


def raise_nan_or_posinf():
    """The error for a softmax input holding NaN or +inf (-inf is a masked entry, and allowed)."""
    raise ValueError("x must not contain NaN or +inf (use -inf to mask an entry)")


def softmax_backward(dp, cache):
    """Returns dx = p * (dp - sum(dp * p, -1)).  Masked entries (p = 0) get dx = 0."""
    p = cache
    if checking.get():
        require_shape("dp", dp, p.shape, "the shape of x", dtype=p.dtype)
    return p * (dp - np.sum(dp * p, axis=-1, keepdims=True))    # (..., N)
