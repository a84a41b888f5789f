"""What a Jupyter kernel's (or an IPython prompt's) state says about the function check_function is
given there: a notebook's check cell grades whatever the kernel holds under the name, which need
not be the code the student last ran.

- A definition cell that failed before its `def` ran (a syntax error, an import error above it)
  leaves the kernel holding the function an earlier cell defined: checking that one would grade
  code the student has replaced (a right answer edited into a wrong one still said "Well done!").
- `from npllama.ops.softmax import softmax_backward` in a cell makes the library's own backward
  the one checked: it is not the student's.

Outside IPython (a script, pytest, the grading sandbox) there is no such state: nothing is said.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import linecache
import re
import sys

# where the ops a student writes live: the op modules, their kernels, the assembled block and model
LIBRARY_CODE = ("npllama.ops.", "npllama.kernels", "npllama.model")


def _shell():
    """The running IPython shell, or None (IPython is never imported here: a script has none)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _history() -> list[str]:
    """The cells run so far, In[n] at index n (the session's shell must be running)."""
    return _shell().history_manager.input_hist_parsed


def _cell_source(function) -> str:
    code = getattr(function, "__code__", None)
    return "".join(linecache.getlines(code.co_filename)).rstrip() if code is not None else ""


def _cells_defining(function) -> list[int]:
    """The numbers n of the cells In[n] whose code `function` is (a cell run twice is both); [] outside
    a session, or for a function no cell typed (imported from a file, exec'd text, npllama's own)."""
    if _shell() is None:
        return []
    source = _cell_source(function)
    return [n for n, cell in enumerate(_history()) if source and cell.rstrip() == source]


def students_code(function) -> bool:
    """Whether `function` is the student's code run in this session -- typed in a cell, or from a
    module of their own (%%writefile, then imported): it shares the kernel with the checker, and
    what it calls of npllama's is refused as check_file refuses it (guard_library).  npllama's own
    code (the sandbox's stand-in for a file graded from the kernel) calls it knowingly."""
    module = getattr(function, "__module__", None) or ""
    return _shell() is not None and function is not None and not module.startswith("npllama.")


def librarys_own(function, exercise) -> str | None:
    """Why `function` is not the student's: one of the model's own ops (the backward to write, or
    any other), given in a session to a built-in exercise (None otherwise).  A teacher's exercise
    may be a variant of an op whose reference is npllama's own, which its checks run knowingly."""
    module = getattr(function, "__module__", None) or ""
    if _shell() is None or not exercise.builtin or not module.startswith(LIBRARY_CODE):
        return None
    return (f"{function.__name__} here is npllama's own, from {module} (a cell imported it), not yours: "
            f"define {exercise.backward_name} in the exercise's cell, run that cell, then check again")


def stale_definition(function) -> str | None:
    """Why `function` is not the code last run under its name: a cell run after the one defining
    it defines it again, but the kernel still holds the older one (None when it is the latest, or
    when the name holds another function now: one kept under another name is checked on purpose)."""
    defined_in = _cells_defining(function)
    path = _name_path(function)
    if not defined_in or path is None or not _still_held(function, path):
        return None
    history, source = _history(), _cell_source(function)
    later = [n for n in range(defined_in[-1] + 1, len(history))
             if history[n].rstrip() != source and _defines(history[n], path)]
    if not later:
        return None
    name = function.__name__
    return (f"the {name} the kernel holds is the one cell In[{defined_in[-1]}] defined, but cell In[{later[-1]}], "
            f"run after it, defines {name} again and stopped before its def ran (see that cell's error); "
            f"checking the older one would grade code you have replaced: fix that cell, run it, then "
            f"run this check again")


def _name_path(function) -> list[str] | None:
    """The names leading to `function` from the cell's globals: ['rmsnorm_backward'], a method's
    ['Op', 'rmsnorm_backward'] (None for a lambda or a function made inside another: no cell names it)."""
    path = getattr(function, "__qualname__", "").split(".")
    return None if any(part.startswith("<") for part in path) else path


def _still_held(function, path) -> bool:
    """Whether the cell's globals still reach `function`'s code by its names: a def run since would
    have replaced it there (a decorator's wrapper is followed to the function it wraps)."""
    held = _shell().user_ns.get(path[0])
    for name in path[1:]:
        held = getattr(held, name, None)
    if callable(held):
        with contextlib.suppress(ValueError):       # a __wrapped__ chain that loops
            held = inspect.unwrap(held)
        held = getattr(held, "__func__", held)      # a bound method's function
    return getattr(held, "__code__", None) is function.__code__


def _defines(cell: str, path) -> bool:
    """Whether the cell's code binds the function at `path` by a def (at its top level or inside
    an if, a try, a with, a loop; a method inside its class) or a lambda assigned to the name --
    what, had the cell run, would have replaced the function.  A cell that does not parse (a
    syntax error: nothing in it ran) is read line by line."""
    try:
        statements = ast.parse(cell).body
    except SyntaxError:
        binds = re.compile(rf"^\s*((async\s+)?def\s+{re.escape(path[-1])}\s*\(|{re.escape(path[-1])}\s*=\s*lambda\b)",
                           re.MULTILINE)
        return bool(binds.search(cell))
    for depth, name in enumerate(path):
        last = depth == len(path) - 1
        found = [node for node in _statements(statements) if _binds(node, name, last)]
        if not found:
            return False
        statements = [statement for node in found if isinstance(node, ast.ClassDef) for statement in node.body]
    return True


def _statements(statements):
    """The statements run in this scope: those nested in if/try/with/for/while blocks too, not a
    def's or class's body (a scope of its own)."""
    for node in statements:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                yield from _statements(getattr(node, field, []))


def _binds(node, name: str, function: bool) -> bool:
    if not function:
        return isinstance(node, ast.ClassDef) and node.name == name
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name == name
    return (isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda)
            and any(isinstance(target, ast.Name) and target.id == name for target in node.targets))
