"""Decoding speed at batch 1: prefill of a real-length prompt, first-token latency, steady tokens/s.

    python benchmarks/bench_decode.py                              # s15m and m42m, 3 rounds
    python benchmarks/bench_decode.py --llama2c ~/llama2.c         # and llama2.c's run.c on the same weights
    python benchmarks/bench_decode.py --configs tiny --prompt 16 --tokens 8 --rounds 1 --json decode.json
    python benchmarks/bench_decode.py --compare-with /tmp/old      # and an older checkout's npllama

Greedy decoding of random weights (the tokens are whatever argmax gives: the same work as real
text).  Each round runs every variant once, each in a fresh process, in an order rotated from
round to round; the tables give the median and range (min-max) over rounds.  A process loads the
weights, warms up once (the same prompt and two tokens: compiled code, caches, pages), then
  prefill      the --prompt random tokens in one call: the time until the first new token's logits
  first token  prefill + argmax + the first decode step: when a second token could be shown
  tok/s        the next --tokens - 1 decode steps (each: one token in, logits out, argmax)
  tok/s @0     the same steady rate from a one-token prompt (position 0 on), to compare with
               llama2.c, whose run.c feeds its prompt one token at a time
Variants:
  fast          npllama.kernels.decode.FastDecoder (what `npllama generate` uses): a token is
                one numba call per thread, the matrix-vector products split by rows over --threads
                threads (default: every core) that meet at barriers (kernels/threads.py)
  fast-1        the same on one thread
  forward_step  model.forward_step with the model's KVCache, numba backend (the readable path)
  torch         (if installed) transformers' LlamaForCausalLM, eager, SDPA, a DynamicCache,
                torch.inference_mode
  read-once     not a decoder: BLAS reading the same float32 weights once per "token" (every layer's
                matrices, the final norm and the LM head, in one matrix-vector product over a copy
                laid end to end) on --threads threads: how fast BLAS's gemv streams those bytes.
                Where that gemv reads at the memory's speed (the Intel machine of
                benchmarks/README.md) its tok/s roughly bounds any float32 decoder of the model
                (the KV cache, ~1% of the bytes, left out); where it does not (OpenBLAS's Haswell
                gemv on an AMD EPYC read slower than both decoders) it bounds nothing, and the
                ratios say so
  llama2c       (--llama2c DIR) Karpathy's run.c, built as its README says (gcc -Ofast -fopenmp
                -march=native) from DIR/run.c into a temporary folder unless DIR/run exists,
                run with OMP_NUM_THREADS = --threads on the same weights exported to its .bin
                format; its own "achieved tok/s" from a one-token prompt (so: the tok/s @0 column)
  fast@old, forward_step@old   (--compare-with PATH) the same with another checkout's npllama
The lm_head row of token 1 is zeroed in the benchmark's weights: run.c stops at token 1 (BOS).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _bench import (CONFIGS, environment, format_spread, machine_line, make_config, peak_rss_mib,  # first: --threads
                    positive_int, print_table, run_child, speedup, spread, torch_or_none, write_json)

import numpy as np  # noqa: E402

NPLLAMA_VARIANTS = ("fast", "fast-1", "forward_step")
READ_ONCE = "read-once"
BOS = 1


# ---- in a child process ------------------------------------------------------------------------

def child(variant: str, model_dir: str, prompt_len: int, n_tokens: int) -> dict:
    """One variant: warm-up, then the prompt's prefill and n_tokens greedy steps; then the same
    from a one-token prompt."""
    if variant == READ_ONCE:
        return read_once(model_dir, n_tokens)
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    prompt = np.random.default_rng(1).integers(3, vocab, size=prompt_len)
    start_decoding = (_torch_decoder if variant == "torch" else _npllama_decoder)(variant, model_dir)
    _generate(start_decoding, prompt, 2)               # warm-up: the same prompt length as timed
    timings = _generate(start_decoding, prompt, n_tokens)
    from_bos = _generate(start_decoding, np.array([BOS]), n_tokens)
    return {"variant": variant, **timings, "tok_s_at_0": from_bos["tok_s"], "peak_rss_mib": peak_rss_mib()}


def read_once(model_dir, n_tokens: int) -> dict:
    """The time BLAS takes to read every weight a decode step reads, once, in one product."""
    from npllama import Llama

    model = Llama.from_pretrained(model_dir, dtype=np.float32)
    skip = ("model.embed_tokens.weight", "lm_head.weight")   # the embedding: one row a token
    read = [a for name, a in model.params.items() if name not in skip] + [model._lm_head_weight()]
    D = model.config.hidden_size
    flat = np.concatenate([a.ravel() for a in read])
    weights = np.zeros((-(-flat.size // D), D), dtype=np.float32)
    weights.ravel()[:flat.size] = flat
    del model, read, flat
    x, y = np.ones(D, dtype=np.float32), np.empty(weights.shape[0], dtype=np.float32)
    seconds = []
    for _ in range(n_tokens + 2):
        start = time.perf_counter()
        np.matmul(weights, x, out=y)
        seconds.append(time.perf_counter() - start)
    rate = 1.0 / float(np.median(seconds[2:]))
    return {"variant": READ_ONCE, "tok_s": rate, "tok_s_at_0": rate, "bytes": weights.nbytes,
            "peak_rss_mib": peak_rss_mib()}


def _generate(start_decoding, prompt, n_tokens: int) -> dict:
    """start_decoding(max_length) -> step(tokens (1, T)) -> logits (1, T, V) as a NumPy array."""
    step = start_decoding(len(prompt) + n_tokens)
    t0 = time.perf_counter()
    token = int(step(np.asarray(prompt)[None])[0, -1].argmax())
    t1 = time.perf_counter()
    token = int(step(np.array([[token]]))[0, -1].argmax())
    t2 = time.perf_counter()
    for _ in range(n_tokens - 2):
        token = int(step(np.array([[token]]))[0, -1].argmax())
    t3 = time.perf_counter()
    return {"prefill_s": t1 - t0, "first_token_s": t2 - t0,
            "tok_s": (n_tokens - 2) / (t3 - t2) if n_tokens > 2 else None}


def _npllama_decoder(variant, model_dir):
    from npllama import Llama, use_backend

    model = Llama.from_pretrained(model_dir, dtype=np.float32)
    if variant in ("fast", "fast-1"):
        from npllama.kernels.decode import FastDecoder

        # fast: the default, every core (or --threads); an older checkout's FastDecoder has no `threads`
        one_thread = {"threads": 1} if variant == "fast-1" else {}
        return lambda max_length: FastDecoder(model, batch_size=1, max_length=max_length, **one_thread).step

    def start(max_length):
        cache = model.new_kv_cache(1, max_length)

        def step(tokens):
            with use_backend("numba"):
                return model.forward_step(tokens, cache)
        return step
    return start


def _torch_decoder(variant, model_dir):
    import torch
    from transformers import DynamicCache, LlamaForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    # transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def start(max_length):
        cache = DynamicCache()

        def step(tokens):
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(tokens), use_cache=True, **{cache_arg: cache}).logits.numpy()
        return step
    return start


# ---- llama2.c ----------------------------------------------------------------------------------

def export_llama2c(model, path) -> None:
    """The model in llama2.c's legacy .bin format (run.c's reader): a header of 7 int32 (dim,
    hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size -- negative: a separate classifier --
    and seq_len), then float32 weights in run.c's order.  q and k rows are permuted from
    Hugging Face's rotate-half RoPE layout to Meta's interleaved pairs, which run.c rotates."""
    from npllama.io.rotary_layout import half_split_to_interleaved

    cfg, p = model.config, model.params
    H, KVH, hd, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers

    def layers(name, heads=None):
        return [half_split_to_interleaved(p[f"model.layers.{i}.{name}"], heads) if heads
                else p[f"model.layers.{i}.{name}"] for i in range(L)]

    shared = cfg.tie_word_embeddings
    header = np.array([cfg.hidden_size, cfg.intermediate_size, L, H, KVH,
                       cfg.vocab_size if shared else -cfg.vocab_size, cfg.max_position_embeddings], dtype=np.int32)
    parts = [p["model.embed_tokens.weight"], *layers("input_layernorm.weight"),
             *layers("self_attn.q_proj.weight", H), *layers("self_attn.k_proj.weight", KVH),
             *layers("self_attn.v_proj.weight"), *layers("self_attn.o_proj.weight"),
             *layers("post_attention_layernorm.weight"), *layers("mlp.gate_proj.weight"),
             *layers("mlp.down_proj.weight"), *layers("mlp.up_proj.weight"), p["model.norm.weight"],
             np.zeros(cfg.max_position_embeddings * hd, dtype=np.float32)]   # the old RoPE tables run.c skips
    if not shared:
        parts.append(p["lm_head.weight"])
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for a in parts:
            f.write(np.ascontiguousarray(a, dtype=np.float32).tobytes())


def llama2c_binary(folder: Path, build_dir: Path) -> Path:
    """DIR/run if built, else run.c compiled as llama2.c's README says into build_dir."""
    if (folder / "run").is_file() and os.access(folder / "run", os.X_OK):
        return folder / "run"
    if not (folder / "run.c").is_file():
        raise SystemExit(f"--llama2c: {folder} holds neither run nor run.c (a llama2.c checkout)")
    binary = build_dir / "run"
    subprocess.run(["gcc", "-Ofast", "-fopenmp", "-march=native", str(folder / "run.c"), "-lm", "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def run_llama2c(binary: Path, model_bin: Path, tokenizer: Path, n_tokens: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([str(binary), str(model_bin), "-z", str(tokenizer), "-t", "0", "-n", str(n_tokens + 1),
                          "-s", "1"], capture_output=True, text=True, env=env, timeout=600)
    found = re.search(r"achieved tok/s: ([0-9.]+)", out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"llama2.c failed: {out.stderr[-2000:]}")
    return {"variant": "llama2c", "tok_s_at_0": float(found.group(1))}


# ---- the parent --------------------------------------------------------------------------------

def measure_config(name, args, variants, llama2c, progress) -> dict:
    from npllama import Llama

    config = make_config(name)
    config.max_position_embeddings = max(config.max_position_embeddings, args.prompt + args.tokens)
    results = {label: [] for label, _ in variants}
    with tempfile.TemporaryDirectory(prefix=f"npllama-decode-{name}-") as folder:
        model = Llama(config, seed=0, dtype=np.float32)
        head = model.params["model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]
        head[BOS] = 0          # run.c stops when it generates BOS: make it never the argmax
        model_dir = Path(folder) / "model"
        model.save_pretrained(model_dir)
        if llama2c:
            export_llama2c(model, Path(folder) / "model.bin")
        del model, head
        for r in range(args.rounds):
            for label, source in variants[r % len(variants):] + variants[:r % len(variants)]:
                progress(f"  {name} round {r + 1}/{args.rounds}: {label}")
                if label == "llama2c":
                    results[label].append(run_llama2c(llama2c[0], Path(folder) / "model.bin", llama2c[1],
                                                      args.tokens, args.threads or os.cpu_count()))
                    continue
                results[label].append(run_child([__file__, "--child", label.split("@")[0], model_dir,
                                                 "--prompt", args.prompt, "--tokens", args.tokens], source=source))
    row = {"config": name, "prompt": args.prompt, "tokens": args.tokens, "variants": {}}
    for label, runs in results.items():
        row["variants"][label] = {key: spread([run[key] for run in runs])
                                  for key in ("prefill_s", "first_token_s", "tok_s", "tok_s_at_0", "peak_rss_mib")
                                  if runs and all(run.get(key) is not None for run in runs)}
        row["variants"][label]["runs"] = runs
    return row


def ratio(row, a, b, key) -> dict | None:
    """a's rate over b's, round by round (> 1: a is faster)."""
    ra, rb = row["variants"].get(a), row["variants"].get(b)
    return speedup(ra["runs"], rb["runs"], key, higher_is_faster=True) if ra and rb else None


def print_tables(rows, env, args) -> None:
    print(machine_line(env))
    print(f"decode, batch 1, greedy, float32, {args.threads or os.cpu_count()} threads; prompt {args.prompt} "
          f"tokens, then {args.tokens}; {args.rounds} rounds of fresh processes; median (min-max)")
    table = []
    for row in rows:
        for label, v in row["variants"].items():
            table.append({"config": row["config"], "variant": label,
                          "prefill": format_spread(v.get("prefill_s"), ".1f", 1e3),
                          "first": format_spread(v.get("first_token_s"), ".1f", 1e3),
                          "tok_s": format_spread(v.get("tok_s")), "at0": format_spread(v.get("tok_s_at_0")),
                          "rss": format_spread(v.get("peak_rss_mib"))})
    print_table(table, [("config", "config", "s"), ("variant", "variant", "s"), ("prefill", "prefill ms", "s"),
                        ("first", "first token ms", "s"), ("tok_s", "tok/s", "s"), ("at0", "tok/s @0", "s"),
                        ("rss", "peak RSS MiB", "s")])
    lines = []
    for row in rows:
        for a, b, key in (("fast", "llama2c", "tok_s_at_0"), ("fast-1", "llama2c", "tok_s_at_0"),
                          ("fast", READ_ONCE, "tok_s_at_0"), ("llama2c", READ_ONCE, "tok_s_at_0"),
                          ("fast", "fast-1", "tok_s"), ("fast", "torch", "tok_s"),
                          ("fast", "forward_step", "tok_s"), ("fast", "fast@old", "tok_s"),
                          ("forward_step", "forward_step@old", "tok_s")):
            r = ratio(row, a, b, key)
            if r:
                lines.append({"config": row["config"], "pair": f"{a} / {b} ({key})", "ratio": format_spread(r, ".2f")})
    if lines:
        print("speed ratios (> 1: the first is faster; per round, then median and range):")
        print_table(lines, [("config", "config", "s"), ("pair", "pair", "s"), ("ratio", "ratio", "s")])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, help="BLAS, numba, torch and llama2.c threads (default: all cores)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["s15m", "m42m"],
                        help="model shapes (default: s15m and m42m, llama2.c's stories15M and stories42M)")
    parser.add_argument("--prompt", type=positive_int, default=128, help="prompt length in tokens (default 128)")
    parser.add_argument("--tokens", type=positive_int, default=128, help="new tokens to generate (default 128)")
    parser.add_argument("--rounds", "--repeat", type=positive_int, default=3, dest="rounds",
                        help="fresh processes per variant (interleaved rounds; default 3)")
    parser.add_argument("--llama2c", metavar="DIR", help="a llama2.c checkout: time its run.c on the same weights")
    parser.add_argument("--compare-with", metavar="PATH", help="also time another checkout's npllama")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens < 3:
        parser.error("--tokens: expected at least 3 (the first new token is timed apart from the steady ones)")

    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.prompt, args.tokens)))
        return
    if args.compare_with and not (Path(args.compare_with) / "npllama" / "__init__.py").is_file():
        parser.error(f"--compare-with: {args.compare_with} holds no npllama/__init__.py (expected a checkout)")

    variants = [(v, None) for v in NPLLAMA_VARIANTS] + [(READ_ONCE, None)]
    if not args.no_torch and torch_or_none() is not None:
        variants.append(("torch", None))
    if args.compare_with:
        variants += [(f"{v}@old", args.compare_with) for v in ("fast", "forward_step")]   # what every checkout has
    env = environment()
    print(machine_line(env))
    with tempfile.TemporaryDirectory(prefix="npllama-llama2c-") as build:
        llama2c = None
        if args.llama2c:
            folder = Path(args.llama2c).expanduser()
            if not (folder / "tokenizer.bin").is_file():
                parser.error(f"--llama2c: {folder} holds no tokenizer.bin (a llama2.c checkout has one)")
            if not shutil.which("gcc") and not (folder / "run").is_file():
                parser.error("--llama2c: no gcc to build run.c with, and no built run in that folder")
            llama2c = (llama2c_binary(folder, Path(build)), folder / "tokenizer.bin")
            variants.append(("llama2c", None))
        rows = [measure_config(name, args, variants, llama2c, lambda line: print(line, flush=True))
                for name in args.configs]
    print_tables(rows, env, args)
    write_json(args.json, {"environment": env, "prompt": args.prompt, "tokens": args.tokens, "rounds": args.rounds,
                           "configs": rows, "decode": [dict(v, config=r["config"], variant=k)
                                                       for r in rows for k, v in r["variants"].items()]})


if __name__ == "__main__":
    main()
