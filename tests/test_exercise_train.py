"""`npllama exercise train`: the student's backward, put in place with npllama.use_op, trains the
tiny model; a correct one gives the library's loss curve, a wrong one does not."""
import numpy as np
import pytest

from npllama.exercises import EXERCISES
from npllama.exercises.planted import CORRECT
from npllama.exercises.runner import SubmissionError
from npllama.exercises.training import (as_the_checks_take_it, ascii_chart, train_with_submission, verdict_of,
                                        why_the_run_stopped)

SMALL = dict(steps=6, batch_size=2, seq_len=16, corpus_stories=300, progress=False)

MISSING_TERM = """import numpy as np


def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    dx = rstd * dy * weight
    return dx, np.sum((dy * x * rstd).reshape(-1, x.shape[-1]), axis=0)
"""


def test_correct_and_wrong_backwards_train_the_tiny_model(tmp_path):
    right = tmp_path / "right.py"
    right.write_text(CORRECT["rmsnorm"])
    same = train_with_submission("rmsnorm", right, out=tmp_path / "a", echo=lambda *a: None, **SMALL)
    assert same.ok and "exactly as the library's" in same.verdict
    assert len(same.reference) == len(same.yours) == 6
    wrong = tmp_path / "wrong.py"
    wrong.write_text(MISSING_TERM)
    differs = train_with_submission("rmsnorm", wrong, out=tmp_path / "b", echo=lambda *a: None, **SMALL)
    assert not differs.ok and differs.reference == same.reference
    assert differs.yours[0] == same.yours[0] and differs.yours[-1] != same.yours[-1]   # same start, other path
    assert "R" in differs.format() and "verdict:" in differs.format()


def test_one_gradient_in_a_1_tuple_reaches_the_model_as_the_array():
    """The checks take softmax's dx as the array or as (dx,); the model's own code would fail on
    the tuple (AttributeError: 'tuple' object has no attribute 'reshape', blamed on the student)."""
    dx = np.ones((2, 3))
    for returned in ((dx,), [dx], dx):
        assert as_the_checks_take_it(EXERCISES["softmax"], lambda dp, cache: returned)(None, None) is dx
    pair = (dx, dx[0])                         # several gradients are the model's tuple as they are
    assert as_the_checks_take_it(EXERCISES["rmsnorm"], lambda dy, cache: pair)(None, None) is pair


def test_a_run_is_blamed_on_the_students_function_only_when_it_raised_there(tmp_path):
    """An rmsnorm_backward returning a float64 dweight for float32 activations stopped the run with
    "your function raised TypeError: grads[...] has dtype float64", raised by the optimizer."""
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text("def rmsnorm_backward(dy, cache):\n    raise RuntimeError('not yet')\n")
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    try:
        namespace["rmsnorm_backward"](None, None)
    except RuntimeError as error:
        inside = why_the_run_stopped(error, path, EXERCISES["rmsnorm"])
    assert inside == f"your function raised RuntimeError: not yet (line 2 of {path}: raise RuntimeError('not yet'))"
    try:
        raise TypeError("grads['w'] has dtype float64, expected float32")
    except TypeError as error:
        after = why_the_run_stopped(error, path, EXERCISES["rmsnorm"])
    assert after.startswith("the training step, given what your rmsnorm_backward returned, raised TypeError: grads")
    assert "your function raised" not in after


def test_a_crashing_backward_stops_its_run_not_the_command(tmp_path):
    path = tmp_path / "crash.py"
    path.write_text("def rmsnorm_backward(dy, cache):\n    raise RuntimeError('not yet')\n")
    result = train_with_submission("rmsnorm", path, out=tmp_path / "c", echo=lambda *a: None, **SMALL)
    assert not result.ok and "RuntimeError: not yet" in result.stopped and result.yours == []


def test_refusals_and_bad_arguments(tmp_path):
    path = tmp_path / "reexport.py"
    path.write_text("from npllama.ops.rmsnorm import rmsnorm_backward  # noqa\n")
    with pytest.raises(Exception, match="refused"):
        train_with_submission("rmsnorm", path, **SMALL)
    with pytest.raises(ValueError, match="not part of the model's pre-training"):
        train_with_submission("layernorm", path, **SMALL)
    for assembled in ("block", "model"):      # they are the pre-training step, made of the ops
        with pytest.raises(ValueError, match="assembled from the ops' backward passes") as refused:
            train_with_submission(assembled, path, **SMALL)
        assert "not part of" not in str(refused.value)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        train_with_submission("rmsnorm", path, **{**SMALL, "steps": 1})


def test_verdicts_and_chart():
    ref = [5.0, 4.0, 3.0, 2.5]
    assert verdict_of(ref, ref, 4, "")[0]
    ok, text = verdict_of(ref, [5.0, 4.9, 4.95, 5.0], 4, "")
    assert not ok and "does not learn" in text
    ok, text = verdict_of(ref, [5.0, 4.2], 4, "FloatingPointError")
    assert not ok and "stopped after 2 of 4" in text
    chart = ascii_chart(ref, [5.0, 4.5, 4.0, 3.5], width=8, height=4)
    assert chart[0].strip().startswith("5.000") and "*" in chart[0] and "Y" in "".join(chart)


def test_a_hanging_file_is_stopped_by_the_sandboxed_check_before_training(tmp_path):
    path = tmp_path / "loop.py"
    path.write_text("def rmsnorm_backward(dy, cache):\n    while True:\n        pass\n")
    said = []
    with pytest.raises(SubmissionError, match=r"cannot train the model \(timeout\).*endless loop"):
        train_with_submission("rmsnorm", path, out=tmp_path / "runs", echo=said.append, check_timeout=3, **SMALL)
    assert said and said[0].startswith(f"checking {path} in a process of its own")   # before anything slow
    assert not (tmp_path / "runs").exists()


def test_system_exit_inside_the_run_is_reported_with_its_line(tmp_path):
    path = tmp_path / "sysexit.py"
    path.write_text("import numpy as np\ndef rmsnorm_backward(dy, cache):\n    raise SystemExit(3)\n")
    result = train_with_submission("rmsnorm", path, out=tmp_path / "d", echo=lambda *a: None, **SMALL)
    assert not result.ok and result.yours == []
    assert f"raised SystemExit: 3 (line 3 of {path}: raise SystemExit(3))" in result.stopped


# ----- a teacher's own exercise (--exercise-file) ---------------------------------------------------------
VARIANT = """from npllama.exercises.definitions import RMSNorm


class WideRMSNorm(RMSNorm):
    op, module = "rmsnorm_wide", "npllama.ops.rmsnorm"
    edge_cases = [dict(lead_shape=(2,), D=16, eps=1e-5, seed=1)]
"""

OWN_FORWARD = """from npllama.exercises.checks import SEED, Choice, Ints, Shape
from npllama.exercises.definitions import RMSNorm
from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward as library_forward


def rmsnorm_forward(x, weight, eps):     # a variant written for a matrix of rows only
    if x.ndim != 2:
        raise ValueError(f"x must be (rows, D), got {x.shape}")
    return library_forward(x, weight, eps)


class RowsOnly(RMSNorm):
    op = "rmsnorm_rows"
    space = dict(lead_shape=Shape(1, 1, 1, 3), D=Ints(1, 6), eps=Choice((1e-6, 1e-5)), seed=SEED)
    edge_cases = [dict(lead_shape=(2,), D=4, eps=1e-5, seed=1)]
"""


def test_a_teachers_variant_of_a_model_op_trains_and_a_forward_the_model_cannot_call_is_named(tmp_path, capsys):
    from npllama.cli import main
    from npllama.exercises import load_exercises

    (tmp_path / "variant.py").write_text(VARIANT)
    right = tmp_path / "right.py"
    right.write_text(CORRECT["rmsnorm"])
    assert main(["exercise", "train", "--exercise-file", str(tmp_path / "variant.py"), "rmsnorm_wide", str(right),
                 "--steps", "3", "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "exactly as the library's" in out and (tmp_path / "c" / "reference").is_dir()
    # a forward the model cannot call, named as the teacher's
    (tmp_path / "own.py").write_text(OWN_FORWARD)
    rows_only = load_exercises(tmp_path / "own.py")["rmsnorm_rows"]      # its own cases pass
    with pytest.raises(ValueError, match=r"exercise 'rmsnorm_rows' of own.py: the model cannot train with its "
                                         r"rmsnorm_forward and reference rmsnorm_backward in place of its own: "
                                         r"ValueError: x must be \(rows, D\), got \(\d+, 16, 128\)"):
        train_with_submission(rows_only, right, out=tmp_path / "d", echo=lambda *a: None, **SMALL)


def test_the_loss_picture_leaves_the_users_matplotlib_backend_alone(tmp_path):
    # Before: _plot called matplotlib.use("Agg") and drew with pyplot, so a Jupyter user's inline
    # backend was switched off by `exercise train` (npllama.viz draws without pyplot for this reason)
    matplotlib = pytest.importorskip("matplotlib")
    from npllama.exercises.training import TrainComparison, _plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        comparison = TrainComparison("rmsnorm", [1, 2, 3], [3.0, 2.5, 2.0], [3.0, 2.6], "stopped", "v", False)
        path = _plot(comparison, tmp_path / "rmsnorm_losses.png")
        assert path.read_bytes().startswith(b"\x89PNG") and matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_the_losses_of_a_run_still_being_written_are_read_up_to_its_last_whole_line(tmp_path):
    # Before: _losses read log.jsonl with json.loads of its own, so a last line a kill cut short stopped
    # the comparison with a JSONDecodeError; it reads the log as `npllama viz loss` does now
    from npllama.exercises.training import _losses

    assert _losses(tmp_path) == []   # no log: the run made no step
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 3.0, "lr": 0.1}\n{"step": 1, "val_loss": 3.5}\n'
                                        '{"step": 2, "skipped": "non-finite loss"}\n{"step": 2, "loss": 2.5}\n'
                                        '{"step": 3, "lo')
    assert _losses(tmp_path) == [3.0, 2.5]
    (tmp_path / "log.jsonl").write_text('{"step": 1, "settings_changed": {}}\n')
    assert _losses(tmp_path) == []   # a log with no step trained yet


def test_a_run_that_stopped_after_one_step_is_a_point_in_the_picture(tmp_path, monkeypatch):
    # Before: a curve of one step was a line of no length, in the legend but nowhere in the picture
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from npllama.exercises.training import TrainComparison, _plot

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    _plot(TrainComparison("rmsnorm", [1], [3.0], [3.1], "stopped", "v", False), tmp_path / "p.png")
    for line in drawn[0].axes[0].get_lines():
        assert line.get_marker() not in (None, "None", "", " "), line.get_label()
