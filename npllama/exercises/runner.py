"""Run an exercise's checks on a student's function, a file, or a folder of submissions.

    report = check_file("rmsnorm", "rmsnorm_backward.py")
    print(report)                     # pass/fail per check, then the first failure explained
    reports = check_folder("rmsnorm", "submissions/")
    print(format_table(reports))      # file, checks passed, first failure

Nothing here needs pytest or hypothesis: the parameters are drawn with NumPy (the exercise's edge
cases first, then `n_random` random points of its space, the same for every file).  A student's
exception never escapes as a traceback: it becomes a failed check that names the exception and
the line of the student's file it came from.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import io
import os
import re
import sys
import traceback
from pathlib import Path

import numpy as np

from .definitions import EXERCISES, Check, Exercise, get_exercise, path_argument
from .checks import ForwardNotDeterministic, forward_subject, sample
from .catalogue import CATALOGUES
from .diagnose import NEAR_EXACT_CAUSES, CaseUndecided, CheckFailed, Finding, and_list
from .gradebook import submissions_in
from .mistakes import EdgeCaseLadder, Explanation, compare_ladder, explain, fits_on_case, name_scalar_factor
from .screen import (RULE, ForbiddenCall, finite_difference_lines, guard_library, measured_reason, near_exact_gap,
                     near_exact_note, screen_source, student_call, student_running)
from .sandbox import CappedOutput, shown_output, with_output
from .session import librarys_own, replaced_definitions, students_code
from .starter import derivation_section

DEFAULT_RANDOM_CASES = 8
# The grader reads a submission's text itself (the rules of screen.py), outside the limits its code
# runs under: a file larger than any submission is not read there.
MAX_SOURCE_BYTES = 16 * 2**20


class SubmissionError(Exception):
    """The file could not be used at all: missing, a syntax error, no function of the right name.
    raised: the exception the file's own code raised while it was imported, when that is why (the
    sandbox reads a MemoryError there as its memory limit's, as in a call)."""

    def __init__(self, message: str, raised: BaseException | None = None):
        super().__init__(message)
        self.raised = raised


class GradingStopped(BaseException):
    """The process running the student's function ended in the middle of the checks (the time
    limit, a crash: sandbox.py).  A BaseException, so that no check takes it for the student's own
    error; check_function keeps the checks done before it."""


@dataclasses.dataclass
class CheckResult:
    check: Check
    status: str                      # "pass", "fail", "error", "not run", "undecided" (no case could be decided)
    cases_run: int = 0
    cases_total: int = 0
    finding: Finding | None = None
    # the cases the check could not decide either way (CaseUndecided): neither passed nor failed,
    # the verdict rests on the others
    undecided: list[CaseUndecided] = dataclasses.field(default_factory=list)
    # (Case, the student's gradients there) of the case a gradient check failed on (None for other
    # checks): the named mistake is tried on it
    failed_on: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def diagnosis(self) -> str:
        """The finding's one line if a mistake was named, else the status."""
        if self.finding:
            return self.finding.short()
        if self.status == "undecided":
            return (f"could not decide: finite differences could not judge {self._cases('its', 'case')} either "
                    "way (not a mistake found)")
        return self.status

    def _cases(self, its: str, case: str) -> str:
        """'its 1 case', 'any of its 9 cases'."""
        return f"{its} 1 {case}" if self.cases_run == 1 else f"any of {its} {self.cases_run} {case}s"

    def undecided_lines(self) -> list[str]:
        """What the report says of the cases this check could not decide (none when it failed: the
        failure is its verdict)."""
        if not self.undecided or self.status not in ("pass", "undecided"):
            return []
        count = len(self.undecided)
        if self.status == "undecided":
            head = (f"{self.check.name}: the check could not decide -- finite differences could not judge "
                    f"{self._cases('its', 'case')} (neither a pass nor a mistake):")
        else:
            rest = self.cases_run - count
            head = (f"{self.check.name}: {count} of {self.cases_run} cases could not be decided by finite "
                    f"differences (neither a pass nor a mistake); the verdict rests on the other {rest} "
                    f"case{'s' if rest != 1 else ''}:")
        shown = [f"  case {u.case}: {u.reason}" for u in self.undecided[:UNDECIDED_SHOWN]]
        more = [f"  and {count - UNDECIDED_SHOWN} more"] if count > UNDECIDED_SHOWN else []
        return [head] + shown + more


UNDECIDED_SHOWN = 2      # the cases a check could not decide whose reason the report gives


@dataclasses.dataclass(repr=False)
class Report:
    exercise: Exercise
    source: str                      # file name, or the function's name
    results: list[CheckResult]
    not_implemented: bool = False
    load_error: str | None = None
    refused: str | None = None       # why the submission breaks the rule of screen.py (not graded)
    notes: list[str] = dataclasses.field(default_factory=list)   # worth knowing, never a failure
    stopped: str | None = None       # why the checks ended half-way (GradingStopped); those before it stand
    output: str = ""                 # what the function printed as the checks ran here, as shown (sandbox.shown_output)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def total(self) -> int:
        return len(self.exercise.checks())

    @property
    def ok(self) -> bool:
        return (self.load_error is None and self.refused is None and not self.not_implemented
                and self.passed == self.total)

    @property
    def first_failure(self) -> CheckResult | None:
        return next((r for r in self.results if r.status in ("fail", "error")), None)

    @property
    def undecided(self) -> list[CheckResult]:
        """The checks that could not decide any of their cases: not passed, and no mistake found."""
        return [r for r in self.results if r.status == "undecided"]

    @property
    def only_undecided(self) -> bool:
        """Not passed, yet no check failed: some check could not decide any of its cases."""
        return not self.ok and self.first_failure is None and bool(self.undecided)

    @property
    def failed_before_the_stop(self) -> bool:
        """The checks stopped (`stopped`) after an earlier check had failed: first_failure is that
        check, not the one they stopped in (check_function's last result, whose finding is the stop)."""
        first = self.first_failure
        return bool(self.stopped) and first is not None and first is not self.results[-1]

    def summary(self) -> str:
        """One short line: what a teacher's table shows."""
        if self.load_error:
            return self.load_error
        if self.refused:
            return f"refused: {self.refused}"
        if self.not_implemented:
            return "not implemented yet"
        first = self.first_failure
        if first is not None:
            return f"{first.check.name}: {first.diagnosis}"
        if self.stopped:
            return f"stopped: {self.stopped}"
        if self.undecided:
            return "; ".join(f"{r.check.name}: {r.diagnosis}" for r in self.undecided)
        if self.passed < self.total:      # a report built by hand, or cut short: never "all pass" then
            return f"{self.passed} of {self.total} checks passed, the others not run"
        return "all checks pass"

    def _rows(self) -> list[CheckResult]:
        """A result for every check of the exercise, in its order: those the run did not reach are
        'not run' (checks end at a stop; a report may also be built by hand)."""
        ran = {r.check.method: r for r in self.results}
        return [ran.get(check.method, CheckResult(check, "not run")) for check in self.exercise.checks()]

    # the report as a student reads it wherever the object shows up: print(report), a notebook
    # cell or IPython prompt ending in check_function(...); repr() is one line (in a list, a log)
    REPR_SUMMARY = 160

    def __str__(self) -> str:
        return self.format()

    def _repr_pretty_(self, printer, cycle) -> None:    # IPython and Jupyter show a cell's value with it
        printer.text(self.format())

    def __repr__(self) -> str:
        shown = f"<Report exercise {self.exercise.op}: {self.source}, {self.passed} of {self.total} checks passed"
        if self.ok:
            return shown + ">"
        summary = ("first failure " if self.first_failure is not None else "") + self.summary()
        summary = " ".join(summary.split())     # an error's message may run over several lines
        if len(summary) > self.REPR_SUMMARY:
            summary = summary[:self.REPR_SUMMARY - 3] + "..."
        return f"{shown}; {summary}; print it for the whole report>"

    def _where(self) -> str:
        """Where the checked function comes from, for the report's first line: its file, or, for one
        defined in a session, its own name when that is not the exercise's (a function has no file there)."""
        if self.source.endswith(".py"):
            return f" in {self.source}"
        if self.source == self.exercise.backward_name:
            return ""
        if self.source == "<lambda>":
            return " (a lambda)"
        return f" (your function {self.source})" if self.source.isidentifier() else f" ({self.source})"

    def format(self) -> str:
        """The report as a student reads it: what the function printed (its first lines), then the checks."""
        return with_output(self.output, self._checks_text())

    def _checks_text(self) -> str:
        ex = self.exercise
        lines = [f"exercise {ex.op}: {ex.backward_name}{self._where()}"]
        if self.load_error:
            lines += [f"  cannot check it: {self.load_error}", "0 checks run."]
            return "\n".join(lines)
        if self.refused:
            lines += [f"  refused, not graded: {self.refused}", f"  the rule: {RULE}", "0 checks run."]
            return "\n".join(lines)
        if self.not_implemented:
            again = (f"then check it again:\n      {ex.check_command(self.source)}"
                     if self.source.endswith(".py") else "then run the check again.")
            math = f" (work the math in {ex.derivation} first)" if ex.derivation else ""
            lines += [f"  {ex.backward_name} is not implemented yet: it raises NotImplementedError.",
                      f"  Write its body{math}, {again}",
                      f"0 of {self.total} checks passed."]
            return "\n".join(lines)
        rows = self._rows()
        width = max((len(r.check.name) for r in rows), default=0)
        labels = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "not run": "-", "undecided": "UNDECIDED"}
        label_width = max(5, *(len(labels[r.status]) for r in rows))
        for r in rows:
            cases = ""
            if r.check.sampled and r.status in ("pass", "undecided"):
                not_decided = f", {len(r.undecided)} not decided" if r.undecided and r.status == "pass" else ""
                cases = f"  ({r.cases_run} cases{not_decided})"
            elif r.check.sampled and r.status in ("fail", "error"):
                cases = f"  (case {r.cases_run} of {r.cases_total})"
            lines.append(f"  {labels[r.status]:<{label_width}} {r.check.name:<{width}}  {r.check.description}{cases}")
        first = self.first_failure
        if first is not None and first.finding is not None:
            lines.append(f"First failure ({first.check.name}):")
            lines += ["  " + line for line in first.finding.lines()]
            if ex.derivation:
                lines.append(f"  derivation: {derivation_section(ex)}")
        # said here unless the failure above is the stop -- after an earlier check failed, this is
        # the only place saying why the row of the check it stopped in is ERROR
        if self.stopped and (first is None or self.failed_before_the_stop):
            lines.append(f"Stopped: {self.stopped}")
        for r in rows:
            lines += ["  note: " + line if i == 0 else "  " + line for i, line in enumerate(r.undecided_lines())]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"{self.passed} of {self.total} checks passed." + ("  Well done!" if self.ok else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        first = self.first_failure
        return {"exercise": self.exercise.op, "source": self.source, "passed": self.passed, "total": self.total,
                "ok": self.ok, "not_implemented": self.not_implemented, "load_error": self.load_error,
                "refused": self.refused, "stopped": self.stopped, "notes": list(self.notes), "output": self.output,
                "summary": self.summary(),
                "first_failure": None if first is None else {
                    "check": first.check.name, "status": first.status,
                    "diagnosis": first.diagnosis,
                    **(dataclasses.asdict(first.finding) if first.finding else {}),
                    **({"other_gradients": first.finding.other_gradients} if first.finding else {})},
                "checks": {r.check.name: r.status for r in self._rows()}}


# ----- running ------------------------------------------------------------------------------------

def case_params(exercise: Exercise, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0) -> list[dict]:
    """The edge cases, then n_random random points of the exercise's space (deterministic by seed;
    none when it has no space, as a teacher's exercise may)."""
    rng = np.random.default_rng(seed)
    return list(exercise.edge_cases) + [sample(exercise.space, rng) for _ in range(n_random if exercise.space else 0)]


def cases_per_check(exercise: Exercise, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0) -> int:
    """How many cases each sampled check runs on -- what a report's "(N cases)" and the gradebook's
    cases column say: the edge cases and the random ones."""
    return len(case_params(exercise, n_random, seed))


def check_function(op: str, backward, *, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0,
                   source: str | None = None, source_file: str | None = None,
                   catch_everything: bool = False, source_text: str | None = None,
                   named_as: str | None = None, run_path: str | None = None,
                   capture_output: bool = True) -> Report:
    """Run every check of exercise `op` (a name, or an Exercise: a teacher's own, teacher.py) on
    `backward`; never raises for a wrong or crashing function.  Returns a Report (`.ok`, and
    `.format()`: the table).

    n_random, seed: how many random cases follow the edge cases, and their draw (case_params).
    source: where the report says the function comes from (default its __name__; a partial, a
    callable object: what it is); source_file: its file (default where the code it runs is -- a
    method's, a partial's function, an object's __call__), read for the finite-difference rule.
    catch_everything: also turn SystemExit and KeyboardInterrupt raised by the function into its
    failure (in your own process a Ctrl-C should still stop you).
    source_text: the file's text for the finite-difference rule (screen.py), as read before any of
    it ran (sandbox.grade_file: a file that rewrites itself must not hide it); by default
    source_file is read when the rule needs it.
    named_as: the file whose exercise.backward_name `backward` is, as a crash's line names it ("line 3
    of alice/linear_backward.py") -- the path the student typed, or the gradebook's file column.  By
    default a crash names the file of the code `backward` runs by its path from the current folder
    (the hint runs it from there by its own name), a notebook cell's as the cell, and other code
    in no file as Python does ('<string>').
    run_path: the file the hint's rerun snippet loads, as a path from the folder the command runs
    in (default named_as): a gradebook names a crash's file by its file column (alice/linear_backward.py),
    but the snippet is pasted where the command ran (class/alice/linear_backward.py).
    capture_output: keep what the function prints (stdout and stderr) while the checks call it again
    and again, and show its first lines at the head of the report, in the words `exercise check`
    shows a file's (sandbox.shown_output); a debugger's own prompt and answers (breakpoint() in the
    function) and what the function prints while one steps through it still reach the screen.
    A logging handler writing to the screen (logging.basicConfig() in an earlier cell) writes to
    the kept output meanwhile; what is written outside the function (a warning of the checks' own
    arithmetic) goes to the screen.  Not kept, as in `exercise check`: os.write to file descriptor
    1 or 2 (there is no sys.stdout.buffer).  sys.stdout and sys.stderr are the whole process's:
    another thread's prints while the function runs are kept with its own, and two threads must
    not check at once (the screen put back last would be the other's kept output).
    False where the function runs in another process, which keeps its output (grade_file), or
    its prints are not a student's (a teacher's reference)."""
    with _output_kept(capture_output) as kept:
        report = _run_checks(op, backward, n_random=n_random, seed=seed, source=source, source_file=source_file,
                             catch_everything=catch_everything, source_text=source_text, named_as=named_as,
                             run_path=run_path)
    if kept is not None:
        report.output = kept.shown()
    return report


def _run_checks(op, backward, *, n_random, seed, source, source_file, catch_everything, source_text, named_as,
                run_path) -> Report:
    """check_function's checks, what the function prints aside."""
    exercise = get_exercise(op)
    if not callable(backward):
        raise TypeError(f"backward must be a function like {exercise.signature[4:-1]}, got {type(backward).__name__}")
    if source_text is not None and not isinstance(source_text, str):
        raise TypeError(f"source_text must be the file's text (a str) or None, got {type(source_text).__name__}")
    require_case_arguments(n_random, seed)
    function = _function_run_by(backward)
    decorators = _decorator_files(backward)
    source = source or _what_it_is(backward, function)
    source_file = source_file or getattr(getattr(function, "__code__", None), "co_filename", None)
    function_name = getattr(function, "__qualname__", "")    # as Python names it in a wrong-call TypeError
    if named_as is not None or run_path is not None:   # the file's own <op>_backward (check_file, grade_file)
        named_as = named_as if named_as is not None else run_path
        rerun = (run_path or named_as, exercise.backward_name)
    else:
        named_as, rerun = _where_it_runs(backward, source_file, function_name)
    parameters = _parameter_names(backward)
    backward = exercise.adapt(student_call(backward))
    student_errors = BaseException if catch_everything else Exception
    # in a notebook the kernel may hold other code than the student last ran under the name
    if function is not None and (reason := librarys_own(function, exercise)):
        return Report(exercise, source, [], refused=reason)
    stale, doubts = replaced_definitions(function, exercise) if function is not None else (None, [])
    if stale:
        return Report(exercise, source, [], load_error=stale)
    # in a session, the student's code calling npllama's forward or own backward -- through its
    # module or a name a cell imported it as -- is refused, as in check_file; other callers (the
    # sandbox's grading process, tests, scripts) call it knowingly
    with guard_library(exercise, function) if students_code(function, exercise) else contextlib.nullcontext():
        notes = list(doubts)
        try:
            gap = near_exact_gap(exercise, backward)
        except ForbiddenCall as error:
            return Report(exercise, source, [], refused=str(error))
        except student_errors:   # a crash or a wrong shape: the checks below report it properly
            gap = None
        if gap is not None:
            measuring = finite_difference_lines(read_source(source_file) if source_text is None else source_text)
            if measuring:
                return Report(exercise, source, [], refused=measured_reason(gap, measuring))
            gap_note = len(notes)
            notes.append(near_exact_note(gap))     # honest near-exact arithmetic: graded like any other
        params_list = case_params(exercise, n_random, seed)
        results = []
        for item in exercise.checks():
            todo = params_list if item.sampled else [None]
            result = CheckResult(item, "pass", 0, len(todo))
            for params in todo:
                result.cases_run += 1
                try:
                    exercise.run_check(item, backward, params)
                except NotImplementedError:
                    return Report(exercise, source, [], not_implemented=True)
                except ForbiddenCall as error:
                    return Report(exercise, source, [], refused=str(error))
                except GradingStopped as stopped:
                    result.status = "error"
                    result.finding = Finding("", str(stopped), case=_describe_params(exercise, params))
                    return Report(exercise, source, results + [result], notes=notes, stopped=str(stopped))
                except CaseUndecided as undecided:     # neither a pass nor a mistake: the other cases decide
                    result.undecided.append(undecided)
                    continue
                except CheckFailed as failed:
                    result.status, result.finding = "fail", failed.finding
                    if failed.case is not None:
                        result.failed_on = failed.case, failed.gradients
                    break
                except ForwardNotDeterministic as error:    # the exercise's fault: said so, with how to see it
                    result.status = "error"
                    result.finding = Finding("", str(error), hint=_forward_twice_hint(exercise, params),
                                             case=_describe_params(exercise, params),
                                             subject=forward_subject(exercise.forward_name))
                    break
                except student_errors as error:  # the student's code crashed: say where, in their file
                    result.status = "error"
                    result.finding = Finding("", describe_exception(error, source_file, named_as=named_as,
                                                                     decorator_files=decorators),
                                             hint=_crash_hint(error, exercise, params, source_file, function_name,
                                                              parameters, rerun),
                                             case=_describe_params(exercise, params))
                    break
            if result.status == "pass" and result.undecided and len(result.undecided) == result.cases_run:
                result.status = "undecided"
            results.append(result)
        report = Report(exercise, source, results, notes=notes)
        if gap is not None and report.ok:      # the note appended first, before the checks had run
            notes[gap_note] = near_exact_note(gap, passed=True)
        first = report.first_failure
        if first is not None and first.status == "fail" and _parameters_reordered(exercise, parameters):
            notes.append(_reordered_text(exercise, parameters))   # a crash says it in its hint
        if first is not None and first.status == "fail" and first.finding is not None:
            try:
                _name_the_mistake(exercise, backward, first.finding, params_list, first.failed_on)
            except (student_errors, GradingStopped):   # misbehaving on a probe: keep what the numbers showed
                pass
            if gap is not None and NEAR_EXACT_CAUSES in first.finding.hint:
                del notes[gap_note]         # the failure shown names the near miss's causes: said once
        return report


class _KeptOutput(CappedOutput):
    """sys.stdout while check_function runs the student's function in this process (`errors()`:
    sys.stderr, kept with it): what the function prints is kept (its first lines, the rest counted)
    and nothing of it is written while the checks run, as in the process `exercise check` runs a
    file in -- but what a debugger writes goes to `screen`: a breakpoint() in the function must
    still show its prompt and answers; and what is written outside the function (a warning of the
    checks' own arithmetic on its gradients, of the forward) goes where it went, not blamed on it.
    everything_kept: all of it is the student's, in or out of the function (a file being imported)."""

    def __init__(self, screen, error_screen):
        super().__init__(screen, limit=0)
        self.error_screen, self.everything_kept = error_screen, False

    def write(self, text) -> int:
        return self.written(text, self.stream)

    def written(self, text, screen) -> int:
        if _debugger_writing() or not (self.everything_kept or student_running()):
            screen.write(text)
            return len(text)
        return super().write(text)

    def errors(self) -> "_KeptErrors":
        return _KeptErrors(self)

    def shown(self) -> str:
        return shown_output(self.head, self.lines)


class _KeptErrors(io.TextIOBase):
    """sys.stderr beside a _KeptOutput: kept with the prints, in the order written; what is not the
    function's goes to the screen's stderr."""

    def __init__(self, kept: _KeptOutput):
        self.kept = kept

    def write(self, text) -> int:
        return self.kept.written(text, self.kept.error_screen)

    def flush(self) -> None:
        self.kept.error_screen.flush()

    @property
    def encoding(self):
        return self.kept.error_screen.encoding


def _debugger_writing() -> bool:
    """Whether a debugger built on bdb (pdb, IPython's, ipdb, pudb) is writing -- one of its methods
    is on the stack: its prompt, a listing, p's answer -- or steps through the code that writes."""
    bdb = sys.modules.get("bdb")
    if bdb is None:          # no debugger was ever imported
        return False
    if isinstance(getattr(sys.gettrace(), "__self__", None), bdb.Bdb):
        return True
    frame = sys._getframe(1)
    while frame is not None:
        if "self" in frame.f_code.co_varnames and isinstance(frame.f_locals.get("self"), bdb.Bdb):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _output_kept(keep: bool):
    """Within it, what is printed is kept in the _KeptOutput it gives (None, and printed as usual,
    unless keep)."""
    if not keep:
        yield None
        return
    kept = _KeptOutput(sys.stdout, sys.stderr)
    errors = kept.errors()
    with contextlib.redirect_stdout(kept), contextlib.redirect_stderr(errors), \
            _log_handlers_writing_to({id(kept.stream): kept, id(kept.error_screen): errors}):
        try:
            yield kept
        except BaseException:
            # a Ctrl-C stopping an endless loop leaves no report to show the prints in: shown as it stops
            if kept.shown():
                print(kept.shown(), file=kept.stream)
            raise


@contextlib.contextmanager
def _log_handlers_writing_to(streams: dict):
    """Within it, each logging handler writing to one of the screens (by id in `streams`: a
    logging.basicConfig() of an earlier cell binds the screen's stderr of then) writes to what
    stands for it."""
    logging = sys.modules.get("logging")      # never imported: no handler to move
    moved = []
    if logging is not None:
        loggers = [logging.getLogger()] + [logger for logger in list(logging.Logger.manager.loggerDict.values())
                                           if isinstance(logger, logging.Logger)]
        for handler in {id(h): h for logger in loggers for h in logger.handlers}.values():
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
                moved.append((handler, handler.setStream(streams[id(handler.stream)])))
    try:
        yield
    finally:
        for handler, stream in reversed(moved):
            handler.setStream(stream)


def assert_passes(op, backward, *, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0,
                  timeout: float | None = None) -> None:
    """For pytest -- a student's own test file, a course's CI: return quietly when every check of
    exercise `op` passes, else raise AssertionError carrying the whole report (the checks, what is
    wrong and the hint), which pytest shows as the failure.

        def test_rmsnorm_backward():
            assert_passes("rmsnorm", "rmsnorm_backward.py")

    backward: the path of your .py file, checked as `npllama exercise check` checks it (the import
    rule, then its code in a process of its own with the time limit `timeout`, default 120 s, and
    the default memory limit: sandbox.grade_file); or your function itself, checked in this
    process (check_function, no time limit)."""
    __tracebackhide__ = True     # pytest shows the student's test line, not this helper's
    if callable(backward):
        if timeout is not None:
            raise ValueError("timeout limits the process a file runs in; a function is checked in this process "
                             "without one: give the file's path, or no timeout")
        report = check_function(op, backward, n_random=n_random, seed=seed)
        if not report.ok:
            raise AssertionError(f"{report.summary()}\n\n{report.format()}")
        return
    from .sandbox import DEFAULT_TIMEOUT, grade_file

    path = path_argument(backward, "backward", "your function or the path of your .py file")
    graded = grade_file(op, path, n_random=n_random, seed=seed,
                        timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    if not graded.ok:
        summary = ": ".join(part for part in (graded.first_failure, graded.diagnosis) if part) or graded.status
        raise AssertionError("\n\n".join(text for text in (summary, graded.report) if text))


def _name_the_mistake(exercise, backward, finding: Finding, params_list, failed_on=None) -> None:
    """Add to what the failing case's numbers show (diagnose.py) the mistake the catalogue's probes
    name, if one matches on every probe (its words replace the numbers' own, unless it leaves the
    finding's gradient right on every probe: then they follow them; what the other gradients show
    stays, told of the gradients the mistake changes), and which simpler cases
    pass (catalogue.py, mistakes.py).  A teacher's exercise (with no catalogue, or one that names
    nothing here) has its own cases, params_list, as probes for a factor that is one of their
    scalar inputs (mistakes.name_scalar_factor).  failed_on: (the Case the gradient check failed
    on, the student's gradients there), where the mistake is tried too: its words are said as the
    finding's gradient's own only when they fit it there."""
    catalogue = CATALOGUES[exercise.op] if exercise.builtin else exercise.catalogue
    found = explain(catalogue, exercise, backward) if catalogue is not None else Explanation()
    if found.grad is None and not exercise.builtin:
        scalar = name_scalar_factor(exercise, backward, params_list)
        if scalar is not None and scalar.grad is not None:
            scalar.ladder, found = found.ladder, scalar
        elif scalar is not None:     # the input's one value is the factor the numbers show: both readings
            finding.hint += scalar.hint
    if found.grad is not None:
        # tried on the failing case (from the gradients its check computed) before anything is told of it
        fits = {} if not finding.grad or failed_on is None else \
            fits_on_case(found, *failed_on, [finding.grad, *finding.wrong_gradients])
        # what the other gradients show is then told of the named mistake's (diagnose.where_the_slip_is)
        finding.named_gradients = found.changes
        finding.named_fits_here = fits.get(finding.grad)
        # a gradient the mistake fits on every probe, wrong here but not by it: not "by the same mistake"
        finding.named_misfits = [g for g in finding.wrong_gradients if g in found.changes and fits.get(g) is False]
        if finding.grad and (finding.grad not in found.changes or finding.named_fits_here is False):
            # the mistake leaves finding.grad right on every probe, or does not give its numbers on
            # this case: what its own numbers show stays under them, and the mistake is said after it
            finding.named_mistake = found.message
            finding.hint = f"{finding.hint} -- for the mistake named: {found.hint}" if finding.hint else found.hint
        else:
            finding.message, finding.hint = found.message, found.hint
    if not found.ladder and not exercise.builtin and not getattr(catalogue, "ladder", None):
        # a teacher's exercise with no ladder of its own: its edge cases are one
        try:
            found.ladder = compare_ladder(EdgeCaseLadder(exercise), exercise, backward)
        except Exception:    # a case that cannot run here must not hide the checks' own findings
            found.ladder = ""
    finding.ladder = found.ladder


def load_function(op: str, path, catch_everything: bool = False, typed_as: str | None = None,
                  named_as: str | None = None) -> object:
    """Import the file at `path` (by path, not by name) and return its <op>_backward function
    (`op`: an exercise's name or an Exercise).  typed_as: the path as the student gave it (default
    `path`), for the check command a file written for another exercise is sent to.  named_as: the
    file as every reason it cannot be used names it (check_function's named_as); by default its name."""
    exercise = get_exercise(op)
    path = path_argument(path, "path", "a .py file")
    named = path.name if named_as is None else named_as
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise SubmissionError(f"{path} {what} (expected a .py file defining {exercise.backward_name})")
    name = f"npllama_submission_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        if path.suffix == ".ipynb":
            raise SubmissionError(exercise.from_notebook(path if typed_as is None else typed_as))
        raise SubmissionError(f"{named} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        where = f" at line {error.lineno}" if error.lineno else ""     # none for a NUL byte (Python 3.11)
        if error.text and error.text.strip():
            where += f" ({error.text.strip()[:160]})"
        raise SubmissionError(f"{named} has a syntax error{where}: {error.msg}") from None
    except ForbiddenCall as error:
        raise SubmissionError(f"importing {named} failed: {error}") from None
    except (BaseException if catch_everything else Exception) as error:
        raise SubmissionError(f"importing {named} failed: "
                              + describe_exception(error, str(path), "the file", named), raised=error) from None
    finally:
        sys.modules.pop(name, None)
    fn = getattr(module, exercise.backward_name, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == name)
        meant = _exercise_written_for(exercise, defined)
        raise SubmissionError(f"{named} defines no function named {exercise.backward_name}"
                              + (f" (it defines: {', '.join(defined)})" if defined else "")
                              + (f"; it is written for exercise {meant.op}: "
                                 f"{meant.check_command(path if typed_as is None else typed_as)}"
                                 if meant is not None else ""))
    return fn


# how close a name the file defines must be to the function asked for to be taken as it misspelled
# (attn_backward, attention_backwards: 0.84, 0.97; rms_backward for softmax_backward: 0.71)
MISSPELLED = 0.75


def _exercise_written_for(exercise: Exercise, defined: list[str]) -> Exercise | None:
    """The built-in exercise whose function a file lacking exercise's defines, or None -- also when
    it defines a near miss of exercise's own name: then another exercise's function beside it (an
    attention file's softmax_backward) is a helper of the misspelled one."""
    import difflib

    others = {other.backward_name: other for other in EXERCISES.values()}
    own_names = [name for name in defined if name not in others]
    if difflib.get_close_matches(exercise.backward_name, own_names, n=1, cutoff=MISSPELLED):
        return None
    return next((others[name] for name in defined if name in others), None)


def check_file(op: str, path, *, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0,
               allow_imports: bool = False, catch_everything: bool = False) -> Report:
    """Screen the file (screen.py's rule), load it and run the checks, all in this process.
    `npllama exercise check` does the same with the file's code in a child process of its own and
    the checks in its process (sandbox.grade_file).

    allow_imports: skip the import rule (for files you trust); the run-time guard stays on."""
    exercise = get_exercise(op)
    path = path_argument(path, "path", "a .py file")
    require_case_arguments(n_random, seed)
    if not allow_imports:
        refused = screen_file(exercise, path)
        if refused is not None:
            return refused
    # what the file prints as it is imported is shown with what its function prints, in one block,
    # as `exercise check` shows them
    with guard_library(exercise), _output_kept(True) as kept:
        kept.everything_kept = True
        try:
            fn = load_function(op, path, catch_everything=catch_everything, named_as=str(path))
        except SubmissionError as error:
            report = Report(exercise, str(path), [], load_error=str(error))
        else:
            kept.everything_kept = False
            report = check_function(op, fn, n_random=n_random, seed=seed, source=str(path), source_file=str(path),
                                    catch_everything=catch_everything, named_as=str(path),
                                    capture_output=False)      # kept here, with the import's
    report.output = kept.shown()
    return report


def screen_file(exercise: Exercise, path: Path, shown_as: str | None = None,
                source: str | None = None) -> Report | None:
    """The report of a file screen.py's rule refuses, or that cannot be read as text; None when
    it may run (a missing file is left to load_function to say).  source: its text, when the
    caller has read it already (sandbox.grade_file, which keeps it for the finite-difference rule)."""
    if not path.is_file():
        return None
    shown_as = shown_as or str(path)
    try:
        source = read_submission(path) if source is None else source
    except SubmissionError as error:
        return Report(exercise, shown_as, [], load_error=str(error))
    reasons = screen_source(source, exercise.helpers, str(path))
    return Report(exercise, shown_as, [], refused="; ".join(reasons[:3])) if reasons else None


def check_folder(op: str, folder, *, n_random: int = DEFAULT_RANDOM_CASES, seed: int = 0) -> list[Report]:
    """Every .py file in `folder` and its subfolders (gradebook.submissions_in), each checked on the same cases, in this process
    and without limits: for files you trust.  A class's folder: gradebook.grade_folder (sandboxed)."""
    return [check_file(op, f, n_random=n_random, seed=seed) for f in submissions_in(folder)]


def format_table(reports: list[Report], width: int = 90) -> str:
    rows = [("file", "passed", "first failure")]
    for r in reports:
        passed = "-" if r.load_error else f"{r.passed}/{r.total}"
        text = r.summary()
        if len(text) > width:
            text = text[:width - 3] + "..."
        rows.append((Path(r.source).name, passed, text))
    from ..text_width import ljust, width as columns

    widths = [max(columns(row[i]) for row in rows) for i in range(2)]
    lines = [f"{ljust(a, widths[0])}  {b:>{widths[1]}}  {c}" for a, b, c in rows]
    ok = sum(r.ok for r in reports)
    return "\n".join(lines + [f"{ok} of {len(reports)} submissions pass every check."])


# ----- helpers ------------------------------------------------------------------------------------

def require_case_arguments(n_random, seed) -> None:
    """ValueError naming n_random or seed unless each is an int >= 0 (case_params' arguments)."""
    for name, value in (("n_random", n_random), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def read_submission(path: Path) -> str:
    """The text of a submission file, at most MAX_SOURCE_BYTES of it; SubmissionError saying why it
    cannot be read (the grader reads it outside the limits the file's code runs under)."""
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise SubmissionError(f"{path.name} is {size / 2**20:.0f} MB, larger than a submission (at most "
                                  f"{MAX_SOURCE_BYTES // 2**20} MB are read)")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(f"{path.name} cannot be read as text: {error}") from None


def read_source(source_file: str | None) -> str:
    """The submission's source, to look for the shape of a finite difference ('' when unreadable,
    and when it is not a file -- a named pipe would never end -- or larger than MAX_SOURCE_BYTES)."""
    path = Path(source_file) if source_file else None
    try:
        return read_submission(path) if path is not None and path.is_file() else ""
    except SubmissionError:
        return ""


def describe_exception(error: BaseException, source_file: str | None, what: str = "your function",
                        named_as: str | None = None, decorator_files=()) -> str:
    """'your function raised E: message (line N of FILE: the line)', the line being the innermost
    of source_file's in the traceback, FILE named_as (default the file's name); or of
    decorator_files' (_decorator_files), named by their names, when the innermost is theirs."""
    text = f"{what} raised {type(error).__name__}: {error}".rstrip(": ")
    frames = _traceback_frames(error)
    if source_file:
        target = os.path.abspath(source_file)
        # and a decorator's own line, if it crashed before (or after) the function it wraps ran
        files = {target, *(os.path.abspath(file) for file in decorator_files)}
        mine = [f for f in frames if os.path.abspath(f.filename) in files]
        if mine:
            frame = mine[-1]
            in_target = os.path.abspath(frame.filename) == target
            named = named_as if named_as is not None and in_target else os.path.basename(frame.filename)
            line = (frame.line or "").strip()     # '' at a prompt, which keeps no lines to quote
            text += f" (line {frame.lineno} of {named}" + (f": {line})" if line else ")")
    return text


def _traceback_frames(error: BaseException) -> list:
    """Where the error was raised: its own traceback, or -- raised in the sandbox's other process
    (wire.remote_error) -- the frames that came back from there."""
    frames = getattr(error, "student_frames", None)
    return frames if frames is not None else traceback.extract_tb(error.__traceback__)


def _parameters_reordered(exercise: Exercise, parameters) -> bool:
    expected = [name.strip() for name in exercise.params.split(",")]
    return list(parameters) != expected and sorted(parameters) == sorted(expected)


def _reordered_text(exercise: Exercise, parameters) -> str:
    return (f"your function takes ({', '.join(parameters)}), but the checker calls "
            f"{exercise.backward_name}({exercise.params}): put the parameters in this order")


def _parameter_names(function) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _crash_hint(error: BaseException, exercise: Exercise, params, source_file: str | None,
                function_name: str, parameters=(), rerun: tuple[str | None, str | None] = (None, None)) -> str:
    """Where to look, from the kind of crash, the exercise and the failing case."""
    text = str(error)
    if _parameters_reordered(exercise, parameters):
        # (cache, dy): whatever then crashes (an unpacking, a shape), the order is the cause
        return _reordered_text(exercise, parameters)
    called = [f"{name}()" for name in (exercise.backward_name, function_name) if name]
    if isinstance(error, TypeError) and any(text.startswith(c) for c in called):
        return (f"the checker calls {exercise.backward_name}({exercise.params}): define it with exactly these "
                f"parameters, in this order")
    if isinstance(error, ValueError) and "values to unpack" in text:
        return _unpack_hint(exercise)
    if isinstance(error, ValueError) and _raised_in_einsum(error, text):
        return _einsum_hint(text)
    if isinstance(error, ValueError) and "broadcast" in text:
        return ("two arrays of different shapes met in an elementwise operation: a sum or mean over a row "
                "that dropped its axis (add keepdims=True), or an axis mixed up -- print the shapes")
    if isinstance(error, ValueError) and ("core dimension" in text or "not aligned" in text):
        hint = ("a matrix product whose inner sizes differ: an operand needs a transpose, or the operands are "
                "in the wrong order (weights are (out, in); a gradient has its input's shape) -- print the shapes")
        if _transposes_a_batch(error, exercise, params):
            hint += (". If the array before a .T has more than two axes, .T reverses every one of them "
                     "((B, T, n) -> (n, T, B)), not the last two: flatten the leading axes first, "
                     "a.reshape(-1, a.shape[-1]).T")
        return hint
    hint = _tuple_index_hint(error, source_file)
    if hint:
        return hint
    return _rerun_hint(exercise, params, *rerun)


COUNT_FROM_THE_BACK = ("count from the back -- a.shape[-1] is the last axis however many leading axes there are, "
                       "and a.reshape(-1, a.shape[-1]) gives the rows")


def _tuple_index_hint(error: BaseException, source_file: str | None) -> str:
    """For an IndexError 'tuple index out of range' on a line of the student's file that looks up a
    shape's axis from the front (x.shape[1]): count from the back; for one on any other tuple
    (cache[2]): print its length.  Python's message is the same for a shape and for any other
    tuple; Python 3.11+ keeps the columns of the lookup that raised, and the hint is about that one.
    Without them (3.10) the traceback names the line only: with several lookups on the line, all
    are named and none is blamed alone.  '' when there is nothing specific to say."""
    lookups = _index_lookups_on_failing_line(error, source_file)
    shapes = [text for text, container in lookups if container is None]
    if len(lookups) == 1 and not shapes:
        (text, container), = lookups
        # out of range, not "past the end": x.shape[-2] of a vector counts back past its start
        return (f"{text} is out of range: {container} holds fewer values in this case -- "
                f"print(len({container})) next to the index")
    if not shapes:
        return ""
    if len(lookups) == 1:
        return (f"{shapes[0]} counts axes from the front, and its array has fewer in this case (its inputs' "
                f"shapes are above): {COUNT_FROM_THE_BACK}")
    named = and_list([text for text, _ in lookups])
    if len(shapes) == len(lookups):
        return (f"{named} count axes from the front, and one of their arrays has fewer in this case (its "
                f"inputs' shapes are above): {COUNT_FROM_THE_BACK}")
    containers = list(dict.fromkeys(container for _, container in lookups if container is not None))
    return (f"one of {named} is out of range for its tuple, and the traceback cannot tell which (it names "
            f"the line, not the lookup): print {and_list([f'len({c})' for c in containers])} to see whether "
            f"{'it is' if len(containers) == 1 else 'one is'} shorter than its index needs; {and_list(shapes)} "
            f"{'counts' if len(shapes) == 1 else 'count'} axes from the front, and an array of this case may "
            f"have fewer (its inputs' shapes are above): {COUNT_FROM_THE_BACK}")


# a shape's axis by its position from the front: x.shape[1], self.w.shape[0], np.shape(x)[1]
SHAPE_INDEX = re.compile(r"[\w.]*\.shape\[\d+\]|(?:\w+\.)?shape\([^()]*\)\[\d+\]")


def _index_lookups_on_failing_line(error: BaseException, source_file: str | None) -> list[tuple[str, str | None]]:
    """The lookups by one index (cache[2], x.shape[1]) on the line of the student's file where an
    IndexError 'tuple index out of range' was raised, in the order Python evaluates them -- only
    the one that raised, where the traceback keeps its columns (none, if they point at no lookup):
    (text, container), container None for a shape lookup by a position from the front.  [] when
    the error came from anywhere else (indexing a tuple is no call: the line raising it is the
    innermost frame)."""
    if not (isinstance(error, IndexError) and str(error) == "tuple index out of range" and source_file):
        return []
    frames = _traceback_frames(error)
    if not frames or os.path.abspath(frames[-1].filename) != os.path.abspath(source_file):
        return []
    line = frames[-1].line or ""
    try:
        source = Path(source_file).read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        # the file is gone or changed since it ran: the shape lookups the line's text shows
        return [(text, None) for text in dict.fromkeys(SHAPE_INDEX.findall(line))]
    lineno = frames[-1].lineno
    found = sorted((node for node in ast.walk(tree)
                    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                    and node.lineno == lineno and _may_index_a_tuple(node)),    # a lookup's line is its first
                   key=lambda node: (node.end_lineno, node.end_col_offset))
    if _has_columns(frames[-1]):
        # Python 3.11+ keeps where on the line the error was raised: the lookup spanning exactly
        # there, or none when that is something else (a call that raised it in C)
        found = [node for node in found if _spans(node, frames[-1])]
    lookups = {}
    for node in found:
        text, container = (" ".join((ast.get_source_segment(source, part) or "").split())
                           for part in (node, node.value))    # one line, even if written over several
        if text:
            lookups.setdefault(text, None if _is_shape_from_the_front(node) else container)
    return list(lookups.items())


def _has_columns(frame) -> bool:
    """Whether a traceback frame keeps where on its line it raised (Python 3.11+; not 3.10, nor a
    malformed position the sandbox sent back)."""
    return getattr(frame, "colno", None) is not None and getattr(frame, "end_colno", None) is not None


def _spans(node: ast.AST, frame) -> bool:
    """Whether `node` is the expression a traceback frame points at (both count a column in the
    line's UTF-8 bytes)."""
    return ((node.lineno, node.end_lineno, node.col_offset, node.end_col_offset)
            == (frame.lineno, frame.end_lineno, frame.colno, frame.end_colno))


def _is_shape_from_the_front(node: ast.Subscript) -> bool:
    """x.shape[1], cache[0].shape[1], np.shape(x)[1]: an axis by its position from the front."""
    shape = node.value
    named_shape = ((isinstance(shape, ast.Attribute) and shape.attr == "shape")
                   or (isinstance(shape, ast.Call) and getattr(shape.func, "attr", getattr(shape.func, "id", None))
                       == "shape"))
    index = node.slice
    return named_shape and isinstance(index, ast.Constant) and type(index.value) is int and index.value >= 0


def _may_index_a_tuple(node: ast.Subscript) -> bool:
    """cache[2], x.shape[i]: one index that is no slice, no tuple of indices and no string key --
    the lookups that raise 'tuple index out of range' on a tuple."""
    index = node.slice
    return not (isinstance(index, (ast.Slice, ast.Tuple))
                or (isinstance(index, ast.Constant) and not isinstance(index.value, int)))


def _raised_in_einsum(error: BaseException, text: str) -> bool:
    """np.einsum's errors speak of broadcasting too, but the fix is in the subscripts."""
    frames = _traceback_frames(error)
    return (any(os.path.basename(f.filename) == "einsumfunc.py" for f in frames)
            or "einstein sum" in text or "remapped shapes" in text)


def _transposes_a_batch(error: BaseException, exercise: Exercise, params) -> bool:
    """Whether the line that raised uses .T while this case has an input of more than two axes:
    dy.T @ x with x (B, T, in), the weight gradient of a linear layer written for matrices."""
    frames = _traceback_frames(error)
    if not frames or not re.search(r"\.T\b", frames[-1].line or ""):
        return False
    try:
        inputs = exercise.case(params).inputs
    except Exception:      # a check without a case of its own (params None): nothing to say
        return False
    return any(np.ndim(value) > 2 for value in inputs if isinstance(value, np.ndarray))


def _einsum_hint(text: str) -> str:
    """What np.einsum refused, from its message: it names three different slips.  Each is told only
    from NumPy's own words (np.einsum's in C, or optimize=True's in einsumfunc.py); other words get
    the general hint, which claims no one cause."""
    if text.startswith("output has more dimensions than subscripts") and "no '...' ellipsis" in text:
        return ("the axes '...' stands for are not summed by np.einsum: with '...' in the operands the output "
                "must keep it too. To sum over the leading axes, flatten them first (a.reshape(-1, "
                "a.shape[-1])) and give them a letter ('no,ni->oi'), or sum the result yourself")
    if (text.startswith("operand has more dimensions than subscripts") or "too many subscripts for operand" in text
            or "does not contain the correct number of indices for operand" in text):
        return ("an einsum operand has another number of axes than its subscripts have letters: one letter per "
                "axis, and '...' for the leading axes so that any number of them fits (this case's shapes are "
                "above)")
    return ("an einsum whose subscripts do not fit its operands: each letter must name axes of the same "
            "size in every operand -- print the operands' shapes next to the subscripts")


def _unpack_hint(exercise: Exercise) -> str:
    """What the cache holds, for a student who unpacked it into the wrong number of names."""
    try:
        _, cache = exercise.case(exercise.edge_cases[0]).run_forward()
        cache = exercise.students_cache(cache)
    except Exception:   # describing must never hide the real error
        return "the cache holds other values than your code unpacks: print(type(cache)) to see it"
    if hasattr(cache, "_fields"):
        return (f"the cache is a {type(cache).__name__} of {len(cache._fields)} fields: "
                f"{', '.join(cache._fields)} -- unpack exactly these, in this order, or read them by name "
                f"(cache.{cache._fields[0]})")
    if isinstance(cache, tuple):
        return f"the cache is a tuple of {len(cache)} values (see the docstring): unpack exactly {len(cache)} names"
    return (f"the cache is one {type(cache).__name__}, not a tuple (see the docstring): use it as it is, "
            f"without unpacking")


def _rerun_hint(exercise: Exercise, params, run_path: str | None, name: str | None) -> str:
    """Three lines that rebuild the failing case and call the student's function, to run by hand:
    runpy.run_path(run_path)[name] (under python -m pdb to stop where it fails), or, for a function
    no file gives back by name (a notebook cell's, a method, a partial), `name` -- else the function
    given to check_function -- called in the session that checked it."""
    case = exercise.edge_cases[0] if params is None else params
    importing, expression = exercise.loader(verify=False)    # the teacher's own reference may be what failed
    cache = "*cache" if exercise.op == "model" else "cache"
    rebuild = (f"ex = {expression}; case = ex.case({case!r}); out, cache = case.run_forward(); "
               f"{exercise.upstream} = case.dout_for(out)\n")
    if run_path is None:
        which = "" if name else " (your_function: the function you gave check_function)"
        return ("rebuild this case and call your function on it, in the session you checked it from (%debug "
                f"in Jupyter, or import pdb; pdb.pm() at a prompt, then shows where it fails){which}:\n"
                f"{importing}\n{rebuild}{name or 'your_function'}({exercise.upstream}, {cache})")
    return ("rebuild this case and call your function by hand (paste into python, or save as a file and "
            "run it with python -m pdb to stop where it fails):\n"
            f"{importing}; import runpy\n{rebuild}"
            f"runpy.run_path({run_path!r})[{name!r}]({exercise.upstream}, {cache})")


def _forward_twice_hint(exercise: Exercise, params) -> str:
    """Lines that rebuild the case and run the exercise's forward twice, printing how far apart
    the two outputs are (0 for a deterministic forward)."""
    case = exercise.edge_cases[0] if params is None else params
    importing, expression = exercise.loader(verify=False)
    return ("run the forward twice on this case (paste into python): the largest difference between the two "
            "outputs is not 0 -- seed any randomness inside it from its inputs, or draw it in build:\n"
            f"{importing}; import numpy as np\n"
            f"ex = {expression}; case = ex.case({case!r})\n"
            "print(np.max(np.abs(np.asarray(case.run_forward()[0]) - np.asarray(case.run_forward()[0]))))")


def _function_run_by(backward):
    """The Python function calling `backward` runs: itself, a method's or a partial's function, a
    callable object's __call__; None when there is none (a NumPy ufunc, a builtin).  Through a
    decorator made with functools.wraps (a function, or an object given functools.update_wrapper),
    the function it wraps: the student's code, in the student's file, which a crash's line and the
    rerun hint must name, not the decorator's."""
    return _own_code(_wrapping_layers(backward)[-1])


def _decorator_files(backward) -> list[str]:
    """The files of the decorators' own code between a call of `backward` and the function they
    wrap (_function_run_by): where a decorator that converts or checks arguments crashes itself."""
    codes = (getattr(_own_code(layer), "__code__", None) for layer in _wrapping_layers(backward)[:-1])
    return [code.co_filename for code in codes if code is not None]


def _wrapping_layers(backward) -> list:
    """What a call of `backward` goes through, outermost first: what it calls (_called), then each
    __wrapped__ in turn (functools.wraps, update_wrapper), the last the Python function they wrap.
    Only the first when there is no such chain, or it loops or ends in no Python function (a NumPy
    ufunc): the outermost is all there is."""
    layers = [_called(backward)]
    while hasattr(layers[-1], "__wrapped__"):
        layers.append(layers[-1].__wrapped__)
        if any(layers[-1] is layer for layer in layers[:-1]):
            return layers[:1]
    return layers if inspect.isfunction(layers[-1]) else layers[:1]


def _own_code(layer):
    """The Python function a call of `layer` itself runs (no partial, no method, no __wrapped__
    followed): layer when it is one, else its class's __call__; None when neither is (a builtin)."""
    if inspect.isfunction(layer):
        return layer
    call = getattr(type(layer), "__call__", None)
    return call if inspect.isfunction(call) else None


def _called(backward):
    """What a call of `backward` calls: a partial's function, a bound method's function."""
    while isinstance(backward, functools.partial):
        backward = backward.func
    return backward.__func__ if inspect.ismethod(backward) else backward


def _what_it_is(backward, function) -> str:
    """What a report calls the function checked: its name; a partial or a callable object has none
    (its repr, '<Grader object at 0x...>', says nothing a student recognises)."""
    name = getattr(backward, "__name__", None)
    if isinstance(name, str):
        return name
    if isinstance(backward, functools.partial) and function is not None:
        return f"a partial of {function.__name__}"
    return f"a {type(backward).__name__} object"


# the file Python gives the code of a Jupyter or IPython cell (/tmp/ipykernel_1234/567.py, <ipython-input-3-..>)
# or of what was typed at Python's prompt (<stdin>, 3.13: <python-input-0>)
TYPED_IN_A_SESSION = re.compile(r"(^|[/\\])ipykernel_\d+[/\\]\d+\.py$"
                                r"|^<(stdin|python-input-\d+|ipython-input-[\w-]+)>$")


def _where_it_runs(backward, source_file: str | None, function_name: str) -> tuple[str | None, tuple]:
    """For a function check_function was given itself: the file of its code as a crash's line names it,
    and (the path, the name) to rerun it by with runpy -- (None, its name or None) to call it in the session."""
    name = _defined_name(function_name)
    # a function, decorated or not (a callable object's name, Grader.__call__, is no identifier);
    # a method or a partial is not what its file's name for its function calls
    is_function = not (inspect.ismethod(backward) or isinstance(backward, functools.partial))
    own_name = name if is_function and name.isidentifier() else None
    if source_file is None:
        return None, (None, own_name)
    if os.path.isfile(source_file):
        here = os.path.relpath(source_file)
        path = here if not here.startswith(os.pardir) else os.path.abspath(source_file)
        top_level = own_name is not None and own_name == function_name      # what run_path's namespace holds
        return path, (path, own_name) if top_level else (None, own_name)
    if TYPED_IN_A_SESSION.search(source_file):
        # a cell's lines are counted as Jupyter's own tracebacks count them
        return f"the cell defining {name}", (None, own_name)
    return source_file, (None, own_name)     # exec'd text, a file deleted since: as Python's traceback names it


def _defined_name(qualname: str) -> str:
    """A function's name as its cell defines it (inner, not outer.<locals>.inner; Grader.backward); a
    lambda has none."""
    name = qualname.rsplit("<locals>.", 1)[-1]
    return "the lambda" if "<lambda>" in name else name


def _describe_params(exercise: Exercise, params) -> str:
    if params is None:
        return "a fixed example"
    try:
        return exercise.case(params).describe()
    except Exception:  # describing must never hide the real error
        return str(params)
