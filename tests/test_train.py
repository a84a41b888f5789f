"""Pre-training runs: they learn, they resume exactly, and a failed checkpoint write loses nothing."""
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from npllama import Llama
from npllama.io import train_state
from npllama.io.train_state import load_checkpoint
from npllama.runs import READER_LOCK_FILE, WRITER_LOCK_FILE, load_model_and_tokenizer, recover_checkpoint
from npllama.train import TrainConfig, TrainingError, resume_config, train

# A small, fast run: the 260K-parameter llama2.c shape on a slice of the built-in stories.
FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300,
            eval_batches=2, samples=0, progress=False, lr=5e-3)


def quiet(*_args, **_kwargs):
    pass


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    result = train(TrainConfig(out=str(out), steps=12, eval_every=6, checkpoint_every=4, **FAST), echo=quiet)
    return out, result


def test_a_run_learns_and_writes_its_folder(straight_run):
    out, result = straight_run
    steps = losses(out)
    assert [s for s, _ in steps] == list(range(1, 13))
    assert steps[-1][1] < steps[0][1] - 0.3  # the loss goes down
    assert result.val_loss is not None and result.val_loss < result.unigram_entropy + 1.0
    for path in ("model/config.json", "model/model.safetensors", "model/tokenizer.model",
                 "checkpoint/training_state.json", "checkpoint/optimizer.safetensors", "tokenizer.model"):
        assert (out / path).is_file(), path
    model, tokenizer, model_dir = load_model_and_tokenizer(out)
    assert model_dir == out / "model"
    assert tokenizer.vocab_size == model.config.vocab_size == 360


def test_resume_gives_exactly_the_losses_of_an_uninterrupted_run(straight_run, tmp_path):
    straight, _ = straight_run
    out = tmp_path / "resumed"
    config = dict(out=str(out), steps=12, eval_every=6, checkpoint_every=4, **FAST)
    first = train(TrainConfig(**config, stop_after=6), echo=quiet)
    assert first.interrupted and first.step == 6
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 6
    second = train(TrainConfig(**config), resume=True, echo=quiet)
    assert second.step == 12 and not second.interrupted
    assert losses(out) == losses(straight)  # bit-identical floats, step by step
    a = Llama.from_pretrained(straight / "model")
    b = Llama.from_pretrained(out / "model")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_a_stop_in_the_middle_of_a_step_resumes_to_the_losses_of_an_uninterrupted_run(straight_run, tmp_path,
                                                                                      monkeypatch):
    """Ctrl-C (SIGTERM, SIGHUP) while a step computes abandons it: the checkpoint is of the step
    before.  It saved the loader's position after the abandoned step's batch, so the resumed run
    skipped that batch and its losses parted from the uninterrupted run's at the next step."""
    import npllama.train as train_module

    straight, _ = straight_run
    out = tmp_path / "run"
    config = dict(out=str(out), steps=12, eval_every=6, checkpoint_every=4, **FAST)
    real_step = train_module.step_before_the_update

    def stopped_in_the_sixth_step(step, tc, accumulate, params, **kwargs):
        if step == 5:          # its batch is drawn, its update never comes
            accumulate()
            raise KeyboardInterrupt
        return real_step(step, tc, accumulate, params, **kwargs)

    monkeypatch.setattr(train_module, "step_before_the_update", stopped_in_the_sixth_step)
    result = train(TrainConfig(**config), echo=quiet)
    assert result.interrupted and result.step == 5
    monkeypatch.setattr(train_module, "step_before_the_update", real_step)
    assert train(TrainConfig(**config), resume=True, echo=quiet).step == 12
    assert losses(out) == losses(straight)


def test_a_stop_between_the_micro_batches_of_a_step_resumes_to_the_losses_of_an_uninterrupted_run(straight_run,
                                                                                                   tmp_path,
                                                                                                   monkeypatch):
    """With --grad-accum the step draws several batches: a stop after the first of them abandons the
    step, and the checkpoint holds the loader's position after the step before (none skipped)."""
    import npllama.train as train_module

    # the straight run's tokenizer, not one trained again (the time this test takes)
    tokenizer = str(straight_run[0] / "tokenizer.model")
    def config(out):
        return TrainConfig(out=str(out), steps=4, eval_every=0, checkpoint_every=0, grad_accum=2, tokenizer=tokenizer,
                           **FAST)

    train(config(tmp_path / "straight"), echo=quiet)
    real_step = train_module.step_before_the_update

    def stopped_between_micro_batches(step, tc, accumulate, params, **kwargs):
        if step == 2:
            accumulate.__self__.loader.next_batch()   # the first micro-batch drawn, then Ctrl-C
            raise KeyboardInterrupt
        return real_step(step, tc, accumulate, params, **kwargs)

    monkeypatch.setattr(train_module, "step_before_the_update", stopped_between_micro_batches)
    assert train(config(tmp_path / "run"), echo=quiet).step == 2
    monkeypatch.setattr(train_module, "step_before_the_update", real_step)
    assert train(config(tmp_path / "run"), resume=True, echo=quiet).step == 4
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")


def test_resume_after_stop_after_continues_to_the_end(tmp_path):
    """The hint printed on a --stop-after stop (`npllama train --out DIR --resume`) finishes the run:
    the saved stop_after belonged to the call that stopped, not to the resume."""
    out = tmp_path / "run"
    first = train(TrainConfig(out=str(out), steps=3, stop_after=1, eval_every=0, checkpoint_every=0, **FAST),
                  echo=quiet)
    assert first.interrupted and first.step == 1
    second = train(resume_config(out), resume=True, echo=quiet)
    assert second.step == 3 and not second.interrupted
    assert resume_config(out, stop_after=1).stop_after == 1   # given again, it applies to this call


def test_a_file_the_os_adds_to_the_checkpoint_folder_does_not_stop_the_run_saving(tmp_path):
    """A checkpoint folder opened in a file browser gains .DS_Store (Desktop.ini, ...): the run's
    next checkpoint, and the one its stop saves, replace the folder as before, not refuse it as
    "not a training checkpoint" (which crashed the run and lost the steps since the last save)."""
    out = tmp_path / "run"
    config = dict(out=str(out), steps=8, eval_every=0, checkpoint_every=2, **FAST)
    assert train(TrainConfig(**config, stop_after=3), echo=quiet).step == 3
    (out / "checkpoint" / ".DS_Store").write_bytes(b"\0")
    second = train(TrainConfig(**config, stop_after=2), resume=True, echo=quiet)   # saves at 4, then at the stop
    assert second.interrupted and second.step == 5
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 5


def test_resume_refuses_steps_below_the_checkpoints_step(straight_run, tmp_path):
    """A resume cannot end a run before the step its checkpoint has reached: refused, nothing
    rewritten (before, it said "done: step 12" and recorded steps=10)."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(straight_run[0], out)
    saved = (out / "train_config.json").read_text()
    with pytest.raises(ValueError, match=r"--steps 10 is below the step .* has reached \(12\): give --steps 12"):
        train(resume_config(out, steps=10), resume=True, echo=quiet)
    assert (out / "train_config.json").read_text() == saved


def test_resume_refuses_changed_settings(straight_run):
    straight, _ = straight_run
    with pytest.raises(ValueError, match="batch_size"):
        train(TrainConfig(out=str(straight), steps=12, **{**FAST, "batch_size": 2}), resume=True, echo=quiet)


def test_a_new_run_refuses_to_overwrite_an_old_one(straight_run):
    straight, _ = straight_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(out=str(straight), steps=12, **FAST), echo=quiet)


def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = dict(out=str(out), steps=8, eval_every=0, checkpoint_every=4, **FAST)
    train(TrainConfig(**config, stop_after=4), echo=quiet)
    before = (out / "checkpoint" / "optimizer.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_state, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(TrainConfig(**config), resume=True, echo=quiet)
    monkeypatch.undo()
    assert (out / "checkpoint" / "optimizer.safetensors").read_bytes() == before
    model, optimizer_state, state = load_checkpoint(recover_checkpoint(out))
    assert state["step"] == 4 and optimizer_state["step"] == 4
    locks = {WRITER_LOCK_FILE, READER_LOCK_FILE}  # kept on purpose (npllama/runs.py)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name not in locks]  # no temporaries


def test_an_interrupted_replace_is_recovered_from_its_backup(straight_run, tmp_path):
    import shutil

    straight, _ = straight_run
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    # The state between atomic_directory's two renames: old checkpoint under its backup name.
    from npllama.io.atomic import _OLD_TAG

    (run / "checkpoint").rename(run / f".checkpoint{_OLD_TAG}1")
    assert recover_checkpoint(run) == run / "checkpoint"
    assert json.loads((run / "checkpoint" / "training_state.json").read_text())["step"] == 12


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = dict(out=str(out), steps=6, eval_every=0, checkpoint_every=2, **FAST)
    train(TrainConfig(**config, stop_after=2), echo=quiet)
    real = Llama.loss_and_grads

    def exploding(self, tokens, targets, *args, **kwargs):
        loss, grads = real(self, tokens, targets, *args, **kwargs)
        grads["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
        return loss, grads

    monkeypatch.setattr(Llama, "loss_and_grads", exploding)
    with pytest.raises(TrainingError, match=r"step 3: the gradient of model\.layers\.1\.mlp\.up_proj\.weight "
                                            r"is not finite.*--lr.*--skip-nonfinite"):
        train(TrainConfig(**config), resume=True, echo=quiet)
    _, optimizer_state, state = load_checkpoint(out / "checkpoint")
    assert state["step"] == 2
    assert all(np.isfinite(m).all() for m in optimizer_state["m"].values())


def test_skip_nonfinite_skips_the_bad_batch(tmp_path, monkeypatch):
    real = Llama.loss_and_grads
    calls = {"n": 0}

    def sometimes_nan(self, tokens, targets, *args, **kwargs):
        calls["n"] += 1
        loss, grads = real(self, tokens, targets, *args, **kwargs)
        return (float("nan") if calls["n"] == 2 else loss), grads

    monkeypatch.setattr(Llama, "loss_and_grads", sometimes_nan)
    out = tmp_path / "run"
    # threads=1: one call a step, as the count assumes (without it, a process that had not yet
    # measured this shape's thread count made its 2nd call inside the measurement, and failed)
    result = train(TrainConfig(out=str(out), steps=3, eval_every=0, checkpoint_every=0, skip_nonfinite=True,
                               **{**FAST, "threads": 1}), echo=quiet)
    assert result.step == 3
    log = (out / "log.jsonl").read_text()
    assert "skipped" in log and "the loss is nan" in log


def test_a_stop_after_a_skipped_batch_saves_the_loader_past_it(tmp_path, monkeypatch):
    """A batch skipped by --skip-nonfinite was drawn: a stop in the next step saves the loader's
    position after it (one step and one skipped batch: two batches), not before it."""
    import npllama.train as train_module

    real_loss, real_step = Llama.loss_and_grads, train_module.step_before_the_update
    calls = {"loss": 0, "step": 0}

    def nan_the_second_time(self, tokens, targets, *args, **kwargs):
        calls["loss"] += 1
        loss, grads = real_loss(self, tokens, targets, *args, **kwargs)
        return (float("nan") if calls["loss"] == 2 else loss), grads

    def stopped_in_the_third(step, tc, accumulate, params, **kwargs):
        calls["step"] += 1
        if calls["step"] == 3:   # the step after the skipped batch: drawn, never updated
            accumulate()
            raise KeyboardInterrupt
        return real_step(step, tc, accumulate, params, **kwargs)

    monkeypatch.setattr(Llama, "loss_and_grads", nan_the_second_time)
    monkeypatch.setattr(train_module, "step_before_the_update", stopped_in_the_third)
    out = tmp_path / "run"
    result = train(TrainConfig(out=str(out), steps=4, eval_every=0, checkpoint_every=0, skip_nonfinite=True,
                               **{**FAST, "threads": 1}), echo=quiet)
    assert result.interrupted and result.step == 1
    _, _, state = load_checkpoint(out / "checkpoint")
    assert (state["step"], state["loader"]["epoch"], state["loader"]["batch_index"]) == (1, 0, 2)


def test_training_on_a_users_text_file(tmp_path):
    corpus = tmp_path / "mine.txt"
    lines = [f"The {c} cat sat on the {m} mat number {i}." for i, (c, m) in
             enumerate((c, m) for c in ("red", "blue", "green", "small") for m in ("big", "old", "new"))]
    corpus.write_text("\n\n".join(lines * 30))
    out = tmp_path / "run"
    # pathlib.Path settings (a TypeError before): kept as the str they spell, as the saved settings are
    config = TrainConfig(out=out, data=corpus, steps=4, eval_every=0, checkpoint_every=0, **{**FAST, "vocab_size": 320})
    assert (config.out, config.data) == (str(out), str(corpus))
    result = train(config, echo=quiet)
    assert result.step == 4
    model, tokenizer, _ = load_model_and_tokenizer(out)
    assert tokenizer.decode(tokenizer.encode("The red cat sat.")) == "The red cat sat."


def test_resume_refuses_a_data_file_changed_since_the_checkpoint(tmp_path):
    """--resume compared only --data's path: text edited since the checkpoint (the same number of
    windows, so the loader's check passed) was trained on without a word, and the resumed run
    was no longer the one an uninterrupted run would have been.  The tokens' digest, kept in
    the checkpoint, now refuses it, saying which text changed; put back, the run resumes."""
    corpus = tmp_path / "mine.txt"
    lines = [f"The {c} cat sat on the {m} mat number {i}." for i, (c, m) in
             enumerate((c, m) for c in ("red", "blue", "green", "small") for m in ("big", "old", "new"))]
    original = "\n\n".join(lines * 30)
    corpus.write_text(original)
    out = tmp_path / "my run"       # a space: the command the refusal suggests is quoted for the shell
    config = TrainConfig(out=str(out), data=str(corpus), steps=2, stop_after=1, eval_every=0, checkpoint_every=0,
                         **{**FAST, "vocab_size": 320})
    assert train(config, echo=quiet).interrupted
    for edited, changed in ((original.replace("number 0.", "number 1.", 1), r"the training text \(--data '.*mine.txt'\)"),
                            (original[:original.rindex("number 11.")] + "number 10.",
                             r"the held-out text \(the end of --data '.*mine.txt'\)")):
        corpus.write_text(edited)   # as many tokens as before: only the digest tells
        with pytest.raises(ValueError, match=changed + r" has changed since the checkpoint \(.* but other ones\)") as refused:
            train(resume_config(out), resume=True, echo=quiet)
        suggested = shlex.split(str(refused.value).split("`")[1])
        assert Path(suggested[suggested.index("--init-from") + 1]).parent.parent == out, suggested
    corpus.write_text(original)
    assert train(resume_config(out), resume=True, echo=quiet).step == 2


@pytest.mark.parametrize("held_out", ["the end of --data", "--val-data"])
def test_a_resume_on_changed_text_tokenizes_and_digests_it_once_before_refusing(tmp_path, monkeypatch, held_out):
    """Edited --data was tokenized and digested twice before the refusal: tokens that differed from
    the checkpoint's were made again from the text in case the token cache was damaged, though they
    had just been made from the text, not read from a cache (and with --val-data the unchanged
    held-out text was made again too).  Only a stream read from a cache is made again."""
    import npllama.data

    lines = [f"The {c} cat sat on the {m} mat number {i}." for i, (c, m) in
             enumerate((c, m) for c in ("red", "blue", "green", "small") for m in ("big", "old", "new"))]
    corpus, val = tmp_path / "mine.txt", tmp_path / "val.txt"
    corpus.write_text("\n\n".join(lines * 30))
    val.write_text("\n\n".join(lines[::-1] * 5))
    out = tmp_path / "run"
    assert train(TrainConfig(out=str(out), data=str(corpus), val_data=str(val) if held_out == "--val-data" else None,
                             steps=2, stop_after=1, eval_every=0, checkpoint_every=0, **{**FAST, "vocab_size": 320}),
                 echo=quiet).interrupted
    corpus.write_text("\n\n".join(lines[::-1] * 30))   # other training text
    calls = {"tokenized": 0, "digested": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(npllama.data, "_encode_stream", counted("tokenized", npllama.data._encode_stream))
    monkeypatch.setattr(npllama.data, "token_digest", counted("digested", npllama.data.token_digest))
    with pytest.raises(ValueError, match=r"the training text \(--data .*\) has changed since the checkpoint"):
        train(resume_config(out), resume=True, echo=quiet)
    # the new training text once; the held-out text, unchanged, read from its cache; each part digested once
    assert calls == {"tokenized": 1, "digested": 2}


@pytest.mark.parametrize("held_out", ["the end of --data", "--val-data"])
def test_a_resume_refused_for_changed_text_leaves_the_run_folder_as_it_was(tmp_path, monkeypatch, held_out):
    """A resume refused because --data changed wrote the edited text's tokens over the run's token
    cache (tokens.npy): the folder's cache no longer matched its checkpoint, and putting the text
    back cost a tokenization.  Now nothing in the folder changes, and the text put back resumes
    from the cache."""
    import npllama.data
    from npllama.runs import READER_LOCK_FILE, WRITER_LOCK_FILE

    lines = [f"The {c} cat sat on the {m} mat number {i}." for i, (c, m) in
             enumerate((c, m) for c in ("red", "blue", "green", "small") for m in ("big", "old", "new"))]
    corpus, val = tmp_path / "mine.txt", tmp_path / "val.txt"
    original = "\n\n".join(lines * 30)
    corpus.write_text(original)
    val.write_text("\n\n".join(lines[::-1] * 5))
    out = tmp_path / "run"
    assert train(TrainConfig(out=str(out), data=str(corpus), val_data=str(val) if held_out == "--val-data" else None,
                             steps=2, stop_after=1, eval_every=0, checkpoint_every=0, **{**FAST, "vocab_size": 320}),
                 echo=quiet).interrupted

    def folder():   # every file and its bytes and mtime, but the locks (each run takes them)
        return {str(path.relative_to(out)): (path.stat().st_mtime_ns, path.read_bytes())
                for path in sorted(out.rglob("*")) if path.is_file() and path.name not in (WRITER_LOCK_FILE,
                                                                                            READER_LOCK_FILE)}

    before = folder()
    assert "tokens.npy" in before
    corpus.write_text("\n\n".join(lines[::-1] * 30))   # other training text
    with pytest.raises(ValueError, match=r"the training text \(--data .*\) has changed since the checkpoint"):
        train(resume_config(out), resume=True, echo=quiet)
    assert folder() == before
    corpus.write_text(original)
    tokenized = []
    encode = npllama.data._encode_stream
    monkeypatch.setattr(npllama.data, "_encode_stream", lambda *args: tokenized.append(1) or encode(*args))
    assert train(resume_config(out), resume=True, echo=quiet).step == 2
    assert not tokenized   # the run's caches still hold its text's tokens


def test_a_run_moved_with_its_data_resumes_given_the_datas_new_path(tmp_path, monkeypatch, capsys):
    """The settings record --data absolute: a run folder moved (or copied to another machine) with its
    text named a file that is no longer there, and giving its new path was refused as a changed
    setting ("start a new run"): the run could not be resumed at all.  A saved path that no longer
    exists may be given anew; the checkpoint's digest still refuses other text."""
    import shutil

    from npllama.cli import main

    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    lines = [f"The {c} cat sat on the {m} mat number {i}." for i, (c, m) in
             enumerate((c, m) for c in ("red", "blue", "green", "small") for m in ("big", "old", "new"))]
    (before / "mine.txt").write_text("\n\n".join(lines * 30))
    monkeypatch.chdir(before)
    config = TrainConfig(out="run", data="mine.txt", steps=2, stop_after=1, eval_every=0, checkpoint_every=0,
                         **{**FAST, "vocab_size": 320})
    assert train(config, echo=quiet).interrupted
    for name in ("mine.txt", "run"):
        shutil.move(before / name, after / name)
    monkeypatch.chdir(after)
    capsys.readouterr()
    assert main(["train", "--out", "run", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(before / "mine.txt") in err and "if it was moved, give its new path with --data" in err
    assert len(err.splitlines()) == 1
    (after / "other.txt").write_text("\n\n".join(lines[::-1] * 30))   # other text is still refused
    assert main(["train", "--out", "run", "--resume", "--data", "other.txt", "--no-progress"]) == 2
    assert "has changed since the checkpoint" in capsys.readouterr().err
    assert main(["train", "--out", "run", "--resume", "--data", "mine.txt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"data {str(before / 'mine.txt')!r} -> " in out, out
    assert json.loads((after / "run" / "train_config.json").read_text())["data"] == str(after / "mine.txt")


def test_a_run_moved_without_its_tokenizer_file_resumes_from_its_own_copy(straight_run, tmp_path, capsys):
    """A run started with --tokenizer, moved (or its tokenizer file moved or deleted), asked for that
    file again on --resume ("if it was moved, give its new path with --tokenizer"), though a resume
    from a checkpoint reads the copy the run folder holds (checkpoint/model/tokenizer.model), never
    the file.  A resume that reads it -- one of a run with no checkpoint yet, which starts again from
    step 0 -- still asks for it, saying where the settings recorded it."""
    import shutil

    from npllama.cli import main

    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    shutil.copy(straight_run[0] / "tokenizer.model", before / "tok.model")
    config = TrainConfig(out=str(before / "run"), tokenizer=str(before / "tok.model"), steps=2, stop_after=1,
                         eval_every=0, checkpoint_every=0, **{**FAST, "vocab_size": None})
    assert train(config, echo=quiet).interrupted
    for name in ("tok.model", "run"):
        shutil.move(before / name, after / name)
    capsys.readouterr()
    assert main(["train", "--out", str(after / "run"), "--resume", "--no-progress"]) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().out
    recorded = json.loads((after / "run" / "train_config.json").read_text())["tokenizer"]
    assert recorded == str(before / "tok.model")   # what the run was made with, not changed by the resume

    fresh = after / "fresh"   # a run killed before its first checkpoint: its settings, and the file is read
    fresh.mkdir()
    shutil.copy(after / "run" / "train_config.json", fresh)
    assert main(["train", "--out", str(fresh), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--tokenizer {str(before / 'tok.model')!r} does not exist" in err, err
    assert "if it was moved, give its new path with --tokenizer" in err and len(err.splitlines()) == 1, err
    assert main(["train", "--out", str(fresh), "--resume", "--tokenizer", str(after / "tok.model"),
                 "--no-progress"]) == 0, capsys.readouterr().err


def test_a_run_with_no_checkpoint_whose_init_from_folder_moved_is_asked_for_its_new_path(straight_run, tmp_path,
                                                                                          capsys):
    """A run killed before its first checkpoint reads its --init-from folder again on --resume.  Moved
    (with the run), it said only "--init-from '...' is not a folder", without the "if it was moved,
    give its new path" that a moved --data or --tokenizer gets; given anew, the run starts."""
    import shutil

    from npllama.cli import main
    from npllama.resuming import write_settings
    from npllama.train import CONFIG_FILE

    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(straight_run[0] / "model", before / "base")
    fresh = before / "run"   # a run killed before its first checkpoint: its settings only
    config = TrainConfig(out=str(fresh), init_from=str(before / "base"), steps=1, eval_every=0,
                         checkpoint_every=0, **{**FAST, "vocab_size": None})
    fresh.mkdir()
    write_settings(fresh, config, CONFIG_FILE)
    shutil.move(before, after)
    capsys.readouterr()
    assert main(["train", "--out", str(after / "run"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--init-from {str(before / 'base')!r} does not exist" in err, err
    assert "if it was moved, give its new path with --init-from" in err and len(err.splitlines()) == 1, err
    assert main(["train", "--out", str(after / "run"), "--resume", "--init-from", str(after / "base"),
                 "--no-progress"]) == 0, capsys.readouterr().err


def test_the_resume_command_a_stop_prints_runs_as_printed_with_a_space_in_the_folder(tmp_path, capsys):
    """`continue with `npllama train --out my run --resume`` split the folder in two words: the
    command printed (by a stop in the steps, and outside them) is quoted for the shell."""
    import shlex

    from npllama.cli import main

    out, corpus = tmp_path / "my run", tmp_path / "mine.txt"
    corpus.write_text("\n\n".join(f"The {c} cat sat on the {m} mat." for c in ("red", "blue", "green", "small")
                                   for m in ("big", "old", "new")) * 30)
    argv = ["train", "--out", str(out), "--data", str(corpus), "--preset", "stories260k", "--vocab-size", "320",
            "--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--samples", "0", "--steps", "2",
            "--no-progress"]
    assert main([*argv, "--stop-after", "1"]) == 0
    printed = capsys.readouterr().out.split("continue with `")[1].split("`")[0]
    assert printed == f"npllama train --out {shlex.quote(str(out))} --resume"
    assert main([*shlex.split(printed)[1:], "--no-progress"]) == 0


def test_a_damaged_token_cache_is_made_again_not_taken_for_changed_text(straight_run, tmp_path):
    """tokens.npy is keyed by the text and the tokenizer, not checked against its own contents: a
    damaged one (its key intact) gave other tokens, and the resume was refused as "the training
    text (the built-in stories) has changed" -- text that cannot change, with advice to start a new
    run.  The tokens made again from the text decide: the cache is rewritten and the run resumes,
    with the losses of the uninterrupted run."""
    straight, _ = straight_run
    out = tmp_path / "run"
    config = dict(out=str(out), steps=12, eval_every=6, checkpoint_every=4, **FAST)
    assert train(TrainConfig(**config, stop_after=6), echo=quiet).interrupted
    cached = np.load(out / "tokens.npy", mmap_mode="r+", allow_pickle=False)
    cached[100] = (cached[100] + 1) % 360
    cached.flush()
    del cached
    lines = []
    assert train(TrainConfig(**config), resume=True, echo=lines.append).step == 12
    assert losses(out) == losses(straight)
    assert any("token cache" in line and "tokens.npy" in line for line in lines), lines


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps must be a positive integer"),
    ("batch_size", -1, "batch_size"),
    ("preset", "huge", "unknown preset"),
    ("lr", 0.0, "lr must be a positive number"),
    ("min_lr", 1.0, "min_lr"),
    ("dtype", "float16", "dtype"),
    ("warmup_steps", 50, "warmup_steps"),
])
def test_bad_settings_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"steps": 10, field: value})


def test_an_evaluation_shows_its_progress(tmp_path, monkeypatch):
    """--eval-batches 0 scores every window held out, minutes on a large corpus, during which the
    step bar stood still: the evaluation has a bar of its own (shown after a second, then gone)."""
    import tqdm.auto

    bars = []

    class Recorded(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            bars.append((kwargs.get("desc"), kwargs.get("total", len(args[0]) if args else None), kwargs.get("delay")))

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    train(TrainConfig(out=str(tmp_path / "run"), steps=1, eval_every=0, checkpoint_every=0,
                      **{**FAST, "progress": True, "eval_batches": 0}), echo=quiet)
    validation = [bar for bar in bars if "validation" in (bar[0] or "")]
    assert [desc for desc, _, _ in validation] == ["step 1: validation"], bars
    assert all(total > 2 and delay == 1 for _, total, delay in validation), validation   # every batch held out


def test_the_evaluation_bar_stays_out_of_a_redirected_log(tmp_path, monkeypatch, capfd):
    """The validation bar sits below the step bar: outside a terminal (stderr redirected to a log)
    tqdm drew it with cursor-up escapes (ESC [A) and blanked it with spaces, even with the 30 s
    redraw interval `npllama` sets there, once a pass took longer than that.  It is shown only on
    a terminal; the log has the "validation loss" line."""
    import time

    from npllama.parallel import BatchSplitter

    scored = BatchSplitter.loss

    def slow_loss(self, *args, **kwargs):   # a pass of a large held-out text, shortened
        time.sleep(0.3)
        return scored(self, *args, **kwargs)

    monkeypatch.setattr(BatchSplitter, "loss", slow_loss)
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")   # a pass past the redraw interval
    train(TrainConfig(out=str(tmp_path / "run"), steps=1, eval_every=0, checkpoint_every=0,
                      **{**FAST, "progress": True, "eval_batches": 6, "threads": 1}), echo=quiet)
    out, err = capfd.readouterr()
    assert "\x1b[A" not in err and "validation:" not in err, repr(err)
    assert "step 1: validation loss" in out, repr(out)   # what the log keeps of the pass


def test_a_corpus_smaller_than_one_batch_is_explained(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("Just a few words here and there, not much at all. " * 40)
    with pytest.raises(ValueError, match="smaller --batch-size or --seq-len"):
        train(TrainConfig(out=str(tmp_path / "run"), data=str(corpus), steps=2,
                          **{**FAST, "vocab_size": 300, "batch_size": 64, "seq_len": 64}), echo=quiet)


def test_masked_lm_objective_trains_and_resumes_exactly(tmp_path):
    config = dict(steps=8, eval_every=4, checkpoint_every=4, objective="mlm", **FAST)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **config), echo=quiet)
    assert straight.samples == []  # a bidirectional model does not generate
    mlm_losses = losses(tmp_path / "a")
    assert mlm_losses[-1][1] < mlm_losses[0][1]
    train(TrainConfig(out=str(tmp_path / "b"), stop_after=4, **config), echo=quiet)
    with pytest.raises(ValueError, match="objective"):
        train(TrainConfig(out=str(tmp_path / "b"), **{**config, "objective": "causal"}), resume=True, echo=quiet)
    train(TrainConfig(out=str(tmp_path / "b"), **config), resume=True, echo=quiet)
    assert losses(tmp_path / "b") == mlm_losses
    causal = train(TrainConfig(out=str(tmp_path / "c"), **{**config, "objective": "causal"}), echo=quiet)
    assert losses(tmp_path / "c") != mlm_losses and causal.step == 8


def test_masked_lm_masks_are_drawn_from_the_runs_seed(tmp_path, monkeypatch):
    # --seed reaches the masks as it reaches the weights and the batch order (a constant there
    # passed every other test: masks still varied by batch and resumed exactly)
    import npllama.objectives as objectives

    seen, real = [], objectives.MaskedLMBatches.for_tokenizer
    monkeypatch.setattr(objectives.MaskedLMBatches, "for_tokenizer",
                        staticmethod(lambda loader, tokenizer, seed: seen.append(seed) or real(loader, tokenizer, seed)))
    train(TrainConfig(out=str(tmp_path / "run"), steps=1, objective="mlm", seed=7, **FAST), echo=quiet)
    assert seen == [7, 7]   # the training batches' masks, then the held-out ones (objectives.masked_held_out)


def test_train_help_names_everything_the_seed_draws(capsys):
    """--seed draws the masks (above) and the end-of-run samples' seeds (sample_seed(seed, i))
    besides the weights and the batch order: --help names them all."""
    from npllama.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    seed_help = " ".join(capsys.readouterr().out.split()).split("--seed SEED seed", 1)[1].split("--threads", 1)[0]
    for what in ("initial weights", "batch order", "masks", "samples"):
        assert what in seed_help, what


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective must be one of .causal., .mlm., got .nsp."):
        TrainConfig(objective="nsp")


@pytest.mark.parametrize("threads", [1, 3])
def test_the_update_runs_on_every_core_whether_the_batch_is_split_or_not(tmp_path, monkeypatch, threads):
    """--threads 1 (one unsplit batch, BLAS on every core) still shares AdamW's update out over
    the process's cores; a split over more threads than that uses as many; and the optimizer's
    threads end with the run."""
    import npllama.optim
    import npllama.parallel

    monkeypatch.setattr(npllama.parallel, "default_workers", lambda: 2)   # a 2-core process, whatever this machine
    counts_at_steps, optimizers = [], []
    share_out = npllama.optim._Optimizer._on_shares

    def recording(self, work):
        counts_at_steps.append(self.threads)
        optimizers.append(self)
        return share_out(self, work)

    monkeypatch.setattr(npllama.optim._Optimizer, "_on_shares", recording)
    train(TrainConfig(out=str(tmp_path / "run"), steps=3, threads=threads, **FAST), echo=quiet)
    assert counts_at_steps and set(counts_at_steps) == {max(threads, 2)}, counts_at_steps
    assert optimizers[-1].threads == 1 and optimizers[-1]._executor is None


def test_grad_accum_2_of_4_windows_is_the_step_of_one_batch_of_8(tmp_path):
    """The same 8 windows, as one batch or as two micro-batches of 4: the same updates (float64,
    the NumPy reference, to round-off)."""
    from npllama import use_backend

    config = dict(FAST, steps=2, eval_every=0, checkpoint_every=0, dtype="float64", threads=1)
    with use_backend("numpy"):
        train(TrainConfig(out=str(tmp_path / "one"), **{**config, "batch_size": 8}), echo=quiet)
        train(TrainConfig(out=str(tmp_path / "two"), **{**config, "batch_size": 4, "grad_accum": 2}), echo=quiet)
    a, b = (Llama.from_pretrained(tmp_path / name / "model", dtype=np.float64) for name in ("one", "two"))
    for name in a.params:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=0, atol=1e-12, err_msg=name)
    (steps_one, loss_one), (steps_two, loss_two) = (zip(*losses(tmp_path / name)) for name in ("one", "two"))
    assert steps_one == steps_two and loss_one == pytest.approx(loss_two, rel=1e-12)


@pytest.mark.parametrize("parts", [2, 3])
def test_grad_accum_weights_micro_batches_by_their_counted_targets(parts):
    """Micro-batches with different numbers of -100 targets (--objective mlm masks 15% of each at
    random): the accumulated loss and gradients are those of the whole batch, not a mean of means.
    Two micro-batches add once; a third adds to a sum that already holds their weights."""
    import types

    from npllama import LlamaConfig, use_backend
    from npllama.parallel import BatchSplitter
    from npllama.train import _Loop

    model = Llama(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16),
                  seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, 50, (2 * parts, 8)), rng.integers(0, 50, (2 * parts, 8))
    targets[:2, 1:] = -100   # the micro-batches count 2, 16 (and 13) targets
    targets[4:5, :3] = -100
    batches = iter([(tokens[i:i + 2], targets[i:i + 2]) for i in range(0, 2 * parts, 2)])
    loop = types.SimpleNamespace(tc=types.SimpleNamespace(grad_accum=parts), splitter=BatchSplitter(1),
                                 loader=types.SimpleNamespace(next_batch=lambda: next(batches)),
                                 loss_and_grads=model.loss_and_grads)
    with use_backend("numpy"):
        loss, grads = _Loop.accumulate(loop)
        whole_loss, whole_grads = model.loss_and_grads(tokens, targets)
    assert loss == pytest.approx(whole_loss, rel=1e-13)
    for name, g in whole_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-10, atol=1e-14, err_msg=name)


def test_the_end_of_run_samples_are_seeded_as_generate_num_samples(small_model_dir, monkeypatch):
    """Sample i of a run seeded S uses sample_seed(S, i) (one rule with --num-samples): S + i made
    the second sample of seed 1 the first of seed 2."""
    import npllama.generate
    from npllama.generate import sample_seed
    from npllama.train import _print_samples

    seeds, real = [], npllama.generate.generate
    monkeypatch.setattr(npllama.generate, "generate", lambda *a, **kw: seeds.append(kw["seed"]) or real(*a, **kw))
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    texts = _print_samples(model, tokenizer, TrainConfig(seed=1, samples=3, sample_tokens=2), lambda line: None)
    assert len(texts) == 3 and seeds == [1, sample_seed(1, 1), sample_seed(1, 2)]


def test_the_end_of_run_samples_stop_at_every_end_id_of_the_config(small_model_dir, monkeypatch):
    """A LLaMA-3 base lists several end ids in config.json's eos_token_id (end of text, end of turn):
    the samples stop at any of them, as generate and chat do, not only at the tokenizer's </s>."""
    import npllama.generate
    from npllama.generate import end_ids
    from npllama.train import _print_samples

    stops, real = [], npllama.generate.generate
    monkeypatch.setattr(npllama.generate, "generate", lambda *a, **kw: stops.append(kw["eos_id"]) or real(*a, **kw))
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    model.config.eos_token_id = [tokenizer.eos_id, 5]
    _print_samples(model, tokenizer, TrainConfig(seed=1, samples=1, sample_tokens=2), lambda line: None)
    assert stops == [end_ids(model, tokenizer)] and set(stops[0]) == {tokenizer.eos_id, 5}


@pytest.mark.parametrize("objective", ["causal", "mlm"])
def test_final_line_names_the_unit_the_loss_plot_names(tmp_path, objective):
    # Before: the "done:" line said "validation loss ... nats/token" for --objective mlm too, whose
    # loss is a mean over the masked tokens alone (the plot of the same run said so)
    from npllama import viz

    lines = []
    run = tmp_path / "run"
    result = train(TrainConfig(out=str(run), steps=1, objective=objective, **FAST), echo=lines.append)
    done = next(line for line in lines if line.startswith("done:"))
    label = viz.loss_axis_label(run)
    unit = label[label.index("(") + 1:label.rindex(")")]
    assert unit.startswith("nats per ") and (unit == "nats per masked token") == (objective == "mlm"), label
    assert f"validation loss {result.val_loss:.3f} {unit} (" in done, done
