"""A first run trains on the NumPy references while a helper process compiles the kernels
(npllama/kernels/precompile.py, npllama/train.py's _Loop), then changes to the kernels."""
import json

import numpy as np
import pytest

import npllama.train
from npllama import use_backend
from npllama.kernels import precompile
from npllama.parallel import one_blas_thread
from npllama.train import TrainConfig, train

FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300,
            eval_batches=2, samples=0, progress=False, lr=5e-3, eval_every=0, checkpoint_every=0)


def log_records(run_dir):
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class StandInHelper:
    """A helper whose training kernels are 'ready' once the run has logged `ready_at` steps and
    which 'ends' (with exit code `code`) once it has logged `ends_at`: what the run sees of the
    helper depends on the run's progress only, not on time."""

    def __init__(self, run_dir, ready_at: int, ends_at: int, code: int = 0, decoding: bool = True):
        self.run_dir, self.ready_at, self.ends_at, self.code = run_dir, ready_at, ends_at, code
        self.decoding = decoding
        self.process = type("Process", (), {"returncode": None})()

    def _steps(self) -> int:
        return sum("loss" in r for r in log_records(self.run_dir))

    def running(self) -> bool:
        if self._steps() >= self.ends_at:
            self.process.returncode = self.code
        return self.process.returncode is None

    def training_kernels_ready(self) -> bool:
        return self._steps() >= self.ready_at and (self.running() or self.code == 0)

    def seconds(self) -> float:
        return 1.5


class WaitedFor(StandInHelper):
    """Still at work when the run ends; records the wait (and raises `during_wait` in it)."""

    def __init__(self, run_dir, during_wait=None):
        super().__init__(run_dir, ready_at=99, ends_at=99)
        self.during_wait, self.calls = during_wait, []

    def wait(self):
        self.calls.append("wait")
        self.log_at_wait = log_records(self.run_dir)
        if self.during_wait is not None:
            raise self.during_wait
        self.process.returncode = 0

    def stop(self):
        self.calls.append("stop")
        self.process.returncode = -9


def run_with(monkeypatch, helper, out, **settings):
    monkeypatch.setattr(precompile, "start_helper_on_a_cold_cache", lambda dtype, decoding: helper)
    lines = []
    result = train(TrainConfig(out=str(out), **{**FAST, **settings}), echo=lines.append)
    return result, lines


def test_steps_run_on_the_reference_until_the_kernels_are_compiled_then_on_the_kernels(monkeypatch, tmp_path):
    out = tmp_path / "bridged"
    result, lines = run_with(monkeypatch, StandInHelper(out, ready_at=3, ends_at=3), out, steps=6, threads=1)
    steps = [r for r in log_records(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r.get("backend") for r in steps] == ["numpy"] * 3 + [None] * 3
    assert any("steps 1-3 ran on the NumPy reference" in line for line in lines), lines
    assert result.step == 6 and result.val_loss is not None

    # The same three steps with the reference backend, unsplit, BLAS on one thread: the same bits.
    # The kernels round differently, so a bridge that ran them would not match.  Each step is
    # told by its loss and its gradient norm: a float32 loss alone came out equal to the last
    # bit on the kernels and the reference for three steps on one machine (an AVX-512 Xeon),
    # while the float64 norm of the gradients, summed over every entry, differed.
    with one_blas_thread(), use_backend("numpy"):
        train(TrainConfig(out=str(tmp_path / "reference"), steps=6, threads=1, **FAST), echo=lambda *a: None)
    reference = [r for r in log_records(tmp_path / "reference") if "loss" in r]

    def told_by(records):
        return [(r["loss"], r["grad_norm"]) for r in records]
    assert told_by(steps[:3]) == told_by(reference[:3])
    assert all(mine != theirs for mine, theirs in zip(told_by(steps[3:]), told_by(reference[3:])))


def test_while_the_helper_compiles_the_decoding_kernels_the_run_steps_on_one_core(monkeypatch, tmp_path):
    """Ready after 2 steps, ended after 4: steps 3-4 on the kernels with BLAS on one thread, and
    the thread count is measured only once the helper no longer shares the cores."""
    out = tmp_path / "run"
    helper = StandInHelper(out, ready_at=2, ends_at=4)
    blas_held, measured_at = [], []
    real_step = npllama.train._Loop.accumulate

    def accumulate(loop):
        from npllama.parallel import _blas_state

        blas_held.append(_blas_state["depth"] > 0)
        return real_step(loop)

    def fastest_threads(*args, **kwargs):
        measured_at.append((len([r for r in log_records(out) if "loss" in r]), helper.running()))
        return 1

    monkeypatch.setattr(npllama.train._Loop, "accumulate", accumulate)
    monkeypatch.setattr(npllama.train, "fastest_threads", fastest_threads)
    _, lines = run_with(monkeypatch, helper, out, steps=6)
    assert [r.get("backend") for r in log_records(out) if "loss" in r] == ["numpy"] * 2 + [None] * 4
    assert blas_held == [True] * 4 + [False] * 2      # steps 1-4 leave the other core to the helper
    assert measured_at == [(4, False)]
    assert any("on one core while the helper compiles the decoding kernels" in line for line in lines), lines

    # a helper that was not asked for them is only finishing: nothing said of decoding kernels
    out = tmp_path / "no-samples"
    _, lines = run_with(monkeypatch, StandInHelper(out, ready_at=2, ends_at=3, decoding=False), out, steps=4)
    assert not any("decoding" in line for line in lines) and any("kernels compiled" in line for line in lines)


def test_a_run_that_ends_before_the_kernels_are_ready_runs_on_the_reference_to_its_end(monkeypatch, tmp_path):
    out = tmp_path / "run"
    helper = WaitedFor(out)
    result, lines = run_with(monkeypatch, helper, out, steps=3)
    assert helper.calls == ["wait"] and helper.log_at_wait == log_records(out)     # after the last line
    records = log_records(out)
    assert [r.get("backend") for r in records if "loss" in r] == ["numpy"] * 3
    assert records[-1]["step"] == 3 and "val_loss" in records[-1]            # evaluated on the reference
    assert result.val_loss == pytest.approx(records[-1]["val_loss"])
    assert not any("choosing --threads" in line or "kernels compiled" in line for line in lines), lines
    assert not (out / "threads.json").exists()          # no thread count measured: no kernel step ran


def test_a_failed_helper_is_said_and_the_kernels_compile_in_the_run(monkeypatch, tmp_path):
    out = tmp_path / "run"
    result, lines = run_with(monkeypatch, StandInHelper(out, ready_at=99, ends_at=1, code=3), out,
                             steps=3, threads=1)
    assert [r.get("backend") for r in log_records(out) if "loss" in r] == ["numpy", None, None]
    assert any("ended (exit code 3) without caching the kernels; step 1 ran on the NumPy reference" in line
               for line in lines), lines
    assert np.isfinite(result.val_loss)


def test_no_helper_means_every_step_on_the_kernels(monkeypatch, tmp_path):
    out = tmp_path / "run"
    run_with(monkeypatch, None, out, steps=2, threads=1)
    assert [r.get("backend") for r in log_records(out) if "loss" in r] == [None, None]


def test_a_run_with_samples_asks_the_helper_for_the_decoding_kernels(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(precompile, "start_helper_on_a_cold_cache", lambda dtype, decoding: asked.append(decoding))
    for name, settings in (("samples", dict(samples=1, sample_tokens=4)), ("none", {}),
                           ("mlm", dict(samples=1, objective="mlm"))):
        train(TrainConfig(out=str(tmp_path / name), steps=1, threads=1, **{**FAST, **settings}), echo=lambda *a: None)
    assert asked == [True, False, False]


def test_a_run_that_ends_first_waits_for_the_helper_to_fill_the_cache(monkeypatch, tmp_path):
    """Else a helper stopped at exit would leave the cache cold for the next run, and the next."""
    out = tmp_path / "run"
    helper = WaitedFor(out)
    result, lines = run_with(monkeypatch, helper, out, steps=2)
    assert helper.calls == ["wait"] and not result.interrupted
    assert any("waiting for the helper process" in line for line in lines), lines


def test_ctrl_c_while_waiting_for_the_helper_stops_it_and_keeps_the_run(monkeypatch, tmp_path):
    out = tmp_path / "run"
    helper = WaitedFor(out, during_wait=KeyboardInterrupt())
    result, lines = run_with(monkeypatch, helper, out, steps=2)
    assert helper.calls == ["wait", "stop"]
    assert result.step == 2 and not result.interrupted and (out / "model" / "model.safetensors").is_file()
    assert any("skipped" in line for line in lines), lines


def test_sigterm_while_waiting_for_the_helper_stops_the_run_at_its_saved_last_step(monkeypatch, tmp_path):
    """A scheduler's or `timeout`'s SIGTERM during the wait is a stop, not the Ctrl-C that skips the
    wait: it used to be taken for one, so the run wrote its model, printed samples and said it
    finished.  The checkpoint already holds the last step: the resume writes the model."""
    import signal

    from npllama.interrupts import Interrupted

    out = tmp_path / "run"
    helper = WaitedFor(out, during_wait=Interrupted(signal.SIGTERM))
    result, lines = run_with(monkeypatch, helper, out, steps=2)
    assert helper.calls == ["wait", "stop"]
    assert result.interrupted and result.stop_signal == signal.SIGTERM and result.step == 2
    assert not (out / "model").exists()
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["step"] == 2
    assert any(f"stopped by SIGTERM: checkpoint saved at step 2 in {out / 'checkpoint'}" in line
               for line in lines), lines
    assert not any("skipped" in line for line in lines), lines
