"""One rule for a padding mask wherever one is taken (Llama's forward and loss, the classifier's
pooling, the ops' last_token_index, mask_tokens): booleans, or numbers that are exactly 0 or 1 -- whatever their
dtype, as transformers takes them (its tokenizers give int64; a mask read from a table is often
float64).  Any other value is refused by name, so an additive mask (0 / -inf) or a weight is never
rounded into a padding mask."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig
from npllama.finetune import SequenceClassifier
from npllama.objectives import mask_tokens
from npllama.ops.classifier import last_token_index

CONFIG = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=8)
MODEL = Llama(CONFIG, seed=0, dtype=np.float64)
DTYPES = [np.int8, np.int64, np.uint8, np.float16, np.float32, np.float64]


@st.composite
def masks(draw):
    """A bool (B, T) mask with a real token in every row."""
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B))
    mask = np.array(rows, dtype=bool).reshape(B, T)
    mask[:, draw(st.integers(0, T - 1))] = True
    return mask


@settings(max_examples=25, deadline=None)
@given(masks(), st.sampled_from(DTYPES))
def test_a_0_1_mask_of_any_numeric_dtype_is_the_bool_mask(mask, dtype):
    tokens = np.arange(mask.size).reshape(mask.shape) % CONFIG.vocab_size
    np.testing.assert_array_equal(MODEL.forward(tokens, attention_mask=mask.astype(dtype)),
                                  MODEL.forward(tokens, attention_mask=mask))
    np.testing.assert_array_equal(last_token_index(mask.astype(dtype)), last_token_index(mask))


def test_a_float_mask_goes_through_the_classifier_and_the_loss():
    tokens, mask = np.array([[1, 2, 3, 0]]), np.array([[1.0, 1.0, 1.0, 0.0]])
    classifier = SequenceClassifier(MODEL, ["a", "b"])
    loss, _ = classifier.loss_and_grads(tokens, mask, [1])
    assert loss == classifier.loss_and_grads(tokens, mask.astype(bool), [1])[0]
    targets = np.array([[2, 3, 4, 5]])
    assert MODEL.loss(tokens, targets, attention_mask=mask) == MODEL.loss(tokens, targets, attention_mask=mask > 0)


@pytest.mark.parametrize("call", [lambda m: MODEL.forward(np.array([[1, 2, 3]]), attention_mask=m),
                                  last_token_index], ids=["Llama.forward", "last_token_index"])
@pytest.mark.parametrize("mask, error, message", [
    (np.array([[1.0, 0.5, 1.0]]), ValueError, "got 0.5"),
    (np.array([[0.0, -np.inf, 0.0]]), ValueError, "got -inf"),
    (np.array([[1.0, np.nan, 1.0]]), ValueError, "got nan"),
    (np.array([[1, 2, 1]]), ValueError, "got 2"),
    (np.array([["1", "1", "0"]]), TypeError, "got dtype <U1"),
])
def test_any_other_mask_is_refused_naming_the_value(call, mask, error, message):
    with pytest.raises(error, match="attention_mask must hold 0/1 numbers or booleans") as e:
        call(mask)
    assert message in str(e.value)


@pytest.mark.parametrize("mask, error, message", [
    (np.array([[0.0, -np.inf, 0.0, 0.0]]), ValueError, "got -inf"),
    (np.array([[1, 2, 1, 1]]), ValueError, "got 2"),
    (np.array([[1, 1, 1]]), ValueError, "attention_mask must have the tokens' shape (1, 4), got (1, 3)"),
])
def test_mask_tokens_holds_its_padding_mask_to_the_same_rule(mask, error, message):
    """mask_tokens took any array and cast it to bool: an additive mask (0 / -inf) chose its
    padding (the -inf) for masking, and a mask of the wrong shape was broadcast."""
    with pytest.raises(error) as e:
        mask_tokens_of(np.array([[1, 2, 3, 4]]), mask)
    assert message in str(e.value)


def test_mask_tokens_takes_a_0_1_float_mask_as_the_bool_one():
    tokens, mask = np.arange(1, 9).reshape(2, 4), np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    masked = [mask_tokens_of(tokens, m) for m in (mask.astype(np.float64), mask.astype(bool))]
    np.testing.assert_array_equal(masked[0], masked[1])


def mask_tokens_of(tokens, mask):
    """BERT masking of tokens (ids 1..10 of 11) with the padding mask `mask`, seeded."""
    return mask_tokens(tokens, np.random.default_rng(0), mask_token_id=0, vocab_size=11, attention_mask=mask,
                       mlm_probability=0.9)
