"""What a second classroom audit found, each case a file a student could write: a failure of the
whole return value (or of dy, or of the cache) names that, not the first gradient; a rotated
return order is said once; a crash indexing a shape gets its own hint; a slow check says it is
still running; the rope starter's shapes agree with its docstring; and a student's own pytest file
can run the checks (npllama.exercises.assert_passes)."""
import re
import runpy
import sys
import textwrap
import traceback

import numpy as np
import pytest

from npllama.exercises import EXERCISES, check_file, starter_source
from npllama.exercises.runner import _tuple_index_hint
from npllama.exercises.sandbox import grade_file
from npllama.exercises.wire import remote_error

LINEAR_RIGHT = """
import numpy as np

def linear_backward(dy, cache):
    x, weight = cache
    dx = dy @ weight
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    {extra}
    return {returned}
"""


def _linear(tmp_path, name, returned="dx, dweight", extra=""):
    path = tmp_path / name
    path.write_text(textwrap.dedent(LINEAR_RIGHT).format(returned=returned, extra=extra))
    return path


# ----- a failure of the whole return value, of dy or of the cache names it ------------------------

@pytest.mark.parametrize("returned, extra, subject, message", [
    ("dx, dweight, None", "", "the return value", "returned 3 value(s); it must return 2: dx, dweight"),
    ("dx", "", "the return value", "returned one array"),
    ("None", "", "the return value", "returned None"),
    ("dx, dweight", "dy *= 0", "dy", "changed dy in place"),
    ("dx, dweight", "x[...] = 0", "cache.x", "changed cache.x in place"),
])
def test_a_failure_of_the_whole_return_value_names_it_not_a_gradient(tmp_path, returned, extra, subject,
                                                                     message):
    report = check_file("linear", _linear(tmp_path, "linear_backward.py", returned, extra), n_random=0)
    first = report.first_failure
    assert first.check.name == "returns" and message in first.finding.message
    text = report.format()
    assert f"  problem in: {subject}\n" in text, text
    assert "gradient: dx" not in text, text
    assert not report.summary().startswith("returns: dx:"), report.summary()


@pytest.mark.parametrize("op, source", [
    ("block", "def block_backward(dout, cache):\n    return dout\n"),
    ("model", "def model_backward(dlogits, cache, config):\n    return [dlogits]\n"),
    ("model", "def model_backward(dlogits, cache, config):\n    return {'model.norm.weight': 0}\n"),
])
def test_the_assembled_exercises_name_the_return_value_too(tmp_path, op, source):
    path = tmp_path / f"{op}_backward.py"
    path.write_text(source)
    text = check_file(op, path, n_random=0).format()
    assert "  problem in: the return value\n" in text, text
    assert "gradient: grads" not in text, text


def test_the_model_exercise_calls_the_upstream_gradient_dlogits_as_its_docstring_does(tmp_path):
    """The checks see model_backward through a wrapper that flattens its dict; what they say about
    the upstream gradient must use the student's own name (dlogits), not the wrapper's (dout)."""
    in_place = tmp_path / "model_backward.py"
    in_place.write_text("import numpy as np\n\ndef model_backward(dlogits, cache, config):\n    dlogits *= 2\n"
                        "    return {name: np.zeros(shape) for name, shape in config.param_shapes().items()}\n")
    finding = check_file("model", in_place, n_random=0).first_failure.finding
    assert (finding.subject, finding.message) == ("dlogits", "your function changed dlogits in place"), finding
    assert "the caller still needs dlogits" in finding.hint
    crashes = tmp_path / "crashes.py"
    crashes.write_text("def model_backward(dlogits, cache, config):\n    return cache.nothing\n")
    hint = check_file("model", crashes, n_random=0).first_failure.finding.hint
    assert "dlogits = case.dout_for(out)" in hint and "['model_backward'](dlogits, *cache)" in hint, hint
    assert EXERCISES["model"].upstream == "dlogits" and "dout" not in EXERCISES["model"].doc


# ----- a rotated return order is said once ---------------------------------------------------------

SWIGLU_ROTATED = """
from npllama.ops.linear import linear_backward
from npllama.ops.swiglu import swiglu_act_backward

def swiglu_backward(dout, cache):
    (x, w_gate), (_, w_up), act_cache, (act, w_down) = cache
    dact, dw_down = linear_backward(dout, (act, w_down))
    dgate, dup = swiglu_act_backward(dact, act_cache)
    dx_gate, dw_gate = linear_backward(dgate, (x, w_gate))
    dx_up, dw_up = linear_backward(dup, (x, w_up))
    return dx_gate + dx_up, dw_down, dw_gate, dw_up
"""


def test_a_rotated_return_order_is_named_without_the_shapes_it_implies(tmp_path):
    path = tmp_path / "swiglu_backward.py"
    path.write_text(SWIGLU_ROTATED)
    finding = check_file("swiglu", path, n_random=0).first_failure.finding
    assert "yours are (dx, dw_down, dw_gate, dw_up)" in finding.message
    assert finding.ladder.startswith("it fails even the simplest case"), finding.ladder
    assert "shape" not in finding.ladder, finding.ladder


# ----- x.shape[1] on a 1-D array: count axes from the back --------------------------------------

LINEAR_ROWS_BY_SHAPE_1 = """
def rows(a):
    return a.reshape(-1, a.shape[1])

def linear_backward(dy, cache):
    x, weight = cache
    return dy @ weight, rows(dy).T @ rows(x)
"""

LINEAR_TWO_LOOKUPS = """
def linear_backward(dy, cache):
    x, weight = cache
    return dy @ weight, dy.reshape(-1, weight.shape[0]).T @ x.reshape(-1, x.shape[1])
"""

LINEAR_CACHE_AND_SHAPE_ON_ONE_LINE = """
def linear_backward(dy, cache):
    return dy @ cache[2], dy.reshape(-1, dy.shape[-1]).T @ cache[0].reshape(-1, cache[0].shape[1])
"""

LINEAR_INDEXES_THE_CACHE = """
def linear_backward(dy, cache):
    x, weight = cache[0], cache[2]
    return dy @ weight, dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
"""

KEEPS_COLUMNS = sys.version_info >= (3, 11)     # a traceback's columns: which lookup of a line raised


@pytest.mark.parametrize("grade", [lambda path: check_file("linear", path, n_random=0).format(),
                                   lambda path: grade_file("linear", path, n_random=0).text],
                         ids=["in_process", "sandboxed"])
def test_a_shape_indexed_from_the_front_of_a_vector_gets_the_count_from_the_back_hint(tmp_path, grade):
    path = tmp_path / "linear_backward.py"
    path.write_text(LINEAR_ROWS_BY_SHAPE_1)
    text = grade(path)
    assert f"raised IndexError: tuple index out of range (line 3 of {path}" in text, text
    assert "hint: a.shape[1] counts axes from the front" in text and "a.shape[-1]" in text, text
    if not KEEPS_COLUMNS:
        pytest.skip("the lookup that raised is named from the traceback's columns (Python 3.11+)")

    # two shape lookups on the line, the second raising (x is a vector in this case, weight never
    # is): the traceback's columns name it, in this process and coming back from the sandbox's
    path.write_text(LINEAR_TWO_LOOKUPS)
    text = grade(path)
    assert "hint: x.shape[1] counts axes from the front, and its array has fewer in this case" in text, text
    assert "weight.shape[0]" not in text.split("hint:")[1], text

    # a tuple that is no shape: its length, not the count from the back
    path.write_text(LINEAR_INDEXES_THE_CACHE)
    text = grade(path)
    assert "raised IndexError: tuple index out of range" in text, text
    assert ("hint: cache[2] is out of range: cache holds fewer values in this case -- "
            "print(len(cache))") in text, text
    assert "counts axes from the front" not in text, text

    # cache[2] raises, on a line that also holds shape lookups from the front: it alone is named
    path.write_text(LINEAR_CACHE_AND_SHAPE_ON_ONE_LINE)
    text = grade(path)
    assert f"raised IndexError: tuple index out of range (line 3 of {path}" in text, text
    assert "hint: cache[2] is out of range: cache holds fewer" in text, text
    assert "axes from the front" not in text, text


def _raised_without_columns(path, *args):
    """The IndexError the file's linear_backward raises on `args`, its frames stripped of columns
    as Python 3.10 keeps them (and as an older sandbox sends them)."""
    namespace = runpy.run_path(str(path))
    with pytest.raises(IndexError) as raised:
        namespace["linear_backward"](*args)
    error = raised.value
    error.student_frames = [traceback.FrameSummary(f.filename, f.lineno, f.name, line=f.line, lookup_line=False)
                            for f in traceback.extract_tb(error.__traceback__)]
    return error


def test_without_the_tracebacks_columns_every_lookup_on_the_line_is_named_and_none_blamed(tmp_path):
    path = tmp_path / "linear_backward.py"
    vector_case = (np.ones(2), (np.ones(4), np.ones((2, 4))))

    path.write_text(LINEAR_TWO_LOOKUPS)
    hint = _tuple_index_hint(_raised_without_columns(path, *vector_case), str(path))
    assert hint.startswith("weight.shape[0] and x.shape[1] count axes from the front, and one of their arrays "
                           "has fewer in this case"), hint

    path.write_text(LINEAR_CACHE_AND_SHAPE_ON_ONE_LINE)
    hint = _tuple_index_hint(_raised_without_columns(path, *vector_case), str(path))
    assert hint.startswith("one of cache[2], dy.shape[-1], cache[0] and cache[0].shape[1] is out of range for "
                           "its tuple, and the traceback cannot tell which"), hint
    assert "print len(cache) and len(dy.shape) to see whether one is shorter" in hint, hint
    assert "; cache[0].shape[1] counts axes from the front, and an array of this case may have fewer" in hint, hint

    path.write_text(LINEAR_INDEXES_THE_CACHE)     # two lookups of the cache, no shape: nothing to add
    assert _tuple_index_hint(_raised_without_columns(path, *vector_case), str(path)) == ""


LINEAR_RAISES_IN_A_CALL = """
import operator

def linear_backward(dy, cache):
    return dy @ operator.itemgetter(2)(cache), cache[0]
"""


@pytest.mark.skipif(not KEEPS_COLUMNS, reason="the traceback's columns name what raised (Python 3.11+)")
def test_a_lookup_the_traceback_s_columns_do_not_point_at_is_not_blamed(tmp_path):
    """The columns point at operator.itemgetter(2)(cache), a call that raised 'tuple index out of
    range' in C: cache[0], the one lookup on the line, raised nothing and is not named."""
    path = tmp_path / "linear_backward.py"
    path.write_text(LINEAR_RAISES_IN_A_CALL)
    namespace = runpy.run_path(str(path))
    with pytest.raises(IndexError) as raised:
        namespace["linear_backward"](np.ones(2), (np.ones(4), np.ones((2, 4))))
    assert _tuple_index_hint(raised.value, str(path)) == ""


LINEAR_COUNTS_BACK_PAST_THE_START = """
def linear_backward(dy, cache):
    x, weight = cache
    return dy @ weight, dy.reshape(-1, dy.shape[-1]).T @ x.reshape(x.shape[-2], -1)
"""


@pytest.mark.skipif(not KEEPS_COLUMNS, reason="the traceback's columns name what raised (Python 3.11+)")
def test_a_lookup_from_the_back_is_not_said_to_look_past_the_end(tmp_path):
    """x.shape[-2] of a vector counts back past the start of its shape: the hint says it is out of
    range (it said "looks past the end of x.shape")."""
    path = tmp_path / "linear_backward.py"
    path.write_text(LINEAR_COUNTS_BACK_PAST_THE_START)
    namespace = runpy.run_path(str(path))
    with pytest.raises(IndexError) as raised:
        namespace["linear_backward"](np.ones(2), (np.ones(4), np.ones((2, 4))))
    assert _tuple_index_hint(raised.value, str(path)) == (
        "x.shape[-2] is out of range: x.shape holds fewer values in this case -- print(len(x.shape)) next to "
        "the index")


def test_a_frame_sent_back_from_the_sandbox_keeps_its_columns_and_drops_malformed_ones():
    frame = ["f.py", 3, "linear_backward", "return x.shape[1]", 3, 11, 21]
    error = remote_error({"type": "IndexError", "bases": ["IndexError"], "text": "tuple index out of range",
                          "frames": [frame, frame[:4] + [3, "11", None]]})
    kept, malformed = error.student_frames
    if KEEPS_COLUMNS:
        assert (kept.end_lineno, kept.colno, kept.end_colno) == (3, 11, 21)
        assert (malformed.colno, malformed.end_colno) == (None, None)
    assert kept.lineno == 3 and kept.line == "return x.shape[1]"


# ----- a starter's Shapes line and its docstring give one shape to each name ----------------------

def _shapes_line(shapes: str) -> dict:
    """'x, y, dy, dx (..., D)   rstd (..., 1)' -> {'x': '(..., D)', ...}: each group's first shape."""
    named = {}
    for group in shapes.split("   "):
        found = re.match(r"([\w, ]+?) (\([^)]*\))", group.strip())
        if found:
            named.update({name.strip(): found.group(2) for name in found.group(1).split(",")})
    return named


def _docstring_shapes(doc: str) -> dict:
    """'    dy:    (..., D) the gradient ...' -> {'dy': '(..., D)'}."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\w+):\s+(\([^)]*\))", doc, re.MULTILINE)}


@pytest.mark.parametrize("op", sorted(EXERCISES))
def test_the_shapes_line_and_the_docstring_agree(op):
    exercise = EXERCISES[op]
    in_line, in_doc = _shapes_line(exercise.shapes), _docstring_shapes(exercise.doc)
    # the upstream gradient the backward is given must be in the line by its own name: the student
    # reads its shape there (cross_entropy's dloss too, a scalar)
    assert exercise.upstream in in_line, f"{op}'s Shapes line leaves out {exercise.upstream}: {exercise.shapes!r}"
    if not in_doc:
        pytest.skip(f"{op}'s docstring gives no shape by name")
    both = sorted(set(in_line) & set(in_doc))
    assert both, f"no name has a shape in both: {exercise.shapes!r} and {sorted(in_doc)}"   # else nothing checked
    assert [(name, in_line[name]) for name in both] == [(name, in_doc[name]) for name in both]


def test_the_rope_starter_gives_dy_the_ops_own_shape():
    source = starter_source("rope")
    shapes_line = next(line for line in source.splitlines() if line.startswith("Shapes:"))
    assert "x, y, dy, dx (..., T, head_dim)" in shapes_line, shapes_line
    assert "dy:    (..., T, head_dim)" in source


# ----- an endless loop says it is still running, long before the time limit -------------------------

RMSNORM_RIGHT = """
import numpy as np

def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    xhat, dxhat = x * rstd, dy * weight
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
"""


def test_a_check_still_running_says_so_and_names_the_flag_then_says_so_again_until_stopped(tmp_path, capsys,
                                                                                         monkeypatch):
    """The first notice at STILL_RUNNING_AFTER, then one every STILL_RUNNING_EVERY seconds (the
    defaults: 10 s, then every 30 s until --timeout's 120 s), none at or after the time limit."""
    from npllama.cli import main
    from npllama.commands import exercise

    loop = tmp_path / "rmsnorm_backward.py"
    loop.write_text("def rmsnorm_backward(dy, cache):\n    while True:\n        pass\n")
    monkeypatch.setattr(exercise, "STILL_RUNNING_AFTER", 0.5)    # the default is 10 s
    monkeypatch.setattr(exercise, "STILL_RUNNING_EVERY", 1.0)    # the default is 30 s
    assert main(["exercise", "check", "rmsnorm", str(loop), "--cases", "0", "--timeout", "3"]) == 1
    out, err = capsys.readouterr()
    notes = [line for line in err.splitlines() if "still running" in line]
    assert notes[0] == "still running after 0.5 s -- it is stopped at 3 s; --timeout changes it", err
    assert notes[1] == "still running after 1.5 s (stops at 3 s; --timeout to change)", err
    assert notes[1:] == [f"still running after {t:g} s (stops at 3 s; --timeout to change)"
                         for t in (1.5, 2.5)][:len(notes) - 1], err
    assert "stopped after 3 s of wall clock" in out


def test_a_fast_check_prints_no_notice(tmp_path, capsys, monkeypatch):
    """A check that ends before the notice is due prints none, and its timer is cancelled.  The
    notice is put off to 300 s (the time limit 600 s, so it is still armed): a right answer takes
    seconds, but a slow shared machine must not make this test depend on it taking under 10."""
    import threading

    from npllama.cli import main
    from npllama.commands import exercise

    timers = []

    class RecordedTimer(threading.Timer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            timers.append(self)

    monkeypatch.setattr(threading, "Timer", RecordedTimer)
    monkeypatch.setattr(exercise, "STILL_RUNNING_AFTER", 300.0)
    right = tmp_path / "rmsnorm_backward.py"
    right.write_text(RMSNORM_RIGHT)
    assert main(["exercise", "check", "rmsnorm", str(right), "--cases", "0", "--timeout", "600"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"checking {right} against the 4 checks of exercise rmsnorm (in a process of its "
                                f"own, at most 600 s) ..."], err
    assert "Well done" in out
    # the notice was armed for this check and disarmed when it ended (not left to fire later)
    assert [t.interval for t in timers] == [300.0] and timers[0].ident is not None, timers
    assert timers[0].finished.is_set()


# ----- the checks from pytest: the test `exercise start` prints, run by a student's pytest -------------

RMSNORM_MISSING_TERM = """
def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    return rstd * dy * weight, (dy * x * rstd).reshape(-1, x.shape[-1]).sum(0)
"""


def test_the_pytest_test_start_prints_passes_a_right_file_and_shows_the_diagnosis_of_a_wrong_one(
        tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from npllama.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["exercise", "start", "rmsnorm", "--quiet"]) == 0
    printed = capsys.readouterr().out
    test_text = textwrap.dedent(printed.split("the same checks:\n", 1)[1])
    (tmp_path / "test_rmsnorm_backward.py").write_text(test_text)
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))

    def pytest_on(answer):
        (tmp_path / "rmsnorm_backward.py").write_text(answer)
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "test_rmsnorm_backward.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    right = pytest_on(RMSNORM_RIGHT)
    assert right.returncode == 0 and "1 passed" in right.stdout, right.stdout + right.stderr
    wrong = pytest_on(RMSNORM_MISSING_TERM)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    for shown in ("FAIL  gradient", "what is wrong: it is missing the term that comes from rstd depending on x",
                  "hint: rstd = 1/sqrt(mean(x^2) + eps)", "2 of 4 checks passed."):
        assert shown in wrong.stdout, wrong.stdout


def test_assert_passes_takes_a_function_too_and_names_a_bad_argument():
    from npllama.exercises import assert_passes
    from npllama.ops.rmsnorm import rmsnorm_backward

    assert_passes("rmsnorm", rmsnorm_backward, n_random=0)
    namespace = {}
    exec(RMSNORM_MISSING_TERM, namespace)
    with pytest.raises(AssertionError, match="what is wrong: it is missing the term"):
        assert_passes("rmsnorm", namespace["rmsnorm_backward"], n_random=0)
    with pytest.raises(TypeError, match="backward must be your function or the path of your .py file"):
        assert_passes("rmsnorm", 5)
    with pytest.raises(ValueError, match="timeout limits the process a file runs in"):
        assert_passes("rmsnorm", rmsnorm_backward, timeout=5)
