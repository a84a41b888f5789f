"""A first training run compiles its kernels on both cores: a helper process takes the late ones.

Numba compiles a kernel at its first call, in the calling process, one at a time, and keeps the
machine code in its on-disk cache; once a kernel is there, any process that calls it for the
first time loads it in milliseconds.  So the first `npllama train` after an install spent its
first 5-9 s compiling on one core while the other sat idle (benchmarks/README.md).

`compile_late_kernels_on_a_cold_cache(dtype)`, called as a run starts, looks in numba's cache
for the last kernel a step compiles (SwiGLU's backward) at that dtype.  If it is missing (a first
run after an install or an edit of a kernel), it starts `python -m npllama.kernels.precompile
DTYPE` at once, so that the helper's own start (~1.5 s of imports) overlaps the run's tokenizer
and data preparation.  If numba's cache cannot be read that way (its layout is numba's private
business), the helper starts at this process's first compilation instead (numba's
"numba:compile" event fires only on a cache miss).  The helper runs one training step of a tiny
model in which the ops a step reaches first -- RMSNorm, RoPE, attention -- run as their NumPy
references, so the kernels it compiles and caches are the ones the run reaches last: the SwiGLU
MLP, the cross-entropy, the embedding's backward and AdamW.  The run compiles RMSNorm, RoPE and
attention meanwhile, and finds the rest in the cache when it gets there (a kernel it reaches
before the helper is done, it simply compiles itself, as before).

`wait_for_helper()` lets the run wait for the helper before it times anything (the thread-count
measurement must not share the cores with a compiler).  The helper is best effort: its output
is discarded, a failure only means the run compiles those kernels itself, and it is stopped at
exit if still running.  NPLLAMA_PARALLEL_COMPILE=0 turns it off.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from numba.core import event

from .compile_notice import AtFirstCompilation

# The ops the helper leaves to the NumPy references: those a training step reaches first, which
# the run compiles itself while the helper compiles the rest.
LEFT_TO_THE_RUN = ("rmsnorm", "rope", "attention")
HELPER_TIMEOUT_S = 120.0


def _start_helper(dtype: str) -> subprocess.Popen | None:
    package_parent = str(Path(__file__).resolve().parents[2])     # where this npllama is imported from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    try:
        helper = subprocess.Popen([sys.executable, "-m", "npllama.kernels.precompile", dtype], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None                     # no helper: the run compiles everything itself
    atexit.register(_stop, helper)
    return helper


class _Trigger(AtFirstCompilation):
    """Starts the helper at the first compilation of one of npllama's kernels, once."""

    def __init__(self, dtype: str):
        super().__init__()
        self.dtype = dtype

    def first(self) -> None:
        global _helper
        _helper = _start_helper(self.dtype)


_helper: subprocess.Popen | None = None    # started at once or by the trigger; at most one
_armed = False


def compile_late_kernels_on_a_cold_cache(dtype) -> None:
    """At the start of a training run of `dtype` (float32 or float64): start the helper if
    numba's cache lacks the late kernels, or arm the trigger if that cannot be told; once per
    process."""
    global _helper, _armed
    if _armed or os.environ.get("NPLLAMA_PARALLEL_COMPILE", "1") == "0" or (os.cpu_count() or 1) < 2:
        return
    from numba import config as numba_config

    from ..backend import get_backend

    if numba_config.DISABLE_JIT or get_backend() != "numba":
        return                          # nothing will be compiled
    _armed = True
    dtype = np.dtype(dtype).name
    cached = _late_kernels_cached(dtype)
    if cached is False:
        _helper = _start_helper(dtype)
    elif cached is None:
        event.register("numba:compile", _Trigger(dtype))


def _late_kernels_cached(dtype: str) -> bool | None:
    """Whether numba's cache holds SwiGLU's backward kernel (the last a step compiles) for dtype;
    None if its cache index cannot be read (a numba whose private layout differs)."""
    from .swiglu import _silu_mul_halves_backward

    try:
        index = _silu_mul_halves_backward._cache._cache_file._load_index()
        return any(dtype in str(key[0]) for key in index)
    except Exception:   # noqa: BLE001 -- numba's private API: any failure means "cannot tell"
        return None


def wait_for_helper() -> None:
    """Until the helper (if one was started) has finished: it compiles on the second core."""
    if _helper is not None and _helper.poll() is None:
        try:
            _helper.wait(timeout=HELPER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(_helper)


def _stop(helper: subprocess.Popen) -> None:
    if helper.poll() is None:
        helper.kill()
        helper.wait()


def compile_late_kernels(dtype: str) -> None:
    """The helper's work: one step of a tiny model with LEFT_TO_THE_RUN on the NumPy references,
    so that only the other kernels compile (into numba's cache, where the run finds them)."""
    from contextlib import ExitStack

    from .. import Llama, LlamaConfig
    from ..backend import ops, use_backend, use_op
    from ..optim import AdamW

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    model = Llama(config, seed=0, dtype=np.dtype(dtype))
    tokens = np.arange(8).reshape(2, 4) % config.vocab_size
    reference = ops("numpy")
    with ExitStack() as stack:
        stack.enter_context(use_backend("numba"))
        for op in LEFT_TO_THE_RUN:
            for direction in ("forward", "backward"):
                name = f"{op}_{direction}"
                stack.enter_context(use_op(name, getattr(reference, name)))
        _, grads = model.loss_and_grads(tokens, np.roll(tokens, -1, axis=1))
        AdamW(model.params).step(grads, lr=1e-3)


if __name__ == "__main__":
    compile_late_kernels(sys.argv[1] if len(sys.argv) > 1 else "float32")
