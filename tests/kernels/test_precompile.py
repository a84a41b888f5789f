"""The helper process that compiles a first run's late kernels (npllama/kernels/precompile.py)."""
import json
import os
import subprocess
import sys

import pytest

from npllama.kernels import precompile

# A training step of the tiny preset's shape family (the thread-count measurement's and the
# run's own), listing every npllama kernel it had to compile rather than load.
STEP_SCRIPT = """
import json, numpy as np
from numba.core import event
compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        f = ev.data["dispatcher"].py_func
        if f.__module__.startswith("npllama."):
            compiled.append(f.__module__ + "." + f.__name__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Listener())
from npllama import Llama, LlamaConfig
from npllama.optim import AdamW
config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
model = Llama(config, seed=0, dtype=np.float32)
tokens = np.random.default_rng(0).integers(0, 40, size=(3, 7))
_, grads = model.loss_and_grads(tokens, np.roll(tokens, -1, axis=1))
AdamW(model.params).step(grads, lr=1e-3)
print(json.dumps(compiled))
"""


def in_fresh_process(cache_dir, *args):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_DISABLE_JIT", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout


def test_after_the_helper_a_step_compiles_only_what_the_helper_leaves_to_it(tmp_path):
    """The helper's kernels must be the very ones a run calls (same types, same flags): a drift
    (a kernel given a new argument, a dtype path changed) would make the run compile them again,
    and the helper would only cost a core."""
    check = ("from npllama.kernels import precompile\n"
             "print(precompile._late_kernels_cached('float32'), precompile._late_kernels_cached('float64'))")
    assert in_fresh_process(tmp_path, "-c", check).split() == ["False", "False"]     # a cold cache
    in_fresh_process(tmp_path, "-m", "npllama.kernels.precompile", "float32")
    assert in_fresh_process(tmp_path, "-c", check).split() == ["True", "False"]      # that dtype's, now
    compiled = json.loads(in_fresh_process(tmp_path, "-c", STEP_SCRIPT).strip().splitlines()[-1])
    assert compiled, "the step compiled nothing: the helper took every kernel, or the cache was warm"
    late = {"npllama.kernels.swiglu", "npllama.kernels.cross_entropy", "npllama.kernels.embedding",
            "npllama.kernels.adamw"}
    assert not {name.rsplit(".", 1)[0] for name in compiled} & late, compiled
    # and what it did compile belongs to the ops the helper leaves to the run
    assert {name.split(".")[2] for name in compiled} <= {"rmsnorm", "rope", "attention", "_simd"}, compiled


@pytest.fixture
def fresh_state(monkeypatch):
    """precompile's once-per-process state, reset; helpers recorded instead of started."""
    started = []
    monkeypatch.setattr(precompile, "_armed", False)
    monkeypatch.setattr(precompile, "_helper", None)
    monkeypatch.setattr(precompile, "_start_helper", lambda dtype: started.append(dtype) or "helper")
    monkeypatch.delenv("NPLLAMA_PARALLEL_COMPILE", raising=False)
    return started


def test_a_cold_cache_starts_the_helper_at_once_and_a_warm_one_does_not(fresh_state, monkeypatch):
    monkeypatch.setattr(precompile, "_late_kernels_cached", lambda dtype: False)
    precompile.compile_late_kernels_on_a_cold_cache("float64")
    precompile.compile_late_kernels_on_a_cold_cache("float64")        # once per process
    assert fresh_state == ["float64"]

    monkeypatch.setattr(precompile, "_armed", False)
    monkeypatch.setattr(precompile, "_late_kernels_cached", lambda dtype: True)
    precompile.compile_late_kernels_on_a_cold_cache("float32")
    assert fresh_state == ["float64"]


def test_switched_off_by_the_environment(fresh_state, monkeypatch):
    monkeypatch.setattr(precompile, "_late_kernels_cached", lambda dtype: False)
    monkeypatch.setenv("NPLLAMA_PARALLEL_COMPILE", "0")
    precompile.compile_late_kernels_on_a_cold_cache("float32")
    assert fresh_state == []


def test_no_helper_for_a_run_on_the_numpy_backend(fresh_state, monkeypatch):
    from npllama import use_backend

    monkeypatch.setattr(precompile, "_late_kernels_cached", lambda dtype: False)
    with use_backend("numpy"):
        precompile.compile_late_kernels_on_a_cold_cache("float32")
    assert fresh_state == []
    precompile.compile_late_kernels_on_a_cold_cache("float32")      # not armed by the numpy run
    assert fresh_state == ["float32"]


def test_an_unreadable_cache_index_starts_the_helper_at_the_first_compilation(fresh_state, monkeypatch):
    from numba.core import event

    monkeypatch.setattr(precompile, "_late_kernels_cached", lambda dtype: None)
    registered = []
    monkeypatch.setattr(event, "register", lambda kind, listener: registered.append((kind, listener)))
    precompile.compile_late_kernels_on_a_cold_cache("float32")
    assert fresh_state == [] and [kind for kind, _ in registered] == ["numba:compile"]
    trigger = registered[0][1]

    class Event:
        def __init__(self, module):
            self.data = {"dispatcher": type("D", (), {"py_func": type("F", (), {"__module__": module})})()}

    trigger.on_start(Event("somebody_else"))          # another library's compilation: nothing
    assert fresh_state == []
    trigger.on_start(Event("npllama.kernels.rope"))
    trigger.on_start(Event("npllama.kernels.attention"))
    assert fresh_state == ["float32"] and precompile._helper == "helper"
