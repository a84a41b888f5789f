"""RoPE kernels: one pass, reading the heads straight out of the projection's layout.

Same signatures and results as npllama.ops.rope (derivations/rope.md), Hugging Face's
rotate_half convention: the pair (x[i], x[i + half]) is rotated by the angle of position t.

    y[..., i]        = x[..., i] * cos[t, i]               - x[..., i + half] * sin[t, i]
    y[..., i + half] = x[..., i + half] * cos[t, i + half] + x[..., i] * sin[t, i + half]

Layouts (the values are the reference's; only where they sit in memory differs):
  forward  reads x in any strides (the model passes (B, H, T, hd) views of a (B, T, H*hd)
           projection) and writes y contiguous (B, H, T, hd), the layout attention's matrix
           products want;
  backward writes dx in (B, T, H, hd) memory and returns it as a (B, H, T, hd) view, so the
           model's merge of the heads back to (B, T, H*hd) is a free reshape, not a copy.
"""
import math

import numpy as np
from numba import njit, prange

from ..ops._checks import checking
from ..ops.rope import RopeCache, check_rope_args, check_rope_backward_args


def rope_forward(x, cos, sin):
    """y = x * cos + rotate_half(x) * sin.   x: (..., T, head_dim); cos, sin: (T, head_dim)."""
    if checking.get():   # off inside Llama's public methods, which checked once
        check_rope_args(x, cos, sin)
    x_4d = _as_4d(x)
    x_rows, x_time_major = _contiguous_rows(x_4d)
    y = np.empty(x_4d.shape, dtype=x.dtype)              # (B, H, T, hd), contiguous
    _rope_rotate(x_rows, x_time_major, cos, sin, y, False, False)
    return y.reshape(x.shape), RopeCache(cos, sin)


def rope_backward(dy, cache):
    """dx = dy * cos - rotate_half(dy * sin), the inverse rotation."""
    cos, sin = cache
    if checking.get():
        check_rope_backward_args(dy, cos)
    dy = np.asarray(dy)
    dy_4d = _as_4d(dy.astype(cos.dtype, copy=False))
    dy_rows, dy_time_major = _contiguous_rows(dy_4d)
    B, H, T, hd = dy_4d.shape
    dx_memory = np.empty((B, T, H, hd), dtype=cos.dtype)  # (B, T, H, hd)
    _rope_rotate(dy_rows, dy_time_major, cos, sin, dx_memory, True, True)
    dx = dx_memory.transpose(0, 2, 1, 3)                  # (B, H, T, hd) view
    return dx if dy.ndim == 4 else dx.reshape(dy.shape)


def _as_4d(x):
    """(..., T, hd) -> (B, H, T, hd) without copying when x already has 4 axes."""
    if x.ndim == 4:
        return x
    # the leading count spelled out: reshape cannot infer a -1 when T or head_dim is 0
    return x.reshape((math.prod(x.shape[:-2]), 1) + x.shape[-2:])


def _contiguous_rows(x4):
    """A C-contiguous array holding x4's (B, H, T, hd) values, and whether it is laid out
    (B, T, H, hd) (time-major: x4 is a head-split view of a projection) or (B, H, T, hd)."""
    if x4.flags.c_contiguous:
        return x4, False
    time_major = x4.transpose(0, 2, 1, 3)
    if time_major.flags.c_contiguous:
        return time_major, True
    return np.ascontiguousarray(x4), False


@njit(cache=True, error_model="numpy", nogil=True)
def _rope_rotate(x, x_time_major, cos, sin, y, y_time_major, inverse):
    """y = R(t) x per (b, h, t) row, or the transposed rotation R(t)^T x when inverse.

    x, y are C-contiguous, laid out (B, T, H, hd) if *_time_major else (B, H, T, hd)."""
    if x_time_major:
        B, T, H, hd = x.shape
    else:
        B, H, T, hd = x.shape
    half = hd // 2
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        for t in range(T):
            xr = x[b, t, h] if x_time_major else x[b, h, t]
            yr = y[b, t, h] if y_time_major else y[b, h, t]
            cos_t, sin_t = cos[t], sin[t]
            if inverse:  # dx1 = dy1 cos1 + dy2 sin2,  dx2 = dy2 cos2 - dy1 sin1
                for i in range(half):
                    x1, x2 = xr[i], xr[i + half]
                    yr[i] = x1 * cos_t[i] + x2 * sin_t[i + half]
                    yr[i + half] = x2 * cos_t[i + half] - x1 * sin_t[i]
            else:
                _rotate(xr, cos_t, sin_t, yr)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")  # a call per row costs 5x here
def _rotate(x, cos_t, sin_t, y):
    """One head's vector at one position: y1 = x1 cos1 - x2 sin1,  y2 = x2 cos2 + x1 sin2
    (x, y: (head_dim,) in any strides; FastDecoder rotates q and k with it too)."""
    half = x.shape[0] // 2
    for i in range(half):
        x1, x2 = x[i], x[i + half]
        y[i] = x1 * cos_t[i] - x2 * sin_t[i]
        y[i + half] = x2 * cos_t[i + half] + x1 * sin_t[i + half]
