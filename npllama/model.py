"""Llama: the whole model as a readable sequence of op calls, and the same sequence reversed for backward.

    x = embed(tokens)                                  # (B, T, D)
    for each layer:
        h   = x + attention(rmsnorm(x))                # pre-norm residual blocks (Meta's model.py)
        x   = h + swiglu(rmsnorm(h))
    logits = rmsnorm(x) @ lm_head^T                    # (B, T, V)

The functions below the class are the math, step for step as derivations/transformer_block.md
numbers it; the class holds the parameters (Hugging Face state-dict names and layouts, so anyone
comparing with transformers finds every tensor by the same name) and is the public boundary:
its methods check their arguments once, then run the math without re-checking inside each op.

Which function an op name runs: every op is imported below by name from npllama/ops, so
go-to-definition lands on the reference, and under the reference backend (`npllama.study()`,
`--backend numpy`, NPLLAMA_BACKEND=numpy) that is exactly what runs.  Under the Numba backend, a
`npllama.use_op` override, a recording trace or LoRA adapters, the public methods run these same
functions re-bound so that an op name refers to the kernel, the override, the recording wrapper
or the adapter's projection (npllama/backend.py explains how).  No trace, LoRA or dispatch code
sits in the math.
"""
from __future__ import annotations

import functools
import sys
import types
from typing import NamedTuple

import numpy as np

from . import backend, budget
from .config import ATTENDS_CAUSALLY, LlamaConfig, attends_causally, check_objective
from .ops._checks import (checking, padding_mask_as_bool, require_float_array, require_non_negative_int,
                          require_path, require_positive_int)
from .ops.attention import AttentionCache, attention_backward, attention_forward
# (the loss ops are used by Llama.loss_and_grads and loss through the bound namespace, math.<op>)
from .ops.cross_entropy import cross_entropy_backward, cross_entropy_forward  # noqa: F401
from .ops.embedding import EmbeddingCache, embedding_backward, embedding_forward
from .ops.linear import LinearCache, linear_backward, linear_forward
from .ops.rmsnorm import RMSNormCache, rmsnorm_backward, rmsnorm_forward
from .ops.rope import RopeCache, rope_backward, rope_cos_sin, rope_forward
from .ops.swiglu import SwiGLUCache, swiglu_backward, swiglu_forward
from .trace import active_trace

DTYPES = (np.float32, np.float64)
# what _check_inputs is called with when there are no targets (forward, forward_step), so that a
# loss given targets=None by mistake is told apart and refused
_NO_TARGETS = object()


# ----- the named types the math passes around ------------------------------------------------------
class LayerWeights(NamedTuple):
    """One decoder layer's weights (the Hugging Face tensors model.layers.ℓ.<path>.weight), and, in
    the same shape, its gradients.  D = hidden_size, F = intermediate_size, hd = head_dim."""

    input_layernorm: np.ndarray            # (D,)          w_in
    q_proj: np.ndarray                     # (H*hd, D)     W_q
    k_proj: np.ndarray                     # (KVH*hd, D)   W_k
    v_proj: np.ndarray                     # (KVH*hd, D)   W_v
    o_proj: np.ndarray                     # (D, H*hd)     W_o
    post_attention_layernorm: np.ndarray   # (D,)          w_post
    gate_proj: np.ndarray                  # (F, D)        W_gate
    up_proj: np.ndarray                    # (F, D)        W_up
    down_proj: np.ndarray                  # (D, F)        W_down

    @classmethod
    def of_layer(cls, params: dict, i: int) -> "LayerWeights":
        """Layer i's nine weight arrays, read from params by their Hugging Face names."""
        p = f"model.layers.{i}."
        return cls(params[p + "input_layernorm.weight"], params[p + "self_attn.q_proj.weight"],
                   params[p + "self_attn.k_proj.weight"], params[p + "self_attn.v_proj.weight"],
                   params[p + "self_attn.o_proj.weight"], params[p + "post_attention_layernorm.weight"],
                   params[p + "mlp.gate_proj.weight"], params[p + "mlp.up_proj.weight"],
                   params[p + "mlp.down_proj.weight"])


# Each LayerWeights field's module path inside a layer, in field order (Hugging Face's names).
LAYER_PATHS = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
               "mlp.down_proj")


class AttentionLayerCache(NamedTuple):
    """What the backward of the attention sub-layer (steps 5-2) needs, in forward order."""

    q_proj: LinearCache            # xn (B, T, D), W_q
    k_proj: LinearCache            # xn (B, T, D), W_k
    v_proj: LinearCache            # xn (B, T, D), W_v
    q_rope: RopeCache              # cos, sin (T, hd)
    k_rope: RopeCache
    attention: AttentionCache      # q_rot (B, H, T, hd), k_rot, v (B, KVH, S, hd), attn_probs (B, H, T, S)
                                   # (under the Numba backend, the kernel's own cache type)
    o_proj: LinearCache            # attn merged to (B, T, H*hd), W_o
    n_heads: int                   # H
    n_kv_heads: int                # KVH
    head_dim: int                  # hd


class BlockCache(NamedTuple):
    """What block_backward needs: one cache per step of the block."""

    input_layernorm: RMSNormCache            # step 1: x (B, T, D), rstd (B, T, 1), w_in
    self_attn: AttentionLayerCache           # steps 2-5
    post_attention_layernorm: RMSNormCache   # step 7: h (B, T, D), rstd, w_post
    mlp: SwiGLUCache                         # step 8: gate, up (B, T, F), ...


class ModelCache(NamedTuple):
    """What the model's backward needs."""

    embed_tokens: EmbeddingCache   # tokens (B, T)
    layers: list                   # one BlockCache per layer
    norm: RMSNormCache             # x^(L) (B, T, D), rstd, w_norm
    lm_head: LinearCache | None    # hidden (B, T, D), W_lm; None when only the decoder stack ran
    hidden_shape: tuple            # (B, T, D)
    causal: bool                   # False: the bidirectional (masked-LM) stack ran (decoder_backward)


def _public(method):
    """Marks a public method of Llama: it checks its own arguments, so the ops it calls skip theirs
    (npllama/ops/_checks.py) and a debugger's step-into stays on the math."""

    @functools.wraps(method)
    def public_method(self, *args, **kwargs):
        token = checking.set(False)
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            backend.note_the_overrides(error)
            raise
        finally:
            checking.reset(token)

    return public_method


class Llama:
    """A LLaMA decoder: random init with `Llama(config, seed, dtype)`, or `Llama.from_pretrained(path)`.

    dtype: np.float32 or np.float64.  params: {Hugging Face name: array} to use instead of a random
    init (checked against config.param_shapes() and dtype; kept, not copied).  objective: "causal"
    (next-token prediction) or "mlm" (a masked-LM model: generation refuses it).  `model.params`
    are the live weights: changing an array in place changes the model.
    """

    def __init__(self, config: LlamaConfig, seed: int = 0, dtype=np.float32, *, params=None,
                 objective: str = "causal"):
        from .io.hf import check_params

        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        self.config = config
        # What the weights were trained for: "causal" (next-token prediction, LLaMA's) or "mlm"
        # (`npllama train --objective mlm`: the stack without the causal mask, predicting masked
        # tokens).  Recorded in config.json (npllama_objective); generate, perplexity and
        # multiple-choice scoring refuse an "mlm" model, a classifier on one runs bidirectionally.
        self.objective = check_objective(objective)
        self.dtype = _check_dtype(dtype)
        if params is None:
            budget.check_model(config, self.dtype)   # before allocating anything
        else:   # every name, shape and the model's dtype, or forward fails deep inside (or mixes dtypes)
            check_params(config, params, dtype=self.dtype)
        self.params = init_params(config, seed, self.dtype) if params is None else params
        self._param_shapes = {name: tuple(shape) for name, shape in config.param_shapes().items()}
        self._batch_budget = _BatchBudget(config, self.dtype)
        self._rope_tables: tuple[np.ndarray, np.ndarray] | None = None
        # LoRA adapters (npllama.lora.attach_lora), or None.  While attached, every base weight is
        # frozen: the projections run through the adapters' ops and backward returns the adapters'
        # gradients only, under PEFT's names.
        self.lora = None

    @property
    def attends_causally(self) -> bool:
        """Whether the stack runs under the causal mask, as the objective it was trained with
        (self.objective) says: False for a masked-LM model, which reads both ways and does not
        predict next tokens."""
        return attends_causally(self.objective)

    def __repr__(self) -> str:
        cfg = self.config
        lora = ""
        if self.lora is not None:   # an adapter's rank_pattern may give modules ranks of their own
            ranks = sorted({rank for rank, _ in self.lora.module_settings.values()})
            lora = f", LoRA r={ranks[0]}" if len(ranks) == 1 else f", LoRA r={ranks[0]}..{ranks[-1]} by module"
        mlm = ", masked-LM (bidirectional)" if self.objective == "mlm" else ""
        return (f"Llama({self.num_parameters():,} parameters, {cfg.num_hidden_layers} layers, hidden "
                f"{cfg.hidden_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, vocab "
                f"{cfg.vocab_size}, {np.dtype(self.dtype).name}{mlm}{lora})")

    # ----- Hugging Face folders -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> "Llama":
        """Load a Hugging Face folder (config.json + model.safetensors, or a sharded index), a
        llama2.c checkpoint file (.bin: legacy, version 1 or version 2 int8), or a GGUF file
        (llama.cpp's; F32, F16, BF16 or Q8_0 tensors, dequantized).  The model's `objective` is
        config.json's npllama_objective ("causal" when absent)."""
        from .io.gguf_import import looks_like_gguf, read_gguf
        from .io.hf import load_hf_model
        from .io.llama2c import looks_like_llama2c, read_llama2c

        require_path("path", path, "a model folder, llama2.c .bin file or GGUF file")
        objective = "causal"
        if looks_like_llama2c(path):
            config, params = read_llama2c(path, dtype=_check_dtype(dtype))
        elif looks_like_gguf(path):
            config, params = read_gguf(path, dtype=_check_dtype(dtype))
        else:
            config, params, objective = load_hf_model(path, dtype=_check_dtype(dtype))
        return cls(config, dtype=dtype, params=params, objective=objective)

    def save_pretrained(self, path, dtype=None, extra_files=None) -> None:
        """Write a folder that `transformers.LlamaForCausalLM.from_pretrained` loads.  A masked-LM
        model's config.json records "npllama_objective": "mlm" (transformers ignores it).

        Into an existing folder (e.g. the one the model was loaded from), as transformers does: the
        files written here replace those of the same names and the old weights go (an old sharded
        index and its shards, pytorch_model*.bin); the folder's other files (tokenizer, README,
        sub-folders) stay as they are.  All at once: if the save fails, the folder is left as it
        was.  A folder holding a LoRA adapter is refused (npllama.io.hf.save_hf_folder says why).

        dtype: None keeps the model's; np.float32, np.float64, np.float16 or "bfloat16" stores that.
        extra_files: {file name: bytes} written into the folder too (e.g. tokenizer.model; a
            tokenizer given replaces the folder's old tokenizer files).
        """
        from .io.hf import objective_fields, save_hf_folder

        require_path("path", path, "the folder to write")
        save_hf_folder(path, self.config, self.params, dtype=dtype, extra_files=extra_files,
                       extra_config=objective_fields(self.objective))

    def num_parameters(self) -> int:
        """The number of weights in `params` (LoRA adapters not counted)."""
        return int(sum(p.size for p in self.params.values()))

    # ----- forward --------------------------------------------------------------------------
    def forward(self, tokens, attention_mask=None, causal: bool | None = None) -> np.ndarray:
        """tokens int (B, T) -> logits (B, T, vocab_size).  attention_mask: optional (B, T), 1 = real
        token.  causal: as forward_with_caches."""
        logits, _ = self.forward_with_caches(tokens, attention_mask, causal)
        return logits

    @_public
    def forward_with_caches(self, tokens, attention_mask=None, causal: bool | None = None):
        """Logits (B, T, V) and the ModelCache `backward` needs.  attention_mask: optional (B, T),
        1 = real token.  causal=False: the bidirectional stack (the article's §3.1.1 "encoder");
        None: the model's own (attends_causally), bidirectional for a masked-LM model."""
        tokens, key_padding_mask, causal = self._check_inputs(tokens, attention_mask, causal=causal)
        cos, sin = self.rope_tables(tokens.shape[1])
        return self._math().model_forward(self.params, self.config, tokens, cos, sin, causal,
                                          key_padding_mask)

    @_public
    def hidden_forward(self, tokens, attention_mask=None, causal: bool | None = None):
        """The decoder stack without the LM head: final-normed hidden states (B, T, D) and the
        ModelCache (its lm_head None).  Heads other than the LM head (classification, masked-LM)
        start from here.  causal: as forward_with_caches."""
        tokens, key_padding_mask, causal = self._check_inputs(tokens, attention_mask, causal=causal)
        cos, sin = self.rope_tables(tokens.shape[1])
        return self._math().decoder_forward(self.params, self.config, tokens, cos, sin, causal,
                                            key_padding_mask)

    # ----- backward -------------------------------------------------------------------------
    @_public
    def backward(self, dlogits, caches: ModelCache) -> dict[str, np.ndarray]:
        """Gradients of every parameter, given dL/dlogits (B, T, V) and forward_with_caches' caches.

        With LoRA adapters attached: the gradients of the adapter parameters only (PEFT's names).
        """
        self._check_upstream("dlogits", dlogits, caches, "logits'", (self.config.vocab_size,))
        return self._finish(self._math().model_backward(dlogits, caches, self.config))

    @_public
    def hidden_backward(self, dhidden, caches: ModelCache, head_grads: dict | None = None) -> dict[str, np.ndarray]:
        """Gradients of the decoder stack's parameters, given dL/d(final-normed hidden states).

        head_grads: the gradients of the head the objective put on the hidden states, computed
        before ({"score.weight": ...}): returned after the model's, and traced with them in the order
        the backward finished them.  A head that is a parameter of the model (the LM head) adds
        into its gradient; with LoRA attached it is frozen, and its gradient is dropped."""
        self._check_upstream("dhidden", dhidden, caches, "hidden states'", ())
        return self._finish(self._math().decoder_backward(dhidden, caches, self.config), head_grads)

    def head_ops(self, head_params: dict):
        """The ops in force here, for the head an objective puts on hidden_forward's states
        (npllama/finetune.py, npllama/objectives.py): `ops.classifier_forward(hidden, w, index)`,
        `ops.cross_entropy_forward(...)`, ... -- the backend's kernels and `use_op` overrides, as for
        the model's own ops, and while a trace records, ops that record the head as part of the
        model's pass, named by head_params ({"score.weight": w} -> score.out, d:score.weight).
        Use one namespace for a head's forward and backward: a kernel's cache is its own."""
        bindings = backend.op_bindings()
        trace = active_trace()
        if trace is not None:
            bindings.update(trace.recording_bindings(bindings, self.params, self.config, head_params))
        return types.SimpleNamespace(**{**vars(backend.ops("numpy")), **bindings})

    @_public
    def loss_and_grads(self, tokens, targets, attention_mask=None, ignore_index: int = -100,
                       causal: bool | None = None):
        """Mean next-token cross-entropy over targets != ignore_index, and its gradient for every param.

        targets (B, T) are already shifted: targets[b, t] is the token that should follow tokens[b, t].
        Every target ignored: loss 0.0 and every gradient 0 (not NaN), as cross_entropy_forward says.
        causal=False: the bidirectional stack, whose targets are the masked-LM ones (objectives.py);
        None: the model's own (attends_causally), so a masked-LM model's loss is its masked-LM loss.
        With config.pad_token_id set, the pad token's embedding row gets no gradient from its
        lookups, as in transformers (torch's nn.Embedding padding_idx): a finite-difference check
        of that row disagrees by design.  Not with causal=False (decoder_backward says why).
        """
        tokens, key_padding_mask, targets, causal = self._check_inputs(tokens, attention_mask, targets,
                                                                       ignore_index, causal=causal)
        cos, sin = self.rope_tables(tokens.shape[1])
        math = self._math()
        logits, cache = math.model_forward(self.params, self.config, tokens, cos, sin, causal,
                                           key_padding_mask)                                # (B, T, V)
        loss, loss_cache = math.cross_entropy_forward(logits, targets, ignore_index)
        dlogits = math.cross_entropy_backward(np.ones((), dtype=logits.dtype), loss_cache)  # (B, T, V)
        grads = math.model_backward(dlogits, cache, self.config)
        return float(loss), self._finish(grads)

    @_public
    def loss(self, tokens, targets, attention_mask=None, ignore_index: int = -100,
             causal: bool | None = None) -> float:
        """The same loss as loss_and_grads, without the backward pass."""
        tokens, key_padding_mask, targets, causal = self._check_inputs(tokens, attention_mask, targets,
                                                                       ignore_index, causal=causal)
        cos, sin = self.rope_tables(tokens.shape[1])
        math = self._math()
        logits, _ = math.model_forward(self.params, self.config, tokens, cos, sin, causal, key_padding_mask)
        loss, _ = math.cross_entropy_forward(logits, targets, ignore_index)
        return float(loss)

    # ----- incremental decoding with a KV cache -------------------------------------------
    def new_kv_cache(self, batch_size: int, max_length: int | None = None) -> "KVCache":
        """An empty KVCache for forward_step, in the model's dtype; max_length None: the whole context."""
        return KVCache(self.config, batch_size,
                       self.config.max_position_embeddings if max_length is None else max_length, self.dtype)

    @_public
    def forward_step(self, tokens, kv_cache: "KVCache") -> np.ndarray:
        """Process new tokens (B, T_new) after the kv_cache.length tokens already seen.

        Prefill is one call with the whole prompt, decoding one call per token (T_new = 1).  The
        logits equal those of a full forward over everything seen so far, at the new positions.
        Causal models only: a masked-LM model is refused (refuse_kv_cache_decoding).
        """
        # the table read here, as _check_inputs reads it: a causal model's decoding step (per token)
        # makes no calls before its math
        if ATTENDS_CAUSALLY.get(self.objective) is not True:
            refuse_kv_cache_decoding(self)
        self._check_kv_cache(kv_cache)
        tokens, _, _ = self._check_inputs(tokens, offset=kv_cache.length, causal=True)
        B, T_new = tokens.shape
        if B != kv_cache.batch_size:
            raise ValueError(f"tokens has batch size {B}, the KV cache was made for {kv_cache.batch_size}")
        if kv_cache.length + T_new > kv_cache.max_length:
            raise ValueError(f"KV cache holds at most {kv_cache.max_length} positions; "
                             f"{kv_cache.length} used, {T_new} more requested")
        start, end = kv_cache.length, kv_cache.length + T_new
        cos, sin = self.rope_tables(end)
        logits, _ = self._math().model_forward(self.params, self.config, tokens, cos[start:end], sin[start:end],
                                               True, None, kv_cache)
        kv_cache.length = end
        return logits

    def generate(self, prompt, max_new_tokens: int, **sampling) -> list[int] | list[list[int]]:
        """prompt ids -> prompt + generated ids (a list of prompts -> a list of those); every option
        of npllama.generate.generate (temperature, top_k, top_p, repetition_penalty, seed, eos_id,
        stop, vocab_size, ...).  It stops at an end id only when eos_id names one (e.g.
        eos_id=self.config.eos_token_id, where transformers' generate stops by default)."""
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
        """W_lm (V, D): lm_head.weight, or the embedding E when the embeddings are tied."""
        return self.params["model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"]

    def _math(self):
        """This module's math with the op names bound to what is in force here: the module itself
        under the reference backend with nothing else active (npllama/backend.py)."""
        bindings = backend.op_bindings()
        trace = active_trace()
        if trace is not None:   # first, so that LoRA's SwiGLU takes the SiLU-gate ops the trace sees run
            bindings.update(trace.dispatch_bindings(bindings, self.params, self.config))
        if self.lora is not None:
            bindings.update(self.lora.op_bindings(bindings))
        if trace is not None:
            lora = None if self.lora is None else self.lora.describe()
            bindings.update(trace.recording_bindings(bindings, self.params, self.config, lora=lora))
        if not bindings:
            return sys.modules[__name__]
        return backend.bind(sys.modules[__name__], bindings, keep=trace is None)

    def _finish(self, grads: dict, head_grads: dict | None = None) -> dict:
        """The gradients in model.params' order -- or, with LoRA attached, the adapters' only --
        then a head's (hidden_backward's head_grads)."""
        head_grads = dict(head_grads or {})
        for name in head_grads:
            if name not in self.params and (name.startswith("model.") or name == "lm_head.weight"):
                raise ValueError(f"head_grads holds {name!r}, which is no parameter of this model"
                                 + (" (its LM head is model.embed_tokens.weight: tied embeddings)"
                                    if name == "lm_head.weight" and self.config.tie_word_embeddings else ""))
        for name in [n for n in head_grads if n in self.params]:   # the LM head: E when tied, used twice
            grad = head_grads.pop(name)
            if self.lora is None:
                grads[name] = grads[name] + grad if name in grads else grad
        if self.lora is not None:
            grads = self.lora.adapter_grads(grads)
        else:
            grads = {name: grads[name] for name in self.params if name in grads}
        grads.update(head_grads)
        trace = active_trace()
        if trace is not None:
            trace.record_parameter_gradients(grads)
        return grads

    def _check_upstream(self, name, grad, caches, what, last_dims):
        """An upstream gradient for backward/hidden_backward: a float array of the model's dtype and
        the shape of the output the caches' forward made (its hidden shape, last dimension swapped
        for last_dims)."""
        if not isinstance(caches, ModelCache):
            raise TypeError(f"caches must be the ModelCache returned by forward_with_caches or hidden_forward, "
                            f"got {type(caches).__name__}")
        expected = caches.hidden_shape[:-1] + last_dims if last_dims else caches.hidden_shape
        require_float_array(name, grad, min_ndim=0)
        if grad.shape != expected:
            raise ValueError(f"{name} has shape {grad.shape}, expected the {what} shape {expected}")
        if grad.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {grad.dtype}, expected the model's dtype "
                            f"{np.dtype(self.dtype).name} (no silent casts)")

    def _check_kv_cache(self, kv_cache):
        """A KVCache made for this model (new_kv_cache): its layers, heads, head size and dtype."""
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a KVCache from model.new_kv_cache(batch_size), "
                            f"got {type(kv_cache).__name__}")
        cfg = self.config
        wanted = (cfg.num_hidden_layers, kv_cache.batch_size, cfg.num_key_value_heads, kv_cache.max_length,
                  cfg.head_dim)
        if kv_cache.k.shape != wanted or kv_cache.k.dtype != self.dtype:
            raise ValueError(f"kv_cache was made for another model: it holds {kv_cache.k.dtype} keys of shape "
                             f"{kv_cache.k.shape} (layers, batch, kv heads, positions, head_dim), this model needs "
                             f"{np.dtype(self.dtype).name} {wanted}; make it with model.new_kv_cache(batch_size)")

    def _check_params_unchanged(self):
        """model.params is a plain dict: an array put in after the constructor's check, of another
        dtype or shape, would be upcast and broadcast by the NumPy ops but rounded down and read
        past its end by the kernels (the ops skip their checks inside these methods).  A quick
        pass, accepting what check_params accepts (a memmap, an unpickled array whose dtype equals
        the model's without being the same object), so that such arrays do not pay the full check
        at every decoded token; the full check names the parameter."""
        params, shapes, dtype = self.params, self._param_shapes, np.dtype(self.dtype)
        if params.keys() == shapes.keys():
            # a plain loop, not all(<generator>): someone stepping into loss_and_grads with pdb
            # would otherwise step through one generator frame per parameter
            for name, a in params.items():
                if not (isinstance(a, np.ndarray) and (a.dtype is dtype or a.dtype == dtype)
                        and a.shape == shapes[name]):
                    break
            else:
                return
        from .io.hf import check_params

        check_params(self.config, params, dtype=dtype)

    def _check_inputs(self, tokens, attention_mask=None, targets=_NO_TARGETS, ignore_index=-100, offset=0,
                      causal=None):
        """tokens (B, T), the padding mask ((B, T) of bools or 0/1 numbers, returned as bool; or None),
        targets (B, T) when given (the loss), and causal (None: the model's own, attends_causally):
        checked here once, so that the ops the model calls need not check them again."""
        if causal is None:   # attends_causally, read from its table: a debugger's path to the math stays short
            causal = ATTENDS_CAUSALLY[self.objective]
        if not isinstance(causal, (bool, np.bool_)):   # causal="False" is truthy: it would run causal
            raise TypeError(f"causal must be True or False, got {causal!r}")
        self._check_params_unchanged()
        tokens = tokens if isinstance(tokens, np.ndarray) else _as_array("tokens", tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tokens.shape}"
                             + ("; use tokens[None] for a single sequence" if tokens.ndim == 1 else ""))
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must not be empty, got shape {tokens.shape}")
        limit, vocab = self.config.max_position_embeddings, self.config.vocab_size
        if offset + tokens.shape[1] > limit:
            raise ValueError(f"sequence of {offset + tokens.shape[1]} positions is longer than "
                             f"max_position_embeddings ({limit})")
        outside = (tokens < 0) | (tokens >= vocab)
        if outside.any():
            raise ValueError(f"tokens contains id {tokens[outside].flat[0]}, outside the vocabulary [0, {vocab})")
        B, T = tokens.shape
        training = targets is not _NO_TARGETS
        if self._batch_budget.exceeded(B, T, training):   # before any activation is allocated
            budget.check_batch(self.config, B, T, self.dtype, training)
        mask = attention_mask
        if mask is not None:
            mask = mask if isinstance(mask, np.ndarray) else _as_array("attention_mask", mask)
            mask = padding_mask_as_bool(mask, tokens.shape)
        if not training:
            return tokens, mask, causal
        if targets is None:   # loss(tokens, None): a loss needs what each position should predict
            raise TypeError(f"targets must be the next tokens, an int array of the tokens' shape {tokens.shape}, "
                            f"got None (for logits alone, call forward(tokens))")
        targets = targets if isinstance(targets, np.ndarray) else _as_array("targets", targets)
        if not np.issubdtype(targets.dtype, np.integer):
            raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
        if targets.shape != tokens.shape:
            raise ValueError(f"targets must have the inputs' shape {tokens.shape} (that of tokens), "
                             f"got {targets.shape}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer, got {type(ignore_index).__name__}")
        outside = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if outside.any():
            raise ValueError(f"targets contains {targets[outside].flat[0]}, outside [0, V) with V = {vocab} "
                             f"and not ignore_index ({ignore_index})")
        return tokens, mask, targets, causal


def refuse_kv_cache_decoding(model) -> None:
    """A KV cache keeps each position's keys and values as the tokens before it left them, which
    is right only under the causal mask: a masked-LM model (attends_causally False) reads every
    position both ways, so cached decoding would give logits its forward does not.  Refused."""
    if not model.attends_causally:
        raise ValueError("the model is a masked-LM model (objective \"mlm\"), which reads every position both "
                         "ways: decoding with a KV cache would run it causally and give other logits than its "
                         "forward; run model.forward(tokens) on the whole sequence instead")


class KVCache:
    """Keys and values of every layer, preallocated for max_length positions.

    k, v: (num_layers, batch, num_key_value_heads, max_length, head_dim); positions [0, length) are filled.
    Made by `model.new_kv_cache(batch_size)`; built directly, dtype must be the model's.
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_length: int, dtype=np.float32):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        dtype = _check_dtype(dtype)   # float32 or float64, as the model's
        require_positive_int("batch_size", batch_size)
        require_positive_int("max_length", max_length)
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings "
                             f"({config.max_position_embeddings})")
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_length,
                 config.head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.batch_size, self.max_length, self.length = int(batch_size), int(max_length), 0

    def reset(self) -> None:
        """Forget every position (length 0), to start a new sequence in the same arrays."""
        self.length = 0

    def slot(self, layer: int) -> "KVSlot":
        """Layer `layer`'s storage, where the next step's keys and values go (at position `length`)."""
        return KVSlot(self.k[layer], self.v[layer], self.length)


class KVSlot(NamedTuple):
    """One layer's keys and values in a KVCache, and where the new ones go."""

    k_store: np.ndarray   # (B, KVH, max_length, hd)
    v_store: np.ndarray
    start: int            # positions [0, start) are filled

    def append(self, k_rot, v):
        """Write the new positions' keys and values; return all keys and values so far (B, KVH, S, hd)
        and the new queries' first absolute position (attention's q_offset)."""
        end = self.start + k_rot.shape[2]
        self.k_store[:, :, self.start:end] = k_rot
        self.v_store[:, :, self.start:end] = v
        return self.k_store[:, :, :end], self.v_store[:, :, :end], self.start



# ----- the whole model --------------------------------------------------------------------------
def model_forward(params, config, tokens, cos, sin, causal, key_padding_mask, kv_cache=None):
    """tokens (B, T) -> logits (B, T, V), and the ModelCache.

    Head (derivations/transformer_block.md): hidden = rmsnorm(x^(L); w_norm), logits = hidden W_lm^T,
    with W_lm = the embedding E when the embeddings are tied."""
    hidden, cache = decoder_forward(params, config, tokens, cos, sin, causal, key_padding_mask, kv_cache)
    W_lm = params["model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]  # (V, D)
    logits, lm_head = linear_forward(hidden, W_lm)                                          # (B, T, V)
    return logits, cache._replace(lm_head=lm_head)


def decoder_forward(params, config, tokens, cos, sin, causal, key_padding_mask, kv_cache=None):
    """tokens (B, T) -> hidden (B, T, D), the final-normed states every head starts from.

    kv_cache (a KVCache) when decoding: each layer appends this step's keys and values to it and
    attends over every position seen so far; cos and sin are then the new positions' rows."""
    x, embed_tokens = embedding_forward(tokens, params["model.embed_tokens.weight"])       # x^(0) (B, T, D)
    layers = []
    for i in range(config.num_hidden_layers):
        kv_slot = None if kv_cache is None else kv_cache.slot(i)
        x, layer = block_forward(x, LayerWeights.of_layer(params, i), cos, sin, config, causal,
                                 key_padding_mask, kv_slot)                                 # x^(i+1) (B, T, D)
        if kv_cache is None:  # decoding runs no backward: drop each layer's cache, so the next reuses its memory
            layers.append(layer)
    hidden, norm = rmsnorm_forward(x, params["model.norm.weight"], config.rms_norm_eps)     # (B, T, D)
    return hidden, ModelCache(embed_tokens, layers, norm, None, hidden.shape, causal)


def model_backward(dlogits, cache, config):
    """Every parameter's gradient (Hugging Face names), given dL/dlogits (B, T, V)."""
    # logits = hidden W_lm^T
    dhidden, dW_lm = linear_backward(dlogits, cache.lm_head)                               # (B, T, D), (V, D)
    grads = decoder_backward(dhidden, cache, config)
    if not config.tie_word_embeddings:
        grads["lm_head.weight"] = dW_lm
    elif dW_lm is not None:  # E is used twice, as the lookup table and as W_lm: its gradients add
        grads["model.embed_tokens.weight"] = grads["model.embed_tokens.weight"] + dW_lm
    return grads


def decoder_backward(dhidden, cache, config):
    """decoder_forward read backwards: the gradients of the embedding, every layer and the final norm."""
    grads = {}
    # hidden = rmsnorm(x^(L); w_norm)
    dx, grads["model.norm.weight"] = rmsnorm_backward(dhidden, cache.norm)                 # (B, T, D)
    for i in reversed(range(config.num_hidden_layers)):
        dx, layer_grads = block_backward(dx, cache.layers[i])                               # dx^(i) (B, T, D)
        for path, grad in zip(LAYER_PATHS, layer_grads):
            grads[f"model.layers.{i}.{path}.weight"] = grad
    # x^(0) = E[tokens]
    dE = embedding_backward(dx, cache.embed_tokens)                                        # (V, D)
    if config.pad_token_id is not None and dE is not None and cache.causal:   # (dE None: frozen, under LoRA)
        # Not the math's gradient but transformers' convention, kept so that gradients match
        # LlamaForCausalLM's: its table is nn.Embedding(padding_idx=pad_token_id), whose lookup
        # sends nothing to the pad row (the row still gets the tied lm_head's part, as in torch).
        # Not in the bidirectional (masked-LM) stack, which transformers has no counterpart of: there
        # the pad id is often a real input -- the [MASK] token <unk> (LLaMA-1 configs set
        # pad_token_id 0) or the </s> between a pair's sentences (pad_token_id = eos) -- whose row
        # would never learn.
        dE[config.pad_token_id] = 0
    grads["model.embed_tokens.weight"] = dE
    return grads


# ----- one decoder block (derivations/transformer_block.md, "Block ℓ", steps 1-9) -----------------------
def block_forward(x, w: LayerWeights, cos, sin, config, causal, key_padding_mask, kv_slot=None):
    """h = x + attention(rmsnorm(x));  out = h + swiglu(rmsnorm(h)).   x: (B, T, D)

    kv_slot (a KVSlot) when decoding: this step's keys and values join the layer's KV cache, and
    attention runs over every position seen so far (S of them)."""
    B, T, _ = x.shape
    H, KVH, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    # 1. xn = rmsnorm(x; w_in)
    xn, input_layernorm = rmsnorm_forward(x, w.input_layernorm, config.rms_norm_eps)      # (B, T, D)
    # 2. q, k, v = xn W_q^T, xn W_k^T, xn W_v^T; split the heads
    q, q_proj = linear_forward(xn, w.q_proj)                                                # (B, T, H*hd)
    k, k_proj = linear_forward(xn, w.k_proj)                                                # (B, T, KVH*hd)
    v, v_proj = linear_forward(xn, w.v_proj)                                                # (B, T, KVH*hd)
    q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)                                        # (B, H, T, hd)
    k = k.reshape(B, T, KVH, hd).transpose(0, 2, 1, 3)                                      # (B, KVH, T, hd)
    v = v.reshape(B, T, KVH, hd).transpose(0, 2, 1, 3)                                      # (B, KVH, T, hd)
    # 3. q_rot, k_rot = rope(q), rope(k)
    q_rot, q_rope = rope_forward(q, cos, sin)                                               # (B, H, T, hd)
    k_rot, k_rope = rope_forward(k, cos, sin)                                               # (B, KVH, T, hd)
    q_offset = 0
    if kv_slot is not None:
        k_rot, v, q_offset = kv_slot.append(k_rot, v)                                       # (B, KVH, S, hd)
    # 4. a = attention(q_rot, k_rot, v), grouped-query
    a, attention = attention_forward(q_rot, k_rot, v, causal, key_padding_mask, q_offset)   # (B, H, T, hd)
    # 5. merge the heads; attn_out = a W_o^T
    a = a.transpose(0, 2, 1, 3).reshape(B, T, H * hd)                                       # (B, T, H*hd)
    attn_out, o_proj = linear_forward(a, w.o_proj)                                          # (B, T, D)
    # 6. the first residual
    h = x + attn_out                                                                        # (B, T, D)
    # 7. hn = rmsnorm(h; w_post)
    hn, post_attention_layernorm = rmsnorm_forward(h, w.post_attention_layernorm,
                                                   config.rms_norm_eps)                     # (B, T, D)
    # 8. mlp_out = swiglu(hn; W_gate, W_up, W_down)
    mlp_out, mlp = swiglu_forward(hn, w.gate_proj, w.up_proj, w.down_proj)                  # (B, T, D)
    # 9. the second residual
    out = h + mlp_out                                                                       # (B, T, D)
    self_attn = AttentionLayerCache(q_proj, k_proj, v_proj, q_rope, k_rope, attention, o_proj, H, KVH, hd)
    return out, BlockCache(input_layernorm, self_attn, post_attention_layernorm, mlp)


def block_backward(dout, cache: BlockCache):
    """block_forward read backwards.  Returns dx (B, T, D) and the layer's gradients as LayerWeights."""
    B, T, _ = dout.shape
    attn = cache.self_attn
    H, KVH, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    # 9. the forward did out = h + mlp_out: dmlp_out = dout, and dh starts as dout
    dmlp_out = dout
    # 8. mlp_out = swiglu(hn)
    dhn, dW_gate, dW_up, dW_down = swiglu_backward(dmlp_out, cache.mlp)                    # (B, T, D)
    # 7. hn = rmsnorm(h): h fed the norm and the residual, so its two gradients add
    dh_norm, dw_post = rmsnorm_backward(dhn, cache.post_attention_layernorm)               # (B, T, D), (D,)
    dh = dout + dh_norm
    # 6. the forward did h = x + attn_out: dattn_out = dh, and dx starts as dh
    dattn_out = dh
    # 5. attn_out = a W_o^T; the heads were merged, so split them again
    da, dW_o = linear_backward(dattn_out, attn.o_proj)                                     # (B, T, H*hd)
    da = da.reshape(B, T, H, hd).transpose(0, 2, 1, 3)                                     # (B, H, T, hd)
    # 4. a = attention(q_rot, k_rot, v): dk_rot, dv summed over each group of n_rep query heads
    dq_rot, dk_rot, dv = attention_backward(da, attn.attention)                            # dk_rot, dv: (B, KVH, T, hd)
    # 3. the transposed rotation
    dq = rope_backward(dq_rot, attn.q_rope)                                                # (B, H, T, hd)
    dk = rope_backward(dk_rot, attn.k_rope)                                                # (B, KVH, T, hd)
    # 2. merge the heads; xn fed three projections, so its three gradients add
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * hd)                                    # (B, T, H*hd)
    dk = dk.transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)                                  # (B, T, KVH*hd)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KVH * hd)                                  # (B, T, KVH*hd)
    dxn_q, dW_q = linear_backward(dq, attn.q_proj)
    dxn_k, dW_k = linear_backward(dk, attn.k_proj)
    dxn_v, dW_v = linear_backward(dv, attn.v_proj)
    dxn = dxn_q + dxn_k + dxn_v                                                            # (B, T, D)
    # 1. xn = rmsnorm(x): x fed the norm and the residual
    dx_norm, dw_in = rmsnorm_backward(dxn, cache.input_layernorm)                          # (B, T, D), (D,)
    dx = dh + dx_norm
    return dx, LayerWeights(dw_in, dW_q, dW_k, dW_v, dW_o, dw_post, dW_gate, dW_up, dW_down)


# ----- initialisation and argument checks --------------------------------------------------------
def init_params(config: LlamaConfig, seed: int, dtype) -> dict[str, np.ndarray]:
    """Hugging Face's init: every matrix ~ N(0, initializer_range^2), every norm weight 1.

    Drawn in float64 and then cast, so a float32 and a float64 model of the same seed agree.
    """
    require_non_negative_int("seed", seed)
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        if len(shape) == 1:
            params[name] = np.ones(shape, dtype=dtype)
        else:
            params[name] = (rng.standard_normal(shape) * config.initializer_range).astype(dtype)
    return params


class _BatchBudget:
    """npllama.budget.batch_bytes for this model, as B*T*per_token + B*T*T*per_pair bytes (its exact
    form), with the memory budget read when the model is made: the batch check at every public
    call is then two multiplications (budget.check_batch explains a refusal)."""

    def __init__(self, config, dtype):
        self.limit = budget.max_memory()
        self.coefficients = {}
        for training in (False, True):
            one, two = (budget.batch_bytes(config, 1, T, dtype, training) for T in (1, 2))
            per_pair = (two - 2 * one) / 2                     # f(1, 2) - 2 f(1, 1) = 2 per_pair
            self.coefficients[training] = (one - per_pair, per_pair)

    def exceeded(self, B, T, training):
        per_token, per_pair = self.coefficients[training]
        return B * T * (per_token + T * per_pair) > self.limit


def _as_array(name, value) -> np.ndarray:
    """np.asarray(value), with a ragged nested list named as the argument it was given for.  (Called
    only for what is not an array yet: a debugger stepping in with arrays does not pass through.)"""
    try:
        return np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular (batch, seq_len) array of ints; rows of different "
                         f"lengths need padding (and an attention_mask)") from None


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt.type
