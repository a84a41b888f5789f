"""What a classroom audit found wrong with grading, each case a submission a student really wrote
(the files of the audit, inlined): an honest near-exact answer is graded, not refused; a wrong
shape is called a wrong shape; None, lists and dicts get their own words; training cannot be hung
or quit by the file it trains with; the checks judge values, not floating-point warnings."""
import numpy as np
import pytest

from npllama.exercises import check_file, check_function
from npllama.exercises.sandbox import grade_file

# cross_entropy with the count guarded by an epsilon: right to 3e-11, an honest formula
EPS_IN_THE_DIVISION = """import numpy as np
def cross_entropy_backward(dloss, cache):
    probs, safe_targets, counted, n_counted, logits_shape = cache
    d = probs.copy()
    d[np.arange(len(d)), safe_targets] -= 1
    d *= counted[:, None]
    d = d * (np.asarray(dloss, dtype=probs.dtype) / probs.dtype.type(n_counted + 1e-10))
    return d.reshape(logits_shape)
"""

# rmsnorm with one mean taken in float32: right to 1e-8
ONE_MEAN_IN_FLOAT32 = """import numpy as np
def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    xhat = x * rstd
    dxhat = dy * weight
    dweight = (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    proj = np.mean(dxhat * xhat, axis=-1, keepdims=True, dtype=np.float32)
    dx = rstd * (dxhat - xhat * proj)
    return dx, dweight
"""

# softmax measured by central differences of a forward the file writes out
SOFTMAX_MEASURED = """import numpy as np
def softmax_backward(dp, cache):
    p = cache
    x = np.log(np.where(p > 0, p, 1e-300))
    def f(x):
        e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)
    g = np.zeros_like(x)
    h = 1e-6
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp = x.copy(); xp[i] += h; xm = x.copy(); xm[i] -= h
        g[i] = np.sum((f(xp) - f(xm)) * dp) / (2*h)
    return g
"""


def _write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(source)
    return path


# ----- 1. near-exact is graded; measuring is refused ----------------------------------------------

def test_an_epsilon_in_a_division_is_graded_with_a_note_not_refused(tmp_path):
    path = _write(tmp_path, "epsdiv.py", EPS_IN_THE_DIVISION)
    report = check_file("cross_entropy", path, n_random=1)
    assert report.refused is None and report.ok, report.format()
    assert any("an epsilon added" in note for note in report.notes)
    assert "note: dlogits agrees with the exact gradient" in report.format()
    graded = grade_file("cross_entropy", path, n_random=1)
    assert graded.status == "pass" and "refused" not in graded.text


def test_part_of_the_arithmetic_in_float32_is_graded_and_named(tmp_path):
    """The likely causes are said once: the near-exact note under the failure repeated the
    finding's hint word for word."""
    from npllama.exercises.diagnose import NEAR_EXACT_CAUSES

    report = check_file("rmsnorm", _write(tmp_path, "partf32.py", ONE_MEAN_IN_FLOAT32), n_random=1)
    assert report.refused is None and report.results, report.format()
    finding = report.first_failure.finding
    assert "report this case" not in finding.hint and "float32" in finding.hint
    assert "mixes rows" not in finding.ladder      # a near miss is no structural mistake
    assert report.format().count(NEAR_EXACT_CAUSES) == 1, report.format()
    # graded from the file's own process (the sandbox), the same report
    graded = grade_file("rmsnorm", _write(tmp_path, "partf32.py", ONE_MEAN_IN_FLOAT32), n_random=1)
    assert graded.status == "fail" and graded.text.count(NEAR_EXACT_CAUSES) == 1, graded.text


def test_the_near_exact_note_names_the_causes_when_the_failure_shown_does_not(tmp_path):
    """A near-exact dweight in a report whose first failure is another mistake (dx twice too big): the
    note is the only place naming the likely causes of the near miss, so it stays."""
    from npllama.exercises.diagnose import NEAR_EXACT_CAUSES
    from npllama.ops.rmsnorm import rmsnorm_backward as right

    def wrong_dx_near_dweight(dy, cache):
        dx, dweight = right(dy, cache)
        return 2 * dx, dweight * (1 + 3e-7)

    report = check_function("rmsnorm", wrong_dx_near_dweight, n_random=1)
    assert report.first_failure is not None and NEAR_EXACT_CAUSES not in report.first_failure.finding.hint
    assert any(NEAR_EXACT_CAUSES in note for note in report.notes), report.format()


def test_the_near_exact_note_claims_the_tolerance_only_when_the_checks_pass(tmp_path):
    """A float32 product failed the gradient check, and the note under it said the gradient was
    "inside the checks' tolerance": a FAIL and a note calling it in tolerance, one report."""
    report = check_file("rmsnorm", _write(tmp_path, "partf32.py", ONE_MEAN_IN_FLOAT32), n_random=1)
    assert report.first_failure is not None, report.format()
    assert "inside the checks' tolerance" not in report.format(), report.format()
    passing = check_file("cross_entropy", _write(tmp_path, "epsdiv.py", EPS_IN_THE_DIVISION), n_random=1)
    assert passing.ok and "inside the checks' tolerance" in passing.format(), passing.format()


def test_finite_differences_written_in_the_file_are_still_refused(tmp_path):
    report = check_file("softmax", _write(tmp_path, "measured.py", SOFTMAX_MEASURED), n_random=1)
    assert report.refused and "line 13 takes the difference of two evaluations of f" in report.refused


def test_the_static_evidence_of_measuring():
    from npllama.exercises.screen import finite_difference_lines

    named = ("def g(f, x, h):\n    up = f(x + h)\n    down = f(x - h)\n    return (up - down) / (2 * h)\n")
    assert finite_difference_lines(named) == [
        "line 4 takes the difference of two evaluations of f and scales it by a step"]
    assert finite_difference_lines("import numpy as np\ng = np.gradient(y, h)\n")
    honest = ("import numpy as np\ndef b(dy, x):\n    return (np.sum(dy) - np.sum(x)) / x.size, "
              "(x.sum() - dy.sum()) * 2, (np.exp(x) - np.exp(dy)) / 3\n")
    assert finite_difference_lines(honest) == []


# ----- 2. a wrong shape is a wrong shape ----------------------------------------------------------

def test_a_weight_gradient_not_summed_over_rows_is_called_a_shape_error(tmp_path):
    source = ONE_MEAN_IN_FLOAT32.replace("(dy * xhat).reshape(-1, x.shape[-1]).sum(0)", "dy * xhat").replace(
        ", dtype=np.float32", "")
    report = check_file("rmsnorm", _write(tmp_path, "dwshape.py", source), n_random=1)
    finding = report.first_failure.finding
    assert finding.message == "dweight has shape (2, 3, 4), expected (4,): summed over too few axes"
    assert "sum over the rows/batch" in finding.hint
    assert "mixes rows" not in finding.ladder and "the wrong shape" in finding.ladder


# ----- 3, 4. what came back: None, a list ---------------------------------------------------------

def test_none_from_a_two_gradient_exercise_asks_for_the_return_statement():
    def forgot(dy, cache):
        dx = dy * 2   # noqa: F841
    finding = check_function("rmsnorm", forgot, n_random=0).first_failure.finding
    assert finding.message == "your function returned None; it must return 2 gradients: dx, dweight"
    assert "forget the return statement" in finding.hint


def test_a_python_list_is_not_a_gradient():
    def as_list(dp, cache):
        p = cache
        return (p * (dp - np.sum(dp * p, axis=-1, keepdims=True))).tolist()
    finding = check_function("softmax", as_list, n_random=0).first_failure.finding
    assert finding.message == "your function returned a list, not a NumPy array"

    def list_of_arrays(dy, cache):   # a list of arrays is still accepted as the gradients
        from npllama.ops.rmsnorm import rmsnorm_backward
        return list(rmsnorm_backward(dy, cache))
    assert check_function("rmsnorm", list_of_arrays, n_random=0).passed >= 2


# ----- 5. the model's dict and the block's pair ---------------------------------------------------

from .test_exercise_diagnoses import MODEL_CORRECT as MODEL  # noqa: E402  (one correct model backward)


@pytest.mark.parametrize("change, expected", [
    (('grads["model.norm.weight"]', 'grads["model.norm"]'),
     "missing 1 of 21: 'model.norm.weight'; unexpected: 'model.norm'"),
    (("    return grads", '    grads["bogus"] = None\n    return grads'), "unexpected: 'bogus'"),
    (("    return grads", '    grads["lm_head.weight"] = dW\n    return grads'),   # tied: no lm_head
     "unexpected: 'lm_head.weight'"),
])
def test_the_model_must_return_exactly_the_keys_of_model_params(tmp_path, change, expected):
    report = check_file("model", _write(tmp_path, "model.py", MODEL.replace(*change)), n_random=0)
    finding = report.first_failure.finding
    assert report.first_failure.status == "fail", report.format()    # a check failure, not "you raised"
    assert finding.message.startswith("the dict must have exactly the keys of model.params")
    assert expected in finding.message, finding.message


def test_the_model_must_return_a_dict_and_the_block_a_pair(tmp_path):
    as_list = _write(tmp_path, "list.py", MODEL.replace("    return grads", "    return list(grads.values())"))
    finding = check_file("model", as_list, n_random=0).first_failure.finding
    assert finding.message == "model_backward must return a dict (parameter name -> gradient), not a list"

    def flat(dout, cache):
        from npllama.model import block_backward
        dx, grads = block_backward(dout, cache)
        return (dx, *grads)
    finding = check_function("block", flat, n_random=0).first_failure.finding
    assert "must return (dx, grads)" in finding.message and "10 values in a row" in finding.message


# ----- 7. values, not floating-point warnings ------------------------------------------------------

SWIGLU_ACT_RECOMPUTED = """import numpy as np
def swiglu_act_backward(dact, cache):
    gate, up, _, _ = cache
    s = 1 / (1 + np.exp(-gate))
    dup = dact * gate * s
    dgate = dact * up * (s + gate * s * (1 - s))
    return dgate, dup
"""


def test_an_overflow_on_the_way_to_exact_finite_gradients_is_no_failure(tmp_path):
    report = check_file("swiglu_act", _write(tmp_path, "sa_recompute.py", SWIGLU_ACT_RECOMPUTED), n_random=1)
    assert report.ok, report.format()
    nan_at_large_gate = SWIGLU_ACT_RECOMPUTED.replace("s = 1 / (1 + np.exp(-gate))",
                                                      "s = np.exp(gate) / (1 + np.exp(gate))")
    report = check_file("swiglu_act", _write(tmp_path, "sa_nan.py", nan_at_large_gate), n_random=1)
    large = next(r for r in report.results if r.check.name == "large inputs")
    assert large.status == "fail" and "NaN or Inf" in large.finding.message, report.format()


def test_a_guarded_division_by_zero_counts_is_no_failure():
    def guarded(dloss, cache):
        probs, safe_targets, counted, n_counted, logits_shape = cache
        d = probs.copy()
        d[np.arange(len(d)), safe_targets] -= 1
        scaled = np.where(n_counted > 0, d * counted[:, None] / np.float64(n_counted), 0.0)   # 0/0 unused
        return (np.asarray(dloss) * scaled).reshape(logits_shape).astype(probs.dtype)
    report = check_function("cross_entropy", guarded, n_random=1)
    assert report.ok, report.format()


# ----- check_op refusing a backward (gradcheck's own ValueError) is the student's mistake -----------

def test_a_value_error_of_check_op_is_reported_as_a_check_failure(monkeypatch, tmp_path):
    from npllama.exercises import checks
    from npllama.ops.rmsnorm import rmsnorm_backward

    def refusing_check_op(*args, **kwargs):
        raise ValueError("backward changed dout in place")
    monkeypatch.setattr(checks, "check_op", refusing_check_op)
    gradient = next(r for r in check_function("rmsnorm", rmsnorm_backward, n_random=0).results
                    if r.check.name == "gradient")
    assert gradient.status == "fail"
    assert gradient.finding.message == "the gradient check could not use your function: backward changed dout in place"

    def check_op_calling_back(forward, backward, inputs, **kwargs):
        return backward(None, None)
    monkeypatch.setattr(checks, "check_op", check_op_calling_back)

    fails_inside_check_op = """def rmsnorm_backward(dy, cache):
    if dy is None:
        raise ValueError("operands could not be broadcast together")
    x, rstd, weight = cache
    xhat, dxhat = x * rstd, dy * weight
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
"""   # in a file of its own: the student's own ValueError stays a crash with its line
    path = _write(tmp_path, "own_value_error.py", fails_inside_check_op)
    gradient = next(r for r in check_file("rmsnorm", path, n_random=0).results
                    if r.check.name == "gradient")
    assert gradient.status == "error" and "raised ValueError: operands" in gradient.finding.message
    assert f"line 3 of {path}" in gradient.finding.message     # the file as given to check_file


# ----- polish: the words of a crash ----------------------------------------------------------------

def test_in_place_message_uses_the_students_own_argument_name():
    def scales_dp_in_place(dp, cache):
        dp *= 2
        return cache * (dp - np.sum(dp * cache, axis=-1, keepdims=True))
    finding = check_function("softmax", scales_dp_in_place, n_random=0).first_failure.finding
    assert finding.message == "your function changed dp in place" and "still needs dp" in finding.hint


def test_crash_hints_name_the_signature_the_cache_and_an_einsum():
    def one_argument(dy):
        return dy, dy
    assert "calls rmsnorm_backward(dy, cache)" in check_function("rmsnorm", one_argument,
                                                                 n_random=0).first_failure.finding.hint

    def four_names(dy, cache):
        x, rstd, weight, eps = cache
    hint = check_function("rmsnorm", four_names, n_random=0).first_failure.finding.hint
    assert "RMSNormCache of 3 fields: x, rstd, weight" in hint

    def bad_einsum(dy, cache):
        x, rstd, weight = cache
        return np.einsum("...d,de->...e", dy, x), weight
    hint = check_function("rmsnorm", bad_einsum, n_random=0).first_failure.finding.hint
    assert "einsum" in hint and "keepdims" not in hint


def test_a_model_backward_unpacking_its_cache_is_told_the_model_caches_fields():
    """model_backward(dlogits, cache, config) gets model_forward's ModelCache, not the pair the
    checker keeps (the cache and the config): the hint said 'unpack exactly cache, config'.  (A
    5-name unpacking was right until ModelCache recorded whether the stack ran causally.)"""
    def five_names(dlogits, cache, config):
        embed_tokens, layers, norm, lm_head, hidden_shape = cache
    hint = check_function("model", five_names, n_random=0).first_failure.finding.hint
    assert "ModelCache of 6 fields: embed_tokens, layers, norm, lm_head, hidden_shape, causal" in hint, hint


def test_parameters_in_the_other_order_are_said_whether_it_crashes_or_not():
    """(cache, dy): rmsnorm's unpacking crashes, and the hint was 'unpack exactly x, rstd, weight',
    which the student did; softmax computes wrong numbers and said nothing about the order."""
    def crashes(cache, dy):
        x, rstd, weight = cache
        return dy * rstd * weight, np.sum(dy, axis=0)
    finding = check_function("rmsnorm", crashes, n_random=0).first_failure.finding
    assert "your function takes (cache, dy), but the checker calls rmsnorm_backward(dy, cache)" in finding.hint

    def computes(cache, dp):
        return cache * (dp - np.sum(dp * cache, axis=-1, keepdims=True))
    report = check_function("softmax", computes, n_random=0)
    assert not report.ok and any("your function takes (cache, dp)" in note for note in report.notes)

    def in_order(dp, cache):
        return cache * dp
    assert not any("takes" in note for note in check_function("softmax", in_order, n_random=0).notes)


def test_the_rerun_snippet_of_a_crash_really_reaches_the_students_function(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, "crashes.py", "def rmsnorm_backward(dy, cache):\n    return dy[99], None\n")
    finding = check_file("rmsnorm", path, n_random=0).first_failure.finding
    snippet = finding.hint.splitlines()[1:]
    assert len(snippet) == 3 and "python -m pdb" in finding.hint
    ran = subprocess.run([sys.executable, "-c", "\n".join(snippet)], cwd=tmp_path, capture_output=True, text=True)
    assert "IndexError" in ran.stderr and 'crashes.py", line 2' in ran.stderr, ran.stderr
    assert "    from npllama.exercises import" in "\n".join(finding.lines())   # on lines of its own


# ----- polish: the gradebook ----------------------------------------------------------------------

def test_gradebook_has_numeric_counts_and_what_it_graded_on_and_finds_student_folders(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    import re

    from npllama.exercises.definitions import get_exercise
    from npllama.exercises.gradebook import grade_folder, write_gradebook
    from npllama.exercises.planted import CORRECT

    folder = tmp_path / "class"
    (folder / "alice").mkdir(parents=True)
    (folder / "bob").mkdir()
    (folder / "alice" / "rmsnorm_backward.py").write_text(CORRECT["rmsnorm"])
    (folder / "bob" / "rmsnorm_backward.py").write_text(CORRECT["rmsnorm"].replace("return", "return None and"))
    graded = grade_folder("rmsnorm", folder, n_random=1, seed=3)
    assert [g.file for g in graded] == ["alice/rmsnorm_backward.py", "bob/rmsnorm_backward.py"]
    csv_path, json_path = write_gradebook(graded, tmp_path / "book")
    row = next(csv.DictReader(csv_path.open()))
    # cases: what each sampled check ran on, as the report says "(N cases)": the edge cases and the 1 random one
    shown = re.findall(r"\((\d+) cases\)", graded[0].text)
    assert shown and set(shown) == {str(len(get_exercise("rmsnorm").edge_cases) + 1)}, graded[0].text
    assert (row["exercise"], row["passed"], row["total"], row["seed"], row["cases"]) == ("rmsnorm", "4", "4", "3",
                                                                                          shown[0])
    record = json.loads(json_path.read_text())[0]
    assert (record["exercise"], record["passed"], record["total"], record["seed"], record["cases"]) == \
        ("rmsnorm", 4, 4, 3, int(shown[0]))

    single = tmp_path / "single.json"
    subprocess.run([sys.executable, "-m", "npllama", "exercise", "check", "rmsnorm",
                    str(folder / "alice" / "rmsnorm_backward.py"), "--cases", "1", "--seed", "3",
                    "--json", str(single)], capture_output=True, timeout=120)
    assert set(json.loads(single.read_text())[0]) == set(record)     # one schema for both


def test_block_and_model_cases_are_summarised():
    from npllama.exercises import EXERCISES

    for op in ("block", "model"):
        ex = EXERCISES[op]
        for params in ex.edge_cases:
            text = ex.case(params).describe()
            assert len(text) < 160 and "LlamaConfig(" not in text and "heads" in text, text


def test_the_softmax_jacobian_check_sees_a_sum_over_the_whole_array():
    # right on a single row, wrong on several: the Jacobian check must not pass it
    def whole_array_sum(dp, cache):
        p = cache
        return p * (dp - np.sum(dp * p))

    report = check_function("softmax", whole_array_sum, n_random=0)
    jacobian = next(r for r in report.results if r.check.name == "jacobian")
    assert jacobian.status == "fail", report.format()


SOFTMAX_SUM_IN_FLOAT32 = """import numpy as np
def softmax_backward(dp, cache):
    return cache * (dp - (dp * cache).sum(-1, keepdims=True, dtype=np.float32))
"""


def test_a_near_exact_gradient_under_1e_7_overall_can_fail_the_gradient_check(tmp_path):
    """screen.py said an honest near-exact gradient (an epsilon, a float32 mean) lands "well inside
    the gradient check's 1e-7": of the error over the whole gradient, not of every entry, which is
    what the check holds -- a softmax sum in float32 is under 1e-7 overall and fails."""
    from npllama.exercises import get_exercise
    from npllama.exercises.runner import load_function
    from npllama.exercises.screen import near_exact_gap

    path = _write(tmp_path, "sumf32.py", SOFTMAX_SUM_IN_FLOAT32)
    gap = near_exact_gap(get_exercise("softmax"), load_function("softmax", path))
    assert gap is not None and gap.rel_error < 1e-7, gap
    report = check_file("softmax", path, n_random=1)
    assert report.first_failure is not None and report.first_failure.check.name == "gradient", report.format()
