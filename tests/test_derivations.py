"""Every derivation names the code that implements it and the test that checks it, and both exist.

A `**Code:**` line lists backticked dotted names (`npllama.ops.rmsnorm.rmsnorm_forward`), each of
which must import; a `**Test:**` line lists backticked paths (optionally `path::test_name`), each
of which must exist.  Every op module in npllama/ops has its derivation.
"""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DERIVATIONS = sorted((ROOT / "derivations").glob("*.md"))
OPS = sorted(p.stem for p in (ROOT / "npllama" / "ops").glob("*.py") if not p.stem.startswith("_"))


def references(path: Path, label: str) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.startswith(f"**{label}:**")]
    return [ref for line in lines for ref in re.findall(r"`([^`]+)`", line)]


def resolve(dotted: str):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_there_are_derivations():
    assert len(DERIVATIONS) >= 9


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_derivation_and_a_test(op):
    assert (ROOT / "derivations" / f"{op}.md").is_file(), f"npllama/ops/{op}.py has no derivations/{op}.md"
    assert (ROOT / "tests" / "ops" / f"test_{op}.py").is_file(), f"npllama/ops/{op}.py has no tests/ops/test_{op}.py"


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_code_and_test_references_exist(path):
    code, tests = references(path, "Code"), references(path, "Test")
    assert code, f"{path.name} has no **Code:** line"
    assert tests, f"{path.name} has no **Test:** line"
    for dotted in code:
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as error:
            pytest.fail(f"{path.name}: Code reference `{dotted}` does not resolve ({error})")
    for ref in tests:
        file, _, test_name = ref.partition("::")
        assert (ROOT / file).is_file(), f"{path.name}: Test reference `{ref}` names no file"
        if test_name:
            assert re.search(rf"def {re.escape(test_name)}\b", (ROOT / file).read_text()), \
                f"{path.name}: `{ref}`: no test {test_name} in {file}"


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_math_uses_the_delimiters_github_reads_literally(path):
    r"""GitHub's Markdown reaches into $...$ and $$...$$ math before MathJax sees it (reported in
    github/markup#1746 and mathjax/MathJax-src#1257): backslash escapes eat the backslash of \_ and
    \, (x\_centered turns into x subscript c, then "entered"; \, into a comma), a line of a $$ block
    starting with "- " becomes a list item, and "}_{" can open emphasis.  Inside ```math blocks and
    $`...`$ spans it does none of this (docs.github.com, "Writing mathematical expressions"), and
    npllama explain and the exercise notebook read both."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.S | re.M)   # fenced blocks, ```math too
    text = re.sub(r"\$`[^`]*`\$", "", text)                                  # $`...`$
    text = re.sub(r"`[^`]*`", "", text)                                        # code spans
    for line in text.splitlines():
        assert "$" not in line, (f"{path.name}: math in $...$ or $$...$$ ({line.strip()[:60]!r}); "
                                 "write $`...`$ inline and a ```math block for display")
