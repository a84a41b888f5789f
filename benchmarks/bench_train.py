"""Training-step speed and memory, npllama against PyTorch: every run in a fresh process, interleaved.

    python benchmarks/bench_train.py                          # tiny, s15m and m42m, 3 rounds
    python benchmarks/bench_train.py --configs s15m --rounds 5 --steps 5 --json train.json
    python benchmarks/bench_train.py --compare-with /tmp/h15-old   # and an older checkout's npllama

A variant is one way of running a training step (forward + backward + AdamW, float32):
  split        npllama as `npllama train --threads N` runs it with N = BLAS's threads: the batch's
               rows split over N Python threads, BLAS on one thread in each (npllama/parallel.py),
               the AdamW update's parameters shared out over N threads too
  unsplit      npllama, one thread of Python, BLAS on all its threads (`--threads 1`)
  numpy        (--numpy) the unsplit step on the NumPy reference backend
  torch        PyTorch eager: transformers' LlamaForCausalLM (SDPA attention), cross-entropy,
               torch.optim.AdamW with its default implementation (a for-loop on CPU)
  torch-fused  the same with torch.optim.AdamW(..., fused=True), PyTorch's fastest CPU AdamW
  split@old, unsplit@old   (--compare-with PATH) split / unsplit with the npllama found at PATH
  parts        (--parts) the unsplit step with a timer around every op the model calls (each
               `<op>_forward` / `<op>_backward`, through npllama.use_op, its matrix products
               included) and around AdamW's step: where the step's time goes.  The rest is
               model.py's own NumPy (residual adds, reshapes, the embedding's gather) and
               Python.  The timers cost nothing measurable (steps with and without them, in one
               process, took the same time), but one process's step differs from another's by
               5-10%: read its parts against each other, and unsplit for the step's time
  products     not a training step: only its matrix products with the weights -- for every
               linear layer and the LM head, Y = X W^T, dX = dY W and dW = dY^T X at the step's
               batch -- through NumPy's BLAS on all its threads, nothing else (no attention,
               norms, activations, loss or optimizer).  A step that does these products with
               this BLAS takes at least about this long (split runs them as one-thread products
               on each slice of rows, which is not faster where the products dominate), so its
               ratio to torch-fused is about the most such a step could gain over PyTorch here,
               however little the rest of it took
  torch-products  (if PyTorch is installed) the same products through torch.matmul (PyTorch's own
               BLAS), to tell a gap between the two BLAS libraries from the rest of the step

Each round runs every variant once, in its own fresh process, in an order rotated from round to
round, so a busy neighbour slows all of them alike; a process loads the same weights (a Hugging
Face folder written once per config), runs 2 warm-up steps and --steps timed ones, and reports
their median and its whole-process peak RSS (Linux's VmHWM: everything the process ever held
resident, interpreter, imports and the model included; nothing subtracted -- not ru_maxrss,
which Linux carries over from the parent across fork + exec).  The tables give, over the rounds,
the median and the range (min-max) of those per-process figures.  npllama's processes call
keep_freed_memory() first, as `npllama train` does; PyTorch's keep glibc's defaults.  Threads:
--threads (default: all cores) for BLAS, numba and PyTorch alike.

Start-up (--no-start-up skips it): `import npllama` + building the tiny model + its first
training step in a fresh process, cold (an empty numba cache, NUMBA_CACHE_DIR pointing at a new
folder: every kernel the step uses is compiled) and then warm (the same cache, loaded).

First run (--first-run PAIRS): the default `npllama train` (tiny preset, --steps 40 --samples 0)
from the command to its first step's line in log.jsonl and to its 40th, with an empty numba
cache and an empty npllama cache (so the thread count is measured, as on a first run), PAIRS
times each way, interleaved: with the compile helper (npllama/kernels/precompile.py: the first
steps run on the NumPy references while it compiles) and without it (NPLLAMA_PARALLEL_COMPILE=0:
the run compiles, then steps).  Tokenizer training, data preparation and the thread-count
measurement are included: it is what a new user waits for.  The 40th step shows what the early
start costs or saves later on (the reference steps are slower than the kernels' steps).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import (CONFIGS, ROOT, environment, format_spread, machine_line, make_config,  # first: --threads
                    matmul_peak_gflops, peak_rss_mib, positive_int, print_table, run_child, speedup, spread,
                    torch_or_none, training_flops, write_json)

import numpy as np  # noqa: E402

LR, BETAS, EPS, WEIGHT_DECAY = 3e-4, (0.9, 0.95), 1e-8, 0.1
NPLLAMA_VARIANTS = ("split", "unsplit", "numpy", "parts")
TORCH_VARIANTS = ("torch", "torch-fused")
PRODUCT_VARIANTS = ("products", "torch-products")
ALL_LABELS = (*NPLLAMA_VARIANTS, *PRODUCT_VARIANTS, *TORCH_VARIANTS, "split@old", "unsplit@old")
OPTIMIZER_PART, REST_PART = "AdamW step (check + update)", "the rest (model.py's NumPy, Python)"


def training_batch(name: str):
    """The config's batch: random tokens, each target the next token (the last one ignored)."""
    config, B, T = make_config(name), CONFIGS[name]["batch"], CONFIGS[name]["seq"]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(B, T))
    targets = np.roll(tokens, -1, axis=1)
    targets[:, -1] = -100
    return tokens, targets


# ---- in a child process: one variant, one config -------------------------------------------

def child(variant: str, name: str, model_dir: str, steps: int) -> dict:
    tokens, targets = training_batch(name)
    make = (_npllama_step if variant in NPLLAMA_VARIANTS else _products_step if variant in PRODUCT_VARIANTS
            else _torch_step)
    step, hold = make(variant, model_dir, tokens, targets)
    spent = getattr(step, "spent", None)      # the parts variant's timers: part -> seconds this step
    times, parts = [], []
    with hold:
        for i in range(2 + steps):
            if spent is not None:
                spent.clear()
            start = time.perf_counter()
            step()
            if i >= 2:
                times.append(time.perf_counter() - start)
                if spent is not None:
                    parts.append({**spent, REST_PART: times[-1] - sum(spent.values())})
    result = {"variant": variant, "config": name, "step_s": statistics.median(times), "steps_s": times,
              "peak_rss_mib": peak_rss_mib()}
    if spent is not None:
        result["parts_s"] = {part: statistics.median(step_parts.get(part, 0.0) for step_parts in parts)
                             for part in parts[0]}
    return result


def _npllama_step(variant, model_dir, tokens, targets):
    from npllama import Llama, use_backend
    from npllama.kernels.memory import keep_freed_memory
    from npllama.optim import AdamW
    from npllama.parallel import BatchSplitter, default_workers

    keep_freed_memory()                    # as `npllama train` does
    model = Llama.from_pretrained(model_dir, dtype=np.float32)
    splitter = BatchSplitter(default_workers() if variant == "split" else 1)
    optimizer = AdamW(model.params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    # as `npllama train` shares the update out (an older checkout has no update_threads, or ignores threads)
    optimizer.threads = getattr(splitter, "update_threads", splitter.workers)
    backend = "numpy" if variant == "numpy" else "numba"
    timers = _OpTimers(optimizer) if variant == "parts" else None

    def step():
        with use_backend(backend), timers or contextlib.nullcontext():
            _, grads = splitter.loss_and_grads(model.loss_and_grads, tokens, targets)
            optimizer.step(grads)
    if timers is not None:
        step.spent = timers.spent
    return step, splitter.holding_blas(len(tokens))   # as the training loop holds BLAS


class _OpTimers(contextlib.ExitStack):
    """While entered: every op the model calls, on the numba backend, runs inside a timer
    (npllama.use_op), and so does optimizer.step; `spent` adds up the seconds by part."""

    def __init__(self, optimizer):
        super().__init__()
        self.spent, self.optimizer = {}, optimizer
        self.optimizer_step = optimizer.step

    def _timed(self, part, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] = self.spent.get(part, 0.0) + time.perf_counter() - start
        return run

    def __enter__(self):
        from npllama import backend, use_op

        super().__enter__()
        kernels = backend.ops("numba")
        # the ops the model calls by name: an override of a nested one (the softmax inside attention)
        # would run the enclosing op's reference around it, timing something else than the kernel
        nested = getattr(backend, "NESTED_OPS", {})
        called = getattr(backend, "replaceable_ops", backend.op_names)()
        for name in (n for n in called if n not in nested):
            self.enter_context(use_op(name, self._timed(name, getattr(kernels, name)), backend="numba"))
        self.optimizer.step = self._timed(OPTIMIZER_PART, self.optimizer_step)
        self.callback(setattr, self.optimizer, "step", self.optimizer_step)
        return self


def _torch_step(variant, model_dir, tokens, targets):
    import contextlib

    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                                  fused=variant == "torch-fused" or None)
    input_ids, labels = torch.from_numpy(tokens), torch.from_numpy(targets)
    vocab = model.config.vocab_size

    def step():
        logits = model(input_ids=input_ids).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), labels.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, contextlib.nullcontext()


def _products_step(variant, model_dir, tokens, targets):
    """The step's products with the weights alone (see `products` in the module's docstring)."""
    import contextlib

    from npllama import LlamaConfig

    cfg = LlamaConfig.from_dict(json.loads((Path(model_dir) / "config.json").read_text()))
    H, KVH, hd, D, F = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                        cfg.intermediate_size)
    per_layer = [(H * hd, D), (KVH * hd, D), (KVH * hd, D), (D, H * hd), (F, D), (F, D), (D, F)]  # q k v o gate up down
    shapes = per_layer * cfg.num_hidden_layers + [(cfg.vocab_size, D)]                        # + the LM head
    N = tokens.size
    rng = np.random.default_rng(0)
    if variant == "torch-products":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
        new, matmul = (lambda *shape: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))), torch.matmul
    else:
        new, matmul = (lambda *shape: rng.standard_normal(shape, dtype=np.float32)), np.matmul
    # one set of operands per distinct shape: the products, not the memory, are what is timed
    operands = {}
    for out_dim, in_dim in set(shapes):
        operands[out_dim, in_dim] = (new(out_dim, in_dim), new(N, in_dim), new(N, out_dim), new(N, out_dim),
                                     new(N, in_dim), new(out_dim, in_dim))

    def step():
        for shape in shapes:
            W, X, Y, dY, dX, dW = operands[shape]
            matmul(X, W.T, out=Y)           # forward
            matmul(dY, W, out=dX)           # backward to the input
            matmul(dY.T, X, out=dW)         # backward to the weight
    step.shapes, step.operands = shapes, operands     # for the benchmark's test
    return step, contextlib.nullcontext()


# ---- start-up ---------------------------------------------------------------------------------

STARTUP_SCRIPT = """
import time
start = time.perf_counter()
import numpy as np
from npllama import Llama, LlamaConfig
cfg = LlamaConfig(**{config!r})
model = Llama(cfg, seed=0)
tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=({batch}, {seq}))
model.loss_and_grads(tokens, np.roll(tokens, -1, axis=1))
print(time.perf_counter() - start)
""".format(**CONFIGS["tiny"])


def start_up(warm_runs: int = 3, script: str = STARTUP_SCRIPT) -> dict:
    """Seconds from a fresh interpreter to the end of the first tiny training step: once with an
    empty numba cache (everything the step uses compiles), then warm_runs times with it filled.
    (`script` prints the seconds last; the test gives a stand-in that compiles nothing.)"""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="npllama-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        runs = []
        for _ in range(1 + warm_runs):
            out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                 check=True, timeout=600)
            runs.append((float(out.stdout.strip().splitlines()[-1]), "compiling the Numba kernels" in out.stderr))
    (cold, cold_notice), warm = runs[0], runs[1:]
    return {"cold_s": cold, "cold_notice": cold_notice, "warm": spread([s for s, _ in warm]),
            "warm_notice": any(n for _, n in warm)}


FIRST_RUN_STEPS = 40
FIRST_RUN_COMMAND = [sys.executable, "-m", "npllama", "train", "--steps", str(FIRST_RUN_STEPS), "--samples", "0",
                     "--no-progress", "--out", "run"]


def first_run(pairs: int, command=FIRST_RUN_COMMAND, last_step: int = FIRST_RUN_STEPS) -> dict:
    """Seconds from starting `command` (in a new folder, with empty numba and npllama caches) to
    the first step's line in run/log.jsonl and to step `last_step`'s, with the compile helper and
    without, `pairs` times each, interleaved (the order alternates from pair to pair)."""
    import subprocess

    seconds = {label: {"first_step": [], "last_step": []} for label in ("helper", "one_process")}
    for pair in range(pairs):
        for label in (("helper", "one_process") if pair % 2 == 0 else ("one_process", "helper")):
            with tempfile.TemporaryDirectory(prefix="npllama-first-run-") as folder:
                env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(folder) / "numba"), PYTHONPATH=str(ROOT),
                           NPLLAMA_CACHE_DIR=str(Path(folder) / "cache"), NPLLAMA_RUNS=str(Path(folder) / "runs"),
                           NPLLAMA_PARALLEL_COMPILE="1" if label == "helper" else "0")
                log = Path(folder) / "run" / "log.jsonl"
                start = time.perf_counter()
                process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                seen = {}      # "first_step" / "last_step" -> seconds (an upper bound if it had just ended)
                while len(seen) < 2:
                    ended = process.poll() is not None
                    steps = _logged_steps(log)
                    if steps and "first_step" not in seen:
                        seen["first_step"] = time.perf_counter() - start
                    if last_step in steps and "last_step" not in seen:
                        seen["last_step"] = time.perf_counter() - start
                    if ended:
                        break
                    time.sleep(0.01)
                stderr = process.communicate(timeout=600)[1]
                if process.returncode != 0 or len(seen) < 2:
                    raise RuntimeError(f"first run ({label}) failed or logged no step {last_step}: {stderr[-2000:]}")
                for moment, value in seen.items():
                    seconds[label][moment].append(value)
    return {label: {moment: spread(values) for moment, values in moments.items()}
            for label, moments in seconds.items()}


def _logged_steps(log: Path) -> set:
    """The step numbers of the training-step lines written to log.jsonl so far."""
    from npllama.viz import read_log

    try:
        return set(read_log(log)["step"])
    except (OSError, ValueError):     # not written yet, no step yet, or a line still being written
        return set()


# ---- the parent -------------------------------------------------------------------------------

def variants_to_run(args) -> list[tuple[str, str | None]]:
    """(variant, source checkout or None) in the order of the first round."""
    chosen = [("split", None), ("unsplit", None)]
    if args.numpy:
        chosen.append(("numpy", None))
    if args.parts or (args.only and "parts" in args.only):
        chosen.append(("parts", None))
    chosen.append(("products", None))
    if not args.no_torch and torch_or_none() is not None:
        chosen += [("torch", None), ("torch-fused", None), ("torch-products", None)]
    if args.compare_with:
        chosen += [("split@old", args.compare_with), ("unsplit@old", args.compare_with)]
    if args.only:
        chosen = [(label, source) for label, source in chosen if label in args.only]
    return chosen


def measure_config(name: str, variants, rounds: int, steps: int, progress) -> dict:
    """Every variant `rounds` times, each run a fresh process, the order rotated each round."""
    from npllama import Llama

    results = {label: [] for label, _ in variants}
    with tempfile.TemporaryDirectory(prefix=f"npllama-bench-{name}-") as model_dir:
        Llama(make_config(name), seed=0, dtype=np.float32).save_pretrained(model_dir)
        for r in range(rounds):
            for label, source in variants[r % len(variants):] + variants[:r % len(variants)]:
                progress(f"  {name} round {r + 1}/{rounds}: {label}")
                variant = label.split("@")[0]
                results[label].append(run_child([__file__, "--child", variant, name, model_dir, "--steps", steps],
                                                source=source))
    B, T = CONFIGS[name]["batch"], CONFIGS[name]["seq"]
    config = make_config(name)
    flops = training_flops(config, B, T)
    products_flops = training_flops(config, B, T, attention=False)   # what `products` does
    row = {"config": name, "batch": B, "seq": T, "gflop_per_step": flops / 1e9, "variants": {}}
    for label, runs in results.items():
        step = spread([run["step_s"] for run in runs])
        row["variants"][label] = {"step_s": step, "tok_s": spread([B * T / run["step_s"] for run in runs]),
                                  "peak_rss_mib": spread([run["peak_rss_mib"] for run in runs]),
                                  "gflops": (products_flops if label in PRODUCT_VARIANTS else flops)
                                  / step["median"] / 1e9, "runs": runs}
        if runs and "parts_s" in runs[0]:
            row["variants"][label]["parts_s"] = {part: spread([run["parts_s"][part] for run in runs])
                                                 for part in runs[0]["parts_s"]}
    return row


def ratios(row: dict, faster: str, slower: str) -> dict | None:
    """faster's speed over slower's, round by round (> 1: the first is faster)."""
    a, b = row["variants"].get(faster), row["variants"].get(slower)
    return speedup(a["runs"], b["runs"], "step_s", higher_is_faster=False) if a and b else None


def print_tables(rows: list[dict], env: dict, peak: float, args) -> None:
    print(machine_line(env))
    print(f"training step, float32, forward + backward + AdamW; {args.rounds} rounds of fresh processes, "
          f"{args.steps} timed steps each; median (min-max over rounds); float32 matmul peak {peak:.0f} GFLOP/s")
    labels = [label for label in rows[0]["variants"]]
    table = []
    for row in rows:
        for label in labels:
            v = row["variants"][label]
            table.append({"config": row["config"], "variant": label, "ms": format_spread(v["step_s"], ".0f", 1e3),
                          "tok_s": format_spread(v["tok_s"]), "gflops": v["gflops"],
                          "rss": format_spread(v["peak_rss_mib"])})
    print_table(table, [("config", "config", "s"), ("variant", "variant", "s"), ("ms", "step ms", "s"),
                        ("tok_s", "tokens/s", "s"), ("gflops", "GFLOP/s", ".0f"),
                        ("rss", "peak RSS MiB", "s")])
    comparisons = [("split", "torch-fused"), ("unsplit", "torch-fused"), ("split", "torch"), ("unsplit", "torch"),
                   ("products", "torch-fused"), ("products", "torch-products"), ("products", "unsplit"),
                   ("split", "unsplit"), ("split", "split@old"), ("unsplit", "unsplit@old")]
    lines = []
    for row in rows:
        for a, b in comparisons:
            r = ratios(row, a, b)
            if r:
                rss = row["variants"][a]["peak_rss_mib"]["median"] / row["variants"][b]["peak_rss_mib"]["median"]
                lines.append({"config": row["config"], "pair": f"{a} / {b}", "speed": format_spread(r, ".2f"),
                              "rss": rss})
    if lines:
        print("speed ratios (> 1: the first is faster; per round, then median and range) and peak-RSS ratio:")
        print_table(lines, [("config", "config", "s"), ("pair", "pair", "s"), ("speed", "speed", "s"),
                            ("rss", "peak RSS", ".2f")])
    parts = [{"config": row["config"], "part": part, "ms": format_spread(spent, ".1f", 1e3),
              "share": spent["median"] / row["variants"]["parts"]["step_s"]["median"]}
             for row in rows if "parts_s" in row["variants"].get("parts", {})
             for part, spent in sorted(row["variants"]["parts"]["parts_s"].items(), key=lambda kv: -kv[1]["median"])]
    if parts:
        print("where the unsplit step's time goes (the parts variant: a timer around every op and AdamW; "
              "ms per step, median (min-max) over rounds; share of its median step):")
        print_table(parts, [("config", "config", "s"), ("part", "part", "s"), ("ms", "ms", "s"),
                            ("share", "share", ".2f")])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, help="BLAS, numba and torch threads (default: all cores)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "s15m", "m42m"],
                        help="model shapes to time (default: all three)")
    parser.add_argument("--rounds", "--repeat", type=positive_int, default=3, dest="rounds",
                        help="fresh processes per variant (interleaved rounds; default 3)")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps in each process (default 5)")
    parser.add_argument("--numpy", action="store_true", help="also time the NumPy reference backend (slow)")
    parser.add_argument("--compare-with", metavar="PATH",
                        help="also time the npllama of another checkout (e.g. an older commit: "
                             "git worktree add /tmp/old <commit>)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", choices=ALL_LABELS,
                        help="time only these variants, e.g. `--only split split@old torch-fused` for more "
                             f"rounds of one comparison in the same time (choices: {', '.join(ALL_LABELS)})")
    parser.add_argument("--parts", action="store_true",
                        help="also time where the unsplit step's time goes: a timer around every op and "
                             "around AdamW (the `parts` variant and its table)")
    parser.add_argument("--no-start-up", action="store_true", help="skip the cold and warm start-up times")
    parser.add_argument("--warm-runs", type=positive_int, default=3,
                        help="warm start-ups to time after the cold one (default 3)")
    parser.add_argument("--first-run", type=positive_int, metavar="PAIRS",
                        help="also time the default `npllama train` (40 steps) from the command to its first "
                             "step and to its 40th on empty caches, with the compile helper (first steps on the "
                             "NumPy reference meanwhile) and without, PAIRS times each")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "CONFIG", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import json

        print(json.dumps(child(*args.child, args.steps)))
        return
    if args.only and any(label.endswith("@old") for label in args.only) and not args.compare_with:
        parser.error("--only: the @old variants need --compare-with PATH")
    if args.compare_with and not (Path(args.compare_with) / "npllama" / "__init__.py").is_file():
        parser.error(f"--compare-with: {args.compare_with} holds no npllama/__init__.py (expected a checkout)")

    env = environment()
    print(machine_line(env))
    if not args.no_torch and torch_or_none() is None:
        print("(PyTorch / transformers not importable: no torch rows)")
    peak = matmul_peak_gflops()
    variants = variants_to_run(args)
    rows = [measure_config(name, variants, args.rounds, args.steps, lambda line: print(line, flush=True))
            for name in args.configs]
    print_tables(rows, env, peak, args)
    startup = None
    if not args.no_start_up:
        startup = start_up(args.warm_runs)
        print(machine_line(env))
        print(f"start-up, import npllama + tiny model + first training step, fresh process: cold (empty numba "
              f"cache) {startup['cold_s']:.1f} s{' with the compile notice' * startup['cold_notice']}; warm "
              f"{format_spread(startup['warm'], '.2f')} s{' (notice printed: stale cache?)' * startup['warm_notice']}")
    first = None
    if args.first_run:
        first = first_run(args.first_run)
        for moment, what in (("first_step", "its first step"), ("last_step", f"step {FIRST_RUN_STEPS}")):
            print(f"first run, `npllama train` on empty caches to {what}: with the compile helper "
                  f"{format_spread(first['helper'][moment], '.1f')} s; in one process "
                  f"{format_spread(first['one_process'][moment], '.1f')} s")
    write_json(args.json, {"environment": env, "matmul_peak_gflops": peak, "rounds": args.rounds,
                           "steps": args.steps, "configs": rows, "start_up": startup, "first_run": first})


if __name__ == "__main__":
    main()
