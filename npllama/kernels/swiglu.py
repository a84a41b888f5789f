"""SwiGLU kernels: the projections in BLAS, silu(gate) * up and its derivative in one numba pass.

Same signatures and results as npllama.ops.swiglu (derivations/swiglu.md):

    gate = x W_gate^T    up = x W_up^T    act = silu(gate) * up    out = act W_down^T

swiglu_forward is registered as a whole (the reference composes it from linear and
swiglu_act directly, not through the backend).  gate and up are written side by side into one
(N, 2F) array, [gate | up], by two products with W_gate and W_up as they are, so backward forms
[dgate | dup] in one pass and both weight gradients in one product.  (Stacking W_gate and W_up
into one (2F, D) matrix for a single product was slower at every row count measured, 1 to 1024
rows at the m42m shape: the copy of 2FD numbers cost more than one tall product saved, and at
one row -- decoding -- it tripled the bytes read.)  Caches keep gate and up only; backward
recomputes sigmoid(gate) in the same pass that forms dgate and dup.
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..ops._checks import checking, require_kernel_cache, require_shape
from ..ops.swiglu import check_swiglu_act_args, check_swiglu_args
from ._simd import exp_nonpositive


class FusedSwiGLUCache(NamedTuple):
    """What this kernel's swiglu_backward needs.  N = the number of rows (all leading axes)."""

    x_rows: np.ndarray      # (N, D)
    gate_up: np.ndarray     # (N, 2F) = [gate | up]
    act: np.ndarray         # (N, F) silu(gate) * up
    w_gate: np.ndarray      # (F, D)
    w_up: np.ndarray        # (F, D)
    w_down: np.ndarray      # (D, F)
    shape: tuple            # (..., D) of x

    def intermediates(self) -> dict:
        """gate, up and act, shaped (..., F) as the reference's."""
        F = self.act.shape[1]
        lead = self.shape[:-1]
        return {"gate": self.gate_up[:, :F].reshape(*lead, F), "up": self.gate_up[:, F:].reshape(*lead, F),
                "act": self.act.reshape(*lead, F)}


def swiglu_act_forward(gate, up):
    """act = silu(gate) * up, elementwise.  Returns (act, cache)."""
    check_swiglu_act_args(gate, up)
    gate, up = np.ascontiguousarray(gate), np.ascontiguousarray(up)
    act = np.empty_like(gate)
    _silu_mul(gate.reshape(-1), up.reshape(-1), act.reshape(-1))
    return act, (gate, up)


def swiglu_act_backward(dact, cache):
    """Returns (dgate, dup):  dgate = dact * up * silu'(gate),  dup = dact * silu(gate)."""
    gate, up = cache
    require_shape("dact", dact, gate.shape, "the shape of gate", dtype=gate.dtype)
    dact = np.ascontiguousarray(dact, dtype=gate.dtype)
    dgate, dup = np.empty_like(gate), np.empty_like(gate)
    _silu_mul_backward(dact.reshape(-1), gate.reshape(-1), up.reshape(-1), dgate.reshape(-1),
                       dup.reshape(-1))
    return dgate, dup


def swiglu_forward(x, w_gate, w_up, w_down):
    """out = (silu(x W_gate^T) * (x W_up^T)) W_down^T.   Returns (out, cache)."""
    if checking.get():   # off inside Llama's public methods, which checked once
        check_swiglu_args(x, w_gate, w_up, w_down)
    F, D = w_gate.shape
    x_rows = np.ascontiguousarray(x).reshape(-1, D)              # (N, D)
    gate_up = np.empty((x_rows.shape[0], 2 * F), dtype=x.dtype)  # (N, 2F) = [gate | up]
    np.matmul(x_rows, w_gate.T, out=gate_up[:, :F])
    np.matmul(x_rows, w_up.T, out=gate_up[:, F:])
    act = np.empty((x_rows.shape[0], F), dtype=x.dtype)
    _silu_mul_halves(gate_up, act)
    out = act @ w_down.T                                         # (N, D)
    return out.reshape(x.shape), FusedSwiGLUCache(x_rows, gate_up, act, w_gate, w_up, w_down, x.shape)


def swiglu_backward(dout, cache):
    """Returns (dx, dw_gate, dw_up, dw_down)."""
    require_kernel_cache("swiglu", cache, FusedSwiGLUCache)
    x_rows, gate_up, act, w_gate, w_up, w_down, shape = cache
    if checking.get():
        require_shape("dout", dout, shape, "the shape of x", dtype=x_rows.dtype)
    F = act.shape[1]
    dout_rows = np.ascontiguousarray(dout, dtype=x_rows.dtype).reshape(-1, shape[-1])  # (N, D)
    dw_down = dout_rows.T @ act                                  # (D, F)
    dact = dout_rows @ w_down                                    # (N, F)
    d_gate_up = np.empty_like(gate_up)                           # (N, 2F) = [dgate | dup]
    _silu_mul_halves_backward(dact, gate_up, d_gate_up)
    dx = d_gate_up[:, :F] @ w_gate                               # (N, D): both branches summed
    dx += d_gate_up[:, F:] @ w_up
    dw_gate_up = d_gate_up.T @ x_rows                            # (2F, D)
    return dx.reshape(shape), dw_gate_up[:F], dw_gate_up[F:], dw_down


@njit(cache=True, error_model="numpy", nogil=True)
def _sigmoid(z, one):
    """1 / (1 + exp(-z)), exp only ever of -|z| <= 0 so it cannot overflow.  one: 1 in z's dtype."""
    e = exp_nonpositive(-abs(z))
    return (one if z >= 0 else e) / (one + e)


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_times(z, u, one):
    """silu(z) * u for one entry (the forward of every loop below)."""
    return z * _sigmoid(z, one) * u


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_times_grads(z, u, da, one):
    """(dgate, dup) for one entry: da * u * s * (1 + z (1 - s)) and da * z * s, s = sigmoid(z)."""
    s = _sigmoid(z, one)
    return da * u * (s * (one + z * (one - s))), da * (z * s)


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_mul(gate, up, act):
    """act = gate * sigmoid(gate) * up, elementwise over flat arrays."""
    one = gate.dtype.type(1)
    for i in prange(gate.size):
        act[i] = _silu_times(gate[i], up[i], one)


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_mul_backward(dact, gate, up, dgate, dup):
    """dgate, dup of act = silu(gate) * up, elementwise over flat arrays."""
    one = gate.dtype.type(1)
    for i in prange(gate.size):
        dgate[i], dup[i] = _silu_times_grads(gate[i], up[i], dact[i], one)


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_mul_halves(gate_up, act):
    """act = silu(gate) * up for gate_up (N, 2F) = [gate | up];  act: (N, F)."""
    N, F = act.shape
    one = act.dtype.type(1)
    for n in prange(N):
        gate, up, out = gate_up[n, :F], gate_up[n, F:], act[n]
        for i in range(F):
            out[i] = _silu_times(gate[i], up[i], one)


@njit(cache=True, error_model="numpy", nogil=True)
def _silu_mul_halves_backward(dact, gate_up, d_gate_up):
    """d_gate_up (N, 2F) = [dgate | dup] from dact (N, F) and gate_up (N, 2F) = [gate | up]."""
    N, F = dact.shape
    one = dact.dtype.type(1)
    for n in prange(N):
        gate, up, da = gate_up[n, :F], gate_up[n, F:], dact[n]
        dgate, dup = d_gate_up[n, :F], d_gate_up[n, F:]
        for i in range(F):
            dgate[i], dup[i] = _silu_times_grads(gate[i], up[i], da[i], one)
