"""Traces of the fine-tuning objectives: the classifier, masked-LM + sentence order, SFT, a LoRA
classifier.  Each records what the causal LM records (the stack's forward, its d: records, every
parameter's gradient) plus its head, under the names of docs/debugging.md."""
import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, use_backend
from npllama.finetune import SequenceClassifier
from npllama.lora import attach_lora
from npllama.objectives import SOP_HEAD, SentenceOrderBatch, init_sop_head, mlm_loss_and_grads, mlm_sop_loss_and_grads
from npllama.ops.classifier import classifier_backward, classifier_forward
from npllama.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward

TOKENS = np.array([[1, 5, 9, 3], [2, 4, 6, 0]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
LABELS = np.array([0, 2])
MLM_TARGETS = np.array([[-100, 9, -100, -100], [4, -100, -100, -100]])


CONFIG_FIELDS = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)


def llama(dtype=np.float64, **config):
    return Llama(LlamaConfig(**CONFIG_FIELDS, **config), seed=0, dtype=dtype)


def classifier(dtype=np.float64):
    c = SequenceClassifier(llama(dtype), ["a", "b", "c"], seed=0)
    c.score_weight = (np.random.default_rng(3).standard_normal(c.score_weight.shape) * 0.5).astype(dtype)
    return c


def traced(run, backend="numpy"):
    with use_backend(backend), npllama.trace() as t:
        result = run()
    return t, result


def lm_names():
    """The causal LM's records on the same tokens: the names every objective shares."""
    t, _ = traced(lambda: llama().loss_and_grads(TOKENS, np.array([[5, 9, 3, -100], [4, 6, -100, -100]]), MASK))
    return t.names()


def test_the_classifier_records_the_stack_its_head_the_loss_and_every_gradient():
    c = classifier()
    t, (loss, grads) = traced(lambda: c.loss_and_grads(TOKENS, MASK, LABELS))
    lm = lm_names()
    forward = lm[:lm.index("lm_head.out")]
    tensor_grads = [n for n in lm if n.startswith("d:") and not n.endswith(".weight") and n != "d:lm_head.out"]
    # the parameters' gradients in the order the backward finished them: the head's first
    parameter_grads = ["d:score.weight"] + [n for n in lm if n.endswith(".weight") and n != "d:lm_head.weight"]
    assert t.names() == (forward + ["score.pooled_index", "score.out", "loss", "d:score.out"] + tensor_grads
                         + parameter_grads)
    assert sorted(parameter_grads) == sorted("d:" + n for n in grads)
    assert t["score.pooled_index"].tolist() == [3, 2]
    assert t["score.out"].shape == (2, 3) and t["d:score.out"].shape == (2, 3)
    assert float(t["loss"]) == loss
    assert t.sources["score.out"] == "npllama.ops.classifier.classifier_forward"
    assert t.sources["d:score.out"] == "npllama.ops.cross_entropy.cross_entropy_backward"
    assert t.sources["d:model.norm.out"] == "npllama.ops.classifier.classifier_backward"
    assert t.sources["d:score.weight"] == "npllama.ops.classifier.classifier_backward"


def test_the_classifier_records_the_gradients_it_returns():
    c = classifier()
    t, (loss, grads) = traced(lambda: c.loss_and_grads(TOKENS, MASK, LABELS))
    for name, grad in grads.items():
        np.testing.assert_array_equal(t["d:" + name], grad)
    # the head's gradients, computed here step by step from the hidden states
    hidden, _ = c.model.hidden_forward(TOKENS, MASK)
    logits, head_cache = classifier_forward(hidden, c.score_weight, np.array([3, 2]))
    _, ce_cache = cross_entropy_forward(logits, LABELS)
    dlogits = cross_entropy_backward(np.ones(()), ce_cache)
    dhidden, _ = classifier_backward(dlogits, head_cache)
    np.testing.assert_allclose(t["score.out"], logits, rtol=1e-12)
    np.testing.assert_allclose(t["d:score.out"], dlogits, rtol=1e-12)
    np.testing.assert_allclose(t["d:model.norm.out"], dhidden, rtol=1e-12, atol=1e-15)


def test_two_classifier_steps_in_one_trace_are_two_passes():
    c = classifier()
    t, _ = traced(lambda: [c.loss_and_grads(TOKENS, MASK, LABELS) for _ in range(2)])
    assert t.names("pass2/*") == ["pass2/" + n for n in t.names() if not n.startswith("pass")]


def test_the_classifier_forward_alone_records_its_head():
    t, logits = traced(lambda: classifier().logits(TOKENS, MASK))
    np.testing.assert_array_equal(t["score.out"], logits)


def test_a_lora_classifier_records_the_stack_the_head_and_the_adapters_gradients():
    c = classifier()
    attach_lora(c.model, r=2)
    t, (loss, grads) = traced(lambda: c.loss_and_grads(TOKENS, MASK, LABELS))
    assert "d:model.norm.out" in t and "d:model.layers.0.self_attn.q" in t and "d:score.out" in t
    assert t.names("d:*.weight") == ["d:score.weight"] + t.names("d:base_model.model.*.lora_*.weight")
    assert sorted(t.names("d:*.weight")) == sorted("d:" + n for n in grads)
    for name, grad in grads.items():
        np.testing.assert_array_equal(t["d:" + name], grad)


@pytest.mark.parametrize("tied", [False, True])
def test_masked_lm_with_sentence_order_records_both_heads_and_losses(tied):
    model = llama(tie_word_embeddings=tied)
    head = init_sop_head(16, dtype=np.float64, std=0.5)
    batch = SentenceOrderBatch(TOKENS, MLM_TARGETS, MASK.astype(bool), np.array([0, 1]))
    t, (loss, grads, parts) = traced(lambda: mlm_sop_loss_and_grads(model, head, batch))
    names = t.names()
    heads = ["lm_head.out", "loss", "sop_head.pooled_index", "sop_head.out", "sop_head.loss",
             "d:sop_head.out", "d:lm_head.out", "d:model.norm.out"]
    assert [n for n in names if n in heads] == heads
    assert float(t["loss"]) == parts["mlm"] and float(t["sop_head.loss"]) == parts["sop"]
    finished = t.names("d:*.weight")
    assert finished[0] == "d:" + SOP_HEAD
    if tied:   # E is the LM head and the lookup table: its gradient is finished last, by both backwards
        assert finished[-1] == "d:model.embed_tokens.weight"
        assert t.sources[finished[-1]].startswith("sum of npllama.ops.linear.linear_backward and ")
    else:
        assert finished[1] == "d:lm_head.weight"
    assert sorted(t.names("d:*.weight")) == sorted("d:" + n for n in grads)
    for name, grad in grads.items():
        np.testing.assert_array_equal(t["d:" + name], grad)
    source = t.sources["d:model.norm.out"]     # both heads read the hidden states: their dx add
    assert "linear_backward (for lm_head.out)" in source and "classifier_backward (for sop_head.out)" in source
    # their sum is the objective's, before hidden_backward: named, as block_backward is for a residual's
    assert source.endswith(", added by the objective, which hands their sum to npllama.model.Llama.hidden_backward"), source
    lm = lm_names()
    assert [n for n in names if n in lm] == [n for n in lm if n in names]   # the stack's, in the LM's order
    assert set(lm) - set(names) <= {"d:lm_head.weight"} | ({"d:lm_head.weight"} if tied else set())


def test_masked_lm_and_sft_record_what_the_causal_lm_records():
    t_mlm, _ = traced(lambda: mlm_loss_and_grads(llama(), TOKENS, MLM_TARGETS, MASK))
    sft_targets = np.array([[-100, -100, 3, -100], [-100, 6, -100, -100]])    # the response's tokens only
    t_sft, _ = traced(lambda: llama().loss_and_grads(TOKENS, sft_targets, MASK))
    assert t_mlm.names() == t_sft.names() == lm_names()


def test_a_forward_and_a_backward_called_apart_record_as_loss_and_grads_does():
    model = llama()
    targets = np.array([[5, 9, 3, -100], [4, 6, -100, -100]])
    whole, _ = traced(lambda: model.loss_and_grads(TOKENS, targets, MASK))

    def apart():
        logits, caches = model.forward_with_caches(TOKENS, MASK)
        _, ce_cache = cross_entropy_forward(logits, targets)
        return model.backward(cross_entropy_backward(np.ones(()), ce_cache), caches)
    t, grads = traced(apart)
    assert t.names() == [n for n in whole.names() if n != "loss"]
    for name in t.names():
        np.testing.assert_allclose(t[name], whole[name], rtol=1e-12, atol=1e-15)
        assert t.sources[name] == (whole.sources[name] if name != "d:lm_head.out" else
                                   "the upstream gradient given by the caller (no recorded op read this "
                                   "tensor in the pass)")


def test_masked_lm_with_sentence_order_agrees_between_backends_and_runs_the_kernels():
    from npllama.trace import compare

    model, head = llama(), init_sop_head(16, dtype=np.float64, std=0.5)
    batch = SentenceOrderBatch(TOKENS, MLM_TARGETS, MASK.astype(bool), np.array([0, 1]))
    (a, _), (b, _) = (traced(lambda: mlm_sop_loss_and_grads(model, head, batch), backend)
                      for backend in ("numpy", "numba"))
    assert compare(a, b, rtol=1e-9).ok and a.names() == b.names()
    assert b.sources["sop_head.loss"] == "npllama.kernels.cross_entropy.cross_entropy_forward"


def test_a_trace_kept_after_its_block_does_not_keep_the_model_alive():
    # the recorders (one per model, holding its parameters) live for the block, not the Trace
    import gc
    import weakref

    model = llama()
    with npllama.trace(include=["loss"]) as t:
        model.loss_and_grads(TOKENS, MLM_TARGETS, MASK)
    weight = weakref.ref(model.params["lm_head.weight"])
    del model
    gc.collect()
    assert weight() is None and t.names() == ["loss"]


def test_a_head_gradient_named_for_a_parameter_the_model_lacks_is_refused():
    """With tied embeddings the LM head is model.embed_tokens.weight: a gradient passed as
    lm_head.weight would come back for a parameter that does not exist."""
    model = llama(tie_word_embeddings=True)
    hidden, caches = model.hidden_forward(TOKENS, MASK)
    with pytest.raises(ValueError, match=r"'lm_head.weight', which is no parameter of this model \(its LM head "
                                         r"is model.embed_tokens.weight: tied embeddings\)"):
        model.hidden_backward(np.ones_like(hidden), caches, head_grads={"lm_head.weight": np.ones((32, 16))})
    grads = model.hidden_backward(np.ones_like(hidden), caches, head_grads={"score.weight": np.ones((3, 16))})
    assert list(grads)[-1] == "score.weight" and set(grads) - {"score.weight"} == set(model.params)
