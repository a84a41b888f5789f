"""Run folders: where `npllama train` writes, and how other commands find a model.

    runs/<name>/
        train_config.json      the settings of the run (resume checks them)
        tokenizer.model        the SentencePiece model the run uses
        tokens.npy             the tokenized corpus (a cache; safe to delete)
        log.jsonl              one JSON object per step / evaluation
        loss.png               the loss curves (when matplotlib is installed)
        checkpoint/            the latest resumable state, replaced atomically:
            model/             a Hugging Face folder (config.json, model.safetensors, tokenizer.model)
            optimizer.safetensors, training_state.json
        model/                 the final model, a Hugging Face folder with tokenizer.model inside
    runs/LATEST                the path of the run written last (what `--model` defaults to)

Anything that takes `--model` accepts a run folder, a run's `model/` or `checkpoint/`, or any
Hugging Face LLaMA folder (config.json + model.safetensors).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .io.atomic import _OLD_TAG, _TMP_TAG, atomic_write_text, backup_paths

DEFAULT_RUNS_DIR = Path("runs")
LATEST_FILE = "LATEST"
TOKENIZER_FILE = "tokenizer.model"


def runs_dir() -> Path:
    return Path(os.environ.get("NPLLAMA_RUNS", DEFAULT_RUNS_DIR))


def mark_latest(run_dir: Path) -> None:
    """Record run_dir as the run `--model` defaults to."""
    base = runs_dir()
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base / LATEST_FILE, str(Path(run_dir).resolve()) + "\n")


def latest_run() -> Path:
    """The run folder written last, or a FileNotFoundError that says how to make one."""
    marker = runs_dir() / LATEST_FILE
    if marker.is_file():
        path = Path(marker.read_text(encoding="utf-8").strip())
        if path.is_dir():
            return path
    raise FileNotFoundError(f"no trained model found ({marker} names none); run `npllama train` first "
                            f"or pass --model DIR")


def recover_checkpoint(run_dir: Path) -> Path | None:
    """The run's checkpoint folder, restoring it from the backup an interrupted replace left behind."""
    checkpoint = Path(run_dir) / "checkpoint"
    if not checkpoint.exists():
        backups = backup_paths(checkpoint)
        if backups:
            os.replace(backups[-1], checkpoint)
    return checkpoint if (checkpoint / "training_state.json").is_file() else None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what interrupted writes left in a run folder; returns what was removed.

    A kill during an atomic write leaves hidden temporaries beside the file or folder being
    replaced (`.checkpoint.tmp-*`, `.log.jsonl.tmp-*`, the tokenizer's `.tokenizer-training.*`,
    data.py's `tokens.npy*.tmp`) and, if it came between the two renames of a folder replacement,
    the old folder under `.<name>.old-*`.  Such a backup is removed only once the folder it
    backs up exists again (else `recover_checkpoint` restores it first).  Only the process that
    owns the run (`npllama train --resume`) may call this: another writer's temporaries would go too.
    """
    run_dir = Path(run_dir)
    recover_checkpoint(run_dir)
    removed = []
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        name = path.name
        stale = (name.startswith(".") and _TMP_TAG in name) or name.startswith(".tokenizer-training.") \
            or (name.startswith("tokens.npy") and name.endswith(".tmp"))
        for final in ("checkpoint", "model"):
            if name.startswith(f".{final}{_OLD_TAG}") and (run_dir / final).is_dir():
                stale = True
        if stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def resolve_model_dir(path=None) -> Path:
    """The Hugging Face folder to load for `path` (None: the latest run's model)."""
    path = latest_run() if path is None else Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    candidates = [path, path / "model", path / "checkpoint" / "model"]
    if (path / "training_state.json").is_file():  # a run's checkpoint/ folder
        candidates.insert(0, path / "model")
    if not (path / "model" / "config.json").is_file():
        recover_checkpoint(path)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{str(path)!r} holds no model: expected config.json and model.safetensors "
                            f"(a Hugging Face folder) or a run folder made by `npllama train`")


def find_tokenizer(model_dir: Path) -> Path:
    """tokenizer.model inside the model folder, or in the run folder around it."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / TOKENIZER_FILE, model_dir.parent / TOKENIZER_FILE,
                      model_dir.parent.parent / TOKENIZER_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {TOKENIZER_FILE} found in or beside {str(model_dir)!r}; "
                            f"a SentencePiece tokenizer is needed to turn text into tokens")


def load_tokenizer(model_dir: Path):
    """The tokenizer of a model folder: a SentencePiece tokenizer.model in or beside it, else a
    Hugging Face tokenizer.json in it (npllama.tokenizer_json, needs the `tokenizers` library)."""
    from .tokenizer import Tokenizer
    from .tokenizer_json import JSON_FILE, JsonTokenizer

    try:
        return Tokenizer(find_tokenizer(model_dir))
    except FileNotFoundError:
        if (Path(model_dir) / JSON_FILE).is_file():
            return JsonTokenizer(model_dir)
        raise FileNotFoundError(f"no {TOKENIZER_FILE} or {JSON_FILE} found in or beside {str(model_dir)!r}; "
                                f"a tokenizer is needed to turn text into tokens") from None


def load_model_and_tokenizer(path=None, dtype=None):
    """(model, tokenizer, model_dir) for `--model path` (None: the latest run)."""
    import numpy as np

    from .model import Llama

    model_dir = resolve_model_dir(path)
    model = Llama.from_pretrained(model_dir, dtype=dtype or np.float32)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.check_vocab(model.config.vocab_size)
    return model, tokenizer, model_dir
