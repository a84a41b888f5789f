"""RoPE: frequencies (plain, linear, LLaMA-3 bands), tables, rotation, backward, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.gradcheck import check_op
from npllama.ops.rope import rope_backward, rope_cos_sin, rope_forward, rope_inv_freq, rotate_half

head_dims = st.sampled_from([2, 4, 6, 8, 16])


def _x(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# ----- frequencies ------------------------------------------------------------------------------

def test_inv_freq_plain_by_hand():
    # 1 / 10000 ** (2i / 8) for i = 0..3 is 1, 10^-1, 10^-2, 10^-3
    np.testing.assert_allclose(rope_inv_freq(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-14)
    np.testing.assert_allclose(rope_inv_freq(2, 500000.0), [1.0], rtol=0)
    assert rope_inv_freq(8, 10000.0).dtype == np.float64


def test_inv_freq_linear_divides_by_factor():
    scaled = rope_inv_freq(8, 10000.0, {"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(scaled, [0.25, 0.025, 0.0025, 0.00025], rtol=1e-14)


LLAMA3_SMALL = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}


def test_inv_freq_llama3_three_bands_by_hand():
    # head_dim 8, theta 1e4: inv_freq = 1, .1, .01, .001, wavelengths 2*pi / inv_freq =
    # 6.28, 62.8, 628.3, 6283.  Band edges: 1024 / 4 = 256 and 1024 / 1 = 1024.
    got = rope_inv_freq(8, 10000.0, LLAMA3_SMALL)
    assert got[0] == 1.0 and got[1] == pytest.approx(0.1, rel=1e-14)  # high frequency: kept
    assert got[3] == pytest.approx(0.001 / 8, rel=1e-14)              # low frequency: / factor
    # middle band: smooth = (1024 / 628.3185307 - 1) / (4 - 1) = 0.2099155390
    #              inv    = (1 - smooth) * 0.01 / 8 + smooth * 0.01
    #                     = 0.01 * (0.0987605576 + 0.2099155390) = 0.003086760966
    assert got[2] == pytest.approx(0.003086760966, rel=1e-9)


def test_inv_freq_llama3_real_checkpoint_values():
    # LLaMA-3.1: head_dim 128, theta 5e5, factor 8, low 1, high 4, original context 8192.
    cfg = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
    plain = rope_inv_freq(128, 500000.0)
    got = rope_inv_freq(128, 500000.0, cfg)
    wavelen = 2 * math.pi / plain
    high = wavelen < 8192 / 4
    low = wavelen > 8192 / 1
    mid = ~high & ~low
    # all three bands are populated for this configuration
    assert high.sum() > 0 and low.sum() > 0 and mid.sum() > 0
    np.testing.assert_array_equal(got[high], plain[high])
    np.testing.assert_allclose(got[low], plain[low] / 8, rtol=1e-15)
    i = int(np.flatnonzero(mid)[0])  # first middle pair, computed by hand from its wavelength
    smooth = (8192 / (2 * math.pi * 500000.0 ** (2 * i / 128)) - 1) / 3
    assert got[i] == pytest.approx((1 - smooth) / 8 * plain[i] + smooth * plain[i], rel=1e-13)
    # in the middle band each frequency lies strictly between the kept and the fully scaled one
    assert np.all(got[mid] < plain[mid]) and np.all(got[mid] > plain[mid] / 8)


def test_inv_freq_default_type_and_none_agree():
    np.testing.assert_array_equal(rope_inv_freq(16, 10000.0, {"rope_type": "default"}),
                                  rope_inv_freq(16, 10000.0))


# ----- tables ----------------------------------------------------------------------------------

def test_cos_sin_values_and_layout():
    positions = np.array([0, 1, 5, 1000])
    cos, sin = rope_cos_sin(positions, 6, 10000.0)
    assert cos.shape == sin.shape == (4, 6) and cos.dtype == np.float64
    np.testing.assert_array_equal(cos[0], np.ones(6))
    np.testing.assert_array_equal(sin[0], np.zeros(6))
    inv_freq = 1.0 / 10000.0 ** (np.array([0, 2, 4]) / 6)
    np.testing.assert_allclose(cos[2, :3], np.cos(5 * inv_freq), rtol=1e-14)
    np.testing.assert_allclose(sin[3, :3], np.sin(1000 * inv_freq), rtol=1e-12)
    np.testing.assert_array_equal(cos[:, :3], cos[:, 3:])  # both halves hold the same angles
    np.testing.assert_array_equal(sin[:, :3], sin[:, 3:])


def test_cos_sin_float32_is_cast_at_the_end():
    positions = np.arange(70000, 70010)
    cos64, sin64 = rope_cos_sin(positions, 8, 10000.0)
    cos32, sin32 = rope_cos_sin(positions, 8, 10000.0, dtype=np.float32)
    assert cos32.dtype == sin32.dtype == np.float32
    np.testing.assert_array_equal(cos32, cos64.astype(np.float32))
    np.testing.assert_array_equal(sin32, sin64.astype(np.float32))


def test_float32_angles_lose_all_but_three_decimals():
    # derivations/rope.md: between 2**14 and 2**15 float32 numbers are 2**-9 ~ 0.002 apart, so an
    # angle ~3e4 computed in float32 is off by up to 0.001 rad; casting the float64 table is not.
    assert np.spacing(np.float32(3e4)) == 2.0**-9
    positions = np.arange(30000, 30512)
    angle64 = positions * 1.0
    angle32 = positions.astype(np.float32) * np.float32(1.0) + np.float32(0.3)   # a fractional angle
    error = np.abs(angle32.astype(np.float64) - (angle64 + 0.3))
    assert 4e-4 < error.max() <= 2.0**-10 + 1e-12           # up to half the spacing: 2-3 decimals
    cos_error = np.abs(np.cos(angle32.astype(np.float64)) - np.cos(angle64 + 0.3)).max()
    assert 4e-4 < cos_error <= 2.0**-10 + 1e-12
    cos64, _ = rope_cos_sin(positions, 2, 10000.0)
    cos32, _ = rope_cos_sin(positions, 2, 10000.0, dtype=np.float32)
    assert np.abs(cos32.astype(np.float64) - cos64).max() <= 6e-8   # float32's own rounding only


def test_meta_layout_without_permutation_is_right_only_at_position_0():
    # derivations/rope.md: Meta pairs adjacent entries (2i, 2i+1), Hugging Face pairs (i, i + d/2).
    # A Meta-layout vector rotated with the HF convention (no permutation) is right at position 0
    # only; mapped back to HF order it is off by tens of percent from position 1 on.
    head_dim, T = 16, 8
    x_hf = np.random.default_rng(0).standard_normal((1, 1, T, head_dim))
    to_meta = np.stack([np.arange(head_dim // 2), np.arange(head_dim // 2) + head_dim // 2], -1).reshape(-1)
    x_meta = x_hf[..., to_meta]                                  # the same vector in Meta's layout
    cos, sin = rope_cos_sin(np.arange(T), head_dim, 10000.0)
    right, _ = rope_forward(x_hf, cos, sin)
    wrong_meta, _ = rope_forward(x_meta, cos, sin)               # HF rotation on Meta-ordered entries
    wrong = np.empty_like(wrong_meta)
    wrong[..., to_meta] = wrong_meta                             # back to HF order to compare
    per_position = np.linalg.norm(wrong - right, axis=-1) / np.linalg.norm(right, axis=-1)
    assert per_position[0, 0, 0] < 1e-12
    assert np.all(per_position[0, 0, 1:] > 0.1)


# ----- the rotation ----------------------------------------------------------------------------

def test_rotate_half_by_hand():
    np.testing.assert_array_equal(rotate_half(np.array([1.0, 2.0, 3.0, 4.0])), [-3.0, -4.0, 1.0, 2.0])


def test_forward_rotates_pairs_i_and_i_plus_half():
    rng = np.random.default_rng(0)
    x = _x(rng, (2, 3, 4, 8))
    cos, sin = rope_cos_sin(np.arange(4), 8, 10000.0)
    y, _ = rope_forward(x, cos, sin)
    for i in range(4):
        a, b = x[..., i], x[..., i + 4]
        c, s = cos[:, i], sin[:, i]
        np.testing.assert_allclose(y[..., i], a * c - b * s, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(y[..., i + 4], b * c + a * s, rtol=1e-13, atol=1e-15)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 5), head_dim=head_dims,
       start=st.integers(0, 3000), seed=st.integers(0, 2**31 - 1))
def test_rotation_preserves_norm_of_each_pair(B, H, T, head_dim, start, seed):
    rng = np.random.default_rng(seed)
    x = _x(rng, (B, H, T, head_dim))
    cos, sin = rope_cos_sin(np.arange(start, start + T), head_dim, 10000.0)
    y, _ = rope_forward(x, cos, sin)
    half = head_dim // 2
    pair_norm = lambda a: np.hypot(a[..., :half], a[..., half:])  # noqa: E731
    np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(head_dim=head_dims, m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(-400, 400),
       seed=st.integers(0, 2**31 - 1))
def test_score_depends_only_on_position_difference(head_dim, m, n, shift, seed):
    if m + shift < 0 or n + shift < 0:
        shift = -min(m, n)
    rng = np.random.default_rng(seed)
    q, k = _x(rng, (1, 1, 1, head_dim)), _x(rng, (1, 1, 1, head_dim))

    def score(pos_q, pos_k):
        rq, _ = rope_forward(q, *rope_cos_sin(np.array([pos_q]), head_dim, 10000.0))
        rk, _ = rope_forward(k, *rope_cos_sin(np.array([pos_k]), head_dim, 10000.0))
        return float(np.sum(rq * rk))

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-9, abs=1e-9)


def test_score_of_unit_vectors_is_cos_of_position_difference():
    # head_dim 2, q = k = (1, 0): rotated by m and n radians, their dot product is cos(m - n)
    q = np.array([[[[1.0, 0.0]]]])
    for m, n in [(1, 0), (0, 3), (7, 2), (100, 100)]:
        rq, _ = rope_forward(q, *rope_cos_sin(np.array([m]), 2, 10000.0))
        rk, _ = rope_forward(q, *rope_cos_sin(np.array([n]), 2, 10000.0))
        assert float(np.sum(rq * rk)) == pytest.approx(math.cos(m - n), abs=1e-14)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 4), head_dim=head_dims,
       seed=st.integers(0, 2**31 - 1))
def test_backward_is_the_inverse_rotation_and_gradchecks(B, H, T, head_dim, seed):
    rng = np.random.default_rng(seed)
    x = _x(rng, (B, H, T, head_dim))
    positions = rng.integers(0, 2000, size=T)
    cos, sin = rope_cos_sin(positions, head_dim, 10000.0, LLAMA3_SMALL)
    y, cache = rope_forward(x, cos, sin)
    np.testing.assert_allclose(rope_backward(y, cache), x, rtol=1e-12, atol=1e-13)
    report = check_op(rope_forward, rope_backward, [x, cos, sin], wrt=[0], names=["x", "cos", "sin"],
                      seed=seed)
    report.raise_if_failed()


def test_backward_with_general_cos_sin_tables_gradchecks():
    # The backward formula must hold for any tables, not only for ones whose halves agree.
    rng = np.random.default_rng(3)
    x, cos, sin = _x(rng, (2, 2, 3, 6)), _x(rng, (3, 6)), _x(rng, (3, 6))
    check_op(rope_forward, rope_backward, [x, cos, sin], wrt=[0]).raise_if_failed()


def test_float32_stays_float32():
    rng = np.random.default_rng(1)
    x = _x(rng, (1, 2, 3, 4), np.float32)
    cos, sin = rope_cos_sin(np.arange(3), 4, 10000.0, dtype=np.float32)
    y, cache = rope_forward(x, cos, sin)
    assert y.dtype == np.float32 and rope_backward(y, cache).dtype == np.float32


# ----- bad input -------------------------------------------------------------------------------

def test_rejects_dtype_mismatch():
    x = np.zeros((1, 1, 2, 4), np.float32)
    cos, sin = rope_cos_sin(np.arange(2), 4, 10000.0)  # float64
    with pytest.raises(TypeError, match="dtypes must match"):
        rope_forward(x, cos, sin)


def test_rejects_table_shape_mismatch():
    x = np.zeros((1, 1, 3, 4))
    cos, sin = rope_cos_sin(np.arange(2), 4, 10000.0)
    with pytest.raises(ValueError, match="cos must have shape"):
        rope_forward(x, cos, sin)  # T differs
    cos, sin = rope_cos_sin(np.arange(3), 6, 10000.0)
    with pytest.raises(ValueError, match="cos must have shape"):
        rope_forward(x, cos, sin)  # head_dim differs
    cos, _ = rope_cos_sin(np.arange(3), 4, 10000.0)
    with pytest.raises(ValueError, match="sin must have shape"):
        rope_forward(x, cos, cos[:2])


def test_rejects_odd_head_dim_and_bad_arguments():
    with pytest.raises(ValueError, match="head_dim"):
        rope_forward(np.zeros((1, 1, 2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="head_dim"):
        rope_inv_freq(5, 10000.0)
    with pytest.raises(TypeError, match="head_dim"):
        rope_inv_freq(4.0, 10000.0)
    with pytest.raises(ValueError, match="rope_theta"):
        rope_inv_freq(4, 0.0)
    with pytest.raises(ValueError, match="rope_type"):
        rope_inv_freq(4, 10000.0, {"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(TypeError, match="rope_scaling"):
        rope_inv_freq(4, 10000.0, "linear")
    with pytest.raises(TypeError, match="positions"):
        rope_cos_sin(np.array([0.0, 1.0]), 4, 10000.0)
    with pytest.raises(ValueError, match="positions"):
        rope_cos_sin(np.zeros((2, 2), dtype=int), 4, 10000.0)
    with pytest.raises(TypeError, match="dtype"):
        rope_cos_sin(np.arange(2), 4, 10000.0, dtype=np.int32)
    with pytest.raises(TypeError, match="x must be"):
        rope_forward(np.zeros((1, 1, 2, 4), dtype=int), np.zeros((2, 4)), np.zeros((2, 4)))
