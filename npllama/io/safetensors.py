"""Our own reader and writer for the safetensors format: no torch, no pickle, every field checked.

The format (https://github.com/huggingface/safetensors) is three parts:

    bytes 0..8        N, the header length, unsigned 64-bit little-endian
    bytes 8..8+N      the header: UTF-8 JSON, padded with spaces
                        {"__metadata__": {"format": "pt"},                  (optional, str -> str)
                         "model.norm.weight": {"dtype": "F32", "shape": [288],
                                               "data_offsets": [0, 1152]}, ...}
    bytes 8+N..end    the data buffer; data_offsets [begin, end) count from its start

Every tensor is stored C-contiguous, little-endian.  What the reader checks (each failure is a
`CheckpointError` naming the file, the tensor and the problem):

- the file holds the 8-byte length, and the header fits in the file and in MAX_HEADER_BYTES
  (checked before the header is read, so a forged length cannot make us allocate);
- the header is UTF-8 JSON, an object without duplicate keys; `__metadata__` maps str to str;
- each entry has `dtype` (one of DTYPES), `shape` (list of non-negative ints), `data_offsets`
  (two ints, 0 <= begin <= end <= size of the buffer), and end - begin == prod(shape) * itemsize;
- the tensors tile the buffer exactly, as the reference implementation demands: sorted by
  offset, each starts where the previous one ended (an earlier start is reported as an overlap,
  a later one as a gap) and the last ends at the end of the file.  So no byte is shared by two
  tensors and no byte is unaccounted for;
- BOOL bytes are 0 or 1.

Checksums (an npllama addition the format allows): `write_safetensors(..., checksums=True)`
stores, for each tensor, `"npllama.sha256:<name>": sha256(dtype, shape, data bytes)` in
`__metadata__`.  The reader verifies every tensor it reads against its checksum when the file
has them (so a flipped bit in a checkpoint is a CheckpointError naming the file and tensor,
not a silently different model); files without them (the reference writer's) load as before.

Nothing is allocated from a size the header claims until that size has been checked against
the real file size.  BF16 is widened to float32 by hand (the 16 bits are the top half of a
float32), so no extra package is needed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Mapping

import numpy as np

from .atomic import atomic_open
from .errors import CheckpointError
from .reading import open_regular_file

# safetensors dtype name -> numpy dtype of the stored (little-endian) bytes.  BF16 is read as
# its raw uint16 bits and widened afterwards.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# Names the format defines that we do not read (fp8 and smaller, complex).
KNOWN_UNSUPPORTED = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")

# numpy dtype -> safetensors name, for writing.
_NAME_OF = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items() if k != "BF16"}

# The writer orders tensors as the reference implementation does: by dtype, widest first
# (ties broken by name).  Every tensor then starts at a multiple of its own item size, so a
# memory-mapped reader gets aligned arrays.  Rank = position in the reference's Dtype enum.
_WRITE_RANK = {name: rank for rank, name in enumerate(
    ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"])}

CHECKSUM_PREFIX = "npllama.sha256:"  # + tensor name, in __metadata__
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference refuses headers over 100 MB too
MAX_NDIM = 64  # numpy's limit
WRITE_AS = {"bf16": "BF16", "f16": "F16", "f32": "F32", "f64": "F64"}


# ----- reading ------------------------------------------------------------------------------------

def read_safetensors_header(path) -> dict:
    """The validated header of a safetensors file, without reading any tensor data.

    Returns the JSON header as a dict: tensor name -> {"dtype": str, "shape": [int, ...],
    "data_offsets": [begin, end]}, plus "__metadata__" -> {str: str} when the file has it.
    """
    with open_regular_file(path, CheckpointError) as f:
        entries, metadata, _ = _read_header(f, path)
    header = {} if metadata is None else {"__metadata__": dict(metadata)}
    for name, entry in entries.items():
        header[name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                        "data_offsets": [entry.begin, entry.end]}
    return header


def read_safetensors(path, names: Iterable[str] | None = None, dtype=None) -> dict[str, np.ndarray]:
    """Read tensors from a safetensors file into new, writeable, C-contiguous numpy arrays.

    names: read only these (default: all, in file order).  A name not in the file is a
           CheckpointError.
    dtype: None keeps each tensor's dtype (BF16 becomes float32, the narrowest numpy float
           that holds it exactly); np.float32 or np.float64 converts every floating tensor
           (F64, F32, F16, BF16) to it.  Integer and bool tensors are never converted.
    """
    float_dtype = _check_float_dtype_or_none("dtype", dtype)
    if names is not None:
        if isinstance(names, str):
            raise TypeError(f"names must be a list of tensor names, not a single str ({names!r})")
        names = list(names)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"names must hold str, got {name!r}")
    with open_regular_file(path, CheckpointError) as f:
        entries, metadata, data_start = _read_header(f, path)
        checksums = _checksums(path, metadata, entries)
        if names is None:
            names = list(entries)
        for name in names:
            if name not in entries:
                raise CheckpointError(path, f"no such tensor in the file "
                                            f"(it has {len(entries)}: {_preview(entries)})", tensor=name)
        tensors = {}
        for name in names:
            stored = _read_stored(f, path, name, entries[name], data_start,
                                  None if checksums is None else checksums[name])
            tensors[name] = _as_read(path, name, entries[name], stored, float_dtype)
    return tensors


def _checksum_digest(dtype_name: str, shape):
    """A sha256 over the tensor's dtype, shape and then its bytes: a change to any of them shows."""
    return hashlib.sha256(f"{dtype_name}{list(shape)}".encode("ascii"))


# Hashing and copying go chunk by chunk: each chunk is hashed while it is still in the CPU cache
# from being read (or before it is written), so the tensors cross memory once, not twice.
CHUNK_BYTES = 4 * 1024**2
CHECKSUM_PLACEHOLDER = "0" * 64  # a sha256 hex digest's length: the header is written before the sums are known


def _chunks(data: np.ndarray):
    view = memoryview(data.reshape(-1).view(np.uint8))
    return (view[start:start + CHUNK_BYTES] for start in range(0, len(view), CHUNK_BYTES))


def _checksums(path, metadata, entries) -> dict[str, str] | None:
    """{tensor: checksum} from __metadata__, or None for a file written without checksums.
    A file with checksums must have exactly one for each tensor."""
    if not metadata:
        return None
    sums = {key[len(CHECKSUM_PREFIX):]: value for key, value in metadata.items()
            if key.startswith(CHECKSUM_PREFIX)}
    if not sums:
        return None
    for name in entries:
        if name not in sums:
            raise CheckpointError(path, "has no checksum although the file's other tensors do: "
                                        "the header is damaged", tensor=name)
    for name in sums:
        if name not in entries:
            raise CheckpointError(path, f"a checksum is listed for a tensor the file does not hold "
                                        f"({CHECKSUM_PREFIX}{name}): the header is damaged",
                                  tensor=name, field="__metadata__")
    return sums


class _Entry:
    """One validated header entry."""
    __slots__ = ("dtype", "shape", "begin", "end")

    def __init__(self, dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.dtype, self.shape, self.begin, self.end = dtype, shape, begin, end


def _read_header(f, path) -> tuple[dict[str, _Entry], dict[str, str] | None, int]:
    """Parse and validate the header.  Returns (entries in file order, metadata, data start)."""
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(path, f"file is {len(prefix)} bytes long, shorter than the 8-byte "
                                    f"header length that starts a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(path, f"header length {header_len:,} bytes is over the "
                                    f"{MAX_HEADER_BYTES:,}-byte limit (not a safetensors file, or corrupt)")
    if 8 + header_len > file_size:
        raise CheckpointError(path, f"header length {header_len:,} bytes runs past the end of the "
                                    f"file ({file_size:,} bytes): truncated or not a safetensors file")
    raw = f.read(header_len)
    if len(raw) != header_len:
        raise CheckpointError(path, "file shrank while being read")
    header = _parse_json(path, raw)
    buffer_size = file_size - 8 - header_len
    metadata = _check_metadata(path, header.pop("__metadata__", None))
    entries = {name: _check_entry(path, name, value, buffer_size) for name, value in header.items()}
    _check_tiling(path, entries, buffer_size)
    return entries, metadata, 8 + header_len


def _parse_json(path, raw: bytes) -> dict:
    def refuse_constant(token):
        raise ValueError(f"{token} is not valid JSON")

    def unique_keys(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"duplicate key {key!r}")
            obj[key] = value
        return obj

    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=unique_keys, parse_constant=refuse_constant)
    except UnicodeDecodeError as e:
        raise CheckpointError(path, f"header is not UTF-8 ({e})") from None
    except RecursionError:
        raise CheckpointError(path, "header JSON is nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError and our hooks
        raise CheckpointError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, f"header must be a JSON object, got {type(header).__name__}")
    return header


def _check_metadata(path, metadata) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise CheckpointError(path, f"must be an object of strings, got {type(metadata).__name__}",
                              field="__metadata__")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(path, f"value of {key!r} must be a string, got {value!r}",
                                  field="__metadata__")
    return metadata


def _check_entry(path, name: str, value, buffer_size: int) -> _Entry:
    def fail(problem, field=None):
        raise CheckpointError(path, problem, tensor=name, field=field)

    if not isinstance(value, dict):
        fail(f"entry must be an object with dtype, shape, data_offsets; got {_short(value)}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in value:
            fail("missing", field)
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str):
        fail(f"must be a string, got {_short(dtype)}", "dtype")
    if dtype not in DTYPES:
        if dtype in KNOWN_UNSUPPORTED:
            fail(f"{dtype} is a safetensors dtype npllama does not read "
                 f"(supported: {', '.join(DTYPES)})", "dtype")
        fail(f"unknown dtype {dtype!r} (supported: {', '.join(DTYPES)})", "dtype")
    if not isinstance(shape, list):
        fail(f"must be a list of ints, got {_short(shape)}", "shape")
    if len(shape) > MAX_NDIM:
        fail(f"has {len(shape)} dimensions, more than {MAX_NDIM}", "shape")
    for dim in shape:
        if not _is_int(dim) or not 0 <= dim <= sys.maxsize:
            fail(f"entries must be non-negative ints (at most {sys.maxsize}), got {_short(shape)}",
                 "shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        fail(f"must be a pair of ints [begin, end], got {_short(offsets)}", "data_offsets")
    begin, end = offsets
    if begin < 0 or begin > end:
        fail(f"[{begin}, {end}] is not a range 0 <= begin <= end", "data_offsets")
    if end > buffer_size:
        fail(f"end {end:,} is past the end of the data buffer ({buffer_size:,} bytes): "
             f"file truncated?", "data_offsets")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
        fail(f"data_offsets span {end - begin:,} bytes but shape {shape} of {dtype} needs {expected:,}")
    if expected == 0:
        # An empty tensor's dims are not bounded by the file size; numpy must still accept them.
        try:
            np.empty(shape, dtype=DTYPES[dtype])
        except ValueError:
            fail(f"{shape} is too large for numpy to represent, even with no elements", "shape")
    return _Entry(dtype, tuple(shape), begin, end)


def _check_tiling(path, entries: dict[str, _Entry], buffer_size: int) -> None:
    """The tensors must cover the buffer exactly once: no overlap, no gap, nothing after."""
    position, previous = 0, None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < position:
            raise CheckpointError(path, f"bytes [{entry.begin}, {entry.end}) overlap tensor "
                                        f"{previous!r}, which ends at {position}", tensor=name)
        if entry.begin > position:
            raise CheckpointError(path, f"starts at {entry.begin}, leaving {entry.begin - position} "
                                        f"bytes after {previous!r} that no tensor covers", tensor=name)
        position, previous = entry.end, name
    if position != buffer_size:
        raise CheckpointError(path, f"{buffer_size - position} bytes after the last tensor "
                                    f"belong to no tensor (the data buffer is {buffer_size} bytes)")


def _read_stored(f, path, name: str, entry: _Entry, data_start: int, checksum: str | None) -> np.ndarray:
    """A tensor's bytes as stored (little-endian, BF16 as uint16 bits), checked against its
    checksum if it has one."""
    # Sizes were checked against the file size, so this allocation is backed by real bytes.
    array = np.empty(entry.shape, dtype=DTYPES[entry.dtype])
    digest = None if checksum is None else _checksum_digest(entry.dtype, entry.shape)
    f.seek(data_start + entry.begin)
    got = 0
    for chunk in _chunks(array):
        read = f.readinto(chunk)
        got += read
        if read != len(chunk):
            raise CheckpointError(path, f"read {got} of {array.nbytes} bytes: file truncated "
                                        f"while reading", tensor=name)
        if digest is not None:
            digest.update(chunk)
    if digest is not None and digest.hexdigest() != checksum:
        raise CheckpointError(path, "does not match its checksum: the file is damaged (a changed "
                                    "byte on disk or in a copy); restore it from a good copy", tensor=name)
    return array


def _as_read(path, name: str, entry: _Entry, array: np.ndarray, float_dtype) -> np.ndarray:
    """A stored tensor as read_safetensors returns it: BOOL checked, BF16 widened, native byte
    order, floats in float_dtype if one is asked for."""
    stored = DTYPES[entry.dtype]
    if entry.dtype == "BOOL":
        raw = array.view(np.uint8)
        if np.any(raw > 1):
            raise CheckpointError(path, "BOOL tensor holds bytes other than 0 and 1", tensor=name)
        return array
    if entry.dtype == "BF16":
        array = bf16_bits_to_float32(array)
    elif not stored.isnative:
        array = array.astype(stored.newbyteorder("="))
    if float_dtype is not None and entry.dtype in FLOAT_DTYPES and array.dtype != float_dtype:
        array = array.astype(float_dtype)
    return array


# ----- bfloat16 -----------------------------------------------------------------------------------

def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift them back up.  Exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16, nearest with ties to even; returns the uint16 bit patterns.

    Adding 0x7FFF plus the lowest kept bit, then dropping the low 16 bits, rounds to nearest
    and sends exact halves to the even neighbour; a carry out of the mantissa bumps the
    exponent, which is right (up to infinity for values past bfloat16's largest).  NaN is kept
    a quiet NaN of the same sign (the carry could otherwise turn a NaN into infinity).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    lowest_kept_bit = (bits >> 16) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lowest_kept_bit) >> 16).astype(np.uint16)
    quiet_nan = ((bits >> 16) & np.uint32(0x8000)).astype(np.uint16) | np.uint16(0x7FC0)
    return np.where(np.isnan(x), quiet_nan, rounded)


# ----- writing ------------------------------------------------------------------------------------

def write_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                      as_dtype: str | None = None, checksums: bool = False) -> None:
    """Write tensors to a safetensors file that `safetensors` / PyTorch can read.

    Layout as the reference writer makes it: compact JSON header padded with spaces to a
    multiple of 8 bytes, tensors C-contiguous and little-endian, ordered widest dtype first
    then by name (so each tensor's offset is a multiple of its item size).
    as_dtype: None keeps each array's dtype; "bf16", "f16", "f32" or "f64" converts every
    floating array (bf16 rounds to nearest even; f16 as numpy casts, out-of-range -> inf).
    checksums: also store each tensor's sha256 in the metadata (see the module docstring); the
    reader then verifies it.  Off by default, so files stay byte-identical to the reference's.
    The file is written atomically (temp file, fsync, rename).
    """
    target = _check_write_args(tensors, metadata, as_dtype)
    if not isinstance(checksums, bool):
        raise TypeError(f"checksums must be True or False, got {checksums!r}")
    prepared = {name: _encode(name, array, target) for name, array in tensors.items()}
    order = sorted(prepared, key=lambda n: (-_WRITE_RANK[prepared[n][0]], n))

    header: dict = {}
    if metadata is not None or checksums:
        header["__metadata__"] = dict(metadata or {})
    # Checksums are computed while the tensors are written (one pass over them); the header goes
    # first with placeholders of the same length, and is written again once the sums are known.
    digests = {name: _checksum_digest(dtype_name, np.shape(tensors[name]))
               for name, (dtype_name, _) in prepared.items()} if checksums else {}
    header.get("__metadata__", {}).update({CHECKSUM_PREFIX + name: CHECKSUM_PLACEHOLDER for name in digests})
    offset = 0
    for name in order:
        dtype_name, data = prepared[name]
        header[name] = {"dtype": dtype_name, "shape": list(np.shape(tensors[name])),
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes

    with atomic_open(path, "wb") as f:
        header_bytes = _header_bytes(header)
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name in order:
            for chunk in _chunks(prepared[name][1]):
                if name in digests:
                    digests[name].update(chunk)
                f.write(chunk)
        if digests:
            header["__metadata__"].update({CHECKSUM_PREFIX + name: d.hexdigest() for name, d in digests.items()})
            f.seek(8)
            f.write(_header_bytes(header, length=len(header_bytes)))


def _header_bytes(header: dict, length: int | None = None) -> bytes:
    """The header as the reference writes it: compact JSON padded with spaces to a multiple of 8
    bytes (or to `length`, the size of the header it replaces)."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = raw + b" " * ((-len(raw) % 8) if length is None else length - len(raw))
    if length is not None and len(padded) != length:
        raise AssertionError(f"the header changed length ({len(padded)} != {length}) when its checksums were filled in")
    return padded


def _check_write_args(tensors, metadata, as_dtype) -> str | None:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> numpy array, got {type(tensors).__name__}")
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved in safetensors and cannot name a tensor")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensors[{name!r}] must be a numpy array, got {type(array).__name__}")
        if array.dtype.newbyteorder("=") not in _NAME_OF:
            raise TypeError(f"tensors[{name!r}] has dtype {array.dtype}, which safetensors cannot "
                            f"store (use float64/32/16, int64/32/16/8, uint64/32/16/8 or bool)")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of str -> str, got {type(metadata).__name__}")
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
            if key.startswith(CHECKSUM_PREFIX):
                raise ValueError(f"metadata keys starting with {CHECKSUM_PREFIX!r} are reserved for "
                                 f"checksums (pass checksums=True), got {key!r}")
    if as_dtype is not None and as_dtype not in WRITE_AS:
        raise ValueError(f"as_dtype must be None or one of {list(WRITE_AS)}, got {as_dtype!r}")
    return None if as_dtype is None else WRITE_AS[as_dtype]


def _encode(name: str, array: np.ndarray, target: str | None) -> tuple[str, np.ndarray]:
    """(safetensors dtype name, C-contiguous little-endian array viewed as bytes)."""
    dtype_name = _NAME_OF[array.dtype.newbyteorder("=")]
    if target is not None and dtype_name in FLOAT_DTYPES and target != dtype_name:  # (same type: no copy)
        dtype_name, array = target, _converted(array, target)
    stored = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return dtype_name, stored.reshape(-1).view(np.uint8)


def _converted(array: np.ndarray, target: str) -> np.ndarray:
    """A float array in the safetensors dtype `target` (BF16 as its uint16 bit patterns)."""
    if target == "BF16":
        # float64 goes through float32 first (as torch's cast does); past float32's range
        # it becomes inf either way.
        with np.errstate(over="ignore"):
            return float32_to_bf16_bits(array.astype(np.float32))
    with np.errstate(over="ignore"):  # f16 overflow becomes inf, as in any IEEE cast
        return array.astype(DTYPES[target])


def as_written(array: np.ndarray, as_dtype: str) -> np.ndarray:
    """The values a float array holds once write_safetensors has stored it with `as_dtype` ("bf16",
    "f16", "f32" or "f64") and it is read back: the writer's own rounding, so a value past the
    type's range is inf here exactly when it would be inf in the file."""
    target = _check_write_args({}, None, as_dtype)
    converted = _converted(np.asarray(array), target)
    return bf16_bits_to_float32(converted) if target == "BF16" else converted


def stays_finite(value: float, source_dtype, as_dtype: str) -> bool:
    """Whether `value` (of source_dtype) is still finite once written with as_dtype (as_written)."""
    return bool(np.isfinite(as_written(np.array([value], dtype=source_dtype), as_dtype)[0]))


def largest_finite(array: np.ndarray) -> float:
    """The largest magnitude among the array's finite entries (0.0 when none): what a narrower type
    must hold (an entry already inf or NaN is written as it is)."""
    return float(np.max(np.abs(array), initial=0.0, where=np.isfinite(array)))


# ----- small helpers ------------------------------------------------------------------------------

def _check_float_dtype_or_none(arg: str, dtype):
    if dtype is None:
        return None
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.float32, np.float64):
        raise TypeError(f"{arg} must be None, np.float32 or np.float64, got {dtype!r}")
    return resolved


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(names, limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


__all__ = ["read_safetensors", "read_safetensors_header", "write_safetensors", "DTYPES",
           "MAX_HEADER_BYTES", "as_written", "bf16_bits_to_float32", "float32_to_bf16_bits"]
