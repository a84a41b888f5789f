"""The numeric derivative along one probe and the bound on its error: D(t) at h, 2h (and 4h),
Richardson's extrapolation where it helps (_derivative), longer steps while f's round-off swamps
the difference (_resolved_derivative; first, for a rough estimate, shorter ones that show whether f
varies within the step or rounds: _smooth_at_shorter_steps), shorter ones while truncation does
(_shortened), and a
function that raises outside its domain (_LeftDomain).  The probes (checker.py) call these; a
probe that still fails is measured again (remeasure.py)."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .constants import LOOSE_BOUND, OWN_SIZE_STEP, ROUNDOFF_FACTOR, TINY, UNIT_ROUNDOFF, UNRESOLVED

# A probe whose bound is above LOOSE_BOUND of its gradient's size is tried again with longer
# steps (up to MAX_GROWTHS times, each at least STEP_GROWTH times longer): the round-off of f
# shrinks with a longer step.
STEP_GROWTH = 100.0
MAX_GROWTHS = 6
MAX_JUMP = 1e4
# A failing probe whose bound is mostly truncation is taken again at steps SHORTEN times shorter,
# up to MAX_SHORTENINGS times (_shortened)
SHORTEN = 4.0
MAX_SHORTENINGS = 3
# A rough estimate (its differences at h, 2h, 4h did not shrink like h^2) looks for f's shape at
# steps SHORTEN times shorter, MAX_SHORTENINGS times, then FAR_SHORTEN times shorter, up to
# MAX_FAR_SHORTENINGS times more (_smooth_at_shorter_steps): 64 * 16^4 ~ 4e6 times shorter, where
# sum(sin(k x)) at k = 1e7, stepped by 1e-4 * |x| ~ 2.5e-4 (k h ~ 2500), is smooth (k h ~ 6e-4)
FAR_SHORTEN = 16.0
MAX_FAR_SHORTENINGS = 4
# ... and one whose differences do not shrink like h^2 (rough), ROUGH_SHORTEN times shorter, up to
# MAX_ROUGH_SHORTENINGS times while it stays rough, but not below eps times the input's spread
# (_spread, _shortened): from the step eps * 1e6 = 100 of a layer norm of 1e6 + noise to eps * 1, on the
# scale of the spread it bends over
ROUGH_SHORTEN = 16.0
MAX_ROUGH_SHORTENINGS = 6
# Richardson's R(h) = (4 D(h) - D(2h)) / 3 carries up to (4 + 1/2) / 3 = 1.5 times D(h)'s round-off
# (D(2h)'s is half of D(h)'s): an estimate's round-off is this times D's where it is R(h)
RICHARDSON_ROUNDOFF = 1.5


class _Estimate(NamedTuple):
    """A numeric derivative along one probe and what is known about its error."""
    value: float
    bound: float          # estimated |value - true derivative| (truncation + round-off)
    roundoff: float       # the round-off part of the bound
    richardson: bool      # value is a Richardson extrapolation
    rough: bool           # the differences at h, 2h, 4h did not shrink like h^2: f not smooth there
    step: float = 0.0     # the step h it was taken at (in the probe's units)
    difference: float = 0.0  # |D(h) - D(2h)|: 3x the truncation error of D(h)
    kink: bool = False    # failing, with a kink at the point itself (no step can check it)
    unsteady: bool = False   # failing, but f's rounding or its differences at other steps show it
                             # is not resolved here, and the analytic value is within that: UNRESOLVED
    between: tuple = ()      # failing at a kink at the point, the analytic value between f's one-sided
                             # slopes (left, right) there: a subgradient, UNRESOLVED (_kink_checked)
    flat: bool = False       # unsteady because f kept to a straight line (one value, or a slope
                             # not the analytic value) at every step of the ladder, and farther
                             # out moves off it in stairs of its rounding (_stair_beyond)
    unconfirmed: bool = False  # failing, but not measured again: the input already had its
                               # CONFIRMED_FAILURES failures confirmed (checker.py), so it FAILs anyway
    stair: float = 0.0       # how far one stair of f's rounding (_stair_rounding) moves D(h)
    smooth_shorter: bool = False  # taken at a step far shorter than one where f's differences were rough
                                  # or strayed, their h^2 shrinking showing f smooth there: f varies within
                                  # the longer step (_smooth_at_shorter_steps; _shortened towards the spread)
    even: tuple = ()         # (f(x+h) + f(x-h), f(x+2h) + f(x-2h), the larger |f| of those): f's even
                             # part at the step h, which a passing probe is screened with for a kink
                             # at the point at no further call (_kink_checked)
    set_aside: bool = False  # a longer step's estimate of nothing but round-off, the analytic value beyond
                             # its bound, was set aside for this one, which passes it (_resolved_derivative):
                             # UNRESOLVED, whatever this one's bound, which longer steps were sought to tighten


def _longer_step_kept(attempt: _Estimate, best: _Estimate) -> bool:
    """Whether an estimate at a longer step replaces the best so far (_resolved_derivative,
    _retaken_over_rounding): f behaves smoothly there, its bound is smaller, and it agrees with the
    shorter step's within both bounds -- far from the point f need not behave as near it."""
    return (not attempt.rough and attempt.bound < best.bound
            and abs(attempt.value - best.value) <= attempt.bound + best.bound)


def _nothing_but_roundoff(attempt: _Estimate) -> bool:
    """Whether a longer step's estimate shows nothing of f but round-off: its differences within it
    (so no h^2 shrinking shows f smooth over the step) and its value within its bound of 0.  Such an
    estimate shows neither f's slope nor that f is smooth over so long a step, where f's variation may
    average away: it does not replace a shorter step's value beyond its bound, and it is returned only
    once a longer step still shows a slope (_resolved_derivative).
    1e11 + 3e-4 sum(sin(b)) at b = 0.8 (gradient 2.1e-4, D(h) 1.9e-4 within the bound 5e-4 at the
    step 1) was taken at the step 4250, 2e-8 within 1e-7, and FAILed the right gradient; at b = 3.2
    (gradient -3e-4), where f does not change at the step eps (0 +- 1.1), at the step 1 (3.2
    radians), 7e-6 +- 1.2e-4, and at 741, 1.3e-7 +- 2.7e-7: it FAILed too.  A straight f keeps its
    slope at the longer steps: 1e11 + 2e-4 sum(b), 2e-4 +- 1.2e-4 at the step 1, 2e-4 +- 1.2e-6 at 100.
    (Not where the analytic gradient is all zero: there the steps grow to an absolute 1 through
    estimates that each resolve nothing, to show any slope f has; see _resolved_derivative.)
    Beyond the input's own size (the step 1) the window may span many of f's bends, and what their
    average leaves over it, divided by the step, looks like a slope of the size of the round-off:
    1e8 + 1e-6 sum(sin(b)) at b = -2.798 (no step resolves it) gave -8e-10 +- 5.2e-10 at the step
    404 (1100 radians), and its right gradient -9.4e-7 FAILed.  There a value shows a slope only as
    a probe's value is resolved at all, its bound no more than UNRESOLVED of it; a straight f's
    stands far out of its bound once the steps have grown to resolve it."""
    if not attempt.difference <= 2 * attempt.roundoff:
        return False
    return abs(attempt.value) * (UNRESOLVED if attempt.step > OWN_SIZE_STEP else 1.0) <= attempt.bound


def _contradicted(shorter: _Estimate, longer: _Estimate) -> bool:
    """Whether the value of a shorter step's estimate stands off a longer step's (one showing nothing
    but round-off: _nothing_but_roundoff) by more than that one's bound plus the rounding of the
    shorter step's own two values of f to the nearest float (u/2 |f| each: its round-off without
    the model's safety factor ROUNDOFF_FACTOR), which no evaluation of f escapes.  Closer than that,
    the shorter value is no slope of f to defend.  sum(cos(x)) at x ~ 1e-7: at the step eps one
    entry's two values of f = 12 came out one ulp apart, D(h) = -4.8e-5 (bound 2.3e-3), and the
    step 1's -1.82e-7 +- 2.3e-7, the right gradient -1.85e-7 within it, was taken to contradict it:
    the longer steps stopped there, where at 2500 they resolve it to 1e-10, and it was UNRESOLVED."""
    bare_rounding = shorter.roundoff / (2 * ROUNDOFF_FACTOR)
    return abs(shorter.value - longer.value) > longer.bound + bare_rounding


def _unmoved_over_own_size(attempt: _Estimate, evaluate, move) -> bool:
    """Whether f did not move at all (D(h) and D(2h) exactly 0) at a step no longer than the input's
    own size (a step of 1: each entry moves by its scale).  That shows f flat along the probe, as
    it is where f ignores the input (a masked position, an ignore-index target, a stop-gradient),
    not a variation averaged away: that needs a step of about its period, and a function varying
    on a scale shorter than the input's own is another case (_smooth_at_shorter_steps).  An input
    f ignores, x ~ 1e-2 beside a loss of 1: its wrong gradient 6.5e-9 (0 +- 2.3e-8 at the step eps)
    is resolved at the step 0.7, 0 +- 3e-12, where f did not change by one bit.
    A period can still fit the step: where the step is half of it, the two points of each difference
    (2h, 4h, 8h apart) are whole periods apart and f is the same at both, so D(h), D(2h), D(4h) are
    0 (1e4 + 3.6e-11 sin(b) at b = 3.140625, stepped by pi: its right gradient FAILed on 0 +- 1e-11).
    So f must not move at a third of the step either, whose two points are no whole number of such
    periods apart (two evaluations more, only here)."""
    if not (attempt.value == 0 and attempt.difference == 0 and attempt.step <= OWN_SIZE_STEP):
        return False
    with np.errstate(all="ignore"):
        return _central(evaluate, move, attempt.step / 3)[0] == 0


def _smooth_at_shorter_steps(evaluate, move, rough, richardson, good_enough, kinks=True,
                             seen=None) -> _Estimate | None:
    """What made a rough estimate's differences (D(h), D(2h), D(4h) not shrinking like h^2), as
    steps SHORTEN times shorter show it, MAX_SHORTENINGS times, then FAR_SHORTEN times shorter, up
    to MAX_FAR_SHORTENINGS times more.  f varying within the step is smooth at a shorter one, and
    that estimate is returned: sum(sin(k x)) at k h ~ 1 to 3000, whose differences there shrink
    like h^2 (_truncation_shows) at two steps in a row -- at one step D(h), D(2h), D(4h) can do so
    by chance, aliased (k h ~ 250: 4823 where the gradient is 4.6e6) or rounded -- or (kinks) a
    relu with its kink within the step, straight at a shorter one (_straight_inside_a_kink).
    f rounding beyond the model (a cancellation: 1 + tanh(z) at z << 0 in a GELU's far left tail,
    sqrt(x^2 + 1) - 1 at x ~ 1e-5) is not: its differences grow like 1 / h as the step shrinks,
    or vanish within one of its stairs; None then, and longer steps resolve it
    (_resolved_derivative).  None too once the round-off at the shorter step is as large as the
    rough differences: truncation cannot show below them there, nor at shorter steps, where the
    round-off grows.  Up to 6 * (MAX_SHORTENINGS + MAX_FAR_SHORTENINGS) evaluations, by a rough
    probe only.  seen: a list each shorter step's estimate is appended to, for the caller to judge."""
    step, candidate = rough.step, None      # candidate: the estimate at the step before
    for shortening in range(MAX_SHORTENINGS + MAX_FAR_SHORTENINGS):
        step /= SHORTEN if shortening < MAX_SHORTENINGS else FAR_SHORTEN
        try:
            with np.errstate(all="ignore"):
                shorter = _derivative(evaluate, move, step, richardson, good_enough, test_smoothness=True)
        except _LeftDomain:
            return None
        if seen is not None:
            seen.append(shorter)
        # a kink is passed within MAX_SHORTENINGS; straight at a step far shorter, f may be keeping
        # to one stair of its rounding ((x + 1e8) - 1e8 at steps below its stairs of 1.5e-8: D = 0)
        if kinks and shortening < MAX_SHORTENINGS and _straight_inside_a_kink(shorter, rough):
            return shorter
        # the longer step of the two, its truncation confirmed by the shorter: less of f's rounding
        if candidate is not None and _truncation_shows(shorter, rough) and _shrank_like_h2(shorter, candidate):
            return candidate._replace(smooth_shorter=True)
        candidate = shorter
        if not 2 * shorter.roundoff < rough.difference:
            return None
    return None


def _truncation_shows(shorter: _Estimate, rough: _Estimate) -> bool:
    """Whether an estimate at a shorter step shows f's truncation: it is smooth, its differences
    standing above its round-off (shrinking like h^2, as a smooth f's do) and below the rough ones'."""
    return not shorter.rough and 2 * shorter.roundoff < shorter.difference < rough.difference


def _shrank_like_h2(shorter: _Estimate, longer: _Estimate) -> bool:
    """Whether the differences of an estimate that shows truncation (_truncation_shows: smooth,
    above its round-off) shrank like the truncation's h^2 from those of a smooth one at a step r
    times longer (r^2-fold, within the factor 1.6 _derivative allows D(h) - D(2h) against
    D(2h) - D(4h)): f's rounding, which grows as the step shrinks, makes two smooth-looking
    estimates in a row by chance (sum(sin(k x)) at k = 1e7, whose k x rounds by 2e-9 -- far above
    u |f| -- at steps 1e-9 to 6e-11) but not that."""
    r2 = (longer.step / shorter.step) ** 2
    return not longer.rough and r2 / 1.6 <= longer.difference / shorter.difference <= 1.6 * r2


def _straight_inside_a_kink(shorter: _Estimate, rough: _Estimate) -> bool:
    """Whether f is straight at a shorter step (its differences within round-off) and bends within
    the rough one's by more than a stair of its rounding could: a kink there.  Within a stair f
    is straight too: a GELU's 0.5 x (1 + tanh(z)) keeps 1 + tanh(z) over a few steps, then jumps
    an ulp of 1 (x ~ -6.9: D(h) 6.7e-16, straight at shorter steps, where the gradient is -5.4e-14;
    D(2h) one stair, ~4e-16 over the step, off)."""
    return (not shorter.rough and not shorter.difference > 2 * shorter.roundoff
            and rough.difference > rough.stair)


def _resolved_derivative(evaluate, move, eps, richardson, good_enough, reference, noise, unit_step,
                         shorter_steps=True, *, claimed):
    """_derivative at the step eps, and, while its bound is loose next to the gradient's size
    (reference), again at longer steps: f's round-off in a difference shrinks as 1/step.  The step
    grows STEP_GROWTH-fold, or (at most MAX_JUMP-fold) towards where the round-off would be small.
    A longer step's estimate is kept only if its bound is smaller, it agrees with the shorter
    step's within both bounds, and its differences at h, 2h, 4h still shrink like h^2: far from
    the point a function need not behave as near it, and there the bound would mean nothing; nor,
    with a gradient to measure against, one that shows nothing but round-off and contradicts the
    shorter step's value (_nothing_but_roundoff).  Such an estimate that does not contradict it is
    returned only if a longer step after it shows a slope, or the analytic value along the probe
    (claimed) lies within its bound; else the last estimate that showed more than round-off is, its
    bound as loose as it was, and where that passes the analytic value it is marked set_aside
    (UNRESOLVED: neither a FAIL on a step where f may have averaged away, nor an ok on a bound the
    longer steps were sought to tighten).  f not moving at all within the input's own size counts
    as showing f (_unmoved_over_own_size): a masked input's wrong gradient FAILs there.  With
    no gradient to measure against (reference 0: analytic zero over the whole input), the step
    grows at most to an absolute 1 (unit_step, in steps), enough to show a gradient that is not zero.
    No bound below the analytic gradient's own round-off (noise) is sought.  shorter_steps: whether
    a rough estimate may look for f's shape at shorter steps (_smooth_at_shorter_steps): not once
    the input's FAIL is confirmed (checker.py), as in _shortened.
    Returns (estimate, whether a longer step was kept)."""
    def holds_claim(estimate):      # the analytic value within its bound (plus the value's round-off)
        return abs(claimed - estimate.value) <= estimate.bound + noise

    best, step, longer = _derivative(evaluate, move, eps, richardson, good_enough), eps, False
    shown = best     # the step eps's estimate, or the longest after it that showed more than round-off
    # No longer steps from a rough estimate (its differences at h, 2h, 4h did not shrink like h^2)
    # where shorter steps show f varying within the step (_smooth_at_shorter_steps): at a step 100x
    # longer its differences only alias.  sum(sin(k x)) at k h ~ 1 (D(h) -84, bound 169) was taken
    # at k h ~ 100, where D(h), D(2h), D(4h) happened to shrink like h^2, and its estimate 0.57,
    # agreeing with -84 within that bound, FAILed the right gradient, -4109.  Where they show f
    # rounding instead, longer steps resolve it: a GELU's far left tail, rough at eps (-2.4e-13,
    # bound 1.2e-13), is smooth at a step 100x longer (-3.74e-13 of -3.81e-13)
    if best.rough and shorter_steps:
        shorter = _smooth_at_shorter_steps(evaluate, move, best, richardson, good_enough)
        if shorter is not None:
            return shorter, False
    for _ in range(MAX_GROWTHS):
        if reference > 0:
            # (an estimate of nothing but round-off the analytic value lies beyond decides nothing: the
            # steps grow on, for a longer one to show the slope -- a straight f's with a claim far off it)
            if best.bound <= max(LOOSE_BOUND * reference, noise) and (
                    best is shown or holds_claim(best)):
                break
            growth = STEP_GROWTH
            if not best.roundoff <= best.bound - best.roundoff:     # round-off dominates: move past it
                growth = min(max(growth, best.roundoff / (0.5 * LOOSE_BOUND * reference)), MAX_JUMP)
        else:
            if step >= unit_step or best.bound <= noise:
                break
            growth = min(STEP_GROWTH, unit_step / step)
        step *= growth
        if not np.isfinite(step):
            break
        try:
            with np.errstate(all="ignore"):
                attempt = _derivative(evaluate, move, step, richardson, good_enough, test_smoothness=True)
        except _LeftDomain:                     # the longer step left f's domain
            break
        if not np.isfinite(best.bound):         # the shorter step resolved nothing (it vanished in rounding)
            best = shown = attempt
            longer = True
            continue
        shows_nothing = (reference > 0 and _nothing_but_roundoff(attempt)
                         and not _unmoved_over_own_size(attempt, evaluate, move))
        if not _longer_step_kept(attempt, best) or (shows_nothing and _contradicted(best, attempt)):
            break
        best = attempt
        if not shows_nothing:
            shown, longer = best, True
    # the longest step's estimate, though it shows nothing but round-off, where the analytic value
    # (claimed) is within its bound: a gradient far below the check's others (sum(cos(x)) at an
    # entry ~ 4e-12 of x ~ 1e-10, -4.2e-12 +- 6e-12 at the step 1e8) is resolved next to them.
    # Else the shorter estimate, set aside where it passes the analytic value: f = 1e12 + sum(v[:-1])
    # with 1e-3 claimed for the entry f ignores passed as ok on 0 +- 3e-3 at the step 1
    # (the analytic value's own round-off, noise, in both bounds, as the checker adds it: a zero
    # made of round-off, 2.2e-16 for sum(x - mean(x)), passes where a longer step resolves 0 below it)
    if best is not shown:
        if holds_claim(best):
            return best, True
        return shown._replace(set_aside=holds_claim(shown)), longer
    return shown, longer


def _shortened(evaluate, move, estimate, richardson, good_enough, shortest_rough=0.0) -> _Estimate:
    """A failing probe, or one passing on a loose bound (which a mistake could hide in), whose bound is
    mostly truncation (f bends within a few steps: an input far from zero whose entries differ by
    little, x = 1e3 + noise, is stepped by eps * 1e3; at 1e4 + noise a wrong entry passed inside the
    15% bounds of the step 1), taken again at steps SHORTEN times shorter: truncation falls like h^2
    (h^4 for Richardson), round-off grows only like 1/h.  A shorter estimate is kept while its bound
    is smaller and its differences shrink like h^2.  Unlike a longer step's (_resolved_derivative),
    it need not agree with the estimate it replaces within that one's bound: that bound failing to
    hold where f bends within a few steps is why it is taken, and nearer the point f only looks more
    like its Taylor series.  Like the re-measurement, only until a few failures are confirmed in the
    input (which then FAILs whatever its other probes show): a wrong backward's probes all fail, and
    would each pay 18 calls more (the callers look at probes.remeasure_failures).
    A rough estimate (its differences at h, 2h, 4h did not shrink like h^2) is taken again at steps
    ROUGH_SHORTEN times shorter, on past rough ones, down to shortest_rough: the step eps makes
    relative to the spread of the entries in a line with the probed one (_spread), not to their
    size.  An input far from zero whose entries differ by little (a layer norm of 1e6 + noise,
    stepped by eps * 1e6 = 100: its output saturates within the step, and D(h) is 1/300 of the
    derivative) is smooth only on the scale of the spread; elsewhere (spread ~ size) this adds nothing, so a rough estimate made
    by f's rounding (exp(x) - 1 at tiny x) is not replaced by one that looks smooth by chance at a
    step far shorter, where the rounding is larger still."""
    best = estimate
    step, rough_left = estimate.step, MAX_ROUGH_SHORTENINGS
    for _ in range(MAX_SHORTENINGS + MAX_ROUGH_SHORTENINGS):
        # (a rough estimate too: differences that do not shrink like h^2 at h, 2h, 4h may be f
        # bending within those steps, smooth at shorter ones)
        if not best.bound - best.roundoff > best.roundoff:    # round-off dominates: no gain
            break
        # f rough at the step: it may vary on a scale far shorter (a layer norm of 1e6 + noise is
        # stepped by 100 and bends over 1), so the steps shrink faster, past rough ones
        # (an input without spread, all its entries equal, has no such scale)
        rough_level = best.rough and 0 < shortest_rough < step
        step = max(step / ROUGH_SHORTEN, shortest_rough) if rough_level else step / SHORTEN
        try:
            with np.errstate(all="ignore"):
                attempt = _derivative(evaluate, move, step, richardson, good_enough, test_smoothness=True)
        except _LeftDomain:
            break
        if attempt.rough and rough_level and shortest_rough < step and rough_left > 1:
            rough_left -= 1       # still rough: shorter yet (the rough estimate stands meanwhile)
            continue
        # a rough estimate's bound means little (its differences did not shrink like h^2): a smooth
        # one at a step shortened towards the spread replaces it
        if attempt.rough or not (attempt.bound < best.bound or rough_level):
            break
        # (a smooth estimate replacing a rough one, or one taken at far shorter steps, is still that)
        best = attempt._replace(smooth_shorter=best.smooth_shorter or best.rough)
    return best


class _LeftDomain(ValueError):
    """fn raised a domain error (math.sqrt of a negative, a division by zero, ...) at a point a probe
    moved to: a ValueError, so that a longer step that leaves f's domain is simply not kept."""

    def __init__(self, error: Exception, steps: float):
        super().__init__(f"{type(error).__name__}: {error}")
        self.steps = steps


def _evaluate_within_domain(evaluate, steps: float):
    """evaluate() at a point `steps` (in the probe's units) away; fn's domain errors as _LeftDomain,
    the one name every probe catches for them."""
    try:
        return evaluate()
    except (ArithmeticError, ValueError) as error:
        raise _LeftDomain(error, steps) from error


def _left_domain_error(error: _LeftDomain, name: str, where: str, eps: float) -> ValueError:
    """What the user is told when even the probe at the point's own steps left f's domain."""
    return ValueError(
        f"fn raised {error} when {where} of input {name!r} was moved {error.steps / eps:+g} steps from the point "
        f"(a step is eps={eps:g} of the input's scale): the central differences evaluate fn up to 4 steps on "
        f"either side of it.  Check at a point farther from the edge of fn's domain, or give a smaller eps")


def _stair_rounding(f0, stair, inputs=0.0) -> float:
    """The highest stair that is a rounding of f (a few units in the last place of f, or of the 1 a
    cancellation inside f works against: 1 + exp(s) is 1 + 2.2e-16 at its stair), by a stair `stair`
    high from f0; inputs: the largest |x_i| of the probed input, where f may cancel them against each
    other (a stable cross-entropy's (lse + top) - v[target]: lse, tiny, is added to top = v[target] and
    rounds to units in its last place), so its stairs are units in their last place -- a height
    only; that a stair is such units, not a quantiser's step as high, is _units_in_last_place's test."""
    return ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(1.0, abs(f0), abs(f0) + stair, inputs)


# A rounding's stair is a few units in the last place of the number that rounds: m * 2^k, m below
# this (the most units the 16 u of _stair_rounding spans), or such a stair divided by a whole
# number below STAIR_DIVISORS (a mean over a batch of rows: 2^-45 / 3)
STAIR_UNITS = 16
STAIR_DIVISORS = 64


def _units_in_last_place(stair, slack) -> bool:
    """Whether `stair` (a difference of two values of f) is, within `slack`, a few units in the last
    place of some number: m * 2^k for a whole m < STAIR_UNITS, as the rounding of a cancellation
    inside f makes it (a stable cross-entropy's at a lead of 200: one unit of 200, 2^-45), and as
    a difference of f's values keeps it (it is exact where they are within a factor 2 of each
    other); or that divided by a whole d < STAIR_DIVISORS: a cross-entropy averaged over 3 rows,
    each exactly 0, steps by 2^-45 / 3, and its right gradient FAILed.  A quantiser's step
    c * floor(v / 10) is as high as c, 1e-14: 53 bits, not a few, nor a few over a small d."""
    stair = abs(float(stair))
    if not (np.isfinite(stair) and stair > 0):
        return False
    divisors = np.arange(1, STAIR_DIVISORS)[:, None]
    units = np.arange(1, STAIR_UNITS)[None, :]
    with np.errstate(all="ignore"):
        scaled = stair * divisors
        unit = 2.0 ** np.round(np.log2(scaled / units))
        return bool(np.any(np.abs(scaled - units * unit) <= slack * divisors))


def _central(evaluate, move, t):
    """(D(t), the larger |f| of the two evaluations, the real distance between the two points,
    f(x + t) + f(x - t): f's even part along the probe, which a kink at the point shows)."""
    try:
        distance_plus = move(t)
        f_plus, size_plus = _evaluate_within_domain(evaluate, t)
        distance_minus = move(-t)
        f_minus, size_minus = _evaluate_within_domain(evaluate, -t)
    finally:
        move(None)        # the input as it was, whatever fn did
    width = distance_plus - distance_minus
    if width == 0:        # the step vanished in rounding (a subnormal input): nothing resolved
        return 0.0, np.inf, width, np.nan
    return (f_plus - f_minus) / width, max(size_plus, size_minus), width, f_plus + f_minus


def _derivative(evaluate, move, eps, richardson, good_enough, test_smoothness=False, rounding=0.0) -> _Estimate:
    """The numeric derivative along a probe and a bound on its error.
    good_enough: a bound below this (the relative floor) is not worth two more evaluations.
    test_smoothness: always evaluate D(4h), to say whether f is smooth at this step (rough).
    rounding: f's own rounding as measured (_steadiness_checked), as the round-off of a D at the
    step 1 (it falls like 1 / step): used where it is above the model's C u |f|."""
    d1, size1, width, even1 = _central(evaluate, move, eps)
    d2, size2, _, even2 = _central(evaluate, move, 2 * eps)
    if width == 0:
        return _Estimate(0.0, np.inf, np.inf, False, True, eps, np.inf)
    even = (even1, even2, max(size1, size2))
    stair = _stair_rounding(max(size1, size2), 0.0) / abs(width)
    roundoff = max(2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size1, size2) / abs(width), rounding / eps)   # of D(h)
    plain_bound = abs(d1 - d2) + roundoff      # 3x D(h)'s truncation estimate, plus its round-off
    if not test_smoothness and (richardson is False or (richardson is None and (
            abs(d1 - d2) <= roundoff or plain_bound <= good_enough))):
        return _Estimate(d1, plain_bound, roundoff, False, False, eps, abs(d1 - d2), stair=stair, even=even)
    d4, size4, _, _ = _central(evaluate, move, 4 * eps)
    roundoff = max(roundoff, 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * size4 / abs(width))
    r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
    rich_bound = abs(r1 - r2) / 5 + RICHARDSON_ROUNDOFF * roundoff   # 3x R(h)'s estimated error, plus its round-off
    # Richardson cancels an h^2 error term: D(2h) - D(4h) is then 4x D(h) - D(2h).  Differences
    # that do not scale so (a kink between the points, or round-off) are not extrapolated.
    growth = abs(d2 - d4) / max(abs(d1 - d2), TINY)
    smooth = abs(d1 - d2) <= 2 * roundoff or 2.5 <= growth <= 6.4
    if richardson is True or (richardson is None and smooth and rich_bound < plain_bound):
        return _Estimate(r1, rich_bound, RICHARDSON_ROUNDOFF * roundoff, True, not smooth, eps, abs(d1 - d2), stair=stair, even=even)
    return _Estimate(d1, plain_bound, roundoff, False, not smooth, eps, abs(d1 - d2), stair=stair, even=even)
