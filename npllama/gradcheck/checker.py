"""The check itself: for each input, which probes (_choose_probes), each probe taken (an entry,
_probe_entry, or a random direction, _probe_direction: derivative.py's estimate, shortened,
checked for a kink and re-measured by remeasure.py when it fails), the results gathered
(_Probes) and judged (reports.py), a failing direction followed down to its entry (_locate).
gradcheck and check_op (api.py) hand it f as `evaluate` once the arguments are checked."""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from .constants import LOOSE_BOUND, ROUNDOFF_FACTOR, TINY, UNIT_ROUNDOFF, UNRESOLVED
from .derivative import _left_domain_error, _LeftDomain, _resolved_derivative, _shortened
from .inplace import _ChangedUnderProbe, _unchanged
from .norms import _largest_finite, _norm, _rms
from .pattern import ProbedEntries, _swap_notes
from .remeasure import _kink_checked, _steadiness_checked
from .reports import _judge, _without_gradient_size, GradcheckReport


AUTO_ALL_ENTRIES = 2048   # method="auto", max_entries=None: tensors up to this size get every entry
AUTO_SAMPLE = 32          # ... larger ones this many sampled entries plus the random directions


PROGRESS_EVERY = 10.0     # progress=True: seconds between lines while one input is being probed

# A failing probe is measured again (remeasure.py) until this many of the input's failures are
# confirmed: one makes the input FAIL, but the report names the failing entries, and a failing
# probe not measured again may be right (f rounding in stairs, which only the re-measurement
# sees).  The ones after these are marked unconfirmed and never named as wrong (reports.py).
CONFIRMED_FAILURES = 4


@dataclasses.dataclass
class _Probes:
    """The results of one input's probes, entries first, then directions (parallel arrays)."""
    analytic: list = dataclasses.field(default_factory=list)    # <grad, p>, or grad_i for an entry
    numeric: list = dataclasses.field(default_factory=list)
    bound: list = dataclasses.field(default_factory=list)       # estimated finite-difference error
    magnitude: list = dataclasses.field(default_factory=list)   # |grad_i|, or ||grad * p||
    floor: list = dataclasses.field(default_factory=list)       # atol in the probe's units
    unresolved: list = dataclasses.field(default_factory=list)  # bound above UNRESOLVED of the gradient
    largest: list = dataclasses.field(default_factory=list)     # the check's largest gradient, in the probe's units
    rough: list = dataclasses.field(default_factory=list)
    roundoff_limited: list = dataclasses.field(default_factory=list)   # bound mostly rounding, not truncation
    below_own: list = dataclasses.field(default_factory=list)   # bound above UNRESOLVED of the probe's own gradient
    unsteady: list = dataclasses.field(default_factory=list)    # failing, but f not resolved at its steps
    between: list = dataclasses.field(default_factory=list)     # (left, right) slopes at a kink, or ()
    flat: list = dataclasses.field(default_factory=list)        # unsteady: f kept to a line at every step
    unconfirmed: list = dataclasses.field(default_factory=list)  # failing, not measured again (confirm)
    smooth_shorter: list = dataclasses.field(default_factory=list)  # f smooth at far shorter steps: varies within the step
    set_aside: list = dataclasses.field(default_factory=list)   # longer steps, where f moved, showed nothing but round-off
    richardson: int = 0
    longer_steps: int = 0       # probes that needed a longer step than eps to resolve
    remeasure_failures: bool = True   # a failing probe is measured at other steps (until CONFIRMED_FAILURES are)
    confirmed: int = 0          # failures confirmed by the re-measurement

    def confirm(self) -> None:
        """A failing probe was measured again and still fails: once CONFIRMED_FAILURES have, the
        input's other failing probes are not measured again (it FAILs whatever they show)."""
        self.confirmed += 1
        self.remeasure_failures = self.confirmed < CONFIRMED_FAILURES

    def add(self, analytic, estimate, bound, magnitude, floor, reference, largest, longer) -> None:
        """largest: the check's largest gradient entry in this probe's units.  A bound below
        LOOSE_BOUND of it is resolution enough, even where the probe's own gradient is tinier (a
        zero made of round-off), and an all-zero gradient's bound is relative to it."""
        coarse = LOOSE_BOUND * largest
        self.analytic.append(float(analytic))
        self.numeric.append(estimate.value)
        self.bound.append(bound)
        self.magnitude.append(magnitude)
        self.floor.append(floor)
        self.largest.append(largest)
        # an all-zero gradient (reference 0) is unresolved too where its bound is coarse next to
        # the check's largest: a wrong zero could not be told from the right gradient there
        resolution = max(UNRESOLVED * reference, coarse)
        # ... but a failing probe whose numeric value stands out of its bound (by 1/UNRESOLVED) is
        # resolved: the true derivative is within that bound of it, and the analytic value is not.
        # A backward missing the GELU's tanh term, 70x too small and of the wrong sign at x ~ -6.6,
        # measured again to the bound 7e-14 of a derivative of -4e-12, was UNRESOLVED next to its
        # own value 6e-14
        if abs(float(analytic) - estimate.value) > bound:
            resolution = max(resolution, UNRESOLVED * abs(estimate.value))
        # (a rough estimate -- its differences at h, 2h, 4h did not shrink like h^2 at any step
        # tried -- is held to its bound as any is: f varying within the step is taken where shorter
        # steps show it smooth, f rounding at longer steps (derivative.py), and a failing probe
        # where shorter steps than the re-measurement's resolve f (remeasure.py).  A rule that
        # held a passing rough bound to 1e-2 of the gradient caught no case once they did)
        # (set_aside: a longer step's estimate, nothing but round-off, contradicted the analytic value
        # that this one's loose bound passes: derivative.py's _resolved_derivative)
        # with nothing to measure against (the check's gradients all zero), a passing probe is
        # unresolved where its value stands more than UNRESOLVED of its bound from 0: f shows a slope
        # the bound cannot resolve, and a zero could not be told from it
        sizeless = _without_gradient_size(largest)
        self.unresolved.append(estimate.unsteady or bool(estimate.between) or estimate.set_aside
                               or (not sizeless and not estimate.bound <= resolution)
                               or (sizeless and not estimate.rough and UNRESOLVED * bound < abs(estimate.value) <= bound))
        # resolved only next to the check's largest gradient (coarse), not next to its own: a wrong
        # gradient of this probe's size passes too (reports.py says so: saturated attention's dq,
        # ~1e-37 next to dv ~3, was ok with a relative bound of 1e25 and nothing said)
        self.below_own.append(not bound <= UNRESOLVED * reference)
        self.rough.append(estimate.rough)
        # what limits the bound (reports.py names it for an unresolved probe): rounding (f's and
        # the analytic gradient's, which longer steps shrink) or truncation (f bending within the
        # step, which shorter steps shrink)
        truncation = estimate.bound - estimate.roundoff
        self.roundoff_limited.append(not truncation > bound - truncation)
        self.unsteady.append(estimate.unsteady)
        self.between.append(estimate.between)
        self.flat.append(estimate.flat)
        self.unconfirmed.append(estimate.unconfirmed)
        self.smooth_shorter.append(estimate.smooth_shorter)
        self.set_aside.append(estimate.set_aside)
        self.richardson += estimate.richardson
        self.longer_steps += longer

    def error_over_bound(self, tol) -> np.ndarray:
        """Each probe's |analytic - numeric| over the bound it is held to (the estimated error plus
        tol of its magnitude): <= 1 passes; inf where a value or the bound is not finite."""
        a, n = np.array(self.analytic, dtype=np.float64), np.array(self.numeric, dtype=np.float64)
        held_to = np.array(self.bound, dtype=np.float64) + tol * np.array(self.magnitude, dtype=np.float64)
        diff = np.abs(a - n)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(diff == 0, 0.0, diff / held_to)
        ratio[~(np.isfinite(a) & np.isfinite(n) & np.isfinite(held_to))] = np.inf
        return ratio


def _check_all(evaluate, names, arrays, analytic, *, eps, tol, atol, max_entries, seed, method, directions,
               richardson, progress, guard, not_differentiated=(), order=None) -> GradcheckReport:
    """order: how the gradients are ordered, as a note on two of them swapped says it (None: keyed)."""
    at_point = _require_deterministic(evaluate, guard.check)
    # The analytic gradients carry round-off of their own: an entry that is zero in exact
    # arithmetic comes out as ~u times the gradient's larger entries.  No probe can be asked to
    # resolve below that.
    largest = max(map(_largest_finite, analytic), default=0.0)
    rng = np.random.default_rng(seed)
    reports, probed = [], []
    for name, x, g in zip(names, arrays, analytic):
        g = np.asarray(g, dtype=np.float64)
        indices, n_directions = _choose_probes(x, rng, max_entries, method, directions)
        scale = _entry_scales(x)
        typical = _rms(g[np.isfinite(g)])     # what "small" means for one entry's gradient
        probes = _Probes()
        started = said = time.monotonic()
        for done, idx in enumerate(indices, 1):
            with guard.watching(name):
                try:
                    _probe_entry(evaluate, x, idx, scale[idx], g[idx], typical, largest, eps, richardson, tol,
                                 atol, probes, at_point)
                except _LeftDomain as error:
                    raise _left_domain_error(error, name, f"entry {tuple(int(i) for i in idx)}", eps) from error
            if progress and time.monotonic() - said >= PROGRESS_EVERY:   # a big input takes thousands of calls
                said = time.monotonic()
                print(f"gradcheck {len(reports) + 1}/{len(names)} {name}: {done}/{len(indices)} entries probed, "
                      f"{said - started:.0f} s", file=sys.stderr, flush=True)
        drawn = []
        for _ in range(n_directions):
            drawn.append(rng.choice(np.array([-1.0, 1.0]), size=x.shape) * scale)
            with guard.watching(name):
                try:
                    _probe_direction(evaluate, x, drawn[-1], g, largest, eps, richardson, tol, atol, probes,
                                     at_point)
                except _LeftDomain as error:
                    raise _left_domain_error(error, name, f"every entry (random direction {len(drawn)})", eps) \
                        from error
        report = _judge(name, x.shape, x.size, int(np.sum(np.isfinite(x))), indices, n_directions, probes, tol,
                        n_nan=int(np.sum(np.isnan(x))), caller=guard.caller)
        if report.worst_direction and report.failed:
            with guard.watching(name):
                _locate(report, evaluate, x, drawn[report.worst_direction - 1], g, scale, typical, largest,
                        eps, richardson, tol, atol)
        broken = np.flatnonzero(np.isfinite(x) & ~np.isfinite(g))
        if report.failed and broken.size:
            first = tuple(int(v) for v in np.unravel_index(int(broken[0]), x.shape))
            report.notes.insert(0, f"the analytic gradient is NaN or Inf at {broken.size} entr"
                                   f"{'y' if broken.size == 1 else 'ies'} (the first: {first}), where x is finite: "
                                   "the backward is wrong there (or f has no finite derivative there, as sqrt at 0)")
        reports.append(report)
        probed.append(_entries_probed(indices, n_directions, probes))
        if progress:
            r = reports[-1]
            print(f"gradcheck {len(reports)}/{len(names)} {name}: {r.method} {r.coverage}, "
                  f"err/bound {r.err_over_bound:.2g} {r.status}", file=sys.stderr, flush=True)
    _swap_notes(reports, probed, tol, order)
    return GradcheckReport(reports, tol, eps, atol, list(not_differentiated))


def _entries_probed(indices, n_directions, probes: _Probes) -> ProbedEntries | None:
    """An input's probes of single entries, where they alone may show its gradient to be another
    input's (_swap_notes): None when directions were probed too (the entries are then a sample),
    or a probe is unresolved or not finite (it shows nothing to compare)."""
    analytic, numeric, bound = (np.array(values, dtype=np.float64)
                                for values in (probes.analytic, probes.numeric, probes.bound))
    if n_directions or not indices or any(probes.unresolved) \
            or not all(np.all(np.isfinite(values)) for values in (analytic, numeric, bound)):
        return None
    return ProbedEntries(list(indices), analytic, numeric, bound)


def _locate(report, evaluate, x, direction, g, scale, typical, largest, eps, richardson, tol, atol) -> None:
    """A random direction failed: find an entry it failed through.  The direction is cut in two
    halves (each a direction of its own), the half that fails is followed, and so on to one entry:
    about 2 log2(n) more probes, where checking every entry would take n.  When no half fails on
    its own (the error is spread thin over many entries), the report says so instead."""
    candidates = np.flatnonzero(direction)
    halvings = 0
    while candidates.size > 1:
        halves, ratios = np.array_split(candidates, 2), []
        for half in halves:
            part = np.zeros_like(direction)
            part.flat[half] = direction.flat[half]
            one = _Probes(remeasure_failures=False)   # only the error over the bound is compared
            _probe_direction(evaluate, x, part, g, largest, eps, richardson, tol, atol, one)
            ratios.append(one.error_over_bound(tol)[0])
        if max(ratios) <= 1:
            report.notes.append(f"no half of direction {report.worst_direction} fails on its own: the error is "
                                f"spread over {candidates.size} entries, none far off alone")
            return
        candidates, halvings = halves[int(np.argmax(ratios))], halvings + 1
    idx = tuple(int(v) for v in np.unravel_index(int(candidates[0]), x.shape))
    entry = _Probes()
    _probe_entry(evaluate, x, idx, scale[idx], g[idx], typical, largest, eps, richardson, tol, atol, entry)
    report.worst_index, report.worst_direction = idx, 0
    report.analytic_at_worst, report.numeric_at_worst = entry.analytic[0], entry.numeric[0]
    report.notes.append(f"a random direction failed; halving it {halvings} times found entry {idx} "
                        f"(analytic {entry.analytic[0]:.6g}, numeric {entry.numeric[0]:.6g}); there may be others: "
                        "method=\"entries\" with max_entries=None checks every one")


class NondeterministicFunction(ValueError):
    """Two evaluations of the function at the same inputs differed (`first`, then `second`): no
    finite difference of it means anything.  A ValueError, as before; its own class lets a caller
    that did not write the function (an exercise's checks, whose forward is the exercise's) say
    whose it is, in its own words."""

    def __init__(self, first: float, second: float):
        self.first, self.second = first, second
        super().__init__(f"the function gave {first!r} and then {second!r} at the same inputs: finite differences "
                         f"need a deterministic function ({RANDOMNESS_FIX})")

    def __reduce__(self):   # pickled (a grading sandbox) as it was built
        return type(self), (self.first, self.second)


RANDOMNESS_FIX = "fix the seed of any randomness inside it, e.g. dropout, so every call draws the same"


def _require_deterministic(evaluate, after_each_call) -> tuple[float, float]:
    """Two evaluations at the same point must agree to round-off, or no difference means anything;
    and the first must be finite (NaN or inf at a step is a probe's edge of the domain, at the
    point itself a mistake in the inputs or in f).
    after_each_call: raises if that call changed the inputs, which would also make them differ (and
    is then what to say, not randomness).  Returns (f, |f|'s size) at the point: the even part of f
    along a probe is measured from it (_kink_checked)."""
    f1, size1 = evaluate()
    after_each_call()
    if not np.isfinite(f1):
        raise ValueError(f"the function is {f1!r} at the inputs given, before any step: no difference of it has "
                         "a value, so nothing can be checked; check at inputs where it is finite")
    f2, size2 = evaluate()
    after_each_call()
    # (f1 is finite: a NaN second value is what the comparison alone, False for NaN, would miss)
    if abs(f1 - f2) > 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size1, size2) or np.isnan(f2):
        raise NondeterministicFunction(f1, f2)
    return f1, size1


def _choose_probes(x, rng, max_entries, method, directions):
    """Which entries to probe one by one, and how many random directions.  Entries at +-inf (a
    softmax mask) or NaN have no derivative to check and are never probed."""
    if method == "directional":
        return [], (directions if x.size else 0)
    finite = np.flatnonzero(np.isfinite(x))
    limit = max_entries if max_entries is not None else (x.size if method == "entries" else AUTO_ALL_ENTRIES)
    if finite.size <= limit:
        chosen = finite
    else:
        chosen = rng.choice(finite, size=max_entries if max_entries is not None else AUTO_SAMPLE, replace=False)
    indices = [tuple(int(v) for v in np.unravel_index(i, x.shape)) for i in chosen]
    return indices, (directions if method == "auto" and finite.size > limit else 0)


def _entry_scales(x: np.ndarray) -> np.ndarray:
    """max(|x_i|, rms(x)) over the finite entries: what a relative step is relative to (1 where x
    is all zero; 0 at +-inf and NaN entries, which directions then leave where they are)."""
    finite = np.isfinite(x)
    scale = np.asarray(np.maximum(np.abs(np.where(finite, x, 0.0)).astype(np.float64), _rms(x[finite])))
    scale[scale == 0] = 1.0
    scale[~finite] = 0.0
    return scale


def _probe_entry(evaluate, x, idx, scale, analytic, typical, largest, eps, richardson, tol, atol, probes, at_point=None):
    original = x[idx]
    placed = [original]     # what the last move put at x[idx]: fn must have left it there

    def move(t):
        """Put x[idx] t steps away (None: back); return the real signed distance (rounding included)."""
        changed = not (x[idx] == placed[0] or (np.isnan(x[idx]) and np.isnan(placed[0])))
        x[idx] = original if t is None else original + t * scale
        placed[0] = x[idx]
        if changed:         # (after the move back, so that the finally clauses' move(None) finds it in place)
            raise _ChangedUnderProbe()
        return float(x[idx]) - float(original)

    analytic = float(analytic)
    reference = max(abs(analytic), typical)
    noise = ROUNDOFF_FACTOR * UNIT_ROUNDOFF * largest
    estimate, longer = _resolved_derivative(evaluate, move, eps, richardson, tol * abs(analytic), reference,
                                            noise, unit_step=1.0 / max(scale, TINY),
                                            shorter_steps=probes.remeasure_failures, claimed=analytic)
    bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    # failing, or passing on a loose bound (which could let a mistake through): shorter steps may tighten it
    if probes.remeasure_failures and (abs(analytic - estimate.value) > bound + tol * magnitude
                                      or estimate.bound > LOOSE_BOUND * reference):
        estimate = _shortened(evaluate, move, estimate, richardson, tol * abs(analytic),
                              shortest_rough=eps * _spread(x, idx) / max(scale, TINY))
        bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    estimate = _kink_checked(evaluate, move, eps, estimate, analytic, bound + tol * magnitude, at_point)
    estimate = _steadiness_checked(evaluate, move, estimate, analytic, bound + tol * magnitude, probes, richardson,
                                   tol * abs(analytic), longer, one_entry=True,
                                   largest_input=lambda: _largest_finite(x))
    bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    probes.add(analytic, estimate, bound, magnitude, atol, reference, largest, longer)


def _probe_direction(evaluate, x, direction, g, largest, eps, richardson, tol, atol, probes, at_point=None):
    original = x.copy()
    placed = [original]     # what the last move put in x (an array never written to): fn must have left it there

    def move(t):
        """Put x at original + t * direction (None: back); the distance along it is t (rounding ~u/eps,
        negligible)."""
        changed = not _unchanged(x, placed[0])
        # x is float64 (_require_float64_input), so it holds exactly the values placed: no copy of it needed
        placed[0] = original if t is None else original + t * direction
        x[...] = placed[0]
        if changed:         # (after the move back, so that the finally clauses' move(None) finds it in place)
            raise _ChangedUnderProbe()
        return 0.0 if t is None else float(t)

    with np.errstate(invalid="ignore"):   # an entry the direction leaves in place adds nothing, NaN or not
        terms = np.where(direction != 0, g * direction, 0.0)
    magnitude = _norm(terms)
    length = _norm(direction)            # <g, p> sums the entries' round-off with random signs
    noise = ROUNDOFF_FACTOR * UNIT_ROUNDOFF * largest * length
    claimed, terms_size = np.sum(terms), float(np.sum(np.abs(terms)))     # <g, p>, and its terms' size
    estimate, longer = _resolved_derivative(evaluate, move, eps, richardson, tol * magnitude, magnitude, noise,
                                            unit_step=1.0 / max(float(np.max(np.abs(direction), initial=0.0)), TINY),
                                            shorter_steps=probes.remeasure_failures, claimed=float(claimed))

    def bound_of(estimate):
        # rounding of x + t p moves each entry by up to u |x_i| instead of t p_i: a relative u / eps
        # (u / step for a step shortened below eps, never less for a longer one); the magnitude is
        # ||g * p||, the spread of <g, p> over random signs
        return estimate.bound + noise + UNIT_ROUNDOFF / min(eps, estimate.step) * terms_size

    bound = bound_of(estimate)
    if probes.remeasure_failures and (abs(claimed - estimate.value) > bound + tol * magnitude
                                      or estimate.bound > LOOSE_BOUND * magnitude):
        estimate = _shortened(evaluate, move, estimate, richardson, tol * magnitude,
                              shortest_rough=eps * _spread(x) / max(float(np.max(np.abs(direction))), TINY))
        bound = bound_of(estimate)
    estimate = _kink_checked(evaluate, move, eps, estimate, claimed, bound + tol * magnitude, at_point)
    estimate = _steadiness_checked(evaluate, move, estimate, claimed, bound + tol * magnitude, probes, richardson,
                                   tol * magnitude, longer, largest_input=lambda: _largest_finite(x))
    bound = bound_of(estimate)
    probes.add(claimed, estimate, bound, magnitude, atol * float(np.sum(np.abs(direction))), magnitude,
               largest * length, longer)


def _spread(x: np.ndarray, idx: tuple | None = None) -> float:
    """How far apart x's entries are, whatever their size: the rms around their mean of the finite
    entries in one line of x (along one axis), the smallest over the axes -- of the lines through
    the entry idx, or (idx None) of each axis's median line.  Lines, not the whole of x: an op
    applied row by row (a layer norm) bends on the scale of one row's spread, which rows at
    different offsets (one at 0, one at 1e6) would hide in the whole input's (5e5).  0 where no
    line holds two different finite entries (a scalar, all entries equal)."""
    spreads = []
    for axis in range(x.ndim):
        if x.shape[axis] < 2:
            continue
        lines = np.moveaxis(x if idx is None else x[idx[:axis] + (slice(None),) + idx[axis + 1:]],
                            axis if idx is None else 0, -1).reshape(-1, x.shape[axis])
        finite = np.isfinite(lines)
        count = finite.sum(axis=1)
        lines, finite, count = lines[count > 0], finite[count > 0], count[count > 0]
        if not count.size:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            centred = np.where(finite, lines - (np.where(finite, lines / count[:, None], 0.0).sum(axis=1,
                                                                                            keepdims=True)), 0.0)
            # scaled by each line's largest, so that squaring neither overflows nor underflows
            largest = np.max(np.abs(centred), axis=1, keepdims=True)
            rms = largest[:, 0] * np.sqrt(np.sum((centred / np.where(largest > 0, largest, 1.0))**2, axis=1) / count)
        spreads.append(float(np.median(rms)))
    return min((s for s in spreads if s > 0 and np.isfinite(s)), default=0.0)
