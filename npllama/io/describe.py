"""What is this path, and how would one load it?  For error messages when a model path is not a
Hugging Face folder.

    describe_model_path("stories15M.bin")
    # "'stories15M.bin' looks like a llama2.c checkpoint (legacy float32, 6 layers, dim 288):
    #  load it with npllama.io.llama2c.load_llama2c(path), or convert it with
    #  `npllama convert llama2c stories15M.bin --out DIR`"

Only the first bytes of a file are read (and the header of a llama2.c or safetensors file);
nothing is unpickled or executed.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from .errors import CheckpointError

_SNIFF_BYTES = 64


def describe_model_path(path) -> str:
    """One sentence: what `path` looks like and how to load it with npllama (or what to do
    instead).  Never raises for an unreadable or odd path; says so."""
    what = describe_path(path)   # (checks the type first)
    return f"{str(Path(path).expanduser())!r} {what}"


def describe_path(path) -> str:
    """describe_model_path's sentence without the path it opens with ("is a folder without
    config.json ...", "looks like a llama2.c checkpoint ..."), for a message that has named the path
    already: "'x' holds no model: it is a folder without ..."."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file or folder path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path).expanduser()
    try:
        return _describe_folder(path) if path.is_dir() else _describe_file(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


# ----- folders ------------------------------------------------------------------------------------

def run_started_in(names: set[str]) -> str | None:
    """The command ("train", "finetune sft", ...) whose settings file a run folder holds, or None."""
    from ..finetune_run import SETTINGS_FILES
    from ..train import CONFIG_FILE

    jobs = {CONFIG_FILE: "train", **{file: f"finetune {job}" for job, file in SETTINGS_FILES.items()}}
    return next((command for file, command in jobs.items() if file in names), None)


def _describe_folder(folder: Path) -> str:
    names = {p.name for p in folder.iterdir()}
    if "config.json" in names:
        if {"model.safetensors", "model.safetensors.index.json"} & names:
            return ("is a Hugging Face model folder: load it with Llama.from_pretrained(path) or "
                    "pass it as --model")
        if {"pytorch_model.bin", "pytorch_model.bin.index.json"} & names:
            return ("is a Hugging Face folder whose weights are a pickle (pytorch_model.bin), which "
                    "npllama never opens: re-save it as safetensors with transformers "
                    "(AutoModelForCausalLM.from_pretrained(path).save_pretrained(out))")
        return "has config.json but no weights (model.safetensors); copy the weights in"
    if "adapter_config.json" in names:
        return _describe_adapter(folder)
    if (folder / "model" / "config.json").is_file() or (folder / "checkpoint" / "model" / "config.json").is_file():
        return "is an npllama run folder: pass it as --model (its model/ subfolder is loaded)"
    from .train_state import STATE_FILE

    if STATE_FILE in names:   # a run's checkpoint/ without a model/ to load
        return _describe_checkpoint(folder, names)
    started = run_started_in(names)
    if started is not None:
        import shlex

        from ..resuming import resume_command   # (the folder quoted for the shell)

        if "checkpoint" in names:   # a fine-tuning checkpoint: only what is trained
            return (f"is an npllama run folder whose run has not finished: its checkpoint holds what is trained, "
                    f"not a model to load; finish it with `{resume_command(started, folder)}`")
        # a start that failed or was stopped before its first checkpoint
        return (f"is an npllama run folder whose run saved no model yet (it stopped before its first "
                f"checkpoint): start it again with `npllama {started} --out {shlex.quote(str(folder))} ...`, or "
                f"with the settings it saved by `{resume_command(started, folder)}`")
    if "params.json" in names and any(n.startswith("consolidated.") for n in names):
        return ("looks like Meta's original LLaMA checkpoint (params.json + consolidated.*.pth, "
                "pickles): convert it with transformers' convert_llama_weights_to_hf.py first")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for file in files:  # a folder holding one model file: say what that file is
        kind = _describe_file(file)
        if not kind.startswith(("is a file of unknown", "is empty", "is a JSON", "is a SentencePiece",
                                "looks like llama2.c's tokenizer")):
            return f"is a folder without config.json (not a Hugging Face model folder); it holds {file.name}, which {kind}"
    return ("is a folder without config.json, so not a Hugging Face model folder (expected "
            "config.json and model.safetensors, or a run folder from `npllama train`)")


def _describe_checkpoint(folder: Path, names: set[str]) -> str:
    """A run's checkpoint/: what resumes the run, whose files are no weights to rename into a model
    folder (a fine-tune's params.safetensors holds only what it trains, optimizer.safetensors the
    optimizer's state): the run folder around it says what to pass instead."""
    from .train_state import PARAMS_FILE

    holds = (f"its {PARAMS_FILE} holds only the tensors a fine-tune trains" if PARAMS_FILE in names else
             "its model/ folder is missing")
    said = f"is a training checkpoint, what resumes its run ({holds}), not a model to load"
    run = folder.parent
    run_names = {p.name for p in run.iterdir()}
    if "config.json" in run_names or run_started_in(run_names) is not None:
        return f"{said}; the run folder {describe_model_path(run)}"
    return f"{said}: pass the folder of the run it comes from"


def _describe_adapter(folder: Path) -> str:
    """An adapter folder: the base it names and the commands that attach it (by its task type)."""
    from .reading import read_json

    try:   # only to say more: a file that cannot be read says nothing more
        config = read_json(folder / "adapter_config.json", expect=dict)
    except (OSError, ValueError):
        config = {}
    base = config.get("base_model_name_or_path")
    named = f" ({base!r}, as its adapter_config.json names it)" if isinstance(base, str) and base else ""
    commands = {"SEQ_CLS": "`npllama classify`", "CAUSAL_LM": "`npllama generate`, `chat` and `eval`"}.get(
        config.get("task_type"), "`npllama classify` (a classification adapter) or `generate`, `chat` and `eval`")
    return (f"is a LoRA/PEFT adapter folder, not a whole model: load its base model{named} and attach the "
            f"adapter, with --model BASE --adapter {folder} in {commands}")


# ----- files --------------------------------------------------------------------------------------

def _describe_file(path: Path) -> str:
    return _file_kind_and_description(path)[1]


def describe_file_kind(path) -> tuple[str | None, str]:
    """(kind, what) of a file: kind is "gguf", "llama2c", "safetensors", "pytorch", "json",
    "sentencepiece" or "llama2c_tokenizer" as recognised, else None (missing, empty, unreadable or
    of unknown kind); what is describe_model_path's sentence without the path ("looks like a
    llama2.c checkpoint ..."), for a caller that names the file its own way (as a flag's value).
    For callers that act on the kind, not on words in a sentence that holds the path."""
    path = Path(path).expanduser()
    try:
        return _file_kind_and_description(path)
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"


def _file_kind_and_description(path: Path) -> tuple[str | None, str]:
    if not path.exists():
        return None, "does not exist"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        return None, "is empty"
    # the kinds named here, not derived from the functions' names: callers compare against them
    for kind, describe in (("gguf", _gguf), ("llama2c", _llama2c), ("safetensors", _safetensors),
                           ("pytorch", _pytorch), ("json", _json), ("sentencepiece", _sentencepiece),
                           ("llama2c_tokenizer", _llama2c_tokenizer)):
        what = describe(path, head, size)
        if what:
            return kind, what
    return None, f"is a file of unknown kind ({size:,} bytes); npllama loads Hugging Face model folders"


def _gguf(path, head, size):
    if head[:4] != b"GGUF":
        return None
    from .gguf_import import gguf_architecture

    with_transformers = "(AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).save_pretrained(out))"
    try:
        architecture = gguf_architecture(path)
    except ImportError:   # without the gguf package only the magic is known: say what to do with a LLaMA one
        architecture = "llama"
    except CheckpointError as e:   # unreadable, or readable without the field
        return f"has GGUF's magic but {'its metadata is incomplete' if e.field else 'cannot be read'}: {_clause(e)}"
    if architecture != "llama":
        return (f"is a GGUF file (llama.cpp's format) of a {architecture!r} model; npllama reads LLaMA ones "
                f"('llama'): transformers may read it {with_transformers}")
    return ("is a GGUF file (llama.cpp's format): turn a LLaMA with F32, F16, BF16 or Q8_0 tensors into a "
            f"model folder with `npllama convert gguf {path.name} --out DIR` (or load it with "
            f"Llama.from_pretrained), or any GGUF with transformers {with_transformers}")


def _llama2c(path, head, size):
    from .llama2c import FORMATS, MAGIC, read_llama2c_header

    versioned = len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC
    try:
        header = read_llama2c_header(path)
    except CheckpointError as e:
        if versioned:
            return f"has llama2.c's \"ak42\" magic but cannot be used: {_clause(e)}"
        if "needs exactly" in e.problem:  # a plausible legacy header, the wrong size
            return f"starts like a llama2.c checkpoint, but {_clause(e)}"
        return None
    return (f"looks like a llama2.c checkpoint ({FORMATS[header.version]}, {header.n_layers} layers, "
            f"dim {header.dim}): load it with npllama.io.llama2c.load_llama2c(path), or convert it with "
            f"`npllama convert llama2c {path} --out DIR`")


def _clause(error: CheckpointError) -> str:
    """A CheckpointError's problem as a clause about the file ("is 10 bytes" -> "the file is ...")."""
    if error.field:   # "is missing" said of the field, not of the file
        return f"{error.field} {error.problem}"
    return f"the file {error.problem}" if error.problem.startswith("is ") else error.problem


def _safetensors(path, head, size):
    if len(head) < 9:
        return None
    (header_len,) = struct.unpack_from("<Q", head)
    if not (2 <= header_len <= size - 8 and head[8:9] == b"{"):
        return None
    return ("is a safetensors file; npllama loads the folder around it: put it in a folder as "
            "model.safetensors next to its config.json, then pass the folder")


def _pytorch(path, head, size):
    if head[:4] == b"PK\x03\x04" and _zip_of_npy(path):
        return ("is a NumPy archive (.npz), not a model: an npllama trace loads with "
                "npllama.trace.Trace.load(path) (`npllama debug diff`, `npllama viz grads` read it too)")
    if head[:4] == b"PK\x03\x04":
        kind = "a PyTorch checkpoint (.pt/.pth, a zip of pickles)"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a pickle (e.g. an old PyTorch .pt/.bin checkpoint)"
    else:
        return None
    return (f"is {kind}, which npllama never opens (unpickling can run code): for a Hugging Face "
            f"model re-save it with transformers as safetensors; for a llama2.c training checkpoint "
            f"(ckpt.pt) run llama2.c's `python export.py model.bin --version 1 --checkpoint ckpt.pt`, "
            f"then `npllama convert llama2c model.bin --out DIR`")


def _zip_of_npy(path) -> bool:
    """A zip whose members are .npy arrays (np.savez), read from its directory only."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _json(path, head, size):
    if head.lstrip()[:1] not in (b"{", b"["):
        return None
    if path.name == "config.json":
        return "is a config.json: pass the folder that holds it (with model.safetensors)"
    if path.name == "tokenizer.json":
        return "is a Hugging Face tokenizer.json, a tokenizer rather than a model"
    return "is a JSON file, not a model: pass the Hugging Face folder it belongs to"


def _sentencepiece(path, head, size):
    if path.suffix != ".model":
        return None
    try:
        from ..tokenizer import Tokenizer

        Tokenizer(path)
    except (ValueError, ImportError):
        return None
    return ("is a SentencePiece tokenizer, not a model: it goes in the model's folder as "
            "tokenizer.model")


def _llama2c_tokenizer(path, head, size):
    from .llama2c_tokenizer import read_llama2c_tokenizer

    if len(head) < 12:
        return None
    (max_length,) = struct.unpack_from("<I", head)
    if not 0 < max_length <= 1024 or size > 64 * 1024**2:
        return None
    try:
        pieces, _ = read_llama2c_tokenizer(path)
    except (CheckpointError, ValueError):
        return None
    return (f"looks like llama2.c's tokenizer.bin ({len(pieces)} pieces), a tokenizer rather than a "
            f"model: pass it to `npllama convert llama2c MODEL.bin --tokenizer {path.name} --out DIR`")
