"""The checks an exercise runs, written so they take *any* backward implementation.

Every exercise (npllama/exercises/definitions.py) describes its inputs as a small parameter space
(shapes, options, a seed).  The same check functions run in two places:

* `npllama exercise check`, which samples parameters with NumPy (edge cases first, then random
  ones) and needs nothing beyond NumPy -- no pytest, no hypothesis;
* the project's tests (tests/test_exercises.py), which draw the parameters with hypothesis and run
  the checks on npllama's own backward functions.

A check either returns quietly or raises `CheckFailed` carrying a `Finding` (diagnose.py).  The
gradient check is `npllama.gradcheck.check_op` -- float64 central differences held to their own
error bound plus a relative 1e-7, the one the op tests use -- followed, when it fails, by a
diagnosis against the numeric gradient.  What the numbers show is said here; naming the mistake
behind them is the runner's job (catalogue.py, mistakes.py).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from ..gradcheck import NondeterministicFunction, check_op, draw_dout, numerical_gradient
from ..gradcheck.checker import RANDOMNESS_FIX
from .diagnose import CaseUndecided, CheckFailed, Finding, diagnose, rel_error
from .entries import Cycle, Snapshot, entries, is_leaf_array, named_leaves

GRAD_TOL = 1e-7        # check_op's relative floor, as in tests/ops
GRAD_ATOL = 1e-9
CLOSED_FORM_TOL = 1e-9  # a closed form computed another way agrees to round-off
RETURN_VALUE = "the return value"   # a Finding's subject when what came back is wrong as a whole
NOT_A_LIST = "return the array itself (no .tolist(); np.asarray turns a list back into an array)"


class ForwardNotDeterministic(Exception):
    """The exercise's forward gave two answers at the same inputs, so the gradient check could not
    judge the function checked: the exercise's fault (a teacher's forward), not the student's."""


def forward_subject(forward_name: str) -> str:
    """A Finding's subject when the exercise's forward, not the function checked, is at fault."""
    return f"the exercise's forward {forward_name}"


# ----- parameter spaces: sampled by NumPy here, by hypothesis in the tests -------------------------

@dataclasses.dataclass(frozen=True)
class Ints:
    lo: int
    hi: int  # inclusive


@dataclasses.dataclass(frozen=True)
class Choice:
    options: tuple


@dataclasses.dataclass(frozen=True)
class Shape:
    """A tuple of min_len..max_len dimensions, each in lo..hi (a batch's leading shape)."""
    min_len: int
    max_len: int
    lo: int
    hi: int


SEED = Ints(0, 2**31 - 1)


def sample(space: dict, rng: np.random.Generator) -> dict:
    """One random point of the space, drawn with NumPy."""
    params = {}
    for name, dim in space.items():
        if isinstance(dim, Ints):
            params[name] = int(rng.integers(dim.lo, dim.hi + 1))
        elif isinstance(dim, Choice):
            params[name] = dim.options[int(rng.integers(len(dim.options)))]
        elif isinstance(dim, Shape):
            n = int(rng.integers(dim.min_len, dim.max_len + 1))
            params[name] = tuple(int(v) for v in rng.integers(dim.lo, dim.hi + 1, size=n))
        else:
            raise TypeError(f"unknown parameter kind for {name!r}: {dim!r}")
    return params


def strategy(space: dict):
    """The same space as a hypothesis strategy (hypothesis is imported only here, for the tests)."""
    from hypothesis import strategies as st

    parts = {}
    for name, dim in space.items():
        if isinstance(dim, Ints):
            parts[name] = st.integers(dim.lo, dim.hi)
        elif isinstance(dim, Choice):
            parts[name] = st.sampled_from(dim.options)
        elif isinstance(dim, Shape):
            parts[name] = st.lists(st.integers(dim.lo, dim.hi), min_size=dim.min_len,
                                   max_size=dim.max_len).map(tuple)
    return st.fixed_dictionaries(parts)


# ----- one concrete input ----------------------------------------------------------------------------

def gradient_name(name: str) -> str:
    """The gradient's name as the student's code holds it: dx for x, as the derivations write it;
    grads['<name>'] for a model parameter's dotted name (model.embed_tokens.weight), the entry of
    the dict model_backward returns (dmodel.embed_tokens.weight, or a trace's d:model...., reads
    as no name at all)."""
    return f"grads[{name!r}]" if "." in name else "d" + name


@dataclasses.dataclass
class Case:
    """Inputs for the reference forward, and which of them the backward differentiates."""

    forward: Callable
    inputs: list
    input_names: tuple
    wrt: tuple                          # indices into inputs
    kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0                       # seeds the upstream gradient dout
    zero_label: str = ""                # what the entries whose gradient is exactly 0 are ("ignored targets")
    reference: Callable | None = None   # the project's backward, to explain a wrong shape
    summary: str = ""                   # a short description for cases of many inputs (block, model)
    no_gradient: dict = dataclasses.field(default_factory=dict)   # an input that gets none -> why ("frozen")
    # the differentiable inputs in the order the backward reaches them from the output, step by
    # step: a tuple of names is one step that gives them all (neither computed from the other), a
    # name alone a step of its own; () when the exercise does not say (Exercise.backward_order)
    backward_order: tuple = ()

    def __post_init__(self):
        self.backward_order = backward_steps(self.backward_order)

    @property
    def grad_names(self) -> tuple:
        return tuple(gradient_name(self.input_names[i]) for i in self.wrt)

    @property
    def scalars(self) -> dict:
        """The inputs that are plain numbers (tau=0.5 of a forward(x, tau)), by name: a gradient off
        by exactly one of them says which factor went missing."""
        named = {name: value for i, (name, value) in enumerate(zip(self.input_names, self.inputs)) if i not in self.wrt}
        named.update(self.kwargs)
        return {name: float(value) for name, value in named.items()
                if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
                and np.isfinite(value)}

    def describe(self) -> str:
        if self.summary:
            return self.summary
        parts = []
        for name, value in zip(self.input_names, self.inputs):
            if isinstance(value, np.ndarray):
                kind = value.dtype.name if value.dtype.kind != "f" or value.dtype != np.float64 else ""
                parts.append(f"{name} {value.shape}" + (f" {kind}" if kind else ""))
            else:
                parts.append(f"{name}={value!r}")
        for name, value in self.kwargs.items():
            if isinstance(value, np.ndarray):
                parts.append(f"{name} {value.shape}")
            elif value is not None:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)

    def run_forward(self):
        return self.forward(*self.inputs, **self.kwargs)

    def dout_for(self, out) -> np.ndarray:
        """The upstream gradient check_op uses for this case (same seed, same draw)."""
        dout = draw_dout(np.shape(out), self.seed)
        return dout.astype(np.asarray(out).dtype, copy=False)


def backward_steps(order) -> tuple:
    """An exercise's backward_order as a tuple of steps, each a tuple of input names (a name alone
    is a step of one)."""
    return tuple((step,) if isinstance(step, str) else tuple(step) for step in order)


def backward_rank(case: Case) -> dict | None:
    """Each differentiable input's step in the backward (0: the first the backward reaches from the
    output), or None when the case's backward_order does not place every one of them."""
    rank = {name: i for i, step in enumerate(case.backward_order) for name in step}
    if not all(case.input_names[i] in rank for i in case.wrt):
        return None
    return rank


def in_backward_order(case: Case) -> list:
    """(k, gradient name) of each of the case's gradients (k: its place in what the backward
    returns), the one the backward reaches first first; the inputs' order when the case does not
    give the backward's, and within one step.  A slip early in a backward makes every gradient
    computed from it wrong: the report leads with the first, and a factor is named on it."""
    found = list(enumerate(case.grad_names))
    rank = backward_rank(case)
    if rank is not None:
        found.sort(key=lambda item: rank[case.input_names[case.wrt[item[0]]]])
    return found


# ----- calling a student's backward -----------------------------------------------------------------

def call_backward(backward, dout, cache, case: Case) -> tuple:
    """backward(dout, cache) as a tuple of arrays, one per differentiable input, each with its
    input's shape; anything else raises CheckFailed saying what came back."""
    names = case.grad_names
    result = backward(dout, cache)
    listed = ", ".join(names)
    if result is None:
        raise CheckFailed(Finding(
            "", "your function returned None" + (f"; it must return {len(names)} gradients: {listed}"
                                                       if len(names) > 1 else f"; it must return {listed}"),
            hint="did you forget the return statement?", case=case.describe(), subject=RETURN_VALUE))
    if isinstance(result, list):
        if not all(isinstance(g, np.ndarray) for g in result):     # e.g. dx.tolist()
            raise CheckFailed(Finding(
                "", "your function returned a list, not a NumPy array"
                + (f"; return {listed} as arrays" if len(names) > 1 else ""),
                hint=NOT_A_LIST + ("" if len(names) == 1 else f", in a tuple: return {listed}"), case=case.describe(),
                subject=RETURN_VALUE))
        result = tuple(result)
    if not isinstance(result, tuple):
        if len(names) > 1 and isinstance(result, np.ndarray):    # `return dx`, the other gradients forgotten
            raise CheckFailed(Finding(
                "", f"your function returned one array, of shape {result.shape}; it must return "
                    f"{len(names)} gradients: {listed}",
                hint=f"return them all, as a tuple in the order of the forward's inputs: return {listed}",
                case=case.describe(), subject=RETURN_VALUE))
        result = (result,)
    if len(result) != len(names):
        frozen = _gradient_of_no_gradient_input(result, case)
        raise CheckFailed(Finding(
            "", f"your function returned {len(result)} value(s); it must return {len(names)}: {listed}"
                + (f" -- one has the shape of {frozen}, but {frozen} {case.no_gradient[frozen]}" if frozen else ""),
            hint=(f"return {listed}" if frozen else
                  "return the gradients in the order of the forward's differentiable inputs"
                  + ("" if len(names) > 1 else " (one array, or a 1-tuple)")),
            case=case.describe(), subject=RETURN_VALUE))
    for position, (name, g, index) in enumerate(zip(names, result, case.wrt)):
        if isinstance(g, (list, tuple)):   # dx.tolist() in a tuple: gradcheck would refuse it as a crash
            raise CheckFailed(Finding(
                name, f"your function returned {name} as a Python {type(g).__name__}, not a NumPy array",
                hint=NOT_A_LIST, case=case.describe()))
        if g is None or np.shape(g) != np.shape(case.inputs[index]):
            right = _reference_grads(case, dout)
            expected = right[position] if right is not None else np.zeros(np.shape(case.inputs[index]))
            finding = diagnose(g, expected, grad=name, case=case.describe())
            if right is None and g is not None:
                finding.message = (f"{name} has shape {np.shape(g)}, expected {np.shape(expected)} "
                                   f"(the shape of {case.input_names[index]})")
            raise CheckFailed(finding)
    return tuple(np.asarray(g) for g in result)


def _gradient_of_no_gradient_input(result: tuple, case: Case) -> str | None:
    """The input that gets no gradient (case.no_gradient: LoRA's frozen weight) whose shape more of
    the returned arrays have than there are differentiable inputs of that shape: its gradient came
    back too.  None when no such input, or when every array of its shape is accounted for."""
    shapes = [np.shape(g) for g in result if isinstance(g, np.ndarray)]
    for name in case.no_gradient:
        shape = np.shape(case.inputs[case.input_names.index(name)])
        wanted = sum(np.shape(case.inputs[i]) == shape for i in case.wrt)
        if shapes.count(shape) > wanted:
            return name
    return None


def _reference_grads(case: Case, dout):
    if case.reference is None:
        return None
    _, cache = case.run_forward()
    grads = case.reference(dout, cache)
    return grads if isinstance(grads, tuple) else (grads,)


# ----- the generic checks every exercise runs ------------------------------------------------------

def check_returns(backward, case: Case, spread: tuple = ()) -> None:
    """One gradient per differentiable input, each of its input's shape; dout and cache untouched.
    spread: the names the backward receives the cache's fields by, when the exercise passes them
    as separate arguments (the model exercise: cache, config) -- what a changed entry is called."""
    out, cache = case.run_forward()
    dout = case.dout_for(out)
    dout_before, cache_before = np.array(dout, copy=True), _snapshot(cache)
    grads = call_backward(backward, dout, cache, case)
    if not np.array_equal(dout, dout_before, equal_nan=True):
        name = upstream_name(backward, case)
        raise CheckFailed(Finding("", f"your function changed {name} in place",
                                  hint=f"work on a copy (x = x * 2, not x *= 2) -- the caller still needs {name}",
                                  case=case.describe(), subject=name))
    changed = _changed_entry(cache_before, cache, "cache", spread)
    if changed is not None:
        entry = "the cache" if changed == "cache" else changed
        same = _same_array_as(cache, changed, spread)
        also = f" (the same array as {', '.join(same)})" if same else ""
        raise CheckFailed(Finding("", f"your function changed {entry} in place{also}",
                                  hint=f"the cache belongs to the forward pass: work on a copy ({changed}.copy()), "
                                       f"or write x = x * 2, not x *= 2",
                                  case=case.describe(), subject=entry))
    for name, g, index in zip(case.grad_names, grads, case.wrt):
        if not np.issubdtype(g.dtype, np.floating):
            raise CheckFailed(Finding(name, f"{name} has dtype {g.dtype}, expected a float array",
                                      case=case.describe()))
        # float32 from float64 inputs is right to ~1e-8, inside the gradient check's tolerance: only
        # the dtype shows it (and an invariant check failing by 1e-8 would blame the formula)
        input_dtype = np.asarray(case.inputs[index]).dtype
        if np.issubdtype(input_dtype, np.floating) and g.dtype != input_dtype:
            raise CheckFailed(Finding(
                name, f"{name} is {g.dtype} although {case.input_names[index]} is {input_dtype}: a gradient has "
                      f"its input's dtype",
                hint=f"an .astype({g.dtype}) or dtype=np.{g.dtype} in your function: create arrays with the "
                     f"input's dtype (e.g. dtype={upstream_name(backward, case)}.dtype), or leave the "
                     f"dtype to NumPy", case=case.describe()))


def check_gradient(backward, case: Case) -> None:
    """float64 central differences: npllama.gradcheck.check_op (its error bound plus 1e-7 relative)."""
    out, cache = case.run_forward()
    dout = case.dout_for(out)
    call_backward(backward, dout, cache, case)   # the right number and shapes first
    try:
        report = check_op(case.forward, _in_float64(backward), case.inputs, wrt=list(case.wrt),
                          names=list(case.input_names), extra_kwargs=case.kwargs, seed=case.seed,
                          tol=GRAD_TOL, atol=GRAD_ATOL)
    except NondeterministicFunction as error:
        forward = getattr(case.forward, "__name__", "the forward")
        raise ForwardNotDeterministic(
            f"{forward_subject(forward)} is not deterministic, so no gradient can be checked against "
            f"it (the function checked is not at fault): it gave {error.first!r} and then {error.second!r} at the "
            f"same inputs: finite differences need a deterministic forward ({RANDOMNESS_FIX})") from None
    except ValueError as error:
        if not _raised_by(error, check_op):
            raise            # the student's own code raised it: the runner reports the crash and its line
        # check_op refuses a backward that changes dout or an input in place, or returns None or the
        # wrong number of gradients: the student's mistake, in the checker's words
        raise CheckFailed(Finding("", f"the gradient check could not use your function: {error}",
                                  hint=f"return one new array per gradient and leave "
                                       f"{upstream_name(backward, case)} and the cache as they were "
                                       f"(x = x * 2, not x *= 2)", case=case.describe())) from None
    # an UNRESOLVED input is no mistake: finite differences could not judge it, right or wrong
    failing = [r for r in report.inputs if r.status == "FAIL"]
    undecided = [r for r in report.inputs if r.status == "UNRESOLVED"]
    if not failing:
        if undecided:
            raise CaseUndecided(_why_undecided(undecided), case.describe())
        return
    order = [name for _, name in in_backward_order(case)]
    failing.sort(key=lambda r: order.index(gradient_name(r.name)))
    first = failing[0]
    index = case.input_names.index(first.name)
    numeric = _numeric_gradient(case, dout, index)
    grads = call_backward(backward, dout, case.run_forward()[1], case)
    got = grads[case.wrt.index(index)]
    finding = diagnose(got, numeric, grad=gradient_name(first.name), case=case.describe(), zero_label=case.zero_label)
    rank = backward_rank(case)
    if rank is not None:
        finding.backward_steps = {gradient_name(name): step for name, step in rank.items()}
    finding.wrong_gradients = [gradient_name(r.name) for r in failing[1:]]
    finding.right_gradients = sorted((gradient_name(r.name) for r in report.inputs if r.status == "ok"),
                                     key=order.index)
    finding.undecided_gradients = [gradient_name(r.name) for r in undecided]
    raise CheckFailed(finding, case, grads)


def _in_float64(backward):
    """backward with its float32 (float16) gradients of float64 inputs given to check_op in float64:
    check_op refuses them (a TypeError before any probe), and the returns check already names
    their dtype; this check judges their values, as a wrong formula is worth naming too."""
    def upcast(g):
        if isinstance(g, (np.ndarray, np.floating)) and g.dtype.kind == "f" and g.dtype.itemsize < 8:
            return np.asarray(g, dtype=np.float64)
        return g

    @functools.wraps(backward)
    def in_float64(*args, **kwargs):
        result = backward(*args, **kwargs)
        if isinstance(result, (tuple, list)):
            upcast_all = [upcast(g) for g in result]
            # a named tuple (a student's own, or LayerWeights) is built from its fields, not an iterable
            return type(result)(*upcast_all) if hasattr(result, "_fields") else type(result)(upcast_all)
        if isinstance(result, Mapping):
            return {key: upcast(g) for key, g in result.items()}
        return upcast(result)
    return in_float64


def _why_undecided(undecided) -> str:
    """The gradient checker's reason for each input it could not decide: the note that says why."""
    reasons = []
    for r in undecided:
        note = next((n for n in r.notes if "UNRESOLVED" in n), r.notes[0] if r.notes else
                    "its finite differences could not tell a right gradient from a wrong one")
        reasons.append(f"{gradient_name(r.name)}: {note}")
    return "; ".join(reasons)


def check_dtype(backward, case: Case) -> None:
    """float32 in, float32 out: no silent upcast to float64."""
    out, cache = case.run_forward()
    grads = call_backward(backward, case.dout_for(out), cache, case)
    for name, g in zip(case.grad_names, grads):
        if g.dtype != np.float32:
            raise CheckFailed(Finding(
                name, f"{name} is {g.dtype} although every input was float32",
                hint="a float64 array or np.float64 scalar crept into the arithmetic (np.zeros without "
                     "dtype=, np.ones(...) defaults to float64): create arrays with the input's dtype",
                case=case.describe()))


def expect_close(got, expected, grad: str, case_description: str, *, what: str, tol=CLOSED_FORM_TOL,
                 zero_label="") -> None:
    """Raise CheckFailed (with a diagnosis) unless got matches the closed form `expected`."""
    got_arr = None if got is None else np.asarray(got)
    if got_arr is not None and got_arr.shape == np.shape(expected) and np.all(np.isfinite(got_arr)):
        err = rel_error(got_arr, expected)
        if err <= tol or np.max(np.abs(got_arr - expected), initial=0.0) <= 1e-12:
            return
    finding = diagnose(got, expected, grad=grad, case=case_description, zero_label=zero_label)
    finding.message = f"{what}: {finding.message}"
    raise CheckFailed(finding)


# ----- helpers ------------------------------------------------------------------------------------

def _numeric_gradient(case: Case, dout, index) -> np.ndarray:
    """The gradient a failure is diagnosed against (the exercises' inputs are all of order 1)."""
    x = case.inputs[index]
    return numerical_gradient(lambda: float(np.sum(case.run_forward()[0] * dout)), x, eps=1e-6)


def first_parameter(function, default: str) -> str:
    """The name the student gave the upstream gradient (dy, dp, dact, ...), through any wrappers;
    `default` when the first parameter names no single argument (*args, **kwargs) or there is none."""
    try:
        first = next(iter(inspect.signature(function).parameters.values()), None)
    except (TypeError, ValueError):
        return default
    by_position = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return first.name if first is not None and first.kind in by_position else default


def upstream_name(backward, case: Case) -> str:
    """What to call the upstream gradient in a finding: the student's own name for it, else the
    exercise's (the reference backward's first parameter: dy, dp, dlogits, ...)."""
    exercises = first_parameter(case.reference, "dout") if case.reference is not None else "dout"
    return first_parameter(backward, exercises)


def _raised_by(error: BaseException, function) -> bool:
    """The exception was raised in `function`'s own module (not in code it called back)."""
    frames = traceback.extract_tb(error.__traceback__)
    code = getattr(function, "__code__", None)
    return bool(frames) and code is not None and frames[-1].filename == code.co_filename


def _snapshot(obj, holding: frozenset = frozenset()):
    """A copy of the cache's arrays, in the layout `entries` reads (a Snapshot per container); a
    container met again inside itself (`holding`: the containers it is in) is a Cycle."""
    if is_leaf_array(obj):
        return obj.copy()
    found = entries(obj)
    if found is None:
        return obj
    if id(obj) in holding:
        return Cycle(type(obj).__name__)
    holding = holding | {id(obj)}
    return Snapshot([(name, _snapshot(value, holding)) for name, value in found])


def _entries(before, after, path: str, spread: tuple = ()):
    """The entries of a container in the cache -- a tuple, list, dict, dataclass or other object
    (entries.py) -- before and after, and their names as the student would write them: cache.x,
    cache[2], cache['k']; a spread cache's fields by their argument names.  None when it is not a
    container of the same layout before and after."""
    found_before, found_after = entries(before), entries(after)
    if found_before is None or found_after is None or \
            [name for name, _ in found_before] != [name for name, _ in found_after]:
        return None
    return [(b, a, spread[i] if spread else path + name)
            for i, ((name, b), (_, a)) in enumerate(zip(found_before, found_after))]


def _changed_entry(before, after, path: str, spread: tuple = ()) -> str | None:
    """The first entry of the cache that differs from its snapshot, as the student would write it
    (cache, cache.x, cache[2], cache['k']), or None when nothing changed."""
    pairs = _entries(before, after, path, spread)
    if pairs is None:
        return None if _same_snapshot(before, after) else path
    for b, a, where in pairs:
        found = _changed_entry(b, a, where)
        if found is not None:
            return found
    return None


def _same_array_as(cache, changed: str, spread: tuple = ()) -> list[str]:
    """The other entries of the cache whose memory the changed one shares (the forward may cache
    one array under two names: swiglu's gate_proj.x and up_proj.x): which of them the student
    wrote to cannot be told, so a finding names them all."""
    fields = _entries(cache, cache, "cache", spread) if spread else None
    if fields is None:
        arrays = list(named_leaves(cache, "cache"))
    else:      # the spread fields, by their argument names
        arrays = [leaf for _, item, where in fields for leaf in named_leaves(item, where, frozenset({id(cache)}))]
    target = next((a for where, a in arrays if where == changed), None)
    if target is None:
        return []
    return [where for where, a in arrays if where != changed and np.shares_memory(a, target)]


def _same_snapshot(a, b) -> bool:
    if is_leaf_array(a):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    found_a = entries(a)
    if found_a is None:
        return True
    found_b = entries(b)
    return found_b is not None and [n for n, _ in found_a] == [n for n, _ in found_b] and \
        all(_same_snapshot(x, y) for (_, x), (_, y) in zip(found_a, found_b))
