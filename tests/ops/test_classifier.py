"""Sequence-classification head: pool each row's last real token, then logits = pooled score_weight^T."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op
from npllama.ops.classifier import classifier_backward, classifier_forward, last_token_index
from npllama.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward

seeds = st.integers(0, 2**32 - 1)


def _setup(seed, B, T, D, num_labels, dtype=np.float64):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, D)).astype(dtype)
    score_weight = rng.standard_normal((num_labels, D)).astype(dtype)
    last_index = rng.integers(0, T, size=B)
    return rng, hidden, score_weight, last_index


@settings(max_examples=25, deadline=None)
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 4), num_labels=st.integers(1, 4))
def test_gradcheck(seed, B, T, D, num_labels):
    _, hidden, score_weight, last_index = _setup(seed, B, T, D, num_labels)
    check_op(classifier_forward, classifier_backward, [hidden, score_weight, last_index], wrt=[0, 1],
             names=["hidden", "score_weight", "last_index"], seed=seed % 1000).raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 4), num_labels=st.integers(2, 4))
def test_gradcheck_with_cross_entropy(seed, B, T, D, num_labels):
    # The fine-tuning loss as a whole: mean CE of the pooled logits against the labels.
    rng, hidden, score_weight, last_index = _setup(seed, B, T, D, num_labels)
    labels = rng.integers(0, num_labels, size=B)

    def forward(hidden, score_weight):
        logits, head_cache = classifier_forward(hidden, score_weight, last_index)
        loss, ce_cache = cross_entropy_forward(logits, labels)
        return loss, (head_cache, ce_cache)

    def backward(dloss, cache):
        head_cache, ce_cache = cache
        return classifier_backward(cross_entropy_backward(dloss, ce_cache), head_cache)

    check_op(forward, backward, [hidden, score_weight], names=["hidden", "score_weight"],
             seed=seed % 1000).raise_if_failed()


def test_only_the_pooled_position_matters():
    _, hidden, score_weight, _ = _setup(0, 3, 5, 4, 3)
    last_index = np.array([4, 2, 0])
    logits, cache = classifier_forward(hidden, score_weight, last_index)
    np.testing.assert_allclose(logits, np.stack([hidden[0, 4], hidden[1, 2], hidden[2, 0]]) @ score_weight.T)
    changed = hidden.copy()
    changed[1, 3:] += 100.0  # padding after row 1's last token
    changed[0, :4] -= 7.0    # tokens before the pooled one: they reach it only through attention
    np.testing.assert_array_equal(classifier_forward(changed, score_weight, last_index)[0], logits)
    dhidden, _ = classifier_backward(np.ones_like(logits), cache)
    nonzero_rows = np.argwhere(np.abs(dhidden).sum(-1) > 0)
    np.testing.assert_array_equal(nonzero_rows, [[0, 4], [1, 2], [2, 0]])


def test_last_token_index_right_and_left_padding():
    mask = np.array([[1, 1, 1, 0, 0],
                     [1, 1, 1, 1, 1],
                     [0, 0, 1, 1, 0],
                     [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 3, 0])
    np.testing.assert_array_equal(last_token_index(mask.astype(bool)), [2, 4, 3, 0])


def test_float32_stays_float32():
    _, hidden, score_weight, last_index = _setup(1, 2, 3, 4, 2, dtype=np.float32)
    logits, cache = classifier_forward(hidden, score_weight, last_index)
    dhidden, dscore = classifier_backward(np.ones_like(logits), cache)
    assert logits.dtype == dhidden.dtype == dscore.dtype == np.float32


def test_bad_inputs():
    _, hidden, score_weight, last_index = _setup(2, 2, 3, 4, 2)
    with pytest.raises(ValueError, match="score_weight must have shape"):
        classifier_forward(hidden, score_weight[:, :3], last_index)
    with pytest.raises(ValueError, match="last_index must have shape"):
        classifier_forward(hidden, score_weight, last_index[:1])
    with pytest.raises(ValueError, match="last_index must lie in"):
        classifier_forward(hidden, score_weight, np.array([0, 3]))
    with pytest.raises(TypeError, match="last_index must be an integer"):
        classifier_forward(hidden, score_weight, last_index.astype(float))
    with pytest.raises(ValueError, match="hidden must have 3 dimension"):
        classifier_forward(hidden[0], score_weight, last_index)
    with pytest.raises(ValueError, match="score_weight must have 2 dimension"):
        classifier_forward(hidden, score_weight[0], last_index)
    with pytest.raises(TypeError, match="score_weight must be float32 or float64"):
        classifier_forward(hidden, score_weight.astype(np.int64), last_index)
    with pytest.raises(ValueError, match="row 1 has no real token"):
        last_token_index(np.array([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="0/1"):
        last_token_index(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="shape \\(batch, seq_len\\)"):
        last_token_index(np.array([1, 1]))
