"""Attention kernels: matrix products in BLAS, masking + softmax fused in one numba pass per row.

Same signatures and results as npllama.ops.attention (derivations/attention.md):

    attn_probs = softmax(q k^T * scale + mask)      out = attn_probs v

Grouped-query attention without copying k and v: q (B, H, T, hd) is viewed as
(B, KVH, n_rep*T, hd) -- the n_rep query heads that share kv head g stacked into one tall matrix
-- so each kv head meets its whole group in one matrix product, and the products
attn_probs^T (.) and d_scores^T (.) sum over the group by themselves.

Query rows are processed in blocks of a few dozen.  A causal block only needs the keys up to its
last query, so the products skip most of the masked upper triangle (about 40% less work at
T = 256), and a block's scores stay in cache between the product, the softmax and the next product.
Two ways to keep what backward needs, chosen by the number of keys S:
  S <  FLASH_MIN_KEYS  each block's attention probabilities (about half of (B, H, T, S) when causal);
  S >= FLASH_MIN_KEYS  flash-style: only each row's log-sum-exp; backward recomputes a block's
                       probabilities from it.  Memory is O(B * H * T) plus one block of at most
                       FLASH_BLOCK_BYTES, linear in T instead of quadratic.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..ops._checks import require_kernel_cache, require_shape
from ..ops.attention import check_attention_args
from ._simd import exp_nonpositive, row_dot, row_max, row_sum

FLASH_MIN_KEYS = 512          # from this many keys on, never hold the full (B, H, T, S) tensor
FLASH_BLOCK_BYTES = 4 << 20   # the flash path's scores of one block: about this many bytes at most
BLOCK_ROWS = (16, 64)         # query rows per block: T // 4, clamped to this range (measured best)


class BlockedAttentionCache(NamedTuple):
    """What this kernel's attention_backward needs.  rows = n_rep * T: the query heads sharing a kv
    head stacked.  Exactly one of attn_probs and lse is set, by the number of keys S."""

    q_groups: np.ndarray          # (B, KVH, n_rep*T, head_dim) q rotated (q_rot, after RoPE), grouped
    k: np.ndarray                 # (B, KVH, S, head_dim) rotated: k_rot, after RoPE
    v: np.ndarray                 # (B, KVH, S, head_dim)
    scale: np.floating            # 1 / sqrt(head_dim)
    mask: tuple                   # (T, q_offset, causal, use_padding, key_padding_mask or (0, 0))
    shape: tuple                  # (B, H, T, head_dim) of q and of the output
    blocks: list                  # (first row, end row, keys needed) per block of query rows
    attn_probs: list | None       # S < FLASH_MIN_KEYS: one (B, KVH, rows, keys needed) per block
    lse: np.ndarray | None        # flash: (B, KVH, n_rep*T) log-sum-exp of each row's scores
    out_groups: np.ndarray | None  # flash: (B, KVH, n_rep*T, head_dim) the output, for the row term

    def intermediates(self) -> dict:
        """attn_probs (B, H, T, S) as this kernel computed them, assembled from its blocks (zeros
        where a causal block skipped keys); nothing on the flash path, which never holds them."""
        if self.attn_probs is None:
            return {}
        B, H, T, _ = self.shape
        KVH, S = self.k.shape[1], self.k.shape[2]
        probs = np.zeros((B, KVH, H // KVH * T, S), dtype=self.k.dtype)
        for (r0, r1, n_keys), block in zip(self.blocks, self.attn_probs):
            probs[:, :, r0:r1, :n_keys] = block
        return {"attn_probs": probs.reshape(B, H, T, S)}




def attention_forward(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    """Returns (out, BlockedAttentionCache); out: (B, H, T, head_dim).  See npllama.ops.attention."""
    B, H, T, head_dim, KVH, S = check_attention_args(q, k, v, key_padding_mask, q_offset)
    n_rep = H // KVH
    dtype = q.dtype
    scale = dtype.type(1.0 / math.sqrt(head_dim))
    q_groups = np.ascontiguousarray(q).reshape(B, KVH, n_rep * T, head_dim)   # view if q is contiguous
    use_padding = key_padding_mask is not None
    padding = key_padding_mask if use_padding else np.ones((0, 0), dtype=np.bool_)
    mask = (T, int(q_offset), bool(causal), use_padding, padding)
    keep_probs = S < FLASH_MIN_KEYS
    blocks = _query_blocks(B, KVH, n_rep, T, S, q_offset, causal, dtype.itemsize, keep_probs)

    out_groups = np.empty_like(q_groups)                       # (B, KVH, n_rep*T, hd)
    lse = None if keep_probs else np.empty(q_groups.shape[:3], dtype=dtype)  # (B, KVH, n_rep*T), flash
    kept = []
    for r0, r1, n_keys in blocks:
        attn_scores = q_groups[:, :, r0:r1] @ k[:, :, :n_keys].swapaxes(-1, -2)  # (B, KVH, rows, n_keys)
        block_lse = np.empty(attn_scores.shape[:3], dtype=dtype)
        _masked_softmax_rows(attn_scores, r0, scale, block_lse, *mask)           # in place -> attn_probs
        np.matmul(attn_scores, v[:, :, :n_keys], out=out_groups[:, :, r0:r1])
        if keep_probs:
            kept.append(attn_scores)
        else:
            lse[:, :, r0:r1] = block_lse
    # The flash backward reads the output (its softmax row term); it keeps a copy, not the array it
    # returns, which the caller owns: an in-place `out += x` must not change the gradients.
    # (B*H*T*hd numbers: small next to the products that made them.)
    cache = BlockedAttentionCache(q_groups, k, v, scale, mask, (B, H, T, head_dim), blocks,
                                  kept if keep_probs else None, lse, None if keep_probs else out_groups.copy())
    return out_groups.reshape(B, H, T, head_dim), cache


def attention_backward(dout, cache):
    """Returns (dq, dk, dv); dk, dv summed over the n_rep query heads of each kv head."""
    require_kernel_cache("attention", cache, BlockedAttentionCache)
    q_groups, k, v, scale, mask = cache.q_groups, cache.k, cache.v, cache.scale, cache.mask
    B, H, T, head_dim = cache.shape
    require_shape("dout", dout, (B, H, T, head_dim), "the shape of out", dtype=q_groups.dtype)
    dout_groups = np.ascontiguousarray(dout, dtype=q_groups.dtype).reshape(q_groups.shape)
    keep_probs = cache.attn_probs is not None
    if not keep_probs:
        # sum_s attn_probs * d_attn_probs = sum_d out * dout: the softmax backward's row term
        row_term = np.einsum("bgrd,bgrd->bgr", dout_groups, cache.out_groups)  # (B, KVH, n_rep*T)

    dq_groups = np.empty_like(q_groups)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for i, (r0, r1, n_keys) in enumerate(cache.blocks):
        q_block, dout_block = q_groups[:, :, r0:r1], dout_groups[:, :, r0:r1]
        k_seen, v_seen = k[:, :, :n_keys], v[:, :, :n_keys]
        if keep_probs:
            attn_probs = cache.attn_probs[i]                            # (B, KVH, rows, n_keys)
        else:
            attn_probs = q_block @ k_seen.swapaxes(-1, -2)
            _recompute_probs_rows(attn_probs, r0, scale, np.ascontiguousarray(cache.lse[:, :, r0:r1]),
                                  *mask)
        dv[:, :, :n_keys] += attn_probs.swapaxes(-1, -2) @ dout_block
        d_scores = dout_block @ v_seen.swapaxes(-1, -2)                   # d attn_probs, then in place:
        if keep_probs:                                                     # d (q k^T), scale folded in
            _softmax_backward_rows(attn_probs, d_scores, scale)
        else:
            _softmax_backward_rows_given(attn_probs, d_scores,
                                         np.ascontiguousarray(row_term[:, :, r0:r1]), scale)
        np.matmul(d_scores, k_seen, out=dq_groups[:, :, r0:r1])
        dk[:, :, :n_keys] += d_scores.swapaxes(-1, -2) @ q_block
    return dq_groups.reshape(B, H, T, head_dim), dk, dv


def _query_blocks(B, KVH, n_rep, T, S, q_offset, causal, itemsize, keep_probs):
    """(first row, end row, keys needed) of each block of rows of the (n_rep*T)-row groups.

    Blocks never straddle two query heads, so a causal block needs only the keys up to its
    last query's position."""
    low, high = BLOCK_ROWS
    rows = min(high, max(low, T // 4))
    if not keep_probs:  # the flash path also bounds one block's scores in bytes
        rows = min(rows, max(1, FLASH_BLOCK_BYTES // max(1, B * KVH * S * itemsize)))
    blocks = []
    for head_start in range(0, n_rep * T, max(T, 1)):   # T = 0 (no queries): no blocks
        for t0 in range(0, T, rows):
            t1 = min(T, t0 + rows)
            n_keys = min(S, q_offset + t1) if causal else S
            blocks.append((head_start + t0, head_start + t1, max(n_keys, 1)))
    return blocks


# ----- the row kernels -------------------------------------------------------------------------
# Row r of a (B, KVH, rows, n_keys) block is query t = (row_start + r) % T of its head: it may see
# key s when (not causal or s <= q_offset + t) and (not use_padding or padding[b, s]).

@njit(cache=True, error_model="numpy", nogil=True)
def _n_visible(t, n_keys, q_offset, causal):
    """Keys beyond this count are causally masked for query t (all keys if not causal)."""
    if not causal:
        return n_keys
    return max(0, min(n_keys, q_offset + t + 1))


@njit(cache=True, error_model="numpy", nogil=True)
def _masked_softmax_rows(scores, row_start, scale, lse, T, q_offset, causal, use_padding, padding):
    """In place: scores -> softmax(scores * scale, masked); lse[b, g, r] = log-sum-exp of the row
    (-inf for a row with no visible key, whose probabilities are all 0)."""
    B, KVH, R, n_keys = scores.shape
    neg_inf, one = scores.dtype.type(-np.inf), scores.dtype.type(1)
    for bg in prange(B * KVH):
        b, g = bg // KVH, bg % KVH
        for r in range(R):
            row = scores[b, g, r]
            n = _n_visible((row_start + r) % T, n_keys, q_offset, causal)
            if use_padding:                            # a loop of its own: the others vectorise
                for s in range(n):
                    if not padding[b, s]:
                        row[s] = neg_inf
            row[n:] = 0
            # max(x * scale) = max(x) * scale as scale > 0: the scale goes into exp's argument
            row_max_value = row_max(row[:n]) if n > 0 else neg_inf
            if row_max_value == neg_inf:               # nothing visible: a zero row
                row[:n] = 0
                lse[b, g, r] = neg_inf
                continue
            for s in range(n):
                row[s] = exp_nonpositive((row[s] - row_max_value) * scale)
            total = row_sum(row[:n])
            inv_total = one / total
            for s in range(n):
                row[s] = row[s] * inv_total
            lse[b, g, r] = row_max_value * scale + np.log(total)


@njit(cache=True, error_model="numpy", nogil=True)
def _recompute_probs_rows(scores, row_start, scale, lse, T, q_offset, causal, use_padding, padding):
    """In place: scores -> attn_probs = exp(scores * scale - lse), masked entries 0."""
    B, KVH, R, n_keys = scores.shape
    zero = scores.dtype.type(0)
    for bg in prange(B * KVH):
        b, g = bg // KVH, bg % KVH
        for r in range(R):
            row = scores[b, g, r]
            n = _n_visible((row_start + r) % T, n_keys, q_offset, causal)
            row_lse = lse[b, g, r]
            if row_lse == -np.inf:
                n = 0
            for s in range(n):
                visible = not use_padding or padding[b, s]
                row[s] = exp_nonpositive(row[s] * scale - row_lse) if visible else zero
            row[n:] = 0


@njit(cache=True, error_model="numpy", nogil=True)
def _softmax_backward_rows(attn_probs, d_attn_probs, scale):
    """In place: d_attn_probs -> d_scores = attn_probs * (d_attn_probs - row_term) * scale,
    row_term = sum(d_attn_probs * attn_probs) over the row."""
    B, KVH, R, n_keys = attn_probs.shape
    for bg in prange(B * KVH):
        b, g = bg // KVH, bg % KVH
        for r in range(R):
            p, dp = attn_probs[b, g, r], d_attn_probs[b, g, r]
            row_term = row_dot(dp, p)
            for s in range(n_keys):
                dp[s] = p[s] * (dp[s] - row_term) * scale


@njit(cache=True, error_model="numpy", nogil=True)
def _softmax_backward_rows_given(attn_probs, d_attn_probs, row_term, scale):
    """As _softmax_backward_rows, with the row term sum(d_attn_probs * attn_probs) given."""
    B, KVH, R, n_keys = attn_probs.shape
    for bg in prange(B * KVH):
        b, g = bg // KVH, bg % KVH
        for r in range(R):
            p, dp, c = attn_probs[b, g, r], d_attn_probs[b, g, r], row_term[b, g, r]
            for s in range(n_keys):
                dp[s] = p[s] * (dp[s] - c) * scale
