"""The two ways in, gradcheck (any scalar function and its gradients) and check_op (a forward and
backward pair, through L = sum(out * dout)), and the helpers their users call: draw_dout (the dout
check_op hands backward) and numerical_gradient (the plain textbook estimate).  Each checks its
arguments (arguments.py), guards them against changes in place (inplace.py) and hands f to the
checker (checker.py)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .arguments import (BACKWARD_ORDER, GRADS_ORDER, _call_as_check_op_does, _call_shown, _check_names, _check_settings, _check_wrt, _describe,
                        _fn_value, _forward_result, _gradients_by_key, _gradients_in_order, _input_list, _kind, _names_from_keys,
                        _one_by_one_advice, _pair_up, _require_float64_input, _wrt_keys)
from .checker import _check_all
from .inplace import _InPlaceGuard
from .reports import GradcheckReport


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
    the package's docstring (npllama/gradcheck/__init__.py), help(importlib.import_module("npllama.gradcheck"))
    (npllama.gradcheck is this function).

    fn:      called as fn(*arrays) -> a scalar (float, or an array of one element; not a (loss, grads)
             pair, nor an int), finite at the inputs given, with the input
             arrays in order.  The arrays are perturbed in place (and restored, also when fn
             raises), so fn may also simply read them from a closure (e.g. a model's params).
             fn must be deterministic: randomness inside it (dropout) needs a fixed seed.  It must
             not change the arrays itself (x -= m), on any call: a ValueError names the one it
             changed, every input restored.
    inputs:  a list or tuple of writable float64 arrays, or a mapping name -> array (names then
             come from it).  Each array is checked separately; no two may share memory.
    grads:   analytic gradients, same order / keys and shapes as inputs, in float64 (float32's
             rounding would fail a right one).
    eps:     the step, relative to each entry's scale max(|x_i|, rms(x)) (1 for an all-zero input);
             a probe the step cannot resolve is tried again with longer steps.
    tol:     relative floor of the bound: differences up to tol * |gradient| always pass.
    atol:    absolute floor (default 0): an entry within atol passes; the report flags such passes.
    max_entries: entries probed one by one per input; larger inputs get a random sample of this
             many plus random directions (method="auto").  None: all entries up to AUTO_ALL_ENTRIES
             (2048, in npllama/gradcheck/checker.py).
    seed:    a non-negative int: which entries are sampled and which directions drawn.
    method:  "auto", "entries" (no directions), or "directional" (no single entries).
    directions: random directions per input, where directions are used.
    richardson: None (where it helps), True (always), False (never).
    progress: print a line to stderr as each input is done (a whole model takes a while), and
             every PROGRESS_EVERY seconds (10, in npllama/gradcheck/checker.py) while one is being probed.
    """
    _check_settings(fn=fn, eps=eps, tol=tol, atol=atol, max_entries=max_entries, seed=seed, method=method,
                    directions=directions, richardson=richardson)
    names, arrays, analytic = _pair_up(inputs, grads, names)

    def evaluate():
        value = _fn_value(fn(*arrays))
        return value, abs(value)

    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress,
                      guard=_InPlaceGuard("fn", names, arrays),
                      order=None if isinstance(inputs, Mapping) else GRADS_ORDER)


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

    order = None if keyed else BACKWARD_ORDER
    names, arrays, analytic = _pair_up([inputs[i] for i in wrt], list(grads), [all_names[i] for i in wrt], order)
    left_out = [f"{all_names[i]} ({_kind(x)})" for i, x in enumerate(inputs) if i not in wrt and x is not None]
    return _check_all(evaluate, names, arrays, analytic, eps=eps, tol=tol, atol=atol, max_entries=max_entries,
                      seed=seed, method=method, directions=directions, richardson=richardson, progress=progress,
                      guard=guard, not_differentiated=left_out, order=order)


def draw_dout(shape, seed: int) -> np.ndarray:
    """The upstream gradient check_op(..., seed=seed) hands backward for an out of this shape.

    Drawn from a stream salted apart from default_rng(seed): a caller who draws its input as
    x = default_rng(seed).standard_normal(...) and passes the same seed must not get dout == x,
    for which a scale-invariant op's gradient (x / |x|, a norm without weight) is exactly zero."""
    return np.random.default_rng([seed, DOUT_SALT]).standard_normal(shape)
