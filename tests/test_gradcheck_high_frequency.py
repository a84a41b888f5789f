"""A function that varies on a scale near or below the checker's step (sum(sin(k x)) for large k):
no wrong backward may pass there, and no right one may FAIL.  Where a shorter step resolves f,
the wrong one FAILs; where none does, the honest verdict is UNRESOLVED."""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama import gradcheck
from npllama.gradcheck.constants import ROUNDOFF_FACTOR, UNIT_ROUNDOFF

PLANTS = {
    "scaled 0.9": lambda g: 0.9 * g,
    "scaled 1.1": lambda g: 1.1 * g,
    "all zero (a missing term)": lambda g: np.zeros_like(g),
    "largest entry's sign flipped": lambda g: np.where(np.abs(g) == np.max(np.abs(g)), -g, g),
}


def sin_k(k):
    return lambda v: float(np.sum(np.sin(k * v)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(k=st.floats(1e3, 1e5), shape=st.sampled_from([(3,), (5,), (2, 3), (3, 1), (4, 4)]),
       seed=st.integers(0, 2**16), plant=st.sampled_from(sorted(PLANTS)))
def test_a_wrong_backward_of_a_high_frequency_function_never_passes(k, shape, seed, plant):
    # sum(sin(k x)) with x ~ N(0, 1): the step eps * |x| is 1e-4 or so, k times it 0.1 to 10.
    # There the differences at h, 2h, 4h do not shrink like h^2, and their bound (|D(h) - D(2h)|)
    # was taken at its word: a gradient 10% off passed inside a bound of 0.48 of it, an all-zero
    # one inside 1.08 (k = 1e4, seed 14), and a longer step, aliased, looked smooth by chance
    x = np.random.default_rng(seed).standard_normal(shape)
    wrong = PLANTS[plant](k * np.cos(k * x))
    report = gradcheck(sin_k(k), [x], [wrong], seed=seed)
    assert report.inputs[0].status != "ok", str(report)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(k=st.floats(1e3, 1e5), shape=st.sampled_from([(3,), (5,), (2, 3), (3, 1), (4, 4)]),
       seed=st.integers(0, 2**16))
def test_a_right_backward_of_a_high_frequency_function_never_fails(k, shape, seed):
    # a step 100x longer than one where f is rough (k h ~ 300) can look smooth by chance (its
    # D(h), D(2h), D(4h) alias), and its estimate, far from k cos(k x), FAILed the right gradient
    x = np.random.default_rng(seed).standard_normal(shape)
    report = gradcheck(sin_k(k), [x], [k * np.cos(k * x)], seed=seed)
    assert report.inputs[0].status != "FAIL", str(report)


@pytest.mark.parametrize("k", [1e4, 3e4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shorter_step_resolves_sin_k_x_so_a_backward_10_percent_off_fails(k, seed):
    # k h ~ 1 at the step eps = 1e-4 (x ~ 1): 64 times shorter, f is smooth and its differences
    # resolve the gradient to 1e-4 of it, so the wrong backward is shown wrong, not passed (k = 3e4,
    # seed 0 passed at 0.63 of a bound of 0.48) nor left UNRESOLVED (k = 1e4, seed 1)
    x = np.random.default_rng(seed).standard_normal(4)
    right = k * np.cos(k * x)
    assert gradcheck(sin_k(k), [x], [right]).inputs[0].status == "ok"
    assert gradcheck(sin_k(k), [x], [0.9 * right]).inputs[0].status == "FAIL"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("plant", ["scaled 0.9", "all zero (a missing term)"])
def test_a_probe_left_unresolved_by_f_varying_within_the_step_says_so_not_round_off(seed, plant):
    # sum(sin(k x)) at k h ~ 1: a probe whose differences never shrank like h^2 was UNRESOLVED with
    # the note "|f|'s round-off swamps a tiny gradient ... accept them with atol=": the gradient
    # (1e4) is not tiny, f rounds as the model says, and atol would pass a wrong one.  The cause
    # measured is the step (too long for f's curvature), and a smaller eps resolves it
    k, x = 1e4, np.random.default_rng(seed).standard_normal(5)
    report = gradcheck(sin_k(k), [x], [PLANTS[plant](k * np.cos(k * x))], seed=seed)
    unresolved = [w for w in report.warnings if "UNRESOLVED" in w]
    for note in unresolved:
        assert "round-off swamps" not in note and "atol=" not in note, note
    if report.inputs[0].unresolved and not any("f itself is not resolved" in w for w in unresolved):
        assert any("smooth" in w and "smaller eps" in w for w in unresolved), report.warnings
    # (the advice holds: 1000 times shorter, the same wrong gradient FAILs outright)
    assert gradcheck(sin_k(k), [x], [PLANTS[plant](k * np.cos(k * x))], seed=seed, eps=1e-7).inputs[0].status == "FAIL"


@pytest.mark.parametrize("x", [[-0.97947417, -1.57349033, -2.92497057, -0.35323216, 1.24760637],
                               [[0.78354507], [-1.43087302], [-0.93654772]]])
def test_an_all_zero_gradient_of_sin_k_x_does_not_pass_on_a_rough_bound(x):
    # k = 1e5, k h ~ 10: no step up to 64x shorter made f smooth, and the rough bound left (0.6-0.9
    # of the differences) is relative to nothing (the analytic gradient is all zero): these two
    # passed (the sweep's draws 14 and 15).  Steps far shorter show f smooth, and the zero FAILs
    x = np.array(x)
    assert gradcheck(sin_k(1e5), [x], [np.zeros_like(x)]).inputs[0].status != "ok"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(k=st.sampled_from([3e5, 1e6, 3e6, 1e7]), shape=st.sampled_from([(3,), (5,), (2, 3), (3, 1), (4, 4)]),
       seed=st.integers(0, 2**16), plant=st.sampled_from(sorted(PLANTS) + ["right"]))
def test_f_varying_hundreds_of_times_within_the_step_fails_no_right_backward_and_passes_no_wrong_one(
        k, shape, seed, plant):
    # k h ~ 30 to 3000 at the step eps = 1e-4 (x ~ N(0, 1)): the differences at every step from
    # h/64 to 64h alias, and a right backward FAILed in 56 of 80 draws (k >= 1e6 nearly always):
    # rough past 64x shorter was read as rounding and longer steps, aliased, were kept, or an
    # estimate smooth at h by chance was taken at its bound.  A step short enough (k h' << 1)
    # resolves f; the verdict is taken there
    x = np.random.default_rng(seed).standard_normal(shape)
    right = k * np.cos(k * x)
    report = gradcheck(sin_k(k), [x], [right if plant == "right" else PLANTS[plant](right)], seed=seed)
    if plant == "right":
        assert report.inputs[0].status != "FAIL", str(report)
    else:
        assert report.inputs[0].status != "ok", str(report)


@pytest.mark.parametrize("k", [1e6, 1e7])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_step_short_enough_resolves_sin_k_x_far_above_the_steps_reach(k, seed):
    # k h ~ 100 and 1000: 1e4 and 1e5 times shorter f is smooth (differences shrinking like h^2 at
    # two steps in a row) and round-off still small, so the right gradient passes and one 10% off
    # FAILs -- neither is left UNRESOLVED (both were FAIL at k = 1e7)
    x = np.random.default_rng(seed).standard_normal(5)
    right = k * np.cos(k * x)
    assert gradcheck(sin_k(k), [x], [right], seed=seed).inputs[0].status == "ok"
    assert gradcheck(sin_k(k), [x], [0.9 * right], seed=seed).inputs[0].status == "FAIL"


def _one_entry_probe(f, x0):
    """(evaluate, move, calls) for f of one scalar at x0, as a probe moves it: move(t) puts it t
    away (None: back) and returns the real distance; evaluate() gives (f, |f|)."""
    x, calls = [x0], []

    def move(t):
        x[0] = x0 if t is None else x0 + t
        return x[0] - x0

    def evaluate():
        calls.append(x[0])
        value = f(x[0])
        return value, abs(value)

    return evaluate, move, calls


def test_shorter_steps_stop_once_their_round_off_reaches_the_rough_differences():
    # Differences shrinking like h^2 (truncation) must stand above the round-off, which grows like
    # 1/h as the step shrinks: once it reaches the rough differences no shorter step can show
    # truncation below them, and looking on (up to 7 steps, 42 calls) only pays.  f = 1e3 + x^2
    # has exact central differences (no truncation to show at any step; straight at each: no kink asked)
    derivative = importlib.import_module("npllama.gradcheck.derivative")
    evaluate, move, calls = _one_entry_probe(lambda v: 1e3 + v * v, 0.5)
    h = 1e-4
    roundoff_at_a_quarter = 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * (1e3 + 0.25) / (2 * h / 4)
    for rough_difference, steps_taken in ((2 * roundoff_at_a_quarter, 1), (1e3 * roundoff_at_a_quarter, 5), (np.inf, 7)):
        calls.clear()
        rough = derivative._Estimate(1.0, rough_difference, 0.0, False, True, h, rough_difference)
        assert derivative._smooth_at_shorter_steps(evaluate, move, rough, None, 0.0, kinks=False) is None
        # each step: D(h'), D(2h'), D(4h'), two evaluations each.  The round-off at h/4, h/16, h/64,
        # h/1024, h/16384 is 1, 4, 16, 256, 4096 times roundoff_at_a_quarter: twice it reaches 1e3 of
        # it at the 5th step (all 7 were taken before the stop: 42 calls)
        assert len(calls) == 6 * steps_taken, (rough_difference, len(calls))
    # (the most it takes, which the package docstring states as the far shorter steps' cost)
    assert "up to 42 for far" in importlib.import_module("npllama.gradcheck").__doc__


def test_a_relu_kink_within_the_step_is_passed_at_the_first_shorter_step_where_f_is_straight():
    # relu(x) at x = 1.5h: D(h) is exact, D(2h) and D(4h) span the kink (rough).  At h/4 f is
    # straight and its slope is the gradient: that estimate is taken there (6 calls), not after all
    # 7 shorter steps and the loose-bound shortening (_shortened) that reach the same verdict later
    derivative = importlib.import_module("npllama.gradcheck.derivative")
    h = 1e-4
    evaluate, move, calls = _one_entry_probe(lambda v: max(v, 0.0), 1.5 * h)
    rough = derivative._derivative(evaluate, move, h, None, 0.0, test_smoothness=True)
    assert rough.rough and rough.difference > rough.stair, rough
    calls.clear()
    shorter = derivative._smooth_at_shorter_steps(evaluate, move, rough, None, 0.0)
    assert shorter is not None and shorter.value == pytest.approx(1.0, abs=1e-9) and shorter.step == h / 4, shorter
    assert len(calls) == 6


# each spoil of the rule below: which of its three estimates it changes, and how
SPOILS = {"shorter rough": ("shorter", dict(rough=True)),
          "shorter within its round-off": ("shorter", dict(roundoff=1e-6)),
          "shorter above the rough": ("rough", dict(difference=1e-7)),
          "longer rough": ("longer", dict(rough=True)),
          "shrank far less than h^2": ("longer", dict(difference=16e-6)),
          "shrank far more than h^2": ("longer", dict(difference=4096e-6))}


@pytest.mark.parametrize("spoil", [None, *SPOILS])
def test_two_smooth_steps_in_a_row_show_truncation_only_when_each_part_of_the_rule_holds(spoil):
    # the rule _smooth_at_shorter_steps takes an estimate by (f varying within the step, smooth at
    # shorter ones): the shorter of two steps 16x apart is smooth, its differences above its
    # round-off and below the rough ones (_truncation_shows), and they shrank 256-fold from the
    # longer step's, itself smooth (_shrank_like_h2).  Each part alone was changed in the code
    # without any other test noticing; a part that fails must fail the rule
    derivative = importlib.import_module("npllama.gradcheck.derivative")
    estimate = lambda step, difference, roundoff=1e-12, rough=False: derivative._Estimate(
        1.0, difference + roundoff, roundoff, False, rough, step, difference)
    rough = estimate(1e-4, 1.0, rough=True)
    longer, shorter = estimate(1e-6, 256e-6), estimate(1e-6 / 16, 1e-6)
    estimates = {"rough": rough, "longer": longer, "shorter": shorter}
    if spoil is not None:
        which, change = SPOILS[spoil]
        estimates[which] = estimates[which]._replace(**change)
    rough, longer, shorter = estimates["rough"], estimates["longer"], estimates["shorter"]
    shows = derivative._truncation_shows(shorter, rough) and derivative._shrank_like_h2(shorter, longer)
    assert shows == (spoil is None)


@pytest.mark.parametrize("k", [1e6, 1e7])
def test_a_failure_judged_at_far_shorter_steps_is_confirmed_so_later_ones_are_not_measured_again(k):
    # a backward 10% off, where f varies hundreds of times within the step: each failing probe is
    # measured again and judged where far shorter steps show f smooth (judged_far_shorter).  A FAIL
    # found there counts towards CONFIRMED_FAILURES like any other: without that, most of these 24
    # probes paid the re-measurement (1432 calls where 532 did at k = 1e6; 1646 for 583 at 1e7)
    confirmed = importlib.import_module("npllama.gradcheck.checker").CONFIRMED_FAILURES
    x = np.random.default_rng(1).standard_normal(24)
    report = gradcheck(sin_k(k), [x], [0.9 * k * np.cos(k * x)], seed=1)
    entry = report.inputs[0]
    assert entry.status == "FAIL", str(report)
    not_again = [note for note in entry.notes if "not measured again" in note]
    assert not_again and not_again[0].startswith(f"{24 - confirmed} failing probe(s)"), entry.notes


@pytest.mark.parametrize("k", [1e6, 1e7])
def test_a_fail_where_far_shorter_steps_show_f_smooth_does_not_blame_a_kink_or_rounding(k):
    # a backward 10% off, f varying hundreds of times within the step: the probes measured again are
    # judged where far shorter steps show f smooth, and the FAIL stands on them.  The probes not
    # measured again stay rough at the step eps, and the note that "f did not behave like a smooth
    # function ... a kink ... or rounding inside f ... makes finite differences unreliable" was given
    # for them: f has neither, it varies within the step, as the shorter steps showed
    x = np.random.default_rng(2).standard_normal(24)
    entry = gradcheck(sin_k(k), [x], [0.9 * k * np.cos(k * x)], seed=2).inputs[0]
    assert entry.status == "FAIL", entry
    assert any("not measured again" in note for note in entry.notes), entry.notes   # rough probes are left
    assert not any("did not behave like a smooth function" in note for note in entry.notes), entry.notes
