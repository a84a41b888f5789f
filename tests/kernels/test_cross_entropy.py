"""Cross-entropy kernel equals the reference: ignored targets, dloss != 1, repeated backward."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import cross_entropy as kernel
from npllama.ops import cross_entropy as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]),
       leading=st.lists(st.integers(1, 4), min_size=1, max_size=2), V=st.integers(1, 50),
       ignored=st.sampled_from([0.0, 0.5, 1.0]), ignore_index=st.sampled_from([-100, -1, 0]),
       logit_scale=st.sampled_from([1.0, 30.0]), dloss=st.sampled_from([1.0, 0.5, -2.0]),
       dloss_type=st.sampled_from([float, np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_cross_entropy_equals_reference(dtype, leading, V, ignored, ignore_index, logit_scale, dloss,
                                        dloss_type, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(leading)
    logits = (logit_scale * rng.standard_normal(shape + (V,))).astype(dtype)
    targets = rng.integers(0, V, size=shape)
    targets[rng.random(shape) < ignored] = ignore_index       # 1.0: every target ignored
    loss, cache = kernel.cross_entropy_forward(logits, targets, ignore_index)
    loss_ref, cache_ref = reference.cross_entropy_forward(logits, targets, ignore_index)
    assert type(loss) is type(loss_ref)
    assert_close(loss, loss_ref, "loss", scale=max(abs(float(loss_ref)), logit_scale))
    # dloss in another dtype than the logits (a float64 upstream of float32 logits): both sides
    # return dlogits in the logits' dtype, which assert_close checks
    dlogits_ref = reference.cross_entropy_backward(dloss_type(dloss), cache_ref)
    assert_close(kernel.cross_entropy_backward(dloss_type(dloss), cache), dlogits_ref, "dlogits")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dloss", [-2.0, np.float32(-2.0), np.float64(-2.0), np.array(-2.0), np.array(-2)])
def test_dlogits_keep_the_logits_dtype_whatever_the_type_of_dloss(dtype, dloss):
    """Every (logits dtype, dloss type) pair, not left to the draws above: a float64 upstream
    of float32 logits must not promote dlogits to float64 on either side."""
    logits = np.random.default_rng(0).standard_normal((3, 5)).astype(dtype)
    targets = np.array([1, -100, 4])
    dlogits = kernel.cross_entropy_backward(dloss, kernel.cross_entropy_forward(logits, targets)[1])
    dlogits_ref = reference.cross_entropy_backward(dloss, reference.cross_entropy_forward(logits, targets)[1])
    assert_close(dlogits, dlogits_ref, "dlogits")      # same dtype too
    assert dlogits.dtype == dtype


@given(dtype=st.sampled_from([np.float32, np.float64]), N=st.integers(1, 6), V=st.integers(1, 9),
       bad=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([np.nan, np.inf, -np.inf])), min_size=1,
                    max_size=4),
       whole_row=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_non_finite_logits_of_ignored_rows_give_no_gradient_on_either_side(dtype, N, V, bad, whole_row, seed):
    """An ignored row (padding, an SFT prompt) takes no part in the loss, whatever its logits: a
    diverged or vocabulary-masked row of NaN/inf there must not turn the gradient NaN.  The kernel
    skips such rows; the reference multiplied their NaN probabilities by 0 and got NaN."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, V)).astype(dtype)
    targets = rng.integers(0, V, size=N)
    targets[rng.random(N) < 0.5] = -100
    targets[rng.integers(N)] = -100   # at least one ignored row, or the draw tests nothing
    ignored_rows = np.flatnonzero(targets == -100)
    for index, value in bad:
        row = ignored_rows[index % ignored_rows.size]
        logits[row, slice(None) if whole_row else index % V] = value
    with np.errstate(invalid="ignore", over="ignore"):
        loss, cache = kernel.cross_entropy_forward(logits, targets)
        loss_ref, cache_ref = reference.cross_entropy_forward(logits, targets)
        dlogits = kernel.cross_entropy_backward(dtype(0.5), cache)
        dlogits_ref = reference.cross_entropy_backward(dtype(0.5), cache_ref)
    assert np.isfinite(loss) and np.isfinite(loss_ref)
    assert_close(loss, loss_ref, "loss", scale=max(abs(float(loss_ref)), 1.0))
    assert np.all(dlogits_ref[ignored_rows] == 0) and np.all(dlogits[ignored_rows] == 0)
    assert_close(dlogits, dlogits_ref, "dlogits")


def test_every_backward_call_returns_a_fresh_gradient():
    """The first call hands over the gradient computed in forward; later calls recompute it,
    so modifying one result never changes another."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 11))
    targets = rng.integers(0, 11, size=(3, 4))
    _, cache = kernel.cross_entropy_forward(logits, targets)
    first = kernel.cross_entropy_backward(1.0, cache)
    expected = first.copy()
    first[:] = 123.0
    second = kernel.cross_entropy_backward(1.0, cache)
    assert_close(second, expected, "second call")
    assert_close(kernel.cross_entropy_backward(2.0, cache), 2 * expected, "third call")


def test_large_logits_do_not_overflow():
    logits = np.array([[1e4, 0.0, -1e4]], dtype=np.float32)
    loss, cache = kernel.cross_entropy_forward(logits, np.array([1]))
    assert np.isclose(loss, 1e4)
    dlogits = kernel.cross_entropy_backward(1.0, cache)
    assert np.allclose(dlogits, [[1.0, -1.0, 0.0]])


def test_nan_logits_give_a_nan_loss():
    logits = np.array([[0.0, np.nan, 1.0]])
    loss, _ = kernel.cross_entropy_forward(logits, np.array([0]))
    assert np.isnan(loss)
