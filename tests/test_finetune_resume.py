"""Fine-tuning has a run folder like pre-training: periodic checkpoints, a checkpoint on SIGTERM, and
--resume that continues exactly where it stopped (same batches, dropout masks and final weights as
an uninterrupted run) and refuses settings that would make it another run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npllama.cli import main
from npllama.finetune import ClassifyConfig, SFTConfig, classify, sft
from npllama.finetune_sop import SentenceOrderConfig, sentence_order
from npllama.io.safetensors import read_safetensors

# enough steps that a SIGTERM sent after a few logged ones lands mid-run (an sft step is ~10x a classify one)
STEPS = {"classify": 400, "sft": 60, "sop": 150}
MAX_LEN = {"classify": 32, "sft": 56, "sop": 40}  # an instruction's prompt alone is ~40 tokens
JOBS = {"classify": (ClassifyConfig, classify), "sft": (SFTConfig, sft), "sop": (SentenceOrderConfig, sentence_order)}
TASK_SETTINGS = {"classify": {}, "sft": {"samples": 0}, "sop": {"stories": 200}}
TASK_FLAGS = {"classify": [], "sft": ["--samples", "0"], "sop": ["--stories", "200"]}


def quiet(*_args):
    pass


def settings(task: str, base, **more):
    # float64 and the NumPy ops: an interrupted and resumed run must match an uninterrupted one closely
    common = dict(base=str(base), batch_size=4, max_len=MAX_LEN[task], progress=False, dtype="float64", seed=3,
                  **more)
    return JOBS[task][0](**TASK_SETTINGS[task], **common)


def run_job(task, config, resume=False):
    from npllama import use_backend

    with use_backend("numpy"):
        return JOBS[task][1](config, echo=quiet, resume=resume)


def result_tensors(folder: Path) -> dict:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    head = folder / "sop_head.safetensors"      # `finetune sop`'s binary head, beside the model
    return {**read_safetensors(folder / name), **(read_safetensors(head) if head.is_file() else {})}


def logged_steps(out: Path) -> int:
    log = out / "log.jsonl"
    if not log.is_file():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.endswith("}") and '"loss"' in line)


def start_and_terminate(argv: list, out: Path, after_steps: int) -> int:
    """Run `npllama ARGV` in a subprocess, SIGTERM it once it has logged `after_steps` steps; its status."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1])] + sys.path),
               NPLLAMA_BACKEND="numpy")
    process = subprocess.Popen([sys.executable, "-m", "npllama", *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while logged_steps(out) < after_steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.parametrize("task, lora", [("classify", False), ("sft", True), ("sop", False)])
def test_a_fine_tune_stopped_by_sigterm_resumes_to_the_uninterrupted_result(small_model_dir, tmp_path, task, lora):
    more = dict(steps=STEPS[task], checkpoint_every=1000, lora=lora, lr=3e-3)
    if lora:
        more.update(lora_r=2, lora_dropout=0.2)  # dropout draws: the resumed run must draw the same masks
    whole = run_job(task, settings(task, small_model_dir, out=str(tmp_path / "whole"), **more))

    out = tmp_path / "stopped"
    argv = ["finetune", task, "--base", str(small_model_dir), "--out", str(out), "--steps", str(STEPS[task]),
            "--checkpoint-every", "1000", "--batch-size", "4", "--max-len", str(MAX_LEN[task]), "--dtype", "float64",
            "--seed", "3", "--lr", "3e-3", "--no-progress", "--backend", "numpy"]
    argv += TASK_FLAGS[task]
    if lora:
        argv += ["--lora", "--lora-r", "2", "--lora-dropout", "0.2"]
    status, err = start_and_terminate(argv, out, after_steps=5)
    assert status == 128 + signal.SIGTERM, err
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert 5 <= state["step"] < STEPS[task]  # saved on the signal, mid-run (checkpoint_every is 1000)
    assert state["step"] == logged_steps(out)  # the step in progress finished or never happened
    assert not (out / "finetune.json").exists()  # no result yet

    assert main(["finetune", task, "--out", str(out), "--resume", "--no-progress", "--backend", "numpy"]) == 0
    resumed = json.loads((out / "finetune.json").read_text())
    final, expected = result_tensors(out), result_tensors(tmp_path / "whole")
    assert set(final) == set(expected)
    for name in expected:
        np.testing.assert_allclose(final[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses, whole.losses, rtol=1e-9)  # the same batches, step by step
    if task == "classify":
        assert resumed["metrics"] == whole.metrics
    if task == "sop":  # the same model and head: the same held-out numbers
        assert resumed["after"] == pytest.approx(whole.after, rel=1e-9)


def test_checkpoints_are_periodic_and_a_resume_continues_from_the_last_one(small_model_dir, tmp_path, monkeypatch):
    from npllama.finetune_run import FinetuneRun

    saved_steps, real_save = [], FinetuneRun.save
    monkeypatch.setattr(FinetuneRun, "save", lambda self, step, *args: (saved_steps.append(step),
                                                                        real_save(self, step, *args)))
    out = tmp_path / "run"
    first = run_job("classify", settings("classify", small_model_dir, out=str(out), steps=6, checkpoint_every=4))
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 6
    assert saved_steps == [4, 6]  # every 4 steps, and at the end
    # a finished run goes on with more steps (steps may change on resume; the change is recorded)
    again = run_job("classify", settings("classify", small_model_dir, out=str(out), steps=9, checkpoint_every=4),
                    resume=True)
    assert again.losses[:6] == first.losses and len(again.losses) == 9  # the first six from the checkpoint
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 9
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 10))
    assert any(r.get("settings_changed") == {"steps": [6, 9]} for r in log)


def test_a_stop_signal_after_the_last_step_keeps_that_step(small_model_dir, tmp_path, monkeypatch):
    # a SIGTERM landing in the steps' clean-up, after the last step and before its checkpoint, left
    # the checkpoint of the last checkpoint_every (step 4 here): a resume trained steps 5-6 again
    from npllama.finetune_run import FinetuneRun
    from npllama.interrupts import Interrupted

    real_close = FinetuneRun.close

    def close_then_sigterm(run):
        real_close(run)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(FinetuneRun, "close", close_then_sigterm)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_job("classify", settings("classify", small_model_dir, out=str(out), steps=6, checkpoint_every=4))
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 6


def test_resume_refuses_settings_that_define_the_run_and_changes_nothing(small_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=2))
    def contents():  # the lock file records the pid of its last holder: not the run's contents
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".npllama.lock"}

    before = contents()
    for flag, value in [("--seed", "4"), ("--max-len", "16"), ("--batch-size", "8"), ("--dataset", "topic")]:
        assert main(["finetune", "classify", "--out", str(out), "--resume", flag, value, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and flag in err and len(err.splitlines()) == 1
    assert contents() == before
    # an sft --resume of a classify run, a new start into it, and --resume of nothing: one line each
    assert main(["finetune", "sft", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "holds a classify run" in capsys.readouterr().err
    assert main(["finetune", "classify", "--base", str(small_model_dir), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "classify", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["finetune", "classify", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_a_new_fine_tune_refuses_a_folder_holding_other_files(small_model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    with pytest.raises(ValueError, match="not empty.*notes.txt"):
        run_job("classify", settings("classify", small_model_dir, out=str(out), steps=1))
    assert (out / "notes.txt").read_text() == "precious\n"


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_a_fine_tune_into_its_base_folder_is_refused_naming_base_and_leaves_it_as_it_was(small_model_dir, tmp_path,
                                                                                         task, capsys):
    """--out the --base folder (or one holding it): refused saying so, before a lock file is made in it."""
    import shutil

    base = tmp_path / "work" / "model"
    shutil.copytree(small_model_dir, base)
    (tmp_path / "work" / "notes.txt").write_text("mine")
    for out in (base, base.parent):
        before = sorted(p.name for p in out.iterdir())
        assert main(["finetune", task, "--base", str(base), "--out", str(out), "--steps", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and f"--base {str(base)!r}" in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == before


def test_a_damaged_checkpoint_is_refused_before_anything_changes(small_model_dir, tmp_path):
    from npllama.io.errors import CheckpointError

    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=2, lora=True, lora_r=2))
    state_file = out / "checkpoint" / "training_state.json"
    state = json.loads(state_file.read_text())
    # step=1 with one loss, so that the losses agree and the optimizer's own step count is what refuses it
    for damage, field in [(dict(state, losses=[1.0]), "losses"),
                          (dict(state, step=1, losses=state["losses"][:1]), "optimizer state has taken"),
                          (dict(state, dropout={"bit_generator": "nope"}), "dropout")]:
        state_file.write_text(json.dumps(damage))
        with pytest.raises(CheckpointError, match=field):
            run_job("classify", settings("classify", small_model_dir, out=str(out), steps=3, lora=True, lora_r=2),
                    resume=True)
    state_file.write_text(json.dumps(state))
    tensors = out / "checkpoint" / "params.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        run_job("classify", settings("classify", small_model_dir, out=str(out), steps=3, lora=True, lora_r=2),
                resume=True)


def test_bad_run_settings_are_one_line(tmp_path, capsys):
    for argv, message in [(["--checkpoint-every", "-1"], "--checkpoint-every must be a non-negative int"),
                          (["--out", str(tmp_path / "f.txt")], "is a file, not a folder")]:
        (tmp_path / "f.txt").write_text("x")
        assert main(["finetune", "classify", "--no-progress", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err


def test_a_classify_run_saved_before_the_stratified_split_resumes_on_its_own_split(small_model_dir, tmp_path):
    from npllama.datasets import split_train_val, write_jsonl
    from npllama.finetune_run import settings_file

    # skewed labels, so that the shuffled and the stratified split hold out different texts
    labels = ["pos"] * 36 + ["neg"] * 4
    data = write_jsonl(tmp_path / "skewed.jsonl", [{"text": f"{label} day {i}", "label": label}
                                                   for i, label in enumerate(labels)])
    held = {split: split_train_val(40, 0.2, 3, strata=labels if split == "stratified" else None)[1]
            for split in ("shuffled", "stratified")}
    assert sorted(held["shuffled"]) != sorted(held["stratified"])
    # the run, as an older npllama saved it: shuffled split, settings without "split"
    out = tmp_path / "run"
    first = run_job("classify", settings("classify", small_model_dir, out=str(out), steps=3, split="shuffled",
                                         data=str(data)))
    settings_path = out / settings_file("classify")
    saved = json.loads(settings_path.read_text())
    assert saved.pop("split") == "shuffled"
    settings_path.write_text(json.dumps(saved))
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    # in Python, today's default is a change: refused, saying what resumes it
    with pytest.raises(ValueError, match=r"split \('shuffled' -> 'stratified'; the run was saved before npllama had "
                                         r"this setting: give split='shuffled' to resume it\)"):
        run_job("classify", settings("classify", small_model_dir, out=str(out), steps=5, data=str(data)), resume=True)
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--steps", "5", "--no-progress",
                 "--backend", "numpy"]) == 0
    # the same resume in Python, with the shuffled split named: the same batches, the same losses
    (twin / settings_file("classify")).write_text(json.dumps({**saved, "split": "shuffled", "out": str(twin)}))
    named = run_job("classify", settings("classify", small_model_dir, out=str(twin), steps=5, split="shuffled",
                                         data=str(data)), resume=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r] == named.losses and named.losses[:3] == first.losses


def test_an_sft_run_saved_with_samples_now_refused_resumes(small_model_dir, tmp_path):
    # an older npllama accepted --samples -1 (it printed all but the last answers); samples steers only
    # the call that prints them, not the run, so a resume takes the value given (or the default)
    # instead of refusing the whole run folder as damaged
    from npllama.finetune_run import settings_file

    out = tmp_path / "run"
    first = run_job("sft", settings("sft", small_model_dir, out=str(out), steps=2, lora=True, lora_r=2))
    settings_path = out / settings_file("sft")
    settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), "samples": -1}))
    assert main(["finetune", "sft", "--out", str(out), "--resume", "--steps", "3", "--samples", "1",
                 "--no-progress", "--backend", "numpy"]) == 0
    assert json.loads(settings_path.read_text())["samples"] == 1   # the file now holds a valid value
    settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), "samples": -1}))
    resumed = run_job("sft", settings("sft", small_model_dir, out=str(out), steps=4, lora=True, lora_r=2),
                      resume=True)
    assert resumed.losses[:2] == first.losses and len(resumed.losses) == 4


def test_a_saved_setting_now_refused_that_defines_the_run_is_refused_saying_why_and_what_to_do(small_model_dir,
                                                                                             tmp_path, capsys):
    from npllama.finetune_run import settings_file

    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=1))
    settings_path = out / settings_file("classify")
    settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), "seed": -1}))
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "older npllama" in err and "another --out" in err and len(err.splitlines()) == 1


def test_a_run_started_with_relative_paths_resumes_from_another_folder(small_model_dir, tmp_path, monkeypatch):
    # the settings held --base and --data as given: from another working directory they named
    # nothing ("model folder 'base' does not exist"), or another folder, and giving the path from
    # there was refused as a changed setting.  The files a run reads are recorded absolute.
    from npllama.datasets import make_dataset, write_jsonl
    from npllama.finetune_run import settings_file

    there, elsewhere = tmp_path / "there", tmp_path / "elsewhere"
    there.mkdir(), elsewhere.mkdir()
    shutil.copytree(small_model_dir, there / "base")
    write_jsonl(there / "data.jsonl", make_dataset("sentiment", 40))
    monkeypatch.chdir(there)
    out = tmp_path / "run"
    first = run_job("classify", settings("classify", "base", data="data.jsonl", out=str(out), steps=2,
                                         lora=True, lora_r=2))
    saved = json.loads((out / settings_file("classify")).read_text())
    assert (saved["base"], saved["data"]) == (str(there / "base"), str(there / "data.jsonl"))
    monkeypatch.chdir(elsewhere)
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--steps", "3", "--no-progress",
                 "--backend", "numpy"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r][:2] == first.losses


def test_a_run_moved_with_its_base_and_data_resumes_given_their_new_paths(small_model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    # the settings record --base and --data absolute: moved with the run folder (or copied to another
    # machine), they named files no longer there, and giving their new paths was refused as changed
    # settings ("start a new run"): the run could not be resumed at all
    from npllama.datasets import make_dataset, write_jsonl

    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    shutil.copytree(small_model_dir, before / "base")
    write_jsonl(before / "data.jsonl", make_dataset("sentiment", 40))
    monkeypatch.chdir(before)
    first = run_job("classify", settings("classify", "base", data="data.jsonl", out="run", steps=2, lora=True,
                                         lora_r=2))
    for name in ("base", "data.jsonl", "run"):
        shutil.move(before / name, after / name)
    monkeypatch.chdir(after)
    resume = ["finetune", "classify", "--out", "run", "--resume", "--steps", "3", "--no-progress", "--backend", "numpy"]
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert str(before / "base") in err and "if it was moved, give its new path with --base" in err, err
    assert main([*resume, "--base", "base", "--data", "data.jsonl"]) == 0
    assert f"base {str(before / 'base')!r} -> 'base'" in capsys.readouterr().out
    log = [json.loads(line) for line in (after / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log if "loss" in r][:2] == first.losses


def test_an_sft_run_with_a_chat_template_file_resumes_from_another_folder(small_model_dir, tmp_path, monkeypatch):
    # --chat-template names a built-in template or a Jinja file: a file given relative was recorded
    # as given, so from another working directory the run read no template ("neither llama2 nor
    # llama3 nor a Jinja file"), and the file's path from there was refused as a changed setting
    from npllama.chat import LLAMA2_TEMPLATE
    from npllama.datasets import make_instructions, write_jsonl
    from npllama.finetune_run import settings_file
    from npllama.resuming import write_settings

    there, elsewhere = tmp_path / "there", tmp_path / "elsewhere"
    there.mkdir(), elsewhere.mkdir()
    (there / "mine.jinja").write_text(LLAMA2_TEMPLATE)
    data = write_jsonl(tmp_path / "few.jsonl", make_instructions(12))   # fast: 1000 built in
    monkeypatch.chdir(there)
    out = tmp_path / "run"
    job = dict(data=str(data), out=str(out), lora=True, lora_r=2)
    first = run_job("sft", settings("sft", small_model_dir, steps=2, chat_template="mine.jinja", **job))
    assert json.loads((out / settings_file("sft")).read_text())["chat_template"] == str(there / "mine.jinja")
    monkeypatch.chdir(elsewhere)
    resumed = run_job("sft", settings("sft", small_model_dir, steps=3, chat_template=str(there / "mine.jinja"), **job),
                      resume=True)
    assert resumed.losses[:2] == first.losses
    # a built-in template's name is no file: kept as it is, and a file of that name here does not count
    (elsewhere / "llama2").write_text(LLAMA2_TEMPLATE)
    write_settings(tmp_path, settings("sft", small_model_dir, chat_template="llama2"), "built-in.json")
    assert json.loads((tmp_path / "built-in.json").read_text())["chat_template"] == "llama2"


def test_resume_refuses_steps_below_the_checkpoint_and_changes_nothing(small_model_dir, tmp_path, capsys):
    # Before: the run was saved as finished at step 6 with "steps": 2 recorded, where `npllama train` refuses
    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=3))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".npllama.lock"}
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--steps 2 is below the step the checkpoint" in err and "give --steps 3" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".npllama.lock"} == before


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_resume_refuses_a_data_file_edited_since_the_checkpoint(small_model_dir, tmp_path, task):
    """--resume compared only --data's path: a file edited since the checkpoint (as many examples, so
    nothing else noticed) was trained on without a word, and the resumed run was no longer the one
    that was stopped.  The checkpoint keeps a digest of the training and held-out examples (as
    `npllama train` keeps one of its tokens); put back, the file resumes."""
    from npllama.datasets import write_jsonl

    data = tmp_path / ("data.txt" if task == "sop" else "data.jsonl")
    if task == "classify":
        records = [{"text": f"{'good' if i % 2 else 'bad'} day number {i}", "label": "pos" if i % 2 else "neg"}
                   for i in range(40)]
    elif task == "sft":
        records = [{"prompt": f"Say {i}.", "response": f"{i}"} for i in range(40)]
    else:
        records = None
        original = "\n\n".join(f"The cat {i} sat. Then it ran away." for i in range(40))
        data.write_text(original)
    if records is not None:
        write_jsonl(data, records)
        original = data.read_text()
    out = tmp_path / "run"
    run_job(task, settings(task, small_model_dir, out=str(out), steps=2, data=str(data)))
    data.write_text(original.replace("7", "8"))   # as many examples, other words in some
    with pytest.raises(ValueError, match=r"text \(--data '.*'\) has changed since the checkpoint"):
        run_job(task, settings(task, small_model_dir, out=str(out), steps=3, data=str(data)), resume=True)
    data.write_text(original)
    assert len(run_job(task, settings(task, small_model_dir, out=str(out), steps=3, data=str(data)),
                       resume=True).losses) == 3


def test_a_refused_run_setting_beside_a_refused_call_setting_is_the_one_named(tmp_path):
    # the call's setting (RESUME_QUIET) is dropped, so it is no reason to refuse the run: the refusal
    # names the setting of the run that is refused, whichever the settings class checks first
    import dataclasses

    from npllama.io.errors import CheckpointError
    from npllama.resuming import saved_settings

    @dataclasses.dataclass
    class Settings:
        samples: int = 2
        seed: int = 0
        RESUME_QUIET = ("samples",)

        def __post_init__(self):
            for name in ("samples", "seed"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    (tmp_path / "settings.json").write_text(json.dumps({"samples": -1, "seed": 3}))
    assert saved_settings(tmp_path, Settings, "settings.json") == {"samples": 2, "seed": 3}
    (tmp_path / "settings.json").write_text(json.dumps({"samples": -1, "seed": -1}))
    with pytest.raises(CheckpointError, match="seed must be >= 0") as refused:
        saved_settings(tmp_path, Settings, "settings.json")
    assert "samples" not in str(refused.value)


@pytest.mark.parametrize("first_merge", [False, True])
def test_a_resume_that_publishes_the_other_kind_of_result_drops_the_first_one(small_model_dir, tmp_path, first_merge):
    """`finetune sft --lora` saved an adapter in --out; `--resume --merge` (merge may change on a resume)
    publishes a whole model there, or the reverse.  The earlier result's files left beside the new one
    would make the folder load as it: transformers with PEFT loads a folder holding adapter_config.json
    as that adapter on its base, and `--model out` would read an old merged model beside a new adapter."""
    from npllama import Llama
    from npllama.lora import load_adapter

    out = tmp_path / "run"
    run_job("sft", settings("sft", small_model_dir, out=str(out), steps=2, lora=True, lora_r=2, merge=first_merge))
    (out / "NOTES.md").write_text("mine")
    run_job("sft", settings("sft", small_model_dir, out=str(out), steps=3, lora=True, lora_r=2,
                            merge=not first_merge), resume=True)
    names = {p.name for p in out.iterdir()}
    assert (out / "NOTES.md").read_text() == "mine"
    if first_merge:   # now an adapter
        assert not names & {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                            "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}, names
        assert load_adapter(Llama.from_pretrained(small_model_dir, dtype=np.float64), out) is not None
    else:             # now a merged model
        assert not names & {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"}, names
        assert Llama.from_pretrained(out).lora is None


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_a_start_refused_for_its_data_can_be_started_again_in_the_same_folder(small_model_dir, tmp_path, capsys, task):
    # the settings were written before the data was read: a start refused for a bad --data left a
    # folder that refused the fixed command ("already holds a run; pass --resume"), and --resume
    # cannot take another --data
    out = tmp_path / "run"
    bad, good = tmp_path / "bad", tmp_path / "good"
    if task == "classify":
        bad, good = bad.with_suffix(".csv"), good.with_suffix(".csv")
        bad.write_text("text,label\nnice,pos\n,neg\n")
        good.write_text("text,label\n" + "".join(f"nice {i},pos\nbad {i},neg\n" for i in range(6)))
    elif task == "sft":
        bad, good = bad.with_suffix(".jsonl"), good.with_suffix(".jsonl")
        bad.write_text('{"prompt": "Hi"}\n')
        good.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": "OK."}) + "\n" for i in range(6)))
    else:
        bad, good = bad.with_suffix(".txt"), good.with_suffix(".txt")   # bad: never written (no such file)
        good.write_text("\n\n".join(f"Tom has {i} balls. He plays. The sun is warm." for i in range(12)))
    argv = ["finetune", task, "--base", str(small_model_dir), "--out", str(out), "--steps", "1", "--batch-size",
            "2", "--max-len", str(MAX_LEN[task]), "--no-progress", "--backend", "numpy", *(["--samples", "0"] if task == "sft" else [])]
    assert main([*argv, "--data", str(bad)]) == 2
    assert str(bad.name) in capsys.readouterr().err
    assert main([*argv, "--data", str(good)]) == 0, capsys.readouterr().err
    saved = json.loads((out / f"{task}_config.json").read_text())
    assert saved["data"] == str(good)
    # a run that reached a checkpoint is still never replaced by a new start
    assert main([*argv, "--data", str(good)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_new_start_over_a_refused_start_of_another_task_keeps_only_its_own_settings(small_model_dir, tmp_path):
    out, bad = tmp_path / "run", tmp_path / "bad.csv"
    bad.write_text("text,label\nnice,pos\n,neg\n")
    with pytest.raises(ValueError, match="empty text"):
        run_job("classify", settings("classify", small_model_dir, out=str(out), data=str(bad), steps=1))
    assert (out / "classify_config.json").is_file()
    run_job("sft", settings("sft", small_model_dir, out=str(out), steps=1))
    assert not (out / "classify_config.json").exists()   # else the folder would read as two runs
    assert (out / "sft_config.json").is_file() and (out / "checkpoint").is_dir()


@pytest.mark.parametrize("task", ["classify", "sop"])
def test_a_resumed_run_times_only_the_steps_it_took(small_model_dir, tmp_path, task):
    # it said "5 steps in 0.4 s" for the 2 steps a resume at step 3 took
    from npllama import use_backend

    out = tmp_path / "run"
    run_job(task, settings(task, small_model_dir, out=str(out), steps=3))
    lines = []
    with use_backend("numpy"):
        JOBS[task][1](settings(task, small_model_dir, out=str(out), steps=5), echo=lines.append, resume=True)
    timed = [line for line in lines if " in " in line and " s;" in line]
    assert len(timed) == 1 and timed[0].startswith("steps 4-5 of 5 in "), lines
    lines.clear()
    with use_backend("numpy"):
        JOBS[task][1](settings(task, small_model_dir, out=str(tmp_path / "new"), steps=2), echo=lines.append)
    assert any(line.startswith("2 steps in ") for line in lines), lines


@pytest.mark.parametrize("task", ["classify", "sop"])
def test_a_python_resume_takes_the_runs_settings_from_resume_config(small_model_dir, tmp_path, task):
    """As train's resume_config: Config.resume_config(run_dir, **changes) is the saved settings with the
    changes on top; settings built from the defaults instead are refused pointing to it."""
    cls = JOBS[task][0]
    out = tmp_path / "run"
    run_job(task, settings(task, small_model_dir, out=str(out), steps=2, checkpoint_every=1))
    again = cls.resume_config(out, steps=3)
    saved = json.loads((out / {"classify": "classify_config.json", "sop": "sop_config.json"}[task]).read_text())
    assert again.steps == 3 and again.seed == saved["seed"] == 3 and again.max_len == saved["max_len"]
    assert run_job(task, again, resume=True) is not None
    with pytest.raises(ValueError, match=rf"different settings: .*seed .*{cls.__name__}\.resume_config\(run_dir"):
        run_job(task, cls(base=str(small_model_dir), out=str(out), steps=4), resume=True)
    with pytest.raises(ValueError, match="different settings: seed") as refused:   # a change asked for
        run_job(task, cls.resume_config(out, seed=0, steps=4), resume=True)
    assert "resume_config" not in str(refused.value)
    with pytest.raises(FileNotFoundError):   # another job's run is no run of this one
        JOBS["sft"][0].resume_config(out)


def test_a_resume_of_a_finished_run_says_it_took_no_step(small_model_dir, tmp_path):
    # resumed at step 3 of --steps 3 it said "steps 4-3 of 3 in 0.0 s"
    from npllama import use_backend

    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=3))
    lines = []
    with use_backend("numpy"):
        JOBS["classify"][1](settings("classify", small_model_dir, out=str(out), steps=3), echo=lines.append,
                            resume=True)
    timed = [line for line in lines if "; training loss" in line]
    assert len(timed) == 1 and timed[0].startswith("no step left to take: the checkpoint had reached step 3 of 3;"), lines


@pytest.mark.parametrize("own", [["log.jsonl"], ["log.jsonl", "notes.txt"]])
def test_a_folder_holding_a_users_log_jsonl_is_not_taken_by_a_new_start(small_model_dir, tmp_path, capsys, own):
    # a folder holding only a file named log.jsonl (a user's own, no settings file) read as a start
    # left before its first checkpoint, and the new start emptied it
    out = tmp_path / "mine"
    out.mkdir()
    for name in own:
        (out / name).write_text('{"mine": 1}\n')
    argv = ["finetune", "classify", "--base", str(small_model_dir), "--out", str(out), "--steps", "1",
            "--no-progress", "--backend", "numpy"]
    assert main(argv) == 2
    assert "log.jsonl" in capsys.readouterr().err
    assert all((out / name).read_text() == '{"mine": 1}\n' for name in own)


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
def test_a_lora_resume_refuses_a_base_whose_weights_changed_since_the_checkpoint(small_model_dir, tmp_path, task):
    """A LoRA checkpoint holds the adapters only: the frozen base is read from --base again.  A base
    retrained meanwhile (`npllama train --out BASE --resume --steps MORE` replaces its model/) was
    taken without a word: the adapters of the first steps were fitted to the old weights, the rest to
    the new ones, and the result matched neither.  The checkpoint keeps a digest of the base weights."""
    from npllama.io.safetensors import write_safetensors

    base = tmp_path / "base"
    shutil.copytree(small_model_dir, base)
    weights = base / "model.safetensors"
    original = weights.read_bytes()
    out = tmp_path / "run"
    run_job(task, settings(task, base, out=str(out), steps=2, lora=True, lora_r=2))
    tensors = read_safetensors(weights)
    tensors["model.layers.1.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"] * 1.01
    write_safetensors(weights, tensors, metadata={"format": "pt"})   # as many weights, of the same shapes
    with pytest.raises(ValueError, match=rf"cannot resume '{out}': the base model \(--base '{base}'\) has other "
                                         r"weights than when the checkpoint was saved"):
        run_job(task, settings(task, base, out=str(out), steps=3, lora=True, lora_r=2), resume=True)
    weights.write_bytes(original)
    assert len(run_job(task, settings(task, base, out=str(out), steps=3, lora=True, lora_r=2),
                       resume=True).losses) == 3


@pytest.mark.parametrize("flags, named, not_named", [
    (["--lora-mlp"], "--lora-mlp", "--lora-targets"),                 # was refused as --lora-targets
    (["--lora-targets", "q_proj"], "--lora-targets", "--lora-mlp"),
    (["--lora-targets", "q_proj,v_proj", "--lora-mlp"], "--lora-targets", None),
])
def test_a_resume_that_changes_the_lora_targets_names_the_flag_typed(small_model_dir, tmp_path, capsys, flags,
                                                                     named, not_named):
    out = tmp_path / "run"
    run_job("classify", settings("classify", small_model_dir, out=str(out), steps=1, lora=True))
    assert main(["finetune", "classify", "--out", str(out), "--resume", *flags, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and named in err and len(err.splitlines()) == 1, err
    assert not_named is None or not_named not in err, err
    if "--lora-mlp" in flags:
        assert "--lora-mlp" in err, err


def test_a_classify_run_on_data_records_no_built_in_set_and_resumes_as_saved_before(small_model_dir, tmp_path, capsys):
    """classify_config.json records what the run used: "dataset" is null with --data (it said
    "sentiment", a set the run never read).  A run saved that way before still resumes: the saved
    "sentiment" beside a data file reads as what it meant, no built-in set."""
    from npllama import datasets

    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in datasets.make_dataset("topic", 60, seed=1)))
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--base", str(small_model_dir), "--data", str(data), "--out", str(out),
                 "--steps", "1", "--batch-size", "2", "--max-len", "16", "--no-progress"]) == 0
    recorded = json.loads((out / "classify_config.json").read_text())
    assert recorded["data"] == str(data) and recorded["dataset"] is None, recorded
    assert ClassifyConfig(data=str(data)).dataset is None and ClassifyConfig().dataset == "sentiment"
    # as an older npllama saved it, then resumed to a further step
    (out / "classify_config.json").write_text(json.dumps({**recorded, "dataset": "sentiment"}))
    capsys.readouterr()
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--steps", "2", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / "classify_config.json").read_text())["dataset"] is None


@pytest.mark.parametrize("task", ["classify", "sft"])
def test_the_use_it_line_names_the_base_alike_on_a_start_and_on_a_resume(small_model_dir, tmp_path, monkeypatch,
                                                                         capsys, task):
    """The last line's command names the base as a relative --base gave it, on a start and on a resume
    from the same folder (a resume read it from the settings, recorded absolute, and printed that);
    from a folder the base is not in, absolute, a path that works from there."""
    shutil.copytree(small_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    common = ["--out", "run", "--batch-size", "2", "--max-len", str(MAX_LEN[task]), "--no-progress",
              "--backend", "numpy", *TASK_FLAGS[task]]

    def use_line(argv):
        assert main(["finetune", task, *argv, *common]) == 0
        out = capsys.readouterr().out
        return next(line for line in out.splitlines() if "; use it: " in line)

    started = use_line(["--base", "base", "--lora", "--lora-r", "2", "--steps", "1"])
    assert "--model base " in started, started
    assert use_line(["--resume", "--steps", "2"]) == started
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    common[1] = str(tmp_path / "run")
    assert f"--model {tmp_path / 'base'} " in use_line(["--resume", "--steps", "3"])


def test_the_use_it_line_names_a_base_whose_name_starts_with_a_dash_as_a_path(tmp_path, monkeypatch):
    """A base relative to the current folder is shown relative, but one named "-base" would read as a
    flag (`--model -base` is refused by argparse): it is shown as ./-base."""
    from npllama.cli import build_parser
    from npllama.finetune import as_shown_here

    monkeypatch.chdir(tmp_path)
    for name, shown in [("base", "base"), ("-base", "./-base"), ("my base", "'my base'"), (".", ".")]:
        assert as_shown_here(tmp_path / name if name != "." else tmp_path) == shown, name
    (tmp_path / "-base").mkdir()
    args = build_parser().parse_args(["chat", "--model", as_shown_here(tmp_path / "-base")])
    assert Path(args.model).resolve() == (tmp_path / "-base").resolve()


def test_a_resume_that_adds_data_to_a_built_in_run_names_data_alone(small_model_dir, tmp_path, capsys):
    """A run on the built-in set resumed with --data is refused for --data: the built-in set it no
    longer reads ("dataset": null beside data) follows from it and is not named as a change of its
    own ("--dataset ('sentiment' -> None)", a flag the user did not type)."""
    from npllama import datasets

    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in datasets.make_dataset("sentiment", 40, seed=3)))
    out = tmp_path / "run"
    assert main(["finetune", "classify", "--base", str(small_model_dir), "--out", str(out), "--steps", "1",
                 "--batch-size", "2", "--max-len", "16", "--no-progress", "--backend", "numpy"]) == 0
    capsys.readouterr()
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--data", str(data), "--steps", "2",
                 "--no-progress", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "with different settings: --data (None -> " in err and "dataset" not in err, err


@pytest.mark.parametrize("given", ["model", "model/"])
def test_a_resume_given_the_run_folders_model_for_a_base_given_as_the_run_folder_is_no_change(small_model_dir,
                                                                                            tmp_path, given):
    """--base RUN loads RUN/model: naming that folder on the resume names the same base, not another."""
    out = tmp_path / "run"
    base_run = small_model_dir.parent
    run_job("classify", settings("classify", base_run, out=str(out), steps=1, lora=True))
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--base", str(base_run) + "/" + given,
                 "--steps", "2", "--no-progress"]) == 0
    assert logged_steps(out) == 2
    # a base that resolves to another model is still a change
    other = tmp_path / "other"
    shutil.copytree(small_model_dir, other / "model")
    assert main(["finetune", "classify", "--out", str(out), "--resume", "--base", str(other / "model"),
                 "--steps", "3", "--no-progress"]) == 2


def test_a_stop_signal_during_a_checkpoint_lets_it_finish_and_saves_it_once(small_model_dir, tmp_path,
                                                                             monkeypatch):
    # Before: the signal held while the checkpoint was written came before the run noted the step as
    # saved, so the stop wrote the same checkpoint a second time
    import npllama.io.train_state
    from npllama.interrupts import Interrupted

    real_save, saved = npllama.io.train_state.save_params_checkpoint, []

    def save_during_a_sigterm(path, params, optimizer_state, state, **kwargs):
        saved.append(state["step"])
        if len(saved) == 1:
            signal.raise_signal(signal.SIGTERM)   # held until the checkpoint is written
        real_save(path, params, optimizer_state, state, **kwargs)

    monkeypatch.setattr(npllama.io.train_state, "save_params_checkpoint", save_during_a_sigterm)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_job("classify", settings("classify", small_model_dir, out=str(out), steps=6, checkpoint_every=4))
    assert saved == [4]
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 4
