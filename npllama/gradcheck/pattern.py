"""The note a FAIL carries when one pattern explains every entry's analytic value from its
numeric one (c times numeric, its last two axes swapped, all but a few entries), and the fitted
factor behind the first (fitted_factor, public: the exercise checker's diagnosis uses it too).
The report (reports.py) asks for it only for an input probed at every entry.  And the note two
inputs of one shape carry when their gradients are swapped (_swap_notes, asked for by
checker.py once every input is judged)."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np


def fitted_factor(got, expected, weight=None) -> float | None:
    """The c for which c * expected comes closest to got: least squares, each entry's residual
    weighted by `weight` (1 by default).  None when expected is zero wherever it weighs, or either
    is not finite there.  Whether c * expected explains got is the caller's to judge, by its own
    tolerance (the exercise checker's diagnosis norm-wise, gradcheck's report entry by entry within
    its bounds)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    weight = np.ones_like(expected) if weight is None else np.asarray(weight, dtype=np.float64)
    weighted_got, weighted_expected = weight * got, weight * expected
    # each scaled by its largest entry before the squares and products, which overflow for
    # gradients ~1e300 (and underflow to 0 for ~1e-300, as if expected were zero)
    got_scale = float(np.max(np.abs(weighted_got), initial=0.0))
    expected_scale = float(np.max(np.abs(weighted_expected), initial=0.0))
    if expected_scale == 0.0 or not np.isfinite(expected_scale) or not np.isfinite(got_scale):
        return None
    if got_scale == 0.0:
        return 0.0
    unit_expected = weighted_expected / expected_scale
    correlation = float(np.sum(weighted_got / got_scale * unit_expected)) / float(np.sum(unit_expected**2))
    return got_scale / expected_scale * correlation


# The most entries a FAIL's pattern note lists by index
PATTERN_INDICES_SHOWN = 4


def _pattern_note(shape, indices, a, n, bound, tol, failed, passed, rough, unconfirmed=None) -> str:
    """What a FAIL of an input probed at every entry has in common, when one pattern explains the
    analytic value of every entry from its numeric one, each within the bound the checker holds
    it to (bound + tol of the larger value, the bound scaled as the pattern scales the numeric
    value): analytic = c * numeric for one c (0: zeros, -1: a flipped sign), analytic = numeric
    with its last two axes swapped, or analytic = numeric at all but a few entries.  '' when none
    does: a pattern is never guessed.  A factor (and zeros) needs at least two entries whose
    numeric value stands out of its bound, or one entry's ratio would always "explain" it; and
    every pattern must differ from numeric itself, beyond that bound, at two entries or more: one
    that differs at fewer is numeric with a few entries off (a factor fitted to all entries
    absorbs one entry just past its bound: "1 times numeric"; the transpose of a symmetric
    numeric is numeric).  rough: where f did not behave smoothly, which the few entries off are
    then pointed to.  unconfirmed: failing entries not measured again (checker.py's
    CONFIRMED_FAILURES), which may be right: counted, never listed as entries off."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(n)) and np.all(np.isfinite(bound))):
        return ""

    def explains(predicted, scale=1.0, predicted_bound=bound) -> bool:
        return bool(np.all(_within(predicted, a, scale * predicted_bound, tol))
                    and np.sum(~_within(predicted, n, scale * predicted_bound, tol)) >= 2)

    shown = np.abs(n) > bound                       # entries whose numeric value is not lost in its bound
    if np.sum(shown) >= 2:
        if explains(np.zeros_like(n)):
            return ("analytic is 0 at every entry, numeric is not: returned zeros -- a gradient never filled "
                    "in or never assigned (a np.zeros_like returned as it was), or a mask that zeroes everything")
        if explains(-n):
            return ("the sign is flipped: analytic is -1 times numeric at every entry -- a subtraction the wrong "
                    "way round, or a minus sign dropped or added")
        # weighted by each entry's bound, so that a loosely bound entry does not pull the fit
        tightest = float(np.min(bound[bound > 0], initial=np.inf))
        weight = np.where(bound > 0, tightest / np.where(bound > 0, bound, 1.0), 1.0)
        factor = fitted_factor(a, n, weight)
        # c * numeric carries c times numeric's error; for |c| < 1 the bound is kept, not shrunk
        if factor is not None and factor != 0 and explains(factor * n, max(1.0, abs(factor))):
            factor_text = _factor_text(factor, lambda c: explains(c * n, max(1.0, abs(c))))
            sign = ": the sign is flipped, and a factor" if factor < 0 else ": a factor"
            return (f"analytic is {factor_text} times numeric at every entry{sign} too many or missing -- a mean "
                    "for a sum (or a sum for a mean), a 1/n, a 2, a scale")
    square = len(shape) >= 2 and shape[-1] == shape[-2] > 1
    if square and len(indices) == int(np.prod(shape)):
        where = tuple(np.array(indices).T)

        def swapped(values):
            """values (one per probed entry) at the entry with the last two axes swapped."""
            laid_out = np.empty(shape)
            laid_out[where] = values
            return np.swapaxes(laid_out, -1, -2)[where]

        if explains(swapped(n), predicted_bound=np.maximum(bound, swapped(bound))):
            axes = " (its last two axes swapped)" if len(shape) > 2 else ""
            return (f"analytic is numeric transposed at every entry{axes}: a matrix product in the wrong order "
                    "(A @ B for B.T @ A.T), or a weight or its gradient transposed")
    unconfirmed = np.zeros(len(a), dtype=bool) if unconfirmed is None else np.asarray(unconfirmed, dtype=bool)
    off = np.flatnonzero(failed)
    named = np.flatnonzero(failed & ~unconfirmed)    # failures the re-measurement confirmed
    if 0 < off.size < len(a) / 2 and named.size and np.all(passed | failed):
        listed = ", ".join(str(tuple(int(v) for v in indices[i])) for i in named[:PATTERN_INDICES_SHOWN])
        more = ", ..." if named.size > PATTERN_INDICES_SHOWN else ""
        unnamed = (f" (and {off.size - named.size} more that failed a first measurement and were not measured "
                   "again: not named, as some may be right)" if off.size > named.size else "")
        cause = ("f did not behave smoothly at some of them (a kink: see below)" if np.any(rough[named]) else
                 "a term that only those entries receive is missing or counted twice (the diagonal, repeated "
                 "indices, one branch of a sum, a mask's edge)")
        return (f"analytic matches numeric at every entry but {off.size} of {len(a)}: {listed}{more}{unnamed} "
                f"-- {cause}")
    return ""


def _within(predicted, values, predicted_bound, tol) -> np.ndarray:
    """Per entry: values lies within the bound of predicted (as the checker holds analytic to numeric)."""
    return np.abs(values - predicted) <= predicted_bound + tol * np.maximum(np.abs(values), np.abs(predicted))


@dataclasses.dataclass
class ProbedEntries:
    """One input's probes of single entries, for the notes that compare inputs (_swap_notes): where
    (indices), what backward claimed there (analytic), what f's differences showed (numeric),
    and the bound of each difference."""
    indices: list
    analytic: np.ndarray
    numeric: np.ndarray
    bound: np.ndarray


def _swap_notes(reports, probed, tol, order: str | None) -> None:
    """Put first in both inputs' notes, in place of their pattern, when two inputs that FAIL have
    gradients swapped: the analytic gradient of each lies within the bounds of the other's
    numeric one at every entry of both (all probed one by one, the same entries).  Never from
    part of the entries: a pair of which one entry does not fit is left to the notes of each.
    probed: a ProbedEntries per report, None where its probes cannot show a swap (directions,
    probes unresolved).  order: how the gradients are ordered (None: keyed by the inputs' names)."""
    names = ", ".join(repr(r.name) for r in reports)
    for i, j in itertools.combinations(range(len(reports)), 2):
        first, second = probed[i], probed[j]
        if (first is None or second is None or reports[i].status != "FAIL" or reports[j].status != "FAIL"
                or reports[i].shape != reports[j].shape or first.indices != second.indices):
            continue
        if not (np.all(_within(second.numeric, first.analytic, second.bound, tol))
                and np.all(_within(first.numeric, second.analytic, first.bound, tol))):
            continue
        how = f"{order} ({names})" if order else "each is given under the other's key"
        note = f"the gradients of {reports[i].name} and {reports[j].name} are swapped: {how}"
        for report in (reports[i], reports[j]):
            if report.pattern in report.notes:      # a factor or a transpose fitted to the other's gradient
                report.notes.remove(report.pattern)
            report.notes.insert(0, note)


def _factor_text(factor: float, explains) -> str:
    """'3', or '1/4' for a factor below 1, where that round number explains every entry as well as
    the fitted one does; else the fitted factor to the fewest digits (4 at least) whose value still
    explains every entry (1.00001 to 4 digits is "1", which is no mistake at all)."""
    if abs(factor) >= 1:
        value, text = float(round(factor)), f"{round(factor)}"
    else:
        whole = round(1 / factor)
        value, text = 1.0 / whole, f"1/{whole}" if whole > 0 else f"-1/{-whole}"
    if explains(value):
        return text
    # 17 significant digits give the float itself back, which explains (the caller checked)
    return next(text for digits in range(4, 18) if explains(float(text := f"{factor:.{digits}g}")))
