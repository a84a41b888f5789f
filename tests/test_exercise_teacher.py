"""A teacher's own exercise, one Python file (npllama/exercises/teacher.py): the GELU example of
docs/debugging.md ("Your own exercise") end to end -- list, start, check in and out of the sandbox,
the gradebook, the notebook -- and the teacher's mistakes refused with what is wrong."""
import csv
import json
import re
from pathlib import Path

import pytest

from npllama.cli import main
from npllama.exercises import gradebook
from npllama.exercises import ExerciseFileError, check_file, check_function, grade_file, load_exercises
from npllama.exercises.notebook import notebook_json, write_notebook
from npllama.exercises.teacher import exercise_in_file

from .test_exercise_materials import shown_by_cell

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "debugging.md"

RIGHT = """import math

C = math.sqrt(2 / math.pi)


def gelu_backward(dout, cache):
    x, t = cache
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x**2))
"""
SIGN_SLIP = RIGHT.replace("return dout *", "return -dout *")


@pytest.fixture
def example():
    """The docs' gelu_exercise.py, as the guide prints it."""
    if not GUIDE.is_file():
        pytest.skip("not a source checkout")
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("### Your own exercise"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def gelu_file(tmp_path, example):
    path = tmp_path / "gelu_exercise.py"
    path.write_text(example, encoding="utf-8")
    return path


def load(module_text):
    namespace = {}
    exec(compile(module_text, "submission.py", "exec"), namespace)
    return namespace["gelu_backward"]


def test_list_and_start_use_the_teachers_file(gelu_file, tmp_path, capsys, monkeypatch):
    assert main(["exercise", "list", "--exercise-file", str(gelu_file)]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"gelu\s+gelu_backward\(dout, cache\)\s+returns, gradient, float32, at zero", listed)
    assert main(["exercise", "start", "--exercise-file", str(gelu_file), "gelu", "--out", str(tmp_path / "hw")]) == 0
    starter = (tmp_path / "hw" / "gelu_backward.py").read_text()
    assert "def gelu_backward(dout, cache):" in starter and "(gelu_exercise.py, gelu_forward)" in starter
    # from the starter's folder, hw/, where its command is run
    assert "npllama exercise check --exercise-file ../gelu_exercise.py gelu gelu_backward.py" in starter
    assert str(tmp_path) not in starter          # no path of the teacher's machine in a handout
    assert "GELUCache, the named tuple gelu_forward returns (gelu_exercise.py)" in starter
    assert "npllama_exercise_" not in starter and "Derivation:" not in starter    # none given
    gelu = load_exercises(gelu_file)["gelu"]
    monkeypatch.chdir(tmp_path / "hw")
    report = check_file(gelu, "gelu_backward.py")
    assert report.not_implemented and "--exercise-file ../gelu_exercise.py gelu" in report.format()


def test_a_right_backward_passes_and_a_sign_slip_is_diagnosed(gelu_file):
    gelu = load_exercises(gelu_file)["gelu"]
    assert check_function(gelu, load(RIGHT)).ok
    report = check_function(gelu, load(SIGN_SLIP))
    assert [r.status for r in report.results] == ["pass", "fail", "pass", "fail"]   # returns, gradient, float32, at zero
    assert "the sign is wrong" in report.first_failure.finding.message
    assert "derivation:" not in report.format()


def test_a_class_is_graded_in_the_sandbox(gelu_file, tmp_path, capsys):
    """Each submission's process loads the teacher's file: the cache it is sent is of its type."""
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "alice.py").write_text(RIGHT)
    (submissions / "bob.py").write_text(SIGN_SLIP)
    (submissions / "carol.py").write_text("from gelu_exercise import gelu_backward  # noqa: F401\n")
    stem = tmp_path / "gradebook"
    assert main(["exercise", "check", "--exercise-file", str(gelu_file), "gelu", str(submissions),
                 "--cases", "2", "--gradebook", str(stem)]) == 1
    rows = list(csv.DictReader(Path(f"{stem}.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["file"], r["exercise"], r["status"], r["passed"]) for r in rows] == \
        [("alice.py", "gelu", "pass", "4"), ("bob.py", "gelu", "fail", "2"), ("carol.py", "gelu", "refused", "0")]
    assert "the sign is wrong" in rows[1]["diagnosis"]


def test_the_notebook_loads_the_exercise_from_the_file_beside_it(gelu_file, tmp_path, monkeypatch):
    gelu = load_exercises(gelu_file)["gelu"]
    path = write_notebook(gelu, tmp_path / "gelu_backward.ipynb")
    cells = json.loads(path.read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code", "code", "markdown"]     # no derivation given
    assert "Keep `gelu_exercise.py` beside this notebook" in "".join(cells[0]["source"])
    monkeypatch.chdir(gelu_file.parent)
    namespace = {}
    setup, starter, check = ("".join(c["source"]) for c in cells[1:4])
    assert "load_exercises" in setup and "gelu_backward" in starter and "npllama.exercises" not in starter
    exec(setup, namespace)
    exec(starter, namespace)
    shown = shown_by_cell(check, namespace)
    assert "gelu_backward is not implemented yet" in shown, shown


def test_list_names_a_file_with_spaces_quoted_for_the_shell(example, tmp_path, capsys):
    path = tmp_path / "gelu week 3.py"
    path.write_text(example, encoding="utf-8")
    assert main(["exercise", "list", "--exercise-file", str(path)]) == 0
    assert f"npllama exercise start --exercise-file '{path}' <exercise>" in capsys.readouterr().out


def test_a_derivation_beside_the_file_is_quoted(example, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)       # the starter is written here, beside the exercise file
    (tmp_path / "gelu.md").write_text("# GELU\n\n## Backward\n\n$$\\mathrm{dx} = \\mathrm{dout}\\, g'(x)$$\n")
    path = tmp_path / "gelu_exercise.py"
    path.write_text(example.replace('    op, title = "gelu"', '    derivation = "gelu.md"\n    op, title = "gelu"'))
    gelu = load_exercises(path)["gelu"]
    from npllama.exercises import starter_source

    starter = starter_source(gelu)
    assert 'Derivation: gelu.md, section "Backward" (quoted below).' in starter and "#     dx = dout g'(x)" in starter
    assert "npllama explain" not in starter and str(tmp_path) not in starter
    assert "$$" in "".join(notebook_json(gelu)["cells"][1]["source"])
    assert main(["exercise", "list", "--exercise-file", str(path)]) == 0
    assert re.search(r"gelu\s+gelu_backward\(dout, cache\)\s+gelu.md\s+returns", capsys.readouterr().out)


def with_space_types(source):
    return source.replace("import SEED, Case, Shape,", "import SEED, Case, Choice, Ints, Shape,")


BROKEN = [
    ("no exercise", lambda s: s.split("class GELU(Exercise)")[0], "defines no exercise: write a class deriving"),
    ("forward without cache", lambda s: s.replace("return 0.5 * x * (1 + t), GELUCache(x, t)",
                                                  "return 0.5 * x * (1 + t)"),
     r"gelu_forward must return \(out, cache\), got ndarray"),
    ("wrong reference", lambda s: s.replace("return dout * (0.5 * (1 + t)", "return dout * (0.4 * (1 + t)"),
     r"the reference gelu_backward fails the checks of exercise gelu, so every student would fail too(.|\n)*"
     r"check 'gradient'"),
    ("float64 constant", lambda s: s.replace("C = math.sqrt(2 / math.pi)", "C = np.sqrt(2 / np.pi)"),
     r"fails the checks of exercise gelu(.|\n)*check 'float32'(.|\n)*dx is float64"),
    ("a built-in's name", lambda s: s.replace('op, title = "gelu"', 'op, title = "softmax"'),
     "op 'softmax' is a built-in exercise's name"),
    ("no build", lambda s: s.replace("def build(", "def draw("), "has no build"),
    ("build returns no Case", lambda s: s.replace('return Case(self.forward, [x], ("x",), (0,), seed=params["seed"] % 1000)',
                                                  "return x"), "build must return a Case"),
    ("build raises", lambda s: s.replace('params["shape"]', 'params["shap"]'), r"build\(\{.*\}\) raised KeyError: 'shap'"),
    ("forward missing", lambda s: s.replace('forward_name, backward_name, params = "gelu_forward"',
                                            'forward_name, backward_name, params = "gelu_fwd"'),
     r"gelu_fwd \(the forward, returning \(out, cache\)\) cannot be found in gelu_exercise.py$"),
    ("a built-in's subclass", lambda s: "from npllama.exercises.definitions import LayerNorm\n\n\n"
                                        "class LayerNormPlus(LayerNorm):\n    op = 'layernorm_plus'\n",
     r"layernorm_forward .* cannot be found in gelu_exercise.py \(.*module = 'npllama.ops.layernorm'\)"),
    ("unpicklable cache", lambda s: s.replace("return 0.5 * x * (1 + t), GELUCache(x, t)",
                                              "return 0.5 * x * (1 + t), (GELUCache(x, t), lambda: t)"),
     r"the cache gelu_forward returns cannot be sent to the process a submission runs in \(.*pickle"),
    ("import fails", lambda s: s + "\n1 / 0\n", "importing gelu_exercise.py failed: ZeroDivisionError"),
    # the teacher needs the line of their file, not only the exception (Choice takes one tuple)
    ("import fails in the class body", lambda s: with_space_types(s).replace("seed=SEED)", "seed=SEED, scale=Choice(0.5, 2.0))"),
     r"failed: TypeError: .* \(line \d+ of gelu_exercise.py: space = dict\(.*Choice\(0.5, 2.0\).*\)$"),
    ("a space of no lengths", lambda s: s.replace("Shape(1, 3, 1, 4)", "Shape(3, 1, 1, 4)"),
     r"space\['shape'\] is Shape\(min_len=3, max_len=1, lo=1, hi=4\): min_len must be at most max_len"),
    ("a space of no sizes", lambda s: s.replace("Shape(1, 3, 1, 4)", "Shape(1, 3, 4, 1)"),
     r"space\['shape'\] is Shape\(.*\): lo must be at most hi"),
    ("a space of no integers", lambda s: with_space_types(s).replace("seed=SEED)", "seed=Ints(9, 0))"),
     r"space\['seed'\] is Ints\(lo=9, hi=0\): lo must be at most hi"),
    ("a space of no options", lambda s: with_space_types(s).replace("seed=SEED)", "seed=SEED, scale=Choice(()))"),
     r"space\['scale'\] is Choice\(options=\(\)\): options must be a non-empty tuple"),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_exercise_file_is_refused_naming_what_is_wrong(example, tmp_path, edit, message):
    path = tmp_path / "gelu_exercise.py"
    path.write_text(edit(example))
    with pytest.raises(ExerciseFileError, match=message):
        load_exercises(path)


def test_a_choice_of_any_sequence_is_a_space_cases_are_drawn_from(example, tmp_path):
    # the empty-space check (17c379a) asked for a tuple or list: Choice(range(1, 4)), which sample
    # and hypothesis draw from, was refused as having no options
    path = tmp_path / "gelu_exercise.py"
    path.write_text(with_space_types(example).replace("seed=SEED)", "seed=SEED, scale=Choice(range(1, 4)))"))
    assert "gelu" in load_exercises(path)


def test_a_wrong_reference_is_refused_before_anyone_is_graded(example, tmp_path, capsys):
    path = tmp_path / "gelu_exercise.py"
    path.write_text(example.replace("return dout * (0.5 * (1 + t)", "return dout * (0.4 * (1 + t)"))
    (tmp_path / "alice.py").write_text(RIGHT)
    assert main(["exercise", "check", "--exercise-file", str(path), "gelu", str(tmp_path / "alice.py"),
                 "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "the reference gelu_backward fails the checks" in err and "checking" not in err
    assert not (tmp_path / "out.json").exists()
    wrong = load_exercises(path, verify=False)["gelu"]
    with pytest.raises(ExerciseFileError, match="fails the checks of exercise gelu"):
        grade_file(wrong, tmp_path / "alice.py")      # from Python too, before its process starts


def test_a_submission_that_calls_the_teachers_reference_is_refused_even_without_the_import_rule(gelu_file,
                                                                                               tmp_path):
    (tmp_path / "borrows.py").write_text(
        "import sys\n\n\ndef gelu_backward(dout, cache):\n"
        "    teacher = next(m for n, m in sys.modules.items() if n.startswith('npllama_exercise_gelu_exercise'))\n"
        "    return teacher.gelu_backward(dout, cache)\n")
    graded = grade_file(load_exercises(gelu_file)["gelu"], tmp_path / "borrows.py", n_random=1, allow_imports=True)
    assert graded.status != "pass" and "library's own backward" in graded.text, graded.text


def test_a_file_name_with_dots_or_spaces_is_an_exercise_file_too(example, tmp_path, monkeypatch):
    path = tmp_path / "gelu.week3.py"         # its module's name must not read as a package's
    path.write_text(example)
    gelu = load_exercises(path)["gelu"]
    (tmp_path / "alice.py").write_text(RIGHT)
    assert grade_file(gelu, tmp_path / "alice.py", n_random=1).status == "pass"
    spaced = tmp_path / "gelu week 3.py"       # the command the starter gives is one to paste
    spaced.write_text(example)
    monkeypatch.chdir(tmp_path)
    assert load_exercises(spaced)["gelu"].check_command("my answer.py") == (
        "npllama exercise check --exercise-file 'gelu week 3.py' gelu 'my answer.py'")


def test_an_unknown_op_names_the_files_exercises(gelu_file, capsys):
    with pytest.raises(ExerciseFileError, match=r"defines no exercise 'gelo' \(did you mean 'gelu'\?\); it defines: gelu"):
        exercise_in_file(gelu_file, "gelo")
    assert main(["exercise", "start", "--exercise-file", str(gelu_file), "gelo"]) == 2


def test_the_sandbox_needs_an_exercise_it_can_load_too(gelu_file, tmp_path):
    gelu = load_exercises(gelu_file)["gelu"]
    unfiled = type(gelu)()                     # the class, but not loaded from its file
    (tmp_path / "alice.py").write_text(RIGHT)
    with pytest.raises(ValueError, match="loaded from its file with load_exercises"):
        grade_file(unfiled, tmp_path / "alice.py")
    assert check_function(unfiled, load(RIGHT)).ok     # in this process it needs no file


CATALOGUE = '''
from npllama.exercises.mistakes import Mistake


class GELUMistakes:             # catalogue.py's shape: the derivation with one step altered per mistake
    probes = [dict(shape=(2, 3), seed=11), dict(shape=(4,), seed=12)]
    ladder = []

    def variant(self, dout, case, dtanh="right"):
        (x,) = case.inputs
        t = np.tanh(C * (x + 0.044715 * x**3))
        dt = {"right": 1 - t * t, "plus": 1 + t * t}[dtanh]
        return dout * (0.5 * (1 + t) + 0.5 * x * dt * C * (1 + 3 * 0.044715 * x**2))

    def mistakes(self):
        return [Mistake("tanh'(u) is taken as 1 + tanh(u)^2", "tanh'(u) = 1 - tanh(u)^2", {"dtanh": "plus"})]


class GELU(Exercise):
    catalogue = GELUMistakes()
'''


def test_a_teachers_catalogue_names_the_mistake(example, tmp_path):
    path = tmp_path / "gelu_exercise.py"
    path.write_text(example.replace("\nclass GELU(Exercise):\n", CATALOGUE))
    gelu = load_exercises(path)["gelu"]
    finding = check_function(gelu, load(RIGHT.replace("(1 - t * t)", "(1 + t * t)"))).first_failure.finding
    assert finding.message == "tanh'(u) is taken as 1 + tanh(u)^2" and finding.hint == "tanh'(u) = 1 - tanh(u)^2"


MSE = '''import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Ints


def mse_forward(pred, target):
    diff = pred - target
    return float(np.mean(diff**2)), (diff,)         # a loss: a number, not an array


def mse_backward(dloss, cache):
    (diff,) = cache
    return (dloss * 2 / diff.size * diff).astype(diff.dtype)


class MSE(Exercise):
    op, title = "mse", "mean squared error"
    forward_name, backward_name, params = "mse_forward", "mse_backward", "dloss, cache"
    space = dict(n=Ints(1, 5), seed=SEED)
    edge_cases = [dict(n=3, seed=1)]

    def build(self, params, dtype=np.float64):
        rng = np.random.default_rng(params["seed"])
        pred, target = (rng.standard_normal(params["n"]).astype(dtype) for _ in range(2))
        return Case(self.forward, [pred, target], ("pred", "target"), (0,), seed=params["seed"])
'''


def test_a_loss_returning_a_number_is_an_exercise_and_a_class_is_not_one(tmp_path):
    path = tmp_path / "mse_exercise.py"
    path.write_text(MSE)
    mse = load_exercises(path)["mse"]
    report = check_function(mse, lambda dloss, cache: dloss * 2 * cache[0])
    assert "exactly 3 times the right gradient" in report.first_failure.finding.message
    with pytest.raises(TypeError, match=r"pass MSE\(\), not the class"):
        check_function(type(mse), mse.reference)


def test_a_variant_of_a_library_op_keeps_its_module_checks_and_derivation(tmp_path):
    path = tmp_path / "ln_exercise.py"
    path.write_text("from npllama.exercises.definitions import LayerNorm\n\n\n"
                    "class WideLayerNorm(LayerNorm):\n"
                    "    op, module = 'layernorm_wide', 'npllama.ops.layernorm'\n"
                    "    edge_cases = [dict(lead_shape=(2,), D=16, eps=1e-5, seed=1)]\n")
    wide = load_exercises(path)["layernorm_wide"]
    from npllama.exercises import starter_source
    from npllama.ops.layernorm import layernorm_backward

    assert [c.name for c in wide.checks()][-3:] == ["rows sum to 0", "chain rule", "one feature"]
    assert check_function(wide, layernorm_backward, n_random=1).ok
    starter = starter_source(wide)
    assert "(npllama.ops.layernorm.layernorm_forward)" in starter
    assert 'Derivation: derivations/layernorm.md, section "Backward, step by step"' in starter
    assert "`npllama explain layernorm`" in starter


def test_a_file_the_sandbox_cannot_load_stops_the_grading_instead_of_failing_everyone(example, tmp_path,
                                                                                        monkeypatch):
    (tmp_path / "coef.txt").write_text("0.044715")
    path = tmp_path / "gelu_exercise.py"
    path.write_text(example.replace("\nclass GELUCache", "\nK = float(open('coef.txt').read())\n\n\nclass GELUCache"))
    (tmp_path / "alice.py").write_text(RIGHT)
    monkeypatch.chdir(tmp_path)       # the grader finds coef.txt here; the submission's process does not
    gelu = load_exercises(path)["gelu"]
    with pytest.raises(ExerciseFileError, match=r"cannot be loaded in the process a submission runs in(.|\n)*"
                                                r"No such file or directory: 'coef.txt'"):
        grade_file(gelu, tmp_path / "alice.py", n_random=1)
    # a class stops at once: the files still queued are not each started to the same end
    graded = []
    monkeypatch.setattr(gradebook, "grade_file", lambda *a, **k: graded.append(a[1]) or grade_file(*a, **k))
    (tmp_path / "class").mkdir()
    for name in "abcdef":
        (tmp_path / "class" / f"{name}.py").write_text(RIGHT)
    with pytest.raises(ExerciseFileError, match="cannot be loaded in the process a submission runs in"):
        gradebook.grade_folder(gelu, tmp_path / "class", n_random=1, workers=1)
    assert len(graded) <= 2      # the one that stopped it, and one the worker may have begun meanwhile


def test_exercise_train_refuses_an_exercise_the_model_does_not_run_naming_the_ops_it_does(gelu_file, tmp_path,
                                                                                          capsys):
    (tmp_path / "alice.py").write_text(RIGHT)
    assert main(["exercise", "train", "--exercise-file", str(gelu_file), "gelu", str(tmp_path / "alice.py")]) == 2
    err = capsys.readouterr().err
    assert "exercise 'gelu' of gelu_exercise.py replaces gelu_forward/gelu_backward, which the model's " in err
    assert "rmsnorm_forward/rmsnorm_backward" in err and len(err.splitlines()) == 1


def test_the_pytest_test_start_prints_loads_the_teachers_file(gelu_file, tmp_path, capsys, monkeypatch):
    import textwrap

    monkeypatch.chdir(tmp_path)
    assert main(["exercise", "start", "--exercise-file", gelu_file.name, "gelu", "--quiet"]) == 0
    test_text = textwrap.dedent(capsys.readouterr().out.split("the same checks:\n", 1)[1])
    assert "load_exercises('gelu_exercise.py')['gelu']" in test_text
    namespace = {}
    exec(test_text, namespace)
    with pytest.raises(AssertionError, match="not implemented yet"):
        namespace["test_gelu_backward"]()
    (tmp_path / "gelu_backward.py").write_text(RIGHT)
    namespace["test_gelu_backward"]()


def test_what_start_prints_works_pasted_where_it_ran_with_the_exercise_file_in_another_folder(
        gelu_file, tmp_path, capsys, monkeypatch):
    # the teacher keeps the exercise in course/: the printed command and pytest test must reach it
    # from here, not by its name alone (which only works beside it, as the starter's own text says)
    import shlex
    import textwrap

    (tmp_path / "course").mkdir()
    gelu_file.rename(tmp_path / "course" / "gelu_exercise.py")
    monkeypatch.chdir(tmp_path)
    assert main(["exercise", "start", "--exercise-file", "course/gelu_exercise.py", "gelu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    command = printed.split("then run\n", 1)[1].splitlines()[0].strip()
    assert main(shlex.split(command)[1:] + ["--cases", "0"]) == 1
    assert "gelu_backward is not implemented yet" in capsys.readouterr().out
    namespace = {}
    exec(textwrap.dedent(printed.split("the same checks:\n", 1)[1]), namespace)
    with pytest.raises(AssertionError, match="not implemented yet"):
        namespace["test_gelu_backward"]()


def test_a_variant_that_redefines_a_check_is_reported_by_its_own_name(tmp_path):
    """A teacher's subclass that redefines one of the library exercise's checks (same method, its own
    @check) runs its code where the check stood, as often as its @check says, and the report and
    to_dict name it by the subclass's name and description, not the replaced one's."""
    path = tmp_path / "ln_exercise.py"
    path.write_text("from npllama.exercises.definitions import LayerNorm, check\n"
                    "from npllama.exercises.checks import CheckFailed\n"
                    "from npllama.exercises.diagnose import Finding\n\n\n"
                    "class StrictLayerNorm(LayerNorm):\n"
                    "    op, module = 'layernorm_strict', 'npllama.ops.layernorm'\n\n"
                    "    @check('rows sum to 0 (strict)', 'each row of dx sums to 0 within 1e-30', sampled=False)\n"
                    "    def check_rows_sum_to_zero(self, backward, params):\n"
                    "        if params is not None:     # not sampled: run once, as its own @check says\n"
                    "            raise CheckFailed(Finding('', 'run on sampled cases'))\n"
                    "        super().check_rows_sum_to_zero(backward, self.edge_cases[0])\n")
    strict = load_exercises(path)["layernorm_strict"]
    from npllama.ops.layernorm import layernorm_backward

    names = [c.name for c in strict.checks()]
    assert "rows sum to 0 (strict)" in names and "rows sum to 0" not in names, names
    assert not next(c for c in strict.checks() if c.method == "check_rows_sum_to_zero").sampled
    report = check_function(strict, layernorm_backward, n_random=0)
    assert report.ok, report.format()
    assert "each row of dx sums to 0 within 1e-30" in report.format(), report.format()
    assert report.to_dict()["checks"]["rows sum to 0 (strict)"] == "pass"


@pytest.mark.parametrize("out", ["{file}", None])
def test_start_never_writes_the_starter_over_the_teachers_exercise_file(gelu_file, tmp_path, monkeypatch, out,
                                                                         capsys):
    """--force replaces a student's old starter, never the exercise file the starter is made from (given
    as --out, or the default ./gelu_backward.py when the teacher named the file so)."""
    monkeypatch.chdir(tmp_path)
    if out is None:
        gelu_file = gelu_file.rename(tmp_path / "gelu_backward.py")
    text = gelu_file.read_text(encoding="utf-8")
    argv = ["exercise", "start", "--exercise-file", str(gelu_file), "gelu", "--force", "--quiet"]
    assert main(argv + ([] if out is None else ["--out", out.format(file=gelu_file)])) == 2
    err = capsys.readouterr().err
    assert "--exercise-file" in err and "--out" in err and err.count("\n") == 1
    assert gelu_file.read_text(encoding="utf-8") == text


def test_check_json_never_replaces_the_teachers_exercise_file(gelu_file, tmp_path, capsys):
    (tmp_path / "alice.py").write_text(RIGHT, encoding="utf-8")
    text = gelu_file.read_text(encoding="utf-8")
    assert main(["exercise", "check", "--exercise-file", str(gelu_file), "gelu", str(tmp_path / "alice.py"),
                 "--json", str(gelu_file)]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "--exercise-file" in err and err.count("\n") == 1
    assert gelu_file.read_text(encoding="utf-8") == text


# ----- a cache that is not a tuple: its fields are checked for in-place changes too -----------------

CACHE_CLASSES = {
    "dataclass": "@dataclasses.dataclass\nclass GELUCache:\n    x: np.ndarray\n    t: np.ndarray\n",
    "plain object": "class GELUCache:\n    def __init__(self, x, t):\n        self.x, self.t = x, t\n",
    "slots": "class GELUCache:\n    __slots__ = ('x', 't')\n\n    def __init__(self, x, t):\n"
             "        self.x, self.t = x, t\n",
    # a cache that refers to itself (a parent link, a model whose adapters refer back to it)
    "refers to itself": "class GELUCache:\n    def __init__(self, x, t):\n        self.x, self.t, self.me = x, t, self\n",
}
NAMED_TUPLE_CACHE = ("class GELUCache(NamedTuple):\n    x: np.ndarray   # (...) the input\n"
                     "    t: np.ndarray   # (...) tanh(C (x + 0.044715 x^3))\n")
# right, but it changes the forward's cache once it is done with it
CHANGES_THE_CACHE = RIGHT.replace("    x, t = cache\n    return dout *", "    x, t = cache.x, cache.t\n    dx = dout *") + \
    "    cache.{field} *= 2\n    return dx\n"


@pytest.mark.parametrize("kind", sorted(CACHE_CLASSES))
@pytest.mark.parametrize("field", ["x", "t"])
def test_a_cache_that_is_an_object_is_checked_for_in_place_changes_in_and_out_of_the_sandbox(example, tmp_path,
                                                                                             kind, field):
    assert NAMED_TUPLE_CACHE in example and "    x, t = cache\n" in example
    path = tmp_path / "gelu_exercise.py"
    path.write_text("import dataclasses\n" + example.replace(NAMED_TUPLE_CACHE, CACHE_CLASSES[kind])
                    .replace("    x, t = cache\n", "    x, t = cache.x, cache.t\n"), encoding="utf-8")
    gelu = load_exercises(path)["gelu"]
    changes = CHANGES_THE_CACHE.format(field=field)
    right = changes.replace(f"    cache.{field} *= 2\n", "")
    assert check_function(gelu, load(right)).ok
    report = check_function(gelu, load(changes))
    assert report.results[0].status == "fail", report.format()
    assert f"your function changed cache.{field} in place" in report.first_failure.finding.message
    (tmp_path / "alice.py").write_text(right)
    (tmp_path / "bob.py").write_text(changes)
    assert grade_file(gelu, tmp_path / "alice.py", n_random=1).status == "pass"
    graded = grade_file(gelu, tmp_path / "bob.py", n_random=1)
    assert graded.status == "fail" and f"changed cache.{field} in place" in graded.diagnosis, graded.text


def test_only_what_a_notebook_imports_of_the_checker_is_refused_as_a_notebook_saved_as_a_script(gelu_file):
    """Any import under npllama.exercises was told "a notebook saved as a script? hand in the cell
    with your function, not the check cell" -- but npllama.exercises.definitions' EXERCISES, or
    get_exercise, hand a file the reference backwards.  Only what the generated notebooks' cells
    import (a built-in exercise's and a teacher's) gets that message; the rest is refused for what
    it is."""
    import ast

    from npllama.exercises.screen import screen_source

    gelu = load_exercises(gelu_file)["gelu"]
    notebook_imports = set()
    for notebook in (notebook_json("softmax"), notebook_json(gelu, folder=gelu_file.parent)):
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                notebook_imports |= {ast.unparse(node) for node in ast.walk(ast.parse("".join(cell["source"])))
                                     if isinstance(node, ast.ImportFrom) and node.module.startswith("npllama")}
    assert {"from npllama.exercises import check_function",
            "from npllama.exercises import load_exercises"} <= notebook_imports, notebook_imports
    for line in notebook_imports:
        (refused,) = screen_source(line + "\n", (), "softmax_backward.py")
        assert "not the check cell" in refused and "do the exercise for you" not in refused, refused
    for line in ("from npllama.exercises.definitions import EXERCISES", "from npllama.exercises import EXERCISES",
                 "from npllama.exercises import get_exercise", "from npllama.exercises import *",
                 "from npllama.exercises.runner import check_function", "import npllama.exercises",
                 "import npllama.exercises.definitions", "from npllama import exercises"):
        (refused,) = screen_source(line + "\n", (), "softmax_backward.py")
        assert "npllama's own code would do the exercise for you" in refused, (line, refused)
        assert "check cell" not in refused, (line, refused)
