"""`npllama exercise notebook OP`: the exercise as a Jupyter notebook -- the derivation (Jupyter
renders its LaTeX), the starter cell to fill in, and the cell that checks it.

The notebook is nbformat 4 JSON written with the standard library; when nbformat is installed
(`pip install 'npllama[notebook]'`) it is validated against the official schema before writing.
"""
from __future__ import annotations

import json
from pathlib import Path

from .definitions import get_exercise
from .derivation import derivation_markdown, dollar_math
from .starter import starter_source, target_path


def _cell(kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook_json(op) -> dict:
    ex = get_exercise(op)
    starter = starter_source(ex, in_notebook=True)
    read = "Read the derivation below, fill" if ex.derivation else "Fill"
    intro = (f"# Exercise: the backward pass of the {ex.title}\n\n"
             f"{read} in `{ex.backward_name}` in the next code cell, run it, then run the check.")
    if ex.builtin:
        intro += (f"  `npllama exercise train {ex.op} FILE` trains a real model with your function in place of "
                  f"the library's.")
        importing, exercise = "from npllama.exercises import check_function", repr(ex.op)
    else:           # the check cell loads the exercise as Exercise.loader says
        if ex.exercise_file:    # the teacher's file travels with the notebook
            intro += f"  Keep `{Path(ex.exercise_file).name}` beside this notebook: the check reads the exercise from it."
        loading, exercise = ex.loader()
        importing = f"from npllama.exercises import check_function\n{loading}"
    # the cell's value is the report, which Jupyter shows as the whole report (Report._repr_pretty_)
    check = f"{importing}\n\ncheck_function({exercise}, {ex.backward_name})"
    derivation = [_cell("markdown", dollar_math(derivation_markdown(ex.derivation)))] if ex.derivation else []
    cells = [_cell("markdown", intro), *derivation, _cell("code", starter), _cell("code", check)]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write_notebook(op, path=None, force: bool = False) -> Path:
    """Write <op>_backward.ipynb (or `path`); refuses to overwrite unless force."""
    ex = get_exercise(op)
    path = target_path(path, f"{ex.backward_name}.ipynb", ".ipynb", force, ex.exercise_file)
    notebook = notebook_json(ex)
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
