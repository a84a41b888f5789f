"""`npllama exercise train OP FILE`: your backward teaching a real LLaMA.

The default tiny model is trained twice from the same seed on the same batches: once with the
library's backward, once with yours in its place (`npllama.use_op("<op>_backward", yours)`, the
supported per-context override, on whichever backend is in force).  The two loss curves are shown
side by side (text in the terminal; a PNG too when matplotlib is installed) with a verdict.

The file is screened and its checks run briefly first, in the grading sandbox as `exercise check`
does (screen.py's rule, time and memory limits), so the curve is never the library's own backward
under another name and a file that hangs or exits stops before training starts.  In the training
run itself anything the file raises (SystemExit too) ends that run, reported with its line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import tempfile
import traceback
from pathlib import Path

from ..loss_units import loss_unit
from .assembled import Assembled
from .definitions import get_exercise
from .runner import SubmissionError, describe_exception, load_function
from .sandbox import grade_file
from .screen import RULE, guard_library, student_call

# The backward passes the pre-training step of the model runs (the others belong to fine-tuning
# heads or to the article's LayerNorm, which LLaMA does not use).
MODEL_BACKWARDS = ("embedding", "linear", "rmsnorm", "rope", "softmax", "attention", "swiglu_act", "swiglu",
                   "cross_entropy")
SAME = 1e-3          # curves within this relative distance at every step are "the same"
CLOSE = 0.03         # a final loss within 3% of the reference's "trains as well"
CHECK_TIMEOUT = 60.0  # seconds the sandboxed check before training may take (it runs one random case)
UNTRAINABLE = ("refused", "unusable", "not implemented", "timeout", "crashed")   # sandbox statuses


@dataclasses.dataclass
class TrainComparison:
    op: str
    steps: list[int]
    reference: list[float]
    yours: list[float]                 # shorter than reference when training stopped early
    stopped: str = ""                  # why your run stopped early ('' when it ran to the end)
    verdict: str = ""
    ok: bool = False
    plot: Path | None = None

    def format(self, width: int = 60, height: int = 12) -> str:
        lines = [f"loss per step, {len(self.reference)} steps (R = library's backward, Y = yours, * = both):"]
        lines += ascii_chart(self.reference, self.yours, width, height)
        if self.stopped:
            lines.append(f"your run stopped at step {len(self.yours)}: {self.stopped}")
        lines.append(f"final loss: library {self.reference[-1]:.4f}"
                     + (f", yours {self.yours[-1]:.4f}" if self.yours else ", yours: none"))
        if self.plot is not None:
            lines.append(f"plot: {self.plot}")
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def ascii_chart(reference, yours, width=60, height=12) -> list[str]:
    """Two loss curves in a text grid, the y axis labelled with the loss."""
    finite = [v for v in list(reference) + list(yours) if math.isfinite(v)]
    if not finite:
        return ["(no finite losses to draw)"]
    top, bottom = max(finite), min(finite)
    span = (top - bottom) or 1.0
    n = max(len(reference), len(yours), 1)
    grid = [[" "] * width for _ in range(height)]
    for values, mark in ((reference, "R"), (yours, "Y")):
        for i, v in enumerate(values):
            if not math.isfinite(v):
                continue
            col = min(width - 1, i * width // n)
            row = min(height - 1, int((top - v) / span * (height - 1) + 0.5))
            cell = grid[row][col]
            grid[row][col] = mark if cell in (" ", mark) else "*"
    labels = [f"{top - span * r / (height - 1):7.3f} |" for r in range(height)]
    return [label + "".join(row) for label, row in zip(labels, grid)] + [" " * 8 + "+" + "-" * width]


def verdict_of(reference, yours, steps_total, stopped) -> tuple[bool, str]:
    if stopped:
        return False, (f"your backward does not train the model: the run stopped after {len(yours)} of "
                       f"{steps_total} steps ({stopped})")
    gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference, yours))
    if gap <= SAME:
        return True, ("your backward trains the model exactly as the library's does (every step's loss "
                      f"within {gap:.1e} of the reference)")
    final = abs(yours[-1] - reference[-1]) / reference[-1]
    if yours[-1] <= reference[-1] * (1 + CLOSE):
        return False, (f"the model learns with your backward (final loss within {100 * final:.1f}% of the "
                       f"library's), but the curves part by up to {100 * gap:.1f}% at some step: a small "
                       f"error in the gradient -- run `npllama exercise check` to find it")
    progress = (yours[0] - yours[-1]) / max(reference[0] - reference[-1], 1e-12)
    if progress >= 0.1:
        return False, (f"the model learns more slowly with your backward ({100 * progress:.0f}% of the library's "
                       f"progress): final loss {yours[-1]:.3f} against {reference[-1]:.3f} -- part of the "
                       f"gradient is wrong or missing")
    return False, (f"the model does not learn with your backward: the loss went from {yours[0]:.3f} to "
                   f"{yours[-1]:.3f} while the library's reached {reference[-1]:.3f}")


def train_with_submission(op, path, *, steps: int = 200, batch_size: int = 8, seq_len: int = 64,
                          seed: int = 0, out=None, echo=print, progress: bool = True,
                          corpus_stories: int = 2000, check_timeout: float = CHECK_TIMEOUT) -> TrainComparison:
    """Train the tiny model with the library's backward and with the one in `path`; compare.

    op: an exercise's name, or an Exercise (a teacher's, teacher.load_exercises, that stands for an op
    of the model: its forward and reference backward make the reference run).

    The file is checked first in the grading sandbox (sandbox.grade_file: its own process, time and
    memory limits), so that a file that hangs, exits or cannot be used stops here with the
    checker's words (SubmissionError) before anything slow; one that only fails checks still trains."""
    exercise = get_exercise(op)
    if model_op_of(exercise) is None:
        raise ValueError(_not_trainable(exercise))
    for name, value, low in (("steps", steps, 2), ("batch_size", batch_size, 1), ("seq_len", seq_len, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    path = Path(path)
    echo(f"checking {path} in a process of its own first (at most {check_timeout:g} s) ...")
    graded = grade_file(op, path, n_random=1, timeout=check_timeout)
    if graded.status in UNTRAINABLE:
        raise SubmissionError(f"{path.name} cannot train the model ({graded.status}): {graded.diagnosis}"
                              + (f". {RULE}" if graded.status == "refused" else ""))
    echo(f"exercise check: {graded.passed} of {graded.total} checks pass"
         + ("" if graded.ok else f" (first failure: {graded.first_failure}: {graded.diagnosis})"))
    backward = _load(exercise, path)
    from ..train import TrainConfig, train

    op = exercise.op
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"npllama-train-{op}-"))
    settings = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, seed=seed, eval_every=steps,
                    checkpoint_every=steps, samples=0, corpus_stories=corpus_stories, progress=progress)
    quiet = (lambda *a, **k: None)
    whose = f"{Path(exercise.exercise_file).name}'s reference" if exercise.exercise_file else "the library's"
    echo(f"training the tiny model for {steps} steps with {whose} {exercise.backward_name} ...")
    try:
        with in_the_model(exercise, exercise.reference):
            train(TrainConfig(out=str(folder / "reference"), **settings), echo=quiet)
    except Exception as error:
        if not exercise.exercise_file:
            raise
        # a teacher's forward and reference run in the model as its own op's: say whose they are
        raise ValueError(f"exercise {op!r} of {Path(exercise.exercise_file).name}: the model cannot train with "
                         f"its {exercise.forward_name} and reference {exercise.backward_name} in place of its "
                         f"own: {type(error).__name__}: {error}") from error
    echo(f"... and again with yours ({path}) in its place")
    stopped = ""
    calls = [0]
    as_checked = as_the_checks_take_it(exercise, backward)

    def counted(*args, **kwargs):
        calls[0] += 1
        return as_checked(*args, **kwargs)
    try:
        with in_the_model(exercise, student_call(counted)):
            train(TrainConfig(out=str(folder / "yours"), tokenizer=str(folder / "reference" / "tokenizer.model"),
                              **settings), echo=quiet)
    except KeyboardInterrupt:         # Ctrl-C, or the student's code raising it: show the run so far
        stopped = "interrupted (Ctrl-C, or your code raised KeyboardInterrupt)"
    except BaseException as error:    # SystemExit included: the student's code ends that run, not this command
        stopped = why_the_run_stopped(error, path, exercise)
    reference = _losses(folder / "reference")
    yours = _losses(folder / "yours")
    if not stopped and len(yours) < len(reference):
        stopped = "a NaN or Inf loss or gradient"
    if calls[0] == 0 and not stopped:
        raise ValueError(f"the model never called {exercise.backward_name} on the {_backend()} backend, so this "
                           f"run could not test your function; try NPLLAMA_BACKEND=numpy")
    ok, verdict = verdict_of(reference, yours, steps, stopped)
    verdict += f" [your {exercise.backward_name} ran {calls[0]} times]"
    comparison = TrainComparison(op, list(range(1, len(reference) + 1)), reference, yours, stopped, verdict, ok)
    comparison.plot = _plot(comparison, folder / f"{op}_losses.png")
    return comparison


def model_op_of(exercise) -> str | None:
    """The op of the model's training step whose forward and backward the exercise's functions stand
    for, by their names (a teacher's variant of rmsnorm trains as rmsnorm does), or None."""
    for name in MODEL_BACKWARDS:
        own = get_exercise(name)
        if (exercise.forward_name, exercise.backward_name) == (own.forward_name, own.backward_name):
            return name
    return None


def _not_trainable(exercise) -> str:
    ops = ", ".join(MODEL_BACKWARDS)
    if exercise.exercise_file:
        pairs = ", ".join(f"{get_exercise(name).forward_name}/{get_exercise(name).backward_name}"
                          for name in MODEL_BACKWARDS)
        return (f"exercise {exercise.op!r} of {Path(exercise.exercise_file).name} replaces "
                f"{exercise.forward_name}/{exercise.backward_name}, which the model's training step does not "
                f"run; `exercise train` takes an exercise whose forward_name and backward_name are one of the "
                f"model's: {pairs}")
    # the block and the model are the pre-training step, but made of ops: only an op can be swapped in
    why = ("is assembled from the ops' backward passes, and training swaps in one op's backward at a time"
           if isinstance(exercise, Assembled) else "is not part of the model's pre-training step")
    return f"exercise {exercise.op!r} {why}; `exercise train` takes one of: {ops}"


def why_the_run_stopped(error: BaseException, path, exercise) -> str:
    """The exception that ended the student's run, blamed on their function only when it was
    raised inside it: an optimizer refusing a float64 gradient, or attention given a tuple, raises
    after the function has returned."""
    target = os.path.abspath(path)
    if any(os.path.abspath(frame.filename) == target for frame in traceback.extract_tb(error.__traceback__)):
        return describe_exception(error, str(path), named_as=str(path))    # as the student typed it
    return describe_exception(error, None, what=f"the training step, given what your {exercise.backward_name} "
                                                 f"returned,")


def as_the_checks_take_it(exercise, backward):
    """`backward` returning what the model expects for every result the checks accept: they take
    one gradient as the array or as a 1-tuple (checks.call_backward), the model only the array --
    on a tuple it would fail in its own code, and the run would blame the student's."""
    if len(exercise.case(exercise.probe_params).grad_names) != 1:
        return backward

    @functools.wraps(backward)
    def one_array(*args, **kwargs):
        result = backward(*args, **kwargs)
        return result[0] if isinstance(result, (tuple, list)) and len(result) == 1 else result
    return one_array


@contextlib.contextmanager
def in_the_model(exercise, backward):
    """Every call the model makes to the exercise's backward runs `backward`, fed by the reference
    forward (a kernel's cache can have another layout than the one the student was given).
    Softmax and SwiGLU's activation run inside attention's and SwiGLU's backward: use_op makes
    those run their references around the student's (backend.NESTED_OPS)."""
    from ..backend import use_op

    with use_op(exercise.forward_name, exercise.forward), use_op(exercise.backward_name, backward):
        yield


def _backend() -> str:
    from ..backend import get_backend

    return get_backend()


def _load(exercise, path: Path):
    # (grade_file has screened the file in the sandbox: a refused one never gets here)
    with guard_library(exercise):
        return load_function(exercise, path, catch_everything=True)


def _losses(run_dir: Path) -> list[float]:
    """The training losses of a run, read as `npllama viz loss` reads them (a last line the run was
    cut short in is left out); none if it logged no step."""
    from ..resuming import LOG_FILE
    from ..viz import log_curves

    return log_curves(run_dir / LOG_FILE)["loss"] if (run_dir / LOG_FILE).is_file() else []


def _plot(comparison: TrainComparison, path: Path) -> Path | None:
    from ..viz import new_figure, save_png

    try:   # drawn as npllama.viz draws: without pyplot, so a Jupyter user's backend stays as it was
        fig = new_figure(7, 4)
    except ImportError:
        return None
    ax = fig.subplots()
    point = lambda curve: "o" if len(curve) == 1 else None   # noqa: E731 (one step: a line of no length)
    ax.plot(range(1, len(comparison.reference) + 1), comparison.reference, label="library's backward",
            marker=point(comparison.reference))
    if comparison.yours:
        ax.plot(range(1, len(comparison.yours) + 1), comparison.yours, label="your backward", linestyle="--",
                marker=point(comparison.yours))
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({loss_unit('causal')})")
    ax.set_title(f"{comparison.op}: {'same curve' if comparison.ok else 'curves differ'}")
    ax.legend()
    return save_png(fig, path)
