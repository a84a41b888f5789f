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


def test_the_guides_test_suite_recipe_draws_values_with_hypothesis_and_catches_a_wrong_backward():
    # the README promises a hypothesis property test users can copy; the guide's drew shapes only
    # (values from a fixed normal), and never showed that its test fails on a wrong backward
    import numpy as np

    text = DOC.read_text(encoding="utf-8")
    assert "hypothesis.extra.numpy import arrays" in text and "deadline=None" in text
    namespace = {"__name__": "docs_gradcheck"}
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S), 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)   # noqa: S102
    recipe = namespace["test_leaky_relu_backward"]

    def slope_forgotten(dout, cache):        # the negative side's slope dropped: 0 there
        x, _ = cache
        return dout * np.where(x > 0, 1.0, 0.0)

    recipe()                                 # the right backward passes every draw
    namespace["leaky_relu_backward"] = slope_forgotten
    # one draw with an entry on the negative side, the test's body as hypothesis runs it (no shrinking)
    with pytest.raises(AssertionError, match=r"gradient check failed \(FAIL: input0\):"):
        recipe.hypothesis.inner_test(x=np.array([[0.5, -2.0, 3.0]]), slope=0.1, seed=7)
