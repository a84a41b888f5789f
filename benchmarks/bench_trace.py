"""What tracing costs: a loss_and_grads step with tracing off and on, against the bare math.

    python benchmarks/bench_trace.py                      # tiny preset, B=4, T=64, numpy backend
    python benchmarks/bench_trace.py --preset stories15m --batch 1 --seq 64
    python benchmarks/bench_trace.py --quick              # a few seconds (used by the tests)

Variants, each timed as the median of --repeat steps:

    math only       npllama.model's model_forward, the loss and model_backward called directly:
                    the math with no public boundary (no checks, no choice of ops, no trace lookup)
    tracing off     Llama.loss_and_grads, no trace active (what every training step pays)
    trace selective the same inside `npllama.trace(include=["*.attn_probs"])`
    trace all       the same inside `npllama.trace()`, every tensor copied

The model has no trace code: a trace is a set of recording ops bound in at the public boundary
(npllama/backend.py), so "tracing off" pays one ContextVar lookup per call.  Prints a table
(ratios against "math only") and writes JSON with --json.  No pass/fail: timings are for reading.
"""
from __future__ import annotations

import argparse
import contextvars
import time

from _bench import positive_int, print_table, write_json  # first: --threads; puts the repo on sys.path

import numpy as np  # noqa: E402

import npllama  # noqa: E402
from npllama import Llama, LlamaConfig, use_backend  # noqa: E402


def time_variants(variants: dict, repeat: int) -> dict:
    """Median seconds per step of each variant, the variants interleaved step by step so that a
    machine that speeds up or slows down during the run affects all of them alike."""
    times = {name: [] for name in variants}
    for i in range(repeat + 1):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            if i:  # the first round warms caches
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def traced(model, tokens, targets, **patterns):
    def step():
        with npllama.trace(**patterns):
            model.loss_and_grads(tokens, targets)
    return step


def contextvar_lookup_seconds(n=200_000) -> float:
    var = contextvars.ContextVar("bench", default=None)
    get = var.get
    start = time.perf_counter()
    for _ in range(n):
        get()
    return (time.perf_counter() - start) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="model shape (npllama.config presets)")
    parser.add_argument("--batch", type=positive_int, default=4, help="rows per step")
    parser.add_argument("--seq", type=positive_int, default=64, help="tokens per row")
    parser.add_argument("--repeat", type=positive_int, default=7, help="steps timed per variant")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"], help="ops to run")
    parser.add_argument("--quick", action="store_true", help="a tiny model and 3 repeats")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    if args.quick:
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        args.batch, args.seq, args.repeat = 2, 16, 3
    else:
        config = LlamaConfig.from_preset(args.preset)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, size=(args.batch, args.seq))
    targets = rng.integers(0, config.vocab_size, size=(args.batch, args.seq))
    model = Llama(config, seed=0)
    cos, sin = model.rope_tables(args.seq)

    with use_backend(args.backend):
        math = model._math()

        def math_only():
            logits, cache = math.model_forward(model.params, config, tokens, cos, sin, True, None)
            loss, loss_cache = math.cross_entropy_forward(logits, targets, -100)
            dlogits = math.cross_entropy_backward(np.ones((), dtype=logits.dtype), loss_cache)
            return loss, math.model_backward(dlogits, cache, config)

        loss_a, _ = model.loss_and_grads(tokens, targets)
        assert float(math_only()[0]) == loss_a, "the bare math must compute the same loss"
        results = time_variants({
            "math only": math_only,
            "tracing off": lambda: model.loss_and_grads(tokens, targets),
            "trace selective": traced(model, tokens, targets, include=["*.attn_probs"]),
            "trace all": traced(model, tokens, targets),
        }, args.repeat)
    lookup = contextvar_lookup_seconds()

    base = results["math only"]
    print(f"{args.preset if not args.quick else 'quick'}: {model.num_parameters():,} parameters, "
          f"B={args.batch}, T={args.seq}, backend {args.backend}, median of {args.repeat} steps")
    print_table([{"variant": name, "ms": seconds * 1e3, "ratio": seconds / base} for name, seconds in results.items()],
                [("variant", "variant", "s"), ("ms", "ms/step", ".2f"), ("ratio", "ratio", ".3f")])
    print(f"tracing off pays one active_trace() lookup per call, {lookup * 1e9:.0f} ns")
    write_json(args.json, {"results_seconds": results, "contextvar_lookup_seconds": lookup})
    return results


if __name__ == "__main__":
    main()
