"""Linear layer without bias, weight laid out (out_features, in_features) as in PyTorch.

    y = x W^T          x: (..., in)   W: (out, in)   y: (..., out)

Derivation: derivations/linear.md
"""

from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_last_dim, require_same_dtype, require_shape


class LinearCache(NamedTuple):
    """What linear_backward needs (the kernel's cache has the same fields)."""

    x: np.ndarray        # (..., in) the input
    weight: np.ndarray   # (out, in)


def linear_forward(x, weight):
    """y = x @ weight.T.  Returns (y, LinearCache(x, weight))."""
    if checking.get():
        check_linear_args(x, weight)
    y = x @ weight.T  # (..., out)
    return y, LinearCache(x, weight)


def linear_backward(dy, cache):
    """Returns (dx, dweight):  dx = dy W,  dW = sum over rows of dy^T x."""
    x, weight = cache
    if checking.get():
        check_linear_backward_args(dy, x, weight)
    dx = dy @ weight                                                    # (..., in)
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in), summed over rows
    return dx, dweight


def linear_weight_grad(dy, x):
    """dL/dW of y = x W^T: the outer products dy^T x summed over every leading position.
    (..., out), (..., in) -> (out, in).  linear_backward's dweight line, for LoRA's adapters."""
    return dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])


def check_linear_args(x, weight):
    """The forward's argument checks (shared with the kernel)."""
    require_float_array("x", x)
    require_float_array("weight", weight, ndim=2)
    if 0 in weight.shape:
        raise ValueError(f"weight must have at least one output and one input feature, got shape "
                         f"{weight.shape} (out_features, in_features)")
    require_last_dim("x", x, weight.shape[1], "weight.shape[1] (in_features)")
    require_same_dtype(x=x, weight=weight)


def check_linear_backward_args(dy, x, weight):
    """dy must have the output's shape (shared with the kernel)."""
    require_shape("dy", dy, x.shape[:-1] + weight.shape[:1], "the shape of y = x @ weight.T", dtype=x.dtype)
