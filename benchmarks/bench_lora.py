"""LoRA vs full fine-tuning: trainable parameters, memory, and step time of one training step.

    python benchmarks/bench_lora.py                         # tiny preset, B=8, T=128
    python benchmarks/bench_lora.py --preset stories15m --batch 4 --seq 128
    python benchmarks/bench_lora.py --quick --json out.json

One step = loss_and_grads of a causal-LM batch + an AdamW update, as in `npllama finetune sft`.
Variants:

    full            every weight trainable (gradients and AdamW moments for all of them)
    lora r=R attn   adapters on q, k, v, o; the base frozen (no dW for it, no optimizer state)
    lora r=R all    adapters on the MLP projections too

Columns: trainable parameters (and their share of the model), the training state that full
fine-tuning keeps and LoRA does not -- gradients plus AdamW's two moments, in MB -- the peak of
NumPy allocations during one step (tracemalloc, the weights themselves excluded), and the step time
(best of --repeat).  No pass/fail: numbers for reading.  Note: with more BLAS threads than free
cores, OpenBLAS spins and small matrix products slow down many times over; on a busy machine run
with OPENBLAS_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import tracemalloc

from _bench import best_time, positive_int, print_table, write_json  # first: --threads

import numpy as np  # noqa: E402

from npllama import Llama, LlamaConfig, use_backend  # noqa: E402
from npllama.lora import ALL_TARGETS, ATTENTION_TARGETS, attach_lora  # noqa: E402
from npllama.optim import AdamW  # noqa: E402


def measure(config, targets, r, batch, seq, repeat, backend):
    model = Llama(config, seed=0, dtype=np.float32)
    if targets:
        attach_lora(model, r=r, lora_alpha=2 * r, target_modules=targets)
    params = model.lora.params if model.lora is not None else model.params
    optimizer = AdamW(params, lr=1e-4, weight_decay=0.0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch, seq))
    targets_ = rng.integers(0, config.vocab_size, (batch, seq))

    def step():
        _, grads = model.loss_and_grads(tokens, targets_)
        optimizer.step(grads)
        return grads

    with use_backend(backend):
        grads = step()  # warm-up: kernels compiled, optimizer moments allocated
        seconds = best_time(step, repeat=repeat, warmup=0)["best"]
        tracemalloc.start()
        step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    trainable = int(sum(p.size for p in params.values()))
    state_bytes = sum(g.nbytes for g in grads.values()) * 3  # gradient + AdamW's m and v
    return {"trainable": trainable, "share": trainable / model.num_parameters(),
            "state_mb": state_bytes / 2**20, "peak_step_mb": peak / 2**20, "step_s": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--seq", type=positive_int, default=128)
    parser.add_argument("--r", type=positive_int, default=8)
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    parser.add_argument("--quick", action="store_true", help="B=2, T=32, 2 repeats")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.repeat = 2, 32, 2
    config = LlamaConfig.from_preset(args.preset)
    variants = [("full", ()), (f"lora r={args.r} attn", ATTENTION_TARGETS), (f"lora r={args.r} all", ALL_TARGETS)]
    rows = {name: measure(config, targets, args.r, args.batch, args.seq, args.repeat, args.backend)
            for name, targets in variants}

    print(f"preset {args.preset} ({config.num_parameters():,} parameters), batch {args.batch} x {args.seq} "
          f"tokens, float32, {args.backend} backend")
    full = rows["full"]["step_s"]
    table = [dict(r, variant=name, step_ms=1e3 * r["step_s"], vs_full=r["step_s"] / full)
             for name, r in rows.items()]
    print_table(table, [("variant", "variant", "s"), ("trainable", "trainable", ","), ("share", "share", ".2%"),
                        ("state_mb", "grad+Adam MB", ".2f"), ("peak_step_mb", "step peak MB", ".2f"),
                        ("step_ms", "step ms", ".1f"), ("vs_full", "vs full", ".2f")])
    write_json(args.json, {"args": vars(args), "results": rows})
    return rows


if __name__ == "__main__":
    main()
