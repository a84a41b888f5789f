"""Llama: the whole model as a readable sequence of op calls, and the same sequence reversed for backward.

    x = embed(tokens)                                  # (B, T, D)
    for each layer:
        h   = x + attention(rmsnorm(x))                # pre-norm residual blocks (Meta's model.py)
        x   = h + swiglu(rmsnorm(h))
    logits = rmsnorm(x) @ lm_head^T                    # (B, T, V)

Parameters live in `model.params` under Hugging Face state-dict names and layouts, so anyone
comparing with transformers finds every tensor by the same name.  Which implementation runs each
op (NumPy reference or Numba kernel) is chosen by npllama.backend.  Derivation of the block:
derivations/transformer_block.md.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .config import LlamaConfig
from .ops import attention as reference_attention
from .ops import swiglu as reference_swiglu
from .ops.rope import rope_cos_sin
from .ops.softmax import softmax_forward
from .trace import active_trace

DTYPES = (np.float32, np.float64)


class Llama:
    """A LLaMA decoder: random init with `Llama(config, seed, dtype)`, or `Llama.from_pretrained(path)`."""

    def __init__(self, config: LlamaConfig, seed: int = 0, dtype=np.float32, *, params=None):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = _check_dtype(dtype)
        self.params = init_params(config, seed, self.dtype) if params is None else params
        self._rope_tables: tuple[np.ndarray, np.ndarray] | None = None
        # LoRA adapters (npllama.lora.attach_lora), or None.  While attached, every base weight is
        # frozen: the projections run through the adapters' hook and backward returns the adapters'
        # gradients only, under PEFT's names.
        self.lora = None

    # ----- Hugging Face folders -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> "Llama":
        """Load a Hugging Face folder (config.json + model.safetensors, or a sharded index)."""
        from .io.hf import load_hf_folder

        config, params = load_hf_folder(path, dtype=_check_dtype(dtype))
        return cls(config, dtype=dtype, params=params)

    def save_pretrained(self, path, dtype=None, extra_files=None) -> None:
        """Write a folder that `transformers.LlamaForCausalLM.from_pretrained` loads.

        extra_files: {file name: bytes} written into the folder too (e.g. tokenizer.model).
        """
        from .io.hf import save_hf_folder

        save_hf_folder(path, self.config, self.params, dtype=dtype, extra_files=extra_files)

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # ----- forward --------------------------------------------------------------------------
    def forward(self, tokens, attention_mask=None) -> np.ndarray:
        """tokens int (B, T) -> logits (B, T, vocab_size)."""
        logits, _ = self.forward_with_caches(tokens, attention_mask)
        return logits

    def forward_with_caches(self, tokens, attention_mask=None, causal: bool = True):
        """Logits and everything `backward` needs.  attention_mask: optional (B, T), 1 = real token."""
        hidden, caches = self.hidden_forward(tokens, attention_mask, causal)
        F = backend.ops()
        logits, caches["lm_head"] = F.linear_forward(hidden, self._lm_head_weight())  # (B, T, V)
        caches["logits_shape"] = logits.shape
        _record("lm_head.out", logits)
        return logits, caches

    def hidden_forward(self, tokens, attention_mask=None, causal: bool = True):
        """The decoder stack without the LM head: final-normed hidden states (B, T, D) and caches.

        Heads other than the LM head (classification, masked-LM) start from here; causal=False
        gives the bidirectional "encoder" of the article's §3.1.1 (the same block, no causal mask).
        """
        cfg, p, F = self.config, self.params, backend.ops()
        tokens = self._check_tokens(tokens)
        key_padding_mask = _check_attention_mask(attention_mask, tokens.shape)
        cos, sin = self.rope_tables(tokens.shape[1])
        caches = {}

        x, caches["embed"] = F.embedding_forward(tokens, p["model.embed_tokens.weight"])  # (B, T, D)
        _record("model.embed_tokens.out", x)
        caches["layers"] = []
        for i in range(cfg.num_hidden_layers):
            x, layer_cache = block_forward(F, x, _layer_params(p, i, self.lora), cos, sin, cfg, causal,
                                           key_padding_mask)
            caches["layers"].append(layer_cache)
        hidden, caches["norm"] = F.rmsnorm_forward(x, p["model.norm.weight"], cfg.rms_norm_eps)
        _record("model.norm.out", hidden)
        return hidden, caches

    # ----- backward -------------------------------------------------------------------------
    def backward(self, dlogits, caches) -> dict[str, np.ndarray]:
        """Gradients of every parameter, given dL/dlogits (B, T, V) and forward_with_caches' caches.

        With LoRA adapters attached: the gradients of the adapter parameters only (PEFT's names).
        """
        F = backend.ops()
        expected = caches["logits_shape"]
        if np.shape(dlogits) != expected:
            raise ValueError(f"dlogits has shape {np.shape(dlogits)}, expected the logits' shape {expected}")
        _record("d:lm_head.out", dlogits)
        if self.lora is not None:  # the head is frozen: only dL/dhidden is needed, no dL/dW
            return self.hidden_backward(dlogits @ self._lm_head_weight(), caches)
        dhidden, d_lm_head = F.linear_backward(dlogits, caches["lm_head"])
        grads = self.hidden_backward(dhidden, caches)
        if self.config.tie_word_embeddings:
            grads["model.embed_tokens.weight"] += d_lm_head  # one matrix, used twice: gradients add
        else:
            grads["lm_head.weight"] = d_lm_head
        grads = self._ordered(grads)
        t = active_trace()
        if t is not None:
            for name, g in grads.items():
                t.record("d:" + name, g)
        return grads

    def hidden_backward(self, dhidden, caches) -> dict[str, np.ndarray]:
        """Gradients of the decoder stack's parameters, given dL/d(final-normed hidden states)."""
        cfg, F = self.config, backend.ops()
        grads = {}
        _record("d:model.norm.out", dhidden)
        dx, grads["model.norm.weight"] = F.rmsnorm_backward(dhidden, caches["norm"])
        for i in reversed(range(cfg.num_hidden_layers)):
            dx, layer_grads = block_backward(F, dx, caches["layers"][i])
            grads.update({f"model.layers.{i}.{name}": g for name, g in layer_grads.items()})
        _record("d:model.embed_tokens.out", dx)
        if self.lora is not None:  # frozen base: keep the adapters' gradients, skip the embedding's
            return self.lora.adapter_grads(grads)
        grads["model.embed_tokens.weight"] = F.embedding_backward(dx, caches["embed"])
        return grads

    def loss_and_grads(self, tokens, targets, attention_mask=None, ignore_index: int = -100,
                       causal: bool = True):
        """Mean next-token cross-entropy over targets != ignore_index, and its gradient for every param.

        targets (B, T) are already shifted: targets[b, t] is the token that should follow tokens[b, t].
        causal=False: the bidirectional stack, whose targets are the masked-LM ones (objectives.py).
        """
        F = backend.ops()
        logits, caches = self.forward_with_caches(tokens, attention_mask, causal)
        targets = _check_targets(targets, logits.shape[:2])
        loss, ce_cache = F.cross_entropy_forward(logits, targets, ignore_index)
        _record("loss", loss)
        dlogits = F.cross_entropy_backward(np.ones((), dtype=logits.dtype), ce_cache)
        return float(loss), self.backward(dlogits, caches)

    def loss(self, tokens, targets, attention_mask=None, ignore_index: int = -100, causal: bool = True) -> float:
        """The same loss as loss_and_grads, without the backward pass."""
        logits, _ = self.forward_with_caches(tokens, attention_mask, causal)
        targets = _check_targets(targets, logits.shape[:2])
        loss, _ = backend.ops().cross_entropy_forward(logits, targets, ignore_index)
        return float(loss)

    # ----- incremental decoding with a KV cache -------------------------------------------
    def new_kv_cache(self, batch_size: int, max_length: int | None = None) -> "KVCache":
        return KVCache(self.config, batch_size, max_length or self.config.max_position_embeddings,
                       self.dtype)

    def forward_step(self, tokens, kv_cache: "KVCache") -> np.ndarray:
        """Process new tokens (B, T_new) after the kv_cache.length tokens already seen.

        Prefill is one call with the whole prompt, decoding one call per token (T_new = 1).  The
        logits equal those of a full forward over everything seen so far, at the new positions.
        """
        cfg, p, F = self.config, self.params, backend.ops()
        tokens = self._check_tokens(tokens, offset=kv_cache.length)
        B, T_new = tokens.shape
        if B != kv_cache.batch_size:
            raise ValueError(f"tokens has batch size {B}, the KV cache was made for {kv_cache.batch_size}")
        if kv_cache.length + T_new > kv_cache.max_length:
            raise ValueError(f"KV cache holds at most {kv_cache.max_length} positions; "
                             f"{kv_cache.length} used, {T_new} more requested")
        start, end = kv_cache.length, kv_cache.length + T_new
        cos, sin = self.rope_tables(end)
        cos, sin = cos[start:end], sin[start:end]
        x, _ = F.embedding_forward(tokens, p["model.embed_tokens.weight"])
        for i in range(cfg.num_hidden_layers):
            kv_slot = (kv_cache.k[i], kv_cache.v[i], start)
            x, _ = block_forward(F, x, _layer_params(p, i, self.lora), cos, sin, cfg, True, None, kv_slot)
        kv_cache.length = end
        hidden, _ = F.rmsnorm_forward(x, p["model.norm.weight"], cfg.rms_norm_eps)
        logits, _ = F.linear_forward(hidden, self._lm_head_weight())
        return logits

    def generate(self, prompt, max_new_tokens: int, **sampling) -> list[int]:
        """prompt ids -> prompt + generated ids; options as npllama.generate.generate
        (temperature, top_k, top_p, seed, eos_id, on_token)."""
        from .generate import generate

        return generate(self, prompt, max_new_tokens, **sampling)

    # ----- helpers --------------------------------------------------------------------------
    def rope_tables(self, length: int):
        """cos, sin (length, head_dim) in the model's dtype: computed once, and grown (doubling, up to
        max_position_embeddings) only when a longer sequence comes -- a 128k-context config does not
        pay for 128k rows to run 100 tokens."""
        cfg = self.config
        have = 0 if self._rope_tables is None else len(self._rope_tables[0])
        if have < length:
            size = min(cfg.max_position_embeddings, max(length, 2 * have, 256))
            self._rope_tables = rope_cos_sin(np.arange(size), cfg.head_dim, cfg.rope_theta, cfg.rope_scaling,
                                             dtype=self.dtype)
        cos, sin = self._rope_tables
        return cos[:length], sin[:length]

    def _lm_head_weight(self) -> np.ndarray:
        if self.config.tie_word_embeddings:
            return self.params["model.embed_tokens.weight"]
        return self.params["lm_head.weight"]

    def _ordered(self, grads):
        return {name: grads[name] for name in self.params}

    def _check_tokens(self, tokens, offset: int = 0) -> np.ndarray:
        if not isinstance(tokens, np.ndarray):
            tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tokens.shape}"
                             + ("; use tokens[None] for a single sequence" if tokens.ndim == 1 else ""))
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must not be empty, got shape {tokens.shape}")
        limit = self.config.max_position_embeddings
        if offset + tokens.shape[1] > limit:
            raise ValueError(f"sequence of {offset + tokens.shape[1]} positions is longer than "
                             f"max_position_embeddings ({limit})")
        vocab = self.config.vocab_size
        if tokens.min() < 0 or tokens.max() >= vocab:
            bad = tokens[(tokens < 0) | (tokens >= vocab)].flat[0]
            raise ValueError(f"tokens contains id {bad}, outside the vocabulary [0, {vocab})")
        return tokens


class KVCache:
    """Keys and values of every layer, preallocated for max_length positions.

    k, v: (num_layers, batch, num_key_value_heads, max_length, head_dim); positions [0, length) are filled.
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_length: int, dtype=np.float32):
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings "
                             f"({config.max_position_embeddings})")
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_length,
                 config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.batch_size, self.max_length, self.length = int(batch_size), int(max_length), 0

    def reset(self) -> None:
        self.length = 0


# ----- one decoder block -------------------------------------------------------------------------
def block_forward(F, x, lp, cos, sin, cfg, causal, key_padding_mask, kv_slot=None):
    """h = x + attention(rmsnorm(x));  out = h + swiglu(rmsnorm(h)).   x: (B, T, D)"""
    c = {}
    xn, c["input_layernorm"] = F.rmsnorm_forward(x, lp["input_layernorm.weight"], cfg.rms_norm_eps)
    _record(lp.prefix + "input_layernorm.out", xn)
    attn_out, c["self_attn"] = attention_layer_forward(F, xn, lp, cos, sin, cfg, causal, key_padding_mask,
                                                    kv_slot)
    h = x + attn_out
    hn, c["post_attention_layernorm"] = F.rmsnorm_forward(h, lp["post_attention_layernorm.weight"],
                                                           cfg.rms_norm_eps)
    if lp.lora is None:
        mlp_out, c["mlp"] = F.swiglu_forward(hn, lp["mlp.gate_proj.weight"], lp["mlp.up_proj.weight"],
                                             lp["mlp.down_proj.weight"])
    else:  # the same SwiGLU, its three projections through the LoRA hook
        mlp_out, c["mlp"] = swiglu_lora_forward(F, hn, lp)
    out = h + mlp_out
    t = active_trace()
    if t is not None:
        t.record_many(lp.prefix, **{"residual": h, "post_attention_layernorm.out": hn})
        if lp.lora is None:
            _record_mlp(t, lp.prefix + "mlp.", hn, lp)
            c["traced_mlp_input"] = (hn, lp)  # so a traced backward can name the SwiGLU's gradients
        t.record_many(lp.prefix, **{"mlp.out": mlp_out, "out": out})
    c["prefix"], c["lora"] = lp.prefix, lp.lora
    return out, c


def block_backward(F, dout, c):
    """The block's forward read backwards; the residual connections pass dout through unchanged."""
    g = {}
    prefix = c["prefix"]
    _record("d:" + prefix + "out", dout)
    if c["lora"] is None:
        dhn, g["mlp.gate_proj.weight"], g["mlp.up_proj.weight"], g["mlp.down_proj.weight"] = \
            F.swiglu_backward(dout, c["mlp"])
    else:
        dhn = swiglu_lora_backward(F, dout, c["mlp"], c["lora"], g)
    t = active_trace()
    if t is not None:
        if "traced_mlp_input" in c:
            _record_mlp_grads(t, prefix + "mlp.", *c["traced_mlp_input"], dout)
    dh_norm, g["post_attention_layernorm.weight"] = F.rmsnorm_backward(dhn, c["post_attention_layernorm"])
    dh = dout + dh_norm
    _record("d:" + prefix + "post_attention_layernorm.out", dhn)
    _record("d:" + prefix + "residual", dh)
    dxn, attn_grads = attention_layer_backward(F, dh, c["self_attn"], prefix + "self_attn.")
    g.update(attn_grads)
    _record("d:" + prefix + "input_layernorm.out", dxn)
    dx_norm, g["input_layernorm.weight"] = F.rmsnorm_backward(dxn, c["input_layernorm"])
    dx = dh + dx_norm
    return dx, g


def attention_layer_forward(F, xn, lp, cos, sin, cfg, causal, key_padding_mask, kv_slot=None):
    """Project to q, k, v, rotate q and k, attend, merge heads, project out.   xn: (B, T, D)

    kv_slot = (k_store, v_store, start) when decoding: this step's keys and values are written at
    positions [start, start+T) of the layer's preallocated KV cache, and attention runs over all
    positions seen so far, the queries sitting at absolute positions start.. (q_offset).
    """
    c = {"heads": (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim), "lora": lp.lora}
    q, c["q_proj"] = project(F, xn, lp, "self_attn.q_proj")               # (B, T, H*hd)
    k, c["k_proj"] = project(F, xn, lp, "self_attn.k_proj")               # (B, T, KVH*hd)
    v, c["v_proj"] = project(F, xn, lp, "self_attn.v_proj")               # (B, T, KVH*hd)
    q = _split_heads(q, cfg.num_attention_heads, cfg.head_dim)            # (B, H, T, hd)
    k = _split_heads(k, cfg.num_key_value_heads, cfg.head_dim)            # (B, KVH, T, hd)
    v = _split_heads(v, cfg.num_key_value_heads, cfg.head_dim)
    q_rot, c["q_rope"] = F.rope_forward(q, cos, sin)
    k_rot, c["k_rope"] = F.rope_forward(k, cos, sin)
    q_offset = 0
    if kv_slot is not None:
        k_store, v_store, q_offset = kv_slot
        end = q_offset + k_rot.shape[2]
        k_store[:, :, q_offset:end] = k_rot
        v_store[:, :, q_offset:end] = v
        k_rot, v = k_store[:, :, :end], v_store[:, :, :end]                # (B, KVH, S, hd)
    attn, c["attention"] = F.attention_forward(q_rot, k_rot, v, causal=causal,
                                               key_padding_mask=key_padding_mask,
                                               q_offset=q_offset)          # (B, H, T, hd)
    attn_out = _merge_heads(attn)                                          # (B, T, H*hd)
    out, c["o_proj"] = project(F, attn_out, lp, "self_attn.o_proj")       # (B, T, D)
    t = active_trace()
    if t is not None:
        prefix = lp.prefix + "self_attn."
        t.record_many(prefix, q=q, k=k, v=v, q_rot=q_rot, k_rot=k_rot)
        _record_attention(t, prefix, q_rot, k_rot, v, causal, key_padding_mask, q_offset)
        c["traced_inputs"] = (q_rot, k_rot, v, causal, key_padding_mask, q_offset)
        t.record_many(prefix, attn_out=attn_out, out=out)
    return out, c


def attention_layer_backward(F, dout, c, prefix=""):
    """attention_layer_forward read backwards.   dout: (B, T, D) -> d xn (B, T, D) and weight grads"""
    g = {}
    _record("d:" + prefix + "out", dout)
    d_merged = project_backward(F, dout, c["o_proj"], c["lora"], g, "self_attn.o_proj")
    _record("d:" + prefix + "attn_out", d_merged)
    n_heads, n_kv_heads, head_dim = c["heads"]
    d_attn = _split_heads(d_merged, n_heads, head_dim)                     # (B, H, T, hd)
    dq_rot, dk_rot, dv = F.attention_backward(d_attn, c["attention"])     # dk, dv summed per group
    t = active_trace()
    if t is not None:
        if "traced_inputs" in c:  # in the order attention_backward computes them
            _record_attention_grads(t, prefix, c["traced_inputs"], d_attn)
        t.record_many("d:" + prefix, q_rot=dq_rot, k_rot=dk_rot, v=dv)
    dq = _merge_heads(F.rope_backward(dq_rot, c["q_rope"]))                # (B, T, H*hd)
    dk = _merge_heads(F.rope_backward(dk_rot, c["k_rope"]))                # (B, T, KVH*hd)
    dv = _merge_heads(dv)
    if t is not None:
        t.record_many("d:" + prefix, q=_split_heads(dq, *c["heads"][::2]),
                      k=_split_heads(dk, *c["heads"][1:]))
    dxn_q = project_backward(F, dq, c["q_proj"], c["lora"], g, "self_attn.q_proj")
    dxn_k = project_backward(F, dk, c["k_proj"], c["lora"], g, "self_attn.k_proj")
    dxn_v = project_backward(F, dv, c["v_proj"], c["lora"], g, "self_attn.v_proj")
    return dxn_q + dxn_k + dxn_v, g


# ----- projections, and the hook LoRA adapters plug into --------------------------------------------
def project(F, x, lp, name):
    """x W^T for the projection `name` (e.g. "self_attn.q_proj") of layer lp.   Returns (y, cache).

    With LoRA adapters attached, the adapters' hook computes it instead: x W^T with W frozen, plus
    the low-rank term where `name` is a target (npllama.ops.lora).
    """
    if lp.lora is None:
        return F.linear_forward(x, lp[name + ".weight"])
    return lp.lora.project_forward(x, lp[name + ".weight"], lp.prefix, name)


def project_backward(F, dy, cache, lora, g, name):
    """dL/dx of `project`; the weight's gradient goes into g[name + ".weight"] -- or, with LoRA
    adapters attached, the adapter's gradients go into g and the frozen weight gets none."""
    if lora is None:
        dx, g[name + ".weight"] = F.linear_backward(dy, cache)
        return dx
    dx, adapter_grads = lora.project_backward(dy, cache)
    g.update(adapter_grads)
    return dx


def swiglu_lora_forward(F, hn, lp):
    """swiglu_forward written out, so each projection can go through the LoRA hook:
    down(silu(gate(hn)) * up(hn)).   hn: (B, T, D)"""
    c = {}
    gate, c["gate_proj"] = project(F, hn, lp, "mlp.gate_proj")   # (B, T, F)
    up, c["up_proj"] = project(F, hn, lp, "mlp.up_proj")         # (B, T, F)
    act, c["act"] = F.swiglu_act_forward(gate, up)               # (B, T, F)
    out, c["down_proj"] = project(F, act, lp, "mlp.down_proj")   # (B, T, D)
    t = active_trace()
    if t is not None:
        t.record_many(lp.prefix + "mlp.", gate=gate, up=up, act=act)
    return out, c


def swiglu_lora_backward(F, dout, c, lora, g):
    """swiglu_lora_forward read backwards; the adapters' gradients go into g.  Returns d hn."""
    dact = project_backward(F, dout, c["down_proj"], lora, g, "mlp.down_proj")
    dgate, dup = F.swiglu_act_backward(dact, c["act"])
    dhn_gate = project_backward(F, dgate, c["gate_proj"], lora, g, "mlp.gate_proj")
    dhn_up = project_backward(F, dup, c["up_proj"], lora, g, "mlp.up_proj")
    return dhn_gate + dhn_up


def _record(name, value):
    t = active_trace()
    if t is not None:
        t.record(name, value)


def _record_attention(t, prefix, q_rot, k_rot, v, causal, key_padding_mask, q_offset):
    """attn_scores and attn_probs, recomputed with the reference op only when a trace asks for them
    (a fused kernel never materialises them)."""
    if not (t.wants(prefix + "attn_scores") or t.wants(prefix + "attn_probs")):
        return
    scale = 1.0 / math.sqrt(q_rot.shape[-1])
    scores = reference_attention.masked_attention_scores(q_rot, k_rot, scale, causal, key_padding_mask,
                                                         q_offset)
    t.record(prefix + "attn_scores", scores)
    t.record(prefix + "attn_probs", softmax_forward(scores, check_values=False)[0])


def _record_attention_grads(t, prefix, traced_inputs, d_attn):
    """d:attn_probs and d:attn_scores, recomputed with the reference op when a trace asks."""
    if not (t.wants("d:" + prefix + "attn_probs") or t.wants("d:" + prefix + "attn_scores")):
        return
    _, cache = reference_attention.attention_forward(*traced_inputs)
    d_attn_probs, d_attn_scores = reference_attention.attention_score_grads(d_attn, cache)
    t.record_many("d:" + prefix, attn_probs=d_attn_probs, attn_scores=d_attn_scores)


def _record_mlp_grads(t, prefix, hn, lp, dout):
    """d:act, d:gate and d:up of the SwiGLU, recomputed with the reference op when a trace asks."""
    if not any(t.wants("d:" + prefix + s) for s in ("act", "gate", "up")):
        return
    gate = hn @ lp["mlp.gate_proj.weight"].T
    up = hn @ lp["mlp.up_proj.weight"].T
    _, act_cache = reference_swiglu.swiglu_act_forward(gate, up)
    dact = dout @ lp["mlp.down_proj.weight"]                     # out = act W_down^T
    dgate, dup = reference_swiglu.swiglu_act_backward(dact, act_cache)
    t.record_many("d:" + prefix, act=dact, gate=dgate, up=dup)


def _record_mlp(t, prefix, hn, lp):
    """gate, up and act of the SwiGLU, recomputed with the reference op only when a trace asks."""
    if not any(t.wants(prefix + s) for s in ("gate", "up", "act")):
        return
    gate = hn @ lp["mlp.gate_proj.weight"].T
    up = hn @ lp["mlp.up_proj.weight"].T
    act, _ = reference_swiglu.swiglu_act_forward(gate, up)
    t.record_many(prefix, gate=gate, up=up, act=act)


def _split_heads(x, n_heads, head_dim):
    """(B, T, n_heads*head_dim) -> (B, n_heads, T, head_dim)"""
    B, T, _ = x.shape
    return x.reshape(B, T, n_heads, head_dim).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B, n_heads, T, head_dim) -> (B, T, n_heads*head_dim)"""
    B, H, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def _layer_params(params, i, lora=None):
    """The params of layer i, keyed by their name inside the layer (e.g. "self_attn.q_proj.weight"),
    and the model's LoRA adapters (or None)."""
    prefix = f"model.layers.{i}."
    return _LayerView(params, prefix, lora)


class _LayerView:
    """Read-only view of one layer's params without copying the dict each forward."""

    __slots__ = ("params", "prefix", "lora")

    def __init__(self, params, prefix, lora=None):
        self.params, self.prefix, self.lora = params, prefix, lora

    def __getitem__(self, name):
        return self.params[self.prefix + name]


# ----- initialisation and argument checks --------------------------------------------------------
def init_params(config: LlamaConfig, seed: int, dtype) -> dict[str, np.ndarray]:
    """Hugging Face's init: every matrix ~ N(0, initializer_range^2), every norm weight 1.

    Drawn in float64 and then cast, so a float32 and a float64 model of the same seed agree.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        if len(shape) == 1:
            params[name] = np.ones(shape, dtype=dtype)
        else:
            params[name] = (rng.standard_normal(shape) * config.initializer_range).astype(dtype)
    return params


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt.type


def _check_attention_mask(attention_mask, shape):
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"attention_mask must have the tokens' shape {tuple(shape)}, got {mask.shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold 0/1 integers or booleans (1 = real token)")
        mask = mask.astype(bool)
    return mask


def _check_targets(targets, shape):
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    if targets.shape != tuple(shape):
        raise ValueError(f"targets must have the inputs' shape {tuple(shape)} (that of tokens), "
                         f"got {targets.shape}")
    return targets
