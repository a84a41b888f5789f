"""Faults during training: kills, failing writes and non-finite numbers lose nothing.

* SIGKILL: `python -m npllama train` is killed again and again -- at random moments (during start-up,
  between and inside steps) and, through a small wrapper around the same entry point, at the three
  dangerous instants of a checkpoint write (half-way through writing the new folder, between the
  two renames that replace the old one, before the old one is deleted).  After every kill the latest
  checkpoint loads and never goes backwards; then `--resume` runs to the end and its losses and
  final weights are bit for bit those of a run that was never interrupted.
* A write that fails (OSError: disk full, at six points of a checkpoint write) leaves the previous
  checkpoint intact and nothing half-written beside it, and `npllama train` reports it in one line.
* A NaN/Inf loss or gradient stops the step with a message naming the step and the parameter,
  the way forward (--lr, --skip-nonfinite), keeps the last good checkpoint, and never reaches the
  optimizer; --skip-nonfinite skips the batch, and gives up on a model that only produces NaN.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.cli import main
from npllama.io import train_state
from npllama.io.train_state import load_checkpoint, save_checkpoint
from npllama.optim import AdamW
from npllama.runs import recover_checkpoint
from npllama.train import MAX_CONSECUTIVE_SKIPS, TrainConfig, TrainingError, train

from .full_disk import FillsUp, disk_full, files_on_a_full_disk

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40
CHECKPOINT_EVERY = 2
TRAIN_ARGS = ["--preset", "stories260k", "--vocab-size", "360", "--batch-size", "4", "--seq-len", "32",
              "--steps", str(STEPS), "--eval-every", "0", "--checkpoint-every", str(CHECKPOINT_EVERY),
              "--samples", "0", "--no-progress", "--backend", "numpy"]
# threads=1: one call of loss_and_grads per step, which is what the injected faults count
FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, eval_batches=2, samples=0,
            progress=False, lr=5e-3, threads=1)


def quiet(*_args, **_kwargs):
    pass


def losses(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


# ----- SIGKILL ------------------------------------------------------------------------------------

# The same entry point as `python -m npllama`, with one fault armed by NPLLAMA_TEST_FAULT: when the
# process reaches that instant of a checkpoint write it creates the marker file and waits there to
# be killed.  Nothing in npllama knows about it.
FAULT_RUNNER = r'''
import os, shutil, sys, time
import npllama.io.atomic as atomic
import npllama.io.train_state as train_state

phase, marker = os.environ["NPLLAMA_TEST_FAULT"], os.environ["NPLLAMA_TEST_FAULT_MARKER"]

def wait_to_be_killed():
    open(marker, "w").close()
    time.sleep(600)

if phase == "mid-write":            # new folder half written: model and optimizer, no training_state.json
    real_write = train_state.write_safetensors
    def write_then_wait(*args, **kwargs):
        real_write(*args, **kwargs)
        wait_to_be_killed()
    train_state.write_safetensors = write_then_wait
elif phase == "between-renames":    # old checkpoint moved aside, new one not yet in its place
    real_rename = os.rename
    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if os.path.basename(dst).startswith(".checkpoint.old-"):
            wait_to_be_killed()
    atomic.os.rename = rename
elif phase == "before-cleanup":     # new checkpoint in place, the old one not yet deleted
    import types
    def rmtree(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith(".checkpoint.old-"):
            wait_to_be_killed()
        shutil.rmtree(path, *args, **kwargs)
    atomic.shutil = types.SimpleNamespace(rmtree=rmtree)  # atomic's own reference only

from npllama.cli import main
sys.exit(main(sys.argv[1:]))
'''


def child_env(tmp_path):
    # One BLAS/numba thread: the bits of a matrix product may depend on the thread count, and the
    # reference run and the killed runs must compute the same bits (see docs/robustness.md).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "NPLLAMA_RUNS": str(tmp_path / "runs"), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def start_training(run, corpus, env, fault=None, marker=None):
    resume = ["--resume"] if (run / "train_config.json").is_file() else []
    argv = ["train", "--data", str(corpus), "--out", str(run), *TRAIN_ARGS, *resume]
    if fault is None:
        command = [sys.executable, "-m", "npllama", *argv]
    else:
        command = [sys.executable, "-c", FAULT_RUNNER, *argv]
        env = {**env, "NPLLAMA_TEST_FAULT": fault, "NPLLAMA_TEST_FAULT_MARKER": str(marker)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_logged_step(run) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:
            pass  # a line being written right now
    return max(steps, default=0)


def wait_until(condition, process, timeout=60.0, poll=0.005):
    """Poll until condition() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(poll)
    raise AssertionError("the training process neither reached the moment nor ended")


def kill(process):
    """SIGKILL the process (unless it has ended); (exit status, its stderr)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def test_ctrl_c_with_a_split_batch_saves_the_step_reached_and_resumes(tmp_path):
    # two BLAS threads, so `npllama train` splits each batch over two worker threads; Ctrl-C lands
    # while they run: the main thread must still save the step it reached and exit 130
    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "stories.txt", n_stories=300)
    env = {**child_env(tmp_path), "OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    run = tmp_path / "run"
    process = start_training(run, corpus, env)
    assert wait_until(lambda: last_logged_step(run) >= 3, process), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    saved = last_logged_step(run)
    assert f"interrupted: checkpoint saved at step {saved}" in out
    _, _, state = load_checkpoint(run / "checkpoint")
    assert state["step"] == saved < STEPS
    finish = start_training(run, corpus, env)
    out, err = finish.communicate(timeout=300)
    assert finish.returncode == 0, err[-2000:]
    assert f"resuming {run} at step {saved}" in out and last_logged_step(run) == STEPS


def inspect_after_kill(run, tmp_path, label):
    """Recover a copy of the run as --resume would, and load its checkpoint.  Returns (step, train_loss)
    or None when there is no checkpoint yet.  The run itself is left exactly as the kill left it."""
    if not run.exists():  # killed during start-up, before the run folder was made
        return None
    copy = tmp_path / f"after-{label}"
    shutil.copytree(run, copy, symlinks=True)
    checkpoint = recover_checkpoint(copy)
    if checkpoint is None:
        assert not (copy / "checkpoint").exists()
        return None
    model, optimizer_state, state = load_checkpoint(checkpoint)  # raises if anything is broken
    assert state["step"] == optimizer_state["step"]
    assert all(np.isfinite(p).all() for p in model.params.values())
    shutil.rmtree(copy)
    return state["step"], state["train_loss"]


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_checkpoint_writes_loses_nothing(tmp_path, robustness_count):
    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "stories.txt", n_stories=300)
    env = child_env(tmp_path)
    reference = tmp_path / "reference"
    uninterrupted = start_training(reference, corpus, env)  # runs alongside the kills

    run = tmp_path / "run"
    rng = random.Random(3)
    plan = ["startup", "step", "step", "step", "mid-write", "between-renames", "before-cleanup"]
    rng.shuffle(plan)
    plan.remove("startup")
    plan.insert(0, "startup")  # the first kill lands while the run starts (tokenizer, tokens, ...)
    checkpoints = []  # (kill, step, train_loss) of the checkpoint found after each kill
    for k, kind in enumerate(plan):
        marker = tmp_path / f"marker-{k}"
        forced = kind not in ("startup", "step")
        before = last_logged_step(run)
        process = start_training(run, corpus, env, fault=kind if forced else None, marker=marker)
        if kind == "startup":
            time.sleep(rng.uniform(0.05, 0.6))
        elif kind == "step":  # a random step, then a random moment after it: inside or between steps,
            target = before + rng.randint(1, 4)  # in a checkpoint write or not
            wait_until(lambda target=target: last_logged_step(run) >= target, process)
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            assert wait_until(marker.exists, process), f"the {kind} fault was never reached"
        status, err = kill(process)
        assert status in (-signal.SIGKILL, 0), f"kill {k} ({kind}): exit status {status}:\n{err[-3000:]}"
        if kind == "between-renames":
            assert not (run / "checkpoint").exists() and list(run.glob(".checkpoint.old-*"))
        if kind == "before-cleanup":
            assert (run / "checkpoint").is_dir() and list(run.glob(".checkpoint.old-*"))
        if kind == "mid-write":
            assert [p for p in run.glob(".checkpoint.tmp-*") if not (p / "training_state.json").exists()]
        found = inspect_after_kill(run, tmp_path, k)
        assert found is not None or not checkpoints, f"kill {k} ({kind}) lost the checkpoint"
        if found is not None:
            assert not checkpoints or found[0] >= checkpoints[-1][1], "a kill lost a checkpoint"
            checkpoints.append((k, *found))

    finish = start_training(run, corpus, env)
    out, err = finish.communicate(timeout=300)
    assert finish.returncode == 0, err
    assert f"resuming {run} at step {checkpoints[-1][1]}" in out  # from the latest checkpoint, not from 0
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name], \
        "stale temporaries left in the run folder"
    ref_out, ref_err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, ref_err

    reference_losses = losses(reference)
    assert len(reference_losses) == STEPS
    assert losses(run) == reference_losses  # every step, bit for bit
    assert (run / "model" / "model.safetensors").read_bytes() == \
        (reference / "model" / "model.safetensors").read_bytes()
    # tokenizer.model embeds the path it was trained under; its pieces and scores must be the same
    assert (run / "tokenizer.vocab").read_bytes() == (reference / "tokenizer.vocab").read_bytes()
    print("kills:", plan, "checkpoints found (kill, step, train loss):", checkpoints)
    for _, step, train_loss in checkpoints:  # each checkpoint held the uninterrupted run's state
        assert step % CHECKPOINT_EVERY == 0 and train_loss == dict(reference_losses)[step]
    assert len(checkpoints) >= 4 and checkpoints[-1][1] > 0
    robustness_count("SIGKILL of `npllama train`: random moments", plan.count("startup") + plan.count("step"))
    robustness_count("SIGKILL of `npllama train`: inside a checkpoint write (mid-write, between renames, "
                     "before cleanup)", len(plan) - plan.count("startup") - plan.count("step"))


# ----- a write that fails --------------------------------------------------------------------------

def tiny_model():
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16)
    return Llama(config, seed=0)


def fail_mid_file(monkeypatch):
    import contextlib

    import npllama.io.safetensors as safetensors_module

    real_open = safetensors_module.atomic_open

    @contextlib.contextmanager
    def filling_open(path, mode="wb"):
        with real_open(path, mode) as f:
            yield FillsUp(f, room=1000)

    monkeypatch.setattr(safetensors_module, "atomic_open", filling_open)


def fail_rename(monkeypatch, which):
    import npllama.io.atomic as atomic

    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        first = os.path.basename(dst).startswith(".checkpoint.old-")
        second = os.path.basename(os.fspath(src)).startswith(".checkpoint.tmp-")
        if (which == "first" and first) or (which == "second" and second):
            disk_full()
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "rename", rename)


FAILING_WRITES = {
    "model weights": lambda mp: mp.setattr("npllama.io.hf.write_safetensors", disk_full),
    "optimizer state": lambda mp: mp.setattr(train_state, "write_safetensors", disk_full),
    "disk full mid-file": fail_mid_file,
    "fsync": lambda mp: mp.setattr("npllama.io.atomic.os.fsync", disk_full),
    "rename old aside": lambda mp: fail_rename(mp, "first"),
    "rename new into place": lambda mp: fail_rename(mp, "second"),
}


@pytest.mark.parametrize("point", list(FAILING_WRITES))
def test_a_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, point, robustness_count):
    model = tiny_model()
    optimizer = AdamW(model.params)
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model, optimizer.state_dict(), {"step": 1})
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for p in model.params.values():
        p += 1.0  # the state the failed write tried to save
    FAILING_WRITES[point](monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(folder, model, optimizer.state_dict(), {"step": 2})
    monkeypatch.undo()
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the previous checkpoint, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing half-written beside it
    assert load_checkpoint(folder)[2]["step"] == 1
    robustness_count("failing checkpoint writes (OSError injected)")


# ----- a base run the remaining tests continue from ------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run of 6 steps stopped after 2, with its checkpoint: copied by each test that resumes it."""
    from npllama.corpus import write_default_corpus

    base = tmp_path_factory.mktemp("base")
    corpus = write_default_corpus(base / "stories.txt", n_stories=300)
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(base / "runs"))
        train(TrainConfig(out=str(out), data=str(corpus), steps=6, eval_every=0, checkpoint_every=2, stop_after=2,
                          **FAST), echo=quiet)
    return out


@pytest.fixture
def run(stopped_run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(stopped_run, copy)
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("NPLLAMA_BACKEND", "numpy")  # faults, not kernels, are under test here
    return copy


def config_for(run, **changes):
    fields = dict(out=str(run), data=corpus_of(run), steps=6, eval_every=0, checkpoint_every=2, **FAST)
    return TrainConfig(**{**fields, **changes})


def corpus_of(run):
    return json.loads((run / "train_config.json").read_text())["data"]


def checkpoint_bytes(run):
    return {p.relative_to(run): p.read_bytes() for p in (run / "checkpoint").rglob("*") if p.is_file()}


def test_a_failing_checkpoint_write_is_reported_in_one_line(run, monkeypatch, capsys):
    before = checkpoint_bytes(run)
    monkeypatch.setattr(train_state, "write_safetensors", disk_full)
    argv = ["train", "--out", str(run), "--data", corpus_of(run), "--resume", "--preset", "stories260k",
            "--vocab-size", "360", "--batch-size", "4", "--seq-len", "32", "--steps", "6", "--eval-every", "0",
            "--checkpoint-every", "2", "--samples", "0", "--no-progress", "--lr", "0.005"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("npllama train: stopped: writing the checkpoint of step 4")
    assert "No space left on device" in err[0] and "--resume" in err[0] and "still holds" in err[0]
    monkeypatch.undo()
    assert checkpoint_bytes(run) == before


# ----- NaN and Inf ---------------------------------------------------------------------------------

BAD_PARAM = "model.layers.1.mlp.up_proj.weight"


def poison_gradient(value):
    def inject(loss, grads, model):
        grads[BAD_PARAM][0, 0] = value
        return loss, grads
    return inject


def poison_loss(loss, grads, model):
    return float("nan"), grads


def poison_parameter(loss, grads, model):
    model.params["model.norm.weight"][0] = np.inf  # as if an earlier update had blown up
    return float("inf"), grads


NON_FINITE = {
    "NaN gradient": (poison_gradient(np.nan), rf"the gradient of {BAD_PARAM} is not finite"),
    "Inf gradient": (poison_gradient(-np.inf), rf"the gradient of {BAD_PARAM} is not finite"),
    "NaN loss": (poison_loss, r"the loss is nan \(every parameter is finite"),
    "Inf parameter": (poison_parameter, r"the loss is inf \(parameters holding NaN/Inf: model\.norm\.weight\)"),
}


def inject(monkeypatch, fault, when=lambda call: call == 1):
    """Make the `when`-th calls of loss_and_grads (counted from 1) return what `fault` makes of them."""
    real = Llama.loss_and_grads
    calls = {"n": 0}

    def faulty(self, tokens, targets, *args, **kwargs):
        calls["n"] += 1
        loss, grads = real(self, tokens, targets, *args, **kwargs)
        return fault(loss, grads, self) if when(calls["n"]) else (loss, grads)

    monkeypatch.setattr(Llama, "loss_and_grads", faulty)
    return calls


@pytest.mark.parametrize("kind", list(NON_FINITE))
def test_a_non_finite_step_stops_clearly_and_keeps_the_last_good_checkpoint(run, monkeypatch, kind,
                                                                            robustness_count):
    fault, message = NON_FINITE[kind]
    before = checkpoint_bytes(run)
    inject(monkeypatch, fault)
    with pytest.raises(TrainingError, match=rf"step 3: {message}.*were not updated.*last good checkpoint"
                                            rf".*--lr.*--skip-nonfinite"):
        train(config_for(run), resume=True, echo=quiet)
    assert checkpoint_bytes(run) == before
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and "skipped" in log[-1]
    robustness_count("non-finite loss / gradient injected")


def test_a_nan_in_one_slice_of_a_split_batch_stops_the_step(run, monkeypatch):
    # two threads, each half the rows: the resumed run's first two calls are step 3's halves;
    # poison the one that comes second
    inject(monkeypatch, poison_gradient(np.nan), when=lambda call: call == 2)
    before = checkpoint_bytes(run)
    with pytest.raises(TrainingError, match=rf"step 3: the gradient of {BAD_PARAM} is not finite"):
        train(config_for(run, threads=2), resume=True, echo=quiet)
    assert checkpoint_bytes(run) == before


def test_skip_nonfinite_skips_the_batch_and_keeps_the_optimizer_finite(run, monkeypatch):
    inject(monkeypatch, poison_gradient(np.nan), when=lambda call: call in (1, 3))
    result = train(config_for(run, skip_nonfinite=True), resume=True, echo=quiet)
    assert result.step == 6 and not result.interrupted
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum("skipped" in r for r in log) == 2
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    model, optimizer_state, state = load_checkpoint(run / "checkpoint")
    assert state["step"] == optimizer_state["step"] == 6
    for group in ("m", "v"):
        assert all(np.isfinite(a).all() for a in optimizer_state[group].values())
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_skip_nonfinite_gives_up_on_a_model_that_only_makes_nan(run, monkeypatch):
    assert MAX_CONSECUTIVE_SKIPS == 20
    monkeypatch.setattr("npllama.train.MAX_CONSECUTIVE_SKIPS", 4)  # the same rule, sooner
    calls = inject(monkeypatch, poison_loss, when=lambda call: call != 2)  # one good batch resets the count
    with pytest.raises(TrainingError, match="4 batches in a row"):
        train(config_for(run, skip_nonfinite=True), resume=True, echo=quiet)
    assert calls["n"] == 6  # 1 bad, 1 good, 4 bad: it stopped, rather than skipping forever


def test_a_gradient_norm_that_overflows_stops_the_step(run, monkeypatch):
    """Finite float64 gradients whose squares overflow: the norm is inf, and an AdamW update would
    turn its second moment into inf.  The step stops before the optimizer sees them."""
    def huge(loss, grads, model):
        grads[BAD_PARAM][...] = 1e200
        return loss, grads

    inject(monkeypatch, huge)
    with pytest.raises(TrainingError, match=rf"step 1: the gradient norm overflows \(inf\); its largest "
                                            rf"entries are in {BAD_PARAM}"):
        train(config_for(run, dtype="float64", out=str(run.parent / "f64")), echo=quiet)


# ----- stop signals: a step is all or nothing -------------------------------------------------------

def signal_inside_the_update(monkeypatch, signum, at_call):
    """Send `signum` to this process from inside AdamW's update of one parameter (the `at_call`-th
    call of npllama.optim.adamw_update, counted from 1): the moment where an interrupted step would
    leave some parameters updated and others not.  The NumPy update runs (the `run` fixture sets
    NPLLAMA_BACKEND=numpy), so every parameter goes through this function."""
    from npllama import optim

    real, calls = optim.adamw_update, {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), signum)  # delivered to the handler in force at once
        return real(*args, **kwargs)

    monkeypatch.setattr(optim, "adamw_update", update)
    return calls


def assert_consistent_checkpoint(run):
    """What --resume requires: the checkpoint's step, its optimizer's step count and the last
    logged step agree, and every weight is finite."""
    model, optimizer_state, state = load_checkpoint(run / "checkpoint")
    assert state["step"] == optimizer_state["step"] == max(step for step, _ in losses(run))
    assert all(np.isfinite(p).all() for p in model.params.values())
    return state["step"]


STOP_SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}


@pytest.fixture(scope="module")
def continued_run(stopped_run, tmp_path_factory):
    """The base run continued to its end without interruption: what every interrupted copy must match."""
    reference = tmp_path_factory.mktemp("continued") / "run"
    shutil.copytree(stopped_run, reference)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(reference.parent / "runs"))
        mp.setenv("NPLLAMA_BACKEND", "numpy")
        train(config_for(reference), resume=True, echo=quiet)
    return reference


@pytest.mark.parametrize("name", list(STOP_SIGNALS))
def test_a_stop_signal_inside_the_optimizer_update_finishes_the_step_then_stops(run, continued_run, tmp_path,
                                                                             monkeypatch, name, robustness_count):
    signum = STOP_SIGNALS[name]
    reference = continued_run  # the same run, never interrupted

    n_params = len(Llama.from_pretrained(run / "checkpoint" / "model").params)
    # the 5th parameter of the 2nd step of this call (step 4 of the run): half-way through an update
    signal_inside_the_update(monkeypatch, signum, at_call=n_params + 5)
    result = train(config_for(run), resume=True, echo=quiet)
    assert result.interrupted and result.stop_signal == signum and result.step == 4
    assert assert_consistent_checkpoint(run) == 4
    monkeypatch.undo()
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("NPLLAMA_BACKEND", "numpy")
    assert not train(config_for(run), resume=True, echo=quiet).interrupted
    assert losses(run) == losses(reference)  # bit for bit: the stop lost nothing and added nothing
    a, b = (Llama.from_pretrained(folder / "model") for folder in (run, reference))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    robustness_count("stop signals inside the optimizer update (SIGINT, SIGTERM, SIGHUP)")


def test_sigterm_stops_npllama_train_like_ctrl_c(run, tmp_path):
    # a real process, as `timeout` or a container would stop it: the signal arrives while the
    # process waits at the start of a step (the marker says it is there), so nothing is random
    marker = tmp_path / "waiting"
    runner = r'''
import os, sys, time
import npllama.train as train
real = train._Loop.accumulate
def accumulate(self):
    if self.step == 3:
        open(os.environ["MARKER"], "w").close()
        time.sleep(60)
    return real(self)
train._Loop.accumulate = accumulate
from npllama.cli import main
sys.exit(main(sys.argv[1:]))
'''
    env = {**child_env(tmp_path), "MARKER": str(marker)}
    argv = ["train", "--out", str(run), "--resume", "--no-progress", "--backend", "numpy"]
    process = subprocess.Popen([sys.executable, "-c", runner, *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert wait_until(marker.exists, process), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM: checkpoint saved at step 3" in out
    assert assert_consistent_checkpoint(run) == 3


def test_the_optimizer_alone_finishes_its_update_before_ctrl_c(monkeypatch):
    # a library user's own loop: Ctrl-C during AdamW.step still gives a whole step
    monkeypatch.setenv("NPLLAMA_BACKEND", "numpy")
    rng = np.random.default_rng(0)
    params = {f"w{i}": rng.standard_normal((3, 4)) for i in range(6)}
    grads = {name: rng.standard_normal(p.shape) for name, p in params.items()}
    expected = {name: p.copy() for name, p in params.items()}
    AdamW(expected, lr=0.1).step(grads)
    optimizer = AdamW(params, lr=0.1)
    signal_inside_the_update(monkeypatch, signal.SIGINT, at_call=2)
    with pytest.raises(KeyboardInterrupt):
        optimizer.step(grads)
    assert optimizer.step_count == 1
    assert all(np.array_equal(params[k], expected[k]) for k in params)


# ----- a damaged checkpoint refuses --resume ---------------------------------------------------------

def _remove_state(run):
    (run / "checkpoint" / "training_state.json").unlink()


def _checkpoint_is_a_file(run):
    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint").write_text("not a folder")


def _empty_checkpoint(run):
    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint").mkdir()


def _model_without_checkpoint(run):
    shutil.copytree(run / "checkpoint" / "model", run / "model")
    shutil.rmtree(run / "checkpoint")


def _truncated_state(run):
    path = run / "checkpoint" / "training_state.json"
    path.write_bytes(path.read_bytes()[:40])


def _flipped_weight(run):
    path = run / "checkpoint" / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))


DAMAGE = {"training_state.json deleted": (_remove_state, "training_state.json"),
          "checkpoint is a file": (_checkpoint_is_a_file, "not a folder"),
          "checkpoint empty": (_empty_checkpoint, "damaged or incomplete"),
          "model/ but no checkpoint": (_model_without_checkpoint, "final model"),
          "training_state.json truncated": (_truncated_state, "not valid JSON"),
          "a bit flipped in the weights": (_flipped_weight, "checksum")}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_refuses_to_resume_and_changes_nothing(run, kind, capsys, robustness_count):
    damage, message = DAMAGE[kind]
    damage(run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["train", "--out", str(run), "--resume", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # log.jsonl above all: never wiped, never restarted from step 0
    robustness_count("damaged checkpoint/ on --resume (refused, nothing changed)")


# ----- one writer per run folder; readers never disturb it ------------------------------------------

HOLD_THE_LOCK = r'''
import sys
from npllama.runs import writing_run
with writing_run(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
'''


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_process(run, tmp_path, capsys):
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run)], env=child_env(tmp_path),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"being written by another process (pid {holder.pid})" in err[0], err
        # a new start is refused before the lock is sought (and before --data is read): the folder
        # holds a run, whoever is writing it
        assert main(["train", "--out", str(run), "--data", corpus_of(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already holds a run" in err[0], err
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()
                 if p.name != ".npllama.lock"}
        assert after == {k: v for k, v in before.items() if k.name != ".npllama.lock"}
    finally:
        holder.kill()  # SIGKILL: no chance to unlock by hand
        holder.wait(timeout=30)
    from npllama.runs import writing_run

    with writing_run(run):  # the lock went with the process
        pass


def test_a_reader_never_renames_under_a_writer_and_waits_for_its_replace(run, tmp_path):
    import threading

    from npllama.io.atomic import _OLD_TAG
    from npllama.runs import load_model_and_tokenizer, reading_run, replacing_in_run, writing_run

    backup = run / f".checkpoint{_OLD_TAG}1"
    (run / "checkpoint").rename(backup)  # a writer between the two renames of its replace
    with writing_run(run):
        model, _, model_dir = load_model_and_tokenizer(run)
        assert model_dir == backup / "model" and backup.is_dir() and not (run / "checkpoint").exists()
    (backup).rename(run / "checkpoint")

    # a replace waits while a reader loads, and goes on once it has finished
    replaced = threading.Event()

    def replace():
        with replacing_in_run(run):
            replaced.set()

    with reading_run(run):
        writer = threading.Thread(target=replace)
        writer.start()
        assert not replaced.wait(0.3)
    writer.join(timeout=30)
    assert replaced.is_set()


# ----- resume against the command line, stale files ----------------------------------------------------

def test_resume_applies_a_changed_setting_explicitly_and_records_it(run, capsys):
    argv = ["train", "--out", str(run), "--resume", "--weight-decay", "0.5", "--stop-after", "1", "--no-progress"]
    assert main(argv) == 0  # a planned stop is a success
    out = capsys.readouterr().out
    assert "settings changed on resume" in out and "weight_decay 0.1 -> 0.5" in out
    assert json.loads((run / "train_config.json").read_text())["weight_decay"] == 0.5
    _, optimizer_state, state = load_checkpoint(run / "checkpoint")
    assert optimizer_state["hyperparams"]["weight_decay"] == 0.5 and state["step"] == 3
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"step": 2, "settings_changed": {"weight_decay": [0.1, 0.5]}} in records
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # 0.5 is now the run's
    assert json.loads((run / "train_config.json").read_text())["weight_decay"] == 0.5


def _saved_settings(run, **changes):
    path = run / "train_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _optimizer_header(run, **changes):
    path = run / "checkpoint" / "training_state.json"
    record = json.loads(path.read_text())
    record["optimizer"]["hyperparams"].update(changes)
    path.write_text(json.dumps(record))


def _optimizer_arrays(run, value, where="v"):
    from npllama.io.safetensors import read_safetensors, write_safetensors

    path = run / "checkpoint" / "optimizer.safetensors"
    arrays = read_safetensors(path)
    name = next(k for k in arrays if k.startswith(f"{where}/"))
    arrays[name].reshape(-1)[0] = value
    write_safetensors(path, arrays, checksums=True)  # a valid file: the values themselves are wrong


BAD_SAVED_STATE = {
    "weight_decay 1e6 in train_config.json": (lambda r: _saved_settings(r, weight_decay=1e6), "lr * weight_decay"),
    "a list for steps in train_config.json": (lambda r: _saved_settings(r, steps=[6]), "steps"),
    "eps 1e300 in the optimizer state": (lambda r: _optimizer_header(r, eps=1e300), "eps"),
    "weight_decay 1e6 in the optimizer state": (lambda r: _optimizer_header(r, weight_decay=1e6), "weight_decay"),
    "an eps the run never chose": (lambda r: _optimizer_header(r, eps=1e-3), "eps"),
    "NaN second moment": (lambda r: _optimizer_arrays(r, np.nan), "NaN/Inf"),
    "Inf first moment": (lambda r: _optimizer_arrays(r, np.inf, "m"), "NaN/Inf"),
    "negative second moment": (lambda r: _optimizer_arrays(r, -1.0), "negative"),
}


@pytest.mark.parametrize("kind", list(BAD_SAVED_STATE))
def test_saved_state_is_validated_like_the_command_line(run, kind, capsys, robustness_count):
    corrupt, message = BAD_SAVED_STATE[kind]
    corrupt(run)
    before = checkpoint_bytes(run)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert checkpoint_bytes(run) == before
    robustness_count("invalid saved settings / optimizer state on --resume (refused)")


def test_a_tokenizer_left_by_a_failed_start_is_not_reused(run, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(run / "tokenizer.model", fresh / "tokenizer.model")  # 360 pieces, from another start (or another --tokenizer)
    (fresh / "train_config.json").write_text((run / "train_config.json").read_text())
    train(config_for(fresh, vocab_size=400, steps=1), echo=quiet)
    from npllama.tokenizer import Tokenizer

    assert Tokenizer(fresh / "tokenizer.model").vocab_size == 400
    assert Llama.from_pretrained(fresh / "model").config.vocab_size == 400
    assert json.loads((fresh / "train_config.json").read_text())["vocab_size"] == 400


def test_a_full_disk_while_the_tokenizer_is_written_is_reported_as_such_and_cleaned_up(tmp_path, monkeypatch, capsys):
    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "stories.txt", n_stories=50)
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the tokenizer's file from the others")
    monkeypatch.setattr(os, "fdopen", files_on_a_full_disk(os.fdopen, only="tokenizer.model"))
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(corpus), "--out", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training the tokenizer failed" in err[0] and "out of space" in err[0], err
    assert not (run / "tokenizer.model").exists()
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]


def test_resume_takes_the_same_file_under_another_name_as_unchanged(run, monkeypatch, capsys):
    corpus = Path(corpus_of(run))
    monkeypatch.chdir(corpus.parent)
    assert main(["train", "--out", str(run), "--resume", "--data", corpus.name, "--stop-after", "1",
                 "--no-progress"]) == 0
    assert "settings changed" not in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--data", str(run / "train_config.json"),
                 "--no-progress"]) == 2  # another file is another run's data
    assert "cannot resume" in capsys.readouterr().err
