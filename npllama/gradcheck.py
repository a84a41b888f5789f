"""Finite-difference gradient checking whose tolerance comes from an error model, at any scale.

Two ways in:

    # any scalar function of some arrays, and the gradients you computed for them
    report = gradcheck(lambda x, w: float(np.sum(f(x, w))), [x, w], [dx, dw], names=["x", "w"])

    # an op written as a forward/backward pair (out, cache) = forward(*inputs); backward(dout, cache)
    report = check_op(rmsnorm_forward, rmsnorm_backward, [x, w], extra_args=(1e-5,))

    print(report)             # per input: how it was checked, error, the bound it was held to
    report.raise_if_failed()  # AssertionError carrying that table

Work in float64.  What is compared (a "probe"): one gradient entry (x moves along one axis), or a
random direction p (every entry of x moves at once, by +-step; <grad, p> is compared with the
finite difference of f along p, so an error in any single entry changes it and cannot hide).

How a probe's numeric derivative and its bound are made (the error model):

  step      relative to the numbers: entry i moves by eps * max(|x_i|, rms(x)) (eps = 1e-4), so
            weights ~1e-10 and ~1e5 are probed alike (a fixed absolute step is not).
  D(t)      = (f(x + t p) - f(x - t p)) / (2 t), the central difference, taken at t = h and 2h.
  round-off each value of f carries ~ C * u * F of rounding (u = 2.2e-16, F = |f|, or for check_op
            the sum of |out * dout| before cancellation, C = ROUNDOFF_FACTOR); D(h) carries F*C*u / h.
  truncation D(h) - f' = f''' h^2 / 6 + ...; D(2h) has four times that, so |D(h) - D(2h)| is three
            times D(h)'s truncation error (and contains the realised round-off too).
  Richardson R = (4 D(h) - D(2h)) / 3 cancels the h^2 term; with D(4h) its own error is estimated
            from R(h) - R(2h) (= 15x it).  richardson=None uses it where it helps: the truncation
            estimate stands above the round-off, the plain bound above the relative floor, and R's
            bound comes out smaller.  True forces it, False never.
  bound     = 3x the truncation estimate + the round-off (|D(h) - D(2h)| + C u F / h, or
            |R(h) - R(2h)| / 5 + 1.5 C u F / h)  +  tol * magnitude  (a relative floor; magnitude is |grad_i|,
            or ||grad * p|| for a direction)  -- an entry or direction passes when
            |analytic - numeric| <= bound.  atol is an optional absolute floor, 0 by default; a pass
            that needed it is flagged in the report.

Which probes (method="auto"): every entry when the input has at most max_entries entries
(None: AUTO_ALL_ENTRIES entries); otherwise a random sample of max_entries entries (None:
AUTO_SAMPLE) plus `directions` random directions.  method="entries" probes entries only (all of
them when max_entries is None: the old behaviour), method="directional" directions only.

The relative error an input reports is norm-wise over its entries, ||a - n|| / max(||a||, ||n||);
for directions |<a,p> - numeric| / ||a * p||.  ``err/bound`` is the worst probe's error over its
bound: a correct gradient sits far below 1, a wrong one above.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

TINY = 1e-30
UNIT_ROUNDOFF = float(np.finfo(np.float64).eps)   # 2.2e-16
# The round-off of one evaluation of f, in units of u * F.  Measured on the 2-layer test models'
# loss (sixth differences along random directions, 12 cases): 0.1-1.2 u * |loss|.  16 keeps the
# bound ~30x above that noise and still far below any real mistake.
ROUNDOFF_FACTOR = 16.0
AUTO_ALL_ENTRIES = 2048   # method="auto", max_entries=None: tensors up to this size get every entry
AUTO_SAMPLE = 32          # ... larger ones this many sampled entries plus the random directions
LOOSE_BOUND = 1e-3        # a relative bound above this could let a small mistake through: warn
METHODS = ("auto", "entries", "directional")


@dataclasses.dataclass
class InputReport:
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
    notes: list = dataclasses.field(default_factory=list)   # warnings: floor-only pass, loose bound, ...

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
    inputs: list[InputReport]
    tol: float
    eps: float = 0.0
    atol: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.inputs)

    def __getitem__(self, name: str) -> InputReport:
        for r in self.inputs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def max_rel_err(self) -> float:
        return max((r.rel_err for r in self.inputs), default=0.0)

    @property
    def max_err_over_bound(self) -> float:
        """The worst probe of all inputs, as a fraction of its bound (a correct gradient: << 1)."""
        return max((r.err_over_bound for r in self.inputs), default=0.0)

    @property
    def warnings(self) -> list[str]:
        return [f"{r.name}: {note}" for r in self.inputs for note in r.notes]

    def __str__(self) -> str:
        rows = [("input", "shape", "method", "checked", "rel err", "bound", "err/bound", "worst index",
                 "analytic", "numeric", "")]
        for r in self.inputs:
            rows.append((r.name, str(r.shape), r.method, r.coverage, f"{r.rel_err:.2e}", f"{r.bound:.2e}",
                         f"{r.err_over_bound:.2g}", str(r.worst_index), f"{r.analytic_at_worst:.6g}",
                         f"{r.numeric_at_worst:.6g}", "ok" if r.ok else "FAIL"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        verdict = "all gradients match" if self.ok else "some gradients do NOT match"
        lines.append(f"{verdict} (step {self.eps:g} relative to each input's scale; bound = finite-difference "
                     f"error estimate + {self.tol:g} relative" + (f", absolute floor {self.atol:g})" if self.atol else ")"))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError("gradient check failed:\n" + str(self))


def numerical_gradient(fn: Callable[[], float], x: np.ndarray, eps: float = 1e-6,
                       indices: Sequence[tuple] | None = None) -> np.ndarray:
    """Central differences of the scalar fn() with respect to x, perturbing x in place by the
    absolute step eps (the plain textbook estimate; gradcheck scales its steps and bounds them).

    Returns an array shaped like x; entries not in `indices` (when given) are left at 0.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in (np.ndindex(x.shape) if indices is None else indices):
        original = x[idx]
        x[idx] = original + eps
        f_plus = float(fn())
        x[idx] = original - eps
        f_minus = float(fn())
        x[idx] = original
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def gradcheck(fn: Callable[..., float], inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
              grads: Sequence[np.ndarray] | Mapping[str, np.ndarray], *, names: Sequence[str] | None = None,
              eps: float = 1e-4, tol: float = 1e-7, atol: float = 0.0,
              max_entries: int | None = None, seed: int = 0, method: str = "auto", directions: int = 4,
              richardson: bool | None = None, progress: bool = False) -> GradcheckReport:
    """Check `grads` (analytic d fn / d input) against central differences; see the module doc.

    fn:      called as fn(*arrays) -> scalar, with the input arrays in order.  The arrays are
             perturbed in place (and restored), so fn may also simply read them from a closure
             (e.g. a model's params).
    inputs:  a sequence of float64 arrays, or a mapping name -> array (names then come from it).
    grads:   analytic gradients, same order / keys and shapes as inputs.
    eps:     the step, relative to each entry's scale max(|x_i|, rms(x)) (1 for an all-zero input).
    tol:     relative floor of the bound: differences up to tol * |gradient| always pass.
    atol:    absolute floor (default 0): an entry within atol passes; the report flags such passes.
    max_entries: entries probed one by one per input; larger inputs get a random sample of this
             many plus random directions (method="auto").  None: all entries up to AUTO_ALL_ENTRIES.
    method:  "auto", "entries" (no directions), or "directional" (no single entries).
    directions: random directions per input, where directions are used.
    richardson: None (where it helps), True (always), False (never).
    progress: print a line to stderr as each input is done (a whole model takes a while).
    """
    _check_settings(fn=fn, eps=eps, tol=tol, atol=atol, max_entries=max_entries, method=method,
                    directions=directions, richardson=richardson)
    names, arrays, analytic = _pair_up(inputs, grads, names)

    def evaluate():
        value = float(fn(*arrays))
        return value, abs(value)

    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress)


def check_op(forward: Callable, backward: Callable, inputs: Sequence[np.ndarray], *,
             wrt: Sequence[int] | None = None, names: Sequence[str] | None = None,
             extra_args: Sequence = (), extra_kwargs: Mapping | None = None, seed: int = 0,
             eps: float = 1e-4, tol: float = 1e-7, atol: float = 0.0,
             max_entries: int | None = None, method: str = "auto", directions: int = 4,
             richardson: bool | None = None, progress: bool = False) -> GradcheckReport:
    """Check an op's backward against central differences of its forward.

    forward(*inputs, *extra_args, **extra_kwargs) -> (out, cache)
    backward(dout, cache) -> the gradient of each differentiable input, in order (a tuple, or a
                             single array when there is one).
    wrt: which of `inputs` are differentiable (default: all of them), matching backward's outputs.

    The scalar checked is L = sum(out * dout) for a fixed random dout, so backward receives dout.
    Its round-off is modelled from sum(|out * dout|), the size of the terms before they cancel.
    The other settings are gradcheck's.
    """
    _check_settings(forward=forward, backward=backward, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                    method=method, directions=directions, richardson=richardson)
    extra_kwargs = dict(extra_kwargs or {})
    inputs = list(inputs)
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    out, cache = forward(*inputs, *extra_args, **extra_kwargs)
    dout = np.random.default_rng(seed).standard_normal(np.shape(out))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients, expected {len(wrt)} (one per wrt input)")

    def evaluate():
        terms = np.asarray(forward(*inputs, *extra_args, **extra_kwargs)[0], dtype=np.float64) * dout
        return float(np.sum(terms)), float(np.sum(np.abs(terms)))

    all_names = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]
    names, arrays, analytic = _pair_up([inputs[i] for i in wrt], list(grads), [all_names[i] for i in wrt])
    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress)


def rel_error(a: np.ndarray, b: np.ndarray, tiny: float = TINY) -> float:
    """Norm-wise relative error ||a - b|| / max(||a||, ||b||, tiny), in float64.  (The exercise
    checker and trace comparison pass tiny=1e-300: two all-but-zero arrays that differ count.)"""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), tiny))


# ----- the checker -----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Probes:
    """The results of one input's probes, entries first, then directions (parallel arrays)."""
    analytic: list = dataclasses.field(default_factory=list)    # <grad, p>, or grad_i for an entry
    numeric: list = dataclasses.field(default_factory=list)
    bound: list = dataclasses.field(default_factory=list)       # estimated finite-difference error
    magnitude: list = dataclasses.field(default_factory=list)   # |grad_i|, or ||grad * p||
    floor: list = dataclasses.field(default_factory=list)       # atol in the probe's units
    richardson: int = 0

    def add(self, analytic, numeric, bound, magnitude, floor, used_richardson) -> None:
        self.analytic.append(float(analytic))
        self.numeric.append(numeric)
        self.bound.append(bound)
        self.magnitude.append(magnitude)
        self.floor.append(floor)
        self.richardson += used_richardson


def _check_all(evaluate, names, arrays, analytic, *, eps, tol, atol, max_entries, seed, method, directions,
               richardson, progress) -> GradcheckReport:
    rng = np.random.default_rng(seed)
    reports = []
    for name, x, g in zip(names, arrays, analytic):
        g = np.asarray(g, dtype=np.float64)
        indices, n_directions = _choose_probes(x, rng, max_entries, method, directions)
        scale = _entry_scales(x)
        probes = _Probes()
        for idx in indices:
            _probe_entry(evaluate, x, idx, scale[idx], g[idx], eps, richardson, tol, atol, probes)
        for _ in range(n_directions):
            signs = rng.choice(np.array([-1.0, 1.0]), size=x.shape)
            _probe_direction(evaluate, x, signs * scale, g, eps, richardson, tol, atol, probes)
        reports.append(_judge(name, x.shape, x.size, int(np.sum(np.isfinite(x))), indices, n_directions, probes, tol))
        if progress:
            r = reports[-1]
            print(f"gradcheck {len(reports)}/{len(names)} {name}: {r.method} {r.coverage}, "
                  f"err/bound {r.err_over_bound:.2g} {'ok' if r.ok else 'FAIL'}", file=sys.stderr, flush=True)
    return GradcheckReport(reports, tol, eps, atol)


def _choose_probes(x, rng, max_entries, method, directions):
    """Which entries to probe one by one, and how many random directions.  Entries at +-inf (a
    softmax mask) have no derivative to check and are never probed."""
    if method == "directional":
        return [], directions
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
    is all zero; 0 at +-inf entries, which directions then leave where they are)."""
    finite = np.isfinite(x)
    rms = float(np.sqrt(np.mean(np.square(x[finite], dtype=np.float64)))) if finite.any() else 0.0
    scale = np.maximum(np.abs(np.where(finite, x, 0.0)).astype(np.float64), rms)
    scale[scale == 0] = 1.0
    scale[~finite] = 0.0
    return scale


def _probe_entry(evaluate, x, idx, scale, analytic, eps, richardson, tol, atol, probes):
    original = x[idx]

    def move(t):
        """Put x[idx] t steps away; return the real signed distance (rounding included)."""
        if t is None:
            x[idx] = original
            return 0.0
        x[idx] = original + t * scale
        return float(x[idx]) - float(original)

    numeric, bound, used = _derivative(evaluate, move, eps, richardson, tol * abs(float(analytic)))
    probes.add(analytic, numeric, bound, max(abs(float(analytic)), abs(numeric)), atol, used)


def _probe_direction(evaluate, x, direction, g, eps, richardson, tol, atol, probes):
    original = x.copy()

    def move(t):
        """Put x at original + t * direction; the distance along it is t (rounding ~u/eps, negligible)."""
        if t is None:
            x[...] = original
            return 0.0
        x[...] = original + t * direction
        return float(t)

    terms = g * direction
    numeric, bound, used = _derivative(evaluate, move, eps, richardson, tol * float(np.linalg.norm(terms)))
    # rounding of x + t p moves each entry by up to u |x_i| instead of t p_i: a relative u / eps;
    # the magnitude is ||g * p||, the spread of <g, p> over random signs
    probes.add(np.sum(terms), numeric, bound + UNIT_ROUNDOFF / eps * float(np.sum(np.abs(terms))),
               float(np.linalg.norm(terms)), atol * float(np.sum(np.abs(direction))), used)


def _derivative(evaluate, move, eps, richardson, good_enough):
    """The numeric derivative along a probe and a bound on its error: (value, bound, richardson?).
    good_enough: a bound below this (the relative floor) is not worth two more evaluations."""
    def central(t):
        distance_plus = move(t)
        f_plus, size_plus = evaluate()
        distance_minus = move(-t)
        f_minus, size_minus = evaluate()
        move(None)
        width = distance_plus - distance_minus
        return (f_plus - f_minus) / width, max(size_plus, size_minus), width

    d1, size1, width = central(eps)
    d2, size2, _ = central(2 * eps)
    roundoff = 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size1, size2) / abs(width)   # of D(h)
    plain_bound = abs(d1 - d2) + roundoff      # 3x D(h)'s truncation estimate, plus its round-off
    if richardson is False or (richardson is None and (abs(d1 - d2) <= roundoff or plain_bound <= good_enough)):
        return d1, plain_bound, False
    d4, size4, _ = central(4 * eps)
    roundoff = max(roundoff, 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * size4 / abs(width))
    r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
    rich_bound = abs(r1 - r2) / 5 + 1.5 * roundoff   # 3x R(h)'s estimated error, plus its round-off
    if richardson is True or rich_bound < plain_bound:
        return r1, rich_bound, True
    return d1, plain_bound, False


def _judge(name, shape, size, n_finite, indices, n_directions, probes, tol) -> InputReport:
    a, n = np.array(probes.analytic, dtype=np.float64), np.array(probes.numeric, dtype=np.float64)
    model_bound = np.array(probes.bound, dtype=np.float64)
    magnitude = np.array(probes.magnitude, dtype=np.float64)
    held_to = model_bound + tol * magnitude
    diff = np.abs(a - n)
    finite = np.isfinite(a) & np.isfinite(n) & np.isfinite(held_to)
    within = finite & (diff <= held_to)
    by_floor = finite & ~within & (diff <= np.array(probes.floor, dtype=np.float64))
    ok = bool(np.all(within | by_floor))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / held_to)
    ratio[~finite] = np.inf
    n_entries = len(indices)
    method = ("directional" if n_directions and n_entries == 0 else "all entries" if not n_directions and n_entries == n_finite
              else "sampled + directional" if n_directions else "sampled")
    report = InputReport(name, tuple(shape), n_entries, 0.0, 0.0, (), 0.0, 0.0, ok, size=size,
                         directions=n_directions, method=method, richardson=probes.richardson,
                         floor_only=int(np.sum(by_floor)))
    if a.size == 0:
        return report
    report.err_over_bound = float(np.max(ratio))
    report.rel_err, report.bound = _relative_figures(a, n, held_to, magnitude, n_entries, finite)
    if n_entries:
        e = int(np.argmax(ratio[:n_entries]))
        report.max_abs_err = float(np.max(diff[:n_entries])) if np.all(finite[:n_entries]) else float("inf")
        report.worst_index = tuple(int(v) for v in indices[e])
        report.analytic_at_worst, report.numeric_at_worst = float(a[e]), float(n[e])
    else:
        e = int(np.argmax(ratio))
        report.analytic_at_worst, report.numeric_at_worst = float(a[e]), float(n[e])
    report.notes = _notes(report, finite, n_entries, n_finite)
    return report


def _relative_figures(a, n, held_to, magnitude, n_entries, finite):
    """(relative error, relative bound): norm-wise over the entries, worst over the directions."""
    if not np.all(finite):
        return float("inf"), float("nan")
    rel, bound = 0.0, 0.0
    if n_entries:
        rel = rel_error(a[:n_entries], n[:n_entries])
        bound = float(np.linalg.norm(held_to[:n_entries]) / max(np.linalg.norm(magnitude[:n_entries]), TINY))
    if len(a) > n_entries:
        scale = np.maximum(magnitude[n_entries:], TINY)
        rel = max(rel, float(np.max(np.abs(a[n_entries:] - n[n_entries:]) / scale)))
        bound = max(bound, float(np.max(held_to[n_entries:] / scale)))
    return rel, bound


def _notes(report: InputReport, finite, n_entries, n_finite) -> list[str]:
    notes = []
    if n_finite < report.size:
        notes.append(f"{report.size - n_finite} entries are +-inf and were not probed")
    if not np.all(finite):
        notes.append("a gradient or finite difference is NaN/Inf")
    if report.floor_only:
        notes.append(f"{report.floor_only} probe(s) passed only through the absolute floor atol: "
                     "the check did not resolve them")
    if report.bound > LOOSE_BOUND:
        notes.append(f"the bound is loose ({report.bound:.1e} relative): finite differences cannot resolve "
                     "this gradient well (tiny next to |f|'s round-off, or f strongly curved); "
                     "a mistake smaller than that would pass")
    if 0 < n_entries < n_finite and not report.directions:
        notes.append(f"only {n_entries} of {report.size} entries were checked and no directions: "
                     "an error elsewhere would not be seen")
    return notes


# ----- arguments -------------------------------------------------------------------------------------

def _pair_up(inputs, grads, names):
    """(names, arrays, gradients) after checking that they match."""
    if isinstance(inputs, Mapping):
        if not isinstance(grads, Mapping):
            raise TypeError("grads must be a mapping when inputs is a mapping")
        missing = [k for k in inputs if k not in grads]
        if missing:
            raise ValueError(f"grads is missing entries for: {missing}")
        names = list(inputs)
        arrays = [inputs[k] for k in names]
        analytic = [grads[k] for k in names]
    else:
        arrays, analytic = list(inputs), list(grads)
        names = list(names) if names is not None else [f"input{i}" for i in range(len(arrays))]
    if not (len(arrays) == len(analytic) == len(names)):
        raise ValueError(f"got {len(arrays)} inputs, {len(analytic)} gradients and {len(names)} names")
    for name, x, g in zip(names, arrays, analytic):
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"input {name!r} must be a floating-point numpy array")
        if np.shape(g) != x.shape:
            raise ValueError(f"gradient for {name!r} has shape {np.shape(g)}, input has {x.shape}")
        if x.dtype != np.float64:
            raise TypeError(f"input {name!r} is {x.dtype}; gradient checks need float64 "
                            "(float32 round-off swamps central differences)")
    return names, arrays, analytic


def _check_settings(eps, tol, atol, max_entries, method="auto", directions=4, richardson=None, **functions) -> None:
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    for name, value, positive in (("eps", eps, True), ("tol", tol, False), ("atol", atol, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or value < 0 or (positive and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    if eps >= 0.1:
        raise ValueError(f"eps is a step relative to each input's scale and must be < 0.1, got {eps!r}")
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer))
                                    or max_entries <= 0):
        raise ValueError(f"max_entries must be None or a positive int, got {max_entries!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) or directions <= 0:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    if richardson not in (None, True, False):
        raise ValueError(f"richardson must be None, True or False, got {richardson!r}")
