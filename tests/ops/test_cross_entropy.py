"""Cross-entropy: mean of logsumexp(logits) - logits[target] over targets != ignore_index."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op
from npllama.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward

lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def _setup(seed, lead_shape, V, ignore_fraction=0.0, dtype=np.float64, ignore_index=-100):
    """Random logits and targets; about ignore_fraction of targets ignored, but one always counted."""
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal(lead_shape + (V,))).astype(dtype)
    targets = rng.integers(0, V, size=lead_shape)
    targets[rng.random(lead_shape) < ignore_fraction] = ignore_index
    targets.reshape(-1)[rng.integers(targets.size)] = rng.integers(0, V)  # at least one counted
    return rng, logits, targets


def _naive_loss(logits, targets, ignore_index=-100):
    """float64, straight from the definition -log(exp(z_t) / sum exp(z)); only for moderate logits."""
    logits = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    losses = [-np.log(np.exp(z[t]) / np.exp(z).sum()) for z, t in zip(logits, targets) if t != ignore_index]
    return np.mean(losses) if losses else 0.0


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 6), ignore_fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_gradcheck(seed, lead_shape, V, ignore_fraction):
    # ignore_fraction = 1.0: exactly one counted target, all others ignored
    _, logits, targets = _setup(seed, lead_shape, V, ignore_fraction)
    check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets], wrt=[0],
             names=["logits", "targets"], seed=seed % 1000).raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 6), ignore_fraction=st.sampled_from([0.0, 0.5]))
def test_forward_matches_definition(seed, lead_shape, V, ignore_fraction):
    _, logits, targets = _setup(seed, lead_shape, V, ignore_fraction)
    loss, _ = cross_entropy_forward(logits, targets)
    assert np.ndim(loss) == 0 and loss.dtype == np.float64
    np.testing.assert_allclose(loss, _naive_loss(logits, targets), rtol=1e-12, atol=1e-15)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 6), ignore_fraction=st.sampled_from([0.0, 0.5, 1.0]),
       dloss=st.floats(-3, 3))
def test_backward_is_softmax_minus_onehot_over_counted(seed, lead_shape, V, ignore_fraction, dloss):
    _, logits, targets = _setup(seed, lead_shape, V, ignore_fraction)
    _, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(dloss, cache)
    assert dlogits.shape == logits.shape
    counted = targets != -100
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(V)[np.where(counted, targets, 0)]
    expected = dloss * (probs - onehot) * counted[..., None] / counted.sum()
    np.testing.assert_allclose(dlogits, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dlogits.sum(-1), 0.0, atol=1e-14)  # each row of softmax - onehot sums to 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_stable(dtype):
    # Shifting a row by a constant leaves the loss unchanged, so logits ~1e4 must give the loss
    # of small logits computed naively in float64 -- where exp(1e4) would overflow.
    rng = np.random.default_rng(0)
    small = rng.standard_normal((3, 4, 7))
    targets = rng.integers(0, 7, size=(3, 4))
    shift = 1e4 * np.sign(rng.standard_normal((3, 4, 1)))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, cache = cross_entropy_forward((small + shift).astype(dtype), targets)
        dlogits = cross_entropy_backward(1.0, cache)
    # float32 carries ~7 digits of 1e4, so the small part keeps only ~1e-3 of its precision
    rtol = 1e-9 if dtype == np.float64 else 5e-3
    np.testing.assert_allclose(loss, _naive_loss(small, targets), rtol=rtol)
    assert np.all(np.isfinite(dlogits))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_gaps_between_logits(dtype):
    # Gaps of 1e4: the softmax is one-hot to machine precision, so the loss of each row is
    # (largest logit - target logit) and exactly 0 when the target is the largest.
    logits = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]], dtype=dtype)
    targets = np.array([0, 1, 1])
    with np.errstate(over="raise", invalid="raise"):
        loss, cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, cache)
    assert loss == dtype(3e4 / 3)
    expected = np.array([[0, 0, 0], [1, -1, 0], [0, -1, 1]], dtype=np.float64) / 3
    np.testing.assert_array_equal(dlogits, expected.astype(dtype))


def test_all_targets_ignored_gives_zero_loss_and_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((2, 3, 5))
    targets = np.full((2, 3), -100)
    with np.errstate(all="raise"):  # no 0/0 anywhere
        loss, cache = cross_entropy_forward(logits, targets)
        dlogits = cross_entropy_backward(1.0, cache)
    assert loss == 0.0 and loss.dtype == np.float64
    np.testing.assert_array_equal(dlogits, 0.0)


def test_one_counted_target_is_that_rows_loss():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 4, 6))
    targets = np.full((2, 4), -100)
    targets[1, 2] = 3
    loss, cache = cross_entropy_forward(logits, targets)
    z = logits[1, 2]
    np.testing.assert_allclose(loss, np.log(np.exp(z).sum()) - z[3], rtol=1e-12)
    dlogits = cross_entropy_backward(1.0, cache)
    others = np.ones((2, 4), dtype=bool)
    others[1, 2] = False
    np.testing.assert_array_equal(dlogits[others], 0.0)


def test_ignored_rows_do_not_affect_the_loss():
    rng, logits, targets = _setup(2, (3, 4), 5, ignore_fraction=0.5)
    loss, _ = cross_entropy_forward(logits, targets)
    changed = logits.copy()
    changed[targets == -100] = 1e3 * rng.standard_normal((int((targets == -100).sum()), 5))
    assert cross_entropy_forward(changed, targets)[0] == loss


@pytest.mark.parametrize("ignore_index", [-1, 2])
def test_custom_ignore_index(ignore_index):
    # ignore_index may even be a real class id: that class is then never counted
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 5))
    targets = np.array([0, ignore_index, 4, ignore_index])
    loss, _ = cross_entropy_forward(logits, targets, ignore_index=ignore_index)
    np.testing.assert_allclose(loss, _naive_loss(logits, targets, ignore_index), rtol=1e-12)
    check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets], wrt=[0],
             extra_kwargs={"ignore_index": ignore_index}).raise_if_failed()


def test_single_position():
    # logits (V,) with 0-d targets: one position
    logits = np.array([1.0, 2.0, 3.0])
    loss, cache = cross_entropy_forward(logits, np.array(2))
    np.testing.assert_allclose(loss, np.log(np.exp(logits).sum()) - 3.0, rtol=1e-12)
    assert cross_entropy_backward(1.0, cache).shape == (3,)


def test_dloss_scales_the_gradient():
    _, logits, targets = _setup(4, (2, 3), 4, 0.3)
    _, cache = cross_entropy_forward(logits, targets)
    np.testing.assert_allclose(cross_entropy_backward(2.5, cache), 2.5 * cross_entropy_backward(1.0, cache),
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_logits(dtype):
    _, logits, targets = _setup(0, (2, 3), 5, 0.3, dtype)
    loss, cache = cross_entropy_forward(logits, targets.astype(np.int32))
    assert isinstance(loss, np.generic) and loss.shape == () and loss.dtype == dtype
    assert cross_entropy_backward(np.float64(1.0), cache).dtype == dtype
    assert cross_entropy_backward(np.array(1.0), cache).dtype == dtype


@pytest.mark.parametrize("bad_target", [5, 17, -1, -101])
def test_out_of_range_targets_rejected(bad_target):
    targets = np.array([[0, bad_target, -100]])
    with pytest.raises(ValueError, match="targets") as info:
        cross_entropy_forward(np.zeros((1, 3, 5)), targets)
    assert str(bad_target) in str(info.value) and "V = 5" in str(info.value)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match=r"targets has shape \(2, 4\), expected \(2, 3\)"):
        cross_entropy_forward(np.zeros((2, 3, 5)), np.zeros((2, 4), dtype=np.int64))


def test_float_targets_rejected():
    with pytest.raises(TypeError, match="targets"):
        cross_entropy_forward(np.zeros((2, 5)), np.zeros(2))


def test_integer_logits_rejected():
    with pytest.raises(TypeError, match="logits"):
        cross_entropy_forward(np.zeros((2, 5), dtype=np.int64), np.zeros(2, dtype=np.int64))


def test_empty_vocabulary_rejected():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy_forward(np.zeros((2, 0)), np.zeros(2, dtype=np.int64))


def test_non_integer_ignore_index_rejected():
    with pytest.raises(TypeError, match="ignore_index"):
        cross_entropy_forward(np.zeros((2, 5)), np.zeros(2, dtype=np.int64), ignore_index=-100.0)


def test_backward_rejects_non_scalar_dloss():
    _, cache = cross_entropy_forward(np.zeros((2, 5)), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="dloss"):
        cross_entropy_backward(np.ones(2), cache)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_exercise_closed_form_agrees_with_the_reference_on_a_non_finite_ignored_row(bad, monkeypatch):
    """The classroom exercise checks a student's dlogits against its own closed form; with NaN or
    inf logits in an ignored row, that closed form must give the row 0 as the reference (and the
    kernel) do, not NaN * 0 = NaN, or the reference itself is failed as "yours 0, expected nan"."""
    from npllama.exercises import EXERCISES
    exercise = EXERCISES["cross_entropy"]
    params = dict(lead_shape=(2, 3), V=5, ignore_fraction=0.5, seed=1)
    finite_case = exercise.case

    def case_with_a_bad_ignored_row(p, dtype=np.float64):
        case = finite_case(p, dtype)
        logits, targets, _ = case.inputs
        ignored = np.flatnonzero(targets.reshape(-1) == -100)
        assert ignored.size, "the case needs an ignored row"
        logits.reshape(-1, logits.shape[-1])[ignored[0], 1] = bad
        return case

    monkeypatch.setattr(exercise, "case", case_with_a_bad_ignored_row)
    with np.errstate(invalid="ignore"):
        exercise.check_closed_form(cross_entropy_backward, params)   # raises CheckFailed if they differ
