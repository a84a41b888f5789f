"""The RoPE tables (cos, sin) are an intermediate like any other: recorded as model.rotary_emb.cos
and .sin on every backend and on the transformers side, so a wrong rope_theta or rope_scaling is the
first divergence there -- credited to the tables' maker -- and not at q_rot, credited to a
rope_forward that only applies them.  And every name is spelt the same on both sides."""
import importlib.util

import numpy as np
import pytest

import npllama
import npllama.ops.rope as rope_module
from npllama import Llama, LlamaConfig, debug, use_backend
from npllama.finetune import SequenceClassifier
from npllama.trace import compare

TOKENS = np.array([[1, 5, 9, 3, 5, 2, 7, 8, 4, 3, 1, 2]])
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}


def tiny(dtype=np.float64, **overrides):
    fields = dict(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = Llama(LlamaConfig(**{**fields, **overrides}), seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return model


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_tables_are_recorded_once_per_pass_as_the_model_turns_by_them(backend):
    model = tiny(rope_scaling=LLAMA3)
    with use_backend(backend), npllama.trace() as t:
        model.loss_and_grads(TOKENS, np.roll(TOKENS, -1))
        model.generate([1, 5, 9], 2)       # a prefill of 3 positions, then one decode step at position 3
    cos, sin = model.rope_tables(TOKENS.shape[1])
    np.testing.assert_array_equal(t["model.rotary_emb.cos"], cos)
    np.testing.assert_array_equal(t["model.rotary_emb.sin"], sin)
    names = t.names()
    assert names.index("model.rotary_emb.sin") < names.index("model.layers.0.self_attn.q_rot")
    assert t.sources["model.rotary_emb.cos"].startswith("npllama.ops.rope.rope_cos_sin")
    np.testing.assert_array_equal(t["pass2/model.rotary_emb.cos"], cos[:3])
    np.testing.assert_array_equal(t["pass3/model.rotary_emb.sin"], sin[3:4])
    assert "pass4/model.rotary_emb.cos" not in t


@pytest.fixture
def wrong_llama3_band(monkeypatch):
    """npllama's LLaMA-3 frequencies with low_freq_factor read as 2 (the config says 1)."""
    right = rope_module._llama3_inv_freq
    monkeypatch.setattr(rope_module, "_llama3_inv_freq", lambda inv, s: right(inv, {**s, "low_freq_factor": 2.0}))


def test_a_wrong_rope_scaling_is_found_in_the_tables(request):
    clean = debug.run_trace(tiny(rope_scaling=LLAMA3), TOKENS)
    request.getfixturevalue("wrong_llama3_band")
    wrong = debug.run_trace(tiny(rope_scaling=LLAMA3), TOKENS)
    report = compare(wrong, clean, rtol=1e-9)
    assert report.first.name == "model.rotary_emb.cos"
    assert report["model.layers.0.self_attn.v"].diverged is False


needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="comparing with transformers needs torch and transformers")


@needs_transformers
@pytest.mark.parametrize("variant", ["plain", "gqa", "tied", "llama3", "classifier"])
def test_every_name_is_spelt_the_same_by_npllama_and_transformers(variant):
    overrides = {"gqa": dict(num_key_value_heads=1), "tied": dict(tie_word_embeddings=True),
                 "llama3": dict(rope_scaling=LLAMA3)}.get(variant, {})
    model, targets = tiny(**overrides), None
    if variant == "classifier":
        model, targets = SequenceClassifier(model, ["a", "b", "c"], pad_id=0), [1]
    report = debug.compare_transformers(model, TOKENS, targets, dtype=np.float64)
    assert report.ok and report.only_in_a == [] and report.only_in_b == []
    assert "model.rotary_emb.cos" in [d.name for d in report.diffs]


@needs_transformers
def test_against_transformers_a_wrong_rope_scaling_is_found_in_the_tables(wrong_llama3_band):
    report = debug.compare_transformers(tiny(rope_scaling=LLAMA3), TOKENS, dtype=np.float64)
    assert report.first.name == "model.rotary_emb.cos"
    assert "LlamaRotaryEmbedding.forward" in report.traces[1].sources["model.rotary_emb.cos"]
