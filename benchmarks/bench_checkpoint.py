"""What a training checkpoint costs: save and load time at a model shape, and the share of each
spent hashing (the per-tensor sha256 that makes a damaged file an error naming its tensor) and
building the tokenizer files that travel with the model.

    python benchmarks/bench_checkpoint.py                       # s15m: 15M parameters, 32,000 pieces
    python benchmarks/bench_checkpoint.py --configs tiny s15m --repeat 3 --json checkpoint.json

A checkpoint is the model (a Hugging Face folder with tokenizer.model), AdamW's two moments and a
small JSON: about 3x the parameter bytes.  Times are the best of --repeat, on the page cache (the
fsyncs are included; a cold disk is slower).  Printed and written as JSON, never judged.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
import time
from pathlib import Path

from _bench import CONFIGS, best_time, environment, make_config, machine_line, positive_int, print_table, write_json

import numpy as np


def synthetic_tokenizer_bytes(vocab_size: int) -> bytes:
    """A SentencePiece BPE model of vocab_size pieces (LLaMA's layout: <unk>, <s>, </s>, 256 bytes,
    then words), so the tokenizer files a checkpoint carries have their real size."""
    from npllama.io.sentencepiece_model import BYTE, CONTROL, NORMAL, UNKNOWN, build_bpe_model

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ("".join(p) for n in itertools.count(1) for p in itertools.product(letters, repeat=n))
    while len(pieces) < vocab_size:
        pieces.append("\u2581" + next(words))
        types.append(NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces) - 259)]
    return build_bpe_model(pieces, scores, types, byte_fallback=True)


def a_trained_state(config, seed: int = 0):
    """A model and an AdamW that has taken a step (moments not all zero), float32."""
    from npllama import Llama
    from npllama.optim import AdamW

    model = Llama(config, seed=seed, dtype=np.float32)
    optimizer = AdamW(model.params, lr=1e-3)
    rng = np.random.default_rng(seed)
    optimizer.step({n: rng.standard_normal(p.shape).astype(np.float32) * 1e-3 for n, p in model.params.items()})
    return model, optimizer


def live_state(optimizer) -> dict:
    """The optimizer state as the training loop hands it to a checkpoint (live arrays where the
    checked-out npllama can: NPLLAMA_BENCH_SOURCE may be an older one)."""
    import inspect

    copy = {"copy": False} if "copy" in inspect.signature(optimizer.state_dict).parameters else {}
    return optimizer.state_dict(**copy)


def hashing_seconds(arrays: list[np.ndarray], repeat: int) -> float:
    """sha256 over these arrays' bytes, as the checksums do: one save hashes each once, a load again."""
    def hash_all():
        for a in arrays:
            hashlib.sha256(a.reshape(-1).view(np.uint8)).digest()
    return best_time(hash_all, repeat=repeat)["best"]


def measure(name: str, repeat: int) -> dict:
    from npllama.io.train_state import load_checkpoint, save_checkpoint
    from npllama.tokenizer import Tokenizer

    config = make_config(name)
    model, optimizer = a_trained_state(config)
    tokenizer_bytes = synthetic_tokenizer_bytes(config.vocab_size)
    state = {"step": 1, "loader": {}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint"
        save = best_time(lambda: save_checkpoint(path, model, live_state(optimizer), state,
                                                 extra_files={"tokenizer.model": tokenizer_bytes}), repeat=repeat)
        load = best_time(lambda: load_checkpoint(path, dtype=np.float32), repeat=repeat)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    arrays = list(model.params.values()) + list(optimizer.m.values()) + list(optimizer.v.values())
    hashed = hashing_seconds(arrays, repeat)
    tokenizer_files = best_time(lambda: Tokenizer.from_bytes(tokenizer_bytes).hf_files(
        model_max_length=config.max_position_embeddings), repeat=repeat)["best"]
    return {"config": name, "parameters": int(sum(p.size for p in model.params.values())),
            "checkpoint_mb": size / 1e6, "save_s": save["best"], "load_s": load["best"],
            "hash_s": hashed, "hash_share_of_save": hashed / save["best"],
            "hash_share_of_load": hashed / load["best"], "tokenizer_files_s": tokenizer_files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["s15m"], choices=list(CONFIGS),
                        help="model shapes to checkpoint")
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed repeats (the best is kept)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    env = environment()
    print(machine_line(env))
    rows = [measure(name, args.repeat) for name in args.configs]
    print_table(rows, [("config", "config", "s"), ("parameters", "parameters", ",d"),
                       ("checkpoint_mb", "checkpoint MB", ".1f"), ("save_s", "save s", ".3f"),
                       ("load_s", "load s", ".3f"), ("hash_s", "sha256 of all tensors s", ".3f"),
                       ("hash_share_of_save", "hash/save", ".0%"), ("hash_share_of_load", "hash/load", ".0%"),
                       ("tokenizer_files_s", "tokenizer files s", ".4f")])
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows, "time": time.time()})


if __name__ == "__main__":
    main()
