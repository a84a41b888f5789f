"""A tensor the model's own code changes on its way from one op to the next (a head split without
its transpose, a gradient scaled between two backwards) is the first divergence, and its record
says so: the op that received it was given other numbers than the op before it returned, so
"computed by" does not send the reader into a correct op.  A correct model never says it."""
import inspect
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npllama
import npllama.model as model_module
from npllama import Llama, LlamaConfig, use_backend
from npllama.finetune import SequenceClassifier
from npllama.lora import attach_lora
from npllama.objectives import SentenceOrderBatch, init_sop_head, mlm_sop_loss_and_grads
from npllama.trace import compare

CHANGED = "was given other numbers than"
TOKENS = np.array([[1, 5, 9, 3, 5, 2]])


def tiny(layers=2, dtype=np.float64, **overrides):
    fields = dict(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(LlamaConfig(**{**fields, **overrides}), seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in model.params.values():   # move the unit norm weights so every gradient is exercised
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return model


def traced(run, backend="numpy"):
    with use_backend(backend), npllama.trace() as t:
        run()
    return t


def edit(monkeypatch, function, old, new):
    """npllama.model.<function> with one line of its code replaced: a slip in the model's own code."""
    source = textwrap.dedent(inspect.getsource(getattr(model_module, function)))
    assert old in source, old
    namespace = {}
    exec(compile(source.replace(old, new), model_module.__file__, "exec"), model_module.__dict__, namespace)
    monkeypatch.setattr(model_module, function, namespace[function])


# (function, line, its slip, the first divergence, the op that returned the tensor, the one given it, where)
SLIPS = {
    "q split without its transpose": (
        "block_forward", "q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)", "q = q.reshape(B, H, T, hd)",
        "model.layers.0.self_attn.q_rot", "linear_forward", "rope_forward", "npllama.model.block_forward"),
    # the normed input is read by three projections: each is checked, not the first alone
    "xn scaled before k_proj": (
        "block_forward", "k, k_proj = linear_forward(xn, w.k_proj)", "k, k_proj = linear_forward(xn * 1.01, w.k_proj)",
        "model.layers.0.self_attn.k", "rmsnorm_forward", "linear_forward", "npllama.model.block_forward"),
    "xn scaled before v_proj": (
        "block_forward", "v, v_proj = linear_forward(xn, w.v_proj)", "v, v_proj = linear_forward(xn * 1.01, w.v_proj)",
        "model.layers.0.self_attn.v", "rmsnorm_forward", "linear_forward", "npllama.model.block_forward"),
    "heads merged without the transpose": (
        "block_forward", "a = a.transpose(0, 2, 1, 3).reshape(B, T, H * hd)", "a = a.reshape(B, T, H * hd)",
        "model.layers.0.self_attn.out", "attention_forward", "linear_forward", "npllama.model.block_forward"),
    "logits scaled before the LM head": (
        "model_forward", "linear_forward(hidden, W_lm)", "linear_forward(hidden * 1.01, W_lm)",
        "lm_head.out", "rmsnorm_forward", "linear_forward", "npllama.model.model_forward"),
    "d a split without its transpose": (
        "block_backward", "da = da.reshape(B, T, H, hd).transpose(0, 2, 1, 3)", "da = da.reshape(B, H, T, hd)",
        "d:model.layers.1.self_attn.attn", "linear_backward", "attention_backward", "npllama.model.block_backward"),
    "dv merged without the transpose": (
        "block_backward", "dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)", "dv = dv.reshape(B, T, KVH * hd)",
        "d:model.layers.1.self_attn.v", "attention_backward", "linear_backward", "npllama.model.block_backward"),
    "dq_rot scaled before RoPE's backward": (
        "block_backward", "rope_backward(dq_rot, attn.q_rope)", "rope_backward(dq_rot * 1.01, attn.q_rope)",
        "d:model.layers.1.self_attn.q_rot", "attention_backward", "rope_backward", "npllama.model.block_backward"),
    "dlogits scaled before the LM head's backward": (
        "model_backward", "linear_backward(dlogits, cache.lm_head)", "linear_backward(dlogits * 1.01, cache.lm_head)",
        "d:lm_head.out", "cross_entropy_backward", "linear_backward",
        "npllama.model.Llama.loss_and_grads and model_backward"),
    "dhidden scaled before the final norm's backward": (
        "decoder_backward", "rmsnorm_backward(dhidden, cache.norm)", "rmsnorm_backward(dhidden * 1.01, cache.norm)",
        "d:model.norm.out", "linear_backward", "rmsnorm_backward", "npllama.model.model_backward and decoder_backward"),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("slip", list(SLIPS))
def test_a_tensor_changed_between_two_ops_is_blamed_on_the_code_between_them(monkeypatch, slip, backend):
    function, old, new, first, producer, receiver, where = SLIPS[slip]
    model = tiny(num_key_value_heads=2 if "dv" in slip else 1)   # (dv's merge slips only with 2 kv heads)
    run = lambda: model.loss_and_grads(TOKENS, np.roll(TOKENS, -1))   # noqa: E731
    clean = traced(run, backend)
    with monkeypatch.context() as patch:
        edit(patch, function, old, new)
        buggy = traced(run, backend)
    report = compare(buggy, clean, rtol=1e-9, labels=("buggy", "clean"))
    assert report.first is not None and report.first.name == first
    said = buggy.sources[first]
    assert f"{receiver} {CHANGED}" in said and f"{producer} returned" in said, said
    assert f"the code between the two calls ({where}" in said, said
    assert CHANGED not in clean.sources[first]
    assert "changed them (in buggy)" in str(report)
    # the headline points at that code, not at the op that computed the tensor (which is right)
    assert f"suspect the code between two ops, in {where}" in str(report)
    assert "suspect the step that computes" not in str(report)


def test_a_gradient_changed_after_it_was_recorded_is_recorded_as_the_next_op_received_it(monkeypatch):
    """d:lm_head.out is recorded from what the loss's backward returned; when the model hands the LM
    head's backward other numbers, the record is what that backward went on with."""
    model = tiny()
    run = lambda: model.loss_and_grads(TOKENS, np.roll(TOKENS, -1))   # noqa: E731
    clean = traced(run)
    edit(monkeypatch, "model_backward", "linear_backward(dlogits, cache.lm_head)",
         "linear_backward(dlogits * 2.0, cache.lm_head)")
    buggy = traced(run)
    np.testing.assert_array_equal(buggy["d:lm_head.out"], 2.0 * clean["d:lm_head.out"])
    assert buggy.names() == clean.names()


CONFIGS = st.fixed_dictionaries({
    "layers": st.integers(1, 2), "heads": st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]),
    "tied": st.booleans(), "B": st.integers(1, 2), "T": st.integers(1, 5), "lora": st.booleans(),
    "mlm": st.booleans(), "padded": st.booleans(), "backend": st.sampled_from(["numpy", "numba"]),
    "rope": st.sampled_from([None, "llama3", "linear", "dynamic"])})
ROPE_SCALING = {None: None, "linear": {"rope_type": "linear", "factor": 2.0},
                "dynamic": {"rope_type": "dynamic", "factor": 2.0},
                "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8}}


@settings(max_examples=25, deadline=None)
@given(CONFIGS)
def test_a_correct_model_never_says_a_tensor_changed_on_its_way(c):
    heads, kv = c["heads"]
    model = tiny(c["layers"], num_attention_heads=heads, num_key_value_heads=kv, hidden_size=4 * heads,
                 tie_word_embeddings=c["tied"], rope_scaling=ROPE_SCALING[c["rope"]])
    if c["mlm"]:
        model.objective = "mlm"
    if c["lora"]:
        adapters = attach_lora(model, r=2, target_modules=("q_proj", "v_proj", "gate_proj", "down_proj"))
        for p in adapters.params.values():
            p += 0.3
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 13, size=(c["B"], c["T"]))
    mask = np.ones_like(tokens)
    if c["padded"] and c["T"] > 1:
        mask[0, -1] = 0
    t = traced(lambda: model.loss_and_grads(tokens, np.roll(tokens, -1, axis=1), mask), c["backend"])
    assert len(t) and not [(n, s) for n, s in t.sources.items() if CHANGED in s]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_heads_and_decoding_never_say_a_tensor_changed_on_its_way(backend):
    """A classifier's head, two heads on one stack (MLM + SOP: their gradients add), and decoding
    with a KV cache (attention reads more keys than this step's) are no slips."""
    classifier = SequenceClassifier(tiny(), ["a", "b"], pad_id=0)
    tokens, mask = np.array([[1, 5, 9, 0], [2, 4, 6, 3]]), np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    model, head = tiny(hidden_size=8), init_sop_head(8, dtype=np.float64, std=0.5)
    batch = SentenceOrderBatch(tokens, np.where(tokens == 5, 5, -100), mask.astype(bool), np.array([0, 1]))
    traces = [traced(lambda: classifier.loss_and_grads(tokens, mask, np.array([1, 0])), backend),
              traced(lambda: mlm_sop_loss_and_grads(model, head, batch), backend),
              traced(lambda: model.generate([1, 5, 9], 3), backend)]
    for t in traces:
        assert len(t) and not [(n, s) for n, s in t.sources.items() if CHANGED in s]


@pytest.mark.parametrize("include", [None, ["*.attn_probs"], ["d:*.self_attn.q_rot"], ["model.layers.1.*"]])
def test_nothing_handed_on_is_still_held_after_a_pass(include):
    """What the recorder keeps to check a hand-off is let go once checked, and not kept at all for
    records a selective trace does not want: tracing a large model with include patterns must not
    hold every gradient of the pass."""
    model = tiny()
    with npllama.trace(include=include) as t:
        model.loss_and_grads(TOKENS, np.roll(TOKENS, -1))
        recorder = next(iter(t._recorders.values()))
        assert recorder.produced == {} and recorder.returned_grad == {}


def test_a_hand_off_is_checked_only_for_a_record_the_trace_keeps(monkeypatch):
    """The normed input is read by q, k and v: a trace of q alone compares q's input, not k's and
    v's (their records are not kept, so a check of them would be work for nothing on every call)."""
    import npllama.trace as trace_module
    checked = []
    same_numbers = trace_module._same_numbers
    monkeypatch.setattr(trace_module, "_same_numbers", lambda a, b: checked.append(a.shape) or same_numbers(a, b))
    model = tiny()
    with npllama.trace(include=["model.layers.0.self_attn.q"]) as t:
        model.loss_and_grads(TOKENS, np.roll(TOKENS, -1))
        assert next(iter(t._recorders.values())).produced == {}   # let go by k and v all the same
    assert t.names() == ["model.layers.0.self_attn.q"] and len(checked) == 1
