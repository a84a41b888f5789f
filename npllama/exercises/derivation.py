"""The math that travels with the package: read derivations/<name>.md and print it readably.

    derivation_markdown("rmsnorm")        # the file's text (from the installed wheel or the checkout)
    backward_sections("rmsnorm")          # [(heading, body)] of the sections deriving the backward
    to_text(markdown)                     # LaTeX turned into terminal text: \\frac{a}{b} -> (a)/(b), ...

derivations/*.md stay at the top of the repository for its readers; setup.py ships them inside
the wheel as the package data `npllama.derivations`, so an installed npllama finds them too.
"""
from __future__ import annotations

import importlib.resources
import re
import textwrap
from pathlib import Path

from ..text_width import width as columns

SOURCE_CHECKOUT = Path(__file__).resolve().parents[2] / "derivations"
BACKWARD_HEADING = re.compile(r"backward|chain rule|gradient|vectori[sz]ed", re.I)


def available() -> list[str]:
    """Every derivation's name (the file stem), sorted."""
    return sorted(name[:-3] for name in _names() if name.endswith(".md"))


def _names():
    folder = _folder()
    return [p.name for p in folder.iterdir()] if folder is not None else []


def _folder():
    try:
        folder = importlib.resources.files("npllama.derivations")
        if folder.is_dir():
            return folder
    except ModuleNotFoundError:   # a source checkout: the package data is the folder beside npllama/
        pass
    return SOURCE_CHECKOUT if SOURCE_CHECKOUT.is_dir() else None


def derivation_markdown(name: str) -> str:
    """The Markdown of derivations/<name>.md ('rmsnorm' or 'derivations/rmsnorm.md'), or of the
    Markdown file at an absolute path (a teacher's exercise's own derivation: teacher.py)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a derivation's name such as 'rmsnorm', got {type(name).__name__}")
    if Path(name).is_absolute() and name.endswith(".md") and Path(name).is_file():
        return Path(name).read_text(encoding="utf-8")
    stem = Path(name).name
    stem = stem[:-3] if stem.endswith(".md") else stem
    folder = _folder()
    if folder is None or stem not in available():
        raise ValueError(f"unknown derivation {name!r}; choose one of: {', '.join(available()) or '(none installed)'}")
    return folder.joinpath(stem + ".md").read_text(encoding="utf-8")


def sections(markdown: str) -> list[tuple[str, str]]:
    """[(heading, body)] for each '## ' section (the title line and anything before are dropped)."""
    found, heading, body = [], None, []
    for line in markdown.splitlines():
        match = re.match(r"^#{2,4}\s+(.+?)\s*$", line)
        if match:
            if heading is not None:
                found.append((heading, "\n".join(body).strip()))
            heading, body = match.group(1), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        found.append((heading, "\n".join(body).strip()))
    return found


def backward_sections(name: str) -> list[tuple[str, str]]:
    """The sections of a derivation that derive the backward pass (its steps and final formula)."""
    return [(h, b) for h, b in sections(derivation_markdown(name)) if BACKWARD_HEADING.search(h)]


def backward_heading(name: str) -> str | None:
    found = backward_sections(name)
    return found[0][0] if found else None


# ----- LaTeX to terminal text --------------------------------------------------------------------

SYMBOLS = {r"\odot": "*", r"\cdot": "·", r"\times": "x", r"\partial": "∂", r"\sum": "sum", r"\prod": "prod",
           r"\qquad": "    ", r"\quad": "  ", r"\le": "<=", r"\ge": ">=", r"\leq": "<=", r"\geq": ">=", r"\ne": "!=",
           r"\neq": "!=", r"\approx": "≈", r"\infty": "inf", r"\to": "->", r"\mapsto": "->", r"\in": "in",
           r"\langle": "<", r"\rangle": ">", r"\dots": "...", r"\ldots": "...", r"\cdots": "...", r"\top": "T",
           r"\exp": "exp", r"\log": "log", r"\max": "max", r"\min": "min", r"\sigma": "σ", r"\theta": "θ",
           r"\alpha": "α", r"\beta": "β", r"\gamma": "γ", r"\delta": "δ", r"\epsilon": "ε", r"\varepsilon": "ε",
           r"\lambda": "λ", r"\mu": "μ", r"\phi": "φ", r"\ell": "ℓ", r"\eta": "η", r"\tau": "τ", r"\pi": "π", r"\Delta": "Δ", r"\,": " ",
           r"\;": " ", r"\:": " ", r"\!": "", r"\left": "", r"\right": "", r"\Big": "", r"\big": "", r"\Bigg": "",
           r"\bigg": "", r"\displaystyle": "", r"\textstyle": "", r"\scriptstyle": "", r"\_": "_", r"\lVert": "||", r"\rVert": "||", r"\|": "||",
           r"\{": "{", r"\}": "}", r"\neg": "not ", r"\wedge": "and", r"\vee": "or", r"\sim": "~", r"\pm": "+-",
           r"\mid": "|", r"\prime": "'", r"\Rightarrow": "=>", r"\Leftarrow": "<=", r"\rightarrow": "->",
           r"\leftarrow": "<-", r"\Leftrightarrow": "<=>", r"\iff": "<=>", r"\implies": "=>",
           r"\lfloor": "⌊", r"\rfloor": "⌋", r"\lceil": "⌈", r"\rceil": "⌉", r"\bmod": "mod", r"\lor": "or",
           r"\land": "and", r"\gg": ">>", r"\ll": "<<", r"\mp": "-+", r"\lesssim": "≲", r"\gtrsim": "≳",
           r"\equiv": "≡", r"\propto": "∝", r"\nabla": "∇", r"\Sigma": "Σ", r"\omega": "ω", r"\rho": "ρ",
           r"\psi": "ψ", r"\xi": "ξ", r"\zeta": "ζ", r"\kappa": "κ", r"\nu": "ν", r"\chi": "χ", r"\Theta": "Θ",
           r"\Lambda": "Λ", r"\Pi": "Π", r"\Phi": "Φ", r"\Omega": "Ω", r"\forall": "for all", r"\exists": "exists",
           r"\subset": "⊂", r"\subseteq": "⊆", r"\cup": "∪", r"\cap": "∩", r"\circ": "∘", r"\otimes": "⊗",
           r"\oplus": "⊕", r"\star": "*", r"\ast": "*", r"\colon": ":", r"\vdots": "...", r"\ddots": "...",
           r"\leftrightarrow": "<->", r"\uparrow": "↑", r"\downarrow": "↓", r"\hbar": "ħ", r"\lvert": "|",
           r"\rvert": "|", r"\vert": "|", r"\Vert": "||", r"\bigl": "", r"\bigr": "", r"\Bigl": "", r"\Bigr": "",
           r"\nonumber": "", r"\notag": "", r"\tag": ""}
# Named functions print as their names (\cos x -> "cos x").  A command in none of these tables is
# left as written (\foo), so that a missing entry shows -- tests/test_exercise_materials.py renders
# every derivation and starter and fails on any that survives.
NAMED_FUNCTIONS = {"sin", "cos", "tan", "tanh", "sinh", "cosh", "arctan", "arcsin", "arccos", "exp", "log", "ln",
                   "max", "min", "sup", "inf", "lim", "det", "arg", "argmax", "argmin", "softmax", "diag", "sgn",
                   "Pr", "deg", "dim", "ker", "gcd"}
UNWRAP = ("mathrm", "mathbf", "mathit", "text", "textrm", "operatorname", "mathbb", "mathcal", "boldsymbol",
          "vec", "emph", "textbf", "texttt", "textit", "mathsf", "mathtt", "boxed", "mathrel",
          "mathop", "mathbin", "overline", "underline", "mbox", "hbox")
# An accent makes a new symbol (adamw.md: \hat m is m / (1 - beta1^t), not m): print it as a suffix,
# as the code names it (m_hat).
ACCENTS = {"hat": "_hat", "widehat": "_hat", "bar": "_bar", "tilde": "_tilde", "widetilde": "_tilde"}


def _group(text: str, start: int) -> tuple[str, int]:
    """The {braced} group (or single character) at text[start:], and the index after it."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        return "", start
    if text[start] != "{":
        if text[start] == "\\":
            match = re.match(r"\\[A-Za-z]+", text[start:])
            if match:
                return match.group(0), start + len(match.group(0))
        return text[start], start + 1
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i], i + 1
    return text[start + 1:], len(text)


def _paren(expr: str) -> str:
    """expr as one operand of a fraction: bare when it is a name or a call like sqrt(...)."""
    expr = expr.strip()
    return expr if re.fullmatch(r"[\w.·∂']+", expr) or _one_call(expr) else f"({expr})"


def _one_call(expr: str) -> bool:
    """expr is one call like sqrt(...) or (...); a subscript's group, z_(n,j), is not one."""
    match = re.match(r"\w*(?<!_)\(", expr)
    if not match:
        return False
    depth = 0
    for i in range(match.end() - 1, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return i == len(expr) - 1
    return False

# binary operators written with a space after them get one before them too ("a\cdot b" stays "a·b")
SPACED_LIKE_THE_SOURCE = frozenset({r"\cdot", r"\times", r"\approx", r"\to"})


def latex_to_text(tex: str) -> str:
    out, i = [], 0
    while i < len(tex):
        if tex.startswith("\\begin", i):
            name, i = _group(tex, i + 6)
            end = tex.find(f"\\end{{{name}}}", i)
            end = len(tex) if end < 0 else end
            out.append(_environment(name, tex[i:end]))
            i = end + len(f"\\end{{{name}}}")
        elif tex.startswith(("\\frac", "\\tfrac", "\\dfrac"), i):
            i = tex.index("frac", i) + 4
            numerator, i = _group(tex, i)
            denominator, i = _group(tex, i)
            fraction = f"{_paren(latex_to_text(numerator))}/{_paren(latex_to_text(denominator))}"
            out.append(fraction + (" " if _starts_a_word(tex, i) else ""))   # 1/(sum c) sum_n, not 1/(sum c)sum_n
        elif tex.startswith("\\sqrt", i):
            inner, i = _group(tex, i + 5)
            out.append(f"sqrt({latex_to_text(inner)})")
        elif tex[i] == "\\":
            match = re.match(r"\\([A-Za-z]+|.)", tex[i:])
            command = match.group(0)
            i += len(command)
            if command[1:] in UNWRAP or command[1:] in ACCENTS:
                inner, i = _group(tex, i)
                word = latex_to_text(inner)
                if command[1:] in ACCENTS:
                    word = word.strip()
                    word = (word if re.fullmatch(r"\w+", word) else f"({word})") + ACCENTS[command[1:]]
                if word[:1].isalnum() and _last_char(out).isalnum():
                    word = " " + word             # \sum_i \mathrm{dx}_i -> "sum_i dx_i", not "sum_idx_i"
                out.append(word)
            else:
                word = SYMBOLS.get(command)
                if word is None:
                    name = command[1:]
                    word = name if name in NAMED_FUNCTIONS or not name.isalpha() else command
                if word[:1].isalnum() and _last_char(out).isalnum():
                    word = " " + word             # \mathrm{scale}\sum -> "scale sum", not "scalesum"
                if word[-1:].isalnum() and _starts_a_word(tex, i):
                    word += " "
                if command in SPACED_LIKE_THE_SOURCE and tex[i:i + 1] == " " and _last_char(out).strip():
                    word = " " + word             # lr\cdot m -> "lr · m" as written, not "lr· m"
                out.append(word)
        elif tex[i] in "^_":
            inner, j = _group(tex, i + 1)
            text = latex_to_text(inner).strip()         # ^{\,t} -> ^t
            out.append(tex[i] + (text if len(text) == 1 or _one_call(text) else f"({text})") if tex[i] == "^" else
                       "_" + (text if re.fullmatch(r"[^\W_]+", text) else f"({text})"))   # _(t_n), not _t_n
            i = j
        elif tex[i] in "{}":
            i += 1
        else:
            out.append(tex[i])
            i += 1
    return re.sub(r"[ ]{2,}(?=\S)", lambda m: m.group(0) if len(m.group(0)) >= 4 else " ", "".join(out))


def _starts_a_word(tex: str, i: int) -> bool:
    """tex[i:] begins with a letter or digit, or with a command that prints one (\\sum, \\mathrm{x}):
    what follows a word needs a space before it; \\cdot, \\, or a bracket does not."""
    if i >= len(tex):
        return False
    if tex[i].isalnum():
        return True
    match = re.match(r"\\[A-Za-z]+", tex[i:])
    if not match:
        return False
    printed = SYMBOLS.get(match.group(0), match.group(0)[1:])
    return printed[:1].isalnum()


def _last_char(parts: list[str]) -> str:
    """The last character written so far ('' at the start; commands that print nothing skipped)."""
    return next((part[-1] for part in reversed(parts) if part), "")


def _environment(name: str, body: str) -> str:
    """\\begin{name} body \\end{name}: a matrix inline as (a, b; c, d); the rows of aligned or
    cases each on a line of their own (cases: value, then its condition)."""
    rows = [row for row in re.split(r"\\\\(?:\[[^\]]*\])?", body) if row.strip()]   # \\ or \\[2pt]
    cells = [[latex_to_text(cell).strip() for cell in row.split("&")] for row in rows]
    if name.endswith("matrix"):
        return "(" + "; ".join(", ".join(row) for row in cells) + ")"
    if name == "cases":
        return "\n" + "\n".join(_case_rows(cells)) + "\n"
    return "\n" + "\n".join(" ".join(cell for cell in row if cell) for row in cells) + "\n"


CASE_INDENT = "\x01"   # survives _display's strip(); becomes the indent of a cases row
SPOKEN_CONDITIONS = re.compile(r"(otherwise|else|if|when|where|for)\b")


def _case_rows(cells: list[list[str]]) -> list[str]:
    """The rows of a cases environment, indented under the line they complete, the values padded
    to one width and each condition read as one: "dpooled_b  if t = ℓ_b", "0  otherwise"."""
    width = max(len(row[0]) for row in cells)
    rows = []
    for value, *rest in cells:
        condition = " ".join(cell for cell in rest if cell)
        if condition and not SPOKEN_CONDITIONS.match(condition):
            condition = "if " + condition
        rows.append(f"{CASE_INDENT}{value.ljust(width)}    {condition}".rstrip())
    return rows


FENCE = re.compile(r"^[ \t]*```([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)   # info string, body
INLINE_MATH = re.compile(r"\$`(.+?)`\$", re.S)                                     # GitHub's $`...`$


def to_text(markdown: str) -> str:
    """Markdown with LaTeX made readable in a terminal: display math (```math blocks, or $$...$$)
    indented on its own lines, inline math ($`...`$ or $...$) converted in place, **bold** and
    `code` marks dropped; any other fenced code block kept as written, indented, without its fences."""
    parts = FENCE.split(links_that_work_here(markdown))   # prose, info, body, prose, info, body, ..., prose
    pieces = []
    for k in range(0, len(parts), 3):
        pieces.append(_prose_to_text(parts[k]))
        if k + 2 < len(parts):
            info, body = parts[k + 1], parts[k + 2]
            pieces.append(_display(body) if info.strip() == "math" else
                          "\n" + "".join("    " + line + "\n" for line in body.splitlines()))
    text = re.sub(r"\n{3,}", "\n\n", "".join(pieces)).strip("\n") + "\n"
    return text.replace(CASE_INDENT, "  ")      # a cases environment in inline math


def links_that_work_here(markdown: str) -> str:
    """derivations/*.md link each other by relative path ([softmax.md](softmax.md)), dead in a
    notebook written anywhere and Markdown source in a terminal: such a link becomes its text and
    the command that prints the derivation ("softmax.md (`npllama explain softmax`)", or
    "softmax.md, shown by ..." inside a sentence's parentheses); a link to a section of the same
    derivation, its heading quoted (Jupyter's heading anchors are not GitHub's).  Other links (a
    web page, a teacher's file) are kept."""
    known = set(available())

    def replace(match):
        text, target = match.group(1), match.group(2)
        if target.startswith("#"):
            return f"\"{text}\""         # the section's heading, quoted
        name = target.split("#")[0].removesuffix(".md")
        if name not in known or "/" in name:
            return match.group(0)
        command = f"`npllama explain {name}`"
        # in a sentence's parentheses already ("the simpler RMSNorm ([rmsnorm.md](rmsnorm.md))"): no others inside
        return f"{text}, shown by {command}" if _inside_parentheses(markdown, match.start()) else f"{text} ({command})"
    return re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", replace, markdown)


def _inside_parentheses(markdown: str, position: int) -> bool:
    """Whether `position` is inside parentheses opened earlier in its paragraph."""
    before = markdown[markdown.rfind("\n\n", 0, position) + 1:position]
    return before.count("(") > before.count(")")


def _display(tex: str) -> str:
    lines = [line.strip().replace(CASE_INDENT, "  ") for line in re.split(r"\\\\|\n", latex_to_text(tex))
             if line.strip()]
    return "\n" + "\n".join("    " + line for line in lines) + "\n"


def _prose_to_text(markdown: str) -> str:
    text = re.sub(r"\$\$(.+?)\$\$", lambda m: _display(m.group(1)), markdown, flags=re.S)
    text = INLINE_MATH.sub(lambda m: latex_to_text(m.group(1)), text)
    text = re.sub(r"\$(.+?)\$", lambda m: latex_to_text(m.group(1)), text, flags=re.S)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return TABLE.sub(lambda m: _aligned_table(m.group(0)), text)


TABLE = re.compile(r"(?:^[ \t]*\|.*\|[ \t]*\n?)+", re.M)   # consecutive lines of a Markdown table


def _aligned_table(table: str) -> str:
    """A Markdown table with its columns padded again: dropping the `code` and $`math`$ marks
    shortens cells by different amounts.  Left as it is if its rows differ in their number of cells."""
    lines = table.rstrip("\n").split("\n")
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines]
    if len({len(row) for row in rows}) != 1:
        return table
    rule = [all(set(cell) <= set("-: ") and cell for cell in row) for row in rows]
    widths = [max(len(row[col]) for row, is_rule in zip(rows, rule) if not is_rule) for col in range(len(rows[0]))]
    out = ["|" + "|".join("-" * (width + 2) if is_rule else f" {cell.ljust(width)} "
                          for cell, width in zip(row, widths)) + "|"
           for row, is_rule in zip(rows, rule)]
    return "\n".join(out) + table[len(table.rstrip("\n")):]


def dollar_math(markdown: str) -> str:
    """The derivations' GitHub math ($`...`$ inline, ```math blocks) as $...$ and $$...$$, the
    delimiters Jupyter renders."""
    def block(match):
        if match.group(1).strip() != "math":
            return match.group(0)
        indent = re.match(r"[ \t]*", match.group(0)).group(0)
        return f"{indent}$${match.group(2).strip()}$$"
    return INLINE_MATH.sub(lambda m: f"${m.group(1)}$", FENCE.sub(block, markdown))


def explain_steps(name: str, steps: tuple) -> str:
    """The paragraphs of a derivation's backward that begin "**Step N" for the given steps (each up
    to the next step's paragraph or the section's end), as terminal text, under a line saying
    where they come from."""
    quoted = []
    for heading, body in backward_sections(name):
        paragraphs = re.split(r"\n(?=\*\*Step \d)", body)
        quoted += [p for p in paragraphs if any(p.startswith(f"**{step}") for step in steps)]
    if len(quoted) != len(steps):
        raise ValueError(f"{name} has no backward paragraphs for all of {list(steps)}")
    op = Path(name).stem
    source = f"{', '.join(steps)} of the backward in {name} (all of it: npllama explain {op})"
    return f"{source}\n{'-' * len(source)}\n" + "\n".join(to_text(p.strip()) + "\n" for p in quoted).rstrip()


# what a citation of the article is, for a reader who has only the installed package
ARTICLE_NOTE = ("article §N: a section of the tutorial npllama is taught from (its outline numbers); the "
                "tutorial is not part of npllama and is not installed with it -- the derivation stands "
                "on its own")


def explain_text(name: str, backward_only: bool = False, width: int | None = None) -> str:
    """A derivation as terminal text: all of it, or only its backward sections.  Its Test: line
    is told to be the source repository's, with the command that runs the same checks on a
    student's backward, and a citation of the article what that is (ARTICLE_NOTE).  width: the
    columns to fill its prose to (fit_to_width); None keeps the lines as the derivation wraps them."""
    if backward_only:
        parts = backward_sections(name)
        text = "\n".join(f"{heading}\n{'-' * len(heading)}\n{to_text(body)}" for heading, body in parts)
    else:
        text = "\n".join(_where_tests_are(line, name) for line in to_text(derivation_markdown(name)).split("\n"))
    if "article §" in text:
        text = text.rstrip("\n") + "\n\n" + textwrap.fill(ARTICLE_NOTE, 96) + "\n"
    return text if width is None else fit_to_width(text, width)


LIST_ITEM = re.compile(r"(?:\d+\.|[-*]) ")
LABEL = re.compile(r"[A-Z]\w*: ")        # Code: ..., Test: ...: continued under the label's text


def fit_to_width(text: str, width: int) -> str:
    """Terminal text with its prose filled to `width` columns: each paragraph, list item or
    "Label: " line refilled (an item's or a label's lines under its text), any other line longer
    than width wrapped on its own.  Lines a break would garble are left whole: a table row, an
    indented formula or code."""
    out, unit, indent = [], [], ""

    def flush():
        if unit:
            out.append(_fill(" ".join(line.strip() for line in unit), width, indent))
            unit.clear()

    for line in text.split("\n"):
        starts = LIST_ITEM.match(line) or LABEL.match(line)
        if _is_prose(line) and (starts or not unit):       # a paragraph, an item or a label begins
            flush()
            indent = " " * starts.end() if starts else ""
            unit.append(line)
        elif _is_prose(line) or (unit and indent and line.startswith(indent) and _is_prose(line[len(indent):])):
            unit.append(line)                               # the same paragraph, item or label goes on
        else:
            flush()
            out.append(_wrapped_line(line, width))
    flush()
    return "\n".join(out)


def _is_prose(line: str) -> bool:
    """A line of running text: not indented (a formula, code, an item's continuation), not a table
    row, a heading or a heading's underline."""
    return bool(line.strip()) and not line.startswith((" ", "|", "#")) and set(line) != {"-"}


def _wrapped_line(line: str, width: int) -> str:
    if columns(line) <= width or line.startswith(("|", "    ")):
        return line
    indent = re.match(r" *", line).group(0)
    label = LABEL.match(line[len(indent):])
    return _fill(line, width, indent + " " * (label.end() if label else 0))


NO_BREAK = "\x03"       # a space _fill does not break at
SECOND_COLUMN = "\x02"  # after a wide character while textwrap measures: it takes two columns


def _fill(text: str, width: int, indent: str) -> str:
    """textwrap.fill to `width` terminal columns: a wide (CJK) character counts as the two it
    takes, and no line begins with what reads as a list item ("- ", "* ", "+ ", "1. ") but is a
    formula's operator or a number ending a sentence ("n_rep - 1. L depends", "dx = 0. Since")."""
    text = re.sub(r"(?<=\S) (?=(?:[-*+]|\d+\.)(?: |$))", NO_BREAK, text)
    text = "".join(c + SECOND_COLUMN if columns(c) == 2 else c for c in text)
    filled = textwrap.fill(text, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
    return filled.replace(SECOND_COLUMN, "").replace(NO_BREAK, " ")


def _where_tests_are(line: str, name: str) -> str:
    """A Test: line, and where its files are: not in an installed npllama."""
    if not line.startswith("Test: "):
        return line
    from .definitions import EXERCISES

    stem = Path(name).name.removesuffix(".md")
    ops = [op for op, ex in EXERCISES.items() if Path(ex.derivation).name == f"{stem}.md"]
    same = (f"; {' or '.join(f'npllama exercise check {op} FILE' for op in ops)} runs the same checks "
            f"on your own backward" if ops else "")
    note = f"(files of the npllama source repository, not of an installed npllama{same})"
    return f"{line}\n" + textwrap.fill(note, 96, initial_indent="      ", subsequent_indent="      ",
                                       break_on_hyphens=False)
