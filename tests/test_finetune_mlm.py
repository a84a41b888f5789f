"""A classifier fine-tuned from a masked-LM model (`npllama train --objective mlm`, the article's
BERT-style pre-training) runs its stack without the causal mask -- in training, validation,
prediction, and after saving and loading -- while a classifier on a causal LM stays causal."""
import json

import numpy as np
import pytest

import npllama.cli
from npllama import Llama, gradcheck, use_backend
from npllama.classify import load_classifier
from npllama.finetune import ClassifyConfig, SequenceClassifier, classify
from npllama.lora import attach_lora
from npllama.ops.classifier import classifier_forward, last_token_index
from npllama.runs import load_model_and_tokenizer


def perturbed_classifier(objective: str, lora: bool = False):
    from .test_finetune import perturbed_classifier as on_a_perturbed_model   # one recipe for both files

    return on_a_perturbed_model(lora, objective)


TOKENS = np.random.default_rng(2).integers(0, 11, (3, 5))
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
LABELS = np.array([2, 0, 1])


def head_on(classifier, causal: bool) -> np.ndarray:
    hidden, _ = classifier.model.hidden_forward(TOKENS, MASK, causal=causal)
    return classifier_forward(hidden, classifier.score_weight, last_token_index(MASK))[0]


@pytest.mark.parametrize("lora", [False, True])
def test_a_masked_lm_base_gives_the_bidirectional_stacks_logits(lora):
    with use_backend("numpy"):
        mlm = perturbed_classifier("mlm", lora)
        assert not mlm.causal and mlm.attention == "bidirectional"
        np.testing.assert_array_equal(mlm.logits(TOKENS, MASK), head_on(mlm, causal=False))
        assert not np.allclose(mlm.logits(TOKENS, MASK), head_on(mlm, causal=True))
        causal = perturbed_classifier("causal", lora)   # the same weights: unchanged, causal
        assert causal.causal and causal.attention == "causal"
        np.testing.assert_array_equal(causal.logits(TOKENS, MASK), head_on(causal, causal=True))
        # the loss is the predicted logits' cross-entropy; predict uses the same logits
        logits = mlm.logits(TOKENS, MASK)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        assert mlm.loss_and_grads(TOKENS, MASK, LABELS)[0] == pytest.approx(-log_probs[np.arange(3), LABELS].mean())
        np.testing.assert_array_equal(mlm.predict([list(r[m == 1]) for r, m in zip(TOKENS, MASK)], pad_id=0),
                                      logits.argmax(-1))


@pytest.mark.parametrize("lora", [False, True])
def test_bidirectional_classifier_gradients(lora):
    classifier = perturbed_classifier("mlm", lora)
    with use_backend("numpy"):
        _, grads = classifier.loss_and_grads(TOKENS, MASK, LABELS)
        assert list(grads) == list(classifier.params)
        report = gradcheck(lambda *_: classifier.loss_and_grads(TOKENS, MASK, LABELS)[0], classifier.params,
                           grads, max_entries=20)
    report.raise_if_failed()
    assert report.max_rel_err < 1e-7
    # and they are not the causal stack's gradients
    causal = perturbed_classifier("causal", lora)
    with use_backend("numpy"):
        _, causal_grads = causal.loss_and_grads(TOKENS, MASK, LABELS)
    assert not np.allclose(grads["score.weight"], causal_grads["score.weight"])


# ----- a real masked-LM run, saved classifiers, the commands -------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny masked-LM run made by the CLI (3 steps), and a causal folder with the same weights."""
    base = tmp_path_factory.mktemp("mlm_classify")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(base / "runs"))
        status = npllama.cli.main(["train", "--objective", "mlm", "--steps", "3", "--preset", "tiny",
                                   "--batch-size", "2", "--seq-len", "32", "--eval-every", "0", "--samples", "0",
                                   "--checkpoint-every", "0", "--vocab-size", "360", "--threads", "1",
                                   "--no-progress", "--out", str(base / "mlm")])
        assert status == 0
        model = Llama.from_pretrained(base / "mlm" / "model")
        assert model.objective == "mlm"
        Llama(model.config, params=model.params).save_pretrained(   # the same weights, called causal
            base / "causal", extra_files={"tokenizer.model": (base / "mlm" / "tokenizer.model").read_bytes()})
        yield base


TEXTS = ["What a lovely day, I loved it!", "A dull and boring film.", "Buy cheap pills now"]


@pytest.mark.parametrize("lora", [False, True])
def test_a_saved_bidirectional_classifier_loads_as_it_was_trained(runs, tmp_path, lora):
    model, tokenizer, _ = load_model_and_tokenizer(runs / "mlm")
    if lora:
        for p in attach_lora(model, r=2).params.values():
            p += 0.1 * np.random.default_rng(3).standard_normal(p.shape).astype(p.dtype)
    classifier = SequenceClassifier(model, ["neg", "pos", "spam"], seed=1)
    classifier.score_weight *= 30    # the tiny model's hidden states differ little: make labels differ
    classifier.save(tmp_path / "clf", tokenizer, base_dir=runs / "mlm")
    info = json.loads((tmp_path / "clf" / "finetune.json").read_text())
    assert info["attention"] == "bidirectional" and "transformers" in info["transformers"]

    loaded = load_classifier(runs / "mlm" if lora else tmp_path / "clf", adapter=tmp_path / "clf" if lora else None)
    assert not loaded.head.causal and loaded.model.objective == "mlm"
    expected = direct_logits(classifier, tokenizer, TEXTS)
    np.testing.assert_allclose(loaded.logits(TEXTS), expected, rtol=1e-5, atol=1e-6)
    assert loaded.predict(TEXTS) == [classifier.label_names[i] for i in expected.argmax(-1)]
    loaded.model.objective = "causal"   # what running it causally would give instead
    assert not np.allclose(loaded.logits(TEXTS), expected, rtol=1e-5, atol=1e-6)
    if lora:   # the adapter on a base of the other kind: refused, not run with the wrong attention
        with pytest.raises(ValueError, match="bidirectional attention on a masked-LM model"):
            load_classifier(runs / "causal", adapter=tmp_path / "clf")
    else:
        assert json.loads((tmp_path / "clf" / "config.json").read_text())["npllama_objective"] == "mlm"


def direct_logits(classifier, tokenizer, texts):
    from npllama.finetune import encode_texts
    from npllama.objectives import pad_batch, pad_id_of

    tokens, mask = pad_batch(encode_texts(tokenizer, texts, classifier.model.config.max_position_embeddings),
                             pad_id_of(tokenizer))
    return classifier.logits(tokens, mask)


def test_a_causal_base_saves_and_loads_a_causal_classifier_as_before(runs, tmp_path):
    model, tokenizer, _ = load_model_and_tokenizer(runs / "causal")
    classifier = SequenceClassifier(model, ["neg", "pos"])
    classifier.save(tmp_path / "clf", tokenizer)
    assert "npllama_objective" not in json.loads((tmp_path / "clf" / "config.json").read_text())
    info = json.loads((tmp_path / "clf" / "finetune.json").read_text())
    assert info["attention"] == "causal" and "transformers" not in info
    loaded = load_classifier(tmp_path / "clf")
    assert loaded.head.causal and loaded.model.objective == "causal"


def test_the_commands_fine_tune_and_run_a_masked_lm_classifier_bidirectionally(runs, tmp_path, capsys):
    main = npllama.cli.main
    for lora in ([], ["--lora", "--lora-r", "2"]):
        out = tmp_path / ("lora" if lora else "full")
        assert main(["finetune", "classify", "--base", str(runs / "mlm"), "--dataset", "spam", "--steps", "3",
                     "--max-len", "32", "--no-progress", "--backend", "numpy", "--out", str(out), *lora]) == 0
        printed = capsys.readouterr().out
        assert "bidirectional attention (the base is a masked-LM model" in printed.splitlines()[0], printed
        assert json.loads((out / "finetune.json").read_text())["attention"] == "bidirectional"
        args = ["--model", str(runs / "mlm"), "--adapter", str(out)] if lora else ["--model", str(out)]
        assert main(["classify", *args, "--json", "--backend", "numpy", *sum((["--text", t] for t in TEXTS), [])]) == 0
        shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        loaded = load_classifier(runs / "mlm" if lora else out, adapter=out if lora else None)
        assert not loaded.head.causal
        with use_backend("numpy"):
            expected = loaded.probabilities(TEXTS)
        for row, probabilities in zip(shown, expected):
            assert list(row["probabilities"].values()) == pytest.approx(probabilities.tolist(), abs=1e-5)

    assert main(["finetune", "classify", "--base", str(runs / "causal"), "--dataset", "spam", "--steps", "1",
                 "--max-len", "32", "--no-progress", "--backend", "numpy"]) == 0
    assert "; causal attention" in capsys.readouterr().out.splitlines()[0]


def test_the_python_job_runs_validation_bidirectionally(runs, monkeypatch):
    seen = []
    original = Llama.hidden_forward

    def spy(self, tokens, attention_mask=None, causal=True):
        seen.append(causal)
        return original(self, tokens, attention_mask, causal=causal)

    monkeypatch.setattr(Llama, "hidden_forward", spy)
    result = classify(ClassifyConfig(base=str(runs / "mlm"), dataset="spam", steps=2, max_len=32, progress=False),
                      echo=lambda *_: None)
    assert seen and set(seen) == {False}   # the training steps and the validation predictions
    assert 0 <= result.metrics["accuracy"] <= 1
