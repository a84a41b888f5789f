"""Softmax kernels equal the reference, with -inf masks and fully masked rows."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import softmax as kernel
from npllama.ops import softmax as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]),
       leading=st.lists(st.integers(1, 4), min_size=0, max_size=2), N=st.integers(1, 40),
       masked_fraction=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_softmax_equals_reference(dtype, leading, N, masked_fraction, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(leading) + (N,)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x[rng.random(shape) < masked_fraction] = -np.inf   # fraction 1.0: every row fully masked
    dp = rng.standard_normal(shape).astype(dtype)
    p, cache = kernel.softmax_forward(x)
    p_ref, cache_ref = reference.softmax_forward(x)
    assert_close(p, p_ref, "p")
    # dx = p * (dp - sum(dp * p)) cancels where dp is close to the row's sum: rounding follows
    # the size of the terms, p * (|dp| + |sum|), not of their difference.
    row_sum = np.abs(np.sum(dp * p_ref, axis=-1, keepdims=True))
    terms = float(np.max(p_ref * (np.abs(dp) + row_sum), initial=0.0))
    assert_close(kernel.softmax_backward(dp, cache), reference.softmax_backward(dp, cache_ref), "dx",
                 scale=max(terms, 1e-3))


def test_softmax_does_not_modify_its_input():
    x = np.array([[1.0, 2.0, -np.inf]])
    kernel.softmax_forward(x)
    assert x.tolist() == [[1.0, 2.0, -np.inf]]


def test_without_checking_values_nan_and_inf_rows_come_out_nan_on_both():
    # attention's scores of a diverged model: the NaN must reach the loss, not raise
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [0.0, 1.0, -np.inf]], np.float32)
    with np.errstate(invalid="ignore"):
        p, _ = kernel.softmax_forward(x, check_values=False)
        p_ref, _ = reference.softmax_forward(x, check_values=False)
    for probs in (p, p_ref):   # each bad row holds a NaN (the reference keeps the exact zeros)
        assert np.isnan(probs[:2]).any(axis=1).all()
    assert_close(p[2], p_ref[2], "the finite row")
