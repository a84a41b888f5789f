"""The linear kernel (one 2-D product over all rows) equals the reference on any leading shape,
contiguous or not."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import linear as kernel
from npllama.ops import linear as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]),
       leading=st.lists(st.integers(1, 4), min_size=0, max_size=3),
       n_in=st.integers(1, 12), n_out=st.integers(1, 12),
       transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_linear_equals_reference(dtype, leading, n_in, n_out, transposed, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(leading) + (n_in,)
    x = rng.standard_normal(shape[::-1] if transposed else shape).astype(dtype)
    x = x.T if transposed else x                      # a non-contiguous x (rows not adjacent)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    dy = rng.standard_normal(tuple(leading) + (n_out,)).astype(dtype)

    y, cache = kernel.linear_forward(x, weight)
    y_ref, cache_ref = reference.linear_forward(x, weight)
    assert_close(y, y_ref, "y")
    dx, dweight = kernel.linear_backward(dy, cache)
    dx_ref, dweight_ref = reference.linear_backward(dy, cache_ref)
    assert_close(dx, dx_ref, "dx")
    assert_close(dweight, dweight_ref, "dweight")


def test_linear_output_does_not_alias_its_input():
    x = np.ones((2, 3, 4))
    y, _ = kernel.linear_forward(x, np.eye(4))
    y[...] = 0
    assert x.sum() == 24
