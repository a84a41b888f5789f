"""Budgets: how much memory, reading and threads one input may make npllama spend, checked *before*
anything is allocated or read.

An input that sets a size -- a config's layer count, a batch shape, a trace file's array shapes, a
label id, `--threads` -- is compared with its budget first; past it, a ValueError names the input,
what it would cost and the limit, and how to raise the limit.  Nothing has been allocated then.

Limits (each an environment variable, read at every check, so a test or a user can change it):

    NPLLAMA_MAX_MEMORY    bytes the arrays one input asks for may take: a model's parameters (with
                          gradients and AdamW's moments when training), one batch's activations,
                          the arrays of a trace file.  Default: the machine's RAM, at most 64 GiB.
    NPLLAMA_MAX_THREADS   worker threads (`--threads`).  Default 256.
    NPLLAMA_MAX_LABELS    classes of a classification dataset.  Default 100,000.
    NPLLAMA_MAX_READ      bytes of one text/data file read whole.  Default 4 GiB.

    from npllama import budget
    budget.check_model(config, np.float32)                # Llama(config) fits
    budget.check_batch(config, batch=16, seq_len=128, dtype=np.float32, training=True)
"""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

DEFAULT_MAX_MEMORY = 64 * 1024**3
DEFAULT_MAX_THREADS = 256
DEFAULT_MAX_LABELS = 100_000
DEFAULT_MAX_READ = 4 * 1024**3


class BudgetError(ValueError):
    """An input asks for more than its budget; nothing was allocated or read."""


def _limit(variable: str, default: int) -> int:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${variable} must be a positive whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"${variable} must be a positive whole number, got {raw!r}")
    return value


def max_memory() -> int:
    """NPLLAMA_MAX_MEMORY, or the machine's physical memory capped at 64 GiB."""
    default = DEFAULT_MAX_MEMORY
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if physical > 0:
            default = min(default, physical)
    except (AttributeError, ValueError, OSError):
        pass
    return _limit("NPLLAMA_MAX_MEMORY", default)


def max_threads() -> int:
    """The most threads a call may ask for: $NPLLAMA_MAX_THREADS, else DEFAULT_MAX_THREADS."""
    return _limit("NPLLAMA_MAX_THREADS", DEFAULT_MAX_THREADS)


def max_labels() -> int:
    """The most classes a classifier's dataset may have: $NPLLAMA_MAX_LABELS, else DEFAULT_MAX_LABELS."""
    return _limit("NPLLAMA_MAX_LABELS", DEFAULT_MAX_LABELS)


def max_read() -> int:
    """The most bytes one file read may take: $NPLLAMA_MAX_READ, else DEFAULT_MAX_READ."""
    return _limit("NPLLAMA_MAX_READ", DEFAULT_MAX_READ)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:,.2f} GiB"


def check_memory(what: str, nbytes: int) -> None:
    """Refuse `what` if it needs more than NPLLAMA_MAX_MEMORY bytes."""
    limit = max_memory()
    if nbytes > limit:
        raise BudgetError(f"{what} would need {_gib(nbytes)}, over the memory budget of {_gib(limit)} "
                          f"(set NPLLAMA_MAX_MEMORY to allow more)")


def check_threads(name: str, threads: int) -> None:
    """A BudgetError naming `name` when threads is more than max_threads()."""
    limit = max_threads()
    if threads > limit:
        raise BudgetError(f"{name} must be at most {limit} (NPLLAMA_MAX_THREADS), got {threads:,}")


def check_label_count(count: int, where: str = "the dataset") -> None:
    """A BudgetError when `where` has more than max_labels() classes (an integer label is a class id
    counted from 0, so a single label 10**9 alone makes 10**9 + 1 classes)."""
    limit = max_labels()
    if count > limit:
        raise BudgetError(f"{where} has {count:,} classes, more than {limit:,} (NPLLAMA_MAX_LABELS): an "
                          f"integer label is a class id counted from 0, so a label of {count - 1:,} means "
                          f"{count:,} classes")


def _itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize


def model_bytes(config, dtype, training: bool = False) -> int:
    """Bytes of a model's parameters (+ RoPE tables); training adds gradients and AdamW's m and v."""
    itemsize = _itemsize(dtype)
    rope_tables = 2 * config.max_position_embeddings * config.head_dim * itemsize
    copies = 4 if training else 1
    return copies * config.num_parameters() * itemsize + rope_tables


def check_model(config, dtype, training: bool = False) -> None:
    """Refuse a config whose parameters would not fit the budget (call before allocating them)."""
    check_memory(f"a model of {config.num_parameters():,} parameters as {np.dtype(dtype).name}"
                 + (" with gradients and optimizer state" if training else ""),
                 model_bytes(config, dtype, training))


def batch_bytes(config, batch: int, seq_len: int, dtype, training: bool = True) -> int:
    """An upper estimate of what one forward (and backward) pass of a (batch, seq_len) batch holds:
    per layer the residual stream, norms, q/k/v/o, the attention scores and probabilities
    (heads x T x T) and the SwiGLU's three F-wide activations, kept for the backward; the logits
    and their gradient.  Counted generously: a refusal must never be wrong by being too low."""
    B, T = int(batch), int(seq_len)
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    H, hd = config.num_attention_heads, config.head_dim
    kv = config.num_key_value_heads * hd
    per_layer = B * T * (6 * D + 2 * H * hd + 2 * kv + 4 * F) + 2 * B * H * T * T
    layers = config.num_hidden_layers if training else 1  # inference keeps one layer's worth
    elements = layers * per_layer + 3 * B * T * V
    return elements * _itemsize(dtype)


def check_batch(config, batch: int, seq_len: int, dtype, training: bool = True) -> None:
    """Refuse a batch whose activations would not fit the budget (call before the forward pass)."""
    check_memory(f"a batch of {int(batch):,} x {int(seq_len):,} tokens through this model",
                 batch_bytes(config, batch, seq_len, dtype, training))


def check_npz(path) -> None:
    """Refuse a .npz whose arrays, as their headers declare them, would not fit the budget -- before
    np.load decompresses anything (a few hundred bytes of zip can declare terabytes).  Reads only
    the zip directory and each member's .npy header.  Raises ValueError naming the file otherwise
    malformed (not a zip)."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path!r} is not a readable .npz file ({error})") from None
    total, limit = 0, max_memory()
    with archive:
        for member in archive.infolist():
            # what the member inflates to as the zip declares it, or the array its header declares
            declared = _declared_npy_bytes(archive, member, path) if member.filename.endswith(".npy") else 0
            total += max(member.file_size, declared)
            if total > limit:
                break
    check_memory(f"the arrays in {path!r}", total)


def _declared_npy_bytes(archive, member, path) -> int:
    try:
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read_header(f)
    except Exception as error:  # zlib, a bad magic string, a header that is not a literal
        raise ValueError(f"{path!r}: member {member.filename!r} is not a .npy array ({error})") from None
    return math.prod(shape) * dtype.itemsize
