"""One exercise per backward pass in npllama/ops: what the student writes, and how it is checked.

Each exercise names the function to write (e.g. `rmsnorm_backward(dy, cache)`), documents the cache
the project's forward hands it, describes its inputs as a parameter space (checks.py), and lists
its checks in order:

    returns     one gradient per differentiable input, of that input's shape and dtype; dout and cache
                untouched
    gradient    float64 central differences (npllama.gradcheck.check_op: within the differences'
                error bound plus 1e-7 relative)
    float32     float32 in, float32 out
    ...         the op's closed forms, invariants and edge cases (the ones tests/ops uses)

A check is a method `check_<name>(backward, params)` that raises CheckFailed; `sampled` checks run
on the edge cases and on random parameters, the others once.  Naming the mistake behind a failure
is not done here: catalogue.py recomputes the derivation with one step altered and mistakes.py
matches the student's numbers against it on probe cases.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import checks
from .checks import SEED, Case, CheckFailed, Choice, Ints, Shape, expect_close
from .diagnose import NONFINITE_HINT, Finding


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    description: str
    sampled: bool          # run on edge cases + random parameters (True) or once (False)
    method: str


def check(name: str, description: str, sampled: bool = True):
    """Mark an Exercise method as a check (runs in definition order, after the generic ones)."""
    def mark(fn):
        fn.check_info = (name, description, sampled)
        return fn
    return mark


class Exercise:
    op: str = ""                 # registry key, e.g. "rmsnorm"
    title: str = ""
    module: str = ""             # where the reference lives, e.g. "npllama.ops.rmsnorm"
    forward_name: str = ""
    backward_name: str = ""
    params: str = "dout, cache"  # the backward's parameters
    derivation: str = ""         # derivations/<file>.md
    derivation_steps: tuple = ()  # the backward's "**Step N" paragraphs to quote, when the exercise is
                                  # one part of its derivation (all of its backward when empty)
    article: str = ""            # the article's section, when it has one
    forward_text: str = ""       # the forward equations, for the starter file
    doc: str = ""                # the docstring the student's function gets
    shapes: str = ""
    allowed_imports: str = "numpy"
    helpers: tuple = ()          # (module, name) pairs a submission may import from npllama (screen.py)
    space: dict = {}
    edge_cases: list = []
    float32_params: dict = {}
    catalogue = None             # the mistakes to name (catalogue.py's shape); the built-ins' are in CATALOGUES
    # the differentiable inputs in the order the backward reaches them from the output: a name is a
    # step of its own, a tuple of names one step giving them all (neither computed from the other),
    # e.g. ("w_down", ("w_gate", "w_up"), "x"): a name after another only when its gradient is
    # computed from what the other's is.  With several gradients wrong the report leads with the
    # first wrong one in this order, the root of the others; () says nothing of the order, and
    # the report says it cannot tell the root.
    backward_order: tuple = ()
    exercise_file: str = ""      # a teacher's exercise: the file it was loaded from (teacher.py), which the
                                 # grading sandbox's process loads too

    @property
    def builtin(self) -> bool:
        return EXERCISES.get(self.op) is self

    def loader(self, exercise_file: str | None = None, verify: bool = True) -> tuple[str, str]:
        """(an import line, an expression) that give this exercise in Python: what a notebook's check
        cell and a re-run hint write.  exercise_file: a teacher's file as the reader reaches it (by
        default as reached from the current folder: exercise_file_from).  verify=False: load it
        without checking the teacher's reference first (a hint that rebuilds a case the reference
        or the forward failed on must not be refused for that again)."""
        if self.builtin:
            return "from npllama.exercises import get_exercise", f"get_exercise({self.op!r})"
        if not self.exercise_file:     # defined in the caller's own code (a script, a notebook)
            return f"from {type(self).__module__} import {type(self).__name__}", f"{type(self).__name__}()"
        unverified = "" if verify else ", verify=False"
        return ("from npllama.exercises import load_exercises",
                f"load_exercises({self._exercise_file_as(exercise_file)!r}{unverified})[{self.op!r}]")

    def exercise_file_from(self, folder=None) -> str:
        """The teacher's file as a command run in `folder` (default: the current folder) reaches it:
        its path from there (the path the teacher typed, when that is where they ran the command;
        a starter written into hw/ names ../softplus_exercise.py as ../../softplus_exercise.py),
        never the teacher's absolute path, which a handout would carry to every student.  '' for an
        exercise loaded from no file."""
        if not self.exercise_file:
            return ""
        try:
            return os.path.relpath(self.exercise_file, os.getcwd() if folder is None else folder)
        except ValueError:      # another drive (Windows): no relative path reaches it
            return self.exercise_file

    def from_notebook(self, notebook) -> str:
        """What to do with a notebook given where a .py file is graded: what its last cell says."""
        solution = Path(notebook).with_name(f"{self.backward_name}.py")
        return (f"{notebook} is a notebook, which is not graded: copy its code cell with your {self.backward_name} "
                f"({NOT_THE_CHECK_CELL}) into a file {solution}, then: {self.check_command(solution)}")

    def check_command(self, path, exercise_file: str | None = None) -> str:
        """The shell command that checks `path` against this exercise (quoted, to be pasted: a
        file's name may hold a space, or start with a dash); exercise_file as for loader."""
        path = shlex.quote(_not_an_option(str(path)))
        if self.builtin or not self.exercise_file:
            return f"npllama exercise check {self.op} {path}"
        exercise_file = shlex.quote(_not_an_option(self._exercise_file_as(exercise_file)))
        return (f"npllama exercise check --exercise-file {exercise_file} "
                f"{self.op} {path}")

    def _exercise_file_as(self, exercise_file: str | None) -> str:
        return self.exercise_file_from() if exercise_file is None else str(exercise_file)

    def pytest_test(self, path, exercise_file: str | None = None) -> str:
        """A pytest test that checks `path` against this exercise (npllama.exercises.assert_passes),
        to paste into a test file of one's own; exercise_file as for loader."""
        if self.builtin:
            importing, exercise = "from npllama.exercises import assert_passes", repr(self.op)
        else:
            importing, exercise = self.loader(exercise_file)
            same_module = importing.startswith("from npllama.exercises import ")
            importing += ", assert_passes" if same_module else "\nfrom npllama.exercises import assert_passes"
        return (f"{importing}\n\n"
                f"def test_{self.backward_name}():\n"
                f"    assert_passes({exercise}, {str(path)!r})")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a teacher's exercise (teacher.py) finds its forward and reference in its own file unless
        # it names another module (a variant of a library op)
        if "module" not in vars(cls) and not cls.__module__.startswith(__package__ + "."):
            cls.module = cls.__module__

    # ----- the functions behind the exercise --------------------------------------------------------
    @property
    def forward(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.forward_name)

    @property
    def reference(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.backward_name)

    @property
    def signature(self) -> str:
        return f"def {self.backward_name}({self.params}):"

    @property
    def upstream(self) -> str:
        """The name the exercise gives the upstream gradient: its backward's first parameter (dy,
        dout, dlogits, ...)."""
        return self.params.split(",")[0].strip()

    @property
    def probe_params(self) -> dict:
        """A well-conditioned case on which any correct formula is exact to round-off (screen.py)."""
        return self.edge_cases[0]

    def build(self, params: dict, dtype=np.float64) -> Case:
        raise NotImplementedError

    def adapt(self, backward):
        """The student's function as the checks call it (an assembled exercise flattens its result)."""
        return backward

    def students_cache(self, cache):
        """The forward's cache as the student's function receives it (the model exercise keeps the
        config beside it, and passes the two as separate arguments)."""
        return cache

    # ----- the checks -------------------------------------------------------------------------------
    def checks(self) -> list[Check]:
        found = []
        for klass in reversed(type(self).__mro__):
            for name, fn in vars(klass).items():
                info = getattr(fn, "check_info", None)
                if info and all(c.method != name for c in found):
                    # in the place its first definition gave it, as its last @check names it (a
                    # subclass redefining a check runs its own code: its name and description go with it)
                    info = getattr(getattr(type(self), name), "check_info", None) or info
                    found.append(Check(info[0], info[1], info[2], name))
        return found

    def run_check(self, item: Check, backward, params: dict | None) -> None:
        getattr(self, item.method)(backward, params)

    def case(self, params, dtype=np.float64) -> Case:
        case = self.build(params, dtype)
        case.reference = self.reference
        case.backward_order = self.backward_order_of(case)
        # dout must not be drawn from the stream the inputs came from: with the same seed and shape
        # dout would equal x, dy^T x would be symmetric, and a transposed dweight would pass.
        case.seed += DOUT_STREAM
        return case

    def backward_order_of(self, case: Case) -> tuple:
        """The steps of the backward on this case: the exercise's backward_order, unless the case
        was built with its own (a build that knows its own, as the model's, keeps it)."""
        return case.backward_order or checks.backward_steps(self.backward_order)

    @check("returns", "returns one gradient per differentiable input, with that input's shape and dtype")
    def check_returns(self, backward, params):
        checks.check_returns(backward, self.case(params))

    @check("gradient", "matches float64 central differences (within their error bound + 1e-7 relative)")
    def check_gradient(self, backward, params):
        checks.check_gradient(backward, self.case(params))

    @check("float32", "float32 inputs give float32 gradients (no silent upcast)", sampled=False)
    def check_float32(self, backward, params):
        checks.check_dtype(backward, self.case(self.float32_params or self.edge_cases[0], np.float32))

    # ----- helpers for the op-specific checks ------------------------------------------------------
    def gradients(self, backward, case: Case, dout=None):
        """(the student's grads, dout, out, a fresh cache) -- fresh, in case the student's code
        changed the one it was given.  What an exercise's own checks compare with their closed forms."""
        out, cache = case.run_forward()
        dout = case.dout_for(out) if dout is None else dout
        grads = checks.call_backward(backward, dout, cache, case)
        return grads, dout, out, case.run_forward()[1]


    def _grads_judged_by_values(self, backward, case: Case, dout=None):
        """gradients() with NumPy's floating-point warnings silenced: an edge-case check judges the values
        that come back (finite and right), not how they were reached -- an exp that overflows to inf
        on the way to an exact, finite gradient is no mistake."""
        with np.errstate(all="ignore"):
            return self.gradients(backward, case, dout)


# a notebook's solution cell is graded once copied into a .py file; its check cell imports
# npllama.exercises, which the import rule refuses (notebook.py's last cell, and every message
# telling a student or a teacher what to do with a notebook, say so)
NOT_THE_CHECK_CELL = "not the check cell: a file importing npllama.exercises is refused"
DOUT_STREAM = 2**31   # added to a case's seed: above every input seed (SEED is 0 .. 2**31 - 1)


def _rng(params):
    return np.random.default_rng(params.get("seed", 0))


def _resolvable_eps(eps, D, degenerate_below):
    """eps, raised to 1e-2 for rows too short to carry information (RMSNorm D = 1, LayerNorm
    D <= 2): there every row normalises to a fixed pattern, dx is of order eps, and central
    differences cannot resolve it -- a correct backward would fail by round-off alone.  (eps = 0
    stays 0: then dx is exactly 0 and so are the differences.)"""
    return max(eps, 1e-2) if D < degenerate_below and eps > 0 else eps


def _well_conditioned_rows(x, rng, centred):
    """Rows whose spread (std, or rms when not centred) is between 0.5 and 2.

    Near a row of zero spread a norm bends on the scale of sqrt(eps), and central differences
    with a 1e-6 step stop being accurate there (derivations/rmsnorm.md, exercises): such rows
    would fail a correct backward."""
    mean = x.mean(axis=-1, keepdims=True) if centred else np.zeros_like(x[..., :1])
    spread = np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True))
    target = rng.uniform(0.5, 2.0, size=spread.shape)
    return (mean + (x - mean) * np.where(spread > 0, target / np.maximum(spread, 1e-300), 1.0)).astype(x.dtype)


def _fail(grad, message, hint, case):
    raise CheckFailed(Finding(grad, message, hint=hint, case=case.describe()))


def _require_finite(grad, g, case):
    """Fail on NaN or Inf before an invariant is measured: NaN is never above a tolerance, so a
    check written `if error > tol: fail` would pass it."""
    bad = ~np.isfinite(g)
    if bad.any():
        _fail(grad, f"{int(bad.sum())} of {g.size} entries of {grad} are NaN or Inf", NONFINITE_HINT, case)


# =====================================================================================================
class Embedding(Exercise):
    op, title, module = "embedding", "token embedding", "npllama.ops.embedding"
    forward_name, backward_name, params = "embedding_forward", "embedding_backward", "dout, cache"
    derivation, article = "derivations/embedding.md", "§3.1 (the model's first layer)"
    forward_text = "out = weight[tokens]          # one row of the table per token"
    doc = """Gradient of out = weight[tokens] with respect to weight.

    dout:  (..., D) the gradient of the loss with respect to out
    cache: CACHE
    Returns dweight, (V, D) of that dtype.
    """
    shapes = "tokens (...) int   weight (V, D)   out, dout (..., D)   dweight (V, D)"
    space = dict(lead_shape=Shape(0, 3, 1, 4), V=Ints(1, 5), D=Ints(1, 4), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 5), V=3, D=2, seed=1, same_id=True),  # every token the same id
                  dict(lead_shape=(), V=4, D=3, seed=2),                    # a single token
                  dict(lead_shape=(3, 4), V=1, D=2, seed=3)]                # a one-row table

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        V, D = params["V"], params["D"]
        tokens = rng.integers(0, V, size=params["lead_shape"])
        if params.get("same_id"):
            tokens[...] = V - 1
        weight = rng.standard_normal((V, D)).astype(dtype)
        return Case(self.forward, [tokens, weight], ("tokens", "weight"), (1,), seed=params["seed"] % 1000,
                    zero_label="rows of the table that no token reads")

    @check("one-hot", "equals onehot(tokens)^T @ dout, the closed form")
    def check_onehot(self, backward, params):
        case = self.case(params)
        (dweight,), dout, _, _ = self.gradients(backward, case)
        tokens, weight = case.inputs
        onehot = np.eye(weight.shape[0])[tokens.reshape(-1)]           # (N, V)
        expected = onehot.T @ dout.reshape(-1, weight.shape[1])         # (V, D)
        expect_close(dweight, expected, "dweight", case.describe(), what="compared with onehot^T @ dout",
                     zero_label=case.zero_label)

    @check("repeats", "repeated tokens add up, unused rows stay 0 (worked by hand)", sampled=False)
    def check_repeats(self, backward, params):
        weight = np.arange(12, dtype=np.float64).reshape(4, 3)
        tokens = np.array([[2, 2], [0, 2]])
        case = Case(self.forward, [tokens, weight], ("tokens", "weight"), (1,))
        dout = np.array([[[1.0, 2, 3], [10, 20, 30]], [[-1, -1, -1], [100, 200, 300]]])
        (dweight,), *_ = self.gradients(backward, case, dout)
        expected = np.array([[-1.0, -1, -1], [0, 0, 0], [111, 222, 333], [0, 0, 0]])
        expect_close(dweight, expected, "dweight", "tokens [[2, 2], [0, 2]], V = 4, D = 3",
                     what="token 2 occurs three times, token 0 once", tol=1e-12,
                     zero_label="rows 1 and 3, which no token reads")


# =====================================================================================================
class Linear(Exercise):
    op, title, module = "linear", "linear layer (no bias)", "npllama.ops.linear"
    forward_name, backward_name, params = "linear_forward", "linear_backward", "dy, cache"
    backward_order = (("x", "weight"),)     # dx = dy W, dweight = dy^T x: both straight from dy
    derivation, article = "derivations/linear.md", "§4.1.1 (the query, key and value projections)"
    forward_text = "y = x @ weight.T              # weight laid out (out_features, in_features) as in PyTorch"
    doc = """Gradients of y = x @ weight.T.

    dy:    (..., out) the gradient of the loss with respect to y
    cache: CACHE
    Returns (dx, dweight): dx (..., in), dweight (out, in) -- summed over every leading axis of x.
    """
    shapes = "x (..., in)   weight (out, in)   y, dy (..., out)   dx (..., in)   dweight (out, in)"
    space = dict(lead_shape=Shape(0, 2, 1, 3), n_in=Ints(1, 5), n_out=Ints(1, 5), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 3), n_in=3, n_out=3, seed=1),   # square: a transpose fits the shape
                  dict(lead_shape=(), n_in=4, n_out=2, seed=2),       # a single vector
                  dict(lead_shape=(2,), n_in=3, n_out=1, seed=3)]

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        x = rng.standard_normal(params["lead_shape"] + (params["n_in"],)).astype(dtype)
        weight = rng.standard_normal((params["n_out"], params["n_in"])).astype(dtype)
        return Case(self.forward, [x, weight], ("x", "weight"), (0, 1), seed=params["seed"] % 1000)

    @check("index sums", "equals the index sums dx[..i] = sum_o dy[..o] W[o,i], dW[o,i] = sum_n dy[n,o] x[n,i]")
    def check_index_sums(self, backward, params):
        case = self.case(params)
        (dx, dweight), dy, _, _ = self.gradients(backward, case)
        x, weight = case.inputs
        rows_dy, rows_x = dy.reshape(-1, weight.shape[0]), x.reshape(-1, weight.shape[1])
        expect_close(dx, np.einsum("...o,oi->...i", dy, weight), "dx", case.describe(),
                     what="compared with the index sum")
        expect_close(dweight, np.einsum("no,ni->oi", rows_dy, rows_x), "dweight", case.describe(),
                     what="compared with the index sum")


# =====================================================================================================
class RMSNorm(Exercise):
    op, title, module = "rmsnorm", "RMSNorm", "npllama.ops.rmsnorm"
    forward_name, backward_name, params = "rmsnorm_forward", "rmsnorm_backward", "dy, cache"
    backward_order = (("x", "weight"),)
    derivation, article = "derivations/rmsnorm.md", "§4.2 (LayerNorm without centring)"
    forward_text = """rstd = 1 / sqrt(mean(x**2, axis=-1, keepdims=True) + eps)    # (..., 1)
y    = x * rstd * weight                                        # (..., D)"""
    doc = """Gradients of y = x * rstd * weight, rstd = 1 / sqrt(mean(x**2, -1) + eps).

    dy:    (..., D) the gradient of the loss with respect to y
    cache: CACHE
    Returns (dx, dweight): dx (..., D), dweight (D,) summed over every row.
    """
    shapes = "x, y, dy, dx (..., D)   rstd (..., 1)   weight, dweight (D,)"
    space = dict(lead_shape=Shape(0, 2, 1, 3), D=Ints(1, 6), eps=Choice((1e-6, 1e-5, 0.1)), seed=SEED)
    probe_params = dict(lead_shape=(2, 3), D=5, eps=0.1, seed=4)   # eps large: an eps slip is not noise
    edge_cases = [dict(lead_shape=(2, 3), D=4, eps=1e-5, seed=1),
                  dict(lead_shape=(3,), D=1, eps=1e-5, seed=2),      # one feature
                  dict(lead_shape=(), D=5, eps=0.1, seed=3)]         # one row, a large eps

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        x = rng.standard_normal(params["lead_shape"] + (params["D"],)).astype(dtype)
        x = _well_conditioned_rows(x, rng, centred=False)
        weight = (1.0 + 0.5 * rng.standard_normal(params["D"])).astype(dtype)
        eps = _resolvable_eps(params["eps"], params["D"], degenerate_below=2)
        return Case(self.forward, [x, weight, eps], ("x", "weight", "eps"), (0, 1),
                    seed=params["seed"] % 1000)

    @check("orthogonal", "with eps = 0 each row of dx is orthogonal to x (y does not change when x is scaled)")
    def check_orthogonal(self, backward, params):
        case = self.case({**params, "eps": 0.0})
        (dx, _), *_ = self.gradients(backward, case)
        _require_finite("dx", dx, case)
        x = case.inputs[0]
        dots = np.sum(dx * x, axis=-1)
        scale = np.linalg.norm(dx) * np.linalg.norm(x) + 1e-300
        if np.max(np.abs(dots)) > 1e-10 * max(scale, 1.0):
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(dots))), dots.shape))
            _fail("dx", f"sum(dx * x) over a row should be 0 but is {dots[worst]:.3g} for row {worst}",
                  "scaling x leaves y unchanged (eps = 0), so dx has no component along x: the projection "
                  "term -xhat * mean(dxhat * xhat) is missing or wrong", case)


# =====================================================================================================
class LayerNorm(Exercise):
    op, title, module = "layernorm", "LayerNorm", "npllama.ops.layernorm"
    forward_name, backward_name, params = "layernorm_forward", "layernorm_backward", "dy, cache"
    backward_order = (("x", "weight", "bias"),)
    derivation, article = "derivations/layernorm.md", "§4.2"
    forward_text = """mean = mean(x, -1, keepdims=True)                    # (..., 1)
var  = mean((x - mean)**2, -1, keepdims=True)        # (..., 1), biased (divide by D)
rstd = 1 / sqrt(var + eps)
xhat = (x - mean) * rstd
y    = xhat * weight + bias"""
    doc = """Gradients of y = (x - mean) * rstd * weight + bias (LayerNorm over the last axis).

    dy:    (..., D) the gradient of the loss with respect to y
    cache: CACHE
    Returns (dx, dweight, dbias): dx (..., D); dweight, dbias (D,) summed over every row.
    """
    shapes = "x, y, dy, dx (..., D)   mean, rstd (..., 1)   weight, bias, dweight, dbias (D,)"
    space = dict(lead_shape=Shape(0, 2, 1, 3), D=Ints(1, 6), eps=Choice((1e-6, 1e-5, 0.1)), seed=SEED)
    probe_params = dict(lead_shape=(2, 3), D=5, eps=0.1, seed=4)   # eps large: an eps slip is not noise
    edge_cases = [dict(lead_shape=(2, 3), D=4, eps=1e-5, seed=1),
                  dict(lead_shape=(3,), D=1, eps=1e-5, seed=2),
                  dict(lead_shape=(), D=6, eps=0.1, seed=3)]

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        D = params["D"]
        x = (rng.standard_normal(params["lead_shape"] + (D,)) + rng.standard_normal()).astype(dtype)
        x = _well_conditioned_rows(x, rng, centred=True)
        weight = (1.0 + 0.5 * rng.standard_normal(D)).astype(dtype)
        bias = rng.standard_normal(D).astype(dtype)
        eps = _resolvable_eps(params["eps"], D, degenerate_below=3)
        return Case(self.forward, [x, weight, bias, eps], ("x", "weight", "bias", "eps"),
                    (0, 1, 2), seed=params["seed"] % 1000)

    @check("rows sum to 0", "each row of dx sums to 0 (adding a constant to a row changes nothing)")
    def check_rows_sum_to_zero(self, backward, params):
        case = self.case(params)
        (dx, _, _), *_ = self.gradients(backward, case)
        _require_finite("dx", dx, case)
        sums = dx.sum(-1)
        if np.max(np.abs(sums), initial=0.0) > 1e-10 * max(1.0, float(np.abs(dx).max(initial=0.0))):
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(sums))), sums.shape))
            _fail("dx", f"a row of dx sums to {sums[worst]:.3g} (row {worst}), not 0",
                  "LayerNorm's output ignores a constant added to a row, so dx has no component along "
                  "(1, ..., 1): the term from the mean, -mean(dxhat), is missing or wrong", case)

    @check("chain rule", "agrees with the chain rule taken one forward line at a time")
    def check_stepwise(self, backward, params):
        from ..ops.layernorm import layernorm_backward_stepwise

        case = self.case(params)
        grads, dy, _, cache = self.gradients(backward, case)
        expected = layernorm_backward_stepwise(dy, cache)
        for name, got, want in zip(("dx", "dweight", "dbias"), grads, expected):
            expect_close(got, want, name, case.describe(), what="compared with the step-by-step chain rule",
                         tol=1e-9)

    @check("one feature", "D = 1: y is the bias, so dx = 0, dweight = 0, dbias = sum(dy) (by hand)",
           sampled=False)
    def check_single_feature(self, backward, params):
        x = np.array([[3.0], [-2.0]])
        case = Case(self.forward, [x, np.array([2.0]), np.array([0.5]), 1e-5], ("x", "weight", "bias", "eps"),
                    (0, 1, 2))
        (dx, dweight, dbias), *_ = self.gradients(backward, case, np.array([[1.0], [2.0]]))
        for name, got, want in (("dx", dx, np.zeros((2, 1))), ("dweight", dweight, np.zeros(1)),
                                ("dbias", dbias, np.array([3.0]))):
            expect_close(got, want, name, "x [[3], [-2]], weight [2], bias [0.5], dy [[1], [2]]",
                         what="one feature per row", tol=1e-12)


# =====================================================================================================
LLAMA3_SMALL = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1024}


class RoPE(Exercise):
    op, title, module = "rope", "rotary position embedding", "npllama.ops.rope"
    forward_name, backward_name, params = "rope_forward", "rope_backward", "dy, cache"
    derivation, article = "derivations/rope.md", "§2.1.3 (positional encoding)"
    forward_text = """rotate_half(x) = concat(-x2, x1)   where x1, x2 are the two halves of the last axis
y = x * cos + rotate_half(x) * sin     # Hugging Face's convention: pairs (x[i], x[i + head_dim/2])"""
    doc = """Gradient of y = x * cos + rotate_half(x) * sin with respect to x.

    dy:    (..., T, head_dim) the gradient of the loss with respect to y
    cache: CACHE
    Returns dx, with the shape of dy.
    npllama.ops.rope.rotate_half(a) is yours to use.
    """
    shapes = "x, y, dy, dx (..., T, head_dim), in the model (B, H, T, head_dim)   cos, sin (T, head_dim)"
    allowed_imports = "numpy, and rotate_half from npllama.ops.rope"
    helpers = (("npllama.ops.rope", "rotate_half"),)
    space = dict(B=Ints(1, 2), H=Ints(1, 3), T=Ints(1, 4), head_dim=Choice((2, 4, 6, 8, 16)), seed=SEED)
    edge_cases = [dict(B=1, H=2, T=3, head_dim=4, seed=1),
                  dict(B=2, H=1, T=1, head_dim=2, seed=2),     # one position, one pair
                  dict(B=1, H=3, T=4, head_dim=16, seed=3)]

    def build(self, params, dtype=np.float64, general_tables=False):
        from ..ops.rope import rope_cos_sin

        rng = _rng(params)
        T, hd = params["T"], params["head_dim"]
        x = rng.standard_normal((params["B"], params["H"], T, hd)).astype(dtype)
        if general_tables or params.get("general_tables"):   # not rotations at all: the backward formula must hold for any tables
            cos, sin = rng.standard_normal((T, hd)).astype(dtype), rng.standard_normal((T, hd)).astype(dtype)
        else:
            cos, sin = rope_cos_sin(rng.integers(0, 2000, size=T), hd, 10000.0, LLAMA3_SMALL, dtype=dtype)
        return Case(self.forward, [x, cos, sin], ("x", "cos", "sin"), (0,), seed=params["seed"] % 1000)

    @check("inverse", "backward applied to y gives back x (a rotation's transpose is its inverse)")
    def check_inverse(self, backward, params):
        case = self.case(params)
        y, cache = case.run_forward()
        (x_back,) = checks.call_backward(backward, y, cache, case)
        expect_close(x_back, case.inputs[0], "dx", case.describe(),
                     what="backward(y) should rotate y back to x", tol=1e-10)

    @check("general tables", "the gradient holds for arbitrary cos/sin tables, not only rotations",
           sampled=False)
    def check_general_tables(self, backward, params):
        case = self.build(dict(B=2, H=2, T=3, head_dim=6, seed=3), general_tables=True)
        case.reference = self.reference
        checks.check_gradient(backward, case)


# =====================================================================================================
class Softmax(Exercise):
    op, title, module = "softmax", "softmax", "npllama.ops.softmax"
    forward_name, backward_name, params = "softmax_forward", "softmax_backward", "dp, cache"
    derivation, article = "derivations/softmax.md", "§4.1.2 (scores -> attention probabilities)"
    forward_text = """p = exp(x - max(x)) / sum(exp(x - max(x)))       # along the last axis
entries of x equal to -inf (masked) get p = 0; a row that is all -inf gives all zeros"""
    doc = """Gradient of p = softmax(x, axis=-1) with respect to x.

    dp:    (..., N) the gradient of the loss with respect to p
    cache: p itself, (..., N), as returned by softmax_forward (masked entries and fully masked
           rows hold exactly 0)
    Returns dx, (..., N).  A fully masked row must give dx = 0 there, without NaN.
    """
    shapes = "x, p, dp, dx (..., N)"
    space = dict(lead_shape=Shape(0, 2, 1, 3), N=Ints(1, 6), mask_fraction=Choice((0.0, 0.3, 0.8)), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 3), N=4, mask_fraction=0.0, seed=1),
                  dict(lead_shape=(4,), N=1, mask_fraction=0.0, seed=2),    # one entry per row
                  dict(lead_shape=(3, 2), N=5, mask_fraction=0.5, seed=3)]  # masked entries

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        x = (2.0 * rng.standard_normal(params["lead_shape"] + (params["N"],))).astype(dtype)
        x[rng.random(x.shape) < params["mask_fraction"]] = -np.inf
        return Case(self.forward, [x], ("x",), (0,), seed=params["seed"] % 1000,
                    zero_label="masked entries (x = -inf) or rows of one entry")

    @check("jacobian", "equals, row by row, the Jacobian product J dp with J = diag(p) - p p^T")
    def check_jacobian(self, backward, params):
        # several rows: a sum over the whole array instead of each row is right on one row only
        case = self.case({**params, "lead_shape": (3,)})
        (dx,), dp, p, _ = self.gradients(backward, case)
        expected = np.stack([(np.diag(row) - np.outer(row, row)) @ d for row, d in zip(p, dp)])
        expect_close(dx, expected, "dx", case.describe(), what="compared with J dp in each row")

    @check("masked rows", "a fully masked row gives dx = 0, a partly masked row 0 at its masked entry and J dp "
                          "at the others, with no NaN", sampled=False)
    def check_fully_masked(self, backward, params):
        x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
        dp = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
        case = Case(self.forward, [x], ("x",), (0,))
        (dx,), *_ = self._grads_judged_by_values(backward, case, dp)
        if not np.all(np.isfinite(dx)):
            _fail("dx", "dx holds NaN or Inf on a fully masked row",
                  "p is all zeros there: an expression like 0/0 or inf - inf gives NaN", case)
        p = np.array([[0.0, 0.0, 0.0], [1 / (1 + np.e), 0.0, np.e / (1 + np.e)]])
        expected = p * (dp - np.sum(dp * p, -1, keepdims=True))
        expect_close(dx, expected, "dx", "x [[-inf, -inf, -inf], [0, -inf, 1]], dp [[1, 2, 3], [0.5, -1, 2]]",
                     what="a fully masked row and a masked entry", tol=1e-12,
                     zero_label="the fully masked row 0 and the masked entry (1, 1)")


# =====================================================================================================
class Attention(Exercise):
    op, title, module = "attention", "scaled dot-product attention (GQA)", "npllama.ops.attention"
    forward_name, backward_name, params = "attention_forward", "attention_backward", "dout, cache"
    backward_order = ("v", ("q", "k"))     # out = attn_probs v first; q and k both from d_attn_scores
    derivation, article = "derivations/attention.md", "§4.1"
    forward_text = """attn_scores = q @ k^T * scale              # scale = 1 / sqrt(head_dim)
attn_probs  = softmax(attn_scores + mask)  # mask: 0 where allowed, -inf where not (causal, padding)
out         = attn_probs @ v
query head h reads kv head h // n_rep (grouped-query attention, n_rep = H // KVH)"""
    doc = """Gradients of causal / padded grouped-query attention with respect to q, k and v.

    dout:  (B, H, T, head_dim) the gradient of the loss with respect to out
    cache: CACHE
    Query head h reads kv head h // n_rep (heads g*n_rep .. g*n_rep + n_rep - 1 share kv head g).
    Returns (dq, dk, dv) with the shapes of q, k, v: dk and dv sum over the n_rep query heads
    that share each kv head.
    You may use npllama.ops.softmax.softmax_backward, or write the softmax backward inline.
    """
    shapes = ("q, dq, out, dout (B, H, T, head_dim)   k, v, dk, dv (B, KVH, S, head_dim)   "
              "attn_probs (B, H, T, S)")
    allowed_imports = "numpy, and softmax_backward from npllama.ops.softmax"
    helpers = (("npllama.ops.softmax", "softmax_backward"),)
    space = dict(B=Ints(1, 2), KVH=Ints(1, 2), n_rep=Choice((1, 2, 4)), T=Ints(1, 4),
                 head_dim=Choice((2, 4, 6)), causal=Choice((True, False)), q_offset=Ints(0, 3),
                 S=Ints(1, 5), padding=Choice((False, True)), seed=SEED)
    edge_cases = [dict(B=1, KVH=1, n_rep=2, T=3, head_dim=4, causal=True, q_offset=0, S=3, padding=False, seed=1),
                  dict(B=2, KVH=2, n_rep=2, T=1, head_dim=2, causal=True, q_offset=3, S=4, padding=False,
                       seed=2),  # one decode step against a KV cache
                  dict(B=2, KVH=1, n_rep=4, T=3, head_dim=6, causal=False, q_offset=0, S=4, padding=True,
                       seed=3)]  # bidirectional, padded keys, multi-query

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        B, KVH, n_rep, T, hd = params["B"], params["KVH"], params["n_rep"], params["T"], params["head_dim"]
        causal = params["causal"]
        q_offset = params["q_offset"] if causal else 0
        S = q_offset + T if causal else params["S"]
        mask = rng.random((B, S)) < 0.7 if params["padding"] else None
        q = rng.standard_normal((B, KVH * n_rep, T, hd)).astype(dtype)
        k = rng.standard_normal((B, KVH, S, hd)).astype(dtype)
        v = rng.standard_normal((B, KVH, S, hd)).astype(dtype)
        return Case(self.forward, [q, k, v], ("q", "k", "v"), (0, 1, 2),
                    kwargs=dict(causal=causal, key_padding_mask=mask, q_offset=q_offset),
                    seed=params["seed"] % 1000,
                    zero_label="keys that are padding, or queries with no key to attend")

    @check("grouped = repeated", "grouped-query attention equals multi-head attention on repeated k, v "
                                 "(dk, dv summed per group)")
    def check_gqa(self, backward, params):
        case = self.case(params)
        q, k, v = case.inputs
        n_rep = q.shape[1] // k.shape[1]
        if n_rep == 1:
            return
        (dq, dk, dv), dout, _, _ = self.gradients(backward, case)
        k_rep, v_rep = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)  # repeat-interleave
        rep = Case(self.forward, [q, k_rep, v_rep], case.input_names, case.wrt, kwargs=case.kwargs,
                   seed=case.seed)
        rep.reference = self.reference
        (dq_rep, dk_rep, dv_rep), *_ = self.gradients(backward, rep, dout)
        B, KVH, S, hd = k.shape
        expect_close(dq, dq_rep, "dq", case.describe(), what="compared with plain multi-head attention on "
                     "repeated k, v (query head h reads kv head h // n_rep)")
        for name, got, per_head in (("dk", dk, dk_rep), ("dv", dv, dv_rep)):
            expect_close(got, per_head.reshape(B, KVH, n_rep, S, hd).sum(2), name, case.describe(),
                         what="compared with the per-head gradients of repeated k, v summed over each group")

    @check("masked rows", "queries with nothing to attend and padding keys get zero, finite gradients",
           sampled=False)
    def check_fully_masked(self, backward, params):
        rng = np.random.default_rng(7)
        q = rng.standard_normal((2, 2, 3, 4))
        k, v = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((2, 1, 3, 4))
        # batch 0: key 0 is padding, so the causal query 0 sees nothing; batch 1: every key is padding
        mask = np.array([[False, True, True], [False, False, False]])
        case = Case(self.forward, [q, k, v], ("q", "k", "v"), (0, 1, 2),
                    kwargs=dict(causal=True, key_padding_mask=mask, q_offset=0))
        case.reference = self.reference
        (dq, dk, dv), dout, _, cache = self.gradients(backward, case, rng.standard_normal((2, 2, 3, 4)))
        expected = self.reference(dout, case.run_forward()[1])
        label = "query 0 of batch 0 and all of batch 1 attend nothing; key 0 of both is padding"
        for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), expected):
            expect_close(got, want, name, "q (2, 2, 3, 4), k, v (2, 1, 3, 4), causal, key_padding_mask "
                         "[[F, T, T], [F, F, F]]", what="fully masked rows and padding keys", tol=1e-9,
                         zero_label=label)


# =====================================================================================================
class SwiGLUAct(Exercise):
    op, title, module = "swiglu_act", "SwiGLU's gated activation", "npllama.ops.swiglu"
    forward_name, backward_name, params = "swiglu_act_forward", "swiglu_act_backward", "dact, cache"
    backward_order = (("gate", "up"),)
    derivation, article = "derivations/swiglu.md", "§5.2.3 (the feed-forward network)"
    derivation_steps = ("Step 2", "Step 3")     # act = silu(gate) * up and silu's derivative, not the projections
    forward_text = """sigmoid(z) = 1 / (1 + exp(-z));   silu(z) = z * sigmoid(z)
act = silu(gate) * up                     # elementwise"""
    doc = """Gradients of act = silu(gate) * up with respect to gate and up (elementwise).

    dact:  the gradient of the loss with respect to act, the shape of gate
    cache: CACHE
    Returns (dgate, dup).
    """
    shapes = "gate, up, act, dact, dgate, dup (..., F)"
    space = dict(shape=Shape(1, 3, 1, 3), seed=SEED)
    edge_cases = [dict(shape=(2, 3), seed=1), dict(shape=(1,), seed=2), dict(shape=(3, 1, 2), seed=3)]

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        gate = (3 * rng.standard_normal(params["shape"])).astype(dtype)
        up = rng.standard_normal(params["shape"]).astype(dtype)
        return Case(self.forward, [gate, up], ("gate", "up"), (0, 1), seed=params["seed"] % 1000)

    @check("silu minimum", "at silu's minimum z* = -1.2784645..., d act / d gate = 0 (to 1e-14)", sampled=False)
    def check_silu_minimum(self, backward, params):
        z = np.array([-1.2784645427610738])
        case = Case(self.forward, [z, np.ones(1)], ("gate", "up"), (0, 1))
        (dgate, _), *_ = self.gradients(backward, case, np.ones(1))
        if not abs(float(dgate[0])) < 1e-14:
            _fail("dgate", f"dgate is {float(dgate[0]):.6g} at silu's minimum, where the slope is 0",
                  "silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))", case)

    @check("large inputs", "very large |gate| gives finite gradients with the right limits (1 and 0)",
           sampled=False)
    def check_large_inputs(self, backward, params):
        z = np.array([-1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0])
        case = Case(self.forward, [z, np.ones_like(z)], ("gate", "up"), (0, 1))
        (dgate, dup), *_ = self._grads_judged_by_values(backward, case, np.ones_like(z))
        if not np.all(np.isfinite(dgate)):
            _fail("dgate", f"dgate is {dgate} for gate = {z}: NaN or Inf where the slope is 0 or 1",
                  "exp(-gate) overflows to inf for large negative gate, and gate * inf or inf / inf gives "
                  "NaN: use the cached gate_sigmoid instead of recomputing it", case)
        expect_close(dgate, np.array([0, 0, 0, 1, 1, 1.0]), "dgate", "gate = [-1000, -100, -30, 30, 100, 1000]",
                     what="silu'(z) tends to 0 for z -> -inf and to 1 for z -> +inf", tol=1e-6)


# =====================================================================================================
class SwiGLU(Exercise):
    op, title, module = "swiglu", "SwiGLU feed-forward network", "npllama.ops.swiglu"
    forward_name, backward_name, params = "swiglu_forward", "swiglu_backward", "dout, cache"
    # out = act W_down^T first; x last, collecting the gate and up branches
    backward_order = ("w_down", ("w_gate", "w_up"), "x")
    derivation, article = "derivations/swiglu.md", "§5.2.3 (the feed-forward network)"
    forward_text = """gate = x @ w_gate.T;   up = x @ w_up.T           # (..., F)
act  = silu(gate) * up
out  = act @ w_down.T                              # (..., D)"""
    doc = """Gradients of out = (silu(x W_gate^T) * (x W_up^T)) W_down^T.

    dout:  (..., D) the gradient of the loss with respect to out
    cache: CACHE
    Returns (dx, dw_gate, dw_up, dw_down) with the shapes of x, w_gate (F, D), w_up (F, D), w_down (D, F).
    You may use npllama.ops.linear.linear_backward and npllama.ops.swiglu.swiglu_act_backward:
    the lesson is how the pieces chain.
    """
    shapes = "x, dx, out, dout (..., D)   w_gate, w_up (F, D)   w_down (D, F)   gate, up, act (..., F)"
    allowed_imports = "numpy, linear_backward (npllama.ops.linear), swiglu_act_backward (npllama.ops.swiglu)"
    helpers = (("npllama.ops.linear", "linear_backward"), ("npllama.ops.swiglu", "swiglu_act_backward"))
    space = dict(lead_shape=Shape(1, 3, 1, 3), D=Ints(1, 5), F=Ints(1, 7), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 3), D=4, F=6, seed=1), dict(lead_shape=(1,), D=1, F=1, seed=2),
                  dict(lead_shape=(2,), D=3, F=3, seed=3)]

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        D, F = params["D"], params["F"]
        x = rng.standard_normal(params["lead_shape"] + (D,)).astype(dtype)
        w_gate, w_up = rng.standard_normal((F, D)).astype(dtype), rng.standard_normal((F, D)).astype(dtype)
        w_down = rng.standard_normal((D, F)).astype(dtype)
        return Case(self.forward, [x, w_gate, w_up, w_down], ("x", "w_gate", "w_up", "w_down"), (0, 1, 2, 3),
                    seed=params["seed"] % 1000)

# =====================================================================================================
class CrossEntropy(Exercise):
    op, title, module = "cross_entropy", "cross-entropy loss", "npllama.ops.cross_entropy"
    forward_name, backward_name, params = "cross_entropy_forward", "cross_entropy_backward", "dloss, cache"
    derivation, article = "derivations/cross_entropy.md", "§4.3.1"
    forward_text = """loss = mean over counted positions of  logsumexp(logits) - logits[target]
a position counts when its target != ignore_index (-100); no counted position: loss = 0"""
    doc = """Gradient of the mean cross-entropy loss with respect to the logits.

    dloss: the gradient of the final objective with respect to loss (a 0-d array or a float; 1 when
           loss is the objective itself)
    cache: CACHE
    Returns dlogits, with logits_shape and probs' dtype.  Ignored positions get 0; if nothing is
    counted, everything is 0 (not NaN).
    """
    shapes = "dloss () or a float   logits, dlogits (..., V)   targets (...)   probs (N, V), N = prod(...)"
    space = dict(lead_shape=Shape(0, 2, 1, 4), V=Ints(1, 6), ignore_fraction=Choice((0.0, 0.5, 1.0)), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 3), V=5, ignore_fraction=0.5, seed=1),
                  dict(lead_shape=(4,), V=3, ignore_fraction=1.0, seed=2),   # one counted target only
                  dict(lead_shape=(), V=4, ignore_fraction=0.0, seed=3)]     # a single position

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        lead, V = params["lead_shape"], params["V"]
        logits = (2.0 * rng.standard_normal(lead + (V,))).astype(dtype)
        targets = rng.integers(0, V, size=lead)
        targets[rng.random(lead) < params["ignore_fraction"]] = -100
        targets.reshape(-1)[rng.integers(targets.size)] = rng.integers(0, V)   # at least one counted
        return Case(self.forward, [logits, targets, -100], ("logits", "targets", "ignore_index"), (0,),
                    seed=params["seed"] % 1000, zero_label="positions whose target is ignore_index (-100)")

    @check("softmax - onehot", "equals dloss * (softmax(logits) - onehot(target)) / n_counted on counted rows")
    def check_closed_form(self, backward, params):
        case = self.case(params)
        logits, targets, _ = case.inputs
        dloss = float(np.random.default_rng(params["seed"] + 1).uniform(-3, 3))
        (dlogits,), *_ = self.gradients(backward, case, np.array(dloss))
        counted = targets != -100
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        onehot = np.eye(logits.shape[-1])[np.where(counted, targets, 0)]
        # np.where, not * counted: an ignored row's logits may be NaN or inf, and NaN * 0 is NaN
        expected = np.where(counted[..., None], dloss * (probs - onehot) / counted.sum(), 0)
        expect_close(dlogits, expected, "dlogits", case.describe() + f", dloss={dloss:.3f}",
                     what="compared with dloss * (softmax - onehot) / n_counted", zero_label=case.zero_label)

    @check("all ignored", "every target ignored: dlogits = 0, with no NaN", sampled=False)
    def check_all_ignored(self, backward, params):
        logits = np.random.default_rng(0).standard_normal((2, 3, 5))
        targets = np.full((2, 3), -100)
        case = Case(self.forward, [logits, targets, -100], ("logits", "targets", "ignore_index"), (0,))
        (dlogits,), *_ = self._grads_judged_by_values(backward, case, np.array(1.0))
        if not np.all(np.isfinite(dlogits)):
            _fail("dlogits", "dlogits holds NaN or Inf when every target is ignored",
                  "n_counted is 0 here: 0 / 0 is NaN, so do not divide by it; the gradient is simply 0", case)
        expect_close(dlogits, np.zeros_like(logits), "dlogits", case.describe(),
                     what="nothing is counted, so nothing gets gradient", tol=0.0,
                     zero_label="every position (all targets are -100)")


# =====================================================================================================
class LoRA(Exercise):
    op, title, module = "lora", "LoRA adapter", "npllama.ops.lora"
    forward_name, backward_name, params = "lora_forward", "lora_backward", "dy, cache"
    backward_order = ("lora_B", "lora_A", "x")    # x collects W's path and the adapter's
    derivation, article = "derivations/lora.md", "§9.2 (parameter-efficient fine-tuning)"
    forward_text = """x_drop      = x * dropout_mask   (or x itself when dropout_mask is None)
lora_hidden = x_drop @ lora_A.T                       # (..., r)
y           = x @ weight.T + scaling * (lora_hidden @ lora_B.T)"""
    doc = """Gradients of y = x W^T + scaling * ((x * dropout_mask) A^T) B^T; the base weight W is frozen.

    dy:    (..., out) the gradient of the loss with respect to y
    cache: (x_drop, weight, lora_A, lora_B, scaling, dropout_mask, lora_hidden) from lora_forward:
           x_drop        (..., in)   x * dropout_mask, the adapter's input (x itself without dropout)
           weight        (out, in)   frozen: it gets no gradient
           lora_A        (r, in)     lora_B  (out, r)
           scaling       a scalar of x's dtype (lora_alpha / r)
           dropout_mask  None, or (..., in) holding 0 or 1 / (1 - p)
           lora_hidden   (..., r)    x_drop @ lora_A.T
    Returns (dx, dlora_A, dlora_B) with the shapes of x, lora_A, lora_B.
    """
    shapes = "x, dx (..., in)   weight (out, in)   lora_A (r, in)   lora_B (out, r)   y, dy (..., out)"
    space = dict(lead_shape=Shape(1, 2, 1, 3), n_in=Ints(1, 5), n_out=Ints(1, 5), r=Ints(1, 3),
                 scaling=Choice((2.0, -1.5, 0.25)), dropout_p=Choice((0.0, 0.5)), seed=SEED)
    edge_cases = [dict(lead_shape=(2, 3), n_in=4, n_out=5, r=2, scaling=2.0, dropout_p=0.0, seed=1),
                  dict(lead_shape=(3,), n_in=3, n_out=2, r=1, scaling=-1.5, dropout_p=0.5, seed=2),
                  dict(lead_shape=(1,), n_in=1, n_out=1, r=3, scaling=0.25, dropout_p=0.0, seed=3)]

    def build(self, params, dtype=np.float64, **overrides):
        rng = _rng(params)
        n_in, n_out, r = params["n_in"], params["n_out"], params["r"]
        x = rng.standard_normal(params["lead_shape"] + (n_in,)).astype(dtype)
        weight = rng.standard_normal((n_out, n_in)).astype(dtype)
        lora_A = rng.standard_normal((r, n_in)).astype(dtype)
        lora_B = rng.standard_normal((n_out, r)).astype(dtype)   # nonzero: PEFT's zero init hides bugs
        p = params["dropout_p"]
        mask = ((rng.random(x.shape) >= p) / (1 - p)).astype(dtype) if p > 0 else None
        inputs = dict(x=x, weight=weight, lora_A=lora_A, lora_B=lora_B, scaling=params["scaling"],
                      dropout_mask=mask)
        inputs.update(overrides)
        return Case(self.forward, list(inputs.values()), tuple(inputs), (0, 2, 3), seed=params["seed"] % 1000,
                    zero_label="entries of x that dropout removed from the adapter path",
                    no_gradient={"weight": "is frozen and gets no gradient (LoRA trains only lora_A and lora_B)"})

    @check("merged weight", "without dropout, dx equals dy (W + scaling B A), the merged linear layer")
    def check_merged(self, backward, params):
        case = self.case({**params, "dropout_p": 0.0})
        (dx, dA, dB), dy, _, _ = self.gradients(backward, case)
        x, weight, lora_A, lora_B, s, _ = case.inputs
        rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        expect_close(dx, dy @ (weight + s * lora_B @ lora_A), "dx", case.describe(),
                     what="compared with the merged weight W + scaling B A")
        expect_close(dA, s * lora_B.T @ rows_dy.T @ rows_x, "dlora_A", case.describe(),
                     what="compared with scaling B^T dy^T x")
        expect_close(dB, s * rows_dy.T @ rows_x @ lora_A.T, "dlora_B", case.describe(),
                     what="compared with scaling dy^T (x A^T)")

    @check("all dropped", "dropout mask of zeros: the adapter sees nothing, dlora_A = 0, dx = dy W", sampled=False)
    def check_all_dropped(self, backward, params):
        base = dict(lead_shape=(2, 3), n_in=4, n_out=5, r=2, scaling=2.0, dropout_p=0.0, seed=4)
        case = self.build(base, dropout_mask=np.zeros((2, 3, 4)))
        case.reference = self.reference
        (dx, dA, _), dy, _, _ = self.gradients(backward, case)
        expect_close(dx, dy @ case.inputs[1], "dx", case.describe(), what="only the frozen path is left",
                     tol=1e-12)
        expect_close(dA, np.zeros_like(dA), "dlora_A", case.describe(), what="the adapter saw only zeros",
                     tol=0.0, zero_label="every entry: the adapter's input was all zeros")


# =====================================================================================================
class Classifier(Exercise):
    op, title, module = "classifier", "sequence-classification head", "npllama.ops.classifier"
    forward_name, backward_name, params = "classifier_forward", "classifier_backward", "dlogits, cache"
    backward_order = (("hidden", "score_weight"),)
    derivation, article = "derivations/classifier.md", "§6.1 (text classification)"
    forward_text = """pooled = hidden[b, last_index[b]]      # (B, D): each row's last real token
logits = pooled @ score_weight.T          # (B, num_labels)"""
    doc = """Gradients of logits = hidden[arange(B), last_index] @ score_weight.T.

    dlogits: (B, num_labels) the gradient of the loss with respect to logits
    cache:   (linear_cache, last_index, hidden_shape) as returned by classifier_forward:
             linear_cache = (pooled, score_weight)   pooled (B, D), score_weight (num_labels, D)
             last_index   (B,) int, the pooled position of each row
             hidden_shape (B, T, D)
    Returns (dhidden, dscore_weight): dhidden (B, T, D), zero except at the pooled positions;
    dscore_weight (num_labels, D).
    """
    shapes = ("hidden, dhidden (B, T, D)   score_weight, dscore_weight (num_labels, D)   last_index (B,)   "
              "logits, dlogits (B, num_labels)")
    space = dict(B=Ints(1, 3), T=Ints(1, 4), D=Ints(1, 4), num_labels=Ints(1, 4), seed=SEED)
    edge_cases = [dict(B=3, T=4, D=3, num_labels=2, seed=1), dict(B=1, T=1, D=1, num_labels=1, seed=2),
                  dict(B=2, T=3, D=2, num_labels=4, seed=3)]

    def build(self, params, dtype=np.float64):
        rng = _rng(params)
        B, T = params["B"], params["T"]
        hidden = rng.standard_normal((B, T, params["D"])).astype(dtype)
        score_weight = rng.standard_normal((params["num_labels"], params["D"])).astype(dtype)
        last_index = rng.integers(0, T, size=B)
        return Case(self.forward, [hidden, score_weight, last_index], ("hidden", "score_weight", "last_index"),
                    (0, 1), seed=params["seed"] % 1000,
                    zero_label="positions other than each row's pooled (last real) token")

    @check("pooled only", "dhidden is dlogits @ score_weight at each row's pooled position and 0 elsewhere")
    def check_pooled_only(self, backward, params):
        case = self.case(params)
        (dhidden, _), dlogits, _, _ = self.gradients(backward, case)
        hidden, score_weight, last_index = case.inputs
        expected = np.zeros_like(hidden)
        expected[np.arange(hidden.shape[0]), last_index] = dlogits @ score_weight
        expect_close(dhidden, expected, "dhidden", case.describe(), what="compared with the scatter of "
                     "dlogits @ score_weight", zero_label=case.zero_label)


from .assembled import Block, Model  # noqa: E402  (they build on the classes above)

EXERCISES: dict[str, Exercise] = {ex.op: ex for ex in (
    Embedding(), Linear(), RMSNorm(), LayerNorm(), RoPE(), Softmax(), Attention(), SwiGLUAct(), SwiGLU(),
    CrossEntropy(), LoRA(), Classifier(), Block(), Model())}


def get_exercise(op) -> Exercise:
    """The built-in exercise named `op`; an Exercise (a teacher's own: teacher.load_exercises) is
    returned as it is."""
    if isinstance(op, Exercise):
        return op
    if isinstance(op, type) and issubclass(op, Exercise):
        raise TypeError(f"op must be an exercise's name or an Exercise instance: pass {op.__name__}(), not the class")
    if not isinstance(op, str):
        raise TypeError(f"op must be an exercise's name (a str) or an Exercise, got {type(op).__name__}")
    if op not in EXERCISES:
        raise ValueError(f"unknown exercise {op!r}{did_you_mean(op, EXERCISES)}; choose one of: {', '.join(EXERCISES)}")
    return EXERCISES[op]


def path_argument(value, name: str, what: str) -> Path:
    """`value` as a Path, or a TypeError naming the argument (pathlib's own names none)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be {what} (a str or os.PathLike), got {type(value).__name__}")
    return Path(value)


def _not_an_option(path: str) -> str:
    """`path` as a command line reads it as a file: '-rms.py' (which pathlib makes of './-rms.py')
    would be taken for an option, so it gets its './' back."""
    return os.path.join(".", path) if path.startswith("-") else path


def did_you_mean(name, choices) -> str:
    """" (did you mean 'rmsnorm'?)" for a near miss, else "": a misspelling, the name in other
    letter case (RMSNorm), or a path to a file of that name (derivations/rmsnorm.md)."""
    import difflib

    by_lower = {str(choice).lower(): choice for choice in choices}
    for typed in dict.fromkeys((str(name).lower(), Path(str(name)).stem.lower())):
        close = difflib.get_close_matches(typed, list(by_lower), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {by_lower[close[0]]!r}?)"
    return ""

