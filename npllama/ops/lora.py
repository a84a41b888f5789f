"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al. 2021; article §9.2).

    y = x W^T + scaling * ((x * dropout_mask) A^T) B^T

    x: (..., in)   W: (out, in) frozen   lora_A: (r, in)   lora_B: (out, r)   y: (..., out)

The layouts are PEFT's: lora_A is an nn.Linear(in, r) weight, lora_B an nn.Linear(r, out) weight,
so (x A^T) B^T = x (B A)^T and the update to W is scaling * B A, of rank at most r.  PEFT sets
scaling = lora_alpha / r.  Dropout acts on the adapter's input only (never on the frozen path);
`dropout_mask` is None (no dropout) or an array shaped like x holding 0 for a dropped entry and
1 / (1 - p) for a kept one (inverted dropout, as torch.nn.Dropout in training mode).

The base weight is frozen, so backward returns no gradient for it: (dx, dlora_A, dlora_B).
Derivation: derivations/lora.md
"""
import numbers

import numpy as np

from ._checks import require_float_array, require_same_dtype
from .linear import check_linear_args, linear_weight_grad


def lora_forward(x, weight, lora_A, lora_B, scaling, dropout_mask=None):
    """y = x @ weight.T + scaling * ((x * dropout_mask) @ lora_A.T) @ lora_B.T.  Returns (y, cache)."""
    check_lora_args(x, weight, lora_A, lora_B, scaling, dropout_mask)
    x_drop = x if dropout_mask is None else x * dropout_mask  # (..., in), the adapter's input
    lora_hidden = x_drop @ lora_A.T                           # (..., r), the low-rank bottleneck
    y = x @ weight.T + scaling * (lora_hidden @ lora_B.T)     # (..., out)
    cache = (x_drop, weight, lora_A, lora_B, x.dtype.type(scaling), dropout_mask, lora_hidden)
    return y, cache


def lora_backward(dy, cache):
    """Returns (dx, dlora_A, dlora_B); the frozen weight gets no gradient."""
    x_drop, weight, lora_A, lora_B, scaling, dropout_mask, lora_hidden = cache
    d_lora_out = scaling * dy                                 # (..., out), into the adapter branch
    dlora_B = linear_weight_grad(d_lora_out, lora_hidden)     # (out, r)
    d_lora_hidden = d_lora_out @ lora_B                       # (..., r)
    dlora_A = linear_weight_grad(d_lora_hidden, x_drop)       # (r, in)
    dx_drop = d_lora_hidden @ lora_A                          # (..., in)
    if dropout_mask is not None:
        dx_drop = dx_drop * dropout_mask                      # x_drop = x * mask: the mask again
    dx = dy @ weight + dx_drop                                # frozen path + adapter path
    return dx, dlora_A, dlora_B


def check_lora_args(x, weight, lora_A, lora_B, scaling, dropout_mask):
    """lora_linear_forward's checks: the frozen linear's, lora_A (r, in) and lora_B (out, r) of x's dtype,
    a finite real scaling, and a float dropout mask of x's shape and dtype, or None."""
    check_linear_args(x, weight)                              # the frozen layer's own checks
    require_float_array("lora_A", lora_A, ndim=2)
    require_float_array("lora_B", lora_B, ndim=2)
    require_same_dtype(x=x, weight=weight, lora_A=lora_A, lora_B=lora_B)
    out_features, in_features = weight.shape
    rank = lora_A.shape[0]
    if lora_A.shape[1] != in_features:
        raise ValueError(f"lora_A must have shape (r, in_features) = (r, {in_features}), got {lora_A.shape}")
    if lora_B.shape != (out_features, rank):
        raise ValueError(f"lora_B must have shape (out_features, r) = ({out_features}, {rank}), "
                         f"got {lora_B.shape}")
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not np.isfinite(scaling):
        raise TypeError(f"scaling must be a finite real number (lora_alpha / r), got {scaling!r}")
    if dropout_mask is not None:
        require_float_array("dropout_mask", dropout_mask)
        require_same_dtype(x=x, dropout_mask=dropout_mask)
        if dropout_mask.shape != x.shape:
            raise ValueError(f"dropout_mask must have the shape of x {x.shape}, got {dropout_mask.shape}")
