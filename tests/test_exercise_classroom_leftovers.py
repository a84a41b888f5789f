"""The classroom's leftovers: a report that sends the student to the root of several wrong
gradients (the one the backward reaches first), not to the first in the order of the inputs."""
import textwrap

import numpy as np
import pytest

from npllama.exercises import check_function, get_exercise
from npllama.exercises.checks import CheckFailed, check_gradient

# one early slip in each: the rest of the backward is right, and carries the slip further down
BLOCK_DV_MERGED_WITHOUT_TRANSPOSE = """
import numpy as np
from npllama.ops.rmsnorm import rmsnorm_backward
from npllama.ops.attention import attention_backward
from npllama.ops.rope import rope_backward
from npllama.ops.linear import linear_backward
from npllama.ops.swiglu import swiglu_backward
from npllama.model import LayerWeights


def block_backward(dout, cache):
    B, T, _ = dout.shape
    attn = cache.self_attn
    H, KVH, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    dhn, dW_gate, dW_up, dW_down = swiglu_backward(dout, cache.mlp)
    dh_norm, dw_post = rmsnorm_backward(dhn, cache.post_attention_layernorm)
    dh = dout + dh_norm
    da, dW_o = linear_backward(dh, attn.o_proj)
    da = da.reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    dq_rot, dk_rot, dv = attention_backward(da, attn.attention)
    dq = rope_backward(dq_rot, attn.q_rope).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    dk = rope_backward(dk_rot, attn.k_rope).transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)
    dv = dv.reshape(B, T, KVH * hd)          # the slip: the heads merged without moving their axis
    dxn_q, dW_q = linear_backward(dq, attn.q_proj)
    dxn_k, dW_k = linear_backward(dk, attn.k_proj)
    dxn_v, dW_v = linear_backward(dv, attn.v_proj)
    dx_norm, dw_in = rmsnorm_backward(dxn_q + dxn_k + dxn_v, cache.input_layernorm)
    return dh + dx_norm, LayerWeights(dw_in, dW_q, dW_k, dW_v, dW_o, dw_post, dW_gate, dW_up, dW_down)
"""

SWIGLU_SIGMOID_SLOPE_FOR_SILU = """
import numpy as np


def swiglu_backward(dout, cache):
    (x, w_gate), (_, w_up), act_cache, (act, w_down) = cache
    gate, up, sig = act_cache.gate, act_cache.up, act_cache.gate_sigmoid
    D, F = w_down.shape
    dact = dout @ w_down
    dw_down = dout.reshape(-1, D).T @ act.reshape(-1, F)
    dgate = dact * up * sig * (1 - sig)     # the slip: sigmoid's derivative where silu's belongs
    dup = dact * gate * sig
    dx = dgate @ w_gate + dup @ w_up
    dw_gate = dgate.reshape(-1, F).T @ x.reshape(-1, D)
    dw_up = dup.reshape(-1, F).T @ x.reshape(-1, D)
    return dx, dw_gate, dw_up, dw_down
"""


def _function(source, name):
    namespace = {}
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), namespace)
    return namespace[name]


def _first_failure(op, source):
    exercise = get_exercise(op)
    report = check_function(op, _function(source, exercise.backward_name), n_random=0)
    assert not report.ok
    return report.first_failure.finding


def test_a_wrong_dv_in_the_block_is_reported_at_dW_v_not_at_dx():
    # dv merged wrongly makes dW_v wrong, and through dxn also dw_in and dx: the report led with
    # dx (the first input), "8 of 8 entries are wrong, with no simple pattern", and the student
    # looked at the residuals
    finding = _first_failure("block", BLOCK_DV_MERGED_WITHOUT_TRANSPOSE)
    assert finding.grad == "dW_v", finding.lines()
    assert "further down the backward: dw_in, dx" in finding.what_is_wrong, finding.what_is_wrong
    # what the backward reaches before dW_v is right: the slip is after o_proj's backward
    assert "dW_o" in finding.what_is_wrong.split("right: ")[1], finding.what_is_wrong


def test_a_wrong_silu_slope_in_swiglu_is_reported_at_dw_gate_not_at_dx():
    finding = _first_failure("swiglu", SWIGLU_SIGMOID_SLOPE_FOR_SILU)
    assert finding.grad == "dw_gate", finding.lines()
    # the slip named (silu' as sigmoid') is in dgate, which dw_gate and dx are both computed from
    assert "also wrong by the same mistake: dx" in finding.what_is_wrong, finding.what_is_wrong


def test_gradients_of_one_step_are_said_to_be_of_one_step():
    # dq and dk both come from d_attn_scores: neither is the other's root, and the report says so
    from npllama.ops.attention import attention_backward

    def doubled_scores(dout, cache):
        dq, dk, dv = attention_backward(dout, cache)
        return 2 * dq, 2 * dk, dv

    exercise = get_exercise("attention")
    with pytest.raises(CheckFailed) as failed:
        check_gradient(doubled_scores, exercise.case(exercise.edge_cases[0]))
    finding = failed.value.finding
    assert finding.grad == "dq", finding.lines()
    assert "dk is wrong too, at the same step of the backward as dq" in finding.what_is_wrong, finding.what_is_wrong
    assert "right: dv" in finding.what_is_wrong


def test_without_a_backward_order_the_report_says_it_cannot_tell_the_root():
    import dataclasses

    exercise = get_exercise("swiglu")
    case = dataclasses.replace(exercise.case(exercise.edge_cases[0]), backward_order=())
    from npllama.ops.swiglu import swiglu_backward

    def both_wrong(dout, cache):
        dx, dw_gate, dw_up, dw_down = swiglu_backward(dout, cache)
        return -dx, -dw_gate, dw_up, dw_down

    with pytest.raises(CheckFailed) as failed:
        check_gradient(both_wrong, case)
    message = failed.value.finding.what_is_wrong
    assert failed.value.finding.grad == "dx"          # the inputs' order: nothing else to go by
    assert "cannot be told" in message and "also wrong: dw_gate" in message, message


def test_every_builtin_exercise_orders_all_its_gradients():
    from npllama.exercises import EXERCISES

    for op, exercise in EXERCISES.items():
        for params in exercise.edge_cases:
            case = exercise.case(params)
            ordered = [name for stage in case.backward_order for name in stage]
            if len(case.wrt) > 1:
                assert sorted(ordered) == sorted(case.input_names[i] for i in case.wrt), (op, case.backward_order)


# a teacher's exercise of three gradients: out = tanh(x W^T) * s; the backward reaches ds first,
# then dW, then dx (which collects what dW's step computed)
TANH_EXERCISE = '''
from typing import NamedTuple

import numpy as np

from npllama.exercises import Exercise
from npllama.exercises.checks import SEED, Case, Ints


class TanhCache(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    s: np.ndarray
    h: np.ndarray


def tanh_layer_forward(x, w, s):
    h = np.tanh(x @ w.T)
    return h * s, TanhCache(x, w, s, h)


def tanh_layer_backward(dout, cache):
    x, w, s, h = cache
    ds = (dout * h).reshape(-1, s.shape[0]).sum(0)
    dpre = dout * s * (1 - h * h)
    return dpre @ w, dpre.T @ x, ds


class TanhLayer(Exercise):
    op, title = "tanh_layer", "a tanh layer with a scale"
    forward_name, backward_name = "tanh_layer_forward", "tanh_layer_backward"
    backward_order = ORDER
    space = dict(n=Ints(1, 3), seed=SEED)
    edge_cases = [dict(n=3, seed=1)]

    def build(self, params, dtype=np.float64):
        rng = np.random.default_rng(params["seed"])
        x = rng.standard_normal((params["n"], 4)).astype(dtype)
        w = (0.5 * rng.standard_normal((3, 4))).astype(dtype)
        s = rng.standard_normal(3).astype(dtype)
        return Case(self.forward, [x, w, s], ("x", "w", "s"), (0, 1, 2), seed=params["seed"] % 1000)
'''


def _tanh_exercise(tmp_path, order):
    from npllama.exercises import load_exercises

    path = tmp_path / "tanh_exercise.py"
    path.write_text(TANH_EXERCISE.replace("ORDER", order))
    return load_exercises(path)["tanh_layer"]


def _tanh_slope_slip(dout, cache):      # tanh' taken as 1 - h: dW and dx wrong, ds right
    x, w, s, h = cache
    dpre = dout * s * (1 - h)
    return dpre @ w, dpre.T @ x, (dout * h).reshape(-1, s.shape[0]).sum(0)


def test_a_teachers_backward_order_leads_the_report_with_the_root(tmp_path):
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.grad == "dw", finding.lines()
    said = finding.what_is_wrong
    assert "further down the backward: dx" in said and "right: ds" in said, said


def test_a_teachers_exercise_without_an_order_says_it_cannot_tell_the_root(tmp_path):
    exercise = _tanh_exercise(tmp_path, "()")
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.grad == "dx", finding.lines()
    said = finding.what_is_wrong
    assert "also wrong: dw" in said and "cannot be told" in said, said


@pytest.mark.parametrize("order, said", [('("s", "w")', "leaves out 'x'"),
                                         ('("s", "w", "x", "y")', "names 'y', not a differentiable input"),
                                         ('("s", ("w", "s"), "x")', "places 's' twice")])
def test_a_teachers_backward_order_that_misses_or_misnames_an_input_is_refused(tmp_path, order, said):
    from npllama.exercises import ExerciseFileError

    with pytest.raises(ExerciseFileError, match="backward_order") as refused:
        _tanh_exercise(tmp_path, order)
    assert said in str(refused.value), refused.value


# ----- a MemoryError at the import is told as one in a call: the limit and --memory-mb -------------
HOG_AT_IMPORT = """import numpy as np

TABLE = np.ones((8000, 8000))       # 512 MB, built when the file is imported


def rmsnorm_backward(dy, cache):
    return dy, dy.sum(0)
"""
HOG_IN_CALL = """import numpy as np


def rmsnorm_backward(dy, cache):
    table = np.ones((8000, 8000))
    return dy, dy.sum(0)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="the memory limit is Linux's")
def test_running_out_of_memory_at_the_import_is_told_as_in_a_call(tmp_path):
    from npllama.exercises.sandbox import grade_file

    graded = {}
    for name, text in (("at_import", HOG_AT_IMPORT), ("in_call", HOG_IN_CALL)):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        graded[name] = grade_file("rmsnorm", path, n_random=0, memory_mb=128, timeout=60)
    for name, line in (("at_import", 3), ("in_call", 5)):
        assert graded[name].status == "crashed", graded[name]
        assert graded[name].diagnosis.startswith("ran out of its memory limit of 128 MB (--memory-mb 128"), graded[name]
        assert f"line {line} of {tmp_path / name}.py" in graded[name].diagnosis, graded[name].diagnosis
    assert "the file raised MemoryError" in graded["at_import"].diagnosis


# ----- a teacher's exercise gets the ladder of cases from its own edge cases -----------------------
def _first_row_only_ds(dout, cache):     # right with one row of x, wrong with several
    x, w, s, h = cache
    dpre = dout * s * (1 - h * h)
    return dpre @ w, dpre.T @ x, (dout * h)[0]


def test_a_teachers_exercise_says_which_of_its_cases_pass(tmp_path):
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.edge_cases = [dict(n=1, seed=1), dict(n=1, seed=2), dict(n=3, seed=1)]
    finding = check_function(exercise, _first_row_only_ds, n_random=0).first_failure.finding
    assert finding.ladder.startswith("passes with x (1, 4), w (3, 4), s (3,) (n=1, seed=1); with x (1, 4), "
                                     "w (3, 4), s (3,) (n=1, seed=2) -- fails with x (3, 4), w (3, 4), s (3,)"), \
        finding.ladder
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.ladder.startswith("it fails every one of the exercise's cases (x (1, 4)"), finding.ladder


# ----- the model starter quotes ModelCache from the class ------------------------------------------
def test_the_model_starter_quotes_every_field_of_ModelCache_as_the_class_writes_it():
    # its fields were written out by hand in the exercise's docstring: a field added or a comment
    # changed in npllama.model left the starter telling another cache
    import inspect

    from npllama.exercises.starter import starter_source
    from npllama.model import ModelCache

    text = " ".join(starter_source("model").split())
    source = inspect.getsource(ModelCache)
    for field in ModelCache._fields:
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{field}:"))
        assert " ".join(line.split()) in text, line
    assert " ".join(ModelCache.__doc__.split()) in text


# ----- the exercises' modules use each other's public helpers only --------------------------------
def _exercise_modules():
    from pathlib import Path

    import npllama.exercises

    return sorted(Path(npllama.exercises.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", _exercise_modules(), ids=lambda path: path.name)
def test_no_module_of_the_exercises_imports_a_private_name_of_another(path):
    # mistakes.py imported diagnose._constant_ratio; assembled.py checks._first_parameter and
    # starter._fields_described; training.py and sandbox.py runner._describe_exception
    import ast

    tree = ast.parse(path.read_text())
    private = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_")]
    assert private == [], private


def test_constant_ratio_is_the_factor_when_there_is_one():
    from npllama.exercises.diagnose import constant_ratio

    x = np.array([[1.0, -2.0], [3.0, 0.5]])
    assert constant_ratio(-0.5 * x, x) == pytest.approx(-0.5)
    assert constant_ratio(x + 1, x) is None
    assert constant_ratio(np.zeros_like(x), x) is None       # 0 times is no factor: every entry is 0


# ----- review: the block's q, k and v come out of one attention backward --------------------------
def test_a_wrong_da_in_the_block_says_dW_q_dW_k_dW_v_are_of_one_step():
    # da (attention's dout) doubled: dW_q, dW_k and dW_v all wrong.  The report led with dW_v and
    # put dW_q, dW_k "further down the backward", as if computed from dv: they are not (dq and dk
    # come from the scores', dv from da and the probabilities, all three from one attention backward)
    source = BLOCK_DV_MERGED_WITHOUT_TRANSPOSE.replace(
        "dv = dv.reshape(B, T, KVH * hd)", "dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)").replace(
        "da = da.reshape(B, T, H, hd)", "da = 2 * da.reshape(B, T, H, hd)")
    finding = _first_failure("block", source)
    assert finding.grad == "dW_q", finding.lines()
    said = finding.what_is_wrong
    assert "dW_k, dW_v are wrong too, at the same step of the backward as dW_q" in said, said
    assert "further down the backward: dw_in, dx" in said, said


def test_a_wrong_dv_alone_in_the_block_says_dW_q_and_dW_k_are_right():
    finding = _first_failure("block", BLOCK_DV_MERGED_WITHOUT_TRANSPOSE)
    assert finding.grad == "dW_v", finding.lines()
    assert "dW_q" not in finding.what_is_wrong.split("further down")[1].split(";")[0], finding.what_is_wrong
    assert finding.what_is_wrong.endswith("right also: dW_q, dW_k)"), finding.what_is_wrong


def test_what_further_down_depends_on_is_said_truly():
    # dW_v is a weight's gradient: nothing is computed from it.  What dw_in and dx share with it is
    # dv, what dW_v is computed from; "they may be wrong only because of what makes dW_v wrong" let
    # a student look for dW_v inside dx
    finding = _first_failure("block", BLOCK_DV_MERGED_WITHOUT_TRANSPOSE)
    assert ("also wrong, further down the backward: dw_in, dx -- they are computed from what dW_v is computed "
            "from, and may be wrong only because of a slip there: fix dW_v first, then check again") \
        in finding.what_is_wrong, finding.what_is_wrong


def test_three_gradients_of_one_step_are_none_computed_from_another():
    source = BLOCK_DV_MERGED_WITHOUT_TRANSPOSE.replace(
        "dv = dv.reshape(B, T, KVH * hd)", "dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)").replace(
        "da = da.reshape(B, T, H, hd)", "da = 2 * da.reshape(B, T, H, hd)")
    message = _first_failure("block", source).what_is_wrong
    assert "neither" not in message and "none is computed from another" in message, message


# ----- review: a teacher's edge cases are in the teacher's order, not known to be simplest first ----
def test_a_teachers_ladder_does_not_call_its_first_case_the_simplest(tmp_path):
    # docs/debugging.md's own gelu exercise puts x (2, 3) before x (1,): "it fails even the simplest
    # case (x (2, 3))" was untrue, and a slip only with more rows, shown on the first case, hid that
    # the one-row case passes
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.edge_cases = [dict(n=3, seed=1), dict(n=1, seed=2)]
    finding = check_function(exercise, _first_row_only_ds, n_random=0).first_failure.finding
    assert finding.ladder.startswith("passes with x (1, 4), w (3, 4), s (3,) -- fails with x (3, 4)"), finding.ladder
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.ladder.startswith("it fails every one of the exercise's cases (x (3, 4)"), finding.ladder
    assert "simplest" not in finding.ladder


def test_a_teachers_exercise_of_one_edge_case_has_no_ladder_to_tell(tmp_path):
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')       # its one edge case: n=3
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.ladder == "", finding.ladder


# ----- a named mistake keeps what the other gradients show ------------------------------------------
def test_a_named_mistake_still_says_which_other_gradients_are_wrong_and_right(tmp_path):
    # the catalogue's name replaced the whole message: "dk is wrong too ...; right: dv" was lost
    from npllama.exercises import check_file

    # a right backward but for the softmax's: each p as if it depended on its own score only
    path = tmp_path / "attention_backward.py"
    path.write_text(ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.sum(axis=2, a=").replace(
        "ds = attn_probs * (dp - (dp * attn_probs).sum(-1, keepdims=True))", "ds = dp * attn_probs * (1 - attn_probs)"))
    report = check_file("attention", path, n_random=0)
    finding = report.first_failure.finding
    assert finding.grad == "dq", finding.lines()
    assert "only the diagonal of its Jacobian" in finding.message, finding.message     # the mistake, named
    said = report.format()
    assert "also wrong by the same mistake: dk" in said, said      # d_attn_scores feeds both
    assert "right: dv -- every gradient the backward reaches before dq" in said, said
    assert "also wrong by the same mistake: dk" in report.summary(), report.summary()


def _tanh_mistakes():
    """A teacher's catalogue for TANH_EXERCISE: tanh' taken as 1 - h (dw and dx wrong, ds right)."""
    from npllama.exercises.mistakes import Mistake

    class TanhMistakes:
        probes = [dict(n=1, seed=4)]      # one row: a ds summed over the first row only is right here
        ladder = []

        def variant(self, dout, case, slope="right"):
            x, w, s = case.inputs
            h = np.tanh(x @ w.T)
            dpre = dout * s * ((1 - h * h) if slope == "right" else (1 - h))
            return dpre @ w, dpre.T @ x, (dout * h).reshape(-1, s.shape[0]).sum(0)

        def mistakes(self):
            return [Mistake("tanh' was taken as 1 - h", "d tanh(z)/dz = 1 - tanh(z)^2", dict(slope="one_minus_h"))]

    return TanhMistakes()


def _tanh_slope_slip_and_first_row_ds(dout, cache):     # the catalogued slip, and ds of the first row only
    x, w, s, h = cache
    dpre = dout * s * (1 - h)
    return dpre @ w, dpre.T @ x, (dout * h)[0]


def test_a_mistake_named_in_another_gradient_than_the_first_wrong_one_says_so(tmp_path):
    # the probe (one row) names tanh' in dw; this case's first wrong gradient is ds (summed over one
    # row of three): "fix ds first" would contradict the name, and ds may be a slip of its own
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    finding = check_function(exercise, _tanh_slope_slip_and_first_row_ds, n_random=0).first_failure.finding
    # ds's own numbers stay under ds's numbers (the name was put in their place, said of dw and dx)
    assert finding.grad == "ds" and finding.message == "3 of 3 entries are wrong, with no simple pattern", \
        finding.lines()
    assert finding.hint.startswith("a term of the chain rule is missing or wrong"), finding.hint
    assert "for the mistake named: d tanh(z)/dz = 1 - tanh(z)^2" in finding.hint, finding.hint
    said = finding.what_is_wrong
    assert "fix ds first" not in said, said
    assert said == ("3 of 3 entries are wrong, with no simple pattern (a mistake is also named, in dw and dx, wrong on "
                    "this case too: tanh' was taken as 1 - h -- it fits your numbers on every probe case, where ds is "
                    "right: fix it and check again, and if ds is still wrong, it has a slip of its own)"), said


def test_a_mistake_named_in_the_first_wrong_gradient_keeps_the_others(tmp_path):
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.grad == "dw" and finding.message == "tanh' was taken as 1 - h", finding.lines()
    assert finding.what_is_wrong == finding.message + finding.other_gradients
    assert finding.other_gradients == (" (also wrong by the same mistake: dx; right: ds -- every gradient the "
                                       "backward reaches before dw)"), finding.other_gradients


# ----- the swiglu catalogue names the activation's mistakes as swiglu_act's does ---------------------
SWIGLU_ACT_SIGMOID_SLOPE_FOR_SILU = """import numpy as np


def swiglu_act_backward(dact, cache):
    gate, up, sig, silu = cache
    return dact * up * sig * (1 - sig), dact * silu
"""

SWIGLU_RIGHT_STYLES = {
    "helpers": """import numpy as np
from npllama.ops.linear import linear_backward
from npllama.ops.swiglu import swiglu_act_backward


def swiglu_backward(dout, cache):
    dact, dw_down = linear_backward(dout, cache.down_proj)
    dgate, dup = swiglu_act_backward(dact, cache.act)
    dx_gate, dw_gate = linear_backward(dgate, cache.gate_proj)
    dx_up, dw_up = linear_backward(dup, cache.up_proj)
    return dx_gate + dx_up, dw_gate, dw_up, dw_down
""",
    "einsum, sigmoid recomputed": """import numpy as np


def swiglu_backward(dout, cache):
    (x, w_gate), (_, w_up), (gate, up, _, _), (act, w_down) = cache
    s = 1 / (1 + np.exp(-gate))
    dact = np.einsum("...d,df->...f", dout, w_down)
    dgate = dact * up * (s + gate * s * (1 - s))
    dup = dact * gate * s
    dx = np.einsum("...f,fd->...d", dgate, w_gate) + np.einsum("...f,fd->...d", dup, w_up)
    rows = lambda t: t.reshape(-1, t.shape[-1])
    dw_gate = np.einsum("nf,nd->fd", rows(dgate), rows(x))
    dw_up = np.einsum("nf,nd->fd", rows(dup), rows(x))
    dw_down = np.einsum("nd,nf->df", rows(dout), rows(act))
    return dx, dw_gate, dw_up, dw_down
""",
    "a loop over rows": """import numpy as np


def swiglu_backward(dout, cache):
    x, w_gate = cache.gate_proj
    w_up = cache.up_proj[1]
    act, w_down = cache.down_proj
    a = cache.act
    rows = lambda t: t.reshape(-1, t.shape[-1])
    dx = np.zeros_like(rows(x))
    dw_gate, dw_up, dw_down = np.zeros_like(w_gate), np.zeros_like(w_up), np.zeros_like(w_down)
    for n, (d, xi, g, u, s, ai) in enumerate(zip(rows(dout), rows(x), rows(a.gate), rows(a.up),
                                                 rows(a.gate_sigmoid), rows(act))):
        dact = w_down.T @ d
        dgate = dact * u * s * (1 + g * (1 - s))
        dup = dact * a.silu_gate.reshape(-1, g.shape[-1])[n]
        dx[n] = w_gate.T @ dgate + w_up.T @ dup
        dw_gate += np.outer(dgate, xi)
        dw_up += np.outer(dup, xi)
        dw_down += np.outer(d, ai)
    return dx.reshape(x.shape), dw_gate, dw_up, dw_down
""",
}


def test_a_swiglu_student_with_silus_slope_taken_as_sigmoids_is_told_it_by_name(tmp_path):
    # SwiGLUMistakes lacked swiglu_act's "silu'(z) was taken as sigmoid'(z)": "24 of 24 entries are
    # wrong, with no simple pattern"; the activation's mistakes are now that catalogue's own
    from npllama.exercises import check_file

    act_path, path = tmp_path / "swiglu_act_backward.py", tmp_path / "swiglu_backward.py"
    act_path.write_text(SWIGLU_ACT_SIGMOID_SLOPE_FOR_SILU)
    path.write_text(textwrap.dedent(SWIGLU_SIGMOID_SLOPE_FOR_SILU))
    act_finding = check_file("swiglu_act", act_path, n_random=0).first_failure.finding
    finding = check_file("swiglu", path, n_random=0).first_failure.finding
    assert "silu'(z) was taken as sigmoid'(z) = sigmoid(z) (1 - sigmoid(z))" in act_finding.message
    assert finding.message == act_finding.message and finding.hint == act_finding.hint, finding.lines()
    assert finding.grad == "dw_gate" and "also wrong by the same mistake: dx" in finding.other_gradients, \
        finding.lines()


@pytest.mark.parametrize("style", sorted(SWIGLU_RIGHT_STYLES))
def test_right_swiglu_submissions_in_other_styles_pass(style, tmp_path):
    from npllama.exercises import check_file

    path = tmp_path / "swiglu_backward.py"
    path.write_text(SWIGLU_RIGHT_STYLES[style])
    report = check_file("swiglu", path, n_random=3)
    assert report.ok, report.format()


def test_a_mistake_named_in_another_gradient_reads_true_on_the_gradebooks_one_line(tmp_path):
    # the gradebook's diagnosis (and Report.summary) is one line with no numbers: "the numbers above
    # are ds's" pointed at nothing there
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    report = check_function(exercise, _tanh_slope_slip_and_first_row_ds, n_random=0)
    line = report.summary()
    assert line.startswith("gradient: ds: 3 of 3 entries are wrong, with no simple pattern (a mistake is also named, "
                           "in dw and dx, wrong on this case too: tanh' was taken as 1 - h --"), line
    assert "above" not in line, line
    assert "yours" in report.format() and "above" not in report.format(), report.format()


# ----- a named mistake that changes several gradients is said to change each of them ----------------
# a right attention backward but for one GQA fold back, done wrong for dk and dv alike
ATTENTION_GROUP_FOLDED = """import numpy as np


def attention_backward(dout, cache):
    q, k, v, attn_probs, scale, n_rep = cache
    B, H, T, hd = q.shape
    KVH, S = k.shape[1], k.shape[2]
    dout_g = dout.reshape(B, KVH, n_rep, T, hd)
    p_g = attn_probs.reshape(B, KVH, n_rep, T, S)
    dp = (dout_g @ v[:, :, None].swapaxes(-1, -2)).reshape(B, H, T, S)
    dv = FOLD(p_g.swapaxes(-1, -2) @ dout_g)
    ds = attn_probs * (dp - (dp * attn_probs).sum(-1, keepdims=True))
    ds_g = ds.reshape(B, KVH, n_rep, T, S)
    dq = (ds_g @ k[:, :, None]).reshape(B, H, T, hd) * scale
    dk = FOLD(ds_g.swapaxes(-1, -2) @ q.reshape(B, KVH, n_rep, T, hd)) * scale
    return dq, dk, dv
"""
SWIGLU_GRADIENTS_SWAPPED = """import numpy as np
from npllama.ops.linear import linear_backward
from npllama.ops.swiglu import swiglu_act_backward


def swiglu_backward(dout, cache):
    dact, dw_down = linear_backward(dout, cache.down_proj)
    dup, dgate = swiglu_act_backward(dact, cache.act)      # the slip: it returns (dgate, dup)
    dx_gate, dw_gate = linear_backward(dgate, cache.gate_proj)
    dx_up, dw_up = linear_backward(dup, cache.up_proj)
    return dx_gate + dx_up, dw_gate, dw_up, dw_down
"""
SEVERAL_GRADIENTS_ONE_MISTAKE = {
    # name: (exercise, source, the mistake's words, the gradients it changes, what the rest says)
    "group averaged": ("attention", ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.mean(axis=2, a="),
                       "dk and dv average the n_rep query heads of a group", ["dv", "dk"],
                       "(also wrong by the same mistake: dk; right: dq)"),
    "first head only": ("attention", ATTENTION_GROUP_FOLDED.replace("FOLD(", "(lambda g: g[:, :, 0])("),
                        "dk and dv take the gradient of only the first query head", ["dv", "dk"],
                        "(also wrong by the same mistake: dk; right: dq)"),
    "dgate and dup swapped": ("swiglu", SWIGLU_GRADIENTS_SWAPPED, "dgate and dup are swapped",
                              ["dw_gate", "dw_up", "dx"],
                              "(also wrong by the same mistake: dw_up, dx; right: dw_down -- every gradient "
                              "the backward reaches before dw_gate)"),
}


@pytest.mark.parametrize("name", sorted(SEVERAL_GRADIENTS_ONE_MISTAKE))
def test_a_mistake_that_changes_several_gradients_does_not_send_the_student_to_fix_one_first(name, tmp_path):
    # "dk and dv average ... (also wrong, further down the backward: dk -- ... may be wrong only because
    # of a slip there: fix dv first, then check again)": dk has the slip itself, fixing dv leaves it
    from npllama.exercises import check_file

    op, source, mistake, changed, rest = SEVERAL_GRADIENTS_ONE_MISTAKE[name]
    path = tmp_path / f"{op}_backward.py"
    path.write_text(source)
    finding = check_file(op, path, n_random=0).first_failure.finding
    assert finding.message.startswith(mistake), finding.lines()
    said = finding.what_is_wrong
    assert "first, then check again" not in said and "only because of a slip" not in said, said
    assert said.endswith(rest), said
    assert finding.named_gradients == changed, finding.named_gradients
    assert [finding.grad, *finding.wrong_gradients] == changed, finding.lines()    # each wrong here, too


def test_a_named_mistake_changes_exactly_the_gradients_its_knobs_change():
    # computed from the catalogue, not listed by hand: a mistake of dq alone changes dq alone
    from npllama.exercises.mistakes import name_mistake
    from npllama.exercises.catalogue import CATALOGUES

    missing_in_dq = _function(ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.sum(axis=2, a=")
                              .replace("* scale\n    dk", "\n    dk"), "attention_backward")
    found = name_mistake(CATALOGUES["attention"], get_exercise("attention"), missing_in_dq)
    assert "missing from dq" in found.message and found.changes == ["dq"], found


def test_the_gradebook_and_the_notebook_say_what_the_check_says(tmp_path):
    import csv
    import json

    from npllama.exercises import check_file
    from npllama.exercises.gradebook import grade_folder, write_gradebook

    source = ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.mean(axis=2, a=")
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "attention_backward.py").write_text(source)
    checked = check_file("attention", tmp_path / "class" / "attention_backward.py", n_random=0)
    line = checked.first_failure.diagnosis
    assert "(also wrong by the same mistake: dk; right: dq)" in line, line
    write_gradebook(grade_folder("attention", tmp_path / "class", n_random=0, workers=1), tmp_path / "book")
    with open(tmp_path / "book.csv", newline="") as table:
        assert [row["diagnosis"] for row in csv.DictReader(table)] == [line]
    book = json.loads((tmp_path / "book.json").read_text())
    rows = book if isinstance(book, list) else book["submissions"]
    assert [row["diagnosis"] for row in rows] == [line], rows
    # the notebook's check cell: check_function on the student's function, its report as Jupyter shows it
    in_notebook = check_function("attention", _function(source, "attention_backward"), n_random=0)
    assert f"what is wrong: {checked.first_failure.finding.what_is_wrong}" in in_notebook.format()
    assert in_notebook.first_failure.diagnosis == line


# ----- a mistake named in another gradient is said so even when the reported one is the only wrong one
GATED_AT_A_KINK = '''import numpy as np

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
    edge_cases = [dict(n=4, seed=1, kink=KINK)]

    def build(self, params, dtype=np.float64):
        rng = np.random.default_rng(params["seed"])
        x = rng.standard_normal(params["n"]).astype(dtype)
        x[np.abs(x) < 0.1] = 0.5
        x[-1] = -1.0                                     # a negative entry: relu's flat side
        if params.get("kink"):
            x[0] = 0.0                                   # relu's kink: finite differences cannot judge dx
        w = rng.uniform(0.5, 2.0, params["n"]).astype(dtype)
        return Case(self.forward, [x, w], ("x", "w"), (0, 1), seed=params["seed"])
'''


def _gated_exercise(tmp_path, kink):
    """GATED_AT_A_KINK with a teacher's catalogue probing one entry at the kink: relu'(0) taken as 1
    changes dx there and nothing else (dw is 0 at x = 0, whatever it multiplies)."""
    from npllama.exercises import load_exercises
    from npllama.exercises.mistakes import Mistake

    class GatedMistakes:
        probes = [dict(n=1, seed=4, kink=True)]
        ladder = []

        def variant(self, dout, case, slope_at_zero=0.0):
            x, w = case.inputs
            return dout * w * np.where(x == 0, slope_at_zero, x > 0), dout * np.maximum(x, 0)

        def mistakes(self):
            return [Mistake("relu'(0) was taken as 1", "relu' is 1 where x > 0 only", dict(slope_at_zero=1.0))]

    path = tmp_path / "gated.py"
    path.write_text(GATED_AT_A_KINK.replace("KINK", repr(kink)))
    exercise = load_exercises(path, verify=False)["gated"]
    exercise.catalogue = GatedMistakes()
    return exercise


def _gated_both_slips(dout, cache):     # x >= 0 for relu', and dw from x where relu(x) belongs
    x, w = cache
    return dout * w * (x >= 0), dout * x


@pytest.mark.parametrize("kink", [False, True])
def test_a_mistake_named_in_another_gradient_than_the_only_wrong_one_says_so(kink, tmp_path):
    # without a kink dw is the only wrong gradient (dx right: no x is 0): the note was left out, and
    # the report named relu'(0) under dw's numbers; at a kink it replaced "dx could not be decided"
    finding = check_function(_gated_exercise(tmp_path, kink), _gated_both_slips, n_random=0).first_failure.finding
    # dw's own numbers (gradient where relu(x) is 0: a mask) stay; the mistake named is said of dx
    assert finding.grad == "dw" and finding.message.endswith("received gradient; every other entry is right"), \
        finding.lines()
    assert finding.hint == ("a wrong mask: zero the gradient where the forward pass masked or ignored -- for the "
                            "mistake named: relu' is 1 where x > 0 only"), finding.hint
    said = finding.what_is_wrong
    # (dx is right on this case, or undecided at the kink: not "wrong on this case too")
    assert ("(a mistake is also named, in dx: relu'(0) was taken as 1 -- it fits your numbers on every probe case, "
            "where dw is right: fix it and check again, and if dw is still wrong, it has a slip of its own)") in said, \
        said
    assert ("(dx could not be decided by finite differences)" in said) == kink, said
    assert finding.wrong_gradients == [] and finding.named_gradients == ["dx"], finding
    assert finding.undecided_gradients == (["dx"] if kink else []), finding


# ----- two slips: a named mistake, and one in a gradient the mistake leaves right on every probe --------
# dk and dv averaged (the named mistake), and dq doubled on a path for one batch row and one kv head:
# no probe takes that path (they have B = 2 or KVH > 1), the first edge case does
ATTENTION_GROUP_AVERAGED_AND_DQ_SLIP = ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.mean(axis=2, a=").replace(
    "    return dq, dk, dv\n",
    "    if B == 1 and KVH == 1:         # one kv head: 'a shortcut' with a slip of its own\n"
    "        dq = 2 * dq\n"
    "    return dq, dk, dv\n")


def test_a_gradient_the_named_mistake_leaves_right_is_not_sent_to_fix_the_root_first(tmp_path):
    # "(also wrong by the same mistake: dk; also wrong, further down the backward: dq -- ... may be
    # wrong only because of a slip there: fix dv first)": the mistake named (in dv and dk) leaves dq
    # right on every probe, where it fits the student's numbers: fixing dv does not fix dq
    from npllama.exercises import check_file

    path = tmp_path / "attention_backward.py"
    path.write_text(ATTENTION_GROUP_AVERAGED_AND_DQ_SLIP)
    finding = check_file("attention", path, n_random=0).first_failure.finding
    assert finding.grad == "dv" and finding.message.startswith("dk and dv average"), finding.lines()
    assert finding.wrong_gradients == ["dq", "dk"] and finding.named_gradients == ["dv", "dk"], finding
    said = finding.what_is_wrong
    assert "fix dv first" not in said and "only because of a slip" not in said, said
    assert finding.other_gradients == (
        " (also wrong by the same mistake: dk; also wrong: dq -- the mistake named leaves dq right on every probe "
        "case, where it fits your numbers: fix the mistake and check again, and if dq is still wrong, it has a slip "
        "of its own)"), finding.other_gradients


def test_a_root_the_named_mistake_leaves_right_keeps_its_own_diagnosis(tmp_path):
    # dv doubled on that path, and the scale missing from dq and dk (named): dv's numbers are 2x
    # the right ones, and the report said "the scale ... is missing from dq and dk" under them
    from npllama.exercises import check_file

    source = (ATTENTION_GROUP_FOLDED.replace("FOLD(", "np.sum(axis=2, a=").replace(") * scale\n", ")\n")
              .replace("    return dq, dk, dv\n", "    if B == 1 and KVH == 1:\n        dv = 2 * dv\n"
                                                  "    return dq, dk, dv\n"))
    path = tmp_path / "attention_backward.py"
    path.write_text(source)
    finding = check_file("attention", path, n_random=0).first_failure.finding
    assert finding.grad == "dv" and finding.named_gradients == ["dq", "dk"], finding.lines()
    assert finding.message == "the error is exactly 2x: the gradient is twice the right one", finding.lines()
    said = finding.what_is_wrong
    assert ("(a mistake is also named, in dq and dk, wrong on this case too: the 1/sqrt(head_dim) scale of the scores "
            "is missing from dq and dk -- it fits your numbers on every probe case, where dv is right: fix it and "
            "check again, and if dv is still wrong, it has a slip of its own)") in said, said


def test_without_the_backwards_order_a_gradient_the_named_mistake_leaves_right_has_its_own_slip(tmp_path):
    # no order given: "which of them went wrong first cannot be told" does not fit a named mistake
    exercise = _tanh_exercise(tmp_path, "()")
    exercise.catalogue = _tanh_mistakes()
    line = check_function(exercise, _tanh_slope_slip_and_first_row_ds, n_random=0).summary()
    assert line == ("gradient: dx: tanh' was taken as 1 - h (also wrong by the same mistake: dw; also wrong: ds -- the "
                    "mistake named leaves ds right on every probe case, where it fits your numbers: fix the mistake "
                    "and check again, and if ds is still wrong, it has a slip of its own)"), line


# ----- a named mistake tried on the failing case too: said as the reported gradient's own only where it fits
def _tanh_slope_slip_and_first_row_dw(dout, cache):     # the catalogued slip, and dw of the first row only
    x, w, s, h = cache
    dpre = dout * s * (1 - h)
    return dpre @ w, dpre[:1].T @ x[:1], (dout * h).reshape(-1, s.shape[0]).sum(0)


def test_a_named_mistake_that_does_not_give_the_reported_gradient_on_this_case_is_hedged(tmp_path):
    # the probe (one row) shows tanh' taken as 1 - h in dw and dx; on this case (three rows) dw is
    # not that mistake's dw: the report put "tanh' was taken as 1 - h" in dw's place as its cause
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    finding = check_function(exercise, _tanh_slope_slip_and_first_row_dw, n_random=0).first_failure.finding
    assert finding.grad == "dw" and finding.named_fits_here is False, finding.lines()
    assert finding.message != "tanh' was taken as 1 - h", finding.lines()
    assert ("(a mistake is also named, in dw and dx, wrong on this case too: tanh' was taken as 1 - h -- it fits your "
            "numbers on every probe case, but your dw on this case is not what it gives: fix it and check again, and "
            "if dw is still wrong, it has a slip of its own") in finding.what_is_wrong, finding.what_is_wrong


def test_a_named_mistake_that_gives_the_reported_gradient_on_this_case_only_says_so(tmp_path):
    # one mistake (a teacher's) in dw and dx on the one-row probe, and in ds too with several rows:
    # on this case ds is the mistake's, and "if ds is still wrong, it has a slip of its own" misled
    from npllama.exercises.mistakes import Mistake

    catalogue = _tanh_mistakes()
    right_variant = catalogue.variant

    def variant(dout, case, slope="right"):
        dx, dw, ds = right_variant(dout, case, slope)
        if slope == "right":
            return dx, dw, ds
        x, w, s = case.inputs
        return dx, dw, (dout * np.tanh(x @ w.T))[0]        # ds from the first row only, with the slope

    catalogue.variant = variant
    catalogue.mistakes = lambda: [Mistake("tanh' was taken as 1 - h, and ds reads the first row only",
                                          "d tanh(z)/dz = 1 - tanh(z)^2; ds sums every row",
                                          dict(slope="one_minus_h"))]
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = catalogue
    finding = check_function(exercise, _tanh_slope_slip_and_first_row_ds, n_random=0).first_failure.finding
    assert finding.grad == "ds" and finding.named_gradients == ["dw", "dx"], finding.lines()
    assert finding.named_fits_here is True, finding
    said = finding.what_is_wrong
    assert ("-- it fits your numbers on every probe case, where ds is right, and on this case it gives your ds too: fix "
            "it and check again)") in said, said
    assert "slip of its own" not in said, said


def _tanh_slope_slip_and_first_row_dx(dout, cache):     # the catalogued slip, and dx of the first row only
    x, w, s, h = cache
    dpre = dout * s * (1 - h)
    dx = dpre @ w
    dx[1:] = 0
    return dx, dpre.T @ x, (dout * h).reshape(-1, s.shape[0]).sum(0)


def test_a_named_gradient_that_is_not_the_mistakes_on_this_case_is_not_said_wrong_by_it(tmp_path):
    # dw is the mistake's on the probe and on this case; dx is the mistake's on the one-row probe
    # only: the report said "also wrong by the same mistake: dx", and fixing the mistake leaves dx wrong
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    finding = check_function(exercise, _tanh_slope_slip_and_first_row_dx, n_random=0).first_failure.finding
    assert finding.grad == "dw" and finding.message == "tanh' was taken as 1 - h", finding.lines()
    assert finding.named_gradients == ["dw", "dx"] and finding.wrong_gradients == ["dx"], finding
    assert finding.other_gradients == (
        " (also wrong: dx -- the mistake named fits your dx on every probe case, but not on this case: fix the "
        "mistake and check again, and if dx is still wrong, it has a slip of its own; right: ds -- every gradient "
        "the backward reaches before dw)"), finding.other_gradients
    # with dx the mistake's here too, it is said wrong by it, as before
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.other_gradients.startswith(" (also wrong by the same mistake: dx; right: ds"), finding.other_gradients


def test_a_named_mistake_in_the_reported_gradient_only_is_not_said_wrong_on_this_case_too(tmp_path):
    # a mistake in dw alone (halved), and dw a quarter on cases of several rows: "a mistake is also
    # named, in dw, wrong on this case too" said "too" of the gradient the report is about
    from npllama.exercises.mistakes import Mistake

    class HalvedDw:
        probes = [dict(n=1, seed=4)]
        ladder = []

        def variant(self, dout, case, dw="right"):
            x, w, s = case.inputs
            h = np.tanh(x @ w.T)
            dpre = dout * s * (1 - h * h)
            return dpre @ w, dpre.T @ x * (0.5 if dw == "half" else 1), (dout * h).reshape(-1, s.shape[0]).sum(0)

        def mistakes(self):
            return [Mistake("dw was halved", "there is no 1/2 in dw", dict(dw="half"))]

    def halved_then_quartered(dout, cache):
        x, w, s, h = cache
        dpre = dout * s * (1 - h * h)
        return dpre @ w, dpre.T @ x * (0.5 if x.shape[0] == 1 else 0.25), (dout * h).reshape(-1, s.shape[0]).sum(0)

    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = HalvedDw()
    finding = check_function(exercise, halved_then_quartered, n_random=0).first_failure.finding
    assert finding.grad == "dw" and finding.named_gradients == ["dw"] and finding.named_fits_here is False, finding
    assert finding.other_gradients.startswith(
        " (a mistake is also named, in dw: dw was halved -- it fits your numbers on every probe case, but your dw on "
        "this case is not what it gives"), finding.other_gradients


def test_grading_stopped_while_the_mistake_is_tried_on_the_failing_case_leaves_no_half_named_mistake(tmp_path,
                                                                                                      monkeypatch):
    # the named mistake's gradients were recorded, then the try on the failing case stopped (it
    # once called the student's function in the sandbox, which can be killed for time): the report
    # said "also wrong by the same mistake: dx" of a mistake it never named
    from npllama.exercises import runner

    def stopped(*args, **kwargs):
        raise runner.GradingStopped("stopped for time")

    monkeypatch.setattr(runner, "fits_on_case", stopped)
    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()
    finding = check_function(exercise, _tanh_slope_slip, n_random=0).first_failure.finding
    assert finding.grad == "dw" and finding.message != "tanh' was taken as 1 - h", finding.lines()
    assert finding.named_gradients == [] and "same mistake" not in finding.what_is_wrong, finding.what_is_wrong


def test_the_named_mistake_is_tried_on_the_failing_case_without_calling_the_students_function_again(tmp_path,
                                                                                                     monkeypatch):
    # the gradient check has the student's gradients on the case it failed on: the try there reuses
    # them (a call more ran the student's code, and its prints, once more, in the sandbox too)
    from npllama.exercises import runner

    exercise = _tanh_exercise(tmp_path, '("s", "w", "x")')
    exercise.catalogue = _tanh_mistakes()

    def calls_made(fits):
        monkeypatch.setattr(runner, "fits_on_case", fits)
        calls = []

        def counted(dout, cache):
            calls.append(1)
            return _tanh_slope_slip_and_first_row_dx(dout, cache)

        finding = check_function(exercise, counted, n_random=0).first_failure.finding
        return len(calls), finding

    tried, finding = calls_made(runner.fits_on_case)
    assert finding.named_misfits == ["dx"], finding            # it was tried on the failing case
    not_tried, _ = calls_made(lambda *args: {})
    assert tried == not_tried, (tried, not_tried)
