"""Checks that come before the slow part: an existing tokenizer is not replaced without --force,
an empty --val-data is refused before the tokenizer is trained, and a --config that repeats the
preset is not called a reshape."""
import json

import pytest

from npllama.cli import main
from npllama.config import PRESETS
from npllama.train import TrainConfig, _describe_shape


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)


def test_tokenizer_train_does_not_replace_a_tokenizer_without_force(tmp_path, capsys):
    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "s.txt", n_stories=100)
    (tmp_path / "tok.model").write_bytes(b"the user's tokenizer")
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "360", "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and "tok.model" in err
    assert (tmp_path / "tok.model").read_bytes() == b"the user's tokenizer"
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "360", "--out", str(tmp_path / "tok"),
                 "--force"]) == 0
    assert (tmp_path / "tok.model").read_bytes() != b"the user's tokenizer"


def test_data_that_cannot_be_read_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    # as --val-data is: before, the folder was made (train_config.json, a lock) and then --data read
    (tmp_path / "notepad.txt").write_bytes("Once upon a time.\r\n".encode("utf-16"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "notepad.txt"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "notepad.txt: is UTF-16 text" in err
    assert not out.exists()


def test_quick_refusals_come_before_the_corpus_is_read(tmp_path, capsys, monkeypatch):
    # a vocab size the tokenizer does not have, an --out of the user's own files: said at once, not
    # after reading a large --data (here reading it would raise)
    import npllama.data
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    Tokenizer.train(make_default_corpus(100), tmp_path / "tok", vocab_size=360)
    (tmp_path / "big.txt").write_text("Once upon a time.\n")
    monkeypatch.setattr(npllama.data, "Corpus", lambda *a, **k: pytest.fail("--data was read first"))
    assert main(["train", "--data", str(tmp_path / "big.txt"), "--tokenizer", str(tmp_path / "tok.model"),
                 "--vocab-size", "512", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "vocab" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    assert main(["train", "--data", str(tmp_path / "big.txt"), "--out", str(tmp_path / "mine"), "--no-progress"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    (tmp_path / "done" / "model").mkdir(parents=True)     # a finished run: a new start is refused
    assert main(["train", "--data", str(tmp_path / "big.txt"), "--out", str(tmp_path / "done"), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("data, val_data, where", [
    ("corpus", "corpus/test.txt", "is inside --data"),      # before: trained on, and its loss called held-out
    ("corpus/train.txt", "corpus/train.txt", "is --data itself"),
    ("corpus/train.txt", "corpus", "holds --data"),
])
def test_held_out_text_that_would_be_trained_on_is_refused(tmp_path, capsys, monkeypatch, data, val_data, where):
    (tmp_path / "corpus").mkdir()
    for name in ("train.txt", "test.txt"):
        (tmp_path / "corpus" / name).write_text("Once upon a time.\n\nThe end.\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", data, "--val-data", val_data, "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"--val-data {val_data!r} {where}" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_val_data_is_refused_before_the_tokenizer_is_trained(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    out = tmp_path / "run"
    assert main(["train", "--val-data", str(tmp_path / "empty.txt"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--val-data" in err and "empty" in err
    assert not out.exists()   # nothing made, no tokenizer trained


def test_a_config_that_repeats_the_preset_is_no_reshape(tmp_path):
    from types import SimpleNamespace

    from npllama.model_shape import new_model_config

    tokenizer = SimpleNamespace(vocab_size=512, bos_id=1, eos_id=2)   # what new_model_config reads
    (tmp_path / "tiny.json").write_text(json.dumps(PRESETS["tiny"]))
    for tc in (TrainConfig(), TrainConfig(model_config=str(tmp_path / "tiny.json"))):
        assert _describe_shape(tc, new_model_config(tc, tokenizer)).startswith("tiny: ")
    # the preset's context raised to --seq-len is the preset's own rule, not a reshape
    assert _describe_shape(TrainConfig(seq_len=512), new_model_config(TrainConfig(seq_len=512), tokenizer)
                           ).startswith("tiny: ")
    for tc in (TrainConfig(hidden_size=256), TrainConfig(model_config={"rope_theta": 500000.0}),
               TrainConfig(max_position_embeddings=1024)):
        assert _describe_shape(tc, new_model_config(tc, tokenizer)).startswith("tiny (reshaped): ")
