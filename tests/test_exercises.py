"""Exercises: the checks pass the project's own backward passes (on hypothesis-drawn shapes), fail
planted wrong ones with the right diagnosis, starter files fail cleanly, and the command works."""
import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.commands import UsageError
from npllama.commands import exercise as exercise_command
from npllama.exercises import (EXERCISES, CheckFailed, check_file, check_folder, check_function, diagnose,
                               format_table, get_exercise, starter_source, write_starter)
from npllama.exercises.checks import strategy
from npllama.exercises.planted import CORRECT, PLANTED, write_planted

BACKWARDS_IN_OPS = ["embedding", "linear", "rmsnorm", "layernorm", "rope", "softmax", "attention",
                    "swiglu_act", "swiglu", "cross_entropy", "lora", "classifier"]

ASSEMBLED = ["block", "model"]   # backward passes assembled from the ops (npllama/exercises/assembled.py)
SAMPLED = [(op, c.method) for op, ex in EXERCISES.items() for c in ex.checks() if c.sampled]
FIXED = [(op, c.method) for op, ex in EXERCISES.items() for c in ex.checks() if not c.sampled]


def test_one_exercise_per_backward_in_ops():
    import importlib
    import pkgutil

    import npllama.ops as ops

    assert list(EXERCISES) == BACKWARDS_IN_OPS + ASSEMBLED
    in_ops = set()
    for info in pkgutil.iter_modules(ops.__path__):
        module = importlib.import_module(f"npllama.ops.{info.name}")
        in_ops |= {(info.name, n) for n in vars(module) if n.endswith("_backward")
                   and getattr(vars(module)[n], "__module__", "") == module.__name__}
    in_ops.discard(("layernorm", "layernorm_backward_stepwise"))  # the check's own second derivation
    assert in_ops == {(ex.module.rsplit(".", 1)[1], ex.backward_name) for op, ex in EXERCISES.items()
                      if op not in ASSEMBLED}
    for op, ex in EXERCISES.items():
        assert ex.checks()[:3] == [c for c in ex.checks() if c.name in ("returns", "gradient", "float32")]


# ----- the project's own implementations pass every check -----------------------------------------------

@pytest.mark.parametrize("op,method", SAMPLED)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_sampled_checks_pass_the_reference(op, method, data):
    ex = EXERCISES[op]
    params = data.draw(strategy(ex.space))
    getattr(ex, method)(ex.reference, params)


@pytest.mark.parametrize("op,method", FIXED)
def test_fixed_checks_pass_the_reference(op, method):
    ex = EXERCISES[op]
    getattr(ex, method)(ex.reference, None)


@pytest.mark.parametrize("op", BACKWARDS_IN_OPS)
def test_edge_cases_pass_the_reference(op):
    ex = EXERCISES[op]
    for params in ex.edge_cases:
        for item in ex.checks():
            if item.sampled:
                ex.run_check(item, ex.reference, params)


@pytest.mark.parametrize("op", BACKWARDS_IN_OPS)
def test_correct_files_pass(op, tmp_path):
    path = tmp_path / f"{op}.py"
    path.write_text(CORRECT[op])
    report = check_file(op, path, n_random=3)
    assert report.ok, report.format()
    assert report.passed == report.total == len(EXERCISES[op].checks())
    assert "Well done" in report.format()


# ----- planted bugs fail with the right diagnosis --------------------------------------------------------

@pytest.mark.parametrize("bug", PLANTED, ids=lambda b: f"{b.op}-{b.label.replace(' ', '_')}")
def test_planted_bug_is_diagnosed(bug, tmp_path):
    path = tmp_path / f"{bug.op}_backward.py"
    path.write_text(bug.source)
    report = check_file(bug.op, path, n_random=3)
    assert not report.ok
    first = report.first_failure
    assert first.check.name == bug.check and first.status == "fail"
    assert first.finding.grad == bug.grad
    assert bug.expect in first.finding.message + " " + first.finding.hint
    text = report.format()
    assert "First failure" in text and "what is wrong:" in text and "hint:" in text
    if bug.check == "gradient":   # a value error: the relative error and the worst index are shown
        assert first.finding.rel_error > 1e-3 and first.finding.worst_index is not None
        assert "worst at index" in text and "yours" in text and "expected" in text


def test_required_kinds_of_planted_bugs_are_covered():
    labels = {bug.label for bug in PLANTED}
    assert {"wrong sign", "missing term", "transposed weight", "wrong mask"} <= labels


def test_gradcheck_uses_the_same_tolerance_as_the_op_tests():
    # a relative error of 1e-6 is a failure, 1e-9 is not (check_op's tol is 1e-7)
    ex = get_exercise("linear")
    params = ex.edge_cases[0]

    def off_by(eps):
        def backward(dy, cache):
            dx, dweight = ex.reference(dy, cache)
            return dx * (1 + eps), dweight
        return backward

    ex.check_gradient(off_by(1e-9), params)
    with pytest.raises(CheckFailed, match="1.000001 times"):
        ex.check_gradient(off_by(1e-6), params)


# ----- the diagnosis on its own --------------------------------------------------------------------------

def test_diagnose_constant_ratios_transpose_and_shapes():
    rng = np.random.default_rng(0)
    right = rng.standard_normal((4, 4))
    assert "2x" in diagnose(2 * right, right, grad="dx").message
    assert "double-count" in diagnose(2 * right, right, grad="dx").hint
    assert "sign" in diagnose(-right, right, grad="dx").message
    assert "half" in diagnose(0.5 * right, right, grad="dx").message
    assert "3.5 times" in diagnose(3.5 * right, right, grad="dx").message
    assert "transpose" in diagnose(right.T, right, grad="dw").message
    rect = rng.standard_normal((2, 3))
    assert "transpose of the right gradient" in diagnose(rect.T, rect, grad="dw").message
    assert "None" in diagnose(None, rect, grad="dw").message
    assert "every entry is 0" in diagnose(np.zeros_like(rect), rect, grad="dw").message
    nan = rect.copy()
    nan[1, 2] = np.nan
    finding = diagnose(nan, rect, grad="dw")
    assert "NaN" in finding.message and finding.worst_index == (1, 2)
    assert "axis of length 1" in diagnose(rect[None], rect, grad="dw").hint
    leading = diagnose(np.stack([rect, rect]), rect, grad="dw")     # a batch axis not summed over
    assert "summed over too few axes" in leading.message and "sum over the rows/batch" in leading.hint
    assert "summed over too many axes" in diagnose(rect[0], rect, grad="dw").message
    summed_to_a_number = diagnose(np.float64(rect[0].sum()), rect[0], grad="dweight")   # a (D,) weight's gradient
    assert "summed over too many axes" in summed_to_a_number.message
    assert "per row" not in summed_to_a_number.hint and ".reshape(-1, 3).sum(axis=0)" in summed_to_a_number.hint
    # a (out, in) weight's gradient summed to a number: the sum shown keeps both of its axes
    # (.reshape(-1, 3) would sum a (2, 3) weight down to (3,))
    summed_weight = diagnose(np.float64(rect.sum()), rect, grad="dweight")
    assert ".reshape(-1, 2, 3).sum(axis=0)" in summed_weight.hint, summed_weight.hint
    # an activation's gradient summed to a number (rmsnorm's dx (2, 3, 4)) must not be told a sum
    # over the rows fits it: no weight has three axes, and dx is summed over no axis at all
    activation = rng.standard_normal((2, 3, 4))
    summed_dx = diagnose(np.float64(activation.sum()), activation, grad="dx")
    assert ".reshape(" not in summed_dx.hint and "weight" not in summed_dx.hint, summed_dx.hint
    assert "keep one value per entry of its input" in summed_dx.hint, summed_dx.hint
    assert "one axis too many" in diagnose(rect[:, :, None, None][:, :2], rect, grad="dw").hint
    assert "reshape" in diagnose(np.ones((1, 6)), rect, grad="dw").hint


def test_diagnose_a_near_miss_where_the_gradient_is_0_is_no_concentrated_error():
    """softmax over rows of one entry: dx is exactly 0, and a defensive 1e-12 leaves ~1e-12 there;
    that once read "the error is concentrated on 0 of 3 entries (e.g. at )"."""
    finding = diagnose(np.array([[-2e-12], [3e-13], [-1e-12]]), np.zeros((3, 1)), grad="dx")
    assert finding.message.startswith("it is off by at most 2e-12 where the right gradient is exactly 0")
    assert "an epsilon added" in finding.hint and "concentrated" not in finding.message


def test_diagnose_masks_and_concentrated_errors():
    rng = np.random.default_rng(1)
    right = rng.standard_normal((3, 5))
    right[1] = 0.0                               # a masked row: its true gradient is exactly 0
    leaked = right.copy()
    leaked[1] = 0.3
    finding = diagnose(leaked, right, grad="dlogits", zero_label="ignored targets")
    assert "must be exactly 0 (ignored targets)" in finding.message and "mask" in finding.hint
    assert finding.worst_index[0] == 1
    missing = right.copy()
    missing[0, :2] = 0.0
    assert "should not be" in diagnose(missing, right, grad="dx").message
    spot = right.copy()
    spot[2, 3] += 1.0
    spot[0, 1] -= 0.5
    finding = diagnose(spot, right, grad="dx")
    assert "concentrated on 2 of 15" in finding.message and finding.worst_index == (2, 3)
    noise = right + rng.standard_normal(right.shape)
    assert "no simple pattern" in diagnose(noise, right, grad="dx").message


def test_an_ops_own_factor_is_named_from_the_probes_not_from_the_ratio(tmp_path):
    """One case's ratio cannot tell attention's missing 1/sqrt(head_dim) (2x at head_dim 4) from a
    term counted twice: diagnose says only what the numbers show, the catalogue's probes name it."""
    rng = np.random.default_rng(2)
    right = rng.standard_normal((2, 3))
    assert "exactly 2x" in diagnose(2 * right, right, grad="dq").message
    body = CORRECT["attention"].replace("* scale", "")   # the scale left out of dq and dk
    assert body != CORRECT["attention"]
    path = tmp_path / "attention_backward.py"
    path.write_text(body)
    finding = check_file("attention", path, n_random=1).first_failure.finding
    assert "1/sqrt(head_dim) scale of the scores is missing from dq and dk" in finding.message, finding.message
    assert "2x" not in finding.message and "double-count" not in finding.hint


# ----- student files that do not work at all ------------------------------------------------------------

def test_every_starter_fails_with_not_implemented_not_a_traceback(tmp_path):
    for op in EXERCISES:
        path = write_starter(op, tmp_path / f"{op}_backward.py")
        report = check_file(op, path)
        assert report.not_implemented and not report.ok and report.passed == 0
        text = report.format()
        assert "not implemented yet" in text and "Traceback" not in text
        assert report.summary() == "not implemented yet"


def test_starter_file_has_signature_docstring_shapes_and_derivation():
    for op, ex in EXERCISES.items():
        source = starter_source(op)
        compile(source, f"{op}_backward.py", "exec")
        assert ex.signature in source and "raise NotImplementedError" in source
        assert ex.derivation in source and "Shapes:" in source and ex.shapes in source
        assert f"npllama exercise check {op}" in source
        assert ex.doc.strip().splitlines()[0] in source
        namespace = {}
        exec(compile(source, "starter", "exec"), namespace)
        assert namespace[ex.backward_name].__doc__.strip().startswith(ex.doc.strip().splitlines()[0])


def test_crashing_student_code_is_reported_with_its_line(tmp_path):
    path = tmp_path / "crash.py"
    path.write_text("import numpy as np\n\n\ndef softmax_backward(dp, cache):\n"
                    "    p = cache\n    return p[:, 99] * dp\n")
    report = check_file("softmax", path, n_random=1)
    first = report.first_failure
    assert first.status == "error" and first.check.name == "returns"
    assert "IndexError" in first.finding.message and f"line 6 of {path}: return p[:, 99] * dp" in \
        first.finding.message
    assert "Traceback" not in report.format()
    assert "gradient:" not in report.format()          # no gradient came back: none is named
    assert report.summary() == "returns: " + first.finding.message
    assert report.to_dict()["first_failure"]["diagnosis"].startswith("your function raised IndexError")


def test_unusable_files_are_explained(tmp_path):
    (tmp_path / "syntax.py").write_text("def rmsnorm_backward(dy, cache)\n    return 1\n")
    report = check_file("rmsnorm", tmp_path / "syntax.py")
    assert "syntax error at line 1" in report.load_error and "cannot check it" in report.format()
    (tmp_path / "wrong_name.py").write_text("def rms_backward(dy, cache):\n    return 1\n")
    report = check_file("rmsnorm", tmp_path / "wrong_name.py")
    assert "no function named rmsnorm_backward (it defines: rms_backward)" in report.load_error
    (tmp_path / "import_fails.py").write_text("import numpy as np\nraise RuntimeError('boom')\n")
    assert "RuntimeError: boom" in check_file("rmsnorm", tmp_path / "import_fails.py").load_error
    assert "does not exist" in check_file("rmsnorm", tmp_path / "nope.py").load_error


@pytest.mark.parametrize("call,error,phrase", [
    (lambda: check_file("rmsnorm", 5), TypeError, "path must be a .py file"),
    (lambda: check_file("rmsnorm", "missing.py", n_random="3"), ValueError, "n_random must be an int >= 0"),
    (lambda: check_file("rmsnorm", "missing.py", seed=-1), ValueError, "seed must be an int >= 0"),
    (lambda: check_folder("rmsnorm", 3.0), TypeError, "folder must be a folder of .py files"),
    (lambda: write_starter("rmsnorm", 5), TypeError, "path must be the file or folder to write"),
    (lambda: get_exercise("layer_norm"), ValueError, "did you mean 'layernorm'?"),
    (lambda: get_exercise("RMSNorm"), ValueError, "did you mean 'rmsnorm'?"),
])
def test_bad_arguments_name_the_argument(call, error, phrase):
    with pytest.raises(error, match=re.escape(phrase)):
        call()


def test_wrong_number_of_returned_gradients():
    report = check_function("rmsnorm", lambda dy, cache: (dy, dy, dy))
    assert "returned 3 value(s); it must return 2: dx, dweight" in report.first_failure.finding.message
    # one array alone: tests/test_exercise_student_mistakes.py


def test_in_place_changes_and_upcasts_are_caught():
    from npllama.ops.cross_entropy import cross_entropy_backward

    def in_place(dloss, cache):
        probs, safe, counted, n, shape = cache
        probs[np.arange(len(safe)), safe] -= 1     # modifies the forward's cache
        probs *= (counted * float(dloss) / max(n, 1))[:, None]
        return probs.reshape(shape)

    report = check_function("cross_entropy", in_place, n_random=2)
    assert report.first_failure.check.name == "returns"
    assert "changed cache.probs in place" in report.first_failure.finding.message

    def upcast(dloss, cache):
        return cross_entropy_backward(dloss, cache).astype(np.float64)

    report = check_function("cross_entropy", upcast, n_random=2)
    assert [r.check.name for r in report.results if not r.passed] == ["float32"]
    assert "float64 although every input was float32" in report.first_failure.finding.message


def test_teacher_table_lines_up_files_with_chinese_names():
    # Before: padded by len(), a file named 张三.py (four columns for two characters) pushed its
    # row's "passed" two columns right of the other rows'.
    import unicodedata

    from npllama.exercises.runner import Report

    reports = [Report(get_exercise("linear"), name, [], load_error="no linear_backward") for name in
               ("张三.py", "alice.py", "李小龙.py")]
    lines = format_table(reports).splitlines()[:4]
    ends = {sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line[:line.index(mark) + len(mark)])
            for line, mark in zip(lines, ("passed", "-", "-", "-"))}      # a right-aligned column
    assert len(ends) == 1, lines


def test_teacher_table_over_a_folder(tmp_path):
    write_planted("linear", tmp_path)
    (tmp_path / "notes.txt").write_text("not python")
    reports = check_folder("linear", tmp_path, n_random=2)
    names = [r.source.split("/")[-1] for r in reports]
    assert names == ["correct.py", "counted_twice.py", "transposed_weight.py", "wrong_sign.py"]
    table = format_table(reports).splitlines()
    assert table[0].split() == ["file", "passed", "first", "failure"]
    assert table[1].split()[:3] == ["correct.py", "4/4", "all"]
    assert "2x" in table[2] and "transpose" in table[3] and "sign" in table[4]
    assert table[-1] == "1 of 4 submissions pass every check."


def test_checker_needs_no_hypothesis_or_pytest():
    code = ("import sys\nfrom npllama.exercises import check_function, EXERCISES\n"
            "assert all(check_function(op, ex.reference, n_random=1).ok for op, ex in EXERCISES.items())\n"
            "assert 'hypothesis' not in sys.modules and 'pytest' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- the command ------------------------------------------------------------------------------------

def run_cli(argv):
    parser = argparse.ArgumentParser(prog="npllama")
    exercise_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_list_start_check(tmp_path, capsys, monkeypatch):
    assert run_cli(["exercise", "list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{op}_backward(" in out for op in EXERCISES)
    assert "`npllama explain <exercise>`" in out
    monkeypatch.chdir(tmp_path)
    assert run_cli(["exercise", "start", "rmsnorm"]) == 0
    assert (tmp_path / "rmsnorm_backward.py").is_file()
    assert "npllama exercise check rmsnorm rmsnorm_backward.py" in capsys.readouterr().out
    assert run_cli(["exercise", "check", "rmsnorm", "rmsnorm_backward.py"]) == 1
    captured = capsys.readouterr()
    assert "not implemented yet" in captured.out and "0 of 4 checks passed" in captured.out
    assert "rmsnorm_backward in rmsnorm_backward.py\n" in captured.out    # the path as given, not absolute
    assert "npllama exercise check rmsnorm rmsnorm_backward.py\n" in captured.out
    assert "checking rmsnorm_backward.py against the 4 checks of exercise rmsnorm" in captured.err
    with pytest.raises(UsageError, match="--force"):
        run_cli(["exercise", "start", "rmsnorm"])
    (tmp_path / "rmsnorm_backward.py").write_text(CORRECT["rmsnorm"])
    assert run_cli(["exercise", "check", "rmsnorm", "rmsnorm_backward.py", "--cases", "2"]) == 0
    assert "4 of 4 checks passed" in capsys.readouterr().out
    assert run_cli(["exercise", "start", "rmsnorm", "--force"]) == 0
    assert "NotImplementedError" in (tmp_path / "rmsnorm_backward.py").read_text()
    (tmp_path / "class").mkdir()
    assert run_cli(["exercise", "start", "softmax", "--out", "class"]) == 0
    assert (tmp_path / "class" / "softmax_backward.py").is_file()


def test_cli_check_folder_writes_json(tmp_path, capsys):
    write_planted("cross_entropy", tmp_path / "subs")
    out_json = tmp_path / "results.json"
    assert run_cli(["exercise", "check", "cross_entropy", str(tmp_path / "subs"), "--cases", "2",
                    "--json", str(out_json), "--gradebook", str(tmp_path / "book")]) == 1
    out = capsys.readouterr().out
    assert "wrong_mask.py" in out and "1 of 3 submissions pass every check." in out
    results = json.loads(out_json.read_text())
    assert [r["status"] for r in results] == ["pass", "fail", "fail"]
    assert results[2]["diagnosis"].startswith("dlogits:")
    book = json.loads((tmp_path / "book.json").read_text())
    assert [r["file"] for r in book] == ["correct.py", "wrong_count.py", "wrong_mask.py"]


@pytest.mark.parametrize("taken", ["file", "submission", "subfolder's submission"])
def test_cli_check_json_never_replaces_a_file_being_checked(tmp_path, taken):
    """--json names a file the results go to: the file checked, or any submission of the folder checked,
    is refused before anything runs (it would be replaced by the JSON, the student's work lost)."""
    write_planted("cross_entropy", tmp_path / "subs")
    (tmp_path / "subs" / "bob").mkdir()
    (tmp_path / "subs" / "bob" / "mine.py").write_text(CORRECT["cross_entropy"])
    checked, json_path = {"file": ("subs/correct.py", "subs/correct.py"),
                          "submission": ("subs", "subs/wrong_mask.py"),
                          "subfolder's submission": ("subs", "subs/bob/mine.py")}[taken]
    before = {p: p.read_bytes() for p in (tmp_path / "subs").rglob("*.py")}
    with pytest.raises(UsageError, match="--json .* being checked"):
        run_cli(["exercise", "check", "cross_entropy", str(tmp_path / checked), "--cases", "1",
                 "--json", str(tmp_path / json_path), "--gradebook", str(tmp_path / "book")])
    assert {p: p.read_bytes() for p in (tmp_path / "subs").rglob("*.py")} == before
    assert not (tmp_path / "book.csv").exists()   # refused before the grading


def test_cli_mistakes_exit_2(tmp_path, monkeypatch, capsys):
    import npllama.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", {"exercise": "npllama.commands.exercise"})
    assert cli.main(["exercise", "start", "nope"]) == 2
    assert "unknown exercise 'nope'" in capsys.readouterr().err
    assert cli.main(["exercise", "check", "crossentropy", str(tmp_path)]) == 2
    assert "unknown exercise 'crossentropy' (did you mean 'cross_entropy'?)" in capsys.readouterr().err
    assert cli.main(["exercise", "check", "rmsnorm", str(tmp_path / "missing.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["exercise", "check", "rmsnorm", str(tmp_path), "--cases", "-1"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["exercise", "check", "rmsnorm", str(empty)]) == 2
    assert "no .py files" in capsys.readouterr().err
