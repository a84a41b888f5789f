"""A teacher's own exercise: one Python file, used by every command as a built-in exercise is.

    npllama exercise list  --exercise-file gelu_exercise.py
    npllama exercise start --exercise-file gelu_exercise.py gelu
    npllama exercise check --exercise-file gelu_exercise.py gelu submissions/

    from npllama.exercises import check_function, load_exercises
    gelu = load_exercises("gelu_exercise.py")["gelu"]
    print(check_function(gelu, my_gelu_backward))

The file holds the forward (returning (out, cache)), the teacher's reference backward, and a
subclass of Exercise written as the built-in ones are (definitions.py): its name, the two
functions' names, a parameter space and edge cases, `build(params, dtype)` drawing one Case, and
any checks of its own (`@check`).  A class whose `op` is empty is taken for a base class.  Its
`module` is the file itself unless the class names another (Exercise.__init_subclass__).

The file is the teacher's, so it is trusted: it is imported here, and imported again, under the
same module name, by the process each submission runs in (sandbox.py) -- the calls sent there
carry the file's cache types.  Before any student is graded the teacher's reference goes through
the exercise's own checks on the very cases the students get (`verify_reference`): a reference
that fails them would fail the whole class, so the file is refused with what failed.
"""
from __future__ import annotations

import collections.abc
import hashlib
import importlib.util
import pickle
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from .checks import Case, Choice, Ints, Shape, forward_subject, sample
from .definitions import EXERCISES, Exercise, did_you_mean, path_argument


class ExerciseFileError(ValueError):
    """A teacher's exercise file cannot be used; the message names the file and what is wrong."""

    def _render_traceback_(self):
        # IPython (a notebook's check cell) shows this instead of the loader's source around the raise
        return [f"{type(self).__name__}: {self}"]


def load_exercises(path, *, verify: bool = True) -> dict[str, Exercise]:
    """The exercises defined in the teacher's file at `path`, by name.  verify: also run each
    reference through its exercise's checks on the default cases (verify_reference)."""
    path = path_argument(path, "exercise_file", "a .py file defining a subclass of npllama.exercises.Exercise")
    if not path.is_file():
        # a starter names the file by its path from the folder it was written to; a handout that
        # puts the two side by side has it here instead
        here = Path(path.name)
        beside = (f"; a {path.name} is in this folder: if it is the exercise file you were given, run with "
                  f"--exercise-file {shlex.quote(path.name)}") if here.is_file() and here.resolve() != path.resolve() else ""
        # where it looked: a notebook moved away from the file runs in the folder it was moved to
        what = "is a folder" if path.is_dir() else "does not exist" + (
            "" if path.is_absolute() else f" in {Path.cwd()}")
        raise ExerciseFileError(f"{path} {what} (expected a .py file defining a subclass of "
                                f"npllama.exercises.Exercise){beside}")
    module = _import(path.resolve())
    classes = [k for k in vars(module).values()
               if isinstance(k, type) and issubclass(k, Exercise) and k.__module__ == module.__name__ and k.op]
    if not classes:
        raise ExerciseFileError(f"{path.name} defines no exercise: write a class deriving from "
                                f"npllama.exercises.Exercise with op, forward_name, backward_name, space, edge_cases "
                                f"and build (docs/debugging.md, \"Your own exercise\")")
    exercises = {}
    for klass in classes:
        exercise = _instance(klass, path)
        exercise.exercise_file = str(path.resolve())
        exercise.derivation = _derivation(exercise, path)
        if exercise.op in exercises:
            raise ExerciseFileError(f"{path.name}: two exercises are named {exercise.op!r}")
        check_definition(exercise)
        exercises[exercise.op] = exercise
    if verify:
        for exercise in exercises.values():
            verify_reference(exercise)
    return exercises


def exercise_in_file(path, op: str, *, verify: bool = True) -> Exercise:
    """The exercise named `op` in the teacher's file (ValueError naming the ones it defines)."""
    exercises = load_exercises(path, verify=verify)
    if op not in exercises:
        raise ExerciseFileError(f"{Path(path).name} defines no exercise {op!r}{did_you_mean(op, exercises)}; "
                                f"it defines: {', '.join(exercises)}")
    return exercises[op]


def module_name(path: Path) -> str:
    """The one module name a file is imported under, here and in the sandbox's process (pickle
    finds the cache types by it).  Not dotted: pickle would take gelu.v2.py's module for a package's."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"npllama_exercise_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def _import(path: Path):
    name = module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExerciseFileError(f"{path.name} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module     # kept: the caches its forward makes are pickled by this name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise ExerciseFileError(f"importing {path.name} failed: {type(error).__name__}: {error}"
                                f"{_line_in_file(error, path)}") from error
    return module


def _line_in_file(error: BaseException, path: Path) -> str:
    """' (line N of the file: its code)' for the teacher's line the error came from (the last one
    of their file in the traceback), '' when none is."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (line {frame.lineno} of {path.name}: {(frame.line or '').strip()})"


def _instance(klass, path: Path) -> Exercise:
    try:
        return klass()
    except Exception as error:
        raise ExerciseFileError(f"{path.name}: {klass.__name__}() raised {type(error).__name__}: {error}") from error


def _derivation(exercise: Exercise, path: Path) -> str:
    """The exercise's derivation: '' (none), a Markdown file beside the exercise file (made absolute,
    so that it is found from anywhere), or one of npllama's own (derivations/layernorm.md)."""
    from .derivation import available

    name = exercise.derivation
    if not name:
        return ""
    beside = path.resolve().parent / name
    if name.endswith(".md") and beside.is_file():
        return str(beside)
    if Path(name).name.removesuffix(".md") in available():
        return name
    raise ExerciseFileError(f"{path.name}: {type(exercise).__name__}.derivation is {name!r}, which is neither a "
                            f"Markdown file beside {path.name} nor one of npllama's derivations")


def check_definition(exercise: Exercise) -> None:
    """ExerciseFileError unless the exercise is complete: its names, its two functions, its
    parameter space and edge cases, a build that makes a Case from each, and a forward that
    returns (out, cache) on them."""
    where = f"{Path(exercise.exercise_file).name}: {type(exercise).__name__}"

    def refuse(text):
        raise ExerciseFileError(f"{where}: {text}")

    if not isinstance(exercise.op, str) or not exercise.op.isidentifier():
        refuse(f"op must be a name such as 'gelu' (it names files: <op>_backward.py, gradebook-<op>), got "
               f"{exercise.op!r}")
    if exercise.op in EXERCISES:
        refuse(f"op {exercise.op!r} is a built-in exercise's name: choose another (e.g. '{exercise.op}_variant')")
    for attribute in ("forward_name", "backward_name"):
        value = getattr(exercise, attribute)
        if not isinstance(value, str) or not value.isidentifier():
            refuse(f"{attribute} must name a function of the file, e.g. 'gelu_{attribute[:-5]}', got {value!r}")
    for attribute, name, role in (("forward", exercise.forward_name, "the forward, returning (out, cache)"),
                                  ("reference", exercise.backward_name, "your reference backward")):
        try:
            function = getattr(exercise, attribute)
        except (AttributeError, ImportError) as error:
            # the module a file is imported under means nothing to the teacher: the file's name does
            inherited = next((k.module for k in type(exercise).__mro__[1:] if vars(k).get("module")), "")
            hint = (f" (a subclass of a built-in exercise finds its functions in the file unless it names the "
                    f"module again: module = {inherited!r})" if inherited and inherited != exercise.module else "")
            detail = f": {error}" if isinstance(error, ImportError) else ""     # e.g. a module misspelt
            refuse(f"{name} ({role}) cannot be found in {shown_module(exercise, exercise.module)}{hint}{detail}")
        if not callable(function):
            refuse(f"{name} ({role}) is not a function")
    if len([p for p in exercise.params.split(",") if p.strip()]) != 2:
        refuse(f"params lists the backward's parameters and the checks pass two, (dout, cache): got "
               f"{exercise.params!r}")
    if type(exercise).build is Exercise.build:
        refuse("has no build(self, params, dtype=np.float64) returning a Case: the checks draw their inputs with it")
    if not isinstance(exercise.space, dict) or not all(isinstance(d, (Ints, Choice, Shape))
                                                       for d in exercise.space.values()):
        refuse("space must be a dict of Ints, Choice and Shape (npllama.exercises.checks), e.g. "
               "dict(shape=Shape(1, 3, 1, 4), seed=SEED)")
    for name, dimension in exercise.space.items():
        problem = _undrawable(dimension)
        if problem:
            refuse(f"space[{name!r}] is {dimension!r}: {problem}, or no case can be drawn from it")
    if not isinstance(exercise.edge_cases, list) or not exercise.edge_cases \
            or not all(isinstance(c, dict) for c in exercise.edge_cases):
        refuse("edge_cases must be a non-empty list of parameter dicts (the first is the simplest, well-conditioned "
               "case: the float32 check and the probe for measured gradients use it)")
    drawn = list(exercise.edge_cases) + ([sample(exercise.space, np.random.default_rng(0))] if exercise.space else [])
    for params in drawn:
        try:
            case = exercise.build(params)
        except Exception as error:
            refuse(f"build({params!r}) raised {type(error).__name__}: {error}")
        if not isinstance(case, Case):
            refuse(f"build must return a Case (npllama.exercises.checks.Case), got {type(case).__name__}")
        try:
            result = case.run_forward()
        except Exception as error:
            refuse(f"{exercise.forward_name} raised {type(error).__name__}: {error} (inputs: {case.describe()})")
        _check_backward_order(exercise.backward_order_of(case), case, refuse)
        if not (isinstance(result, tuple) and len(result) == 2):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
            refuse(f"{exercise.forward_name} must return (out, cache), got {got}")
        if np.asarray(result[0]).dtype.kind != "f":     # a loss may come back as a float
            refuse(f"{exercise.forward_name}'s out must be a float array or number, got {type(result[0]).__name__}")
        try:
            pickle.dumps(result[1])       # each call to a submission's process carries the cache
        except Exception as error:
            refuse(f"the cache {exercise.forward_name} returns cannot be sent to the process a submission runs in "
                   f"({type(error).__name__}: {error}): make it of arrays, numbers, tuples, dicts and classes "
                   f"defined at the top level of the file")


def _check_backward_order(order: tuple, case: Case, refuse) -> None:
    """The backward's order (steps of input names), when given, places each differentiable input
    of the case once and names nothing else (a gradient left out or misspelt would leave the
    report unable to order the wrong ones)."""
    if not order:
        return
    differentiable = [case.input_names[i] for i in case.wrt]
    placed = [name for step in order for name in step]
    unknown = [name for name in placed if name not in differentiable]
    missing = [name for name in differentiable if name not in placed]
    twice = sorted({name for name in placed if placed.count(name) > 1})
    if unknown or missing or twice:
        problems = ([f"names {', '.join(map(repr, unknown))}, not a differentiable input"] if unknown else []) + \
                   ([f"leaves out {', '.join(map(repr, missing))}"] if missing else []) + \
                   ([f"places {', '.join(map(repr, twice))} twice"] if twice else [])
        refuse(f"backward_order {order!r} {'; '.join(problems)}: it lists the differentiable "
               f"inputs ({', '.join(differentiable)}) each once, in the order the backward reaches them (a tuple "
               f"of names: one step giving them all)")


def _undrawable(dimension) -> str:
    """What makes a dimension of an exercise's space empty ('' when cases can be drawn from it)."""
    if isinstance(dimension, Choice):
        # any sequence sample and hypothesis's sampled_from draw from (a range too), not a str
        ok = (isinstance(dimension.options, collections.abc.Sequence)
              and not isinstance(dimension.options, (str, bytes)) and len(dimension.options) > 0)
        return "" if ok else "options must be a non-empty tuple, e.g. Choice((0.5, 2.0))"
    if isinstance(dimension, Shape) and dimension.min_len > dimension.max_len:
        return "min_len must be at most max_len"
    if dimension.lo > dimension.hi:
        return "lo must be at most hi"
    return ""


def verify_reference(exercise: Exercise, n_random: int | None = None, seed: int = 0) -> None:
    """ExerciseFileError unless the teacher's reference passes every check of its exercise on the
    cases a class is graded on (the edge cases, then n_random random ones drawn from seed): a
    reference that fails them would fail every student."""
    from .runner import DEFAULT_RANDOM_CASES, check_function

    n_random = DEFAULT_RANDOM_CASES if n_random is None else n_random
    verified = exercise.__dict__.setdefault("_verified_on", set())
    if (n_random, seed) in verified:
        return
    report = check_function(exercise, exercise.reference, n_random=n_random, seed=seed,
                            source=f"the reference {exercise.backward_name}",
                            capture_output=False)      # the teacher's own prints, not a student's
    if report.only_undecided:
        raise ExerciseFileError(
            f"{Path(exercise.exercise_file).name}: the checks of exercise {exercise.op} could not decide the "
            f"reference {exercise.backward_name} on any case, so they could decide no student's either (draw the "
            f"cases away from where the forward has no derivative or rounds its change away):\n  "
            + "\n  ".join(line for r in report.undecided for line in r.undecided_lines()))
    if not report.ok:
        first = report.first_failure
        why = ([report.summary()] if first is None or first.finding is None else
               [f"check {first.check.name!r} ({first.check.description})"] + first.finding.lines())
        if first is not None and first.finding is not None and \
                first.finding.subject == forward_subject(exercise.forward_name):
            blamed = (f"the forward {exercise.forward_name} keeps the checks of exercise {exercise.op} from judging "
                      f"any backward, the reference {exercise.backward_name} included (fix the forward before "
                      f"grading anyone)")
        else:
            blamed = (f"the reference {exercise.backward_name} fails the checks of exercise {exercise.op}, so every "
                      f"student would fail too (fix the reference, the forward or the cases before grading anyone)")
        raise ExerciseFileError(f"{Path(exercise.exercise_file).name}: {blamed}:\n  " + "\n  ".join(why))
    verified.add((n_random, seed))


def shown_module(exercise: Exercise, module: str) -> str:
    """A module as the starter names it: a teacher's file by its file name, not the name it was
    imported under."""
    if exercise.exercise_file and module == module_name(Path(exercise.exercise_file)):
        return Path(exercise.exercise_file).name
    return module


def describe_source(exercise: Exercise) -> str:
    """Where the exercise's forward lives, as the starter names it."""
    where = shown_module(exercise, exercise.module)
    return f"{where}, {exercise.forward_name}" if where != exercise.module else f"{where}.{exercise.forward_name}"
