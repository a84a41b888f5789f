"""Whole-model behaviours a one-line bug could change while every other test passed (found by
mutation testing): the forward against one written out from the definitions, without torch, and
the loss's ignore_index, hidden_forward's causal.

A hard-coded RMSNorm eps (Hugging Face's default 1e-6 in place of the config's) in any of the
three norms, or the config's rope_scaling dropped from the model's RoPE tables, kept every gradient check passing (they are self-consistent) and were caught
only by the optional transformers comparison, which is skipped without torch."""
import numpy as np
import pytest

from npllama import Llama, LlamaConfig, use_backend
from npllama.ops.rope import rope_inv_freq

from .ops.test_attention import naive_attention


def definition_forward(model, tokens):
    """logits (B, T, V) from the definitions: every norm with the config's eps, RoPE angles
    position * inv_freq with the config's scaling, pair (i, i + hd/2) rotated, causal GQA."""
    cfg, p = model.config, model.params
    H, KVH, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    B, T = tokens.shape

    def rmsnorm(x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_norm_eps) * weight

    angles = np.arange(T)[:, None] * rope_inv_freq(hd, cfg.rope_theta, cfg.rope_scaling)[None, :]  # (T, hd/2)
    cos, sin = np.cos(angles), np.sin(angles)

    def rope(x):  # (B, heads, T, hd)
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def heads(y, n):  # (B, T, n*hd) -> (B, n, T, hd)
        return y.reshape(B, T, n, hd).transpose(0, 2, 1, 3)

    x = p["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_hidden_layers):
        w = lambda name: p[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        xn = rmsnorm(x, w("input_layernorm"))
        q = rope(heads(xn @ w("self_attn.q_proj").T, H))
        k = rope(heads(xn @ w("self_attn.k_proj").T, KVH))
        v = heads(xn @ w("self_attn.v_proj").T, KVH)
        a, _ = naive_attention(q, k, v, causal=True)
        h = x + a.transpose(0, 2, 1, 3).reshape(B, T, H * hd) @ w("self_attn.o_proj").T
        hn = rmsnorm(h, w("post_attention_layernorm"))
        gate, up = hn @ w("mlp.gate_proj").T, hn @ w("mlp.up_proj").T
        x = h + (gate / (1 + np.exp(-gate)) * up) @ w("mlp.down_proj").T
    head = p["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    return rmsnorm(x, p["model.norm.weight"]) @ head.T


# eps large enough that 1e-6 in its place moves the logits far beyond round-off (the norms' inputs
# have mean squares ~1e-2..1); LLaMA-3 scaling with a pair in each band (wavelengths 6.3, 20, 63,
# 200 against band edges 32 / 4 = 8 and 32 / 1 = 32).
CONFIGS = {
    "large_eps": dict(rms_norm_eps=0.05),
    "gqa_tied_large_eps": dict(rms_norm_eps=0.05, num_attention_heads=4, num_key_value_heads=2,
                               tie_word_embeddings=True),
    "llama3_rope": dict(rms_norm_eps=1e-5, rope_theta=100.0, head_dim=8, hidden_size=16,
                        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_equals_the_definitions_with_the_configs_eps_and_rope_scaling(name, backend):
    fields = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    cfg = LlamaConfig(**{**fields, **CONFIGS[name]})
    model = Llama(cfg, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in model.params.values():   # norm weights away from 1, matrices large enough to matter
        p += 0.3 * rng.standard_normal(p.shape)
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 7))
    with use_backend(backend):
        logits = model.forward(tokens)
    expected = definition_forward(model, tokens)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("ignore_index", [-1, 3])
def test_loss_and_grads_honour_their_ignore_index(ignore_index, backend):
    # A model passing its default (-100) to the loss instead of the caller's ignore_index kept
    # every other test passing: they all use -100.  The same targets marked with -100 are the answer.
    model = Llama(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16),
                  seed=0, dtype=np.float64)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 11, size=(2, 6))
    targets = rng.integers(0, 11, size=(2, 6))
    ignored = rng.random((2, 6)) < 0.4
    ignored[0, 0], ignored[0, 1] = True, False
    ignored |= targets == ignore_index            # a real target equal to ignore_index is ignored too
    marked = np.where(ignored, ignore_index, targets)
    with use_backend(backend):
        loss, grads = model.loss_and_grads(tokens, marked, ignore_index=ignore_index)
        loss_only = model.loss(tokens, marked, ignore_index=ignore_index)
        expected_loss, expected_grads = model.loss_and_grads(tokens, np.where(ignored, -100, targets))
    assert loss == pytest.approx(expected_loss, rel=1e-12) and loss_only == pytest.approx(expected_loss, rel=1e-12)
    for name, g in expected_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-10, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_hidden_forward_honours_causal_false(backend):
    # The masked-LM + sentence-order objective and classifiers of "mlm" models start from
    # hidden_forward(causal=False); run causally instead, every gradient check still passed
    # (forward and backward agree), and the objective silently trained a causal model.
    cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(cfg, seed=0, dtype=np.float64)
    tokens = np.random.default_rng(4).integers(0, 11, size=(2, 5))
    head = model.params["lm_head.weight"]
    with use_backend(backend):
        hidden = {causal: model.hidden_forward(tokens, causal=causal)[0] for causal in (True, False)}
        logits = {causal: model.forward_with_caches(tokens, causal=causal)[0] for causal in (True, False)}
    for causal in (True, False):
        np.testing.assert_allclose(hidden[causal] @ head.T, logits[causal], rtol=1e-12, atol=1e-14)
    # position 0 sees the later tokens only without the causal mask
    assert np.abs(hidden[False][:, 0] - hidden[True][:, 0]).max() > 1e-6
