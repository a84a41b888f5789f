"""The rule that keeps grading honest: a backward must be *derived*, not borrowed or measured.

A submission is refused (never graded) when

1. it imports anything but NumPy, `math` and a few harmless standard modules, or anything from
   npllama except the helpers its exercise names (e.g. rope's `rotate_half`) -- read from the
   file's syntax tree before any of it runs (`screen_source`).  Reaching for code by other routes
   is refused the same way: `exec`, `eval`, `compile`, `__import__`, `open`, `getattr`, `globals`,
   dunder attributes such as `__globals__`, and NumPy's file and C-library doors (`np.load`,
   `np.ctypeslib`, ...);
2. it calls one of npllama's forward passes, or the very backward it is asked to write, while its
   backward runs (`guard_library`, a run-time guard for when the import rule is switched off);
3. its gradient is right only to the accuracy of finite differences (`finite_difference_noise`):
   on a well-conditioned float64 probe case (the exercise's `probe_params`, with a large eps where
   there is one, so that an eps-sized slip is not mistaken for noise) any formula -- the closed
   form, the step-by-step chain rule, loops or einsum -- agrees with the exact gradient to ~1e-15,
   while a gradient measured by evaluating the forward at x +- h carries the forward's round-off
   divided by h: a relative error between 1e-12 and 1e-4.  (Richardson-extrapolated or
   complex-step derivatives can get below 1e-12; they are the ways round this rule we know of,
   and they still need the forward written out in the student's own file.)
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib

import numpy as np

from .diagnose import float32_rounded, rel_error

# Modules any submission may import: nothing here reads files, runs programs or loads code.
SAFE_MODULES = {"numpy", "math", "cmath", "functools", "itertools", "operator", "typing", "dataclasses",
                "__future__", "collections", "numbers", "fractions"}
FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "open", "getattr", "setattr", "delattr", "globals",
                   "locals", "vars", "breakpoint", "input", "exit", "quit", "help", "memoryview"}
FORBIDDEN_NUMPY_ATTRIBUTES = {"load", "save", "savez", "savez_compressed", "fromfile", "tofile", "memmap",
                              "loadtxt", "savetxt", "genfromtxt", "fromregex", "ctypeslib", "DataSource", "f2py",
                              "testing", "distutils", "lib"}
# any formula is exact to ~1e-15 on the probe case; finite differences miss by >= ~1e-11
NOISE_FLOOR, NOISE_CEILING = 1e-12, 1e-4

RULE = ("Use NumPy and math only (plus the helpers this exercise names), and compute the gradient "
        "from the cache with the chain rule: a file that imports any other part of npllama (an op, a "
        "kernel, the backend), reaches for code through exec/eval/getattr/__import__, or evaluates the "
        "forward pass to differentiate it numerically is refused, not graded.")


def screen_source(source: str, allowed_helpers=(), filename: str = "<submission>") -> list[str]:
    """Why this source is refused (empty when it is not), from its syntax tree alone."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError:
        return []   # loading it reports the syntax error with its line
    allowed = {(module, name) for module, name in allowed_helpers}
    reasons = []
    for node in ast.walk(tree):
        line = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in SAFE_MODULES:
                    reasons.append(f"{line} imports {alias.name}{_why_module(alias.name, allowed)}")
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module.split(".")[0] not in SAFE_MODULES:
                for alias in node.names:
                    if (module, alias.name) not in allowed:
                        reasons.append(f"{line} imports {alias.name} from {module}"
                                       f"{_why_module(module, allowed)}")
        elif isinstance(node, ast.Name) and (node.id in FORBIDDEN_CALLS or _dunder(node.id)):
            reasons.append(f"{line} uses {node.id}, which can reach code outside the file")
        elif isinstance(node, ast.Attribute):
            if _dunder(node.attr):
                reasons.append(f"{line} uses the attribute {node.attr}, which can reach code outside the file")
            elif node.attr in FORBIDDEN_NUMPY_ATTRIBUTES and _is_numpy(node.value):
                reasons.append(f"{line} uses numpy's {node.attr}, which reads files or loads code")
    return _unique(reasons)


def _why_module(module: str, allowed) -> str:
    if module.split(".")[0] == "npllama":
        names = ", ".join(f"{n} from {m}" for m, n in sorted(allowed))
        return (": npllama's own code would do the exercise for you"
                + (f" (only {names} may be imported)" if names else ""))
    return ": only numpy and math may be imported"


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and name not in ("__name__", "__doc__")


def _is_numpy(node) -> bool:
    return isinstance(node, ast.Name) and node.id in ("np", "numpy")


def _unique(items):
    return list(dict.fromkeys(items))


# ----- run time ----------------------------------------------------------------------------------

class ForbiddenCall(Exception):
    """The student's backward called a function the rule forbids."""


_student_depth = [0]   # > 0 while a student's backward runs (one process grades one file at a time)


def student_call(backward):
    """Wrap a student's backward so that guarded library functions know it is running."""
    @functools.wraps(backward)
    def running(*args, **kwargs):
        _student_depth[0] += 1
        try:
            return backward(*args, **kwargs)
        finally:
            _student_depth[0] -= 1
    return running


@contextlib.contextmanager
def guard_library(exercise):
    """While active, every npllama.ops forward and exercise's own backward raise ForbiddenCall
    when called from inside a student's backward (wrapped by `student_call`)."""
    ops = importlib.import_module("npllama.ops")
    patched = []
    for module in {ops, importlib.import_module(exercise.module), *_op_modules(ops)}:
        for name, fn in list(vars(module).items()):
            if callable(fn) and (name.endswith("_forward") or name == exercise.backward_name):
                patched.append((module, name, fn))
                setattr(module, name, _guarded(name, fn))
    try:
        yield
    finally:
        for module, name, fn in reversed(patched):
            setattr(module, name, fn)


def _op_modules(ops):
    return [v for v in vars(ops).values() if type(v) is type(ops) and v.__name__.startswith("npllama.ops.")]


def _guarded(name, fn):
    if getattr(fn, "guarded", False):
        return fn

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if _student_depth[0] > 0:
            kind = "the forward pass" if name.endswith("_forward") else "the library's own backward"
            raise ForbiddenCall(f"your backward called npllama's {name} ({kind})")
        return fn(*args, **kwargs)
    guarded.guarded = True
    return guarded


def finite_difference_noise(exercise, backward) -> str | None:
    """A reason to refuse when the gradient on the exercise's probe case is right only to the
    accuracy of finite differences (relative error between NOISE_FLOOR and NOISE_CEILING)."""
    from .checks import call_backward

    case = exercise.case(exercise.probe_params)
    out, cache = case.run_forward()
    dout = case.dout_for(out)
    got = call_backward(backward, dout, cache, case)
    right = case.reference(dout, case.run_forward()[1])
    right = right if isinstance(right, tuple) else (right,)
    for name, g, r in zip(case.grad_names, got, right):
        if g.dtype.kind != "f" or not np.all(np.isfinite(g)) or float32_rounded(g):
            continue      # float32 arithmetic inside is a precision matter, not a measured gradient
        err = rel_error(g, r)
        if NOISE_FLOOR < err < NOISE_CEILING:
            return (f"{name} agrees with the exact gradient only to a relative {err:.1e}, the accuracy of "
                    f"finite differences (any formula is exact to ~1e-15 on this well-conditioned case, "
                    f"{case.describe()}): it looks measured from the forward pass, not derived")
    return None
