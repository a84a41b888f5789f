"""The whole model: gradient checks in float64, invariants, the KV cache, tied embeddings, bad input."""
import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, gradcheck, use_backend
from npllama.gradcheck import rel_error


def tiny_config(**overrides):
    fields = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                  rms_norm_eps=1e-5)
    fields.update(overrides)
    return LlamaConfig(**fields)


def random_batch(config, B, T, seed=0, ignore_fraction=0.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T))
    targets = rng.integers(0, config.vocab_size, size=(B, T))
    targets[rng.random((B, T)) < ignore_fraction] = -100
    return tokens, targets


def perturbed_model(config, seed=0, dtype=np.float64):
    """Random init has unit norms; perturb them so the norm weights' gradients are exercised fully."""
    model = Llama(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        p += (0.3 if p.ndim == 1 else 0.2) * rng.standard_normal(p.shape).astype(dtype)
    return model


def check_model_gradients(model, tokens, targets, max_entries=None, attention_mask=None, causal=None):
    with use_backend("numpy"):
        loss, grads = model.loss_and_grads(tokens, targets, attention_mask, causal=causal)
        assert set(grads) == set(model.params)
        report = gradcheck(lambda *_: model.loss(tokens, targets, attention_mask, causal=causal), model.params,
                           grads, max_entries=max_entries)
    report.raise_if_failed()
    return report


CASES = {
    "mha": tiny_config(),
    "gqa": tiny_config(num_attention_heads=4, num_key_value_heads=2, hidden_size=8),
    "mqa_tied": tiny_config(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    "llama3_rope": tiny_config(rope_theta=500000.0, max_position_embeddings=32,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 4}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_whole_model_gradients_match_central_differences(name):
    config = CASES[name]
    model = perturbed_model(config)
    tokens, targets = random_batch(config, B=2, T=6, ignore_fraction=0.3)
    report = check_model_gradients(model, tokens, targets)
    assert report.max_rel_err < 1e-7


ROPE_SCALINGS = [None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0},
                 CASES["llama3_rope"].rope_scaling]


@st.composite
def padding_masks(draw, B, T):
    """None, or a 0/1 (B, T) attention mask, each row right- or left-padded, with a real token left."""
    if not draw(st.booleans()):
        return None
    mask = np.ones((B, T), dtype=np.int64)
    for row in range(B):
        n_pad = draw(st.integers(0, T - 1))
        if draw(st.booleans()):
            mask[row, T - n_pad:] = 0
        else:
            mask[row, :n_pad] = 0
    return mask


# The fixed cases' mask (B = 2, T = 5): a right-padded row, and a left-padded one whose last token is real
OVER_SHAPES_MASK = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 5), n_layers=st.integers(1, 2), n_kv_heads=st.sampled_from([1, 2, 4]),
       ratio=st.sampled_from([1, 2]), head_dim=st.sampled_from([2, 4]), hidden=st.integers(3, 8),
       intermediate=st.integers(1, 6), vocab=st.integers(3, 9), tied=st.booleans(), causal=st.booleans(),
       rope_scaling=st.sampled_from(ROPE_SCALINGS), seed=st.integers(0, 100), data=st.data())
# Every run, not only the runs whose draws reach them: linear RoPE (no fixed case of its own), two
# layers, left and right padding, the bidirectional stack with its pad id (about 1 run in 8 draws no
# linear case with T >= 2, and 1 in 10 no padded row)
@example(B=2, T=5, n_layers=2, n_kv_heads=1, ratio=2, head_dim=4, hidden=6, intermediate=5, vocab=7, tied=False,
         causal=True, rope_scaling=ROPE_SCALINGS[1], seed=0, data=None)
@example(B=2, T=5, n_layers=2, n_kv_heads=2, ratio=1, head_dim=2, hidden=5, intermediate=4, vocab=7, tied=True,
         causal=False, rope_scaling=ROPE_SCALINGS[1], seed=1, data=None)
def test_whole_model_gradients_over_shapes(B, T, n_layers, n_kv_heads, ratio, head_dim, hidden, intermediate, vocab,
                                           tied, causal, rope_scaling, seed, data):
    # Bidirectional (the masked-LM stack): always with a pad_token_id that occurs, whose embedding row
    # must get its true gradient there (the pad-row rule is causal-only; test_pad_token_row_gets_no_gradient_...)
    pad_token_id = None if causal else 3 if data is None else data.draw(st.integers(0, vocab - 1),
                                                                          label="pad_token_id")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, head_dim=head_dim, intermediate_size=intermediate,
                         num_hidden_layers=n_layers, num_attention_heads=n_kv_heads * ratio,
                         num_key_value_heads=n_kv_heads, max_position_embeddings=8, tie_word_embeddings=tied,
                         rope_scaling=rope_scaling, pad_token_id=pad_token_id)
    model = perturbed_model(config, seed=seed)
    tokens, targets = random_batch(config, B, T, seed=seed, ignore_fraction=0.3)
    targets[0, 0] = 1  # at least one counted target
    if pad_token_id is not None:
        tokens[-1, -1] = pad_token_id
    attention_mask = OVER_SHAPES_MASK if data is None else data.draw(padding_masks(B, T), label="attention_mask")
    check_model_gradients(model, tokens, targets, max_entries=10, attention_mask=attention_mask, causal=causal)


def test_gradient_with_all_targets_ignored_but_one():
    config = CASES["gqa"]
    model = perturbed_model(config)
    tokens, targets = random_batch(config, 2, 5)
    targets[:] = -100
    targets[1, 2] = 3
    check_model_gradients(model, tokens, targets)


def test_gradients_with_padding_mask():
    config = CASES["gqa"]
    model = perturbed_model(config)
    tokens, targets = random_batch(config, 2, 5)
    mask = np.ones((2, 5), dtype=np.int64)
    mask[1, 3:] = 0
    targets[1, 3:] = -100
    check_model_gradients(model, tokens, targets, attention_mask=mask)


def test_causal_changing_a_token_never_changes_earlier_logits():
    config = CASES["gqa"]
    model = perturbed_model(config)
    tokens, _ = random_batch(config, 1, 8)
    logits = model.forward(tokens)
    for t in range(8):
        changed = tokens.copy()
        changed[0, t] = (changed[0, t] + 1) % config.vocab_size
        new_logits = model.forward(changed)
        np.testing.assert_array_equal(new_logits[:, :t], logits[:, :t])
        assert not np.allclose(new_logits[:, t], logits[:, t])


def test_right_padding_does_not_change_real_positions():
    config = CASES["mha"]
    model = perturbed_model(config)
    tokens, _ = random_batch(config, 1, 7)
    short = model.forward(tokens[:, :4])
    padded = tokens.copy()
    padded[0, 4:] = 0
    mask = np.array([[1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_allclose(model.forward(padded, attention_mask=mask)[:, :4], short, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kv_cache_decoding_equals_full_forward(name, dtype):
    config = CASES[name]
    model = perturbed_model(config, dtype=dtype)
    tokens, _ = random_batch(config, 2, 12)
    full = model.forward(tokens)
    cache = model.new_kv_cache(batch_size=2)
    steps = [model.forward_step(tokens[:, :5], cache)]  # prefill the "prompt" in one call
    for t in range(5, 12):
        steps.append(model.forward_step(tokens[:, t:t + 1], cache))
    decoded = np.concatenate(steps, axis=1)
    assert decoded.dtype == dtype and cache.length == 12
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert rel_error(decoded, full) < tol


def test_kv_cache_rejects_overflow_and_batch_mismatch():
    config = CASES["mha"]
    model = Llama(config, seed=0)
    cache = model.new_kv_cache(batch_size=1, max_length=4)
    model.forward_step(np.zeros((1, 3), dtype=np.int64), cache)
    with pytest.raises(ValueError, match="KV cache holds at most 4"):
        model.forward_step(np.zeros((1, 2), dtype=np.int64), cache)
    with pytest.raises(ValueError, match="batch size"):
        model.forward_step(np.zeros((2, 1), dtype=np.int64), cache)


def test_tied_embedding_gradient_is_sum_of_both_uses():
    tied_cfg = CASES["mqa_tied"]
    untied_cfg = dataclasses.replace(tied_cfg, tie_word_embeddings=False)
    tied = perturbed_model(tied_cfg)
    untied = Llama(untied_cfg, dtype=np.float64, params={**tied.params,
                                                          "lm_head.weight": tied.params["model.embed_tokens.weight"].copy()})
    tokens, targets = random_batch(tied_cfg, 2, 5)
    loss_t, g_t = tied.loss_and_grads(tokens, targets)
    loss_u, g_u = untied.loss_and_grads(tokens, targets)
    assert loss_t == pytest.approx(loss_u, rel=1e-14)
    assert "lm_head.weight" not in g_t
    np.testing.assert_allclose(g_t["model.embed_tokens.weight"],
                               g_u["model.embed_tokens.weight"] + g_u["lm_head.weight"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("tied", [False, True])
def test_pad_token_row_gets_no_gradient_from_lookups(backend, tied):
    """As transformers' nn.Embedding(padding_idx=pad_token_id): the pad row's lookup gradient is
    dropped, every other gradient is unchanged; tied, the row keeps the lm_head's part."""
    plain_cfg = tiny_config(tie_word_embeddings=tied)
    padded_cfg = dataclasses.replace(plain_cfg, pad_token_id=3)
    plain = perturbed_model(plain_cfg)
    padded = Llama(padded_cfg, dtype=np.float64, params={n: p.copy() for n, p in plain.params.items()})
    tokens, targets = random_batch(plain_cfg, 2, 6)
    tokens[:, ::2] = 3
    with use_backend(backend):
        _, g_plain = plain.loss_and_grads(tokens, targets)
        _, g_pad = padded.loss_and_grads(tokens, targets)
    for name in g_plain:
        if name != "model.embed_tokens.weight":
            np.testing.assert_array_equal(g_pad[name], g_plain[name])
    dE_plain, dE_pad = g_plain["model.embed_tokens.weight"], g_pad["model.embed_tokens.weight"]
    np.testing.assert_array_equal(np.delete(dE_pad, 3, axis=0), np.delete(dE_plain, 3, axis=0))
    if tied:   # what remains is the head's part: the untied model's lm_head gradient row
        untied = Llama(dataclasses.replace(padded_cfg, tie_word_embeddings=False), dtype=np.float64,
                       params={**plain.params, "lm_head.weight": plain.params["model.embed_tokens.weight"]})
        _, g_untied = untied.loss_and_grads(tokens, targets)
        np.testing.assert_allclose(dE_pad[3], g_untied["lm_head.weight"][3], rtol=1e-12, atol=1e-15)
        assert np.abs(dE_pad[3]).max() > 0
    else:
        assert not dE_pad[3].any() and dE_plain[3].any()


def test_params_are_the_live_state():
    model = Llama(CASES["mha"], seed=0)
    tokens, _ = random_batch(CASES["mha"], 1, 4)
    before = model.forward(tokens)
    model.params["model.norm.weight"] *= 2.0  # an optimizer-style in-place update
    assert not np.allclose(model.forward(tokens), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the point
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_diverged_model_gives_a_nan_loss_not_an_error(backend):
    # q and k so large that the attention scores overflow to inf: the loss is NaN on both
    # backends, and the training loops report that (not a ValueError from inside softmax)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float32)
    for name in ("q_proj", "k_proj"):
        model.params[f"model.layers.0.self_attn.{name}.weight"][:] = 1e30
    tokens = np.zeros((1, 8), dtype=np.int64)
    with use_backend(backend):
        loss, _ = model.loss_and_grads(tokens, tokens)
    assert np.isnan(loss)


def test_float32_and_float64_models_agree():
    config = CASES["gqa"]
    m32, m64 = Llama(config, seed=3, dtype=np.float32), Llama(config, seed=3, dtype=np.float64)
    tokens, targets = random_batch(config, 2, 6)
    logits32 = m32.forward(tokens)
    assert logits32.dtype == np.float32 and m64.forward(tokens).dtype == np.float64
    assert rel_error(logits32, m64.forward(tokens)) < 1e-5
    _, g32 = m32.loss_and_grads(tokens, targets)
    _, g64 = m64.loss_and_grads(tokens, targets)
    for name in g64:
        assert g32[name].dtype == np.float32
        assert rel_error(g32[name], g64[name]) < 1e-4, name


def test_init_is_seeded_and_hugging_face_like():
    config = LlamaConfig.from_preset("tiny")
    a, b, c = Llama(config, seed=1), Llama(config, seed=1), Llama(config, seed=2)
    np.testing.assert_array_equal(a.params["model.layers.0.mlp.up_proj.weight"],
                                  b.params["model.layers.0.mlp.up_proj.weight"])
    assert not np.array_equal(a.params["model.layers.0.mlp.up_proj.weight"],
                              c.params["model.layers.0.mlp.up_proj.weight"])
    assert np.std(a.params["model.embed_tokens.weight"]) == pytest.approx(0.02, rel=0.05)
    np.testing.assert_array_equal(a.params["model.norm.weight"], 1.0)
    assert list(a.params) == list(config.param_shapes())
    assert a.num_parameters() == config.num_parameters()


@pytest.mark.parametrize("tokens, error, match", [
    (np.zeros((2, 3)), TypeError, "integers"),
    (np.zeros(3, dtype=np.int64), ValueError, r"tokens\[None\]"),
    (np.full((1, 3), 11), ValueError, "outside the vocabulary"),
    (np.full((1, 3), -1), ValueError, "outside the vocabulary"),
    (np.zeros((1, 17), dtype=np.int64), ValueError, "max_position_embeddings"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, "empty"),
])
def test_bad_tokens_are_refused(tokens, error, match):
    model = Llama(CASES["mha"], seed=0)
    with pytest.raises(error, match=match):
        model.forward(tokens)


def test_bad_targets_masks_and_dtypes_are_refused():
    model = Llama(CASES["mha"], seed=0)
    tokens = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="targets must have"):
        model.loss_and_grads(tokens, np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="targets must be integers"):
        model.loss_and_grads(tokens, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="targets"):
        model.loss_and_grads(tokens, np.full((2, 3), 11))
    with pytest.raises(ValueError, match="attention_mask"):
        model.forward(tokens, attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="attention_mask"):
        model.forward(tokens, attention_mask=np.full((2, 3), 2))
    with pytest.raises(TypeError, match="dtype"):
        Llama(CASES["mha"], dtype=np.float16)
    with pytest.raises(TypeError, match="LlamaConfig"):
        Llama({"vocab_size": 3})


# ----- left padding under the causal mask (a model that drops the mask must fail here) ----------------

def left_padded_batch(config, seed=0):
    """Row 0 unpadded; row 1 the same 4 real tokens after 3 pads; row 2 one real token after 6 pads."""
    rng = np.random.default_rng(seed)
    real = rng.integers(1, config.vocab_size, size=4)
    tokens = np.zeros((3, 7), dtype=np.int64)
    tokens[0, :4], tokens[0, 4:] = real, rng.integers(1, config.vocab_size, size=3)
    tokens[1, 3:] = real
    tokens[2, 6] = real[0]
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return tokens, mask, real


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["gqa", "llama3_rope"])
def test_left_padding_gives_the_unpadded_logits(backend, name):
    # RoPE's scores depend only on q_pos - k_pos, so real tokens shifted right by the pads and
    # masked from them see exactly what they saw unpadded
    config = CASES[name]
    model = perturbed_model(config)
    tokens, mask, real = left_padded_batch(config)
    with use_backend(backend):
        unpadded = model.forward(real[None])                           # (1, 4, V)
        logits = model.forward(tokens, attention_mask=mask)
        np.testing.assert_allclose(logits[1, 3:], unpadded[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(logits[2, 6], unpadded[0, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(logits[0, :4], unpadded[0], rtol=1e-10, atol=1e-12)
        assert np.all(np.isfinite(logits))                             # padded queries see no key: not NaN
        # and the mask is what makes it so: without it the pads leak into the real positions
        assert not np.allclose(model.forward(tokens)[1, 3:], unpadded[0], rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_left_padding_loss_and_gradients_equal_the_unpadded_rows(backend):
    config = CASES["gqa"]
    model = perturbed_model(config)
    tokens, mask, real = left_padded_batch(config)
    targets = np.full_like(tokens, -100)
    targets[1, 3:6] = real[1:]            # next-token targets of the real tokens only
    with use_backend(backend):
        loss, grads = model.loss_and_grads(tokens[1:2], targets[1:2], attention_mask=mask[1:2])
        expected_loss, expected = model.loss_and_grads(real[None, :3], real[None, 1:])
    assert loss == pytest.approx(expected_loss, rel=1e-10)
    for name in model.params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_gradients_with_left_padding_and_rows_of_one_real_token():
    config = CASES["gqa"]
    model = perturbed_model(config)
    tokens, mask, _ = left_padded_batch(config)
    rng = np.random.default_rng(3)
    targets = rng.integers(0, config.vocab_size, size=tokens.shape)
    targets[mask == 0] = -100
    check_model_gradients(model, tokens, targets, attention_mask=mask)
