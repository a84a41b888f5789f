"""Softmax along the last axis: max-subtracted, -inf entries masked, fully masked rows give zeros."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op, rel_error
from npllama.ops.softmax import softmax_backward, softmax_forward

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def _setup(seed, lead_shape, N, mask_fraction=0.0, dtype=np.float64):
    """x with roughly mask_fraction of its entries set to -inf (a row may end up fully masked)."""
    rng = np.random.default_rng(seed)
    x = (2.0 * rng.standard_normal(lead_shape + (N,))).astype(dtype)
    x[rng.random(x.shape) < mask_fraction] = -np.inf
    return rng, x


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, N=st.integers(1, 6), mask_fraction=st.sampled_from([0.0, 0.3, 0.8]))
def test_gradcheck(seed, lead_shape, N, mask_fraction):
    _, x = _setup(seed, lead_shape, N, mask_fraction)
    check_op(softmax_forward, softmax_backward, [x], names=["x"], seed=seed % 1000).raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, N=st.integers(1, 6))
def test_rows_sum_to_one_and_match_naive_formula(seed, lead_shape, N):
    _, x = _setup(seed, lead_shape, N)
    p, _ = softmax_forward(x)
    assert p.shape == x.shape
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    naive = np.exp(x) / np.exp(x).sum(-1, keepdims=True)  # fine for |x| of a few units
    np.testing.assert_allclose(p, naive, rtol=1e-12, atol=1e-15)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, N=st.integers(1, 6), mask_fraction=st.sampled_from([0.0, 0.4]))
def test_invariant_to_adding_a_constant_per_row(seed, lead_shape, N, mask_fraction):
    rng, x = _setup(seed, lead_shape, N, mask_fraction)
    shift = 1e3 * rng.standard_normal(lead_shape + (1,))  # big enough to overflow a naive exp
    p, _ = softmax_forward(x)
    p_shifted, _ = softmax_forward(x + shift)
    np.testing.assert_allclose(p_shifted, p, rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(p_shifted))


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, N=st.integers(2, 6))
def test_masked_entries_get_zero_and_the_rest_renormalise(seed, lead_shape, N):
    rng, x = _setup(seed, lead_shape, N)
    keep = rng.random(x.shape) < 0.6
    keep[..., 0] = True  # at least one unmasked entry per row
    p, _ = softmax_forward(np.where(keep, x, -np.inf))
    np.testing.assert_array_equal(p[~keep], 0.0)
    exps = np.where(keep, np.exp(x), 0.0)
    np.testing.assert_allclose(p, exps / exps.sum(-1, keepdims=True), rtol=1e-12, atol=1e-15)


def test_fully_masked_row_gives_zeros_without_warnings():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    with np.errstate(all="raise"):  # any 0/0 or inf - inf would raise here
        p, cache = softmax_forward(x)
        dx = softmax_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(p[0], 0.0)
    np.testing.assert_allclose(p[1], [1 / (1 + np.e), 0.0, np.e / (1 + np.e)], rtol=1e-12)
    np.testing.assert_array_equal(dx[0], 0.0)
    assert not np.isnan(dx).any()


def test_single_entry_rows_are_one():
    p, cache = softmax_forward(np.array([[5.0], [-300.0]]))
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(softmax_backward(np.array([[2.0], [3.0]]), cache), 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, N=st.integers(1, 6), mask_fraction=st.sampled_from([0.0, 0.4]))
def test_backward_equals_jacobian_product(seed, N, mask_fraction):
    # J[i, j] = d p_j / d x_i = p_i (delta_ij - p_j);  dx = J dp
    rng, x = _setup(seed, (1,), N, mask_fraction)
    p, cache = softmax_forward(x)
    dp = rng.standard_normal(p.shape)
    row = p[0]
    jacobian = np.diag(row) - np.outer(row, row)
    np.testing.assert_allclose(softmax_backward(dp, cache)[0], jacobian @ dp[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(dtype):
    _, x = _setup(0, (2, 3), 5, 0.3, dtype)
    x[0, 0] = -np.inf  # one fully masked row keeps its dtype too
    p, cache = softmax_forward(x)
    dx = softmax_backward(np.ones(p.shape, dtype=dtype), cache)
    assert p.dtype == dx.dtype == dtype


def test_float32_close_to_float64():
    _, x = _setup(1, (4,), 16)
    assert rel_error(softmax_forward(x.astype(np.float32))[0], softmax_forward(x)[0]) < 1e-6


def test_integer_x_rejected():
    with pytest.raises(TypeError, match=r"\bx\b"):
        softmax_forward(np.ones((2, 3), dtype=np.int64))


def test_list_x_rejected():
    with pytest.raises(TypeError, match=r"\bx\b"):
        softmax_forward([1.0, 2.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_positive_inf_rejected(bad):
    x = np.zeros((2, 3))
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x must not contain NaN or \\+inf"):
        softmax_forward(x)


def test_empty_last_dimension_rejected():
    with pytest.raises(ValueError, match=r"\bx\b"):
        softmax_forward(np.zeros((2, 0)))


def test_backward_rejects_wrong_dp_shape():
    _, cache = softmax_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dp"):
        softmax_backward(np.zeros((3, 2)), cache)
