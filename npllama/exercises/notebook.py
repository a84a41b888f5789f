"""`npllama exercise notebook OP`: the exercise as a Jupyter notebook -- the derivation (Jupyter
renders its LaTeX), a cell importing the check, the starter cell to fill in, and the cell that checks it.

The notebook is nbformat 4 JSON written with the standard library; when nbformat is installed
(`pip install 'npllama[notebook]'`) it is validated against the official schema before writing.
"""
from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path

from .definitions import EXERCISES, NOT_THE_CHECK_CELL, Exercise, get_exercise
from .derivation import derivation_markdown, dollar_math, links_that_work_here
from .starter import starter_source, target_path
from .training import model_op_of


def _cell(kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook_json(op, folder=None) -> dict:
    """The notebook, written into `folder` (default: the current one): the folder its kernel runs
    in, from which its cells and commands reach a teacher's exercise file."""
    ex = get_exercise(op)
    exercise_file = ex.exercise_file_from(folder) or None
    starter = starter_source(ex, in_notebook=True)
    read = "Read the derivation below, then run" if ex.derivation else "Run"
    intro = (f"# Exercise: the backward pass of the {ex.title}\n\n"
             f"{read} the first code cell, which loads the check; fill in `{ex.backward_name}` in the next one, "
             f"run it, then run the check.")
    if not ex.builtin:
        if exercise_file and os.path.dirname(exercise_file):    # the teacher's file, where it was
            intro += (f"  The check reads the exercise from `{exercise_file}` (a path from this notebook's "
                      f"folder): keep it there.")
        elif exercise_file:    # the teacher's file travels with the notebook
            intro += f"  Keep `{exercise_file}` beside this notebook: the check reads the exercise from it."
    importing, exercise = _check_imports(ex, exercise_file)
    # imported before the student's cell runs: the check knows from its import on which cells ended
    # without an error (session.watch_cells), and the student's cell stays free of npllama.exercises,
    # which a handed-in file may not import
    setup = f"# Run this first: from here on the check can tell which of your cells ran without an error.\n{importing}"
    # the cell's value is the report, which Jupyter shows as the whole report (Report._repr_pretty_)
    check = (f"# NameError: {ex.backward_name} (or check_function) is not defined?  Run the cells above first.\n"
             f"check_function({exercise}, {ex.backward_name})")
    derivation = ([_cell("markdown", links_that_work_here(dollar_math(derivation_markdown(ex.derivation))))]
                  if ex.derivation else [])
    cells = [_cell("markdown", intro), *derivation, _cell("code", setup), _cell("code", starter), _cell("code", check),
             _cell("markdown", _what_next(ex, exercise_file))]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _check_imports(ex, exercise_file: str | None) -> tuple[str, str]:
    """The first code cell's imports, and the check cell's expression for the exercise: its name, or
    a teacher's loaded as Exercise.loader says."""
    if ex.builtin:
        return "from npllama.exercises import check_function", repr(ex.op)
    loading, exercise = ex.loader(exercise_file)
    return f"from npllama.exercises import check_function\n{loading}", exercise


@functools.cache
def names_imported_from(package: str) -> frozenset:
    """What the notebooks written here import from `package` (npllama.exercises), for a built-in
    exercise and for a teacher's loaded from its file: a file importing one of them is a notebook
    saved as a script, which screen.py tells to leave the check cell out."""
    teachers = Exercise()
    teachers.exercise_file = "exercise.py"
    names = set()
    for ex in (next(iter(EXERCISES.values())), teachers):
        for node in ast.walk(ast.parse(_check_imports(ex, ex.exercise_file)[0])):
            if isinstance(node, ast.ImportFrom) and node.module == package:
                names.update(alias.name for alias in node.names)
    return frozenset(names)


def _what_next(ex, exercise_file: str | None) -> str:
    """What to do once the check passes: the file to hand in and to run the commands on.  They take
    a .py file, not the notebook (a class's grading lists a notebook as not graded); exercise_file:
    a teacher's file as reached from the notebook's folder."""
    solution = f"{ex.backward_name}.py"
    commands = [ex.check_command(solution, exercise_file)]
    trainable = model_op_of(ex) is not None      # an op of the model's training step (a teacher's variant too)
    if trainable:
        commands.append(ex.check_command(solution, exercise_file).replace("npllama exercise check", "npllama exercise train", 1))
    trains = "; the second trains a real model with your function in place of the library's" if trainable else ""
    return (f"## When the check passes\n\n"
            f"Copy the code cell with your `{ex.backward_name}` ({NOT_THE_CHECK_CELL}) "
            f"into a file `{solution}`.  That file is what you hand in, and what "
            f"these commands take{trains}:\n\n"
            + "".join(f"    {command}\n" for command in commands))


def write_notebook(op, path=None, force: bool = False) -> Path:
    """Write <op>_backward.ipynb (or `path`); refuses to overwrite unless force."""
    ex = get_exercise(op)
    path = target_path(path, f"{ex.backward_name}.ipynb", ".ipynb", force, ex.exercise_file)
    notebook = notebook_json(ex, folder=path.parent)
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"{ex.op}-{i}"
    try:
        import nbformat
    except ImportError:
        pass
    else:
        nbformat.validate(nbformat.from_dict(notebook))
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
