"""FastDecoder returns exactly what model.forward_step returns, call for call."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, use_backend
from npllama.kernels.decode import FastDecoder

from .helpers import assert_close


def small_model(n_kv_heads, dtype, tie=False):
    config = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_heads,
                         max_position_embeddings=24, tie_word_embeddings=tie)
    return Llama(config, seed=3, dtype=dtype)


@given(dtype=st.sampled_from([np.float32, np.float64]), n_kv_heads=st.sampled_from([1, 2, 4]),
       B=st.integers(1, 2), chunks=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       tie=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_fast_decoder_equals_forward_step(dtype, n_kv_heads, B, chunks, tie, seed):
    """A prefill of any length, then steps of any length (1 = plain decoding), in the same order."""
    model = small_model(n_kv_heads, dtype, tie)
    tokens = np.random.default_rng(seed).integers(0, 23, size=(B, sum(chunks)))
    decoder = FastDecoder(model, batch_size=B, max_length=20)
    kv_cache = model.new_kv_cache(B, 20)
    start = 0
    with use_backend("numpy"):
        for n in chunks:
            expected = model.forward_step(tokens[:, start:start + n], kv_cache)
            assert_close(decoder.step(tokens[:, start:start + n]), expected, f"positions {start}..")
            start += n
    assert decoder.length == start


def test_reset_starts_a_new_sequence():
    model = small_model(2, np.float64)
    decoder = FastDecoder(model, max_length=8)
    first = decoder.step(np.array([[1, 2, 3]]))
    decoder.step(np.array([[4]]))
    decoder.reset()
    assert_close(decoder.step(np.array([[1, 2, 3]])), first, "after reset")


def test_bad_input():
    model = small_model(2, np.float32)
    decoder = FastDecoder(model, batch_size=1, max_length=4)
    with pytest.raises(ValueError, match="at most 4 positions"):
        decoder.step(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="batch_size=1"):
        decoder.step(np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids in \[0, 23\)"):
        decoder.step(np.array([[23]]))
    with pytest.raises(TypeError, match="tokens must be an integer"):
        decoder.step(np.array([[1.0]]))
    with pytest.raises(ValueError, match="max_length .* exceeds"):
        FastDecoder(model, max_length=100)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        FastDecoder(model, batch_size=0)


def test_weights_are_laid_out_once_per_model_and_read_in_place():
    from npllama.kernels.decode import model_weights

    model = small_model(2, np.float64)
    layout = model_weights(model)
    assert model_weights(model) is layout                      # a second decoder (generate call) reuses it
    assert FastDecoder(model).weights is layout
    assert layout.wq[0] is model.params["model.layers.0.self_attn.q_proj.weight"]   # the array, not a copy
    # a training step updates parameters in place: the next decode sees it without any refresh
    model.params["model.layers.1.mlp.down_proj.weight"] *= 3
    tokens = np.array([[1, 2, 3, 4]])
    decoder, kv_cache = FastDecoder(model, max_length=8), model.new_kv_cache(1, 8)
    with use_backend("numpy"):
        for t in range(4):
            assert_close(decoder.step(tokens[:, t:t + 1]), model.forward_step(tokens[:, t:t + 1], kv_cache),
                         f"position {t} after an in-place update")


def test_a_replaced_parameter_array_is_noticed():
    from npllama.kernels.decode import model_weights

    model = small_model(2, np.float64)
    layout = model_weights(model)
    name = "model.norm.weight"
    model.params[name] = model.params[name] * 0.5               # a new array object
    assert model_weights(model) is not layout
    with use_backend("numpy"):
        expected = model.forward_step(np.array([[5]]), model.new_kv_cache(1, 4))
    assert_close(FastDecoder(model, max_length=4).step(np.array([[5]])), expected, "after replacing a parameter")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matvec_equals_numpy_for_any_number_of_rows(dtype):
    from npllama.kernels.decode import _matvec

    rng = np.random.default_rng(0)
    for rows in range(1, 11):           # whole blocks of four and every remainder
        for cols in (1, 3, 16):
            w = rng.standard_normal((rows, cols)).astype(dtype)
            x = rng.standard_normal(cols).astype(dtype)
            out = np.full(rows, np.nan, dtype=dtype)
            _matvec(w, x, out)
            assert_close(out, w @ x, f"{rows}x{cols}")
