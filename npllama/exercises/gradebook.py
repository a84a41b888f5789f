"""A teacher's gradebook: every .py file of a folder graded in its own sandbox, two at a time.

    graded = grade_folder("rmsnorm", "submissions/", progress=print)
    write_gradebook(graded, "gradebook")      # gradebook.csv and gradebook.json
    print(format_gradebook(graded))

Columns: file, exercise, status, passed, total, checks passed (as text), first failure, diagnosis,
seconds, seed, cases (each sampled check's cases, as a report's "(N cases)": the exercise's edge
cases and n_random random ones); the JSON adds each full report (what the file printed, then
the report: Graded.report).
"""
from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..text_width import ljust, width as columns
from .sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, Graded, grade_file, readable_name, stop_running

MAX_WORKERS = 2     # graders running at once (each is one process on one BLAS thread)
COLUMNS = ("file", "exercise", "status", "passed", "total", "checks_passed", "first_failure", "diagnosis", "seconds",
           "seed", "cases")


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C while a class was graded: `graded` holds the submissions finished before it (in the
    folder's order), `total` how many there were."""

    def __init__(self, graded: list, total: int):
        super().__init__(f"{len(graded)} of {total} submissions graded")
        self.graded, self.total = graded, total


def submissions_in(folder) -> list[Path]:
    """The .py files of `folder` and of its subfolders one level down (a class handing in one
    folder per student), sorted by their path relative to `folder`."""
    from .definitions import path_argument

    folder = path_argument(folder, "folder", "a folder of .py files")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of submissions")
    files = [p for p in _handed_in(folder) if p.suffix == ".py"]
    if not files:
        deeper = two_folders_down(folder)
        if deeper:
            raise FileNotFoundError(f"{folder} holds no .py files to check, in it or its subfolders; {len(deeper)} "
                                    f"{'is' if len(deeper) == 1 else 'are'} two folders down ({_first(deeper)}): "
                                    f"check each of its subfolders")
        notebooks = [name for name in not_graded_in(folder) if name.endswith(".ipynb")]
        if notebooks:      # handed in as `exercise notebook` wrote them
            from .definitions import NOT_THE_CHECK_CELL

            raise FileNotFoundError(
                f"{folder} holds no .py files to check (nor do its subfolders), only notebooks ({_first(notebooks)}), "
                f"which are not graded: save each one's code cell with the solution ({NOT_THE_CHECK_CELL}) as a .py "
                f"file beside it, as the notebook's last cell says ({notebooks[0][:-len('.ipynb')]}.py)")
        raise FileNotFoundError(f"{folder} holds no .py files to check (nor do its subfolders)")
    return files


def two_folders_down(folder) -> list[str]:
    """The .py files one folder deeper than submissions_in looks (a class handed in by section:
    section/student/file.py), by their path relative to `folder`: they are not graded, and a
    teacher must be told so, not find those students missing from the gradebook."""
    folder = Path(folder)
    return [readable_name(p.relative_to(folder).as_posix()) for p in _handed_in(folder, ("*/*/*.py",))]


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def not_graded_in(folder) -> list[str]:
    """The other files handed in where submissions_in looks (a notebook, a PDF), by their path
    relative to `folder`: a teacher must not take a student missing from the gradebook for one who
    handed nothing in."""
    folder = Path(folder)
    return [readable_name(p.relative_to(folder).as_posix()) for p in _handed_in(folder) if p.suffix != ".py"]


def _handed_in(folder: Path, patterns=("*", "*/*")) -> list[Path]:
    """The files of `folder` and its subfolders one level down (or those `patterns` match), hidden
    ones (.DS_Store) and __pycache__ left out, sorted by their path relative to `folder`."""
    return sorted((p for pattern in patterns for p in folder.glob(pattern)
                   if p.is_file() and not any(part.startswith((".", "__")) for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def grade_folder(op: str, folder, *, n_random: int = 8, seed: int = 0, timeout: float = DEFAULT_TIMEOUT,
                 memory_mb: int = DEFAULT_MEMORY_MB, allow_imports: bool = False, workers: int = MAX_WORKERS,
                 progress=None) -> list[Graded]:
    """Grade every .py file in `folder` and its subfolders (submissions_in); `progress(graded, done,
    total)` after each.  Each row's file is its path relative to `folder`.  A teacher's exercise
    (teacher.load_exercises) has its reference checked on the class's cases first."""
    from .definitions import get_exercise
    from .teacher import verify_reference

    exercise = get_exercise(op)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1 or {MAX_WORKERS}, got {workers!r}")
    files = submissions_in(folder)
    if not exercise.builtin:
        verify_reference(exercise, n_random, seed)
    folder = Path(folder)
    results: list[Graded | None] = [None] * len(files)
    done = 0

    def grade(i):
        # alice/rmsnorm_backward.py: whose it is, in the file column and wherever a line of it is named
        named_as = readable_name(files[i].relative_to(folder).as_posix())
        return i, grade_file(exercise, files[i], n_random=n_random, seed=seed, timeout=timeout, memory_mb=memory_mb,
                             allow_imports=allow_imports, named_as=named_as)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grade, i) for i in range(len(files))]
        try:
            for i, graded in (f.result() for f in futures):
                results[i] = graded
                done += 1
                if progress is not None:
                    progress(graded, done, len(files))
        except BaseException as stop:
            # leaving the pool would grade every file still queued, each up to its timeout -- or, when
            # grading stops for all (a teacher's file its process cannot load), each to the same end
            pool.shutdown(wait=False, cancel_futures=True)
            if not isinstance(stop, KeyboardInterrupt):
                raise
            # (a cancelled future is done(), but wait() would count it done only once a worker saw it)
            while not all(f.done() for f in futures):
                stop_running()     # again: a file may have started after the first kill
                wait([f for f in futures if not f.done()], timeout=0.1)
            raise GradingInterrupted([g for g in results if g is not None], len(files)) from None
    return results


def write_gradebook(graded: list[Graded], stem) -> tuple[Path, Path]:
    """Write <stem>.csv and <stem>.json; returns both paths.  Both are made in full before either
    replaces a gradebook already there (re-grading a class must not leave a half-written one)."""
    stem = Path(stem)
    if stem.suffix in (".csv", ".json"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    for g in graded:
        writer.writerow(g.row())
    records = gradebook_json(graded)
    atomic_write_text(csv_path, table.getvalue())
    atomic_write_text(json_path, records)
    return csv_path, json_path


def gradebook_json(graded: list[Graded]) -> str:
    """The gradebook's JSON: one record per submission, the CSV's columns and the full report
    (`exercise check FILE --json` writes the same)."""
    return json.dumps([{**g.row(), "report": g.report} for g in graded], indent=2) + "\n"


def format_gradebook(graded: list[Graded], width: int = 100) -> str:
    rows = [("file", "status", "passed", "first failure: diagnosis")]
    for g in graded:
        text = f"{g.first_failure}: {g.diagnosis}" if g.first_failure else g.diagnosis
        if len(text) > width:
            text = text[:width - 3] + "..."
        rows.append((g.file, g.status, f"{g.passed}/{g.total}", text))
    widths = [max(columns(row[i]) for row in rows) for i in range(3)]
    lines = [f"{ljust(a, widths[0])}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    ok = sum(g.ok for g in graded)
    return "\n".join(lines + [f"{ok} of {len(graded)} submissions pass every check."])
