"""Rotary position embedding (RoPE), Hugging Face's rotate_half convention.

Each query/key vector of size head_dim is cut into two halves, and entry i of the first half is
paired with entry i of the second half: the pair (x[i], x[i + head_dim/2]) is rotated by the angle
position * inv_freq[i].  (Meta's original checkpoints pair adjacent entries (x[2i], x[2i+1])
instead; converting between the two layouts permutes the q/k projection rows.)

    y = x * cos + rotate_half(x) * sin          x: (..., T, head_dim)   cos, sin: (T, head_dim)

Derivation: derivations/rope.md
"""
import math
from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_int_array, require_same_dtype, require_shape


def rope_inv_freq(head_dim, rope_theta, rope_scaling=None):
    """The rotation frequency of each pair: inv_freq[i] = 1 / rope_theta ** (2i / head_dim).

    rope_scaling: None, or a dict with 'rope_type' 'linear' (needs 'factor'), 'llama3'
    (needs 'factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings') or
    'dynamic', as validated by LlamaConfig.  Returns float64 (head_dim // 2,).
    """
    _require_head_dim(head_dim)
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or not rope_theta > 0:
        raise ValueError(f"rope_theta must be a positive number, got {rope_theta!r}")
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = 1.0 / rope_theta ** (2.0 * i / head_dim)  # (head_dim/2,) from 1 down to ~1/rope_theta
    if rope_scaling is None:
        return inv_freq
    if not isinstance(rope_scaling, dict):
        raise TypeError(f"rope_scaling must be a dict or None, got {type(rope_scaling).__name__}")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type in ("default", "dynamic"):
        # Dynamic NTK scaling raises rope_theta only once a sequence runs past max_position_embeddings
        # (transformers' dynamic_rope_update); npllama never runs one, so its frequencies are plain RoPE's.
        return inv_freq
    if rope_type == "linear":
        # Position interpolation: position p is treated as p / factor.
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope_scaling)
    raise ValueError(f"rope_scaling rope_type must be 'default', 'linear', 'llama3' or 'dynamic', got {rope_type!r}")


def _llama3_inv_freq(inv_freq, rope_scaling):
    """LLaMA-3's frequency-dependent scaling (transformers' _compute_llama3_parameters).

    Pairs that turn slowly (wavelength longer than the original context / low_freq_factor) are
    interpolated by `factor`; pairs that turn fast (wavelength shorter than the original context /
    high_freq_factor) are kept; in between, a linear blend of the two whose weight is linear in 1 / wavelength.
    """
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    original_max = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = original_max / low_freq_factor    # longer wavelengths are fully scaled (by factor)
    high_freq_wavelen = original_max / high_freq_factor  # shorter wavelengths are left unchanged
    wavelen = 2 * math.pi / inv_freq                      # (head_dim/2,) positions per full turn

    smooth = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(wavelen > low_freq_wavelen, inv_freq / factor,
                    np.where(wavelen < high_freq_wavelen, inv_freq, blended))


def rope_cos_sin(positions, head_dim, rope_theta, rope_scaling=None, dtype=np.float64):
    """cos and sin tables (T, head_dim) for the given integer positions (T,).

    Angles are computed in float64 (positions up to ~1e5 times frequencies near 1 lose digits in
    float32) and cast to `dtype` only at the end.  Both halves of a row hold the same angles.
    """
    require_int_array("positions", positions)
    if positions.ndim != 1:
        raise ValueError(f"positions must have 1 dimension (T,), got shape {positions.shape}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    inv_freq = rope_inv_freq(head_dim, rope_theta, rope_scaling)       # (head_dim/2,)
    freqs = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, head_dim/2) angles
    emb = np.concatenate([freqs, freqs], axis=-1)                      # (T, head_dim)
    return np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)


def rotate_half(x):
    """concat(-x2, x1) over the last axis, where x1, x2 are its first and second halves."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([-x2, x1], axis=-1)


class RopeCache(NamedTuple):
    """What rope_backward needs: the rotation, not the input (the map is linear in x)."""

    cos: np.ndarray   # (T, head_dim)
    sin: np.ndarray   # (T, head_dim)


def rope_forward(x, cos, sin):
    """y = x * cos + rotate_half(x) * sin.   x: (B, H, T, head_dim) (any leading axes),
    cos, sin: (T, head_dim), same dtype as x.  Returns (y, RopeCache(cos, sin))."""
    if checking.get():
        check_rope_args(x, cos, sin)
    y = x * cos + rotate_half(x) * sin  # (..., T, head_dim); cos, sin broadcast over B, H
    return y, RopeCache(cos, sin)


def rope_backward(dy, cache):
    """dx = dy * cos - rotate_half(dy * sin): the transposed (= inverse) rotation.

    rotate_half is multiplication by an antisymmetric matrix M (M^T = -M), so the transpose of
    x -> x*cos + M(x)*sin is dy -> dy*cos + M^T(dy*sin) = dy*cos - M(dy*sin)."""
    cos, sin = cache
    if checking.get():
        check_rope_backward_args(dy, cos)
    return dy * cos - rotate_half(dy * sin)


def check_rope_args(x, cos, sin):
    """The forward's argument checks (shared with the kernel)."""
    require_float_array("x", x, min_ndim=2)
    require_float_array("cos", cos, ndim=2)
    require_float_array("sin", sin, ndim=2)
    require_same_dtype(x=x, cos=cos, sin=sin)
    T, head_dim = x.shape[-2:]
    _require_head_dim(head_dim, name="x.shape[-1] (head_dim)")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (T, head_dim):
            raise ValueError(f"{name} must have shape (T, head_dim) = {(T, head_dim)} to match x "
                             f"of shape {x.shape}, got {table.shape}")


def check_rope_backward_args(dy, cos):
    """dy must be shaped (..., T, head_dim) like the rotated input (shared with the kernel)."""
    require_shape("dy", dy, np.shape(dy)[:-2] + cos.shape, "(..., T, head_dim) like the rotated input",
                  dtype=cos.dtype)


def _require_head_dim(head_dim, name="head_dim"):
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {head_dim!r}")
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"{name} must be a positive even number (RoPE rotates pairs), got {head_dim}")
