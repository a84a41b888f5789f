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
its function has twice, an `until` that no stop follows, a breakpoint set by line number.  A name
that several functions of a file share (two classes' `step`) is no obstacle: a breakpoint names
its function as `break module.Class.step`; a stop, which pdb names `step()` alone, is in the one
whose body holds its text, and where several do, in the one nearest the number it had.
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


def _functions(file: str) -> list[tuple[str, ast.FunctionDef]]:
    """Every function `file` defines, with its qualified name as Python spells it: `f`, `Class.f`,
    `f.<locals>.g` (pdb names a stop by the bare name, a `break module.Class.f` by this one)."""
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:   # a def under an `if` or a `try` is still the module's (or the class's)
                visit(child, prefix)

    visit(ast.parse((ROOT / file).read_text(encoding="utf-8")), "")
    return found


def _first(node) -> int:
    """The line pdb names for a breakpoint on the function: its first (a decorator's, if any)."""
    return min([node.lineno] + [d.lineno for d in node.decorator_list])


def first_line(file: str, function: str) -> int:
    """The line pdb names for `break module.function`: the first line of the function whose qualified
    name is `function` (`name` for the module's own, `Class.name` for a method)."""
    found = [node for qualname, node in _functions(file) if qualname == function]
    if len(found) != 1:
        raise ValueError(_by_hand(f"a breakpoint is set on {function}, but {file} defines "
                                  + (f"no function named {function}" if not found else
                                     f"{len(found)} functions named {function} (one under each branch of an "
                                     f"`if`?): the script cannot tell which")))
    return _first(found[0])


def line_of(file: str, function: str, text: str, old_line: int | None = None) -> int:
    """The number of the one line of `function` in `file` that reads `text` (whitespace squeezed).

    pdb names a stop by the function's bare name, which several functions of a file may share
    (two classes' `step`): the one whose body holds `text`, or where several do, the one nearest
    `old_line`, the number the session had (an edit above it moves it by as much as the function)."""
    lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
    named = [node for _, node in _functions(file) if node.name == function]
    if not named:
        raise ValueError(_by_hand(f"it stops in {file}, {function}(), which {file} no longer defines: "
                                  f"the session is out of date"))
    holding = [node for node in named
               if any(squeeze(lines[n - 1]) == squeeze(text) for n in range(_first(node), node.end_lineno + 1))]
    node = _nearest(holding, old_line) if len(holding) > 1 else (holding or named)[0]
    if node is None:
        raise ValueError(_by_hand(f"it stops in {file}, {function}() at `-> {text.strip()}`, which "
                                  f"{len(holding)} functions named {function} have, "
                                  + ("and no line number to choose by" if old_line is None else
                                     f"as near to line {old_line} as one another")
                                  + ": the script cannot tell which one the session stops in"))
    hits = [n for n in range(node.lineno, node.end_lineno + 1) if squeeze(lines[n - 1]) == squeeze(text)]
    if len(hits) != 1:
        why = ("the session is out of date" if not hits
               else "the script cannot tell which one the session stops at")
        raise ValueError(_by_hand(f"it stops in {file}, {function}() at `-> {text.strip()}`, but {function}() has "
                                  f"{len(hits)} such lines: {why}"))
    return hits[0]


def _nearest(functions: list, line: int | None):
    """The one of `functions` whose lines are nearest `line` (0 inside them), None on a tie or no line."""
    if line is None:
        return None
    distances = [max(_first(node) - line, line - node.end_lineno, 0) for node in functions]
    best = min(distances)
    return functions[distances.index(best)] if distances.count(best) == 1 else None


def current_session(session: str) -> str:
    """The session with every line number the current source's."""
    lines = session.splitlines()
    until = None   # the index of the last `until N`, while no stop has followed it yet
    for i, line in enumerate(lines):
        stop = STOP.match(line)
        if stop and i + 1 < len(lines) and lines[i + 1].startswith("-> "):
            old = int(stop["line"])
            new = line_of(stop["file"], stop["function"], lines[i + 1][3:], old_line=old)
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
            lines[i] = f"{breakpoint_line['head']}{file}:{first_line(file, _broken_function(lines[i - 1], file))}"
    if until is not None:
        raise ValueError(_by_hand(f"`{lines[until]}` is followed by no stop to keep its distance to"))
    return "\n".join(lines) + "\n"


def _broken_function(command: str, file: str) -> str:
    """The qualified name (`function`, `Class.method`) of the function in `file` that `(Pdb) break
    module.function` names (pdb's `Breakpoint 1 at FILE:N` follows it, N that function's first line)."""
    broken = BREAK.match(command)
    if broken is None or broken["where"].split(":")[-1].isdigit():
        raise ValueError(_by_hand(f"`Breakpoint ... at` follows `{command}`, not a `break module.function`: "
                                  f"a breakpoint set by line number (or no break command) is nothing the script "
                                  f"can place"))
    module = file.removesuffix(".py").replace("/", ".") + "."
    where = broken["where"]
    return where[len(module):] if where.startswith(module) else where


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
