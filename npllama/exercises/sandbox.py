"""Grade one submission with its code in a process of its own and the checks in this one, so that
nothing the submission does can stop the grading or change its grade.

    graded = grade_file("rmsnorm", "alice.py", timeout=60, memory_mb=1024)
    graded.ok, graded.status, graded.text

The student's file is screened here (screen.py: the static rule) and then loaded in a child
(`_child`, started with `python -c`), which limits its own memory (RLIMIT_AS: the address space
it has after its imports, plus `memory_mb`) and CPU time (RLIMIT_CPU), and from then on only
*serves calls*: it reads a call of the student's function, makes it with the run-time guard on
(screen.guard_library), and answers with what came back -- or with the exception it raised,
SystemExit and KeyboardInterrupt included (under the grader's NumPy error state, which each call
carries).  The checks, the finite-difference rule, the diagnosis
and the report are computed in the process that called grade_file (runner.check_function, given a
stand-in for the student's function), which the submission's code never runs in: patching NumPy,
the runner or the report in the child changes nothing here, and there is no report for the child
to write.  The grader's side trusts nothing the child sends: its answers are read as wire.py's
frames (JSON and raw numeric arrays, never unpickled, with a size limit: a student returning a
10 GB array fails a check instead of filling the grader's memory); the calls the grader sends are
pickled, since the child trusts its parent.

A teacher's exercise (teacher.py) is given to the child as its file, which the child imports under
the module name the grader gave it: the caches sent in the calls are of that file's types.

Why here and not in a second, trusted child: the checks of one file take a fraction of a second
(the child's imports take about one), so a class graded two files at a time from two threads
(gradebook.py) loses little to sharing one interpreter, while each file costs one process as
before, a Ctrl-C needs only to kill the children (a grader waiting on a killed child stops at
once), and the grade never crosses a process boundary at all.

The stand-in (`_Submission.function`) gives the checks what they looked at when the function ran
in their own process: the returned structure (wire.py), the arrays with their dtypes, shapes and
NaNs; an exception as its class name (deriving from the same builtin exception), message and
traceback frames, so the crash diagnosis names the student's line; the function's name and
parameter names; and any array of dout or the cache the function changed in place, written back
into the grader's own (so "changed the cache in place" is still said).  The wall-clock `timeout`
covers the whole grading; at it, or when the child dies (os._exit, a segfault, the memory or CPU
limit), its whole process group is killed and the checks stop (runner.GradingStopped): the row
says timeout or crashed, and the checks passed before it are kept.

What the submission prints (print, warnings) goes to a file, at most OUTPUT_LIMIT characters of
it: a print in an endless loop must not fill the disk or the grader's memory.  Its first lines
come back at the end, and `check` of one file shows them (`Graded.output`): a hint may well have
said "print the shapes".

Limits: the child runs as the same user as the grader.  It cannot change the grade through
Python, but a submission allowed to import anything (allow_imports) could still reach other
processes of that user as any program could (signals, /proc/<pid>/mem where the kernel allows a
same-user process to write another's memory); only an operating-system sandbox (another user, a
container, seccomp) closes that, and the screen keeps refusing the imports it would need.  Not
transported: a list or dict of the cache changed in place (its arrays are), and what an object of
the student's own class would do as an array (its __array__): it is described by its class name.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import inspect
import io
import math
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import wire
from .entries import named_leaves

DEFAULT_TIMEOUT = 120.0     # seconds of wall clock per submission
DEFAULT_MEMORY_MB = 1024    # address space a submission may add to the child's own
OUTPUT_TAIL = 400           # characters of the child's own output kept to explain a crash
OUTPUT_LIMIT = 64 * 1024    # characters of the submission's output written at all; the rest is counted
OUTPUT_SHOWN = 20           # lines of it `check` of one file shows
_POLL_MAX_MS = 2**31 - 1     # the longest wait poll() takes (24.8 days)
NOT_A_REPLY = "the process running it answered with something that is not a reply"
STUCK_SIGNAL = getattr(signal, "SIGUSR1", None)   # asks the child where it is (faulthandler); not on Windows
STUCK_WAIT = 1.0            # seconds the grader waits for that answer before killing the child anyway
STUCK_READ = 64 * 1024      # bytes of the child's output read for it (a deep stack is a few KB)
# The child's program.  Not `python -m npllama.exercises.sandbox`: the package imports this module
# first, and runpy's warning about running it a second time would be a crash's "last output".
CHILD = "import sys; from npllama.exercises.sandbox import _child; sys.exit(_child(sys.argv[1:]))"

_running: set = set()       # the children grading now (a class is graded from two threads)
_running_lock = threading.Lock()


@dataclasses.dataclass
class Graded:
    """One submission's result, as the gradebook shows it."""

    file: str
    status: str                  # "pass", "fail", "undecided" (a check could decide no case, nothing failed),
                                 # "refused", "not implemented", "unusable", "timeout", "crashed"
    passed: int
    total: int
    first_failure: str           # the first failing check's name ('' when none); what stopped it before any check
    diagnosis: str               # what is wrong, one line ('' when it passes)
    seconds: float
    text: str = ""               # the full report a student reads
    exercise: str = ""           # what it was graded on: the exercise, the cases' seed, and how many cases
                                 # each sampled check ran (runner.cases_per_check: the edge cases and --cases random ones)
    seed: int = 0
    cases: int = 0
    output: str = ""             # what the submission printed: its first OUTPUT_SHOWN lines, and how many more

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def report(self) -> str:
        """All a student reads about the file: what it printed, then the report -- as `check` of one
        file shows it and the gradebook's JSON keeps it."""
        return with_output(self.output, self.text)

    def row(self) -> dict:
        """One gradebook row.  passed and total are numbers (a spreadsheet reads "2/4" as a date);
        checks_passed keeps the "2/4" text for readers of older gradebooks."""
        return {"file": self.file, "exercise": self.exercise, "status": self.status, "passed": self.passed,
                "total": self.total, "checks_passed": f"{self.passed}/{self.total}",
                "first_failure": self.first_failure, "diagnosis": self.diagnosis,
                "seconds": round(self.seconds, 2), "seed": self.seed, "cases": self.cases}


def grade_file(op: str, path, *, n_random: int = 8, seed: int = 0, timeout: float = DEFAULT_TIMEOUT,
               memory_mb: int = DEFAULT_MEMORY_MB, allow_imports: bool = False,
               named_as: str | None = None) -> Graded:
    """Check `path` -- its function run in a child process with a time and memory limit, the checks
    run here -- and never raise for the file's sake.  `op`: an exercise's name, or an Exercise
    loaded from a teacher's file (teacher.load_exercises), which the child loads too.  `named_as`:
    the file as the gradebook names it -- its `file`, and the file of a line where it crashed or a
    stopped child was stuck (grade_folder: its path relative to the class folder); when None, the
    file is its name and those lines name `path` as given."""
    from .definitions import get_exercise
    from .runner import (GradingStopped, Report, require_case_arguments, read_source, cases_per_check, check_function,
                         screen_file)

    from .teacher import verify_reference

    exercise = get_exercise(op)
    if not exercise.builtin and not exercise.exercise_file:
        raise ValueError(f"op must be a built-in exercise's name or an Exercise loaded from its file with "
                         f"load_exercises (the process the submission runs in loads that file too), got "
                         f"{type(exercise).__name__} {exercise.op!r} defined in {type(exercise).__module__}")
    _check_limits(timeout, memory_mb)
    require_case_arguments(n_random, seed)
    if not exercise.builtin:     # a reference that fails its checks would fail the student for it
        verify_reference(exercise, n_random, seed)
    path = Path(path)
    if named_as is not None and not isinstance(named_as, str):
        raise TypeError(f"named_as must be a str (the file as the gradebook names it) or None, got "
                        f"{type(named_as).__name__}")
    shown_as = readable_name(str(path))
    # where a crash or a stop was: as the gradebook names the file, else as it was typed
    lines_name = shown_as if named_as is None else named_as
    named_as = readable_name(path.name) if named_as is None else named_as
    graded_on = dict(exercise=exercise.op, seed=seed, cases=cases_per_check(exercise, n_random, seed))
    start = time.perf_counter()
    source_text = read_source(str(path))      # before any of it runs: the finite-difference rule reads it
    # screened as read ('' is an unreadable file, or an empty one: read again, to say why)
    report = None if allow_imports else screen_file(exercise, path, shown_as, source=source_text or None)
    if report is not None:
        return _graded(named_as, report, time.perf_counter() - start, **graded_on)
    with tempfile.TemporaryDirectory(prefix="npllama-grade-") as scratch, \
            _Submission(exercise, path.resolve(), Path(scratch), timeout, memory_mb, str(path),
                        lines_name) as submission:
        stage = "while loading the file"      # where a stop before the first check happened, for the gradebook
        try:
            function, load_error = submission.start()
            if load_error is not None:
                report = Report(exercise, shown_as, [], load_error=load_error)
                graded_on["output"] = submission.printed_at_load
            else:
                stage = "in its first call, before any check"     # check_function probes the function once first
                report = check_function(exercise, function, n_random=n_random, seed=seed, source=shown_as,
                                        source_file=str(path.resolve()), source_text=source_text,
                                        named_as=lines_name, run_path=str(path),
                                        capture_output=False)    # the child keeps what it prints
                graded_on["output"] = submission.output()
        except GradingStopped:     # before the first check: nothing graded
            report = None
            graded_on["output"] = submission.output()    # but what it printed before it stopped is shown
    seconds = time.perf_counter() - start
    if report is not None and report.stopped is None:
        return _graded(named_as, report, seconds, **graded_on)
    name, why = named_as, submission.why
    if report is None:     # no check to name: say what stopped it, and where
        stopped = {"timeout": "timed out", "crashed": "crashed"}.get(submission.ended, submission.ended)
        where = f" at {submission.stuck_at}" if submission.stuck_at else ""
        return Graded(name, submission.ended, 0, len(exercise.checks()), f"{stopped}{where} {stage}", why, seconds,
                      f"{name}: {why}", **graded_on)
    return _graded_after_stop(named_as, report, seconds, submission.ended, why, **graded_on)


def readable_name(name: str) -> str:
    """A file name as the gradebook writes it: bytes that are not UTF-8 (a Latin-1 name from an old
    zip tool, j\\xf3zef.py) spelled as escapes, which a UTF-8 CSV can hold and a reader can tell apart."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _check_limits(timeout, memory_mb) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64 (megabytes), got {memory_mb!r}")


def _child_env() -> dict:
    env = dict(os.environ)
    # the child imports the same npllama as this process, wherever it was imported from
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"       # tiny arrays: one BLAS thread per grader, two graders at a time
    return env


def running_children() -> list:
    """The sandbox processes grading now (from any thread)."""
    with _running_lock:
        return list(_running)


def stop_running() -> None:
    """Kill every sandbox grading now, with whatever it started: a Ctrl-C must not wait out a
    submission's timeout.  Their grade_file calls return as for a crash."""
    for child in running_children():
        _kill_group(child)


def _kill_group(child) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_tail(path: Path) -> str:
    """The end of the child's output file, without reading all of it (output that went around the
    cap -- C code writing to the file descriptor -- can make it any size)."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - OUTPUT_TAIL))
        return f.read(OUTPUT_TAIL).decode(errors="replace").strip()


def _printed_before_the_dump(path: Path, dump_from: int | None) -> str:
    """What a child stopped for time printed, as shown_output shows it: its output file up to the
    stack dump the grader asked for (the child flushes each print, so a kill loses none of it)."""
    with open(path, "rb") as f:
        printed = f.read(OUTPUT_LIMIT * 4 if dump_from is None else min(dump_from, OUTPUT_LIMIT * 4))
    text = printed.decode(errors="replace")
    # the child wrote at most OUTPUT_LIMIT characters of it: a file that full counts a part only
    return shown_output(text, text.count("\n") + (not text.endswith("\n") and bool(text)),
                         at_least=len(text) >= OUTPUT_LIMIT)


def _shown_in_reply(header: dict) -> str:
    """What a child's reply says it printed (its first lines, "head", and how many, "lines"), as
    shown_output shows it: the child's reply is not trusted to be short, so the head is cut first."""
    return shown_output(str(header.get("head", ""))[:OUTPUT_SHOWN * 400], header.get("lines", 0))


def shown_output(head, n_lines, at_least: bool = False) -> str:
    """The first OUTPUT_SHOWN lines of what the submission printed (each cut to 200 characters),
    under a line that says how many it printed ('' when it printed nothing); at_least: n_lines
    counts only the part of it that was kept."""
    shown = [line if len(line) <= 200 else line[:197] + "..." for line in str(head).splitlines()[:OUTPUT_SHOWN]]
    if not shown:
        return ""
    n_lines = max(n_lines if isinstance(n_lines, int) else 0, len(shown))
    title = (f"your code printed {'at least ' if at_least else ''}{n_lines} line{'s' if n_lines != 1 else ''}"
             + (f" (the first {len(shown)}):" if n_lines > len(shown) else ":"))
    return "\n".join([title] + ["  | " + line for line in shown])


def with_output(output: str, report: str) -> str:
    """What a student reads of a check: what their code printed (shown_output), then the report --
    for a file graded here (Graded.report) and a function checked in the student's own process
    (runner.Report.format) alike."""
    return "\n\n".join(part for part in (output, report) if part)


def out_of_memory(memory_mb: int, what: str) -> str:
    """Why a submission stopped at the memory limit: the limit, the flag that sets it, and `what`
    (the allocation that failed, and where)."""
    return (f"ran out of its memory limit of {memory_mb} MB (--memory-mb {memory_mb}; memory_mb= from Python: "
            f"raise it if the exercise needs more): {what}")


_NUMPY_ALLOCATION = re.compile(r"Unable to allocate (\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB|PiB|EiB) for an array")
_RAISED_ON_PURPOSE = re.compile(r"raise\s+(?:builtins\.)?MemoryError\b")


def _memory_limit_reached(error: BaseException) -> bool:
    """Whether a MemoryError the submission's code raised is its memory limit's: not when its own
    line raises one (`raise MemoryError` in a wrong answer), nor when NumPy was asked for more than
    this machine has (an absurd shape, refused whatever the limit)."""
    frames = getattr(error, "student_frames", None) or []
    if frames and _RAISED_ON_PURPOSE.match((frames[-1].line or "").strip()):
        return False
    asked = _NUMPY_ALLOCATION.search(str(error))
    if asked:
        units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        size = float(asked.group(1)) * 1024 ** units.index(asked.group(2))
        try:
            machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):    # no sysconf (Windows): no way to tell
            machine = None
        if machine and size > machine:
            return False
    return True


def _describe_exit(code, memory_mb, tail) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        if -code == signal.SIGXCPU:
            return "used up its CPU time: an endless loop, or far too slow"
        why = f"the process crashed with {name}"
        if -code == signal.SIGSEGV:
            why += " (a segmentation fault: C code reading memory it does not own)"
        return why + (f"; last output: {tail[-160:]}" if tail else "")
    if "MemoryError" in tail:
        return out_of_memory(memory_mb, "an array far too large?")
    return (f"the process ended (exit status {code}) before reporting: os._exit or a crash in C code"
            + (f"; last output: {tail[-160:]}" if tail else ""))


def _graded(named_as: str, report, seconds: float, **graded_on) -> Graded:
    if report.refused:
        status = "refused"
    elif report.load_error:
        status = "unusable"
    elif report.not_implemented:
        status = "not implemented"
    else:
        status = "pass" if report.ok else "undecided" if report.only_undecided else "fail"
    first = report.first_failure
    diagnosis = "" if status == "pass" else (first.diagnosis if first is not None else report.summary())
    return Graded(named_as, status, report.passed, report.total, first.check.name if first else "",
                  diagnosis, seconds, report.format(), **graded_on)


def _graded_after_stop(named_as: str, report, seconds: float, ended: str, why: str, **graded_on) -> Graded:
    """The row of a submission stopped (timeout, crash) after some checks ran: its status is the
    stop.  Where an earlier check had failed, first_failure names that check, so the diagnosis is
    that check's, then the stop's ('gradient: dx is ...; then stopped after 3 s ...'): a teacher's
    table must not pair one check's name with another's reason."""
    graded = _graded(named_as, report, seconds, **graded_on)
    diagnosis = f"{report.first_failure.diagnosis}; then {why}" if report.failed_before_the_stop else why
    return dataclasses.replace(graded, status=ended, diagnosis=diagnosis)


# ----- the grader's side of the child -------------------------------------------------------------

class _Submission:
    """The child running one submission: started, asked for calls of the student's function, and
    killed with all it started when the grading ends.  After a stop, `ended` is "timeout" or
    "crashed" and `why` says what happened."""

    def __init__(self, exercise, path: Path, scratch: Path, timeout: float, memory_mb: int, typed_as: str,
                 named_as: str):
        self.exercise, self.path, self.scratch, self.typed_as = exercise, path, scratch, typed_as
        self.named_as = named_as              # the file as a line of it is named: where it was stuck, crashed
        self.timeout, self.memory_mb = timeout, memory_mb
        self.deadline = time.monotonic() + timeout
        self.ended: str | None = None
        self.why = ""
        self._dump_from: int | None = None    # where the stack dump asked of a stuck child starts in its output
        self.stuck_at = ""                    # "line 3 of loop.py": where a child stopped for time was, if known
        self.printed_at_load = ""             # what a file that cannot be loaded printed first (shown_output)

    def __enter__(self):
        self.output_path = self.scratch / "output.txt"
        replies, reply_end = os.pipe()
        # --typed-as=PATH in one word: a path typed as '-rms.py' would otherwise be read as an option
        argv = [sys.executable, "-c", CHILD, self.exercise.op, str(self.path), f"--typed-as={self.typed_as}",
                f"--named-as={self.named_as}",
                "--reply-fd", str(reply_end),
                "--memory-mb", str(self.memory_mb), "--cpu-seconds", str(int(self.timeout) + 1)]
        if self.exercise.exercise_file:     # a teacher's exercise: the child imports the same file
            argv += ["--exercise-file", self.exercise.exercise_file]
        try:
            with open(self.output_path, "wb") as output:
                self.child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                              cwd=self.scratch, start_new_session=True, env=_child_env(),
                                              pass_fds=(reply_end,))
        except BaseException:
            os.close(replies)
            raise
        finally:
            os.close(reply_end)     # the child's copy is the only one: its end is the pipe's end
        with _running_lock:
            _running.add(self.child)
        self.replies, self.requests = replies, self.child.stdin.fileno()
        os.set_blocking(self.replies, False)
        os.set_blocking(self.requests, False)
        return self

    def __exit__(self, *exc_info):
        _kill_group(self.child)     # anything the submission started must not outlive it
        self.child.wait()
        with _running_lock:
            _running.discard(self.child)
        self.child.stdin.close()
        os.close(self.replies)

    def start(self):
        """(the stand-in for the student's function, None) once the child has loaded the file, or
        (None, why the file cannot be used)."""
        # the first reply is the child's own, sent before any of the submission's code runs (which
        # could write to the reply pipe too): only there can it stop the grading of every file
        header, _ = self._ask(None)
        if header.get("kind") == "exercise_error":     # no submission would fare better: stop the grading
            from .teacher import ExerciseFileError

            raise ExerciseFileError(f"{Path(self.exercise.exercise_file).name} cannot be loaded in the process a "
                                    f"submission runs in, whose current folder is a scratch one (read a data file by "
                                    f"a path relative to __file__): {str(header.get('text', ''))[:wire.MAX_TEXT]}")
        if header.get("kind") != "exercise_loaded":
            self._stop("crashed", NOT_A_REPLY)
        header, _ = self._ask(None)
        if header.get("kind") == "load_error":
            if isinstance(header.get("raised"), dict):
                try:
                    raised = wire.remote_error(header["raised"])
                except wire.MALFORMED:
                    self._stop("crashed", NOT_A_REPLY)
                self._stop_at_memory_limit(raised, "the file")
            self.printed_at_load = _shown_in_reply(header)
            return None, str(header.get("text", ""))[:wire.MAX_TEXT]
        if header.get("kind") != "ready":
            self._stop("crashed", NOT_A_REPLY)
        return self.function(header), None

    def function(self, ready: dict):
        """The stand-in the checks call: it sends the call to the child and returns, or raises,
        what the student's function did there."""
        def served(*args, **kwargs):
            return self.call(args, kwargs)

        served.__name__ = str(ready.get("name") or "")[:200]
        served.__qualname__ = str(ready.get("qualname") or "")[:200]
        served.__signature__ = _signature(ready.get("parameters"))
        return served

    def call(self, args: tuple, kwargs: dict):
        from .checks import RETURN_VALUE, CheckFailed
        from .diagnose import Finding
        from .screen import ForbiddenCall

        leaves = array_leaves((args, kwargs))
        read_only = [i for i, a in enumerate(leaves) if not a.flags.writeable]
        # NumPy's error state goes along: a check that judges values only silences the warnings
        header, arrays = self._ask(pickle.dumps(("call", args, kwargs, read_only, np.geterr())))
        try:
            _write_back(leaves, header.get("changed", []), arrays)
            kind = header.get("kind")
            if kind == "return":
                return wire.rebuild(header.get("value"), arrays)
            if kind == "raise" and header.get("forbidden"):
                error = ForbiddenCall(str(header.get("text", ""))[:wire.MAX_TEXT])
            elif kind == "raise":
                error = wire.remote_error(header)
                self._stop_at_memory_limit(error, "your function")
            elif kind == "too_large":
                what = str(header.get("what", ""))[:200]
                error = CheckFailed(Finding("", f"your function returned {what}, more than the checker takes back",
                                            hint="return one array per gradient, each with the shape of its input "
                                                 "(a few KB here)", subject=RETURN_VALUE))
            else:
                raise wire.WireError(f"a reply of kind {kind!r}")
        except (wire.WireError, *wire.MALFORMED):
            self._stop("crashed", NOT_A_REPLY)
        raise error

    def _stop_at_memory_limit(self, error: BaseException, what: str) -> None:
        """Stop the grading (crashed), naming the limit and --memory-mb, when `error` is a MemoryError
        of the process's memory limit -- raised by `what` ("your function" in a call, "the file" at
        its import): not a wrong gradient, nor a file that cannot be used."""
        if isinstance(error, MemoryError) and _memory_limit_reached(error):
            from .runner import describe_exception

            self._stop("crashed", out_of_memory(self.memory_mb, describe_exception(
                error, str(self.path), what, named_as=self.named_as)))

    def output(self) -> str:
        """What the submission printed, as Graded.output shows it ('' if the child is gone)."""
        from .runner import GradingStopped

        if self.ended is not None:     # it cannot be asked any more: what it printed is in its output file
            return _printed_before_the_dump(self.output_path, self._dump_from)
        try:
            header, _ = self._ask(pickle.dumps(("output",)))
        except GradingStopped:
            return ""
        return _shown_in_reply(header)

    # ----- the pipes --------------------------------------------------------------------------
    def _ask(self, request: bytes | None):
        """Send `request` (None: send nothing) and read the reply; GradingStopped when the child
        dies, runs out of time or sends what is not a reply."""
        from .runner import GradingStopped

        if self.ended is not None:
            raise GradingStopped(self.why)
        try:
            if request is not None:
                self._write(wire.LENGTH.pack(len(request)) + request)
            return wire.read(self._read_exactly)
        except _Timeout:
            self._stop("timeout", f"stopped after {self.timeout:g} s of wall clock: an endless loop, or far too "
                                  f"slow (a Python loop over every entry?)" + self._where_stuck())
        except _Gone:
            self._stop_gone()
        except wire.WireError as error:
            self._stop("crashed", f"the process running it sent {error}, not a reply")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.requests, select.POLLOUT)
            try:
                view = view[os.write(self.requests, view):]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _Gone from None

    def _read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            self._wait(self.replies, select.POLLIN)
            try:
                chunk = os.read(self.replies, min(n - len(data), 2**20))
            except BlockingIOError:
                continue
            if not chunk:
                raise _Gone
            data += chunk
        return bytes(data)

    def _wait(self, fd: int, event: int) -> None:
        """Until `fd` is ready for `event` (or its other end is closed); _Timeout at the deadline.
        poll, not select: select refuses a descriptor above 1023, which a grader in a process with
        many files open (a notebook server, a long session) is given."""
        poller = select.poll()
        poller.register(fd, event)
        while not poller.poll(min(math.ceil(self._left() * 1000), _POLL_MAX_MS)):
            pass    # a long timeout waits in pieces; _left raises _Timeout at the deadline

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Timeout
        return left

    def _stop_gone(self):
        """The child closed its end: wait (within the time limit) for it to exit, and say how."""
        try:
            code = self.child.wait(timeout=max(self.deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self._stop("timeout", f"stopped after {self.timeout:g} s of wall clock: it stopped answering but "
                                  f"kept running")
        self._stop("crashed", _describe_exit(code, self.memory_mb, _read_tail(self.output_path)))

    def _where_stuck(self) -> str:
        """' -- it was at line 3 of loop.py: while True:', the submission's innermost line in the
        stack the child dumps when asked (faulthandler, registered before the file was loaded);
        '' when it does not answer in time or was not in the submission's code."""
        if STUCK_SIGNAL is None:
            return ""
        start = self._dump_from = self.output_path.stat().st_size
        try:
            os.kill(self.child.pid, STUCK_SIGNAL)
        except (ProcessLookupError, PermissionError):
            return ""
        waited_until = time.monotonic() + STUCK_WAIT
        while time.monotonic() < waited_until:
            with open(self.output_path, "rb") as f:
                f.seek(start)
                dump = f.read(STUCK_READ).decode(errors="replace")
            where, text = _submission_line(dump, self.path, self.named_as)   # the dump may still be arriving
            if where:
                self.stuck_at = where
                return f" -- it was at {where}" + (f": {text}" if text else "")
            time.sleep(0.05)
        return ""

    def _stop(self, ended: str, why: str):
        from .runner import GradingStopped

        _kill_group(self.child)
        self.ended, self.why = ended, why
        raise GradingStopped(why)


def _submission_line(dump: str, path: Path, named_as: str) -> tuple[str, str]:
    """The innermost frame of a faulthandler dump (most recent call first) that is in the
    submission, as ('line N of NAMED_AS', the line's text); ('', '') when none is."""
    for filename, lineno in re.findall(r'File "(.+)", line (\d+)', dump):
        if Path(filename).resolve() != path.resolve():
            continue
        lines = path.read_text(errors="replace").splitlines()
        n = int(lineno)
        text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
        return f"line {n} of {named_as}", text[:160]
    return "", ""


class _Timeout(Exception):
    pass


class _Gone(Exception):
    pass


def _signature(parameters) -> inspect.Signature:
    """The student's function's signature as the checks read it (names and kinds; an empty one if
    what came back is not a signature)."""
    try:
        return inspect.Signature([inspect.Parameter(str(name), inspect._ParameterKind(int(kind)))
                                  for name, kind in parameters])
    except wire.MALFORMED:
        return inspect.Signature()


def array_leaves(value) -> list:
    """The arrays in a call's arguments (in tuples, lists, dicts, dataclasses and other objects:
    entries.py), each once, in one order the grader and the child both walk."""
    return list({id(array): array for _, array in named_leaves(value)}.values())


def _write_back(leaves: list, changed, arrays: list) -> None:
    """Copy into the grader's arguments what the student's function changed in place in the child's."""
    for leaf_index, array_index in changed:
        leaf, new = leaves[int(leaf_index)], arrays[int(array_index)]
        try:
            if leaf.shape != new.shape:
                leaf.shape = new.shape          # x.shape = ... is an in-place change too
            np.copyto(leaf, new, casting="unsafe")
        except (ValueError, AttributeError, TypeError):
            pass   # a read-only or differently laid out array: nothing the checks can be told


# ----- the child ----------------------------------------------------------------------------------

class CappedOutput(io.TextIOBase):
    """The child's sys.stdout and sys.stderr while the submission runs: the first `limit`
    characters go to `stream` (for a crash's last words), the rest is only counted; the first
    lines are also kept for the report."""

    def __init__(self, stream, limit: int):
        self.stream, self.left, self.head = stream, limit, ""
        self.line_ends, self.open_line = 0, False

    @property
    def lines(self) -> int:
        """Lines written, an unfinished last one included."""
        return self.line_ends + self.open_line

    def write(self, text) -> int:
        text = str(text)
        if text:
            self.line_ends += text.count("\n")
            self.open_line = not text.endswith("\n")
        if self.head.count("\n") < OUTPUT_SHOWN and len(self.head) < OUTPUT_SHOWN * 200:
            self.head += text[:OUTPUT_SHOWN * 200]
        kept = text[:max(self.left, 0)]
        if kept:
            self.stream.write(kept)
            self.stream.flush()       # a child killed for time still shows what it printed
            self.left -= len(kept)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    @property
    def encoding(self):
        return self.stream.encoding


def _limit_resources(memory_mb: int, cpu_seconds: int) -> None:
    try:
        import resource
    except ImportError:      # not on Linux/macOS: the wall-clock timeout still applies
        return
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        with open("/proc/self/statm") as f:      # Linux: the address space in use after the imports
            in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:                              # elsewhere (macOS): the wall-clock timeout still applies
        return
    limit = in_use + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="npllama.exercises.sandbox",
                                     description="Run one submission's function for the grader (npllama exercise "
                                                 "check): calls come on stdin, answers go to --reply-fd.")
    parser.add_argument("op", help="the exercise")
    parser.add_argument("path", help="the submission")
    parser.add_argument("--typed-as", default=None, help="the submission's path as the student gave it (the child "
                                                          "runs in a scratch folder, by the resolved path)")
    parser.add_argument("--named-as", default=None, help="the submission as an error in importing it names it")
    parser.add_argument("--reply-fd", type=int, required=True, help="the file descriptor to answer on")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="memory the submission may add")
    parser.add_argument("--cpu-seconds", type=int, default=int(DEFAULT_TIMEOUT), help="CPU time limit")
    parser.add_argument("--exercise-file", default=None, help="the teacher's file defining the exercise")
    args = parser.parse_args(argv)
    requests = sys.stdin.buffer

    from .definitions import get_exercise
    from .runner import SubmissionError, load_function
    from .screen import guard_library, student_call
    from .teacher import exercise_in_file

    try:
        # the grader verified the teacher's file; here it is only loaded, under the grader's module name
        exercise = (exercise_in_file(args.exercise_file, args.op, verify=False) if args.exercise_file
                    else get_exercise(args.op))
        importlib.import_module(exercise.module)    # what the calls' caches are made of, loaded before the limits
    except Exception as error:   # the exercise's fault, not the submission's (which is not loaded yet)
        _send(args.reply_fd, {"kind": "exercise_error", "text": f"{type(error).__name__}: {error}"})
        return 0
    _send(args.reply_fd, {"kind": "exercise_loaded"})
    _limit_resources(args.memory_mb, args.cpu_seconds)
    # the grader asks where a file that runs out of time is stuck; every thread's stack, since the
    # signal may land in a thread of the BLAS rather than the one running the submission
    if STUCK_SIGNAL is not None:
        faulthandler.register(STUCK_SIGNAL, file=sys.__stderr__, all_threads=True)
    output = sys.stdout = sys.stderr = CappedOutput(sys.__stdout__, OUTPUT_LIMIT)
    with guard_library(exercise):
        try:
            function = load_function(exercise, args.path, catch_everything=True, typed_as=args.typed_as,
                                     named_as=args.named_as)
        except SubmissionError as error:
            # what the file's code raised goes along: the grader tells its memory limit's MemoryError
            # as it tells one in a call
            raised = {} if error.raised is None else {"raised": wire.error_header(error.raised)}
            # and what it printed before it failed, which is often what tells the student why
            output.flush()
            _send(args.reply_fd, {"kind": "load_error", "text": str(error), **raised,
                                  "head": output.head, "lines": output.lines})
            return 0
        _send(args.reply_fd, {"kind": "ready", **_naming(function)})
        function = student_call(function)
        while (request := _read_request(requests)) is not None:
            if request[0] == "output":
                output.flush()
                _send(args.reply_fd, {"kind": "output", "head": output.head, "lines": output.lines})
            else:
                _send(args.reply_fd, *_served_call(function, *request[1:]))
    return 0


def _naming(function) -> dict:
    """The names the checks read off the function: its name, qualified name and parameters."""
    try:
        parameters = [[p.name, int(p.kind)] for p in inspect.signature(function).parameters.values()]
    except (TypeError, ValueError):
        parameters = []
    return {"name": str(getattr(function, "__name__", "")), "qualname": str(getattr(function, "__qualname__", "")),
            "parameters": parameters}


def _served_call(function, args, kwargs, read_only, errstate) -> tuple[dict, list]:
    """Call the student's function under the grader's NumPy error state; the reply (header,
    arrays): what it returned or raised, and the arguments' arrays it changed in place."""
    from .screen import ForbiddenCall

    leaves = array_leaves((args, kwargs))
    for i in read_only:
        leaves[i].flags.writeable = False
    before = [a.copy() for a in leaves]
    arrays = []
    try:
        with np.errstate(**errstate):
            returned = function(*args, **kwargs)
        header = {"kind": "return", "value": wire.describe(returned, arrays)}
    except wire.TooLarge as error:
        header, arrays = {"kind": "too_large", "what": error.what}, []
    except ForbiddenCall as error:
        header, arrays = {**wire.error_header(error), "forbidden": True}, []
    except BaseException as error:    # the student's, whatever it is: SystemExit too
        header, arrays = wire.error_header(error), []
    header["changed"] = []
    for i, (leaf, old) in enumerate(zip(leaves, before)):
        if not _same_array(leaf, old):
            header["changed"].append([i, len(arrays)])
            arrays.append(leaf)
    return header, arrays


def _same_array(a, b) -> bool:
    try:
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=True))
    except (TypeError, ValueError):
        return False


def _read_request(stream):
    """The next call the grader sends (pickled: the child trusts its parent), None at the end."""
    size = stream.read(wire.LENGTH.size)
    if len(size) < wire.LENGTH.size:
        return None
    return pickle.loads(stream.read(wire.LENGTH.unpack(size)[0]))


def _send(fd: int, header: dict, arrays=()) -> None:
    data = memoryview(wire.encode(header, list(arrays)))
    while data:
        data = data[os.write(fd, data):]

