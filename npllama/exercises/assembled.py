"""The exercises assembled from the ops: a LLaMA decoder block's backward, then the whole model's.

The student writes `block_backward(dout, cache)` as npllama.model has it -- the BlockCache of
block_forward in, dx and the layer's nine weight gradients (a LayerWeights, or a tuple in its
order) out -- calling the ops' own backward passes, which are the helpers this exercise allows:
the lesson is the chain rule through the residuals and the attention sub-layer, not the ops again.

For the checks the block is one op of ten differentiable inputs: `block_forward_flat(x, w_in, W_q,
W_k, W_v, W_o, w_post, W_gate, W_up, W_down, ...)`, and the student's (dx, grads) is flattened to
match (`Assembled.adapt`).
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import numpy as np

from . import checks
from .definitions import Exercise, check
from .checks import RETURN_VALUE, SEED, Case, Choice, Ints, first_parameter, expect_close
from .diagnose import CheckFailed, Finding

WEIGHTS = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm", "gate_proj",
           "up_proj", "down_proj")
# the block's weights in the order its backward reaches them (block_backward: the MLP's, then the
# attention sub-layer's; one tuple: one step gives them all).  q, k and v are one step: one
# attention backward gives dq, dk and dv from da, and none of dW_q, dW_k, dW_v is computed from
# what another is (dv from da and the probabilities, dq and dk from the scores' gradient).  x comes
# last, collecting every path
WEIGHTS_BACKWARD_ORDER = (("down_proj",), ("gate_proj", "up_proj"), ("post_attention_layernorm",), ("o_proj",),
                          ("q_proj", "k_proj", "v_proj"), ("input_layernorm",))


def block_backward_order(weight_names) -> tuple:
    """WEIGHTS_BACKWARD_ORDER with each weight by its name in weight_names (WEIGHTS' order)."""
    named = dict(zip(WEIGHTS, weight_names))
    return tuple(tuple(named[w] for w in step) for step in WEIGHTS_BACKWARD_ORDER)


def block_forward_flat(x, *weights, cos, sin, config, causal=True, key_padding_mask=None):
    """model.block_forward with the layer's weights as separate arrays (LayerWeights' order)."""
    from ..model import LayerWeights, block_forward

    return block_forward(x, LayerWeights(*weights), cos, sin, config, causal, key_padding_mask)


def adapted(backward, flatten, name: str, upstream: str = "dout"):
    """backward as the checks call it: flatten(backward, dout, cache) -> a flat tuple of gradients.
    Idempotent, so the library's reference and a student's function go through the same door.
    The checks name the upstream gradient by the wrapper's first parameter ("you changed dlogits in
    place"): it is the student's own name for it, else `upstream`, the exercise's."""
    if getattr(backward, "adapted", False):
        return backward

    def flat(dout, cache):
        return flatten(backward, dout, cache)
    flat.__name__ = getattr(backward, "__name__", name)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    first = first_parameter(backward, upstream)
    # a student who calls the first parameter cache keeps that name: the second then needs another
    second = "cache" if first != "cache" else "the_cache"
    flat.__signature__ = inspect.Signature([inspect.Parameter(first, positional),
                                            inspect.Parameter(second, positional)])
    flat.adapted = True
    return flat


def _flatten_block(backward, dout, cache):
    """(dx, LayerWeights or 9-tuple) -> one flat tuple of 10 gradients; any other shape of result
    fails the check with what the contract is."""
    result = backward(dout, cache)
    if result is None:
        return None        # call_backward asks for the return statement
    pair = isinstance(result, (tuple, list)) and len(result) == 2
    if pair and isinstance(result[1], (tuple, list)) and len(result[1]) == len(WEIGHTS):
        return (result[0], *result[1])
    if pair and isinstance(result[1], (tuple, list)):
        got = f"grads holds {len(result[1])} gradients"
    elif pair:
        got = f"grads is of type {type(result[1]).__name__}"
    elif isinstance(result, (tuple, list)):
        got = f"it returned {len(result)} values in a row"
    else:
        got = f"it returned one value, of type {type(result).__name__}"
    raise CheckFailed(Finding(
        "", f"block_backward must return (dx, grads), grads the nine weight gradients; {got}",
        hint=f"return dx, LayerWeights(...) (npllama.model), or dx and a tuple in its order: {', '.join(WEIGHTS)}",
        subject=RETURN_VALUE))


class Assembled(Exercise):
    """An exercise whose forward is a library function of many inputs, called with them spread out
    (`flat_forward`), and whose backward's result is flattened to one tuple (`flatten`)."""

    flat_forward = staticmethod(lambda *args, **kwargs: None)
    flatten = staticmethod(lambda backward, dout, cache: backward(dout, cache))

    @property
    def forward(self):
        return self.flat_forward

    @property
    def reference(self):
        import importlib

        return self.adapt(getattr(importlib.import_module(self.module), self.backward_name))

    def adapt(self, backward):
        return adapted(backward, self.flatten, self.backward_name, self.upstream)


class Block(Assembled):
    op, title, module = "block", "LLaMA decoder block (assembled from the ops)", "npllama.model"
    forward_name, backward_name, params = "block_forward", "block_backward", "dout, cache"
    derivation, article = "derivations/transformer_block.md", "§3.1 (the decoder block)"
    forward_text = """xn = rmsnorm(x; w_in)                          # 1
attn_out = attention sub-layer(xn)             # 2-5: q, k, v projections, RoPE, attention, W_o
h = x + attn_out                               # 6  the first residual
hn = rmsnorm(h; w_post)                        # 7
out = h + swiglu(hn; W_gate, W_up, W_down)     # 8-9 the second residual"""
    doc = """Gradients of one decoder block: dx and the layer's nine weight gradients.

    dout:  (B, T, D) the gradient of the loss with respect to the block's output
    cache: CACHE
    Returns (dx, grads): dx (B, T, D); grads a LayerWeights (npllama.model) of the nine weight
    gradients, or a tuple in its order: input_layernorm, q_proj, k_proj, v_proj, o_proj,
    post_attention_layernorm, gate_proj, up_proj, down_proj.
    Use the ops' backward passes (rmsnorm_backward, attention_backward, rope_backward,
    linear_backward, swiglu_backward): the lesson is how they chain.
    """
    shapes = "x, dx, out, dout (B, T, D)   q (B, H, T, hd)   k, v (B, KVH, T, hd)   weights: LayerWeights"
    allowed_imports = ("numpy, the ops' backward passes (npllama.ops.*: rmsnorm_backward, attention_backward, "
                       "rope_backward, linear_backward, swiglu_backward) and LayerWeights (npllama.model)")
    helpers = (("npllama.ops.rmsnorm", "rmsnorm_backward"), ("npllama.ops.attention", "attention_backward"),
               ("npllama.ops.rope", "rope_backward"), ("npllama.ops.linear", "linear_backward"),
               ("npllama.ops.swiglu", "swiglu_backward"), ("npllama.model", "LayerWeights"))
    space = dict(B=Ints(1, 2), T=Ints(1, 3), KVH=Ints(1, 2), n_rep=Choice((1, 2)), head_dim=Choice((2, 4)),
                 F=Ints(2, 5), causal=Choice((True, False)), seed=SEED)
    edge_cases = [dict(B=2, T=3, KVH=1, n_rep=2, head_dim=4, F=5, causal=True, seed=1),
                  dict(B=1, T=1, KVH=1, n_rep=1, head_dim=2, F=2, causal=True, seed=2),
                  dict(B=1, T=2, KVH=2, n_rep=1, head_dim=2, F=3, causal=False, seed=3)]

    flat_forward, flatten = staticmethod(block_forward_flat), staticmethod(_flatten_block)

    def build(self, params, dtype=np.float64):
        from ..config import LlamaConfig
        from ..ops.rope import rope_cos_sin

        rng = np.random.default_rng(params["seed"])
        KVH, n_rep, hd, T = params["KVH"], params["n_rep"], params["head_dim"], params["T"]
        H = KVH * n_rep
        D = H * hd
        config = LlamaConfig(vocab_size=8, hidden_size=D, intermediate_size=params["F"], num_hidden_layers=1,
                             num_attention_heads=H, num_key_value_heads=KVH, max_position_embeddings=8,
                             rms_norm_eps=1e-5)
        shapes = config.param_shapes()
        x = rng.standard_normal((params["B"], T, D)).astype(dtype)
        weights = []
        for path in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                     "mlp.down_proj"):
            shape = shapes[f"model.layers.0.{path}.weight"]
            scale = 0.5 if len(shape) == 2 else 0.2
            centre = 1.0 if len(shape) == 1 else 0.0
            weights.append((centre + scale * rng.standard_normal(shape)).astype(dtype))
        cos, sin = rope_cos_sin(np.arange(T), hd, 10000.0, dtype=dtype)
        names = ("x", "w_in", "W_q", "W_k", "W_v", "W_o", "w_post", "W_gate", "W_up", "W_down")
        summary = (f"x {x.shape}, {H} heads ({KVH} kv), head_dim {hd}, F {params['F']}, "
                   f"{'causal' if params['causal'] else 'bidirectional'}; weights of the config's shapes")
        return Case(self.forward, [x, *weights], names, tuple(range(10)), seed=params["seed"] % 1000,
                    kwargs=dict(cos=cos, sin=sin, config=config, causal=params["causal"]), summary=summary,
                    backward_order=block_backward_order(names[1:]) + ("x",))

    @check("residuals", "the output's gradient reaches x along both residual paths (dx - dout is the "
                        "two sub-layers' share)")
    def check_residuals(self, backward, params):
        """With every weight of both sub-layers' last projections zero, the block is the identity:
        out = x, so dx must equal dout exactly and W_o, W_down get dout-shaped gradients only."""
        case = self.case(params)
        zeroed = list(case.inputs)
        zeroed[5] = np.zeros_like(zeroed[5])     # W_o = 0: attn_out = 0
        zeroed[9] = np.zeros_like(zeroed[9])     # W_down = 0: mlp_out = 0
        identity = Case(case.forward, zeroed, case.input_names, case.wrt, kwargs=case.kwargs, seed=case.seed,
                        summary=case.summary)
        identity.reference = case.reference
        grads, dout, _, _ = self.gradients(backward, identity)
        expect_close(grads[0], dout, "dx", identity.describe() + ", W_o = W_down = 0",
                     what="with both sub-layers switched off the block is the identity, so dx = dout",
                     tol=1e-12, zero_label="")


# ======================================================================================================
class ModelCacheWithConfig(NamedTuple):
    """The exercise's cache: model_forward's ModelCache and the config model_backward also takes."""

    cache: object        # npllama.model.ModelCache
    config: object       # npllama.config.LlamaConfig


def model_forward_flat(*params, names, tokens, cos, sin, config, causal=True):
    """model.model_forward with the parameters as separate arrays, in config.param_shapes() order."""
    from ..model import model_forward

    logits, cache = model_forward(dict(zip(names, params)), config, tokens, cos, sin, causal, None)
    return logits, ModelCacheWithConfig(cache, config)


def _flatten_model(backward, dlogits, packed):
    """{name: grad} -> a flat tuple in the parameters' order (config.param_shapes()).  Anything but
    a dict with exactly the keys of model.params fails the check (with the keys missing and extra)."""
    grads = backward(dlogits, packed.cache, packed.config)
    if grads is None:
        return None        # call_backward asks for the return statement
    if not isinstance(grads, dict):
        raise CheckFailed(Finding(
            "", f"model_backward must return a dict (parameter name -> gradient), not a "
                     f"{type(grads).__name__}",
            hint='grads = {}; grads["model.norm.weight"] = ...; return grads -- the keys of model.params',
            subject=RETURN_VALUE))
    names = list(packed.config.param_shapes())
    missing = [n for n in names if n not in grads]
    extra = [k for k in grads if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} of {len(names)}: {_some(missing)}")
        if extra:
            parts.append(f"unexpected: {_some(extra)}")
        tied = "" if "lm_head.weight" in names else (
            "; the embeddings are tied here, so there is no lm_head.weight: its gradient adds into "
            "model.embed_tokens.weight")
        raise CheckFailed(Finding(
            "", f"the dict must have exactly the keys of model.params; {'; '.join(parts)}",
            hint=f"spell the keys as model.params does (Hugging Face's names, e.g. {names[0]!r}){tied}",
            subject=RETURN_VALUE))
    return tuple(grads[n] for n in names)


def _some(keys, shown=4) -> str:
    text = ", ".join(repr(k) for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


class Model(Assembled):
    op, title, module = "model", "whole LLaMA model (assembled from the blocks)", "npllama.model"
    forward_name, backward_name, params = "model_forward", "model_backward", "dlogits, cache, config"
    derivation, article = "derivations/transformer_block.md", "§3.1 (the decoder-only stack)"
    forward_text = """x = E[tokens]                                  # the embedding
x = block_l(x) for l = 0 .. L-1                # the decoder blocks
hidden = rmsnorm(x; w_norm)
logits = hidden @ W_lm.T                       # W_lm = E when tie_word_embeddings"""
    _doc = """Every parameter's gradient, given dL/dlogits.

    dlogits: (B, T, V) the gradient of the loss with respect to the logits
    cache:   MODEL_CACHE
    config:  the LlamaConfig (num_hidden_layers, tie_word_embeddings, ...)
    Returns a dict: Hugging Face parameter name -> gradient, exactly the keys of model.params
    ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", ..., "model.norm.weight",
    and "lm_head.weight" unless the embeddings are tied: then E gets both gradients).
    Use block_backward (npllama.model: the previous exercise) and the ops' backward passes:
    block_backward(dx, cache.layers[i]) returns (dx, LayerWeights), its nine gradients in the
    order of LAYER_PATHS, so layer i's keys are f"model.layers.{i}.{path}.weight" for path in
    LAYER_PATHS:
        LAYER_PATHS_VALUE
    """

    @property
    def doc(self):
        """_doc with LAYER_PATHS, ModelCache's fields and EmbeddingCache's quoted from where they
        are defined: written out by hand they would drift."""
        import textwrap

        from ..model import LAYER_PATHS, ModelCache
        from ..ops.embedding import EmbeddingCache
        from .starter import field_cache_described, fields_described

        # one path a line would be nine lines: wrapped at the docstring's width, aligned after "("
        paths = textwrap.fill(repr(tuple(LAYER_PATHS)), 91, subsequent_indent=" ").replace("\n", "\n" + " " * 8)
        cache = (["a ModelCache, the named tuple model_forward returns (npllama.model):"] + fields_described(ModelCache)
                 + field_cache_described("embed_tokens", EmbeddingCache, " (npllama.ops.embedding)"))
        return (self._doc.replace("MODEL_CACHE", ("\n" + " " * 13).join(cache))
                .replace("LAYER_PATHS_VALUE", paths))

    shapes = "tokens (B, T)   logits, dlogits (B, T, V)   E (V, D)   every layer as in the block exercise"
    allowed_imports = ("numpy, block_backward and LAYER_PATHS (npllama.model), rmsnorm_backward, linear_backward, "
                       "embedding_backward (npllama.ops.*)")
    helpers = (("npllama.model", "block_backward"), ("npllama.model", "LAYER_PATHS"),
               ("npllama.ops.rmsnorm", "rmsnorm_backward"), ("npllama.ops.linear", "linear_backward"),
               ("npllama.ops.embedding", "embedding_backward"))
    space = dict(layers=Ints(1, 2), B=Ints(1, 2), T=Ints(1, 3), tied=Choice((False, True)), seed=SEED)
    edge_cases = [dict(layers=2, B=2, T=3, tied=False, seed=1),
                  dict(layers=1, B=1, T=2, tied=True, seed=2)]

    flat_forward, flatten = staticmethod(model_forward_flat), staticmethod(_flatten_model)

    def students_cache(self, cache):
        return cache.cache   # (the ModelCacheWithConfig's config is model_backward's third argument)

    def check_returns(self, backward, params):
        # the student's function gets the ModelCacheWithConfig's fields as two arguments: a changed
        # entry is cache.norm.x, not cache.cache.norm.x
        checks.check_returns(backward, self.case(params), spread=ModelCacheWithConfig._fields)

    def build(self, params, dtype=np.float64):
        from ..config import LlamaConfig
        from ..model import LAYER_PATHS
        from ..ops.rope import rope_cos_sin

        rng = np.random.default_rng(params["seed"])
        config = LlamaConfig(vocab_size=7, hidden_size=4, intermediate_size=6, num_hidden_layers=params["layers"],
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8,
                             rms_norm_eps=1e-5, tie_word_embeddings=params["tied"])
        shapes = config.param_shapes()
        arrays = [((1.0 if len(s) == 1 else 0.0) + (0.2 if len(s) == 1 else 0.6) * rng.standard_normal(s)).astype(dtype)
                  for s in shapes.values()]
        T = params["T"]
        tokens = rng.integers(0, config.vocab_size, size=(params["B"], T))
        cos, sin = rope_cos_sin(np.arange(T), config.head_dim, 10000.0, dtype=dtype)
        names = tuple(shapes)
        # the head, the final norm, the layers last to first; E last: the lookup's gradient is the
        # last thing the backward computes (and, tied, it also collects the head's)
        head = () if config.tie_word_embeddings else ("lm_head.weight",)
        layers = tuple(step for i in reversed(range(config.num_hidden_layers))
                       for step in block_backward_order([f"model.layers.{i}.{path}.weight" for path in LAYER_PATHS]))
        order = head + ("model.norm.weight",) + layers + ("model.embed_tokens.weight",)
        summary = (f"tokens {tokens.shape}, {config.num_hidden_layers} layer(s), vocab {config.vocab_size}, "
                   f"D {config.hidden_size}, F {config.intermediate_size}, {config.num_attention_heads} heads "
                   f"({config.num_key_value_heads} kv), {'tied' if params['tied'] else 'untied'} embeddings")
        return Case(self.forward, arrays, names, tuple(range(len(names))), seed=params["seed"] % 1000,
                    kwargs=dict(names=names, tokens=tokens, cos=cos, sin=sin, config=config), summary=summary,
                    backward_order=order)
