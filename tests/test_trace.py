"""Traces: names and order, selective recording, no effect when off, summary, save/load, compare."""
import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, use_backend
from npllama.trace import Trace, active_trace, compare, diff_tensors, first_divergence


def tiny_model(dtype=np.float64, layers=2, **overrides):
    fields = dict(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    fields.update(overrides)
    model = Llama(LlamaConfig(**fields), seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in model.params.values():   # move the unit norm weights so every gradient is exercised
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return model


def batch(vocab=13, B=2, T=5):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(B, T))
    targets = rng.integers(0, vocab, size=(B, T))
    targets[0, 0] = -100
    return tokens, targets


def traced(model, backend="numpy", **patterns):
    tokens, targets = batch(model.config.vocab_size)
    with use_backend(backend), npllama.trace(**patterns) as t:
        loss, grads = model.loss_and_grads(tokens, targets)
    return t, loss, grads


# ----- names and order ---------------------------------------------------------------------------

def test_records_forward_then_backward_then_params_under_stable_names():
    model = tiny_model()
    t, loss, grads = traced(model)
    names = t.names()
    for name in ["model.embed_tokens.out", "model.layers.0.self_attn.q", "model.layers.0.self_attn.q_rot",
                 "model.layers.0.self_attn.attn_probs", "model.layers.0.self_attn.attn",
                 "model.layers.0.mlp.gate", "model.layers.1.out", "lm_head.out", "loss",
                 "d:model.layers.0.input_layernorm.out", "d:model.layers.1.self_attn.q_rot"]:
        assert name in t, name
    first_grad = names.index("d:lm_head.out")
    assert all(not n.startswith("d:") for n in names[:first_grad])
    assert names.index("model.layers.0.self_attn.q") < names.index("model.layers.0.self_attn.q_rot") \
        < names.index("model.layers.0.self_attn.attn_probs") < names.index("model.layers.1.out")
    # the backward pass runs last layer first
    assert names.index("d:model.layers.1.mlp.out") < names.index("d:model.layers.0.mlp.out")
    # then every parameter's gradient (in the order the backward finished them: see
    # test_trace_gradients.py), equal to what loss_and_grads returned
    assert sorted(names[-len(grads):]) == sorted("d:" + n for n in model.params)
    for name, g in grads.items():
        np.testing.assert_array_equal(t["d:" + name], g)
    assert float(t["loss"]) == loss


def test_recorded_values_match_the_ops():
    model = tiny_model(layers=1)
    t, _, _ = traced(model)
    probs = t["model.layers.0.self_attn.attn_probs"]
    B, H, T, S = probs.shape
    assert (B, H, T, S) == (2, 2, 5, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert np.all(probs[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)  # causal
    q_rot, k_rot = t["model.layers.0.self_attn.q_rot"], t["model.layers.0.self_attn.k_rot"]
    scores = q_rot[:, :, 2] @ k_rot[:, 0, :3].swapaxes(-1, -2) / np.sqrt(q_rot.shape[-1])  # query 2, keys 0..2
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(probs[:, :, 2, :3], expected / expected.sum(-1, keepdims=True), rtol=1e-12)
    v = t["model.layers.0.self_attn.v"].reshape(B, T, 1, -1).transpose(0, 2, 1, 3)        # one kv head
    np.testing.assert_allclose(t["model.layers.0.self_attn.attn"], probs @ v, rtol=1e-12)
    gate, up, act = (t[f"model.layers.0.mlp.{s}"] for s in ("gate", "up", "act"))
    np.testing.assert_allclose(act, gate / (1 + np.exp(-gate)) * up, rtol=1e-12)


def test_records_are_copies():
    model = tiny_model(layers=1)
    t, _, _ = traced(model)
    before = t["model.embed_tokens.out"].copy()
    model.params["model.embed_tokens.weight"] += 1.0
    np.testing.assert_array_equal(t["model.embed_tokens.out"], before)


def test_numpy_and_numba_traces_agree():
    model = tiny_model(dtype=np.float64)
    a, loss_a, _ = traced(model, "numpy")
    b, loss_b, _ = traced(model, "numba")
    assert a.names() == b.names() and loss_a == pytest.approx(loss_b, rel=1e-12)
    report = compare(a, b, rtol=1e-12)
    assert report.ok, str(report)
    assert max(d.rel_err for d in report.diffs) < 1e-12
    model32 = tiny_model(dtype=np.float32)
    a32, _, _ = traced(model32, "numpy")
    b32, _, _ = traced(model32, "numba")
    assert compare(a32, b32, rtol=1e-5).ok


# ----- selective recording and cost when off -------------------------------------------------------

def test_include_and_exclude_patterns():
    model = tiny_model()
    t, _, _ = traced(model, include=["model.*.attn_probs", "d:*.q_rot"])
    assert t.names() == ["model.layers.0.self_attn.attn_probs", "model.layers.1.self_attn.attn_probs",
                         "d:model.layers.1.self_attn.q_rot", "d:model.layers.0.self_attn.q_rot"]
    t, _, _ = traced(model, exclude=["d:*", "*.mlp.*"])
    assert t.names() and not any(n.startswith("d:") or ".mlp." in n for n in t.names())
    assert "model.layers.1.residual" in t


def test_a_trace_records_what_the_kernel_computed_not_a_recomputation():
    # a kernel whose attention probabilities are wrong (scale applied twice): the trace must show
    # the kernel's own attn_probs, so compare names them, not the attention output after them
    from npllama.kernels import attention as kernel
    from npllama.kernels.attention import BlockedAttentionCache

    def attention_scale_twice(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
        return kernel.attention_forward(q / np.sqrt(q.shape[-1]), k, v, causal, key_padding_mask, q_offset)

    model = tiny_model(dtype=np.float64)
    a, _, _ = traced(model, "numpy")
    with npllama.use_op("attention_forward", attention_scale_twice, backend="numba"):
        b, _, _ = traced(model, "numba")
    report = compare(a, b, rtol=1e-9)
    assert report.first.name == "model.layers.0.self_attn.attn_probs", str(report)
    assert "attention_scale_twice" in b.sources[report.first.name]
    before = report.diffs[:report.diffs.index(report.first)]
    assert before and not any(d.diverged for d in before)
    assert "attention_scale_twice" in str(report)
    _, cache = kernel.attention_forward(*(np.ones((1, 2, 3, 4)),) * 3)
    assert isinstance(cache, BlockedAttentionCache)


def test_no_trace_outside_the_block_and_identical_results():
    model = tiny_model()
    tokens, targets = batch()
    assert active_trace() is None
    with use_backend("numpy"):
        loss_plain, grads_plain = model.loss_and_grads(tokens, targets)
        with npllama.trace() as t:
            assert active_trace() is t
            loss_traced, grads_traced = model.loss_and_grads(tokens, targets)
        assert active_trace() is None
        model.loss_and_grads(tokens, targets)
    assert loss_plain == loss_traced
    for name in grads_plain:
        np.testing.assert_array_equal(grads_plain[name], grads_traced[name])
    n = len(t)
    model.forward(tokens)
    assert len(t) == n  # a closed trace records nothing more


def test_nested_traces_record_to_the_innermost():
    model = tiny_model(layers=1)
    with npllama.trace(include=["loss"]) as outer:
        with npllama.trace(include=["lm_head.out"]) as inner:
            model.loss_and_grads(*batch())
        model.loss_and_grads(*batch())
    assert inner.names() == ["lm_head.out"] and outer.names() == ["loss"]


def test_patterns_must_be_lists():
    with pytest.raises(TypeError, match="lists of patterns"):
        Trace(include="*.q")


def test_patterns_may_come_as_a_numpy_array():
    # before: exclude=np.array([...]) was NumPy's "truth value of an array is ambiguous"
    t = Trace(include=np.array(["*.q", "loss"]), exclude=np.array(["*.layers.1.*"]))
    assert t.include == ["*.q", "loss"] and t.exclude == ["*.layers.1.*"]
    assert Trace(exclude=np.array([], dtype=str)).exclude == []


# ----- summary ------------------------------------------------------------------------------------

def test_summary_table_counts_nan_and_inf_and_uses_finite_entries(capsys):
    t = Trace()
    t.record("a", np.array([1.0, 2.0, 3.0, np.inf, -np.inf, np.nan], dtype=np.float32))
    t.record("b.ints", np.arange(4))
    s = t.stats("a")
    assert (s["nan"], s["inf"], s["min"], s["max"], s["mean"]) == (1, 2, 1.0, 3.0, 2.0)
    assert s["std"] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    t.summary()
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "shape", "dtype", "mean", "std", "min", "max", "nan", "inf"]
    assert out[1].split() == ["a", "(6,)", "float32", "2", "0.8165", "1", "3", "1", "2"]
    assert out[2].split()[:3] == ["b.ints", "(4,)", "int64"]
    assert "b.ints" not in t.format_summary("a*")


def test_summary_of_a_pattern_that_matches_nothing_says_so():
    # a mistyped pattern ("layers.0.*": names start with "model.") printed a bare header, as if
    # the trace were empty
    t = Trace()
    t.records = {"model.layers.0.self_attn.q": np.ones(2), "d:model.layers.0.out": np.ones(2)}
    text = t.format_summary("layers.0.*")
    assert "no record matches 'layers.0.*'" in text and "'model.layers.0.self_attn.q'" in text
    assert "no record matches" not in t.format_summary("model.*")


def test_summary_of_a_model_trace_has_a_row_per_tensor():
    t, _, _ = traced(tiny_model(layers=1))
    lines = t.format_summary().splitlines()
    assert len(lines) == len(t) + 2
    row = next(line for line in lines if line.startswith("model.layers.0.self_attn.attn_probs"))
    assert row.split()[1:3] == ["(2,", "2,"] and row.split()[-2:] == ["0", "0"]  # no NaN, no Inf
    assert len([line for line in lines if line.startswith("d:")]) == len(t.names("d:*"))


# ----- save / load ---------------------------------------------------------------------------------

def test_save_and_load_round_trip_without_pickle(tmp_path):
    t, _, _ = traced(tiny_model(dtype=np.float32))
    t.meta["backend"] = "numpy"
    path = tmp_path / "run.npz"
    t.save(path)
    loaded = Trace.load(path)
    assert loaded.names() == t.names() and loaded.meta == t.meta and loaded.meta["backend"] == "numpy"
    for name in t:
        assert loaded[name].dtype == t[name].dtype
        np.testing.assert_array_equal(loaded[name], t[name])
    with np.load(path, allow_pickle=False) as archive:  # a plain npz anyone can open
        np.testing.assert_array_equal(archive["model.layers.0.self_attn.attn_probs"],
                                      t["model.layers.0.self_attn.attn_probs"])
    assert compare(t, path).ok  # compare takes paths too


def test_selective_trace_saves_only_its_records(tmp_path):
    t, _, _ = traced(tiny_model(), include=["*.attn_probs"])
    t.save(tmp_path / "probs.npz")
    loaded = Trace.load(tmp_path / "probs.npz")
    assert loaded.names() == t.names() and loaded.include == ["*.attn_probs"]


def test_save_and_load_reject_bad_paths(tmp_path):
    t = Trace()
    t.record("x", np.ones(2))
    with pytest.raises(ValueError, match=".npz"):
        t.save(tmp_path / "run.pkl")
    with pytest.raises(TypeError, match="path must be the .npz file to write"):
        t.save(None)   # (os.fspath's own message would not say what `path` is for)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trace.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        Trace.load(tmp_path / "junk.npz")
    bad = Trace()
    bad.record("__names__", np.ones(1))
    with pytest.raises(ValueError, match="reserved"):
        bad.save(tmp_path / "bad.npz")


def test_load_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        Trace.load(path)["x"]


# ----- compare ------------------------------------------------------------------------------------

def test_compare_finds_the_first_changed_tensor_with_its_worst_index():
    t, _, _ = traced(tiny_model())
    other = Trace()
    other.records = {n: a.copy() for n, a in t.items()}
    other.records["model.layers.1.mlp.up"][1, 2, 3] += 0.5
    other.records["lm_head.out"] *= 1.1                      # later: must not be reported first
    report = compare(t, other, rtol=1e-6)
    first = report.first
    assert first.name == "model.layers.1.mlp.up"
    assert first.worst_index == (1, 2, 3) and first.mismatched == 1
    assert first.b_value - first.a_value == pytest.approx(0.5)
    assert [d.name for d in report.diverged] == ["model.layers.1.mlp.up", "lm_head.out"]
    text = str(report)
    assert "FIRST DIVERGENCE" in text and "model.layers.1.mlp.up" in text and "(1, 2, 3)" in text
    assert "model.layers.1.mlp.gate" in text  # the tensor before it, which agrees
    assert first_divergence(t, other, rtol=1e-6).name == "model.layers.1.mlp.up"
    assert "DIFFERS" in report.table(only_diverged=True)


def test_compare_rules_for_nan_inf_shapes_and_scale():
    a = {"masked": np.array([-np.inf, 1.0]), "nan_both": np.array([np.nan, 1.0]),
         "small": np.array([1e-6, 2e-6]), "nan_one": np.array([np.nan, 1.0]), "shape": np.ones(3)}
    b = {"masked": np.array([-np.inf, 1.0]), "nan_both": np.array([np.nan, 1.0]),
         "small": np.array([1e-6, 2.2e-6]), "nan_one": np.array([0.0, 1.0]), "shape": np.ones(4)}
    report = compare(a, b, rtol=1e-3)
    assert not report["masked"].diverged and not report["nan_both"].diverged
    assert report["small"].diverged            # 10% off, even though 2e-7 is a tiny absolute error
    assert not compare(a, b, rtol=1e-3, atol=1e-6)["small"].diverged  # a fixed atol forgives it
    assert report["nan_one"].diverged and "NaN" in report["nan_one"].note
    assert report["shape"].diverged and "shapes differ" in report["shape"].describe()
    assert report.first.name == "small"


def test_a_report_says_which_side_is_a_and_what_its_relative_error_is():
    # the tolerance rule is per entry and speaks of a and b; the "relative error" figures are
    # norm-wise over the whole tensor: a reader comparing npllama with transformers must be told both
    a = {"x": np.array([1.0, 2.0]), "y": np.array([3.0, 4.0])}
    b = {"x": np.array([1.0, 2.0]), "y": np.array([3.0, 4.4])}
    text = str(compare(a, b, rtol=1e-3, labels=("npllama", "transformers")))
    assert "a = npllama" in text and "b = transformers" in text
    assert "relative error = ||a - b|| / max(||a||, ||b||)" in text
    assert "relative error 0.0751" in text        # 0.4 / ||(3, 4.4)||, not the worst entry's 0.4 / 4.4
    assert "the 1 tensor recorded before it, x, agrees" in text and "all 1 tensors" not in text
    b["x"] = np.array([1.0, 2.2])
    unnamed = str(compare(a, b, rtol=1e-3))
    assert "1 later tensor differs too" in unnamed
    assert "a = a" not in unnamed and unnamed.startswith("compared 2 tensors; tolerance")   # nothing to name


def test_a_first_divergence_in_shape_is_not_called_the_cause_of_the_rest():
    # a decode step (one position) against a full forward: every tensor differs in shape, and none
    # differs "as a consequence" of the first
    a = {name: np.ones((1, 1, 4)) for name in ("h", "attn", "out")}
    b = {name: np.ones((1, 5, 4)) for name in ("h", "attn", "out")}
    text = str(compare(a, b))
    assert "shapes differ" in text and "2 of them in shape" in text and "consequence" not in text
    b["attn"] = b["out"] = np.ones((1, 1, 4)) * 2
    assert "most likely as a consequence" in str(compare({**a, "h": np.ones((1, 1, 4)) * 3}, {**b, "h": np.ones((1, 1, 4))}))


def test_compare_lists_names_recorded_on_one_side_only():
    report = compare({"x": np.ones(2), "only_a": np.ones(1)}, {"x": np.ones(2), "only_b": np.ones(1)})
    assert report.ok and report.only_in_a == ["only_a"] and report.only_in_b == ["only_b"]
    assert "only_a" in str(report) and "only_b" in str(report)


def test_comparing_traces_with_no_name_in_common_shows_names_from_each_side():
    # your own implementation recorded under your own names ("layers.0.q"): the error must show
    # both naming schemes, so you see what to rename, rather than two bare record counts
    ours = {"model.layers.0.self_attn.q": np.ones(2), "model.layers.0.self_attn.k": np.ones(2)}
    mine = {"layers.0.q": np.ones(2), "layers.0.k": np.ones(2)}
    with pytest.raises(ValueError, match=r"nothing to compare.*npllama.*'model.layers.0.self_attn.q'.*"
                                         r"mine.*'layers.0.q'"):
        compare(ours, mine, labels=("npllama", "mine"))


def test_compare_refuses_labels_that_are_not_two_names():
    same = {"x": np.ones(2)}
    for labels in (("a", "b", "c"), "ab", ("a",), ("a", 2)):
        with pytest.raises(TypeError, match="labels must be two names"):
            compare(same, same, labels=labels)
    assert compare(same, same, labels=["npllama", "mine"]).labels == ("npllama", "mine")


def test_nan_in_both_traces_agrees_but_the_report_says_so():
    # NaN equals NaN (the documented rule), so two runs that both blew up "agree": the report must
    # not let "no divergence" pass for two healthy runs
    a = {"x": np.array([1.0, 2.0]), "y": np.array([np.nan, 2.0]), "z": np.array([np.nan, np.nan])}
    report = compare(a, {k: v.copy() for k, v in a.items()})
    assert report.ok
    assert "NOTE: 2 tensors hold NaN in both traces, first y" in str(report)
    assert "NaN in both" not in str(compare({"x": np.ones(2)}, {"x": np.ones(2)}))


def test_opposite_infinities_are_not_called_one_sided():
    # inf against -inf is NaN/Inf in both traces: "in one trace only" would send you looking for
    # the wrong thing
    report = compare({"x": np.array([np.inf, 1.0])}, {"x": np.array([-np.inf, 1.0])})
    assert report.first.name == "x" and report.first.worst_index == (0,)
    assert "one trace only" not in report.first.note and "both" in report.first.note
    assert "one trace only" in compare({"x": np.array([np.nan, 1.0])}, {"x": np.array([0.0, 1.0])}).first.note


def test_compare_rejects_bad_arguments():
    with pytest.raises(TypeError, match="a must be a Trace"):
        compare(42, {})
    with pytest.raises(ValueError, match="rtol"):
        compare({}, {}, rtol=-1)
    with pytest.raises(ValueError, match="atol"):
        compare({}, {}, atol="big")


def test_diff_tensors_handles_float32_against_float64():
    x64 = np.linspace(-1, 1, 7)
    d = diff_tensors("x", x64.astype(np.float32), x64, rtol=1e-6, atol=None)
    assert not d.diverged and 0 < d.rel_err < 1e-7


def test_module_is_callable_and_keeps_its_functions():
    assert callable(npllama.trace) and npllama.trace.compare is compare
    with npllama.trace(include=["loss"]) as t:
        tiny_model(layers=1).loss_and_grads(*batch())
    assert t.names() == ["loss"]


def test_benchmark_script_runs(tmp_path):
    # no timing assertions: only that the script works and its "no trace code" model is hook-free
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trace.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--json", str(tmp_path / "b.json")],
                         check=True, capture_output=True, text=True).stdout
    for variant in ("math only", "tracing off", "trace selective", "trace all"):
        assert variant in out
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["results_seconds"]) == {"math only", "tracing off", "trace selective", "trace all"}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_recorded_gradients_chain_through_the_block(backend):
    # what the backward recorded must be the gradients it really passed on: step 7 of the block's
    # backward, dh = dout + rmsnorm_backward(dhn), recomputed here from the recorded tensors
    from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward

    model = tiny_model()
    t, _, _ = traced(model, backend=backend)
    cfg = model.config
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        _, cache = rmsnorm_forward(t[p + "residual"], model.params[p + "post_attention_layernorm.weight"],
                                   cfg.rms_norm_eps)
        dh_norm, _ = rmsnorm_backward(t["d:" + p + "post_attention_layernorm.out"], cache)
        np.testing.assert_allclose(t["d:" + p + "mlp.out"] + dh_norm, t["d:" + p + "self_attn.out"], atol=1e-12)


# ----- bugs planted in a kernel are found at the op that has them ---------------------------------------

def _kernel(name):
    from npllama import backend
    return getattr(backend.ops("numba"), name)


def _attention_no_causal_mask(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    return _kernel("attention_forward")(q, k, v, False, key_padding_mask, q_offset)


def _attention_head_1_lost(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    out, cache = _kernel("attention_forward")(q, k, v, causal, key_padding_mask, q_offset)
    out = out.copy()
    out[:, 1] = 0.0
    return out, cache


def _attention_dk_halved(dout, cache):
    dq, dk, dv = _kernel("attention_backward")(dout, cache)
    return dq, dk / 2, dv


def _rmsnorm_backward_no_projection(dy, cache):
    x, rstd, weight = cache          # the kernel's cache is the reference's RMSNormCache
    dx = dy * weight * rstd
    _, dweight = _kernel("rmsnorm_backward")(dy, cache)
    return dx, dweight


def _swiglu_backward_up_sign(dout, cache):
    dx, dw_gate, dw_up, dw_down = _kernel("swiglu_backward")(dout, cache)
    return dx, dw_gate, -dw_up, dw_down


def _rope_sin_sign(x, cos, sin):
    return _kernel("rope_forward")(x, cos, -sin)


KERNEL_BUGS = {   # op, wrong kernel, where compare must point (last = the last layer)
    "attention scale twice": ("attention_forward",
                              lambda q, k, v, *a: _kernel("attention_forward")(q / np.sqrt(q.shape[-1]), k, v, *a),
                              "model.layers.0.self_attn.attn_probs"),
    "attention without the causal mask": ("attention_forward", _attention_no_causal_mask,
                                          "model.layers.0.self_attn.attn_probs"),
    "attention loses one head": ("attention_forward", _attention_head_1_lost, "model.layers.0.self_attn.attn"),
    "attention dk halved": ("attention_backward", _attention_dk_halved, "d:model.layers.{last}.self_attn.k_rot"),
    "rmsnorm backward without projection": ("rmsnorm_backward", _rmsnorm_backward_no_projection,
                                            "d:model.layers.{last}.out"),
    "swiglu backward dw_up sign": ("swiglu_backward", _swiglu_backward_up_sign,
                                   "d:model.layers.{last}.mlp.up_proj.weight"),
    "rope sin sign": ("rope_forward", _rope_sin_sign, "model.layers.0.self_attn.q_rot"),
}


@pytest.mark.parametrize("bug", list(KERNEL_BUGS))
def test_a_bug_planted_in_a_kernel_is_located_at_its_op_and_tensor(bug):
    op, wrong, expected = KERNEL_BUGS[bug]
    model = tiny_model(dtype=np.float64)
    expected = expected.format(last=model.config.num_hidden_layers - 1)
    reference, _, _ = traced(model, "numpy")
    with npllama.use_op(op, wrong, backend="numba"):
        planted, _, _ = traced(model, "numba")
    report = compare(reference, planted, rtol=1e-9)
    assert report.first is not None and report.first.name == expected, str(report)
    if op.endswith("_forward"):   # the record names the function that computed it
        assert wrong.__qualname__ in planted.sources[expected]
    assert compare(reference, traced(model, "numba")[0], rtol=1e-9).ok   # nothing planted any more


def test_loading_a_trace_that_declares_huge_arrays_is_refused_before_inflating(tmp_path, monkeypatch):
    from npllama.trace import Trace

    t = Trace()
    t.records = {"a": np.zeros((256, 256))}      # 512 KiB of float64, compressed or not
    t.save(tmp_path / "t.npz")
    monkeypatch.setenv("NPLLAMA_MAX_MEMORY", str(64 * 1024))
    with pytest.raises(ValueError, match="memory budget"):
        Trace.load(tmp_path / "t.npz")
    monkeypatch.delenv("NPLLAMA_MAX_MEMORY")
    assert Trace.load(tmp_path / "t.npz")["a"].shape == (256, 256)


def test_a_record_must_be_numbers_and_a_tensor_that_requires_grad_is_read_as_it_is():
    from npllama.trace import Trace, compare

    t = Trace()
    with pytest.raises(TypeError, match=r"record 'note' must be an array of numbers \(or a tensor\), got str"):
        t.record("note", "hello")
    with pytest.raises(TypeError, match=r"record 'd:w' must be an array of numbers.*got NoneType"):
        compare({"d:w": None}, {"d:w": np.zeros(2)})
    torch = pytest.importorskip("torch")
    w = torch.arange(3.0, requires_grad=True)
    t.record("w", w * 2)
    np.testing.assert_array_equal(t["w"], [0.0, 2.0, 4.0])
    report = compare({"w": (w * 2).to(torch.bfloat16)}, {"w": np.array([0.0, 2.0, 4.0])})
    assert report.first is None


def _softmax_without_max_shift(x, check_values=True):
    exps = np.exp(x)
    p = exps / exps.sum(axis=-1, keepdims=True)
    return p, p


def _swiglu_act_forward_halved(gate, up):
    from npllama.ops import swiglu_act_forward

    act, cache = swiglu_act_forward(gate, up)
    return act / 2, cache


def _swiglu_act_backward_doubled(dact, cache):
    from npllama.ops import swiglu_act_backward

    dgate, dup = swiglu_act_backward(dact, cache)
    return 2 * dgate, dup


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("lora_targets", [None, ["gate_proj", "q_proj"], ["q_proj"]])
@pytest.mark.parametrize("op, wrong, recorded", [
    ("softmax_forward", _softmax_without_max_shift, ["model.layers.0.self_attn.attn_probs", "model.layers.0.self_attn.attn"]),
    ("swiglu_act_forward", _swiglu_act_forward_halved, ["model.layers.0.mlp.act", "model.layers.0.mlp.out"]),
    ("swiglu_act_backward", _swiglu_act_backward_doubled, ["d:model.layers.0.mlp.gate", "d:model.layers.0.mlp.up"]),
])
def test_the_source_of_a_record_names_the_nested_op_replaced_inside_it(backend, lora_targets, op, wrong, recorded):
    # compare's "computed by" reads the source: "attention_forward" alone, on both sides, would hide
    # that the softmax inside it was the user's -- with LoRA adapters too, whose SwiGLU runs the
    # SiLU-gate op in its own code
    from npllama.lora import attach_lora

    model = tiny_model()
    if lora_targets is not None:
        attach_lora(model, 2, 4, 0.0, lora_targets)
    with npllama.use_op(op, wrong):
        t, _, _ = traced(model, backend)
    assert t.replaced == {op: f"{wrong.__module__}.{wrong.__qualname__}"}
    for name in recorded:
        assert wrong.__qualname__ in t.sources[name] and op in t.sources[name], (name, t.sources[name])
    plain, _, _ = traced(model, backend)
    assert plain.replaced == {} and all(wrong.__qualname__ not in s for s in plain.sources.values())


def test_nothing_of_a_finished_trace_outlives_its_block_with_lora_and_a_replaced_silu_gate():
    # LoRA keeps the SiLU-gate ops it was given at the model's last call: the trace's noting
    # wrappers must not keep that trace (its records, its recorder) alive after the block
    import gc
    import weakref

    from npllama.lora import attach_lora

    model = tiny_model()
    attach_lora(model, 2, 4, 0.0, ["gate_proj"])
    with npllama.use_op("swiglu_act_forward", _swiglu_act_forward_halved):
        t, _, _ = traced(model)
        assert "swiglu_act_forward" in t.replaced
        finished = weakref.ref(t)
        del t
        gc.collect()
        assert finished() is None


def test_a_lora_cache_made_in_one_trace_notes_its_replaced_silu_gate_in_the_trace_running_its_backward():
    # the LoRA SwiGLU cache carries its SiLU-gate backward: run under a second trace, the
    # replacement it runs is that trace's to note, not the finished first trace's
    from npllama.lora import attach_lora

    model = tiny_model()
    attach_lora(model, 2, 4, 0.0, ["gate_proj"])
    tokens, _ = batch()
    with npllama.use_op("swiglu_act_backward", _swiglu_act_backward_doubled):
        with npllama.trace():
            logits, caches = model.forward_with_caches(tokens)
        with npllama.trace() as second:
            model.backward(np.ones_like(logits), caches)
    assert second.replaced == {"swiglu_act_backward": f"{__name__}._swiglu_act_backward_doubled"}
