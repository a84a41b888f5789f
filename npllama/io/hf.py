"""Hugging Face model folders: config.json + model.safetensors (or shards with an index).

    config, params = load_hf_folder("TinyLlama-1.1B", dtype=np.float32)
    save_hf_folder("out/model", config, params)      # transformers' from_pretrained reads it

The parameter names are Hugging Face's ("model.layers.0.self_attn.q_proj.weight", ...), the same
keys as `LlamaConfig.param_shapes()`, so nothing is renamed or permuted here.

Loading checks, before any tensor data is read: config.json is a LLaMA config; the memory the
parameters need fits the budget; every shard named by the index stays inside the folder and
exists; the tensor names are exactly the config's (a stale `rotary_emb.inv_freq` buffer is
skipped; with tied embeddings an `lm_head.weight` is accepted only if it equals the embedding);
every shape matches and every dtype is a float.  Each failure is a `CheckpointError` naming the
file and the tensor or field.  Pickle checkpoints (pytorch_model.bin) are never opened.

generation_config.json's eos_token_id, where it lists ids config.json does not, joins the
config's end ids (`with_generation_end_ids`): transformers' generate stops at them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..config import ATTENDS_CAUSALLY, LlamaConfig, check_end_ids, check_objective
from .atomic import atomic_directory
from .errors import CheckpointError
from .reading import read_json
from .safetensors import (FLOAT_DTYPES, largest_finite, read_safetensors, read_safetensors_header, stays_finite,
                          write_safetensors)

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SCORE_NAME = "score.weight"   # a sequence classifier's head (LlamaForSequenceClassification)
ADAPTER_CONFIG_NAME = "adapter_config.json"   # a PEFT/LoRA adapter folder's (npllama.lora)
# The files of a tokenizer in transformers' layout.  AutoTokenizer reads tokenizer.json before
# tokenizer.model, and added_tokens.json adds ids: a save that writes a tokenizer drops the old
# ones it does not write, or they, not the tokenizer given, would be what the folder loads with.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# A folder's chat template, where transformers 5 saves it (beside the config; npllama.chat reads it
# before tokenizer_config.json's chat_template)
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The weights of the model a folder held before a save writes model.safetensors: an old index
# and its shards (load_hf_folder reads an index before model.safetensors), an old pickle
# (transformers loads it with use_safetensors=False).  A save replaces them as it replaces the model.
_OLD_WEIGHTS = re.compile(r"model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors"
                          r"|pytorch_model\.bin(\.index\.json)?|pytorch_model-\d{5}-of-\d{5}\.bin")
# npllama's own config.json field: the objective the model was trained with.  Absent (any Hugging
# Face LLaMA): "causal", next-token prediction.  "mlm": `npllama train --objective mlm`, the stack
# without the causal mask, which must not be used to predict next tokens.  transformers keeps the
# field as an attribute and otherwise ignores it; LlamaConfig.from_dict ignores it.
OBJECTIVE_FIELD = "npllama_objective"
OBJECTIVES = tuple(ATTENDS_CAUSALLY)   # config.attends_causally: which of them run causally

# Never allocate more than this for parameters, whatever the machine (and never more than its RAM).
MAX_LOAD_BYTES = 64 * 1024**3
# config.json is a few kB and an index a few MB even for the largest models: anything far bigger
# is not what it claims to be, and is refused before it is read into memory.
MAX_JSON_BYTES = 64 * 1024**2

# Older checkpoints saved RoPE's inverse frequencies as a buffer (per layer, or once in the
# model-level rotary_emb of later transformers 4.x); we compute them from the config.
_SKIPPED = re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")

_SAVE_DTYPES = {  # accepted `dtype` for saving -> (torch_dtype name, write_safetensors as_dtype)
    "float32": ("float32", "f32"), "float64": ("float64", "f64"),
    "float16": ("float16", "f16"), "bfloat16": ("bfloat16", "bf16"),
}


# ----- loading ------------------------------------------------------------------------------------

def load_hf_folder(path, dtype=np.float32) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read a Hugging Face LLaMA folder.  Returns (config, params), params keyed and ordered as
    `config.param_shapes()`, each a new C-contiguous writeable array of `dtype`
    (np.float32 or np.float64)."""
    config, params, _ = load_hf_model(path, dtype)
    return config, params


def load_hf_model(path, dtype=np.float32) -> tuple[LlamaConfig, dict[str, np.ndarray], str]:
    """load_hf_folder's (config, params) and the objective config.json records ("causal" or
    "mlm", see OBJECTIVE_FIELD), from one read of config.json."""
    dtype = _float_dtype("dtype", dtype)
    folder, config, raw = _open_folder(path, dtype, "a Hugging Face model folder")
    objective = objective_of(raw, folder / CONFIG_NAME)
    config = with_generation_end_ids(config, folder / GENERATION_CONFIG_NAME)

    # tensor name -> file holding it; each file's header; the file listing them (index or single)
    tensor_files, headers, source = _tensor_files(folder)
    if SCORE_NAME in tensor_files and "lm_head.weight" not in tensor_files:
        raise CheckpointError(tensor_files[SCORE_NAME], "this is a sequence-classification model "
                              "(LlamaForSequenceClassification: a score head, no lm_head): it labels texts and "
                              "does not predict tokens; use it with `npllama classify --model "
                              f"{folder}` (Python: npllama.load_classifier)", tensor=SCORE_NAME)
    to_read, tied_head = _check_names_and_shapes(config, tensor_files, headers, source)

    # Only now is tensor data read: every size has been checked against the config.
    params = _read_params(to_read, tied_head, dtype)
    # read_safetensors gives every tensor its own fresh array; _own_array only fixes layout.
    return config, {name: _own_array(params.pop(name), dtype) for name in config.param_shapes()}, objective


def objective_fields(objective: str) -> dict:
    """What config.json records beyond LLaMA's fields for a model trained with `objective`: a
    masked-LM model is marked as one, so nothing takes it for a causal LM (objective_of reads it
    back); a causal model's config.json is plain LLaMA."""
    return {} if objective == "causal" else {OBJECTIVE_FIELD: objective}


def objective_of(raw: dict, config_path) -> str:
    """The objective a config.json's fields (`raw`) record: "causal" when OBJECTIVE_FIELD is
    absent, else its value, which must be one of ATTENDS_CAUSALLY's (a CheckpointError naming the file)."""
    objective = raw.get(OBJECTIVE_FIELD, "causal")
    try:
        return check_objective(objective)
    except ValueError:   # the objectives as config.json writes them
        raise CheckpointError(config_path, f"must be one of {', '.join(map(json.dumps, ATTENDS_CAUSALLY))}, "
                              f"got {str(objective)[:40]!r}", field=OBJECTIVE_FIELD) from None


def load_hf_classifier_folder(path, dtype=np.float32) -> tuple[LlamaConfig, dict[str, np.ndarray], np.ndarray, dict]:
    """Read a LlamaForSequenceClassification folder (transformers', or `npllama finetune classify
    --out`): model.* tensors and `score.weight` (num_labels, hidden_size), no LM head.

    Returns (config, params, score_weight, raw config.json dict -- id2label and the like).  params
    has the causal model's keys; an untied `lm_head.weight`, which a classifier does not have and
    never uses, is zeros.  The same checks as load_hf_folder, each a CheckpointError.
    """
    dtype = _float_dtype("dtype", dtype)
    folder, config, raw = _open_folder(path, dtype, "a classifier folder (with score.weight)")
    tensor_files, headers, source = _tensor_files(folder)
    score_file = tensor_files.pop(SCORE_NAME, None)
    if score_file is None:
        raise CheckpointError(source, "missing: a sequence classifier holds score.weight (its head); this "
                                      "folder looks like a causal language model: use `npllama generate` "
                                      "with it, or make a classifier with `npllama finetune classify --out DIR`",
                              tensor=SCORE_NAME)
    score_entry = headers[score_file][SCORE_NAME]
    if score_entry["dtype"] not in FLOAT_DTYPES or len(score_entry["shape"]) != 2 \
            or score_entry["shape"][1] != config.hidden_size or score_entry["shape"][0] < 1:
        raise CheckpointError(score_file, f"must be a float (num_labels, hidden_size={config.hidden_size}) "
                                          f"matrix, got {score_entry['dtype']} {tuple(score_entry['shape'])}",
                              tensor=SCORE_NAME)
    to_read, tied_head = _check_names_and_shapes(config, tensor_files, headers, source,
                                                 optional=("lm_head.weight",))
    params = _read_params(to_read, tied_head, dtype)
    shapes = config.param_shapes()
    if "lm_head.weight" in shapes and "lm_head.weight" not in params:
        params["lm_head.weight"] = np.zeros(shapes["lm_head.weight"], dtype=dtype)
    score = read_safetensors(score_file, names=[SCORE_NAME], dtype=dtype)[SCORE_NAME]
    return config, {name: _own_array(params.pop(name), dtype) for name in shapes}, _own_array(score, dtype), raw


def _open_folder(path, dtype, kind: str) -> tuple[Path, LlamaConfig, dict]:
    """The folder, its config and config.json as read (id2label and the like), once the folder
    exists and the parameters fit in memory."""
    folder = Path(path)
    if not folder.is_dir():
        from .describe import describe_path   # what it is instead, and how to load that

        raise FileNotFoundError(f"{folder} is not a folder (expected {kind} holding {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME}): it {describe_path(folder)}")
    config, raw = _read_config_and_fields(folder / CONFIG_NAME)
    _check_memory_budget(folder / CONFIG_NAME, config, dtype)
    return folder, config, raw


def _read_params(to_read: dict[str, Path], tied_head: Path | None, dtype) -> dict[str, np.ndarray]:
    """The tensors of to_read (name -> file), one read per file; a tied head checked equal."""
    params: dict[str, np.ndarray] = {}
    for file in sorted(set(to_read.values())):
        params.update(read_safetensors(file, names=[n for n, f in to_read.items() if f == file], dtype=dtype))
    if tied_head is not None:
        _check_tied_head(tied_head, params, dtype)
    return params


def with_generation_end_ids(config: LlamaConfig, generation_config_path) -> LlamaConfig:
    """config, its eos_token_id joined by the ids generation_config.json's eos_token_id adds, if the
    file exists.  transformers' generate stops at that file's ids, which can be more than
    config.json's: Meta-Llama-3-8B-Instruct lists its end of turn (128009) only there.  Joined,
    not replaced, as npllama adds the tokenizer's </s> too: one more id to stop at is safe, a
    missing one lets the text run on past its end.  A file that is no JSON object, or a malformed
    id, is a CheckpointError, as in config.json."""
    path = Path(generation_config_path)
    if not path.is_file():
        return config
    fields = _load_json(path, expect=dict)
    listed = fields.get("eos_token_id")
    if listed is None or listed == []:
        return config
    try:
        ids = check_end_ids(listed, config.vocab_size)    # as config.json's own eos_token_id is checked
    except ValueError as e:
        problem = str(e).removeprefix("eos_token_id ")
        raise CheckpointError(path, f"{problem} (config.json's vocab_size is {config.vocab_size})",
                              field="eos_token_id") from None
    joined = list(dict.fromkeys([*config.end_ids, *ids]))
    if joined == list(config.end_ids):
        return config
    return dataclasses.replace(config, eos_token_id=joined[0] if len(joined) == 1 else joined)


def read_config(config_path) -> LlamaConfig:
    """config.json -> LlamaConfig; any problem is a CheckpointError naming the file."""
    return _read_config_and_fields(config_path)[0]


def _read_config_and_fields(config_path) -> tuple[LlamaConfig, dict]:
    """(LlamaConfig, config.json's fields as read), from one read of the file."""
    config_path = Path(config_path)
    if not config_path.is_file():
        meta = (config_path.parent / "params.json").is_file() and any(config_path.parent.glob("consolidated.*.pth"))
        raise CheckpointError(config_path, "missing: a Hugging Face model folder needs its config.json" + (
            "; this folder looks like Meta's original release (params.json, consolidated.*.pth: "
            "pickles, with q/k in Meta's RoPE layout): convert it with transformers' "
            "convert_llama_weights_to_hf.py, which writes a Hugging Face folder" if meta else ""))
    raw = _load_json(config_path, expect=dict)
    try:
        return LlamaConfig.from_dict(raw), raw
    except (ValueError, TypeError) as e:
        error = CheckpointError(config_path, str(e))
        # LlamaConfig's messages start with the field's name ("hidden_size must be ..."):
        # keep it as .field for callers, without repeating it in the message.
        first_word = re.match(r"[A-Za-z_][\w.]*", str(e))
        if first_word and first_word.group().split(".")[0] in raw:
            error.field = first_word.group()
        raise error from None


def _check_memory_budget(config_path, config: LlamaConfig, dtype: np.dtype) -> None:
    # The parameters, plus the RoPE cos/sin tables the model builds for its whole context.
    rope_tables = 2 * config.max_position_embeddings * config.head_dim * dtype.itemsize
    needed = config.num_parameters() * dtype.itemsize + rope_tables
    budget = _memory_budget()
    if needed > budget:
        raise CheckpointError(config_path, f"the model has {config.num_parameters():,} parameters and "
                                           f"{config.max_position_embeddings:,} positions: "
                                           f"{needed / 1024**3:.1f} GiB as {dtype}, over the "
                                           f"{budget / 1024**3:.1f} GiB this machine allows")


def _memory_budget() -> int:
    """MAX_LOAD_BYTES, or the machine's physical memory if smaller (where it can be known)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_LOAD_BYTES
    return min(MAX_LOAD_BYTES, physical) if physical > 0 else MAX_LOAD_BYTES


def _tensor_files(folder: Path) -> tuple[dict[str, Path], dict[Path, dict], Path]:
    """Map every tensor name to the safetensors file that holds it (one file, or the shards).
    Also returns each file's validated header, and the file that lists the tensors (the index,
    or the single file)."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        return *_sharded_tensor_files(folder, index_path), index_path
    single = folder / WEIGHTS_NAME
    if single.is_file():
        header = read_safetensors_header(single)
        return {name: single for name in header if name != "__metadata__"}, {single: header}, single
    pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (folder / n).exists()]
    hint = (f"; {pickled[0]} is a pickle checkpoint, which npllama does not open (pickle can run "
            f"code): convert it to safetensors first, e.g. with transformers: python -c \"from "
            f"transformers import LlamaForCausalLM as M; M.from_pretrained('{folder}')"
            f".save_pretrained('{folder}-safetensors', safe_serialization=True)\"") if pickled else ""
    raise CheckpointError(folder / WEIGHTS_NAME, f"missing: the folder has neither {WEIGHTS_NAME} "
                                                 f"nor {INDEX_NAME}{hint}")


def _sharded_tensor_files(folder: Path, index_path: Path) -> tuple[dict[str, Path], dict[Path, dict]]:
    index = _load_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(index_path, "must be an object with a \"weight_map\" object "
                                          "(tensor name -> shard file)", field="weight_map")
    shard_of: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(index_path, f"shard must be a file name, got {shard!r}",
                                  tensor=name, field="weight_map")
        shard_of[name] = _shard_path(folder, index_path, name, shard)

    # The index and the shards' own headers must agree, both ways.
    found_in: dict[str, Path] = {}
    headers: dict[Path, dict] = {}
    for shard in sorted(set(shard_of.values())):
        if not shard.is_file():
            raise CheckpointError(shard, f"missing: {INDEX_NAME} lists this shard")
        headers[shard] = read_safetensors_header(shard)
        for name in headers[shard]:
            if name == "__metadata__":
                continue
            if name in found_in:
                raise CheckpointError(shard, f"also stored in {found_in[name].name}", tensor=name)
            if shard_of.get(name) != shard:
                listed = shard_of.get(name)
                raise CheckpointError(shard, "is in this shard but the index " + (
                    f"maps it to {listed.name}" if listed else "does not list it"), tensor=name)
            found_in[name] = shard
    for name, shard in shard_of.items():
        if name not in found_in:
            raise CheckpointError(shard, f"not in this shard, although {INDEX_NAME} maps it here",
                                  tensor=name)
    return shard_of, headers


def _shard_path(folder: Path, index_path: Path, name: str, shard: str) -> Path:
    """A shard's path, refusing names that could point outside the folder.

    The check is on the name itself (no absolute paths, no '..', no drive letters), not on where
    symlinks resolve: the Hugging Face cache links every file of a snapshot to ../../blobs/.
    """
    posix, windows = PurePosixPath(shard), PureWindowsPath(shard)
    escapes = (not shard or posix.is_absolute() or windows.is_absolute() or windows.drive
               or ".." in posix.parts or ".." in windows.parts or "\x00" in shard)
    if escapes:
        raise CheckpointError(index_path, f"shard name {shard!r} is not a plain file name inside "
                                          f"the model folder; refusing it", tensor=name, field="weight_map")
    return folder / shard


def _check_names_and_shapes(config: LlamaConfig, tensor_files: dict[str, Path], headers: dict[Path, dict],
                            source: Path, optional=()) -> tuple[dict[str, Path], Path | None]:
    """Compare the files' headers with config.param_shapes() (names in `optional` may be missing).
    Returns (name -> file for the tensors to read, file holding a tied lm_head.weight to compare,
    or None)."""
    expected = config.param_shapes()
    to_read: dict[str, Path] = {}
    tied_head = None
    for name, file in tensor_files.items():
        entry = headers[file][name]
        if _SKIPPED.fullmatch(name):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            _check_entry_shape(file, name, entry, (config.vocab_size, config.hidden_size))
            tied_head = file
            continue
        if name not in expected:
            raise CheckpointError(file, _unexpected_tensor(config, name), tensor=name)
        _check_entry_shape(file, name, entry, expected[name])
        to_read[name] = file
    missing = [name for name in expected if name not in to_read and name not in optional]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(source, f"missing {len(missing)} parameter(s) the config requires: {shown}",
                              tensor=missing[0])
    return to_read, tied_head


def _unexpected_tensor(config: LlamaConfig, name: str) -> str:
    """Why a tensor config.param_shapes() does not list is refused, with what it most likely means."""
    if name.endswith(".bias"):   # config.json said no biases (check_architecture_fields refuses the flags)
        return ("unexpected: a bias, and LLaMA's layers have no biases (npllama implements none); this "
                "checkpoint is probably another architecture labelled llama, e.g. Qwen2, whose q/k/v "
                "projections carry biases")
    return (f"unexpected: a LLaMA with this config.json ({config.num_hidden_layers} layers, tie_word_embeddings="
            f"{config.tie_word_embeddings}) has no such parameter"
            + (_BASE_MODEL_HINT if f"model.{name}" in config.param_shapes() else ""))


# A name that is one of ours without the "model." prefix: the folder holds transformers' LlamaModel,
# the stack alone, which has no language-model head to predict tokens with.
_BASE_MODEL_HINT = ("; the name lacks the 'model.' prefix, as in a checkpoint of transformers' LlamaModel "
                    "(the layers without the language-model head): npllama loads LlamaForCausalLM "
                    "checkpoints, whose names start with 'model.' and which hold lm_head.weight unless "
                    "tie_word_embeddings is true")


def _check_entry_shape(file: Path, name: str, entry: dict, shape: tuple[int, ...]) -> None:
    if entry["dtype"] not in FLOAT_DTYPES:
        raise CheckpointError(file, f"dtype {entry['dtype']} is not a float type "
                                    f"({', '.join(FLOAT_DTYPES)})", tensor=name)
    if tuple(entry["shape"]) != tuple(shape):
        raise CheckpointError(file, f"shape {tuple(entry['shape'])} does not match the config, "
                                    f"which needs {tuple(shape)}", tensor=name)


def _check_tied_head(file: Path, params: dict, dtype) -> None:
    head = read_safetensors(file, names=["lm_head.weight"], dtype=dtype)["lm_head.weight"]
    if not np.array_equal(head, params["model.embed_tokens.weight"]):
        raise CheckpointError(file, "differs from model.embed_tokens.weight, but config.json says "
                                    "tie_word_embeddings=true (the two must be one tensor)",
                              tensor="lm_head.weight")


def _own_array(array: np.ndarray, dtype) -> np.ndarray:
    """The array as `dtype`, C-contiguous and writeable (copied only if it is not already)."""
    if array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, dtype=dtype, order="C", copy=True)


# ----- saving -------------------------------------------------------------------------------------

def save_hf_folder(path, config: LlamaConfig, params: dict[str, np.ndarray], dtype=None,
                   extra_files: dict[str, bytes] | None = None, replace_lock=None,
                   extra_config: dict | None = None, keep_other_files: bool = True) -> None:
    """Write `path` as a Hugging Face folder: config.json, generation_config.json and
    model.safetensors, atomically: if anything fails, an existing folder at `path` is left as it was.

    Into an existing folder (keep_other_files, the default), as transformers' save_pretrained:
    the files written here replace those of the same names; the old model's other weight files
    go (model.safetensors.index.json and model-0000X-of-0000Y.safetensors shards, which
    load_hf_folder would read instead, and pytorch_model*.bin); when extra_files bring a tokenizer
    (tokenizer.model or tokenizer.json), the old tokenizer's other files go too (TOKENIZER_FILES);
    every other file and sub-folder stays, unchanged (hard-linked into the new folder, copied
    where that fails).  A folder holding a LoRA adapter (adapter_config.json) is refused
    (ValueError): transformers with PEFT would load that adapter's base model instead.
    keep_other_files=False: the existing folder is replaced whole, files not written here included
    (npllama's own folders: a run's model/, a checkpoint's, convert's --out with --force).

    params: exactly the names and shapes of config.param_shapes(), float32 or float64 arrays.
    dtype: None keeps the arrays' dtype (all must share one); or np.float32, np.float64,
           np.float16, "bfloat16" (rounded to nearest even) to store in that type.
    extra_files: {file name: bytes} written into the folder too, e.g. {"tokenizer.model": ...}:
           plain names only, none of the files above.  A SentencePiece tokenizer.model brings its
           tokenizer_config.json and special_tokens_map.json along (unless given), so that
           transformers' AutoTokenizer reads the folder with the same ids as npllama.
    replace_lock: held around the final renames (npllama.io.atomic.atomic_directory).
    extra_config: fields added to config.json beyond the LlamaConfig's, e.g. {"npllama_objective":
           "mlm"} (transformers keeps unknown fields as attributes; LlamaConfig.from_dict ignores them).
    """
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    check_params(config, params)
    torch_dtype, as_dtype = _save_dtype(dtype, params)
    _check_representable(params, torch_dtype, as_dtype)
    extra_files = _with_tokenizer_config(_check_extra_files(extra_files), config)

    config_dict = config.to_dict()
    config_dict["torch_dtype"] = torch_dtype
    clash = set(extra_config or {}) & set(config_dict)
    if clash:
        raise ValueError(f"extra_config must not set the config's own fields: {', '.join(sorted(clash))}")
    config_dict.update(extra_config or {})
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if getattr(config, k) is not None}
    tensors = {name: params[name] for name in config.param_shapes()}
    keep = model_folder_keep(path) if keep_other_files else None
    with atomic_directory(path, replace_lock=replace_lock, keep=keep) as tmp:
        # Plain writes are enough inside the temporary folder: atomic_directory fsyncs it all.
        _write_json(tmp / CONFIG_NAME, config_dict)
        _write_json(tmp / GENERATION_CONFIG_NAME, generation)
        # transformers refuses safetensors files without format metadata.
        write_safetensors(tmp / WEIGHTS_NAME, tensors, metadata={"format": "pt"}, as_dtype=as_dtype,
                          checksums=True)  # verified on load: a damaged file names its tensor
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)


def model_folder_keep(path, arg: str = "path"):
    """atomic_directory's `keep` for a model folder written over the folder `path`: every entry
    but the old model's weights (_OLD_WEIGHTS and any other shard its index names) and, when the
    new folder has a tokenizer, the old tokenizer's files.  A ValueError naming `arg` when `path`
    holds a LoRA adapter, which transformers with PEFT would load in the model's stead."""
    folder = Path(path)
    if (folder / ADAPTER_CONFIG_NAME).exists():
        raise ValueError(f"{arg} {str(folder)!r} holds a LoRA adapter ({ADAPTER_CONFIG_NAME}): a model saved "
                         f"beside it is not what the folder loads as (transformers with PEFT loads the adapter "
                         f"on the base model it names); save into another folder")
    # the files in the folder itself (keep is asked of its entries), and only weights files
    old_shards = {shard for shard in shards_named_by(folder / INDEX_NAME)
                  if shard.endswith(".safetensors") and PurePosixPath(shard).name == shard}

    def keep(name: str, written: frozenset) -> bool:
        if _OLD_WEIGHTS.fullmatch(name) or name in old_shards:
            return False
        writes_tokenizer = not written.isdisjoint({"tokenizer.model", "tokenizer.json"})
        return not (writes_tokenizer and name in TOKENIZER_FILES)
    return keep


def shards_named_by(index_path: Path) -> set[str]:
    """The shard files an index's weight_map names, as written (any names, subfolders included);
    none when there is no index or it cannot be read -- not a regular file (a FIFO is not waited
    on), too large, not JSON, no weight_map object -- which loading the folder reports."""
    try:
        weight_map = _load_json(Path(index_path), expect=dict).get("weight_map")
    except (CheckpointError, OSError):
        return set()
    if not isinstance(weight_map, dict):
        return set()
    return {shard for shard in weight_map.values() if isinstance(shard, str) and shard}


def check_params(config: LlamaConfig, params, dtype=None) -> None:
    """params has exactly the config's names and shapes, each a float32/float64 array (of `dtype`,
    when given: a model's arrays share its dtype)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> numpy array, got {type(params).__name__}")
    expected = config.param_shapes()
    for name in expected:
        if name not in params:
            raise ValueError(f"params is missing {name!r} (shape {expected[name]}), which the config requires")
    for name, array in params.items():
        if name not in expected:
            raise ValueError(f"params has {name!r}, which this config has no parameter for"
                             + (" (tie_word_embeddings=True: the embedding is the output layer)"
                                if name == "lm_head.weight" else ""))
        if not isinstance(array, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy array, got {type(array).__name__}")
        if array.dtype not in (np.float32, np.float64):
            raise TypeError(f"params[{name!r}] must be float32 or float64, got {array.dtype}")
        if array.shape != tuple(expected[name]):
            raise ValueError(f"params[{name!r}] has shape {array.shape}, the config needs {expected[name]}")
        if dtype is not None and array.dtype != dtype:
            raise TypeError(f"params[{name!r}] has dtype {array.dtype}, expected the model's dtype "
                            f"{np.dtype(dtype).name}")


def _check_extra_files(extra_files) -> dict[str, bytes]:
    if extra_files is None:
        return {}
    if not isinstance(extra_files, dict):
        raise TypeError(f"extra_files must be a dict of file name -> bytes, got {type(extra_files).__name__}")
    ours = (CONFIG_NAME, GENERATION_CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME)
    for name, data in extra_files.items():
        plain = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
                 and "\\" not in name and "\x00" not in name and not PureWindowsPath(name).drive)
        if not plain:
            raise ValueError(f"extra_files name {name!r} must be a plain file name (no folders)")
        if name in ours:
            raise ValueError(f"extra_files cannot replace {name!r}, which save_hf_folder writes itself")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"extra_files[{name!r}] must be bytes, got {type(data).__name__}")
    return extra_files


def _with_tokenizer_config(extra_files: dict, config: LlamaConfig) -> dict:
    """extra_files plus the transformers tokenizer files for a valid tokenizer.model among them."""
    model_bytes = extra_files.get("tokenizer.model")
    if model_bytes is None or "tokenizer_config.json" in extra_files:
        return extra_files
    from ..tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.from_bytes(bytes(model_bytes))
    except ValueError:  # not a SentencePiece model: written as given, without a config to describe it
        return extra_files
    return {**tokenizer.hf_files(model_max_length=config.max_position_embeddings), **extra_files}


def _save_dtype(dtype, params: dict) -> tuple[str, str]:
    if dtype is None:
        found = {array.dtype for array in params.values()}
        if len(found) > 1:
            raise TypeError(f"params mix dtypes {sorted(str(d) for d in found)}; pass dtype= to pick one")
        key = str(found.pop())
    elif isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        key = "bfloat16"
    else:
        try:
            key = str(np.dtype(dtype))
        except TypeError:
            key = None
        if key not in _SAVE_DTYPES:
            raise TypeError(f"dtype must be None, np.float32, np.float64, np.float16 or 'bfloat16', "
                            f"got {dtype!r}")
    return _SAVE_DTYPES[key]


def _check_representable(params: dict, torch_dtype: str, as_dtype: str) -> None:
    """Every finite weight stays finite in the dtype it is saved as: a float16 file holds nothing past
    65504, bfloat16 nothing past 3.39e38 (just under float32's 3.40e38), float32 nothing past that;
    a weight beyond would be written as inf (a model that gives NaN once loaded).  Checked with the
    writer's own rounding (float16 rounds values up to 65520 down to 65504; only past that is the
    result inf).  A weight that is inf or NaN already is not this check's business: it is saved as is."""
    for name, array in params.items():
        if array.dtype.name == torch_dtype:   # written as it is
            continue
        largest = largest_finite(array)
        if not stays_finite(largest, array.dtype, as_dtype):
            # the narrowest of float32, float64 that holds it (a float64 weight past float32's range
            # needs float64); bfloat16 too in place of float16, when it holds it
            holds = next(f"np.{candidate}" for candidate, written in (("float32", "f32"), ("float64", "f64"))
                         if stays_finite(largest, array.dtype, written))
            if torch_dtype == "float16" and stays_finite(largest, array.dtype, "bf16"):
                holds += " (or 'bfloat16', float32's range at less precision)"
            raise ValueError(f"params[{name!r}] holds {largest:.6g}, past {torch_dtype}'s largest value: "
                             f"saved as {torch_dtype} it would be inf; save with dtype={holds}")


# ----- helpers ------------------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _load_json(path: Path, expect=None):
    """A config or index: a regular file of at most MAX_JSON_BYTES (a FIFO is refused, not waited on);
    expect=dict: a JSON object (config.json, generation_config.json), else a CheckpointError."""
    return read_json(path, expect=expect, max_bytes=MAX_JSON_BYTES, error=CheckpointError)


def _float_dtype(arg: str, dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if dtype is None or resolved not in (np.float32, np.float64):
        raise TypeError(f"{arg} must be np.float32 or np.float64, got {dtype!r}")
    return resolved
