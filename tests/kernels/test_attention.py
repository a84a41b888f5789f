"""Attention kernels equal the reference: both paths (probabilities kept / flash blocks with
recompute), grouped-query groupings, causal + padding masks, fully masked rows, decode offsets."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import attention as kernel
from npllama.ops import attention as reference

from .helpers import assert_close


@st.composite
def attention_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B = draw(st.integers(1, 2))
    KVH = draw(st.integers(1, 2))
    n_rep = draw(st.sampled_from([1, 2, 4]))          # KVH = 1 with n_rep 4: multi-query
    T = draw(st.integers(1, 7))
    head_dim = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 9]))   # odd, below and above a SIMD width
    causal = draw(st.booleans())
    if causal:   # queries are the last T of S positions (q_offset > 0: decode / chunked prefill)
        q_offset = draw(st.integers(0, 4))
        S = q_offset + T
    else:
        q_offset = 0
        S = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    mask = None
    padding = draw(st.sampled_from([None, "random", "left", "batch 0 all padding"]))
    if padding == "left":                             # a batch of prompts padded on the left
        mask = np.arange(S)[None, :] >= rng.integers(0, S + 1, size=(B, 1))
    elif padding is not None:
        mask = rng.random((B, S)) < 0.7
        if padding == "batch 0 all padding":
            mask[0] = False                           # batch 0: every query fully masked
    # v as a head-split view of a (B, S, KVH*hd) projection, the way the model passes it
    v = rng.standard_normal((B, S, KVH * head_dim)).astype(dtype)
    v = v.reshape(B, S, KVH, head_dim).transpose(0, 2, 1, 3)
    return dict(q=rng.standard_normal((B, KVH * n_rep, T, head_dim)).astype(dtype),
                k=rng.standard_normal((B, KVH, S, head_dim)).astype(dtype), v=v,
                causal=causal, key_padding_mask=mask, q_offset=q_offset,
                dout=rng.standard_normal((B, KVH * n_rep, T, head_dim)).astype(dtype))


def check_equal_to_reference(case):
    args = {n: case[n] for n in ("q", "k", "v", "causal", "key_padding_mask", "q_offset")}
    out, cache = kernel.attention_forward(**args)
    out_ref, cache_ref = reference.attention_forward(**args)
    assert_close(out, out_ref, "out")
    grads = kernel.attention_backward(case["dout"], cache)
    grads_ref = reference.attention_backward(case["dout"], cache_ref)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        # A query with a single visible key has dq = 0 exactly in theory; in practice both sides
        # hold rounding noise the size of the terms (inputs are ~N(0, 1)), so compare on scale 1.
        assert_close(g, g_ref, name, scale=max(float(np.max(np.abs(g_ref), initial=0)), 1.0))


@given(case=attention_cases(), block_rows=st.sampled_from([None, 1, 2, 3]))
@settings(max_examples=25, deadline=None)
def test_attention_keeping_probabilities_equals_reference(case, block_rows):
    with pytest.MonkeyPatch.context() as mp:
        if block_rows is not None:                                 # several blocks even at small T
            mp.setattr(kernel, "BLOCK_ROWS", (block_rows, block_rows))
        check_equal_to_reference(case)


@given(case=attention_cases(), block_rows=st.sampled_from([None, 1, 2, 3]))
@settings(max_examples=25, deadline=None)
def test_flash_attention_equals_reference(case, block_rows):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "FLASH_MIN_KEYS", 1)                    # always the flash path
        if block_rows is not None:
            mp.setattr(kernel, "BLOCK_ROWS", (block_rows, block_rows))
        check_equal_to_reference(case)



@pytest.mark.parametrize("flash", [False, True])
def test_writing_into_the_output_does_not_change_the_gradients(flash):
    """The caller owns `out` (the reference keeps no reference to it): `out += residual` between
    forward and backward leaves the gradients as they were, on both paths."""
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 2, 5, 4)) for _ in range(4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "FLASH_MIN_KEYS", 1 if flash else 512)
        out, cache = kernel.attention_forward(q, k, v)
        out += 1.0
        grads = kernel.attention_backward(dout, cache)
    _, cache_ref = reference.attention_forward(q, k, v)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, reference.attention_backward(dout, cache_ref)):
        assert_close(g, g_ref, name, scale=max(float(np.max(np.abs(g_ref))), 1.0))

def peak_attention_bytes(T, H=4, hd=8):
    """Peak NumPy memory of one attention forward + backward at T = S (float32, B = 1)."""
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, H, T, hd)).astype(np.float32) for _ in range(4))
    tracemalloc.start()
    try:
        out, cache = kernel.attention_forward(q, k, v)
        kernel.attention_backward(dout, cache)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out, cache, (q, k, v)


def test_flash_attention_memory_is_linear_in_T():
    """From FLASH_MIN_KEYS keys on, the (B, H, T, S) probabilities are never held: at T = 2048 they
    alone would take 32 MiB.  Doubling T at most doubles the peak (quadratic would quadruple it)."""
    T, H = 2048, 2
    assert T // 2 >= kernel.FLASH_MIN_KEYS
    peak_attention_bytes(T // 2, H)            # compile first: numba's compiler allocates too
    peak_half, _, _, _ = peak_attention_bytes(T // 2, H)
    peak, out, cache, (q, k, v) = peak_attention_bytes(T, H)
    assert cache.attn_probs is None and cache.lse is not None
    assert peak < H * T * T * 4 / 2
    assert peak < 2.2 * peak_half
    # and the result is still right, checked on the last few queries against the reference
    ref_out, _ = reference.attention_forward(q[:, :, -4:], k, v, q_offset=T - 4)
    assert_close(out[:, :, -4:], ref_out, "out")


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_no_queries_give_empty_outputs_and_zero_key_gradients_as_the_reference(flash, causal):
    """T = 0 (no query rows): the reference returns empty outputs and zero dk, dv; the kernel made
    its blocks with range(0, 0, T) and failed with "range() arg 3 must not be zero"."""
    rng = np.random.default_rng(0)
    q, dout = np.zeros((2, 4, 0, 6)), np.zeros((2, 4, 0, 6))
    k, v = rng.standard_normal((2, 2, 3, 6)), rng.standard_normal((2, 2, 3, 6))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "FLASH_MIN_KEYS", 1 if flash else 512)
        check_equal_to_reference(dict(q=q, k=k, v=v, causal=causal, key_padding_mask=None, q_offset=3, dout=dout))
