"""`npllama train --out`: a new run goes into a new or empty folder, or a run folder of its own;
a folder of the user's files (a copied Hugging Face model, say) is refused and left as it was."""
import pytest

from npllama.cli import main
from npllama.runs import WRITER_LOCK_FILE
from npllama.train import TrainConfig, train

FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300, eval_every=0,
            checkpoint_every=0, eval_batches=1, samples=0, progress=False, steps=1)


def quiet(*_args, **_kwargs):
    pass


def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    folder = tmp_path / "hf-copy"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"the user's tokenizer")
    (folder / "config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["train", "--out", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--out" in err and "is not empty" in err and "choose a new or empty folder" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before   # not even a lock file
    assert not (tmp_path / "runs").exists()


def test_an_empty_folder_and_a_failed_start_of_a_run_are_used(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(TrainConfig(out=str(empty), **FAST), echo=quiet).step == 1
    failed = tmp_path / "failed"   # a start that stopped before its first checkpoint: settings and a tokenizer
    failed.mkdir()
    (failed / "train_config.json").write_text("{}")
    (failed / "tokenizer.model").write_bytes(b"left by the failed start")
    assert train(TrainConfig(out=str(failed), **FAST), echo=quiet).step == 1
    assert (failed / "model" / "model.safetensors").is_file() and (failed / WRITER_LOCK_FILE).is_file()


def test_a_finished_run_is_still_refused_without_resume(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), **FAST), echo=quiet)
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(out=str(out), **FAST), echo=quiet)
    assert train(TrainConfig(out=str(out), **{**FAST, "steps": 2}), resume=True, echo=quiet).step == 2


def test_a_folder_a_start_was_killed_in_is_still_npllamas(tmp_path):
    # SIGKILL while train_config.json was being written leaves only its temporary: not user files
    from npllama.runs import files_besides_locks

    run = tmp_path / "run"
    run.mkdir()
    for name in (".npllama.lock", ".train_config.json.tmp-382b2281", ".checkpoint.old-1", ".tokenizer-training.x",
                 "tokens.npy.123.tmp"):
        (run / name).write_text("")
    assert files_besides_locks(run) == []
    (run / "notes.txt").write_text("mine")
    assert files_besides_locks(run) == ["notes.txt"]


def test_a_new_start_removes_what_a_killed_start_left_on_its_way(tmp_path, monkeypatch):
    # a start killed while tokenizing leaves its partial cache (.tokens.npy.tmp-*: gigabytes for a
    # large corpus); the next start into the folder removed nothing, only a resume did
    from npllama.train import TrainConfig, train

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tokens.npy.tmp-4242").write_bytes(b"\0" * 1000)
    (out / ".log.jsonl.tmp-4242").write_text("")
    train(TrainConfig(out=str(out), steps=1, preset="stories260k", vocab_size=360, batch_size=2, seq_len=16,
                      corpus_stories=300, eval_batches=1, samples=0, progress=False), echo=lambda *a: None)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert (out / "model").is_dir()


def test_a_small_corpus_is_tokenized_without_a_bar(tmp_path, monkeypatch, capsys):
    # the README: the tokenizing bar shows past ten million characters; train asked for it always
    from npllama.train import TrainConfig, train

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    train(TrainConfig(out=str(tmp_path / "run"), steps=1, preset="stories260k", vocab_size=360, batch_size=2,
                      seq_len=16, corpus_stories=300, eval_batches=1, samples=0, progress=True),
          echo=lambda *a: None)
    assert "tokenizing" not in capsys.readouterr().err


def test_a_new_start_never_deletes_the_tokenizer_it_was_given_from_its_folder(tmp_path, monkeypatch):
    """`train --out X --tokenizer X/tokenizer.model`, X left by a failed start: the files a failed start
    derived go, but not the tokenizer given, which was read in memory and is written back only later
    (a start dying in between would have lost the user's tokenizer)."""
    import npllama.train as train_module
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    Tokenizer.train(make_default_corpus(300, seed=0), out / "tokenizer", vocab_size=360)
    given = (out / "tokenizer.model").read_bytes()
    (out / "tokenizer.vocab").write_text("derived by the failed start")

    def dies(*args, **kwargs):   # the first write after the files a failed start left are removed
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_settings", dies)
    settings = {**FAST, "vocab_size": None, "tokenizer": str(out / "tokenizer.model")}
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(out), **settings), echo=quiet)
    assert (out / "tokenizer.model").read_bytes() == given
    assert not (out / "tokenizer.vocab").exists(), "what a failed start derived still goes"
    monkeypatch.undo()
    assert train(TrainConfig(out=str(out), **settings), echo=quiet).step == 1
    assert (out / "tokenizer.model").read_bytes() == given == (out / "model" / "tokenizer.model").read_bytes()
