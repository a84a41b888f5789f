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


class Cycle:
    """Where a container's entries lead back to a container that holds it (a cache object keeping
    a reference to itself, or to a model whose adapters refer back to it): the walkers stop there,
    as the container's entries are walked where it was first met."""

    def __init__(self, name: str):
        self.name = name


def is_leaf_array(obj) -> bool:
    """An array the walkers compare as a whole: any array but one of Python objects, whose items
    (arrays themselves, maybe) are entries like a list's."""
    return isinstance(obj, np.ndarray) and obj.dtype != object


def entries(obj) -> list[tuple[str, object]] | None:
    """The entries of a container, each named as code writes it after the container's own name:
    a named tuple's, dataclass's or other object's fields (".x"), a tuple's or list's items ("[2]"),
    a dict's values ("['k']"), an array of Python objects' items ("[2]", "[1, 0]"); None for anything
    else (an array of numbers, a number, a string).

    An object's fields: a dataclass's, else the attributes in its __dict__ and its __slots__ -- a
    teacher's exercise may cache in any of them -- read where they are stored: no property or
    __getattr__ runs.  The walkers over these entries stop at a container met again inside
    itself (Cycle)."""
    if isinstance(obj, Snapshot):
        return obj.entries
    if isinstance(obj, Cycle):
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype != object:
            return None
        return [(f"[{', '.join(map(str, index))}]" if obj.ndim != 1 else f"[{index[0]}]", obj[index])
                for index in np.ndindex(obj.shape)]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # an op's typed cache (a NamedTuple)
        return [(f".{field}", value) for field, value in zip(obj._fields, obj)]
    if isinstance(obj, (tuple, list)):
        return [(f"[{i}]", value) for i, value in enumerate(obj)]
    if isinstance(obj, dict):
        return [(f"[{key!r}]", value) for key, value in obj.items()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        stored = _stored_fields(obj)
        return [(f".{f.name}", stored[f.name]) for f in dataclasses.fields(obj) if f.name in stored]
    if _is_plain_object(obj):
        return [(f".{name}", value) for name, value in _stored_fields(obj).items()]
    return None


def named_leaves(obj, path: str = "", holding: frozenset = frozenset()):
    """(name, array) for each array `obj` holds, depth first in `entries` order, each name `path`
    and the entries' names that lead to it (an array held twice is yielded twice); a container met
    again inside itself (`holding`: the containers it is in) is walked where it was first met."""
    if is_leaf_array(obj):
        yield path, obj
        return
    found = entries(obj)
    if found is None or id(obj) in holding:
        return
    holding = holding | {id(obj)}
    for name, item in found:
        yield from named_leaves(item, path + name, holding)


def _stored_fields(obj) -> dict:
    """name -> value of what obj stores itself: its __dict__ and its slots, read where they are
    stored -- never through getattr, which would run a property (or __getattr__) of the same name."""
    try:
        stored = dict(object.__getattribute__(obj, "__dict__"))
    except AttributeError:
        stored = {}
    for klass in type(obj).__mro__:
        for name in _own_slots(klass):
            slot = klass.__dict__.get(name)
            if name in stored or not hasattr(slot, "__get__"):
                continue
            try:
                stored[name] = slot.__get__(obj, type(obj))
            except AttributeError:   # a slot never set
                pass
    return stored


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
    return [name for klass in cls.__mro__ for name in _own_slots(klass)]


def _own_slots(klass) -> list[str]:
    slots = klass.__dict__.get("__slots__", ())
    names = [slots] if isinstance(slots, str) else list(slots)
    # (a private slot, "__x", is stored as "_Klass__x")
    return [f"_{klass.__name__.lstrip('_')}{n}" if n.startswith("__") and not n.endswith("__") else n
            for n in names if n not in ("__dict__", "__weakref__")]
