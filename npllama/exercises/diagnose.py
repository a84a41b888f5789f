"""Say *what* is wrong with a gradient, not only that it is wrong.

`diagnose(got, expected, grad=...)` compares a student's gradient with the right one (central
differences or a closed form) and returns a `Finding`: the relative error, the worst index and both
values there, a one-line diagnosis and a hint.  It says what the numbers of this one case show,
trying in order:

    a wrong shape (the transpose? the right size but another shape?), NaN/Inf, all zeros,
    float32 round-off, a constant ratio (2x, -1x = wrong sign, 0.5x, any other factor), the
    transpose, gradient leaking into entries that must get none (a wrong mask), gradient missing
    on some entries, an error concentrated on a few entries.

Naming the step of the derivation that went wrong takes more than one case: the runner does it
from catalogue.py's probes (mistakes.py) and puts its words in place of these.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..gradcheck import fitted_factor
from ..gradcheck import rel_error as gradcheck_rel_error

MATCH_TOL = 1e-6   # "got equals this candidate" (norm-wise relative error)
ROUND_OFF_RATIO = 5e-7   # a ratio this close to 1 is round-off (float64 differences), never "a constant factor"
NEAR_EXACT = 1e-9        # above the numeric gradient's own noise: a near miss is the student's arithmetic
# Why an honest gradient is right only to 1e-12..1e-4 (the exercise's hint and the soft note say it)
NEAR_EXACT_CAUSES = ("part of the arithmetic in float32 (dtype=np.float32, .astype), an epsilon added "
                     "(n + 1e-10, a guard against 0), or a quantity recovered from the cache by a lossy "
                     "route (1 / rstd**2 - ...)")
NONFINITE_HINT = ("look for 0/0 (e.g. dividing by a count that can be 0, or a fully masked row), exp of a "
                  "large number, or inf - inf")


@dataclasses.dataclass
class Finding:
    """Everything a student needs to find the bug in one gradient."""

    grad: str                       # which gradient, e.g. "dx" ('' when none came back: a crash)
    message: str                    # what is wrong, one or two sentences
    hint: str = ""                  # where to look
    rel_error: float | None = None
    worst_index: tuple | None = None
    got_value: float | None = None
    expected_value: float | None = None
    case: str = ""                  # the inputs' shapes and options
    ladder: str = ""                # which simpler cases pass, and what changed when one fails
    # what is wrong when it is not one gradient (grad ''): "the return value", "dy", "the cache"
    subject: str = ""
    # the case's other gradients (checks.check_gradient), each list in the backward's order: wrong
    # too, right, and not decided by finite differences; backward_steps: each gradient's step of the
    # backward (0 the first it reaches), None when the exercise does not give its order
    wrong_gradients: list = dataclasses.field(default_factory=list)
    right_gradients: list = dataclasses.field(default_factory=list)
    undecided_gradients: list = dataclasses.field(default_factory=list)
    backward_steps: dict | None = None
    # every gradient the mistake the catalogue names changes (runner._name_the_mistake); [] when none is
    named_gradients: list = dataclasses.field(default_factory=list)
    # the named mistake's words when it leaves grad right on every probe: message and hint stay what
    # grad's own numbers show, and the mistake is said after them (where_the_slip_is)
    named_mistake: str = ""
    # whether the named mistake, recomputed on this case, gives grad's numbers: None when it was not
    # tried; it may reach grad on this case and on no probe, or leave it right here and not on a probe
    named_fits_here: bool | None = None
    # the other wrong gradients the named mistake changes on a probe whose numbers on this case are
    # not the mistake's: wrong here, but not (only) by it
    named_misfits: list = dataclasses.field(default_factory=list)

    @property
    def other_gradients(self) -> str:
        """What the other gradients show, said after the message: kept apart from it, which a mistake
        the catalogue names replaces."""
        return where_the_slip_is(self)

    @property
    def what_is_wrong(self) -> str:
        return self.message + self.other_gradients

    def lines(self) -> list[str]:
        out = []
        if self.case:
            out.append(f"case: {self.case}")
        if self.grad:
            out.append(f"gradient: {self.grad}")
        elif self.subject:
            out.append(f"problem in: {self.subject}")
        if self.rel_error is not None:
            where = ""
            if self.worst_index is not None and self.got_value is not None:
                where = (f"; worst at index {self.worst_index}: yours {self.got_value:.6g}, "
                         f"expected {self.expected_value:.6g}")
            out.append(f"relative error {self.rel_error:.3g}{where}")
        out.append(f"what is wrong: {self.what_is_wrong}")
        if self.hint:
            first, *more = self.hint.splitlines()       # a snippet to run goes on lines of its own
            out += [f"hint: {first}"] + [f"    {line}" for line in more]
        if self.ladder:
            out.append(f"simpler cases: {self.ladder}")
        return out

    def short(self) -> str:
        return f"{self.grad}: {self.what_is_wrong}" if self.grad else self.what_is_wrong


def where_the_slip_is(finding: Finding) -> str:
    """What the finding's other gradients say about where the slip is, when several are wrong
    (finding.grad: the one the report shows, the root).  Those the named mistake changes are its
    own, unless their numbers on this case are not the mistake's (finding.named_misfits).  With the
    backward's order, of the others: those of the root's step (no root among them), those further
    down (computed from what the root's gradient is computed from: they may be wrong only because of
    a slip there) and the right ones before it (the slip is not there). Without it: the lists, and
    that which went wrong first cannot be told.  A mistake named in other gradients than the root is
    said after the root's own diagnosis, even when the root is the only one wrong.  A gradient the
    named mistake leaves right on every probe (where the student's numbers are the mistake's) is not
    its: fixing the root does not fix it.  Then those finite differences could not decide."""
    root, named = finding.grad, finding.named_gradients
    wrong = finding.wrong_gradients
    parts = []
    if named and root and finding.named_mistake:
        # the mistake is said after the root's own numbers: it leaves the root right on every probe
        # (its numbers may be the mistake's on this case only, or a slip of its own the probes did
        # not show), or changes it there but does not give its numbers on this case
        where = _and_names(named)
        named_wrong = [g for g in wrong if g in named]
        named_others = [g for g in named if g != root]     # the root is wrong here: no "too" said of it alone
        if named_others and named_wrong == named_others:
            where += ", wrong on this case too"
        elif named_wrong:
            where += f" ({_and_names(named_wrong)} wrong on this case too)"
        if root in named:
            here = (f"it fits your numbers on every probe case, but your {root} on this case is not what it gives: "
                    f"fix it and check again, and if {root} is still wrong, it has a slip of its own")
        elif finding.named_fits_here:
            here = (f"it fits your numbers on every probe case, where {root} is right, and on this case it gives "
                    f"your {root} too: fix it and check again")
        else:
            here = (f"it fits your numbers on every probe case, where {root} is right: fix it and check again, and "
                    f"if {root} is still wrong, it has a slip of its own")
        parts.append(f"a mistake is also named, in {where}: {finding.named_mistake} -- {here}")
    elif named:
        misfits = [g for g in wrong if g in named and g in finding.named_misfits]
        same_mistake = [g for g in wrong if g in named and g not in misfits]
        if same_mistake:
            parts.append(f"also wrong by the same mistake: {_some_names(same_mistake)}")
        if misfits:
            still = f"{misfits[0]} is still wrong, it has a slip of its own" if len(misfits) == 1 else \
                "they are still wrong, they have slips of their own"
            parts.append(f"also wrong: {_some_names(misfits)} -- the mistake named fits your {_and_names(misfits)} on "
                         f"every probe case, but not on this case: fix the mistake and check again, and if {still}")
    others = [g for g in wrong if g not in named]
    if named and others:
        # right on every probe, where the student's numbers are the mistake's: not the mistake's
        still = f"{others[0]} is still wrong, it has a slip" if len(others) == 1 else \
            "they are still wrong, they have slips"
        parts.append(f"also wrong: {_some_names(others)} -- the mistake named leaves {_and_names(others)} right on "
                     f"every probe case, where it fits your numbers: fix the mistake and check again, and if "
                     f"{still} of {'its' if len(others) == 1 else 'their'} own")
    if wrong:
        # with a mistake named, its wrong gradients and the others are said above: only the right
        # ones place the root
        parts += _where_in_the_backward(root, [] if named else wrong, finding.right_gradients,
                                        finding.backward_steps)
    said = f" ({'; '.join(parts)})" if parts else ""
    if finding.undecided_gradients:
        said += f" ({', '.join(finding.undecided_gradients)} could not be decided by finite differences)"
    return said


def _where_in_the_backward(root: str, wrong: list, right: list, steps: dict | None) -> list[str]:
    """What the wrong gradients no named mistake accounts for, and the right ones, say of the root."""
    if steps is None:
        parts = [f"also wrong: {_some_names(wrong)}"] if wrong else []
        if right:
            parts.append(f"right: {_some_names(right)}")
        if wrong:
            parts.append("which of them went wrong first cannot be told: this exercise does not give the order its "
                         "backward computes them in -- a slip early in a backward makes every gradient computed from "
                         "it wrong, so start with the one your code computes first")
        return parts
    same = [g for g in wrong if steps[g] == steps[root]]
    later = [g for g in wrong if steps[g] > steps[root]]
    before = [g for g in right if steps[g] < steps[root]]
    after = [g for g in right if steps[g] >= steps[root]]
    parts = []
    if same:
        none = "neither is computed from the other" if len(same) == 1 else "none is computed from another"
        parts.append(f"{_some_names(same)} {'is' if len(same) == 1 else 'are'} wrong too, at the same step of the "
                     f"backward as {root}: {none}, so the slip is in what they share, or in each")
    if later:
        # root's gradient is a leaf (an input's): nothing is computed from it, only from what it is
        # computed from (an intermediate gradient, or dout itself)
        they, are = ("it", "is") if len(later) == 1 else ("they", "are")
        parts.append(f"also wrong, further down the backward: {_some_names(later)} -- {they} {are} computed from what "
                     f"{root} is computed from, and may be wrong only because of a slip there: fix {root} "
                     f"first, then check again")
    if before:
        # the last right one before the root is where the slip is not: it is between the two
        shown = _some_names(before) if len(before) <= 4 else f"{before[0]} ... {before[-1]} ({len(before)} gradients)"
        parts.append(f"right: {shown} -- every gradient the backward reaches before {root}"
                     + (f"; right also: {_some_names(after)}" if after else ""))
    elif after:
        parts.append(f"right: {_some_names(after)}")
    return parts


def _some_names(names, shown=4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _and_names(names, shown=4) -> str:
    """The names as a sentence says them: 'dk', 'dw and dx', 'dv, dq and dk' (and how many more)."""
    return _some_names(names, shown) if len(names) > shown else and_list(names)


def and_list(texts) -> str:
    """The texts as a sentence lists them, all of them: 'a', 'a and b', 'a, b and c'."""
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"


class CheckFailed(AssertionError):
    """A check found a wrong gradient; carries the Finding (an AssertionError, so pytest shows it)
    and, from the gradient check, the Case it failed on and the student's gradients there (None
    from other checks): the named mistake is tried on that case too, without calling the student's
    function again."""

    def __init__(self, finding: Finding, case=None, gradients=None):
        self.finding, self.case, self.gradients = finding, case, gradients
        super().__init__("\n".join(finding.lines()))


class CaseUndecided(Exception):
    """The gradient check could not decide one case either way (gradcheck's UNRESOLVED: a right
    gradient at a kink of the forward, or one lost in f's round-off): neither a pass nor a mistake.
    reason: the checker's; case: the case's description."""

    def __init__(self, reason: str, case: str):
        self.reason, self.case = reason, case
        super().__init__(f"case {case}: {reason}")


def rel_error(a, b) -> float:
    """gradcheck's norm-wise relative error, with a floor that lets near-zero mismatches count."""
    return gradcheck_rel_error(a, b, tiny=1e-300)


# Ratios a student's gradient can be off by, and what each usually means.
GENERIC_RATIOS = [
    (-1.0, "it is exactly -1x the right gradient: the sign is wrong",
     "look for a subtraction written the wrong way round, or a minus sign dropped or added"),
    (2.0, "the error is exactly 2x: the gradient is twice the right one",
     "did you double-count a symmetric term, or add a contribution twice?"),
    (0.5, "the gradient is exactly half the right one",
     "a factor of 2 is missing (d(x^2)/dx = 2x?), or a sum was replaced by a mean over 2 items"),
    (-2.0, "the gradient is exactly -2x the right one: wrong sign and counted twice", ""),
    (-0.5, "the gradient is exactly -0.5x the right one: wrong sign and a factor 2 missing", ""),
]


def diagnose(got, expected, *, grad: str, case: str = "", zero_label: str = "") -> Finding:
    """What the numbers show about how `got` (the student's gradient) differs from `expected`.

    zero_label: what the entries whose true gradient is exactly 0 are ("ignored targets", ...).
    """
    finding = Finding(grad, "", case=case)
    if got is None:
        finding.message = f"your function returned None for {grad}"
        # None in the place of one gradient among others: the return statement is there
        finding.hint = (f"every gradient is an array: compute {grad} and return it in its place (a gradient that is "
                        f"zero is an array of zeros, never None)")
        return finding
    expected = np.asarray(expected, dtype=np.float64)
    try:
        got_arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        finding.message = f"{grad} is not an array of numbers (got {type(got).__name__})"
        return finding

    if got_arr.shape != expected.shape:
        return _shape_finding(finding, got_arr, expected)

    _locate(finding, got_arr, expected)
    bad = ~np.isfinite(got_arr)
    if bad.any():
        finding.message = f"{int(bad.sum())} of {got_arr.size} entries are NaN or Inf"
        finding.hint = NONFINITE_HINT
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        finding.worst_index, finding.got_value = first, float(got_arr[first])
        finding.expected_value = float(expected[first])
        return finding

    if not np.any(got_arr):
        finding.message = "every entry is 0"
        finding.hint = "is the result ever assigned? (a np.zeros_like that is never filled, or a wrong mask)"
        return finding

    if _float32_precision(got, expected):
        finding.message = ("it is right only to float32 precision although the inputs are float64: part of "
                           "the arithmetic ran in float32")
        finding.hint = ("an array created with dtype=np.float32 (or an .astype(np.float32)) inside your function: "
                        "create arrays with the inputs' dtype (np.zeros_like(x), or dtype=x.dtype for an input x)")
        return finding
    ratio = constant_ratio(got_arr, expected)
    if ratio is not None and abs(ratio - 1.0) < ROUND_OFF_RATIO:
        if finding.rel_error > NEAR_EXACT:
            finding.message = (f"it agrees with the right gradient to a relative {finding.rel_error:.1g}: close, "
                               f"but the check holds every entry to 1e-7 of its size and a formula written out "
                               f"exactly is right to ~1e-15")
            finding.hint = f"look for {NEAR_EXACT_CAUSES}"
        else:
            finding.message = (f"it agrees with the expected gradient to a relative {abs(ratio - 1.0):.1g}, which "
                               f"is round-off, not a mistake of yours")
            finding.hint = "please report this case to the course's teacher: the check should have passed it"
        return finding
    if ratio is not None:
        for value, message, hint in GENERIC_RATIOS:
            if np.isclose(ratio, value, rtol=1e-6):
                finding.message, finding.hint = message, hint
                return finding
        nonzero = expected[expected != 0]
        if len(np.unique(nonzero)) < 2:
            # one value to compare: any wrong answer that is one value too is "some factor" of it
            if nonzero.size < 2:
                finding.message = (f"it is {_ratio_text(ratio)} times the right value; this case has a single "
                                   f"nonzero value of {grad}, which cannot tell a scale factor from any other "
                                   f"mistake")
                finding.hint = ("compare on a case of several entries: a ratio that is the same everywhere is a "
                                "scale factor missing or extra, one that varies is a wrong formula")
            else:
                finding.message = (f"it is {_ratio_text(ratio)} times the right value at each of the {nonzero.size} "
                                   f"nonzero entries of {grad}, which all have one value in this case: a constant "
                                   f"factor, or another mistake that also gives one value everywhere")
                finding.hint = ("a scale factor missing or extra (a 1/N of a mean, a 1/sqrt(d), a weight) is the "
                                "likely one; a case whose right gradient varies from entry to entry tells it from "
                                "a wrong formula")
            return finding
        finding.message = f"it is exactly {_ratio_text(ratio)} times the right gradient (a constant factor)"
        finding.hint = "a scale factor is missing or extra: a 1/N of a mean, a 1/sqrt(d), a weight"
        return finding

    if got_arr.ndim >= 2 and got_arr.shape[-1] == got_arr.shape[-2] and \
            rel_error(np.swapaxes(got_arr, -1, -2), expected) < MATCH_TOL:
        finding.message = "it equals the transpose of the right gradient"
        finding.hint = "swap the order of a matrix product (A @ B vs B.T @ A.T), or transpose the weight"
        return finding

    scale = float(np.max(np.abs(expected))) or 1.0
    wrong = np.abs(got_arr - expected) > 1e-6 * scale
    if not wrong.any():       # every entry a near miss (no ratio fits when the right gradient is 0)
        off = float(np.max(np.abs(got_arr - expected)))
        finding.message = (f"it is off by at most {off:.1g}"
                           + (" where the right gradient is exactly 0" if not np.any(expected) else "")
                           + ": close, but a formula written out exactly is right to round-off (~1e-15)")
        finding.hint = f"look for {NEAR_EXACT_CAUSES}"
        return finding
    structural_zero = expected == 0                     # moving these inputs changes nothing at all
    leaked = wrong & structural_zero
    if leaked.any() and not (wrong & ~structural_zero).any():
        where = zero_label or "entries the output does not depend on"
        finding.message = (f"{int(leaked.sum())} entries whose gradient must be exactly 0 ({where}) "
                           f"received gradient; every other entry is right")
        finding.hint = "a wrong mask: zero the gradient where the forward pass masked or ignored"
        _locate(finding, np.where(leaked, got_arr, expected), expected)
        return finding
    missing = wrong & (got_arr == 0)
    if missing.any() and not (wrong & ~missing).any():
        finding.message = (f"{int(missing.sum())} entries are 0 but should not be; every other entry is right")
        finding.hint = "a mask that is too broad, or a term that only reaches these entries is missing"
        return finding
    if got_arr.ndim >= 2 and got_arr.shape[0] > 1:
        wrong_along_first = wrong.reshape(got_arr.shape[0], -1).any(axis=1)
        if not wrong_along_first[0] and wrong_along_first[1:].all():
            finding.message = (f"only {finding.grad}[0] is right: every {finding.grad}[i] with i > 0 along the first "
                               f"axis is wrong")
            # which axis this is (a batch, a weight's output features, T) only the exercise knows:
            # say what is true of any first axis, and the batch as one reading of it
            finding.hint = (f"code that is right for the first entry of that axis (of length {got_arr.shape[0]}) "
                            f"only: an index [0] or [:1] where the whole axis was meant, a loop that stops after "
                            f"its first pass, or a reshape or transpose that assumes the axis has length 1 (a "
                            f"batch of one, if it is the batch axis: every batch element has its own inputs)")
            return finding
    if wrong.mean() < 0.5:
        idx = [tuple(int(i) for i in ix) for ix in np.argwhere(wrong)[:4]]
        finding.message = (f"the error is concentrated on {int(wrong.sum())} of {wrong.size} entries "
                           f"(e.g. at {', '.join(map(str, idx))}); the others are right")
        finding.hint = ("a term that only those entries receive is missing or counted twice "
                        "(repeated indices? the diagonal? one branch of a sum?)")
        return finding
    finding.message = f"{int(wrong.sum())} of {wrong.size} entries are wrong, with no simple pattern"
    finding.hint = "a term of the chain rule is missing or wrong: redo the derivation one step at a time"
    return finding


def float32_rounded(g) -> bool:
    """Every value of g is a float32 number: part of the arithmetic that made it ran in float32 (or
    less).  A float64 array qualifies when each value survives a round trip through float32."""
    g = np.asarray(g)
    if g.dtype == np.float64:
        return bool(np.array_equal(g, g.astype(np.float32).astype(np.float64)))
    return g.dtype.kind == "f" and g.dtype.itemsize < 8


def _float32_precision(got, expected) -> bool:
    """got carries float32 round-off and is otherwise right (and expected itself does not: a
    gradient whose exact values are float32 numbers says nothing)."""
    if not float32_rounded(got) or float32_rounded(expected):
        return False
    return rel_error(got, expected) < 1e-5


def _locate(finding, got, expected):
    diff = np.abs(got - expected)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    finding.rel_error = rel_error(np.nan_to_num(got), expected) if np.isfinite(got).all() else float("inf")
    if got.size:
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), got.shape))
        finding.worst_index = worst
        finding.got_value, finding.expected_value = float(got[worst]), float(expected[worst])


def _ratio_text(r: float) -> str:
    """Enough digits to see how far r is from 1 (1.000001 must not print as 1)."""
    for digits in range(4, 13):
        text = f"{r:.{digits}g}"
        if abs(float(text) - r) <= 1e-3 * abs(r - 1.0):
            return text
    return f"{r:.12g}"


def _without_ones(shape) -> tuple:
    return tuple(n for n in shape if n != 1)


def constant_ratio(got, expected) -> float | None:
    """The factor r with got == r * expected (to MATCH_TOL), else None (and for r = 0: every entry
    0 is said as such): what a gradient off by a constant factor is off by -- the diagnosis here,
    and the scalar input a factor is (mistakes.name_scalar_factor)."""
    r = fitted_factor(got, expected)
    if r is not None and r != 0.0 and rel_error(got, r * expected) < MATCH_TOL:
        return r
    return None


# the most axes a parameter has in these exercises (a linear's (out, in), an embedding's (V, D)): a
# gradient of more axes belongs to an activation, never summed over rows
WEIGHT_MAX_NDIM = 2


def _rows_summed(shape) -> str:
    """The sum over every leading axis that leaves `shape`, however many leading axes there are:
    '.reshape(-1, 3).sum(axis=0)' for (3,), '.reshape(-1, 4, 3).sum(axis=0)' for a weight (4, 3)."""
    return f".reshape({', '.join(str(n) for n in (-1, *shape))}).sum(axis=0)"


def _shape_finding(finding, got, expected) -> Finding:
    finding.message = f"{finding.grad} has shape {got.shape}, expected {expected.shape}"
    if got.ndim == expected.ndim == 2 and got.shape == expected.shape[::-1]:
        if rel_error(got.T, expected) < MATCH_TOL:
            finding.message += ": it is the transpose of the right gradient"
        else:
            finding.message += ": the transposed shape (and wrong values too)"
        finding.hint = ("weights are laid out (out_features, in_features) as in PyTorch, and a gradient "
                        "has its parameter's shape: swap the operands of the product")
    elif got.ndim != expected.ndim and got.size == expected.size:
        if _without_ones(got.shape) == _without_ones(expected.shape):
            finding.hint = "an extra or missing axis of length 1: keepdims=True, or a missing reshape"
        else:     # (6, 5) for (2, 3, 5): rows flattened for a product and never put back
            finding.hint = (f"the right number of entries in another shape: reshape the result back to its "
                            f"input's shape, {expected.shape}")
    elif got.ndim > expected.ndim and got.shape[got.ndim - expected.ndim:] == expected.shape:
        leading = got.shape[:got.ndim - expected.ndim]
        finding.message += ": summed over too few axes"
        finding.hint = (f"{finding.grad} still has the leading axes {leading} of the batch, but a gradient has "
                        f"its input's shape: sum over the rows/batch (e.g. {_rows_summed(expected.shape)})")
    elif got.ndim == 0:
        finding.message += ": summed over too many axes"
        # a weight (D,) summed to one number loses its own axis, not rows: "one value per row" would mislead
        finding.hint = (f"{finding.grad} is a single number, but its input has shape {expected.shape}: a sum over "
                        f"every axis (np.sum without axis=) adds up entries that each have their own gradient")
        if expected.ndim <= WEIGHT_MAX_NDIM:     # it may be a weight: say which sum a weight takes
            finding.hint += (f" -- a weight's gradient sums over the rows only ({_rows_summed(expected.shape)}, "
                             f"which also works for a single row)")
        else:     # no weight has this many axes: an activation's gradient, summed over no axis at all
            finding.hint += ": keep one value per entry of its input (no sum)"
    elif got.ndim < expected.ndim and expected.shape[expected.ndim - got.ndim:] == got.shape:
        finding.message += ": summed over too many axes"
        finding.hint = (f"{finding.grad} lost the leading axes {expected.shape[:expected.ndim - got.ndim]}: "
                        f"this input has one value per row, so its gradient does too -- do not sum over the rows")
    elif got.ndim != expected.ndim:
        finding.hint = ("one axis too many or too few: a gradient summed over an axis it should keep, or "
                        "not summed over one the input does not have (a broadcast in the forward pass)")
    elif got.size == expected.size:
        finding.hint = "the right number of entries in another shape: a reshape or an axis order is off"
    else:
        finding.hint = "a gradient always has the shape of the input it belongs to"
    return finding
