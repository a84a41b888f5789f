"""Decoding speed at batch 1: tokens per second for 256 greedy tokens with a KV cache (s15m shape).

    python benchmarks/bench_decode.py                     # s15m shape (hidden 288, 6 layers, vocab 32000)
    python benchmarks/bench_decode.py --vs-torch          # and PyTorch eager with its KV cache
    python benchmarks/bench_decode.py --config tiny --tokens 128 --json decode.json

Variants, each the best of --repeat runs of 1 prompt token + --tokens greedy steps:
  fast          npllama.kernels.decode.FastDecoder: fused q/k/v and gate/up weights, gemv, one
                numba call per layer for RoPE + cache write + attention
  forward_step  model.forward_step with the model's KVCache, numba backend (what generate uses now)
  torch         (--vs-torch) transformers.LlamaForCausalLM from the same weights, eager, a
                DynamicCache filled step by step, torch.inference_mode, same threads
Random weights: the tokens are whatever argmax gives, the same work as real text.
"""
from __future__ import annotations

import argparse
import inspect

from _bench import (CONFIGS, as_torch_model, best_time, environment, make_config, positive_int, print_table,  # first: --threads
                    torch_or_none, write_json)

import numpy as np  # noqa: E402

from npllama import Llama, use_backend  # noqa: E402
from npllama.kernels.decode import FastDecoder  # noqa: E402


def decode_fast(model, n_tokens):
    decoder = FastDecoder(model, batch_size=1, max_length=n_tokens + 1)

    def run():
        decoder.reset()
        token = np.array([[1]])
        for _ in range(n_tokens):
            logits = decoder.step(token)
            token = logits[:, -1:].argmax(-1)
    return run


def decode_forward_step(model, n_tokens):
    def run():
        kv_cache = model.new_kv_cache(1, n_tokens + 1)
        token = np.array([[1]])
        with use_backend("numba"):
            for _ in range(n_tokens):
                logits = model.forward_step(token, kv_cache)
                token = logits[:, -1:].argmax(-1)
    return run


def decode_torch(model, n_tokens):
    import torch
    from transformers import DynamicCache

    hf = as_torch_model(model).eval()
    # transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def run():
        with torch.inference_mode():
            kv_cache = DynamicCache()          # filled in place, step by step
            token = torch.tensor([[1]])
            for _ in range(n_tokens):
                logits = hf(input_ids=token, use_cache=True, **{cache_arg: kv_cache}).logits
                token = logits[:, -1:].argmax(-1)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, help="BLAS, numba and torch threads (default: all cores)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="s15m")
    parser.add_argument("--tokens", type=positive_int, default=256)
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--vs-torch", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    config = make_config(args.config)
    config.max_position_embeddings = max(config.max_position_embeddings, args.tokens + 1)
    model = Llama(config, seed=0, dtype=np.float32)
    env = environment()
    print(f"decode, batch 1, {args.tokens} tokens, {args.config} shape, float32; numba threads "
          f"{env['numba_threads']}, OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
    variants = [("fast", decode_fast), ("forward_step", decode_forward_step)]
    if args.vs_torch:
        if torch_or_none() is None:
            print("(PyTorch / transformers not importable: no torch row)")
        else:
            variants.append(("torch", decode_torch))
    rows = []
    for label, make in variants:
        seconds = best_time(make(model, args.tokens), repeat=args.repeat)["best"]
        rows.append({"variant": label, "tok_s": args.tokens / seconds,
                     "ms_per_token": 1e3 * seconds / args.tokens})
    torch_row = next((r for r in rows if r["variant"] == "torch"), None)
    for row in rows:
        row["vs_torch"] = row["tok_s"] / torch_row["tok_s"] if torch_row else None
    print_table(rows, [("variant", "variant", "s"), ("tok_s", "tok/s", ".0f"),
                       ("ms_per_token", "ms/token", ".2f"), ("vs_torch", "x torch", ".2f")])
    write_json(args.json, {"config": args.config, "tokens": args.tokens, "environment": env, "decode": rows})


if __name__ == "__main__":
    main()
