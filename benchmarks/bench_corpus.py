"""What the first `npllama train --data FILE` costs as the corpus grows: wall time and the whole
process's peak resident memory, for synthetic corpora of a few sizes.

    python benchmarks/bench_corpus.py --sizes 20 100                       # MB of text
    python benchmarks/bench_corpus.py --sizes 20 --compare-with /tmp/old   # and another checkout's npllama

A corpus of SIZE MB is the built-in stories (npllama.corpus.make_default_corpus), drawn with a seed
and repeated in a shuffled order, one story per paragraph, written to a temporary folder that is
deleted afterwards.  Each run is one fresh child process, `python -m npllama train --data FILE
--steps 1 ...` (tiny preset, the NumPy backend, so that no compile helper runs beside it): it reads
and checks the corpus, trains the tokenizer (on a sample of at most 200,000 documents), tokenizes
everything into the run's token cache, builds the model and takes one step.  Peak RSS is the
child's ru_maxrss from wait4: everything it ever held resident, memory-mapped token pages it
touched included.  While the children run this parent has imported nothing but the standard
library, so it lends them no memory of its own (Linux carries ru_maxrss across fork + exec); the
machine line (CPU, BLAS) is recorded after the runs.

Timings are printed and written as JSON (--json PATH), never judged.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run by a child, so that this process stays small: SIZE_MB of stories into PATH
WRITE_CORPUS = """
import random, sys
from npllama.corpus import make_default_corpus
path, size, seed = sys.argv[1], float(sys.argv[2]) * 1e6, int(sys.argv[3])
stories = make_default_corpus(5000, seed=seed)
rng, written = random.Random(seed), 0
with open(path, "w", encoding="utf-8") as f:
    while written < size:
        rng.shuffle(stories)
        for story in stories:
            f.write(story + "\\n\\n")
            written += len(story.encode("utf-8")) + 2
            if written >= size:
                break
"""


def write_corpus(path: Path, size_mb: float, seed: int) -> None:
    subprocess.run([sys.executable, "-c", WRITE_CORPUS, str(path), str(size_mb), str(seed)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=path.parent)


def train_once(source: Path, corpus: Path, out: Path) -> dict:
    """One `npllama train` child on corpus, importing the npllama of checkout `source`."""
    env = dict(os.environ, PYTHONPATH=str(source), NPLLAMA_BACKEND="numpy")
    args = [sys.executable, "-m", "npllama", "train", "--data", str(corpus), "--out", str(out), "--steps", "1",
            "--preset", "tiny", "--batch-size", "4", "--seq-len", "64", "--eval-batches", "1", "--samples", "0",
            "--no-progress"]
    started = time.perf_counter()
    # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH
    child = subprocess.Popen(args, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{stderr.decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}   # ru_maxrss is in KiB on Linux


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[20, 100, 300], help="corpus sizes in MB")
    parser.add_argument("--compare-with", type=Path, help="another checkout (e.g. a git worktree of main)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sources = {"this": ROOT, **({"other": args.compare_with.resolve()} if args.compare_with else {})}
    load_at_start, rows = os.getloadavg(), []
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as folder:
        for size in args.sizes:
            corpus = Path(folder, f"corpus_{size:g}MB.txt")
            write_corpus(corpus, size, args.seed)
            for label, source in sources.items():
                run = train_once(source, corpus, Path(folder, f"run_{label}_{size:g}"))
                rows.append({"size_mb": size, "npllama": label, "source": str(source), **run})
                print(f"{size:>8g} MB  {label:>6}  {run['wall_s']:8.1f} s  {run['peak_rss_mib']:8.0f} MiB peak RSS",
                      flush=True)
            corpus.unlink()
    # the benchmarks' record of the machine, imported only now: NumPy and Numba in this process
    # would have been lent to every child above (ru_maxrss carries across fork + exec)
    from _bench import environment, machine_line, write_json

    env = dict(environment(), load_average_at_start=load_at_start)
    print(machine_line(env))
    result = {"rows": rows, "sources": {k: str(v) for k, v in sources.items()}, "environment": env}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
