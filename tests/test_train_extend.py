"""Extending a finished run (`npllama train --out DIR --resume --steps MORE`) and resuming from Python,
as a user with their own text does them."""
import json

import pytest

from npllama.corpus import make_default_corpus
from npllama.optim import cosine_with_warmup
from npllama.train import TrainConfig, resume_config, train

TINY = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, eval_every=0, eval_batches=2,
            checkpoint_every=0, samples=0, progress=False, threads=1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extend")
    data = folder / "mine.txt"
    data.write_text("\n\n".join(make_default_corpus(60, seed=3)), encoding="utf-8")
    run = folder / "run"
    train(TrainConfig(data=str(data), out=str(run), steps=6, **TINY), echo=lambda *_: None)
    return run


def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def logged_lr(run, step):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return next(r["lr"] for r in records if r.get("step") == step and "lr" in r)


@pytest.mark.parametrize("changes", [dict(steps=12), dict(steps=12, lr=1e-3), dict(warmup_steps=2, steps=8)])
def test_a_resume_that_moves_the_schedule_says_where_the_learning_rate_goes(finished_run, tmp_path, monkeypatch,
                                                                            changes):
    monkeypatch.setenv("NPLLAMA_BACKEND", "numpy")
    run = copy_of(finished_run, tmp_path)
    said = []
    tc = resume_config(run, **changes)
    train(tc, resume=True, echo=said.append)
    before, after = logged_lr(run, 6), logged_lr(run, 7)
    # the step after the checkpoint runs on the new schedule, from where that schedule is at step 6
    assert after == pytest.approx(cosine_with_warmup(6, max_lr=tc.lr, warmup_steps=tc.warmup_steps,
                                                     total_steps=tc.steps, min_lr=tc.min_lr))
    assert after > before   # the rate rises again: a user extending a run must be told
    note = [line for line in said if line.startswith("learning rate:")]
    assert note == [f"learning rate: {before:.3g} at step 6, {after:.3g} from step 7 on the schedule over "
                    f"{tc.steps} steps (warmup {tc.warmup_steps}, --lr {tc.lr:g} down to --min-lr {tc.min_lr:g}): "
                    f"it rises again"]


def test_a_resume_that_keeps_the_schedule_says_nothing_of_it(finished_run, tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_BACKEND", "numpy")
    run = copy_of(finished_run, tmp_path)
    said = []
    train(resume_config(run, weight_decay=0.2), resume=True, echo=said.append)
    assert not [line for line in said if line.startswith("learning rate:")]


def test_a_python_resume_without_the_runs_settings_points_to_resume_config(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .* with different settings: data .*"
                                         r"resume_config\(run_dir, \*\*changes\)"):
        train(TrainConfig(out=str(run), steps=12), resume=True)
    # a setting given on purpose is refused as before, without the hint
    with pytest.raises(ValueError, match="with different settings: seed") as refused:
        train(resume_config(run, seed=5, steps=12), resume=True)
    assert "resume_config" not in str(refused.value)


def lr_note(tc, start_step, changes):
    from npllama.train import _say_where_the_learning_rate_goes

    said = []
    _say_where_the_learning_rate_goes(said.append, tc, start_step, changes)
    return said


def test_mid_warmup_the_rate_rises_as_it_would_have_so_no_rise_again_is_announced():
    # steps 100 -> 200 at step 3 of a warmup of 10: the rate goes on up the same warmup
    tc = TrainConfig(steps=200, warmup_steps=10, lr=1e-3)
    said = lr_note(tc, 3, {"steps": (100, 200)})
    assert len(said) == 1 and said[0].startswith("learning rate: 0.0003 at step 3, 0.0004 from step 4")
    assert "rises again" not in said[0]
    # past the warmup, on the way down, more steps do lift it again
    assert lr_note(tc, 60, {"steps": (100, 200)})[0].endswith("it rises again")


def test_the_old_schedule_is_not_checked_against_the_new_settings():
    # the old lr beside the new weight decay would be refused as a TrainConfig (lr * weight_decay >= 1):
    # the note must not build one
    tc = TrainConfig(steps=20, warmup_steps=2, lr=1e-4, min_lr=1e-5, weight_decay=900)
    said = lr_note(tc, 5, {"lr": (2e-3, 1e-4), "min_lr": (2e-4, 1e-5), "weight_decay": (0.1, 900)})
    assert said and said[0].startswith("learning rate: ")


def test_the_command_lines_resume_is_not_pointed_to_python(finished_run, tmp_path, capsys):
    """`npllama train --resume --preset tiny` on a stories260k run asks for a change (the default's value,
    given on purpose): refused without the Python advice, and so is resume_config's same change."""
    from npllama.cli import main

    run = copy_of(finished_run, tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--preset", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "with different settings: --preset ('stories260k' -> 'tiny')" in err and "Python" not in err
    with pytest.raises(ValueError, match="with different settings: preset") as refused:
        train(resume_config(run, preset="tiny"), resume=True)
    assert "resume_config" not in str(refused.value)


def test_a_start_refused_at_the_held_out_split_leaves_no_half_written_tokens(tmp_path):
    """A corpus too small to hold text out is refused after tokenizing: the token stream being made
    (a .tokens.npy.tmp-* beside its cache) goes with the refusal."""
    data = tmp_path / "six.txt"
    data.write_text("hi there\n", encoding="utf-8")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="one side would be empty"):
        train(TrainConfig(data=str(data), out=str(run), steps=2, **{**TINY, "vocab_size": 270}),
              echo=lambda *_: None)
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
