"""A case the gradient check cannot decide (gradcheck's UNRESOLVED: a right backward at a kink of
the forward, relu at exactly 0) is neither a pass nor a mistake: the report says so with the
checker's reason, and the check's verdict rests on the cases it could decide."""
import pytest

from npllama.cli import main
from npllama.exercises import ExerciseFileError, check_function, load_exercises
from npllama.exercises.sandbox import _graded

RELU = '''import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Choice, Ints


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


class ReLU(Exercise):
    op, title = "relu", "relu"
    forward_name, backward_name, params = "relu_forward", "relu_backward", "dout, cache"
    space = dict(n=Ints(2, 5), at_kink=Choice(KINK_OPTIONS), seed=SEED)
    edge_cases = [dict(n=3, at_kink=KINK_FIRST, seed=1)]

    def build(self, params, dtype=np.float64):
        x = np.random.default_rng(params["seed"]).standard_normal(params["n"]).astype(dtype)
        x[np.abs(x) < 0.1] = 0.5       # away from the kink, but where the case puts x on it
        if params["at_kink"]:
            x[0] = 0.0                 # relu's kink: no derivative, finite differences cannot judge it
        return Case(self.forward, [x], ("x",), (0,), seed=params["seed"])
'''

RIGHT = "def relu_backward(dout, cache):\n    return dout * (cache > 0)\n"
DOUBLED = "def relu_backward(dout, cache):\n    return 2 * dout * (cache > 0)\n"


def exercise(tmp_path, some_at_kink: bool):
    """relu whose cases all sit on the kink, or whose edge case does not and random ones may."""
    options = "(False, True)" if some_at_kink else "(True,)"
    text = RELU.replace("KINK_OPTIONS", options).replace("KINK_FIRST", str(not some_at_kink))
    path = tmp_path / f"relu_{'some' if some_at_kink else 'all'}.py"
    path.write_text(text)
    return path, load_exercises(path, verify=some_at_kink)["relu"]


def load(source):
    namespace = {}
    exec(source, namespace)
    return namespace["relu_backward"]


def gradient_row(report):
    return next(r for r in report.results if r.check.name == "gradient")


def test_a_right_backward_on_cases_the_check_cannot_decide_passes_on_the_others(tmp_path):
    _, relu = exercise(tmp_path, some_at_kink=True)
    report = check_function(relu, load(RIGHT), n_random=6, seed=0)
    row = gradient_row(report)
    assert row.undecided and len(row.undecided) < row.cases_run, str(report)   # the draw holds both kinds
    assert report.ok and row.status == "pass", str(report)
    text = report.format()
    assert "could not be decided by finite differences" in text and "kink" in text, text
    assert f"the verdict rests on the other {row.cases_run - len(row.undecided)} case" in text, text
    assert "First failure" not in text and "wrong" not in text, text


def test_a_wrong_backward_still_fails_on_the_cases_that_decide(tmp_path):
    _, relu = exercise(tmp_path, some_at_kink=True)
    report = check_function(relu, load(DOUBLED), n_random=6, seed=0)
    assert not report.ok and gradient_row(report).status == "fail", str(report)
    assert "twice the right one" in report.first_failure.finding.message, str(report)
    assert "x (3,)" in report.first_failure.finding.case      # the edge case, off the kink


def test_when_no_case_can_be_decided_the_check_says_it_could_not_decide(tmp_path):
    path, relu = exercise(tmp_path, some_at_kink=False)
    # a teacher's file whose every case sits on the kink is refused before anyone is graded
    with pytest.raises(ExerciseFileError, match=r"could not decide the reference relu_backward on any case(.|\n)*"
                                                r"kink"):
        load_exercises(path)
    # relu'(0) taken as 1 is another subgradient there: no more right or wrong than 0
    for backward in (load(RIGHT), load(RIGHT.replace("cache > 0", "cache >= 0"))):
        report = check_function(relu, backward, n_random=3, seed=0)
        row = gradient_row(report)
        assert row.status == "undecided" and len(row.undecided) == row.cases_run, str(report)
        assert not report.ok and report.first_failure is None, str(report)   # not a pass, not a mistake
        assert report.summary().startswith("gradient: could not decide"), report.summary()
        text = report.format()
        assert "UNDECIDED gradient" in text and "the check could not decide" in text and "kink" in text, text
        assert "FAIL" not in text and "what is wrong" not in text, text
        graded = _graded("relu_backward.py", report, 0.0)
        assert graded.status == "undecided" and not graded.ok, graded
        assert graded.diagnosis.startswith("gradient: could not decide"), graded


def test_the_cli_check_passes_a_right_backward_and_names_the_cases_it_could_not_decide(tmp_path, capsys):
    path, _ = exercise(tmp_path, some_at_kink=True)
    (tmp_path / "relu_backward.py").write_text(RIGHT)
    code = main(["exercise", "check", "--exercise-file", str(path), "relu", str(tmp_path / "relu_backward.py"),
                 "--cases", "6"])
    out = capsys.readouterr().out
    assert code == 0 and "could not be decided by finite differences" in out and "kink" in out, out


GATED = '''import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Ints


def gated_forward(x, w):
    return np.maximum(x, 0) * w, (x, w)


def gated_backward(dout, cache):
    x, w = cache
    return dout * w * (x > 0), dout * np.maximum(x, 0)


class Gated(Exercise):
    op, title = "gated", "relu(x) * w"
    forward_name, backward_name, params = "gated_forward", "gated_backward", "dout, cache"
    space = dict(n=Ints(2, 5), seed=SEED)
    edge_cases = [dict(n=3, seed=1)]

    def build(self, params, dtype=np.float64):
        rng = np.random.default_rng(params["seed"])
        x = rng.standard_normal(params["n"]).astype(dtype)
        x[np.abs(x) < 0.1] = 0.5
        x[0] = 0.0                     # every case: dx at relu's kink, which finite differences cannot judge
        w = rng.uniform(0.5, 2.0, params["n"]).astype(dtype)
        return Case(self.forward, [x, w], ("x", "w"), (0, 1), seed=params["seed"])
'''


def test_a_case_with_one_gradient_wrong_and_another_undecided_fails_on_the_wrong_one(tmp_path):
    # one case, two inputs: x UNRESOLVED (at the kink, a right dx) and w FAIL (dw doubled): the case is
    # a mistake (not undecided), the diagnosis names dw, and says dx could not be decided
    path = tmp_path / "gated.py"
    path.write_text(GATED)
    gated = load_exercises(path, verify=False)["gated"]
    namespace = {}
    exec(GATED.split("class Gated")[0].replace("dout * np.maximum(x, 0)", "2 * dout * np.maximum(x, 0)"), namespace)
    report = check_function(gated, namespace["gated_backward"], n_random=2, seed=0)
    row = gradient_row(report)
    assert row.status == "fail" and not row.undecided and not report.ok, str(report)
    finding = report.first_failure.finding
    assert finding.grad == "dw" and "twice the right one" in finding.message, str(report)
    assert "(dx could not be decided by finite differences)" in finding.what_is_wrong, finding.what_is_wrong
    assert "x (3,)" in finding.case, finding.case                         # the first case, the edge case
    assert "could not decide" not in report.summary() and "UNDECIDED" not in report.format(), str(report)
    # the right backward: every case has dx at the kink, so none is decided although dw is right in each
    right = {}
    exec(GATED.split("class Gated")[0], right)
    report = check_function(gated, right["gated_backward"], n_random=2, seed=0)
    assert gradient_row(report).status == "undecided" and report.first_failure is None, str(report)
