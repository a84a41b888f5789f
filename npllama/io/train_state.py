"""Training checkpoints: the model, the optimizer's moments and the loop's position, saved as one unit.

    checkpoint/
        model/                    Hugging Face folder (+ tokenizer.model) — loads on its own
        optimizer.safetensors     the optimizer's arrays ("m/<param>", "v/<param>", ...), exact
        training_state.json       step, data-loader position, optimizer header, anything else

The folder is written beside its final place and renamed into it (npllama.io.atomic), so a crash
or a kill at any moment leaves either the previous checkpoint or the new one, never a mixture.
No pickle: arrays go through safetensors, everything else through JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .errors import CheckpointError
from .hf import save_hf_folder
from .safetensors import read_safetensors, write_safetensors

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer_state: dict, state: dict, extra_files=None) -> None:
    """Write model + optimizer_state (from Optimizer.state_dict()) + state (JSON-able) atomically.

    extra_files: {file name: bytes} to place inside the model folder (e.g. tokenizer.model).
    """
    arrays, header = _split_arrays(optimizer_state)
    record = {"format_version": FORMAT_VERSION, "optimizer": header, **state}
    text = json.dumps(record, indent=2, sort_keys=True)  # fails early on a non-JSON value
    with atomic_directory(path) as tmp:
        save_hf_folder(tmp / "model", model.config, model.params, extra_files=extra_files)
        write_safetensors(tmp / OPTIMIZER_FILE, arrays)
        (tmp / STATE_FILE).write_text(text + "\n", encoding="utf-8")


def load_checkpoint(path, dtype=np.float32):
    """(model, optimizer_state, state) from a folder written by save_checkpoint."""
    from ..model import Llama

    path = Path(path)
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(state_path, "is missing: not a training checkpoint")
    try:
        record = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(state_path, f"is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(state_path, f"has format_version {record.get('format_version') if isinstance(record, dict) else None!r}, "
                                          f"expected {FORMAT_VERSION}")
    header = record.pop("optimizer", None)
    if not isinstance(header, dict):
        raise CheckpointError(state_path, "has no optimizer header")
    model = Llama.from_pretrained(path / "model", dtype=dtype)
    arrays = read_safetensors(path / OPTIMIZER_FILE, dtype=dtype)
    return model, _join_arrays(header, arrays, path / OPTIMIZER_FILE), record


def _split_arrays(optimizer_state: dict):
    """Optimizer.state_dict() -> ({"m/<name>": array, ...}, the JSON-able rest)."""
    arrays, header = {}, {}
    for key, value in optimizer_state.items():
        if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            arrays.update({f"{key}/{name}": np.ascontiguousarray(a) for name, a in value.items()})
            header.setdefault("_array_groups", []).append(key)
        else:
            header[key] = list(value) if isinstance(value, tuple) else value
            if isinstance(value, dict):
                header[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return arrays, header


def _join_arrays(header: dict, arrays: dict, file: Path) -> dict:
    state = {k: v for k, v in header.items() if k != "_array_groups"}
    for group in header.get("_array_groups", []):
        prefix = group + "/"
        members = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not members:
            raise CheckpointError(file, f"holds no arrays for optimizer state {group!r}")
        state[group] = members
    return state
