"""A masked-LM model (objective "mlm", as Llama.from_pretrained reads a `npllama train --objective
mlm` folder) runs bidirectionally unless told otherwise: its forward(tokens) read each position
with the causal mask, so filling in a masked token from Python gave logits the model was never
trained to give, silently.  A causal model is unchanged."""
import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.objectives import IGNORE_INDEX, mlm_loss

CONFIG = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
TOKENS = np.array([[1, 5, 9, 12, 7, 3]])


def model(objective):
    return Llama(CONFIG, seed=0, dtype=np.float64, objective=objective)


def test_a_masked_lm_models_forward_reads_the_tokens_after_each_position():
    mlm = model("mlm")
    later_changed = TOKENS.copy()
    later_changed[0, -1] = 20
    assert np.abs(mlm.forward(TOKENS)[0, 0] - mlm.forward(later_changed)[0, 0]).max() > 1e-9
    np.testing.assert_array_equal(mlm.forward(TOKENS), mlm.forward_with_caches(TOKENS, causal=False)[0])
    np.testing.assert_array_equal(mlm.hidden_forward(TOKENS)[0], mlm.hidden_forward(TOKENS, causal=False)[0])


def test_a_masked_lm_models_loss_is_its_masked_lm_loss():
    mlm = model("mlm")
    targets = np.full_like(TOKENS, IGNORE_INDEX)
    targets[0, 2] = 9
    assert mlm.loss(TOKENS, targets) == mlm_loss(mlm, TOKENS, targets)
    loss, grads = mlm.loss_and_grads(TOKENS, targets)
    loss_b, grads_b = mlm.loss_and_grads(TOKENS, targets, causal=False)
    assert loss == loss_b and all(np.array_equal(grads[n], grads_b[n]) for n in grads)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_given_is_obeyed_whatever_the_objective(causal):
    for objective in ("causal", "mlm"):
        m = model(objective)
        expected = model("mlm" if not causal else "causal").forward(TOKENS)
        np.testing.assert_array_equal(m.forward_with_caches(TOKENS, causal=causal)[0], expected)


def test_a_causal_models_forward_is_still_causal():
    causal = model("causal")
    later_changed = TOKENS.copy()
    later_changed[0, -1] = 20
    np.testing.assert_array_equal(causal.forward(TOKENS)[0, :-1], causal.forward(later_changed)[0, :-1])


def test_a_masked_lm_model_does_not_decode_with_a_kv_cache():
    # forward_step ran causally on a masked-LM model, whose forward now runs bidirectionally: its
    # logits silently differed from forward's, which its docstring says they equal
    from npllama.kernels.decode import FastDecoder

    mlm = model("mlm")
    with pytest.raises(ValueError, match="masked-LM model.*forward"):
        mlm.forward_step(TOKENS, mlm.new_kv_cache(1))
    with pytest.raises(ValueError, match="masked-LM model.*forward"):
        FastDecoder(mlm)
    causal = model("causal")
    np.testing.assert_allclose(causal.forward_step(TOKENS, causal.new_kv_cache(1)), causal.forward(TOKENS),
                               rtol=1e-12, atol=1e-12)
