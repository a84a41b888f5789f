"""Classroom mode: write one op's backward pass yourself, and have it checked like the project's own.

    npllama exercise list                          # the exercises, one per backward in npllama/ops
    npllama exercise start rmsnorm                 # writes rmsnorm_backward.py: signature, docstring,
                                                   # shapes, derivation pointer, body to fill in
    npllama exercise check rmsnorm rmsnorm_backward.py
    npllama exercise check rmsnorm submissions/    # a teacher's table over a folder of files

The checks are the ones tests/ops uses -- float64 central differences through
npllama.gradcheck.check_op, the closed forms, the edge cases -- written to take any backward
function (checks.py, catalog.py).  A failing check explains itself: which gradient, the relative
error, the worst index and both values there, and a diagnosis (wrong sign, 2x, a missing term,
the transpose, a wrong mask, ...) with a hint.  Only NumPy is needed.

From Python:

    from npllama.exercises import check_function
    print(check_function("rmsnorm", my_rmsnorm_backward).format())
"""
from .catalog import EXERCISES, Exercise, get_exercise
from .diagnose import CheckFailed, Finding, diagnose
from .runner import Report, SubmissionError, check_file, check_folder, check_function, format_table, load_function
from .starter import starter_source, write_starter

__all__ = ["EXERCISES", "Exercise", "get_exercise", "CheckFailed", "Finding", "diagnose", "Report",
           "SubmissionError", "check_file", "check_folder", "check_function", "format_table", "load_function",
           "starter_source", "write_starter"]
