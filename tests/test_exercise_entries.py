"""The exercises' cache walker (npllama/exercises/entries.py): what it reads, and where it stops."""
import numpy as np

from npllama.exercises.checks import _changed_entry, _same_array_as, _snapshot
from npllama.exercises.entries import entries
from npllama.exercises.sandbox import array_leaves


class _RefersToItself:
    def __init__(self, x):
        self.x, self.me, self.inside = x, self, [self, {"again": self}]


def test_a_cache_that_refers_to_itself_is_walked_once_not_forever():
    cache = _RefersToItself(np.ones(3))
    before = _snapshot(cache)
    assert _changed_entry(before, cache, "cache") is None
    cache.x *= 2
    assert _changed_entry(before, cache, "cache") == "cache.x"
    assert _same_array_as(cache, "cache.x") == []
    assert [id(a) for a in array_leaves((cache,))] == [id(cache.x)]
    ring = [np.zeros(2)]
    ring.append(ring)
    assert len(array_leaves(ring)) == 1 and _changed_entry(_snapshot(ring), ring, "cache") is None


def test_the_arrays_in_an_object_array_are_entries():
    cache = np.empty(2, dtype=object)
    cache[0], cache[1] = np.ones(2), np.zeros(3)
    before = _snapshot(cache)
    assert _changed_entry(before, cache, "cache") is None
    cache[1][0] = 5.0
    assert _changed_entry(before, cache, "cache") == "cache[1]"
    assert len(array_leaves((cache,))) == 2


class _Stored:
    __slots__ = ("__dict__", "kept", "unset", "__private")

    def __init__(self):
        self.kept = np.ones(2)
        self._Stored__private = np.zeros(1)
        self.__dict__["shadowed"] = np.zeros(2)   # stored, behind a property of the same name

    @property
    def shadowed(self):
        raise AssertionError("a property ran")

    @property
    def computed(self):
        raise AssertionError("a property ran")

    def __getattr__(self, name):
        raise AssertionError(f"__getattr__ ran for {name}")


def test_only_stored_fields_are_read_never_a_property_or_getattr():
    found = dict(entries(_Stored()))
    assert sorted(found) == sorted([".kept", "._Stored__private", ".shadowed"])
