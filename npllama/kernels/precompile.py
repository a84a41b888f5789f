"""A first training run compiles its kernels in a helper process and trains meanwhile.

Numba compiles a kernel at its first call, in the calling process, and keeps the machine code in
its on-disk cache; once a kernel is there, any process that calls it for the first time loads it
in milliseconds.  A first `npllama train` after an install therefore had ~8 s of compiling ahead
of its first step (benchmarks/README.md: "what we measured").

`start_helper_on_a_cold_cache(dtype, decoding)`, called as a run starts, looks in numba's cache
for every kernel a training step calls (TRAINING_KERNELS) at that dtype.  If one is missing (a
first run after an install, or after an edit of a kernel file), it starts `python -m
npllama.kernels.precompile DTYPE [decoding]`, which runs one step (forward, backward, AdamW) of a
tiny model on the kernels, so they all compile into the cache, and then, for a run that will
print samples, a short generation, so the decoding kernels do too; it returns a `Helper` handle.
The run (npllama/train.py) meanwhile trains on the NumPy references -- the same math, the code
npllama/ops reads as -- with BLAS on one core while the helper compiles on the other, and
changes to the kernels at the first step after they are all in the cache; while the helper
goes on to the decoding kernels, the run's kernel steps stay on one core.  The reference steps
round differently from kernel steps (as two BLAS libraries would): their log lines say
`"backend": "numpy"`.

A run that ends before its helper waits for it (npllama/train.py's `_let_the_helper_finish`):
stopped at exit, it would leave the cache cold for the next run, and the next.

Where numba's cache index cannot be read (its layout is numba's private business), no helper is
started and the run compiles its kernels itself, as any numba program does.  The run measures
its thread count only once the helper has ended (a compiler would share the cores).
The helper is best effort: its output is discarded, a failure only means the run compiles the
kernels itself, and it is stopped at exit if still running (after Ctrl-C, say).  NPLLAMA_PARALLEL_COMPILE=0 turns it off.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Every kernel a training step calls at the top level (forward, backward, evaluation, AdamW), as
# (module in npllama.kernels, function).  The kernels they call compile with them.
# tests/kernels/test_precompile.py checks this list against what a cold step really compiles.
TRAINING_KERNELS = (
    ("rmsnorm", "_rmsnorm_forward_rows"), ("rmsnorm", "_rmsnorm_backward_rows"),
    ("rope", "_rope_rotate"),
    ("attention", "_masked_softmax_rows"), ("attention", "_softmax_backward_rows"),
    ("swiglu", "_silu_mul_halves"), ("swiglu", "_silu_mul_halves_backward"),
    ("cross_entropy", "_loss_and_grad_rows"),
    ("embedding", "_scatter_add_rows"),
    ("adamw", "_adamw_update_flat"), ("gradients", "_abs_max_flat"),
    ("gradients", "_sum_of_squares_flat"),        # the gradient norm, for clipping
    ("gradients", "_weighted_sum_into_flat"),     # a step split over threads adds its parts
)
HELPER_TIMEOUT_S = 300.0


class Helper:
    """A handle on the helper process compiling the training kernels into numba's cache."""

    def __init__(self, process: subprocess.Popen, dtype: str, decoding: bool = False):
        self.process, self.dtype, self.decoding = process, dtype, decoding
        self.started = time.perf_counter()

    def running(self) -> bool:
        return self.process.poll() is None

    def training_kernels_ready(self) -> bool:
        """Whether the training kernels are in the cache (the helper may go on to the decoding ones)."""
        return kernels_cached(self.dtype) is True

    def seconds(self) -> float:
        """Seconds since the helper was started."""
        return time.perf_counter() - self.started

    def wait(self, timeout: float = HELPER_TIMEOUT_S) -> None:
        """Until it has finished; stopped if it takes longer than `timeout` seconds."""
        if self.running():
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()

    def stop(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()


_helper: Helper | None = None     # the latest one started; at most one at work at a time


def start_helper_on_a_cold_cache(dtype, decoding: bool = False) -> Helper | None:
    """At the start of a training run of `dtype` (float32 or float64): a helper compiling the
    training kernels if numba's cache lacks one of them, and then, with `decoding` (the run will
    generate samples), the decoding kernels too; the one already started while it is still at
    work.  None if the cache holds the training kernels, cannot be read, or nothing will be
    compiled."""
    global _helper
    if _helper is not None and _helper.running():
        return _helper
    from .threads import usable_cores

    if os.environ.get("NPLLAMA_PARALLEL_COMPILE", "1") == "0" or usable_cores() < 2:
        return None                     # no second core for a helper to compile on
    from numba import config as numba_config

    from ..backend import get_backend

    if numba_config.DISABLE_JIT or get_backend() != "numba":
        return None                     # nothing will be compiled
    dtype = np.dtype(dtype).name
    if kernels_cached(dtype) is not False:
        return None
    _helper = _start_helper(dtype, decoding)
    return _helper


def kernels_cached(dtype: str) -> bool | None:
    """Whether numba's cache holds every one of TRAINING_KERNELS for `dtype`; None if a cache
    index cannot be read (a numba whose private layout differs)."""
    import importlib

    try:
        for module, name in TRAINING_KERNELS:
            kernel = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            index = kernel._cache._cache_file._load_index()    # {} once the source file changed
            if not any(dtype in str(key[0]) for key in index):
                return False
        return True
    except Exception:   # noqa: BLE001 -- numba's private API: any failure means "cannot tell"
        return None


def _start_helper(dtype: str, decoding: bool) -> Helper | None:
    package_parent = str(Path(__file__).resolve().parents[2])     # where this npllama is imported from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    try:
        process = subprocess.Popen([sys.executable, "-m", "npllama.kernels.precompile", dtype,
                                    *(["decoding"] if decoding else [])], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None                     # no helper: the run compiles everything itself
    helper = Helper(process, dtype, decoding)
    atexit.register(helper.stop)
    return helper


def _tiny_model(dtype: str):
    """A model small enough to run in no time, with grouped-query attention (two heads, one KV head)."""
    from .. import Llama, LlamaConfig

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    return Llama(config, seed=0, dtype=np.dtype(dtype))


def compile_training_kernels(dtype: str) -> None:
    """The helper's work: one training step and one evaluation of a tiny model on the kernels,
    so that every kernel a step calls compiles (into numba's cache, where the run finds it)."""
    from ..backend import use_backend
    from ..optim import AdamW, clip_grad_norm
    from .gradients import weighted_sum_into

    model = _tiny_model(dtype)
    tokens = np.arange(8).reshape(2, 4) % model.config.vocab_size
    targets = np.roll(tokens, -1, axis=1)
    with use_backend("numba"):
        _, grads = model.loss_and_grads(tokens, targets)
        clip_grad_norm(grads, max_norm=1.0)
        AdamW(model.params).step(grads, lr=1e-3)
        model.loss(tokens, targets)
        some_grad = next(iter(grads.values()))
        weighted_sum_into(some_grad, 0.5, some_grad.copy(), 0.5)   # as a split step sums its parts


def compile_decoding_kernels(dtype: str) -> None:
    """The helper's second task, for a run that ends with samples: a short generation of a tiny
    model, as `generate` makes them (batch 1, a short prompt, FastDecoder on every core)."""
    from ..backend import use_backend
    from ..generate import generate

    with use_backend("numba"):
        generate(_tiny_model(dtype), [1, 2, 3, 4], max_new_tokens=3, temperature=0.8, top_k=4, seed=0)


if __name__ == "__main__":
    compile_training_kernels(sys.argv[1] if len(sys.argv) > 1 else "float32")
    if "decoding" in sys.argv[2:]:
        compile_decoding_kernels(sys.argv[1])
