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
            R is used only while the differences shrink like h^2 (D(2h) - D(4h) about 4x
            D(h) - D(2h)); across a kink (relu, abs) they do not, and D(h) stands.
  bound     = 3x the truncation estimate + the round-off (|D(h) - D(2h)| + C u F / h, or
            |R(h) - R(2h)| / 5 + 1.5 C u F / h)  +  the analytic gradient's own round-off
            (C u max|grad| over all inputs: a zero gradient computed by cancelling terms is not
            exactly zero)  +  tol * magnitude  (a relative floor; magnitude is |grad_i|, or
            ||grad * p|| for a direction)  -- an entry or direction passes when
            |analytic - numeric| <= bound.  atol is an optional absolute floor, 0 by default; a pass
            that needed it is flagged in the report.
  longer    when the bound is above 1e-3 of the gradient's size (a gradient tiny next to |f|, so
  steps     f's round-off swamps the difference), the probe is taken again with longer steps
            (round-off / h falls), kept only while the bound shrinks, the estimates agree and f
            still behaves smoothly at the longer step.  A probe whose bound stays above half its
            gradient (and above 1e-3 of the largest gradient in the check) is UNRESOLVED: a wrong
            gradient could not be told from a right one there, so it does not pass (the report
            says so, apart from FAIL).
  shorter   a probe that fails, or passes on a bound above 1e-3 of its gradient, where that bound
  steps     is mostly truncation (f bends within a few steps: an input far from zero whose entries
            differ by little) is taken again at steps 4, 16, 64 times shorter, kept while the bound
            shrinks and f behaves smoothly there (in each input only until one failure is
            confirmed, as below).  Where f does not behave smoothly at the step (its differences
            do not shrink like h^2: a layer norm of 1e6 + noise, stepped by 100, saturates within
            it), 16 times shorter each time, past rough ones, down to eps times the spread
            around their mean of the entries in a line (a row, a column) with the probed one.
  failing   a probe that fails is measured again before it is called wrong: f's own rounding,
  probes    from the 4th differences of f at 7 points 1/4, 1/3 and 1 step apart, and at the step eps also 4
            and 21 (a cancellation can keep f's value over many steps, then jump; 6th differences
            there, which a smooth bend within so wide a window leaves small), and D(t) at
            t = h/64 ... 64h.  Where f rounds beyond C u F (a cancellation inside it, as 1 + tanh(z)
            for z << 0 or exp(x) - 1 for tiny x: its values move in steps far above u |f|) and
            D(h) stands out of that rounding (by 2x), the probe is first taken again at steps 16
            and 256 times longer with that measured rounding in its bound (it falls like 1/step),
            kept while f stays smooth there and the bound shrinks: that judges it, passing or
            failing (but an analytic value off by no more than f's rounding at that step is
            UNRESOLVED: a backward holding the same cancelling terms rounds as f does; by more,
            even a millionth of the largest gradient, it FAILs).  Where no longer step is kept
            and that rounding covers the difference, or where some D(t) strays from D(h) further
            than the model lets it (its truncation grows like t^2 from what D(h) - D(2h) shows,
            and beyond 4h no faster than from what the two D(t) below it show: D(h) - D(2h) can be
            f's rounding alone; its round-off falls like 1/t) and the analytic value lies within
            that spread of the D(t), the probe is UNRESOLVED, not FAIL: the check cannot tell
            there.  Where f keeps one value at every one of those steps (log(1 + exp(s)) is
            exactly 0 for s < -37, while its gradient is ~1e-17), it is looked at farther out, up
            to 64 * 4^5 steps, and where it changes there by a stair (a jump that keeps its height
            over the second half of a bisection to it, no smooth onset) as high as the analytic
            value predicts across the +-64 steps (and, along one entry, the way it predicts), and
            no higher than f's rounding (16 u max(|f|, 1): np.round(x) with a straight-through
            gradient still FAILs), the probe is UNRESOLVED too.  A smooth f shows none of this, so
            a wrong gradient of one still FAILs.  Each input pays this (up to 55 calls, 105 where f
            kept one value, and up to 54 for shorter steps) only until one failure is confirmed.
  limits    no step can check a gradient across a kink within a step of the point (relu at 0;
            at a clear kink at the point itself, one measured at two steps, an analytic value
            between f's one-sided slopes there, as a subgradient's, is UNRESOLVED, one outside FAILs),
            nor a function that varies on a scale far shorter than the step (cos of x ~ 1e5,
            where the relative step is 10) and than the input's spread (1e5 + noise, with a
            spread of 1, is resolved by the shorter steps); the report says when f did not
            behave smoothly.

Which probes (method="auto"): every entry when the input has at most max_entries entries
(None: AUTO_ALL_ENTRIES entries); otherwise a random sample of max_entries entries (None:
AUTO_SAMPLE) plus `directions` random directions.  method="entries" probes entries only (all of
them when max_entries is None: the old behaviour), method="directional" directions only.  A
direction that fails is halved, and the failing half followed, down to the entry it failed
through, which the report then names (2 log2(n) probes more, not n).

Before any probe: two evaluations at the same point must agree (randomness inside f needs a
fixed seed), and f (or check_op's out) must not come back rounded to float32 or float16.  A
function (fn, or check_op's forward or backward) that changes its arguments in place (inputs,
dout) is refused, naming the argument, with every input restored first: looked for after the
first call, after every probe, and at each move of a probe (what the probe moved, which it puts
back itself and so would hide) -- so a change on any later call is caught too.  Every input is
also restored when f raises mid-check.

The relative error an input reports is norm-wise over its entries, ||a - n|| / max(||a||, ||n||);
for directions |<a,p> - numeric| / ||a * p||.  ``err/bound`` is the worst probe's error over its
bound: a correct gradient sits far below 1, a wrong one above.

A FAIL of an input whose every entry was probed one by one names a pattern in its notes when one
explains the analytic value of every entry from its numeric one, each within its bound (scaled as
the pattern scales the numeric value): analytic = c * numeric (c = 0: zeros, c = -1: a flipped
sign), numeric with its last two axes swapped, or numeric at all but a few entries (named).  None
is guessed: not from a sample, from directions, from a factor only one entry shows, or from a
pattern that differs from numeric itself, beyond the bound, at fewer than two entries (a factor
near 1 absorbing one entry off, the transpose of a symmetric gradient).  A factor is shown to the
digits that explain every entry (1.00001, not 1).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .arguments import (_call_as_check_op_does, _call_shown, _check_names, _check_settings, _check_wrt, _describe,
                        _forward_result, _gradients_by_key, _gradients_in_order, _input_list, _kind, _names_from_keys,
                        _one_by_one_advice, _pair_up, _require_float64_input, _require_float64_precision, _wrt_keys)
from .constants import LOOSE_BOUND, ROUNDOFF_FACTOR, TINY, UNIT_ROUNDOFF, UNRESOLVED
from .derivative import _left_domain_error, _LeftDomain, _resolved_derivative, _shortened
from .inplace import _ChangedUnderProbe, _InPlaceGuard, _unchanged
from .norms import _norm, _rms, rel_error
from .pattern import fitted_factor
from .remeasure import _kink_checked, _steadiness_checked
from .reports import _judge, GradcheckReport, InputReport

AUTO_ALL_ENTRIES = 2048   # method="auto", max_entries=None: tensors up to this size get every entry
AUTO_SAMPLE = 32          # ... larger ones this many sampled entries plus the random directions
DOUT_SALT = 0x646F7574   # "dout"
PROGRESS_EVERY = 10.0     # progress=True: seconds between lines while one input is being probed


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
    """Check `grads` (analytic d fn / d input) against central differences.  How the bounds are made:
    the module doc, help(importlib.import_module("npllama.gradcheck")) (npllama.gradcheck is this function).

    fn:      called as fn(*arrays) -> a scalar (float, or an array of one element), with the input
             arrays in order.  The arrays are perturbed in place (and restored, also when fn
             raises), so fn may also simply read them from a closure (e.g. a model's params).
             fn must be deterministic: randomness inside it (dropout) needs a fixed seed.  It must
             not change the arrays itself (x -= m), on any call: a ValueError names the one it
             changed, every input restored.
    inputs:  a list or tuple of writable float64 arrays, or a mapping name -> array (names then
             come from it).  Each array is checked separately; no two may share memory.
    grads:   analytic gradients, same order / keys and shapes as inputs.
    eps:     the step, relative to each entry's scale max(|x_i|, rms(x)) (1 for an all-zero input);
             a probe the step cannot resolve is tried again with longer steps.
    tol:     relative floor of the bound: differences up to tol * |gradient| always pass.
    atol:    absolute floor (default 0): an entry within atol passes; the report flags such passes.
    max_entries: entries probed one by one per input; larger inputs get a random sample of this
             many plus random directions (method="auto").  None: all entries up to AUTO_ALL_ENTRIES.
    seed:    a non-negative int: which entries are sampled and which directions drawn.
    method:  "auto", "entries" (no directions), or "directional" (no single entries).
    directions: random directions per input, where directions are used.
    richardson: None (where it helps), True (always), False (never).
    progress: print a line to stderr as each input is done (a whole model takes a while), and
             every PROGRESS_EVERY seconds while one is being probed.
    """
    _check_settings(fn=fn, eps=eps, tol=tol, atol=atol, max_entries=max_entries, seed=seed, method=method,
                    directions=directions, richardson=richardson)
    names, arrays, analytic = _pair_up(inputs, grads, names)

    def evaluate():
        value = fn(*arrays)
        if value is None or isinstance(value, (bool, np.bool_)) or np.size(value) != 1 or not np.isrealobj(value):
            raise TypeError(f"fn must return one real number (the scalar whose gradient is checked), got "
                            f"{_describe(value)}; sum or reduce its output first")
        _require_float64_precision(value, "fn returned")
        value = float(np.asarray(value, dtype=np.float64).reshape(()))
        return value, abs(value)

    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress,
                      guard=_InPlaceGuard("fn", names, arrays))


def check_op(forward: Callable, backward: Callable, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], *,
             wrt: Sequence[int] | Sequence[str] | None = None, names: Sequence[str] | None = None,
             extra_args: Sequence = (), extra_kwargs: Mapping | None = None, seed: int = 0,
             eps: float = 1e-4, tol: float = 1e-7, atol: float = 0.0,
             max_entries: int | None = None, method: str = "auto", directions: int = 4,
             richardson: bool | None = None, progress: bool = False) -> GradcheckReport:
    """Check an op's backward against central differences of its forward.

    forward(*inputs, *extra_args, **extra_kwargs) -> (out, cache), out one float array.
    backward(dout, cache) -> the gradient of each differentiable input, in order (a tuple or list,
                             or a single array when there is one).
    inputs: a list or tuple of the forward's array inputs (float64 for those checked), or a
            mapping name -> array, as a dict of parameters: forward then takes the mapping itself,
            forward(inputs, *extra_args, **extra_kwargs), and backward returns a mapping of
            gradients with its keys (those in wrt; others it returns are not checked).  The keys
            name the inputs in the report, as gradcheck's do.
    wrt:    which of `inputs` are differentiable (indices, or keys for a mapping; default: every
            floating-point array among them), matching backward's outputs; an input left out (an
            int index array, a mask) is not perturbed.
    names:  one name per input (all of them, wrt or not), for the report (not with a mapping).

    The scalar checked is L = sum(out * dout) for a fixed random dout, so backward receives dout.
    Its round-off is modelled from sum(|out * dout|), the size of the terms before they cancel.
    An op with several outputs: wrap it so that out is one array (np.concatenate of the raveled
    outputs) and backward splits dout the same way.  Neither forward nor backward may change its
    arguments in place (inputs, dout, or arrays in the cache that are inputs), on any call: the
    check stops with a ValueError naming the one that changed, the inputs restored.  The other settings are gradcheck's.
    """
    _check_settings(forward=forward, backward=backward, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                    seed=seed, method=method, directions=directions, richardson=richardson)
    keyed, wrt_given = isinstance(inputs, Mapping), wrt is not None
    if keyed:                 # forward(inputs, ...) takes the mapping itself, as a forward(params, x) does
        all_names = _names_from_keys(inputs, names)
        arguments, inputs = (inputs,), [inputs[k] for k in all_names]
        wrt = _wrt_keys(wrt, all_names)
    else:
        inputs = _input_list(inputs, "inputs")
        all_names = _check_names(names, len(inputs), "inputs")
        arguments = tuple(inputs)
    if not isinstance(extra_args, (tuple, list)):
        raise TypeError(f"extra_args must be a tuple of the forward's further positional arguments, got "
                        f"{_describe(extra_args)} (one argument: extra_args=(value,))")
    if extra_kwargs is not None and not isinstance(extra_kwargs, Mapping):
        raise TypeError(f"extra_kwargs must be a mapping of keyword arguments, got {_describe(extra_kwargs)}")
    extra_kwargs = dict(extra_kwargs or {})
    wrt = _check_wrt(wrt, inputs, all_names)
    for i in wrt:   # before the forward runs: its out follows a float32 input's dtype, rightly
        _require_float64_input(all_names[i], inputs[i])

    # all inputs: an index array changed matters too; and the mapping, whose arrays forward reads
    guard = _InPlaceGuard("forward", all_names, inputs, arguments[0] if keyed else None)
    out, cache = _forward_result(_call_as_check_op_does(
        forward, "forward", (*arguments, *extra_args), extra_kwargs,
        _call_shown("forward", ["inputs"] if keyed else all_names, extra_args, extra_kwargs),
        _one_by_one_advice(forward, all_names) if keyed else ""))
    guard.check("forward")
    dout = draw_dout(np.shape(out), seed)
    dout_given = dout.copy()
    grads = _call_as_check_op_does(backward, "backward", (dout_given, cache), {}, "backward(dout, cache)")
    guard.check("backward")
    if not np.array_equal(dout_given, dout):
        raise ValueError("backward changed its argument dout in place; the upstream gradient is shared "
                         "(a model hands the same array to other branches), so write the result into a "
                         "new array (dx = dout * s, not dout *= s)")
    if keyed:
        grads = _gradients_by_key(grads, wrt, all_names)
    else:
        grads = _gradients_in_order(grads, wrt, wrt_given, inputs, all_names)
    for i, g in zip(wrt, grads):
        if g is None:
            raise ValueError(f"backward returned None for {all_names[i]!r}; return its gradient, or leave "
                             f"the input out of wrt if it is not differentiable")

    def evaluate():
        terms = np.asarray(forward(*arguments, *extra_args, **extra_kwargs)[0], dtype=np.float64) * dout
        return float(np.sum(terms)), float(np.sum(np.abs(terms)))

    names, arrays, analytic = _pair_up([inputs[i] for i in wrt], list(grads), [all_names[i] for i in wrt])
    left_out = [f"{all_names[i]} ({_kind(x)})" for i, x in enumerate(inputs) if i not in wrt and x is not None]
    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress,
                      guard=guard, not_differentiated=left_out)


def draw_dout(shape, seed: int) -> np.ndarray:
    """The upstream gradient check_op(..., seed=seed) hands backward for an out of this shape.

    Drawn from a stream salted apart from default_rng(seed): a caller who draws its input as
    x = default_rng(seed).standard_normal(...) and passes the same seed must not get dout == x,
    for which a scale-invariant op's gradient (x / |x|, a norm without weight) is exactly zero."""
    return np.random.default_rng([seed, DOUT_SALT]).standard_normal(shape)


# ----- the checker -----------------------------------------------------------------------------------


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
    unsteady: list = dataclasses.field(default_factory=list)    # failing, but f not resolved at its steps
    between: list = dataclasses.field(default_factory=list)     # (left, right) slopes at a kink, or ()
    flat: list = dataclasses.field(default_factory=list)        # unsteady: f did not change at any step
    richardson: int = 0
    longer_steps: int = 0       # probes that needed a longer step than eps to resolve
    remeasure_failures: bool = True   # a failing probe is measured at other steps (until one failure is confirmed)

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
        self.unresolved.append(estimate.unsteady or bool(estimate.between)
                               or ((reference > 0 or coarse > 0) and not estimate.bound <= resolution))
        self.rough.append(estimate.rough)
        self.unsteady.append(estimate.unsteady)
        self.between.append(estimate.between)
        self.flat.append(estimate.flat)
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
               richardson, progress, guard, not_differentiated=()) -> GradcheckReport:
    _require_deterministic(evaluate, guard.check)
    # The analytic gradients carry round-off of their own: an entry that is zero in exact
    # arithmetic comes out as ~u times the gradient's larger entries.  No probe can be asked to
    # resolve below that.
    largest = max((float(np.max(np.abs(g[np.isfinite(g)]), initial=0.0)) for g in map(np.asarray, analytic)),
                  default=0.0)
    rng = np.random.default_rng(seed)
    reports = []
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
                                 atol, probes)
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
                    _probe_direction(evaluate, x, drawn[-1], g, largest, eps, richardson, tol, atol, probes)
                except _LeftDomain as error:
                    raise _left_domain_error(error, name, f"every entry (random direction {len(drawn)})", eps) \
                        from error
        report = _judge(name, x.shape, x.size, int(np.sum(np.isfinite(x))), indices, n_directions, probes, tol,
                        n_nan=int(np.sum(np.isnan(x))))
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
        if progress:
            r = reports[-1]
            print(f"gradcheck {len(reports)}/{len(names)} {name}: {r.method} {r.coverage}, "
                  f"err/bound {r.err_over_bound:.2g} {r.status}", file=sys.stderr, flush=True)
    return GradcheckReport(reports, tol, eps, atol, list(not_differentiated))


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


def _require_deterministic(evaluate, after_each_call) -> None:
    """Two evaluations at the same point must agree to round-off, or no difference means anything.
    after_each_call: raises if that call changed the inputs, which would also make them differ (and
    is then what to say, not randomness)."""
    f1, size1 = evaluate()
    after_each_call()
    f2, size2 = evaluate()
    after_each_call()
    if abs(f1 - f2) > 2 * ROUNDOFF_FACTOR * UNIT_ROUNDOFF * max(size1, size2) or np.isnan(f1) != np.isnan(f2):
        raise ValueError(f"the function gave {f1!r} and then {f2!r} at the same inputs: finite differences "
                         "need a deterministic function (fix the seed of any randomness inside it, e.g. "
                         "dropout, so every call draws the same)")


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


def _probe_entry(evaluate, x, idx, scale, analytic, typical, largest, eps, richardson, tol, atol, probes):
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
                                            noise, unit_step=1.0 / max(scale, TINY))
    bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    # failing, or passing on a loose bound (which could let a mistake through): shorter steps may tighten it
    if probes.remeasure_failures and (abs(analytic - estimate.value) > bound + tol * magnitude
                                      or estimate.bound > LOOSE_BOUND * reference):
        estimate = _shortened(evaluate, move, estimate, richardson, tol * abs(analytic),
                              shortest_rough=eps * _spread(x, idx) / max(scale, TINY))
        bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    estimate = _kink_checked(evaluate, move, eps, estimate, analytic, bound + tol * magnitude)
    estimate = _steadiness_checked(evaluate, move, estimate, analytic, bound + tol * magnitude, probes, richardson,
                                   tol * abs(analytic), longer, one_entry=True)
    bound, magnitude = estimate.bound + noise, max(abs(analytic), abs(estimate.value))
    probes.add(analytic, estimate, bound, magnitude, atol, reference, largest, longer)


def _probe_direction(evaluate, x, direction, g, largest, eps, richardson, tol, atol, probes):
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
    estimate, longer = _resolved_derivative(evaluate, move, eps, richardson, tol * magnitude, magnitude, noise,
                                            unit_step=1.0 / max(float(np.max(np.abs(direction), initial=0.0)), TINY))
    claimed, terms_size = np.sum(terms), float(np.sum(np.abs(terms)))     # <g, p>, and its terms' size

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
    estimate = _kink_checked(evaluate, move, eps, estimate, claimed, bound + tol * magnitude)
    estimate = _steadiness_checked(evaluate, move, estimate, claimed, bound + tol * magnitude, probes, richardson,
                                   tol * magnitude, longer)
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
