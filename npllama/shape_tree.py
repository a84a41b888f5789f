"""`npllama.shapes(obj)`: a cache in a few lines, for a pdb prompt.

    (Pdb) import npllama
    (Pdb) p npllama.shapes(cache)
    AttentionCache
      q: (1, 2, 4, 8) float32
      ...
      scale: 0.353553
      n_rep: 2

`p cache` prints the values of every array; this prints each array as `shape dtype`, each scalar as its
value, and NamedTuples, dataclasses, tuples, lists and dicts as an indented tree of their fields.
"""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

MAX_ITEMS = 4   # a list or tuple longer than this shows its first MAX_ITEMS items and how many more


class ShapeTree(str):
    """The tree as text; its repr is the text itself, so pdb's `p` (and a REPL) print its lines."""

    def __repr__(self) -> str:
        return str(self)


def shapes(obj, max_items: int = MAX_ITEMS) -> ShapeTree:
    """A short tree of `obj`: arrays as `shape dtype`, scalars (and short tuples of them, such as a
    shape) as their values, NamedTuples and dataclasses by their fields, dicts by their keys, lists
    and tuples by index (the first `max_items` of a longer one).  Returned as a string that prints
    as its lines, also under pdb's `p`: `p npllama.shapes(cache)`."""
    lines: list[str] = []
    _describe(obj, "", 0, lines, max_items, set())
    return ShapeTree("\n".join(lines))


def _is_scalar(obj) -> bool:
    return obj is None or isinstance(obj, (numbers.Number, str, bytes, np.generic))


def _value(obj) -> str:
    if isinstance(obj, (bool, np.bool_)):
        return str(bool(obj))
    if isinstance(obj, numbers.Integral):
        return str(int(obj))
    if isinstance(obj, numbers.Real):
        return f"{float(obj):.6g}"
    if isinstance(obj, numbers.Complex):
        return f"{complex(obj):.6g}"
    return repr(obj)


def _children(obj):
    """A container's heading and its (label, child) pairs; None for a leaf."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # a NamedTuple
        return type(obj).__name__, list(zip(obj._fields, obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj).__name__, [(f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        pairs = [(k if isinstance(k, str) else repr(k), v) for k, v in obj.items()]
        return f"{type(obj).__name__} of {len(obj)}", pairs
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of {len(obj)}", [(f"[{i}]", v) for i, v in enumerate(obj)]
    return None


def _leaf(obj) -> str:
    if isinstance(obj, np.ndarray):
        text = f"{obj.shape} {obj.dtype}"
        return text + f" = {_value(obj[()])}" if obj.ndim == 0 else text
    if _is_scalar(obj):
        return _value(obj)
    if callable(obj):
        return f"{getattr(obj, '__module__', None) or ''}.{getattr(obj, '__qualname__', type(obj).__name__)}".lstrip(".")
    shape, dtype = getattr(obj, "shape", None), getattr(obj, "dtype", None)
    if shape is not None and dtype is not None:   # a torch tensor, a memmap ...
        return f"{tuple(shape)} {dtype} ({type(obj).__name__})"
    return f"<{type(obj).__name__}>"


def _describe(obj, label: str, depth: int, lines: list, max_items: int, open_ids: set) -> None:
    indent = "  " * depth
    head = f"{indent}{label}: " if label else indent
    if isinstance(obj, (list, tuple)) and obj and not hasattr(obj, "_fields") and len(obj) <= 8 \
            and all(_is_scalar(x) for x in obj):   # a shape, a (first, end, keys) block: inline
        inner = ", ".join(_value(x) for x in obj)
        lines.append(head + (f"({inner},)" if isinstance(obj, tuple) and len(obj) == 1 else
                             f"({inner})" if isinstance(obj, tuple) else f"[{inner}]"))
        return
    tree = _children(obj)
    if tree is None:
        lines.append(head + _leaf(obj))
        return
    heading, children = tree
    count = len(children)
    if id(obj) in open_ids:
        lines.append(head + f"{type(obj).__name__} (shown above)")
        return
    if count == 0:
        lines.append(head + repr(obj))
        return
    lines.append(head + heading)
    sequence = isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields")
    shown = children[:max_items] if sequence and count > max_items else children
    open_ids.add(id(obj))
    for child_label, child in shown:
        _describe(child, child_label, depth + 1, lines, max_items, open_ids)
    open_ids.discard(id(obj))
    if len(shown) < count:
        lines.append(f"{indent}  ... {count - len(shown)} more")
