"""`npllama eval sop`: a `finetune sop` model's sentence-order (or next-sentence) accuracy on
held-out text, scored by the code `finetune sop` validates with (its documents of two sentences,
its pairs and masks from the seed, evaluate_sentence_order): on the run's own held-out documents,
with the run's settings (read from its folder), it gives the validation numbers the run logged."""
import json

import pytest

from npllama import datasets, loss_units
from npllama.cli import main
from npllama.corpus import make_default_corpus
from npllama.data import load_texts
from npllama.finetune_sop import SentenceOrderConfig, load_sentence_order, sentence_order, sentence_order_score
from npllama.objectives import split_sentences


def quiet(*_):
    pass


@pytest.fixture(scope="module", params=["sop", "nsp"])
def run(request, small_model_dir, tmp_path_factory):
    """(a `finetune sop --out` folder, its --data file, its settings) for --pairs sop and nsp."""
    from npllama import use_backend

    folder = tmp_path_factory.mktemp(f"eval_{request.param}")
    data = folder / "stories.txt"
    data.write_text("\n\n".join(make_default_corpus(60, seed=3)))
    settings = SentenceOrderConfig(base=str(small_model_dir), data=str(data), out=str(folder / "out"), steps=2,
                                   batch_size=4, max_len=48, seed=7, val_fraction=0.3, pairs=request.param,
                                   progress=False)
    with use_backend("numpy"):
        sentence_order(settings, echo=quiet)
    return folder / "out", data, settings


def held_out_documents(data, settings) -> str:
    """The run's validation documents, as the run picked them, written as a .txt file's text."""
    texts = [t for t in load_texts(data, settings.doc_separator) if len(split_sentences(t)) >= 2]
    _, val_rows = datasets.split_train_val(len(texts), settings.val_fraction, settings.seed,
                                           what="documents of 2+ sentences", val_file=False)
    return "\n\n".join(texts[i] for i in val_rows)


def test_on_the_runs_held_out_documents_it_gives_the_validation_numbers_the_run_logged(run, tmp_path, capsys):
    out, data, settings = run
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(held_out_documents(data, settings))
    logged = json.loads((out / "finetune.json").read_text())["after"]
    # the run's --pairs, --max-len, --batch-size, --seed and --doc-separator are read from its folder
    assert main(["eval", "sop", "--model", str(out), "--data", str(held_out), "--json", "--no-progress",
                 "--backend", "numpy"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["pairs"] == logged["pairs"] and record["masked_tokens"] == logged["masked_tokens"], (record, logged)
    assert record["sop_accuracy"] == logged["sop_accuracy"], (record, logged)
    assert record["sop"] == pytest.approx(logged["sop"], rel=1e-5) and record["mlm"] == pytest.approx(logged["mlm"],
                                                                                                      rel=1e-5)
    assert record["task"] == settings.pairs and record["seed"] == settings.seed and record["max_len"] == 48
    # the line says the same numbers, and which settings were the run's
    assert main(["eval", "sop", "--model", str(out), "--data", str(held_out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert f"accuracy {record['sop_accuracy']:.3f}" in line and f"{record['pairs']} {settings.pairs.upper()} pairs" in line, line
    assert "as the run was trained" in line and "nats per masked token" in line, line
    # each loss's unit is in the record, in the words the line uses (npllama.loss_units)
    assert record["units"] == {"sop": loss_units.PAIR_LOSS_UNIT, "mlm": loss_units.loss_unit("mlm")}, record
    assert f"{settings.pairs.upper()} loss {record['sop']:.4f} {record['units']['sop']}, " in line, line
    assert f"masked-LM loss {record['mlm']:.4f} {record['units']['mlm']} (" in line, line
    # another seed draws other pairs and masks
    assert main(["eval", "sop", "--model", str(out), "--data", str(held_out), "--json", "--no-progress",
                 "--seed", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["mlm"] != pytest.approx(record["mlm"], rel=1e-5)


def test_the_python_function_is_the_commands_number(run, tmp_path, capsys):
    out, data, settings = run
    model, head, tokenizer = load_sentence_order(out)
    texts = load_texts(data, settings.doc_separator)
    one = sentence_order_score(model, head, tokenizer, texts, pairs=settings.pairs, max_len=48, batch_size=4, seed=7)
    again = sentence_order_score(model, head, tokenizer, texts, pairs=settings.pairs, max_len=48, batch_size=4, seed=7)
    assert one == again and one["documents"] == len([t for t in texts if len(split_sentences(t)) >= 2])
    # the command, given the same settings, reports these numbers
    assert main(["eval", "sop", "--model", str(out), "--data", str(data), "--pairs", settings.pairs, "--max-len",
                 "48", "--batch-size", "4", "--seed", "7", "--json", "--no-progress", "--backend", "numpy"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {key: record[key] for key in one} == pytest.approx(one, rel=1e-6), (record, one)
    labels_share = one["majority_label_accuracy"]
    assert 0.5 <= labels_share <= 1.0
    with pytest.raises(ValueError, match="pairs must be one of"):
        sentence_order_score(model, head, tokenizer, texts, pairs="order")
    for seed in (1.5, True, "7"):
        with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
            sentence_order_score(model, head, tokenizer, texts, seed=seed)


def test_a_model_without_a_sentence_order_head_or_text_without_pairs_is_refused(run, small_model_dir, tmp_path,
                                                                                capsys):
    out, _, _ = run
    data = tmp_path / "one_sentence_each.txt"
    data.write_text("Tom ran.\n\nSue sat.\n")
    assert main(["eval", "sop", "--model", str(small_model_dir), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sop_head.safetensors" in err and "npllama finetune sop" in err and "Traceback" not in err, err
    assert main(["eval", "sop", "--model", str(out), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "two sentences" in err and "Traceback" not in err, err


def test_the_help_says_where_the_settings_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "sop", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag in ("--pairs", "--max-len", "--batch-size", "--seed", "--doc-separator", "--json"):
        assert flag in shown, flag
    assert "sop_config.json" in shown and "finetune.json" in shown, shown


def test_a_folder_without_its_sop_config_takes_pairs_from_finetune_json_and_the_fixed_defaults(run, tmp_path,
                                                                                               capsys):
    """A copy that kept finetune.json but not sop_config.json: the question its head answers is read
    from finetune.json, the rest are the defaults (16 pairs a batch, seed 0, blank-line); with neither,
    --pairs is asked for, not guessed."""
    import shutil

    out, data, settings = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "sop_config.json").unlink()
    argv = ["eval", "sop", "--model", str(copy), "--data", str(data), "--json", "--no-progress", "--backend", "numpy"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == settings.pairs and record["settings_of_the_run"] == ["pairs"], record
    assert (record["batch_size"], record["seed"], record["doc_separator"]) == (16, 0, "blank-line"), record
    info = json.loads((copy / "finetune.json").read_text())
    del info["pairs"]
    (copy / "finetune.json").write_text(json.dumps(info))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "give --pairs sop or nsp" in err and "sop_config.json" in err, err


@pytest.mark.parametrize("task", ["perplexity", "mlm", "sop"])
@pytest.mark.parametrize("flags, named", [(["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
                                          (["--doc-separator", "paragraph"], "--doc-separator")])
def test_bad_batch_size_or_separator_is_refused_before_the_model_is_read(task, flags, named, tmp_path, capsys):
    """The one check eval perplexity, mlm and sop share: a --model that does not exist is never
    reached, so the flag, not the missing folder, is what the message names."""
    data = tmp_path / "held_out.txt"
    data.write_text("Tom ran home. Sue sat down.\n\nThe end came.\n")
    argv = ["eval", task, "--model", str(tmp_path / "no_such_model"), "--data", str(data), "--no-progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "no_such_model" not in err and "Traceback" not in err, err


def test_a_max_len_too_short_for_a_pair_is_refused_before_the_model_is_read(tmp_path, capsys):
    data = tmp_path / "held_out.txt"
    data.write_text("Tom ran home. Sue sat down.\n")
    for max_len in ("0", "4"):
        argv = ["eval", "sop", "--model", str(tmp_path / "no_such_model"), "--data", str(data), "--max-len", max_len]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--max-len must be at least 5 for a pair (<s> A </s> B </s>), got {max_len}" in err, err
