"""A teacher's walk through their own exercise, part 2: what the teacher and the class read.

A factor that is one of the case's scalar inputs (tau) is named as that input when it is on every
case checked, never as "a factor of 2"; a teacher's forward that is not deterministic is blamed,
not "your function", with a hint that runs as printed; the gradebook's report has what the
submission printed, as `check` of one file shows it; the memory limit is named with its flag and
is a crash, not a wrong gradient; the exercise file is named, in the starter, the notebook and
what `start` prints, by a path that works from where the command runs."""
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from npllama.cli import main
from npllama.exercises import check_function, grade_file, load_exercises
from npllama.exercises.teacher import ExerciseFileError

from .test_exercise_materials import shown_by_cell

SOFTPLUS = '''"""Softplus with a temperature."""
import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Choice, Shape


def softplus_forward(x, tau):
    z = x / tau
    return np.logaddexp(0, z), (z, tau)


def softplus_backward(dout, cache):
    z, tau = cache
    return dout / (1 + np.exp(-z)) / tau


class Softplus(Exercise):
    op, title = "softplus", "softplus with temperature"
    forward_name, backward_name, params = "softplus_forward", "softplus_backward", "dout, cache"
    doc = "Gradient of out = log(1 + exp(x / tau)).\\n\\n    Returns dx, the shape of x.\\n    "
    space = dict(shape=Shape(1, 2, 1, 4), tau=TAUS, seed=SEED)
    edge_cases = [dict(shape=(2, 3), tau=EDGE_TAUS[0], seed=1), dict(shape=(3,), tau=EDGE_TAUS[1], seed=2)]

    def build(self, params, dtype=np.float64):
        rng = np.random.default_rng(params["seed"])
        x = rng.standard_normal(params["shape"]).astype(dtype)
        return Case(self.forward, [x, params["tau"]], ("x", "tau"), (0,), seed=params["seed"] % 1000)
'''


def softplus_file(folder: Path, taus=(0.5, 2.0, 3.0), edge_taus=(0.5, 2.0), name="softplus_exercise.py") -> Path:
    path = folder / name
    path.write_text(SOFTPLUS.replace("EDGE_TAUS", repr(tuple(edge_taus))).replace("TAUS", f"Choice({tuple(taus)!r})"),
                    encoding="utf-8")
    return path


def student(body: str):
    """A softplus_backward whose return line is `body` (z, tau unpacked, sig = sigmoid(z))."""
    namespace = {}
    exec(f"import numpy as np\ndef softplus_backward(dout, cache):\n    z, tau = cache\n"
         f"    sig = 1 / (1 + np.exp(-z))\n    return {body}\n", namespace)
    return namespace["softplus_backward"]


# ----- 1. a factor that is a scalar input of the case ------------------------------------------------

def test_a_forgotten_division_by_a_scalar_input_is_named_as_that_input(tmp_path):
    softplus = load_exercises(softplus_file(tmp_path))["softplus"]
    finding = check_function(softplus, student("dout * sig"), n_random=4).first_failure.finding
    assert finding.case.endswith("tau=0.5")          # the first failing case: a ratio of exactly 0.5
    assert "tau times the right" in finding.message, finding.message
    assert "factor of 2" not in finding.message + finding.hint
    assert "/ tau" in finding.hint
    extra = check_function(softplus, student("dout * sig / tau**2"), n_random=4).first_failure.finding
    assert "divided by tau" in extra.message, extra.message


def test_a_real_factor_of_two_is_not_blamed_on_the_scalar_input(tmp_path):
    # half the right gradient on every case, tau = 0.5 in the first: 2 fits every case, tau does not
    softplus = load_exercises(softplus_file(tmp_path))["softplus"]
    finding = check_function(softplus, student("0.5 * dout * sig / tau"), n_random=4).first_failure.finding
    assert "exactly half" in finding.message and "tau" not in finding.message + finding.hint


def test_one_value_of_the_scalar_input_names_no_cause_but_says_both_readings(tmp_path):
    # every case has tau = 0.5: a missing / tau and a missing factor 2 give the same numbers
    softplus = load_exercises(softplus_file(tmp_path, taus=(0.5,), edge_taus=(0.5, 0.5)))["softplus"]
    finding = check_function(softplus, student("dout * sig"), n_random=2).first_failure.finding
    assert "tau times" not in finding.message
    assert "exactly half" in finding.message and "tau = 0.5 on every case checked" in finding.hint, finding.hint


def test_a_scalar_input_that_is_1_on_a_passing_case_is_named_not_called_one_value(tmp_path):
    # tau = 2 where the student fails, tau = 1 where they pass: no constant fits both, tau does
    softplus = load_exercises(softplus_file(tmp_path, taus=(1.0, 2.0), edge_taus=(2.0, 1.0)))["softplus"]
    finding = check_function(softplus, student("dout * sig"), n_random=4).first_failure.finding
    assert "tau times the right" in finding.message, finding.message
    assert "on every case checked (tau = 2, 1)" in finding.message
    assert "tau = 2, 1 on every case" not in finding.hint, finding.hint


TWO_SCALARS = SOFTPLUS.replace("def softplus_forward(x, tau):\n    z = x / tau",
                               "def softplus_forward(x, tau, beta, shift=0.0):\n    z = x / tau + shift").replace(
    '[x, params["tau"]], ("x", "tau")', '[x, params["tau"], 1 / params["tau"]], ("x", "tau", "beta")').replace(
    'seed=params["seed"] % 1000)', 'seed=params["seed"] % 1000, kwargs=dict(shift=0.0))')


def test_two_scalar_inputs_that_give_the_same_numbers_are_both_named(tmp_path):
    # beta = 1 / tau on every case: a forgotten / tau is also a gradient divided by beta; shift = 0
    # is a scalar input no gradient is divided by
    path = softplus_file(tmp_path)
    path.write_text(TWO_SCALARS.replace("EDGE_TAUS", "(0.5, 2.0)").replace("TAUS", "Choice((0.5, 2.0, 3.0))"),
                    encoding="utf-8")
    softplus = load_exercises(path)["softplus"]
    finding = check_function(softplus, student("dout * sig"), n_random=4).first_failure.finding
    assert "tau times the right one" in finding.message, finding.message
    assert "or the right one divided by beta" in finding.message, finding.message
    assert "beta gives the same numbers" in finding.message


# ----- 2. a teacher's forward that is not deterministic -----------------------------------------------

NOISY = '''import numpy as np
from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Shape


def noisy_forward(x):
    return x * x + 1e-3 * np.random.standard_normal(x.shape), (x,)


def noisy_backward(dout, cache):
    (x,) = cache
    return 2 * x * dout


class Noisy(Exercise):
    op, title = "noisy", "square with noise"
    forward_name, backward_name, params = "noisy_forward", "noisy_backward", "dout, cache"
    doc = "Gradient of x * x."
    space = dict(shape=Shape(1, 2, 1, 4), seed=SEED)
    edge_cases = [dict(shape=(2, 3), seed=1)]

    def build(self, params, dtype=np.float64):
        x = np.random.default_rng(params["seed"]).standard_normal(params["shape"]).astype(dtype)
        return Case(self.forward, [x], ("x",), (0,), seed=params["seed"] % 1000)
'''


def hint_code(message: str) -> str:
    """The snippet a hint prints on the lines under 'hint:' (indented by 4 under the report's 2)."""
    lines = message.split("hint:", 1)[1].splitlines()[1:]
    return "\n".join(line.strip() for line in lines if line.startswith("      "))


def test_a_forward_that_is_not_deterministic_is_blamed_and_its_hint_runs_as_printed(tmp_path, monkeypatch):
    (tmp_path / "course").mkdir()
    (tmp_path / "course" / "nondet.py").write_text(NOISY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExerciseFileError) as refused:
        load_exercises("course/nondet.py")
    message = str(refused.value)
    assert "your function" not in message and "noisy_forward" in message and "deterministic" in message, message
    # said of the forward, with the two values it gave (not the checker's 'the function gave')
    assert re.search(r"it gave \S+ and then \S+ at the same inputs: finite differences need a deterministic "
                     r"forward \(fix the seed", " ".join(message.split())), message
    code = hint_code(message)
    assert "load_exercises('course/nondet.py', verify=False)" in code, code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})                  # runs as printed, from where the command ran
    assert printed.getvalue().strip(), "the snippet shows the two calls differ"


# ----- 3. the gradebook's report is what the student reads ---------------------------------------------

def test_the_gradebook_report_has_what_the_submission_printed_as_check_of_one_file_shows(tmp_path, capsys):
    exercise_file = softplus_file(tmp_path)
    submission = tmp_path / "alice.py"
    submission.write_text("import numpy as np\ndef softplus_backward(dout, cache):\n    z, tau = cache\n"
                          "    print('debug: z shape', z.shape)\n    return dout / (1 + np.exp(-z))\n")
    assert main(["exercise", "check", "--exercise-file", str(exercise_file), "softplus", str(submission),
                 "--cases", "1", "--json", str(tmp_path / "one.json")]) == 1
    shown = capsys.readouterr().out
    assert "debug: z shape" in shown
    report = json.loads((tmp_path / "one.json").read_text())[0]["report"]
    assert report.strip() == shown.strip()


# ----- 4. the memory limit -----------------------------------------------------------------------------

def test_running_out_of_the_memory_limit_is_a_crash_naming_the_limit_and_its_flag(tmp_path):
    exercise = load_exercises(softplus_file(tmp_path))["softplus"]
    hog = tmp_path / "hog.py"
    hog.write_text("import numpy as np\ndef softplus_backward(dout, cache):\n    z, tau = cache\n"
                   "    big = np.ones(400_000_000)\n    return dout / (1 + np.exp(-z)) / tau + big[0]\n")
    graded = grade_file(exercise, hog, n_random=1, memory_mb=256, timeout=60)
    assert graded.status == "crashed", graded
    assert "256 MB" in graded.diagnosis and "--memory-mb" in graded.diagnosis, graded.diagnosis
    assert "hog.py: big = np.ones(400_000_000))" in graded.diagnosis      # the line that allocated


def test_a_memory_error_that_is_not_the_limit_stays_the_students_own(tmp_path):
    # raised on purpose in a wrong answer, or NumPy refusing an absurd shape: the limit plays no
    # part, and raising it (as the crash's words say) would change nothing
    exercise = load_exercises(softplus_file(tmp_path))["softplus"]
    for name, line in (("raises.py", "raise MemoryError('too big for me')"),
                       ("absurd.py", "big = np.zeros((10**9, 10**9))")):
        path = tmp_path / name
        path.write_text(f"import numpy as np\ndef softplus_backward(dout, cache):\n    {line}\n    return dout\n")
        graded = grade_file(exercise, path, n_random=1, memory_mb=256, timeout=60)
        assert graded.status == "fail", graded
        assert "memory limit" not in graded.diagnosis and "MemoryError" in graded.diagnosis, graded.diagnosis


def test_a_crash_after_printing_past_the_output_cap_does_not_count_only_the_kept_lines(tmp_path):
    # the child wrote 64K characters of its 5000 lines; read back from that file after the crash,
    # the count is of what was kept: 'printed 216 lines' was untrue
    exercise = load_exercises(softplus_file(tmp_path))["softplus"]
    hog = tmp_path / "chatty.py"
    hog.write_text("import numpy as np\ndef softplus_backward(dout, cache):\n    for i in range(5000):\n"
                   "        print('x' * 300, i)\n    big = np.ones(400_000_000)\n    return dout\n")
    graded = grade_file(exercise, hog, n_random=1, memory_mb=256, timeout=60)
    assert graded.status == "crashed", graded
    assert graded.output.startswith("your code printed at least "), graded.output[:80]
    assert len(graded.report) < 6000                 # the cap holds in the report the JSON keeps


# ----- 5. the exercise file as reached from where the student runs the command ---------------------------

def test_the_starter_and_start_name_the_exercise_file_by_a_path_that_works_from_there(tmp_path, monkeypatch, capsys):
    softplus_file(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["exercise", "start", "--exercise-file", "../softplus_exercise.py", "softplus", "--quiet"]) == 0
    printed = capsys.readouterr().out
    starter = (work / "softplus_backward.py").read_text()
    command = "npllama exercise check --exercise-file ../softplus_exercise.py softplus softplus_backward.py"
    assert command in printed and command in starter
    # written into another folder, the starter's command works from the starter's folder
    assert main(["exercise", "start", "--exercise-file", "../softplus_exercise.py", "softplus", "--quiet",
                 "--out", "hw/"]) == 0
    command = (work / "hw" / "softplus_backward.py").read_text().split("then check it:\n\n", 1)[1].splitlines()[0]
    monkeypatch.chdir(work / "hw")
    assert main(shlex.split(command.strip())[1:] + ["--cases", "0"]) == 1
    assert "not implemented yet" in capsys.readouterr().out


def test_the_notebook_loads_the_exercise_file_by_its_path_from_the_notebooks_folder(tmp_path, monkeypatch):
    softplus_file(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["exercise", "notebook", "--exercise-file", "../softplus_exercise.py", "softplus"]) == 0
    cells = json.loads((tmp_path / "work" / "softplus_backward.ipynb").read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells)
    assert "load_exercises('../softplus_exercise.py')" in text
    assert "--exercise-file ../softplus_exercise.py" in text
    assert "beside this notebook" not in text
    namespace = {}
    setup, starter, check = ("".join(c["source"]) for c in cells[1:4])
    exec(setup, namespace)           # run where the notebook is, as Jupyter runs it
    exec(starter, namespace)
    assert "softplus_backward is not implemented yet" in shown_by_cell(check, namespace)


def test_a_starter_handed_out_beside_the_exercise_file_is_told_the_file_here(tmp_path, monkeypatch, capsys):
    # generated with --out hw/: the starter names ../softplus_exercise.py; a handout that puts the
    # two side by side fails with that path, and the error says the file beside it works
    softplus_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["exercise", "start", "--exercise-file", "softplus_exercise.py", "softplus", "--out",
                 "hw/softplus_backward.py", "--quiet"]) == 0
    assert "--exercise-file ../softplus_exercise.py" in (tmp_path / "hw" / "softplus_backward.py").read_text()
    handout = tmp_path / "student"
    handout.mkdir()
    for path in (tmp_path / "hw" / "softplus_backward.py", tmp_path / "softplus_exercise.py"):
        (handout / path.name).write_text(path.read_text())
    monkeypatch.chdir(handout)
    (tmp_path / "softplus_exercise.py").unlink()      # the teacher's copy is not on the student's machine
    capsys.readouterr()
    assert main(["exercise", "check", "--exercise-file", "../softplus_exercise.py", "softplus",
                 "softplus_backward.py"]) != 0
    error = capsys.readouterr().err
    assert "does not exist" in error and "run with --exercise-file softplus_exercise.py" in error, error


def test_an_exercise_file_that_is_a_folder_is_called_a_folder(tmp_path):
    from npllama.exercises.teacher import ExerciseFileError, load_exercises

    (tmp_path / "course").mkdir()
    with pytest.raises(ExerciseFileError, match=r"course is a folder \(expected a \.py file"):
        load_exercises(tmp_path / "course")
