"""npllama.debug's comparisons on a fine-tuning objective (a classifier), and on a LoRA model."""
import numpy as np
import pytest

import npllama
from npllama import debug, use_op
from npllama.lora import attach_lora
from npllama.ops.classifier import classifier_backward

from .test_trace_objectives import LABELS, MASK, TOKENS, classifier, llama


def test_the_classifier_agrees_between_backends_and_dtypes():
    report = debug.compare_backends(classifier(), TOKENS, LABELS, attention_mask=MASK)
    assert report.ok and len(report.diffs) == len(report.traces[0]) and "score.out" in report.traces[1]
    report = debug.compare_dtypes(classifier(np.float32), TOKENS, LABELS, attention_mask=MASK)
    assert report.ok and not report.only_in_a and not report.only_in_b


def test_what_load_classifier_returns_is_compared_as_its_head():
    """npllama.load_classifier(DIR) is how a saved classifier is met first: the comparisons take it
    (they failed with AttributeError: 'Classifier' object has no attribute 'loss_and_grads')."""
    from npllama.classify import Classifier

    head = classifier(np.float32)
    loaded = Classifier(head.model, head.score_weight, head.label_names, tokenizer=None, pad_token_id=0)
    for compare in (debug.compare_backends, debug.compare_dtypes):
        report = compare(loaded, TOKENS, LABELS, attention_mask=MASK)
        assert report.ok and report.traces[0].names() == compare(head, TOKENS, LABELS, attention_mask=MASK).traces[0].names()
    assert debug.run_trace(loaded, TOKENS, LABELS, attention_mask=MASK)["score.out"].shape == (2, 3)


def test_a_classifier_needs_its_labels_to_be_compared():
    with pytest.raises(ValueError, match="targets must be the classifier's labels"):
        debug.compare_backends(classifier(), TOKENS)


def classifier_backward_dhidden_doubled(dlogits, cache):
    dhidden, dscore = classifier_backward(dlogits, cache)
    return 2 * dhidden, dscore


def classifier_backward_dscore_halved(dlogits, cache):
    dhidden, dscore = classifier_backward(dlogits, cache)
    return dhidden, dscore / 2


@pytest.mark.parametrize("planted, first", [(classifier_backward_dhidden_doubled, "d:model.norm.out"),
                                            (classifier_backward_dscore_halved, "d:score.weight")])
def test_a_bug_in_the_heads_backward_is_found_at_the_heads_record(planted, first):
    with use_op("classifier_backward", planted, backend="numpy"):
        report = debug.compare_backends(classifier(), TOKENS, LABELS, attention_mask=MASK)
    assert report.first.name == first
    assert report.traces[0].sources[first] == f"{__name__}.{planted.__name__}"


def test_compare_dtypes_keeps_a_models_lora_adapters():
    model = llama(np.float32)
    adapters = attach_lora(model, r=2)
    rng = np.random.default_rng(0)
    for p in adapters.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.05
    report = debug.compare_dtypes(model, [1, 5, 9, 3])
    assert report.ok and not report.only_in_a and not report.only_in_b


def test_the_debug_commands_run_a_classifier_folder_with_its_label(tmp_path, capsys):
    """`npllama debug compare/trace --label CLASS` on a classifier folder traces its classification
    loss; without --label it names the classes, and --label on a language model is refused."""
    from npllama.cli import main

    folder = tmp_path / "classifier"
    classifier(np.float32)._save_hf_folder(folder)
    assert main(["debug", "compare", "--model", str(folder), "--tokens", "1,5,9", "--label", "c"]) == 0
    out = capsys.readouterr().out
    assert f"classifier {folder} (1 layers), comparing numpy (float32) against numba" in out
    assert "no divergence" in out
    assert main(["debug", "trace", "--model", str(folder), "--tokens", "1,5,9", "--label", "2",
                 "--include", "score.*", "--include", "loss", "--out", str(tmp_path / "t.npz")]) == 0
    capsys.readouterr()
    t = npllama.trace.Trace.load(tmp_path / "t.npz")
    expected = classifier(np.float32).loss_and_grads(np.array([[1, 5, 9]]), np.ones((1, 3), bool), np.array([2]))[0]
    assert t.names() == ["score.pooled_index", "score.out", "loss"] and np.isclose(t["loss"], expected)
    assert main(["debug", "compare", "--model", str(folder), "--tokens", "1,5,9"]) == 2
    assert "give the text's class with --label, one of a, b, c" in capsys.readouterr().err
    assert main(["debug", "compare", "--model", str(folder), "--tokens", "1,5,9", "--label", "d"]) == 2
    assert "--label 'd' is not one of the classifier's labels (a, b, c) or their index (0 to 2)" in capsys.readouterr().err
    llama(np.float32).save_pretrained(tmp_path / "lm")
    assert main(["debug", "compare", "--model", str(tmp_path / "lm"), "--tokens", "1,5,9", "--label", "a"]) == 2
    assert "--label is for a classifier folder" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["attention", "grads"])
def test_viz_refuses_a_classifier_folder_as_no_token_predictor(tmp_path, capsys, action):
    """Only debug compare/trace run a classifier (with --label): viz draws a token predictor's pass,
    and a classifier folder is refused saying what it is (not an AttributeError, not 'targets')."""
    pytest.importorskip("matplotlib")
    from npllama.cli import main

    folder = tmp_path / "classifier"
    classifier(np.float32)._save_hf_folder(folder)
    assert main(["viz", action, "--model", str(folder), "--tokens", "1,5,9", "--out", str(tmp_path / "x.png")]) == 2
    assert "does not predict tokens" in capsys.readouterr().err


def test_use_op_reaches_the_heads_without_a_trace():
    """The heads run the ops in force (Llama.head_ops) in training too, not only while a trace
    records: an override of classifier_backward changes the classifier's and the sentence-order
    head's gradients."""
    from npllama.objectives import SOP_HEAD, SentenceOrderBatch, init_sop_head, mlm_sop_loss_and_grads

    from .test_trace_objectives import MLM_TARGETS

    model, head = llama(), init_sop_head(16, dtype=np.float64, std=0.5)
    batch = SentenceOrderBatch(TOKENS, MLM_TARGETS, MASK.astype(bool), np.array([0, 1]))
    runs = {"score.weight": lambda: classifier().loss_and_grads(TOKENS, MASK, LABELS)[1],
            SOP_HEAD: lambda: mlm_sop_loss_and_grads(model, head, batch)[1]}
    for name, run in runs.items():
        plain = run()[name]
        with use_op("classifier_backward", classifier_backward_dscore_halved):
            np.testing.assert_array_equal(run()[name], plain / 2)


def test_a_bidirectional_classifier_is_refused_against_transformers_only(tmp_path, capsys):
    """A masked-LM base's classifier runs without the causal mask: transformers would run it
    causally, so that comparison is refused; numpy against numba and a trace run it as it is
    (they were refused with the transformers message)."""
    from npllama.cli import main
    from npllama.finetune import SequenceClassifier

    bidirectional = SequenceClassifier(llama(np.float32), ["a", "b"], seed=0)
    bidirectional.model.objective = "mlm"
    folder = tmp_path / "classifier"
    bidirectional._save_hf_folder(folder)
    assert main(["debug", "compare", "--model", str(folder), "--tokens", "1,5,9", "--label", "b"]) == 0
    assert "no divergence" in capsys.readouterr().out
    assert main(["debug", "trace", "--model", str(folder), "--tokens", "1,5,9", "--label", "b", "--include", "loss"]) == 0
    capsys.readouterr()
    for model in (bidirectional, folder):
        with pytest.raises(ValueError, match="LlamaForSequenceClassification would run it causally"):
            debug.compare_transformers(model, [1, 5, 9], [1])


def test_a_masked_lm_model_is_refused_against_transformers_only(tmp_path, capsys):
    """A masked-LM model runs without the causal mask (its forward's default); transformers'
    LlamaForCausalLM runs every Llama causally, so the compare reported a divergence at the first
    attn_probs -- a false bug in attention_forward.  numpy against numba compares it as it runs."""
    from npllama.cli import main

    mlm = llama(np.float32)
    mlm.objective = "mlm"
    folder = tmp_path / "mlm"
    mlm.save_pretrained(folder)
    # numpy against numba compares it as it runs, on its masked-LM loss (tests/test_debug_masked_lm.py)
    assert debug.compare_backends(mlm, [[1, 0, 9]], [[-100, 5, -100]]).ok
    for model in (mlm, folder):
        with pytest.raises(ValueError, match="masked-LM model.*LlamaForCausalLM would run it causally"):
            debug.compare_transformers(model, [1, 5, 9])
    assert main(["debug", "compare", "--model", str(folder), "--tokens", "1,5,9", "--against", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "LlamaForCausalLM would run it causally" in err and "Traceback" not in err, err
