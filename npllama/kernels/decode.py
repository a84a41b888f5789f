"""FastDecoder: token-by-token generation with weights laid out once and a preallocated KV cache.

    decoder = FastDecoder(model, batch_size=1)
    logits = decoder.step(prompt_tokens)          # prefill: (B, T) -> (B, T, vocab)
    logits = decoder.step(next_tokens[:, None])   # then one token per call

`step` returns exactly what `model.forward_step` returns for the same calls (tested equal), but
a decode step is mostly reading weights, so the layout is chosen for that:
  - q, k and v projections are one matrix (H*hd + 2*KVH*hd, D), gate and up one (2F, D):
    one matrix-vector product each instead of three and two;
  - a batch-1 single-token step multiplies by 1-D vectors (BLAS gemv, which streams the
    matrix once) rather than (1, D) matrices;
  - RoPE, the KV-cache write and attention over the cached positions are one numba call per
    layer; keys are cached transposed (hd, positions) so that the scores of all positions are
    one vectorised multiply-add per head dimension.
The decoder copies the projection weights when it is made: after the model's parameters change
(training), make a new one.
"""
import math

import numpy as np
from numba import njit

from ..ops._checks import require_int_array
from ._simd import exp_nonpositive, row_max, row_sum
from .rmsnorm import _rmsnorm_forward_rows
from .rope import _rotate
from .swiglu import _silu_mul_halves


class FastDecoder:
    """Incremental decoding of `model` for `batch_size` sequences of up to `max_length` positions."""

    def __init__(self, model, batch_size: int = 1, max_length: int | None = None):
        cfg = model.config
        max_length = cfg.max_position_embeddings if max_length is None else max_length
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_length > cfg.max_position_embeddings:
            raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings "
                             f"({cfg.max_position_embeddings})")
        self.model, self.config, self.dtype = model, cfg, np.dtype(model.dtype)
        self.batch_size, self.max_length, self.length = int(batch_size), int(max_length), 0
        p = model.params
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            name = f"model.layers.{i}."
            self.layers.append(dict(
                input_norm=p[name + "input_layernorm.weight"],
                w_qkv=np.concatenate([p[name + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
                w_o=np.ascontiguousarray(p[name + "self_attn.o_proj.weight"]),
                post_norm=p[name + "post_attention_layernorm.weight"],
                w_gate_up=np.concatenate([p[name + "mlp.gate_proj.weight"], p[name + "mlp.up_proj.weight"]]),
                w_down=np.ascontiguousarray(p[name + "mlp.down_proj.weight"]),
            ))
        self.embed = p["model.embed_tokens.weight"]
        self.final_norm = p["model.norm.weight"]
        self.lm_head = model._lm_head_weight()
        self.eps = self.dtype.type(cfg.rms_norm_eps)
        self.cos, self.sin = model.rope_tables(self.max_length)
        L, B, KVH, hd = cfg.num_hidden_layers, self.batch_size, cfg.num_key_value_heads, cfg.head_dim
        self.k_cache_t = np.zeros((L, B, KVH, hd, self.max_length), dtype=self.dtype)  # keys transposed
        self.v_cache = np.zeros((L, B, KVH, self.max_length, hd), dtype=self.dtype)

    def reset(self) -> None:
        """Forget every position: the next step starts a new sequence."""
        self.length = 0

    def step(self, tokens) -> np.ndarray:
        """Process tokens (B, T_new) after the `length` positions already seen; logits (B, T_new, V)."""
        tokens = np.asarray(tokens)
        require_int_array("tokens", tokens)
        if tokens.ndim != 2 or tokens.shape[0] != self.batch_size or tokens.shape[1] == 0:
            raise ValueError(f"tokens must have shape (batch_size={self.batch_size}, T_new >= 1), "
                             f"got {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"tokens must be ids in [0, {self.config.vocab_size})")
        B, T_new = tokens.shape
        start, end = self.length, self.length + T_new
        if end > self.max_length:
            raise ValueError(f"the decoder holds at most {self.max_length} positions; "
                             f"{start} used, {T_new} more requested")
        cfg = self.config
        H, KVH, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos, sin = self.cos[start:end], self.sin[start:end]
        scale = self.dtype.type(1.0 / math.sqrt(hd))

        x = self.embed[tokens.reshape(-1)]                                 # (N, D), N = B * T_new
        attn = np.empty((B * T_new, H * hd), dtype=self.dtype)
        for i, layer in enumerate(self.layers):
            xn = self._rmsnorm(x, layer["input_norm"])
            qkv = _project(xn, layer["w_qkv"])                             # (N, (H + 2 KVH) hd)
            _rope_cache_attend(qkv.reshape(B, T_new, -1), cos, sin, self.k_cache_t[i],
                               self.v_cache[i], start, H, KVH, scale, attn.reshape(B, T_new, -1))
            h = x + _project(attn, layer["w_o"])                           # (N, D)
            hn = self._rmsnorm(h, layer["post_norm"])
            gate_up = _project(hn, layer["w_gate_up"])                    # (N, 2F) = [gate | up]
            act = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=gate_up.dtype)
            _silu_mul_halves(gate_up, act)                                 # (N, F), the MLP kernel's
            x = h + _project(act, layer["w_down"])
        self.length = end
        logits = _project(self._rmsnorm(x, self.final_norm), self.lm_head)  # (N, V)
        return logits.reshape(B, T_new, -1)

    def _rmsnorm(self, x, weight):
        y = np.empty_like(x)
        _rmsnorm_forward_rows(x, weight, self.eps, y, np.empty(x.shape[0], dtype=x.dtype))
        return y


def _project(x, weight):
    """x W^T for x (N, in); a single row goes through BLAS gemv (W @ x), which reads W once."""
    if x.shape[0] == 1:
        return (weight @ x[0])[None]
    return x @ weight.T


@njit(cache=True, error_model="numpy", nogil=True)
def _rope_cache_attend(qkv, cos, sin, k_cache_t, v_cache, start, H, KVH, scale, out):
    """For each new position t (absolute start + t) of each sequence b:
    rotate q and k, store k and v in the cache, attend causally over positions [0, start + t].

    qkv: (B, T_new, (H + 2 KVH) hd) = [q heads | k heads | v heads];  out: (B, T_new, H hd)
    k_cache_t: (B, KVH, hd, max_len);  v_cache: (B, KVH, max_len, hd)"""
    B, T_new = qkv.shape[0], qkv.shape[1]
    hd = k_cache_t.shape[2]
    n_rep = H // KVH
    k_base, v_base = H * hd, (H + KVH) * hd
    q_rot = np.empty(hd, dtype=qkv.dtype)
    scores = np.empty(k_cache_t.shape[3], dtype=qkv.dtype)
    one = qkv.dtype.type(1)
    for b in range(B):
        for t in range(T_new):       # first every new position's k and v into the cache
            pos = start + t
            for g in range(KVH):
                _rotate(qkv[b, t, k_base + g * hd:k_base + (g + 1) * hd], cos[t], sin[t], k_cache_t[b, g, :, pos])
                for i in range(hd):
                    v_cache[b, g, pos, i] = qkv[b, t, v_base + g * hd + i]
        for t in range(T_new):
            n_keys = start + t + 1   # causal: positions 0 .. start + t
            for h in range(H):
                g = h // n_rep
                _rotate(qkv[b, t, h * hd:(h + 1) * hd], cos[t], sin[t], q_rot)
                row = scores[:n_keys]
                row[:] = 0
                for d in range(hd):                    # scores = q_rot . k[s] for every s at once
                    q_d = q_rot[d] * scale
                    keys_d = k_cache_t[b, g, d]
                    for s in range(n_keys):
                        row[s] += q_d * keys_d[s]
                m = row_max(row)
                for s in range(n_keys):
                    row[s] = exp_nonpositive(row[s] - m)
                inv_total = one / row_sum(row)
                o = out[b, t, h * hd:(h + 1) * hd]
                o[:] = 0
                for s in range(n_keys):
                    p = row[s] * inv_total
                    values = v_cache[b, g, s]
                    for i in range(hd):
                        o[i] += p * values[i]
