"""Keep the line numbers of docs/debugging.md's pdb session those of the current source.

    python docs/update_pdb_session.py           # rewrite the numbers in docs/debugging.md
    python docs/update_pdb_session.py --check   # exit status 1 when they are out of date

The session shows where pdb stops as `> FILE(LINE)FUNCTION()` followed by `-> SOURCE TEXT`.  The
text is what the doc is about; the number is wherever that text sits today, so an edit above it
(in npllama/model.py, most often) moves it.  Each stop is looked up by its function and its source
text, and the numbers that depend on it are rewritten: the stop's own, the `until N` that led
there (moved by as much, so it still runs to the same line) and `Breakpoint 1 at FILE:N` (the
function's first line).  A stop whose text its function no longer has is an error: the session
itself is out of date, and only a person can say what it should show.
tests/test_debugging_doc.py fails while the numbers are stale, and replays the session with pdb.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "debugging.md"
SESSION = re.compile(r"(```\n\$ python -m pdb step\.py\n)(.*?)(```)", re.S)
STOP = re.compile(r"^> (?P<file>[\w/.]+\.py)\((?P<line>\d+)\)(?P<function>\w+)\(\)$")
BREAKPOINT = re.compile(r"^(?P<head>Breakpoint \d+ at )(?P<file>[\w/.]+\.py):(?P<line>\d+)$")
UNTIL = re.compile(r"^\(Pdb\) until (?P<line>\d+)$")


def squeeze(text: str) -> str:
    return " ".join(text.split())


def _function(file: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
    found = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name]
    if len(found) != 1:
        raise ValueError(f"{file} defines {len(found)} functions named {name}, not one")
    return found[0]


def first_line(file: str, function: str) -> int:
    """The line pdb names for `break module.function`: the function's first (a decorator's, if any)."""
    node = _function(file, function)
    return min([node.lineno] + [d.lineno for d in node.decorator_list])


def line_of(file: str, function: str, text: str) -> int:
    """The number of the one line of `function` in `file` that reads `text` (whitespace squeezed)."""
    node = _function(file, function)
    lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
    hits = [n for n in range(node.lineno, node.end_lineno + 1) if squeeze(lines[n - 1]) == squeeze(text)]
    if len(hits) != 1:
        raise ValueError(f"the pdb session in docs/debugging.md stops in {file}, {function}() at `-> {text.strip()}`, "
                         f"but {function}() has {len(hits)} such lines: the session is out of date; edit it by hand")
    return hits[0]


def current_session(session: str) -> str:
    """The session with every line number the current source's."""
    lines = session.splitlines()
    for i, line in enumerate(lines):
        stop = STOP.match(line)
        if stop and i + 1 < len(lines) and lines[i + 1].startswith("-> "):
            old, new = int(stop["line"]), line_of(stop["file"], stop["function"], lines[i + 1][3:])
            lines[i] = f"> {stop['file']}({new}){stop['function']}()"
            until = UNTIL.match(lines[i - 1]) if i > 0 else None
            if until:   # pdb's `until N` stops at the first line >= N: keep the same distance
                lines[i - 1] = f"(Pdb) until {int(until['line']) + new - old}"
        breakpoint_line = BREAKPOINT.match(line)
        if breakpoint_line:
            function = next(STOP.match(later)["function"] for later in lines[i:] if STOP.match(later))
            file = breakpoint_line["file"]
            lines[i] = f"{breakpoint_line['head']}{file}:{first_line(file, function)}"
    return "\n".join(lines) + "\n"


def updated(doc: str) -> str:
    """docs/debugging.md's text with its pdb session's line numbers brought up to date."""
    match = SESSION.search(doc)
    if match is None:
        raise ValueError("docs/debugging.md has no ```$ python -m pdb step.py session")
    return doc[:match.start(2)] + current_session(match.group(2)) + doc[match.end(2):]


def main(argv: list[str]) -> int:
    doc = DOC.read_text(encoding="utf-8")
    new = updated(doc)
    if new == doc:
        print("docs/debugging.md: the pdb session's line numbers are current")
        return 0
    if "--check" in argv:
        print("docs/debugging.md: the pdb session's line numbers are out of date; "
              "run python docs/update_pdb_session.py")
        return 1
    DOC.write_text(new, encoding="utf-8")
    print("docs/debugging.md: the pdb session's line numbers updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
