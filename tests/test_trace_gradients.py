"""Gradient records: which function each d:<name> is credited to, the gradients inside an op's
backward (SwiGLU's gate/up/act, attention's attn_probs, the residual), and what compare says."""
import re
import warnings

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, use_backend, use_op
from npllama.ops import attention_backward, linear_backward, rmsnorm_backward, rope_backward
from npllama.trace import compare

CONFIG = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
TOKENS = np.array([[1, 5, 7, 2, 9], [3, 3, 8, 1, 4]])
TARGETS = np.array([[5, 7, 2, 9, 1], [3, 8, 1, 4, -100]])


def model(dtype=np.float64):
    m = Llama(CONFIG, seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in m.params.values():   # move the unit norm weights so every gradient is exercised
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return m


def traced(m, backend="numpy", tokens=TOKENS, targets=TARGETS, **patterns):
    with use_backend(backend), npllama.trace(**patterns) as t:
        m.loss_and_grads(tokens, targets)
    return t


# ----- 1. "computed by" names the function that produced a gradient ----------------------------

def rmsnorm_backward_planted(dy, cache):
    dx, dweight = rmsnorm_backward(dy, cache)
    return dx * 1.01, dweight


def linear_backward_planted(dy, cache):
    dx, dweight = linear_backward(dy, cache)
    return dx * 1.01, dweight


def attention_backward_planted(dout, cache):
    dq, dk, dv = attention_backward(dout, cache)
    return dq, dk, dv * 1.01


def rope_backward_planted(dy, cache):
    return rope_backward(dy, cache) * 1.01


@pytest.mark.parametrize("op_name, planted, first", [
    ("rmsnorm_backward", rmsnorm_backward_planted, "d:model.layers.1.out"),      # model.norm's dx
    ("linear_backward", linear_backward_planted, "d:model.norm.out"),            # lm_head's dx
    ("attention_backward", attention_backward_planted, "d:model.layers.1.self_attn.v"),
    ("rope_backward", rope_backward_planted, "d:model.layers.1.self_attn.q"),
])
def test_the_first_divergent_gradient_names_the_planted_backward(op_name, planted, first):
    m = model()
    good = traced(m)
    with use_op(op_name, planted):
        bad = traced(m)
    report = compare(good, bad, rtol=1e-6, labels=("good", "bad"))
    assert report.first.name == first
    assert planted.__qualname__ in bad.sources[first]
    assert f"computed by" in str(report) and planted.__qualname__ in str(report)



def test_parameter_gradients_come_in_the_order_the_backward_finished_them():
    # a bug in every norm's dweight: the first to run is the final norm's, not layer 0's
    def rmsnorm_dweight_planted(dy, cache):
        dx, dweight = rmsnorm_backward(dy, cache)
        return dx, dweight * 1.01

    m = model()
    good = traced(m)
    with use_op("rmsnorm_backward", rmsnorm_dweight_planted):
        bad = traced(m)
    report = compare(good, bad, rtol=1e-6)
    assert report.first.name == "d:model.norm.weight"
    # the other norms' weights differ by the same bug, not because of the first: nothing reads it
    assert "4 later tensors differ too (not as its consequence" in str(report)
    params = [n[2:] for n in good.names("d:*") if n[2:] in m.params]
    assert params[:2] == ["lm_head.weight", "model.norm.weight"] and params[-1] == "model.embed_tokens.weight"
    layer = [int(n.split(".")[2]) for n in params if n.startswith("model.layers.")]
    assert layer == sorted(layer, reverse=True)

def test_gradient_sources_follow_the_forward_readers_and_say_when_a_residual_adds_in():
    t = traced(model())
    assert t.sources["d:model.norm.out"] == "npllama.ops.linear.linear_backward"
    assert t.sources["d:model.layers.1.post_attention_layernorm.out"] == "npllama.ops.swiglu.swiglu_backward"
    assert t.sources["d:model.layers.1.self_attn.q_rot"] == "npllama.ops.attention.attention_backward"
    three = t.sources["d:model.layers.0.input_layernorm.out"]
    assert "linear_backward" in three and all(f"self_attn.{p}" in three for p in "qkv")
    # a tensor read by a norm and by a residual sum: both named
    between = t.sources["d:model.layers.0.out"]
    assert between.startswith("sum of npllama.ops.rmsnorm.rmsnorm_backward") and "residual" in between
    assert "d:model.layers.1.residual" in between
    # parameters: the backward that computed each
    assert t.sources["d:model.layers.0.mlp.up_proj.weight"] == "npllama.ops.swiglu.swiglu_backward"
    assert t.sources["d:model.norm.weight"] == "npllama.ops.rmsnorm.rmsnorm_backward"
    assert t.sources["d:model.embed_tokens.weight"] == "npllama.ops.embedding.embedding_backward"


def test_tied_embeddings_credit_both_backwards_of_the_shared_matrix():
    m = Llama(LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                          tie_word_embeddings=True), seed=0, dtype=np.float64)
    t = traced(m)
    source = t.sources["d:model.embed_tokens.weight"]
    assert "embedding_backward" in source and "linear_backward" in source


def test_select_keeps_sources():
    t = traced(model())
    picked = t.select("d:*.attn_probs")
    assert picked.names() and all(picked.sources[n] == t.sources[n] for n in picked.names())


# ----- 9. gradients inside SwiGLU and attention, and the residual -----------------------------

def silu(z):
    return z / (1 + np.exp(-z))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gradients_inside_swiglu_attention_and_the_residual_are_recorded(backend):
    m = model()
    t = traced(m, backend)
    p = "model.layers.0."
    W_down = m.params[p + "mlp.down_proj.weight"]
    gate, up = t[p + "mlp.gate"], t[p + "mlp.up"]
    d_act = t[f"d:{p}mlp.out"] @ W_down
    np.testing.assert_allclose(t[f"d:{p}mlp.act"], d_act, rtol=1e-10, atol=1e-14)
    s = 1 / (1 + np.exp(-gate))
    np.testing.assert_allclose(t[f"d:{p}mlp.gate"], d_act * up * s * (1 + gate * (1 - s)), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(t[f"d:{p}mlp.up"], d_act * silu(gate), rtol=1e-10, atol=1e-14)
    # h = x + attn_out: dattn_out = dh
    np.testing.assert_array_equal(t[f"d:{p}residual"], t[f"d:{p}self_attn.out"])
    # a = attn_probs v: d attn_probs = da v^T where a key was attended, 0 where it was masked
    B, T = TOKENS.shape
    v = t[p + "self_attn.v"].reshape(B, T, 1, -1).transpose(0, 2, 1, 3)      # one kv head
    probs = t[p + "self_attn.attn_probs"]
    expected = np.where(probs > 0, t[f"d:{p}self_attn.attn"] @ v.swapaxes(-1, -2), 0)
    np.testing.assert_allclose(t[f"d:{p}self_attn.attn_probs"], expected, rtol=1e-10, atol=1e-14)



@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_d_attn_probs_is_kept_where_an_allowed_keys_probability_underflowed(backend, causal):
    # huge scores: some keys the mask allows get probability exactly 0, at different keys in
    # float32 and float64 (and for two exp implementations); only the mask may zero d attn_probs --
    # with no mask at all (bidirectional, no padding), nothing
    m = model()
    for w in ("q_proj", "k_proj"):
        m.params[f"model.layers.0.self_attn.{w}.weight"] *= 3000
    with use_backend(backend), npllama.trace() as t:
        m.loss_and_grads(TOKENS, TARGETS, causal=causal)
    p = "model.layers.0.self_attn."
    B, T = TOKENS.shape
    allowed = np.tril(np.ones((T, T), dtype=bool)) if causal else np.ones((T, T), dtype=bool)
    underflowed = allowed & (t[p + "attn_probs"] == 0)
    assert underflowed.any()
    v = t[p + "v"].reshape(B, T, 1, -1).transpose(0, 2, 1, 3)
    expected = np.where(allowed, t[f"d:{p}attn"] @ v.swapaxes(-1, -2), 0)
    assert np.abs(expected[underflowed]).max() > 0
    np.testing.assert_allclose(t[f"d:{p}attn_probs"], expected, rtol=1e-10, atol=1e-14)


def test_numpy_and_numba_record_the_same_gradients_with_blocked_causal_attention():
    m = model(np.float32)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, 13, (2, 30)), rng.integers(0, 13, (2, 30))   # several query blocks
    a = traced(m, "numpy", tokens, targets, include=["d:*"])
    b = traced(m, "numba", tokens, targets, include=["d:*"])
    assert a.names() == b.names()
    assert "d:model.layers.1.self_attn.attn_probs" in a and "d:model.layers.1.mlp.gate" in a
    assert compare(a, b, rtol=1e-3).ok


# ----- 2. the comparison's report ---------------------------------------------------------------

def test_a_divergence_at_the_first_tensor_says_so_and_names_its_source():
    a, b = npllama.trace.Trace(), npllama.trace.Trace()
    a.record("x", np.ones(3), source="f")
    b.record("x", np.zeros(3), source="g")
    text = str(compare(a, b))
    assert "it is the first tensor compared" in text and "computed by f (in a); g (in b)" in text
    a.record("y", np.ones(2))
    b.record("y", np.ones(2))
    a2, b2 = npllama.trace.Trace(), npllama.trace.Trace()
    for t, value in ((a2, 1.0), (b2, 2.0)):
        t.record("first", np.ones(2))
        t.record("second", np.full(2, value), source="h")
    text = str(compare(a2, b2))
    assert "first tensor compared" not in text and "computed by h" in text



def test_a_trace_made_in_python_knows_its_tokens_and_targets_so_diff_warns_as_for_a_cli_trace(tmp_path):
    # npllama.trace() around loss_and_grads: the model's forward notes what it ran, so `debug diff`
    # of it against a CLI trace (whose meta has the tokens) says so when the two ran different tokens
    from npllama import debug
    from npllama.trace import Trace

    m = model()
    python_trace = traced(m)
    assert python_trace.meta["tokens"] == TOKENS.tolist() and python_trace.meta["targets"] == TARGETS.tolist()
    python_trace.save(tmp_path / "python.npz")
    python_trace = Trace.load(tmp_path / "python.npz")
    other = TOKENS[:, ::-1].copy()
    cli_like = debug.run_trace(m, other, TARGETS)              # what `npllama debug trace` saves
    lines = str(compare(python_trace, cli_like)).splitlines()
    assert lines[1].startswith("NOTE: the traces ran different tokens"), lines[:3]
    shifted = debug.run_trace(m, other)                        # its own next-token targets: one note, the tokens'
    assert "different targets" not in str(compare(python_trace, shifted))
    assert "different tokens" in str(compare(python_trace, shifted))
    same = str(compare(python_trace, debug.run_trace(m, TOKENS, TARGETS)))
    assert "NOTE: the traces ran different" not in same, same
    # the same tokens, other targets: every gradient differs, and the report says why up front
    moved = TARGETS.copy()
    moved[0, 0] = -100
    lines = str(compare(python_trace, traced(m, targets=moved))).splitlines()
    assert lines[1].startswith("NOTE: the traces ran different targets"), lines[:3]
    # a second pass (a second loss_and_grads in the block) keeps the first pass's tokens
    with use_backend("numpy"), npllama.trace() as two:
        m.loss_and_grads(TOKENS, TARGETS)
        m.loss_and_grads(other, TARGETS)
    assert two.meta["tokens"] == TOKENS.tolist()


def test_a_divergence_confined_to_some_heads_says_which():
    # GQA with kv heads tiled instead of repeat-interleaved: with 4 query heads on 2 kv heads,
    # heads 0 and 3 read the right kv head and heads 1 and 2 the wrong one
    probs = np.random.default_rng(0).random((1, 4, 3, 3))
    tiled = probs.copy()
    tiled[:, 1:3] = probs[:, 2:0:-1]
    text = str(compare({"attn_probs": tiled}, {"attn_probs": probs}))
    assert "only at indices [1, 2] of axis 1 (size 4)" in text
    everywhere = str(compare({"x": probs + 1}, {"x": probs}))
    assert "only at" not in everywhere

def test_compare_says_up_front_when_the_traces_ran_different_tokens_or_dtypes():
    m = model()
    a, b = traced(m), traced(m, tokens=TOKENS[:, ::-1].copy())
    a.meta.update(tokens=TOKENS.tolist(), dtype="float64")
    b.meta.update(tokens=TOKENS[:, ::-1].tolist(), dtype="float32")
    lines = str(compare(a, b)).splitlines()
    assert lines[1].startswith("NOTE: the traces ran different tokens")
    assert lines[2].startswith("NOTE: the traces ran different dtypes")
    assert not any("NOTE" in line for line in str(compare(a, a)).splitlines())
    # labelled by their dtypes (as compare_dtypes does): each said once
    dtypes = str(compare(a, b, labels=("float64", "float32"))).splitlines()
    assert "NOTE: the traces ran different dtypes: float64, float32" in dtypes
    # traces made with npllama.trace() carry no meta: the dtype is read from their records
    plain = traced(Llama(CONFIG, seed=0, dtype=np.float32)), traced(Llama(CONFIG, seed=0, dtype=np.float64))
    assert "NOTE: the traces ran different dtypes: a float32, b float64" in str(compare(*plain, rtol=1e-3))



def test_compare_says_when_no_gradient_was_tested_because_every_one_is_zero():
    # one token (npllama debug compare --tokens 5) or every target ignored: loss 0, all gradients 0,
    # so a bug in any backward would pass as "no divergence"
    m = model()
    no_targets = np.full_like(TARGETS, -100)
    good = traced(m, targets=no_targets)
    with use_op("rmsnorm_backward", rmsnorm_backward_planted):
        bad = traced(m, targets=no_targets)
    report = compare(good, bad)
    assert report.ok
    assert "NOTE: every gradient compared is 0 in both traces" in str(report)
    assert "every gradient compared" not in str(compare(traced(m), traced(m)))

# ----- 4. an empty comparison is an error; a pattern matching nothing is warned about ---------

def test_comparing_nothing_is_an_error_naming_the_patterns():
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (traced(m, include=["layers.0.*"]) for _ in range(2))
    with pytest.raises(ValueError, match=r"nothing to compare.*include=\['layers.0.\*'\]"):
        compare(a, b)


def test_comparing_traces_recorded_with_different_patterns_names_each_sides_patterns():
    # two traces that each kept something, under disjoint patterns: the error says which side kept
    # what, not one side's patterns as if both used them, nor that patterns which matched may match nothing
    m = model()
    a, b = traced(m, include=["*.attn_probs"]), traced(m, include=["*.mlp.gate"])
    with pytest.raises(ValueError) as refused:
        compare(a, b, labels=("left", "right"))
    said = str(refused.value)
    assert "left was recorded with include=['*.attn_probs']" in said, said
    assert "right was recorded with include=['*.mlp.gate']" in said, said
    assert "match no name" not in said, said


def test_an_include_pattern_that_matched_nothing_is_warned_about():
    m = model()
    with pytest.warns(UserWarning, match=r"'layers.0.\*' matched no record.*did you mean 'model.layers.0.\*'"):
        traced(m, include=["layers.0.*", "loss"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traced(m, include=["model.layers.0.*"])


def test_compare_accepts_numpy_tolerances_and_refuses_unknown_names():
    t = traced(model())
    assert compare(t, t, rtol=np.float32(1e-4), atol=np.float64(0)).ok
    with pytest.raises(ValueError, match="'los', recorded in neither trace.*'loss'"):
        compare(t, t, names=["loss", "los"])
    with pytest.raises(ValueError, match="rtol"):
        compare(t, t, rtol=True)


def test_reading_an_empty_trace_says_it_is_empty():
    with npllama.trace() as t:
        with pytest.raises(KeyError, match="the trace is empty"):
            t["loss"]


# ----- 4b. an op replaced with use_op records only what it returns --------------------------------

SWIGLU_INSIDE = ["d:model.layers.1.mlp.act", "d:model.layers.1.mlp.gate", "d:model.layers.1.mlp.up",
                 "d:model.layers.0.mlp.act", "d:model.layers.0.mlp.gate", "d:model.layers.0.mlp.up"]


def test_the_gradients_inside_a_replaced_backward_are_explained_not_just_listed_as_one_sided(tmp_path):
    from npllama import debug

    m = model()
    good = traced(m)
    with debug.planted_bug("swiglu-backward-up-sign"):   # computes through the reference swiglu_backward
        bad = traced(m)
    assert bad.replaced == {"swiglu_backward": "npllama.debug._swiglu_backward_up_sign"} and good.replaced == {}
    assert sorted(bad.unrecorded) == sorted(SWIGLU_INSIDE)
    assert set(bad.unrecorded.values()) == {"swiglu_backward"}
    report = compare(good, bad, rtol=1e-6, labels=("good", "bad"))
    assert sorted(report.only_in_a) == sorted(SWIGLU_INSIDE) and report.only_in_b == []
    note = next(n for n in report.notes if "use_op" in n)
    assert note.startswith("bad ran ops replaced with use_op: swiglu_backward by "
                           "npllama.debug._swiglu_backward_up_sign; a replacement records only what it returns")
    assert "d:model.layers.1.mlp.act" in note and "recorded in good only" in note
    assert "6 of them inside ops replaced with use_op (see the NOTE)" in str(report)
    # what the replacement returns is still compared at the op's boundary, where the bug shows
    assert report["d:model.layers.1.post_attention_layernorm.out"].diverged is False
    assert report.first.name == "d:model.layers.1.mlp.up_proj.weight"
    # a saved trace still says it: a trace is read back for `npllama debug diff`
    bad.save(tmp_path / "bad.npz")
    again = compare(good, tmp_path / "bad.npz", rtol=1e-6, labels=("good", "bad"))
    assert again.notes == report.notes


def test_a_replaced_attention_leaves_out_attn_probs_and_its_gradient_and_the_note_says_which_op():
    def attention_forward_plain_cache(q, k, v, *args, **kwargs):
        out, cache = npllama.ops.attention_forward(q, k, v, *args, **kwargs)
        return out, tuple(cache)          # a student's cache: no intermediates() to read attn_probs from

    def attention_backward_of_a_tuple(dout, cache):
        return attention_backward(dout, cache)

    m = model()
    good = traced(m)
    with use_op("attention_backward", attention_backward_of_a_tuple):
        bad_backward = traced(m)
        with use_op("attention_forward", attention_forward_plain_cache):
            bad_both = traced(m)
    assert bad_backward.unrecorded == {f"d:model.layers.{i}.self_attn.{s}": "attention_backward"
                                       for i in (1, 0) for s in ("attn_probs", "attn_scores")}
    assert {n for n, op in bad_both.unrecorded.items() if op == "attention_forward"} == {
        "model.layers.0.self_attn.attn_probs", "model.layers.1.self_attn.attn_probs"}
    report = compare(bad_both, good, rtol=1e-6, labels=("mine", "reference"))
    assert report.ok and len(report.only_in_b) == 6   # attn_probs, d:attn_probs, d:attn_scores
    note = next(n for n in report.notes if "use_op" in n)
    assert "attention_forward by " in note and "attention_backward by " in note
    assert "(inside attention_forward and attention_backward) are recorded in reference only" in note


def test_a_replacement_that_records_everything_is_named_but_leaves_nothing_out():
    # the reference itself, as docs/debugging.md suggests for a backward reading the kernel's cache,
    # and a nested replacement (the enclosing op's reference still records around it)
    def softmax_backward_mine(*args, **kwargs):
        return npllama.ops.softmax_backward(*args, **kwargs)

    m = model()
    with use_op("attention_backward", npllama.ops.attention_backward):
        whole = traced(m)
    with use_op("softmax_backward", softmax_backward_mine):
        nested = traced(m)
    assert whole.replaced == {"attention_backward": "npllama.ops.attention.attention_backward"}
    assert nested.replaced == {"softmax_backward": softmax_backward_mine.__module__ + "."
                               + softmax_backward_mine.__qualname__}
    assert whole.unrecorded == nested.unrecorded == {}
    assert compare(traced(m), nested).notes == [f"b ran ops replaced with use_op: softmax_backward by "
                                                f"{nested.replaced['softmax_backward']}"]
    assert traced(m).replaced == {}   # nothing left over once the block ends


def test_a_second_pass_under_a_replacement_notes_its_left_out_records_under_the_pass_prefix():
    from npllama import debug

    m = model()
    with debug.planted_bug("swiglu-backward-up-sign"), use_backend("numpy"), npllama.trace() as t:
        m.loss_and_grads(TOKENS, TARGETS)
        m.loss_and_grads(TOKENS, TARGETS)
    assert sorted(t.unrecorded) == sorted(SWIGLU_INSIDE + ["pass2/" + n for n in SWIGLU_INSIDE])


# ----- 5. several passes in one trace --------------------------------------------------------

def test_a_second_pass_is_recorded_under_a_pass_prefix_for_both_kinds_of_record():
    m = model()
    other = (TOKENS[:, ::-1].copy(), TARGETS)
    with use_backend("numpy"), npllama.trace() as t:
        loss1, grads1 = m.loss_and_grads(TOKENS, TARGETS)
        loss2, grads2 = m.loss_and_grads(*other)
    w = "model.layers.0.mlp.up_proj.weight"
    assert float(t["loss"]) == loss1 and float(t["pass2/loss"]) == loss2
    np.testing.assert_array_equal(t["d:" + w], grads1[w])          # op records and d:<param> alike:
    np.testing.assert_array_equal(t["pass2/d:" + w], grads2[w])    # the first pass under the plain name
    single = traced(m)
    assert [n for n in t.names() if not n.startswith("pass")] == single.names()
    assert t.sources["pass2/d:" + w] == single.sources["d:" + w]


def test_generate_records_the_prefill_then_each_decode_step():
    m = model()
    with npllama.trace(include=["lm_head.out"]) as t:
        m.generate([1, 5, 9], max_new_tokens=3, temperature=0)
    shapes = [t[n].shape for n in t.names()]
    assert t.names()[0] == "lm_head.out" and shapes[0][1] == 3           # the prompt, in one pass
    assert len(t) >= 3 and all(s[1] == 1 for s in shapes[1:])           # then one position per step
    assert t.names()[1] == "pass2/lm_head.out"


@pytest.mark.parametrize("tokens_differ, targets_differ", [(True, True), (True, False), (False, True)])
def test_other_targets_are_noted_unless_other_tokens_already_explain_them(tokens_differ, targets_differ):
    """One note a reason every tensor differs: other tokens (whose next-token targets differ with
    them) are said, and their targets not again; the same tokens with other targets are said.
    Decided by which settings differ, whatever the notes' wording."""
    from npllama.trace import Trace, _run_notes

    def made(tokens, targets):
        t = Trace(meta={"tokens": tokens, "targets": targets})
        t.record("x", np.ones(2))
        return t

    a = made([[1, 2, 3]], [[2, 3, 4]])
    b = made([[3, 2, 1]] if tokens_differ else [[1, 2, 3]], [[2, 1, 0]] if targets_differ else [[2, 3, 4]])
    notes = _run_notes(a, b, ("a", "b"))
    assert len(notes) == 1, notes
    said, unsaid = ("tokens", "targets") if tokens_differ else ("targets", "tokens")
    assert re.search(rf"\b{said}\b", notes[0]) and not re.search(rf"\b{unsaid}\b", notes[0]), notes
