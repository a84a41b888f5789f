"""Training checkpoints: the model, the optimizer's moments and the loop's position, saved as one unit.

    checkpoint/
        model/                    Hugging Face folder (+ tokenizer.model) — loads on its own
          or params.safetensors   (fine-tuning: only the tensors it trains; the base is read again)
        optimizer.safetensors     the optimizer's arrays ("m/<param>", "v/<param>", ...), exact
        training_state.json       step, data-loader position, optimizer header, anything else

The folder is written beside its final place and renamed into it (npllama.io.atomic), so a crash
or a kill at any moment leaves either the previous checkpoint or the new one, never a mixture.
No pickle: arrays go through safetensors, everything else through JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .errors import CheckpointError
from .reading import read_json
from .hf import WEIGHTS_NAME, objective_fields, save_hf_folder
from .safetensors import read_safetensors, read_safetensors_header, write_safetensors

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
PARAMS_FILE = "params.safetensors"
FORMAT_VERSION = 1
MAX_STATE_BYTES = 16 * 1024**2  # training_state.json is a few kB; anything this big is not one


def save_checkpoint(path, model, optimizer_state: dict, state: dict, extra_files=None,
                    replace_lock=None) -> None:
    """Write model + optimizer_state (from Optimizer.state_dict()) + state (JSON-able) atomically,
    replacing the checkpoint at `path`; a folder that is not a checkpoint and holds other files is
    refused (ValueError).

    extra_files: {file name: bytes} to place inside the model folder (e.g. tokenizer.model).
    replace_lock: held around the final renames (npllama.io.atomic.atomic_directory).
    The model's config.json records its objective as save_pretrained's does (a masked-LM one).
    """
    _save(path, optimizer_state, state, replace_lock,
          lambda folder: save_hf_folder(folder / "model", model.config, model.params, extra_files=extra_files,
                                        extra_config=objective_fields(getattr(model, "objective", "causal"))))


def save_params_checkpoint(path, params: dict, optimizer_state: dict, state: dict, replace_lock=None) -> None:
    """save_checkpoint for a job that trains some tensors of a model it reads from elsewhere
    (fine-tuning: every weight, or LoRA adapters, plus a new head): `params` (name -> array)
    are written to params.safetensors, with checksums, instead of a model folder."""
    _save(path, optimizer_state, state, replace_lock,
          lambda folder: write_safetensors(folder / PARAMS_FILE, params, checksums=True))


CHECKPOINT_ENTRIES = frozenset({"model", PARAMS_FILE, OPTIMIZER_FILE, STATE_FILE})   # what _save writes


def _refuse_a_folder_of_other_files(path: Path) -> None:
    """A checkpoint replaces its folder whole: a folder that is not a checkpoint and holds anything
    a checkpoint does not write (a user's own files, a run folder given for its checkpoint/) is
    refused, never emptied.  A checkpoint (it holds training_state.json) is replaced as before,
    even holding a file someone else added (a file browser's .DS_Store): `npllama train` saves
    its run's checkpoint/ at every interval and at a stop, and a refusal there would lose the run's
    progress.  A damaged checkpoint, with only some of its entries, is replaced as usual."""
    if not path.is_dir():
        return
    entries = os.listdir(path)
    others = sorted(name for name in entries if name not in CHECKPOINT_ENTRIES)
    if others and STATE_FILE not in entries:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"path {str(path)!r} is a folder that is not a training checkpoint (it holds {shown}); "
                         "saving would replace it whole, so it is refused: give a new or empty folder, "
                         "or a checkpoint folder (e.g. 'runs/mine/checkpoint')")


def _save(path, optimizer_state: dict, state: dict, replace_lock, write_weights) -> None:
    _refuse_a_folder_of_other_files(Path(path))
    arrays, header = _split_arrays(optimizer_state)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of JSON values, got {type(state).__name__}")
    record = {"format_version": FORMAT_VERSION, "optimizer": header, **state}
    try:  # fails before anything is written
        text = json.dumps(record, indent=2, sort_keys=True, default=_numpy_scalar_as_number)
    except (TypeError, ValueError) as error:
        raise TypeError(f"state must hold only JSON values (dict, list, str, int, float, bool, None; NumPy "
                        f"scalars are saved as numbers), optimizer_state those and dicts of arrays: {error}") from None
    with atomic_directory(path, replace_lock=replace_lock) as tmp:
        write_weights(tmp)
        write_safetensors(tmp / OPTIMIZER_FILE, arrays, checksums=True)
        (tmp / STATE_FILE).write_text(text + "\n", encoding="utf-8")


def _numpy_scalar_as_number(value):
    """json's fallback: a NumPy scalar (a step counted in np.int64, a float32 loss) is the Python
    number it holds, exactly; anything else stays refused."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        number = value.item()
        if isinstance(number, (int, float, bool)):   # not np.longdouble, whose .item() is itself
            return number
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def load_checkpoint(path, dtype=None):
    """(model, optimizer_state, state) from a folder written by save_checkpoint.

    dtype: None (default) loads the model and the optimizer state in the dtype they were saved in,
    so a float64 run resumes in float64, exactly; np.float32 or np.float64 converts to it.
    Every file is checked as it is read; a missing, truncated or malformed one raises
    CheckpointError naming it.  Whether the optimizer state fits the model (names, shapes) is
    checked by the optimizer's load_state_dict.
    """
    from ..model import Llama

    path = Path(path)
    record, header = _read_record(path / STATE_FILE)
    if not (path / "model").is_dir():
        raise CheckpointError(path / "model", "is missing: a training checkpoint holds its model folder")
    if dtype is None:
        dtype = _saved_dtype(path, path / "model" / WEIGHTS_NAME)
    model = Llama.from_pretrained(path / "model", dtype=dtype)
    return model, _read_optimizer_state(path, header, model.dtype), record


def load_params_checkpoint(path, dtype=None):
    """(params, optimizer_state, state) from a folder written by save_params_checkpoint, checked
    as load_checkpoint checks its files; dtype as load_checkpoint's."""
    path = Path(path)
    record, header = _read_record(path / STATE_FILE)
    if not (path / PARAMS_FILE).is_file():
        raise CheckpointError(path / PARAMS_FILE, "is missing: a fine-tuning checkpoint holds the trained tensors")
    if dtype is None:
        dtype = _saved_dtype(path, path / PARAMS_FILE)
    params = read_safetensors(path / PARAMS_FILE, dtype=dtype)
    return params, _read_optimizer_state(path, header, np.dtype(dtype)), record


def _saved_dtype(path: Path, weights_file: Path):
    """The dtype a checkpoint was trained in, as its files store it: the optimizer's moments (kept
    in the parameters' dtype), else (an optimizer without arrays: SGD without momentum) the
    weights.  float64 for F64 tensors, else float32 (the narrowest numpy float for F16/BF16)."""
    for file in (_optimizer_file(path), weights_file):
        if not file.is_file():   # sharded weights: the model folder's index names the files
            continue
        stored = {entry["dtype"] for name, entry in read_safetensors_header(file).items()
                  if name != "__metadata__" and entry["dtype"].startswith(("F", "BF"))}
        if stored:
            return np.float64 if stored == {"F64"} else np.float32
    return np.float32


def _optimizer_file(path: Path) -> Path:
    optimizer_path = path / OPTIMIZER_FILE
    if not optimizer_path.is_file():
        raise CheckpointError(optimizer_path, "is missing: a training checkpoint holds the optimizer state")
    return optimizer_path


def _read_optimizer_state(path: Path, header: dict, dtype) -> dict:
    optimizer_path = _optimizer_file(path)
    arrays = read_safetensors(optimizer_path, dtype=dtype)
    return _join_arrays(header, arrays, optimizer_path, dtype)


def _read_record(state_path: Path) -> tuple[dict, dict]:
    """training_state.json, checked as far as load_checkpoint itself relies on it: (the record
    without its optimizer header, the header)."""
    if not state_path.is_file():
        raise CheckpointError(state_path, "is missing: not a training checkpoint")
    record = read_json(state_path, expect=dict, max_bytes=MAX_STATE_BYTES, error=CheckpointError)
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(state_path, f"has format_version {record.get('format_version')!r}, "
                                          f"expected {FORMAT_VERSION}", field="format_version")
    header = record.get("optimizer")
    if not isinstance(header, dict):
        raise CheckpointError(state_path, "has no optimizer header (a JSON object)", field="optimizer")
    groups = header.get("_array_groups", [])
    if not (isinstance(groups, list) and all(isinstance(g, str) and g for g in groups)
            and len(set(groups)) == len(groups)):
        raise CheckpointError(state_path, f"must list distinct names, got {groups!r}",
                              field="optimizer._array_groups")
    del record["optimizer"]
    return record, header


def _split_arrays(optimizer_state: dict):
    """Optimizer.state_dict() -> ({"m/<name>": array, ...}, the JSON-able rest)."""
    if not isinstance(optimizer_state, dict):
        raise TypeError(f"optimizer_state must be a dict (Optimizer.state_dict()), got "
                        f"{type(optimizer_state).__name__}")
    arrays, header = {}, {}
    for key, value in optimizer_state.items():
        if not isinstance(key, str) or "/" in key or key == "_array_groups":
            raise ValueError(f"optimizer_state keys must be names without '/', got {key!r}")
        if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            arrays.update({f"{key}/{name}": np.ascontiguousarray(a) for name, a in value.items()})
            header.setdefault("_array_groups", []).append(key)
        else:
            header[key] = list(value) if isinstance(value, tuple) else value
            if isinstance(value, dict):
                header[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return arrays, header


def _join_arrays(header: dict, arrays: dict, file: Path, dtype) -> dict:
    """The inverse of _split_arrays.  Every array must belong to a listed group, every group must
    have arrays, and every array must be a float of the model's dtype."""
    state = {k: v for k, v in header.items() if k != "_array_groups"}
    groups = header.get("_array_groups", [])
    for name, array in arrays.items():
        group = name.split("/", 1)[0]
        if "/" not in name or group not in groups:
            raise CheckpointError(file, "belongs to no optimizer state group listed in "
                                        f"{STATE_FILE} ({groups})", tensor=name)
        if array.dtype != dtype:
            raise CheckpointError(file, f"has dtype {array.dtype}; optimizer state must be float",
                                  tensor=name)
    for group in groups:
        prefix = group + "/"
        members = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not members:
            raise CheckpointError(file, f"holds no arrays for optimizer state {group!r}")
        state[group] = members
    return state
