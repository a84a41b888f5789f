"""Hostile and broken files: every loader either loads the file or raises its one documented error.

Fuzzed here, each by a seeded mutation fuzzer over real files the tests write (byte flips,
truncations, insertions, deletions, forged length fields, and JSON-aware mutations of header
fields) and, where the input has structure worth generating, by hypothesis:

    safetensors files          read_safetensors / read_safetensors_header -> CheckpointError
    Hugging Face folders       load_hf_folder (config.json, index, shards) -> CheckpointError
    config.json                read_config                                 -> CheckpointError
    training checkpoints       train.restore_checkpoint (what --resume does) -> CheckpointError
    SentencePiece models       Tokenizer(path) -> ValueError; in a child process, so that a
                               crash inside the C++ library would show up as a failure, not kill pytest

"Nothing else" means: no other exception type, no MemoryError (sizes are checked before anything
is allocated), no hang, no segfault, and a message that names the file.  When a mutated file is
accepted, the result is checked against the bytes (safetensors), against the reference
`safetensors` package (it must not refuse what we accept), or against the config (HF folders).
The number of cases tried is printed at the end of the run (see tests/conftest.py).
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npllama import LlamaConfig
from npllama.io import (CheckpointError, load_hf_folder, read_safetensors, read_safetensors_header,
                        save_hf_folder, write_safetensors)
from npllama.io.hf import read_config
from npllama.io.safetensors import DTYPES, KNOWN_UNSUPPORTED, MAX_HEADER_BYTES, bf16_bits_to_float32

SEED = 7  # the mutation fuzzer's seed: a failure names its case number, so it can be replayed
N_SAFETENSORS_CASES = 1200
N_HF_CASES = 160
N_CHECKPOINT_CASES = 160
N_TOKENIZER_CASES = 250

HYPOTHESIS = settings(max_examples=120, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----- generic byte mutations ----------------------------------------------------------------------

INTERESTING_INTS = [0, 1, 7, 8, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
                    2**64 - 1, -1, -2**63]
INTERESTING_JSON = [None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63, 2**64, -2**63, 1.5, -0.0,
                    1e308, float("nan"), float("inf"), "", "x", "F32", "../x", "\x00", "é" * 3, [], [0],
                    [-1], [1, 2, 3], {}, {"a": 1}, [[1]], "9" * 40]


def flip_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    return bytes(data), "flip bytes"


def truncate(rng, data):
    cut = rng.randrange(len(data))
    return data[:cut], f"truncate to {cut} bytes"


def insert_bytes(rng, data):
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:], f"insert at {at}"


def delete_bytes(rng, data):
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 32):], f"delete at {at}"


def duplicate_chunk(rng, data):
    a = rng.randrange(len(data))
    chunk = data[a:a + rng.randint(1, 64)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + chunk + data[at:], f"duplicate {len(chunk)} bytes at {at}"


def overwrite_int(rng, data):
    """An interesting integer written over 1, 2, 4 or 8 bytes at a random place."""
    size = rng.choice([1, 2, 4, 8])
    value = rng.choice(INTERESTING_INTS) % 2 ** (8 * size)
    at = rng.randrange(max(len(data) - size, 0) + 1)
    return data[:at] + value.to_bytes(size, "little") + data[at + size:], f"overwrite int at {at}"


BYTE_MUTATIONS = [flip_bytes, truncate, insert_bytes, delete_bytes, duplicate_chunk, overwrite_int]


def mutate_json_value(rng, obj, depth=0):
    """A copy of a JSON object with one value somewhere inside replaced, deleted or added."""
    obj = json.loads(json.dumps(obj))
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        action = rng.random()
        if action < 0.15:
            del obj[key]
        elif action < 0.25:
            obj[rng.choice(["extra", key + "_", ""])] = rng.choice(INTERESTING_JSON)
        elif action < 0.6 and isinstance(obj[key], (dict, list)) and obj[key] and depth < 4:
            obj[key] = mutate_json_value(rng, obj[key], depth + 1)
        else:
            obj[key] = _nearby(rng, obj[key])
    elif isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        action = rng.random()
        if action < 0.15:
            del obj[i]
        elif action < 0.25:
            obj.insert(i, rng.choice(INTERESTING_JSON))
        elif action < 0.5 and isinstance(obj[i], (dict, list)) and obj[i] and depth < 4:
            obj[i] = mutate_json_value(rng, obj[i], depth + 1)
        else:
            obj[i] = _nearby(rng, obj[i])
    else:
        obj = _nearby(rng, obj)
    return obj


def _nearby(rng, value):
    """An interesting value, often close to the original (off by one, doubled, another type)."""
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.6:
        return value + rng.choice([-1, 1, value, -value - 1, 2**40, 2**63])
    if isinstance(value, float) and rng.random() < 0.5:
        return rng.choice([value * 2, -value, value + 1e-3, 0.0])
    return rng.choice(INTERESTING_JSON)


def json_bytes(obj) -> bytes:
    return json.dumps(obj).encode()  # NaN/Infinity come out as the non-standard tokens, on purpose


# ----- the one check every case goes through ------------------------------------------------------

def outcome(load, path, allowed=CheckpointError, where=None):
    """'ok' (and the result), or 'refused' if `load(path)` raised the documented error naming a file
    under `where`.  Anything else fails the test with the case's description."""
    where = Path(where or path)
    try:
        return "ok", load(path)
    except allowed as error:
        named = getattr(error, "path", None) or str(error)
        assert str(where) in str(named) and str(where) in str(error), \
            f"the message does not name the file: {error}"
        return "refused", error


def run_cases(cases, check):
    """Run check(i, description) for every case; collect failures with their case numbers."""
    failures, tally = [], {"ok": 0, "refused": 0}
    for i, description in cases:
        try:
            tally[check(i, description)] += 1
        except Exception as error:  # noqa: BLE001 -- any escape is a finding, reported below
            failures.append(f"case {i} ({description}): {type(error).__name__}: {str(error)[:300]}")
    assert not failures, f"{len(failures)} case(s) escaped:\n" + "\n".join(failures[:20])
    return tally


# ----- safetensors ---------------------------------------------------------------------------------

def split_safetensors(data: bytes):
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + header_len]), data[8 + header_len:]


def join_safetensors(header, body: bytes, header_len=None) -> bytes:
    raw = header if isinstance(header, bytes) else json_bytes(header)
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if header_len is None else header_len % 2**64) + raw + body


def mutate_length_field(rng, data):
    real = struct.unpack("<Q", data[:8])[0]
    claimed = rng.choice([0, 1, real - 1, real + 1, real + 8, len(data) - 8, len(data), 2**32, 2**63,
                          MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**64 - 1])
    return struct.pack("<Q", claimed % 2**64) + data[8:], f"header length {real} -> {claimed}"


def mutate_entry(rng, data):
    """One field of one header entry replaced by a value chosen to break exactly one rule."""
    header, body = split_safetensors(data)
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    field = rng.choice(["dtype", "shape", "data_offsets", "entry", "metadata", "swap"])
    if field == "dtype":
        entry["dtype"] = rng.choice(list(DTYPES) + list(KNOWN_UNSUPPORTED) + ["f32", "F32 ", "", 5, None])
    elif field == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice([shape + [1], shape + [0], shape[:-1], [d + 1 for d in shape],
                                     [d * 2 for d in shape], [0] + shape, [2**40] + shape, [2**62, 2**62],
                                     [-1] + shape, [3.0], ["3"], [[3]], [True], "3", None, [1] * 65])
    elif field == "data_offsets":
        begin, end = entry["data_offsets"]
        item = DTYPES[entry["dtype"]].itemsize
        other = header[rng.choice(names)]["data_offsets"]
        entry["data_offsets"] = rng.choice([[begin + 1, end], [begin, end - 1], [begin, end + item],
                                            [begin - item, end - item], [end, begin], [end, end],
                                            [0, len(body)], [-1, end], [begin], [begin, end, end],
                                            [begin, 2**64], [begin, float(end)], list(other)])
    elif field == "entry":
        action = rng.choice(["delete", "copy", "rename", "not an object"])
        if action == "delete":
            del header[name]
        elif action == "copy":
            header[name + "_copy"] = dict(entry)
        elif action == "rename":
            header[rng.choice(["", "__metadata__", name + "\x00", "é"])] = header.pop(name)
        else:
            header[name] = rng.choice([[], "x", 5, None])
    elif field == "metadata":
        header["__metadata__"] = rng.choice([{"format": 1}, ["pt"], "pt", None, {"a": {"b": "c"}}, {}])
    else:  # two entries trade places in the buffer: an overlap, a gap, or a size mismatch
        other = rng.choice(names)
        entry["data_offsets"], header[other]["data_offsets"] = header[other]["data_offsets"], entry["data_offsets"]
    keep_length = rng.random() < 0.1  # the length field no longer matches the header
    return join_safetensors(header, body, len(data[8:]) if keep_length else None), f"{field} of {name!r}"


def structural_safetensors_mutation(rng, data):
    kind = rng.random()
    if kind < 0.15:
        header, body = split_safetensors(data)
        raw = rng.choice([b"[]", b"\"x\"", b"1", b"{" * 100_000, b"[" * 100_000, b"{\"a\": 1e999}",
                          b"{\"a\": " + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}", b" {}", b"{}\x00"])
        return join_safetensors(raw, body), f"header replaced by {raw[:12]!r}"
    if kind < 0.25:
        return mutate_length_field(rng, data)
    return mutate_entry(rng, data)


@pytest.fixture(scope="module")
def safetensors_seeds(tmp_path_factory):
    """Real files to mutate: mixed dtypes (with an empty tensor and a scalar), and bfloat16."""
    folder = tmp_path_factory.mktemp("st-seeds")
    rng = np.random.default_rng(0)
    mixed = {"w": rng.standard_normal((3, 4)).astype(np.float32), "d": rng.standard_normal(5),
             "h": rng.standard_normal(6).astype(np.float16), "ids": np.arange(4, dtype=np.int64),
             "u": np.arange(3, dtype=np.uint8), "mask": np.array([True, False, True]),
             "empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5, dtype=np.float32)}
    write_safetensors(folder / "mixed.safetensors", mixed, metadata={"format": "pt"})
    write_safetensors(folder / "bf16.safetensors", {"a": rng.standard_normal((2, 3)).astype(np.float32),
                                                    "b": rng.standard_normal(4).astype(np.float32)},
                      as_dtype="bf16")
    return [(folder / name).read_bytes() for name in ("mixed.safetensors", "bf16.safetensors")]


def reference_accepts(path) -> bool:
    """Does the reference implementation (the `safetensors` package) accept the file's header?
    True when the package is not installed (it is an optional extra): then only the other checks run."""
    try:
        import safetensors
    except ImportError:
        return True
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        return True
    except BaseException as error:  # the Rust side may raise PanicException, a BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def check_tensors_match_bytes(data: bytes, tensors: dict) -> None:
    """An accepted file: every tensor is exactly the bytes its header entry points at."""
    header, body = split_safetensors(data)
    entries = {n: e for n, e in header.items() if n != "__metadata__"}
    assert set(tensors) == set(entries)
    covered = 0
    for name, e in sorted(entries.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = e["data_offsets"]
        assert begin == covered, "an accepted file must tile its buffer"
        covered = end
        raw = np.frombuffer(body[begin:end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        expected = bf16_bits_to_float32(raw) if e["dtype"] == "BF16" else raw
        assert tensors[name].shape == tuple(e["shape"])
        assert tensors[name].tobytes() == expected.astype(expected.dtype.newbyteorder("=")).tobytes()
    assert covered == len(body)


def test_mutated_safetensors_files_load_exactly_or_are_refused(tmp_path, safetensors_seeds, robustness_count):
    rng = random.Random(SEED)
    path = tmp_path / "fuzzed.safetensors"
    mutations = BYTE_MUTATIONS + [structural_safetensors_mutation] * 4
    disagreements = []

    def check(i, description):
        seed = safetensors_seeds[i % len(safetensors_seeds)]
        data, what = rng.choice(mutations)(rng, seed)
        path.write_bytes(data)
        result, value = outcome(read_safetensors, path)
        header_result, _ = outcome(read_safetensors_header, path)
        # The header reader checks all but the data itself (BOOL bytes), so it may only be laxer.
        assert header_result == "ok" or result == "refused", "read_safetensors accepted a bad header"
        if result == "ok":
            check_tensors_match_bytes(data, value)
            if not reference_accepts(path):
                disagreements.append(f"case {i}: {what}")
        return result

    tally = run_cases(((i, "mutated safetensors") for i in range(N_SAFETENSORS_CASES)), check)
    robustness_count(f"safetensors: mutated files ({tally['refused']} refused, {tally['ok']} loaded exactly)",
                     N_SAFETENSORS_CASES)
    assert not disagreements, f"accepted what the reference refuses: {disagreements[:10]}"
    assert tally["refused"] > N_SAFETENSORS_CASES // 2 and tally["ok"] > 10, tally  # both paths exercised


# Hypothesis builds headers from scratch, near the valid region: a few entries whose dtype, shape
# and offsets are each right or slightly wrong, and a buffer of roughly the right size.
entry_strategy = st.fixed_dictionaries({
    "dtype": st.sampled_from(list(DTYPES) + ["F8_E4M3", "Q4", "f32"]),
    "shape": st.lists(st.integers(0, 5), max_size=3) | st.lists(st.integers(-2, 2**63), max_size=2),
    "skew": st.sampled_from([0, 0, 0, 0, 1, -1, 8]),
})


@HYPOTHESIS
@given(entries=st.dictionaries(st.text(min_size=1, max_size=6), entry_strategy, max_size=4),
       slack=st.sampled_from([0, 0, 0, 1, -1, 16]), order=st.randoms(use_true_random=False))
def test_generated_headers_load_exactly_or_are_refused(tmp_path, entries, slack, order, robustness_count):
    header, offset = {}, 0
    names = list(entries)
    order.shuffle(names)
    for name in names:
        e = entries[name]
        item = DTYPES[e["dtype"]].itemsize if e["dtype"] in DTYPES else 1
        size = int(np.prod(e["shape"], dtype=object)) * item if e["shape"] else item
        size = min(max(size, 0), 10_000) + e["skew"]
        header[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [offset, offset + size]}
        offset += max(size, 0)
    body = (bytes(range(256)) * (offset // 256 + 2))[:max(offset + slack, 0)]
    data = join_safetensors(header, body)
    path = tmp_path / "generated.safetensors"
    path.write_bytes(data)
    result, tensors = outcome(read_safetensors, path)
    if result == "ok":
        check_tensors_match_bytes(data, tensors)
        assert reference_accepts(path)
    robustness_count("safetensors: generated headers (hypothesis)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_or_folder_named_like_a_checkpoint_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("opening a FIFO blocked"))
    signal.alarm(10)
    try:
        for read in (read_safetensors, read_safetensors_header):
            with pytest.raises(CheckpointError, match="not a regular file"):
                read(fifo)
            with pytest.raises(CheckpointError, match="not a regular file"):
                read(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----- Hugging Face folders and config.json ----------------------------------------------------------

def tiny_config(**overrides):
    fields = dict(vocab_size=32, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return LlamaConfig(**{**fields, **overrides})


def tiny_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in config.param_shapes().items()}


@pytest.fixture(scope="module")
def hf_seeds(tmp_path_factory):
    """A single-file folder and a sharded one (two shards listed by an index)."""
    base = tmp_path_factory.mktemp("hf-seeds")
    config = tiny_config()
    params = tiny_params(config)
    save_hf_folder(base / "single", config, params)
    sharded = base / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(config.to_dict()))
    names, weight_map = list(params), {}
    for k in range(2):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        write_safetensors(sharded / shard, {n: params[n] for n in names[k::2]}, metadata={"format": "pt"})
        weight_map.update({n: shard for n in names[k::2]})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return base / "single", base / "sharded"


def mutate_index(rng, index):
    weight_map = index["weight_map"]
    name = rng.choice(list(weight_map))
    action = rng.random()
    if action < 0.5:
        weight_map[name] = rng.choice(["../x.safetensors", "/etc/passwd", "", ".", "sub/../../x.safetensors",
                                       "C:\\x.safetensors", "missing.safetensors", "config.json",
                                       "model.safetensors.index.json", "\x00.safetensors", 5, None,
                                       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    elif action < 0.7:
        weight_map[rng.choice(["model.extra.weight", name + "x", ""])] = weight_map[name]
    elif action < 0.8:
        del weight_map[name]
    else:
        return mutate_json_value(rng, index)
    return index


def test_mutated_hf_folders_load_or_are_refused(tmp_path, hf_seeds, robustness_count):
    rng = random.Random(SEED + 1)
    expected = tiny_config().param_shapes()

    def check(i, description):
        folder = tmp_path / f"case{i}"
        shutil.copytree(hf_seeds[i % 2], folder)
        files = sorted(p.name for p in folder.iterdir())
        target = folder / rng.choice(files)
        kind = rng.random()
        if target.suffix == ".json" and kind < 0.6:
            obj = json.loads(target.read_text())
            obj = mutate_index(rng, obj) if "index" in target.name else mutate_json_value(rng, obj)
            target.write_bytes(json_bytes(obj))
        elif target.suffix == ".safetensors" and kind < 0.5:
            target.write_bytes(structural_safetensors_mutation(rng, target.read_bytes())[0])
        elif kind < 0.9:
            target.write_bytes(rng.choice(BYTE_MUTATIONS)(rng, target.read_bytes())[0])
        else:
            target.unlink()
        result, value = outcome(load_hf_folder, folder)
        if result == "ok":
            config, params = value
            assert {n: p.shape for n, p in params.items()} == config.param_shapes()
            if "config.json" not in target.name:
                assert config.param_shapes() == expected
        shutil.rmtree(folder)
        return result

    tally = run_cases(((i, "mutated HF folder") for i in range(N_HF_CASES)), check)
    robustness_count(f"HF folders: mutated config.json / index / shards ({tally['refused']} refused, "
                     f"{tally['ok']} loaded)", N_HF_CASES)
    assert tally["refused"] > N_HF_CASES // 3, tally


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)
CONFIG_FIELDS = list(tiny_config().to_dict()) + ["rope_parameters", "dtype", "torch_dtype", "unknown"]


@HYPOTHESIS
@given(changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), json_values | st.integers(0, 2**40), max_size=3),
       removed=st.lists(st.sampled_from(CONFIG_FIELDS), max_size=2))
def test_config_json_with_wrong_types_or_sizes_is_refused_by_field(tmp_path, changes, removed, robustness_count):
    config = tiny_config().to_dict()
    config.update(changes)
    for name in removed:
        config.pop(name, None)
    path = tmp_path / "config.json"
    path.write_bytes(json_bytes(config))
    result, value = outcome(read_config, path)
    if result == "ok":
        assert all(isinstance(getattr(value, f), int) and getattr(value, f) > 0
                   for f in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings"))
        assert value.num_parameters() == sum(int(np.prod(s)) for s in value.param_shapes().values())
    robustness_count("config.json: generated fields (hypothesis)")


ABSURD_CONFIGS = [
    ("a trillion layers", dict(num_hidden_layers=10**12)),
    # few parameters, but millions of layers: their names alone would fill memory
    ("four million thin layers", dict(num_hidden_layers=2**22)),
    ("terabyte vocabulary", dict(vocab_size=10**12)),
    ("huge hidden size", dict(hidden_size=2**40, num_attention_heads=2)),
    ("huge FFN", dict(intermediate_size=10**13)),
    ("huge head_dim", dict(head_dim=2**40)),
    ("a quadrillion positions", dict(max_position_embeddings=10**15)),
    ("20B parameters", dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                            num_attention_heads=64)),
]


@pytest.mark.parametrize("changes", [c for _, c in ABSURD_CONFIGS], ids=[n for n, _ in ABSURD_CONFIGS])
def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, hf_seeds, changes, robustness_count):
    folder = tmp_path / "model"
    shutil.copytree(hf_seeds[0], folder)
    config = {**tiny_config().to_dict(), **changes}
    (folder / "config.json").write_text(json.dumps(config))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load_hf_folder(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(folder / "config.json") in str(info.value)
    assert peak < 5 * 1024**2, f"{peak:,} bytes allocated before refusing"
    robustness_count("config.json: absurd sizes")


# ----- training checkpoints (what `npllama train --resume` reads) -------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    return Tokenizer.train(make_default_corpus(200), tmp_path_factory.mktemp("tok") / "tok", 360)


@pytest.fixture(scope="module")
def checkpoint_seed(tmp_path_factory, tokenizer):
    """A real checkpoint after two AdamW steps, and what restoring it needs (config, loader)."""
    from npllama.data import BatchLoader
    from npllama.io.train_state import save_checkpoint
    from npllama.model import Llama
    from npllama.optim import AdamW
    from npllama.train import TrainConfig

    tc = TrainConfig(out="unused", steps=10)
    model = Llama(tiny_config(vocab_size=tokenizer.vocab_size), seed=0)
    optimizer = AdamW(model.params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    ids = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 400)
    loader = BatchLoader(ids, batch_size=2, seq_len=8, seed=0)
    for _ in range(2):
        _, grads = model.loss_and_grads(*loader.next_batch())
        optimizer.step(grads)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    state = {"step": 2, "loader": loader.state_dict(), "train_loss": 5.0, "val_loss": None, "val_step": None}
    save_checkpoint(folder, model, optimizer.state_dict(), state)
    return folder, tc, ids


def test_mutated_training_checkpoints_restore_or_are_refused(tmp_path, checkpoint_seed, tokenizer,
                                                             robustness_count):
    from npllama.data import BatchLoader
    from npllama.train import restore_checkpoint

    from npllama.io.train_state import load_checkpoint

    seed_folder, tc, ids = checkpoint_seed
    saved_model, saved_optimizer, _ = load_checkpoint(seed_folder)
    rng = random.Random(SEED + 2)
    targets = ["training_state.json"] * 5 + ["optimizer.safetensors"] * 3 + ["model/config.json",
                                                                               "model/model.safetensors"]

    def check(i, description):
        folder = tmp_path / f"case{i}"
        shutil.copytree(seed_folder, folder)
        target = folder / rng.choice(targets)
        kind = rng.random()
        if target.suffix == ".json" and kind < 0.6:
            target.write_bytes(json_bytes(mutate_json_value(rng, json.loads(target.read_text()))))
        elif target.suffix == ".safetensors" and kind < 0.5:
            target.write_bytes(structural_safetensors_mutation(rng, target.read_bytes())[0])
        elif kind < 0.95:
            target.write_bytes(rng.choice(BYTE_MUTATIONS)(rng, target.read_bytes())[0])
        else:
            target.unlink()
        loader = BatchLoader(ids, batch_size=2, seq_len=8, seed=0)
        result, value = outcome(lambda p: restore_checkpoint(p, tc, loader, tokenizer), folder)
        if result == "ok":
            model, optimizer, state = value
            # checksums: whatever restores holds exactly the saved numbers
            assert all(np.array_equal(model.params[k], saved_model.params[k]) for k in model.params)
            assert all(np.array_equal(optimizer.v[k], saved_optimizer["v"][k]) for k in optimizer.v)
            assert optimizer.step_count == state["step"]
            assert set(optimizer.m) == set(model.params)
            assert (loader.epoch, loader.batch_index) == (state["loader"]["epoch"], state["loader"]["batch_index"])
        else:
            assert (loader.epoch, loader.batch_index) == (0, 0), "a refused checkpoint moved the loader"
        shutil.rmtree(folder)
        return result

    tally = run_cases(((i, "mutated checkpoint") for i in range(N_CHECKPOINT_CASES)), check)
    robustness_count(f"training checkpoints: mutated state / optimizer / model files ({tally['refused']} "
                     f"refused, {tally['ok']} restored)", N_CHECKPOINT_CASES)
    assert tally["refused"] > N_CHECKPOINT_CASES // 3, tally


N_BIT_FLIPS = 60


def test_single_bit_flips_in_checkpoint_data_are_caught_naming_file_and_tensor(tmp_path, checkpoint_seed,
                                                                              robustness_count):
    """A bit flipped on disk in a tensor's bytes (the case no structural check can see) is refused by
    the checksums, with the file and the tensor that holds the flipped byte."""
    from npllama.io.train_state import load_checkpoint

    seed_folder, _, _ = checkpoint_seed
    rng = random.Random(SEED + 3)
    for case in range(N_BIT_FLIPS):
        folder = tmp_path / f"flip{case}"
        shutil.copytree(seed_folder, folder)
        target = folder / rng.choice(["model/model.safetensors", "optimizer.safetensors"])
        data = bytearray(target.read_bytes())
        data_start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
        position = rng.randrange(data_start, len(data))
        data[position] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        owner = next(name for name, entry in read_safetensors_header(target).items() if name != "__metadata__"
                     and entry["data_offsets"][0] <= position - data_start < entry["data_offsets"][1])
        with pytest.raises(CheckpointError, match="checksum") as info:
            load_checkpoint(folder)
        assert info.value.path == str(target) and info.value.tensor == owner, (case, str(info.value))
        shutil.rmtree(folder)
    robustness_count("checksums: single-bit flips in checkpoint tensor data (all refused)", N_BIT_FLIPS)


def test_a_file_with_checksums_must_have_one_per_tensor(tmp_path):
    arrays = {"a": np.arange(4.0), "b": np.ones((2, 3), dtype=np.float32)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, arrays, checksums=True)
    assert all(np.array_equal(read_safetensors(path)[k], arrays[k]) for k in arrays)
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    del header["__metadata__"]["npllama.sha256:b"]  # as a damaged header would lose it
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data_start = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + path.read_bytes()[data_start:])
    with pytest.raises(CheckpointError, match="has no checksum") as info:
        read_safetensors(path)
    assert info.value.tensor == "b"
    with pytest.raises(ValueError, match="reserved for checksums"):
        write_safetensors(path, arrays, metadata={"npllama.sha256:a": "0"})


@pytest.mark.parametrize("cut", [0, 1, 0.5, -2])
def test_a_truncated_training_state_file_is_named(tmp_path, checkpoint_seed, tokenizer, cut):
    from npllama.data import BatchLoader
    from npllama.train import restore_checkpoint

    seed_folder, tc, ids = checkpoint_seed
    folder = tmp_path / "checkpoint"
    shutil.copytree(seed_folder, folder)
    state_file = folder / "training_state.json"
    data = state_file.read_bytes()
    state_file.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match="training_state.json") as info:
        restore_checkpoint(folder, tc, BatchLoader(ids, batch_size=2, seq_len=8, seed=0), tokenizer)
    assert info.value.path == str(state_file)


# ----- SentencePiece models ----------------------------------------------------------------------------

# Runs in a child process: if the C++ library crashed or aborted on some model, pytest would die
# with it.  The child prints the case it is on before trying it, so a crash names its case.
TOKENIZER_FUZZER = textwrap.dedent('''
    import json, random, sys
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from npllama.tokenizer import Tokenizer
    from tests.test_fuzz_loaders import BYTE_MUTATIONS

    original, folder, n_cases = open(sys.argv[1], "rb").read(), sys.argv[2], int(sys.argv[3])
    rng = random.Random(11)
    tally = {"ok": 0, "refused": 0}
    for i in range(n_cases):
        data = original
        for _ in range(rng.choice([1, 1, 1, 2, 4])):
            data = rng.choice(BYTE_MUTATIONS)(rng, data)[0] or b"x"
        path = f"{folder}/case{i}.model"
        open(path, "wb").write(data)
        print("case", i, flush=True)
        try:
            tok = Tokenizer(path)
        except ValueError as error:
            assert path in str(error), f"case {i}: message does not name the file: {error}"
            tally["refused"] += 1
            continue
        ids = tok.encode("Once upon a time, Lily saw 12 birds. \\u00e9\\u4e2d!", bos=True, eos=True)
        assert all(0 <= t < tok.vocab_size for t in ids), f"case {i}: encode gave ids out of range"
        tok.decode(ids)
        tok.decode(list(np.random.default_rng(i).integers(0, tok.vocab_size, 50)))
        [tok.id_to_piece(t) for t in range(min(tok.vocab_size, 400))]
        tally["ok"] += 1
    print("TALLY", json.dumps(tally), flush=True)
''')


def test_mutated_sentencepiece_models_load_or_are_refused_in_a_child(tmp_path, tokenizer, robustness_count):
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    out = subprocess.run([sys.executable, "-c", TOKENIZER_FUZZER, str(tokenizer.path), str(tmp_path),
                          str(N_TOKENIZER_CASES), str(here.parent)],
                         capture_output=True, text=True, timeout=120, env=env)
    last_case = [line for line in out.stdout.splitlines() if line.startswith("case")][-1:]
    assert out.returncode == 0, (f"the child died with status {out.returncode} at {last_case} "
                                 f"(a negative status is the signal that killed it):\n{out.stderr[-3000:]}")
    tally = json.loads(out.stdout.split("TALLY", 1)[1])
    robustness_count(f"SentencePiece: mutated tokenizer.model files, in a child process ({tally['refused']} "
                     f"refused, {tally['ok']} loaded and used)", N_TOKENIZER_CASES)
    assert tally["refused"] > 0 and tally["ok"] + tally["refused"] == N_TOKENIZER_CASES, tally
