"""The helper process that compiles a first run's kernels (npllama/kernels/precompile.py)."""
import json
import os
import subprocess
import sys

import pytest

from npllama.kernels import precompile

from .helpers import requires_jit

# Training steps of two shapes (multi-head and grouped-query attention with tied embeddings), the
# batch split over two threads as `npllama train` splits it, clipping, an evaluation and AdamW -- and, with "generate" as argument, generations as `npllama train`'s
# samples and `npllama generate` make them -- listing every npllama kernel compiled at the top
# level (not as a callee of another kernel) rather than loaded from the cache.
STEP_SCRIPT = """
import json, sys, numpy as np
from numba.core import event
compiled, depth = [], [0]
class Listener(event.Listener):
    def on_start(self, ev):
        f = ev.data["dispatcher"].py_func
        if depth[0] == 0 and f.__module__.startswith("npllama."):
            compiled.append([f.__module__.rsplit(".", 1)[1], f.__name__])
        depth[0] += 1
    def on_end(self, ev):
        depth[0] -= 1
event.register("numba:compile", Listener())
from npllama import Llama, LlamaConfig
from npllama.generate import generate
from npllama.optim import AdamW, clip_grad_norm
from npllama.parallel import BatchSplitter
for heads, kv_heads, tied in ((4, 4, False), (4, 2, True)):
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16,
                         tie_word_embeddings=tied)
    model = Llama(config, seed=0, dtype=np.float32)
    tokens = np.random.default_rng(0).integers(0, 40, size=(3, 7))
    with BatchSplitter(2) as splitter:
        _, grads = splitter.loss_and_grads(model.loss_and_grads, tokens, np.roll(tokens, -1, axis=1))
    clip_grad_norm(grads, max_norm=1.0)
    AdamW(model.params).step(grads, lr=1e-3)
    model.loss(tokens, np.roll(tokens, -1, axis=1))
    if "generate" in sys.argv:
        generate(model, [3, 4, 5, 6, 7], max_new_tokens=4, temperature=0.8, top_k=40, seed=1)
        generate(model, [3], max_new_tokens=4, temperature=0, seed=1)
print(json.dumps(compiled))
"""
CACHED = ("from npllama.kernels import precompile\n"
          "print(precompile.kernels_cached('float32'), precompile.kernels_cached('float64'))")


def in_fresh_process(cache_dir, *args):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_DISABLE_JIT", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout


def compiled_by_a_step(cache_dir, *args) -> set:
    output = in_fresh_process(cache_dir, "-c", STEP_SCRIPT, *args)
    return {tuple(kernel) for kernel in json.loads(output.splitlines()[-1])}


def test_the_list_of_training_kernels_is_what_a_cold_step_compiles(tmp_path):
    """The list decides whether a run waits on the reference for a helper: a kernel missing from
    it would compile in the run (and the run would not know the cache was cold); one too many
    would never be cached by a step, and every run would start a helper."""
    assert in_fresh_process(tmp_path, "-c", CACHED).split() == ["False", "False"]     # a cold cache
    assert compiled_by_a_step(tmp_path) == set(precompile.TRAINING_KERNELS)
    assert in_fresh_process(tmp_path, "-c", CACHED).split() == ["True", "False"]      # that dtype's, now


def test_after_the_helper_a_step_and_a_generation_compile_nothing(tmp_path):
    """The helper's kernels must be the very ones a run calls (same types, same flags): a drift
    (a kernel given a new argument, a dtype path changed) would make the run compile them again
    after it had waited on the reference for them, or the samples compile after all."""
    in_fresh_process(tmp_path, "-m", "npllama.kernels.precompile", "float32", "decoding")
    assert in_fresh_process(tmp_path, "-c", CACHED).split() == ["True", "False"]
    assert compiled_by_a_step(tmp_path, "generate") == set()


class StandInProcess:
    def __init__(self, ended=False):
        self.ended = ended

    def poll(self):
        return 0 if self.ended else None


@pytest.fixture
def fresh_state(monkeypatch):
    """precompile's state, reset; helpers recorded (as never-ending stand-ins) instead of started."""
    started = []

    def start(dtype, decoding):
        started.append(dtype)
        return precompile.Helper(StandInProcess(), dtype)

    monkeypatch.setattr(precompile, "_helper", None)
    monkeypatch.setattr(precompile, "_start_helper", start)
    monkeypatch.delenv("NPLLAMA_PARALLEL_COMPILE", raising=False)
    return started


@requires_jit
def test_a_cold_cache_starts_one_helper_and_a_warm_one_none(fresh_state, monkeypatch):
    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: False)
    helper = precompile.start_helper_on_a_cold_cache("float64")
    assert fresh_state == ["float64"] and helper.running()
    assert precompile.start_helper_on_a_cold_cache("float64") is helper      # still at work: the same one
    helper.process.ended = True
    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: True)
    assert precompile.start_helper_on_a_cold_cache("float32") is None
    assert fresh_state == ["float64"]


@pytest.mark.parametrize("cached", [True, None])
def test_no_helper_for_a_warm_or_unreadable_cache(fresh_state, monkeypatch, cached):
    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: cached)
    assert precompile.start_helper_on_a_cold_cache("float32") is None and fresh_state == []


def test_switched_off_by_the_environment(fresh_state, monkeypatch):
    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: False)
    monkeypatch.setenv("NPLLAMA_PARALLEL_COMPILE", "0")
    assert precompile.start_helper_on_a_cold_cache("float32") is None and fresh_state == []


@requires_jit
def test_no_helper_for_a_run_on_the_numpy_backend(fresh_state, monkeypatch):
    from npllama import use_backend

    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: False)
    with use_backend("numpy"):
        assert precompile.start_helper_on_a_cold_cache("float32") is None
    assert fresh_state == []
    assert precompile.start_helper_on_a_cold_cache("float32") is not None
    assert fresh_state == ["float32"]


@requires_jit
def test_no_helper_without_a_second_core_to_compile_on(fresh_state, monkeypatch):
    """One core (say `taskset -c 0`, whatever os.cpu_count() says): a helper would only take turns
    with the run, which would then train on the slower references for twice as long."""
    from npllama.kernels import threads

    monkeypatch.setattr(precompile, "kernels_cached", lambda dtype: False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert precompile.start_helper_on_a_cold_cache("float32") is None and fresh_state == []
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert precompile.start_helper_on_a_cold_cache("float32") is not None and fresh_state == ["float32"]
