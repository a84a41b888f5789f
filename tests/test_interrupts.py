"""npllama/interrupts.py: stop signals held while a block runs and delivered after it; SIGTERM and
SIGHUP raise like Ctrl-C where asked; a signal the process ignores stays ignored."""
import os
import signal

import pytest

from npllama.interrupts import Interrupted, deferred_stop_signals, stop_signals_interrupt


def test_a_signal_inside_a_deferred_block_arrives_when_the_outermost_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop_signals():
            with deferred_stop_signals():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("inner")
            done.append("outer")  # still inside the outer block: held
    assert done == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_held_signal_is_delivered_even_when_the_block_raised():
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own error")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_raise_interrupted_like_ctrl_c(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt) as info:
        with stop_signals_interrupt():
            os.kill(os.getpid(), signum)  # the handler runs as soon as kill returns
    assert isinstance(info.value, Interrupted) and info.value.signum == signum
    assert signal.getsignal(signum) == before


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_signals_interrupt(), deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# ----- npllama train stopped outside its steps: the last line says what the folder holds ----------

def tiny_train(tmp_path, monkeypatch, steps: int, *flags: str):
    """(out, argv): a `npllama train` of a few seconds on a corpus of its own, into tmp_path/run."""
    from npllama.corpus import make_default_corpus

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    out, data = tmp_path / "run", tmp_path / "stories.txt"
    data.write_text("\n\n".join(make_default_corpus(300)), encoding="utf-8")
    return out, ["train", "--out", str(out), "--data", str(data), "--preset", "stories260k", "--vocab-size", "360",
                 "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1", "--samples", "0",
                 "--steps", str(steps), "--no-progress", *flags]


def test_a_train_stopped_before_its_first_step_says_what_is_left(tmp_path, monkeypatch, capsys):
    # the steps themselves stop with a checkpoint and a line; before them (tokenizer, data) there
    # is nothing to resume, and after a --resume started there is the untouched checkpoint
    import npllama.train
    from npllama.cli import main

    out, argv = tiny_train(tmp_path, monkeypatch, 2)
    real = npllama.train._load_corpus

    def ctrl_c(tc):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(npllama.train, "_load_corpus", ctrl_c)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == ("npllama train: interrupted: before the first step, so nothing "
                                               "was trained; the same command starts the run again")
    monkeypatch.setattr(npllama.train, "_load_corpus", real)
    assert main([*argv, "--stop-after", "1"]) == 0             # a checkpoint at step 1
    monkeypatch.setattr(npllama.train, "_load_corpus", ctrl_c)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert "the checkpoint in" in err and f"npllama train --out {out} --resume" in err, err


def test_a_fine_tune_stopped_before_its_first_step_says_what_is_left(small_model_dir, tmp_path, monkeypatch,
                                                                      capsys):
    # it said only "npllama finetune: interrupted"; the same command, or --resume, starts it from step 0
    import npllama.finetune
    from npllama.cli import main

    out = tmp_path / "run"
    argv = ["finetune", "classify", "--base", str(small_model_dir), "--out", str(out), "--steps", "2",
            "--batch-size", "4", "--max-len", "16", "--no-progress", "--backend", "numpy"]
    real = npllama.finetune.run_steps

    def ctrl_c(*_args, **_kwargs):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(npllama.finetune, "run_steps", ctrl_c)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    resume = f"npllama finetune classify --out {out} --resume"
    assert "before the first step" in err and resume in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr(npllama.finetune, "run_steps", real)
    assert main(resume.split()[1:] + ["--no-progress", "--backend", "numpy"]) == 0
    # a resume stopped before its first step: the checkpoint is as it was
    monkeypatch.setattr(npllama.finetune, "run_steps", ctrl_c)
    capsys.readouterr()
    assert main([*resume.split()[1:], "--steps", "3", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert "the checkpoint in" in err and resume in err, err


def test_a_train_stopped_after_its_last_step_keeps_that_step(tmp_path, monkeypatch, capsys):
    # a SIGTERM that landed between the last step and the final checkpoint left the checkpoint of
    # the last --checkpoint-every (step 2 here), so a resume trained the steps after it again, and
    # the line said the checkpoint "is as it was"
    import json

    import npllama.train
    from npllama.cli import main

    out, argv = tiny_train(tmp_path, monkeypatch, 3, "--checkpoint-every", "2", "--threads", "1", "--backend", "numpy")
    real_close = npllama.train._Loop.close

    def close_then_sigterm(loop):   # the loop's clean-up after its last step, before the final checkpoint
        real_close(loop)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(npllama.train._Loop, "close", close_then_sigterm)
    assert main(argv) == 128 + signal.SIGTERM
    said = capsys.readouterr()
    assert f"stopped by SIGTERM: checkpoint saved at step 3 in {out / 'checkpoint'}" in said.out + said.err, said
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 3
    assert not (out / "model").exists()   # not finished: the resume writes it

    monkeypatch.setattr(npllama.train._Loop, "close", real_close)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"resuming {out} at step 3" in said and "done: step 3" in said, said
    logged_steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
                    if "loss" in json.loads(line)]
    assert logged_steps == [1, 2, 3] and (out / "model" / "model.safetensors").is_file()


def test_a_stop_signal_during_a_checkpoint_lets_it_finish_and_saves_it_once(tmp_path, monkeypatch, capsys):
    # Before: the signal, held while the checkpoint was written, was delivered before the loop noted
    # the step as saved, so the stop wrote the same checkpoint a second time (minutes for a large
    # model, and a second chance for a full disk to fail) -- now for the final one as well
    import npllama.io.train_state
    from npllama.cli import main

    out, argv = tiny_train(tmp_path, monkeypatch, 3, "--threads", "1", "--backend", "numpy")
    real_save, saved = npllama.io.train_state.save_checkpoint, []

    def save_during_a_sigterm(path, *args, **kwargs):
        saved.append(args[2]["step"])
        if len(saved) == 1:
            signal.raise_signal(signal.SIGTERM)   # held until the checkpoint is written
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(npllama.io.train_state, "save_checkpoint", save_during_a_sigterm)
    assert main(argv) == 128 + signal.SIGTERM
    said = capsys.readouterr()
    assert f"stopped by SIGTERM: checkpoint saved at step 3 in {out / 'checkpoint'}" in said.out + said.err, said
    assert saved == [3]
    assert not (out / "model").exists()
