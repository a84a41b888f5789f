"""Finite-difference gradient checking: compare analytic gradients with central differences.

Two ways in:

    # any scalar function of some arrays, and the gradients you computed for them
    report = gradcheck(lambda x, w: float(np.sum(f(x, w))), [x, w], [dx, dw], names=["x", "w"])

    # an op written as a forward/backward pair (out, cache) = forward(*inputs); backward(dout, cache)
    report = check_op(rmsnorm_forward, rmsnorm_backward, [x, w], extra_args=(1e-5,))

    print(report)             # a table: input, shape, max abs error, relative error, worst index
    report.raise_if_failed()  # AssertionError carrying that table

Work in float64.  The relative error of an input is norm-wise, ||a - n|| / max(||a||, ||n||, tiny)
over the checked entries (a = analytic, n = numeric): below ~1e-7 is right, above ~1e-2 is a bug.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

TINY = 1e-30


@dataclasses.dataclass
class InputReport:
    name: str
    shape: tuple
    checked: int            # entries probed by finite differences
    max_abs_err: float
    rel_err: float
    worst_index: tuple      # where |analytic - numeric| is largest
    analytic_at_worst: float
    numeric_at_worst: float
    ok: bool


@dataclasses.dataclass
class GradcheckReport:
    inputs: list[InputReport]
    tol: float

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

    def __str__(self) -> str:
        rows = [("input", "shape", "checked", "max abs err", "rel err", "worst index",
                 "analytic", "numeric", "")]
        for r in self.inputs:
            rows.append((r.name, str(r.shape), str(r.checked), f"{r.max_abs_err:.2e}",
                         f"{r.rel_err:.2e}", str(r.worst_index), f"{r.analytic_at_worst:.6g}",
                         f"{r.numeric_at_worst:.6g}", "ok" if r.ok else "FAIL"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        verdict = "all gradients match" if self.ok else "some gradients do NOT match"
        return "\n".join(lines + [f"{verdict} (relative error tolerance {self.tol:g})"])

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError("gradient check failed:\n" + str(self))


def numerical_gradient(fn: Callable[[], float], x: np.ndarray, eps: float = 1e-6,
                       indices: Sequence[tuple] | None = None) -> np.ndarray:
    """Central differences of the scalar fn() with respect to x, perturbing x in place.

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
              eps: float = 1e-6, tol: float = 1e-7, atol: float = 1e-9,
              max_entries: int | None = None, seed: int = 0) -> GradcheckReport:
    """Check `grads` (analytic d fn / d input) against central differences.

    fn:      called as fn(*arrays) -> scalar, with the input arrays in order.  The arrays are
             perturbed in place (and restored), so fn may also simply read them from a closure
             (e.g. a model's params).
    inputs:  a sequence of float arrays, or a mapping name -> array (names then come from it).
    grads:   analytic gradients, same order / keys and shapes as inputs.
    tol:     an input passes when its relative error is at most tol ...
    atol:    ... or when every probed entry is within atol (for gradients so small that the
             finite differences' own round-off, ~1e-10, dominates the relative error).
    max_entries: probe at most this many randomly chosen entries per input (None: all of them).
    """
    _check_settings(fn=fn, eps=eps, tol=tol, atol=atol, max_entries=max_entries)
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

    rng = np.random.default_rng(seed)
    reports = []
    for name, x, g in zip(names, arrays, analytic):
        g = np.asarray(g, dtype=np.float64)
        if max_entries is not None and x.size > max_entries:
            flat = rng.choice(x.size, size=max_entries, replace=False)
            indices = [np.unravel_index(i, x.shape) for i in flat]
        else:
            indices = list(np.ndindex(x.shape))
        numeric = numerical_gradient(lambda: fn(*arrays), x, eps, indices)
        reports.append(_compare(name, x.shape, g, numeric, indices, tol, atol))
    return GradcheckReport(reports, tol)


def check_op(forward: Callable, backward: Callable, inputs: Sequence[np.ndarray], *,
             wrt: Sequence[int] | None = None, names: Sequence[str] | None = None,
             extra_args: Sequence = (), extra_kwargs: Mapping | None = None, seed: int = 0,
             eps: float = 1e-6, tol: float = 1e-7, atol: float = 1e-9,
             max_entries: int | None = None) -> GradcheckReport:
    """Check an op's backward against central differences of its forward.

    forward(*inputs, *extra_args, **extra_kwargs) -> (out, cache)
    backward(dout, cache) -> the gradient of each differentiable input, in order (a tuple, or a
                             single array when there is one).
    wrt: which of `inputs` are differentiable (default: all of them), matching backward's outputs.

    The scalar checked is L = sum(out * dout) for a fixed random dout, so backward receives dout.
    """
    _check_settings(forward=forward, backward=backward, eps=eps, tol=tol, atol=atol, max_entries=max_entries)
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

    def loss(*_):
        return float(np.sum(forward(*inputs, *extra_args, **extra_kwargs)[0] * dout))

    all_names = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]
    return gradcheck(loss, [inputs[i] for i in wrt], list(grads), names=[all_names[i] for i in wrt],
                     eps=eps, tol=tol, atol=atol, max_entries=max_entries, seed=seed)


def _check_settings(eps, tol, atol, max_entries, **functions) -> None:
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    for name, value, positive in (("eps", eps, True), ("tol", tol, False), ("atol", atol, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or value < 0 or (positive and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer))
                                    or max_entries <= 0):
        raise ValueError(f"max_entries must be None or a positive int, got {max_entries!r}")


def rel_error(a: np.ndarray, b: np.ndarray, tiny: float = TINY) -> float:
    """Norm-wise relative error ||a - b|| / max(||a||, ||b||, tiny), in float64.  (The exercise
    checker and trace comparison pass tiny=1e-300: two all-but-zero arrays that differ count.)"""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), tiny))


def _compare(name, shape, analytic, numeric, indices, tol, atol) -> InputReport:
    if not indices:
        return InputReport(name, shape, 0, 0.0, 0.0, (), 0.0, 0.0, True)
    a = np.array([analytic[i] for i in indices])
    n = np.array([numeric[i] for i in indices])
    diff = np.abs(a - n)
    worst = int(np.argmax(diff)) if np.all(np.isfinite(diff)) else int(np.argmax(~np.isfinite(diff)))
    err = rel_error(a, n) if np.all(np.isfinite(a)) else float("inf")
    ok = bool(np.isfinite(err) and (err <= tol or float(diff[worst]) <= atol))
    worst_index = tuple(int(v) for v in indices[worst])
    return InputReport(name, tuple(shape), len(indices), float(diff[worst]), err, worst_index,
                       float(a[worst]), float(n[worst]), ok)
