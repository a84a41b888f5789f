"""`npllama finetune sop`: masked-LM + sentence-order (or next-sentence) training as a job: it learns
what the pairs hold, saves a masked-LM model with its head, and refuses what it cannot use."""
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, use_backend
from npllama.cli import main
from npllama.finetune_sop import (HEAD_FILE, SentenceOrderConfig, changed_probability, load_sentence_order,
                                  sentence_order)
from npllama.objectives import SOP_HEAD
from npllama.tokenizer import Tokenizer

WORDS = "red blue green cat dog sun moon tree bird fish".split()


@pytest.fixture(scope="module")
def greetings(tmp_path_factory):
    """(base model folder, documents file): two-sentence documents, "Hello x y. Goodbye z w.", whose
    order a model can learn in a few hundred small steps; a random 1-layer model and its tokenizer."""
    rng = random.Random(0)
    docs = [f"Hello {rng.choice(WORDS)} {rng.choice(WORDS)}. Goodbye {rng.choice(WORDS)} {rng.choice(WORDS)}."
            for _ in range(400)]
    folder = tmp_path_factory.mktemp("sop")
    tokenizer = Tokenizer.train(docs * 3, folder / "tok", vocab_size=300)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    Llama(config, seed=0).save_pretrained(folder / "base", extra_files={"tokenizer.model": tokenizer.model_bytes})
    (folder / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return folder / "base", folder / "docs.txt"


def settings(greetings, **more):
    base, docs = greetings
    return SentenceOrderConfig(**{"base": str(base), "data": str(docs), "batch_size": 8, "max_len": 24,
                                  "progress": False, "lr": 3e-3, **more})


def test_the_head_learns_the_order_and_the_result_is_a_masked_lm_model_with_its_head(greetings, tmp_path):
    said = []
    with use_backend("numpy"):
        result = sentence_order(settings(greetings, steps=200, out=str(tmp_path / "run")), echo=said.append)
    # a head that reads the wrong rows' labels, or a pair label that does not follow the swap, stays at chance
    assert result.after["sop_accuracy"] >= 0.8 and result.after["sop_accuracy"] >= result.baseline + 0.25, result
    assert result.after["mlm"] < result.before["mlm"] - 1.0
    assert result.before["pairs"] == result.after["pairs"] == 40       # 10% of 400 documents, each once
    assert len(result.losses) == 200 and np.isfinite(result.losses).all()
    report = "\n".join(said)
    assert "SOP accuracy" in report and "majority-label baseline accuracy" in report
    assert "MLM loss (nats per masked token)" in report and "SOP loss (nats per pair)" in report, report
    assert "the base was trained causally" in report

    out = tmp_path / "run"
    config = json.loads((out / "config.json").read_text())
    assert config["npllama_objective"] == "mlm"
    info = json.loads((out / "finetune.json").read_text())
    assert info["task"] == "sop" and info["after"]["sop_accuracy"] == result.after["sop_accuracy"]

    model, head, tokenizer = load_sentence_order(out)
    assert model.objective == "mlm" and head.shape == (2, model.config.hidden_size)
    in_order = changed_probability(model, head, tokenizer, "Hello red cat.", "Goodbye sun moon.")
    swapped = changed_probability(model, head, tokenizer, "Goodbye sun moon.", "Hello red cat.")
    assert in_order < 0.5 < swapped


def test_next_sentence_pairs_and_lora_train_the_adapters_and_the_head_and_save_a_whole_model(greetings, tmp_path):
    base, _ = greetings
    with use_backend("numpy"):
        result = sentence_order(settings(greetings, steps=3, pairs="nsp", lora=True, lora_r=2,
                                         out=str(tmp_path / "run")), echo=lambda *_: None)
    original = Llama.from_pretrained(base)
    adapted, head, _ = load_sentence_order(tmp_path / "run")
    # adapters on q/k/v/o and the head: far fewer than the model's parameters
    assert result.trainable < original.num_parameters() / 2
    assert not (tmp_path / "run" / "adapter_config.json").exists()      # merged: a whole model
    changed = [n for n in original.params if not np.array_equal(original.params[n], adapted.params[n])]
    assert changed and all(any(p in n for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in changed), changed
    assert np.isfinite(head).all()


def test_the_cli_trains_resumes_and_what_it_saves_refuses_to_generate(greetings, tmp_path, capsys):
    base, docs = greetings
    out = tmp_path / "run"
    argv = ["finetune", "sop", "--base", str(base), "--data", str(docs), "--out", str(out), "--batch-size", "8",
            "--max-len", "24", "--no-progress", "--backend", "numpy"]
    assert main([*argv, "--steps", "4"]) == 0
    said = capsys.readouterr().out
    assert "SOP accuracy" in said
    # the last line says what the folder is for: a masked-LM model is fine-tuned, not generated from
    # (`eval` refused it; `eval sop` and `eval mlm` score it now)
    assert said.splitlines()[-1].endswith(f"to {out}; use it: npllama finetune classify --base {out} --out DIR, "
                                          f"or score it on held-out documents: npllama eval sop --model {out} "
                                          f"--data FILE (generate and eval perplexity refuse a masked-LM model)")
    assert (out / HEAD_FILE).is_file() and (out / "sop_config.json").is_file()
    # a resume that asks for more steps continues from the checkpoint of step 4
    assert main(["finetune", "sop", "--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len((out / "log.jsonl").read_text().splitlines()) >= 6
    # the pairs define the run: a resume may not change them
    assert main(["finetune", "sop", "--out", str(out), "--resume", "--pairs", "nsp", "--no-progress"]) == 2
    assert "pairs" in capsys.readouterr().err
    assert main(["generate", "--model", str(out), "--prompt", "Hello"]) == 2
    assert "masked-LM model" in capsys.readouterr().err
    # its checkpoint/ resumes the run (only the trained tensors): the scoring commands name the run folder
    # to pass instead (not "put optimizer.safetensors in a folder as model.safetensors")
    for job, data in (("mlm", docs), ("sop", docs)):
        assert main(["eval", job, "--model", str(out / "checkpoint"), "--data", str(data), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "training checkpoint" in err and f"the run folder {str(out)!r} is a Hugging Face model folder" in err
        assert "pass it as --model" in err and "model.safetensors next to" not in err, err


@pytest.mark.parametrize("more, message", [
    (dict(pairs="mlm"), "pairs must be one of sop, nsp"),
    (dict(max_len=4), "max_len must be at least 5"),
    (dict(stories=0), "stories must be"),
    (dict(doc_separator="comma"), "doc_separator must be"),
])
def test_bad_settings_are_refused_before_anything_loads(more, message):
    with pytest.raises(ValueError, match=message):
        SentenceOrderConfig(**more)


def test_documents_without_two_sentences_are_refused_saying_what_would_help(greetings, tmp_path):
    one_sentence = tmp_path / "short.txt"
    one_sentence.write_text("\n\n".join(f"Just one sentence number {i}." for i in range(50)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"none of the 50 documents of .*short.txt has two sentences.*a sentence ends"):
        sentence_order(settings(greetings, data=str(one_sentence), steps=1), echo=lambda *_: None)


def write_documents(path, documents):
    path.write_text("\n\n".join(documents), encoding="utf-8")
    return str(path)


def test_one_sentence_documents_are_skipped_before_the_split_and_said_so(greetings, tmp_path):
    # 40 one-sentence documents and 20 that give a pair: before, the split drew validation from all 60,
    # and 10% of them could be all one-sentence ones ("the validation documents give no usable batch")
    documents = [f"Only one {i}." for i in range(40)] + [f"Hello {i}. Goodbye {i}." for i in range(20)]
    random.Random(1).shuffle(documents)
    said = []
    with use_backend("numpy"):
        result = sentence_order(settings(greetings, data=write_documents(tmp_path / "mixed.txt", documents),
                                         steps=1, batch_size=4, val_fraction=0.05), echo=said.append)
    assert result.after["pairs"] == 1 and "40 of 60 documents skipped: one sentence only" in said[0]


@pytest.mark.parametrize("documents, more, message", [
    # too few to hold any out: a larger --val-fraction helps; there is no validation file to give
    (5, dict(), r"cannot split 5 documents of 2\+ sentences with --val-fraction=0.1: .*no documents of 2\+ "
                r"sentences for validation\); give more documents of 2\+ sentences or a larger --val-fraction$"),
    # one validation document cannot make next-sentence pairs: a larger --val-fraction, not a smaller one
    (60, dict(val_fraction=0.02, pairs="nsp"), r"the validation documents \(1\) give no usable batch: next-"
                                               r"sentence pairs need at least two documents.*or a larger --val-fraction$"),
    (60, dict(batch_size=100), r"the training documents \(54\) give no usable batch: only 54 sentence pairs.*"
                               r"smaller --batch-size or --val-fraction$"),
])
def test_too_few_documents_are_one_line_saying_which_side_and_what_helps(greetings, tmp_path, capsys, documents,
                                                                         more, message):
    data = write_documents(tmp_path / "few.txt", [f"Hello {i}. Goodbye {i}." for i in range(documents)])
    argv = ["finetune", "sop", "--base", str(greetings[0]), "--data", data, "--steps", "1", "--batch-size", "4",
            "--no-progress", "--backend", "numpy"]
    for name, value in more.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "validation file" not in err
    assert re.search(message, err), err


def test_a_paragraph_per_line_is_one_document_at_blank_lines_and_one_per_line_with_line(greetings, tmp_path,
                                                                                        capsys):
    # Chinese text is often written a paragraph per line, with no blank line: before, the only
    # advice was "give more documents", and no --doc-separator could cut at single newlines.
    paragraphs = [f"第{i}天，小明去了公园。他很高兴！" for i in range(40)]
    (tmp_path / "zh.txt").write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    argv = ["finetune", "sop", "--base", str(greetings[0]), "--data", str(tmp_path / "zh.txt"), "--steps", "1",
            "--batch-size", "4", "--no-progress", "--backend", "numpy"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zh.txt has no blank line, so it is one document (--doc-separator line makes each of its lines one)" in err
    assert main([*argv, "--doc-separator", "line"]) == 0
    assert "from " + str(tmp_path / "zh.txt") + ": 36 training / 4 validation pairs" in capsys.readouterr().out


def test_load_sentence_order_refuses_a_folder_without_the_head(greetings):
    base, _ = greetings
    with pytest.raises(FileNotFoundError, match=f"no {HEAD_FILE}"):
        load_sentence_order(base)


def test_the_head_file_holds_exactly_the_head(greetings, tmp_path):
    from npllama.io.safetensors import read_safetensors

    with use_backend("numpy"):
        sentence_order(settings(greetings, steps=1, out=str(tmp_path / "run")), echo=lambda *_: None)
    assert set(read_safetensors(tmp_path / "run" / HEAD_FILE)) == {SOP_HEAD}


def test_changed_probability_checks_max_len_against_the_model(greetings):
    from npllama.objectives import init_sop_head
    from npllama.runs import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(greetings[0])
    head = init_sop_head(model.config.hidden_size)
    long = "Hello red cat. " * 40
    with use_backend("numpy"):
        assert 0 < changed_probability(model, head, tokenizer, long, long) < 1      # cut to the model's 64 positions
        with npllama.trace() as t:
            p = changed_probability(model, head, tokenizer, long, long, max_len=16)
        assert 0 < p < 1
        assert t.names("sop_head.*") == ["sop_head.pooled_index", "sop_head.out"]   # a trace sees the head too
        # before: a deep "sequence of 565 positions is longer than max_position_embeddings"; True taken as 1
        with pytest.raises(ValueError, match=r"max_len must be at most the model's max_position_embeddings \(64\), "
                                             r"got 1000"):
            changed_probability(model, head, tokenizer, long, long, max_len=1000)
        with pytest.raises(ValueError, match="max_len must be None or a positive int, got True"):
            changed_probability(model, head, tokenizer, "a.", "b.", max_len=True)


def test_the_shared_flags_help_says_what_is_true_for_each_job():
    from npllama.cli import build_parser

    finetune = next(a for a in build_parser()._subparsers._group_actions[0].choices["finetune"]._actions
                    if a.dest == "task").choices
    helps = {task: {a.dest: " ".join(a.help.split()) for a in parser._actions} for task, parser in finetune.items()}
    # --resume names exactly the settings each job refuses to change (before: a list without --pairs, --stories ...)
    assert ("(--base, --data, --val-fraction, --lora, --lora-r, --lora-alpha, --lora-dropout, --lora-targets, "
            "--batch-size, --max-len, --seed, --dtype, --pairs, --doc-separator, --stories); a --data file edited "
            "since the checkpoint is refused too") in helps["sop"]["resume"], helps["sop"]["resume"]
    assert "--dataset, --labels, --val-data, --split)" in helps["classify"]["resume"]
    assert "the pairs" in helps["sop"]["seed"] and "the masks" in helps["sop"]["seed"]
    assert "head" not in helps["sft"]["seed"] and "new head" not in helps["sft"]["lora"]   # sft has no new head


def test_a_validation_set_without_a_masked_token_reports_no_mlm_loss_not_zero(greetings, tmp_path, monkeypatch):
    import npllama.finetune_sop as job

    real = job.evaluate_sentence_order
    monkeypatch.setattr(job, "evaluate_sentence_order", lambda *a: {**real(*a), "mlm": float("nan")})
    said = []
    with use_backend("numpy"):
        sentence_order(settings(greetings, steps=1, out=str(tmp_path / "run")), echo=said.append)
    report = "\n".join(said)
    assert re.search(r"MLM loss \(nats per masked token\) +n/a +n/a\n", report) and "no MLM loss" in report
    info = json.loads((tmp_path / "run" / "finetune.json").read_text())   # strict JSON: null, not NaN
    assert info["after"]["mlm"] is None and info["before"]["mlm"] is None


def test_a_sop_result_as_base_continues_its_head_and_another_pairs_kind_starts_fresh(greetings, tmp_path):
    with use_backend("numpy"):
        first = sentence_order(settings(greetings, steps=40, out=str(tmp_path / "first")), echo=lambda *_: None)
        first_head = load_sentence_order(tmp_path / "first")[1]
        said = []
        again = settings(greetings, steps=1, lr=1e-9, base=str(tmp_path / "first"), out=str(tmp_path / "second"))
        result = sentence_order(again, echo=said.append)
        assert any("continues from the base's sop_head.safetensors" in line for line in said), said
        # the same held-out pairs: before this run, the numbers the first run ended with (a fresh head's differ)
        assert result.before["sop"] == pytest.approx(first.after["sop"], rel=1e-5)
        np.testing.assert_allclose(load_sentence_order(tmp_path / "second")[1], first_head, atol=1e-6)
        said.clear()
        sentence_order(settings(greetings, steps=1, pairs="nsp", base=str(tmp_path / "first")), echo=said.append)
        assert any("starts fresh: the base's sop_head.safetensors was trained on --pairs sop" in line
                   for line in said), said


@pytest.mark.parametrize("record, kind", [(None, "unknown"), ("[1, 2]", "unknown"), ('{"pairs": "sop"', "unknown"),
                                          ('{"label_names": ["a"]}', "unknown"), ('{"pairs": "nsp"}', "nsp")])
def test_a_base_with_a_head_and_no_record_of_the_same_pairs_starts_a_fresh_head(greetings, tmp_path, record, kind):
    """A base holding a sop_head.safetensors but no finetune.json, one that is not npllama's (not an
    object, damaged JSON, no "pairs") or one of other pairs: which question the head answered is
    not known to be this run's, so the head starts fresh, saying why."""
    from npllama.finetune_sop import _starting_head

    base = tmp_path / "base"
    base.mkdir()
    (base / HEAD_FILE).write_bytes(b"")   # not read: the record decides first
    if record is not None:
        (base / "finetune.json").write_text(record)
    model = Llama.from_pretrained(greetings[0])
    head, said = _starting_head(base, model, settings(greetings))
    assert head.shape == (2, model.config.hidden_size)
    assert f"starts fresh: the base's {HEAD_FILE} was trained on --pairs {kind}, this run on sop" in said, said


def test_a_finetune_json_that_cannot_be_read_is_an_error_as_for_classify_not_a_fresh_head(greetings, tmp_path,
                                                                                         monkeypatch):
    """_starting_head read finetune.json itself and took any OSError (a file there but unreadable) for
    "no record": the base's trained head was silently replaced by a fresh one, while classify's
    reader of the same file (finetune.read_info) says the file cannot be read.  One reader, one rule."""
    import npllama.io.reading
    from npllama.finetune import read_info
    from npllama.finetune_sop import _starting_head

    base = tmp_path / "base"
    base.mkdir()
    (base / HEAD_FILE).write_bytes(b"")
    (base / "finetune.json").write_text('{"pairs": "sop"}')
    read_json = npllama.io.reading.read_json

    def unreadable(path, *args, **kwargs):   # as a file without read permission is, for a user who is not root
        if Path(path).name == "finetune.json":
            raise PermissionError(13, "Permission denied", str(path))
        return read_json(path, *args, **kwargs)

    monkeypatch.setattr(npllama.io.reading, "read_json", unreadable)
    with pytest.raises(PermissionError) as classify_said:
        read_info(base)
    with pytest.raises(PermissionError) as sop_said:
        _starting_head(base, Llama.from_pretrained(greetings[0]), settings(greetings))
    assert str(sop_said.value) == str(classify_said.value)
