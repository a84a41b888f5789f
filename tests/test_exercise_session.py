"""Checking a backward defined in a Python session or a Jupyter notebook (check_function), not in
a file: what the result shows when it is printed or is a cell's last expression, and how a crash
in a function that has no file on disk is located and rerun."""
import numpy as np
import pytest

from npllama.exercises import check_function
from npllama.exercises.notebook import notebook_json
from npllama.ops.rope import rotate_half


def _layernorm_missing_the_mean_term(dy, cache):
    x, mean, rstd, weight = cache
    D = x.shape[-1]
    xhat = (x - mean) * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, D).sum(0), dy.reshape(-1, D).sum(0)


def test_a_report_shows_itself_readably():
    """A notebook cell ending in check_function(...) shows the report; repr() is one line saying
    how many checks passed and the first failure, not the fields of a dataclass."""
    report = check_function("layernorm", _layernorm_missing_the_mean_term, n_random=1)
    assert str(report) == report.format()               # print(report) prints the report
    shown = repr(report)
    assert "\n" not in shown and "object at 0x" not in shown, shown
    assert shown.startswith("<Report exercise layernorm: _layernorm_missing_the_mean_term, 2 of 6 checks passed; "
                            "first failure gradient: dx: it is missing the term"), shown
    assert shown.endswith("; print it for the whole report>"), shown
    pretty = pytest.importorskip("IPython.lib.pretty")    # what Jupyter and IPython show for a cell's value
    assert pretty.pretty(report) == report.format()


def test_a_passing_report_says_so_in_its_repr():
    report = check_function("rope", lambda dy, cache: dy * cache[0] - rotate_half(dy * cache[1]), n_random=1)
    assert report.ok, report.format()
    assert repr(report) == "<Report exercise rope: <lambda>, 5 of 5 checks passed>"


def _defined_in_a_cell(source: str, filename: str, name: str, remembered: bool = True):
    """The function `name` of `source` as a notebook cell or a prompt defines it: its code's file
    is no file on disk (Jupyter: /tmp/ipykernel_.../<hash>.py, the Python prompt: <stdin>), and
    only Jupyter keeps the cell's lines (in linecache) for a traceback to quote."""
    import linecache

    if remembered:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"np": np}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


ROPE_WITH_A_TYPO = "import numpy as np\n\ndef rope_backward(dy, cache):\n    cos, sin = cache\n    return dy * cos - rotate_halff(dy * sin)\n"


@pytest.mark.parametrize("filename, remembered", [("/tmp/ipykernel_404/1234567.py", True), ("<stdin>", False)],
                         ids=["jupyter", "prompt"])
def test_a_crash_in_a_function_defined_in_a_cell_names_the_cell_and_calls_it_by_name(filename, remembered):
    """'line 5 of 1234567.py' or 'line 5 of <stdin>: ' names no file the student has, and the hint's
    runpy.run_path('<stdin>') cannot run: the line is the cell's (as Jupyter's own tracebacks count
    it), and the case is rebuilt for the function to be called in the session that defined it."""
    import linecache

    backward = _defined_in_a_cell(ROPE_WITH_A_TYPO, filename, "rope_backward", remembered)
    try:
        finding = check_function("rope", backward, n_random=0).first_failure.finding
    finally:
        linecache.cache.pop(filename, None)
    quoted = ": return dy * cos - rotate_halff(dy * sin)" if remembered else ""
    assert finding.message == ("your function raised NameError: name 'rotate_halff' is not defined (line 5 of the cell "
                               f"defining rope_backward{quoted})"), finding.message
    assert "runpy" not in finding.hint and finding.hint.endswith("\nrope_backward(dy, cache)"), finding.hint
    assert "in the session you checked it from" in finding.hint, finding.hint


def test_the_first_line_says_where_a_session_function_comes_from_without_repeating_its_name():
    from npllama.ops.rmsnorm import rmsnorm_backward

    def my_rms(dy, cache):
        return rmsnorm_backward(dy, cache)

    first_line = lambda fn, **kw: check_function("rmsnorm", fn, n_random=0, **kw).format().splitlines()[0]
    assert first_line(rmsnorm_backward) == "exercise rmsnorm: rmsnorm_backward"
    assert first_line(my_rms) == "exercise rmsnorm: rmsnorm_backward (your function my_rms)"
    assert first_line(lambda dy, cache: rmsnorm_backward(dy, cache)) == "exercise rmsnorm: rmsnorm_backward (a lambda)"
    assert first_line(my_rms, source="hw/rms.py") == "exercise rmsnorm: rmsnorm_backward in hw/rms.py"


STUDENT_FILE = '''import numpy as np


def my_rms(dy, cache):
    return dy[:, 99]


class Grader:
    def backward(self, dy, cache):
        return dy[:, 99]

    def __call__(self, dy, cache):
        return dy[:, 99]
'''


def _imported_from(path):
    """The module of `path`, imported as a notebook's `from hw.student_rms import my_rms` would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"student_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_crash_in_a_function_imported_from_a_file_is_rerun_from_the_current_folder_by_its_own_name(
        tmp_path, monkeypatch):
    """runpy.run_path('student_rms.py')['rmsnorm_backward'] found neither the file (it is in hw/)
    nor the function (it is my_rms): the file is named as a path from the current folder, and the
    function by its own name."""
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "student_rms.py").write_text(STUDENT_FILE)
    module = _imported_from(tmp_path / "hw" / "student_rms.py")
    monkeypatch.chdir(tmp_path)
    finding = check_function("rmsnorm", module.my_rms, n_random=0).first_failure.finding
    assert finding.message.endswith("(line 5 of hw/student_rms.py: return dy[:, 99])"), finding.message
    assert finding.hint.endswith("\nrunpy.run_path('hw/student_rms.py')['my_rms'](dy, cache)"), finding.hint
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")     # not below the file's folder: its whole path
    finding = check_function("rmsnorm", module.my_rms, n_random=0).first_failure.finding
    where = str(tmp_path / "hw" / "student_rms.py")
    assert finding.hint.endswith(f"\nrunpy.run_path({where!r})['my_rms'](dy, cache)"), finding.hint


@pytest.mark.parametrize("kind", ["method", "partial", "callable object"])
def test_a_method_a_partial_or_a_callable_object_is_named_and_located_by_the_function_it_runs(
        tmp_path, monkeypatch, kind):
    """A partial or a callable object was named by its repr ('<Grader object at 0x...>'), its crash
    had no line, and the hint ran 'your_file.py'; a method's hint called backward(dy, cache), which
    no name in the session is."""
    import functools

    (tmp_path / "student_rms.py").write_text(STUDENT_FILE)
    module = _imported_from(tmp_path / "student_rms.py")
    monkeypatch.chdir(tmp_path)
    backward, called, line = {"method": (module.Grader().backward, "backward", 10),
                              "partial": (functools.partial(module.my_rms), "a partial of my_rms", 5),
                              "callable object": (module.Grader(), "a Grader object", 13)}[kind]
    report = check_function("rmsnorm", backward, n_random=0)
    assert "object at 0x" not in repr(report) and "object at 0x" not in report.format(), report.format()
    assert report.format().splitlines()[0] == f"exercise rmsnorm: rmsnorm_backward ({'your function ' * (kind == 'method')}{called})"
    finding = report.first_failure.finding
    assert finding.message.endswith(f"(line {line} of student_rms.py: return dy[:, 99])"), finding.message
    assert "runpy" not in finding.hint and finding.hint.endswith("\nyour_function(dy, cache)"), finding.hint
    assert "your_function: the function you gave check_function" in finding.hint, finding.hint


def test_code_in_no_file_that_no_cell_or_prompt_typed_is_not_called_a_cell(tmp_path):
    """exec'd text ('<string>') and a file deleted since it was imported are no notebook cell: the
    line is named as Python's traceback names it."""
    source = "def rmsnorm_backward(dy, cache):\n    return dy[:, 99]\n"
    executed = _defined_in_a_cell(source, "<string>", "rmsnorm_backward", remembered=False)
    finding = check_function("rmsnorm", executed, n_random=0).first_failure.finding
    assert finding.message.endswith("(line 2 of <string>)"), finding.message
    path = tmp_path / "gone_rms.py"
    path.write_text(source)
    deleted = _imported_from(path).rmsnorm_backward
    path.unlink()
    finding = check_function("rmsnorm", deleted, n_random=0).first_failure.finding
    assert finding.message.endswith(f"(line 2 of {path})"), finding.message
    assert "runpy" not in finding.hint and finding.hint.endswith("\nrmsnorm_backward(dy, cache)"), finding.hint


def test_a_reports_repr_is_one_line_saying_why_in_every_state(tmp_path, monkeypatch):
    """Not loaded, refused, not implemented, crashed (a message of several lines), stopped half-way:
    repr() stays one line and says which."""
    from npllama.exercises import check_file
    from npllama.exercises.runner import GradingStopped

    files = {"import_crash.py": "raise ValueError('the first line\\nthe second line')\n",
             "borrows.py": "import torch\n\ndef rmsnorm_backward(dy, cache):\n    pass\n",
             "not_yet.py": "def rmsnorm_backward(dy, cache):\n    raise NotImplementedError\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    def crashes(dy, cache):
        raise RuntimeError("the first line\nthe second line")

    calls = []

    def stops(dy, cache):      # as the sandbox's stand-in does when the child is stopped after its first call
        calls.append(1)
        if len(calls) > 1:
            raise GradingStopped("the file's process ended: the time limit")
        return crashes(dy, cache)

    monkeypatch.chdir(tmp_path)        # the files named shortly: what is cut short is the reason, not the path
    said = {name: repr(check_file("rmsnorm", name, n_random=0)) for name in files}
    said["crash"] = repr(check_function("rmsnorm", crashes, n_random=0))
    said["stopped"] = repr(check_function("rmsnorm", stops, n_random=0))
    for state, shown in said.items():
        assert "\n" not in shown and shown.startswith("<Report exercise rmsnorm: "), (state, shown)
    assert "failed: the file raised ValueError: the first line the second line" in said["import_crash.py"]
    assert "; refused: line 1 imports torch" in said["borrows.py"], said["borrows.py"]
    # the rule's long list of imports allowed is cut short: the whole report is what print shows
    assert said["borrows.py"].endswith("...; print it for the whole report>") and len(said["borrows.py"]) < 400
    assert "; not implemented yet;" in said["not_yet.py"], said["not_yet.py"]
    assert "first failure returns: your function raised RuntimeError: the first line the second line" in said["crash"]
    assert "first failure returns: the file's process ended: the time limit" in said["stopped"], said["stopped"]


def test_a_report_cut_short_never_says_every_check_passed():
    """A report whose checks did not all run (stopped before the first check, or built by hand from
    some results) lists the others as not run, and its summary, repr and dict say so: 'all checks
    pass' and 'Well done!' are for a report in which every check ran and passed."""
    from npllama.exercises.runner import CheckResult, Report
    from npllama.exercises import get_exercise

    exercise = get_exercise("rmsnorm")
    checks = exercise.checks()
    stopped = Report(exercise, "mine.py", [], stopped="the file's process ended: the time limit")
    some = Report(exercise, "mine.py", [CheckResult(checks[0], "pass", 1, 1)])
    for report in (stopped, some):
        shown = report.format()
        assert not report.ok and "all checks pass" not in report.summary(), report.summary()
        assert "Well done" not in shown and "all checks pass" not in repr(report), (shown, repr(report))
        rows = [line for line in shown.splitlines() if line.startswith("  ") and line.split()[0] in
                ("PASS", "FAIL", "ERROR", "-")]
        assert len(rows) == len(checks), shown          # every check has its row
        assert report.to_dict()["checks"] == {c.name: ("pass" if report is some and c is checks[0] else "not run")
                                              for c in checks}
    assert stopped.summary() == "stopped: the file's process ended: the time limit"
    assert "Stopped: the file's process ended: the time limit" in stopped.format()
    assert some.summary() == f"1 of {len(checks)} checks passed, the others not run"


def test_a_crash_under_a_functools_wraps_decorator_names_the_students_file(tmp_path, monkeypatch):
    """A backward decorated (a logger, a timer from another module, made with functools.wraps) runs
    the decorator's code first: the crash's line and the rerun hint name the student's file and
    line, not the decorator's 'return f(*args)'."""
    import importlib

    (tmp_path / "timing.py").write_text("import functools\n\ndef timed(f):\n    @functools.wraps(f)\n"
                                        "    def wrapper(*args, **kwargs):\n        return f(*args, **kwargs)\n"
                                        "    return wrapper\n")
    (tmp_path / "mine.py").write_text("from timing import timed\n\n@timed\ndef rmsnorm_backward(dy, cache):\n"
                                      "    return dy * undefined_name, dy.sum(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = importlib.import_module("mine")
    finding = check_function("rmsnorm", mine.rmsnorm_backward, n_random=0).first_failure.finding
    assert "(line 5 of mine.py: return dy * undefined_name, dy.sum(0))" in finding.message, finding.message
    assert "runpy.run_path('mine.py')['rmsnorm_backward']" in finding.hint, finding.hint
    assert "timing.py" not in finding.message + finding.hint


def test_a_stop_after_an_earlier_failure_is_said_in_the_report():
    """The sandbox stops a file in one check (the time limit, a crash) after an earlier check had
    failed: the report a student reads must say why the check it stopped in is an ERROR (the
    gradebook's status says timeout), not only the earlier failure; later checks are '-'."""
    from npllama.exercises.runner import GradingStopped
    from npllama.ops.rmsnorm import rmsnorm_backward as right

    why = "stopped after 3 s of wall clock: an endless loop -- it was at line 7 of slow.py: while True:"

    def backward(dy, cache):
        if dy.dtype == np.float32:       # the float32 check: where the sandbox stops it
            raise GradingStopped(why)
        dx, dweight = right(dy, cache)
        return dx, 2 * dweight           # the gradient check fails first

    report = check_function("rmsnorm", backward, n_random=0)
    shown = report.format()
    assert report.stopped == why and report.first_failure.check.name == "gradient", shown
    assert "  ERROR float32" in shown and "  -     orthogonal" in shown, shown
    assert f"Stopped: {why}" in shown, shown
    assert shown.count(why) == 1, shown


def test_a_crash_under_a_decorator_is_located_where_it_happened(tmp_path, monkeypatch):
    """Through functools.wraps the student's file is named; but a decorator that does work of its
    own (a dtype conversion) and crashes there is named by its own line, as before -- not a crash
    with no line at all -- and a class-based decorator (functools.update_wrapper on an object) is
    followed to the student's function as a function decorator is."""
    import importlib

    (tmp_path / "helpers.py").write_text(
        "import functools\n"
        "import numpy as np\n\n"
        "def as_float32(f):\n"
        "    @functools.wraps(f)\n"
        "    def wrapper(dy, cache):\n"
        "        cache = cache.astype(np.float32)\n"
        "        return f(dy.astype(np.float32), cache)\n"
        "    return wrapper\n\n"
        "class Timed:\n"
        "    def __init__(self, f):\n"
        "        functools.update_wrapper(self, f)\n"
        "        self.f = f\n\n"
        "    def __call__(self, *args, **kwargs):\n"
        "        return self.f(*args, **kwargs)\n")
    (tmp_path / "converted.py").write_text("from helpers import as_float32\n\n@as_float32\n"
                                           "def rmsnorm_backward(dy, cache):\n    return dy, dy.sum(0)\n")
    (tmp_path / "timed.py").write_text("from helpers import Timed\n\n@Timed\ndef rmsnorm_backward(dy, cache):\n"
                                       "    return dy * undefined_name, dy.sum(0)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    converted = check_function("rmsnorm", importlib.import_module("converted").rmsnorm_backward, n_random=0)
    message = converted.first_failure.finding.message
    assert "(line 7 of helpers.py: cache = cache.astype(np.float32))" in message, message
    timed = check_function("rmsnorm", importlib.import_module("timed").rmsnorm_backward, n_random=0)
    finding = timed.first_failure.finding
    assert "(line 5 of timed.py: return dy * undefined_name, dy.sum(0))" in finding.message, finding.message
    assert "runpy.run_path('timed.py')['rmsnorm_backward']" in finding.hint, finding.hint


def test_a_gradebook_row_after_a_stop_pairs_each_check_with_its_own_reason():
    """A file whose gradient check failed, then stopped for time in the float32 check: the row's
    status is the stop, its first_failure the gradient check, and its diagnosis that check's reason
    followed by the stop's (it paired 'gradient' with the time limit's words).  A stop in the first
    failing check keeps the stop's reason alone."""
    from npllama.exercises.runner import GradingStopped
    from npllama.exercises.sandbox import _graded_after_stop
    from npllama.ops.rmsnorm import rmsnorm_backward as right

    why = "stopped after 3 s of wall clock: an endless loop -- it was at line 7 of slow.py: while True:"

    def late(dy, cache):
        if dy.dtype == np.float32:
            raise GradingStopped(why)
        dx, dweight = right(dy, cache)
        return dx, 2 * dweight

    calls = []

    def early(dy, cache):       # the checker's first call is a probe before any check
        calls.append(1)
        if len(calls) > 1:
            raise GradingStopped(why)
        return right(dy, cache)

    row = _graded_after_stop("slow.py", check_function("rmsnorm", late, n_random=0), 3.0, "timeout", why).row()
    assert row["status"] == "timeout" and row["first_failure"] == "gradient", row
    assert row["diagnosis"].startswith("dweight") and row["diagnosis"].endswith(f"; then {why}"), row
    row = _graded_after_stop("slow.py", check_function("rmsnorm", early, n_random=0), 3.0, "timeout", why).row()
    assert row["first_failure"] == "returns" and row["diagnosis"] == why, row


def test_a_wrapped_chain_that_loops_is_checked_as_the_function_given(tmp_path, monkeypatch):
    """A __wrapped__ that leads back to itself (set by hand) is no decorator to see through: the
    function given is the one checked and named, and following the chain ends."""
    import importlib

    (tmp_path / "looped.py").write_text("def rmsnorm_backward(dy, cache):\n"
                                        "    return dy * undefined_name, dy.sum(0)\n\n"
                                        "rmsnorm_backward.__wrapped__ = rmsnorm_backward\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = check_function("rmsnorm", importlib.import_module("looped").rmsnorm_backward, n_random=0)
    finding = report.first_failure.finding
    assert "(line 2 of looped.py: return dy * undefined_name, dy.sum(0))" in finding.message, finding.message
    assert "runpy.run_path('looped.py')['rmsnorm_backward']" in finding.hint, finding.hint


# ----- a Jupyter kernel's state: what the check cell sees is what the kernel holds ----------------

SOFTMAX_RIGHT = ("import numpy as np\n\ndef softmax_backward(dp, cache):\n"
                 "    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n")
SOFTMAX_WRONG_AXIS = SOFTMAX_RIGHT.replace("sum(-1", "sum(0")
CHECK_CELL = "from npllama.exercises import check_function\ncheck_function('softmax', softmax_backward, n_random=1)"


@pytest.fixture
def kernel():
    """An IPython shell running cells as a Jupyter kernel does (history, In[n], cell files)."""
    shell_module = pytest.importorskip("IPython.core.interactiveshell")
    shell = shell_module.InteractiveShell.instance()
    yield lambda cell: shell.run_cell(cell, store_history=True).result
    shell_module.InteractiveShell.clear_instance()


@pytest.mark.parametrize("broken", [SOFTMAX_WRONG_AXIS.replace("keepdims=True))", "keepdims=True)) -"),
                                    "import nump\n" + SOFTMAX_WRONG_AXIS],
                         ids=["syntax error", "error before the def"])
def test_a_definition_cell_that_failed_leaves_no_verdict_on_the_older_function(kernel, broken):
    """A right answer checked, then edited into a wrong one whose cell fails before its def runs:
    the kernel still holds the right one, and checking it said 'Well done!' for code the student
    has replaced.  The check names the cell that did not take effect instead."""
    kernel(SOFTMAX_RIGHT)
    assert kernel(CHECK_CELL).ok
    kernel(broken)
    report = kernel(CHECK_CELL)
    assert not report.ok, report.format()
    assert report.passed == 0 and "In[3]" in report.format() and "In[1]" in report.format(), report.format()
    kernel(SOFTMAX_WRONG_AXIS)          # the cell fixed and run: its function is checked, and fails
    report = kernel(CHECK_CELL)
    assert report.first_failure is not None and "first axis" in report.first_failure.diagnosis, report.format()


def test_a_cell_run_again_or_failing_after_its_def_is_checked_as_usual(kernel):
    """No false alarm: the same cell run twice, the check run twice, or a cell whose def ran before
    a later line of it failed (the function is that cell's)."""
    kernel(SOFTMAX_RIGHT)
    kernel(SOFTMAX_RIGHT)
    assert kernel(CHECK_CELL).ok and kernel(CHECK_CELL).ok
    kernel(SOFTMAX_RIGHT + "softmax_backward(1)\n")         # a TypeError after the def
    assert kernel(CHECK_CELL).ok


def test_npllamas_own_backward_is_not_graded_as_the_students(kernel):
    """In a notebook, `from npllama.ops.softmax import softmax_backward` (or a def calling it
    through its module) passed every check with 'Well done!'."""
    kernel("from npllama.ops.softmax import softmax_backward")
    report = kernel(CHECK_CELL)
    assert report.refused and "npllama.ops.softmax" in report.refused, report.format()
    kernel("import npllama.ops.softmax as S\ndef softmax_backward(dp, cache):\n    return S.softmax_backward(dp, cache)\n")
    report = kernel(CHECK_CELL)
    assert report.refused and "softmax_backward" in report.refused, report.format()


SCALED_SOFTMAX_EXERCISE = '''"""softmax(2 x): a teacher's exercise whose reference recomputes the probabilities with npllama's
forward (the cache is x alone)."""
import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Shape
from npllama.ops.softmax import softmax_forward


def scaled_softmax_forward(x):
    return softmax_forward(2 * x)[0], x


def scaled_softmax_backward(dp, cache):
    p = softmax_forward(2 * cache)[0]
    return 2 * p * (dp - (dp * p).sum(-1, keepdims=True))


class ScaledSoftmax(Exercise):
    op, title = "scaled_softmax", "softmax of 2 x"
    forward_name, backward_name, params = "scaled_softmax_forward", "scaled_softmax_backward", "dp, cache"
    doc = "dp: the gradient of p; cache: x.  Returns dx."
    space = dict(shape=Shape(2, 2, 2, 4), seed=SEED)
    edge_cases = [dict(shape=(2, 3), seed=1)]

    def build(self, params, dtype=np.float64):
        x = np.random.default_rng(params["seed"]).standard_normal(params["shape"]).astype(dtype)
        return Case(self.forward, [x], ("x",), (0,), seed=params["seed"] % 1000)
'''
SCALED_SOFTMAX_STUDENT = ("import numpy as np\n\n\ndef scaled_softmax_backward(dp, cache):\n"
                          "    e = np.exp(2 * cache - (2 * cache).max(-1, keepdims=True))\n"
                          "    p = e / e.sum(-1, keepdims=True)\n"
                          "    return 2 * p * (dp - (dp * p).sum(-1, keepdims=True))\n")


def test_a_teacher_grading_from_a_notebook_runs_the_references_code_unguarded(kernel, tmp_path, monkeypatch):
    """The session's rules are for the student's code: a teacher's exercise whose reference calls
    npllama's forward (as its own file may: the rule is for students) had its reference refused
    in a notebook -- the guard took it for a student's -- so grading a class's files from the
    kernel said the reference fails its checks; on the command line it grades as usual."""
    (tmp_path / "scaled_softmax_exercise.py").write_text(SCALED_SOFTMAX_EXERCISE)
    (tmp_path / "alice.py").write_text(SCALED_SOFTMAX_STUDENT)
    monkeypatch.chdir(tmp_path)
    kernel("from npllama.exercises import check_function, grade_file\n"
           "from npllama.exercises.teacher import exercise_in_file")
    kernel("exercise = exercise_in_file('scaled_softmax_exercise.py', 'scaled_softmax', verify=False)")
    graded = kernel("grade_file(exercise, 'alice.py', n_random=1)")    # checks the reference first
    assert graded is not None and graded.status == "pass", graded and graded.text
    reference = kernel("check_function(exercise, exercise.reference, n_random=1)")
    assert reference.ok, reference.format()
    # the student's own code stays guarded: the same backward typed in a cell, calling the forward
    kernel("from npllama.ops.softmax import softmax_forward\n\n"
           "def scaled_softmax_backward(dp, cache):\n    p = softmax_forward(2 * cache)[0]\n"
           "    return 2 * p * (dp - (dp * p).sum(-1, keepdims=True))\n")
    report = kernel("check_function(exercise, scaled_softmax_backward, n_random=1)")
    assert report.refused and "softmax_forward" in report.refused, report.format()


def _redefined(cell_prefix, body=SOFTMAX_WRONG_AXIS):
    """`body`'s def of softmax_backward, indented into `cell_prefix` (an if, a class ...)."""
    indent = " " * 4
    return cell_prefix + "".join(indent + line + "\n" for line in body.splitlines())


DECORATED = ("import functools\n\ndef logged(f):\n    @functools.wraps(f)\n    def wrapper(*args):\n"
             "        return f(*args)\n    return wrapper\n\n")


@pytest.mark.parametrize("first, later, check", [
    (SOFTMAX_RIGHT, "import nump\n" + _redefined("if True:\n"), CHECK_CELL),
    (SOFTMAX_RIGHT, "import nump\n" + _redefined("try:\n") + "except ZeroDivisionError:\n    pass\n", CHECK_CELL),
    (SOFTMAX_RIGHT, "import nump\nsoftmax_backward = lambda dp, cache: dp\n", CHECK_CELL),
    (DECORATED + SOFTMAX_RIGHT.replace("def ", "@logged\ndef "),
     "import nump\n" + SOFTMAX_WRONG_AXIS.replace("def ", "@logged\ndef "), CHECK_CELL),
    ("import numpy as np\n" + _redefined("class Op:\n", SOFTMAX_RIGHT), "import nump\n" + _redefined("class Op:\n"),
     "check_function('softmax', Op.softmax_backward, n_random=1)"),
], ids=["def in an if", "def in a try", "a lambda", "a decorated def", "a method"])
def test_a_stale_definition_is_found_however_the_later_cell_defines_it(kernel, first, later, check):
    """Only a def at the start of a line counted as defining the function again: a cell whose def
    sits in an if or a try, or that binds a lambda to the name, failed before it ran -- and the
    older, right function was graded 'Well done!'.  A decorated def, and a method (its class
    defined again), the same."""
    kernel(first)
    kernel("from npllama.exercises import check_function")
    assert kernel(check).ok
    kernel(later)
    report = kernel(check)
    assert not report.ok and report.load_error and "In[4]" in report.load_error, report.format()


def test_a_later_cell_that_only_mentions_the_def_or_ran_it_leaves_the_older_function_checked(kernel):
    """A def of the name inside a string made the check refuse a function just defined; and an
    older version kept under another name and checked on purpose was said to be stale after a
    later cell's def had run (the message said that cell "stopped before its def ran": untrue)."""
    kernel(SOFTMAX_RIGHT)
    kernel("notes = '''\ndef softmax_backward(dp, cache):\n'''")
    assert kernel(CHECK_CELL).ok, kernel(CHECK_CELL).format()
    kernel("first_version = softmax_backward")
    kernel(SOFTMAX_WRONG_AXIS)
    report = kernel("check_function('softmax', first_version, n_random=1)")
    assert report.ok, report.format()
    assert kernel(CHECK_CELL).first_failure is not None


@pytest.mark.parametrize("cell", [
    "from npllama.ops.softmax import softmax_backward as ref\n\n"
    "def softmax_backward(dp, cache):\n    return ref(dp, cache)\n",
    "from npllama.ops.softmax import softmax_forward as forward\nimport numpy as np\n\n"
    "def softmax_backward(dp, cache):\n    forward(np.zeros((1, 2)))\n"
    "    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n",
], ids=["own backward", "forward"])
def test_npllamas_ops_imported_under_a_name_of_the_cell_are_refused_inside_the_backward(kernel, cell):
    """The guard replaced npllama's functions in their modules only: one a cell had imported under
    a name of its own (`softmax_backward as ref`) was called unguarded, and the library's backward
    passed as the student's."""
    kernel(cell)
    report = kernel(CHECK_CELL)
    assert report.refused and "your backward called npllama's" in report.refused, report.format()
    # the forward imported to try things out, outside the backward, is no breach: the name is the
    # library's own again once the check is over
    name = "ref" if " as ref" in cell else "forward"
    assert kernel(f"import npllama.ops.softmax\n{name} is npllama.ops.softmax.{name.replace('ref', 'softmax_backward').replace('forward', 'softmax_forward')}")


def test_a_function_from_a_module_written_from_the_notebook_is_guarded(kernel, tmp_path, monkeypatch):
    """%%writefile a module calling npllama's own backward, import its function: 'Well done!' (the
    guard was on for functions typed in a cell only)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel("%%writefile borrowed.py\nimport npllama.ops.softmax as library\n\n"
           "def softmax_backward(dp, cache):\n    return library.softmax_backward(dp, cache)\n")
    kernel("from borrowed import softmax_backward")
    report = kernel(CHECK_CELL)
    assert report.refused and "your backward called npllama's softmax_backward" in report.refused, report.format()


def test_a_helper_the_exercise_allows_stays_callable_from_a_cell(kernel):
    """rope's rotate_half may be imported and called (screen.py's allowed helpers): not refused."""
    kernel("from npllama.ops.rope import rotate_half\nimport numpy as np\n\n"
           "def rope_backward(dy, cache):\n    cos, sin = cache\n"
           "    return dy * cos - rotate_half(dy * sin)\n")
    report = kernel("from npllama.exercises import check_function\ncheck_function('rope', rope_backward, n_random=1)")
    assert report.ok, report.format()


HELPER_RIGHT = ("import numpy as np\n\ndef jacobian_product(dp, p):\n"
                "    return p * (dp - (dp * p).sum(-1, keepdims=True))\n")
CALLS_THE_HELPER = "def softmax_backward(dp, cache):\n    return jacobian_product(dp, cache)\n"


@pytest.mark.parametrize("calls", [
    CALLS_THE_HELPER,
    # called in a comprehension: code of its own inside the backward
    "def softmax_backward(dp, cache):\n    return [jacobian_product(dp, p) for p in [cache]][0]\n",
    # two levels down: the backward's helper calls the helper a later cell broke
    "def middle(dp, p):\n    return [jacobian_product(dp, p)][0]\n\n"
    "def softmax_backward(dp, cache):\n    return middle(dp, cache)\n",
    # a method of a class of the notebook
    "class Helpers:\n    @staticmethod\n    def product(dp, p):\n        return jacobian_product(dp, p)\n\n"
    "def softmax_backward(dp, cache):\n    return Helpers.product(dp, cache)\n",
], ids=["its helper", "in a comprehension", "its helper's helper", "a class's method calling it"])
def test_a_helper_redefined_by_a_cell_that_failed_leaves_no_verdict(kernel, calls):
    """The backward calls a helper an earlier cell defined; a later cell redefining the HELPER
    failed before its def ran: the backward was graded, 'Well done!', with the helper the student
    had replaced.  The check names the helper and both cells instead."""
    kernel(HELPER_RIGHT)
    kernel(calls)
    assert kernel(CHECK_CELL).ok
    kernel("import nump\n" + HELPER_RIGHT.replace("sum(-1", "sum(0"))
    report = kernel(CHECK_CELL)
    assert not report.ok and report.load_error, report.format()
    assert "your softmax_backward calls jacobian_product" in report.load_error, report.load_error
    assert "In[1]" in report.load_error and "In[4]" in report.load_error, report.load_error
    kernel(HELPER_RIGHT.replace("sum(-1", "sum(0"))      # the cell fixed and run: the new helper is graded
    report = kernel(CHECK_CELL)
    assert report.first_failure is not None and "first axis" in report.first_failure.diagnosis, report.format()


def test_a_helper_rebound_or_defined_again_successfully_is_no_alarm(kernel):
    """No false alarm: a helper whose later def ran, one put back under its name by an assignment
    that ran after a failed cell, and a name the backward only reads as an attribute."""
    kernel(HELPER_RIGHT)
    kernel(CALLS_THE_HELPER)
    kernel(HELPER_RIGHT + "\n")                          # defined again, and it ran
    assert kernel(CHECK_CELL).ok, kernel(CHECK_CELL).format()
    kernel("first_product = jacobian_product")
    kernel("import nump\ndef jacobian_product(dp, p):\n    return dp\n")
    kernel("jacobian_product = first_product")          # put back on purpose, after the failure
    assert kernel(CHECK_CELL).ok, kernel(CHECK_CELL).format()


@pytest.mark.parametrize("first, later", [
    ("softmax_backward = lambda dp, cache: cache * (dp - (dp * cache).sum(-1, keepdims=True))",
     "import nump\nsoftmax_backward = lambda dp, cache: dp\n"),
    ("def mine(dp, cache):\n    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n\nsoftmax_backward = mine",
     "import nump\ndef softmax_backward(dp, cache):\n    return dp\n"),
    ("def mine(dp, cache):\n    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n\n"
     "def wrong(dp, cache):\n    return dp\n\nsoftmax_backward = mine",
     "import nump\nsoftmax_backward = wrong\n"),
], ids=["a lambda", "a function assigned to the name", "an assignment that did not run"])
def test_a_function_bound_by_a_lambda_or_an_assignment_is_found_stale(kernel, first, later):
    """A backward first made by a lambda, or a function of another name assigned to the exercise's
    name, had no staleness verdict (its __qualname__ is '<lambda>' or 'mine'): a later cell binding
    the name that failed before that line let the older function be graded 'Well done!'."""
    kernel("import numpy as np\nfrom npllama.exercises import check_function")
    kernel(first)
    assert kernel(CHECK_CELL).ok
    kernel(later)
    report = kernel(CHECK_CELL)
    assert not report.ok and report.load_error and "In[2]" in report.load_error and "In[4]" in report.load_error, \
        report.format()


def test_a_function_no_cell_typed_says_what_cannot_be_told(kernel):
    """exec'd text makes a function with no cell to date it: a cell defining the name too may have
    failed after it or run before it.  The check grades the function, and says it cannot tell --
    never 'Well done!' alone; with no cell defining the name, there is nothing to doubt."""
    kernel("exec('def softmax_backward(dp, cache):\\n    return cache * (dp - (dp * cache).sum(-1, keepdims=True))')")
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()
    kernel("import nump\ndef softmax_backward(dp, cache):\n    return dp\n")
    report = kernel(CHECK_CELL)
    assert report.ok and len(report.notes) == 1, report.format()
    assert "cannot tell" in report.notes[0] and "In[3]" in report.notes[0], report.notes
    assert "made by code no cell typed" in report.notes[0], report.notes
    assert "cannot tell" in report.format()


@pytest.mark.parametrize("later", [
    "use_second_version = False\nif use_second_version:\n" + "".join("    " + line + "\n" for line in SOFTMAX_WRONG_AXIS.splitlines()),
    "for attempt in []:\n" + "".join("    " + line + "\n" for line in SOFTMAX_WRONG_AXIS.splitlines()),
    "try:\n    import numpy\nexcept ImportError:\n" + "".join("    " + line + "\n" for line in SOFTMAX_WRONG_AXIS.splitlines()),
    "import contextlib\nwith contextlib.suppress(ZeroDivisionError):\n    1 / 0\n"
    + "".join("    " + line + "\n" for line in SOFTMAX_WRONG_AXIS.splitlines()),
], ids=["an if not taken", "a loop not entered", "an except not reached", "a with whose error was suppressed"])
def test_a_def_in_a_branch_a_cell_that_ran_did_not_take_is_no_alarm(kernel, later):
    """A cell that ran to its end without an error, holding a def of the name in a branch it did
    not take: the function the kernel holds is the one the student's cells make.  It was refused
    as stale, saying the cell 'stopped before that line ran' (it did not stop).  (Whether a cell
    ended without an error is known for the cells run after the check's first use or import.)"""
    kernel(SOFTMAX_RIGHT)
    assert kernel(CHECK_CELL).ok
    kernel(later)
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()
    kernel("import nump\n" + SOFTMAX_WRONG_AXIS)             # a cell that did stop before its def
    report = kernel(CHECK_CELL)
    assert report.load_error and "In[5]" in report.load_error, report.format()


def test_a_helper_put_back_by_a_call_that_ran_is_no_alarm(kernel):
    """A cell that ran binds the name to the function the kernel holds (a call returning it):
    what the student last ran is that function, though a cell before had failed to replace it."""
    kernel(HELPER_RIGHT)
    kernel(CALLS_THE_HELPER)
    assert kernel(CHECK_CELL).ok
    kernel("first_product = jacobian_product")
    kernel("import nump\ndef jacobian_product(dp, p):\n    return dp\n")
    kernel("jacobian_product = dict(kept=first_product)['kept']")
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()


def test_a_long_notebook_is_read_only_where_it_names_the_functions_checked(kernel):
    """Each check parsed every cell run after a definition, once per helper and per name: a
    notebook of a thousand cells added seconds to every check.  A cell not naming a function
    checked cannot bind it, and one that does is parsed once however many checks read it."""
    from npllama.exercises import session

    kernel(HELPER_RIGHT)
    kernel(CALLS_THE_HELPER)
    for n in range(200):
        kernel(f"x{n} = np.arange({n}).sum()")
    for _ in range(3):
        kernel("y = jacobian_product(np.ones(3), np.ones(3))")
    session._parsed.cache_clear()
    assert kernel(CHECK_CELL).ok and kernel(CHECK_CELL).ok
    assert session._parsed.cache_info().currsize <= 3 + 2, session._parsed.cache_info()   # + the two check cells
    assert session._parsed.cache_info().misses <= 3 + 2, session._parsed.cache_info()


@pytest.mark.parametrize("mention", [
    "notes = '''\ndef jacobian_product(dp, p):\n'''\n",
    "# jacobian_product = None\n",
    "print(dict(\n    jacobian_product=jacobian_product,\n))\n",
    "f = lambda x, jacobian_product=None: x\n",
], ids=["a string", "a comment", "a keyword argument", "a lambda's parameter"])
def test_a_cell_with_a_syntax_error_that_only_mentions_a_helper_is_no_alarm(kernel, mention):
    """A cell that does not parse is read as text: a line of a string starting 'def name(', or
    a keyword argument 'name=' at the start of a line, counted as defining the helper again, and
    the current backward got no verdict -- blaming a cell that never defined it."""
    kernel(HELPER_RIGHT)
    kernel(CALLS_THE_HELPER)
    kernel(mention + "x = = 1\n")            # a syntax error
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()
    for n, defines in [(5, "y = 1\ndef jacobian_product(dp, p):\n    return dp\n\nx = = 1\n"),
                       (8, "first = jacobian_product = lambda dp, p: dp\nx = = 1\n")]:
        kernel(defines)         # defines it, and does not parse
        report = kernel(CHECK_CELL)
        assert report.load_error and f"In[{n}]" in report.load_error, report.format()
        kernel(HELPER_RIGHT)


def test_a_teachers_reference_imported_by_a_cell_is_not_graded_as_the_students(kernel, tmp_path, monkeypatch):
    """`from scaled_softmax_exercise import scaled_softmax_backward` in a student's notebook, then
    the check: the teacher's reference passed with 'Well done!' (npllama's own ops were refused
    for a built-in exercise only).  The refusal names what was imported; the teacher's check of
    exercise.reference, and grade_file's, still run it."""
    # a reference in NumPy alone: the guard against npllama's forward does not catch it
    numpy_only = SCALED_SOFTMAX_EXERCISE.replace("    p = softmax_forward(2 * cache)[0]\n",
                                                  "    e = np.exp(2 * cache - (2 * cache).max(-1, keepdims=True))\n"
                                                  "    p = e / e.sum(-1, keepdims=True)\n")
    assert numpy_only != SCALED_SOFTMAX_EXERCISE
    (tmp_path / "scaled_softmax_exercise.py").write_text(numpy_only)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    kernel("from npllama.exercises import check_function\n"
           "from npllama.exercises.teacher import exercise_in_file\n"
           "exercise = exercise_in_file('scaled_softmax_exercise.py', 'scaled_softmax', verify=False)")
    kernel("from scaled_softmax_exercise import scaled_softmax_backward as mine")
    report = kernel("check_function(exercise, mine, n_random=1)")
    assert report.refused and "mine here is the exercise's reference" in report.refused, report.format()
    assert "scaled_softmax_exercise.py" in report.refused, report.format()
    assert kernel("check_function(exercise, exercise.reference, n_random=1)").ok
    # calling it from a backward of the student's own is refused by the guard
    kernel("from scaled_softmax_exercise import scaled_softmax_backward as ref\n\n"
           "def scaled_softmax_backward(dp, cache):\n    return ref(dp, cache)\n")
    report = kernel("check_function(exercise, scaled_softmax_backward, n_random=1)")
    assert report.refused and "calls ref, which is the exercise's reference" in report.refused, report.format()


@pytest.mark.parametrize("later, expected", [
    ("import nump\ndef helper():\n    def softmax_backward(dp, cache):\n        return dp\n", "graded"),
    ("import nump\nsoftmax_backward: object\n", "graded"),
    ("import nump\ndef softmax_backward(dp, cache):\n    return dp\n\nsoftmax_backward = first_version\n", "graded"),
    ("import nump\nfrom numpy import softmax_backward\n", "noted"),
    ("import nump\nsoftmax_backward = first_version.__call__\n", "noted"),
    ("import nump\nsoftmax_backward: object = None\n", "noted"),
    ("import nump\nfor softmax_backward in []:\n    pass\n", "noted"),
    ("import nump\nwith open('x') as softmax_backward:\n    pass\n", "noted"),
    ("import nump\nsoftmax_backward = replacement\n", "noted"),
    ("import nump\ndef softmax_backward(dp, cache):\n    return dp\n", "stale"),
    ("import nump\nsoftmax_backward = first_version\ndef softmax_backward(dp, cache):\n    return dp\n", "stale"),
    ("import nump\nsoftmax_backward = never_rebound\n", "stale"),
], ids=["a def inside another def", "an annotation alone", "an alias to it, last", "an import", "a call's result",
        "an annotated assignment", "a for loop", "a with", "an alias rebound since", "a def", "a def, last",
        "an alias to another function"])
def test_how_a_cell_that_stopped_binds_the_name_decides_the_verdict(kernel, later, expected):
    """A cell that stopped with an error before binding the name: had it run, a def (or an alias to
    a function unchanged since) would have replaced the function checked -- no verdict; an
    import, a call, an alias to a name rebound since, may have given the same function back --
    graded with a note; what binds nothing at the cell's level, or would have put the same
    function back, is no alarm."""
    kernel(SOFTMAX_RIGHT)
    kernel("first_version = softmax_backward\nnever_rebound = lambda dp, cache: dp\nreplacement = None")
    assert kernel(CHECK_CELL).ok
    kernel(later)
    kernel("replacement = len")
    report = kernel(CHECK_CELL)
    verdict = "stale" if report.load_error else "noted" if report.ok and report.notes else "graded" if report.ok else "?"
    assert verdict == expected, report.format()


def test_a_cell_run_before_the_check_was_first_used_is_not_said_to_have_stopped(kernel):
    """Whether a cell ended without an error is known from the check's first use or import on (the
    generated notebook imports it in the check cell): a def in a branch an earlier cell did not
    take was said to be in a cell that 'stopped before that line ran' -- the message names both
    possibilities, and both ways out."""
    kernel(SOFTMAX_RIGHT)
    kernel("use_second_version = False\nif use_second_version:\n"
           + "".join("    " + line + "\n" for line in SOFTMAX_WRONG_AXIS.splitlines()))
    report = kernel(CHECK_CELL)
    assert report.load_error and "stopped before that line ran" not in report.load_error, report.format()
    assert "or it sits in a branch the cell did not take" in report.load_error, report.format()
    assert "would grade code you may have replaced" in report.load_error, report.format()
    assert "run again the cell defining the softmax_backward you mean (In[1])" in report.load_error, report.format()
    kernel(SOFTMAX_RIGHT)                   # the way out it names
    assert kernel(CHECK_CELL).ok
    kernel("import nump\n" + SOFTMAX_WRONG_AXIS)        # run since the check's first use: known to have stopped
    report = kernel(CHECK_CELL)
    assert report.load_error and "stopped before that line ran" in report.load_error, report.format()
    assert "branch" not in report.load_error, report.format()


@pytest.fixture
def first_import(monkeypatch):
    """Makes the shell's next import of npllama.exercises a first one, as a new kernel's is: that
    import starts telling which cells end without an error (session.watch_cells), which this
    process's own import, done before the shell existed, did not.  Call it once nothing outside
    the shell will import from npllama.exercises (a lazy import would be the first one).  Put back
    as it was afterwards."""
    import sys

    import npllama

    def ours(name):
        return name == "npllama.exercises" or name.startswith("npllama.exercises.")

    loaded = [name for name in sys.modules if ours(name)]

    def forget():
        monkeypatch.setattr(npllama, "exercises", npllama.exercises)
        for name in loaded:
            monkeypatch.delitem(sys.modules, name)
    yield forget
    for name in [name for name in sys.modules if ours(name) and name not in loaded]:
        del sys.modules[name]          # then monkeypatch puts back the ones deleted


def _student_answers(starter, body):
    """The notebook's starter cell with the student's body in place of the NotImplementedError."""
    raising = next(line for line in starter.splitlines() if "raise NotImplementedError" in line)
    answered = starter.replace(raising, "    " + body)
    assert answered != starter
    return answered


def test_the_generated_notebook_knows_how_the_students_own_cell_ended(kernel, first_import):
    """The generated notebook imported check_function in its check cell, after the student's cell
    had run: a def of theirs in a branch that cell did not take got the two-cause message ('it
    stopped before it, or it sits in a branch') and no verdict.  Its cells run in order, the check
    knows how the student's cell ended: the exact verdict either way."""
    sources = ["".join(c["source"]) for c in notebook_json("softmax")["cells"] if c["cell_type"] == "code"]
    student = next(n for n, source in enumerate(sources) if "def softmax_backward(" in source)
    right = _student_answers(sources[student], "return cache * (dp - (dp * cache).sum(-1, keepdims=True))")
    wrong = _student_answers(sources[student], "return cache * (dp - (dp * cache).sum(0, keepdims=True))")
    first_import()
    for cell in sources[:student]:
        kernel(cell)
    kernel(right)
    # the student tries another version in their cell, in a branch the cell does not take
    kernel("try_the_first_axis = False\nif try_the_first_axis:\n"
           + "".join("    " + line + "\n" for line in wrong.splitlines()))
    for cell in sources[student + 1:]:
        report = kernel(cell)
    assert report.ok and not report.notes, report.format()
    kernel("import nump\n" + wrong)         # their cell stops before its def
    report = kernel(sources[-1])
    assert report.load_error and "stopped before that line ran" in report.load_error, report.format()
    assert "branch" not in report.load_error, report.format()


PRODUCT_CLASS = ("import numpy as np\n\nclass Product:\n    def __call__(self, dp, p):\n"
                 "        return p * (dp - (dp * p).sum(-1, keepdims=True))\n\n"
                 "    def __repr__(self):\n        return 'Product()'\n")


@pytest.mark.parametrize("first, calls, later, name", [
    (HELPER_RIGHT, "import functools\nproduct = functools.partial(jacobian_product)\n\n"
                   "def softmax_backward(dp, cache):\n    return product(dp, cache)\n",
     HELPER_RIGHT.replace("sum(-1", "sum(0"), "jacobian_product"),
    (HELPER_RIGHT, "import functools\nproduct = functools.partial(functools.partial(jacobian_product), p=None)\n\n"
                   "def softmax_backward(dp, cache):\n    return product(dp, p=cache)\n",
     HELPER_RIGHT.replace("sum(-1", "sum(0"), "jacobian_product"),
    (PRODUCT_CLASS, "product = Product()\n\ndef softmax_backward(dp, cache):\n    return product(dp, cache)\n",
     PRODUCT_CLASS.replace("sum(-1", "sum(0"), "Product.__call__"),
], ids=["a partial", "a partial of a partial", "a callable object"])
def test_a_helper_held_by_a_partial_or_an_object_whose_code_a_cell_failed_to_replace_leaves_no_verdict(
        kernel, first, calls, later, name):
    """Only functions and classes under the names the backward reads were followed: a helper held
    as functools.partial(f), or an object whose class's __call__ runs, was graded 'Well done!' after
    a later cell failed to define f (the class) again.  The function the partial holds and the
    class's methods are followed, under the names a cell defines them by."""
    kernel(first)
    kernel(calls)
    assert kernel(CHECK_CELL).ok
    kernel("import nump\n" + later)
    report = kernel(CHECK_CELL)
    assert not report.ok and report.load_error, report.format()
    assert f"your softmax_backward calls {name}" in report.load_error, report.load_error
    assert "In[1]" in report.load_error and "In[4]" in report.load_error, report.load_error
    kernel(later)                   # the cell fixed and run: no alarm (the helper held is the older one still)
    report = kernel(CHECK_CELL)
    assert not report.load_error and len(report.notes) <= 1, report.format()     # not one note per method


@pytest.mark.parametrize("first, name", [
    ("", "abs"),
    ("from numpy import absolute as magnitude\n", "magnitude"),
], ids=["a builtin", "a numpy ufunc"])
def test_a_builtin_or_ufunc_a_cell_failed_to_replace_is_graded_with_a_note(kernel, first, name):
    """abs(), or a ufunc imported under a name, has no cell to date it: a later cell defining the
    name that stopped with an error left the kernel's -- which the backward was graded with, and
    nothing said.  Which the student meant cannot be told from the cells' text (an import or
    `from numpy import *` run since binds it without naming it): graded, with a note saying so."""
    kernel(first + "import numpy as np\n\ndef softmax_backward(dp, cache):\n"
           f"    return {name}(cache) * (dp - (dp * cache).sum(-1, keepdims=True))\n")
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()
    kernel(f"use_mine = False\nif use_mine:\n    def {name}(x):\n        return -x\n")    # ran: a branch not taken
    report = kernel(CHECK_CELL)
    assert report.ok and not report.notes, report.format()
    kernel(f"import nump\ndef {name}(x):\n    return -x\n")
    report = kernel(CHECK_CELL)
    assert report.ok and len(report.notes) == 1, report.format()
    assert f"cannot tell whether the {name} checked (your function calls it)" in report.notes[0], report.notes
    assert "In[5]" in report.notes[0] and "no cell defines" in report.notes[0], report.notes


def test_a_def_in_a_time_cell_is_dated_and_a_time_cell_that_stopped_is_not_trusted(kernel):
    """%%time runs its cell's body as code of a file '<timed exec>' (no cell's lines) and, before
    IPython 9, catches the body's error and ends the cell without one: a %%time cell redefining
    the backward that stopped before its def was not seen to bind it ('Well done!' for the older
    function), and a function defined in one was said to be made by code no cell typed."""
    from IPython import get_ipython

    kernel("import numpy as np\nfrom npllama.exercises import check_function")
    kernel("%%time\n" + SOFTMAX_RIGHT)
    assert kernel(CHECK_CELL).ok and not kernel(CHECK_CELL).notes      # In[3], In[4]: In[2]'s function, no doubt
    stopped = get_ipython().run_cell("%%time\nimport nump\n" + SOFTMAX_WRONG_AXIS, store_history=True)   # In[5]
    report = kernel(CHECK_CELL)
    assert report.load_error and "cell In[2] defined" in report.load_error and "cell In[5]" in report.load_error, \
        report.format()
    if stopped.success:         # IPython 8 caught the body's error: how the cell ended tells nothing
        assert "or it sits in a branch" in report.load_error, report.format()
    else:                       # IPython 9 raises it again
        assert "stopped before that line ran" in report.load_error, report.format()
    kernel("%%time\n" + SOFTMAX_RIGHT)                          # In[7], run again: the one checked
    assert kernel(CHECK_CELL).ok and not kernel(CHECK_CELL).notes
    kernel("import nump\n" + SOFTMAX_WRONG_AXIS)         # In[10], a plain cell failing: the %%time cell's is stale
    report = kernel(CHECK_CELL)
    assert report.load_error and "cell In[7] defined" in report.load_error and "cell In[10]" in report.load_error, \
        report.format()


@pytest.mark.parametrize("body, name", [
    ("import functools\n\n@functools.lru_cache\n@functools.wraps(print)\ndef softmax_backward(dp, cache):\n"
     "    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n", "softmax_backward"),
    ("softmax_backward = lambda dp, cache: cache * (dp - (dp * cache).sum(-1, keepdims=True))\n", "<lambda>"),
], ids=["decorated def", "lambda"])
def test_a_time_cells_function_is_told_from_another_time_cells_by_its_def(kernel, body, name):
    """Every %%time cell's functions share the file '<timed exec>': the cell defining the one the
    kernel holds is found by its def in the body (a decorated def's code starts at its first
    decorator), not by a def of the same name starting or ending at another line or with other
    parameters."""
    from npllama.exercises.session import _cells_defining

    split = body.replace("cache * (dp", "cache * (\n        dp")         # one line longer
    held = "pass\n" + split           # one line lower (a body's leading blank lines are dropped)
    kernel("%%time\npass\n" + body)                              # In[1]: the same first line, ends a line higher
    kernel("%%time\n" + held.replace("dp, cache", "dp, cache_"))  # In[2]: other parameters
    kernel("%%time\n" + split.replace("keepdims", "\n        keepdims"))      # In[3]: starts a line higher
    kernel("%%time\nif False:\n" + "".join("    " + line for line in held.splitlines(keepends=True)))   # In[4]
    kernel("%%time\n" + held)                                     # In[5]: the one the kernel holds
    function = kernel("softmax_backward")
    function = getattr(function, "__wrapped__", function)       # lru_cache's wrapper: the function it holds
    assert function.__code__.co_filename == "<timed exec>" and function.__code__.co_name == name
    assert _cells_defining(function) == [5]



def test_how_another_shells_cells_ended_is_not_read(kernel):
    """Cells are numbered per shell (a kernel restarted in the same process, a test's shells): a
    cell another shell ran under the same number and ended well does not tell that this shell's
    cell -- run before its first check, its end unknown -- skipped a def in a branch."""
    from IPython.core.interactiveshell import InteractiveShell

    kernel(SOFTMAX_RIGHT)                               # In[1]
    assert kernel(CHECK_CELL).ok                        # In[2], ended well: this shell's cells are watched
    InteractiveShell.clear_instance()
    other = InteractiveShell.instance()
    run = lambda cell: other.run_cell(cell, store_history=True).result
    run(SOFTMAX_RIGHT)                                  # In[1]
    run("import nump\n" + SOFTMAX_WRONG_AXIS)           # In[2]: stopped before its def, before any check
    report = run(CHECK_CELL)
    assert report.load_error and "cell In[2]" in report.load_error, report.format()
    assert "or it sits in a branch" in report.load_error, report.format()


# ----- what the student's function prints: kept, and shown capped at the report's head -----------

SOFTMAX_PRINTING = SOFTMAX_RIGHT.replace("def softmax_backward(dp, cache):\n",
                                         "def softmax_backward(dp, cache):\n    print('dp', dp.shape)\n")


def test_what_the_function_prints_in_a_notebook_is_shown_as_exercise_check_shows_a_files(kernel, tmp_path, capsys):
    """A print in the backward ran once per call of the checks: 47 lines in the notebook, before
    the report.  They are kept and shown as `exercise check` shows a file's, in the same words:
    the first OUTPUT_SHOWN lines, how many there were, then the report -- and a right answer that
    prints is still right."""
    from npllama.exercises.sandbox import OUTPUT_SHOWN

    kernel(SOFTMAX_PRINTING)
    report = kernel(CHECK_CELL.replace("n_random=1", "n_random=8"))
    assert report.ok, report.format()
    screen = capsys.readouterr().out
    assert not [line for line in screen.splitlines() if line.startswith("dp (")], screen   # none shown as it ran
    lines = report.format().splitlines()
    assert lines[0].startswith("your code printed ") and lines[0].endswith(f" lines (the first {OUTPUT_SHOWN}):")
    assert int(lines[0].split()[3]) > OUTPUT_SHOWN, lines[0]
    assert all(line.startswith("  | dp (") for line in lines[1:OUTPUT_SHOWN + 1]), lines
    assert lines[OUTPUT_SHOWN + 1:OUTPUT_SHOWN + 3] == ["", "exercise softmax: softmax_backward"], lines
    assert report.to_dict()["output"] == report.output
    # the file flow says the same of the same function
    from npllama.exercises import grade_file

    (tmp_path / "softmax_backward.py").write_text(SOFTMAX_PRINTING)
    graded = grade_file("softmax", tmp_path / "softmax_backward.py", n_random=8)
    assert graded.ok and graded.output == report.output, (graded.output, report.output)


def test_what_goes_to_stderr_is_kept_with_the_prints_and_a_quiet_function_shows_none(capsys):
    import sys

    def softmax_backward(dp, cache):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return cache * (dp - (dp * cache).sum(-1, keepdims=True))

    report = check_function("softmax", softmax_backward, n_random=0)
    assert report.ok, report.format()
    assert capsys.readouterr() == ("", "")
    assert report.output.splitlines()[1:3] == ["  | to stdout", "  | to stderr"], report.output
    quiet = check_function("softmax", lambda dp, cache: cache * (dp - (dp * cache).sum(-1, keepdims=True)),
                           n_random=0)
    assert quiet.output == "" and quiet.format().startswith("exercise softmax"), quiet.format()


def test_what_was_printed_before_an_interrupt_is_shown_as_it_stops(capsys):
    """Ctrl-C in an endless loop escapes check_function with no report to show the prints in: they
    are shown as it stops, and the screen is the screen again."""
    import sys

    screen = sys.stdout

    def softmax_backward(dp, cache):
        print("still looping")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_function("softmax", softmax_backward, n_random=0)
    assert sys.stdout is screen
    assert capsys.readouterr().out == "your code printed 1 line:\n  | still looping\n"


def _checked_with_a_debugger_stop(tmp_path, stop: list[str], then: str) -> str:
    """What a script printed that checks a right softmax_backward which prints, and whose first
    call runs the lines `stop` (a debugger's stop) -- the debugger answered "p 'shape', dp.shape",
    then the commands `then`.  Whatever the debugger: its prompt and p's answer reach the screen,
    the function's own prints are kept for the report, and the check passes."""
    import os
    import subprocess
    import sys

    script = tmp_path / "debugged.py"
    script.write_text(
        "from npllama.exercises import check_function\n"
        "stopped = []\n"
        "def softmax_backward(dp, cache):\n"
        "    print('printed by the function')\n"
        "    if not stopped:\n"
        "        stopped.append(1)\n"
        + "".join(f"        {line}\n" for line in stop) +
        "    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n"
        "report = check_function('softmax', softmax_backward, n_random=0)\n"
        "print('OK' if report.ok else report)\n")
    env = {**os.environ, "PYTHONBREAKPOINT": ""}     # breakpoint() is pdb's, whatever the tests ran under
    run = subprocess.run([sys.executable, str(script)], input="p 'shape', dp.shape\n" + then, capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "(Pdb) ('shape', (" in run.stdout, run.stdout     # the prompt, and p's answer
    assert run.stdout.rstrip().endswith("OK"), run.stdout
    assert "\nprinted by the function" not in run.stdout, run.stdout
    return run.stdout


@pytest.mark.parametrize("stop", ["breakpoint()", "import pdb; pdb.set_trace()"])
def test_a_debugger_stopped_in_the_function_still_talks_to_the_student(tmp_path, stop):
    """The prints are kept, but the debugger's prompt and answers (p, the listing), and what the
    function prints while the student steps through it, are the student's to see: a breakpoint()
    in the function works as without the check."""
    shown = _checked_with_a_debugger_stop(tmp_path, [stop, "print('printed while stepping')"], then="n\nc\n")
    assert "-> " in shown, shown                    # where it stopped
    assert "(Pdb) printed while stepping\n" in shown, shown


def test_a_warning_of_npllamas_own_code_is_not_shown_as_what_the_function_printed(tmp_path):
    """A backward returning complex gradients printed nothing, yet its report began "your code
    printed 2 lines: | .../npllama/exercises/mistakes.py:72: ComplexWarning" -- the checker's own
    warning, written to stderr while the output was kept.  What runs outside the student's function
    (the checks, the forward) writes to the screen as before; the function's own warning is kept."""
    import os
    import subprocess
    import sys

    script = tmp_path / "warned.py"
    script.write_text(
        "import warnings\n"
        "import numpy as np\n"
        "from npllama.exercises import check_function\n"
        "def softmax_backward(dp, cache):\n"
        "    return (cache * (dp - (dp * cache).sum(-1, keepdims=True))).astype(complex)\n"
        "def warning_backward(dp, cache):\n"
        "    warnings.warn('the function warns')\n"
        "    return cache * (dp - (dp * cache).sum(-1, keepdims=True))\n"
        "quiet = check_function('softmax', softmax_backward, n_random=0)\n"
        "print('QUIET', repr(quiet.output))\n"
        "warned = check_function('softmax', warning_backward, n_random=0)\n"
        "print('WARNED', warned.output)\n")
    run = subprocess.run([sys.executable, "-W", "always", str(script)], capture_output=True, text=True,
                         timeout=120, env=os.environ, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "QUIET ''\n" in run.stdout, run.stdout
    assert "ComplexWarning" in run.stderr and "ComplexWarning" not in run.stdout, (run.stdout, run.stderr)
    assert "WARNED your code printed " in run.stdout and "UserWarning: the function warns" in run.stdout, run.stdout
    assert "the function warns" not in run.stderr, run.stderr


def test_check_file_shows_what_the_file_prints_as_it_is_imported_with_what_the_function_prints(tmp_path, capsys):
    """check_file imports the file in this process: its module-level prints reached the screen as
    it loaded, outside the "your code printed" block that `exercise check` (grade_file) puts them
    in.  They are one block, in the order printed, the same as grade_file's -- and a file that
    fails to load shows what it printed before it failed."""
    from npllama.exercises import check_file, grade_file

    source = "print('loading')\n" + SOFTMAX_RIGHT.replace(
        "def softmax_backward(dp, cache):\n", "def softmax_backward(dp, cache):\n    print('called')\n")
    (tmp_path / "softmax_backward.py").write_text(source)
    report = check_file("softmax", tmp_path / "softmax_backward.py", n_random=0)
    assert report.ok, report.format()
    assert capsys.readouterr() == ("", "")
    assert report.output.splitlines()[1:3] == ["  | loading", "  | called"], report.output
    assert report.output == grade_file("softmax", tmp_path / "softmax_backward.py", n_random=0).output

    (tmp_path / "broken.py").write_text("print('before the crash')\n1 / 0\n")
    broken = check_file("softmax", tmp_path / "broken.py", n_random=0)
    assert broken.load_error and capsys.readouterr() == ("", "")
    assert broken.format().startswith("your code printed 1 line:\n  | before the crash\n\n"), broken.format()


def test_what_the_function_logs_to_a_handler_set_up_before_the_check_is_kept_with_its_prints(capsys):
    """logging.basicConfig() in an earlier cell binds a handler to the screen's stderr: the
    function's log lines bypassed the capture, once per call of the checks, uncapped.  A handler
    writing to the screen writes to the kept output while the checks run, and to the screen after."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("a_students_backward")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        def softmax_backward(dp, cache):
            logger.warning("logged")
            return cache * (dp - (dp * cache).sum(-1, keepdims=True))

        report = check_function("softmax", softmax_backward, n_random=0)
        assert report.ok, report.format()
        assert capsys.readouterr() == ("", ""), "logged as the checks ran"
        assert report.output.splitlines()[1] == "  | logged", report.output
        assert handler.stream is sys.stderr
        logger.warning("after")
        assert capsys.readouterr().err == "after\n"
    finally:
        logger.removeHandler(handler)


def test_a_post_mortem_debugger_in_the_function_still_talks_to_the_student(tmp_path):
    """pdb.post_mortem() in the function's own except: a debugger with no trace function on, known
    only by its methods on the stack -- its prompt and answers reach the screen too."""
    shown = _checked_with_a_debugger_stop(
        tmp_path, ["try:", "    1 / 0", "except ZeroDivisionError:", "    import pdb; pdb.post_mortem()"], then="c\n")
    assert "-> 1 / 0" in shown, shown
