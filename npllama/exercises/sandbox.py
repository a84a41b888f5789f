"""Grade one submission in a process of its own, so that nothing it does can stop the grading.

    graded = grade_file("rmsnorm", "alice.py", timeout=60, memory_mb=1024)
    graded.ok, graded.status, graded.text

The child (`python -m npllama.exercises.sandbox`) limits its own memory (RLIMIT_AS: the address
space it has after its imports, plus `memory_mb`) and CPU time (RLIMIT_CPU), runs
`runner.check_file` with every exception of the student's -- SystemExit and KeyboardInterrupt
included -- turned into a failed check, and writes the report as JSON to a file the parent named.
The parent kills the child's whole process group at the wall-clock `timeout`.  A child that ends
without a report (os._exit, a segfault, the memory limit, the timeout) is that submission's
failure, described from its exit status.

What the submission prints (print, warnings) goes to a file, at most OUTPUT_LIMIT characters of
it: a print in an endless loop must not fill the disk or the parent's memory.  Its first lines
come back in the report, and `check` of one file shows them (`Graded.output`): a hint may well
have said "print the shapes".

A student's code cannot forge the report: the parent sends a random token on the child's stdin,
which the child reads before importing the submission and echoes in the report; a report without
it is treated as no report at all.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_TIMEOUT = 120.0     # seconds of wall clock per submission
DEFAULT_MEMORY_MB = 1024    # address space a submission may add to the checker's own
OUTPUT_TAIL = 400           # characters of the child's own output kept to explain a crash
OUTPUT_LIMIT = 64 * 1024    # characters of the submission's output written at all; the rest is counted
OUTPUT_SHOWN = 20           # lines of it `check` of one file shows

_running: set = set()       # the children grading now (a class is graded from two threads)
_running_lock = threading.Lock()


@dataclasses.dataclass
class Graded:
    """One submission's result, as the gradebook shows it."""

    file: str
    status: str                  # "pass", "fail", "refused", "not implemented", "unusable", "timeout", "crashed"
    passed: int
    total: int
    first_failure: str           # the first failing check's name ('' when none)
    diagnosis: str               # what is wrong, one line ('' when it passes)
    seconds: float
    text: str = ""               # the full report a student reads
    exercise: str = ""           # what it was graded on: the exercise, the cases' seed, random cases per check
    seed: int = 0
    cases: int = 0
    output: str = ""             # what the submission printed: its first OUTPUT_SHOWN lines, and how many more

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def row(self) -> dict:
        """One gradebook row.  passed and total are numbers (a spreadsheet reads "2/4" as a date);
        checks_passed keeps the "2/4" text for readers of older gradebooks."""
        return {"file": self.file, "exercise": self.exercise, "status": self.status, "passed": self.passed,
                "total": self.total, "checks_passed": f"{self.passed}/{self.total}",
                "first_failure": self.first_failure, "diagnosis": self.diagnosis,
                "seconds": round(self.seconds, 2), "seed": self.seed, "cases": self.cases}


def grade_file(op: str, path, *, n_random: int = 8, seed: int = 0, timeout: float = DEFAULT_TIMEOUT,
               memory_mb: int = DEFAULT_MEMORY_MB, allow_imports: bool = False) -> Graded:
    """Check `path` in a child process with a time and memory limit; never raises for the file's sake."""
    from .definitions import get_exercise

    exercise = get_exercise(op)
    _check_limits(timeout, memory_mb)
    path = Path(path)
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="npllama-grade-") as scratch:
        result_path = Path(scratch) / "report.json"
        output_path = Path(scratch) / "output.txt"
        argv = [sys.executable, "-m", "npllama.exercises.sandbox", op, str(path.resolve()), str(result_path),
                "--cases", str(n_random), "--seed", str(seed), "--memory-mb", str(memory_mb),
                "--cpu-seconds", str(int(timeout) + 1), "--shown-as", readable_name(str(path))] + \
            (["--allow-imports"] if allow_imports else [])
        start = time.perf_counter()
        with open(output_path, "wb") as output:
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                     cwd=scratch, start_new_session=True, env=_child_env())
            with _running_lock:
                _running.add(child)
            timed_out = False
            try:
                child.communicate((token + "\n").encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(child)
                child.wait()
            finally:
                _kill_group(child)    # anything the submission started must not outlive it
                with _running_lock:
                    _running.discard(child)
        seconds = time.perf_counter() - start
        report = _read_report(result_path, token)
        tail = _read_tail(output_path)
    total = len(exercise.checks())
    name = readable_name(path.name)
    graded_on = dict(exercise=op, seed=seed, cases=n_random,
                     output=_shown_output(report.get("output", ""), report.get("output_lines", 0)) if report else "")
    if report is not None:
        return dataclasses.replace(_graded_from_report(path, report, seconds), **graded_on)
    if timed_out:
        why = (f"stopped after {timeout:g} s of wall clock: an endless loop, or far too slow "
               f"(a Python loop over every entry?)")
        return Graded(name, "timeout", 0, total, "", why, seconds, f"{name}: {why}", **graded_on)
    why = _describe_exit(child.returncode, memory_mb, tail)
    return Graded(name, "crashed", 0, total, "", why, seconds, f"{name}: {why}", **graded_on)


def readable_name(name: str) -> str:
    """A file name as the gradebook writes it: bytes that are not UTF-8 (a Latin-1 name from an old
    zip tool, j\\xf3zef.py) spelled as escapes, which a UTF-8 CSV can hold and a reader can tell apart."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _check_limits(timeout, memory_mb) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
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


def _shown_output(head, n_lines) -> str:
    """The first OUTPUT_SHOWN lines of what the submission printed (each cut to 200 characters),
    under a line that says how many it printed ('' when it printed nothing)."""
    shown = [line if len(line) <= 200 else line[:197] + "..." for line in str(head).splitlines()[:OUTPUT_SHOWN]]
    if not shown:
        return ""
    n_lines = max(n_lines if isinstance(n_lines, int) else 0, len(shown))
    title = (f"your code printed {n_lines} line{'s' if n_lines != 1 else ''}"
             + (f" (the first {len(shown)}):" if n_lines > len(shown) else ":"))
    return "\n".join([title] + ["  | " + line for line in shown])


def _read_report(path: Path, token: str):
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("token") != token:
        return None
    return report


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
        return f"ran out of its {memory_mb} MB memory limit (an array far too large?)"
    return (f"the process ended (exit status {code}) before reporting: os._exit or a crash in C code"
            + (f"; last output: {tail[-160:]}" if tail else ""))


def _graded_from_report(path: Path, report: dict, seconds: float) -> Graded:
    first = report.get("first_failure") or {}
    if report.get("refused"):
        status = "refused"
    elif report.get("load_error"):
        status = "unusable"
    elif report.get("not_implemented"):
        status = "not implemented"
    else:
        status = "pass" if report.get("ok") else "fail"
    diagnosis = "" if status == "pass" else (first.get("diagnosis") or report.get("summary", ""))
    return Graded(readable_name(path.name), status, int(report.get("passed", 0)), int(report.get("total", 0)),
                  first.get("check", ""), diagnosis, seconds, report.get("text", ""))


# ----- the child ----------------------------------------------------------------------------------

class _CappedOutput(io.TextIOBase):
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

    parser = argparse.ArgumentParser(prog="python -m npllama.exercises.sandbox",
                                     description="Grade one submission (run by npllama exercise check).")
    parser.add_argument("op", help="the exercise")
    parser.add_argument("path", help="the submission")
    parser.add_argument("result", help="where to write the report (JSON)")
    parser.add_argument("--cases", type=int, default=8, help="random cases per check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help="memory the submission may add")
    parser.add_argument("--cpu-seconds", type=int, default=int(DEFAULT_TIMEOUT), help="CPU time limit")
    parser.add_argument("--allow-imports", action="store_true", help="skip the import rule")
    parser.add_argument("--shown-as", default=None, help="the path as the report names it (as the user gave it; "
                                                          "the child runs in a scratch folder, so `path` is absolute)")
    args = parser.parse_args(argv)
    token = sys.stdin.readline().strip()
    result_path = Path(args.result)

    from .runner import check_file   # numpy and the checks load before the limits are set

    _limit_resources(args.memory_mb, args.cpu_seconds)
    output = sys.stdout = sys.stderr = _CappedOutput(sys.__stdout__, OUTPUT_LIMIT)
    report = check_file(args.op, args.path, n_random=args.cases, seed=args.seed,
                        allow_imports=args.allow_imports, catch_everything=True)
    output.flush()
    report.source = args.shown_as or report.source
    record = {**report.to_dict(), "text": report.format(), "token": token, "output": output.head,
              "output_lines": output.lines}
    result_path.write_text(json.dumps(record, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
