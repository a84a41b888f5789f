"""The whole model gives the same logits, loss and gradients on the numpy and numba backends;
the kernels also run with NUMBA_DISABLE_JIT=1 (as plain Python, for a debugger)."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npllama import Llama, LlamaConfig, backend, use_backend
from npllama.kernels import KERNELS

from .helpers import assert_close


def test_every_kernel_replaces_a_reference_of_the_same_name():
    reference = backend.ops("numpy")
    for name in KERNELS:
        assert hasattr(reference, name), name
    for name in ("attention", "cross_entropy", "linear", "rmsnorm", "rope", "swiglu"):
        for suffix in ("_forward", "_backward"):
            assert backend.ops("numba").__dict__[name + suffix] is KERNELS[name + suffix]
    # the lookup is NumPy's own on both backends; only its backward has a kernel
    assert backend.ops("numba").embedding_forward is reference.embedding_forward
    assert backend.ops("numba").embedding_backward is KERNELS["embedding_backward"]



def test_use_backend_restores_the_previous_backend_even_when_the_block_raises():
    before = backend.get_backend()
    with pytest.raises(KeyError):
        with use_backend("numpy") as chosen:
            assert chosen == "numpy" and backend.get_backend() == "numpy"
            with use_backend(" NUMBA ") as inner:
                assert inner == "numba" and backend.get_backend() == "numba"   # the name as normalised
                backend.set_backend("numpy")       # a set_backend inside a block ends with the block
                raise KeyError("inside")
    assert backend.get_backend() == before
    with pytest.raises(ValueError, match=r"^backend must be one of \('numpy', 'numba'\), got 'torch'$"):
        with use_backend("torch"):
            pass
    assert backend.get_backend() == before


def test_the_environment_variable_is_checked_with_a_clear_error(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "jax")
    with pytest.raises(ValueError, match=r"^\$NPLLAMA_BACKEND must be one of \('numpy', 'numba'\), got 'jax'$"):
        backend.get_backend()
    with use_backend("numpy"):                  # a block's choice does not read the variable
        assert backend.get_backend() == "numpy"
    for value, expected in ((" NumPy ", "numpy"), ("", "numba"), ("  ", "numba")):   # empty: unset
        monkeypatch.setenv(backend.ENV_VAR, value)
        assert backend.get_backend() == expected, repr(value)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_model_equal_on_both_backends(dtype, n_kv_heads):
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_heads,
                         max_position_embeddings=32)
    model = Llama(config, seed=1, dtype=dtype)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, 37, (3, 9)), rng.integers(0, 37, (3, 9))
    targets[0, :4] = -100
    attention_mask = np.ones((3, 9), dtype=bool)
    attention_mask[1, :3] = False                                   # left padding
    results = {}
    for name in ("numpy", "numba"):
        with use_backend(name):
            logits = model.forward(tokens, attention_mask)
            loss, grads = model.loss_and_grads(tokens, targets, attention_mask)
            kv_cache = model.new_kv_cache(3, 12)
            prefill = model.forward_step(tokens[:, :6], kv_cache)
            step = model.forward_step(tokens[:, 6:7], kv_cache)
            results[name] = (logits, loss, grads, prefill, step)
    (logits, loss, grads, prefill, step), expected = results["numba"], results["numpy"]
    assert_close(logits, expected[0], "logits")
    assert_close(np.asarray(loss, dtype=dtype), np.asarray(expected[1], dtype=dtype), "loss")
    assert grads.keys() == expected[2].keys()
    for name in grads:
        assert_close(grads[name], expected[2][name], name)
    assert_close(prefill, expected[3], "forward_step prefill")
    assert_close(step, expected[4], "forward_step decode")



LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 4}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads, kv_heads, head_dim, vocab, tied, rope_scaling, rope_theta, T", [
    (4, 1, 2, 2, True, LLAMA3_SCALING, 500000.0, 1),          # MQA, the smallest head, vocab 2, one position
    (6, 3, 4, 5, False, LLAMA3_SCALING, 10.0, 12),            # GQA, LLaMA-3 scaling past its original context
    (1, 1, 6, 3, True, {"rope_type": "linear", "factor": 4.0}, 10000.0, 7),
])
def test_model_equal_on_both_backends_across_the_config_space(dtype, heads, kv_heads, head_dim, vocab, tied,
                                                               rope_scaling, rope_theta, T):
    """Forward, loss and gradients, the KV-cache steps and FastDecoder, on configs the test above
    does not reach: tied embeddings, rope_scaling and rope_theta, T = 1, head_dim 2, vocab 2, and a
    hidden size that is not heads * head_dim."""
    from npllama.kernels.decode import FastDecoder

    config = LlamaConfig(vocab_size=vocab, hidden_size=heads * head_dim + 3, head_dim=head_dim,
                         intermediate_size=13, num_hidden_layers=2, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=16, rope_theta=rope_theta,
                         rope_scaling=rope_scaling, tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None)
    model = Llama(config, seed=2, dtype=dtype)
    rng = np.random.default_rng(0)
    for p in model.params.values():       # larger weights: logits that differ, not all ~0
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    tokens, targets = rng.integers(0, vocab, (2, T)), rng.integers(0, vocab, (2, T))
    targets[0] = -100
    results = {}
    for name in ("numpy", "numba"):
        with use_backend(name):
            kv_cache = model.new_kv_cache(2, 16)
            steps = np.concatenate([model.forward_step(tokens[:, t:t + 1], kv_cache) for t in range(T)], axis=1)
            results[name] = (model.forward(tokens), *model.loss_and_grads(tokens, targets), steps)
    (logits, loss, grads, steps), expected = results["numba"], results["numpy"]
    assert_close(logits, expected[0], "logits")
    assert_close(np.asarray(loss, dtype=dtype), np.asarray(expected[1], dtype=dtype), "loss")
    for name in expected[2]:
        assert_close(grads[name], expected[2][name], name)
    assert_close(steps, expected[0], "forward_step one position at a time")
    decoder = FastDecoder(model, batch_size=1, max_length=16, threads=1)
    fast = np.concatenate([decoder.step(tokens[:1, t:t + 1]) for t in range(T)], axis=1)
    assert_close(fast, expected[0][:1], "FastDecoder one position at a time")

DISABLE_JIT_SCRIPT = textwrap.dedent("""
    import numba, numpy as np
    assert numba.config.DISABLE_JIT
    from npllama import Llama, LlamaConfig, use_backend
    from npllama.kernels.adamw import adamw_update
    from npllama.kernels.decode import FastDecoder
    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    from npllama.generate import generate
    for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        model = Llama(config, seed=0, dtype=dtype)
        tokens = np.array([[1, 2, 3, 4]]); targets = np.array([[2, 3, 4, -100]])
        results = {}
        for name in ("numpy", "numba"):
            with use_backend(name):
                results[name] = model.loss_and_grads(tokens, targets)
        (loss, grads), (loss_ref, grads_ref) = results["numba"], results["numpy"]
        assert abs(loss - loss_ref) < 10 * rtol * abs(loss_ref)
        for n in grads:
            assert grads[n].dtype == dtype, n
            assert np.allclose(grads[n], grads_ref[n], rtol=rtol, atol=rtol * np.abs(grads_ref[n]).max()), n
        kv = model.new_kv_cache(1, 8)
        with use_backend("numpy"):
            expected = model.forward_step(tokens, kv)
            greedy = generate(model, [1, 2], 6, temperature=0)
        fast = FastDecoder(model, max_length=8).step(tokens)
        assert fast.dtype == dtype and np.allclose(fast, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
        assert generate(model, [1, 2], 6, temperature=0) == greedy
    p = np.ones(3)
    adamw_update(p, np.ones(3), np.zeros(3), np.zeros(3), 0.1, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)
    assert np.allclose(p, 0.9)
    print("ok")
""")


def test_kernels_run_as_python_with_numba_disable_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", DISABLE_JIT_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("name, replacement, error, match", [
    ("model.layers.0.input_layernorm.weight", lambda a: a.astype(np.float64), TypeError, "dtype float64"),
    ("lm_head.weight", lambda a: a.astype(np.float64), TypeError, "dtype float64"),
    ("model.norm.weight", lambda a: a[:1].copy(), ValueError, r"shape \(1,\)"),   # the kernel would read past it
])
def test_a_parameter_replaced_by_another_dtype_or_shape_is_refused_on_both_backends(backend_name, name, replacement,
                                                                                     error, match):
    """Llama's methods skip the ops' checks (the constructor checked the parameters), but
    model.params is a plain dict: a float64 array put into a float32 model made NumPy upcast
    everything after it and the kernels round it back down -- two answers, neither an error --
    and an array of the wrong shape was broadcast by NumPy and read past its end by a kernel."""
    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8)
    model = Llama(config, seed=0, dtype=np.float32)
    model.params[name] = replacement(model.params[name])
    tokens = np.array([[1, 2, 3]])
    with use_backend(backend_name):
        for call in (lambda: model.forward(tokens), lambda: model.loss_and_grads(tokens, tokens),
                     lambda: model.forward_step(tokens, model.new_kv_cache(1))):
            with pytest.raises(error, match=rf"params\['{re.escape(name)}'\] .*{match}"):
                call()


@pytest.mark.parametrize("how", ["same dtype and shape", "read-only", "memmap", "unpickled", "ndarray subclass"])
def test_a_parameter_replaced_by_an_array_of_the_same_dtype_and_shape_runs_without_the_full_check(
        how, tmp_path, monkeypatch):
    """Arrays the constructor accepts pass the quick per-call look at model.params too: a memmap
    (np.memmap, an ndarray subclass) and an unpickled array (its dtype equal to float32, not the
    same object) fell to the full check_params at every forward_step, a cost per decoded token."""
    import pickle

    import npllama.io.hf

    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8)
    model = Llama(config, seed=0, dtype=np.float32)
    tokens = np.array([[1, 2, 3]])
    expected = model.forward(tokens)
    name = "model.layers.0.mlp.up_proj.weight"
    original = model.params[name]
    if how == "same dtype and shape":
        model.params[name] = original.copy()
    elif how == "read-only":
        model.params[name] = original.copy()
        model.params[name].flags.writeable = False
    elif how == "memmap":
        model.params[name] = np.memmap(tmp_path / "w", dtype=original.dtype, mode="w+", shape=original.shape)
        model.params[name][...] = original
    elif how == "unpickled":
        model.params[name] = pickle.loads(pickle.dumps(original))
        assert model.params[name].dtype is not original.dtype      # what made the quick look fail
    else:
        model.params[name] = original.view(type("Weights", (np.ndarray,), {}))
    full_checks = []
    monkeypatch.setattr(npllama.io.hf, "check_params", lambda *args, **kwargs: full_checks.append(args))
    for backend_name in ("numpy", "numba"):
        with use_backend(backend_name):
            assert_close(model.forward(tokens), expected, "logits")
            model.forward_step(tokens, model.new_kv_cache(1))
    assert full_checks == []
