"""docs/gradcheck.md's examples run as written, in order, in one namespace."""
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "gradcheck.md"


def test_every_python_block_of_the_gradcheck_guide_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6, "the guide's examples were not found"
    namespace = {"__name__": "docs_gradcheck"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)   # noqa: S102
    printed = capsys.readouterr().out
    assert "all gradients match" in printed and "worst probe at" in printed


def test_the_report_the_guide_shows_is_what_its_first_example_prints(capsys):
    text = DOC.read_text(encoding="utf-8")
    first = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    exec(compile(first, f"{DOC.name} block 1", "exec"), {"__name__": "docs_gradcheck"})   # noqa: S102
    shown = re.search(r"```\n(input .*?)```", text, flags=re.S).group(1).splitlines()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(shown) and printed[0] == shown[0] and printed[-1] == shown[-1]
    # the numbers (and so the worst entry) may differ in the last digits with the CPU's tanh:
    # name, shape, method, coverage and verdict must be the same
    ours, theirs = printed[1].split(), shown[1].split()
    assert ours[:6] == theirs[:6] and ours[-1] == theirs[-1] == "ok"


def test_the_cost_the_guide_states_is_what_a_check_takes():
    # "a (40, 50) input, all 2000 entries, takes about 8000 calls, and a (64, 64) one about 150"
    import numpy as np

    from npllama import gradcheck

    for shape, low, high in (((40, 50), 7900, 8300), ((64, 64), 120, 200)):
        x = np.random.default_rng(0).standard_normal(shape)
        calls = []
        fn = lambda v: calls.append(1) or float(np.sum(np.tanh(v)))
        assert gradcheck(fn, [x], [1 - np.tanh(x) ** 2]).ok
        assert low <= len(calls) <= high, (shape, len(calls))


def test_the_numerical_gradient_the_guide_shows_is_exported_where_it_says():
    # DESIGN.md: "a numerical gradient helper a student can call"; the guide imports it from npllama,
    # which did not export it (it lived only in npllama.gradcheck)
    import npllama
    from npllama.gradcheck import numerical_gradient

    assert "numerical_gradient" in npllama.__all__ and npllama.numerical_gradient is numerical_gradient
    assert "from npllama import numerical_gradient" in DOC.read_text(encoding="utf-8")
