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

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .arguments import (_call_as_check_op_does, _call_shown, _check_names, _check_settings, _check_wrt, _describe,
                        _forward_result, _gradients_by_key, _gradients_in_order, _input_list, _kind, _names_from_keys,
                        _one_by_one_advice, _pair_up, _require_float64_input, _require_float64_precision, _wrt_keys)
from .checker import _check_all
from .inplace import _InPlaceGuard
from .norms import rel_error
from .pattern import fitted_factor
from .reports import GradcheckReport, InputReport

DOUT_SALT = 0x646F7574   # "dout"


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
