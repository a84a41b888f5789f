"""The refusal of a function that changes its arguments in place: copies of the inputs from
before the check (_InPlaceGuard), compared after the first call, after every probe, and by each
move of a probe (_ChangedUnderProbe, raised by the probes in checker.py), every input restored
before the ValueError that names the one changed."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np


class _InPlaceGuard:
    """Copies of the caller's arrays from before the check, to tell when its function changes them
    in place: the checker moves the inputs itself, and a function that also moves them (on any
    call, not only the first) makes every difference after it check nothing.  Looked at after the
    first call and after every probe (a whole-array compare, cheap next to the 4 or more calls of
    f a probe makes), and at each move of a probe for what it moved, which the probe puts back
    itself and so would hide (_ChangedUnderProbe)."""

    def __init__(self, caller: str, names, inputs, mapping: Mapping | None = None):
        """mapping: check_op's inputs when given as a mapping, which must go on holding these arrays
        (a forward that puts a new array under a key would read it, not the one the checker moves)."""
        self.caller, self.names, self.inputs, self.mapping = caller, list(names), list(inputs), mapping
        self.snapshots = [np.array(x, copy=True) if isinstance(x, np.ndarray) else None for x in inputs]
        self.looked_after = set()     # the functions already looked after once: a change now is a later call's

    def check(self, caller: str | None = None) -> None:
        """A ValueError naming the first input changed since the check began, every input restored.
        caller: whose calls were just made ('backward'; the guard's own caller by default)."""
        caller = caller or self.caller
        later = caller in self.looked_after
        self.looked_after.add(caller)
        if self.mapping is not None:
            self._check_mapping(caller)
        for name, x, before in zip(self.names, self.inputs, self.snapshots):
            if before is not None and not _unchanged(x, before):
                self.raise_changed(name, caller, later)

    def _check_mapping(self, caller: str) -> None:
        """A ValueError when the mapping no longer holds the inputs under their keys, in their order,
        the mapping restored first."""
        changed = next((name for name, x in zip(self.names, self.inputs)
                        if name not in self.mapping or self.mapping[name] is not x), None)
        if changed is None and list(self.mapping) == self.names:
            return
        for key in [key for key in self.mapping if key not in self.names]:
            del self.mapping[key]
        self.mapping.update(zip(self.names, self.inputs))
        what = f"replaced inputs[{changed!r}] with another array" if changed else "added keys to inputs"
        raise ValueError(f"{caller} {what}; it must leave the mapping as it was (the checker moves the arrays "
                         "it holds, so one put in their place is never moved) -- the mapping has been restored")

    @contextlib.contextmanager
    def watching(self, name: str):
        """Around the probes of input `name`: a change a probe's move found under it (_ChangedUnderProbe)
        is raised as fn's, naming `name`; then every input is looked at (check)."""
        try:
            yield
        except _ChangedUnderProbe:
            self.raise_changed(name)
        self.check()

    def raise_changed(self, name: str, caller: str | None = None, later: bool = True):
        for x, before in zip(self.inputs, self.snapshots):
            if before is not None:
                x[...] = before
        when = (" on a later call, not the first: every call must leave its inputs as they were (the check "
                "calls it many times)") if later else "; it must leave its inputs as they were"
        raise ValueError(f"{caller or self.caller} changed input {name!r} in place{when} -- write into a new array "
                         "(x = x - m, not x -= m); the inputs have been restored")


def _unchanged(x: np.ndarray, before: np.ndarray) -> bool:
    """x equals its copy `before`, a NaN equal to a NaN.  The plain comparison first: it is several
    times cheaper than equal_nan's (which tests both arrays for NaN), and the guard runs it on every
    input after every probe -- on a model's many small parameters that was 10-15% of the check."""
    return np.array_equal(x, before) or np.array_equal(x, before, equal_nan=True)


class _ChangedUnderProbe(Exception):
    """fn changed what a probe had put in place (the entry it moved, or the whole array along a
    direction) before the probe moved it again; _check_all names the input.  Not a ValueError, so
    that no probe takes it for fn leaving its domain (_LeftDomain)."""
