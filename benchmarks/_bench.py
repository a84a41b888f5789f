"""What the speed benchmarks share: the configs, a timer, the machine's matmul peak, the
environment record, a table printer.  Timings are printed and written as JSON, never judged.

Import this module before NumPy: a `--threads N` argument on the command line is turned into
OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS / OMP_NUM_THREADS / NPLLAMA_DECODE_THREADS here, which only take effect if set
before the libraries load (PyTorch then gets the same count).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path


def _threads_from_argv() -> None:
    """--threads N (or --threads=N) into the thread variables; a missing or bad N is left for
    argparse to report."""
    values = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")]
    if "--threads" in sys.argv[:-1]:
        values.append(sys.argv[sys.argv.index("--threads") + 1])
    if values and values[-1].isdigit() and int(values[-1]) > 0:
        for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "NPLLAMA_DECODE_THREADS"):
            os.environ[var] = values[-1]


_threads_from_argv()

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Which npllama a benchmark process imports: this checkout's, or another one's (an older commit,
# to check that speed did not fall) when the parent sets NPLLAMA_BENCH_SOURCE for a child.
SOURCE_ENV = "NPLLAMA_BENCH_SOURCE"
sys.path.insert(0, os.environ.get(SOURCE_ENV) or str(ROOT))

from npllama import LlamaConfig  # noqa: E402

# The two training configs (batch, seq_len with them).
CONFIGS = {
    "tiny": dict(config=dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
                 batch=16, seq=128),
    "s15m": dict(config=dict(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                             num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
                 batch=4, seq=256),
    # llama2.c's stories42M shape (its context is 1024; the step is timed at the s15m batch)
    "m42m": dict(config=dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
                 batch=4, seq=256),
}


def positive_int(text: str) -> int:
    """argparse type for counts (--threads, --repeat, sizes): an int >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def make_config(name: str) -> LlamaConfig:
    return LlamaConfig(**CONFIGS[name]["config"])


def best_time(fn, repeat: int = 5, warmup: int = 1) -> dict:
    """Wall-clock seconds of fn(): best and median of `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best": min(times), "median": statistics.median(times)}


def matmul_peak_gflops(n: int = 2048, dtype=np.float32, repeat: int = 5) -> float:
    """Float32 (n, n) @ (n, n) with NumPy's BLAS: the machine's practical GEMM peak."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    seconds = best_time(lambda: a @ b, repeat=repeat)["best"]
    return 2 * n**3 / seconds / 1e9


def training_flops(config: LlamaConfig, batch: int, seq: int, attention: bool = True) -> float:
    """Floating-point operations of one forward + backward: 6 per matrix parameter per token, plus
    (attention=True) attention's q k^T and p v, 12 * layers * B * H * T^2 * hd counted in full (the
    usual convention, though causal blocks let the kernels skip much of the masked half)."""
    tokens = batch * seq
    matrix_params = config.num_parameters()
    if not config.tie_word_embeddings:
        matrix_params -= config.vocab_size * config.hidden_size   # the embedding: a lookup, no products
    matrix_params -= config.hidden_size * (2 * config.num_hidden_layers + 1)           # norm weights
    scores = 12 * config.num_hidden_layers * batch * config.num_attention_heads * seq**2 * config.head_dim
    return 6 * matrix_params * tokens + (scores if attention else 0)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: Linux's VmHWM, else ru_maxrss.

    Not ru_maxrss where VmHWM exists: Linux carries a process's ru_maxrss across fork + exec,
    so a benchmark child started by a parent holding 400 MiB (PyTorch imported, a model built)
    would report at least 400 MiB whatever it used itself.  VmHWM belongs to the program the
    child runs: everything it ever held resident (interpreter, imports, model, steps)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def spread(values) -> dict:
    """Median and range of repeated measurements (each from its own process)."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def speedup(runs_a: list[dict], runs_b: list[dict], key: str, higher_is_faster: bool) -> dict | None:
    """How many times faster a ran than b, round by round (run i of each ran in the same round),
    as a spread: > 1 means a is faster.  key: a time (higher_is_faster=False) or a rate."""
    pairs = [(a.get(key), b.get(key)) for a, b in zip(runs_a, runs_b)]
    if not pairs or any(x is None or y is None for x, y in pairs):
        return None
    return spread([x / y if higher_is_faster else y / x for x, y in pairs])


def format_spread(summary: dict | None, spec: str = ".0f", scale: float = 1.0) -> str:
    """'823 (790-850)': the median, then the range."""
    if not summary:
        return "-"
    m, lo, hi = (scale * summary[k] for k in ("median", "min", "max"))
    return f"{m:{spec}} ({lo:{spec}}-{hi:{spec}})" if summary["n"] > 1 else f"{m:{spec}}"


def run_child(args: list, source: str | None = None, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run `python <args>` in a fresh process and return the JSON object on its last stdout line.
    source: the checkout whose npllama it imports (default: this one)."""
    import subprocess

    child_env = dict(os.environ, **(env or {}))
    if source:
        child_env[SOURCE_ENV] = str(source)
        child_env["PYTHONPATH"] = str(source)
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=child_env,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """lscpu's model name (else /proc/cpuinfo's, else platform's)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def blas_libraries() -> list[dict]:
    """The BLAS libraries NumPy loaded, as threadpoolctl reports them (name, version, kernels, threads)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_line(env: dict) -> str:
    """One line naming the CPU and BLAS, printed above every table."""
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']} kernels, {b['num_threads']} threads)"
                     for b in env["blas"]) or "unknown (threadpoolctl not installed)"
    # Some machines pin OpenBLAS's kernels (older OpenBLAS builds misbehaved on their CPUs): say
    # so, since it decides how fast NumPy's products are (not PyTorch's: its BLAS is MKL).
    forced = ", ".join(f"{name}={env[name]}" for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                       if env.get(name) and not env[name].startswith("(unset"))
    blas += f" [forced by {forced}]" if forced else ""
    torch = f", torch {env['torch']}" if env.get("torch") else ", torch not installed"
    return (f"machine: {env['cpu']}, {env['cpu_count']} cores; BLAS: {blas}; numpy {env['numpy']}, "
            f"numba {env['numba']}{torch}")


def environment() -> dict:
    import numba

    env = {
        "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS, "cpu_count": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset: auto-detected)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset: auto-detected)"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
        "load_average_at_start": os.getloadavg(), "cpu": cpu_model(), "blas": blas_libraries(),
        "torch": package_version("torch"), "transformers": package_version("transformers"),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    return env


def torch_or_none():
    """torch and transformers if importable, else None (the comparison is optional)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None
    return torch


def as_torch_model(model):
    """The same weights as a transformers LlamaForCausalLM (float32, SDPA attention), through a
    temporary Hugging Face folder; torch gets numba's thread count."""
    import tempfile

    import numba
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # not get_num_threads(): see README
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="sdpa")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, heading, format spec); a missing value prints as '-'."""
    cells = [[heading for _, heading, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path, payload: dict) -> None:
    if path:
        payload = dict(payload, environment=dict(payload.get("environment", {}),
                                                 load_average_at_end=os.getloadavg()))
        Path(path).write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"wrote {path}")
