"""The entries of a cache, named as a student writes them: one walker for the in-place check
(checks.py) and for the arrays the sandbox copies back from the child (sandbox.py)."""
from __future__ import annotations

import dataclasses
import types

import numpy as np


class Snapshot:
    """A container's entries as they were (checks._snapshot): (name, copy) pairs."""

    def __init__(self, entries: list):
        self.entries = entries


def entries(obj) -> list[tuple[str, object]] | None:
    """The entries of a container, each named as code writes it after the container's own name:
    a named tuple's, dataclass's or other object's fields (".x"), a tuple's or list's items ("[2]"),
    a dict's values ("['k']"); None for anything else (an array, a number, a string).

    An object's fields: a dataclass's, else the attributes in its __dict__ and its __slots__ -- a
    teacher's exercise may cache in any of them."""
    if isinstance(obj, Snapshot):
        return obj.entries
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # an op's typed cache (a NamedTuple)
        return [(f".{field}", value) for field, value in zip(obj._fields, obj)]
    if isinstance(obj, (tuple, list)):
        return [(f"[{i}]", value) for i, value in enumerate(obj)]
    if isinstance(obj, dict):
        return [(f"[{key!r}]", value) for key, value in obj.items()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f".{f.name}", getattr(obj, f.name)) for f in dataclasses.fields(obj) if hasattr(obj, f.name)]
    if _is_plain_object(obj):
        names = [*getattr(obj, "__dict__", {}), *(s for s in _slots(type(obj)) if hasattr(obj, s))]
        return [(f".{name}", getattr(obj, name)) for name in dict.fromkeys(names)]
    return None


def _is_plain_object(obj) -> bool:
    """An instance of a class written in Python (a teacher's cache class): not a built-in or NumPy
    value, nor a function, class or module."""
    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
                        np.ndarray, np.generic, np.dtype)):
        return False
    module = type(obj).__module__ or ""
    if module == "builtins" or module.split(".")[0] == "numpy":
        return False
    return hasattr(obj, "__dict__") or bool(_slots(type(obj)))


def _slots(cls) -> list[str]:
    """The slot names of cls and its bases (not __dict__ / __weakref__)."""
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]
