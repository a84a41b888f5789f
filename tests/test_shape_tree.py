"""npllama.shapes: a cache (or any nest of tuples, lists, dicts, dataclasses and arrays) in a few
lines, for `p npllama.shapes(cache)` at a pdb prompt."""
import dataclasses
from typing import NamedTuple

import numpy as np

import npllama


class Inner(NamedTuple):
    x: np.ndarray
    rstd: np.ndarray


class Outer(NamedTuple):
    norm: Inner
    scale: float
    n_rep: int
    shape: tuple
    mask: object
    parts: list
    extra: dict


@dataclasses.dataclass
class Box:
    w: np.ndarray
    name: str


def test_a_nest_is_shown_as_a_tree_of_shapes_dtypes_and_values():
    cache = Outer(Inner(np.zeros((1, 4, 16), np.float32), np.ones((1, 4, 1), np.float32)), 0.35355339059327373,
                  np.int64(2), (1, 4, 16), None, [np.zeros(3), Box(np.zeros((2, 2), np.float64), "gate")],
                  {"attn_probs": np.zeros((1, 2, 4, 4), np.float32), "steps": 3})
    assert str(npllama.shapes(cache)) == "\n".join([
        "Outer",
        "  norm: Inner",
        "    x: (1, 4, 16) float32",
        "    rstd: (1, 4, 1) float32",
        "  scale: 0.353553",
        "  n_rep: 2",
        "  shape: (1, 4, 16)",
        "  mask: None",
        "  parts: list of 2",
        "    [0]: (3,) float64",
        "    [1]: Box",
        "      w: (2, 2) float64",
        "      name: 'gate'",
        "  extra: dict of 2",
        "    attn_probs: (1, 2, 4, 4) float32",
        "    steps: 3",
    ])


def test_pdb_p_prints_the_lines_not_a_quoted_string():
    # `p expr` shows repr(expr): the tree must be the repr too, or pdb prints one line of '\n's
    tree = npllama.shapes({"a": np.zeros(2)})
    assert repr(tree) == str(tree) == "dict of 1\n  a: (2,) float64"
    assert "shapes" in npllama.__all__
    assert str(npllama.shapes(np.zeros((2, 3), np.float32))) == "(2, 3) float32"
    assert str(npllama.shapes(7)) == "7"


def test_long_lists_are_cut_and_a_cycle_does_not_recurse():
    tree = str(npllama.shapes(list(range(3)) + [np.zeros(1)] * 20))
    assert tree.splitlines()[0] == "list of 23" and "... 19 more" in tree and len(tree.splitlines()) <= 7
    loop = []
    loop.append(loop)
    assert "[0]: list (shown above)" in str(npllama.shapes(loop))


def test_a_real_block_cache_fits_in_a_few_lines_with_every_array():
    from npllama import Llama, LlamaConfig
    from npllama.model import block_forward

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(config, seed=0)
    captured = {}
    original = block_forward

    import npllama.model as model_module

    def capturing(*args, **kwargs):
        out, cache = original(*args, **kwargs)
        captured["cache"] = cache
        return out, cache

    model_module.block_forward = capturing
    try:
        with npllama.use_backend("numpy"):
            model.loss_and_grads(np.array([[1, 5, 9, 3]]), np.array([[5, 9, 3, -100]]))
    finally:
        model_module.block_forward = original
    cache = captured["cache"]
    lines = str(npllama.shapes(cache)).splitlines()
    assert lines[0] == "BlockCache" and len(lines) < 60, lines   # a line per array, not pages
    assert "    attention: AttentionCache" in lines and "      attn_probs: (1, 2, 4, 4) float32" in lines, lines
    assert "      scale: 0.353553" in lines and "      n_rep: 2" in lines, lines
