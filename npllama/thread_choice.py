"""`npllama train`'s default `--threads`: the count that was fastest on this machine, measured.

Splitting a batch over threads (npllama/parallel.py) wins or loses by machine and model size:
on one 2-core machine it was 1.24x faster than the unsplit step at the tiny preset and 1.27x
slower at stories15M; on another it won at both (benchmarks/README.md).  No fixed rule holds,
so when --threads is not given, `fastest_threads` times a few training steps (forward +
backward, the step's whole cost but the optimizer's, which the split does not change) with
each candidate count, interleaved, and keeps the fastest by median.

The choice is remembered in two places:
  - the user's cache ($NPLLAMA_CACHE_DIR, else $XDG_CACHE_HOME/npllama, else ~/.cache/npllama),
    keyed by everything that decides it (CPU, cores, BLAS and its threads, the model's shape,
    batch, sequence length, dtype): a second run of the same shape on the same machine measures
    nothing, and gets the same arithmetic (a split sums the gradients in another order);
  - the run folder (threads.json): a resumed run keeps the count its first part used even if
    the cache is gone, so its losses stay those of an uninterrupted run.
`--threads N` skips all of this.  A measurement taken while other programs loaded the machine
can pick the slower count; delete the cache file (or pass --threads) to choose again.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from .parallel import BatchSplitter, default_workers

RUN_FILE = "threads.json"
CACHE_FILE = "threads.json"


def candidate_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to `most`, and `most` itself."""
    counts, k = [], 1
    while k < most:
        counts.append(k)
        k *= 2
    return counts + [most]


def cache_dir() -> Path:
    """npllama's cache folder: $NPLLAMA_CACHE_DIR, else $XDG_CACHE_HOME/npllama, else ~/.cache/npllama."""
    if os.environ.get("NPLLAMA_CACHE_DIR"):
        return Path(os.environ["NPLLAMA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npllama"


def machine_key(config, batch_size: int, seq_len: int, dtype, most: int) -> str:
    """What decides the fastest count: the machine (CPU, cores, BLAS) and the step's shape."""
    from . import __version__

    fields = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "blas": _blas_description(), "workers": most,
        "npllama": __version__, "numpy": np.__version__,
        "shape": [config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                  config.num_attention_heads, config.num_key_value_heads],
        "batch": [batch_size, seq_len], "dtype": np.dtype(dtype).name,
    }
    return json.dumps(fields, sort_keys=True)


def fastest_threads(loss_and_grads, config, batch_size: int, seq_len: int, dtype, run_dir=None,
                    echo=print, rounds: int = 3) -> int:
    """The thread count for a training loop calling loss_and_grads on (batch_size, seq_len)
    batches: from the run folder, else the user's cache, else measured (and then remembered)."""
    most = default_workers()
    if most == 1 or batch_size < 2:
        return 1   # nothing to choose: one BLAS thread, or one row (a split needs two)
    key = machine_key(config, batch_size, seq_len, dtype, most)
    remembered = _read_json(Path(run_dir) / RUN_FILE) if run_dir is not None else None
    if remembered and remembered.get("key") == key and _valid(remembered.get("threads"), most):
        return remembered["threads"]   # this run's earlier part (same machine and shape) used it
    cache_file = cache_dir() / CACHE_FILE
    cached = (_read_json(cache_file) or {}).get(key)
    if isinstance(cached, dict) and _valid(cached.get("threads"), most):
        choice, seconds, source = cached["threads"], cached.get("seconds", {}), f"cached in {cache_file}"
    else:
        echo(f"choosing --threads: timing forward + backward {rounds + 1}x with each of "
             f"{', '.join(map(str, candidate_counts(most)))} threads (once per machine and model shape)")
        seconds = measure(loss_and_grads, config.vocab_size, batch_size, seq_len, candidate_counts(most), rounds)
        choice = int(min(seconds, key=seconds.get))
        _remember(cache_file, key, {"threads": choice, "seconds": seconds})
        source = "measured now"
    if run_dir is not None:
        _write_json(Path(run_dir) / RUN_FILE, {"threads": choice, "seconds": seconds, "key": key})
    timings = ", ".join(f"{k} thread{'s' * (int(k) > 1)} {s:.3f} s" for k, s in sorted(seconds.items(), key=lambda kv: int(kv[0])))
    echo(f"threads: {choice} ({source}: median step {timings}; --threads N to choose)")
    return choice


def measure(loss_and_grads, vocab_size: int, batch_size: int, seq_len: int, counts, rounds: int = 3) -> dict:
    """Median seconds of loss_and_grads on a random (batch_size, seq_len) batch for each thread
    count: one warm-up each, then `rounds` rounds taking every count in turn (so that a noisy
    neighbour slows all of them alike).  Keys are the counts as strings (they go to JSON)."""
    rng = np.random.default_rng(0)       # its own generator: the run's data order is untouched
    tokens = rng.integers(0, vocab_size, size=(batch_size, seq_len))
    targets = np.roll(tokens, -1, axis=1)
    splitters = {k: BatchSplitter(k) for k in counts}
    times = {k: [] for k in counts}
    try:
        for round_ in range(rounds + 1):
            for k, splitter in splitters.items():
                with splitter.holding_blas(batch_size):   # as the training loop holds it
                    start = time.perf_counter()
                    splitter.loss_and_grads(loss_and_grads, tokens, targets)
                    if round_:                              # round 0 is the warm-up
                        times[k].append(time.perf_counter() - start)
    finally:
        for splitter in splitters.values():
            splitter.close()
    return {str(k): statistics.median(t) for k, t in times.items()}


def _valid(threads, most: int) -> bool:
    return isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= most


def _remember(cache_file: Path, key: str, value: dict) -> None:
    entries = _read_json(cache_file) or {}
    entries[key] = value
    _write_json(cache_file, entries)


def _read_json(path: Path):
    from .io.reading import read_json

    try:
        return read_json(path, expect=dict)
    except (OSError, ValueError):
        return None         # missing, unreadable, damaged or not an object: measure again


def _write_json(path: Path, data: dict) -> None:
    """Best effort, atomically (a cache that cannot be written only costs a measurement)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _blas_description() -> list:
    """NumPy's BLAS: its name, version, kernel architecture and thread count (threadpoolctl).

    Only the library NumPy loaded, the one its products run on: the process may load others
    later (SciPy's OpenBLAS comes with a numba import), and a key that listed every library
    loaded so far changed within a process, so two runs of one shape could choose different
    thread counts, and so sum in a different order."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    found = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return [[i.get("internal_api"), i.get("version"), i.get("architecture"), i.get("num_threads")]
            for i in _numpys_own(found)]


def _numpys_own(libraries: list[dict]) -> list[dict]:
    """The libraries inside NumPy's installation (its wheel bundles its BLAS in numpy.libs, or in
    numpy/.dylibs on macOS); all of them for a NumPy linked to a BLAS of the system."""
    package = Path(np.__file__).resolve().parent
    folders = (package, package.parent / "numpy.libs")
    own = [i for i in libraries if any(Path(i.get("filepath", "")).resolve().is_relative_to(f) for f in folders)]
    return own or libraries
