"""Attention: against a loop-by-loop reference, gradient checks, causal / decode / padding
invariants, grouped-query attention as repeated multi-head attention, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.gradcheck import check_op
from npllama.ops.attention import attention_backward, attention_forward


def naive_attention(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    """One query row at a time, straight from the definition (returns out, attn_probs)."""
    B, H, T, hd = q.shape
    KVH, S = k.shape[1], k.shape[2]
    n_rep = H // KVH
    out = np.zeros_like(q)
    probs = np.zeros((B, H, T, S))
    for b in range(B):
        for h in range(H):
            g = h // n_rep  # repeat-interleave: heads 0..n_rep-1 read kv head 0, ...
            for t in range(T):
                allowed = np.array([(not causal or s <= q_offset + t)
                                    and (key_padding_mask is None or key_padding_mask[b, s])
                                    for s in range(S)])
                if not allowed.any():
                    continue
                scores = np.array([q[b, h, t] @ k[b, g, s] for s in range(S)]) / math.sqrt(hd)
                e = np.where(allowed, np.exp(scores - scores[allowed].max()), 0.0)
                probs[b, h, t] = e / e.sum()
                out[b, h, t] = probs[b, h, t] @ v[b, g]
    return out, probs


@st.composite
def attention_cases(draw, causal=None, padding=None):
    B = draw(st.integers(1, 2))
    KVH = draw(st.integers(1, 2))
    n_rep = draw(st.sampled_from([1, 2, 4]))
    T = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([2, 4, 6]))
    causal = draw(st.booleans()) if causal is None else causal
    if causal:  # queries are the last T of S positions (q_offset > 0: decode / chunked prefill)
        q_offset = draw(st.integers(0, 3))
        S = q_offset + T
    else:
        q_offset = 0
        S = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    padding = draw(st.booleans()) if padding is None else padding
    mask = rng.random((B, S)) < 0.7 if padding else None
    q = rng.standard_normal((B, KVH * n_rep, T, head_dim))
    k = rng.standard_normal((B, KVH, S, head_dim))
    v = rng.standard_normal((B, KVH, S, head_dim))
    return dict(q=q, k=k, v=v, causal=causal, key_padding_mask=mask, q_offset=q_offset, seed=seed)


def _run(case, **changes):
    case = {**case, **changes}
    return attention_forward(case["q"], case["k"], case["v"], causal=case["causal"],
                             key_padding_mask=case["key_padding_mask"], q_offset=case["q_offset"])


# ----- values ----------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(case=attention_cases())
def test_forward_matches_naive_loops(case):
    out, cache = _run(case)
    expected_out, expected_probs = naive_attention(case["q"], case["k"], case["v"], case["causal"],
                                                   case["key_padding_mask"], case["q_offset"])
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cache.attn_probs, expected_probs, rtol=1e-12, atol=1e-14)
    assert cache.scale == pytest.approx(1 / math.sqrt(case["q"].shape[-1]))


def test_scores_are_scaled_by_inverse_sqrt_head_dim_by_hand():
    # head_dim 4, scale 1/2: q = (2,0,0,0), keys (1,0,0,0) and 0 -> scores 1 and 0.
    q = np.array([2.0, 0, 0, 0]).reshape(1, 1, 1, 4)
    k = np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]).reshape(1, 1, 2, 4)
    v = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).reshape(1, 1, 2, 4)
    out, cache = attention_forward(q, k, v, causal=False)
    e = math.e
    np.testing.assert_allclose(cache.attn_probs.ravel(), [e / (e + 1), 1 / (e + 1)], rtol=1e-15)
    np.testing.assert_allclose(out.ravel(), [e / (e + 1), 1 / (e + 1), 0, 0], rtol=1e-15)


# ----- gradients -------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(case=attention_cases())
def test_gradcheck_q_k_v(case):
    report = check_op(attention_forward, attention_backward, [case["q"], case["k"], case["v"]],
                      names=["q", "k", "v"], seed=case["seed"],
                      extra_kwargs=dict(causal=case["causal"], key_padding_mask=case["key_padding_mask"],
                                        q_offset=case["q_offset"]))
    report.raise_if_failed()


@pytest.mark.parametrize("H,KVH", [(4, 1), (4, 2), (4, 4), (3, 1)])
def test_gradcheck_each_grouping(H, KVH):
    # multi-query (KVH = 1), grouped, and plain multi-head attention, with padding, causal
    rng = np.random.default_rng(H * 10 + KVH)
    q = rng.standard_normal((2, H, 3, 4))
    k, v = rng.standard_normal((2, KVH, 3, 4)), rng.standard_normal((2, KVH, 3, 4))
    mask = np.array([[True, True, False], [False, True, True]])
    check_op(attention_forward, attention_backward, [q, k, v], names=["q", "k", "v"],
             extra_kwargs=dict(key_padding_mask=mask)).raise_if_failed()


# ----- causality and decoding ------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(case=attention_cases(causal=True), data=st.data())
def test_causal_later_keys_never_change_earlier_outputs(case, data):
    q, k, v = case["q"], case["k"], case["v"]
    T, S, offset = q.shape[2], k.shape[2], case["q_offset"]
    s0 = data.draw(st.integers(1, S - 1)) if S > 1 else 1
    k2, v2 = k.copy(), v.copy()
    k2[:, :, s0:] += 5.0
    v2[:, :, s0:] -= 3.0
    out, _ = _run(case)
    out2, _ = _run(case, k=k2, v=v2)
    sees_changed = offset + np.arange(T) >= s0  # query t sees key s0 iff s0 <= q_offset + t
    np.testing.assert_array_equal(out2[:, :, ~sees_changed], out[:, :, ~sees_changed])
    if case["key_padding_mask"] is None and sees_changed.any():
        assert not np.allclose(out2[:, :, sees_changed], out[:, :, sees_changed])


def test_bidirectional_attention_sees_later_keys():
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    v2 = v.copy()
    v2[:, :, 2] += 1.0
    out, _ = attention_forward(q, k, v, causal=False)
    out2, _ = attention_forward(q, k, v2, causal=False)
    assert not np.allclose(out[:, :, 0], out2[:, :, 0])  # the first query reads the last key


@settings(max_examples=20, deadline=None)
@given(case=attention_cases(causal=True, padding=False))
def test_decode_step_equals_the_matching_row_of_the_full_forward(case):
    q, k, v = case["q"], case["k"], case["v"]
    T = q.shape[2]
    full, _ = attention_forward(q, k, v, causal=True)  # q_offset = 0, S = T here
    for t in range(T):  # a KV cache holding positions 0..t, one new query at position t
        step, _ = attention_forward(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], q_offset=t)
        np.testing.assert_allclose(step, full[:, :, t:t + 1], rtol=1e-12, atol=1e-14)
    last, _ = attention_forward(q[:, :, -1:], k[:, :, :T], v[:, :, :T], q_offset=T - 1)
    np.testing.assert_allclose(last, full[:, :, -1:], rtol=1e-12, atol=1e-14)
    if T > 1:  # chunked prefill: the second chunk of queries against the whole cache
        chunk, _ = attention_forward(q[:, :, 1:], k[:, :, :T], v[:, :, :T], q_offset=1)
        np.testing.assert_allclose(chunk, full[:, :, 1:], rtol=1e-12, atol=1e-14)


# ----- padding -----------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(case=attention_cases(padding=True))
def test_padded_keys_get_zero_probability_and_rows_sum_to_one(case):
    out, cache = _run(case)
    probs, mask = cache.attn_probs, case["key_padding_mask"]
    assert np.all(probs[~mask[:, None, None, :].repeat(probs.shape[1], 1).repeat(probs.shape[2], 2)] == 0)
    row_sums = probs.sum(-1)
    assert np.all(np.isclose(row_sums, 1.0, rtol=1e-12) | (row_sums == 0))
    assert np.all(np.isfinite(out))


def test_fully_masked_row_gives_zeros_and_finite_gradients():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 2, 3, 4))
    k, v = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((2, 1, 3, 4))
    # batch 0: key 0 is padding, so the causal query 0 has nothing to attend; batch 1: all keys padding
    mask = np.array([[False, True, True], [False, False, False]])
    out, cache = attention_forward(q, k, v, causal=True, key_padding_mask=mask)
    assert np.all(cache.attn_probs[0, :, 0] == 0) and np.all(out[0, :, 0] == 0)
    assert np.all(cache.attn_probs[1] == 0) and np.all(out[1] == 0)
    assert np.all(out[0, :, 1:] != 0)
    dq, dk, dv = attention_backward(rng.standard_normal(out.shape), cache)
    assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))
    assert np.all(dq[0, :, 0] == 0) and np.all(dq[1] == 0) and np.all(dk[1] == 0) and np.all(dv[1] == 0)
    assert np.all(dk[0, :, 0] == 0) and np.all(dv[0, :, 0] == 0)  # the padding key gets no gradient
    check_op(attention_forward, attention_backward, [q, k, v],
             extra_kwargs=dict(key_padding_mask=mask)).raise_if_failed()


# ----- grouped-query attention -----------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(case=attention_cases())
def test_gqa_equals_multi_head_attention_on_repeated_kv(case):
    q, k, v = case["q"], case["k"], case["v"]
    KVH, n_rep = k.shape[1], q.shape[1] // k.shape[1]
    k_rep, v_rep = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)  # repeat-interleave
    out, cache = _run(case)
    out_rep, cache_rep = _run(case, k=k_rep, v=v_rep)
    np.testing.assert_allclose(out, out_rep, rtol=1e-13, atol=1e-14)
    dout = np.random.default_rng(case["seed"]).standard_normal(out.shape)
    dq, dk, dv = attention_backward(dout, cache)
    dq_rep, dk_rep, dv_rep = attention_backward(dout, cache_rep)
    B, _, S, hd = k.shape
    np.testing.assert_allclose(dq, dq_rep, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dk, dk_rep.reshape(B, KVH, n_rep, S, hd).sum(2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, dv_rep.reshape(B, KVH, n_rep, S, hd).sum(2), rtol=1e-12, atol=1e-14)


def test_gqa_is_repeat_interleave_not_tile():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((1, 4, 2, 4))
    k, v = rng.standard_normal((1, 2, 2, 4)), rng.standard_normal((1, 2, 2, 4))
    out, _ = attention_forward(q, k, v)
    tiled, _ = attention_forward(q, np.tile(k, (1, 2, 1, 1)), np.tile(v, (1, 2, 1, 1)))
    interleaved, _ = attention_forward(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1))
    np.testing.assert_allclose(out, interleaved, rtol=1e-13)
    assert not np.allclose(out, tiled)


def test_float32_stays_float32():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    out, cache = attention_forward(q, k, k.copy(), key_padding_mask=np.array([[True, False, True]]))
    grads = attention_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and cache.attn_probs.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)


# ----- bad input -------------------------------------------------------------------------------

def test_rejects_bad_input():
    q = np.zeros((2, 4, 3, 8))
    kv = np.zeros((2, 2, 5, 8))
    with pytest.raises(ValueError, match="number of query heads"):
        attention_forward(q, np.zeros((2, 3, 5, 8)), np.zeros((2, 3, 5, 8)))
    with pytest.raises(ValueError, match="k must have shape"):
        attention_forward(q, np.zeros((2, 2, 5, 6)), np.zeros((2, 2, 5, 6)))  # head_dim
    with pytest.raises(ValueError, match="k must have shape"):
        attention_forward(q, np.zeros((1, 2, 5, 8)), np.zeros((1, 2, 5, 8)))  # batch
    with pytest.raises(ValueError, match="v must have the shape of k"):
        attention_forward(q, kv, np.zeros((2, 2, 4, 8)))
    with pytest.raises(ValueError, match="q must have 4"):
        attention_forward(q[0], kv, kv)
    with pytest.raises(ValueError, match="at least one"):
        attention_forward(q, np.zeros((2, 2, 0, 8)), np.zeros((2, 2, 0, 8)))
    with pytest.raises(TypeError, match="dtypes must match"):
        attention_forward(q.astype(np.float32), kv, kv)
    with pytest.raises(TypeError, match="q must be"):
        attention_forward(q.astype(int), kv, kv)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        attention_forward(q, kv, kv, key_padding_mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        attention_forward(q, kv, kv, key_padding_mask=np.ones((2, 3), dtype=bool))
    with pytest.raises(TypeError, match="q_offset"):
        attention_forward(q, kv, kv, q_offset=1.0)
    with pytest.raises(ValueError, match="q_offset"):
        attention_forward(q, kv, kv, q_offset=-1)
