"""Messages that said the wrong thing: a folder is not "missing", a run folder is a model, a
classifier is not a damaged model, a bad label or CSV line names its file and where it starts."""
import json

import pytest

from npllama.cli import main
from npllama.datasets import load_labelled
from npllama.finetune import ClassifyConfig, _classification_data
from npllama.model_shape import read_model_config_file
from npllama.train import TrainConfig, train

FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300, eval_every=0,
            checkpoint_every=0, eval_batches=1, samples=0, progress=False, steps=1)


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)


def one_line_error(argv, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_config_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "emptydir").mkdir()
    err = one_line_error(["train", "--config", str(tmp_path / "emptydir")], capsys)
    assert "is a folder without a config.json" in err and "does not exist" not in err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    assert read_model_config_file(tmp_path / "model") == {"hidden_size": 64}   # a model folder's config.json


def test_init_from_a_run_folder_uses_its_model(tmp_path):
    train(TrainConfig(out=str(tmp_path / "first"), **FAST), echo=lambda *a: None)
    said = []
    result = train(TrainConfig(out=str(tmp_path / "second"), init_from=str(tmp_path / "first"),
                               **{k: v for k, v in FAST.items() if k not in ("preset", "vocab_size")}), echo=said.append)
    assert result.step == 1 and any(str(tmp_path / "first" / "model") in line for line in said)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        train(TrainConfig(out=str(tmp_path / "third"), init_from=str(tmp_path / "nothing"), **FAST), echo=print)


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_a_classifier_as_base_is_named_as_one(tmp_path, capsys, task):
    folder = tmp_path / "sent"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    err = one_line_error(["finetune", task, "--base", str(folder), "--no-progress"], capsys)
    assert "--base" in err and "is a classification model" in err and "score.weight" not in err


def test_an_unseen_validation_label_names_the_file(tmp_path):
    write = lambda name, labels: (tmp_path / name).write_text(
        "".join(json.dumps({"text": f"text {i}", "label": l}) + "\n" for i, l in enumerate(labels)))
    write("train.jsonl", ["a", "b", "a", "b"])
    write("val.jsonl", ["a", "c"])
    with pytest.raises(ValueError, match=r"val.jsonl: line 2 has the unknown label 'c'"):
        _classification_data(ClassifyConfig(data=str(tmp_path / "train.jsonl"), val_data=str(tmp_path / "val.jsonl")))


def test_an_unterminated_quote_is_reported_where_it_starts(tmp_path):
    path = tmp_path / "c_bad.csv"
    path.write_text('text,label\nfine,a\ngood,b\n"broken,a\nlater,b\n')
    with pytest.raises(ValueError, match=r"c_bad.csv line 4: a quoted field starts on this line and its closing quote"):
        load_labelled(path)
    path.write_text('text,label\n"multi\nline, quoted",a\nok,b\n')   # a closed quote across lines still reads
    assert load_labelled(path) == (["multi\nline, quoted", "ok"], ["a", "b"])


def test_a_too_small_vocabulary_suggests_what_the_command_line_can_do(tmp_path, capsys):
    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "s.txt", n_stories=50)
    err = one_line_error(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "262",
                          "--out", str(tmp_path / "tok")], capsys)
    assert "--vocab-size" in err and "at least" in err and "lower character_coverage" not in err
