"""FastDecoder: token-by-token generation with the weights read in place and a preallocated KV cache.

    decoder = FastDecoder(model, batch_size=1)
    logits = decoder.step(prompt_tokens)          # prefill: (B, T) -> (B, T, vocab)
    logits = decoder.step(next_tokens[:, None])   # then one token per call

`step` returns what `model.forward_step` returns for the same calls (tested equal).  A decode
step at batch 1 does little arithmetic and reads every weight once, so it is bound by memory
bandwidth and by whatever else it spends between those reads:
  - one new token of one sequence is one numba call per thread through every layer and the LM
    head (`_decode_token_part`: llama2.c's forward() top to bottom, no Python between layers).
    The matrix-vector products are split by rows over the threads and attention by KV group;
    the threads meet at a barrier after each product (kernels/_sync.py), four per layer.  The
    helper threads wait for the next token inside numba and sleep between bursts
    (kernels/threads.py), so a token reaches them without Python or the GIL.  Numba's parallel
    loops were tried and lost (benchmarks/README.md: the workqueue pool's 35-45 us start per
    loop; OpenMP's spinning barrier, 5-50x slower whenever another process held a core, and a
    second OpenMP runtime slows PyTorch in the same process ~100x).  BLAS is not used for them:
    its gemv on two threads was no faster than `_matvec` on one (bench_kernels.py's table);
  - by default the decoder uses every core, and falls back to one thread while that is faster
    (threads.TeamOrAlone: when the threads wait at the barriers for long, other programs are
    keeping the cores busy, and the two ways are timed);
    `threads=N` fixes the count.  Splits fall on whole rows and whole KV groups, each row and
    each head computed by the same loop whatever the split, so the logits are the same bits for
    any thread count;
  - the weights are the model's own arrays, gathered once per model (`model_weights`, kept
    while the parameter arrays are the same objects): nothing is copied per decoder or per
    `generate` call, and a training step's in-place update is seen at once.  The kernel gets the
    layers' arrays as a table of addresses (kernels/_addresses.py), whose type is the same for
    any depth: per-layer tuples made numba compile the step again for every number of layers;
  - a prompt of more than ONE_BY_ONE_MAX positions, or a batch of sequences, goes through BLAS's
    matrix products over all its rows, with RoPE, the KV-cache write and attention over the
    cached positions one numba call per layer; keys are cached transposed (hd, positions) so
    that the scores of all positions are one vectorised multiply-add per head dimension.
    BLAS's idle threads spin for ~0.1 s after a call and would slow the team's threads, so a
    batch-1 prompt of up to PREFILL_ON_ONE_BLAS_THREAD positions is prefilled with BLAS on one
    thread (none left spinning; BLAS's thread count is process-wide, so other threads' products
    run on one thread too for those few milliseconds), and after a longer one a decoder with the
    default thread count runs on one thread for ~0.15 s (a prompt of up to ONE_BY_ONE_MAX goes
    token by token, never waking BLAS's threads).

Not for use by two threads at once (a RuntimeError says so): give each thread its own decoder.
It runs its own fused loops over the model's base weights, not the ops: while a `use_op` override
of an op of the forward pass is in force, LoRA adapters are attached or a trace records, it refuses
to step (a ValueError naming what it would ignore) -- `generate` decodes with model.forward_step
then.  An override of a backward, of the loss or of a classification head changes no logit.
"""
import math
import time
import weakref

import numpy as np
from numba import njit

from ..budget import check_threads
from ..ops._checks import require_int_array, require_positive_int
from ..parallel import blas_can_be_held, one_blas_thread
from ._addresses import address_table, matrix_at, vector_at
from ._simd import REDUCTION_FLAGS, exp_nonpositive, row_max, row_sum
from ._sync import barrier, job_base, job_param, wait_for_job
from .rmsnorm import _rmsnorm_forward_rows
from .rope import _rotate
from .swiglu import _silu_mul, swiglu_forward
from .threads import Team, TeamOrAlone, decode_threads


# A short prompt of one sequence goes token by token through the threads, not through BLAS:
# BLAS's threads keep spinning for ~0.1 s after a call and would slow the next ~20-50 tokens
# down to below one thread's speed (measured at s15m: 5.6-8 ms a token instead of 1.8).
ONE_BY_ONE_MAX = 16
# A longer batch-1 prompt, up to this many positions, is prefilled with BLAS on one thread when a
# team of threads decodes after it.  The prefill takes longer (s15m, 128 positions: 63 ms instead
# of 42; m42m: 146 instead of 104), but the team starts at full speed instead of after ~0.15 s
# alone: a 128-token prompt and 128 new tokens took 290 ms instead of 340 (s15m), 1078 instead
# of 1231 (m42m).  Past ~400-700 positions the slower prefill costs more than it saves.
PREFILL_ON_ONE_BLAS_THREAD = 256

# The columns of ModelWeights.layers: each layer's arrays, in the order the step reads them.
INPUT_NORM, WQ, WK, WV, WO, POST_NORM, W_GATE, W_UP, W_DOWN = range(9)


class FastDecoder:
    """Incremental decoding of `model` for `batch_size` sequences of up to `max_length` positions.

    threads: how many threads a one-token step of one sequence runs on.  None: every core
    ($NPLLAMA_DECODE_THREADS if set), checked against one thread as decoding goes."""

    def __init__(self, model, batch_size: int = 1, max_length: int | None = None,
                 threads: int | None = None):
        cfg = model.config
        max_length = cfg.max_position_embeddings if max_length is None else max_length
        require_positive_int("batch_size", batch_size)
        require_positive_int("max_length", max_length)
        require_positive_int("threads", 1 if threads is None else threads)
        refuse_what_fused_decoding_ignores(model)
        from ..model import refuse_kv_cache_decoding

        refuse_kv_cache_decoding(model)
        if max_length > cfg.max_position_embeddings:
            raise ValueError(f"max_length ({max_length}) exceeds max_position_embeddings "
                             f"({cfg.max_position_embeddings})")
        # the thread count first: a count past NPLLAMA_MAX_THREADS is refused before the KV cache,
        # the RoPE tables, the per-thread buffers or the team's threads take any memory
        self.threads, chosen = decode_threads() if threads is None else (threads, True)
        if threads is not None:   # (the default is within the budget already)
            check_threads("threads", threads)
        self.model, self.config, self.dtype = model, cfg, np.dtype(model.dtype)
        self.batch_size, self.max_length, self.length = int(batch_size), int(max_length), 0
        self.weights = model_weights(model)
        self.eps = self.dtype.type(cfg.rms_norm_eps)
        self.cos, self.sin = model.rope_tables(self.max_length)
        L, B, KVH, hd = cfg.num_hidden_layers, self.batch_size, cfg.num_key_value_heads, cfg.head_dim
        self.k_cache_t = np.zeros((L, B, KVH, hd, self.max_length), dtype=self.dtype)  # keys transposed
        self.v_cache = np.zeros((L, B, KVH, self.max_length, hd), dtype=self.dtype)
        self._one = _OneTokenBuffers(cfg, self.dtype, self.threads) if B == 1 else None
        self._team = Team(self.threads, _decode_helper, self._one_token_args()) if B == 1 else None
        # The default (every core) is checked against one thread as the decoding goes; a count
        # given by the caller is used as given.
        self._chooser = TeamOrAlone(self.threads) if B == 1 and self.threads > 1 and not chosen else None

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
        refuse_what_fused_decoding_ignores(self.model)   # an override may have come in since __init__
        B, T_new = tokens.shape
        start, end = self.length, self.length + T_new
        if end > self.max_length:
            raise ValueError(f"the decoder holds at most {self.max_length} positions; "
                             f"{start} used, {T_new} more requested")
        if self._one is not None and T_new == 1:
            logits = self._step_one_token(int(tokens[0, 0]), start)
        elif self._one is not None and T_new <= ONE_BY_ONE_MAX:
            logits = np.concatenate([self._step_one_token(int(token), start + i)
                                     for i, token in enumerate(tokens[0])], axis=1)
        elif (self._one is not None and self.threads > 1 and T_new <= PREFILL_ON_ONE_BLAS_THREAD
              and blas_can_be_held()):
            with one_blas_thread():
                logits = self._step_rows(tokens, start)
        else:
            logits = self._step_rows(tokens, start)
            if self._chooser is not None:
                self._chooser.after_blas()
        self.length = end
        return logits

    def _step_one_token(self, token: int, pos: int) -> np.ndarray:
        """Batch 1, one new token: every layer and the LM head in one numba call per thread."""
        chooser = self._chooser
        if chooser is None:
            self._team.run(_decode_token_part, token, pos)
        else:
            way = chooser.next_way()
            started = time.perf_counter()
            if way == TeamOrAlone.TEAM:
                waited = self._team.run(_decode_token_part, token, pos)
            else:
                self._team.run_alone(_decode_token_part, token, pos)
                waited = 0.0
            chooser.record(way, time.perf_counter() - started, waited)
        return self._one.logits.copy().reshape(1, 1, -1)

    def _one_token_args(self) -> tuple:
        cfg, w, buf = self.config, self.weights, self._one
        return (w.embed, w.layers, w.final_norm, w.lm_head, self.eps, self.cos, self.sin, self.k_cache_t, self.v_cache,
                cfg.num_attention_heads, cfg.num_key_value_heads, self.dtype.type(1.0 / math.sqrt(cfg.head_dim)),
                buf.x, buf.xn, buf.rstd, buf.qkv, buf.attn, buf.out, buf.gate, buf.up, buf.act, buf.logits)

    def _step_rows(self, tokens, start: int) -> np.ndarray:
        """Several new positions (a prompt) or several sequences: BLAS products over all the rows,
        then one numba call per layer for RoPE, the cache write and attention."""
        cfg, w = self.config, self.weights
        B, T_new = tokens.shape
        H, KVH, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos, sin = self.cos[start:start + T_new], self.sin[start:start + T_new]
        scale = self.dtype.type(1.0 / math.sqrt(hd))
        q_end, k_end = H * hd, (H + KVH) * hd

        x = w.embed[tokens.reshape(-1)]                                    # (N, D), N = B * T_new
        qkv = np.empty((B * T_new, (H + 2 * KVH) * hd), dtype=self.dtype)   # [q heads | k heads | v heads]
        attn = np.empty((B * T_new, H * hd), dtype=self.dtype)
        for i in range(cfg.num_hidden_layers):
            xn = self._rmsnorm(x, w.input_norm[i])
            qkv[:, :q_end] = xn @ w.wq[i].T
            qkv[:, q_end:k_end] = xn @ w.wk[i].T
            qkv[:, k_end:] = xn @ w.wv[i].T
            _rope_cache_attend(qkv.reshape(B, T_new, -1), cos, sin, self.k_cache_t[i],
                               self.v_cache[i], start, H, KVH, 0, KVH, scale, attn.reshape(B, T_new, -1))
            h = x + attn @ w.wo[i].T                                       # (N, D)
            hn = self._rmsnorm(h, w.post_norm[i])
            x = h + swiglu_forward(hn, w.w_gate[i], w.w_up[i], w.w_down[i])[0]   # the MLP kernel (N, D)
        logits = self._rmsnorm(x, w.final_norm) @ w.lm_head.T              # (N, V)
        return logits.reshape(B, T_new, -1)

    def _rmsnorm(self, x, weight):
        y = np.empty_like(x)
        _rmsnorm_forward_rows(x, weight, self.eps, y, np.empty(x.shape[0], dtype=x.dtype))
        return y


# Forward ops that no next-token forward runs (the loss, a classification head): overriding one
# (or any backward) changes no logit of model.forward_step, so FastDecoder ignores nothing there.
NOT_IN_A_NEXT_TOKEN_FORWARD = ("cross_entropy_forward", "classifier_forward")


def what_fused_decoding_ignores(model) -> str | None:
    """What is in force that FastDecoder would silently ignore, in words, or None when its logits
    are model.forward_step's: it runs its own fused loops over the base weights, so neither a
    `use_op` override of an op of the forward pass, nor LoRA adapters, nor a recording trace would
    take effect."""
    from ..backend import overrides
    from ..trace import active_trace

    replaced = sorted(name for name in overrides()
                      if name.endswith("_forward") and name not in NOT_IN_A_NEXT_TOKEN_FORWARD)
    if replaced:
        return f"the use_op override of {', '.join(replaced)}"
    if getattr(model, "lora", None) is not None:
        return "the LoRA adapters attached to the model"
    if active_trace() is not None:
        return "the trace being recorded"
    return None


def refuse_what_fused_decoding_ignores(model) -> None:
    ignored = what_fused_decoding_ignores(model)
    if ignored is not None:
        raise ValueError(f"FastDecoder would ignore {ignored}: it runs its own fused loops, not the model's "
                         f"ops. Decode with model.forward_step(tokens, model.new_kv_cache(batch_size, "
                         f"max_length)) instead (npllama.generate.generate does so by itself)")


class ModelWeights:
    """The model's arrays as the decode kernels take them: per-layer tuples of the parameters
    themselves (no copies when they are C-contiguous, as the model makes them), and `layers`,
    int64 (L, 9), the same arrays' addresses in the columns INPUT_NORM ... W_DOWN, for the
    one-token kernel (its type does not depend on L, so one compilation serves every depth)."""

    def __init__(self, model):
        p, cfg, dtype = model.params, model.config, np.dtype(model.dtype)
        self.source = dict(p)      # the array objects, to notice a parameter replaced by another
        H, KVH, hd, D, F = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                            cfg.intermediate_size)

        def checked(name, a, shape):
            # The kernel reads the layers by address with the shapes given here, and the rest
            # by the config's sizes: an array of another shape or dtype would be read as garbage
            # (or compile another step), not refused.
            if a.dtype != dtype:
                raise TypeError(f"{name} must be a {dtype} array (the model's dtype), got {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (the model's config), got {a.shape}")
            return _contiguous(a)

        def per_layer(suffix, shape):
            # These tuples also keep the arrays whose addresses `layers` holds alive: keep them.
            return tuple(checked(f"model.layers.{i}.{suffix}", p[f"model.layers.{i}.{suffix}"], shape)
                         for i in range(cfg.num_hidden_layers))

        self.input_norm = per_layer("input_layernorm.weight", (D,))
        self.post_norm = per_layer("post_attention_layernorm.weight", (D,))
        self.wq = per_layer("self_attn.q_proj.weight", (H * hd, D))
        self.wk = per_layer("self_attn.k_proj.weight", (KVH * hd, D))
        self.wv = per_layer("self_attn.v_proj.weight", (KVH * hd, D))
        self.wo = per_layer("self_attn.o_proj.weight", (D, H * hd))
        self.w_gate = per_layer("mlp.gate_proj.weight", (F, D))
        self.w_up = per_layer("mlp.up_proj.weight", (F, D))
        self.w_down = per_layer("mlp.down_proj.weight", (D, F))
        V = cfg.vocab_size
        self.embed = checked("model.embed_tokens.weight", p["model.embed_tokens.weight"], (V, D))
        self.final_norm = checked("model.norm.weight", p["model.norm.weight"], (D,))
        head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        self.lm_head = checked(head, model._lm_head_weight(), (V, D))
        self.layers = address_table(list(zip(self.input_norm, self.wq, self.wk, self.wv, self.wo, self.post_norm,
                                             self.w_gate, self.w_up, self.w_down)))
        self.layers.flags.writeable = False     # a stray write would send the kernel to any address

    def still_describes(self, model) -> bool:
        """True while every parameter is the same array object (in-place updates are seen: views)
        and none was a non-contiguous array we had to copy."""
        p = model.params
        return (p.keys() == self.source.keys() and all(p[name] is a for name, a in self.source.items())
                and all(a.flags.c_contiguous for a in self.source.values()))


_layouts = weakref.WeakKeyDictionary()   # model -> its ModelWeights


def model_weights(model) -> ModelWeights:
    """The model's ModelWeights: made at its first decode, reused while its arrays are the same."""
    try:
        cached = _layouts.get(model)
    except TypeError:                      # a model that cannot be weakly referenced: no reuse
        return ModelWeights(model)
    if cached is None or not cached.still_describes(model):
        cached = ModelWeights(model)
        _layouts[model] = cached
    return cached


def _contiguous(a):
    """a itself when C-contiguous (no copy), else a contiguous copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class _OneTokenBuffers:
    """Everything a batch-1 one-token step writes, allocated once per decoder.  x, xn and rstd
    have a row per thread (each keeps its own residual stream); the rest is shared."""

    def __init__(self, cfg, dtype, threads):
        H, KVH, hd, D, F = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                            cfg.intermediate_size)
        self.x, self.xn = np.empty((threads, D), dtype=dtype), np.empty((threads, D), dtype=dtype)
        self.rstd = np.empty(threads, dtype=dtype)
        self.qkv = np.empty((H + 2 * KVH) * hd, dtype=dtype)
        self.attn = np.empty(H * hd, dtype=dtype)
        self.out = np.empty(D, dtype=dtype)
        self.gate, self.up, self.act = (np.empty(F, dtype=dtype) for _ in range(3))
        self.logits = np.empty(cfg.vocab_size, dtype=dtype)


@njit(cache=True, error_model="numpy", nogil=True)
def _decode_token_part(t, n, flags, embed, layers, final_norm, lm_head, eps, cos, sin, k_cache_t, v_cache,
                       H, KVH, scale, x, xn, rstd, qkv, attn, out, gate, up, act, logits):
    """Thread t of n's share of one token of one sequence through every layer, the final norm
    and the LM head (llama2.c's forward(), with its matrix products split by rows).

    Each thread attends for the KV groups in its share, and computes the rows of W_q, W_k, W_v
    those groups need, so attention needs no barrier before it; every other product is split by
    rows, and a barrier follows each.  x, xn, rstd are each thread's own (row t): every thread
    keeps the residual stream whole, adding the full output of each product after its barrier.
    Shared: qkv ((H + 2 KVH) hd,) = [q | k | v], attn (H hd,), out (D,), gate, up, act (F,),
    logits (V,).  k_cache_t (L, 1, KVH, hd, max_len), v_cache (L, 1, KVH, max_len, hd).
    layers (L, 9): layer i's weights by address (ModelWeights), looked at as arrays here: w_q is
    the model's params["model.layers.{i}.self_attn.q_proj.weight"] itself (the same memory).
    Every row is summed by the same loop whatever n is (_matvec), so any n gives the same bits.
    The job (FastDecoder._step_one_token): the token and its position."""
    token, pos, epoch = job_param(flags, n, 0), job_param(flags, n, 1), job_base(flags, n)
    hd = k_cache_t.shape[3]
    n_rep = H // KVH
    D, F, V = x.shape[1], act.shape[0], logits.shape[0]
    g0, g1 = _share(KVH, t, n)                      # this thread's KV groups
    q0, q1 = g0 * n_rep * hd, g1 * n_rep * hd          # their query rows
    k0, k1 = g0 * hd, g1 * hd                          # their key and value rows
    k_base, v_base = H * hd, (H + KVH) * hd
    d0, d1 = _share(D, t, n)
    f0, f1 = _share(F, t, n)
    x_t, xn_t, rstd_t = x[t:t + 1], xn[t:t + 1], rstd[t:t + 1]
    _copy_into(x_t[0], embed[token])
    qkv3, attn3 = qkv.reshape(1, 1, -1), attn.reshape(1, 1, -1)
    like = embed                                       # matrix_at / vector_at take its dtype
    for i in range(layers.shape[0]):
        at = layers[i]                                     # layer i's weights, as arrays again:
        input_norm = vector_at(at[INPUT_NORM], D, like)    # (D,)
        post_norm = vector_at(at[POST_NORM], D, like)      # (D,)
        w_q = matrix_at(at[WQ], H * hd, D, like)           # (H hd, D)
        w_k = matrix_at(at[WK], KVH * hd, D, like)         # (KVH hd, D)
        w_v = matrix_at(at[WV], KVH * hd, D, like)         # (KVH hd, D)
        w_o = matrix_at(at[WO], D, H * hd, like)           # (D, H hd)
        w_gate = matrix_at(at[W_GATE], F, D, like)         # (F, D)
        w_up = matrix_at(at[W_UP], F, D, like)             # (F, D)
        w_down = matrix_at(at[W_DOWN], D, F, like)         # (D, F)
        # h = x + W_o attention(rope(W_q xn), rope(W_k xn), W_v xn),   xn = rmsnorm(x)
        _rmsnorm_forward_rows(x_t, input_norm, eps, xn_t, rstd_t)
        _matvec(w_q[q0:q1], xn_t[0], qkv[q0:q1])
        _matvec(w_k[k0:k1], xn_t[0], qkv[k_base + k0:k_base + k1])
        _matvec(w_v[k0:k1], xn_t[0], qkv[v_base + k0:v_base + k1])
        _rope_cache_attend(qkv3, cos[pos:pos + 1], sin[pos:pos + 1], k_cache_t[i], v_cache[i], pos, H,
                           KVH, g0, g1, scale, attn3)
        epoch = barrier(flags, t, n, epoch + 1)                  # attn complete
        _matvec(w_o[d0:d1], attn, out[d0:d1])
        epoch = barrier(flags, t, n, epoch + 1)                  # out = W_o attn complete
        _add_into(x_t[0], out)
        # x = h + W_down (silu(W_gate hn) * W_up hn),   hn = rmsnorm(h)
        _rmsnorm_forward_rows(x_t, post_norm, eps, xn_t, rstd_t)
        _matvec(w_gate[f0:f1], xn_t[0], gate[f0:f1])
        _matvec(w_up[f0:f1], xn_t[0], up[f0:f1])
        _silu_mul(gate[f0:f1], up[f0:f1], act[f0:f1])
        epoch = barrier(flags, t, n, epoch + 1)                  # act complete
        _matvec(w_down[d0:d1], act, out[d0:d1])
        epoch = barrier(flags, t, n, epoch + 1)                  # out = W_down act complete
        _add_into(x_t[0], out)
    _rmsnorm_forward_rows(x_t, final_norm, eps, xn_t, rstd_t)
    v0, v1 = _share(V, t, n)
    _matvec(lm_head[v0:v1], xn_t[0], logits[v0:v1])
    epoch = barrier(flags, t, n, epoch + 1)                        # logits complete


@njit(cache=True, error_model="numpy", nogil=True)
def _decode_helper(t, n, flags, embed, layers, final_norm, lm_head, eps, cos, sin, k_cache_t, v_cache, H, KVH,
                   scale, x, xn, rstd, qkv, attn, out, gate, up, act, logits):
    """Helper thread t's life (threads.Team): its share of every token's job, until it goes idle."""
    while True:
        job = wait_for_job(flags, t, n)
        if job < 0:
            return job
        _decode_token_part(t, n, flags, embed, layers, final_norm, lm_head, eps, cos, sin, k_cache_t, v_cache, H,
                           KVH, scale, x, xn, rstd, qkv, attn, out, gate, up, act, logits)


# Element loops, not `x[:] = y` / `x += y`: numba's array assignment and in-place operators
# check the shapes with an error message built from strings at run time, and compiling that
# machinery took 3.5 of the 18 s a cold first `generate` spent compiling (AMD EPYC).

@njit(cache=True, error_model="numpy", nogil=True)
def _copy_into(x, y):
    """x[:] = y for 1-D arrays of one length."""
    for i in range(x.shape[0]):
        x[i] = y[i]


@njit(cache=True, error_model="numpy", nogil=True)
def _add_into(x, y):
    """x += y for 1-D arrays of one length."""
    for i in range(x.shape[0]):
        x[i] += y[i]


@njit(cache=True, nogil=True)
def _share(size, t, n):
    """Thread t of n's rows [start, stop) of `size`: contiguous and nearly equal.  (No alignment:
    _matvec sums each row the same way wherever a share begins.)"""
    return size * t // n, size * (t + 1) // n


@njit(cache=True, error_model="numpy", nogil=True, fastmath=REDUCTION_FLAGS)
def _matvec(w, x, out):
    """out = w @ x for w (rows, cols) C-contiguous, on one core: two rows at a time, one from the
    first half of w and one from the second, each dot product read straight through ('reassoc'
    lets LLVM split the sums into vector lanes).

    A decode step's weights (61 MB at s15m, 167 MB at m42m) mostly come from DRAM, so what counts
    is how fast one core streams them.  Two sequential streams, half a matrix apart, read faster
    than one on the AMD EPYC with AVX-512 (Zen 5 class) of benchmarks/README.md: the whole decode
    1.09-1.13x faster at m42m and 1.00-1.11x at s15m than one row after another (medians of runs
    interleaved in fresh processes).  Neighbouring rows are not the same thing: four adjacent rows
    at a time (x loaded once for four sums) made four interleaved streams a row apart, and on an
    AMD EPYC (Zen 3) read DRAM at 5-8 GB/s a core against 9-11.5 row after row (the whole decode
    1.6x slower); on an Intel Xeon with a 105 MB L3, row after row beat it by 1.14x at s15m and
    1.07x at m42m.  Two streams half a matrix apart are not yet measured on those machines.

    Every row is summed by the same loop body, in the same lanes, wherever it falls: with an odd
    number of rows the middle row is paired with itself (its sum is written twice, the same
    value).  So a row's sum does not depend on where a thread's share begins or ends, and the
    logits are the same bits for any thread count."""
    rows, cols = w.shape
    half = (rows + 1) // 2
    for i in range(half):
        j = i + half if i + half < rows else i      # odd rows: the middle row pairs with itself
        first, second = w[i], w[j]
        sum_first = w.dtype.type(0)
        sum_second = w.dtype.type(0)
        for c in range(cols):
            sum_first += first[c] * x[c]
            sum_second += second[c] * x[c]
        out[i] = sum_first
        out[j] = sum_second


@njit(cache=True, error_model="numpy", nogil=True)
def _rope_cache_attend(qkv, cos, sin, k_cache_t, v_cache, start, H, KVH, g0, g1, scale, out):
    """For each new position t (absolute start + t) of each sequence b, for KV groups g0 <= g < g1
    and their query heads: rotate q and k, store k and v in the cache, attend causally over
    positions [0, start + t].

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
            for g in range(g0, g1):
                _rotate(qkv[b, t, k_base + g * hd:k_base + (g + 1) * hd], cos[t], sin[t], k_cache_t[b, g, :, pos])
                for i in range(hd):
                    v_cache[b, g, pos, i] = qkv[b, t, v_base + g * hd + i]
        for t in range(T_new):
            n_keys = start + t + 1   # causal: positions 0 .. start + t
            for h in range(g0 * n_rep, g1 * n_rep):
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
