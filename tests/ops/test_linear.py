"""Linear without bias: y = x @ weight.T, weight (out_features, in_features)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op
from npllama.ops.linear import linear_backward, linear_forward

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def _setup(seed, lead_shape, n_in, n_out, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead_shape + (n_in,)).astype(dtype)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    return rng, x, weight


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, n_in=st.integers(1, 5), n_out=st.integers(1, 5))
def test_gradcheck(seed, lead_shape, n_in, n_out):
    _, x, weight = _setup(seed, lead_shape, n_in, n_out)
    check_op(linear_forward, linear_backward, [x, weight], names=["x", "weight"],
             seed=seed % 1000).raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, n_in=st.integers(1, 5), n_out=st.integers(1, 5))
def test_forward_and_backward_match_index_sums(seed, lead_shape, n_in, n_out):
    rng, x, weight = _setup(seed, lead_shape, n_in, n_out)
    y, cache = linear_forward(x, weight)
    assert y.shape == lead_shape + (n_out,)
    np.testing.assert_allclose(y, np.einsum("...i,oi->...o", x, weight), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dweight = linear_backward(dy, cache)
    assert dx.shape == x.shape and dweight.shape == weight.shape
    np.testing.assert_allclose(dx, np.einsum("...o,oi->...i", dy, weight), rtol=1e-12, atol=1e-12)
    rows_dy, rows_x = dy.reshape(-1, n_out), x.reshape(-1, n_in)
    np.testing.assert_allclose(dweight, np.einsum("no,ni->oi", rows_dy, rows_x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(dtype):
    _, x, weight = _setup(0, (2, 3), 4, 5, dtype)
    y, cache = linear_forward(x, weight)
    dx, dweight = linear_backward(np.ones(y.shape, dtype=dtype), cache)
    assert y.dtype == dx.dtype == dweight.dtype == dtype


def test_mismatched_in_features_rejected():
    with pytest.raises(ValueError, match="x has last dimension 3, expected 4"):
        linear_forward(np.ones((2, 3)), np.ones((5, 4)))


def test_integer_x_rejected():
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        linear_forward(np.ones((2, 4), dtype=np.int64), np.ones((5, 4)))


def test_weight_must_be_2d():
    with pytest.raises(ValueError, match="weight"):
        linear_forward(np.ones((2, 4)), np.ones((2, 5, 4)))


def test_scalar_x_rejected():
    with pytest.raises(ValueError, match=r"\bx\b"):
        linear_forward(np.array(1.0), np.ones((5, 1)))


def test_mixed_dtypes_are_refused_not_silently_upcast():
    x = np.ones((2, 3), dtype=np.float32)
    weight = np.ones((4, 3), dtype=np.float64)
    with pytest.raises(TypeError, match="dtypes must match"):
        linear_forward(x, weight)
