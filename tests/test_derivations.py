"""Every derivation names the code that implements it and the test that checks it, and both exist.

A `**Code:**` line lists backticked dotted names (`npllama.ops.rmsnorm.rmsnorm_forward`), each of
which must import; a `**Test:**` line lists backticked paths (optionally `path::test_name`), each
of which must exist, and must call the code named.  Names of code and tests in the prose
(`Llama.hidden_forward`, `AttentionCache(q, k, v, ...)`, `test_...`) must exist too.  Every op
module in npllama/ops has its derivation.
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


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_no_escaped_underscore_in_text_mode(path):
    r"""MathJax 3 reads the argument of \text{...} as text: it unescapes only \$, \{, \} and \\ there
    (docs.mathjax.org, "Differences from Actual TeX"; the textmacros extension that knows \_ is not
    loaded by default), so \text{max\_lr} shows "max\_lr", backslash and all.  A name with an
    underscore goes in \mathrm{...}, which is math mode, where \_ is an underscore."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.search(r"\\text(?:rm|tt|it|bf|sf)?\{[^{}]*\\_[^{}]*\}", line)
        assert match is None, f"{path.name}:{number}: {match.group(0)!r}; write \\mathrm{{...}} for a name"


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_the_named_tests_exercise_the_named_code(path):
    """A **Test:** line that points at the wrong file (one that never calls the derivation's code)
    would pass the existence check above: every test file named must call something the **Code:**
    line names, and every op function named must be called by one of them."""
    code, tests = references(path, "Code"), references(path, "Test")
    texts = {ref: (ROOT / ref.partition("::")[0]).read_text(encoding="utf-8") for ref in tests}
    names = {dotted: dotted.rsplit(".", 1)[-1] for dotted in code}
    for ref, text in texts.items():
        assert any(re.search(rf"\b{name}\b", text) for name in names.values()), \
            f"{path.name}: Test reference `{ref}` calls none of the Code references {sorted(names.values())}"
    for dotted, name in names.items():
        if dotted.startswith("npllama.ops."):
            assert any(re.search(rf"\b{name}\b", text) for text in texts.values()), \
                f"{path.name}: `{dotted}` is called by none of the Test references {tests}"


# ----- names in the prose: `Class.method`, `SomeCache(field, ...)`, `test_name` -------------------

def prose_code_spans(path: Path) -> list[str]:
    """The `code` spans of a derivation's prose (outside fenced blocks and $`math`$)."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    text = re.sub(r"\$`[^`]*`\$", "", text)
    return re.findall(r"`([^`\n]+)`", text)


def package_definitions() -> dict[str, list[str]]:
    """Top-level class and function names of npllama -> the modules that define them."""
    found: dict[str, list[str]] = {}
    for file in sorted((ROOT / "npllama").rglob("*.py")):
        module = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for match in re.finditer(r"^(?:class|def) (\w+)", file.read_text(encoding="utf-8"), re.M):
            found.setdefault(match.group(1), []).append(module)
    return found


DEFINED = package_definitions()
TEST_NAMES = {match for file in (ROOT / "tests").rglob("test_*.py")
              for match in re.findall(r"^\s*def (test_\w+)", file.read_text(encoding="utf-8"), re.M)}


def named_in_prose(span: str):
    """(name, attributes, fields) for a span that names npllama code: `Llama.hidden_forward`,
    `AttentionCache(q, k, v, ...)`; None for anything else (a variable, an expression)."""
    match = re.fullmatch(r"([A-Za-z_]\w*)((?:\.\w+)*)(?:\((.*)\))?(?:\[.*\])?", span)
    if not match or match.group(1) not in DEFINED:
        return None
    name, attributes, arguments = match.groups()
    if not (attributes or name[0].isupper() or "_" in name):   # `a`, `constant`: too common a word
        return None
    return name, [a for a in attributes.split(".") if a], arguments


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_code_named_in_the_prose_exists(path):
    """Names in the text rot as easily as the **Code:** line: `SequenceClassifier.pooled_index` must
    still be a method, and a cache spelled out as `AttentionCache(q, k, v, attn_probs, scale,
    n_rep)` must still have exactly those fields, in that order, when the derivation is the op's own."""
    for span in prose_code_spans(path):
        named = named_in_prose(span)
        if named is None:
            continue
        name, attributes, arguments = named
        candidates = []
        for module in DEFINED[name]:
            obj = getattr(importlib.import_module(module), name, None)
            for attribute in attributes:
                obj = getattr(obj, attribute, None)
            if obj is not None:
                candidates.append((module, obj))
        assert candidates, f"{path.name}: `{span}` names nothing in npllama ({name} is in {DEFINED[name]})"
        fields = [f.strip() for f in (arguments or "").split(",")]
        own = [obj for module, obj in candidates if module.rsplit(".", 1)[-1] == path.stem]
        for obj in own:
            if hasattr(obj, "_fields") and arguments is not None:
                assert tuple(fields) == obj._fields, \
                    f"{path.name}: `{span}`, but {name}'s fields are {obj._fields}"


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.name)
def test_tests_named_in_the_prose_exist(path):
    for span in prose_code_spans(path):
        if re.fullmatch(r"test_\w+", span):
            assert span in TEST_NAMES, f"{path.name}: `{span}` is not a test in tests/"


def test_the_attention_caches_comments_say_q_and_k_are_the_rotated_ones():
    """derivations/attention.md: the op starts from the rotated q and k, and so does its cache; a
    reader of AttentionCache (or of `p npllama.shapes(cache)` in pdb) should not take them for the
    projections' q and k.  Checked in the comments, and in the numbers of a traced run."""
    import inspect

    import numpy as np

    import npllama
    from npllama import Llama, LlamaConfig
    from npllama.kernels.attention import BlockedAttentionCache
    from npllama.ops.attention import AttentionCache, attention_forward

    for cache_type, fields in [(AttentionCache, ("q", "k")), (BlockedAttentionCache, ("q_groups", "k"))]:
        comments = {line.split(":")[0].strip(): line.split("#", 1)[1] for line in inspect.getsource(cache_type).splitlines()
                    if "#" in line and ":" in line.split("#")[0]}
        for field in fields:
            assert "RoPE" in comments[field] and "rotated" in comments[field], (cache_type.__name__, field, comments[field])
        assert "RoPE" not in comments["v"] and "rotated" not in comments["v"], comments["v"]
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    caches = []

    def keeping(*args, **kwargs):
        out, cache = attention_forward(*args, **kwargs)
        caches.append(cache)
        return out, cache

    with npllama.use_backend("numpy"), npllama.use_op("attention_forward", keeping), npllama.trace() as t:
        Llama(config, seed=0).loss_and_grads(np.array([[1, 5, 9, 3]]), np.array([[5, 9, 3, -100]]))
    np.testing.assert_array_equal(caches[0].q, t["model.layers.0.self_attn.q_rot"])
    np.testing.assert_array_equal(caches[0].k, t["model.layers.0.self_attn.k_rot"])
