"""Traces: every named intermediate of the forward pass and every gradient of the backward pass.

    with npllama.trace() as t:
        loss, grads = model.loss_and_grads(tokens, targets)
    t["model.layers.0.self_attn.attn_probs"]          # (B, H, T, T)
    t["d:model.layers.0.input_layernorm.out"]          # the gradient flowing into that tensor

Names join the Hugging Face module path and the derivation's symbol; a gradient's name is the
tensor's name behind "d:".  `trace(include=["*.attn_probs"])` records only names matching the
patterns (fnmatch), so a large model can be traced without storing everything.  When no trace is
active the model pays one ContextVar lookup per layer, nothing more.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from collections.abc import Iterable

import numpy as np

_active: contextvars.ContextVar["Trace | None"] = contextvars.ContextVar("npllama_trace", default=None)


def active_trace() -> "Trace | None":
    """The trace recording here, or None (the model checks this before naming anything)."""
    return _active.get()


class Trace:
    """An ordered record name -> array (copies, so later in-place updates do not change it)."""

    def __init__(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None):
        if isinstance(include, str) or isinstance(exclude, str):
            raise TypeError("include and exclude must be lists of patterns, not a single string")
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude or [])
        self.records: dict[str, np.ndarray] = {}

    def wants(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return self.include is None or any(fnmatch.fnmatchcase(name, p) for p in self.include)

    def record(self, name: str, value) -> None:
        if self.wants(name):
            self.records[name] = np.array(value, copy=True)

    def record_many(self, prefix: str, **named) -> None:
        for symbol, value in named.items():
            self.record(prefix + symbol, value)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.records[name]
        except KeyError:
            raise KeyError(f"{name!r} was not recorded; recorded names include "
                           f"{list(self.records)[:5]}...") from None

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def names(self) -> list[str]:
        return list(self.records)


@contextlib.contextmanager
def trace(include: Iterable[str] | None = None, exclude: Iterable[str] | None = None):
    """Record the named tensors of every forward/backward pass run inside the block."""
    t = Trace(include, exclude)
    token = _active.set(t)
    try:
        yield t
    finally:
        _active.reset(token)


class _CallableModule(type(contextlib)):
    """Lets `npllama.trace(...)` open a trace while `npllama.trace.compare` etc. stay reachable:
    importing the submodule npllama.trace rebinds the package attribute to this module, so the
    module itself must be the callable."""

    def __call__(self, include=None, exclude=None):
        return trace(include, exclude)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
