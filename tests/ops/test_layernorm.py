"""LayerNorm (article §4.2): y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op, rel_error
from npllama.ops.layernorm import layernorm_backward, layernorm_backward_stepwise, layernorm_forward
from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)
eps_values = st.sampled_from([1e-6, 1e-5, 0.1])


def _setup(seed, lead_shape, D, dtype=np.float64):
    """Random x whose rows have standard deviation in [0.5, 2] (0 when D = 1) and a random offset.

    Rows are kept away from std ~ 0 on purpose: there xhat bends on the scale sqrt(eps) and
    central differences with a 1e-6 step stop being accurate (derivations/layernorm.md, exercise 3).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead_shape + (D,))
    x_centered = x - x.mean(-1, keepdims=True)
    std = np.sqrt(np.mean(x_centered**2, axis=-1, keepdims=True))
    x = x_centered * (rng.uniform(0.5, 2.0, lead_shape + (1,)) / np.where(std > 0, std, 1))
    x = (x + rng.standard_normal(lead_shape + (1,))).astype(dtype)
    weight = (1.0 + 0.5 * rng.standard_normal(D)).astype(dtype)
    bias = rng.standard_normal(D).astype(dtype)
    return rng, x, weight, bias


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values,
       stepwise=st.booleans())
def test_gradcheck(seed, lead_shape, D, eps, stepwise):
    # With D <= 2 and a tiny eps every row normalises to (+-1, -+1) whatever x is, so dx is of
    # order eps and central differences resolve it no better than ~1e-9 absolute: a meaningless
    # check (test_gradcheck_two_features_strict covers D = 2 where dx is O(1)).
    if D <= 2:
        eps = max(eps, 1e-2)
    _, x, weight, bias = _setup(seed, lead_shape, D)
    backward = layernorm_backward_stepwise if stepwise else layernorm_backward
    check_op(layernorm_forward, backward, [x, weight, bias], extra_args=(eps,),
             names=["x", "weight", "bias"], seed=seed % 1000).raise_if_failed()


@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("backward", [layernorm_backward, layernorm_backward_stepwise])
def test_gradcheck_two_features_strict(eps, backward):
    # D = 2 with a tiny eps makes xhat almost (+-1, -+1) and dx of order eps, which check_op's atol
    # path accepts; with a large eps dx is O(1): demand relative accuracy.
    rng = np.random.default_rng(7)
    x, weight, bias = rng.standard_normal((5, 2)), rng.standard_normal(2), rng.standard_normal(2)
    report = check_op(layernorm_forward, backward, [x, weight, bias], extra_args=(eps,), atol=0.0)
    assert report.max_rel_err < 1e-7, str(report)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 8), eps=eps_values)
def test_closed_form_equals_stepwise_chain_rule(seed, lead_shape, D, eps):
    rng, x, weight, bias = _setup(seed, lead_shape, D)
    y, cache = layernorm_forward(x, weight, bias, eps)
    dy = rng.standard_normal(y.shape)
    closed = layernorm_backward(dy, cache)
    stepwise = layernorm_backward_stepwise(dy, cache)
    for name, a, b in zip(["dx", "dweight", "dbias"], closed, stepwise):
        assert a.shape == b.shape
        # dx is the sum of terms that cancel (to 0 when D = 1), so compare it against the scale
        # of its parts, dxhat * rstd, rather than against itself.
        scale = max(np.linalg.norm(dy * weight * cache[2]), np.linalg.norm(b), 1e-300)
        assert np.linalg.norm(a - b) / scale < 1e-12, name


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values)
def test_forward_matches_numpy_mean_and_var(seed, lead_shape, D, eps):
    _, x, weight, bias = _setup(seed, lead_shape, D)
    y, (_, mean, rstd, _) = layernorm_forward(x, weight, bias, eps)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias
    assert y.shape == x.shape and mean.shape == rstd.shape == lead_shape + (1,)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(2, 8), eps=eps_values)
def test_normalised_rows_have_zero_mean_and_unit_variance(seed, lead_shape, D, eps):
    # Undo the affine map, then xhat has mean 0 and variance var / (var + eps) (1 when eps = 0).
    _, x, weight, bias = _setup(seed, lead_shape, D)
    y, _ = layernorm_forward(x, weight, bias, eps)
    xhat = (y - bias) / weight
    var = x.var(-1)
    np.testing.assert_allclose(xhat.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(-1), var / (var + eps), rtol=1e-10)
    y0, _ = layernorm_forward(x, weight, bias, 0.0)
    np.testing.assert_allclose(((y0 - bias) / weight).var(-1), 1.0, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values)
def test_shift_invariance_and_dx_rows_sum_to_zero(seed, lead_shape, D, eps):
    # Adding a constant to a row changes nothing, so the gradient has no component along (1, ..., 1).
    rng, x, weight, bias = _setup(seed, lead_shape, D)
    y, cache = layernorm_forward(x, weight, bias, eps)
    shift = 10.0 * rng.standard_normal(lead_shape + (1,))
    np.testing.assert_allclose(layernorm_forward(x + shift, weight, bias, eps)[0], y, rtol=1e-9, atol=1e-9)
    dx, _, _ = layernorm_backward(rng.standard_normal(y.shape), cache)
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values)
def test_rmsnorm_is_layernorm_of_centred_rows_without_bias(seed, lead_shape, D, eps):
    # derivations/layernorm.md: on zero-mean rows the forwards agree, the gradients do not:
    # dx_LN = dx_RMS - rstd * mean(dxhat) (dweight agrees)
    rng, x, weight, _ = _setup(seed, lead_shape, D)
    x_centered = x - x.mean(-1, keepdims=True)
    y_layer, layer_cache = layernorm_forward(x_centered, weight, np.zeros(D), eps)
    y_rms, rms_cache = rmsnorm_forward(x_centered, weight, eps)
    np.testing.assert_allclose(y_layer, y_rms, rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx_layer, dweight_layer, _ = layernorm_backward(dy, layer_cache)
    dx_rms, dweight_rms = rmsnorm_backward(dy, rms_cache)
    mean_dxhat = np.mean(dy * weight, axis=-1, keepdims=True)
    np.testing.assert_allclose(dx_layer, dx_rms - rms_cache.rstd * mean_dxhat, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dweight_layer, dweight_rms, rtol=1e-10, atol=1e-12)
    assert rel_error(dx_layer, dx_rms) > 1e-3   # the mean term is not negligible: they differ


def test_single_feature_gives_bias_and_zero_dx():
    x = np.array([[3.0], [-2.0]])
    y, cache = layernorm_forward(x, np.array([2.0]), np.array([0.5]), 1e-5)
    np.testing.assert_array_equal(y, 0.5)
    dx, dweight, dbias = layernorm_backward(np.array([[1.0], [2.0]]), cache)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dweight, 0.0)
    np.testing.assert_array_equal(dbias, [3.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(dtype):
    _, x, weight, bias = _setup(0, (2, 3), 8, dtype)
    y, cache = layernorm_forward(x, weight, bias, np.float64(1e-5))
    grads = layernorm_backward(np.ones(y.shape, dtype=dtype), cache)
    grads_stepwise = layernorm_backward_stepwise(np.ones(y.shape, dtype=dtype), cache)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in grads + grads_stepwise)


def test_float32_close_to_float64():
    _, x, weight, bias = _setup(3, (4,), 16)
    y64, _ = layernorm_forward(x, weight, bias, 1e-5)
    y32, _ = layernorm_forward(*(a.astype(np.float32) for a in (x, weight, bias)), 1e-5)
    assert rel_error(y32, y64) < 1e-6


def test_wrong_weight_length_rejected():
    with pytest.raises(ValueError, match=r"x has last dimension 4, expected 3"):
        layernorm_forward(np.ones((2, 4)), np.ones(3), np.ones(3), 1e-5)


def test_wrong_bias_length_rejected():
    with pytest.raises(ValueError, match=r"bias has last dimension 3, expected 4"):
        layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(3), 1e-5)


def test_bias_must_be_1d():
    with pytest.raises(ValueError, match="bias"):
        layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones((2, 4)), 1e-5)


def test_integer_weight_rejected():
    with pytest.raises(TypeError, match="weight"):
        layernorm_forward(np.ones((2, 4)), np.ones(4, dtype=np.int64), np.ones(4), 1e-5)


def test_mixed_dtypes_rejected():
    with pytest.raises(TypeError, match="bias: float32"):
        layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(4, dtype=np.float32), 1e-5)


@pytest.mark.parametrize("eps", [-1.0, float("nan")])
def test_bad_eps_value_rejected(eps):
    with pytest.raises(ValueError, match="eps"):
        layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(4), eps)


def test_bad_eps_type_rejected():
    with pytest.raises(TypeError, match="eps"):
        layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(4), "1e-5")


@pytest.mark.parametrize("backward", [layernorm_backward, layernorm_backward_stepwise])
def test_backward_rejects_wrong_dy_shape(backward):
    _, cache = layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(4), 1e-5)
    with pytest.raises(ValueError, match="dy"):
        backward(np.ones((2, 3)), cache)
