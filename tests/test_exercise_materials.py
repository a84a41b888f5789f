"""The math travels with the package: derivations as package data, `npllama explain`, the starter
file's quoted derivation and rule, and the exercise notebook."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npllama
from npllama.exercises import EXERCISES, check_file, starter_source, write_starter
from npllama.exercises.derivation import (ACCENTS, NAMED_FUNCTIONS, SYMBOLS, available, backward_sections,
                                         derivation_markdown, dollar_math, explain_text, latex_to_text, to_text)
from npllama.exercises.notebook import notebook_json, write_notebook
from npllama.text_width import width as columns


def test_latex_becomes_readable_text():
    assert latex_to_text(r"\frac{1}{\sqrt{\mathrm{var} + \mathrm{eps}}}") == "1/sqrt(var + eps)"
    assert latex_to_text(r"\mathrm{dx} = \mathrm{rstd}\,(\mathrm{dxhat} - \mathrm{xhat}\odot\mathrm{m})") == \
        "dx = rstd (dxhat - xhat*m)"
    assert latex_to_text(r"\sum_{j} x_j^2") == "sum_j x_j^2"
    assert latex_to_text(r"\mathrm{scale}\sum_j") == "scale sum_j"
    text = to_text("Given $\\mathrm{dy}$:\n\n$$\\mathrm{dx} = \\frac{a}{b}$$\n\nand **bold** `code`.")
    assert text == "Given dy:\n\n    dx = a/b\n\nand bold code.\n"


def test_latex_environments_and_spacing_become_readable_text():
    """What the derivations use beyond plain formulas: aligned rows, cases, matrices, \\ell, x^{(\\ell)}."""
    aligned = to_text("$$\\begin{aligned}\np &\\leftarrow p - \\mathrm{lr}\\, g && \\text{(update)}\\\\\n"
                      "m &= \\beta m\n\\end{aligned}$$")
    assert aligned == "    p <- p - lr g (update)\n    m = β m\n"
    # a cases environment: its rows indented under the line they complete, values padded to one
    # width, each condition read as one ("if ..." unless it says "otherwise" itself)
    cases = to_text("$$y = \\begin{cases} ab & t = \\ell,\\\\[2pt] 0 & \\text{otherwise.}\\end{cases}$$")
    assert cases == "    y =\n      ab    if t = ℓ,\n      0     otherwise.\n"
    assert "\x01" not in to_text("$`\\begin{cases} a & t > 0 \\end{cases}`$")   # inline too
    # a fraction, or a word, runs into the word after it only with a space between; not into a symbol
    assert latex_to_text(r"\frac{1}{\sum c}\sum_{n} \ell_n") == "1/(sum c) sum_n ℓ_n"
    assert latex_to_text(r"\pi\cdot\mathrm{progress}") == "π·progress"
    # an operator spaced after it in the source is spaced before it too; a tight one stays tight
    assert [latex_to_text(t) for t in (r"\infty\cdot 0", r"\mathrm{lr}\cdot m", r"a \cdot b", r"2\cdot3")] == \
        ["inf · 0", "lr · m", "a · b", "2·3"]
    assert to_text("$`w`$ $`\\approx 0`$") == "w ≈ 0\n"   # no second space where a math span begins
    assert latex_to_text(r"M = \begin{pmatrix} \cos\phi & -\sin\phi \\ \sin\phi & \cos\phi \end{pmatrix}") == \
        "M = (cos φ, -sin φ; sin φ, cos φ)"
    assert latex_to_text(r"\mathrm{scale}\textstyle\sum_{h} q_h") == "scale sum_h q_h"
    assert latex_to_text(r"x^{(\ell)}") == "x^(ℓ)"


def test_tables_are_realigned_once_code_and_math_marks_are_dropped():
    table = ("| name             | shape          |\n"
             "|------------------|----------------|\n"
             "| `x`, `dx`        | $`(\\dots, D)`$ |\n"
             "| `scaling`        | scalar         |\n")
    assert to_text(table) == ("| name    | shape    |\n"
                              "|---------|----------|\n"
                              "| x, dx   | (..., D) |\n"
                              "| scaling | scalar   |\n")
    ragged = "| a | b |\n| c |\n"                      # not one table shape: left as written
    assert to_text(ragged) == ragged


def test_the_commands_the_audit_found_become_text():
    assert latex_to_text(r"\boxed{\mathrm{dx} = 1}") == "dx = 1"
    assert latex_to_text(r"\mathrm{dx} \mathrel{+}= M^T du") == "dx += M^T du"
    assert latex_to_text(r"\lfloor h / n \rfloor \bmod 2") == "⌊ h / n ⌋ mod 2"
    assert latex_to_text(r"a \lor b \land c, x \gg y \ll z \mp w \lesssim v") == "a or b and c, x >> y << z -+ w ≲ v"
    assert latex_to_text(r"\unknowncommand x") == r"\unknowncommand x"     # visible, so the test below fails


def test_a_subscripted_exponent_or_subscript_keeps_its_brackets():
    r"""cross_entropy.md's e^{z_{n,j}} is e to the z_(n,j), not (e^z)_(n,j); softmax(z_n)_{t_n} is
    entry t_n, not a chain of subscripts."""
    assert latex_to_text(r"\sum_j e^{z_{n,j}}") == "sum_j e^(z_(n,j))"
    assert latex_to_text(r"\mathrm{softmax}(z_n)_{t_n}") == "softmax(z_n)_(t_n)"
    assert latex_to_text(r"J_{\mathrm{N}_{w_{in}}}^T") == "J_(N_(w_in))^T"
    assert latex_to_text(r"e^{\sqrt{x}} + x_{\mathrm{drop}}") == "e^sqrt(x) + x_drop"


def test_an_accent_is_kept_and_a_code_block_is_shown_as_written():
    r"""adamw.md's \hat m = m / (1 - \beta_1^{\,t}) printed as "m = m / (1-β_1^( t))"; a fenced
    block lost a backtick at each end and left one dangling in the text after it."""
    assert latex_to_text(r"\hat m = m / (1-\beta_1^{\,t})") == "m_hat = m / (1-β_1^t)"
    assert latex_to_text(r"\sqrt{\hat{v}} + \bar x") == "sqrt(v_hat) + x_bar"
    text = to_text("Code:\n\n```python\nm_hat = m / (1 - beta1 ** t)   # `m` $x$\n```\n\nthen `y` and $\\hat v$.\n")
    assert text == "Code:\n\n    m_hat = m / (1 - beta1 ** t)   # `m` $x$\n\nthen y and v_hat.\n"


def test_githubs_math_delimiters_become_text_and_jupyters():
    """The derivations write math as GitHub reads it literally: ```math blocks and $`...`$ inline.
    The terminal shows both as text; the notebook turns them into the $$...$$ and $...$ Jupyter renders."""
    markdown = ("Given $`\\mathrm{x\\_centered}_j`$:\n\n```math\n\\mathrm{dx} = \\frac{a}{b}\\,c\n```\n\n"
                "```python\nx = 1\n```\n")
    assert to_text(markdown) == "Given x_centered_j:\n\n    dx = a/b c\n\n    x = 1\n"
    assert dollar_math(markdown) == ("Given $\\mathrm{x\\_centered}_j$:\n\n$$\\mathrm{dx} = \\frac{a}{b}\\,c$$\n\n"
                                     "```python\nx = 1\n```\n")


def _rendered_materials():
    """Every derivation as `explain` prints it (whole and backward only) and every starter file."""
    for name in available():
        yield f"explain {name}", explain_text(name)
        yield f"explain {name} --backward", explain_text(name, backward_only=True)
    for op in EXERCISES:
        yield f"starter {op}", starter_source(op)


def test_no_latex_command_survives_in_explain_or_the_starters():
    for where, text in _rendered_materials():
        left = re.findall(r"\\[A-Za-z]+", text)
        assert not left, f"{where} still shows LaTeX: {sorted(set(left))}"


def test_fenced_code_is_shown_verbatim_in_explain_and_the_starters():
    """A ```python block is code: indented, its ** kept (not read as bold), no backticks left over
    (cross_entropy.md's vectorised formula once came out as "``python ... `")."""
    assert to_text("Code:\n\n```python\ny = x ** 2\n```\n\nThen `y`.") == "Code:\n\n    y = x ** 2\n\nThen y.\n"
    assert "\n    dlogits[np.arange(N), safe_targets] -= 1" in explain_text("derivations/cross_entropy.md")
    for where, text in _rendered_materials():
        quoted = text if where.startswith("explain") else "\n".join(
            line for line in text.splitlines() if line.startswith("#"))     # a starter's own docstring has `op`
        assert "`" not in quoted, where


def test_no_latex_command_survives_as_a_bare_word():
    r"""Each math segment of each derivation rendered alone: a command's name must not come out as
    a word (\boxed -> 'boxed') unless it is meant to (\cos -> 'cos', \max -> 'max') or the segment
    has the word itself."""
    meant = (NAMED_FUNCTIONS | {word for word in SYMBOLS.values() if word.isalpha()} | {"sqrt"}   # sqrt(...)
             | {suffix.strip("_") for suffix in ACCENTS.values()})                      # m_hat
    for name in available():
        for segment in re.findall(r"\$\$(.+?)\$\$|\$(.+?)\$", dollar_math(derivation_markdown(name)), flags=re.S):
            math = segment[0] or segment[1]
            commands = set(re.findall(r"\\([A-Za-z]+)", math)) - meant
            rendered = set(re.findall(r"[A-Za-z]+", latex_to_text(math)))
            written = set(re.findall(r"(?<![\\A-Za-z])[A-Za-z]+", math))
            bare = (commands & rendered) - written
            assert not bare, f"derivations/{name}.md: {sorted(bare)} left as words in ${math}$"


def test_every_exercise_has_a_derivation_with_a_backward_section():
    names = available()
    assert {"adamw", "transformer_block"} <= set(names)
    for op, ex in EXERCISES.items():
        sections = backward_sections(ex.derivation)
        assert sections, op
        text = explain_text(ex.derivation, backward_only=True)
        assert "$" not in text and "\\frac" not in text and "\\mathrm" not in text, op


def test_explain_command(capsys):
    from npllama.cli import main

    assert main(["explain", "rmsnorm", "--backward"]) == 0
    out = capsys.readouterr().out
    assert "Backward, step by step" in out and "dx = rstd (dxhat - xhat·mean(dxhat*xhat))" in out
    assert main(["explain", "swiglu_act"]) == 0          # an exercise's name finds its derivation
    assert "SwiGLU" in capsys.readouterr().out
    assert main(["explain"]) == 0 and "transformer_block" in capsys.readouterr().out
    assert main(["explain", "nope"]) == 2
    assert "unknown op or derivation 'nope' (did you mean 'rope'?)" in capsys.readouterr().err
    assert main(["explain", "qqq"]) == 2
    err = capsys.readouterr().err
    assert "unknown op or derivation 'qqq'" in err and "did you mean" not in err
    assert main(["explain", "layrnorm"]) == 2
    assert "did you mean 'layernorm'?" in capsys.readouterr().err
    # the name as a paper writes it, or a path to the file: pointed at the name to type
    for typed, meant in [("RMSNorm", "rmsnorm"), ("SwiGLU_act", "swiglu_act"),
                         ("/home/me/npllama/derivations/rmsnorm.md", "rmsnorm"), ("../derivations/RoPE.md", "rope")]:
        assert main(["explain", typed]) == 2
        err = capsys.readouterr().err
        assert f"unknown op or derivation {typed!r} (did you mean {meant!r}?)" in err, err


def test_starter_quotes_the_backward_section_and_states_the_rule(tmp_path, capsys, monkeypatch):
    source = starter_source("layernorm")
    assert "# ----- the math you need" in source and "# Backward, step by step" in source
    assert "The rule:" in source and "differentiate it numerically is refused" in source
    compile(source, "layernorm_backward.py", "exec")
    from npllama.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["exercise", "start", "softmax"]) == 0
    out = capsys.readouterr().out
    assert "The math you need (derivations/softmax.md)" in out and "dx = p*(dp - sum_(last axis)(dp* p))" in out


def shown_by_cell(source: str, namespace: dict) -> str:
    """Run a notebook cell as Jupyter does and return what it shows: the value of its last line
    when that is an expression (as IPython's pretty printer shows it), else ''."""
    import ast

    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return ""
    value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
    try:
        from IPython.lib.pretty import pretty
    except ImportError:          # IPython shows a value by its _repr_pretty_, else its repr
        return "" if value is None else str(value)
    return "" if value is None else pretty(value)


def test_notebook_has_derivation_starter_and_check(tmp_path):
    notebook = notebook_json("rmsnorm")
    assert notebook["nbformat"] == 4
    kinds = [c["cell_type"] for c in notebook["cells"]]
    assert kinds == ["markdown", "markdown", "code", "code", "code", "markdown"]
    derivation, setup, starter, check = ("".join(c["source"]) for c in notebook["cells"][1:5])
    assert "## Backward, step by step" in derivation
    assert "$$" in derivation and "```math" not in derivation
    assert "from npllama.exercises import check_function" in setup and "def " not in setup, setup
    assert "def rmsnorm_backward(dy, cache):" in starter
    assert "check_function('rmsnorm', rmsnorm_backward)" in check
    path = write_notebook("rmsnorm", tmp_path / "class")
    assert path == tmp_path / "class" / "rmsnorm_backward.ipynb"
    assert [c["cell_type"] for c in json.loads(path.read_text())["cells"]] == kinds
    with pytest.raises(FileExistsError, match="--force"):
        write_notebook("rmsnorm", path)
    namespace = {}           # the cells run in order, and the check cell reports "not implemented"
    exec(setup, namespace)
    exec(starter, namespace)
    shown = shown_by_cell(check, namespace)
    assert shown.startswith("exercise rmsnorm: rmsnorm_backward\n") and "not implemented yet" in shown, shown
    # in a notebook there is no file to pass to `npllama exercise check`, and the math is the cell above
    assert "run the next cell to check it" in starter and "npllama exercise check" not in starter
    assert "# ----- the math you need" not in starter and "(the cell above;" in starter
    assert "npllama exercise check" not in shown and "run the check again" in shown


@pytest.mark.parametrize("op", ["rmsnorm", "attention"])
def test_the_notebooks_check_is_imported_before_the_students_cell_which_runs_alone(op):
    """The check cell imported check_function, so the student's cell always ran before the check
    began telling which cells ended without an error (session.watch_cells): a def of theirs in a
    branch not taken got a two-cause message.  The first code cell imports it now; the student's
    cell -- the one handed in as <op>_backward.py -- still imports nothing of npllama.exercises
    (`exercise check` refuses such a file) and runs on its own."""
    cells = [c for c in notebook_json(op)["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in cells]
    backward = EXERCISES[op].backward_name
    assert "import check_function" in sources[0] and f"def {backward}(" not in sources[0], sources[0]
    students = [s for s in sources if f"def {backward}(" in s]
    assert students == [sources[1]], sources
    assert "npllama.exercises" not in sources[1], sources[1]
    namespace = {}
    exec(sources[1], namespace)          # on its own, as the file handed in runs
    assert callable(namespace[backward])


def test_notebook_is_valid_nbformat(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    path = write_notebook("attention", tmp_path / "a.ipynb")
    nbformat.validate(nbformat.read(str(path), as_version=4))


def test_derivations_are_package_data_of_the_build(tmp_path):
    """setup.py copies derivations/*.md into the built package as npllama/derivations/."""
    root = Path(npllama.__file__).resolve().parents[1]
    if not (root / "setup.py").is_file() or not (root / "derivations").is_dir():
        pytest.skip("not a source checkout")
    # setup.py runs with this environment's setuptools, not the isolated one pip builds with; the
    # SPDX license field in pyproject.toml needs setuptools >= 77 (a fresh venv may carry an older one)
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip(f"setuptools {version('setuptools')} here; building needs >= 77 (pip install -U setuptools)")
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    shipped = sorted(p.name for p in (tmp_path / "npllama" / "derivations").glob("*.md"))
    assert shipped == sorted(p.name for p in (root / "derivations").glob("*.md"))
    assert (tmp_path / "npllama" / "exercises" / "catalogue.py").is_file()


def test_starter_quotes_the_ops_own_cache_type():
    """The cache is described once, by the op's NamedTuple: the starter quotes its fields."""
    import inspect

    from npllama.ops.attention import AttentionCache

    for op in EXERCISES:
        assert "CACHE" not in starter_source(op), op
    text = starter_source("attention")
    assert "AttentionCache, the named tuple attention_forward returns" in text
    for field in AttentionCache._fields:
        assert f"{field}: " in text
    assert "attn_probs: np.ndarray   # (B, H, T, S)" in inspect.getsource(AttentionCache) and \
        "attn_probs: np.ndarray   # (B, H, T, S)" in text


def test_the_block_starter_quotes_its_cache_and_the_attention_sub_layers_with_their_shapes():
    """The block's cache nests the attention sub-layer's: a student writing block_backward from the
    starter alone needs both with their comments (it said "read its docstring", a one-liner, and
    named the fields without a shape; the shapes were comments in model.py, not in help())."""
    from npllama.model import AttentionLayerCache, BlockCache

    text = starter_source("block")
    assert "BlockCache, the named tuple block_forward returns" in text
    for kind in (BlockCache, AttentionLayerCache):
        for field in kind._fields:
            assert f"{field}: " in text, field
    assert "step 1: x (B, T, D), rstd (B, T, 1), w_in" in text
    assert "attn_probs (B, H, T, S)" in text and "o_proj: LinearCache" in text


def test_the_model_starter_says_what_its_forward_returns_and_what_its_helpers_give():
    """model_forward returns the logits, and model_backward takes the config too; LAYER_PATHS and
    block_backward's result were imported "yours to use" without a word on what they hold."""
    from npllama.model import LAYER_PATHS

    text = " ".join(starter_source("model").split())
    assert "returns (logits, cache)" in text and "returns (out, cache)" not in text
    assert "gradient of the loss with respect to logits (dlogits), that cache and config" in text
    assert repr(LAYER_PATHS[1]) in text and "model.layers.{i}.{path}.weight" in text
    assert "block_backward(dx, cache.layers[i]) returns (dx, LayerWeights)" in text
    assert "returns (out, cache)" in starter_source("block")


def test_the_model_starter_lists_layer_paths_from_the_tuple():
    """LAYER_PATHS was written out by hand in the model's docstring, three of nine with '...' between."""
    from npllama.model import LAYER_PATHS

    text = " ".join(starter_source("model").split())
    assert "(" + ", ".join(repr(path) for path in LAYER_PATHS) + ")" in text


def test_the_model_starter_quotes_the_embedding_cache():
    """embed_tokens was a name without its fields (tokens, weight_shape, dtype), while the block's
    starter quotes its caches; the model's backward reads cache.embed_tokens.tokens."""
    from npllama.ops.embedding import EmbeddingCache

    from npllama.model import ModelCache

    text = " ".join(starter_source("model").split())
    assert "embed_tokens, an EmbeddingCache" in text
    # ModelCache's own fields, quoted from the class (test_exercise_classroom_leftovers holds them to it)
    for field in ModelCache._fields:
        assert re.search(rf"\b{field}\b", text), field
    for field in EmbeddingCache._fields:
        assert f"{field}: " in text, field
    assert "weight_shape: tuple # (V, D)" in text


def test_the_report_shown_in_the_debugging_guide_is_what_check_prints(tmp_path):
    """docs/debugging.md quotes a whole report for RMSNorm's missing projection term: it must stay
    what `exercise check` prints for that file."""
    from npllama.exercises import check_file
    from npllama.exercises.planted import PLANTED

    guide = Path(__file__).resolve().parents[1] / "docs" / "debugging.md"
    if not guide.is_file():
        pytest.skip("not a source checkout")
    text = guide.read_text(encoding="utf-8")
    start = text.index("exercise rmsnorm: rmsnorm_backward in rmsnorm_backward.py")
    quoted = text[start:text.index("```", start)].rstrip("\n")
    bug = next(b for b in PLANTED if b.op == "rmsnorm" and b.label == "missing term")
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text(bug.source)
    printed = check_file("rmsnorm", path).format().replace(str(path), "rmsnorm_backward.py")
    assert printed == quoted


def test_the_rule_does_not_forbid_the_helpers_the_starter_imports():
    """The block exercise is built from the ops' backward passes: its starter imports them, so the
    rule it quotes must not say that importing npllama's ops is refused."""
    text = starter_source("block")
    assert "from npllama.ops.rmsnorm import rmsnorm_backward" in text
    assert "plus the helpers this exercise names" in text and "imports npllama's ops" not in text


def test_an_exercise_on_part_of_a_derivation_quotes_only_its_steps():
    # swiglu_act is act = silu(gate) * up: its starter quotes swiglu.md's steps 2 and 3, not the
    # projections around them (steps 1 and 4), and says where the rest is
    from npllama.exercises.definitions import get_exercise
    from npllama.exercises.starter import derivation_quote, starter_source

    quote = derivation_quote(get_exercise("swiglu_act"))
    assert "Step 2" in quote and "Step 3" in quote and "silu'" in quote
    assert "Step 1" not in quote and "Step 4" not in quote and "W_gate" not in quote
    assert "npllama explain swiglu" in quote
    assert "Step 2" in starter_source("swiglu_act") and "Step 4" not in starter_source("swiglu_act")
    whole = derivation_quote(get_exercise("swiglu"))
    assert "Step 1" in whole and "Step 4" in whole


@pytest.mark.parametrize("name,commands", [("rmsnorm", ["npllama exercise check rmsnorm FILE"]),
                                           ("swiglu", ["npllama exercise check swiglu_act FILE",
                                                       "npllama exercise check swiglu FILE"]),
                                           ("adamw", [])])
def test_explain_says_where_the_tests_and_the_article_it_cites_are(name, commands):
    """A pip-installed student has neither tests/ nor the article: explain says the test files are
    the source repository's, the command that runs the same checks on their own backward, and what
    "article §4.2" is."""
    lines = explain_text(name).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Test: "))
    note = " ".join(line.strip() for line in lines[at + 1:at + 4])
    assert "npllama source repository" in note, lines[at:at + 3]
    for command in commands:
        assert command in note, lines[at:at + 3]
    if not commands:
        assert "exercise check" not in note, lines[at:at + 3]
    text = "\n".join(lines)
    if "article §" in derivation_markdown(name):
        assert "article §N: " in text and "not part of npllama" in text, text[-400:]


def test_a_starter_says_what_the_article_it_cites_is(tmp_path):
    source = starter_source("rmsnorm")
    assert "article §4.2" in source.splitlines()[0]
    assert "article §N: " in source and "not part of npllama" in source, source[:800]


def test_the_notebook_says_what_file_to_hand_in_and_train_with(tmp_path):
    """The intro said `npllama exercise train softmax FILE` to a student who has no file, and
    nothing said what to hand in: `exercise check` grades .py files only (a notebook is listed as
    not graded).  The last cell says which file to save the solution cell as, without the check
    cell, and what to run on it; the check cell says what its NameError means."""
    cells = notebook_json("softmax")["cells"]
    text = "".join("".join(c["source"]) for c in cells)
    assert "FILE" not in text, text
    last = "".join(cells[-1]["source"])
    assert cells[-1]["cell_type"] == "markdown" and "softmax_backward.py" in last, last
    assert "npllama exercise check softmax softmax_backward.py" in last, last
    assert "npllama exercise train softmax softmax_backward.py" in last, last
    check = "".join(cells[-2]["source"])
    assert "check_function('softmax', softmax_backward)" in check and "NameError" in check, check
    assert "import" not in check, check         # the first code cell imports it


@pytest.mark.parametrize("op, trains", [("rmsnorm", True), ("layernorm", False), ("block", False), ("lora", False)])
def test_the_notebook_offers_exercise_train_only_where_it_runs(op, trains):
    """The intro offered `exercise train` for every built-in exercise; it takes only the ops of the
    model's training step (layernorm, block, lora ... are refused)."""
    text = "".join("".join(c["source"]) for c in notebook_json(op)["cells"])
    assert ("npllama exercise train" in text) == trains, text[-600:]


@pytest.mark.parametrize("op", ["softmax", "cross_entropy", "block"])
def test_the_notebooks_derivation_has_no_dead_links(op):
    """derivations/*.md link each other by relative path ([cross_entropy.md](cross_entropy.md)),
    dead in a notebook written anywhere: each is the derivation's name and the command printing it,
    and a link to a section of the same derivation is its name (Jupyter's heading anchors differ)."""
    derivation = "".join(notebook_json(op)["cells"][1]["source"])
    assert not re.search(r"\]\((?!https?:)[^)]*\)", derivation), re.findall(r"\[[^\]]*\]\([^)]*\)", derivation)
    linked = {name for name in available() if f"({name}.md)" in derivation_markdown(EXERCISES[op].derivation)}
    assert linked, "the derivation links none: the test proves nothing"
    for name in linked:
        assert f"`npllama explain {name}`" in derivation, name


def test_a_derivations_link_in_parentheses_reads_without_nested_ones():
    """'the simpler RMSNorm ([rmsnorm.md](rmsnorm.md))' became '(rmsnorm.md (`npllama explain
    rmsnorm`))': a link already inside parentheses names the command without opening others."""
    shown = 0
    for op, exercise in EXERCISES.items():
        if not exercise.derivation:
            continue
        derivation = "".join(notebook_json(op)["cells"][1]["source"])
        for paragraph in derivation.split("\n\n"):
            for command in re.finditer(r"`npllama explain \w+`", paragraph):
                before = paragraph[:command.start()]
                shown += 1
                assert before.count("(") - before.count(")") <= 1, (op, paragraph[max(0, command.start() - 80):
                                                                                  command.end() + 5])
    assert shown, "no derivation links another: the test proves nothing"


def test_the_loss_starter_says_what_its_upstream_gradient_is_of():
    """cross_entropy's forward returns the loss: its upstream gradient is the final objective's with
    respect to the loss, not 'the loss with respect to loss'."""
    from npllama.exercises import EXERCISES
    from npllama.exercises.starter import starter_source

    text = " ".join(starter_source(EXERCISES["cross_entropy"]).split())
    assert "the gradient of the loss with respect to loss" not in text, text
    assert "the gradient of the final objective with respect to the loss (dloss)" in text, text
    text = " ".join(starter_source(EXERCISES["rmsnorm"]).split())
    assert "the gradient of the loss with respect to y (dy)" in text, text


@pytest.mark.parametrize("write,wrong", [(write_notebook, "mine.py"), (write_starter, "mine.ipynb")])
def test_an_out_naming_the_other_kind_of_file_is_refused_not_made_a_folder(tmp_path, write, wrong):
    """`exercise notebook --out mine.py` made a folder mine.py/ holding the notebook, and `exercise
    start --out rmsnorm_backward.ipynb` beside the student's notebook failed with "[Errno 17] File
    exists" (it tried to make a folder of the notebook).  A name ending in the other kind's suffix
    is a mistake to name; a folder (new, or with a dot in its name) still takes the default name."""
    suffix = ".ipynb" if write is write_notebook else ".py"
    for exists in (False, True):
        target = tmp_path / ("there" if exists else "new") / wrong
        if exists:
            target.parent.mkdir()
            target.write_text("the student's work")
        with pytest.raises(ValueError, match=rf"ends in {re.escape(target.suffix)}.*ending in {re.escape(suffix)}"):
            write("rmsnorm", target)
        assert not target.is_dir()
    assert write("rmsnorm", tmp_path / "week3.2") == tmp_path / "week3.2" / f"rmsnorm_backward{suffix}"
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write("rmsnorm", tmp_path / "notes.txt")


def test_a_notebook_saved_as_a_script_is_refused_for_its_check_cell_not_for_cheating(tmp_path):
    """Jupyter's "Download as Python" keeps every code cell, the check's import among them: the
    refusal said "npllama's own code would do the exercise for you", which npllama.exercises (the
    checker) does not; it says which cell to leave out."""
    cells = ["".join(c["source"]) for c in notebook_json("softmax")["cells"] if c["cell_type"] == "code"]
    cells[1] = cells[1].replace('raise NotImplementedError("softmax_backward is not implemented yet")',
                                "return cache * (dp - np.sum(dp * cache, axis=-1, keepdims=True))")
    script = tmp_path / "softmax_backward.py"
    script.write_text("".join(f"\n# In[ ]:\n\n\n{cell}\n" for cell in cells))
    refused = check_file("softmax", script).refused
    assert refused and "check cell" in refused and "do the exercise for you" not in refused, refused
    assert "npllama.exercises" in refused, refused
    # an op of npllama is still refused for what it is
    op = tmp_path / "op.py"
    op.write_text("from npllama.ops.softmax import softmax_backward as library\n")
    assert "would do the exercise for you" in check_file("softmax", op).refused


def test_explain_and_the_starter_show_a_link_to_another_derivation_as_the_command_that_prints_it():
    """In a terminal or a starter file '([layernorm.md](layernorm.md))' is Markdown source, and the
    file is not beside the student: the link reads as the notebook's does, with the command."""
    texts = {f"explain {name}": explain_text(name) for name in available()}
    texts.update({f"start {op}": starter_source(op) for op, ex in EXERCISES.items() if ex.derivation})
    linked = 0
    for where, text in texts.items():
        assert not re.search(r"\]\((?!https?:)[^)]*\)", text), (where, re.findall(r"\[[^\]]*\]\([^)]*\)", text))
        linked += text.count(", shown by npllama explain ") + text.count("(npllama explain ")
    assert linked, "no derivation links another: the test proves nothing"
    assert "LayerNorm (layernorm.md, shown by npllama explain layernorm) it drops" in " ".join(
        explain_text("rmsnorm").split())


def test_explain_fits_its_prose_to_the_terminal_and_loses_no_word(capsys, monkeypatch):
    """The derivations are wrapped at about 100 columns (some lines run to 380): at 80 columns a
    terminal broke every prose line mid-word.  Prose and list items are filled to the width; a
    table row or a displayed formula is left whole (breaking it would garble it)."""
    from npllama.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    for name in available():
        assert main(["explain", name]) == 0
        shown = capsys.readouterr().out
        as_written = explain_text(name)
        assert shown.split() == as_written.split(), name          # the same words, in the same order
        # the derivation's own table rows and indented formulas (not the note explain adds under Test:)
        kept_whole = [line for line in to_text(derivation_markdown(name)).splitlines() if line.startswith(("|", "    "))]
        assert kept_whole, name
        for line in shown.splitlines():
            assert len(line) <= 80 or line in kept_whole, (name, line)
        assert all(line in shown.splitlines() for line in kept_whole), name


@pytest.mark.parametrize("width", [40, 80])
def test_explain_counts_a_wide_character_as_the_two_columns_it_takes(width):
    """The derivations cite the article's Chinese section titles (adamw.md: 梯度下降优化): filled
    by character count, such a line ran past 80 columns and the terminal broke it mid-word."""
    wide = 0
    for name in available():
        as_written = explain_text(name)
        kept_whole = {line for line in as_written.splitlines() if line.startswith(("|", "    "))}
        for line in explain_text(name, width=width).splitlines():
            wide += columns(line) != len(line)
            longest_word = max((columns(word) for word in line.split()), default=0)
            assert columns(line) <= width or line in kept_whole or longest_word > width - 8, (name, line)
    assert wide, "no derivation has a wide character: the test proves nothing"


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_a_line_break_inside_a_formula_does_not_make_a_list_item(width):
    """Filling prose broke '... = 0. Since ...' and 'g · n_rep + n_rep - 1. L depends ...' before
    the '0.' or '- 1.', so a line began like a numbered or bulleted item that the derivation does
    not have (softmax at 40 columns: a fully masked row has dx = / 0. Since sum_i p_i = 1)."""
    item = re.compile(r" *(?:\d+\.|[-*+]) ")
    for name in available():
        items = {" ".join(line.split()[:3]) for line in explain_text(name).splitlines() if item.match(line)}
        for line in explain_text(name, width=width).splitlines():
            if item.match(line):
                assert " ".join(line.split()[:3]) in items, (name, width, line)


@pytest.mark.parametrize("write", [write_notebook, write_starter])
def test_an_out_that_is_a_suffix_in_other_letter_case_or_alone_is_refused_not_made_a_folder(tmp_path, write):
    """`exercise notebook --out mine.PY` made a folder mine.PY/ (a .py file on a Mac or Windows,
    where letter case does not tell files apart), `start --out mine.PY` a folder too, and
    `--out .ipynb` a hidden folder .ipynb/ holding the notebook."""
    suffix = ".ipynb" if write is write_notebook else ".py"
    for wrong in ("mine.PY", "mine.Py", "mine.IPYNB", ".ipynb", ".py"):
        target = tmp_path / wrong
        with pytest.raises(ValueError, match=rf"ending in {re.escape(suffix)}"):
            write("rmsnorm", target)
        assert not target.exists(), wrong
    (tmp_path / ".py").mkdir()              # an existing folder is still a folder, whatever its name
    assert write("rmsnorm", tmp_path / ".py") == tmp_path / ".py" / f"rmsnorm_backward{suffix}"


@pytest.mark.parametrize("write", [write_notebook, write_starter])
def test_an_out_that_is_a_symbolic_link_is_refused_by_name_and_nothing_is_written_through_it(tmp_path, write):
    """A dangling link as --out failed with "[Errno 17] File exists" (no suffix: made a folder of it)
    or made the file it points to; `start --out link.py --force`, link.py pointing at the student's
    notebook, wrote the starter over the notebook through the link."""
    suffix = ".ipynb" if write is write_notebook else ".py"
    other = ".py" if suffix == ".ipynb" else ".ipynb"
    work = tmp_path / f"my_work{other}"
    work.write_text("the student's work")
    same_kind = tmp_path / f"my_work{suffix}"
    same_kind.write_text("the student's work")
    folder = tmp_path / "inside"
    folder.mkdir()
    links = {"to the notebook or starter": (tmp_path / f"link{suffix}", work),
             "to a file of the same kind": (tmp_path / f"same{suffix}", same_kind),
             "dangling, with the suffix": (tmp_path / f"dangling{suffix}", tmp_path / f"missing{suffix}"),
             "dangling, taken as a folder": (tmp_path / "dangling", tmp_path / "nowhere"),
             "the default name in a folder": (folder / f"rmsnorm_backward{suffix}", work)}
    for what, (link, target) in links.items():
        link.symlink_to(target)
        for force in (False, True):
            with pytest.raises(ValueError, match=rf"^{re.escape(repr(str(link)))} is a symbolic link to "
                                                 rf"{re.escape(repr(str(target)))}"):
                write("rmsnorm", folder if link.parent == folder else link, force=force)
        assert not target.exists() or target.read_text() == "the student's work", what
        assert not (tmp_path / f"missing{suffix}").exists() and not (tmp_path / "nowhere").exists(), what
    # a link to a folder is a folder: the file is written inside it
    (tmp_path / "to_folder").symlink_to(tmp_path / "real_folder", target_is_directory=True)
    (tmp_path / "real_folder").mkdir()
    assert write("rmsnorm", tmp_path / "to_folder") == tmp_path / "to_folder" / f"rmsnorm_backward{suffix}"
    assert (tmp_path / "real_folder" / f"rmsnorm_backward{suffix}").is_file()


def test_softmax_masked_rows_check_says_it_checks_a_partly_masked_row_too():
    """Its description promised a fully masked row only, and it fails a backward that is wrong on
    the masked entry of a partly masked row ([0, -inf, 1]) too."""
    (masked,) = [c for c in EXERCISES["softmax"].checks() if c.name == "masked rows"]
    assert "fully masked row" in masked.description and "partly masked row" in masked.description, masked


def test_softmax_masked_rows_check_fails_a_backward_wrong_only_on_a_partly_masked_row():
    def backward(dp, p):     # right, except that a masked entry of a partly masked row gets dp
        dx = p * (dp - np.sum(dp * p, -1, keepdims=True))
        partly = (p == 0) & (p.sum(-1, keepdims=True) > 0)
        return np.where(partly, dp, dx)

    with pytest.raises(Exception, match="masked"):
        EXERCISES["softmax"].check_fully_masked(backward, {})


def test_a_teacher_notebook_moved_without_its_exercise_file_says_so_in_one_message(tmp_path, monkeypatch):
    """The check cell's load_exercises('gelu_exercise.py') in a notebook moved away from the file:
    Jupyter showed a screen of the loader's source around the raise, and the message named no folder."""
    pytest.importorskip("IPython")
    # in a process of its own: an IPython shell is a process-wide singleton, and the checks that
    # run after it in this process would take themselves for a notebook's
    cell = "from npllama.exercises import load_exercises\nload_exercises('gelu_exercise.py')"
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              f"result = InteractiveShell.instance(colors='NoColor').run_cell({cell!r})\n"
              "raise SystemExit(0 if result.error_in_exec is not None else 3)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown                        # the cell raised
    assert str(tmp_path) in shown, shown                      # where it looked
    assert "gelu_exercise.py does not exist" in shown and "raise ExerciseFileError" not in shown, shown
    assert len(shown.strip().splitlines()) <= 3, shown
