"""RMSNorm: y = x * rstd * weight, rstd = 1 / sqrt(mean(x**2, -1) + eps)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op, rel_error
from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)
eps_values = st.sampled_from([1e-6, 1e-5, 0.1])


def _setup(seed, lead_shape, D, dtype=np.float64):
    """Random x whose rows have root mean square in [0.5, 2], and a weight near 1.

    Rows are kept away from rms ~ 0 on purpose: there y = x / sqrt(mean(x**2) + eps) bends on
    the scale sqrt(eps) (for D = 1 it is a smoothed sign(x)), and central differences with a
    1e-6 step stop being accurate -- the check would fail for the finite differences, not the
    formula.  derivations/rmsnorm.md, exercise 3.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead_shape + (D,))
    x *= rng.uniform(0.5, 2.0, lead_shape + (1,)) / np.sqrt(np.mean(x**2, axis=-1, keepdims=True))
    x = x.astype(dtype)
    weight = (1.0 + 0.5 * rng.standard_normal(D)).astype(dtype)
    return rng, x, weight


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values)
def test_gradcheck(seed, lead_shape, D, eps):
    # With D = 1 and a tiny eps, y is sign(x) * weight whatever |x| is: dx is of order eps and
    # central differences resolve it no better than ~1e-9 absolute (the strict test below checks
    # D = 1 where dx is O(1)).
    if D == 1:
        eps = max(eps, 1e-2)
    _, x, weight = _setup(seed, lead_shape, D)
    check_op(rmsnorm_forward, rmsnorm_backward, [x, weight], extra_args=(eps,),
             names=["x", "weight"], seed=seed % 1000).raise_if_failed()


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_gradcheck_single_feature_strict(eps):
    # D = 1 with a tiny eps has a gradient of order eps (y is almost sign(x) * weight), which the
    # atol path of check_op accepts; with a large eps the gradient is O(1): demand relative accuracy.
    rng = np.random.default_rng(7)
    x, weight = rng.standard_normal((5, 1)), rng.standard_normal(1)
    report = check_op(rmsnorm_forward, rmsnorm_backward, [x, weight], extra_args=(eps,), atol=0.0)
    assert report.max_rel_err < 1e-7, str(report)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values)
def test_forward_matches_row_by_row_formula(seed, lead_shape, D, eps):
    _, x, weight = _setup(seed, lead_shape, D)
    y, (x_cached, rstd, weight_cached) = rmsnorm_forward(x, weight, eps)
    assert y.shape == x.shape and rstd.shape == lead_shape + (1,)
    assert x_cached is x and weight_cached is weight
    for idx in np.ndindex(lead_shape):
        row = x[idx]
        rms = np.sqrt(np.linalg.norm(row) ** 2 / D + eps)
        np.testing.assert_allclose(y[idx], row / rms * weight, rtol=1e-12, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6), eps=eps_values,
       c=st.floats(1e-3, 1e3))
def test_scale_invariance(seed, lead_shape, D, eps, c):
    # Exactly: rstd(c x; eps) = rstd(x; eps / c**2) / c, so y(c x; eps) = y(x; eps / c**2).
    _, x, weight = _setup(seed, lead_shape, D)
    y_scaled, _ = rmsnorm_forward(c * x, weight, eps)
    y_adjusted, _ = rmsnorm_forward(x, weight, eps / c**2)
    assert rel_error(y_scaled, y_adjusted) < 1e-12
    # and with eps = 0 the output does not depend on the scale at all
    assert rel_error(rmsnorm_forward(c * x, weight, 0.0)[0], rmsnorm_forward(x, weight, 0.0)[0]) < 1e-12


def test_scale_invariance_breaks_only_by_eps():
    # With eps > 0 a small input is not normalised to unit rms: the difference is eps's doing.
    x = np.array([[3e-3, -4e-3]])
    weight = np.ones(2)
    y_small, _ = rmsnorm_forward(x, weight, 1e-5)
    y_big, _ = rmsnorm_forward(1e3 * x, weight, 1e-5)
    # mean(x**2) is 12.5 for the big input, 12.5e-6 for the small one: output rms = sqrt(ms / (ms + eps))
    np.testing.assert_allclose(np.sqrt(np.mean(y_big**2)), np.sqrt(12.5 / (12.5 + 1e-5)), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.mean(y_small**2)), np.sqrt(12.5e-6 / (12.5e-6 + 1e-5)), rtol=1e-12)
    assert np.sqrt(np.mean(y_small**2)) < 0.75  # far from 1: eps dominates tiny rows


@settings(max_examples=15, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6))
def test_unit_weight_gives_unit_rms(seed, lead_shape, D):
    _, x, _ = _setup(seed, lead_shape, D)
    y, _ = rmsnorm_forward(x, np.ones(D), 0.0)
    np.testing.assert_allclose(np.mean(y**2, axis=-1), 1.0, rtol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, D=st.integers(1, 6))
def test_dx_is_orthogonal_to_x(seed, lead_shape, D):
    # y is scale-invariant when eps = 0, so moving x along itself changes nothing: <dx, x> = 0 per row.
    rng, x, weight = _setup(seed, lead_shape, D)
    y, cache = rmsnorm_forward(x, weight, 0.0)
    dx, _ = rmsnorm_backward(rng.standard_normal(y.shape), cache)
    np.testing.assert_allclose(np.sum(dx * x, axis=-1), 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(dtype):
    _, x, weight = _setup(0, (2, 3), 8, dtype)
    # a float64 eps (numpy scalar) must not upcast float32 activations
    y, cache = rmsnorm_forward(x, weight, np.float64(1e-5))
    dx, dweight = rmsnorm_backward(np.ones(y.shape, dtype=dtype), cache)
    assert y.dtype == cache[1].dtype == dx.dtype == dweight.dtype == dtype


def test_float32_close_to_float64():
    _, x, weight = _setup(3, (4,), 16)
    y64, _ = rmsnorm_forward(x, weight, 1e-5)
    y32, _ = rmsnorm_forward(x.astype(np.float32), weight.astype(np.float32), 1e-5)
    assert rel_error(y32, y64) < 1e-6


def test_wrong_weight_length_rejected():
    with pytest.raises(ValueError, match=r"x has last dimension 4, expected 3"):
        rmsnorm_forward(np.ones((2, 4)), np.ones(3), 1e-5)


def test_weight_must_be_1d():
    with pytest.raises(ValueError, match="weight"):
        rmsnorm_forward(np.ones((2, 4)), np.ones((1, 4)), 1e-5)


def test_integer_x_rejected():
    with pytest.raises(TypeError, match=r"\bx\b"):
        rmsnorm_forward(np.ones((2, 4), dtype=np.int32), np.ones(4), 1e-5)


def test_mixed_dtypes_rejected():
    with pytest.raises(TypeError, match="dtypes must match"):
        rmsnorm_forward(np.ones((2, 4), dtype=np.float32), np.ones(4), 1e-5)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
def test_bad_eps_value_rejected(eps):
    with pytest.raises(ValueError, match="eps"):
        rmsnorm_forward(np.ones((2, 4)), np.ones(4), eps)


@pytest.mark.parametrize("eps", ["1e-5", None, True, np.ones(1)])
def test_bad_eps_type_rejected(eps):
    with pytest.raises(TypeError, match="eps"):
        rmsnorm_forward(np.ones((2, 4)), np.ones(4), eps)


def test_backward_rejects_wrong_dy_shape():
    _, cache = rmsnorm_forward(np.ones((2, 4)), np.ones(4), 1e-5)
    with pytest.raises(ValueError, match="dy"):
        rmsnorm_backward(np.ones((4, 2)), cache)
