"""RMSNorm (LLaMA's normalisation): divide each row by its root mean square, then scale.

    rstd = 1 / sqrt(mean(x**2, -1) + eps)       x: (..., D)   weight: (D,)
    y    = x * rstd * weight                    y: (..., D)   rstd: (..., 1)

LayerNorm without the centring and without the bias (derivations/layernorm.md).
Derivation: derivations/rmsnorm.md
"""

from typing import NamedTuple

import numpy as np

from ._checks import checking, require_eps, require_float_array, require_last_dim, require_same_dtype, require_shape


class RMSNormCache(NamedTuple):
    """What rmsnorm_backward needs (the kernel returns this same cache: views of its rows)."""

    x: np.ndarray        # (..., D) the input
    rstd: np.ndarray     # (..., 1) 1 / sqrt(mean(x**2, -1) + eps)
    weight: np.ndarray   # (D,)


def rmsnorm_forward(x, weight, eps):
    """y = x / sqrt(mean(x**2, -1) + eps) * weight.  Returns (y, RMSNormCache(x, rstd, weight))."""
    if checking.get():
        eps = check_rmsnorm_args(x, weight, eps)
    mean_square = np.mean(x * x, axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(mean_square + eps)                # (..., 1)
    y = x * rstd * weight                                  # (..., D)
    return y, RMSNormCache(x, rstd, weight)


def check_rmsnorm_args(x, weight, eps):
    """The forward's argument checks (shared with the kernel); returns eps in x's dtype."""
    require_float_array("x", x)
    require_float_array("weight", weight, ndim=1)
    require_last_dim("x", x, weight.shape[0], "weight.shape[0] (the normalised size D)")
    require_same_dtype(x=x, weight=weight)
    eps = require_eps(eps, x.dtype)
    return eps


def rmsnorm_backward(dy, cache):
    """Returns (dx, dweight).

    xhat = x * rstd;  dxhat = dy * weight
    dx = rstd * (dxhat - xhat * mean(dxhat * xhat, -1))
    dweight = sum over all rows of dy * xhat
    """
    x, rstd, weight = cache
    if checking.get():
        require_shape("dy", dy, x.shape, "the shape of x", dtype=x.dtype)
    xhat = x * rstd                                                   # (..., D)
    dxhat = dy * weight                                               # (..., D)
    dweight = np.sum((dy * xhat).reshape(-1, x.shape[-1]), axis=0)   # (D,)
    # rstd depends on every x in the row: that coupling is the projection term.
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))  # (..., D)
    return dx, dweight
