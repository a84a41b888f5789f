"""What a check returns: one InputReport per input and the GradcheckReport around them (the table
str() prints, raise_if_failed), and how an input's probes become its report (_judge): the
verdict, the relative error and bound (_relative_figures), and the notes that say why a probe did
not pass (_notes; a FAIL's pattern from pattern.py)."""
from __future__ import annotations

import dataclasses

import numpy as np

from .constants import LOOSE_BOUND, SMALLEST, TINY, UNRESOLVED
from .norms import _largest_finite, _norm, rel_error
from .pattern import _pattern_note


# "f did not change at all": rounding inside f is offered as the reason only for gradients below
# this.  One step of a unit-size input (eps = 1e-4) moves f by ~1e-4 * g; for values of f's inner
# terms up to ~1e4 to round that away (spacing ~2e-12), g must be under ~2e-8.
ROUNDS_AWAY = 2e-8


@dataclasses.dataclass
class InputReport:
    """What the check found for one input: how much of it was probed and how (`method`,
    `coverage`), the worst probe against its bound (`err_over_bound`, `worst`, the analytic and
    numeric values there), and the verdict (`status`: ok, FAIL or UNRESOLVED), with `notes` saying
    why where a number alone would mislead."""
    name: str
    shape: tuple
    checked: int            # entries probed one by one by finite differences
    max_abs_err: float      # largest |analytic - numeric| over the checked entries
    rel_err: float
    worst_index: tuple      # the entry whose error is largest against its bound (() if none)
    analytic_at_worst: float
    numeric_at_worst: float
    ok: bool
    size: int = 0                   # entries in the input
    directions: int = 0             # random directions probed
    method: str = "all entries"     # "all entries", "sampled", "directional", "sampled + directional"
    bound: float = 0.0              # the relative error the input was held to (norm-wise, like rel_err)
    err_over_bound: float = 0.0     # worst probe: |analytic - numeric| / its bound (<= 1 passes)
    richardson: int = 0             # probes whose numeric value is a Richardson extrapolation
    floor_only: int = 0             # probes that passed only through the absolute floor atol
    notes: list = dataclasses.field(default_factory=list)   # warnings: a FAIL's pattern, a floor-only pass, ...
    failed: int = 0                 # probes whose difference exceeds their bound
    unresolved: int = 0             # probes whose bound stayed above UNRESOLVED of the gradient: not passed
    longer_steps: int = 0           # probes resolved only with a step longer than eps
    worst_direction: int = 0        # when the probe shown is a random direction: its number (1-based)
    pattern: str = ""               # a FAIL's pattern (pattern.py), also the first of notes: '' if none

    @property
    def status(self) -> str:
        """'ok', 'FAIL', or 'UNRESOLVED' (nothing failed, but some probe could not be judged)."""
        if self.ok:
            return "ok"
        return "FAIL" if self.failed else "UNRESOLVED"

    @property
    def worst(self) -> str:
        """The probe shown in the report: an entry's index, or 'direction k'."""
        return f"direction {self.worst_direction}" if self.worst_direction else str(self.worst_index)

    @property
    def coverage(self) -> str:
        """'96/96', '25/384 + 4 dir', '4 dir (384)': what was probed of the input's entries."""
        if self.directions == 0:
            return f"{self.checked}/{self.size}"
        if self.checked == 0:
            return f"{self.directions} dir ({self.size})"
        return f"{self.checked}/{self.size} + {self.directions} dir"


@dataclasses.dataclass
class GradcheckReport:
    """The result of `gradcheck` / `check_op`: one InputReport per checked input (`report["x"]`),
    the tolerances used, and the inputs left out as not differentiable.  `ok` is the verdict;
    `str(report)` is the table the tests print on failure."""
    inputs: list[InputReport]
    tol: float
    eps: float = 0.0
    atol: float = 0.0
    # check_op's inputs left out of the check, as "name (dtype)": an int index array or a bool mask,
    # but also float data passed as ints by mistake, which the report must not hide
    not_differentiated: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input passed (an UNRESOLVED input is not a pass)."""
        return all(r.ok for r in self.inputs)

    def __getitem__(self, name: str) -> InputReport:
        for r in self.inputs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def max_rel_err(self) -> float:
        """The largest norm-wise relative error of any input (0.0 with no inputs)."""
        return max((r.rel_err for r in self.inputs), default=0.0)

    @property
    def max_err_over_bound(self) -> float:
        """The worst probe of all inputs, as a fraction of its bound (a correct gradient: << 1)."""
        return max((r.err_over_bound for r in self.inputs), default=0.0)

    @property
    def warnings(self) -> list[str]:
        """Every input's notes, as "name: note" (a FAIL's pattern, a pass through the floor alone, ...)."""
        return [f"{r.name}: {note}" for r in self.inputs for note in r.notes]

    def __str__(self) -> str:
        rows = [("input", "shape", "method", "checked", "rel err", "bound", "err/bound", "worst",
                 "analytic", "numeric", "")]
        for r in self.inputs:
            analytic, numeric = _distinguishable(r.analytic_at_worst, r.numeric_at_worst)
            probed = r.checked or r.directions
            worst, analytic, numeric = (r.worst, analytic, numeric) if probed else ("-", "-", "-")
            bound = "-" if np.isnan(r.bound) else f"{r.bound:.2e}"
            rows.append((r.name, str(r.shape), r.method, r.coverage, f"{r.rel_err:.2e}", bound,
                         f"{r.err_over_bound:.2g}", worst, analytic, numeric, r.status))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        if self.not_differentiated:
            lines.append("not differentiated: " + ", ".join(self.not_differentiated))
        lines.append(f"{self._verdict()} (err/bound <= 1 passes; step {self.eps:g} relative to each input's scale; "
                     f"bound = finite-difference error estimate + {self.tol:g} relative"
                     + (f", absolute floor {self.atol:g})" if self.atol else ")"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _named(self, status: str) -> list[str]:
        """The names of the inputs whose status is this one."""
        return [r.name for r in self.inputs if r.status == status]

    def _by_status(self, status: str) -> str:
        """'x, W': the inputs whose status is this one."""
        return ", ".join(self._named(status))

    def _verdict(self) -> str:
        """The line under the table.  An UNRESOLVED input is not a FAIL: the differences could not
        tell a right gradient from a wrong one there, and saying "do NOT match" would have the user
        hunt for a mistake a right backward does not have."""
        failed, unresolved = self._by_status("FAIL"), self._by_status("UNRESOLVED")
        # singular or plural by how many inputs, not by a comma (a name may hold one)
        one_unresolved, one_failed = len(self._named("UNRESOLVED")) == 1, len(self._named("FAIL")) == 1
        unresolved_is = unresolved and (f"{unresolved} {'is' if one_unresolved else 'are'} UNRESOLVED, "
                                        "neither passed nor failed: the warnings say why, and what to do")
        if failed:
            return f"some gradients do NOT match: {failed} FAIL{'s' if one_failed else ''}" + (
                f"; {unresolved_is}" if unresolved else "")
        if unresolved:
            return f"no gradient failed, but {unresolved_is}"
        return "all gradients match"

    def raise_if_failed(self, strict: bool = False) -> None:
        """AssertionError carrying the report if a gradient failed or could not be verified
        (UNRESOLVED); strict=True also on any warning (a loose bound, a pass through atol, entries
        not checked).  Its first line, which pytest's short summary shows, names the inputs."""
        __tracebackhide__ = True     # pytest: the test's own line and the report, not this frame's locals
        if not self.ok:
            failed, unresolved = self._by_status("FAIL"), self._by_status("UNRESOLVED")
            headline = (f"gradient check failed (FAIL: {failed}"
                        + (f"; UNRESOLVED: {unresolved}):" if unresolved else "):") if failed else
                        f"gradient check could not verify every gradient (UNRESOLVED: {unresolved}; none FAILed):")
            raise AssertionError(headline + "\n" + str(self))
        if strict and self.warnings:
            raise AssertionError("gradient check passed with warnings (strict=True):\n" + str(self))


def _distinguishable(a: float, b: float) -> tuple[str, str]:
    """a and b printed with enough significant digits (6 to 17) to show how they differ."""
    digits = 6
    while digits < 17 and a != b and f"{a:.{digits}g}" == f"{b:.{digits}g}":
        digits += 1
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def _judge(name, shape, size, n_finite, indices, n_directions, probes, tol, n_nan=0, caller="fn") -> InputReport:
    """caller: the user's function the check evaluates, "fn" (gradcheck) or "forward" (check_op),
    as the notes name it."""
    a, n = np.array(probes.analytic, dtype=np.float64), np.array(probes.numeric, dtype=np.float64)
    model_bound = np.array(probes.bound, dtype=np.float64)
    magnitude = np.array(probes.magnitude, dtype=np.float64)
    # a NaN or Inf from the backward where f's differences are finite is a wrong gradient there,
    # not one the differences could not judge
    unresolved = np.array(probes.unresolved, dtype=bool) & ~(~np.isfinite(a) & np.isfinite(n))
    held_to = model_bound + tol * magnitude
    diff = np.abs(a - n)
    finite = np.isfinite(a) & np.isfinite(n) & np.isfinite(held_to)
    ratio = probes.error_over_bound(tol)
    within = (ratio <= 1) & ~unresolved
    # only a floor the user set passes a probe: without one, an unresolved 0 == 0 proves nothing
    floor = np.array(probes.floor, dtype=np.float64)
    by_floor = np.isfinite(a) & np.isfinite(n) & ~within & (floor > 0) & (diff <= floor)
    passed = within | by_floor
    n_entries = len(indices)
    method = ("directional" if n_directions and n_entries == 0 else "all entries" if not n_directions and n_entries == n_finite
              else "sampled + directional" if n_directions else "sampled")
    report = InputReport(name, tuple(shape), n_entries, 0.0, 0.0, (), 0.0, 0.0, bool(np.all(passed)), size=size,
                         directions=n_directions, method=method, richardson=probes.richardson,
                         floor_only=int(np.sum(by_floor)))
    if a.size == 0:
        if size == 0:
            report.notes.append("it has no entries: nothing was checked")
        return report
    failed_outright = ~passed & ~unresolved
    report.failed = int(np.sum(failed_outright))
    report.unresolved = int(np.sum(~passed & unresolved))
    report.longer_steps = probes.longer_steps
    report.err_over_bound = float(np.max(ratio))
    report.rel_err, report.bound = _relative_figures(a, n, held_to, magnitude, np.array(probes.largest),
                                                     n_entries, finite)
    # the probe shown: the worst confirmed failure (measured again), else the worst that failed
    # outright, else the worst unresolved, else the worst
    unconfirmed = np.array(probes.unconfirmed, dtype=bool) & failed_outright
    rank = np.where(failed_outright & ~unconfirmed, 3.0, np.where(failed_outright, 2.0, np.where(~passed, 1.0, 0.0)))
    e = int(np.lexsort((np.nan_to_num(ratio, nan=np.inf), rank))[-1])
    report.analytic_at_worst, report.numeric_at_worst = float(a[e]), float(n[e])
    if e < n_entries:
        report.worst_index = tuple(int(v) for v in indices[e])
    else:
        report.worst_direction = e - n_entries + 1
    if n_entries:
        report.max_abs_err = float(np.max(diff[:n_entries])) if np.all(finite[:n_entries]) else float("inf")
    report.notes = _notes(report, indices, n_finite, probes, passed, unresolved, n_nan, caller)
    if report.failed and method == "all entries":
        pattern = _pattern_note(tuple(shape), indices, a, n, model_bound, tol, failed_outright, passed,
                                np.array(probes.rough, dtype=bool), unconfirmed)
        if pattern:
            report.pattern = pattern
            report.notes.insert(0, pattern)
    return report


def _relative_figures(a, n, held_to, magnitude, largest, n_entries, finite):
    """(relative error, relative bound): norm-wise over the entries, worst over the directions.
    Relative to the gradient however small it is (a loss scaled by 1e-40 has gradients of 1e-40).
    A gradient that is exactly zero (f ignores the input) has no size of its own: it is measured
    against the check's largest gradient (largest), as a probe's resolution is; where that is zero
    too, against the differences' estimate.  Where every gradient of the check and every difference
    is zero, nothing has a size: (0, nan)."""
    if not np.all(finite):
        return float("inf"), float("nan")
    if not (np.any(a) or np.any(n) or np.any(largest)):
        return 0.0, float("nan")
    rel, bound = 0.0, 0.0
    if n_entries:
        size = _norm(magnitude[:n_entries])
        if np.any(a[:n_entries]) or not np.any(largest[:n_entries]):
            rel = rel_error(a[:n_entries], n[:n_entries], tiny=SMALLEST)
        else:
            size = _norm(largest[:n_entries])
            rel = _norm(a[:n_entries] - n[:n_entries]) / size
        bound = float(_norm(held_to[:n_entries]) / (size if size > 0 else TINY))
    if len(a) > n_entries:
        along_a, along_n, along_largest = a[n_entries:], n[n_entries:], largest[n_entries:]
        # where the check's largest gradient is zero too, relative to the differences' estimate, as
        # the entries are (rel_error); a direction where that is zero as well has no size at all
        scale = np.where(along_a != 0, magnitude[n_entries:],
                         np.where(along_largest > 0, along_largest, np.abs(along_n)))
        sized = scale > 0
        if np.any(sized):
            with np.errstate(over="ignore"):
                rel = max(rel, float(np.max(np.abs(along_a - along_n)[sized] / scale[sized])))
                bound = max(bound, float(np.max(held_to[n_entries:][sized] / scale[sized])))
    return rel, bound


NO_GRADIENT_SIZE = "every analytic gradient of the check is zero, so there is no gradient size to measure against"


def _without_gradient_size(largest) -> bool:
    """Whether the check has no gradient size to measure against: its largest finite gradient entry
    (largest: in one probe's units, or one per probe) is zero.  The one rule a probe is judged by
    (checker.py's _Probes.add: its estimate against its own bound) and the notes say it by."""
    return not np.any(np.asarray(largest, dtype=np.float64) > 0)


def _farthest_from_zero(among, numeric, bounds) -> str:
    """'the farthest out: 0.0002 against a bound of 0.00036': of the probes among, the estimate that
    stands farthest out of 0 next to its bound -- the probe the table shows, where all are zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(among, np.abs(numeric) / bounds, -np.inf)
    e = int(np.argmax(np.nan_to_num(out, nan=np.inf)))
    return f"the farthest out: {numeric[e]:.2g} against a bound of {bounds[e]:.2g}"


def _notes(report: InputReport, indices, n_finite, probes, passed, unresolved, n_nan, caller="fn") -> list[str]:
    notes, n_entries = [], len(indices)
    a, n = np.array(probes.analytic, dtype=np.float64), np.array(probes.numeric, dtype=np.float64)
    if n_finite + n_nan < report.size:
        notes.append(f"{report.size - n_finite - n_nan} entries are +-inf and were not probed")
    if n_nan:
        notes.append(f"{n_nan} entries are NaN and were not probed")
    numeric_broken = ~np.isfinite(n)
    if np.any(numeric_broken):
        notes.append(f"{int(np.sum(numeric_broken))} probe(s) UNRESOLVED: f was NaN or Inf within a step of the "
                     "point, so no difference exists there (an input at the edge of f's domain, as log or sqrt "
                     "near 0, or an overflow); check at inputs inside the domain")
    at_kink = np.array([bool(b) for b in probes.between], dtype=bool) & ~passed
    if np.any(at_kink):
        first = int(np.flatnonzero(at_kink)[0])
        where = (f"entry {tuple(int(v) for v in indices[first])}" if first < n_entries
                 else f"direction {first - n_entries + 1}")
        left, right = probes.between[first]
        notes.append(f"{int(np.sum(at_kink))} probe(s) UNRESOLVED at a kink at the point (the first: {where}): "
                     f"your gradient lies between the one-sided slopes {left:.6g} and {right:.6g} along it, so it "
                     "may be a subgradient (one probe cannot tell whether the whole gradient is: at a tie of a max "
                     "the entries' shares must add up to 1); f has no derivative there, and finite differences "
                     "cannot judge it -- draw inputs away from it (no exact zeros into a relu or abs, no ties into "
                     "a max)")
    unsteady = np.array(probes.unsteady, dtype=bool) & ~passed
    flat = np.array(probes.flat, dtype=bool) & unsteady
    if np.any(flat):
        notes.append(f"{int(np.sum(flat))} probe(s) UNRESOLVED: f kept one value along them (or moved along a "
                     "straight line whose slope is not the analytic value), at every step from 1/64 to 64 times the "
                     "step, and farther out it moves in stairs as high as the analytic value would move it across "
                     "them: a cancellation inside f rounds such a change away (log(1 + exp(s)) is exactly 0 for "
                     "s < -37; a GELU's 1 + tanh(z) at x ~ -7 keeps one value while 0.5 x moves on), and finite "
                     "differences cannot judge it -- check at less extreme inputs, or compute f stably "
                     "(np.logaddexp(0, s))")
    if np.any(unsteady & ~flat):
        notes.append(f"{int(np.sum(unsteady & ~flat))} probe(s) UNRESOLVED: f itself is not resolved there -- its values "
                     "round far above the round-off the bounds allow for (a cancellation inside f, as 1 + tanh(z) "
                     "for z << 0 or exp(x) - 1 for tiny x) or bend at a kink nearby, or within a few steps (an input "
                     "far from zero whose entries differ by little, as x = 1e3 + noise, is stepped by eps * 1e3), so "
                     "its differences at other steps disagree by more than their error bounds, and the analytic value "
                     "lies within that disagreement; check at inputs in a better-conditioned range, compute f more "
                     "stably, or for an input far from zero give a smaller eps")
    # every analytic gradient of the check is zero: no gradient size to hold a bound to, only the
    # finite differences' estimate against its own error bound (checker.py's sizeless probes)
    sizeless = _without_gradient_size(probes.largest)
    bounds = np.array(probes.bound, dtype=np.float64)

    def bound_verdict(among) -> str:
        """Why an unresolved probe's bound judges nothing: too large next to its gradient, or, with no
        gradient size, its estimate standing out of 0 by more than UNRESOLVED of it (the farthest out
        of the probes among, as the table shows it)."""
        if not sizeless:
            return f"stays above {UNRESOLVED:g} of the gradient, so a wrong gradient could not be told from a right one"
        return (f"leaves their estimate within it of 0 but more than {UNRESOLVED:g} of it away "
                f"({_farthest_from_zero(among, n, bounds)}; {NO_GRADIENT_SIZE}), so a zero could not be told "
                "from a slope that small")

    # the rest: a bound too loose to judge, named by what limits it (checker.py)
    not_judged = ~passed & unresolved & ~numeric_broken & ~unsteady & ~at_kink
    by_round_off = not_judged & ~np.array(probes.rough, dtype=bool) & np.array(probes.roundoff_limited, dtype=bool)
    by_step = not_judged & ~by_round_off
    if np.any(by_round_off):
        notes.append(f"{int(np.sum(by_round_off))} probe(s) UNRESOLVED: even with longer steps, the finite differences' "
                     f"error bound {bound_verdict(by_round_off)} (|f|'s round-off swamps a tiny gradient). "
                     "Check at inputs where the gradient is larger next to |f|, or accept them with atol=")
    if np.any(by_step):
        # sum(sin(k x)) with k times the step ~ 1 was blamed on round-off, with atol= as the advice:
        # its gradient is not tiny, f rounds as the model says, and atol would pass a wrong one
        notes.append(f"{int(np.sum(by_step))} probe(s) UNRESOLVED: f changes too much within the step for its "
                     "differences to judge the gradient -- even at shorter steps their error bound, mostly f "
                     "bending within the step (or, where they did not even shrink like h^2 as a smooth function's "
                     f"do, only a guess), {bound_verdict(by_step)}.  f varies on a scale near or "
                     "below the step (sum(sin(k x)) with k times the step ~ 1 or more; a step is eps times the "
                     "input's scale, max(|x_i|, rms(x))), or rounds far above |f|'s round-off (a cancellation "
                     "inside it: compute f stably).  Give a smaller eps (eps=1e-7), or check at inputs where f "
                     "varies more slowly")
    # (a failing random direction is followed down to its entry by _locate, which says so)
    # (not where a probe's 0 was kept while longer steps, over which f did move, showed nothing but its
    # round-off: C + a sum(sin(x)) over a large C, its 0 at the step eps set aside, UNRESOLVED)
    if not report.ok and n.size and np.all(n == 0) and np.any(a != 0) and not any(probes.set_aside):
        # of the finite claims: a NaN or Inf one is named by its own note, and is no small gradient
        # rounded away ("largest nan" was said where the rest were 0)
        largest_claimed = _largest_finite(a)
        # check_op's user wrote a forward, whose out reaches the scalar only through L = sum(out * dout)
        scalar, depends = ("L = sum(out * dout)", "forward's out does") if caller == "forward" else ("f", "f does")
        rounding = ("" if not 0 < largest_claimed < ROUNDS_AWAY else
                    f", or {scalar} is a difference of larger numbers that rounds to the same value at every step, "
                    f"so a gradient as small as the analytic ones here (largest {largest_claimed:.2g}) cannot move "
                    "it (a cross-entropy whose target logit leads the others by ~37 or more is exactly 0.0 in "
                    "float64: check at less extreme inputs)")
        notes.append(f"{scalar} did not change at all when this input moved: either {depends} not depend on it "
                     f"here (its true gradient is zero there: a sign, a rounding, a normalised single value), or "
                     f"{caller} does not read the arrays it is given (they are changed in place; a copy made "
                     f"before the call would not see it){rounding}")
    # a rough probe not measured again is not put down to a kink or rounding where others of the
    # input were smooth at far shorter steps: f varies within the step there (sum(sin(1e7 x)))
    varies_within_step = any(probes.smooth_shorter)
    if not report.ok and any(r and not p and not s and not k and np.isfinite(v) and not (u and varies_within_step)
                             for r, p, s, k, v, u in zip(probes.rough, passed, unsteady, at_kink, probes.numeric,
                                                         probes.unconfirmed)):
        # a probe that failed where f behaved smoothly is a verdict the rough ones do not weaken (after
        # a few failures are confirmed, the others are not measured again, and may stay at rough steps)
        smooth_failures = int(np.sum(~passed & ~unresolved & ~np.array(probes.rough, dtype=bool)))
        standing = (f" (the FAIL stands on {smooth_failures} probe(s) that failed where f behaved smoothly)"
                    if smooth_failures else "")
        notes.append("along a failing probe f did not behave like a smooth function (its differences at steps "
                     "h, 2h, 4h do not shrink as h^2): a kink (relu or abs at 0, a max with a tie) at or within a "
                     "few steps of the point, or rounding inside f far above that of |f| (a cancellation, as "
                     "1 + tanh(z) for z << 0 or exp(x) - 1 for tiny x), makes finite differences unreliable "
                     f"there{standing}; draw inputs away from it, or compute f stably")
    unconfirmed = np.array(probes.unconfirmed, dtype=bool) & ~passed & ~unresolved
    if np.any(unconfirmed):
        notes.append(f"{int(np.sum(unconfirmed))} failing probe(s) were not measured again once {probes.confirmed} "
                     "failure(s) were confirmed (the input FAILs on those): they are not named, as some may be "
                     "right where f rounds or bends, which only the re-measurement shows")
    if report.floor_only:
        notes.append(f"{report.floor_only} probe(s) passed only through the absolute floor atol: "
                     "the check did not resolve them")
    if report.ok and np.isnan(report.bound):     # _relative_figures: zero everywhere, nothing to be relative to
        notes.append("the gradient is zero everywhere (in every input of the check), so a relative bound means "
                     "nothing: the check can only confirm zero -- f's differences are zero too, to within "
                     f"{max(probes.bound):.1e} absolute")
    # passed, but only within LOOSE_BOUND of the check's largest gradient, its own far smaller (a
    # probe where analytic and numeric are both exactly 0 confirms a zero: f ignores the input there)
    unchecked = passed & np.array(probes.below_own, dtype=bool) & ((a != 0) | (n != 0))
    if np.any(unchecked) and sizeless:
        # (checker.py passes such a probe where its estimate is within UNRESOLVED of its bound of 0)
        notes.append(f"its zero gradient was effectively not checked ({NO_GRADIENT_SIZE}): its zero was "
                     f"compared only with the finite differences' estimate, within {UNRESOLVED:g} of its own error "
                     f"bound of 0 along {int(np.sum(unchecked))} probe(s) where f moved "
                     f"({_farthest_from_zero(unchecked, n, bounds)}) -- that passes the zero, but a gradient of f "
                     "below that bound would pass as zero too.  Not a FAIL: to check it, choose inputs where f's "
                     "differences resolve a tighter bound (less round-off: a smaller constant added to f), or "
                     "check it beside an input whose gradient is not zero")
    elif np.any(unchecked):
        own = float(np.max(np.abs(np.where(unchecked, a, 0.0))))
        within = float(np.max(np.where(unchecked, bounds, 0.0)))
        largest = float(np.max(np.where(unchecked, np.array(probes.largest, dtype=np.float64), 0.0)))
        notes.append(f"its own gradient was effectively not checked: it is tiny (up to {own:.2g} along "
                     f"{int(np.sum(unchecked))} probe(s)) next to the check's largest gradient ({largest:.2g}), and "
                     f"finite differences resolved it only to within {within:.2g} ({LOOSE_BOUND:g} of that largest or "
                     "less), which passes it -- a wrong gradient of its size would pass too.  Not a FAIL: to check it, "
                     "choose inputs where its gradient is not so small next to the others (a softmax less saturated), "
                     "or check it in a function of its own")
    elif report.bound > LOOSE_BOUND and not report.unresolved:
        relative_to = f" to the finite differences' estimate: {NO_GRADIENT_SIZE}" if sizeless else ""
        notes.append(f"the bound is loose ({report.bound:.1e} relative{relative_to}): finite differences cannot resolve "
                     "this gradient well (tiny next to |f|'s round-off, or f strongly curved); "
                     "a mistake smaller than that would pass")
    if 0 < n_entries < n_finite and not report.directions:
        notes.append(f"only {n_entries} of {report.size} entries were checked and no directions: "
                     "an error elsewhere would not be seen")
    return notes
