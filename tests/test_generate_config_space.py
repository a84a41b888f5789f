"""Cached decoding equals the full forward over the space of configs, not one shape: grouped-query
heads, a head_dim apart from hidden_size / heads, tied or untied embeddings, every rope_scaling
type npllama implements, odd vocabularies, 1 to 3 layers, float32 and float64, a batch, prompts
cut into chunks of every size (the fast decoder's one-by-one steps and its BLAS prefill, mixed)
and any thread count."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, use_backend
from npllama.generate import _decoder, generate

ROPE_SCALINGS = [None, dict(rope_type="linear", factor=4.0), dict(rope_type="dynamic", factor=2.0),
                 dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=6)]


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4, 6]))
    kv_heads = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    head_dim = draw(st.sampled_from([2, 4, 6, 10]))
    # a hidden size that is not heads * head_dim makes a config that names head_dim apart
    hidden = draw(st.sampled_from([heads * head_dim, 6, 8, 12]))
    return LlamaConfig(vocab_size=draw(st.sampled_from([3, 31, 61])), hidden_size=hidden,
                       intermediate_size=draw(st.integers(3, 24)), num_hidden_layers=draw(st.integers(1, 3)),
                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=None if hidden == heads * head_dim else head_dim,
                       max_position_embeddings=draw(st.integers(2, 40)),
                       rope_theta=draw(st.sampled_from([10000.0, 500000.0, 3.5])),
                       rope_scaling=draw(st.sampled_from(ROPE_SCALINGS)), tie_word_embeddings=draw(st.booleans()),
                       eos_token_id=None, bos_token_id=None)


def spread_model(config, dtype, seed):
    """A model far from the init (clear margins between logits, values of every size in attention)."""
    model = Llama(config, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        p[...] = 1 + 0.3 * rng.standard_normal(p.shape) if "norm" in name else rng.normal(0, 0.5, p.shape)
    return model


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@given(config=configs(), dtype=st.sampled_from([np.float32, np.float64]), batch=st.integers(1, 2),
       chunks=st.lists(st.sampled_from([1, 2, 5, 17, 20]), min_size=1, max_size=6),
       threads=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_the_decoder_s_logits_are_the_full_forward_s_for_any_config(backend, config, dtype, batch, chunks,
                                                                     threads, seed):
    """The full context, cut into chunks (the last one shortened to fit), through generate's decoder:
    at every position the logits of one forward over the whole sequence.  float32: within 1e-4 of
    the logits' scale.  The two paths make the same sums in another order and grouping, and these
    spread-out models amplify a rounding through the layers: the full float32 forward itself is up
    to 2e-5 of the scale away from the float64 one, the cached path up to 4e-5 from the forward
    (seen over 120 such draws); a wrong position, scale or head is off by the scale itself."""
    model = spread_model(config, dtype, seed)
    context = config.max_position_embeddings
    sequence = np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, context))
    full = model.forward(sequence)
    tolerance = 1e-10 if dtype == np.float64 else 1e-4 * max(1.0, np.abs(full).max())
    with use_backend(backend):
        decode = _decoder(model, batch_size=batch, max_length=context, threads=threads)
        start = 0
        for n in chunks + [context]:
            n = min(n, context - start)
            np.testing.assert_allclose(decode(sequence[:, start:start + n]), full[:, start:start + n],
                                       rtol=0, atol=tolerance, err_msg=f"positions {start}..{start + n - 1}")
            start += n
            if start == context:
                break


@given(config=configs(), prompt_lengths=st.lists(st.integers(1, 39), min_size=1, max_size=3),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_greedy_generation_is_the_full_forward_s_argmax_up_to_the_context_end(config, prompt_lengths, seed):
    """float64, both backends, a batch of prompts of different lengths: each prompt's greedy ids are
    those of recomputing the whole sequence each step, up to the last position of the context."""
    model = spread_model(config, np.float64, seed)
    context = config.max_position_embeddings
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, min(n, context - 1)).tolist() for n in prompt_lengths]
    new_tokens = context - max(map(len, prompts))
    expected = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(new_tokens):
            ids.append(int(np.argmax(model.forward(np.array([ids]))[0, -1])))
        expected.append(ids)
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            assert generate(model, prompts, new_tokens, temperature=0) == expected, backend
