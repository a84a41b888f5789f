"""A first run trains on the NumPy references while a helper process compiles the kernels
(npllama/kernels/precompile.py, npllama/train.py's _Loop), then changes to the kernels."""
import json

import numpy as np
import pytest

from npllama import use_backend
from npllama.kernels import precompile
from npllama.parallel import one_blas_thread
from npllama.train import TrainConfig, train

FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300,
            eval_batches=2, samples=0, progress=False, lr=5e-3, eval_every=0, checkpoint_every=0)


class StandInHelper:
    """A helper that is 'compiling' for the first `checks` questions, then ended with `code`."""

    def __init__(self, checks: int, code: int = 0):
        self.checks, self.asked = checks, 0
        self.process = type("Process", (), {"returncode": None})()
        self.code = code

    def running(self) -> bool:
        self.asked += 1
        if self.asked > self.checks:
            self.process.returncode = self.code
        return self.process.returncode is None

    def succeeded(self) -> bool:
        return self.process.returncode == 0

    def seconds(self) -> float:
        return 1.5


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def run_with(monkeypatch, helper, out, **settings):
    monkeypatch.setattr(precompile, "start_helper_on_a_cold_cache", lambda dtype: helper)
    lines = []
    result = train(TrainConfig(out=str(out), **{**FAST, **settings}), echo=lines.append)
    return result, lines


def test_steps_run_on_the_reference_until_the_helper_is_done_then_on_the_kernels(monkeypatch, tmp_path):
    # running() is asked once as the loop starts and once before each step: 4 yes -> steps 1-3
    result, lines = run_with(monkeypatch, StandInHelper(checks=4), tmp_path / "bridged", steps=6, threads=1)
    steps = [r for r in log_records(tmp_path / "bridged") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r.get("backend") for r in steps] == ["numpy"] * 3 + [None] * 3
    assert any("steps 1-3 ran on the NumPy reference" in line for line in lines), lines
    assert result.step == 6 and result.val_loss is not None

    # The same three steps with the reference backend, unsplit, BLAS on one thread: the same bits.
    # The kernels round differently, so a bridge that ran them would not match.
    with one_blas_thread(), use_backend("numpy"):
        train(TrainConfig(out=str(tmp_path / "reference"), steps=6, threads=1, **FAST), echo=lambda *a: None)
    reference = [r for r in log_records(tmp_path / "reference") if "loss" in r]
    assert [r["loss"] for r in steps[:3]] == [r["loss"] for r in reference[:3]]
    assert [r["loss"] for r in steps[3:]] != [r["loss"] for r in reference[3:]]


def test_a_run_that_ends_before_the_helper_never_waits_for_it(monkeypatch, tmp_path):
    out = tmp_path / "run"
    result, lines = run_with(monkeypatch, StandInHelper(checks=10**6), out, steps=3)
    records = log_records(out)
    assert [r.get("backend") for r in records if "loss" in r] == ["numpy"] * 3
    assert records[-1]["step"] == 3 and "val_loss" in records[-1]            # evaluated on the reference
    assert result.val_loss == pytest.approx(records[-1]["val_loss"])
    assert not any("choosing --threads" in line or "kernels compiled" in line for line in lines), lines
    assert not (out / "threads.json").exists()          # no thread count measured: no kernel step ran


def test_a_failed_helper_is_said_and_the_kernels_compile_in_the_run(monkeypatch, tmp_path):
    out = tmp_path / "run"
    result, lines = run_with(monkeypatch, StandInHelper(checks=2, code=3), out, steps=3, threads=1)
    assert [r.get("backend") for r in log_records(out) if "loss" in r] == ["numpy", None, None]
    assert any("failed (exit code 3); step 1 ran on the NumPy reference" in line for line in lines), lines
    assert np.isfinite(result.val_loss)


def test_no_helper_means_every_step_on_the_kernels(monkeypatch, tmp_path):
    out = tmp_path / "run"
    run_with(monkeypatch, None, out, steps=2, threads=1)
    assert [r.get("backend") for r in log_records(out) if "loss" in r] == [None, None]
