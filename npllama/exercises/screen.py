"""The rule that keeps grading honest: a backward must be *derived*, not borrowed or measured.

A submission is refused (never graded) when

1. it imports anything but NumPy, `math` and a few harmless standard modules, or anything from
   npllama except the helpers its exercise names (e.g. rope's `rotate_half`) -- read from the
   file's syntax tree before any of it runs (`screen_source`).  Reaching for code by other routes
   is refused the same way: `exec`, `eval`, `compile`, `__import__`, `open`, `getattr`, `globals`,
   dunder attributes such as `__globals__`, a frame's or generator's (`gi_frame`, `f_back`),
   attributes that read or write files (`np.load`, an array's `x.tofile`, `np.rec.fromfile`),
   NumPy's C-library doors (`np.ctypeslib`, ...), the attributes by which an allowed module hands
   out a refused one (`typing.sys`, `dataclasses.builtins`: `module_doors`) or reaches an attribute
   named in a string (`operator.attrgetter`, `typing.get_type_hints` of a string annotation), and
   changing an imported module (`np.square = ...`).  `exercise check` runs the submission in a
   process of its own and the checks in another (sandbox.py), so no route the rule misses can
   change a grade there; but `check_file`, a notebook's `check_function` and the training run of
   `exercise train` share a process with it, where a changed NumPy or a runner reached through
   `sys.modules` would change the result -- and a submission that reaches for these is not
   deriving its gradient either;
2. it calls one of npllama's forward passes, or the very backward it is asked to write, while its
   backward runs (`guard_library`, a run-time guard for when the import rule is switched off);
3. it measures its gradient by finite differences of a forward it wrote out itself.  The evidence
   takes two parts, and both must be there: the file's syntax tree shows a difference of two
   evaluations of one function of its own scaled by a step, (f(x + h) - f(x - h)) / (2 * h)
   (`finite_difference_lines`), and the gradient on a well-conditioned float64 probe case (the
   exercise's `probe_params`) is right only to the accuracy such differences reach: a relative
   error between 1e-12 and 1e-4 (`near_exact_gap`).  Any formula -- the closed form, the step-by-step
   chain rule, loops or einsum -- is exact to ~1e-15 there.

The numbers alone are never a reason to refuse: an honest formula with an epsilon added (a count
divided by n + 1e-10) or one mean taken in float32 lands in the same band.  Such a file is graded
like any other, and may pass or fail: the gradient check holds every entry to 1e-7 of its size, and
an error well under 1e-7 over the whole gradient can still exceed it at one entry (an epsilon in a
division passes; a sum or mean taken in float32, in rmsnorm or softmax, fails -- tests/test_exercise_audit.py).
The report carries a note naming the likely causes (`near_exact_note`).  (Richardson-extrapolated or complex-step derivatives can get
below 1e-12; they are the ways round this rule we know of, and they still need the forward written
out in the student's own file.)
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import functools
import importlib
import inspect

import numpy as np

from .diagnose import NEAR_EXACT_CAUSES, float32_rounded, rel_error

# Modules any submission may import: nothing here reads files, runs programs or loads code.
SAFE_MODULES = {"numpy", "math", "cmath", "functools", "itertools", "operator", "typing", "dataclasses",
                "__future__", "collections", "numbers", "fractions"}
FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "open", "getattr", "setattr", "delattr", "globals",
                   "locals", "vars", "breakpoint", "input", "exit", "quit", "help", "memoryview"}
# Attributes that read or write files, or unpickle, on whatever object they are reached from: an
# array's own x.tofile / x.dump as much as np.load, np.rec.fromfile or np._core._methods._dump.
FILE_ATTRIBUTES = {"load", "loads", "save", "savez", "savez_compressed", "fromfile", "tofile", "dump", "dumps",
                   "_dump", "_dumps", "memmap", "open_memmap", "loadtxt", "savetxt", "genfromtxt", "recfromtxt",
                   "fromregex", "DataSource", "NpzFile", "open", "_open", "_savez", "_load_from_filelike",
                   "_file_openers", "_FileOpeners", "zipfile_factory"}
# Functions of the allowed modules that reach an attribute named in a string (attrgetter("sys")) or
# evaluate a string as code (a string annotation, through get_type_hints or singledispatch's register)
BY_STRING_ATTRIBUTES = {"attrgetter", "methodcaller", "get_type_hints", "ForwardRef", "evaluate_forward_ref",
                        "singledispatch", "singledispatchmethod"}
# The attributes of generators, coroutines, frames and tracebacks that walk the call stack: up it
# are the checker's own globals and locals (and their __builtins__, by a string key)
STACK_ATTRIBUTES = {"gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
                    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next"}
# NumPy's doors to C libraries, compilers and its own internals
FORBIDDEN_NUMPY_ATTRIBUTES = {"ctypeslib", "f2py", "testing", "distutils", "lib"}
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
    self_test = _under_main_guard(tree)
    modules = _module_names(tree)
    reasons = []          # (line, reason): reported in the file's order (ast.walk goes breadth first)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)

        def refuse(text):
            reasons.append((line, f"line {line or '?'} {text}"))
        # the rule is read from the file, not from what runs: a self-test a student keeps under
        # `if __name__ == "__main__":` is screened as well, and told where it can live instead
        where = (" (a self-test under if __name__ == \"__main__\" is screened too: keep it in a file of its own)"
                 if node in self_test else "")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in SAFE_MODULES:
                    refuse(f"imports {alias.name}{_why_module(alias.name, allowed)}{where}")
                else:
                    for why in _inner_doors(alias.name):
                        refuse(f"imports {alias.name}: {why}")
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module.split(".")[0] not in SAFE_MODULES:
                for alias in node.names:
                    if (module, alias.name) not in allowed:
                        refuse(f"imports {alias.name} from {module}{_why_module(module, allowed, alias.name)}{where}")
            else:
                # from numpy import load / from numpy.lib import npyio / from numpy import * (which holds load)
                for alias in node.names:
                    names = _star_names(module) if alias.name == "*" else [alias.name]
                    for why in _inner_doors(module, names):
                        refuse(f"imports {alias.name} from {module}: {why}")
        elif isinstance(node, ast.Name) and (node.id in FORBIDDEN_CALLS or _dunder(node.id)):
            refuse(f"uses {node.id}, which can reach code outside the file")
        elif (isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del))
              and _root_name(node.value) in modules):
            root = _root_name(node.value)
            refuse(f"changes {modules[root]}{ast.unparse(node)[len(root):]}: the checker (in a notebook, the "
                   f"training run) uses it too")
        elif isinstance(node, ast.Attribute):
            in_numpy = _is_numpy(node.value)
            why = _door(node.attr, in_numpy)
            if _dunder(node.attr) or node.attr in STACK_ATTRIBUTES:
                refuse(f"uses the attribute {node.attr}, which can reach code outside the file")
            elif why:
                refuse(f"uses {_owner(in_numpy) or 'the attribute '}{node.attr}, which {why}")
    return _unique(reason for _, reason in sorted(reasons, key=lambda pair: pair[0]))


_DOOR = "is a module the rule refuses (sys, os, builtins, ...) reached through one it allows"
_BY_STRING = "reaches an attribute named in a string, or runs a string as code"


def _door(name: str, in_numpy: bool) -> str | None:
    """What reaching the attribute `name` opens (None: nothing): a refused module held by an allowed
    one, a string read as an attribute or code, a file, or (in NumPy) compiled code.  One rule for
    an attribute written x.name and a name imported from an allowed module."""
    if name in module_doors():
        return _DOOR
    if name in BY_STRING_ATTRIBUTES:
        return _BY_STRING
    if name in FILE_ATTRIBUTES:
        return "reads or writes files"
    if in_numpy and name in FORBIDDEN_NUMPY_ATTRIBUTES:
        return "loads code"
    return None


def _owner(in_numpy: bool) -> str:
    return "numpy's " if in_numpy else ""


# Modules an allowed one holds that give no way out of the file either (x.copy() must stay legal);
# what they hold in turn is looked at like the rest.
HARMLESS_MODULES = {"copy", "abc", "enum", "keyword", "textwrap", "re", "warnings", "weakref", "ast", "contextlib"}


@functools.lru_cache(maxsize=1)
def module_doors() -> frozenset:
    """The attribute names by which a module the rule allows -- or a module it holds, and so on --
    holds one that reaches files, processes or the checker (typing.sys, dataclasses.builtins,
    numpy._core.records.os), from the modules as this Python and NumPy have them."""
    doors, seen = set(), set()
    todo = [importlib.import_module(name) for name in SAFE_MODULES]
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for name, value in list(vars(module).items()):
            if isinstance(value, type(np)):
                if value.__name__.split(".")[0] in SAFE_MODULES | HARMLESS_MODULES:
                    todo.append(value)
                else:
                    doors.add(name)
    return frozenset(doors)


def _inner_doors(module: str, names=()) -> list:
    """Why importing `names` from `module` (an allowed one), or `module` itself, opens a door the
    attribute rule closes (numpy.lib, numpy.load, typing.sys)."""
    in_numpy = module.split(".")[0] == "numpy"
    return [f"{_owner(in_numpy)}{part} {why}" for part in module.split(".")[1:] + list(names)
            if (why := _door(part, in_numpy))]


def _star_names(module: str) -> list:
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return []
    return list(getattr(imported, "__all__", [n for n in vars(imported) if not n.startswith("_")]))


def _module_names(tree) -> dict:
    """The file's names for imported things -- and names assigned from them (m = np) -- with the
    module each stands for."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{'.' * node.level}{node.module or ''}.{alias.name}".lstrip(".")
    for _ in range(3):      # m = np; k = m: a few steps of aliasing
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _is_dotted_name(node.value) and _root_name(node.value) in names:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        names.setdefault(target.id, names[_root_name(node.value)])
    return names


def _is_dotted_name(node) -> bool:
    """np or np.linalg, not a value computed from them (np.zeros(3))."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _root_name(node):
    """The name an expression such as np.linalg.norm, m[0].x or f().y starts from (None if none)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


CHECKER = "npllama.exercises"


def _why_module(module: str, allowed, name: str = "") -> str:
    from .notebook import names_imported_from     # not at the top: notebook.py imports starter.py, which imports this

    if module == CHECKER and name in names_imported_from(CHECKER):
        # a notebook's own import, in the notebook saved as a script: not a way round the exercise
        # (the rest of the checker is: its definitions hold the reference backwards)
        return (f": {CHECKER} is the checker, not a helper of your backward (a notebook saved as a script? "
                f"hand in the code cell with your function, not the check cell)")
    if module.split(".")[0] == "npllama":
        names = ", ".join(f"{n} from {m}" for m, n in sorted(allowed))
        why = ("with the forward pass at hand a file can measure the gradient instead of deriving it"
               if name.endswith("_forward") else "npllama's own code would do the exercise for you")
        return f": {why}" + (f" (only {names} may be imported)" if names else "")
    return f": a submission may import numpy, math and {', '.join(sorted(SAFE_MODULES - {'numpy', 'math', '__future__'}))}"


def _under_main_guard(tree) -> set:
    """The nodes inside `if __name__ == "__main__":` blocks."""
    inside = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)):
            for statement in node.body:
                inside.update(ast.walk(statement))
    return inside


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and name not in ("__name__", "__doc__")


def _is_numpy(node) -> bool:
    return isinstance(node, ast.Name) and node.id in ("np", "numpy")


def _unique(items):
    return list(dict.fromkeys(items))


# ----- run time ----------------------------------------------------------------------------------

class ForbiddenCall(Exception):
    """The student's backward called a function the rule forbids."""


_student_depth = [0]   # > 0 while a student's backward runs (in the sandbox's child: one file's process)


def student_running() -> bool:
    """Whether a student's backward (wrapped by `student_call`) is running now: what is printed
    then is the student's, what is printed outside it (the checks, the forward) is npllama's."""
    return _student_depth[0] > 0


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
def guard_library(exercise, student=None):
    """While active, every npllama.ops forward and exercise's own backward raise ForbiddenCall
    when called from inside a student's backward (wrapped by `student_call`).

    student: the student's function, when its code was loaded before the guard went on (a notebook
    cell): the names its globals and closure hold those functions under (`from npllama.ops.softmax
    import softmax_backward as ref`) are guarded too -- a file loaded under the guard binds the
    guarded ones itself."""
    ops = importlib.import_module("npllama.ops")
    patched = []
    for module in {ops, importlib.import_module(exercise.module), *_op_modules(ops)}:
        for name, fn in list(vars(module).items()):
            if callable(fn) and (name.endswith("_forward") or name == exercise.backward_name):
                patched.append((module, name, fn))
                setattr(module, name, _guarded(name, fn))
    guarded = {id(fn): getattr(module, name) for module, name, fn in patched}
    rebound = _rebind(student, guarded) if student is not None else []
    try:
        yield
    finally:
        for restore in reversed(rebound):
            restore()
        for module, name, fn in reversed(patched):
            setattr(module, name, fn)


def _rebind(function, guarded: dict) -> list:
    """Put the guarded versions in place of the library functions `function`'s globals and closure
    hold (guarded: id of the original -> its guarded version); the undoing of each, returned."""
    restores = []
    namespace = getattr(function, "__globals__", None)
    for name, value in list((namespace or {}).items()):
        if id(value) in guarded:
            namespace[name] = guarded[id(value)]
            restores.append(functools.partial(namespace.__setitem__, name, value))
    for cell in getattr(function, "__closure__", None) or ():
        with contextlib.suppress(ValueError):          # an empty cell
            if id(cell.cell_contents) in guarded:
                restores.append(functools.partial(setattr, cell, "cell_contents", cell.cell_contents))
                cell.cell_contents = guarded[id(cell.cell_contents)]
    return restores


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
    del guarded.__wrapped__     # functools.wraps' door to the unguarded function
    # its parameters' names, which are no door: the checks read the upstream gradient's name there
    with contextlib.suppress(TypeError, ValueError):     # a callable without one keeps (*args, **kwargs)
        guarded.__signature__ = inspect.signature(fn)
    return guarded


@dataclasses.dataclass(frozen=True)
class NearExact:
    """A gradient right to more than finite differences could tell, less than a formula reaches."""

    grad: str              # "dx"
    rel_error: float
    case: str              # the probe case, described


def near_exact_gap(exercise, backward) -> NearExact | None:
    """The first gradient on the exercise's probe case whose relative error lies between
    NOISE_FLOOR and NOISE_CEILING (None when every gradient is exact, or clearly wrong)."""
    from .checks import call_backward

    case = exercise.case(exercise.probe_params)
    out, cache = case.run_forward()
    dout = case.dout_for(out)
    got = call_backward(backward, dout, cache, case)
    right = case.reference(dout, case.run_forward()[1])
    right = right if isinstance(right, tuple) else (right,)
    for name, g, r in zip(case.grad_names, got, right):
        if g.dtype.kind != "f" or not np.all(np.isfinite(g)) or float32_rounded(g):
            continue      # float32 arithmetic throughout is a precision matter the checks name
        err = rel_error(g, r)
        if NOISE_FLOOR < err < NOISE_CEILING:
            return NearExact(name, err, case.describe())
    return None


def measured_reason(gap: NearExact, lines: list[str]) -> str:
    """Why a file whose source takes finite differences and whose gradient is near-exact is refused."""
    return (f"{gap.grad} agrees with the exact gradient only to a relative {gap.rel_error:.1e}, the accuracy "
            f"of finite differences (any formula is exact to ~1e-15 on this well-conditioned case, "
            f"{gap.case}), and {'; '.join(lines[:2])}: the gradient is measured from the forward pass, "
            f"not derived")


def near_exact_note(gap: NearExact, passed: bool = False) -> str:
    """The soft note for an honest near-exact gradient (graded normally).  passed: every check
    passed, so the gap is inside their tolerance (said only then: under a FAIL it is not)."""
    where = ("inside the checks' tolerance, but a formula written out exactly reaches ~1e-15 there" if passed
             else "where a formula written out exactly reaches ~1e-15")
    return (f"{gap.grad} agrees with the exact gradient to a relative {gap.rel_error:.1e} on {gap.case}: "
            f"{where}. Likely causes: {NEAR_EXACT_CAUSES}")


def finite_difference_lines(source: str) -> list[str]:
    """Where the source scales a difference of two evaluations of one of its own functions
    ('line 12 takes (f(...) - f(...)) / step'), the shape of a finite difference; np.gradient too.

    The two evaluations may be written in place or named first (loss_plus = f(...); ...).  Calls
    of NumPy, math and builtins do not count: (np.sum(a) - np.sum(b)) / n is ordinary arithmetic."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    named_results: dict[str, set] = {}          # variable -> the functions it was assigned a call of
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            callees = _own_callees(node.value, {})
            for target in node.targets:
                if isinstance(target, ast.Name) and callees:
                    named_results.setdefault(target.id, set()).update(callees)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Mult)):
            for part in ast.walk(node.left):
                if isinstance(part, ast.BinOp) and isinstance(part.op, ast.Sub):
                    both = _own_callees(part.left, named_results) & _own_callees(part.right, named_results)
                    if both:
                        found.append(f"line {node.lineno} takes the difference of two evaluations of "
                                     f"{sorted(both)[0]} and scales it by a step")
                        break
        elif isinstance(node, ast.Attribute) and node.attr == "gradient" and _is_numpy(node.value):
            found.append(f"line {node.lineno} differentiates numerically with np.gradient")
    return _unique(found)


_BUILTIN_NAMES = frozenset(dir(builtins))


def _own_callees(node, named_results) -> set:
    """The names of the file's own functions called in `node` (or whose results it reads)."""
    callees = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Call) and isinstance(part.func, ast.Name) and part.func.id not in _BUILTIN_NAMES:
            callees.add(part.func.id)
        elif isinstance(part, ast.Name) and isinstance(part.ctx, ast.Load):
            callees |= named_results.get(part.id, set())
    return callees
