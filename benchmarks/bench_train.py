"""Training-step speed: forward + backward + AdamW, float32, tokens per second.

    python benchmarks/bench_train.py                      # tiny and s15m, numba backend
    python benchmarks/bench_train.py --vs-torch           # and PyTorch eager on the same weights
    python benchmarks/bench_train.py --configs tiny --repeat 10 --json train.json
    env -u OPENBLAS_CORETYPE python benchmarks/bench_train.py --vs-torch   # OpenBLAS auto-detects the CPU

For each config (tiny: hidden 128, 4 layers, batch 16 x 128; s15m: hidden 288, 6 layers, vocab
32000, batch 4 x 256) one subprocess builds the model, then times (best of --repeat):
  numba        model.loss_and_grads on the numba backend + npllama.optim.AdamW, whose update is then
               the fused kernels.adamw.adamw_update
  numba+optim  the same with AdamW's NumPy arithmetic (its step run on the numpy backend)
  split        as numba, each batch split over threads (npllama.parallel.BatchSplitter, as many as
               BLAS has, BLAS on one thread in each): what `npllama train` runs
  numpy        model.loss_and_grads on the numpy backend + npllama.optim.AdamW (the reference)
  torch        (--vs-torch) transformers.LlamaForCausalLM loaded from the same weights
               (save_pretrained / from_pretrained), attention through F.scaled_dot_product_attention,
               cross-entropy on the same targets, torch.optim.AdamW; same thread count, same process
It reports tokens/s, achieved GFLOP/s (6 x matrix params x tokens + attention's products) next
to this machine's float32 matmul peak, the peak RSS of the npllama steps (measured before torch
is imported), and the start-up time of a fresh process: `import npllama` + the first training
step of tiny (warm numba cache; the first run after an edit also compiles).  Each child calls
npllama.kernels.memory.keep_freed_memory() first (glibc keeps freed blocks instead of faulting
them back in every step; it applies to torch too, same process); --no-keep-freed-memory leaves
malloc alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

from _bench import (CONFIGS, ROOT, as_torch_model, best_time, environment, make_config,  # first: --threads
                    matmul_peak_gflops, peak_rss_mib, positive_int, print_table, torch_or_none, training_flops,
                    write_json)

import numpy as np  # noqa: E402

LR, BETAS, EPS, WEIGHT_DECAY = 3e-4, (0.9, 0.95), 1e-8, 0.1


def training_batch(name: str):
    """The config's batch: random tokens, each target the next token (the last one ignored)."""
    config, B, T = make_config(name), CONFIGS[name]["batch"], CONFIGS[name]["seq"]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(B, T))
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = -100
    return tokens, targets


def run_config(name: str, repeat: int, vs_torch: bool, numpy_backend: bool, keep_memory: bool) -> dict:
    """Everything for one config, in this (child) process."""
    from npllama import Llama, use_backend
    from npllama.kernels.memory import keep_freed_memory
    from npllama.optim import AdamW
    from npllama.parallel import BatchSplitter, default_workers

    kept = keep_freed_memory() if keep_memory else False   # for torch too: same process

    config = make_config(name)
    tokens, targets = training_batch(name)
    B, T = tokens.shape
    model = Llama(config, seed=0, dtype=np.float32)
    flops = training_flops(config, B, T)
    result = {"config": name, "batch": B, "seq": T, "params": model.num_parameters(),
              "gflop_per_step": flops / 1e9, "keep_freed_memory": kept}

    serial, split = BatchSplitter(1), BatchSplitter(default_workers())

    def npllama_step(optimizer, backend, optimizer_backend, splitter):
        with use_backend(backend):
            loss, grads = splitter.loss_and_grads(model.loss_and_grads, tokens, targets)
        with use_backend(optimizer_backend):  # numba: AdamW's fused kernel; numpy: its NumPy lines
            optimizer.step(grads)
        return loss

    # (label, model backend, optimizer backend, splitter, repeats); optimizers are made one at a
    # time (and dropped after), so the first row's peak RSS is its own
    variants = [("numba", "numba", "numba", serial, repeat),
                ("numba+optim", "numba", "numpy", serial, repeat),
                ("split", "numba", "numba", split, repeat)]
    if numpy_backend:
        variants.append(("numpy", "numpy", "numpy", serial, max(2, repeat // 3)))
    result["split_workers"] = split.workers
    for label, backend, optimizer_backend, splitter, n in variants:
        optimizer = AdamW(model.params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        seconds = best_time(lambda: npllama_step(optimizer, backend, optimizer_backend, splitter),
                            repeat=n, warmup=2)["best"]
        result[f"{label}_step_s"] = seconds
        result[f"{label}_tok_s"] = B * T / seconds
        result[f"{label}_gflops"] = flops / seconds / 1e9
        if label == "numba":
            result["numba_peak_rss_mib"] = peak_rss_mib()
    if vs_torch and torch_or_none() is not None:
        result.update(torch_step(model, tokens, targets, repeat, flops))
        result["torch_ratio"] = result["numba_tok_s"] / result["torch_tok_s"]
        result["split_torch_ratio"] = result["split_tok_s"] / result["torch_tok_s"]
    return result


def torch_step(model, tokens, targets, repeat, flops) -> dict:
    import torch

    seconds = best_time(_torch_training_step(as_torch_model(model), model.config, tokens, targets),
                        repeat=repeat, warmup=2)["best"]
    B, T = tokens.shape
    return {"torch_step_s": seconds, "torch_tok_s": B * T / seconds, "torch_gflops": flops / seconds / 1e9,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def step_memory(framework: str, name: str) -> dict:
    """Memory of training steps, in this (fresh) process: the peak resident set while four steps
    run, minus the resident set with the model built (the optimizer's moments, gradients and
    activations all count: torch makes its moments at the first step, npllama's zero pages
    become resident then).

    The kernel's high-water mark is reset (/proc/self/clear_refs) just before the steps, so the
    peak of importing a framework or loading weights does not count.  Neither does loading a
    framework's compiled code on first use (numba's cached kernels: ~130 MiB of LLVM and machine
    code; PyTorch's lazily built kernels): each framework first trains a throwaway model of 2 ×
    16 hidden units for one step."""
    from npllama import LlamaConfig
    from npllama.kernels.memory import keep_freed_memory

    if framework == "npllama":
        keep_freed_memory()  # as `npllama train` does
    config = make_config(name)
    tokens, targets = training_batch(name)
    warm_up = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    _training_step(framework, warm_up, tokens[:2, :16] % 64, targets[:2, :16] % 64)()
    gc.collect()
    step = _training_step(framework, config, tokens, targets)
    baseline = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    for _ in range(4):
        step()
    peak = _status_mib("VmHWM")
    return {"framework": framework, "config": name, "baseline_mib": baseline, "peak_mib": peak,
            "step_mib": peak - baseline}


def _training_step(framework: str, config, tokens, targets):
    """A model of `config` in `framework` and its AdamW, built now; returns a function that
    runs one training step (forward, backward, optimizer)."""
    from npllama import Llama
    from npllama.optim import AdamW

    model = Llama(config, seed=0, dtype=np.float32)
    if framework == "npllama":  # as `npllama train` runs it: the batch split over BLAS's threads
        from npllama.parallel import BatchSplitter, default_workers

        optimizer = AdamW(model.params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        splitter = BatchSplitter(default_workers())
        return lambda: optimizer.step(splitter.loss_and_grads(model.loss_and_grads, tokens, targets)[1])
    return _torch_training_step(as_torch_model(model), config, tokens, targets)


def _torch_training_step(hf, config, tokens, targets):
    import torch

    hf.train()
    torch_optimizer = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    input_ids, labels = torch.from_numpy(tokens), torch.from_numpy(targets)

    def step():
        logits = hf(input_ids=input_ids).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, config.vocab_size), labels.view(-1))
        loss.backward()
        torch_optimizer.step()
        torch_optimizer.zero_grad(set_to_none=True)
    return step


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_table(configs) -> list[dict]:
    rows = []
    for name in configs:
        row = {"config": name}
        for framework in ("npllama", "torch"):
            if framework == "torch" and torch_or_none() is None:
                continue
            out = subprocess.run([sys.executable, __file__, "--memory-child", framework, name],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{framework}_step_mib"] = result["step_mib"]
            row[f"{framework}_peak_mib"] = result["peak_mib"]
        if "torch_step_mib" in row:
            row["step_ratio"] = row["npllama_step_mib"] / row["torch_step_mib"]
        rows.append(row)
    return rows


STARTUP_SCRIPT = """
import time
start = time.perf_counter()
import numpy as np
import npllama
from npllama import Llama, LlamaConfig
cfg = LlamaConfig(**{config!r})
model = Llama(cfg, seed=0)
tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=({batch}, {seq}))
model.loss_and_grads(tokens, np.roll(tokens, -1, axis=1))
print(time.perf_counter() - start)
""".format(**CONFIGS["tiny"])


def startup_seconds() -> list[float]:
    """`import npllama` + the first tiny training step in fresh processes (the first run may compile)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT], env=env, capture_output=True, text=True,
                             check=True)
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, help="BLAS, numba and torch threads (default: all cores)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "s15m"])
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--vs-torch", action="store_true", help="also time PyTorch eager (if importable)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy-backend step")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="leave glibc's malloc as it is (see npllama.kernels.memory)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--memory", action="store_true",
                        help="also compare the memory a training step needs, npllama vs PyTorch, each in a "
                             "fresh process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        print(json.dumps(step_memory(*args.memory_child)))
        return

    if args.child:  # one config, in its own process so that peak RSS is its own
        print(json.dumps(run_config(args.child, args.repeat, args.vs_torch, not args.no_numpy,
                                    not args.no_keep_freed_memory)))
        return

    env = environment()
    peak = matmul_peak_gflops()
    print(f"training step, float32; numba threads {env['numba_threads']}, OPENBLAS_CORETYPE="
          f"{env['OPENBLAS_CORETYPE']}; float32 matmul peak {peak:.0f} GFLOP/s (2048^3); "
          f"keep_freed_memory {'off' if args.no_keep_freed_memory else 'on'}")
    if args.vs_torch and torch_or_none() is None:
        print("(PyTorch / transformers not importable: no torch column)")
    rows = []
    for name in args.configs:
        cmd = [sys.executable, __file__, "--child", name, "--repeat", str(args.repeat)]
        cmd += ["--vs-torch"] * args.vs_torch + ["--no-numpy"] * args.no_numpy
        cmd += ["--no-keep-freed-memory"] * args.no_keep_freed_memory
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        row["peak_fraction"] = row["numba_gflops"] / peak
    print_table(rows, [("config", "config", "s"), ("numba_tok_s", "numba tok/s", ".0f"),
                       ("numba+optim_tok_s", "+optim.AdamW tok/s", ".0f"),
                       ("numpy_tok_s", "numpy tok/s", ".0f"),
                       ("split_tok_s", "split tok/s", ".0f"),
                       ("torch_tok_s", "torch tok/s", ".0f"), ("torch_ratio", "numba/torch", ".2f"),
                       ("split_torch_ratio", "split/torch", ".2f"),
                       ("numba_gflops", "GFLOP/s", ".0f"), ("peak_fraction", "of peak", ".0%"),
                       ("numba_peak_rss_mib", "peak RSS MiB", ".0f")])
    startup = startup_seconds()
    print(f"start-up (import npllama + first tiny step, fresh processes): "
          f"{', '.join(f'{s:.2f}' for s in startup)} s")
    memory = []
    if args.memory:
        memory = memory_table(args.configs)
        print("memory of training steps (peak resident set during steps minus the resident set with the "
              "model and optimizer built; fresh process each):")
        print_table(memory, [("config", "config", "s"), ("npllama_step_mib", "npllama MiB", ".0f"),
                             ("torch_step_mib", "torch MiB", ".0f"), ("step_ratio", "npllama/torch", ".2f"),
                             ("npllama_peak_mib", "npllama peak RSS", ".0f"),
                             ("torch_peak_mib", "torch peak RSS", ".0f")])
    write_json(args.json, {"environment": env, "matmul_peak_gflops": peak, "configs": rows,
                           "startup_seconds": startup, "memory": memory})


if __name__ == "__main__":
    main()
