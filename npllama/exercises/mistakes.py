"""Name the mistake from the numbers: the derivation recomputed with one step altered.

Each exercise's catalogue (catalogue.py) writes its backward as the derivation's steps with
*knobs*: `variant(dout, case, scale="missing")` recomputes the gradient from the case's inputs with
that one step done the way students get it wrong (a term dropped, a sum over the wrong axis, a
factor missing or doubled, a mask forgotten, kv heads tiled instead of repeat-interleaved, ...).
`name_mistake` runs the student's backward on the catalogue's *probe* cases -- chosen so that two
causes cannot give the same numbers (every axis a different size, head_dim^2 != n_rep, B > 1,
masks on) -- and names a mistake only when its recomputed gradients equal the student's on every
probe where they differ from the right ones.  Nothing is named from one coincidence.

`compare_ladder` runs the student's backward on a simple case and on variations of it that each
add one thing (a second row, a mask, a second head per kv head, ...) and says which passed and
what changed when one fails: "passes with one row -- fails with several rows: your code mixes rows
of the batch", or, when the failing case's gradient has the wrong shape, that shape.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .checks import in_backward_order
from .diagnose import constant_ratio, rel_error

MATCH = 1e-6       # the student's gradients equal a mistake's to this (norm-wise relative error)


@dataclasses.dataclass(frozen=True)
class Mistake:
    message: str           # what the student did, in a teacher's words
    hint: str              # how to fix it
    knobs: dict            # the derivation's steps this mistake alters (catalogue.variant's arguments)
    reorders: bool = False  # the right gradients in each other's places (their shapes are then no news)


@dataclasses.dataclass(frozen=True)
class Rung:
    label: str             # "B = 2", "a causal mask", ...
    params: dict           # the exercise's parameters for this case
    suspect: str = ""      # what failing here (after the base passed) usually means


@dataclasses.dataclass
class Explanation:
    message: str = ""
    hint: str = ""
    ladder: str = ""
    reorders: bool = False
    # every gradient it changes, in the backward's order: those its knobs make differ from the right
    # ones on some probe (a mistake in one step is often in several gradients: dk and dv both averaged)
    changes: list = dataclasses.field(default_factory=list)
    # the named mistake's gradients on a case: gradients(dout, case) (None for a scalar factor)
    gradients: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def grad(self) -> str | None:
        """The first gradient (in the backward's order) the named mistake changes; None when none is named."""
        return self.changes[0] if self.changes else None


def as_tuple(result):
    """A backward's result as a tuple of gradients: a list counts as several gradients only when
    its items are arrays (x.tolist() is one gradient in the wrong type, not many)."""
    if isinstance(result, list) and all(isinstance(g, np.ndarray) for g in result):
        result = tuple(result)
    return result if isinstance(result, tuple) else (result,)


def _student(backward, dout, case):
    """The student's gradients on this case (None when the call fails in any way)."""
    try:
        _, cache = case.run_forward()
        grads = as_tuple(backward(np.array(dout, copy=True), cache))
        if not all(isinstance(g, np.ndarray) for g in grads):
            return None    # a list or None: the returns check says what came back
        return tuple(np.asarray(g, dtype=np.float64) for g in grads)
    except Exception:  # the checks report crashes; here a crash only means "no evidence"
        return None


def same_gradients(got, want) -> bool:
    return (len(got) == len(want)
            and all(g.shape == np.shape(w) and np.all(np.isfinite(g)) and rel_error(g, w) < MATCH
                    for g, w in zip(got, want)))


def name_mistake(catalogue, exercise, backward) -> Explanation | None:
    """The one catalogued mistake (or swap of outputs) the student's numbers show on every probe."""
    probes = []
    for params in catalogue.probes:
        case = exercise.case(params)
        out, _ = case.run_forward()
        dout = case.dout_for(out)
        got = _student(backward, dout, case)
        if got is None:
            return None
        probes.append((case, dout, got, as_tuple(catalogue.variant(dout, case))))
    if all(same_gradients(got, right) for _, _, got, right in probes):
        return None
    names = probes[0][0].grad_names
    candidates = [(m, lambda dout, case, m=m: as_tuple(catalogue.variant(dout, case, **m.knobs)))
                  for m in catalogue.mistakes()]
    candidates += _swaps(names, catalogue)
    for mistake, compute in candidates:
        try:
            wrong = [compute(dout, case) for case, dout, _, _ in probes]
        except Exception:      # an altered step that cannot be computed on this probe
            continue
        if not all(same_gradients(got, w) for w, (_, _, got, _) in zip(wrong, probes)):
            continue
        changes = [name for k, name in in_backward_order(probes[0][0])
                   if any(not same_gradients(w[k:k + 1], right[k:k + 1]) for w, (_, _, _, right) in zip(wrong, probes))]
        if changes:
            return Explanation(mistake.message, mistake.hint, reorders=mistake.reorders, changes=changes,
                               gradients=compute)
    return None


MAX_ORDERED = 4    # up to this many gradients every order is tried (4! - 1 = 23); beyond, two swapped


def _swaps(names, catalogue):
    """The right gradients returned in another order: two swapped, or (for a few gradients) any
    order -- dx, dw_down, dw_gate, dw_up, each in another's place, is no transposed product."""
    if len(names) <= MAX_ORDERED:
        orders = [order for order in itertools.permutations(range(len(names))) if order != tuple(range(len(names)))]
    else:
        orders = []
        for i, j in itertools.combinations(range(len(names)), 2):
            order = list(range(len(names)))
            order[i], order[j] = j, i
            orders.append(tuple(order))
    found = []
    for order in orders:
        moved = [i for i, source in enumerate(order) if source != i]
        if len(moved) == 2:
            i, j = moved
            message = f"{names[i]} and {names[j]} are swapped: each holds the other's gradient"
        else:
            message = (f"the gradients come back in the wrong order: yours are ({', '.join(names[k] for k in order)}) "
                       f"in the places of ({', '.join(names)})")
        mistake = Mistake(message, f"return the gradients in the order of the forward's inputs: {', '.join(names)}", {},
                          reorders=True)

        def compute(dout, case, order=order):
            right = as_tuple(catalogue.variant(dout, case))
            return tuple(right[k] for k in order)
        found.append((mistake, compute))
    return found


def compare_ladder(catalogue, exercise, backward, say_why: bool = True) -> str:
    """'passes with one row -- fails with several rows: ...', or '' when there is nothing to say.
    say_why: add what the first failing case shows, its wrong shape or its usual suspect -- not
    when the gradients are named as reordered: dw_gate's shape in dw_down's place says the same
    again, and the part the case adds (a second position, say) is not what is wrong, only where
    the reorder first shows (dW_q and dW_k are both 0 with one key)."""
    rungs = catalogue.ladder
    if not rungs:
        return ""
    verdicts = []
    for rung in rungs:
        case = exercise.case(rung.params)
        out, _ = case.run_forward()
        dout = case.dout_for(out)
        got = _student(backward, dout, case)
        right = tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(catalogue.variant(dout, case)))
        verdicts.append(_rung_verdict(got, right, case.grad_names))
    if not getattr(catalogue, "simplest_first", True):
        # cases in an order of their own (a teacher's edge cases): none is the simplest, and one
        # failing says no more than the failure's own case
        if len(rungs) < 2:
            return ""
        if all(v is not None for v in verdicts):
            return (f"it fails every one of the exercise's cases ({'; '.join(r.label for r in rungs)})"
                    + (_shape_words(verdicts[0]) if say_why else ""))
        rest = list(zip(rungs, verdicts))
    else:
        base, rest = rungs[0], list(zip(rungs[1:], verdicts[1:]))
        if verdicts[0] is not None:
            return f"it fails even the simplest case ({base.label})" + (_shape_words(verdicts[0]) if say_why else "")
    failing = [(r, v) for r, v in rest if v is not None]
    if not failing:
        return ""
    passing = [r.label for r, v in zip(rungs, verdicts) if v is None]
    first, verdict = failing[0]
    text = f"passes with {'; with '.join(passing)} -- fails with {first.label}"
    if say_why:
        if verdict != "wrong":
            text += _shape_words(verdict)   # a shape says what is wrong better than any suspect
        elif first.suspect:
            text += f": {first.suspect}"
    if len(failing) > 1:
        text += f" (fails also with {', '.join(r.label for r, _ in failing[1:])})"
    return text


class EdgeCaseLadder:
    """A teacher's exercise's own edge cases as a ladder, judged by its reference backward.  In the
    teacher's order, which is not known to go from the simplest (the first edge case is the one
    the float32 check can use: docs/debugging.md's gelu puts x (2, 3) before x (1,)).  No suspects:
    what a failing case adds is not known, only which cases pass -- and, when one fails by a shape,
    that shape.  A case described as another one is told apart by its parameters."""

    simplest_first = False

    def __init__(self, exercise):
        self.exercise = exercise
        described = [exercise.case(params).describe() for params in exercise.edge_cases]
        self.ladder = [Rung(label if described.count(label) == 1 else
                            f"{label} ({', '.join(f'{k}={v!r}' for k, v in params.items())})", params)
                       for label, params in zip(described, exercise.edge_cases)]

    def variant(self, dout, case):
        _, cache = case.run_forward()
        return self.exercise.reference(np.array(dout, copy=True), cache)


def _rung_verdict(got, right, names) -> str | None:
    """None when the student's gradients are right here; 'wrong' when a value is off (beyond the
    near-exact band: an epsilon or a float32 mean is no structural mistake); else the first
    shape mismatch, e.g. 'dweight has shape (2, 3, 4), expected (4,)'."""
    if got is None or len(got) != len(right):
        return "wrong"
    for name, g, r in zip(names, got, right):
        if g.shape != r.shape:
            return f"{name} has shape {g.shape}, expected {r.shape}"
    if all(np.all(np.isfinite(g)) and rel_error(g, r) < MATCH for g, r in zip(got, right)):
        return None
    return "wrong"


def _shape_words(verdict: str) -> str:
    return "" if verdict == "wrong" else f": {verdict}, the wrong shape"


def scalar_factor_words(name: str, power: int) -> str:
    """How a gradient off by the input `name` (power 1) or by its inverse (power -1) reads."""
    if power == 1:
        return f"{name} times the right one: a division by {name} missing, or a factor of {name} too many"
    return f"the right one divided by {name}: a factor of {name} missing"


def name_scalar_factor(exercise, backward, params_list) -> Explanation | None:
    """A gradient that is, on every case of params_list, the right one (the exercise's reference)
    times one of the case's scalar inputs or its inverse ("tau times the right one": a forgotten
    / tau).  Named (grad set) only when no single constant fits every case as well; when one
    does because the input had that one value on every case (tau = 0.5 each time, and the
    gradient half the right one), both readings stay open: grad None and `hint` the words to add
    to the numbers' own.  None when neither."""
    if not params_list or not exercise.case(params_list[0]).scalars:
        return None           # no scalar input to be the factor
    probes = []
    for params in params_list:
        case = exercise.case(params)
        out, cache = case.run_forward()
        dout = case.dout_for(out)
        got = _student(backward, dout, case)
        right = tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(exercise.reference(np.array(dout, copy=True),
                                                                                            cache)))
        if got is None or len(got) != len(right) or any(g.shape != r.shape for g, r in zip(got, right)):
            return None       # a crash or a shape: the checks' own findings say it
        probes.append((case.scalars, got, right))
    for k, grad in in_backward_order(exercise.case(params_list[0])):
        passes = [same_gradients((g[k],), (r[k],)) for _, g, r in probes]
        if all(passes):
            continue
        ratios = [constant_ratio(g[k], r[k]) for (_, g, r), ok in zip(probes, passes) if not ok]
        if None in ratios:
            return None       # not a factor on some case
        # a case it passes (with some nonzero right value) has the ratio 1: tau = 1 there, and a
        # factor that is tau fits it while no constant but 1 does
        ratios += [1.0 for (_, g, r), ok in zip(probes, passes) if ok and np.any(r[k] != 0)]
        one_constant = np.allclose(ratios, ratios[0], rtol=1e-6)
        fits = [(name, power) for name in probes[0][0] for power in (1, -1)
                if all(name in scalars and (power == 1 or scalars[name] != 0)
                       and same_gradients((g[k],), (r[k] * scalars[name] ** power,)) for scalars, g, r in probes)]
        if not fits:
            return None
        name, power = fits[0]
        values = ", ".join(dict.fromkeys(f"{scalars[name]:g}" for scalars, _, _ in probes))
        words = scalar_factor_words(name, power)
        others = [(other, p) for other, p in fits[1:] if other != name]
        for other, p in others:    # inputs equal (or inverse) on every case: the numbers cannot tell which
            words += f"; or {scalar_factor_words(other, p)}"
        if others:
            values += f"; {' and '.join(other for other, _ in others)} give{'s' if len(others) == 1 else ''} " \
                      f"the same numbers on these cases"
        if one_constant:     # the input never changed: its value and the constant are one number
            return Explanation(hint=f"; or, as {name} = {values} on every case checked, your {grad} may "
                                    f"be {words}")
        also = "".join(f" (or {other})" for other, _ in others)
        return Explanation(
            changes=[grad], message=f"your {grad} is {words} -- on every case checked ({name} = {values})",
            hint=f"follow {name}{also} through the forward into {grad}: a forward that divides by {name} puts "
            f"1 / {name} into the gradient (d(x / {name})/dx = 1 / {name}), one that multiplies by it "
            f"puts {name}")
    return None


def fits_on_case(found: Explanation, case, got, names) -> dict:
    """{name: whether the student's gradient of that name equals the named mistake's} on `case`,
    for each of `names` (gradient names such as "dw"): `case` is the one a check failed on, not a
    probe, and `got` the student's gradients there (those the check computed: the student's
    function is not called again).  The probes name a mistake from the gradients it changes there;
    on another case it may reach one more, or leave one right that it changes on a probe, and a
    gradient it fits on every probe may have a slip of its own that no probe shows.  Empty when it
    cannot be told (no mistake's gradients to compute, or a computation that fails)."""
    if found.gradients is None:
        return {}
    out, _ = case.run_forward()
    try:
        wrong = tuple(np.asarray(g, dtype=np.float64) for g in as_tuple(found.gradients(case.dout_for(out), case)))
    except Exception:      # an altered step that cannot be computed on this case
        return {}
    got = tuple(np.asarray(g, dtype=np.float64) for g in got)
    if len(got) != len(wrong):
        return {}
    ks = {name: case.grad_names.index(name) for name in names if name in case.grad_names}
    return {name: same_gradients(got[k:k + 1], wrong[k:k + 1]) for name, k in ks.items() if k < len(wrong)}


def explain(catalogue, exercise, backward) -> Explanation:
    """The named mistake (if one fits every probe) and what the ladder of cases shows."""
    try:
        found = name_mistake(catalogue, exercise, backward) or Explanation()
    except Exception:    # a catalogue that cannot run here must not hide the checks' own findings
        found = Explanation()
    try:
        found.ladder = compare_ladder(catalogue, exercise, backward, say_why=not found.reorders)
    except Exception:
        found.ladder = ""
    return found
