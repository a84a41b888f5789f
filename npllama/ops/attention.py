"""Scaled dot-product attention with grouped-query attention (article §4.1).

    attn_scores = q k^T * scale                  scale = 1 / sqrt(head_dim)
    attn_probs  = softmax(attn_scores + mask)    mask: 0 where allowed, -inf where not
    out         = attn_probs v

q: (B, H, T, head_dim);  k, v: (B, KVH, S, head_dim) with KVH dividing H.  Query head h reads
kv head h // n_rep, n_rep = H // KVH (repeat-interleave, like Hugging Face's repeat_kv).  We never
copy k and v n_rep times: q is viewed as (B, KVH, n_rep, T, head_dim) and each kv head broadcasts
over its group of n_rep query heads.

Positions: query t is at absolute position q_offset + t, key s at position s.  With causal=True
query t may attend key s only if s <= q_offset + t.  Prefill: q_offset = 0, S = T.  One KV-cache
decode step: T = 1, q_offset = S - 1.

Derivation: derivations/attention.md
"""
import math
from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_same_dtype, require_shape
from .softmax import softmax_backward, softmax_forward


class AttentionCache(NamedTuple):
    """What attention_backward needs.  S = number of keys (T, or more when decoding with a KV cache)."""

    q: np.ndarray            # (B, H, T, head_dim) rotated: q_rot, after RoPE, as the op was given it
    k: np.ndarray            # (B, KVH, S, head_dim) rotated: k_rot, after RoPE (a KV cache's keys too)
    v: np.ndarray            # (B, KVH, S, head_dim)
    attn_probs: np.ndarray   # (B, H, T, S) softmax of the masked scores; 0 where masked
    scale: float             # 1 / sqrt(head_dim)
    n_rep: int               # H // KVH query heads per kv head

    def intermediates(self) -> dict:
        """The cached arrays worth recording in a trace: the attention probabilities."""
        return {"attn_probs": self.attn_probs}


def attention_forward(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    """Returns (out, AttentionCache); out: (B, H, T, head_dim).

    key_padding_mask: None or bool (B, S), True where the key is a real token that may be
    attended.  A query with no allowed key gets all-zero attn_probs and a zero output.
    """
    if checking.get():
        check_attention_args(q, k, v, key_padding_mask, q_offset)
    B, H, T, head_dim = q.shape
    KVH, S = k.shape[1], k.shape[2]
    n_rep = H // KVH
    scale = 1.0 / math.sqrt(head_dim)
    # Query head h = g * n_rep + r reads kv head g: view q as (B, KVH, n_rep, T, hd), and each kv
    # head's k and v broadcast over its group (k[:, :, None] is (B, KVH, 1, S, hd)); nothing copied.
    q_groups = q.reshape(B, KVH, n_rep, T, head_dim)                                   # (B, KVH, n_rep, T, hd)

    # attn_scores = q k^T * scale, -inf where the mask forbids the pair (softmax then gives it 0)
    attn_scores = (q_groups @ k[:, :, None].swapaxes(-1, -2)).reshape(B, H, T, S) * scale  # (B, H, T, S)
    allowed = attention_mask(T, S, causal, key_padding_mask, q_offset)                # broadcasts to scores
    if allowed is not None:
        attn_scores = np.where(allowed, attn_scores, -np.inf)
    # Rows with no allowed key -> 0.  A diverged model's NaN/inf scores give NaN rows that reach
    # the loss, rather than an error from inside the model.
    attn_probs, _ = softmax_forward(attn_scores, check_values=False)                 # (B, H, T, S)

    # out = attn_probs v
    out = (attn_probs.reshape(B, KVH, n_rep, T, S) @ v[:, :, None]).reshape(B, H, T, head_dim)  # (B, H, T, hd)
    return out, AttentionCache(q, k, v, attn_probs, scale, n_rep)


def attention_backward(dout, cache):
    """Returns (dq, dk, dv).  dk, dv: (B, KVH, S, head_dim), each the sum over the n_rep query
    heads that shared that kv head (derivations/attention.md)."""
    q, k, v, attn_probs, scale, n_rep = cache
    if checking.get():
        require_shape("dout", dout, q.shape, "the output's shape (B, H, T, head_dim), as q", dtype=q.dtype)
    B, H, T, head_dim = q.shape
    KVH, S = k.shape[1], k.shape[2]
    dout_groups = dout.reshape(B, KVH, n_rep, T, head_dim)                           # (B, KVH, n_rep, T, hd)
    probs_groups = attn_probs.reshape(B, KVH, n_rep, T, S)                           # (B, KVH, n_rep, T, S)

    # the forward did out = attn_probs v: two gradients, v's summed over the group that shared it
    d_attn_probs = (dout_groups @ v[:, :, None].swapaxes(-1, -2)).reshape(B, H, T, S)  # (B, H, T, S)
    dv = (probs_groups.swapaxes(-1, -2) @ dout_groups).sum(axis=2)                   # (B, KVH, S, hd)

    # attn_probs = softmax(attn_scores); masked entries have attn_probs = 0, so get no gradient
    d_attn_scores = softmax_backward(d_attn_probs, attn_probs)                       # (B, H, T, S)

    # attn_scores = q k^T * scale
    d_scores_groups = d_attn_scores.reshape(B, KVH, n_rep, T, S)
    dq = (d_scores_groups @ k[:, :, None]).reshape(B, H, T, head_dim) * scale        # (B, H, T, hd)
    dk = (d_scores_groups.swapaxes(-1, -2) @ q.reshape(B, KVH, n_rep, T, head_dim)).sum(axis=2) * scale
    return dq, dk, dv                                                                # dk: (B, KVH, S, hd)


def attention_mask(T, S, causal, key_padding_mask=None, q_offset=0):
    """Which (query t, key s) pairs may attend: a bool array broadcastable to (B, H, T, S),
    or None when every pair may."""
    allowed = None
    if causal:
        query_pos = q_offset + np.arange(T)[:, None]   # (T, 1) absolute positions
        key_pos = np.arange(S)[None, :]                # (1, S)
        allowed = key_pos <= query_pos                 # (T, S)
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, :]   # (B, 1, 1, S)
        allowed = padding if allowed is None else allowed & padding
    return allowed


def check_attention_args(q, k, v, key_padding_mask, q_offset):
    """The forward's argument checks (shared with the kernel); returns B, H, T, head_dim, KVH, S."""
    require_float_array("q", q, ndim=4)
    require_float_array("k", k, ndim=4)
    require_float_array("v", v, ndim=4)
    require_same_dtype(q=q, k=k, v=v)
    B, H, T, head_dim = q.shape
    if k.shape[0] != B or k.shape[3] != head_dim:
        raise ValueError(f"k must have shape (B, KVH, S, head_dim) with B = {B} and head_dim = "
                         f"{head_dim} as in q {q.shape}, got {k.shape}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {k.shape}, got {v.shape}")
    KVH, S = k.shape[1], k.shape[2]
    if S == 0 or KVH == 0:
        raise ValueError(f"k must have at least one key/value head and one position, got shape {k.shape}")
    if H % KVH:
        raise ValueError(f"the number of query heads ({H}, q.shape[1]) must be a multiple of the "
                         f"number of key/value heads ({KVH}, k.shape[1])")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, np.ndarray) or key_padding_mask.dtype != np.bool_:
            raise TypeError(f"key_padding_mask must be a bool numpy array, got "
                            f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}")
        if key_padding_mask.shape != (B, S):
            raise ValueError(f"key_padding_mask must have shape (B, S) = {(B, S)}, "
                             f"got {key_padding_mask.shape}")
    if isinstance(q_offset, bool) or not isinstance(q_offset, (int, np.integer)):
        raise TypeError(f"q_offset must be an int, got {q_offset!r}")
    if q_offset < 0:
        raise ValueError(f"q_offset must be >= 0, got {q_offset}")
    return B, H, T, head_dim, KVH, S
