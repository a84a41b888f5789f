"""The whole-gradient passes (npllama/kernels/gradients.py) equal their NumPy lines exactly."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import use_backend
from npllama.kernels.gradients import abs_max, sum_of_squares, weighted_sum_into
from npllama.optim import AdamW, NonFiniteGradientError, global_grad_norm

specials = st.sampled_from([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -2.0])


@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       planted=st.lists(st.tuples(st.integers(0, 10**6), specials), max_size=3),
       transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_abs_max_is_numpys_max_of_abs(dtype, shape, planted, transposed, seed):
    g = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    for index, value in planted:                 # NaN / inf anywhere, of either sign
        g.flat[index % g.size] = value
    if transposed:                               # not C-contiguous: the kernel reads a copy
        g = g.T
    expected = np.max(np.abs(g))
    got = abs_max(g)
    assert type(got) is dtype
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


def test_abs_max_of_an_empty_array_is_zero():
    assert abs_max(np.zeros((3, 0), dtype=np.float32)) == 0


@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       log_scale=st.integers(-20, 15), transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_sum_of_squares_is_the_float64_sum_of_float64_squares(dtype, shape, log_scale, transposed, seed):
    """Squares and sum in float64, whatever g's dtype: a float32 sum of 1e15 squares would overflow
    at log_scale 15 and lose every digit of the small ones."""
    g = (np.random.default_rng(seed).standard_normal(shape) * 10.0**log_scale).astype(dtype)
    if transposed:
        g = g.T
    g64 = g.astype(np.float64).reshape(-1)
    expected = float(np.dot(g64, g64))
    got = sum_of_squares(g)
    assert isinstance(got, float)
    assert abs(got - expected) <= 1e-13 * expected


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_sum_of_squares_is_not_finite_when_g_is_not(bad):
    g = np.ones(50, np.float32)
    g[33] = bad
    assert not np.isfinite(sum_of_squares(g))


def test_the_global_norm_agrees_on_both_backends_to_float64_round_off():
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((300, 70)).astype(np.float32), "b": rng.standard_normal(9),
             "c": np.float32(1e-3) * rng.standard_normal((5, 4, 3)).astype(np.float32)}
    with use_backend("numpy"):
        reference = global_grad_norm(grads)
    with use_backend("numba"):
        fast = global_grad_norm(grads)
    # 21,069 squares summed in float64: the JIT-compiled sum adds in vector lanes (~1e-15 apart
    # from NumPy's), the plain Python one of NUMBA_DISABLE_JIT=1 one after another (~1.3e-14);
    # both far inside a long sum's round-off, ~sqrt(n) * 2**-53 = 1.6e-14, times a few.
    assert abs(fast - reference) <= 1e-13 * reference


@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 300),
       weights=st.tuples(st.floats(0, 1), st.floats(0, 1)), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_weighted_sum_rounds_as_numpy_does(dtype, n, weights, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    expected = a * dtype(weights[0]) + b * dtype(weights[1])   # each product rounded, then the sum
    b_before = b.copy()
    weighted_sum_into(a, weights[0], b, weights[1])
    assert np.array_equal(a, expected)
    assert np.array_equal(b, b_before)          # b is only read


@pytest.mark.parametrize("a, b, match", [
    (np.zeros(3, np.float32), np.zeros(4, np.float32), "one shape and dtype"),
    (np.zeros(3, np.float32), np.zeros(3, np.float64), "one shape and dtype"),
    (np.zeros((3, 2), np.float32).T, np.zeros((2, 3), np.float32), "C-contiguous"),
])
def test_weighted_sum_rejects_arrays_it_cannot_update_in_place(a, b, match):
    with pytest.raises(ValueError, match=match):
        weighted_sum_into(a, 0.5, b, 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e19])
def test_adamws_check_says_the_same_on_both_backends(bad):
    """optim's check before an update uses abs_max on the numba backend: the same parameters are
    named, for the same reason, and nothing is touched."""
    messages = []
    for name in ("numpy", "numba"):
        params = {"a": np.ones((4, 5), np.float32), "b": np.ones(3, np.float32)}
        grads = {"a": np.zeros((4, 5), np.float32), "b": np.zeros(3, np.float32)}
        grads["b"][1] = bad
        with use_backend(name), pytest.raises(NonFiniteGradientError) as info:
            AdamW(params, lr=0.1).step(grads)
        assert info.value.names == ["b"] and np.all(params["b"] == 1)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
