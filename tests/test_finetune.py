"""Fine-tuning end to end on a tiny model: classification (full and LoRA), SFT, choice scoring, CLI."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import npllama.cli
from npllama import Llama, LlamaConfig, gradcheck, use_backend
from npllama import datasets
from npllama.finetune import (ClassifyConfig, SequenceClassifier, SFTConfig, batch_rows, choice_logprobs,
                              classification_metrics, classify, encode_chat, evaluate_choice, majority_baseline, sft,
                              sft_batch)
from npllama.io.safetensors import read_safetensors
from npllama.lora import attach_lora
from npllama.objectives import pad_batch, pad_id_of
from npllama.tokenizer import Tokenizer

from .test_model import padding_masks


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tokenizer trained on the example sets and a small random model: a stand-in for a run folder."""
    folder = tmp_path_factory.mktemp("ft")
    texts = [r["text"] for n in ("sentiment", "topic", "spam") for r in datasets.make_dataset(n, 600)]
    texts += [p["prompt"] + " " + p["response"] for p in datasets.make_instructions(200)]
    tokenizer = Tokenizer.train(texts, folder / "tok", vocab_size=400)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=96)
    Llama(config, seed=0).save_pretrained(folder / "base",
                                          extra_files={"tokenizer.model": (folder / "tok.model").read_bytes()})
    return folder / "base"


def quiet(*_):
    pass


# ----- classification ----------------------------------------------------------------------------------
def test_classify_full_and_lora_beat_the_majority_baseline(base_dir, tmp_path):
    # one BLAS thread: hidden-32 products gain nothing from two, and the accuracies do not then
    # depend on the machine's thread count
    with use_backend("numpy"), threadpool_limits(1, user_api="blas"):
        full = classify(ClassifyConfig(base=str(base_dir), steps=300, lr=1e-2, max_len=48, progress=False,
                                       out=str(tmp_path / "full")), echo=quiet)
        lora = classify(ClassifyConfig(base=str(base_dir), steps=300, lr=1e-2, max_len=48, progress=False,
                                       lora=True, lora_r=4, out=str(tmp_path / "lora")), echo=quiet)
    assert full.baseline == pytest.approx(0.54, abs=0.05)
    assert full.metrics["accuracy"] > 0.75 and full.metrics["accuracy"] > full.baseline + 0.15
    assert lora.metrics["accuracy"] > 0.65
    assert lora.trainable / lora.total < 0.05 < full.trainable / full.total
    assert np.sum(full.metrics["confusion"]) == 400 and full.losses[-1] < full.losses[0]

    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    names = set(read_safetensors(tmp_path / "full" / "model.safetensors"))
    assert "score.weight" in names and "lm_head.weight" not in names
    adapter = read_safetensors(tmp_path / "lora" / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in adapter
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    info = json.loads((tmp_path / "lora" / "finetune.json").read_text())
    assert info["label_names"] == ["negative", "positive"] and info["metrics"]["accuracy"] == lora.metrics["accuracy"]


def perturbed_classifier(lora: bool, objective: str = "causal", num_labels: int = 3, num_key_value_heads: int = 1,
                         num_hidden_layers: int = 2):
    """A float64 classifier on a tiny random model whose weights are far from their init."""
    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=2, num_key_value_heads=num_key_value_heads, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float64, objective=objective)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p += (0.3 if p.ndim == 1 else 0.2) * rng.standard_normal(p.shape)
    if lora:
        for p in attach_lora(model, r=2, target_modules=["q_proj", "v_proj", "down_proj"]).params.values():
            p += 0.3 * rng.standard_normal(p.shape)
    classifier = SequenceClassifier(model, "abcd"[:num_labels])
    classifier.score_weight += rng.standard_normal(classifier.score_weight.shape)
    return classifier


CLASSIFIER_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])


@settings(max_examples=6, deadline=None)
@given(lora=st.booleans(), objective=st.sampled_from(["causal", "mlm"]), num_labels=st.integers(2, 4),
       num_key_value_heads=st.sampled_from([1, 2]), num_hidden_layers=st.integers(1, 2), B=st.integers(1, 3),
       T=st.integers(1, 5), seed=st.integers(0, 100), data=st.data())
@example(lora=False, objective="causal", num_labels=3, num_key_value_heads=1, num_hidden_layers=2, B=3, T=5, seed=2,
         data=None)
@example(lora=True, objective="causal", num_labels=3, num_key_value_heads=1, num_hidden_layers=2, B=3, T=5, seed=2,
         data=None)
def test_classifier_whole_model_gradients(lora, objective, num_labels, num_key_value_heads, num_hidden_layers, B, T,
                                          seed, data):
    # the head on each row's last real token, over the batch, the padding (left or right, so the
    # pooled position moves), the labels, GQA, the depth, the causal and the bidirectional stack
    classifier = perturbed_classifier(lora, objective, num_labels, num_key_value_heads, num_hidden_layers)
    rng = np.random.default_rng(seed)
    tokens, labels = rng.integers(0, 11, (B, T)), rng.integers(0, num_labels, B)
    mask = CLASSIFIER_MASK if data is None else data.draw(padding_masks(B, T), label="attention_mask")
    if mask is None:
        mask = np.ones((B, T), dtype=np.int64)
    with use_backend("numpy"):
        _, grads = classifier.loss_and_grads(tokens, mask, labels)
        assert list(grads) == list(classifier.params)
        assert ("lm_head.weight" in grads) is False and "score.weight" in grads
        report = gradcheck(lambda *_: classifier.loss_and_grads(tokens, mask, labels)[0], classifier.params,
                           grads, max_entries=20 if data is None else 8)
    report.raise_if_failed()
    if data is None:   # the fixed cases measure this close; a drawn one may hold smaller gradients
        assert report.max_rel_err < 1e-7


def test_padding_does_not_change_a_texts_logits():
    classifier = perturbed_classifier(lora=False)
    text = [1, 4, 5, 6]
    with use_backend("numpy"):
        alone = classifier.logits(np.array([text]), np.ones((1, 4), dtype=bool))
        tokens, mask = pad_batch([[1, 7, 8, 9, 3, 2, 5], text], pad_id=2)
        np.testing.assert_allclose(classifier.logits(tokens, mask)[1], alone[0], rtol=1e-12)


def test_the_head_skips_the_pad_id_as_transformers_does():
    """LLaMA pads with </s>, and a text "... </s>" ends with that id: transformers' head reads the
    token before it (the rightmost token that is not pad_token_id), and so does ours given pad_id."""
    classifier = perturbed_classifier(lora=False)
    with use_backend("numpy"):
        text = classifier.logits(np.array([[1, 4, 5]]), np.ones((1, 3), dtype=bool))
        tokens, mask = pad_batch([[1, 4, 5, 2], [1, 2, 6, 7, 8]], pad_id=2)
        reads_the_eos = classifier.logits(tokens, mask)
        classifier.pad_id = 2
        assert classifier.pooled_index(tokens, mask).tolist() == [2, 4]
        skips_it = classifier.logits(tokens, mask)
        np.testing.assert_allclose(skips_it[0], text[0], rtol=1e-12)   # causal: the same hidden state
        assert not np.allclose(reads_the_eos[0], text[0])
        np.testing.assert_array_equal(skips_it[1], reads_the_eos[1])   # a pad id mid-text changes nothing
        loss, grads = classifier.loss_and_grads(tokens, mask, np.array([0, 2]))
        # the pad id is the model's pad_token_id now, whose embedding row the pad-row rule freezes
        # (transformers' padding_idx; test_gradcheck checks that row's disagreement): check the rest
        embedding = "model.embed_tokens.weight"
        assert not grads[embedding][2].any() and grads[embedding][6].any()
        checked = {name: p for name, p in classifier.params.items() if name != embedding}
        report = gradcheck(lambda *_: classifier.loss_and_grads(tokens, mask, np.array([0, 2]))[0],
                           checked, {name: grads[name] for name in checked}, max_entries=10)
    report.raise_if_failed()


def test_classify_says_how_many_texts_it_cut_at_max_len(base_dir, tmp_path):
    rows = [{"text": "good day " * 20 if i % 2 else "bad day", "label": i % 2} for i in range(10)]
    data = datasets.write_jsonl(tmp_path / "long.jsonl", rows)
    said = []
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), data=str(data), steps=1, max_len=8, progress=False),
                 echo=said.append)
    assert [line for line in said if line.startswith("5 of 10 texts are longer than 8 tokens (--max-len): cut there")]


@pytest.mark.parametrize("long, verb", [(1, "is"), (2, "are")])
def test_sft_says_how_many_examples_it_cut_at_max_len_as_classify_does(base_dir, tmp_path, long, verb):
    # Before: SFT had its own copy of the note, which said "1 of 10 examples are longer"
    rows = [{"prompt": "Say hi.", "response": "Hi." if i >= long else "Once upon a time " * 20} for i in range(10)]
    data = datasets.write_jsonl(tmp_path / "long.jsonl", rows)
    said = []
    with use_backend("numpy"):
        sft(SFTConfig(base=str(base_dir), data=str(data), steps=1, samples=0, progress=False, max_len=32),
            echo=said.append)
    cut = [line for line in said if "longer than" in line]
    assert len(cut) == 1 and cut[0].startswith(f"{long} of 10 examples {verb} longer than 32 tokens (--max-len): "
                                               f"cut there"), said
    # the loss's unit said too (before: "validation loss on the responses: 6.04 before, ...")
    assert [line for line in said if line.startswith("validation loss (nats per response token): ")], said


def test_a_label_whose_only_text_is_held_out_is_still_one_of_the_files_labels(base_dir, tmp_path):
    rows = [{"text": f"good day {i}" if i % 2 else f"bad day {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(10)]
    held_out = datasets.split_train_val(10, 0.2, seed=0)[1][0]
    rows[held_out]["label"] = "neutral"
    data = datasets.write_jsonl(tmp_path / "rare.jsonl", rows)
    said = []
    with use_backend("numpy"):
        result = classify(ClassifyConfig(base=str(base_dir), data=str(data), steps=1, max_len=8, progress=False,
                                         split="shuffled"), echo=said.append)
    assert result.label_names == ("neg", "neutral", "pos") and sum(result.metrics["confusion"][1]) == 1
    assert "no training text has the label neutral: the head cannot learn to predict it" in said


def test_labels_that_differ_only_in_case_or_spaces_are_named_as_separate_classes(base_dir, tmp_path):
    # a typo in hand-made data ("Pos", "happy  cat") silently made a class of its own: the start-up
    # line listed it among the others, and nothing said the head now tells "Pos" from "pos"
    labels = ["pos", "Pos", "neg", "neg", "happy cat", "happy  cat", "pos", "neg", "pos", "neg"]
    rows = [{"text": f"day {i}", "label": label} for i, label in enumerate(labels)]
    data = datasets.write_jsonl(tmp_path / "typos.jsonl", rows)
    said = []
    with use_backend("numpy"):
        result = classify(ClassifyConfig(base=str(base_dir), data=str(data), steps=1, max_len=8, progress=False),
                          echo=said.append)
    assert len(result.label_names) == 5          # still separate classes: the data says so
    alike = [line for line in said if "differ only in case or spaces" in line]
    # in the order the labels are listed (the sorted names: "Pos" < "happy  cat" < "pos")
    assert alike == ["labels that differ only in case or spaces are separate classes: 'Pos' and 'pos'; "
                     "'happy  cat' and 'happy cat' (write each class one way in the data if they are one)"], said
    rows = [{"text": f"day {i}", "label": label} for i, label in enumerate(["pos", "neg"] * 5)]
    said = []
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), data=str(datasets.write_jsonl(tmp_path / "clean.jsonl", rows)),
                                steps=1, max_len=8, progress=False), echo=said.append)
    assert not [line for line in said if "differ only" in line], said


def test_the_default_split_holds_out_each_label_in_proportion(base_dir, tmp_path):
    # 16 "pos", 3 "neg", 1 "neutral", val_fraction 0.2: 4 held out -- 3 pos and 1 neg by their shares
    # (3.2 and 0.6); the one neutral text is trained on.  A shuffled split of the same rows held out
    # no neg at all with this seed, or the neutral text with another.
    labels = ["pos"] * 16 + ["neg"] * 3 + ["neutral"]
    rows = [{"text": f"{label} day {i}", "label": label} for i, label in enumerate(labels)]
    data = datasets.write_jsonl(tmp_path / "skewed.jsonl", rows)
    counts = {}
    for seed in range(4):
        said = []
        with use_backend("numpy"):
            result = classify(ClassifyConfig(base=str(base_dir), data=str(data), steps=1, max_len=8, seed=seed,
                                             progress=False), echo=said.append)
        assert result.label_names == ("neg", "neutral", "pos")
        counts[seed] = [sum(row) for row in result.metrics["confusion"]]   # validation texts per true label
        assert not [line for line in said if "no training text has the label" in line]
    assert all(c == [1, 0, 3] for c in counts.values()), counts
    shuffled = [[labels[i] for i in datasets.split_train_val(20, 0.2, seed=seed)[1]] for seed in range(4)]
    assert any("neg" not in held or "neutral" in held for held in shuffled), shuffled


@pytest.mark.parametrize("lora", [False, True])
def test_a_saved_classifier_reads_a_text_as_far_as_fine_tuning_did(base_dir, tmp_path, lora):
    from npllama.classify import load_classifier

    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, lora=lora, lora_r=2, progress=False,
                                out=str(tmp_path / "c")), echo=quiet)
        classifier = load_classifier(base_dir if lora else tmp_path / "c", dtype=np.float64,
                                     adapter=tmp_path / "c" if lora else None)
        text = "The movie was long and the end was good but the start was slow and dull."
        ids = classifier.tokenizer.encode(text, bos=True)
        assert len(ids) > 8 and classifier.max_len == 8
        tokens, mask = pad_batch([ids[:8]], pad_id_of(classifier.tokenizer))
        np.testing.assert_allclose(classifier.logits([text])[0], classifier.head.logits(tokens, mask)[0], rtol=1e-12)


def _copy_with_config(base_dir, folder, **fields):
    """A copy of the base folder at `folder` whose config.json has `fields` set."""
    shutil.copytree(base_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return folder


@pytest.mark.parametrize("lora", [False, True])
def test_a_classifier_from_a_base_whose_pad_token_id_is_not_the_tokenizers_pools_where_it_trained(
        base_dir, tmp_path, lora):
    """A LLaMA-1 conversion sets pad_token_id 0 (<unk>) while its tokenizer, with no pad piece, pads
    with </s>: fine-tuning pools by the id it padded with (pad_id_of), and the folder it saves says
    so (config.json's pad_token_id, the adapter's base's tokenizer), so the reloaded classifier reads
    the same position.  The batch holds a text ending in </s> and one with <unk>: pooling by either
    other id reads another token (transformers' rule, the rightmost token not the pad id)."""
    from npllama.classify import load_classifier

    base = _copy_with_config(base_dir, tmp_path / "base", pad_token_id=0)
    model = Llama.from_pretrained(base, dtype=np.float64)
    tokenizer = Tokenizer(base / "tokenizer.model")
    pad_id = pad_id_of(tokenizer)
    assert model.config.pad_token_id == tokenizer.unk_id == 0 and tokenizer.pad_id is None and pad_id == 2
    rng = np.random.default_rng(3)
    if lora:
        for p in attach_lora(model, r=2, target_modules=["q_proj", "v_proj"]).params.values():
            p += 0.3 * rng.standard_normal(p.shape)
    trained = SequenceClassifier(model, ["neg", "pos"], pad_id=pad_id)   # as classify makes it
    trained.score_weight += rng.standard_normal(trained.score_weight.shape)
    trained.save(tmp_path / "c", tokenizer, base_dir=base)
    loaded = load_classifier(base if lora else tmp_path / "c", dtype=np.float64,
                             adapter=tmp_path / "c" if lora else None).head
    tokens, mask = pad_batch([[1, 7, 8, 9, 2], [1, 0, 7, 8], [1, 9, 0, 7, 8, 9, 10]], pad_id)
    assert trained.pooled_index(tokens, mask).tolist() == [3, 3, 6]
    with use_backend("numpy"):
        np.testing.assert_array_equal(loaded.pooled_index(tokens, mask), trained.pooled_index(tokens, mask))
        np.testing.assert_allclose(loaded.logits(tokens, mask), trained.logits(tokens, mask), rtol=1e-12)


def test_the_pad_id_a_classifier_trained_with_is_its_pad_row_through_save_reload_and_more_training(
        base_dir, tmp_path):
    """The same LLaMA-1 base (pad_token_id 0, a tokenizer padding with </s>): the embedding row the
    pad-row rule keeps from learning (model.decoder_backward) is the id fine-tuning padded with and
    saved, </s>, in the first run as in one fine-tuning the reloaded classifier further.  Before,
    the first run froze <unk>'s row (the base's pad_token_id) and the second </s>'s."""
    from npllama.classify import load_classifier

    base = _copy_with_config(base_dir, tmp_path / "base", pad_token_id=0)
    tokenizer = Tokenizer(base / "tokenizer.model")
    pad_id = pad_id_of(tokenizer)
    trained = SequenceClassifier(Llama.from_pretrained(base, dtype=np.float64), ["neg", "pos"], pad_id=pad_id)
    assert trained.model.config.pad_token_id == pad_id == 2
    tokens, mask = pad_batch([[1, 0, 7, 2, 8], [1, 9, 2, 0]], pad_id)   # <unk> and </s> as real tokens

    def rows_that_learn(classifier):
        with use_backend("numpy"):
            _, grads = classifier.loss_and_grads(tokens, mask, np.array([0, 1]))
        return [i for i in (0, 2) if grads["model.embed_tokens.weight"][i].any()]

    assert rows_that_learn(trained) == [0]
    trained.save(tmp_path / "c", tokenizer)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["pad_token_id"] == pad_id
    again = load_classifier(tmp_path / "c", dtype=np.float64).head
    assert again.pad_id == again.model.config.pad_token_id == pad_id
    assert rows_that_learn(again) == [0]
    # a pad id set later (as the transformers comparison does) is the model's too
    trained.pad_id = 0
    assert trained.model.config.pad_token_id == 0 and rows_that_learn(trained) == [2]


def test_a_classifiers_pad_id_is_its_models_pad_token_id_and_no_other_models(base_dir):
    """The classifier trains its model in place (it is not copied: LoRA is attached to it after),
    so that model's pad_token_id becomes the head's pad id.  The config is replaced, not edited:
    another model made from the same LlamaConfig, and a caller holding that config, keep theirs."""
    base = Llama.from_pretrained(base_dir, dtype=np.float64)
    config = dataclasses.replace(base.config, pad_token_id=0)
    base.config = config
    other = Llama(config, dtype=np.float64, params=base.params)   # the same config object
    classifier = SequenceClassifier(base, ["neg", "pos"], pad_id=2)
    assert classifier.model is base and base.config.pad_token_id == 2
    assert config.pad_token_id == 0 and other.config.pad_token_id == 0
    with pytest.raises(ValueError, match=r"pad_id must be an id below the model's vocab_size"):
        SequenceClassifier(other, ["neg", "pos"], pad_id=other.config.vocab_size)
    assert other.config.pad_token_id == 0   # a refused pad id changes nothing
    with pytest.raises(ValueError, match="pad_id"):
        classifier.pad_id = -1
    assert classifier.pad_id == base.config.pad_token_id == 2


def test_fine_tuning_a_base_asking_for_attention_dropout_says_npllama_has_none(base_dir, tmp_path):
    base = _copy_with_config(base_dir, tmp_path / "base", attention_dropout=0.1)
    for job, config in [(classify, ClassifyConfig(base=str(base), steps=1, max_len=32, progress=False,
                                                  out=str(tmp_path / "classifier"))),
                        (sft, SFTConfig(base=str(base), steps=1, batch_size=2, samples=0, max_len=48,
                                        progress=False, out=str(tmp_path / "sft")))]:
        said = []
        job(config, echo=said.append)
        assert [line for line in said if "attention_dropout 0.1" in line and "trains without it" in line], job
        assert json.loads((Path(config.out) / "config.json").read_text())["attention_dropout"] == 0.1


def test_metrics_and_baseline():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # f1: class 0: p=1/2 r=1/2 -> 1/2; class 1: p=2/3 r=1 -> 4/5; class 2: 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert majority_baseline([1, 1, 0], [0, 1, 1, 1]) == (1, 0.75)
    # a label that never occurs (nor is predicted) scores 0, not NaN, and is left out of macro-F1
    # (scikit-learn's rule): it says nothing of the classifier
    unseen = classification_metrics([0, 1], [0, 1], 3)
    assert unseen["recall"][2] == unseen["precision"][2] == unseen["f1"][2] == 0.0
    assert unseen["macro_f1"] == 1.0
    one_class = classification_metrics([1, 1, 1], [1, 1, 1], 2)
    assert one_class["accuracy"] == one_class["macro_f1"] == 1.0
    # a label only predicted (never true) counts: its F1 is 0
    assert classification_metrics([0, 0], [0, 1], 2)["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_batch_rows_deal_each_epoch_out_once_in_a_fresh_order():
    n, batch_size = 10, 3                      # 3 whole batches an epoch; the 10th example waits
    epoch0 = [batch_rows(n, batch_size, step, seed=1) for step in range(3)]
    epoch1 = [batch_rows(n, batch_size, step, seed=1) for step in range(3, 6)]
    for epoch in (epoch0, epoch1):
        rows = np.concatenate(epoch)
        assert [len(b) for b in epoch] == [3, 3, 3] and len(set(rows.tolist())) == 9 and rows.max() < n
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))
    assert np.array_equal(batch_rows(n, batch_size, 4, seed=1), epoch1[1])      # the same step, the same rows


def terminal_columns(text):
    """Columns in a terminal (a Chinese character takes two): counted apart from npllama's own."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def column_ends(line):
    """The terminal column where each run of non-spaces in `line` ends."""
    ends, column = [], 0
    for i, c in enumerate(line):
        column += terminal_columns(c)
        if c != " " and (i + 1 == len(line) or line[i + 1] == " "):
            ends.append(column)
    return ends


def test_the_confusion_matrix_lines_up_chinese_labels():
    # Before: padded by len(), so each label of two Chinese characters (four columns) pushed its
    # row's numbers two columns right of the header's labels.
    from npllama.finetune import format_metrics

    names = ["正面", "负面", "neutral", "非常非常非常负面"]
    metrics = classification_metrics([0, 1, 2, 3, 0], [0, 1, 2, 3, 1], 4)
    table = format_metrics(metrics, names, 0.4).splitlines()[2:]
    header, rows = column_ends(table[0]), [column_ends(line) for line in table[1:]]
    assert all(ends[1:] == header for ends in rows), table
    assert len({ends[0] for ends in rows}) == 1, table      # the row labels end in one column


# ----- instruction tuning --------------------------------------------------------------------------
def test_sft_targets_count_the_response_only(base_dir):
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    ids, counted = encode_chat(tokenizer, "Write a story about Lily.", "Lily had a red ball.")
    prompt_len = len(tokenizer.encode("[INST] Write a story about Lily. [/INST]", bos=True))
    assert counted == [False] * prompt_len + [True] * (len(ids) - prompt_len)
    assert ids[-1] == tokenizer.eos_id and ids[0] == tokenizer.bos_id
    short = encode_chat(tokenizer, "Hi", "Hello there")
    tokens, targets, mask = sft_batch([(ids, counted), short], pad_id=tokenizer.eos_id)
    assert tokens.shape == targets.shape == mask.shape == (2, len(ids) - 1)
    # targets[t] is the token after position t, kept where that token is part of the response
    np.testing.assert_array_equal(targets[0, prompt_len - 1:], ids[prompt_len:])
    assert (targets[0, :prompt_len - 1] == -100).all()
    assert (targets[1, len(short[0]) - 1:] == -100).all() and not mask[1, len(short[0]) - 1:].any()
    assert (targets[1] != -100).sum() == sum(short[1])


def test_sft_lowers_the_response_loss(base_dir):
    with use_backend("numpy"), threadpool_limits(1, user_api="blas"):
        result = sft(SFTConfig(base=str(base_dir), steps=40, lr=1e-2, batch_size=8, samples=1, progress=False,
                               max_len=96), echo=quiet)
    assert result.val_loss_after < result.val_loss_before - 1.0
    assert len(result.samples) == 1 and result.out is None


def test_sft_with_lora_saves_the_adapter_or_the_merged_model(base_dir, tmp_path):
    for merge in (False, True):
        with use_backend("numpy"):
            sft(SFTConfig(base=str(base_dir), steps=2, samples=0, progress=False, max_len=64, lora=True,
                          lora_r=2, merge=merge, out=str(tmp_path / str(merge))), echo=quiet)
    assert json.loads((tmp_path / "False" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    merged = Llama.from_pretrained(tmp_path / "True")  # merged: an ordinary model folder
    assert merged.lora is None and (tmp_path / "True" / "tokenizer.model").is_file()


def _use_it(said: list[str]) -> list[str]:
    """The command the last line of a fine-tune says to run on its result, as argv (without "npllama")."""
    import shlex

    last = said[-1]
    assert "; use it: npllama " in last, said
    return shlex.split(last.split("; use it: npllama ", 1)[1].split(" (", 1)[0])


@pytest.mark.parametrize("lora", [False, True])
def test_a_saved_classifier_says_the_command_that_classifies_with_it_and_that_command_runs(
        cli, base_dir, tmp_path, capsys, lora):
    # Before: "saved the classifier to DIR" -- and a LoRA one needs its base as --model and the
    # folder as --adapter, which nothing said.  Without --out, nothing said the run was not kept.
    said = []
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, lora=lora, lora_r=2, progress=False,
                                out=str(tmp_path / "my run")), echo=said.append)
    argv = _use_it(said)
    expected = ["--model", str(base_dir), "--adapter", str(tmp_path / "my run")] if lora else \
        ["--model", str(tmp_path / "my run")]
    assert argv == ["classify", *expected, "--text", "..."]
    assert cli([*argv[:-1], "a good day", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.strip().endswith("a good day")
    said.clear()
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, progress=False), echo=said.append)
    # a Python caller gives the settings' keyword, not the command line's flag
    assert said[-1] == "nothing saved: give out=DIR (ClassifyConfig's out) to keep the result"
    assert cli(["finetune", "classify", "--base", str(base_dir), "--steps", "1", "--max-len", "8", "--no-progress",
                "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "nothing saved: give --out DIR to keep the result"


def test_a_classification_adapter_alone_classifies_on_the_base_it_names(cli, base_dir, tmp_path, monkeypatch,
                                                                          capsys):
    # `npllama classify --adapter DIR` (and load_classifier(adapter=DIR)) without the base: the one the
    # adapter names, not the latest run, and the command says which it runs
    from npllama.classify import load_classifier

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "no-runs"))   # no latest run to fall back on
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, lora=True, lora_r=2, progress=False,
                                out=str(tmp_path / "adapter")), echo=quiet)
    capsys.readouterr()
    assert cli(["classify", "--adapter", str(tmp_path / "adapter"), "--text", "a good day", "--backend",
                "numpy"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("a good day")
    assert f"base model: {Path(base_dir).resolve()} (named by the adapter" in captured.err
    assert load_classifier(adapter=tmp_path / "adapter").label_names == load_classifier(
        base_dir, adapter=tmp_path / "adapter").label_names
    assert capsys.readouterr().err == ""   # the Python API prints no command's lines
    # a base that is no folder here: the Python caller is told the keyword, not the command's flag
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace(str(Path(base_dir).resolve()), "/nowhere/base"))
    with pytest.raises(ValueError, match=r"give that base model with load_classifier\(path=BASE_FOLDER, adapter"):
        load_classifier(adapter=tmp_path / "adapter")


def test_the_command_lines_out_flag_does_not_outlive_the_command(cli, base_dir, monkeypatch, capsys):
    # `npllama finetune` makes the last line name --out DIR (npllama.finetune.OUT_AS_GIVEN) for its
    # job only: a Python fine-tune later in the same process (a notebook) names out=DIR, also after
    # a command that failed before its job started
    from npllama.finetune import OUT_AS_GIVEN

    argv = ["finetune", "classify", "--base", str(base_dir), "--steps", "1", "--max-len", "8", "--no-progress"]
    assert cli([*argv, "--backend", "numpy"]) == 0 and OUT_AS_GIVEN.get() is None
    monkeypatch.setenv("NPLLAMA_BACKEND", "no-such-backend")
    assert cli(argv) == 2 and "NPLLAMA_BACKEND" in capsys.readouterr().err
    assert OUT_AS_GIVEN.get() is None


def test_an_adapter_given_with_a_classifier_instead_of_its_base_says_which_to_drop(base_dir, tmp_path):
    # Before: "use it with `npllama classify --model DIR`" -- what the user had typed, --adapter aside
    from npllama.classify import load_classifier
    from npllama.io.errors import CheckpointError

    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, progress=False, out=str(tmp_path / "c")),
                 echo=quiet)
    (tmp_path / "adapter").mkdir()
    with pytest.raises(CheckpointError, match=r"this is a classifier already \(its own score head\), but the "
                                              r"adapter '.*adapter' attaches to the base language model"):
        load_classifier(tmp_path / "c", adapter=tmp_path / "adapter")


@pytest.mark.parametrize("lora", [False, True])
def test_a_saved_sft_model_or_adapter_says_the_command_that_chats_with_it(cli, base_dir, tmp_path, capsys, lora):
    data = datasets.write_jsonl(tmp_path / "few.jsonl", datasets.make_instructions(10))   # fast: 1000 built in
    said = []
    with use_backend("numpy"):
        sft(SFTConfig(base=str(base_dir), data=str(data), steps=1, samples=0, progress=False, max_len=64, lora=lora,
                      lora_r=2, out=str(tmp_path / "sft")), echo=said.append)
    argv = _use_it(said)
    expected = ["--model", str(base_dir), "--adapter", str(tmp_path / "sft")] if lora else ["--model", str(tmp_path / "sft")]
    assert argv == ["chat", *expected]
    # the same flags generate with the saved chat template (chat itself reads stdin)
    assert cli(["generate", "--chat", *expected, "--prompt", "hi", "--max-new-tokens", "2", "--backend", "numpy"]) == 0
    capsys.readouterr()


def test_the_use_it_line_keeps_a_base_path_that_holds_the_word_out_and_a_space(base_dir, tmp_path):
    # Before: the command was a template with OUT standing for the folder, replaced everywhere -- also
    # inside the base's path, so a LoRA run on ".../OUTPUT base" said --model '.../<the run folder>PUT base'
    base = shutil.copytree(base_dir, tmp_path / "OUTPUT base")
    said = []
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base), steps=1, max_len=8, lora=True, lora_r=2, progress=False,
                                out=str(tmp_path / "run")), echo=said.append)
    assert _use_it(said) == ["classify", "--model", str(base), "--adapter", str(tmp_path / "run"), "--text", "..."]


# ----- multiple choice -------------------------------------------------------------------------------
class CountingModel:
    """Logits that favour `previous token + 1`: a model that "knows" counting."""

    class config:
        max_position_embeddings = 32
        vocab_size = 20

    def forward(self, tokens, attention_mask=None):
        logits = np.zeros(tokens.shape + (20,))
        logits[np.arange(tokens.shape[0])[:, None], np.arange(tokens.shape[1]), (tokens + 1) % 20] = 3.0
        return logits


class DigitTokenizer:
    bos_id, eos_id, pad_id = 0, 19, None

    def encode(self, text, bos=True):
        return [0] * bos + [int(w) for w in text.split()]


def test_choice_scoring_on_a_constructed_case():
    scores, lengths = choice_logprobs(CountingModel(), DigitTokenizer(), "3 4", ["5 6 7", "5 9", "8"])
    log_p_hit = 3.0 - np.log(np.exp(3.0) + 19)   # probability of the favoured token
    log_p_miss = -np.log(np.exp(3.0) + 19)
    np.testing.assert_allclose(scores, [3 * log_p_hit, log_p_hit + log_p_miss, log_p_miss], rtol=1e-12)
    np.testing.assert_array_equal(lengths, [3, 2, 1])
    items = [{"question": "3 4", "choices": ["9", "5 6"], "answer": 1},
             {"question": "1", "choices": ["2 3", "4"], "answer": 0}]
    result = evaluate_choice(CountingModel(), DigitTokenizer(), items, progress=False)
    assert result == {"accuracy": 1.0, "accuracy_per_token": 1.0, "chance": 0.5, "n": 2, "cut": 0}


def test_evaluate_choice_checks_its_items_as_the_file_reader_does():
    # Before: items given in Python went unchecked: an answer out of range or given as "0" scored 0
    # silently, a one-choice item 1.0, an empty choice was scored on the question's last token and a
    # str of choices was read letter by letter
    good = {"question": "3", "choices": ["4", "9"], "answer": 0}
    bad_items = [({**good, "answer": 5}, "answer 5, but only 2 choices"),
                 ({**good, "answer": "0"}, '"answer" must be the index of the right choice'),
                 ({**good, "answer": True}, '"answer" must be the index of the right choice'),
                 ({k: v for k, v in good.items() if k != "answer"}, '"answer" must be .* got nothing'),
                 ({**good, "choices": ["4"]}, "an item needs at least two non-empty string choices"),
                 ({**good, "choices": ["4", ""]}, "an item needs at least two non-empty string choices"),
                 ({**good, "choices": "49"}, '"choices" must be a list, got str'),
                 ({**good, "question": None}, '"question" must be a str, got null'),
                 ({**good, "context": 3}, '"context" must be a string'),
                 ("3 4", "an item must be a dict")]
    for item, message in bad_items:
        model = RecordingModel()
        with pytest.raises(ValueError, match=rf"items\[1\]: {message}"):
            evaluate_choice(model, DigitTokenizer(), [good, item], progress=False)
        assert model.seen == []                      # refused before any item is scored
    assert evaluate_choice(CountingModel(), DigitTokenizer(), [{**good, "answer": np.int64(0), "choices": ("4", "9")}],
                           progress=False)["accuracy"] == 1.0


def test_choice_logprobs_refuses_a_choice_with_no_text():
    # Before: an empty choice was scored on the question's last token, as if it were the choice's
    for choices, error in ((["4", ""], ValueError), (["4", "  "], ValueError), ([], ValueError),
                           ("49", TypeError), (["4", 9], TypeError)):
        with pytest.raises(error, match=r"choices must be a list of non-empty strs"):
            choice_logprobs(CountingModel(), DigitTokenizer(), "3", choices)
    with pytest.raises(TypeError, match=r"question must be a str, got int"):
        choice_logprobs(CountingModel(), DigitTokenizer(), 3, ["4"])


def test_a_choice_written_twice_is_refused():
    # Before: the two tie, and the first listed was taken: right when the answer was the first, wrong
    # when it was the second
    for choices in (["4", "4"], ["4", " 4 "]):
        with pytest.raises(ValueError, match=r"items\[0\]: choices 0 and 1 are the same text \('4'\)"):
            evaluate_choice(CountingModel(), DigitTokenizer(), [{"question": "3", "choices": choices, "answer": 1}],
                            progress=False)


def test_a_tie_for_the_highest_score_earns_its_share_of_an_item():
    # Before: np.argmax took the first of tied choices, so a model that cannot tell "8" from "9" after
    # "3" was right when the answer was listed first and wrong when listed second
    items = [{"question": "3", "choices": ["9", "8"], "answer": answer} for answer in (0, 1)]
    result = evaluate_choice(CountingModel(), DigitTokenizer(), items, progress=False)
    assert result["accuracy"] == result["accuracy_per_token"] == 0.5 == result["chance"]
    three = [{"question": "3", "choices": ["9", "8", "7", "4"], "answer": 0}]      # "4" wins outright: no share
    assert evaluate_choice(CountingModel(), DigitTokenizer(), three, progress=False)["accuracy"] == 0.0
    # 9, 8, 7 tie above "5 5" (two misses); per token all four tie
    tied = [{"question": "3", "choices": ["9", "8", "7", "5 5"], "answer": 2}]
    result = evaluate_choice(CountingModel(), DigitTokenizer(), tied, progress=False)
    assert result["accuracy"] == pytest.approx(1 / 3) and result["accuracy_per_token"] == pytest.approx(1 / 4)


def test_a_tie_per_token_is_a_tie_whatever_the_rounding_of_the_division():
    # Before: ties were exact float equality, so "9" (one miss) and "5 5 5 5 5 5 5" (seven misses)
    # after "3", equally likely per token, were told apart by the rounding of 7 * miss / 7: the
    # answer "5 ..." earned 1 with seven tokens, 0 with eleven, 1/2 with three
    for count in (3, 5, 7, 10, 11):
        many = " ".join(["5"] * count)
        for answer in (0, 1):
            item = {"question": "3", "choices": ["9", many], "answer": answer}
            result = evaluate_choice(CountingModel(), DigitTokenizer(), [item], progress=False)
            assert result["accuracy_per_token"] == 0.5, (count, answer)
            assert result["accuracy"] == 1 - answer       # by total "9" (one miss) wins outright


def test_a_model_that_predicts_no_next_token_is_refused_once_not_as_an_items_fault():
    # Before: the model was checked inside the per-item loop, whose errors name items[i], so the
    # refusal of a masked-LM model read "items[0]: multiple-choice scoring predicts next tokens, ..."
    class MaskedLM(RecordingModel):
        objective = "mlm"

    model = MaskedLM()
    items = [{"question": "3", "choices": ["4", "9"], "answer": 0}]
    with pytest.raises(ValueError, match=r"^multiple-choice scoring predicts next tokens, but this model is a "
                                         r"masked-LM model"):
        evaluate_choice(model, DigitTokenizer(), items, progress=False)
    assert model.seen == []


def test_a_choice_too_long_for_the_context_names_its_item():
    items = [{"question": "3", "choices": ["4", "9"], "answer": 0},
             {"question": "3", "choices": ["4", " ".join(["5"] * 40)], "answer": 0}]
    with pytest.raises(ValueError, match=r"items\[1\]: choice 1 is 40 tokens long, which leaves no room for "
                                         r"the question in the model's context \(32 tokens\)"):
        evaluate_choice(CountingModel(), DigitTokenizer(), items, progress=False)


class RecordingModel(CountingModel):
    """CountingModel keeping every batch of tokens it is given."""

    def __init__(self):
        self.seen = []

    def forward(self, tokens, attention_mask=None):
        self.seen.append(tokens)
        return super().forward(tokens, attention_mask)


def test_a_reading_comprehension_items_passage_is_read_before_its_question():
    model = RecordingModel()
    items = [{"context": "1 2", "question": "3", "choices": ["4", "9"], "answer": 0}]
    assert evaluate_choice(model, DigitTokenizer(), items, progress=False)["accuracy"] == 1.0
    np.testing.assert_array_equal(model.seen[0][:, :5], [[0, 1, 2, 3, 4], [0, 1, 2, 3, 9]])   # <s> passage question choice


def test_a_question_longer_than_the_context_keeps_its_start_token_and_end_and_fills_the_context():
    model = RecordingModel()
    question = " ".join(str(i % 18 + 1) for i in range(40))     # 40 tokens, with <s> 41: over the 32
    choice_logprobs(model, DigitTokenizer(), question, ["3 4", "7"])
    (tokens,) = model.seen
    limit = CountingModel.config.max_position_embeddings
    assert tokens.shape[1] == limit                              # as much question as fits, no more
    asked = DigitTokenizer().encode(question)
    np.testing.assert_array_equal(tokens[0, :limit - 2], [0] + asked[len(asked) - (limit - 3):])   # <s>, the end
    # evaluate_choice counts the items so cut: exactly those that did not fit beside their longest choice
    fits = " ".join(["1"] * 29)                                   # <s> + 29 + the 2-token choice = 32
    items = [{"question": question, "choices": ["3 4", "7"], "answer": 0},
             {"question": fits, "choices": ["3 4", "7"], "answer": 0},
             {"question": fits + " 1", "choices": ["3 4", "7"], "answer": 0}]
    assert evaluate_choice(CountingModel(), DigitTokenizer(), items, progress=False)["cut"] == 2


def test_the_chat_template_name_is_llama_2s_template(base_dir):
    from npllama.chat import ChatTemplate

    model = Llama.from_pretrained(base_dir, dtype=np.float64)
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    question, choices = "Which animal barks?", ["a dog", "a cat"]
    by_name = choice_logprobs(model, tokenizer, question, choices, template="chat")[0]
    np.testing.assert_allclose(by_name, choice_logprobs(model, tokenizer, question, choices,
                                                        template=ChatTemplate("llama2"))[0], rtol=1e-12)
    assert not np.allclose(by_name, choice_logprobs(model, tokenizer, question, choices)[0])


def test_a_chat_choice_is_scored_as_the_template_writes_the_answer(base_dir):
    # Before: a chat choice went after the prompt with a space, LLaMA-2's way, whatever the template:
    # after LLaMA-3's "<|end_header_id|>\n\n" that is a space `finetune sft` never trained on
    from npllama.chat import ChatTemplate

    model = Llama.from_pretrained(base_dir, dtype=np.float64)
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    question, choices = "Who barks?", ["A dog.", " A cat. "]
    for name, space in (("llama2", " "), ("llama3", "")):
        template = ChatTemplate(name)
        prompt = template.prompt(question)
        scores, lengths = choice_logprobs(model, tokenizer, question, choices, template=template)
        for choice, score, length in zip(choices, scores, lengths):
            context = tokenizer.encode(prompt, bos=False)
            whole = tokenizer.encode(prompt + space + choice.strip(), bos=False)   # the template trims it
            assert whole[:len(context)] == context and len(whole) < model.config.max_position_embeddings
            assert length == len(whole) - len(context)
            # the ids sft trains the answer on, its end of turn aside
            ids, counted = template.encode_turn(tokenizer, question, choice)
            assert [i for i, c in zip(ids, counted) if c][:length] == whole[len(context):]
            log_probs = model.forward(np.array([whole]))[0]
            log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
            assert score == pytest.approx(sum(log_probs[t - 1, whole[t]] for t in range(len(context), len(whole))),
                                          rel=1e-10)


def test_a_chat_template_that_writes_more_than_the_answer_after_its_prompt_is_refused():
    # a choice is scored on the text of its own after the prompt; a template that writes something
    # else first (here "7") has none, so scoring would credit the choice with that text's tokens
    from npllama.chat import ChatTemplate

    def template(before_answer):
        return ChatTemplate("{% for m in messages %}{% if m['role'] == 'user' %}{{ '1 ' + m['content'] }}"
                            "{% else %}{{ ' 2 " + before_answer + "' + m['content'] | trim }}{% endif %}{% endfor %}"
                            "{% if add_generation_prompt %}{{ ' 2' }}{% endif %}")

    scores, lengths = choice_logprobs(CountingModel(), DigitTokenizer(), "3", ["4", "9 9"], template=template(""))
    np.testing.assert_array_equal(lengths, [1, 2])   # "1 3 2" then the answer alone
    items = [{"question": "3", "choices": ["4", "9"], "answer": 0}]
    with pytest.raises(ValueError, match=r"items\[0\]: the chat template does not write the answer '4' right after "
                                         r"its prompt '1 3 2'.*--template plain"):
        evaluate_choice(CountingModel(), DigitTokenizer(), items, template=template("7 "), progress=False)


def test_a_choice_that_the_template_writes_before_the_answer_is_not_scored_in_its_place():
    # Before: the answer was searched for in the rendered text after the prompt, and a choice "2"
    # was found in the template's own " 2 " that comes before the answer (this template writes no
    # generation prompt): the template's "2" was scored as the choice, while "4" was refused.
    # The template now says where it writes the answer, and both are refused alike.
    from npllama.chat import ChatTemplate

    template = ChatTemplate("{% for m in messages %}{% if m['role'] == 'user' %}{{ '1 ' + m['content'] }}"
                            "{% else %}{{ ' 2 ' + m['content'] | trim }}{% endif %}{% endfor %}")
    for choices in (["2"], ["4"], ["2", "4"]):
        with pytest.raises(ValueError, match=r"does not write the answer '[24]' right after its prompt '1 3'"):
            choice_logprobs(CountingModel(), DigitTokenizer(), "3", choices, template=template)


def test_a_template_that_does_not_write_the_answer_as_given_is_refused():
    # an answer written twice (or changed) leaves no one place where its ids are
    from npllama.chat import ChatTemplate

    twice = ChatTemplate("{% for m in messages %}{{ '1 ' + m['content'] + ' ' + m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match=r"does not write an assistant's message as it is given.*--template plain"):
        choice_logprobs(CountingModel(), DigitTokenizer(), "3", ["4"], template=twice)


def test_a_choice_found_in_the_question_or_the_template_is_scored_where_the_template_writes_it():
    """The answer's ids are those the template places after its prompt (what `finetune sft` trains,
    its end of turn aside), whatever text the choice shares with the question or the header."""
    from npllama.chat import ChatTemplate

    # the generation prompt is " 2 5", and the answer follows it: "5" is in the question and the header
    template = ChatTemplate("{% for m in messages %}{% if m['role'] == 'user' %}{{ '1 ' + m['content'] }}"
                            "{% else %}{{ ' 2 5 ' + m['content'] | trim + ' 19' }}{% endif %}{% endfor %}"
                            "{% if add_generation_prompt %}{{ ' 2 5' }}{% endif %}")
    model, tokenizer, question = CountingModel(), DigitTokenizer(), "5 3"
    scores, lengths = choice_logprobs(model, tokenizer, question, ["5", "6 7", "5 3"], template=template)
    for choice, score, length in zip(["5", "6 7", "5 3"], scores, lengths):
        ids, counted = template.encode_turn(tokenizer, question, choice)
        answer = [i for i, c in zip(ids, counted) if c][:-1]      # its end of turn (</s>, 19) aside
        assert answer == [int(w) for w in choice.split()] and length == len(answer)
        start = counted.index(True)
        logits = model.forward(np.array([ids]))[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        assert score == pytest.approx(sum(log_probs[t - 1, ids[t]] for t in range(start, start + length)),
                                      rel=1e-12)


def test_batched_choice_scores_equal_one_at_a_time(base_dir):
    model = Llama.from_pretrained(base_dir, dtype=np.float64)
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    question, choices = "The home team", ["won the big game.", "lost.", "sold more than last year."]
    scores, _ = choice_logprobs(model, tokenizer, question, choices)
    context = tokenizer.encode(question, bos=True)
    for choice, score in zip(choices, scores):
        ids = context + tokenizer.encode(choice, bos=False)
        logits = model.forward(np.array([ids]))[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        expected = sum(log_probs[t - 1, ids[t]] for t in range(len(context), len(ids)))
        assert score == pytest.approx(expected, rel=1e-10)


def test_a_chinese_choice_is_scored_as_the_text_goes_on_with_no_space(tmp_path):
    # Before: each choice was encoded on its own, so with its dummy-prefix space: "他们回家了。" after
    # a Chinese question was scored as " 他们回家了。", a "▁" the Chinese corpus never has.
    names, places = ["小明", "小红", "李雷", "妈妈"], ["公园", "学校", "河边", "市场"]
    texts = [f"{n}去了{p}。{m}也去了{p}！" for n in names for m in names for p in places]
    tokenizer = Tokenizer.train(texts, tmp_path / "zh", vocab_size=300)
    model = Llama(LlamaConfig(vocab_size=300, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64),
                  seed=0, dtype=np.float64)
    question, choices = "小明去了公园。", ["小红也去了公园！", "李雷去了学校。"]
    scores, lengths = choice_logprobs(model, tokenizer, question, choices)
    for choice, score, length in zip(choices, scores, lengths):
        whole = tokenizer.encode(question + choice, bos=True)     # the text as written
        context = tokenizer.encode(question, bos=True)
        assert whole[:len(context)] == context and len(whole) - len(context) == length
        assert tokenizer.decode(whole[len(context):]) == choice
        log_probs = model.forward(np.array([whole]))[0]
        log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
        assert score == pytest.approx(sum(log_probs[t - 1, whole[t]] for t in range(len(context), len(whole))),
                                      rel=1e-10)


# ----- the commands ----------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(npllama.cli.COMMANDS, "finetune", "npllama.commands.finetune")
    monkeypatch.setitem(npllama.cli.COMMANDS, "eval", "npllama.commands.eval")
    return npllama.cli.main


def test_cli_classify_and_eval(cli, base_dir, tmp_path, capsys):
    status = cli(["finetune", "classify", "--base", str(base_dir), "--dataset", "spam", "--steps", "5",
                  "--no-progress", "--backend", "numpy", "--lora", "--lora-mlp", "--lora-r", "2"])
    out = capsys.readouterr().out
    assert status == 0 and "majority-class baseline, always ham: accuracy" in out and "confusion matrix" in out
    assert cli(["eval", "choice", "--model", str(base_dir), "--limit", "5", "--no-progress",
                "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "chance 0.250" in captured.out
    # --limit 1 --seed 1 evaluates one item (its story was once cut too deep for distractors, and dropped)
    assert cli(["eval", "choice", "--model", str(base_dir), "--limit", "1", "--seed", "1", "--no-progress",
                "--backend", "numpy"]) == 0
    assert " on 1 built-in story-continuation item: accuracy " in capsys.readouterr().out
    context = Llama.from_pretrained(base_dir).config.max_position_embeddings
    long = datasets.write_jsonl(tmp_path / "long.jsonl", [
        {"context": "The dog ran. " * context, "question": "Who ran?", "choices": ["the dog", "the cat"], "answer": 0},
        {"question": "Who ran?", "choices": ["the dog", "the cat"], "answer": 0}])
    assert cli(["eval", "choice", "--base", str(base_dir), "--data", str(long), "--no-progress",   # its older name
                "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert f" on 2 items of {long}: accuracy " in captured.out     # not "on 2 long.jsonl"
    assert f"1 of the 2 items did not fit the model's context ({context} tokens)" in captured.err


def test_cli_bad_input(cli, base_dir, tmp_path, capsys):
    train = datasets.write_jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": "pos"},
                                                             {"text": "bad", "label": "neg"}] * 5)
    val = datasets.write_jsonl(tmp_path / "val.jsonl", [{"text": "meh", "label": "neutral"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    cases = [
        # whose labels they are, and how to keep one only validation has (was the first sentence alone)
        (["--data", str(train), "--val-data", str(val)], "line 1 has the unknown label 'neutral'; the labels are neg, "
                                                         f"pos (the labels of {train}; a label it has no example of "
                                                         "can be kept, as a class the head never learns, by naming "
                                                         "every label with --labels)"),
        (["--val-data", str(val)], "(the labels of the built-in sentiment set;"),
        (["--data", str(empty)], "is empty"),
        (["--lora", "--lora-r", "1000"], "r=1000 is larger than"),
        (["--lora-mlp"], "need --lora"),
        (["--steps", "0"], "steps must be a positive int"),
        (["--data", str(tmp_path / "nope.jsonl")], "does not exist"),
        (["--data", str(train), "--labels", "neg,neutral"], "unknown label 'pos'"),
        (["--dataset", "topic", "--labels", "a,b"], "unknown label"),
        # Before: a label named twice made a third class no example could have ("no training text has
        # the label pos"); one name, or none, led to an error about the data's labels instead
        (["--data", str(train), "--labels", "pos,neg,pos"], "--labels must name each class once, got 'pos'"),
        (["--data", str(train), "--labels", "pos"], "--labels must name at least two classes"),
        (["--data", str(train), "--labels", ","], "--labels must name at least two classes"),
        # Before: numpy's "expected non-negative integer", naming no flag
        (["--seed", "-1"], "--seed must be a non-negative int, got -1"),
    ]
    for extra, message in cases:
        status = cli(["finetune", "classify", "--base", str(base_dir), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_a_fine_tune_with_no_run_to_start_from_names_its_own_flag(cli, tmp_path, monkeypatch, capsys, task):
    # Before: "run `npllama train` first or pass --model DIR", a flag finetune does not have
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    assert cli(["finetune", task, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no trained model found" in err and "--base DIR for `npllama finetune`" in err, err


@pytest.mark.parametrize("task, extra, message", [
    ("sft", ["--seed", "-1"], "--seed must be a non-negative int, got -1"),
    ("sop", ["--seed", "-1"], "--seed must be a non-negative int, got -1"),   # was "give more documents"
    # Before: accepted, and val_rows[:-1] printed every validation answer but the last
    ("sft", ["--samples", "-1"], "--samples must be a non-negative int, got -1"),
])
def test_cli_sft_and_sop_refuse_a_negative_count_naming_the_flag(cli, base_dir, capsys, task, extra, message):
    assert cli(["finetune", task, "--base", str(base_dir), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_classify_config_refuses_labels_named_twice_before_any_model_is_read(tmp_path):
    # the settings alone: a base that does not exist is never reached (the cli test above would pass
    # from encode_labels' own check, after the model had loaded)
    for labels, message in [(("pos", "neg", "pos"), "labels must name each class once, got 'pos'"),
                            (("pos",), "labels must name at least two classes"),
                            (("pos", " "), "labels must be non-empty names")]:
        with pytest.raises(ValueError, match=message):
            ClassifyConfig(base=str(tmp_path / "no such base"), labels=labels)


def test_cli_labels_typed_with_a_chinese_comma_are_two_labels(cli, base_dir, tmp_path, capsys):
    # Before: --labels was cut at "," only, so "负面，正面" (a Chinese keyboard's ，) was one label,
    # and the error "unknown label '正面'; the labels are 负面，正面" looked as if both were there.
    train = datasets.write_jsonl(tmp_path / "zh.jsonl", [{"text": "好看", "label": "正面"},
                                                         {"text": "难看", "label": "负面"}] * 5)
    for labels in ("负面，正面", "负面、正面", "负面, 正面"):
        assert cli(["finetune", "classify", "--base", str(base_dir), "--data", str(train), "--labels", labels,
                    "--steps", "1", "--no-progress", "--backend", "numpy"]) == 0
        assert "labels 负面, 正面;" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflows that make the NaN
def test_cli_fine_tuning_that_diverges_stops_in_one_line(cli, base_dir, capsys):
    # lr 1e9 overflows in the first steps: a failed run (status 1), not a usage mistake (2)
    for task, more in (("classify", []), ("sft", []), ("sop", ["--stories", "100", "--max-len", "48"])):
        status = cli(["finetune", task, "--base", str(base_dir), "--steps", "5", "--lr", "1e9",
                      "--no-progress", "--backend", "numpy", *more])
        err = capsys.readouterr().err.strip()
        assert status == 1, err
        assert err.startswith(f"npllama finetune {task}: stopped: step ") and "try a lower --lr" in err
        assert len(err.splitlines()) == 1 and len(err) < 400, err


def test_a_classifier_saved_into_its_folder_again_keeps_the_users_files(base_dir, tmp_path):
    from npllama.io.hf import load_hf_classifier_folder

    classifier = perturbed_classifier(lora=False)
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    folder = tmp_path / "clf"
    classifier.save(folder, tokenizer)
    kept = {"README.md": b"labels a, b, c", "eval/scores.json": b'{"accuracy": 0.9}'}
    for name, data in kept.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    classifier.score_weight += 1.0
    classifier.save(folder, tokenizer)
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    np.testing.assert_array_equal(load_hf_classifier_folder(folder, dtype=np.float64)[2], classifier.score_weight)


# ----- Hugging Face and PEFT read what we write (skipped where they are not installed) ------------------
def test_transformers_loads_the_classifier(base_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    classifier = perturbed_classifier(lora=False)
    tokenizer = Tokenizer(base_dir / "tokenizer.model")
    classifier.save(tmp_path / "clf", tokenizer)
    hf = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "clf", torch_dtype=torch.float64)
    tokens, mask = pad_batch([[1, 4, 5, 6, 7], [1, 8, 9]], pad_id=tokenizer.eos_id)
    tokens[tokens >= 11] = 3
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(classifier.logits(tokens, mask), theirs, rtol=1e-5, atol=1e-6)

    # a text ending with a real </s> (the pad id): transformers reads the token before it, and so
    # does a head that knows the pad id (as `finetune classify` and load_classifier make it)
    classifier.pad_id = hf.config.pad_token_id
    tokens, mask = pad_batch([[1, 4, 5, tokenizer.eos_id], [1, 8, 9, 10, 6]], pad_id=tokenizer.eos_id)
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(classifier.logits(tokens, mask), theirs, rtol=1e-5, atol=1e-6)

    # the saved tokenizer pads with the id config.json names, so a batch of texts just works
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "clf")
    assert auto.pad_token_id == hf.config.pad_token_id == tokenizer.eos_id
    batch = auto(["a lovely day", "bad"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


def test_peft_loads_the_adapter(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = Llama(config, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape)
    model.save_pretrained(tmp_path / "base")
    tokens = rng.integers(0, 50, (2, 9))
    base_logits = model.forward(tokens)
    adapters = attach_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"])
    for p in adapters.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    adapters.save_adapter(tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", torch_dtype=torch.float64)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(torch.tensor(tokens)).logits.numpy()
    ours = model.forward(tokens)
    assert np.abs(ours - base_logits).max() > 1e-2           # the adapters matter ...
    np.testing.assert_allclose(ours, theirs, atol=1e-5)       # ... and PEFT applies the same ones


def test_path_settings_may_be_pathlib_paths(tmp_path):
    """out= a pathlib.Path was refused ("must name a run folder (a str)") and base= one was kept as a
    Path the JSON of the saved settings could not hold; both become the str they spell."""
    sft = SFTConfig(out=tmp_path / "sft", base=Path("runs/tiny"))
    classify = ClassifyConfig(out=tmp_path / "classify", base=Path("runs/tiny"))
    assert (sft.out, sft.base) == (str(tmp_path / "sft"), "runs/tiny")
    assert (classify.out, classify.base) == (str(tmp_path / "classify"), "runs/tiny")


# ----- `npllama classify` as a user reads it ---------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_dir(base_dir, tmp_path_factory):
    """A saved classifier that reads the first 8 tokens of a text (finetune.json's max_len)."""
    folder = tmp_path_factory.mktemp("classifier") / "c"
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, max_len=8, progress=False, out=str(folder)), echo=quiet)
    return folder


def test_classify_says_which_texts_it_read_only_the_beginning_of(cli, classifier_dir, tmp_path, capsys):
    # Before: a text longer than the classifier reads was labelled with nothing said, printed whole
    # beside its label, though the words after its 8th token could not sway it.
    from npllama.classify import load_classifier

    classifier = load_classifier(classifier_dir)
    long, short = "The movie was long and the end was good but the start was slow and dull.", "good"
    assert classifier.cut_texts([short, long, short]) == [1]
    classified = classifier.classify([short, long, short])   # the same answers, each text tokenised once
    assert classified.cut == [1] and classified.note == classifier.cut_note([short, long, short])
    np.testing.assert_array_equal(classified.probabilities, classifier.probabilities([short, long, short]))
    assert cli(["classify", "--model", str(classifier_dir), "--text", short, "--text", long, "--backend",
                "numpy"]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 texts is longer than 8 tokens (the classifier's max_len, as fine-tuning cut them): " \
           "cut there" in err, err
    data = datasets.write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": "positive"} for t in (long, long, short)])
    assert cli(["classify", "--model", str(classifier_dir), "--data", str(data), "--backend", "numpy"]) == 0
    assert "2 of 3 texts are longer than 8 tokens" in capsys.readouterr().err
    assert cli(["classify", "--model", str(classifier_dir), "--text", short, "--backend", "numpy"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("json_out", [False, True])
def test_classify_says_what_it_cut_before_the_predictions_and_never_in_json(cli, classifier_dir, monkeypatch,
                                                                             json_out):
    """Read as one stream (2>&1, a terminal), the note comes first, where a long output does not
    bury it; with --json it is on stderr only, so stdout stays one JSON object a line."""
    import io
    import json
    import sys

    long = "The movie was long and the end was good but the start was slow and dull."
    both, out = io.StringIO(), io.StringIO()

    class Tee(io.StringIO):   # stdout: into the stream both go to, and on its own
        def write(self, text):
            out.write(text)
            return both.write(text)

    monkeypatch.setattr(sys, "stdout", Tee())
    monkeypatch.setattr(sys, "stderr", both)
    assert cli(["classify", "--model", str(classifier_dir), "--backend", "numpy", "--text", "good", "--text", long,
                "--text", "bad", *(["--json"] if json_out else [])]) == 0
    lines = both.getvalue().splitlines()
    assert lines[0].startswith("1 of 3 texts is longer than 8 tokens") and len(lines) == 4, lines
    if json_out:
        assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["good", long, "bad"]


@pytest.mark.parametrize("how", [["--data", "test.jsonl"], ["--file", "test.txt"]])
def test_classify_tokenises_each_text_once(cli, classifier_dir, tmp_path, capsys, monkeypatch, how):
    # Before: the note on texts cut at max_len tokenised every text, then the probabilities again:
    # twice the tokenising of a large --data file
    from npllama.tokenizer import Tokenizer

    texts = ["good", "The movie was long and the end was good but the start was slow and dull.", "bad"]
    datasets.write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": "positive"} for t in texts])
    (tmp_path / "test.txt").write_text("\n".join(texts), encoding="utf-8")
    encoded = []
    real_batch, real_one = Tokenizer.encode_batch, Tokenizer.encode
    monkeypatch.setattr(Tokenizer, "encode_batch", lambda self, batch, *a, **k: encoded.extend(batch) or
                        real_batch(self, batch, *a, **k))
    monkeypatch.setattr(Tokenizer, "encode", lambda self, text, *a, **k: encoded.append(text) or
                        real_one(self, text, *a, **k))
    assert cli(["classify", "--model", str(classifier_dir), "--backend", "numpy", how[0], str(tmp_path / how[1])]) == 0
    assert "1 of 3 texts is longer than 8 tokens" in capsys.readouterr().err
    assert sorted(encoded) == sorted(texts)


@pytest.mark.parametrize("blank", ["", "  \n\t"])
def test_the_python_classifier_refuses_an_empty_text_as_the_command_and_training_do(classifier_dir, blank):
    # Before: Classifier.probabilities([""]) answered, from the hidden state of <s> alone -- the same
    # answer for every empty text -- where `npllama classify --text ""` and fine-tuning refuse it.
    from npllama.classify import load_classifier

    classifier = load_classifier(classifier_dir)
    for call in (classifier.probabilities, classifier.predict, classifier.logits):
        with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
            call(["good", blank])
    with pytest.raises(TypeError, match="texts must be a list of str, got NoneType"):
        classifier.predict(None)


def test_classify_prints_one_line_per_text(cli, classifier_dir, capsys):
    # Before: a --text holding a line break printed as two lines, the second looking like an unlabelled text
    texts = ["first line\nsecond line", "a\r\nb", "plain"]
    assert cli(["classify", "--model", str(classifier_dir), *[a for t in texts for a in ("--text", t)],
                "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].endswith("first line\\nsecond line") and lines[1].endswith("a\\r\\nb")


def test_classify_without_model_names_the_classifier_runs_when_the_latest_run_is_a_language_model(
        cli, base_dir, classifier_dir, tmp_path, monkeypatch, capsys):
    # Before: after `npllama train` then `npllama finetune classify --out X`, `npllama classify --text t`
    # loaded the latest run -- the language model `train` made -- and failed with "tensor 'score.weight':
    # missing", advising to make a classifier with `finetune classify --out DIR`, which had been done.
    import os

    from npllama.runs import mark_latest

    runs = tmp_path / "runs"
    monkeypatch.setenv("NPLLAMA_RUNS", str(runs))
    mark_latest(base_dir)
    assert cli(["classify", "--text", "good", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "the latest run" in err and "is a language model" in err and "missing" not in err, err
    assert "npllama finetune classify" in err and "--out DIR" in err     # none made yet: how to make one
    shutil.copytree(classifier_dir, runs / "older")
    shutil.copytree(classifier_dir, runs / "sentiment")
    os.utime(runs / "older" / "finetune.json", (1, 1))                   # finished long ago
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "classify_config.json").write_text("{}")      # started, nothing saved yet
    assert cli(["classify", "--text", "good", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert f"--model {runs / 'sentiment'}" in err and "older" not in err and "unfinished" not in err, err
    assert cli(["classify", "--text", "good", "--backend", "numpy", "--model", str(runs / "sentiment")]) == 0
    # a language model named as --model is told so too, with the classifier to give instead
    assert cli(["classify", "--text", "good", "--backend", "numpy", "--model", str(base_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--model {str(base_dir)!r} is a language model" in err and f"--model {runs / 'sentiment'}" in err, err
    # a LoRA classifier finished last: its adapter is what to give
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), steps=1, lora=True, lora_r=2, progress=False,
                                out=str(runs / "lora")), echo=quiet)
    assert cli(["classify", "--text", "good", "--backend", "numpy"]) == 2
    assert f"give --adapter {runs / 'lora'}" in capsys.readouterr().err


def test_classify_prints_one_line_per_text_whatever_line_break_it_holds(cli, classifier_dir, capsys):
    # Before: only \n and \r were shown escaped; a text holding a vertical tab, form feed, NEL or
    # U+2028 (LINE SEPARATOR) still broke its line in a terminal and for every line reader.
    texts = ["a\vb", "a\fb", "a\x85b", "a\u2028b", "a\u2029b", "a\x1cb"]
    assert cli(["classify", "--model", str(classifier_dir), *[a for t in texts for a in ("--text", t)],
                "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts), lines
    assert [line.split()[-1] for line in lines] == ["a\\x0bb", "a\\x0cb", "a\\x85b", "a\\u2028b", "a\\u2029b",
                                                    "a\\x1cb"]


def test_sft_says_how_many_examples_it_read_and_holds_out(base_dir, tmp_path):
    # Before: classify opened with "N train / M validation texts", SFT said nothing of its data, so a
    # user could not count the examples against the file
    rows = [{"prompt": f"Say {i}.", "response": f"{i}."} for i in range(9)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")   # and a blank line
    said = []
    with use_backend("numpy"):
        sft(SFTConfig(base=str(base_dir), data=str(data), steps=1, samples=0, progress=False, max_len=32,
                      val_fraction=0.3), echo=said.append)
    assert [line for line in said if f"on {data}: 6 train / 3 validation examples" in line], said


def test_classify_says_when_validation_texts_are_also_training_texts(base_dir, tmp_path):
    # duplicate rows, or a held-out file cut from the same export: a validation text the model was
    # trained on is not new text, and the accuracy measured on it says too much
    rows = [{"text": f"{'good' if i % 2 else 'bad'} day {i}", "label": "pos" if i % 2 else "neg"} for i in range(10)]
    new = [{"text": "good night", "label": "pos"}, {"text": "bad night", "label": "neg"}]
    train = datasets.write_jsonl(tmp_path / "train.jsonl", rows)
    said = []
    for val_rows, note in ((new, None), (rows[:3] + new, "3 of 5 validation texts are also training texts")):
        val = datasets.write_jsonl(tmp_path / "val.jsonl", val_rows)
        said.clear()
        with use_backend("numpy"):
            classify(ClassifyConfig(base=str(base_dir), data=str(train), val_data=str(val), steps=1, progress=False),
                     echo=said.append)
        found = [line for line in said if "validation texts are also training texts" in line]
        assert (found[0].startswith(note) if note else not found), said


def test_the_shared_texts_note_gives_the_cause_the_data_can_have(base_dir, tmp_path):
    # Before: the built-in spam set (texts from templates, many twice) and a file split in two were told
    # "duplicate rows, or a validation file cut from the training data" -- there is no validation file
    rows = [{"text": f"{'good' if i % 2 else 'bad'} day {i % 6}", "label": "pos" if i % 2 else "neg"} for i in range(12)]
    data = datasets.write_jsonl(tmp_path / "train.jsonl", rows)
    for config, cause in ((dict(dataset="spam"), "(the built-in set's templates make some texts more than once)"),
                          (dict(data=str(data), val_fraction=0.5), "(the data has duplicate rows)")):
        said = []
        with use_backend("numpy"):
            classify(ClassifyConfig(base=str(base_dir), steps=1, progress=False, **config), echo=said.append)
        found = [line for line in said if "validation texts are also training texts" in line]
        assert len(found) == 1 and cause in found[0], said


def test_sft_says_when_validation_conversations_are_also_training_conversations(base_dir, tmp_path):
    # Before: classify said so of its texts, SFT not of its conversations: a validation loss partly on
    # conversations the model was trained on says too much
    rows = [{"prompt": f"Say {i % 4}.", "response": f"{i % 4}."} for i in range(12)]   # each one 3 times
    distinct = [{"prompt": f"Say {i}.", "response": f"{i}."} for i in range(12)]
    for data_rows, expected in ((distinct, 0), (rows, 1)):
        data = datasets.write_jsonl(tmp_path / "chats.jsonl", data_rows)
        said = []
        with use_backend("numpy"):
            sft(SFTConfig(base=str(base_dir), data=str(data), steps=1, samples=0, progress=False, max_len=32,
                          val_fraction=0.5), echo=said.append)
        found = [line for line in said if "validation conversations are also training conversations" in line]
        assert len(found) == expected, said
        if expected:   # 6 held out, 4 distinct conversations: some held-out one is also trained on
            assert found[0].endswith("(the data has duplicate rows): the validation loss below is partly on "
                                     "conversations the model was trained on, not on new ones"), found
            assert " of 6 validation conversations" in found[0], found


@pytest.mark.parametrize("answer, shown", [(" \n ", "assistant: (only white space)"), ("", "assistant: (empty)"),
                                           (" ok ", "assistant:  ok ")])
def test_a_sample_answer_with_no_text_says_so_instead_of_an_empty_looking_line(base_dir, tmp_path, monkeypatch,
                                                                                answer, shown):
    # Before: "assistant: " and nothing visible after it, which looked like a printing bug
    monkeypatch.setattr(Tokenizer, "decode", lambda self, ids, *args, **kwargs: answer)
    data = datasets.write_jsonl(tmp_path / "chats.jsonl", [{"prompt": f"Say {i}.", "response": f"{i}."} for i in range(9)])
    said = []
    with use_backend("numpy"):
        result = sft(SFTConfig(base=str(base_dir), data=str(data), steps=1, samples=1, progress=False, max_len=32),
                     echo=said.append)
    assert result.samples == [answer]   # what the model wrote, kept as it is
    assert [line for text in said for line in text.split("\n") if line.startswith("assistant:")] == [shown], said
