"""The one switch between the NumPy reference (npllama/ops) and the Numba kernels (npllama/kernels).

    NPLLAMA_BACKEND=numpy|numba      chooses the default for the process (default: numba)
    with npllama.use_backend("numpy"): ...    chooses it for a block of code

The model never imports a kernel directly: it asks `ops()` for the current namespace of
`<op>_forward` / `<op>_backward` functions.  Under "numba" a kernel replaces its reference
only where one exists; everything else is the reference itself.  With NUMBA_DISABLE_JIT=1
the kernels run as plain Python, so a debugger can step into them.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import types

BACKENDS = ("numpy", "numba")
ENV_VAR = "NPLLAMA_BACKEND"

# A ContextVar rather than a module global: threads and async tasks each see their own choice.
_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("npllama_backend", default=None)
_namespaces: dict[str, types.SimpleNamespace] = {}


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name.strip().lower()


def get_backend() -> str:
    """The backend in force here: the innermost `use_backend`, else $NPLLAMA_BACKEND, else 'numba'."""
    chosen = _choice.get()
    if chosen is not None:
        return chosen
    return _check_name(os.environ.get(ENV_VAR, "numba"), f"${ENV_VAR}")


def set_backend(name: str) -> None:
    """Choose the backend for the current context from now on."""
    _choice.set(_check_name(name, "backend"))


@contextlib.contextmanager
def use_backend(name: str):
    """`with use_backend("numpy"): ...` runs the block on the given backend, then restores the previous one."""
    token = _choice.set(_check_name(name, "backend"))
    try:
        yield name
    finally:
        _choice.reset(token)


def _reference_namespace() -> types.SimpleNamespace:
    from . import ops as reference

    names = [n for n in dir(reference) if n.endswith(("_forward", "_backward"))]
    return types.SimpleNamespace(**{n: getattr(reference, n) for n in names})


def ops(name: str | None = None) -> types.SimpleNamespace:
    """The namespace of op functions for `name` (default: the backend in force)."""
    name = get_backend() if name is None else _check_name(name, "backend")
    if name not in _namespaces:
        namespace = _reference_namespace()
        if name == "numba":
            from .kernels import KERNELS

            for op_name, fn in KERNELS.items():
                if not hasattr(namespace, op_name):
                    raise RuntimeError(f"kernel {op_name!r} has no reference in npllama.ops")
                setattr(namespace, op_name, fn)
        _namespaces[name] = namespace
    return _namespaces[name]
