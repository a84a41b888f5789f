"""Keep the line numbers of docs/debugging.md's pdb session those of the current source.

    python docs/update_pdb_session.py           # rewrite the numbers in docs/debugging.md
    python docs/update_pdb_session.py --check   # exit status 1 when they are out of date

The session shows where pdb stops as `> FILE(LINE)FUNCTION()` followed by `-> SOURCE TEXT`.  The
text is what the doc is about; the number is wherever that text sits today, so an edit above it
(in npllama/model.py, most often) moves it.  Each stop is looked up by its function and its source
text, and the numbers that depend on it are rewritten: the stop's own, the `until N` that led
there (moved by as much, so it still runs to the same line; the program's output may come between)
and `Breakpoint 1 at FILE:N` (the first line of the function `break module.function` named).  A
stop whose text its function no longer has is an error: the session itself is out of date, and
only a person can say what it should show.  So is what the script cannot place: a stop whose text
its function has twice, an `until` that no stop follows, a breakpoint set by line number.
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
# a stop at a return shows the value returned too: `> FILE(LINE)FUNCTION()->VALUE`
STOP = re.compile(r"^> (?P<file>[\w/.]+\.py)\((?P<line>\d+)\)(?P<function>\w+)\(\)(?P<value>->.*)?$")
BREAKPOINT = re.compile(r"^(?P<head>Breakpoint \d+ at )(?P<file>[\w/.]+\.py):(?P<line>\d+)$")
UNTIL = re.compile(r"^\(Pdb\) until (?P<line>\d+)$")
BREAK = re.compile(r"^\(Pdb\) (?:b|break) (?P<where>\S+)$")


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
        why = ("the session is out of date" if not hits
               else "the script cannot tell which one the session stops at")
        raise ValueError(_by_hand(f"it stops in {file}, {function}() at `-> {text.strip()}`, but {function}() has "
                                  f"{len(hits)} such lines: {why}"))
    return hits[0]


def current_session(session: str) -> str:
    """The session with every line number the current source's."""
    lines = session.splitlines()
    until = None   # the index of the last `until N`, while no stop has followed it yet
    for i, line in enumerate(lines):
        stop = STOP.match(line)
        if stop and i + 1 < len(lines) and lines[i + 1].startswith("-> "):
            old, new = int(stop["line"]), line_of(stop["file"], stop["function"], lines[i + 1][3:])
            lines[i] = f"> {stop['file']}({new}){stop['function']}(){stop['value'] or ''}"
            if until is not None:   # pdb's `until N` stops at the first line >= N: keep the same distance
                lines[until] = f"(Pdb) until {int(UNTIL.match(lines[until])['line']) + new - old}"
                until = None
        elif line.startswith("(Pdb) "):
            if until is not None:   # (what the program prints in between is not a command)
                raise ValueError(_by_hand(f"`{lines[until]}` is followed by no stop to keep its distance to"))
            until = i if UNTIL.match(line) else None
        breakpoint_line = BREAKPOINT.match(line)
        if breakpoint_line:
            file = breakpoint_line["file"]
            lines[i] = f"{breakpoint_line['head']}{file}:{first_line(file, _broken_function(lines[i - 1]))}"
    if until is not None:
        raise ValueError(_by_hand(f"`{lines[until]}` is followed by no stop to keep its distance to"))
    return "\n".join(lines) + "\n"


def _broken_function(command: str) -> str:
    """The function that `(Pdb) break module.function` names (pdb's `Breakpoint 1 at FILE:N` follows
    it, N that function's first line)."""
    broken = BREAK.match(command)
    if broken is None or broken["where"].split(":")[-1].isdigit():
        raise ValueError(_by_hand(f"`Breakpoint ... at` follows `{command}`, not a `break module.function`: "
                                  f"a breakpoint set by line number (or no break command) is nothing the script "
                                  f"can place"))
    return broken["where"].split(".")[-1]


def _by_hand(what: str) -> str:
    return f"the pdb session in docs/debugging.md: {what}; edit it by hand"


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
