"""Classroom mode: write one op's backward pass yourself, and have it checked like the project's own.

    npllama exercise list                          # the exercises, one per backward in npllama/ops
    npllama exercise start rmsnorm                 # writes rmsnorm_backward.py: signature, docstring,
                                                   # shapes, derivation pointer, body to fill in
    npllama exercise check rmsnorm rmsnorm_backward.py
    npllama exercise check rmsnorm submissions/    # a teacher's gradebook over a folder of files
    npllama exercise notebook rmsnorm              # the same exercise as a Jupyter notebook
    npllama exercise train rmsnorm rmsnorm_backward.py   # your backward training the tiny model
    npllama explain rmsnorm                        # the derivation, as terminal text

The checks are the ones tests/ops uses -- float64 central differences through
npllama.gradcheck.check_op, the closed forms, the edge cases -- written to take any backward
function (checks.py, definitions.py).  A failing check explains itself: which gradient, the
relative error, the worst index and both values there, and a diagnosis with a hint: the mistake
named from a catalogue of the derivation's steps done wrong (catalogue.py, mistakes.py) when it
matches on every probe case, else what the numbers show (wrong sign, 2x, the transpose, a wrong
mask, ...; diagnose.py), and which simpler cases pass.  Only NumPy is needed.

`exercise check` runs each file's function in a process of its own with time and memory limits
and the checks in its own (sandbox.py, gradebook.py), and refuses files that borrow or measure the
gradient (screen.py).

From Python (a notebook, the prompt), on a function defined there or imported:

    from npllama.exercises import check_function
    print(check_function("rmsnorm", my_rmsnorm_backward))

check_function returns a Report: print it, or end a Jupyter cell with it, for the whole report
(report.format() is the same text); report.ok says whether every check passed, report.summary()
the first failure in one line.  It runs your function in your own process, without a time limit:
interrupt the kernel (Ctrl-C at a prompt) to stop an endless loop -- the traceback's last line is
the one it was running -- or check the file with `exercise check`, which stops it for you.  What
your function prints, once for each of the many calls the checks make, is shown at the report's
head as `exercise check` shows a file's: its first lines and how many there were.  A pdb.set_trace()
(or breakpoint(), but in Jupyter that is the visual debugger's) in it works as usual: the
debugger's prompt and answers, and what it prints as you step, are shown.

From pytest (a test file of your own, a course's CI), failing with the whole report:

    from npllama.exercises import assert_passes
    def test_rmsnorm_backward():
        assert_passes("rmsnorm", "rmsnorm_backward.py")   # checked as `exercise check` does

A teacher's own exercise (GELU, a LayerNorm variant, ...) is one Python file holding a subclass of
Exercise, given to every command with `--exercise-file FILE` or loaded with load_exercises (teacher.py).
"""
from .definitions import EXERCISES, Exercise, check, get_exercise
from .diagnose import CheckFailed, Finding, diagnose
from .runner import (Report, SubmissionError, assert_passes, check_file, check_folder, check_function, format_table,
                     load_function)
from .gradebook import format_gradebook, grade_folder, write_gradebook
from .sandbox import Graded, grade_file
from .starter import starter_source, write_starter
from .teacher import ExerciseFileError, load_exercises

__all__ = ["EXERCISES", "Exercise", "get_exercise", "CheckFailed", "Finding", "diagnose", "Report",
           "SubmissionError", "assert_passes", "check_file", "check_folder", "check_function", "format_table",
           "load_function",
           "starter_source", "write_starter", "Graded", "grade_file", "grade_folder", "write_gradebook",
           "format_gradebook", "check", "ExerciseFileError", "load_exercises"]
