"""Pre-norm (LLaMA) vs post-norm (the article's §2.1 Transformer): gradients at init, loss after training.

The same tiny decoder, data, initialisation and optimiser; only the residual order and the norm differ:

    prenorm  (LLaMA):    h = x + Attn(RMSNorm(x));   out = h + FFN(RMSNorm(h));   final RMSNorm
    postnorm (article):  h = LayerNorm(x + Attn(x)); out = LayerNorm(h + FFN(h)); no final norm

(--variants also offers the two mixed ones, prenorm_layernorm and postnorm_rmsnorm, to tell the
order's effect from the norm's.)  Built from npllama.ops forward/backward pairs, float64, NumPy
only.  Prints, per variant: the gradient norm of each layer's weights and of the residual stream
entering each layer at initialisation (mean over a few batches), then the training loss after
--steps AdamW steps at each learning rate (no warm-up), and the validation loss.

    python benchmarks/prenorm_vs_postnorm.py                 # the figures derivations/transformer_block.md quotes
    python benchmarks/prenorm_vs_postnorm.py --quick         # seconds: 2 layers, 10 steps
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from npllama.corpus import make_default_corpus
from npllama.ops.attention import attention_backward, attention_forward
from npllama.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from npllama.ops.embedding import embedding_backward, embedding_forward
from npllama.ops.layernorm import layernorm_backward, layernorm_forward
from npllama.ops.linear import linear_backward, linear_forward
from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from npllama.ops.rope import rope_backward, rope_cos_sin, rope_forward
from npllama.ops.swiglu import swiglu_backward, swiglu_forward
from npllama.optim import AdamW

VARIANTS = {   # name: (pre-norm?, norm)
    "prenorm": (True, "rmsnorm"),
    "postnorm": (False, "layernorm"),
    "prenorm_layernorm": (True, "layernorm"),
    "postnorm_rmsnorm": (False, "rmsnorm"),
}
NORM_EPS = 1e-5


# ----- the norms, one interface: (y, cache) = norm(x, params, prefix); dx = norm_back(dy, cache, grads) ----

def norm_forward(kind, x, params, prefix):
    if kind == "rmsnorm":
        return rmsnorm_forward(x, params[prefix + ".weight"], NORM_EPS)
    return layernorm_forward(x, params[prefix + ".weight"], params[prefix + ".bias"], NORM_EPS)


def norm_backward(kind, dy, cache, grads, prefix):
    if kind == "rmsnorm":
        dx, grads[prefix + ".weight"] = rmsnorm_backward(dy, cache)
    else:
        dx, grads[prefix + ".weight"], grads[prefix + ".bias"] = layernorm_backward(dy, cache)
    return dx


# ----- the model ------------------------------------------------------------------------------------------

def init_params(kind, vocab, D, F, layers, seed, std=0.02):
    """GPT-2/LLaMA-style init: weights N(0, std), norm weights 1, biases 0 (the same draws for every variant)."""
    rng = np.random.default_rng(seed)
    params = {"embed": std * rng.standard_normal((vocab, D)), "lm_head": std * rng.standard_normal((vocab, D))}
    norm_names = [f"layers.{i}.norm{j}" for i in range(layers) for j in (1, 2)] + ["final_norm"]
    for i in range(layers):
        for name, shape in (("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
                            ("w_gate", (F, D)), ("w_up", (F, D)), ("w_down", (D, F))):
            params[f"layers.{i}.{name}"] = std * rng.standard_normal(shape)
    for name in norm_names:
        params[name + ".weight"] = np.ones(D)
        if kind == "layernorm":
            params[name + ".bias"] = np.zeros(D)
    return params


def attention_sublayer_forward(x, params, prefix, heads, cos, sin):
    B, T, D = x.shape
    hd = D // heads
    split = lambda t: t.reshape(B, T, heads, hd).transpose(0, 2, 1, 3)
    q, cq = linear_forward(x, params[prefix + ".wq"])
    k, ck = linear_forward(x, params[prefix + ".wk"])
    v, cv = linear_forward(x, params[prefix + ".wv"])
    q_rot, rope_cache = rope_forward(split(q), cos, sin)   # the same rotation for q and k
    k_rot, _ = rope_forward(split(k), cos, sin)
    a, ca = attention_forward(q_rot, k_rot, split(v), causal=True)
    out, co = linear_forward(a.transpose(0, 2, 1, 3).reshape(B, T, D), params[prefix + ".wo"])
    return out, (cq, ck, cv, ca, co, rope_cache, (B, T, D, heads, hd))


def attention_sublayer_backward(dout, cache, grads, prefix):
    cq, ck, cv, ca, co, rope_cache, (B, T, D, heads, hd) = cache
    merge = lambda t: t.transpose(0, 2, 1, 3).reshape(B, T, D)
    da, grads[prefix + ".wo"] = linear_backward(dout, co)
    dq_rot, dk_rot, dv = attention_backward(da.reshape(B, T, heads, hd).transpose(0, 2, 1, 3), ca)
    dx_q, grads[prefix + ".wq"] = linear_backward(merge(rope_backward(dq_rot, rope_cache)), cq)
    dx_k, grads[prefix + ".wk"] = linear_backward(merge(rope_backward(dk_rot, rope_cache)), ck)
    dx_v, grads[prefix + ".wv"] = linear_backward(merge(dv), cv)
    return dx_q + dx_k + dx_v


def mlp_forward(x, params, prefix):
    return swiglu_forward(x, params[prefix + ".w_gate"], params[prefix + ".w_up"], params[prefix + ".w_down"])


def mlp_backward(dout, cache, grads, prefix):
    dx, grads[prefix + ".w_gate"], grads[prefix + ".w_up"], grads[prefix + ".w_down"] = swiglu_backward(dout, cache)
    return dx


def block_forward(variant, x, params, i, heads, cos, sin):
    prenorm, kind = VARIANTS[variant]
    p = f"layers.{i}"
    if prenorm:     # h = x + Attn(N(x)); out = h + FFN(N(h))
        xn, c1 = norm_forward(kind, x, params, p + ".norm1")
        a, ca = attention_sublayer_forward(xn, params, p, heads, cos, sin)
        h = x + a
        hn, c2 = norm_forward(kind, h, params, p + ".norm2")
        m, cm = mlp_forward(hn, params, p)
        return h + m, (c1, ca, c2, cm)
    a, ca = attention_sublayer_forward(x, params, p, heads, cos, sin)    # h = N(x + Attn(x))
    h, c1 = norm_forward(kind, x + a, params, p + ".norm1")
    m, cm = mlp_forward(h, params, p)                                     # out = N(h + FFN(h))
    out, c2 = norm_forward(kind, h + m, params, p + ".norm2")
    return out, (c1, ca, c2, cm)


def block_backward(variant, dout, cache, grads, i):
    prenorm, kind = VARIANTS[variant]
    p = f"layers.{i}"
    c1, ca, c2, cm = cache
    if prenorm:     # the skip path carries dout and dh unchanged; each sub-layer adds to them
        dh = dout + norm_backward(kind, mlp_backward(dout, cm, grads, p), c2, grads, p + ".norm2")
        return dh + norm_backward(kind, attention_sublayer_backward(dh, ca, grads, p), c1, grads, p + ".norm1")
    # post-norm: every gradient, the skip path's too, first goes through a norm's backward
    d_sum2 = norm_backward(kind, dout, c2, grads, p + ".norm2")           # sum2 = h + FFN(h)
    dh = d_sum2 + mlp_backward(d_sum2, cm, grads, p)
    d_sum1 = norm_backward(kind, dh, c1, grads, p + ".norm1")             # sum1 = x + Attn(x)
    return d_sum1 + attention_sublayer_backward(d_sum1, ca, grads, p)


def loss_and_grads(variant, params, tokens, targets, layers, heads):
    """(loss, grads, per-layer gradient norms of the residual stream entering each block)."""
    prenorm, kind = VARIANTS[variant]
    T = tokens.shape[1]
    D = params["embed"].shape[1]
    cos, sin = rope_cos_sin(np.arange(T), D // heads, 10000.0)
    x, ce = embedding_forward(tokens, params["embed"])
    caches = []
    for i in range(layers):
        x, c = block_forward(variant, x, params, i, heads, cos, sin)
        caches.append(c)
    if prenorm:                    # LLaMA's final norm; post-norm's last block already ends in one
        x, cf = norm_forward(kind, x, params, "final_norm")
    logits, cl = linear_forward(x, params["lm_head"])
    loss, cx = cross_entropy_forward(logits, targets)

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dx, grads["lm_head"] = linear_backward(cross_entropy_backward(1.0, cx), cl)
    if prenorm:
        dx = norm_backward(kind, dx, cf, grads, "final_norm")
    stream = [0.0] * layers
    for i in reversed(range(layers)):
        dx = block_backward(variant, dx, caches[i], grads, i)
        stream[i] = float(np.linalg.norm(dx))
    grads["embed"] = embedding_backward(dx, ce)
    return float(loss), grads, stream


# ----- data, measurement, training ------------------------------------------------------------------------

def character_data(n_stories):
    text = "\n".join(make_default_corpus(n_stories, seed=0))
    chars = sorted(set(text))
    ids = np.searchsorted(np.array(chars), np.array(list(text))).astype(np.int64)
    return ids, len(chars)


def batches(ids, B, T, count, rng):
    starts = rng.integers(0, len(ids) - T - 1, size=(count, B))
    windows = ids[starts[..., None] + np.arange(T + 1)]          # (count, B, T + 1)
    return windows[..., :-1], windows[..., 1:]


def layer_grad_norm(grads, i):
    return math.sqrt(sum(float(np.sum(g * g)) for name, g in grads.items() if name.startswith(f"layers.{i}.")))


def run(args):
    ids, vocab = character_data(args.stories)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    rng = np.random.default_rng(args.seed)
    probe_tokens, probe_targets = batches(train_ids, args.batch, args.seq, args.probe_batches, rng)
    val_tokens, val_targets = batches(val_ids, args.batch, args.seq, 4, rng)
    train_tokens, train_targets = batches(train_ids, args.batch, args.seq, args.steps, rng)
    D, F, L, H = args.hidden, args.ffn, args.layers, args.heads
    results = {"settings": vars(args), "vocab": vocab, "variants": {}}
    for variant in args.variants:
        kind = VARIANTS[variant][1]
        params = init_params(kind, vocab, D, F, L, args.seed)
        per_layer, per_stream, losses0 = np.zeros(L), np.zeros(L), []
        for tok, tgt in zip(probe_tokens, probe_targets):
            loss, grads, stream = loss_and_grads(variant, params, tok, tgt, L, H)
            per_layer += [layer_grad_norm(grads, i) for i in range(L)]
            per_stream += stream
            losses0.append(loss)
        row = {"init_loss": float(np.mean(losses0)),
               "layer_grad_norm": list(per_layer / len(probe_tokens)),
               "stream_grad_norm": list(per_stream / len(probe_tokens)), "training": {}}
        for lr in args.lrs:
            params = init_params(kind, vocab, D, F, L, args.seed)
            optimizer = AdamW(params, lr=lr, weight_decay=0.0)
            curve = []
            started = time.perf_counter()
            for step, (tok, tgt) in enumerate(zip(train_tokens, train_targets), 1):
                loss, grads, _ = loss_and_grads(variant, params, tok, tgt, L, H)
                curve.append(loss)
                if not np.isfinite(loss):
                    break
                optimizer.step(grads)
                if step % max(1, args.steps // 4) == 0:
                    print(f"  {variant} lr={lr:g}: step {step}/{args.steps} loss {np.mean(curve[-10:]):.3f}",
                          file=sys.stderr, flush=True)
            val = float(np.mean([loss_and_grads(variant, params, t, g, L, H)[0]
                                 for t, g in zip(val_tokens, val_targets)]))
            row["training"][str(lr)] = {"train_loss_last10": float(np.mean(curve[-10:])), "val_loss": val,
                                        "seconds": time.perf_counter() - started}
        results["variants"][variant] = row
    return results


def print_tables(results):
    s = results["settings"]
    print(f"tiny decoder: {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, SwiGLU {s['ffn']}, "
          f"characters (vocab {results['vocab']}), batch {s['batch']}x{s['seq']}, float64, init N(0, 0.02), seed {s['seed']}")
    L = s["layers"]
    print(f"\ngradient norm at initialisation (mean of {s['probe_batches']} batches)")
    header = "variant".ljust(20) + "".join(f"layer {i}".rjust(10) for i in range(L)) + "   last/first"
    for key, title in (("layer_grad_norm", "  weights of each layer"), ("stream_grad_norm", "  residual stream entering each layer")):
        print(title)
        print("  " + header)
        for variant, row in results["variants"].items():
            v = row[key]
            print("  " + variant.ljust(20) + "".join(f"{x:10.3g}" for x in v) + f"   {v[-1] / v[0]:10.3g}")
    print(f"\nloss after {s['steps']} AdamW steps (no warm-up; train: mean of the last 10 steps; "
          f"val: 4 held-out batches; loss at init ~ln(vocab) = {math.log(results['vocab']):.2f})")
    print("  " + "variant".ljust(20) + "".join(f"{'lr ' + str(lr):>22}" for lr in s["lrs"]))
    for variant, row in results["variants"].items():
        cells = [f"{t['train_loss_last10']:.3f} / {t['val_loss']:.3f}" for t in row["training"].values()]
        print("  " + variant.ljust(20) + "".join(f"{c:>22}" for c in cells))
    print("  (train / val)")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=positive_int, default=6, help="decoder blocks (default 6)")
    parser.add_argument("--hidden", type=positive_int, default=32, help="model width D (default 32)")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads; must divide --hidden")
    parser.add_argument("--ffn", type=positive_int, default=64, help="SwiGLU intermediate size (default 64)")
    parser.add_argument("--batch", type=positive_int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--seq", type=positive_int, default=32, help="sequence length (default 32)")
    parser.add_argument("--steps", type=positive_int, default=150, help="AdamW steps per learning rate (default 150)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2], help="learning rates (default 3e-3 1e-2)")
    parser.add_argument("--probe-batches", type=positive_int, default=4, help="batches averaged for the init gradient norms")
    parser.add_argument("--stories", type=positive_int, default=300, help="stories of the built-in corpus to use")
    parser.add_argument("--variants", nargs="+", default=["prenorm", "postnorm"], choices=list(VARIANTS),
                        help="which models to compare (default: prenorm postnorm)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch seed")
    parser.add_argument("--quick", action="store_true", help="2 layers, 10 steps, one lr: a smoke run in seconds")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.hidden % args.heads or (args.hidden // args.heads) % 2:
        parser.error(f"--heads must divide --hidden into an even head size, got hidden {args.hidden}, heads {args.heads}")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in args.lrs):
        parser.error(f"--lrs must be positive numbers, got {args.lrs}")
    if args.quick:
        args.layers, args.steps, args.lrs, args.probe_batches, args.stories = 2, 10, args.lrs[:1], 1, 40
    results = run(args)
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
