"""Determinism: the same seed gives bit-identical losses, run after run, on each backend.

Promised (docs/robustness.md, "Determinism"): on one machine, with the same library versions and
the same thread counts, a training run is a pure function of its seed -- in one process or across
processes (whatever PYTHONHASHSEED is), on the numpy backend and on the numba backend.

Not promised: the two backends agree bit for bit.  The kernels compute some sums in a different
order and exp with their own polynomial; they agree to round-off.  Which ops differ, and why, is a
table in docs/robustness.md; a test here measures every op and fails if one that differs is not in
that table (or if it differs by more than round-off).
"""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npllama import LlamaConfig, backend, use_backend
from npllama.data import BatchLoader
from npllama.gradcheck import rel_error
from npllama.model import Llama
from npllama.ops import rope_cos_sin
from npllama.optim import AdamW, clip_grad_norm, cosine_with_warmup

from .kernels.helpers import TOLERANCE

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["numpy", "numba"]
STEPS = 4


def short_run(backend_name: str, dtype=np.float32):
    """A few steps of the real training loop's arithmetic: losses (floats) and a hash of the weights."""
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    stream = np.random.default_rng(0).integers(0, config.vocab_size, 2000)
    with use_backend(backend_name):
        model = Llama(config, seed=3, dtype=dtype)
        optimizer = AdamW(model.params, lr=1e-2)
        loader = BatchLoader(stream, batch_size=4, seq_len=16, seed=5)
        losses = []
        for step in range(STEPS):
            loss, grads = model.loss_and_grads(*loader.next_batch())
            clip_grad_norm(grads, 1.0)
            optimizer.step(grads, lr=cosine_with_warmup(step, max_lr=1e-2, warmup_steps=1, total_steps=STEPS))
            losses.append(loss)
    digest = hashlib.sha256(b"".join(model.params[n].tobytes() for n in model.params)).hexdigest()
    return losses, digest


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_same_seed_gives_the_same_bits_twice_in_one_process(backend_name):
    first, second = short_run(backend_name), short_run(backend_name)
    assert first == second
    assert first[0][0] != first[0][-1]  # the run did train


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.test_determinism import short_run
print(json.dumps(short_run(sys.argv[2])))
"""


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_same_seed_gives_the_same_bits_in_another_process(backend_name):
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "random"}  # no help from hashing
    out = subprocess.run([sys.executable, "-c", CHILD, str(here), backend_name], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    losses, digest = json.loads(out.stdout.strip().splitlines()[-1])
    assert [losses, digest] == list(short_run(backend_name))  # JSON floats round-trip exactly


# ----- across backends: round-off only, and documented ----------------------------------------------

def op_inputs(dtype):
    """Arguments (positional, keyword) for each op family the numba backend replaces."""
    rng = np.random.default_rng(0)
    B, T, D, H, KVH, hd, V, F = 2, 5, 16, 4, 2, 8, 19, 24

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    cos, sin = rope_cos_sin(np.arange(T), hd, 10000.0, dtype=dtype)
    return {
        "embedding": ((rng.integers(0, V, (B, T)), r(V, D)), {}),
        "linear": ((r(B, T, D), r(F, D)), {}),
        "rmsnorm": ((r(B, T, D), r(D), 1e-5), {}),
        "rope": ((r(B, H, T, hd), cos, sin), {}),
        "softmax": ((r(B, T, V),), {}),
        "attention": ((r(B, H, T, hd), r(B, KVH, T, hd), r(B, KVH, T, hd)), {"causal": True}),
        "swiglu_act": ((r(B, T, F), r(B, T, F)), {}),
        "swiglu": ((r(B, T, D), r(F, D), r(F, D), r(D, F)), {}),
        "cross_entropy": ((r(B, T, V), rng.integers(0, V, (B, T))), {}),
    }


def forward_and_backward(backend_name, op, args, kwargs):
    ops = backend.ops(backend_name)
    out, cache = getattr(ops, op + "_forward")(*args, **kwargs)
    dout = (np.ones((), dtype=out.dtype) if op == "cross_entropy"
            else np.random.default_rng(1).standard_normal(np.shape(out)).astype(out.dtype))
    grads = getattr(ops, op + "_backward")(dout, cache)
    return [np.asarray(out)] + [np.asarray(g) for g in (grads if isinstance(grads, tuple) else (grads,))]


def documented_differences() -> set[str]:
    """The op names in the table under "Not bit-identical across backends" in docs/robustness.md."""
    text = (ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    section = text.split("### Not bit-identical across backends", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\|\s*`(\w+)`", section, flags=re.MULTILINE))


def test_backends_differ_by_round_off_only_and_where_documented():
    from npllama.kernels import KERNELS

    families = {name.rsplit("_", 1)[0] for name in KERNELS}
    measured = {}
    for dtype, tolerance in TOLERANCE.items():   # the kernels' own: 1e-5 float32, 1e-12 float64
        for op, (args, kwargs) in op_inputs(dtype).items():
            if op not in families:
                continue
            reference = forward_and_backward("numpy", op, args, kwargs)
            kernel = forward_and_backward("numba", op, args, kwargs)
            worst = max(rel_error(a, b) for a, b in zip(reference, kernel, strict=True))
            assert worst <= tolerance, f"{op} ({np.dtype(dtype).name}): numba differs by {worst:.1e}"
            same = all(a.tobytes() == b.tobytes() for a, b in zip(reference, kernel, strict=True))
            measured[op] = measured.get(op, True) and same
    assert families <= set(measured), f"ops without inputs here: {families - set(measured)}"
    differing = {op for op, same in measured.items() if not same}
    undocumented = differing - documented_differences()
    assert not undocumented, (f"{sorted(undocumented)} differ between backends but docs/robustness.md does not "
                              f"say so (or why): add them to its table")


def test_a_whole_run_differs_across_backends_by_round_off_only():
    numpy_losses, _ = short_run("numpy", np.float64)
    numba_losses, _ = short_run("numba", np.float64)
    assert rel_error(np.array(numpy_losses), np.array(numba_losses)) < 1e-12
