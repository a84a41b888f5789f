"""A failing probe measured again before it is called wrong: a kink at the point itself
(_kink_checked), f's own rounding and its differences at other steps (_steadiness_checked: the
retake at longer steps over that rounding, the steps ladder, stairs wider than the ladder).  What
they find makes the probe UNRESOLVED where the numbers cannot decide, and leaves FAIL where f is
as the error model says.  The probes (checker.py) call these after derivative.py's estimate."""
from __future__ import annotations

import functools
import math

import numpy as np

from .constants import OWN_SIZE_STEP, ROUNDOFF_FACTOR, TINY, UNIT_ROUNDOFF, UNRESOLVED
from .derivative import (RICHARDSON_ROUNDOFF, _central, _derivative, _Estimate, _evaluate_within_domain, _LeftDomain,
                         _longer_step_kept, _smooth_at_shorter_steps, _stair_rounding, _units_in_last_place)


# A probe that fails is measured again (_steadiness_checked): f's rounding is estimated from its
# values NOISE_SPACINGS steps apart, and D(t) is taken at RESTEP_FACTORS times the step, since a
# cancellation inside f shows at short steps (its rounding / step) or, where f moves in stairs
# wider than the step, only at long ones.  The rounding of a cancellation need not change from one
# point to the next (1 + tanh(z) for z << 0 keeps its value over many steps, then jumps an ulp):
# so a probe at the relative step eps also measures it STAIR_SPACINGS steps apart, the 7 points of
# the widest (3 spacings either side) reaching as far as the longest step of the ladder, from their
# 6th differences, not 4th: so wide a window can hold f's own bend (softmax of logits ~30, stepped
# by ~3.5e-3, bends within 0.2), whose 4th differences change sign like rounding; its 6th are
# smaller by the window's width over the bend's squared, rounding's stay as large.  Not a
# probe at a longer step: that already spans stairs narrower than it, and so far from the point
# f's own shape (cos at x ~ 1), not its rounding, would make the 4th differences.  1/3 beside the
# dyadic spacings: where the step is close to a multiple of 64 of f's stairs (log(1 + u) at u = 1.434e-9:
# the step 1.563e-13 is 703.997 stairs of 2.2e-16, 704 = 64 * 11), every dyadic spacing and every
# D(t) of the ladder lands the same fraction of a stair off, so f looked smooth and D(t) agreed, 5e-6
# from the right gradient (FAIL, 1 of 150 draws); a third of the step lands elsewhere on the stairs.
RESTEP_FACTORS = (1 / 64, 1 / 16, 1 / 4, 4.0, 16.0, 64.0)
NOISE_SPACINGS = (0.25, 1 / 3, 1.0)
STAIR_SPACINGS = (4.0, max(RESTEP_FACTORS) / 3)
NOISE_SAFETY = 3.0
# A failing probe where f rounds above the model is taken again at steps this many times longer,
# with the measured rounding in its bound (_retaken_over_rounding)
RETAKE_GROWTHS = (16.0, 256.0)
# A failing probe along which f took one value at every step of the ladder looks for a stair of f
# (_stair_beyond) at steps STAIR_SEARCH times longer, up to MAX_STAIR_SEARCHES times (4^5 * 64
# steps: an entry at the relative step eps = 1e-4 moves by 6.5 times its scale), and bisects to it
STAIR_SEARCH = 4.0
MAX_STAIR_SEARCHES = 5
STAIR_BISECTIONS = 40
# ... where f departs from the line the ladder showed by this fraction of the stair the analytic value needs
STAIR_DEPARTURE = 4.0
# ... a stair keeps its height as bisection narrows the interval around it (a smooth onset's change
# shrinks with it, by 2^(STAIR_BISECTIONS / 2) over the second half of the bisections), the interval
# halfway through holding up to this many stairs
STAIRS_IN_WIDER_INTERVAL = 16.0
# A kink at the point is told from rounding inside f (_clear_kink) when its one-sided slopes differ by
# KINK_CLARITY times their error and come out the same at a step KINK_RECHECK times shorter
KINK_CLARITY = 10.0
KINK_RECHECK = 16.0


def _kink_checked(evaluate, move, eps, estimate, analytic, held_to, at_point=None, off_point=False) -> _Estimate:
    """The estimate, marked rough when f has a kink at the point itself.  Such a kink is symmetric
    (relu at 0, a max with a tie): D(h) = D(2h) = D(4h), so the central differences look smooth.
    Their even part shows it: f(x+t) + f(x-t) - 2 f(x) grows like t there, like t^2 for a smooth f.
    A failing probe pays the five evaluations that measure it (nine where it grows like t); a
    passing one is screened first from the values its differences took and f at the point
    (at_point: (f, |f|'s size), taken before any probe; None: not screened), at no further call,
    and pays them only where the screen shows a kink: there D(h) is the mean of the one-sided
    slopes, and a gradient equal to it is no more checked than one a little off it.
    At such a kink f has no derivative, and every value between its one-sided slopes is a
    subgradient (a relu's backward rightly returns 0 at 0, as PyTorch's does): an analytic value
    between them, within held_to and the slopes' own error, is marked `between` (UNRESOLVED, not
    FAIL); one outside them still fails.  Only a clear kink (_clear_kink) is one: even parts that
    grow like t without it are a cancellation's stairs, whose rounding is measured.  A kink a few
    steps away is not this one's: the steps shortened before (_shortened) reach past it.
    off_point: the step is far longer than one at which f was rough, so a kink there lies a small
    fraction of the step off the point: its one-sided slopes err by up to 3x what _one_sided_slopes
    allows them (a relu's kink t_k off the point makes S(h) err by b t_k / h, the extrapolation
    2 S(h) - S(2h) by 1.5 b t_k / h, S(h) - S(2h) being 0.5 b t_k / h), and so more at the shorter
    recheck: those errors are allowed."""
    passing = abs(float(analytic) - estimate.value) <= held_to
    if estimate.rough or (passing and not _kink_screened(estimate, eps, at_point)):
        return estimate
    no_kink = estimate if passing else estimate._replace(rough=False, kink=False)
    values = _values_around(evaluate, move, (eps, 2 * eps))
    roundoff = 4 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size for _, _, size in values.values())
    f0 = values[0.0][1]
    if not _grows_like_t([values[t][1] + values[-t][1] - 2 * f0 for t in (eps, 2 * eps)], roundoff):
        return no_kink
    slopes, slack = _one_sided_slopes(values, eps, roundoff, off_point)
    if not _clear_kink(evaluate, move, eps, values[0.0], slopes, slack, roundoff, off_point):
        # a cancellation's stairs, not a kink: log(1 + exp(s)) at s ~ -24.5 (1 + 2.3e-11 keeps 5
        # digits) had its even part grow like t, and, taken for a kink, f's rounding went unmeasured
        # (_steadiness_checked): its right gradient, 4e-5 from D(h), FAILed (1 of 150 draws)
        return no_kink
    between = ()
    if min(slopes) - slack - held_to <= float(analytic) <= max(slopes) + slack + held_to:
        between = tuple(slopes)
    elif passing:       # D(h) outside the slopes it is the mean of: not the kink this is about
        return no_kink
    return estimate._replace(rough=True, kink=True, between=between)


def _grows_like_t(second: list, roundoff: float) -> bool:
    """f's even part f(x+t) + f(x-t) - 2 f(x), at t = h and 2h (second), grows like t, as at a kink
    at the point (like t^2 for a smooth f), clear of f's rounding (roundoff: of 4 values of f)."""
    return abs(second[0]) > 10 * roundoff and 1.5 <= second[1] / second[0] <= 2.5


def _kink_screened(estimate, eps, at_point) -> bool:
    """The even part of f along a passing probe grows like t at the step eps (_grows_like_t), from
    the values its differences took (estimate.even) and f at the point, at no further call."""
    if at_point is None or not estimate.even or estimate.step != eps:
        return False
    even_h, even_2h, size = estimate.even
    f0, size0 = at_point
    return _grows_like_t([even_h - 2 * f0, even_2h - 2 * f0], 4 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size, size0))


def _values_around(evaluate, move, steps, at_point=None) -> dict:
    """{t: (real distance, f, |f|'s size)} at the point (t = 0) and t = +-each of steps; at_point:
    the point's entry as measured before (f there is not evaluated again)."""
    values = {} if at_point is None else {0.0: at_point}
    try:
        for t in (*((0.0,) if at_point is None else ()), *steps, *(-t for t in steps)):
            distance = move(t)
            values[t] = (distance, *evaluate())
    finally:
        move(None)
    return values


def _one_sided_slopes(values, step, roundoff, off_point=False) -> tuple[list, float]:
    """([left, right] slopes of f at the point, their error) from f at 1 and 2 steps on each side:
    (f(x+t) - f(x)) / t = slope + O(t), extrapolated to 2 S(h) - S(2h); |S(h) - S(2h)| (its O(t)
    term) and the rounding (roundoff: of 4 values of f) over the step bound its error."""
    f0, slopes, slack = values[0.0][1], [], 0.0
    for side in (-1, 1):
        near, far = [(values[t][1] - f0) / values[t][0] if values[t][0] else np.inf
                     for t in (side * step, 2 * side * step)]
        slopes.append(2 * near - far)
        slack = max(slack, (3 if off_point else 1) * abs(near - far) + 1.5 * roundoff / abs(values[side * step][0] or TINY))
    return slopes, slack


def _clear_kink(evaluate, move, eps, at_point, slopes, slack, roundoff, off_point=False) -> bool:
    """The one-sided slopes found at the step eps show a kink, not rounding inside f: they differ by
    KINK_CLARITY times their error, and come out the same at a step KINK_RECHECK times shorter (a
    kink at the point stays where it is; a cancellation's stairs, 1 + tanh(z) at z << 0, whose
    even part can also grow like t over two steps, give other slopes there).  Four evaluations
    around the point (at_point: its entry in _values_around's, f at the point being known)."""
    short = eps / KINK_RECHECK
    values = _values_around(evaluate, move, (short, 2 * short), at_point)
    again, slack_again = _one_sided_slopes(values, short, roundoff, off_point)
    return (abs(slopes[1] - slopes[0]) > KINK_CLARITY * (slack + slack_again)
            and all(abs(a - b) <= slack + slack_again for a, b in zip(slopes, again)))


def _steadiness_checked(evaluate, move, estimate, analytic, held_to, probes, richardson, good_enough,
                        longer=False, one_entry=False, largest_input=lambda: 0.0) -> _Estimate:
    """The estimate, marked unsteady when it fails but f is shown not to be resolved at its step:
    a failing probe is UNRESOLVED, not FAIL, when either test below shows f rounding beyond the
    error model (a cancellation inside it: its values move in steps far above u * |f|) and the
    analytic value lies within what that rounding allows.  It still fails where both tests find f
    as the model says, or the analytic value lies beyond what they allow.

    f's own rounding: f at 7 points NOISE_SPACINGS steps apart, whose 4th differences are rounding
    for a smooth f (Hamming's estimate of the noise in a table of values).  Round-off above the
    model's first has the probe taken again at longer steps with it in the bound
    (_retaken_over_rounding), which judges it where f stays smooth there; else, where it covers
    the difference between analytic and numeric, it excuses it.  A cancellation's
    rounding can stay the same for many steps and then jump (stairs), which only a window holding a
    jump sees: a probe at the step eps (not `longer`) also looks STAIR_SPACINGS steps apart, by
    6th differences there (which a smooth bend within so wide a window does not make look like
    rounding, as it does the 4th).
    The steps ladder: D(t) at RESTEP_FACTORS times the step h.  The model predicts how D(t) moves
    with t: its truncation error grows like t^2 from what D(h) - D(2h) shows, its round-off shrinks
    like 1/t.  A D(t) that strays further than that from the estimate, or from the rung below it by
    a stair of f's rounding (_stair_between_rungs), or an estimate whose differences did not shrink
    like h^2, shows rounding (or a kink nearby) beyond the model, which a smooth function never
    shows; the spread of the differences then measures how far off they can be, and an analytic
    value within that spread of them is not shown wrong.  A ladder along which f kept to a straight
    line (one value, or the slope of its longest rung) has its stairs looked for farther out
    (_stair_beyond).

    Only a failing probe pays (up to 55 evaluations, 107 where f kept to a line: _stair_beyond),
    and in each input only until CONFIRMED_FAILURES failures are confirmed (checker.py): the input
    FAILs then, whatever its other probes show, and those are marked unconfirmed, never named as
    wrong (probes.remeasure_failures, probes.confirm)."""
    analytic = float(analytic)
    if estimate.between:        # a subgradient at a kink at the point (_kink_checked): no step judges it
        return estimate
    if not np.isfinite(estimate.value) or abs(analytic - estimate.value) <= held_to:
        return estimate
    if not probes.remeasure_failures:   # the input's FAIL is confirmed: this failure is not
        return estimate._replace(unconfirmed=True)
    # the largest rounding of D(h) f showed: exp(x) - 1 at x ~ 1e-8 rounds at 1e-4 of its gradient,
    # so D(h/64) strays by 64x that, and a gradient off by 1e-3 came out UNRESOLVED by the ladder
    # below; longer steps, with that rounding in their bound, resolve it (_retaken_over_rounding)
    rounding = estimate.roundoff
    # f's rounding is measured as D(h)'s round-off; a Richardson estimate R(h) carries more of it,
    # as its own roundoff does.  sum(sin(v) - v) at v = 0 (terms ~h, f ~h^3, so u |f| is no measure of
    # its rounding): R(h) 4.5e-17 where the right gradient is 0, D's measured round-off 4e-17, R's 6e-17;
    # compared with D's, it FAILed
    in_estimate = _roundoff_carried(estimate)
    # held_to at another estimate: its bound in place of this one's (the rest does not depend on the step)
    def held_by(other):
        return held_to - estimate.bound + other.bound

    # f at the point, which every window below holds: evaluated once, when first needed
    at_point = functools.cache(lambda: _evaluate_within_domain(evaluate, 0.0)[0])

    def judged_far_shorter(shortest, disagreement, seen=None):
        """f shown not to behave as the model says at the step (its rounding, or D(t) at other steps,
        disagreeing by `disagreement`): the estimate where steps shorter than `shortest` times the
        step show it smooth, its differences standing below that disagreement and shrinking like
        h^2 (_smooth_at_shorter_steps), as f varying within the step is; None where none does.  Not
        a straight f at a short step: a GELU's 1 + tanh(z) at x ~ -7 keeps one stair there, and its
        slope is a wrong backward's that misses the tanh term.  A FAIL is confirmed if the
        analytic value is off it.  seen: gets every shorter step's estimate, resolved or not."""
        start = estimate._replace(step=estimate.step * shortest, difference=disagreement)
        resolved = _smooth_at_shorter_steps(evaluate, move, start, richardson, good_enough, kinks=False, seen=seen)
        if resolved is not None and abs(analytic - resolved.value) > held_by(resolved):
            probes.confirm()
        return resolved
    if np.isfinite(analytic) and not estimate.kink:    # a kink's values look like rounding to this test
        # the largest rounding any window shows; STAIR_SPACINGS at the step eps only
        for spacing in NOISE_SPACINGS + (() if longer else STAIR_SPACINGS):
            try:
                with np.errstate(all="ignore"):
                    measured = _measured_roundoff(evaluate, move, estimate.step, spacing, at_point,
                                                  order=6 if spacing in STAIR_SPACINGS else 4)
            except _LeftDomain:                 # 3 spacings away left f's domain: no measure of its rounding
                break
            rounding = max(rounding, in_estimate * measured)
        if rounding > estimate.roundoff:
            # retaken only where D(h) stands out of that rounding, its bound with it no more than
            # UNRESOLVED (half) of its value, as a probe must be to be judged at all: a function
            # bending within the step, as a layer norm of 1e5 + noise stepped by 10, has 4th
            # differences as large as D(h), like rounding's, and longer steps there only look smoother
            resolved = estimate.bound - estimate.roundoff + rounding <= UNRESOLVED * abs(estimate.value)
            retaken = (_retaken_over_rounding(evaluate, move, estimate, rounding, richardson, good_enough)
                       if resolved else None)
            if retaken is not None:
                held_retaken = held_by(retaken)
                if estimate.rough:
                    # a rough estimate was not looked at for a kink (_kink_checked): the longer step
                    # may straddle one a little off the point as if at it, smooth-looking, D the mean
                    # of its one-sided slopes.  A relu entry at -1e-6, stepped by 1e-4 (rough), retaken
                    # 256x longer, confirmed the right gradient's FAIL there; a subgradient between the
                    # slopes is UNRESOLVED, as at the point
                    # ... at its step, and at steps KINK_RECHECK times shorter, down to the rough one's:
                    # 256x longer reaches other entries' kinks along a direction (relu entries 1.8
                    # steps away made the slopes' error hide the kink there), a step 16x shorter not
                    step, kinked = retaken.step, retaken
                    while step > estimate.step:
                        kinked = _kink_checked(evaluate, move, step, retaken, analytic, held_retaken,
                                               off_point=True)
                        if kinked.between:
                            return kinked
                        step /= KINK_RECHECK
                    retaken = kinked
                off_by = abs(analytic - retaken.value) - held_retaken
                if off_by <= 0:
                    return retaken
                # Within f's rounding at the step of the retaken value the analytic value is not
                # shown wrong: a backward that computes the same cancelling terms rounds as f does
                # (the tanh-GELU's 1 - t^2 at t ~ -1 is off by about what 1 + t rounds f by).  No
                # more: an allowance of 1e-6 of the check's largest gradient changed no right
                # GELU's verdict in the left tail (check_op and the sum, both forms of its
                # backward), and made one off by 1e-6 UNRESOLVED, which without it FAILs.
                # Not f's rounding at the failing step: that step may be shortened (_shortened), and
                # naive softplus at s = -27.3, resolved at a step 256x longer to 2e-3, had its
                # rounding at the step eps/4 (32% of the gradient) excuse a gradient off by 1%
                if off_by > rounding * estimate.step / retaken.step:
                    probes.confirm()     # failed where f's rounding is accounted for
                    return retaken
                return retaken._replace(unsteady=True)
            if abs(analytic - estimate.value) <= held_to + rounding:
                # f varying within the step shows as rounding too (sum(sin(k x)) at k h ~ 30, its
                # estimate smooth by chance, 5114 where the gradient is 2.7e5): it is judged where
                # shorter steps resolve it, if any do, else not judged
                resolved = judged_far_shorter(1.0, rounding)
                return estimate._replace(unsteady=True) if resolved is None else resolved
    values, strays = [estimate.value], estimate.rough
    rungs = {1.0: estimate.value}        # D(t) at each factor t of the step reached so far
    # at a kink at the point, longer steps reach the kinks of other entries along a direction
    for factor in [f for f in RESTEP_FACTORS if f < 1 or not estimate.kink] if np.isfinite(analytic) else ():
        try:
            with np.errstate(all="ignore"):
                value, _, width, _ = _central(evaluate, move, estimate.step * factor)
        except _LeftDomain:                     # the longer step left f's domain
            continue
        if width == 0 or not np.isfinite(value):
            continue
        # held_to: the estimate's bound, the analytic's round-off and the relative floor
        truncation = _truncation_allowed(estimate, rungs, factor)
        allowed = held_to + truncation + estimate.roundoff / factor
        strays = (strays or abs(value - estimate.value) > allowed
                  or _stair_between_rungs(rungs, factor, value, width, estimate.roundoff, at_point))
        # the spread counts what of D(t)'s departure from the estimate the model does not explain:
        # not its truncation.  exp(v) - 1 - v at v = 0 (D(t) = t^2/6 + rounding ~1e-16 / t): its short
        # rungs stray by rounding, ~1e-11, while D(64h) = 6.8e-6 is truncation; counted whole, it
        # left a gradient off by 1e-6 UNRESOLVED, where R(h) resolves the derivative to ~1e-11
        kept = value - float(np.clip(value - estimate.value, -truncation, truncation))
        # beyond the input's own size (the step 1), a rung that moves on from the two below it the way
        # they moved, by at least the 16-fold a t^2 growth makes, is f bending far off the point as a
        # smooth function does, no rounding the analytic value may hide in: no more of it counts than
        # a stair of f's rounding across the rung makes.  1e6 + a sum(exp(x)), x ~ -0.5: its
        # sign-flipped gradient, resolved at the step 1 (4.2e-7 +- 1.4e-8, claimed -4.2e-7), was
        # UNRESOLVED on D(64h) ~ 1e21, 53 sizes of x out.  An aliasing sine's rungs over a large
        # constant (C + a sin(x) at the step 100) do not grow so, and still count whole
        if estimate.step * factor > OWN_SIZE_STEP and _bends_away(rungs, factor, value):
            reach = _stair_rounding(at_point(), 0.0) / abs(width) + estimate.roundoff / factor
            kept = estimate.value + float(np.clip(kept - estimate.value, -reach, reach))
        values.append(kept)
        rungs[factor] = value
        spread = max(values) - min(values)
        if strays and min(values) - spread <= analytic <= max(values) + spread:
            resolved = judged_far_shorter(min(rungs), spread)
            return estimate._replace(unsteady=True) if resolved is None else resolved
    # Strays the analytic value lies beyond: f rounding as a cancellation does keeps the true
    # derivative within them, f varying within the step does not.  sum(sin(k x)) at k h ~ 300 has
    # every rung alias (D(t) ~ k cos(k x) / (k t), far from it), and an estimate that looked smooth
    # by chance FAILed the right gradient: it is judged where shorter steps resolve f, if any do
    if strays and np.isfinite(analytic):
        shorter_estimates = []
        resolved = judged_far_shorter(min(rungs), max(values) - min(values), shorter_estimates)
        if resolved is not None:
            return resolved
        # none resolved f, but one where f behaved smoothly (its differences within its round-off, too
        # close to it to show h^2 shrinking) contradicts the estimate, beyond both bounds, and holds the
        # analytic value within its own: nothing shows that value wrong.  1e8 + 3.5e-6 sin(b) at
        # b = -3.08 was taken at the step 100 (300 radians), where sin aliased to -4e-9 +- 1.4e-9, its
        # rungs straying; the step 0.1's -3.47e-6 +- 1.3e-6 held the right gradient -3.51e-6, which
        # FAILed.  Its sign flipped still does; and a shorter step that agrees with the estimate, its
        # bound only wider, excuses nothing
        if any(not e.rough and abs(e.value - estimate.value) > e.bound + estimate.bound
               and abs(analytic - e.value) <= held_by(e) for e in shorter_estimates):
            return estimate._replace(unsteady=True)
    # f kept to a straight line at every step from h/64 to 64h, so it showed no rounding to measure
    # and no stray: a cancellation whose stairs are wider than the whole ladder.  Naive softplus
    # log(1 + exp(s)) at s < -36.7 is exactly 0 (exp(s) < u/2 vanishes in 1 + exp(s)), so D = 0
    # while its right gradient sigmoid(s) ~ 1e-17 is not: it FAILed in 16 of 25 draws of s in
    # [-40, -20].  A GELU's 0.5 x (1 + tanh(z)) at x ~ -7 keeps 1 + tanh(z) over the ladder at
    # eps = 1e-5 while 0.5 x moves f on by ~100 ulps, D(t) -3e-16 where its gradient is 2.4e-14 (a
    # right backward FAILed in 147 of 400 draws of x in [-7.4, -6.4]).  Such an f moves off its
    # line only in stairs: where one is found farther out, as high as the change the analytic value
    # predicts across the ladder, that value is not shown wrong
    slope = rungs[max(rungs)]    # the ladder's longest rung: the least of f's rounding
    if len(values) > 1 and analytic != slope and _stair_beyond(
            evaluate, move, max(RESTEP_FACTORS) * estimate.step, analytic, at_point, one_entry, slope,
            largest_input):
        return estimate._replace(unsteady=True, flat=True)
    probes.confirm()
    return estimate


def _truncation_allowed(estimate, rungs, factor) -> float:
    """How far D(factor * h) of the steps ladder may stray from the estimate by truncation, which
    grows like t^2: 3x what |D(h) - D(2h)| (3x D(h)'s truncation) grows to, and past 4h no more
    than 3x what the two rungs below it (factor / 16 and factor / 4: `rungs`, D by factor) grow
    to.  |D(h) - D(2h)| may be f's rounding alone: GELU's 0.5 x (1 + tanh(z)) at x ~ -7.15 moves
    by one ulp of f over 2h within a stair of 1 + tanh(z), and 64^2 times that allowed D(64h), which
    crosses a stair 1e3 times higher, to stray by 1e-13 -- 20x the right gradient, which FAILed."""
    allowed = estimate.difference * factor**2
    grown = _grown_from_rungs(rungs, factor, 1.0)
    return allowed if grown is None else min(allowed, grown)


def _bends_away(rungs, factor, value) -> bool:
    """Whether D(factor * h) of the steps ladder (value) moves on from the rung below it (factor / 4)
    in the direction that rung moved from the one below it (factor / 16), and by at least 16 / 1.6
    times as far (a t^2 growth's 16-fold, within the factor 1.6 _derivative allows): f bending
    steadily away, as exp far from the point; False where factor <= 4 or either rung was not reached."""
    below = _two_rungs_below(rungs, factor)
    if below is None:
        return False
    moved, before = value - below[0], below[0] - below[1]
    return moved * before > 0 and abs(moved) >= 16 / 1.6 * abs(before)


def _two_rungs_below(rungs, factor) -> tuple[float, float] | None:
    """D at factor / 4 and factor / 16 of the step (`rungs`, D by factor), from which truncation's
    t^2 growth up to factor is told; None where factor <= 4 or either rung was not reached."""
    shorter, shortest = factor / 4, factor / 16
    if factor <= 4 or shorter not in rungs or shortest not in rungs:
        return None
    return rungs[shorter], rungs[shortest]


def _grown_from_rungs(rungs, factor, since) -> float | None:
    """3x how far truncation (growing like t^2) moves D from since * h to factor * h, as the two
    rungs below factor (factor / 4 and factor / 16) show it; None where factor <= 4 or either of
    those rungs was not reached."""
    below = _two_rungs_below(rungs, factor)
    if below is None:
        return None
    shorter, shortest = factor / 4, factor / 16
    return 3 * (factor**2 - since**2) / (shorter**2 - shortest**2) * abs(below[0] - below[1])


def _stair_between_rungs(rungs, factor, value, width, roundoff, at_point) -> bool:
    """Whether D(factor * h) of the steps ladder (value, taken across `width`) departs from the rung
    below it, D(factor / 4 * h), by more than truncation and the model's round-off let it (truncation
    grows like t^2 from what the two rungs below show; D(t) rounds by roundoff / t), and by no more
    than one stair of f's rounding across `width` (_stair_rounding): f crossed a stair of a
    cancellation between the two rungs.  Compared with its neighbour, not with the estimate D(h):
    D(h)'s bound holds the model's round-off at h, which a GELU's stairs at x ~ -7.15 (1e3 times
    u |f| high, one every ~40 steps) stay within, while D(64h), across one, is 10x off D(16h)."""
    shorter = factor / 4
    truncation = _grown_from_rungs(rungs, factor, shorter)
    if truncation is None or width == 0:
        return False
    jump = abs(value - rungs[shorter])
    return jump > truncation + roundoff / factor + roundoff / shorter \
        and jump * abs(width) <= _stair_rounding(at_point(), jump * abs(width))


def _stair_beyond(evaluate, move, reach, analytic, at_point, one_entry=False, slope=0.0,
                  largest_input=lambda: 0.0) -> bool:
    """f followed a straight line through the point at every step of the ladder, within `reach` (in
    the probe's units): one value (slope 0), or the slope the ladder's longest rung shows (f that
    still moves a little within a stair: 0.5 x (1 + t) of a GELU with t fixed).  Whether farther
    out it moves off that line in stairs at all, and they are high enough for a gradient of
    `analytic` to stay within one across 2 * reach, and low enough to be f's rounding (a quantising
    f, np.round(x), is not); with one_entry (x moves along one axis), whether they go the way
    `analytic` says f goes.  Steps STAIR_SEARCH times longer until f departs from the line by
    1/STAIR_DEPARTURE of the stair the analytic value needs (less is rounding, or the error of the
    slope grown with the distance), then bisection to the departure: a stair (rounding inside f)
    keeps its height as the interval around it halves, a smooth onset (a relu's kink, where f that
    ignored x starts to depend on it; the slope's error) does not, and still FAILs.
    at_point(): f at the point (x is there when this is called); largest_input(): the largest |x_i|
    of the probed input where x stands, whose units in the last place a stair of f's rounding may
    be (_stair_rounding: at the point, and where f departs).  Up to 2 + 2 * MAX_STAIR_SEARCHES
    + STAIR_BISECTIONS evaluations, by a failing probe only, and none where the analytic value is
    off the slope by more than any stair of f's rounding could make up."""
    try:
        with np.errstate(all="ignore"):
            f0 = at_point()
            if not np.isfinite(f0):
                return False            # no line through the point to depart from
            inputs = largest_input()
            width = abs(move(reach) - move(-reach))
            move(None)
            need = 0.5 * abs(analytic - slope) * width      # the stair a gradient of `analytic` needs
            if not need <= _stair_rounding(f0, need, inputs):
                return False            # more than f's rounding: no stair of it makes up the difference

            measured = {}               # t -> (real distance, f) where f was taken

            def departure(t):
                """f's departure, t away, from the line through the point with the ladder's slope."""
                distance = move(t)
                measured[t] = distance, _evaluate_within_domain(evaluate, t)[0]
                return measured[t][1] - f0 - slope * distance

            # near: the farthest distance at which f is known to follow the line on both sides
            on_line = {}                # side -> f's departure at near on that side
            near, far, side = 0.0, reach, 0
            for _ in range(MAX_STAIR_SEARCHES + 1):
                for side in (1, -1):
                    off = departure(side * far)
                    if not abs(off) <= need / STAIR_DEPARTURE:
                        break           # f departed from the line on this side, between near and far
                    on_line[side] = off
                else:
                    near, far = far, far * STAIR_SEARCH     # on the line out to far: look farther
                    continue
                break
            else:
                return False            # f never departed: it moves as the ladder says, and the analytic value is wrong
            if near == 0:
                return False            # f departed within the ladder's reach: not the line the ladder showed
            jumps = []                  # f's departure across each narrower interval, signed
            near_off, far_off = on_line[side], off
            for _ in range(STAIR_BISECTIONS):
                middle = 0.5 * (near + far)
                off = departure(side * middle)
                if abs(off) <= need / STAIR_DEPARTURE:
                    near, near_off = middle, off
                else:
                    far, far_off = middle, off
                jumps.append(far_off - near_off)
            move(side * far)
            inputs = max(inputs, largest_input())   # the moved entry may stand beyond the others there
    except _LeftDomain:
        return False
    finally:
        move(None)
    if not np.all(np.isfinite(jumps)):
        return False
    # a stair: the change across the last interval is no less than 1/STAIRS_IN_WIDER_INTERVAL of the
    # change across the interval of halfway through the bisection, 2^(bisections / 2) times wider (a
    # smooth onset's shrinks with the interval, down to f's rounding; that interval may span a few
    # stairs: along a direction, log(1 + u) at u ~ 1e-14 had two entries step in it, and its last
    # change, one stair, was taken for an onset).  Not the first interval's change: where f's stairs
    # grow as it moves away (GELU's 1 + tanh(z), 0 at x = -7.44, is 1 ulp at -7.2 and 330 at -6.65),
    # the first interval spans hundreds, and the right gradient FAILed;
    # as high as the analytic value predicts across the ladder (2 * reach); and a rounding of f
    # (_stair_rounding: of f, of the 1 a cancellation works against, or of the inputs f cancels against
    # each other: a stable cross-entropy's (lse + top) - v[target] at a lead of 200 is exactly 0.0 over the
    # ladder and steps by ulp(200) = 2.8e-14 far out, above 16 u max(|f|, 1), and its right
    # gradient, 1e-87, FAILed).  np.round(x) is a staircase too, whose straight-through gradient
    # predicts its stairs, but they are as high as f moves (w per unit of x), and that gradient is wrong.
    # Along one entry it goes the way the analytic value says f goes on that side: rounding a rising
    # f keeps it rising, and a gradient of the wrong sign FAILs.  Not along a direction: entries moving
    # opposite ways step at different places, and the first stair can go against the sum (log(1 + u)
    # at u ~ 1e-14, seed 24, FAILed its right gradient)
    stair = abs(jumps[-1])
    wider = abs(jumps[STAIR_BISECTIONS // 2 - 1])
    return (wider / STAIRS_IN_WIDER_INTERVAL <= stair
            and _a_rounding(stair, f0, inputs, measured[side * near], measured[side * far], slope)
            and stair >= need
            and (not one_entry or np.sign(jumps[-1]) == side * np.sign(analytic - slope)))


def _a_rounding(stair, f0, inputs, near, far, slope) -> bool:
    """Whether a stair `stair` high, found between near and far ((real distance, f) on either side
    of it), is a rounding of f: no higher than a few units in the last place of f or of 1
    (_stair_rounding), or, up to a few of the input's largest entry (inputs), such units of a
    number no larger (_units_in_last_place): f's jump across it, f(far) - f(near), is that within
    what the line's slope moves f across the interval.  Not a quantiser's step beside a large
    entry: c * floor(v / 10) at c = 1e-12, next to an entry of 1000 (16 u * 1000 = 3.6e-12), is not
    few units of anything, and its wrong straight-through gradient was UNRESOLVED for it."""
    if stair <= _stair_rounding(f0, stair):
        return True
    (near_distance, near_value), (far_distance, far_value) = near, far
    jump = far_value - near_value
    along_line = abs(slope * (far_distance - near_distance))
    return (stair <= _stair_rounding(f0, stair, inputs)
            and _units_in_last_place(jump, along_line + 2 * np.spacing(abs(jump))))


def _roundoff_carried(estimate: _Estimate) -> float:
    """How many times D(h)'s round-off the estimate carries: RICHARDSON_ROUNDOFF for R(h), 1 for D(h)."""
    return RICHARDSON_ROUNDOFF if estimate.richardson else 1.0


def _retaken_over_rounding(evaluate, move, estimate, rounding, richardson, good_enough) -> _Estimate | None:
    """A failing probe where f rounds above the model (rounding, measured: the round-off of the
    estimate at its step, Richardson's R(h) or D(h)), taken again at steps RETAKE_GROWTHS times longer with that rounding in
    its bound: it falls like 1 / step, while a smooth f's truncation stays small (exp(x) - 1 at
    x ~ 1e-8 rounds at 1e-4 of its gradient at the step 1e-12, at 1e-7 of it at 1e-9).  Kept while
    f stays smooth at the longer step (judged knowing its rounding), the bound shrinks, and it
    agrees with the shorter step's within both bounds.  None when no longer step is kept: then the
    rounding leaves the probe unresolved."""
    at_unit_step = rounding / _roundoff_carried(estimate) * estimate.step   # D's, as _derivative takes it
    best = estimate._replace(bound=estimate.bound - estimate.roundoff + rounding, roundoff=rounding)
    kept = None
    for growth in RETAKE_GROWTHS:
        try:
            with np.errstate(all="ignore"):
                attempt = _derivative(evaluate, move, estimate.step * growth, richardson, good_enough,
                                      test_smoothness=True, rounding=at_unit_step)
        except _LeftDomain:
            break
        if not _longer_step_kept(attempt, best):
            break
        # (still far shorter than a step where f was rough, if the estimate was: smooth_shorter)
        best = kept = attempt._replace(smooth_shorter=estimate.smooth_shorter)
    return kept


def _measured_roundoff(evaluate, move, step, spacing, at_point, order=4) -> float:
    """The round-off of D(step) as f's own rounding shows it, from f at 7 points spacing * step
    apart: the 4th differences of values with independent rounding errors of size sigma have
    variance 70 sigma^2, and D(step) carries up to NOISE_SAFETY * 2 sigma / (its width).  Rounding
    makes neighbouring 4th differences change sign (they are correlated -0.8); where all have the
    same sign they are f's smooth 4th derivative (at a longer step), not rounding: 0 then, as where
    f is not finite.  order=6: from the one 6th difference (variance 924 sigma^2), for a window so
    wide that f's smooth 4th derivative may change sign within it.  at_point(): f at the point."""
    values = []
    try:
        for k in range(-3, 4):
            move(k * spacing * step)
            values.append(at_point() if k == 0 else _evaluate_within_domain(evaluate, k * spacing * step)[0])
        width = move(step) - move(-step)
    finally:
        move(None)
    differences = np.diff(np.array(values), order)
    if width == 0 or not np.all(np.isfinite(differences)) or (order == 4 and (
            np.all(differences > 0) or np.all(differences < 0))):
        return 0.0
    # the variance of an order-n difference of independent roundings: sigma^2 * C(2n, n)
    sigma = float(np.sqrt(np.mean(differences**2) / math.comb(2 * order, order)))
    return NOISE_SAFETY * 2 * sigma / abs(width)
