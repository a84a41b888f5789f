"""LayerNorm (article §4.2): centre each row, divide by its standard deviation, then scale and shift.

    mean = mean(x, -1)                      x: (..., D)   weight, bias: (D,)
    var  = mean((x - mean)**2, -1)          mean, var, rstd: (..., 1)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = xhat * weight + bias             y: (..., D)

Two backwards that must agree: `layernorm_backward`, the vectorised closed form, and
`layernorm_backward_stepwise`, the chain rule taken literally through xhat, var and mean.
Derivation: derivations/layernorm.md
"""

from typing import NamedTuple

import numpy as np

from ._checks import require_float_array, require_last_dim, require_same_dtype, require_shape
from .rmsnorm import check_rmsnorm_args


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs: mean and rstd, one number per row (xhat is recomputed)."""

    x: np.ndarray        # (..., D)
    mean: np.ndarray     # (..., 1)
    rstd: np.ndarray     # (..., 1) 1 / sqrt(var + eps)
    weight: np.ndarray   # (D,)


def layernorm_forward(x, weight, bias, eps):
    """y = (x - mean) / sqrt(var + eps) * weight + bias.  Returns (y, LayerNormCache(x, mean, rstd, weight))."""
    eps = check_rmsnorm_args(x, weight, eps)          # x, weight and eps as RMSNorm's; then the bias
    require_float_array("bias", bias, ndim=1)
    require_last_dim("bias", bias, weight.shape[0], "weight.shape[0] (the normalised size D)")
    require_same_dtype(x=x, weight=weight, bias=bias)
    # §4.2.1: mean and variance over the last axis (biased variance, divided by D as in PyTorch)
    mean = np.mean(x, axis=-1, keepdims=True)                  # (..., 1)
    x_centered = x - mean                                      # (..., D)
    var = np.mean(x_centered * x_centered, axis=-1, keepdims=True)  # (..., 1)
    # §4.2.2: normalise, then the affine map
    rstd = 1.0 / np.sqrt(var + eps)                            # (..., 1)
    xhat = x_centered * rstd                                   # (..., D)
    y = xhat * weight + bias                                   # (..., D)
    # As in llm.c, keep mean and rstd (one number per row) and recompute xhat in backward.
    return y, LayerNormCache(x, mean, rstd, weight)


def layernorm_backward(dy, cache):
    """Returns (dx, dweight, dbias), the closed form of derivations/layernorm.md:

    dxhat = dy * weight
    dx = rstd * (dxhat - mean(dxhat, -1) - xhat * mean(dxhat * xhat, -1))
    """
    x, mean, rstd, weight = cache
    require_shape("dy", dy, x.shape, "the shape of x")
    D = x.shape[-1]
    xhat = (x - mean) * rstd                                           # (..., D)
    dbias = np.sum(dy.reshape(-1, D), axis=0)                          # (D,)
    dweight = np.sum((dy * xhat).reshape(-1, D), axis=0)               # (D,)
    dxhat = dy * weight                                                # (..., D)
    dx = rstd * (dxhat
                 - np.mean(dxhat, axis=-1, keepdims=True)              # from the mean
                 - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))  # from the variance
    return dx, dweight, dbias


def layernorm_backward_stepwise(dy, cache):
    """Returns (dx, dweight, dbias) by the chain rule, one forward line at a time, in reverse (§4.2.3).

    Slower and more memory-hungry than `layernorm_backward`; here so the closed form can be checked.
    """
    x, mean, rstd, weight = cache
    require_shape("dy", dy, x.shape, "the shape of x")
    D = x.shape[-1]
    x_centered = x - mean                                              # (..., D)
    xhat = x_centered * rstd                                           # (..., D)
    # y = xhat * weight + bias
    dbias = np.sum(dy.reshape(-1, D), axis=0)                          # (D,)
    dweight = np.sum((dy * xhat).reshape(-1, D), axis=0)               # (D,)
    dxhat = dy * weight                                                # (..., D)
    # xhat = (x - mean) * rstd,  rstd = (var + eps)**(-1/2)  =>  d rstd / d var = -rstd**3 / 2
    drstd = np.sum(dxhat * x_centered, axis=-1, keepdims=True)         # (..., 1)
    dvar = drstd * (-0.5 * rstd**3)                                    # (..., 1)
    dx_centered = dxhat * rstd                                         # (..., D), the direct path
    # var = mean(x_centered**2)  =>  d var / d x_centered_j = 2 * x_centered_j / D
    dx_centered = dx_centered + dvar * 2.0 * x_centered / D
    # x_centered = x - mean: x_j reaches x_centered_j directly, and every x_centered_i through mean
    dmean = -np.sum(dx_centered, axis=-1, keepdims=True)               # (..., 1)
    dx = dx_centered + dmean / D                                       # mean = sum(x) / D
    return dx, dweight, dbias

