"""Which function runs for each op: the NumPy reference, a Numba kernel, or an override.

    NPLLAMA_BACKEND=numpy|numba             the default for the process (default: numba)
    with npllama.use_backend("numpy"): ...  the backend for a block of code
    npllama.study()                         the reference from here on: what a debugger should step through
    with npllama.use_op("rmsnorm_backward", my_backward): ...
                                            one op replaced (a student's backward, a planted bug);
                                            softmax_* and swiglu_act_* too, inside attention and SwiGLU

How the model picks up the choice (read this once, then read npllama/model.py as plain code):
npllama/model.py imports every op by name from npllama/ops (`from .ops.rmsnorm import
rmsnorm_forward`), so go-to-definition on a call lands on the reference, and with the reference
backend the model calls those functions directly -- nothing stands between a step-into and the
math.  When something else is in force (the Numba kernels, a `use_op` override, a trace that
records, LoRA adapters), the model's public methods run the *same functions* re-bound by `bind`:
copies that share their code objects but look their op names up in a namespace where, say,
`rmsnorm_forward` is the kernel.  The source you read is the source that runs; only what an op
name refers to changes.  No global state is modified: the choice lives in ContextVars, so
threads and async tasks each see their own.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import threading
import types
from collections.abc import Callable, Mapping

BACKENDS = ("numpy", "numba")
ENV_VAR = "NPLLAMA_BACKEND"

_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("npllama_backend", default=None)
_overrides: contextvars.ContextVar[Mapping[str, Callable]] = contextvars.ContextVar(
    "npllama_op_overrides", default=types.MappingProxyType({}))
_namespaces: dict[str, types.SimpleNamespace] = {}
_bound: dict[tuple, types.SimpleNamespace] = {}
_kernel_bindings: dict[str, Callable] | None = None   # the kernels that replace a reference: fixed per process
_BOUND_LIMIT = 64   # distinct op sets kept re-bound at once (each is a few dozen function objects)
_bound_lock = threading.Lock()


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name.strip().lower()


def get_backend() -> str:
    """The backend in force here: the innermost `use_backend`, else $NPLLAMA_BACKEND, else 'numba'.
    An empty $NPLLAMA_BACKEND counts as unset (`NPLLAMA_BACKEND= cmd`), as npllama's other variables."""
    chosen = _choice.get()
    if chosen is not None:
        return chosen
    return _check_name(os.environ.get(ENV_VAR, "").strip() or "numba", f"${ENV_VAR}")


def set_backend(name: str) -> None:
    """Choose the backend for the current context from now on."""
    _choice.set(_check_name(name, "backend"))


class _Studying:
    """What `study()` returns: as a `with` block's manager, it puts back the backend that was in
    force before the call when the block ends."""

    def __init__(self, token):
        self._token = token

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        _choice.reset(self._token)

    def __repr__(self) -> str:
        return "npllama.study(): the NumPy reference in force"


def study() -> _Studying:
    """Run the NumPy reference from now on (in this context): the code a debugger should step
    through, the same as `set_backend("numpy")`.  The CLI's `--backend numpy` does the same.
    `with npllama.study(): ...` studies that block only, then puts back the backend before it."""
    return _Studying(_choice.set("numpy"))


@contextlib.contextmanager
def use_backend(name: str):
    """`with use_backend("numpy"): ...` runs the block on the given backend, then restores the previous one."""
    name = _check_name(name, "backend")
    token = _choice.set(name)
    try:
        yield name
    finally:
        _choice.reset(token)


def op_names() -> tuple[str, ...]:
    """Every op function a backend provides: `<op>_forward` / `<op>_backward`, as in npllama.ops."""
    return tuple(sorted(vars(ops("numpy"))))


# Ops the model never calls by name: each runs inside another op (the softmax inside attention,
# silu(gate) * up inside the SwiGLU).  Under an override of one, the enclosing op runs its NumPy
# reference re-bound (`bind`) so that the nested name refers to the override -- on either backend,
# with or without LoRA -- since a kernel fuses the nested step and has no call to replace.
NESTED_OPS = {"softmax_forward": "attention", "softmax_backward": "attention",
              "swiglu_act_forward": "swiglu", "swiglu_act_backward": "swiglu"}
# Ops of npllama.ops that no Llama runs (the article's LayerNorm, §4.2): an override would be ignored.
NOT_IN_THE_MODEL = ("layernorm_forward", "layernorm_backward")


def replaceable_ops() -> tuple[str, ...]:
    """The op names `use_op` accepts: every op a Llama runs, directly or nested in another."""
    return tuple(n for n in op_names() if n not in NOT_IN_THE_MODEL)


@contextlib.contextmanager
def use_op(name: str, fn: Callable, backend: str | None = None):
    """`with use_op("rmsnorm_backward", my_backward): ...` -- inside the block, every call the model
    makes to that op runs `fn` instead, on either backend (a student's backward, a planted bug).
    backend="numba" (or "numpy"): only while that backend is in force, e.g. to plant a bug in one
    side of a comparison between backends.

    fn must take the op's arguments and return what it returns; a forward override's cache is
    only ever read by the backward of the same block, so override both or keep the cache's format.
    Blocks nest; each restores what was in force before it.
    """
    if name in NOT_IN_THE_MODEL:
        raise ValueError(f"name {name!r} is an op no Llama runs (LLaMA normalises with RMSNorm), so an "
                         f"override would never be called; the ops that can be replaced are "
                         f"{', '.join(replaceable_ops())}")
    if not isinstance(name, str):
        raise TypeError(f"name must be an op's name, a str such as 'rmsnorm_backward', got {type(name).__name__}")
    if name not in op_names():
        close = [n for n in replaceable_ops() if n.split("_")[0] == name.split("_")[0]]
        raise ValueError(f"name must be an op function of npllama.ops, one of "
                         f"{', '.join(close or replaceable_ops())}; got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _require_the_ops_arguments(name, fn)
    if backend is not None:
        backend = _check_name(backend, "backend")
    token = _overrides.set(types.MappingProxyType({**_overrides.get(), name: (fn, backend)}))
    try:
        yield fn
    finally:
        _overrides.reset(token)


# Arguments npllama passes to an op by name; every other one goes by position.
PASSED_BY_NAME = {"softmax_forward": ("check_values",)}   # npllama/ops/attention.py's call
# Arguments some of npllama's calls leave out, to the op's default: the classifier and SOP heads'
# cross_entropy_forward(logits, labels) (npllama/finetune.py, npllama/objectives.py).
MAY_BE_LEFT_OUT = {"cross_entropy_forward": ("ignore_index",)}


def _require_the_ops_arguments(name: str, fn: Callable) -> None:
    """fn can be called as npllama calls the op: its arguments by position (PASSED_BY_NAME by
    name), with or without MAY_BE_LEFT_OUT.  Else the model would fail deep inside a block (or a
    head), naming neither the op nor what it passes."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):   # (a builtin or compiled function may not tell: its call will)
        return
    op = inspect.signature(getattr(ops("numpy"), name))
    by_name, left_out = PASSED_BY_NAME.get(name, ()), MAY_BE_LEFT_OUT.get(name, ())
    positional = [a for a in op.parameters if a not in by_name]
    try:
        signature.bind(*positional, **dict.fromkeys(by_name))
        if left_out:
            signature.bind(*[a for a in positional if a not in left_out], **dict.fromkeys(by_name))
    except TypeError as error:
        shown = getattr(fn, "__qualname__", type(fn).__name__)
        named = f", {', '.join(by_name)} by name" if by_name else ""
        named += f"; {', '.join(left_out)} may be left out, to its default" if left_out else ""
        raise TypeError(f"fn for {name} must accept the op's arguments {op}, as npllama calls it (by "
                        f"position{named}); {shown}{signature} cannot: {error}") from None


def overrides() -> dict[str, Callable]:
    """The `use_op` overrides in force here, on the backend in force (name -> function)."""
    in_force = _overrides.get()
    if not in_force:        # the usual case, asked at every decode step: no need to read the backend
        return {}
    current = get_backend()
    return {name: fn for name, (fn, only_on) in in_force.items() if only_on in (None, current)}


# The ops whose Numba kernels keep a cache of their own layout (npllama/kernels: each backward
# checks it with require_kernel_cache); every other kernel keeps the documented one.
OWN_KERNEL_CACHE = ("attention", "swiglu", "cross_entropy")


def note_the_overrides(error: BaseException) -> None:
    """Add to `error`, raised while the model ran, the `use_op` overrides that were in force (what
    the traceback may not show: a float32 gradient an override returned fails in a kernel after
    it), and, for a backward override that received a fused kernel's own cache, that this is why."""
    in_force = overrides()
    if not in_force:
        return
    note = "while use_op overrides were in force: " + ", ".join(
        f"{name} -> {getattr(fn, '__qualname__', fn)}" for name, fn in sorted(in_force.items()))
    for op in OWN_KERNEL_CACHE:
        backward, forward = f"{op}_backward", f"{op}_forward"
        if (backward in in_force and forward not in in_force and get_backend() == "numba"
                and _raised_in(in_force[backward], error)):
            note += (f"\n  {backward} is handed the cache of the Numba kernel's {forward}, not the "
                     f"documented one of npllama/ops/{op}.py: to run a backward written for that "
                     f"cache, call npllama.study() first, or override the forward too, "
                     f"use_op('{forward}', npllama.ops.{op}.{forward})")
    add_note = getattr(error, "add_note", None)   # (Python 3.11+: on 3.10 the error goes as it came)
    if add_note is not None and note not in getattr(error, "__notes__", ()):   # (once, though it
        add_note(note)                                                          # passes several public methods)


def _raised_in(fn: Callable, error: BaseException) -> bool:
    """Whether `error` came through a call of fn (its frames in the traceback): else fn had no part
    in it -- the cache it would be handed was never made.  True when fn's code cannot be told."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)   # a function, or a method
    if code is None and isinstance(getattr(type(fn), "__call__", None), types.FunctionType):
        code = type(fn).__call__.__code__   # an object with a __call__ written in Python
    if not isinstance(code, types.CodeType):
        return True
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def noting_overrides(function: Callable) -> Callable:
    """`function`, adding `note_the_overrides` to an exception it raises: for the heads an objective
    puts on the model (Llama.head_ops: npllama/finetune.py, npllama/objectives.py), whose ops run
    outside Llama's public methods (which add the note themselves)."""

    @functools.wraps(function)
    def noting(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            note_the_overrides(error)
            raise

    return noting


def _reference_namespace() -> types.SimpleNamespace:
    from . import ops as reference

    names = [n for n in dir(reference) if n.endswith(("_forward", "_backward"))]
    return types.SimpleNamespace(**{n: getattr(reference, n) for n in names})


def ops(name: str | None = None) -> types.SimpleNamespace:
    """The namespace of op functions of backend `name` (default: the backend in force), without
    `use_op` overrides.  Read-only by convention: use `use_op` to replace an op."""
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


def op_bindings() -> dict[str, Callable]:
    """The ops that differ from the reference here: the backend's kernels, then `use_op` overrides.
    Empty under the reference backend with no override."""
    global _kernel_bindings
    bindings = {}
    if (_choice.get() or get_backend()) == "numba":
        if _kernel_bindings is None:
            reference = ops("numpy")
            _kernel_bindings = {n: fn for n, fn in vars(ops("numba")).items() if fn is not getattr(reference, n)}
        bindings = dict(_kernel_bindings)
    if _overrides.get():
        in_force = overrides()
        bindings.update(in_force)
        bindings.update(_enclosing_ops(in_force))
    return bindings


def _enclosing_ops(in_force: Mapping[str, Callable]) -> dict[str, Callable]:
    """For overrides of nested ops (NESTED_OPS): the enclosing op's reference forward and backward,
    re-bound so that the nested names refer to the overrides (unless those are overridden too)."""
    import importlib

    enclosing = {}
    for outer in sorted({NESTED_OPS[n] for n in in_force if n in NESTED_OPS}):
        nested = {n: fn for n, fn in in_force.items() if NESTED_OPS.get(n) == outer}
        rebound = bind(importlib.import_module(f"{__package__}.ops.{outer}"), nested)
        for name in (f"{outer}_forward", f"{outer}_backward"):   # a pair: the backward reads the forward's cache
            if name not in in_force:
                enclosing[name] = getattr(rebound, name)
        for name in nested:   # and the nested op's partner is the reference, for whoever calls it by name (LoRA)
            partner = name.replace("_forward", "_backward") if name.endswith("_forward") else \
                name.replace("_backward", "_forward")
            if partner not in in_force:
                enclosing[partner] = getattr(ops("numpy"), partner)
    return enclosing


def copy_function(fn: types.FunctionType, namespace: dict) -> types.FunctionType:
    """fn with the same code object (a breakpoint in its source stops in the copy too), looking
    its global names up in `namespace`."""
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__doc__, copy.__qualname__ = fn.__kwdefaults__, fn.__doc__, fn.__qualname__
    return copy


def bind(module: types.ModuleType, bindings: Mapping[str, Callable], keep: bool = True):
    """`module`'s own functions, re-bound so that the names in `bindings` (op names) refer to the
    given functions.  With no bindings, the module itself: the reference path, untouched.

    The copies share the originals' code objects (a breakpoint in the source file stops in them
    too) and are made once per distinct set of bindings, unless keep=False (a trace's recording
    ops, made afresh for every call, are not kept)."""
    if not bindings:
        return module
    key = (module.__name__, *sorted((name, id(fn)) for name, fn in bindings.items()))
    cached = _bound.get(key) if keep else None
    if cached is not None:
        return cached
    namespace = dict(vars(module))
    namespace.update(bindings)
    for name, obj in vars(module).items():
        # (a name in `bindings` keeps its binding, even when the module defines that function itself:
        # swiglu_act_forward in npllama/ops/swiglu.py)
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__ and name not in bindings:
            namespace[name] = copy_function(obj, namespace)
    bound = types.SimpleNamespace(**namespace)
    bound._bindings = dict(bindings)   # keeps the functions alive, so their ids stay unique
    if not keep:
        return bound
    with _bound_lock:   # two threads evicting at once: a KeyError, or a dict changed while iterated
        if len(_bound) >= _BOUND_LIMIT:
            _bound.pop(next(iter(_bound)))
        _bound[key] = bound
    return bound
