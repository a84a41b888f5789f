"""Bad input everywhere: one table for the library, one for the command line.

Library calls must raise ValueError or TypeError (FileNotFoundError for a missing path, the
documented CheckpointError for a bad checkpoint) with a message that names the argument; each row
says which call, which error, and the words (literally, not a regex) the message must contain.  Command-line mistakes must
end with exit status 2 and one readable line on stderr -- no traceback.
"""
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from npllama import LlamaConfig, use_backend
from npllama.backend import set_backend
from npllama.chat import ChatTemplate
from npllama.classify import load_classifier
from npllama.cli import COMMANDS, main
from npllama.config import MAX_HIDDEN_LAYERS, MAX_POSITION_EMBEDDINGS
from npllama.data import BatchLoader, evaluation_batches, load_texts, tokenize_corpus, train_val_split
from npllama.generate import generate, generate_text, sample_next
from npllama.gradcheck import check_op, gradcheck
from npllama.io import (CheckpointError, atomic_directory, atomic_open, atomic_write_text, load_hf_folder,
                        read_safetensors, save_hf_folder, write_safetensors)
from npllama.io.train_state import load_checkpoint, save_checkpoint
from npllama.model import Llama
from npllama.ops import (attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
                         embedding_backward, embedding_forward, layernorm_forward, linear_backward,
                         linear_forward, rmsnorm_backward, rmsnorm_forward, rope_backward, rope_cos_sin,
                         rope_forward, softmax_backward, softmax_forward, swiglu_backward, swiglu_forward)
from npllama.lora import attach_lora
from npllama.optim import SGD, AdamW, clip_grad_norm, cosine_with_warmup, get_schedule, global_grad_norm
from npllama.perplexity import perplexity
from npllama.runs import find_tokenizer, resolve_model_dir
from npllama.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


# ----- what the rows call ----------------------------------------------------------------------------

CONFIG = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=8)


@cache
def model():
    return Llama(LlamaConfig(**CONFIG), seed=0, dtype=np.float64)


TOKENS = np.array([[1, 2, 3]])
X = np.ones((2, 3, 8))
W = np.ones((4, 8))
Q, K = np.ones((1, 2, 3, 4)), np.ones((1, 1, 3, 4))
COS, SIN = rope_cos_sin(np.arange(3), 4, 10000.0)


def cache_of(forward, *args):
    return forward(*args)[1]


def params():
    return {"w": np.ones((2, 3)), "b": np.ones(3)}


def grads(**changes):
    return {**{"w": np.ones((2, 3)), "b": np.ones(3)}, **changes}


@cache
def tmp():
    """One scratch folder for the table's rows (built at collection, before fixtures exist),
    removed when the test process ends."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="npllama-bad-input-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def tokenizer():
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    return Tokenizer.train(make_default_corpus(200), tmp() / "tok", 360)


def file_with(name, data: bytes) -> Path:
    path = tmp() / name
    path.write_bytes(data)
    return path


def ids(n=100):
    return np.arange(n, dtype=np.int64) % 7


def sum_of(a):
    return float(a.sum())


E = (ValueError, TypeError)

LIBRARY = [
    # ----- config
    ("config: vocab_size 0", lambda: LlamaConfig(**{**CONFIG, "vocab_size": 0}), E, "vocab_size"),
    ("config: hidden_size negative", lambda: LlamaConfig(**{**CONFIG, "hidden_size": -8}), E, "hidden_size"),
    ("config: hidden_size float", lambda: LlamaConfig(**{**CONFIG, "hidden_size": 8.0}), E, "hidden_size"),
    ("config: layers as str", lambda: LlamaConfig(**{**CONFIG, "num_hidden_layers": "1"}), E, "num_hidden_layers"),
    ("config: heads do not divide", lambda: LlamaConfig(**{**CONFIG, "num_attention_heads": 3}), E,
     "num_attention_heads"),
    ("config: kv heads do not divide", lambda: LlamaConfig(**{**CONFIG, "num_key_value_heads": 3}), E,
     "num_key_value_heads"),
    ("config: odd head_dim", lambda: LlamaConfig(**{**CONFIG, "head_dim": 3}), E, "head_dim"),
    ("config: eps 0", lambda: LlamaConfig(**{**CONFIG, "rms_norm_eps": 0.0}), E, "rms_norm_eps"),
    ("config: eps NaN", lambda: LlamaConfig(**{**CONFIG, "rms_norm_eps": float("nan")}), E, "rms_norm_eps"),
    ("config: rope_theta negative", lambda: LlamaConfig(**{**CONFIG, "rope_theta": -1.0}), E, "rope_theta"),
    ("config: unknown rope type", lambda: LlamaConfig(**{**CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 2}}),
     E, "rope_scaling"),
    ("config: llama3 rope incomplete", lambda: LlamaConfig(**{**CONFIG, "rope_scaling": {"rope_type": "llama3",
                                                                                         "factor": 8.0}}),
     E, "low_freq_factor"),
    ("config: tie flag as str", lambda: LlamaConfig(**{**CONFIG, "tie_word_embeddings": "no"}), E,
     "tie_word_embeddings"),
    ("config: bos id outside vocab", lambda: LlamaConfig(**{**CONFIG, "bos_token_id": 11}), E, "bos_token_id"),
    ("config: absurd context", lambda: LlamaConfig(**{**CONFIG, "max_position_embeddings": MAX_POSITION_EMBEDDINGS + 1}),
     E, "max_position_embeddings"),
    ("config: absurd size", lambda: LlamaConfig(**{**CONFIG, "vocab_size": 10**12}), E, "parameters"),
    ("config: absurd depth", lambda: LlamaConfig(**{**CONFIG, "num_hidden_layers": MAX_HIDDEN_LAYERS + 1}), E,
     "num_hidden_layers must be at most"),
    ("config: unknown preset", lambda: LlamaConfig.from_preset("huge"), E, "unknown preset 'huge'"),
    ("config: preset a list", lambda: LlamaConfig.from_preset(["tiny"]), E, "unknown preset ['tiny']; choose one of: tiny"),
    ("config: from_dict of a list", lambda: LlamaConfig.from_dict([]), E, "config must be a dict"),
    ("config: from_dict missing fields", lambda: LlamaConfig.from_dict({"vocab_size": 5}), E, "missing required"),
    ("config: from_dict gpt2", lambda: LlamaConfig.from_dict({**LlamaConfig(**CONFIG).to_dict(), "model_type": "gpt2"}),
     E, "model_type"),
    ("config: architectures not a list", lambda: LlamaConfig.from_dict({**LlamaConfig(**CONFIG).to_dict(),
                                                                         "architectures": "LlamaForCausalLM"}),
     E, "architectures"),
    # ----- the model
    ("Llama: config not a LlamaConfig", lambda: Llama(CONFIG), E, "config must be a LlamaConfig"),
    ("Llama: float16", lambda: Llama(LlamaConfig(**CONFIG), dtype=np.float16), E, "dtype"),
    ("Llama: seed str", lambda: Llama(LlamaConfig(**CONFIG), seed="0"), E, "seed"),
    ("Llama: seed negative", lambda: Llama(LlamaConfig(**CONFIG), seed=-1), E, "seed must be a non-negative int"),
    ("Llama: params missing one", lambda: Llama(LlamaConfig(**CONFIG), params={}), E,
     "params is missing 'model.embed_tokens.weight'"),
    ("Llama: params of another dtype", lambda: Llama(LlamaConfig(**CONFIG), dtype=np.float32, params=model().params), E,
     "has dtype float64, expected the model's dtype float32"),
    ("forward_with_caches: causal a str", lambda: model().forward_with_caches(TOKENS, causal="False"), E,
     "causal must be True or False, got 'False'"),
    ("forward: ragged list", lambda: model().forward([[1, 2], [3]]), E, "tokens must be a rectangular (batch, seq_len)"),
    ("loss: ragged targets", lambda: model().loss(TOKENS, [[1, 2], [3]]), E, "targets must be a rectangular"),
    ("forward: float tokens", lambda: model().forward(TOKENS.astype(float)), E, "tokens must be integers"),
    ("forward: 1-D tokens", lambda: model().forward(TOKENS[0]), E, "tokens must have shape"),
    ("forward: 3-D tokens", lambda: model().forward(TOKENS[None]), E, "tokens must have shape"),
    ("forward: empty tokens", lambda: model().forward(np.zeros((1, 0), int)), E, "tokens must not be empty"),
    ("forward: id = vocab", lambda: model().forward(np.array([[1, 11]])), E, "tokens contains id 11"),
    ("forward: negative id", lambda: model().forward(np.array([[-1, 2]])), E, "tokens contains id -1"),
    ("forward: longer than the context", lambda: model().forward(np.ones((1, 9), int)), E,
     "max_position_embeddings"),
    ("forward: mask of another shape", lambda: model().forward(TOKENS, attention_mask=np.ones((1, 4))), E,
     "attention_mask"),
    ("forward: mask of 2s", lambda: model().forward(TOKENS, attention_mask=np.full((1, 3), 2)), E, "attention_mask"),
    ("loss_and_grads: targets of another shape", lambda: model().loss_and_grads(TOKENS, np.ones((1, 4), int)), E,
     "targets"),
    ("loss_and_grads: float targets", lambda: model().loss_and_grads(TOKENS, np.ones((1, 3))), E, "targets"),
    ("loss_and_grads: target = vocab", lambda: model().loss_and_grads(TOKENS, np.array([[1, 2, 11]])), E,
     "targets contains 11"),
    ("loss: negative target", lambda: model().loss(TOKENS, np.array([[1, 2, -5]])), E, "targets contains -5"),
    ("backward: dlogits of another shape", lambda: model().backward(np.ones((1, 3, 5)), model().forward_with_caches(TOKENS)[1]),
     E, "dlogits"),
    ("new_kv_cache: batch 0", lambda: model().new_kv_cache(0), E, "batch_size"),
    ("new_kv_cache: batch True", lambda: model().new_kv_cache(True), E, "batch_size"),
    ("new_kv_cache: past the context", lambda: model().new_kv_cache(1, 100), E, "max_length"),
    ("new_kv_cache: max_length 0", lambda: model().new_kv_cache(1, 0), E, "max_length must be a positive int, got 0"),
    ("forward_step: not a cache", lambda: model().forward_step(TOKENS, None), E, "kv_cache must be a KVCache"),
    ("forward_step: another model's cache", lambda: model().forward_step(TOKENS, Llama(LlamaConfig(**CONFIG)).new_kv_cache(1)),
     E, "kv_cache was made for another model: it holds float32 keys"),
    ("backward: caches not a ModelCache", lambda: model().backward(np.ones((1, 3, 11)), None), E,
     "caches must be the ModelCache"),
    ("backward: dlogits a list", lambda: model().backward(np.ones((1, 3, 11)).tolist(), model().forward_with_caches(TOKENS)[1]),
     E, "dlogits must be a numpy array"),
    ("backward: dlogits float32 on a float64 model",
     lambda: model().backward(np.ones((1, 3, 11), np.float32), model().forward_with_caches(TOKENS)[1]), E,
     "dlogits has dtype float32, expected the model's dtype float64"),
    ("hidden_backward: dhidden of another shape",
     lambda: model().hidden_backward(np.ones((1, 3, 5)), model().hidden_forward(TOKENS)[1]), E, "dhidden has shape"),
    ("forward_step: batch mismatch", lambda: model().forward_step(TOKENS, model().new_kv_cache(2)), E, "batch size"),
    ("forward_step: cache overflow", lambda: model().forward_step(np.ones((1, 3), int), model().new_kv_cache(1, 2)),
     E, "KV cache"),
    ("from_pretrained: missing folder", lambda: Llama.from_pretrained(tmp() / "nowhere"), FileNotFoundError,
     "is not a folder"),
    ("from_pretrained: float16", lambda: Llama.from_pretrained(tmp(), dtype=np.float16), E, "dtype"),
    ("from_pretrained: None", lambda: Llama.from_pretrained(None), E, "path must be a model folder, llama2.c .bin file or GGUF file"),
    ("save_pretrained: None", lambda: model().save_pretrained(None), E, "path must be the folder to write"),
    # ----- generate
    ("generate: text prompt", lambda: generate(model(), "hello", 2), E, "prompt must be token ids"),
    ("generate: empty prompt", lambda: generate(model(), [], 2), E, "prompt must hold at least one"),
    ("generate: nested prompt", lambda: generate(model(), [[[1]]], 2), E, "prompt[0] must hold integer token ids"),
    ("generate: mixed batch", lambda: generate(model(), [[1], 2], 2), E, "prompt mixes token ids and lists of them"),
    ("generate: id outside vocab", lambda: generate(model(), [1, 11], 2), E, "prompt holds token id 11"),
    ("generate: float id", lambda: generate(model(), [1.5], 2), E, "prompt"),
    ("generate: prompt longer than the context", lambda: generate(model(), [1] * 9, 1), E, "max_position_embeddings"),
    ("generate: max_new_tokens 0", lambda: generate(model(), [1], 0), E, "max_new_tokens"),
    ("generate: max_new_tokens negative", lambda: generate(model(), [1], -3), E, "max_new_tokens"),
    ("generate: max_new_tokens float", lambda: generate(model(), [1], 2.5), E, "max_new_tokens"),
    ("generate: max_new_tokens True", lambda: generate(model(), [1], True), E, "max_new_tokens"),
    ("generate: past max_position_embeddings", lambda: generate(model(), [1, 2], 7), E, "max_position_embeddings"),
    ("generate: temperature negative", lambda: generate(model(), [1], 2, temperature=-1.0), E, "temperature"),
    ("generate: temperature NaN", lambda: generate(model(), [1], 2, temperature=float("nan")), E, "temperature"),
    ("generate: temperature inf", lambda: generate(model(), [1], 2, temperature=float("inf")), E, "temperature"),
    ("generate: temperature str", lambda: generate(model(), [1], 2, temperature="hot"), E, "temperature"),
    ("generate: top_k negative", lambda: generate(model(), [1], 2, top_k=-1), E, "top_k"),
    ("generate: top_k float", lambda: generate(model(), [1], 2, top_k=1.5), E, "top_k"),
    ("generate: top_p 0", lambda: generate(model(), [1], 2, top_p=0.0), E, "top_p"),
    ("generate: top_p above 1", lambda: generate(model(), [1], 2, top_p=1.5), E, "top_p"),
    ("generate: negative seed", lambda: generate(model(), [1], 2, seed=-1), E, "seed"),
    ("generate: eos_id str", lambda: generate(model(), [1], 2, eos_id="</s>"), E, "eos_id"),
    ("generate: on_token not callable", lambda: generate(model(), [1], 2, on_token=5), E, "on_token"),
    ("load_classifier: an int path", lambda: load_classifier(3), E, "path must be a classifier folder or run"),
    ("load_classifier: an int adapter", lambda: load_classifier("base", adapter=3), E,
     "adapter must be a LoRA adapter folder"),
    ("ChatTemplate.for_folder: an int folder", lambda: ChatTemplate.for_folder(3), E,
     "folder must be a model folder"),
    ("ChatTemplate.for_folder: an int adapter", lambda: ChatTemplate.for_folder("base", adapter=3), E,
     "adapter must be a LoRA adapter folder"),
    ("generate_text: an int prompt", lambda: generate_text(model(), tokenizer(), 3, 2), E,
     "prompt must be a str or a non-empty list of str, got 3"),
    ("generate_text: a tokenizer with more ids than the model", lambda: generate_text(model(), tokenizer(), "Once", 2), E,
     "has vocab_size 360 but the model has vocab_size 11"),
    ("perplexity: a tokenizer with more ids than the model", lambda: perplexity(model(), tokenizer(), "Once upon"), E,
     "has vocab_size 360 but the model has vocab_size 11"),
    ("attach_lora: seed negative", lambda: attach_lora(Llama(LlamaConfig(**CONFIG)), r=2, seed=-1), E,
     "seed must be a non-negative int, got -1"),
    ("sample_next: 2-D logits", lambda: sample_next(np.ones((2, 3)), 1.0, None, None, np.random.default_rng()), E,
     "logits"),
    ("sample_next: NaN logits", lambda: sample_next(np.array([0.0, np.nan]), 1.0, None, None, np.random.default_rng()),
     E, "logits"),
    ("sample_next: no generator", lambda: sample_next(np.ones(3), 1.0, None, None, 0), E, "rng"),
    ("sample_next: +inf logits", lambda: sample_next(np.array([0.0, np.inf]), 1.0, None, None, np.random.default_rng()),
     E, "finite or -inf"),
    ("sample_next: every logit -inf", lambda: sample_next(np.array([-np.inf, 0.0]), 1.0, None, None,
                                                           np.random.default_rng(), vocab_size=1), E, "all -inf"),
    ("sample_next: vocab_size -1 (would drop the last id)", lambda: sample_next(np.ones(3), 1.0, None, None,
                                                                                 np.random.default_rng(), vocab_size=-1),
     E, "vocab_size must be None or an int in [1, 3]"),
    ("sample_next: vocab_size past the logits", lambda: sample_next(np.ones(3), 1.0, None, None,
                                                                    np.random.default_rng(), vocab_size=4), E, "vocab_size"),
    ("sample_next: a negative previous id (would penalise the last id)",
     lambda: sample_next(np.ones(3), 1.0, None, None, np.random.default_rng(), repetition_penalty=2.0, previous=[-1]),
     E, "previous must be a sequence of token ids"),
    # ----- ops (the NumPy reference)
    ("linear: int x", lambda: linear_forward(X.astype(int), W), E, "x must be float32 or float64"),
    ("linear: mixed dtypes", lambda: linear_forward(X.astype(np.float32), W), E, "dtypes must match"),
    ("linear: in_features mismatch", lambda: linear_forward(X, np.ones((4, 5))), E, "x has last dimension 8"),
    ("linear: weight 1-D", lambda: linear_forward(X, np.ones(8)), E, "weight must have 2"),
    ("linear_backward: dy of another shape", lambda: linear_backward(np.ones((2, 3, 5)), cache_of(linear_forward, X, W)),
     E, "dy"),
    ("rmsnorm: weight 2-D", lambda: rmsnorm_forward(X, np.ones((1, 8)), 1e-5), E, "weight must have 1"),
    ("rmsnorm: eps negative", lambda: rmsnorm_forward(X, np.ones(8), -1.0), E, "eps"),
    ("rmsnorm: eps str", lambda: rmsnorm_forward(X, np.ones(8), "1e-5"), E, "eps"),
    ("rmsnorm_backward: dy of another shape",
     lambda: rmsnorm_backward(np.ones((2, 3, 5)), cache_of(rmsnorm_forward, X, np.ones(8), 1e-5)), E, "dy has shape"),
    ("layernorm: bias of another size", lambda: layernorm_forward(X, np.ones(8), np.ones(7), 1e-5), E, "bias"),
    ("embedding: float tokens", lambda: embedding_forward(np.ones((2, 3)), np.ones((5, 8))), E, "tokens"),
    ("embedding: id outside vocab", lambda: embedding_forward(np.array([[5]]), np.ones((5, 8))), E, "tokens contains id 5"),
    ("embedding_backward: dout of another shape",
     lambda: embedding_backward(np.ones((1, 1, 3)), cache_of(embedding_forward, np.array([[1]]), np.ones((5, 8)))), E,
     "dout has shape"),
    ("softmax: int x", lambda: softmax_forward(np.ones((2, 3), int)), E, "x must be float"),
    ("softmax: NaN", lambda: softmax_forward(np.array([np.nan, 0.0])), E, "NaN"),
    ("softmax_backward: dp of another shape", lambda: softmax_backward(np.ones(5), cache_of(softmax_forward, np.ones(3))),
     E, "dp has shape"),
    ("cross_entropy: targets of another shape", lambda: cross_entropy_forward(np.ones((2, 5)), np.zeros(3, int)), E,
     "targets has shape"),
    ("cross_entropy: float targets", lambda: cross_entropy_forward(np.ones((2, 5)), np.zeros(2)), E, "targets"),
    ("cross_entropy: ignore_index float", lambda: cross_entropy_forward(np.ones((2, 5)), np.zeros(2, int), -100.0), E,
     "ignore_index"),
    ("cross_entropy_backward: dloss not scalar",
     lambda: cross_entropy_backward(np.ones(2), cache_of(cross_entropy_forward, np.ones((2, 5)), np.zeros(2, int))), E,
     "dloss"),
    ("rope: cos of another length", lambda: rope_forward(Q, COS[:2], SIN[:2]), E, "cos"),
    ("rope: odd head_dim", lambda: rope_cos_sin(np.arange(3), 5, 10000.0), E, "head_dim"),
    ("rope: float positions", lambda: rope_cos_sin(np.arange(3.0), 4, 10000.0), E, "positions"),
    ("rope_backward: dy of another shape", lambda: rope_backward(np.ones((1, 2, 3, 6)), cache_of(rope_forward, Q, COS, SIN)),
     E, "dy"),
    ("attention: heads not a multiple", lambda: attention_forward(np.ones((1, 3, 3, 4)), np.ones((1, 2, 3, 4)),
                                                                  np.ones((1, 2, 3, 4))), E, "multiple"),
    ("attention: v of another shape", lambda: attention_forward(Q, K, np.ones((1, 1, 2, 4))), E, "v must have the shape"),
    ("attention: negative q_offset", lambda: attention_forward(Q, K, K, q_offset=-1), E, "q_offset"),
    ("attention: float padding mask", lambda: attention_forward(Q, K, K, key_padding_mask=np.ones((1, 3))), E,
     "key_padding_mask"),
    ("attention_backward: dout of another shape",
     lambda: attention_backward(np.ones((1, 2, 3, 5)), cache_of(attention_forward, Q, K, K)), E, "dout"),
    ("swiglu: w_down of the wrong shape", lambda: swiglu_forward(X, np.ones((6, 8)), np.ones((6, 8)), np.ones((6, 8))),
     E, "w_down"),
    ("swiglu_backward: dout of another shape",
     lambda: swiglu_backward(np.ones((2, 3, 5)), cache_of(swiglu_forward, X, np.ones((6, 8)), np.ones((6, 8)),
                                                          np.ones((8, 6)))), E, "dout"),
    # ----- gradcheck
    ("gradcheck: float32 input", lambda: gradcheck(sum_of, [np.ones(3, np.float32)], [np.ones(3)]), E, "float64"),
    ("gradcheck: list input", lambda: gradcheck(sum_of, [[1.0, 2.0]], [np.ones(2)]), E,
     "floating-point numpy array, got list: pass np.asarray(input0, dtype=np.float64)"),
    ("gradcheck: gradient of another shape", lambda: gradcheck(sum_of, [np.ones(3)], [np.ones(4)]), E,
     "gradient for 'input0' has shape"),
    ("gradcheck: names of another length", lambda: gradcheck(sum_of, [np.ones(3)], [np.ones(3)], names=["a", "b"]), E,
     "names"),
    ("gradcheck: dict inputs, list grads", lambda: gradcheck(sum_of, {"a": np.ones(3)}, [np.ones(3)]), E,
     "grads must be a mapping"),
    ("gradcheck: eps 0", lambda: gradcheck(sum_of, [np.ones(3)], [np.ones(3)], eps=0.0), E, "eps"),
    ("gradcheck: negative max_entries", lambda: gradcheck(sum_of, [np.ones(30)], [np.ones(30)], max_entries=-1), E,
     "max_entries"),
    ("gradcheck: fn not callable", lambda: gradcheck(5, [np.ones(3)], [np.ones(3)]), E, "fn"),
    ("check_op: backward returns too few", lambda: check_op(linear_forward, lambda d, c: linear_backward(d, c)[0],
                                                            [X, W]), E, "backward returned 1 gradient(s)"),
    # the mistakes a user checking their own layer makes: each message says which input and what to do
    ("check_op: gradients out of order (b's before W's)", lambda: check_op(
        lambda x, w, b: (x @ w + b, (x, w)), lambda d, c: (d @ c[1].T, d.sum(0), c[0].T @ d),
        [np.ones((4, 3)), np.ones((3, 5)), np.ones(5)], names=["x", "W", "b"]), E,
     "(5,) is the shape of 'b': backward returns the gradients in the forward's order ('x', 'W', 'b')"),
    ("gradcheck: grads out of order", lambda: gradcheck(lambda a, b: float(np.sum(a) + np.sum(b)),
                                                        [np.ones(2), np.ones(3)], [np.ones(3), np.ones(2)]), E,
     "(3,) is the shape of 'input1': grads are in the order of inputs"),
    ("check_op: an index array in wrt", lambda: check_op(lambda x, t: (x[t], (x, t)), lambda d, c: (d,),
                                                         [np.ones(3), np.arange(2)], names=["x", "t"], wrt=[0, 1]), E,
     "wrt lists 't', an int64 array: an index array or a mask has no gradient; leave it out of wrt"),
    ("check_op: a mask in wrt", lambda: check_op(lambda x, m: (x * m, (x, m)), lambda d, c: (d * c[1], d),
                                                  [np.ones(3), np.array([True, False, True])], names=["x", "m"],
                                                  wrt=[0, 1]), E,
     "wrt lists 'm', a bool array: an index array or a mask has no gradient"),
    # a transposed gradient whose shape happens to be another input's: not only "out of order"
    ("check_op: a transposed gradient of another input's shape", lambda: check_op(
        lambda x, w: (x @ w, (x, w)), lambda d, c: (d @ c[1].T, (c[0].T @ d).T), [np.ones((3, 5)), np.ones((5, 3))],
        names=["x", "W"]), E,
     "(3, 5) is the shape of 'W' transposed, and of 'x': a transposed gradient, or backward returns the gradients "
     "in the forward's order ('x', 'W')"),
    ("check_op: a number as a parameter, its gradient returned", lambda: check_op(
        lambda s, x: (s * x, (s, x)), lambda d, c: (np.sum(d * c[1]), d * c[0]), [1.5, np.ones(3)], names=["s", "x"]),
     E, "left out as not floating-point arrays: 's' is a float: pass np.array(s, dtype=np.float64) to check it"),
    ("check_op: only a number to differentiate", lambda: check_op(lambda s: (s * np.ones(3), s), lambda d, s: d.sum(),
                                                                  [1.5], names=["s"]), E,
     "'s' is a float: pass np.array(s, dtype=np.float64) to check it"),
    ("gradcheck: a numpy scalar input", lambda: gradcheck(lambda s: float(s) ** 2, [np.float64(1.5)], [3.0]), E,
     "the checker moves its entries in place: pass a 0-d array, np.array(1.5)"),
    ("check_op: wrt by name with inputs a list", lambda: check_op(
        lambda x, w: (x @ w, (x, w)), lambda d, c: c[0].T @ d, [np.ones((2, 3)), np.ones((3, 4))], names=["x", "W"],
        wrt=["W"]), E, "wrt lists inputs by index when inputs is a list: wrt=[1]"),
    ("gradcheck: grads keyed otherwise", lambda: gradcheck(sum_of, {"a": np.ones(3)}, {"A": np.ones(3)}), E,
     "grads is missing entries for: ['a'] (its keys: ['A'])"),
    # ----- optim
    ("AdamW: empty params", lambda: AdamW({}), E, "params is empty"),
    ("AdamW: int params", lambda: AdamW({"w": np.ones(3, int)}), E, "params['w']"),
    ("AdamW: negative lr", lambda: AdamW(params(), lr=-1.0), E, "lr"),
    ("AdamW: NaN lr", lambda: AdamW(params(), lr=float("nan")), E, "lr"),
    ("AdamW: lr str", lambda: AdamW(params(), lr="3e-4"), E, "lr"),
    ("AdamW: beta1 above 1", lambda: AdamW(params(), betas=(1.5, 0.9)), E, "betas[0]"),
    ("AdamW: one beta", lambda: AdamW(params(), betas=(0.9,)), E, "betas"),
    ("AdamW: negative eps", lambda: AdamW(params(), eps=-1.0), E, "eps"),
    ("AdamW: eps 0 (a zero gradient would give 0/0)", lambda: AdamW(params(), eps=0.0), E, "eps must be > 0.0, got 0.0"),
    ("AdamW.load_state_dict: eps 0", lambda: AdamW(params()).load_state_dict(
        {**AdamW(params()).state_dict(), "hyperparams": {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 0.0,
                                                          "weight_decay": 0.0}}), E, "state['hyperparams']['eps'] must be > 0.0"),
    ("AdamW: negative weight decay", lambda: AdamW(params(), weight_decay=-0.1), E, "weight_decay"),
    ("AdamW: no_decay not callable", lambda: AdamW(params(), no_decay=5), E, "no_decay"),
    ("AdamW.step: missing gradient", lambda: AdamW(params()).step({"w": np.ones((2, 3))}), E, "grads is missing key 'b'"),
    ("AdamW.step: gradient of another shape", lambda: AdamW(params()).step(grads(w=np.ones((3, 2)))), E,
     "grads['w'] has shape"),
    ("AdamW.step: gradient of another dtype", lambda: AdamW(params()).step(grads(w=np.ones((2, 3), np.float32))), E,
     "dtype"),
    ("AdamW.step: NaN gradient", lambda: AdamW(params()).step(grads(b=np.array([1.0, np.nan, 1.0]))), E,
     "'b' (1 non-finite)"),
    ("AdamW.step: negative lr", lambda: AdamW(params()).step(grads(), lr=-1.0), E, "lr"),
    ("AdamW.load_state_dict: empty", lambda: AdamW(params()).load_state_dict({}), E, "state"),
    ("SGD: negative momentum", lambda: SGD(params(), lr=0.1, momentum=-1.0), E, "momentum"),
    ("cosine: negative step", lambda: cosine_with_warmup(-1, max_lr=1.0, warmup_steps=0, total_steps=10), E, "step"),
    ("cosine: warmup past the end", lambda: cosine_with_warmup(0, max_lr=1.0, warmup_steps=20, total_steps=10), E,
     "total_steps"),
    ("cosine: min_lr above max_lr", lambda: cosine_with_warmup(0, max_lr=1.0, warmup_steps=0, total_steps=10, min_lr=2.0),
     E, "min_lr"),
    ("get_schedule: unknown", lambda: get_schedule("linear"), E, "unknown learning-rate schedule"),
    ("get_schedule: a list", lambda: get_schedule(["cosine"]), E, "unknown learning-rate schedule ['cosine']; known: cosine"),
    ("clip_grad_norm: max_norm 0", lambda: clip_grad_norm(grads(), 0.0), E, "max_norm"),
    ("global_grad_norm: empty", lambda: global_grad_norm({}), E, "grads"),
    # ----- tokenizer
    ("Tokenizer: missing file", lambda: tokenizer_class()(tmp() / "nowhere.model"), E, "does not exist"),
    ("Tokenizer: None", lambda: tokenizer_class()(None), E, "path must be a SentencePiece .model file"),
    ("Tokenizer.train: model_prefix None", lambda: tokenizer_class().train(["hello"], None, 512), E, "model_prefix must be"),
    ("Tokenizer: not a model", lambda: tokenizer_class()(file_with("bad.model", b"\x08\x96\x01garbage")), E,
     "not a valid SentencePiece model"),
    ("Tokenizer: a tokenizer.json", lambda: tokenizer_class()(file_with("tokenizer.json", b'{"model": {}}')), E,
     "not a valid SentencePiece model"),
    ("encode: bytes", lambda: tokenizer().encode(b"hi"), E, "text must be a str"),
    ("encode_batch: one not a str", lambda: tokenizer().encode_batch(["a", 5]), E, "texts[1]"),
    ("decode: float ids", lambda: tokenizer().decode([1.5]), E, "ids must be integers"),
    ("decode: nested ids", lambda: tokenizer().decode([[1, 2]]), E, "flat"),
    ("decode: id past the vocabulary", lambda: tokenizer().decode([10**6]), E, "out of range"),
    ("decode: negative id", lambda: tokenizer().decode([-1]), E, "out of range"),
    ("id_to_piece: past the vocabulary", lambda: tokenizer().id_to_piece(10**6), E, "out of range"),
    ("piece_to_id: not a str", lambda: tokenizer().piece_to_id(5), E, "piece"),
    ("check_vocab: another size", lambda: tokenizer().check_vocab(5), E, "vocab_size"),
    ("Tokenizer.train: vocab too small", lambda: tokenizer_class().train(["hello"], tmp() / "t", 10), E, "vocab_size"),
    ("Tokenizer.train: vocab str", lambda: tokenizer_class().train(["hello"], tmp() / "t", "512"), E, "vocab_size"),
    ("Tokenizer.train: unknown model type", lambda: tokenizer_class().train(["hi"], tmp() / "t", 512, model_type="xx"),
     E, "model_type"),
    ("Tokenizer.train: no text", lambda: tokenizer_class().train(["", "  "], tmp() / "t", 512), E, "no text"),
    ("Tokenizer.train: a file that is not UTF-8", lambda: tokenizer_class().train(
        [file_with("latin1.txt", "caf\xe9 au lait\n".encode("latin-1") * 50)], tmp() / "t", 512), E,
     "latin1.txt: is not UTF-8 text (byte 3"),
    ("Tokenizer.train: a blank file", lambda: tokenizer_class().train([file_with("blank.txt", b"\n \n")], tmp() / "t", 512),
     E, "blank.txt' is empty: it contains no text"),
    ("Tokenizer.train: seed negative", lambda: tokenizer_class().train(["hello"], tmp() / "t", 512, seed=-1), E,
     "seed must be a non-negative int, got -1"),
    ("encode_batch: one str", lambda: tokenizer().encode_batch("hello"), E, "texts must be a list of str, not one str"),
    ("encode: bos a str (\"no\" would count as yes)", lambda: tokenizer().encode("hi", bos="no"), E,
     "bos must be True or False, got 'no'"),
    ("encode_batch: eos a number", lambda: tokenizer().encode_batch(["hi"], eos=2), E, "eos must be True or False, got 2"),
    # ----- data
    ("load_texts: missing", lambda: load_texts(tmp() / "nowhere.txt"), FileNotFoundError, "does not exist"),
    ("load_texts: None", lambda: load_texts(None), E, "path must be a .txt or .jsonl file"),
    ("load_texts: a .csv", lambda: load_texts(file_with("c.csv", b"a,b")), E, "expected a .txt or .jsonl"),
    ("load_texts: empty", lambda: load_texts(file_with("e.txt", b"\n \n")), E, "is empty"),
    ("load_texts: not UTF-8", lambda: load_texts(file_with("l.txt", b"caf\xe9")), E, "not UTF-8"),
    ("load_texts: bad jsonl", lambda: load_texts(file_with("b.jsonl", b'{"text": "ok"}\n{"txt": 1}\n')), E, "line 2"),
    ("tokenize_corpus: a str", lambda: tokenize_corpus("text", tokenizer()), E, "texts must be a list"),
    ("tokenize_corpus: empty", lambda: tokenize_corpus([], tokenizer()), E, "texts is empty"),
    ("tokenize_corpus: one not a str", lambda: tokenize_corpus(["a", 5], tokenizer()), E, "texts[1]"),
    ("tokenize_corpus: cache not .npy", lambda: tokenize_corpus(["a"], tokenizer(), cache_path=tmp() / "c.bin"), E,
     "cache_path"),
    ("train_val_split: float ids", lambda: train_val_split(np.ones(10)), E, "ids"),
    ("train_val_split: 2-D ids", lambda: train_val_split(np.ones((2, 5), int)), E, "ids"),
    ("train_val_split: fraction 0", lambda: train_val_split(ids(), 0.0), E, "val_fraction"),
    ("train_val_split: fraction 1", lambda: train_val_split(ids(), 1.0), E, "val_fraction"),
    ("train_val_split: fraction str", lambda: train_val_split(ids(), "0.1"), E, "val_fraction"),
    ("BatchLoader: batch 0", lambda: BatchLoader(ids(), 0, 8), E, "batch_size"),
    ("BatchLoader: seq_len negative", lambda: BatchLoader(ids(), 2, -1), E, "seq_len"),
    ("BatchLoader: seed negative", lambda: BatchLoader(ids(), 2, 8, seed=-1), E, "seed"),
    ("BatchLoader: seed float", lambda: BatchLoader(ids(), 2, 8, seed=1.5), E, "seed"),
    ("BatchLoader: too few tokens", lambda: BatchLoader(ids(20), 4, 8), E, "smaller --batch-size"),
    ("BatchLoader.load_state_dict: empty", lambda: BatchLoader(ids(), 2, 8).load_state_dict({}), E, "missing"),
    ("BatchLoader.load_state_dict: another corpus", lambda: BatchLoader(ids(), 2, 8).load_state_dict(
        {**BatchLoader(ids(200), 2, 8).state_dict()}), E, "n_windows"),
    ("evaluation_batches: seq_len 0", lambda: evaluation_batches(ids(), 2, 0), E, "seq_len"),
    ("evaluation_batches: max_batches 0", lambda: evaluation_batches(ids(), 2, 8, max_batches=0), E, "max_batches"),
    # ----- io
    ("read_safetensors: names a str", lambda: read_safetensors(tmp() / "x", names="a"), E, "names"),
    ("read_safetensors: int dtype", lambda: read_safetensors(tmp() / "x", dtype=np.int32), E, "dtype"),
    ("read_safetensors: missing", lambda: read_safetensors(tmp() / "nowhere.safetensors"), FileNotFoundError, "nowhere"),
    ("write_safetensors: a list", lambda: write_safetensors(tmp() / "w.st", [np.ones(2)]), E, "tensors must be a dict"),
    ("write_safetensors: a list value", lambda: write_safetensors(tmp() / "w.st", {"a": [1.0]}), E,
     "tensors['a'] must be a numpy array"),
    ("write_safetensors: object dtype", lambda: write_safetensors(tmp() / "w.st", {"a": np.array([None])}), E,
     "dtype object"),
    ("write_safetensors: metadata values", lambda: write_safetensors(tmp() / "w.st", {}, metadata={"a": 1}), E,
     "metadata"),
    ("write_safetensors: unknown as_dtype", lambda: write_safetensors(tmp() / "w.st", {}, as_dtype="f8"), E, "as_dtype"),
    ("save_hf_folder: config a dict", lambda: save_hf_folder(tmp() / "m", CONFIG, {}), E, "config must be a LlamaConfig"),
    ("save_hf_folder: params missing", lambda: save_hf_folder(tmp() / "m", LlamaConfig(**CONFIG), {}), E,
     "params is missing"),
    ("save_hf_folder: int8 dtype", lambda: save_hf_folder(tmp() / "m", model().config, model().params, dtype=np.int8),
     E, "dtype"),
    ("save_hf_folder: extra file in a folder", lambda: save_hf_folder(tmp() / "m", model().config, model().params,
                                                                      extra_files={"../x": b""}), E, "extra_files"),
    ("load_hf_folder: missing", lambda: load_hf_folder(tmp() / "nowhere"), FileNotFoundError, "is not a folder"),
    ("load_hf_folder: float16", lambda: load_hf_folder(tmp(), dtype=np.float16), E, "dtype"),
    ("load_hf_folder: not a model folder", lambda: load_hf_folder(tmp()), CheckpointError, "config.json"),
    ("atomic_open: append mode", lambda: atomic_open(tmp() / "a", "a").__enter__(), E, "mode"),
    ("atomic_write_text: bytes", lambda: atomic_write_text(tmp() / "a", b"x"), E, "text must be a str"),
    ("atomic_directory: over a file", lambda: atomic_directory(file_with("f", b"")).__enter__(), NotADirectoryError,
     "not a folder"),
    ("save_checkpoint: state not JSON", lambda: save_checkpoint(tmp() / "c", model(), AdamW(model().params).state_dict(),
                                                                {"when": object()}), E, "JSON"),
    ("save_checkpoint: optimizer_state not a dict", lambda: save_checkpoint(tmp() / "c", model(), [], {}), E,
     "optimizer_state"),
    ("load_checkpoint: not a checkpoint", lambda: load_checkpoint(tmp()), CheckpointError, "training_state.json"),
    # ----- backend, runs, training settings
    ("use_backend: unknown", lambda: use_backend("cuda").__enter__(), E, "backend must be one of"),
    ("set_backend: not a str", lambda: set_backend(3), E, "backend must be one of"),
    ("resolve_model_dir: missing", lambda: resolve_model_dir(tmp() / "nowhere"), FileNotFoundError, "does not exist"),
    ("find_tokenizer: none there", lambda: find_tokenizer(tmp() / "nowhere" / "deeper"), FileNotFoundError,
     "tokenizer.model"),
    # ----- the jobs' Python entry points: their settings object, resume and echo
    ("train: settings a dict", lambda: job("npllama.train", "train")({"out": str(tmp() / "r")}), TypeError,
     "tc must be a TrainConfig, got dict"),
    ("train: settings None", lambda: job("npllama.train", "train")(None), TypeError, "tc must be a TrainConfig, got None"),
    ("train: resume a str", lambda: job("npllama.train", "train")(TrainConfig(out=str(tmp() / "r")), resume="no"), TypeError,
     "resume must be True or False, got 'no'"),
    ("train: echo not callable", lambda: job("npllama.train", "train")(TrainConfig(out=str(tmp() / "r")), echo="log"),
     TypeError, "echo must be a function taking one str (such as print), got 'log'"),
    ("classify: settings a dict", lambda: job("npllama.finetune", "classify")({}), TypeError,
     "cc must be a ClassifyConfig, got dict"),
    ("classify: an SFTConfig", lambda: job("npllama.finetune", "classify")(job("npllama.finetune", "SFTConfig")()), TypeError,
     "cc must be a ClassifyConfig, got SFTConfig"),
    ("classify: resume 1", lambda: job("npllama.finetune", "classify")(job("npllama.finetune", "ClassifyConfig")(),
                                                                        resume=1), TypeError, "resume must be True or False"),
    ("sft: settings None", lambda: job("npllama.finetune", "sft")(None), TypeError, "sc_ must be an SFTConfig, got None"),
    ("sentence_order: settings a dict", lambda: job("npllama.finetune_sop", "sentence_order")({}), TypeError,
     "sc_ must be a SentenceOrderConfig, got dict"),
    # ----- tracing
    ("loss_and_grads: targets None", lambda: model().loss_and_grads(TOKENS, None), TypeError,
     "targets must be the next tokens, an int array of the tokens' shape (1, 3), got None"),
    ("loss: targets None", lambda: model().loss(TOKENS, None), TypeError, "targets must be the next tokens"),
    ("Trace: include an int", lambda: job("npllama.trace", "Trace")(include=3), TypeError,
     "include must be a list of name patterns (str), got 3"),
    ("Trace: an exclude pattern not a str", lambda: job("npllama.trace", "Trace")(exclude=["d:*", 0]), TypeError,
     "exclude must be a list of name patterns (str), got ['d:*', 0]"),
    ("clip_grad_norm: grads a list", lambda: clip_grad_norm([np.ones(2)], 1.0), TypeError,
     "grads must be a dict of name -> numpy array, got list"),
    ("global_grad_norm: grads empty", lambda: global_grad_norm({}), ValueError, "grads is empty"),
    ("forward: a mask of str", lambda: model().forward(TOKENS, attention_mask=np.array([["1", "1", "1"]])), TypeError,
     "attention_mask must hold 0/1 numbers or booleans (1 = real token), got dtype <U1"),
    ("forward: a mask of 2s names the value", lambda: model().forward(TOKENS, attention_mask=np.array([[1, 2, 1]])),
     ValueError, "attention_mask must hold 0/1 numbers or booleans (1 = real token), got 2"),
    ("forward: a float mask not 0/1", lambda: model().forward(TOKENS, attention_mask=np.array([[1.0, 0.5, 1.0]])),
     ValueError, "attention_mask must hold 0/1 numbers or booleans (1 = real token), got 0.5"),
    ("debug.run_trace: model None", lambda: job("npllama.debug", "run_trace")(None, TOKENS), TypeError,
     "model must be a Llama, a SequenceClassifier or a loaded classifier (npllama.load_classifier), got NoneType"),
    ("debug.compare_backends: a folder for a model", lambda: job("npllama.debug", "compare_backends")(str(tmp()), TOKENS),
     TypeError, "model must be a Llama, a SequenceClassifier or a loaded classifier (npllama.load_classifier), got str"),
    ("perplexity: model None", lambda: perplexity(None, tokenizer(), "Once upon a time"), TypeError,
     "model must be a Llama (or an object with its config and forward), got NoneType"),
    ("perplexity: tokenizer None", lambda: perplexity(model(), None, "Once upon a time"), TypeError,
     "tokenizer must be a Tokenizer (or an object with its encode), got NoneType"),
    ("generate_text: tokenizer a path", lambda: generate_text(model(), str(tmp() / "tok.model"), "Once", 2), TypeError,
     "tokenizer must be a Tokenizer (or an object with its encode), got str"),
    ("generate: model None", lambda: generate(None, [1, 2], 2), TypeError,
     "model must be a Llama (or an object with its config and forward), got NoneType"),
    ("SequenceClassifier: model None", lambda: job("npllama.finetune", "SequenceClassifier")(None, ["a", "b"]),
     TypeError, "model must be a Llama, got NoneType"),
    ("SequenceClassifier.loss_and_grads: float labels", lambda: job("npllama.finetune", "SequenceClassifier")(
        model(), ["a", "b"]).loss_and_grads(TOKENS, np.ones((1, 3), int), np.array([0.7])), TypeError,
     "labels must be integer label ids, got dtype float64"),
    ("KVCache: config a dict", lambda: job("npllama.model", "KVCache")(CONFIG, 1, 4), TypeError,
     "config must be a LlamaConfig, got dict"),
    ("KVCache: int dtype", lambda: job("npllama.model", "KVCache")(LlamaConfig(**CONFIG), 1, 4, dtype=np.int32),
     TypeError, "dtype must be float32 or float64, got int32"),
    ("Trace.save: path None", lambda: job("npllama.trace", "Trace")().save(None), TypeError,
     "path must be the .npz file to write (a str or pathlib.Path), got None"),
]


def job(module, name):
    """A job's entry point, imported when a row runs (the jobs' modules are heavy to import)."""
    import importlib

    return getattr(importlib.import_module(module), name)


BAD_TRAIN_SETTINGS = [
    ("steps", 0), ("steps", -5), ("steps", "10"), ("steps", 2.5), ("batch_size", 0), ("seq_len", -1),
    ("grad_accum", 0), ("lr", 0.0), ("lr", float("nan")), ("lr", float("inf")), ("min_lr", 1.0), ("min_lr", float("nan")),
    ("weight_decay", -0.1), ("weight_decay", float("nan")), ("beta1", 1.0), ("beta2", -0.1), ("beta1", "0.9"),
    ("grad_clip", 0.0), ("grad_clip", float("nan")), ("val_fraction", 0.0), ("val_fraction", 1.0),
    ("val_fraction", "0.1"), ("preset", "huge"), ("dtype", "float16"), ("warmup_steps", 50), ("vocab_size", 0),
    ("vocab_size", 100), ("vocab_size", True), ("out", ""), ("eval_every", -1), ("checkpoint_every", -1),
    ("stop_after", 0), ("seed", -1), ("samples", -1), ("skip_nonfinite", "yes"), ("data", 5), ("eval_batches", -1),
    ("threads", 0), ("threads", 1.5), ("threads", True), ("hidden_size", 0), ("num_hidden_layers", 1.5),
    ("num_attention_heads", 5), ("num_key_value_heads", 3), ("max_position_embeddings", -1),
    ("model_config", {"hiden_size": 64}), ("model_config", 5), ("init_from", 5), ("val_data", 5),
    ("doc_separator", "comma"), ("doc_separator", "marker: "),
]
# steps=10 as a default the row may override (a second steps= keyword would raise Python's own
# TypeError, which names "steps" too, before TrainConfig checks anything)
LIBRARY += [(f"TrainConfig: {field}={value!r}", (lambda f=field, v=value: TrainConfig(**{"steps": 10, f: v})), E,
             field) for field, value in BAD_TRAIN_SETTINGS]


def tokenizer_class():
    from npllama.tokenizer import Tokenizer

    return Tokenizer


def as_params(rows):
    params = []
    for row in rows:
        name, call, error, pattern, *marks = row
        params.append(pytest.param(call, error, pattern, id=name, marks=marks))
    return params


@pytest.mark.parametrize("call, error, pattern", as_params(LIBRARY))
def test_library_calls_refuse_bad_input_naming_the_argument(call, error, pattern, robustness_count):
    robustness_count("bad input: library calls")
    with use_backend("numpy"), pytest.raises(error, match=re.escape(pattern)):
        call()


def test_numpy_integers_are_taken_where_ints_are():
    """What the config takes (np.int64(8)) the jobs take too: a size computed with NumPy is an int."""
    from npllama.classify import Classifier

    wide = Llama(LlamaConfig(**{**CONFIG, "vocab_size": 360}), seed=0)
    classifier = Classifier(wide, np.zeros((2, 8)), ["a", "b"], tokenizer())
    assert classifier.logits(["one", "two"], batch_size=np.int64(1)).shape == (2, 2)
    assert perplexity(wide, tokenizer(), "Once upon a time", context=np.int64(4), batch_size=np.int64(1)).tokens > 0


def test_training_refuses_a_missing_corpus_before_writing_anything(tmp_path, monkeypatch):
    from npllama.train import train

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path / "nowhere.txt"), steps=2))
    assert not (tmp_path / "run").exists()


def test_generate_refuses_a_model_that_gives_nan():
    broken = Llama(LlamaConfig(**CONFIG), seed=0, dtype=np.float64)
    broken.params["model.norm.weight"][0] = np.nan
    with pytest.raises(ValueError, match="logits at position 1 are not finite"):
        generate(broken, [1, 2], 3, temperature=0)


def test_a_temperature_too_small_to_divide_by_is_greedy():
    logits = np.array([0.0, 2.0, 1.0])
    assert sample_next(logits, 1e-320, None, None, np.random.default_rng(0)) == 1


# ----- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A trained run (2 steps), a corpus, a tokenizer, and a folder whose config.json is broken."""
    from npllama.corpus import write_default_corpus
    from npllama.train import train

    base = tmp_path_factory.mktemp("cli-bad")
    corpus = write_default_corpus(base / "stories.txt", n_stories=300)
    run = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(base / "runs"))
        train(TrainConfig(out=str(run), data=str(corpus), preset="stories260k", vocab_size=360, batch_size=4,
                          seq_len=32, steps=2, eval_every=0, checkpoint_every=0, samples=0, progress=False),
              echo=lambda *a: None)
    broken = base / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"vocab_size": "many"')
    (base / "corrupt.model").write_bytes(b"\x0a\x05hello")
    (base / "notes.txt").write_text("not a folder")
    return {"RUN": str(run), "CORPUS": str(corpus), "TOK": str(run / "tokenizer.model"), "BROKEN": str(broken),
            "CORRUPT": str(base / "corrupt.model"), "FILE": str(base / "notes.txt"), "NOWHERE": str(base / "nowhere"),
            "TMP": str(base), **hostile_files(base, run)}


DEEP = "[" * 100_000 + "]" * 100_000  # past what Python's JSON parser can recurse into


def hostile_files(base, run):
    """Inputs a careless user (or a hostile file) hands the CLI: each must end in one line."""
    import shutil

    paths = {}

    def run_with_settings(key, text):
        copy = base / key.lower()
        shutil.copytree(run, copy)
        (copy / "train_config.json").write_text(text)
        paths[key] = str(copy)

    run_with_settings("DEEPRUN", DEEP)
    run_with_settings("LISTRUN", "[1, 2]")
    settings = json.loads((run / "train_config.json").read_text())
    run_with_settings("HUGERUN", json.dumps({**settings, "steps": 10**400}))
    run_with_settings("TYPORUN", json.dumps({**settings, "lr": "fast"}))
    (base / "deep.jsonl").write_text('{"text": ' + DEEP + "}\n")
    (base / "wrongtype.jsonl").write_text('["a story"]\n')
    (base / "bigfield.csv").write_text("text,label\n" + "x" * 200_000 + ",a\nshort,b\n")
    def labelled(big_label: str) -> str:  # every split of it holds the big label
        return "".join(f'{{"text": "story {i}", "label": {0 if i % 2 else big_label}}}\n' for i in range(20))

    (base / "hugelabel.jsonl").write_text(labelled("1000000"))
    (base / "bignum.jsonl").write_text(labelled("1" + "0" * 400))
    paths.update(DEEPJSONL=str(base / "deep.jsonl"), WRONGTYPE=str(base / "wrongtype.jsonl"),
                 BIGFIELD=str(base / "bigfield.csv"), HUGELABEL=str(base / "hugelabel.jsonl"),
                 BIGNUM=str(base / "bignum.jsonl"))
    if os.path.exists("/dev/zero"):
        (base / "zero.txt").symlink_to("/dev/zero")
        paths["ZERO"] = str(base / "zero.txt")
    if hasattr(os, "mkfifo"):
        os.mkfifo(base / "fifo.txt")
        paths["FIFO"] = str(base / "fifo.txt")
    log_run = base / "deeplog"
    log_run.mkdir()
    (log_run / "log.jsonl").write_text(DEEP + "\n")
    paths["DEEPLOG"] = str(log_run)
    return paths


# Library names of settings that the command line calls by their flags
INTERNAL_NAMES = re.compile(r"\b(val_fraction|val_data|batch_size|eval_batches|doc_separator|max_len|target_modules|"
                            r"grad_clip|warmup_steps|lora_r|lora_targets|r \(the LoRA rank\))\b")

CLI = [
    # (argv with placeholders, words the one line must contain; "a|b": either)
    (["train", "--steps", "x"], "invalid int value"),
    (["train", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--steps", "-5"], "steps must be a positive integer"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--seq-len", "0"], "--seq-len"),
    (["train", "--grad-accum", "0"], "--grad-accum"),
    (["train", "--threads", "0"], "threads must be a positive integer"),
    (["train", "--lr", "nan"], "lr"),
    (["train", "--lr", "-1"], "lr"),
    (["train", "--min-lr", "1"], "--min-lr"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--grad-clip", "0"], "--grad-clip"),
    (["train", "--vocab-size", "0"], "--vocab-size"),
    (["train", "--vocab-size", "10"], "--vocab-size must be at least"),
    (["train", "--warmup-steps", "500", "--steps", "10"], "--warmup-steps (500) must not exceed --steps (10)"),
    (["train", "--eval-every", "-1"], "--eval-every"),
    (["train", "--checkpoint-every", "-2"], "--checkpoint-every"),
    (["train", "--stop-after", "0"], "--stop-after"),
    (["train", "--samples", "-1"], "samples"),
    (["train", "--seed", "-1"], "seed"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--dtype", "float16"], "invalid choice"),
    (["train", "--backend", "cuda"], "invalid choice"),
    (["train", "--data", "NOWHERE"], "does not exist"),
    (["train", "--tokenizer", "NOWHERE"], "does not exist"),
    (["train", "--data", "CORPUS", "--tokenizer", "CORRUPT", "--out", "TMP/r-corrupt-tok"],
     "--tokenizer|not a SentencePiece .model file"),
    (["train", "--resume", "--out", "TMP/never-trained"], "nothing to resume"),
    (["train", "--resume", "--out", "RUN", "--data", "CORPUS", "--preset", "stories260k", "--vocab-size", "360",
      "--batch-size", "2", "--seq-len", "32"], "cannot resume"),
    (["train", "--out", "RUN", "--data", "CORPUS"], "already holds a run"),
    (["train", "--out", "FILE", "--data", "CORPUS"], "is a file, not a folder"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["generate", "--model", "RUN", "--max-new-tokens", "0"], "--max-new-tokens must be"),
    (["generate", "--model", "RUN", "--max-new-tokens", "-5"], "--max-new-tokens must be"),
    (["generate", "--model", "RUN", "--max-new-tokens", "100000"], "max_position_embeddings"),
    (["generate", "--model", "RUN", "--max-new-tokens", "x"], "--max-new-tokens must be a positive integer, got 'x'"),
    (["generate", "--model", "RUN", "--max-new-tokens", "1", "--prompt", "word " * 600], "the prompt alone"),
    (["generate", "--model", "RUN", "--temperature", "-1"], "temperature"),
    (["generate", "--model", "RUN", "--temperature", "nan"], "temperature"),
    (["generate", "--model", "RUN", "--top-k", "-1"], "--top-k must be"),
    (["generate", "--model", "RUN", "--top-p", "0"], "--top-p must be"),
    (["generate", "--model", "RUN", "--top-p", "1.5"], "--top-p must be"),
    (["generate", "--model", "RUN", "--seed", "-1"], "--seed must be"),
    (["generate", "--model", "RUN", "--repetition-penalty", "0"], "--repetition-penalty must be"),
    (["generate", "--model", "RUN", "--stop", ""], "--stop must not be empty"),
    (["generate", "--model", "RUN", "--chat-template", "TMP/none.jinja"], "neither llama2 nor llama3"),
    (["generate", "--model", "RUN", "--adapter", "NOWHERE"], "does not exist"),
    (["classify", "--model", "RUN"], "at least one --text"),
    (["classify", "--model", "RUN", "--text", "hi"], "score.weight"),
    (["classify", "--model", "RUN", "--text", "hi", "--batch-size", "0"], "--batch-size"),
    (["classify", "--model", "RUN", "--text", " "], "--text is empty"),
    (["classify", "--model", "RUN", "--file", "TMP/test.csv"], "give a plain text file with one text a line"),
    (["eval", "perplexity", "--model", "RUN", "--data", "NOWHERE"], "cannot read --data"),
    (["eval", "perplexity", "--model", "RUN", "--data", "CORPUS", "--context", "1"], "--context"),
    (["generate", "--model", "RUN", "--num-samples", "0"], "num-samples"),
    (["generate", "--model", "RUN", "--threads", "0"], "--threads must be at least 1"),
    (["generate", "--model", "RUN", "--dtype", "float16"], "invalid choice"),
    (["generate", "--model", "NOWHERE"], "does not exist"),
    (["generate", "--model", "BROKEN"], "config.json"),
    (["generate", "--model", "TMP"], "holds no model"),
    # a file (a llama2.c checkpoint, a GGUF, text): was "holds no model", said of a file that may well hold one
    (["generate", "--model", "CORPUS"], "is a file, not a model folder: "),
    # the same for --init-from: was "is not a folder", nothing said of what the file is (a llama2.c .bin, a .gguf)
    (["train", "--init-from", "CORPUS", "--steps", "1", "--out", "TMP/r"], "is a file, not a model folder: "),
    # --out below a file, named as convert's and export gguf's are (was "[Errno 20] Not a directory" /
    # "[Errno 17] File exists", after the model was built)
    (["train", "--steps", "1", "--out", "CORPUS/run"], "is a file, not a folder"),
    (["finetune", "sft", "--base", "RUN", "--steps", "1", "--out", "CORPUS/a/run"], "is a file, not a folder"),
    (["tokenizer", "train", "--out", "CORPUS/tok"], "is a file, not a folder"),
    (["tokenizer", "train", "--data", "CORPUS", "--vocab-size", "10", "--out", "TMP/t"], "--vocab-size=10 is too small"),
    (["chat", "--model", "NOWHERE"], "nowhere"),
    (["chat", "--model", "RUN", "--top-p", "0"], "--top-p"),
    (["chat", "--model", "RUN", "--chat-template", "llama9"], "--chat-template 'llama9' is neither"),
    # before: an empty --system was dropped without a word (no system message), a blank one sent as one
    (["chat", "--model", "RUN", "--system", ""], "--system is empty"),
    (["generate", "--model", "RUN", "--system", " \n"], "--system is empty"),
    (["tokenizer", "train", "--data", "NOWHERE"], "does not exist"),
    (["tokenizer", "train", "--vocab-size", "many"], "invalid int value"),
    (["tokenizer", "encode", "--model", "NOWHERE", "hi"], "does not exist"),
    (["tokenizer", "encode", "--model", "CORRUPT", "hi"], "--model|not a SentencePiece .model file"),
    (["tokenizer", "encode", "hi"], "the following arguments are required: --model"),
    (["tokenizer", "decode", "--model", "TOK", "1", "x"], "ids must be integers"),
    (["tokenizer", "decode", "--model", "TOK", "[1, 2.5]"], "ids must be integers"),
    (["tokenizer", "decode", "--model", "TOK", "[1,"], "ids must be integers"),
    (["tokenizer", "decode", "--model", "TOK", "[[1, 2]]"], "flat"),
    (["tokenizer", "decode", "--model", "TOK", "99999"], "out of range"),
    (["tokenizer", "decode", "--model", "TOK", "-1"], "out of range"),
    (["tokenizer", "decode", "--model", "TOK", "[true]"], "ids must be integers"),
    (["tokenizer", "bogus"], "invalid choice"),
    (["finetune", "classify", "--base", "NOWHERE"], "nowhere"),
    (["finetune", "classify", "--base", "RUN", "--lora", "--lora-r", "0"], "rank"),
    (["finetune", "sft", "--base", "RUN", "--batch-size", "0"], "--batch-size"),
    (["finetune", "bogus"], "invalid choice"),
    # finetune's own settings, named as flags and checked before the base model is looked for
    (["finetune", "classify", "--steps", "0"], "--steps"),
    (["finetune", "classify", "--batch-size", "0"], "--batch-size"),
    (["finetune", "classify", "--lr", "-1"], "--lr"),
    (["finetune", "sft", "--lr", "-1"], "--lr"),
    (["finetune", "classify", "--max-len", "1"], "--max-len"),
    (["finetune", "classify", "--val-fraction", "1.5"], "--val-fraction"),
    (["finetune", "classify", "--lora", "--lora-r", "0"], "--lora-r"),
    (["finetune", "classify", "--lora", "--lora-targets", "q_proj,attn"], "--lora-targets"),
    (["finetune", "sft", "--lora", "--lora-dropout", "1"], "--lora-dropout"),
    (["train", "--val-fraction", "2"], "--val-fraction"),
    (["train", "--val-fraction", "0.1", "--val-data", "x.txt"], "--val-data"),
    (["train", "--eval-batches", "-1"], "--eval-batches"),
    (["train", "--doc-separator", "paragraphs"], "--doc-separator"),
    (["eval", "choice", "--model", "NOWHERE"], "nowhere"),
    (["eval", "choice", "--model", "RUN", "--limit", "0"], "--limit"),
    (["eval", "choice", "--model", "RUN", "--data", "NOWHERE"], "nowhere"),
    # before: --seed was silently ignored with --data
    (["eval", "choice", "--model", "RUN", "--data", "NOWHERE", "--seed", "3"], "--seed picks the built-in items"),
    # --seed 0 given is refused too, though 0 is the built-in items' default seed
    (["eval", "choice", "--model", "RUN", "--data", "NOWHERE", "--seed", "0"], "--seed picks the built-in items"),
    (["debug", "trace", "--model", "RUN", "--tokens", "1,99999"], "99999"),
    (["debug", "compare", "--model", "RUN", "--against", "bogus"], "invalid choice"),
    (["exercise", "start", "nosuchop"], "nosuchop"),
    (["exercise", "check", "rmsnorm", "NOWHERE"], "nowhere"),
    (["exercise", "check", "rmsnorm", "RUN", "--timeout", "0"], "--timeout"),
    (["exercise", "train", "rmsnorm", "NOWHERE"], "nowhere"),
    (["exercise", "train", "layernorm", "TOK"], "pre-training"),
    (["exercise", "notebook", "nosuchop"], "nosuchop"),
    (["explain", "nosuchop"], "nosuchop"),
    (["viz", "loss", "NOWHERE"], "nowhere|matplotlib"),  # without the plot extra, that is the mistake
    (["viz", "attention", "--model", "RUN"], "--tokens|matplotlib"),
    (["convert", "llama2c", "NOWHERE", "--out", "TMP/c"], "is not a file"),
    (["convert", "llama2c", "CORPUS", "--out", "TMP/c"], "not a llama2.c checkpoint"),
    (["convert", "bogus"], "invalid choice"),
    (["export", "gguf", "--model", "NOWHERE", "--out", "TMP/x.gguf"], "does not exist|needs the `gguf` package"),
    (["export", "gguf", "--model", "RUN"], "the following arguments are required: --out"),
    (["export", "gguf", "--model", "CORPUS", "--out", "TMP/x.gguf"], "is a file, not a model folder: |needs the `gguf` package"),
    (["export", "bogus"], "invalid choice"),
    (["bogus"], "invalid choice"),
    # absurd input: deep JSON, JSON of the wrong type, huge numbers, odd files, sizes over budget
    (["train", "--resume", "--out", "DEEPRUN"], "nested too deeply"),
    (["train", "--resume", "--out", "LISTRUN"], "must hold a JSON object, got list"),
    (["train", "--resume", "--out", "HUGERUN"], "steps must be a positive integer"),
    (["train", "--resume", "--out", "TYPORUN"], "lr must be a number"),
    (["train", "--data", "DEEPJSONL", "--out", "TMP/r-deep"], "nested too deeply"),
    (["train", "--data", "WRONGTYPE", "--out", "TMP/r-wrongtype"], 'expected a JSON object with a "text" field'),
    (["train", "--data", "ZERO", "--out", "TMP/r-zero"], "is a device"),
    (["train", "--data", "FIFO", "--out", "TMP/r-fifo"], "is a FIFO"),
    (["train", "--threads", "1000000000"], "threads must be at most"),
    (["train", "--steps", "1" + "0" * 400], "steps must be a positive integer"),
    (["train", "--lr", "1e999"], "lr must be a finite number"),
    (["train", "--weight-decay", "1000000"], "--lr * --weight-decay must be below 1"),
    # a text over csv's own 131,072-character field limit is read (both rows counted), as a .jsonl one is
    (["finetune", "classify", "--base", "RUN", "--data", "BIGFIELD"], "cannot split 2 examples"),
    (["finetune", "classify", "--base", "RUN", "--data", "HUGELABEL"], "1,000,001 classes"),
    (["finetune", "classify", "--base", "RUN", "--data", "BIGNUM"], "classes"),
    (["tokenizer", "decode", "--model", "TOK", DEEP], "recursion|nested"),
    (["viz", "loss", "DEEPLOG"], "nested too deeply|matplotlib"),
]


def fill(argv, paths):
    out = []
    for arg in argv:
        for key in sorted(paths, key=len, reverse=True):
            if arg == key or arg.startswith(key + "/"):
                arg = paths[key] + arg[len(key):]
                break
        out.append(arg)
    return out


def run_cli(argv, capsys):
    """main(argv) in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit from inside parse_args
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("argv, words", CLI, ids=[" ".join(a)[:60] for a, _ in CLI])
def test_cli_mistakes_exit_2_with_one_line(argv, words, cli_run, capsys, monkeypatch, tmp_path, robustness_count):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)
    status, err = run_cli(fill(argv, cli_run), capsys)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("npllama") and "error:" in lines[0], err
    assert any(w in lines[0] for w in words.split("|")) and "Traceback" not in err
    assert not INTERNAL_NAMES.search(lines[0]), err      # the flag as typed (--batch-size), not batch_size
    assert "no trained model" not in err or "no trained model" in words   # settings checked before the model
    robustness_count("bad input: command lines")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_an_unknown_option_in_one_line(command, capsys):
    status, err = run_cli([command, "--no-such-option"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"npllama {command}") and "error:" in lines[0]


@pytest.mark.parametrize("argv", [["train", "--steps", "0"], ["generate", "--model", "/no/such/run"],
                                  ["train", "--steps", "many"]])
def test_the_real_command_exits_2_without_a_traceback(argv, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NPLLAMA_RUNS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "npllama", *argv], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr


def test_os_errors_end_in_one_line_with_status_1(cli_run, capsys, monkeypatch, tmp_path):
    # the machine's answer, not a misuse: a file name too long for the file system
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)
    status, err = run_cli(["train", "--data", cli_run["CORPUS"], "--out", str(tmp_path / ("x" * 300) / "run")],
                          capsys)
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "File name too long" in lines[0], err


def test_the_table_covers_every_command():
    covered = {argv[0] for argv, _ in CLI}
    assert set(COMMANDS) <= covered, f"commands without bad-input rows: {set(COMMANDS) - covered}"


@pytest.mark.parametrize("labels, error, message", [
    ([5, 0], ValueError, "labels must be label ids in [0, 2) (label_names ('a', 'b')), or -100 to skip a row; got 5"),
    ([-1, 0], ValueError, "got -1"),
    ([0], ValueError, "labels must have one label for each row of tokens, shape (2,), got (1,)"),
    (np.int64(1), ValueError, "labels must have one label for each row of tokens, shape (2,), got ()"),
    (np.array([0.0, 1.0]), TypeError, "labels must be integer label ids, got dtype float64"),
])
def test_a_classifiers_labels_are_named_as_labels_before_the_forward_runs(labels, error, message):
    """The cross-entropy op's words (targets, V) named no argument of loss_and_grads, and a float
    label was only refused after the whole forward had run."""
    from npllama.finetune import SequenceClassifier

    classifier = SequenceClassifier(Llama(LlamaConfig(**CONFIG), seed=0, dtype=np.float64), ["a", "b"])
    classifier.model.hidden_forward = lambda *a, **k: pytest.fail("the forward ran before labels were checked")
    with pytest.raises(error) as e:
        classifier.loss_and_grads(np.array([[1, 2, 3], [3, 4, 5]]), np.ones((2, 3), int), labels)
    assert message in str(e.value)
