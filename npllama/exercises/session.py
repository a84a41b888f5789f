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


def typed_in_a_cell(function) -> bool:
    """Whether a cell of this session defined `function`: then it shares the kernel with the checker,
    and what it calls through npllama's modules is refused as check_file refuses it (guard_library)."""
    return bool(_cells_defining(function))


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
    it defines it again, but the kernel still holds the older one (None when it is the latest)."""
    defined_in = _cells_defining(function)
    if not defined_in:
        return None
    history, source = _history(), _cell_source(function)
    name = function.__name__
    defines = re.compile(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", re.MULTILINE)
    later = [n for n in range(defined_in[-1] + 1, len(history))
             if defines.search(history[n]) and history[n].rstrip() != source]
    if not later:
        return None
    return (f"the {name} the kernel holds is the one cell In[{defined_in[-1]}] defined, but cell In[{later[-1]}], "
            f"run after it, defines {name} again and stopped before its def ran (see that cell's error); "
            f"checking the older one would grade code you have replaced: fix that cell, run it, then "
            f"run this check again")
