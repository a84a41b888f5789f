"""A slip in npllama/model.py's own backward -- the code that joins the ops: the residual sums, the
sum of the q/k/v projections' dx, the tied embedding's two gradients -- runs on both sides of a
backends or dtypes comparison, so those comparisons cannot see it.  They must say so rather than
let "no divergence" pass for a clean backward, and point at the comparison that does see it."""
import inspect

import numpy as np
import pytest

import npllama
import npllama.model as model_module
from npllama import Llama, LlamaConfig, debug

IDS = [1, 7, 3, 7, 5, 7, 2, 8]   # 7 three times: the embedding's rows are summed over positions


def tiny(tied=True, dtype=np.float32):
    config = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tied)
    return Llama(config, seed=0, dtype=dtype)


def planted(function_name, old, new):
    """model.py's `function_name` with `old` replaced by `new` in its source: a slip of its own, run
    as model.py runs (re-bound to the ops in force, traced like the original)."""
    source = inspect.getsource(getattr(model_module, function_name))
    assert source.count(old) == 1, old
    namespace = dict(vars(model_module))
    exec(compile(source.replace(old, new), model_module.__file__, "exec"), namespace)
    return namespace[function_name]


# the tied matrix E is the lookup table and the LM head: its two gradients must add
TIED_COUNTED_ONCE = ("model_backward", 'grads["model.embed_tokens.weight"] + dW_lm', "dW_lm")
# h = x + attn_out: the residual's gradient dropped from dh
RESIDUAL_DROPPED = ("block_backward", "dh = dout + dh_norm", "dh = dh_norm")
# a gradient each slip changes
CHANGED = {TIED_COUNTED_ONCE: "d:model.embed_tokens.weight", RESIDUAL_DROPPED: "d:model.layers.0.residual"}


@pytest.mark.parametrize("compare", [debug.compare_backends, debug.compare_dtypes])
@pytest.mark.parametrize("slip", [TIED_COUNTED_ONCE, RESIDUAL_DROPPED])
def test_a_slip_in_model_py_is_on_both_sides_and_the_report_says_so(monkeypatch, compare, slip):
    clean = debug.run_trace(tiny(), IDS)[CHANGED[slip]]
    monkeypatch.setattr(model_module, slip[0], planted(*slip))
    report = compare(tiny(), IDS)
    assert report.ok   # both sides ran the slip: nothing can differ
    for side in report.traces:   # (and both did run it: a plant that did not take would pass the rest)
        assert not np.allclose(side[CHANGED[slip]], clean, rtol=1e-3), side.meta
    note = next((n for n in report.notes if "npllama/model.py" in n), None)
    assert note is not None, str(report)
    assert "compare_transformers" in note and "--against transformers" in note
    assert f"NOTE: {note}" in str(report)


@pytest.mark.parametrize("compare", [debug.compare_backends, debug.compare_dtypes])
def test_no_such_note_when_the_comparison_found_a_divergence(compare):
    def rmsnorm_backward_no_projection(dy, cache):
        x, rstd, weight = cache
        return rstd * dy * weight, np.sum((dy * x * rstd).reshape(-1, x.shape[-1]), axis=0)

    import npllama
    with npllama.use_op("rmsnorm_backward", rmsnorm_backward_no_projection, backend="numpy"):
        report = compare(tiny(), IDS)
    if compare is debug.compare_dtypes:   # the same slip on both sides: only backends see it
        assert report.ok
    else:
        assert not report.ok and not any("npllama/model.py" in n for n in report.notes)


def test_transformers_finds_the_slip_the_note_sends_you_to(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = tiny(dtype=np.float64)
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(model_module, TIED_COUNTED_ONCE[0], planted(*TIED_COUNTED_ONCE))
    report = debug.compare_transformers(tmp_path / "m", IDS, dtype=np.float64)
    assert report.first is not None and report.first.name == "d:model.embed_tokens.weight", str(report)


# ----- a gradient that is a sum names the function that adds it, not only the backwards it adds -----

QKV_SUM_SHORT = ("block_backward", "dxn = dxn_q + dxn_k + dxn_v", "dxn = dxn_q + dxn_v")


@pytest.mark.parametrize("slip, first, adder", [
    (TIED_COUNTED_ONCE, "d:model.embed_tokens.weight", "npllama.model.model_backward"),
    (RESIDUAL_DROPPED, "d:model.layers.1.residual", "npllama.model.block_backward"),
    (QKV_SUM_SHORT, "d:model.layers.1.input_layernorm.out", "npllama.model.block_backward"),
])
def test_a_sum_dropped_in_model_py_is_traced_to_the_function_that_adds(monkeypatch, slip, first, adder):
    model = tiny(dtype=np.float64)
    good = debug.run_trace(model, IDS)
    monkeypatch.setattr(model_module, slip[0], planted(*slip))
    bad = debug.run_trace(model, IDS)
    report = npllama.trace.compare(bad, good, rtol=1e-9, labels=("planted", "good"))
    assert report.first is not None and report.first.name == first, str(report)
    computed_by = next(line for line in str(report).splitlines() if "computed by" in line)
    assert adder in computed_by, computed_by


# ----- the NOTE is true of the model compared: where it sends you must take the model -----

def with_adapters(model):
    from npllama.lora import attach_lora

    adapters = attach_lora(model, r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    rng = np.random.default_rng(0)
    adapters.params = {n: 0.3 * rng.standard_normal(p.shape).astype(p.dtype) for n, p in adapters.params.items()}
    return model


def masked_lm():
    model = tiny()
    model.objective = "mlm"
    tokens = np.array([IDS])
    targets = np.full_like(tokens, -100)
    targets[0, [2, 5]] = [3, 7]
    return model, tokens, targets


@pytest.mark.parametrize("compare", [debug.compare_backends, debug.compare_dtypes])
@pytest.mark.parametrize("kind", ["lora", "masked-LM"])
def test_a_model_compare_transformers_refuses_is_sent_to_a_check_that_takes_it(compare, kind):
    # compare_transformers refuses both (and sends the user back to compare_backends/compare_dtypes)
    if kind == "lora":
        model, args = with_adapters(tiny()), (IDS,)
    else:
        model, *args = masked_lm()
    with pytest.raises(ValueError):
        debug.compare_transformers(model, *args)
    report = compare(model, *args)
    assert report.ok, str(report)
    note = next(n for n in report.notes if "npllama/model.py" in n)
    assert "checks model.py too" not in note and "the ops and model.py" not in note, note
    assert "compare_transformers refuses" in note and "npllama.gradcheck(lambda *_: model.loss(tokens, targets)" in note, note
    if kind == "lora" and compare is debug.compare_backends:
        assert "npllama/lora.py" in note, note   # the adapters' projections run on both sides too


def test_the_ops_with_no_kernel_are_named_as_run_on_both_sides():
    from npllama.finetune import SequenceClassifier

    report = debug.compare_backends(SequenceClassifier(tiny(), ["a", "b"]), IDS, [1])
    note = next(n for n in report.notes if "npllama/model.py" in n)
    for shared in ("npllama.ops.embedding.embedding_forward", "npllama.ops.classifier.classifier_forward",
                   "npllama.ops.classifier.classifier_backward"):
        assert shared in note, note
    assert "npllama.kernels" not in note and "npllama.ops.rmsnorm" not in note, note
    assert "checks model.py too" in note   # a classifier is compared with LlamaForSequenceClassification
