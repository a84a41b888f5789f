"""The building blocks the kernels inline: a vectorisable exp for x <= 0, row max / abs max / sum / dot."""
import numpy as np
import pytest
from numba import njit

from npllama.kernels._simd import exp_nonpositive, row_abs_max, row_dot, row_dot3, row_max, row_sum

# (cached by numba under this module's name, tests.kernels.test_simd: a cache written when the
# module was the top-level `kernels.test_simd` is stale, and this file's edit invalidates it)

@njit(cache=True, error_model="numpy")
def _exp_array(x, out):
    for i in range(x.size):
        out[i] = exp_nonpositive(x[i])


@pytest.mark.parametrize("dtype, max_rel_error", [(np.float32, 1e-6), (np.float64, 1e-15)])
def test_exp_nonpositive_matches_exp(dtype, max_rel_error):
    rng = np.random.default_rng(0)
    lowest = -87.3 if dtype == np.float32 else -708.3  # below: flushed to 0
    x = np.concatenate([-rng.random(5000) * 2, -rng.random(5000) * -lowest, [0.0, -0.0, lowest]])
    x = x.astype(dtype)
    out = np.empty_like(x)
    _exp_array(x, out)
    expected = np.exp(x.astype(np.float64))
    rel_error = np.abs(out - expected) / expected
    assert rel_error.max() < max_rel_error
    assert out[-3] == 1 and out[-2] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpositive_special_values(dtype):
    x = np.array([-np.inf, np.nan, -1e6, -1e-30], dtype=dtype)
    out = np.empty_like(x)
    _exp_array(x, out)
    assert out[0] == 0                    # a masked entry: exactly 0
    assert np.isnan(out[1])               # NaN is not swallowed
    assert out[2] == 0                    # far below the smallest normal number: 0
    assert out[3] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
def test_row_reductions(dtype, n):
    rng = np.random.default_rng(n)
    a, b, c = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert row_max(a) == a.max()
    assert row_abs_max(a) == np.abs(a).max()
    assert row_abs_max(a).dtype == dtype
    assert abs(row_sum(a) - a.sum(dtype=np.float64)) <= tol * n
    assert abs(row_dot(a, b) - np.dot(a.astype(np.float64), b)) <= tol * n
    assert abs(row_dot3(a, b, c) - np.sum(a.astype(np.float64) * b * c)) <= tol * n * 10
    if dtype == np.float32 and n > 1:  # summed in float32, no silent upcast: exactly a float32
        assert float(np.float32(row_sum(a))) == row_sum(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_special_values(dtype):
    """row_max compares integer keys of the float bits: check the orderings that could go wrong."""
    a = np.full(20, -np.inf, dtype=dtype)
    assert row_max(a) == -np.inf                       # a fully masked row
    assert row_max(a[:0]) == -np.inf                   # an empty one
    a[17] = -3.0
    assert row_max(a) == -3.0
    a[3] = -2.5
    assert row_max(a) == -2.5                          # negatives: larger magnitude is smaller
    a[5] = -0.0
    assert row_max(a) == 0.0
    a[9] = np.finfo(dtype).tiny / 4                    # a denormal
    assert row_max(a) == a[9]
    a[11] = np.inf
    assert row_max(a) == np.inf
    a[12] = np.nan
    assert np.isnan(row_max(a))


@njit(cache=True, error_model="numpy")
def _row_abs_max_compiled(a):
    return row_abs_max(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("abs_max", [row_abs_max, _row_abs_max_compiled], ids=["python", "compiled"])
def test_row_abs_max_special_values(dtype, abs_max):
    """row_abs_max takes the max of the bits without the sign: the orderings that could go wrong,
    and NaN winning over inf wherever they stand (optim's check relies on both being caught)."""
    a = np.zeros(40, dtype=dtype)
    assert abs_max(a[:0]) == 0 and abs_max(a) == 0
    a[7] = -0.0
    assert abs_max(a) == 0
    a[9] = np.finfo(dtype).tiny / 4                    # a denormal
    assert abs_max(a) == a[9]
    a[17] = -3.0
    assert abs_max(a) == 3.0                           # the sign dropped
    a[30] = 2.5
    assert abs_max(a) == 3.0
    a[31] = -np.finfo(dtype).max
    assert abs_max(a) == np.finfo(dtype).max
    a[3] = -np.inf
    assert abs_max(a) == np.inf
    for where in (0, 3, 39):
        b = a.copy()
        b[where] = -np.nan if where % 2 else np.nan    # either sign bit
        assert np.isnan(abs_max(b)), where
