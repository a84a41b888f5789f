"""d:attn_scores -- what attention's softmax backward hands back, the gradient of the scores
q k^T * scale before the softmax -- is recorded by both backends and by the transformers side, so a
slip in the softmax backward is blamed on it and not on attention_backward as a whole."""
import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, debug, use_backend, use_op
from npllama.ops.softmax import softmax_backward

CONFIG = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
TOKENS = np.array([[1, 5, 7, 2, 9, 4], [3, 3, 8, 1, 4, 6]])
TARGETS = np.array([[5, 7, 2, 9, 1, 2], [3, 8, 1, 4, -100, 0]])
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])   # the second row padded on the right
P = "model.layers.1.self_attn."


def model(dtype=np.float64):
    m = Llama(CONFIG, seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in m.params.values():
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return m


def traced(m, backend, attention_mask=None):
    with use_backend(backend), npllama.trace() as t:
        m.loss_and_grads(TOKENS, TARGETS, attention_mask)
    return t


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("attention_mask", [None, MASK])
def test_both_backends_record_the_softmax_backwards_output_alike(monkeypatch, flash, attention_mask):
    if flash:   # the kernel's path for long sequences, which recomputes the probabilities
        from npllama.kernels import attention as kernel_attention

        monkeypatch.setattr(kernel_attention, "FLASH_MIN_KEYS", 2)
    m = model()
    ref, kernel = traced(m, "numpy", attention_mask), traced(m, "numba", attention_mask)
    for i in range(CONFIG.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        # d attn_scores = p * (d attn_probs - sum(d attn_probs * p)), the softmax's backward, as it ran
        expected = softmax_backward(ref[f"d:{p}attn_probs"], ref[p + "attn_probs"])
        np.testing.assert_allclose(ref[f"d:{p}attn_scores"], expected, rtol=1e-12, atol=1e-15)
        assert kernel[f"d:{p}attn_scores"].shape == expected.shape
        np.testing.assert_allclose(kernel[f"d:{p}attn_scores"], expected, rtol=1e-9, atol=1e-13)
        names = ref.names()
        assert names.index(f"d:{p}attn_scores") == names.index(f"d:{p}attn_probs") + 1
        assert kernel.names().index(f"d:{p}attn_scores") == kernel.names().index(f"d:{p}attn_probs") + 1
    assert ref.sources[f"d:{P}attn_scores"] == ("npllama.ops.softmax.softmax_backward "
                                                "(inside npllama.ops.attention.attention_backward)")
    assert kernel.sources[f"d:{P}attn_scores"].startswith("npllama.kernels.attention._softmax_backward_rows")


def softmax_backward_without_the_row_sum(dp, p):
    return p * dp


def test_a_softmax_backward_slip_is_blamed_on_the_softmax_backward():
    with use_op("softmax_backward", softmax_backward_without_the_row_sum, backend="numpy"):
        report = debug.compare_backends(model(), TOKENS, TARGETS)
    assert report.first is not None and report.first.name == f"d:{P}attn_scores", str(report)
    assert ("computed by tests.test_trace_attn_scores.softmax_backward_without_the_row_sum (inside "
            "npllama.ops.attention.attention_backward") in str(report), str(report)


def test_only_attn_scores_can_be_asked_for():
    with use_backend("numba"), npllama.trace(include=["d:*.attn_scores"]) as t:
        model().loss_and_grads(TOKENS, TARGETS)
    assert t.names() == [f"d:model.layers.{i}.self_attn.attn_scores" for i in (1, 0)]


@pytest.mark.parametrize("attention_mask", [None, MASK])
def test_transformers_records_the_gradient_of_its_softmax_input(tmp_path, attention_mask):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    m = model()
    m.save_pretrained(tmp_path / "m", dtype="float64")
    report = debug.compare_transformers(tmp_path / "m", TOKENS, TARGETS, dtype=np.float64,
                                        attention_mask=attention_mask)
    assert report.ok, str(report)
    for i in range(CONFIG.num_hidden_layers):
        assert report[f"d:model.layers.{i}.self_attn.attn_scores"].rel_err < 1e-9
    theirs = report.traces[1]
    assert f"model.layers.0.self_attn.attn_scores" not in theirs   # only its gradient: as npllama records
    assert "softmax" in theirs.sources[f"d:{P}attn_scores"]
