"""RMSNorm kernels equal the reference, forward and backward."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import rmsnorm as kernel
from npllama.ops import rmsnorm as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]),
       leading=st.lists(st.integers(1, 4), min_size=0, max_size=3),
       D=st.integers(1, 40), eps=st.sampled_from([1e-5, 1e-6, 0.0]),
       transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_rmsnorm_equals_reference(dtype, leading, D, eps, transposed, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(leading) + (D,)
    x = rng.standard_normal(shape[::-1] if transposed else shape).astype(dtype)
    x = x.T if transposed else x                      # a non-contiguous x
    weight = rng.standard_normal(D).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    y, cache = kernel.rmsnorm_forward(x, weight, eps)
    y_ref, cache_ref = reference.rmsnorm_forward(x, weight, eps)
    assert_close(y, y_ref, "y")
    dx, dweight = kernel.rmsnorm_backward(dy, cache)
    dx_ref, dweight_ref = reference.rmsnorm_backward(dy, cache_ref)
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)) cancels when D is small: compare on the
    # scale of its terms, rstd * dy * weight.
    rstd = cache_ref[1]
    assert_close(dx, dx_ref, "dx", scale=max(float(np.max(np.abs(rstd * dy * weight))), 1e-3))
    assert_close(dweight, dweight_ref, "dweight")


def test_rmsnorm_of_a_zero_row_is_finite():
    x = np.zeros((2, 8), dtype=np.float32)
    y, cache = kernel.rmsnorm_forward(x, np.ones(8, dtype=np.float32), 1e-5)
    dx, dweight = kernel.rmsnorm_backward(np.ones_like(x), cache)
    assert np.all(y == 0) and np.all(np.isfinite(dx)) and np.all(np.isfinite(dweight))
