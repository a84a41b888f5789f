"""Write a starter file for an exercise: the exact signature, the docstring, the shapes, a pointer
to the derivation, and a body that raises NotImplementedError."""
from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path

from .definitions import Exercise, get_exercise, path_argument
from .derivation import ARTICLE_NOTE, backward_heading, explain_steps, explain_text
from .screen import RULE


def derivation_name(exercise: Exercise) -> str:
    """The exercise's derivation as its reader knows it: derivations/rmsnorm.md, or a teacher's
    gelu.md by its name, not by where it is."""
    return Path(exercise.derivation).name if _own_derivation(exercise) else exercise.derivation


def _own_derivation(exercise: Exercise) -> bool:
    """A teacher's Markdown file (teacher.py made its path absolute), not one of npllama's."""
    return Path(exercise.derivation).is_absolute()


def derivation_section(exercise: Exercise) -> str:
    """'derivations/rmsnorm.md, section "Backward, step by step"' (`npllama explain <name>` prints it)."""
    try:
        heading = backward_heading(exercise.derivation)
    except ValueError:      # not installed with the package: name the file only
        heading = None
    name = derivation_name(exercise)
    if heading:
        return f'{name}, section "{heading}"'
    return f"{name}, the section deriving the backward pass"


def derivation_quote(exercise: Exercise) -> str:
    """The backward sections of the exercise's derivation as terminal text ('' when not installed);
    only the steps the exercise names (derivation_steps) when it is one part of its derivation."""
    try:
        if exercise.derivation_steps:
            return explain_steps(exercise.derivation, exercise.derivation_steps)
        return explain_text(exercise.derivation, backward_only=True)
    except ValueError:
        return ""


def cache_description(exercise: Exercise) -> str:
    """The cache as the op documents it: its NamedTuple's docstring and fields with their comments,
    quoted from the op's source (one description, the op's own).  A field that is itself a cache
    of the same module (the block's self_attn, an AttentionLayerCache) is quoted after it: its
    fields are as much the student's to read."""
    _, cache = exercise.case(exercise.edge_cases[0]).run_forward()
    kind = type(cache)
    if not hasattr(kind, "_fields"):
        return ""
    from .teacher import shown_module

    lines = fields_described(kind)
    for field in kind._fields:
        inner = type(getattr(cache, field))
        if hasattr(inner, "_fields") and inner.__module__ == kind.__module__:
            lines += field_cache_described(field, inner)
    return (f"{kind.__name__}, the named tuple {exercise.forward_name} returns "
            f"({shown_module(exercise, kind.__module__)}):\n"
            f"unpack it in this order, or read its fields (cache.{kind._fields[0]}, ...)\n" + "\n".join(lines))


def field_cache_described(field: str, kind, where: str = "") -> list[str]:
    """A cache's field that is itself a cache: 'field, a Kind<where>:' over its fields, indented."""
    article = "an" if kind.__name__[0] in "AEIOU" else "a"
    return [f"{field}, {article} {kind.__name__}{where}:"] + ["  " + line for line in fields_described(kind)]


def fields_described(kind) -> list[str]:
    """A NamedTuple's docstring and field lines (with their comments) from its source."""
    lines = []
    for line in textwrap.dedent(inspect.getsource(kind)).splitlines()[1:]:
        if line.strip().startswith("def "):
            break
        if line.strip():
            lines.append(line.strip().strip('"').strip())
    return lines


def _doc_with_cache(exercise: Exercise) -> str:
    doc = exercise.doc.strip()
    if "cache: CACHE" not in doc:
        return doc
    text = cache_description(exercise).splitlines()
    return doc.replace("cache: CACHE", "cache: " + "\n           ".join(text))


def starter_source(op, in_notebook: bool = False, folder=None) -> str:
    """The student's file: the docstring (forward, shapes, the rule), the helpers' imports, the
    derivation's backward section as comments, and the function to fill in.  in_notebook: for the
    notebook's code cell, where the derivation is the cell above and a cell below checks.
    folder: where the file is written, from which its check command reaches a teacher's exercise
    file (default: the current folder)."""
    from .teacher import describe_source

    ex = get_exercise(op)
    imports = "import numpy as np\n"
    if ex.helpers:
        imports += "\n" + "".join(f"from {module} import {name}  # noqa: F401  (yours to use)\n"
                                   for module, name in ex.helpers)
    article = f", article {ex.article}" if ex.article else ""
    article_note = (textwrap.fill(f"({ARTICLE_NOTE}.)", 96) + "\n\n") if ex.article else ""
    forward = textwrap.indent(ex.forward_text, "    ")
    if in_notebook:
        check_it, where, quote = "then run the next cell to check it.", "the cell above", ""
    else:
        command = ex.check_command(ex.backward_name + '.py', ex.exercise_file_from(folder) or None)
        check_it = f"then check it:\n\n    {command}"
        where, quote = "quoted below", "\n" + _as_comment(derivation_quote(ex)) if ex.derivation else ""
    explain = "" if _own_derivation(ex) else f";\n            `npllama explain {_stem(ex)}` prints all of it"
    derivation = (f"Derivation: {derivation_section(ex)} ({where}{explain}).  Work it on paper first.\n"
                  if ex.derivation else "")
    # the forward's output as the upstream gradient names it: dy -> y, dlogits -> logits
    upstream = ex.upstream
    output = upstream[1:] if upstream.startswith("d") and len(upstream) > 1 else "the forward's output"
    more = [p.strip() for p in ex.params.split(",")[2:]]    # model_backward's config
    given = "that cache" + "".join(f" and {p}" for p in more)
    # the loss op's upstream is the final objective's gradient with respect to the loss itself
    received = ("the gradient of the final objective with respect to the loss" if output == "loss"
                else f"the gradient of the loss with respect to {output}")
    receives = textwrap.fill(f"and returns ({output}, cache).  Your function receives {received} "
                             f"({ex.upstream}), {given}, and returns the gradients its docstring lists.", 100)
    return f'''"""Exercise: the backward pass of the {ex.title}{article}.

{article_note}Write the body of `{ex.backward_name}` below, {check_it}

The forward pass is already written ({describe_source(ex)}); it computes

{forward}

{receives}

{derivation}Shapes:     {ex.shapes}
Allowed:    {ex.allowed_imports}.
The rule:   {textwrap.fill(RULE, 84, subsequent_indent="            ")}
"""
{imports}{quote}

{ex.signature}
    """{_doc_with_cache(ex)}
    """
    raise NotImplementedError("{ex.backward_name} is not implemented yet")
'''


def _stem(exercise: Exercise) -> str:
    return exercise.derivation.rsplit("/", 1)[-1].removesuffix(".md")


def _as_comment(text: str) -> str:
    if not text:
        return ""
    body = "\n".join(("# " + line).rstrip() for line in text.splitlines())
    return f"\n# ----- the math you need (derivations, quoted) -----\n{body}\n"


# what `exercise start` and `exercise notebook` write: a name ending in the other one's suffix is a
# slip (--out mine.py for a notebook), not a folder to make
STUDENT_FILE_KINDS = {".py": "starter file", ".ipynb": "notebook"}


def target_path(path, default_name: str, suffix: str, force: bool, exercise_file=None) -> Path:
    """Where to write a student's file: `path` itself, or default_name inside it when it is a folder
    (existing, or a new path without `suffix`); refuses a name ending in another kind's suffix
    (STUDENT_FILE_KINDS, in any letter case, or such a suffix alone) and an existing file of another kind, to overwrite unless force, and the
    teacher's `exercise_file` (the one the file is made from) and a symbolic link always."""
    path = path_argument(path, "path", "the file or folder to write") if path is not None else Path(default_name)
    if path.is_symlink() and not path.exists():     # dangling: neither a folder to write into nor a file to replace
        raise ValueError(_written_through(path))
    if path.suffix != suffix and not path.is_dir():
        kind = STUDENT_FILE_KINDS[suffix]
        if path.name.lower() in STUDENT_FILE_KINDS:      # .ipynb alone: a suffix, not a folder's name
            raise ValueError(f"the file to write, {str(path)!r}, is a suffix with no name before it: give a name "
                             f"ending in {suffix} ({default_name}), or a folder")
        if path.suffix.lower() in STUDENT_FILE_KINDS:   # mine.PY: a .py file where case does not count
            raise ValueError(f"the file to write, {str(path)!r}, ends in {path.suffix}, but a {kind} is a {suffix} "
                             f"file: give a name ending in {suffix}, or a folder")
        if path.exists():
            raise ValueError(f"{str(path)!r} is a file, not a folder, and a {kind} is a {suffix} file: give a "
                             f"name ending in {suffix}, or a folder")
    if path.is_dir() or path.suffix != suffix:
        path = path / default_name
    if path.is_symlink():
        raise ValueError(_written_through(path))
    if exercise_file and path.exists() and os.path.samefile(path, exercise_file):
        raise FileExistsError(f"--out {str(path)!r} is the exercise file the starter is made from (--exercise-file): "
                              f"writing there would replace it, --force or not; choose another --out")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it (your work would be lost)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _written_through(link: Path) -> str:
    """Why a student's file is not written at `link`: it would write the file the link points to
    (the student's notebook, a file they did not name), with --force too."""
    gone = "" if link.exists() else ", which does not exist"
    return (f"{str(link)!r} is a symbolic link to {os.readlink(link)!r}{gone}: writing through it would write there "
            f"instead, --force or not; give a file or folder name that is not a link")


def write_starter(op, path=None, force: bool = False) -> Path:
    """Write the starter file (default: ./<op>_backward.py); refuses to overwrite unless force."""
    ex = get_exercise(op)
    path = target_path(path, f"{ex.backward_name}.py", ".py", force, ex.exercise_file)
    path.write_text(starter_source(op, folder=path.parent), encoding="utf-8")
    return path
