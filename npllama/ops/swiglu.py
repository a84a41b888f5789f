"""SwiGLU feed-forward network, LLaMA's MLP (Hugging Face's LlamaMLP).

    gate = x W_gate^T          x: (..., D)   w_gate, w_up: (F, D)   w_down: (D, F)
    up   = x W_up^T
    act  = silu(gate) * up     silu(z) = z * sigmoid(z)
    out  = act W_down^T        out: (..., D)

Derivation: derivations/swiglu.md
"""
from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_same_dtype, require_shape
from .linear import LinearCache


class SwiGLUActCache(NamedTuple):
    """What swiglu_act_backward needs; every field (..., F)."""

    gate: np.ndarray
    up: np.ndarray
    gate_sigmoid: np.ndarray   # sigmoid(gate)
    silu_gate: np.ndarray      # silu(gate) = gate * sigmoid(gate)


class SwiGLUCache(NamedTuple):
    """What swiglu_backward needs: the caches of the four steps, in forward order."""

    gate_proj: LinearCache     # x (..., D), w_gate (F, D)
    up_proj: LinearCache       # x (..., D), w_up (F, D)
    act: SwiGLUActCache        # gate, up, ... (..., F)
    down_proj: LinearCache     # act (..., F), w_down (D, F)

    def intermediates(self) -> dict:
        """gate, up and act (..., F), as this forward computed them."""
        return {"gate": self.act.gate, "up": self.act.up, "act": self.down_proj.x}


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only ever taken of -|z| <= 0."""
    e = np.exp(-np.abs(z))  # in (0, 1]
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def swiglu_act_forward(gate, up):
    """act = silu(gate) * up, elementwise.  gate, up: same shape and dtype.  Returns (act, SwiGLUActCache)."""
    if checking.get():
        check_swiglu_act_args(gate, up)
    gate_sigmoid = sigmoid(gate)
    silu_gate = gate * gate_sigmoid
    act = silu_gate * up
    return act, SwiGLUActCache(gate, up, gate_sigmoid, silu_gate)


def swiglu_act_backward(dact, cache):
    """Returns (dgate, dup):  dgate = dact * up * silu'(gate),  dup = dact * silu(gate),
    with silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))."""
    gate, up, gate_sigmoid, silu_gate = cache
    if checking.get():
        require_shape("dact", dact, gate.shape, "the shape of gate", dtype=gate.dtype)
    dsilu_gate = gate_sigmoid * (1.0 + gate * (1.0 - gate_sigmoid))
    dgate = dact * up * dsilu_gate
    dup = dact * silu_gate
    return dgate, dup


def swiglu_forward(x, w_gate, w_up, w_down):
    """out = (silu(x W_gate^T) * (x W_up^T)) W_down^T.   Returns (out, SwiGLUCache)."""
    if checking.get():
        check_swiglu_args(x, w_gate, w_up, w_down)
    gate = x @ w_gate.T                             # (..., F)
    up = x @ w_up.T                                 # (..., F)
    act, act_cache = swiglu_act_forward(gate, up)   # (..., F)
    out = act @ w_down.T                            # (..., D)
    # the three products' caches are linear_forward's: (input, weight)
    return out, SwiGLUCache(LinearCache(x, w_gate), LinearCache(x, w_up), act_cache, LinearCache(act, w_down))


def check_swiglu_act_args(gate, up):
    """swiglu_act_forward's argument checks (shared with the kernel)."""
    require_float_array("gate", gate)
    require_float_array("up", up)
    require_same_dtype(gate=gate, up=up)
    if gate.shape != up.shape:
        raise ValueError(f"gate and up must have the same shape, got {gate.shape} and {up.shape}")


def check_swiglu_args(x, w_gate, w_up, w_down):
    """The forward's argument checks (shared with the kernel); returns (F, D)."""
    require_float_array("x", x)
    require_float_array("w_gate", w_gate, ndim=2)
    require_float_array("w_up", w_up, ndim=2)
    require_float_array("w_down", w_down, ndim=2)
    require_same_dtype(x=x, w_gate=w_gate, w_up=w_up, w_down=w_down)
    F, D = w_gate.shape
    if 0 in (F, D):
        raise ValueError(f"w_gate must have at least one row (the intermediate size F) and one column (D), "
                         f"got shape {w_gate.shape}")
    if w_up.shape != (F, D):
        raise ValueError(f"w_up must have the shape of w_gate (F, D) = {(F, D)}, got {w_up.shape}")
    if w_down.shape != (D, F):
        raise ValueError(f"w_down must have shape (D, F) = {(D, F)} (transposed w_gate), got {w_down.shape}")
    if x.shape[-1] != D:
        raise ValueError(f"x has last dimension {x.shape[-1]}, expected {D} (w_gate.shape[1])")
    return F, D


def swiglu_backward(dout, cache):
    """Returns (dx, dw_gate, dw_up, dw_down): the forward's steps in reverse, each product y = x W^T
    giving dx = dy W and dW = dy^T x summed over rows (linear.md); x feeds two branches (gate and
    up), so its gradient is the sum of both."""
    (x, w_gate), (_, w_up), act_cache, (act, w_down) = cache
    if checking.get():
        require_shape("dout", dout, x.shape, "the output's shape, as x", dtype=x.dtype)
    D, F = w_down.shape
    # out = act W_down^T
    dact = dout @ w_down                                                   # (..., F)
    dw_down = dout.reshape(-1, D).T @ act.reshape(-1, F)                   # (D, F)
    # act = silu(gate) * up
    dgate, dup = swiglu_act_backward(dact, act_cache)                      # (..., F) each
    # gate = x W_gate^T, up = x W_up^T
    dx = dgate @ w_gate + dup @ w_up                                       # (..., D)
    x_rows = x.reshape(-1, D)                                              # (N, D)
    dw_gate = dgate.reshape(-1, F).T @ x_rows                              # (F, D)
    dw_up = dup.reshape(-1, F).T @ x_rows                                  # (F, D)
    return dx, dw_gate, dw_up, dw_down
