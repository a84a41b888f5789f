"""Our safetensors reader/writer: round trips, the byte layout, bf16/f16 rounding, every way a
file can be malformed, interop with the reference `safetensors` package, and atomic file writes."""
import json
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npllama.io import CheckpointError, atomic_write_bytes, atomic_write_text
from npllama.io.safetensors import (MAX_HEADER_BYTES, as_written, bf16_bits_to_float32, float32_to_bf16_bits,
                                    read_safetensors, read_safetensors_header, write_safetensors)

SUPPORTED = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
             np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
NAMES = st.text(max_size=8).filter(lambda n: n != "__metadata__")


@st.composite
def tensor_dicts(draw, dtypes=SUPPORTED):
    names = draw(st.lists(NAMES, unique=True, max_size=5))
    return {name: draw(hnp.arrays(draw(st.sampled_from(dtypes)), SHAPES)) for name in names}


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def write_raw(path, header, data=b"", header_len=None):
    """A file with any header (dict -> JSON, or raw bytes) and any claimed header length."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(header_bytes) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + header_bytes + data)
    return path


def independent_read(path):
    """A minimal reader written from the format description alone: (header length, header, buffer)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


# ----- round trips ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(tensors=tensor_dicts(), metadata=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_round_trip_is_bit_exact(tmp_path_factory, tensors, metadata):
    path = tmp_path_factory.mktemp("rt") / "t.safetensors"
    write_safetensors(path, tensors, metadata=metadata)
    back = read_safetensors(path)
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        assert same_bits(back[name], array), name
        assert back[name].flags.c_contiguous and back[name].flags.writeable
    header = read_safetensors_header(path)
    assert header.get("__metadata__") == metadata


@settings(max_examples=20, deadline=None)
@given(tensors=tensor_dicts(), as_float=st.sampled_from([np.float32, np.float64]))
def test_dtype_argument_converts_only_floats(tmp_path_factory, tensors, as_float):
    path = tmp_path_factory.mktemp("conv") / "t.safetensors"
    write_safetensors(path, tensors)
    with np.errstate(over="ignore"):  # float64 past float32's range becomes inf, as numpy casts
        back = read_safetensors(path, dtype=as_float)
    for name, array in tensors.items():
        if array.dtype.kind == "f":
            assert back[name].dtype == as_float
            with np.errstate(over="ignore"):
                np.testing.assert_array_equal(back[name], array.astype(as_float))
        else:
            assert same_bits(back[name], array)


def test_bf16_reads_as_float32_unless_asked(tmp_path):
    x = np.array([[1.0, -2.5], [3.140625, 0.0]], dtype=np.float32)  # all exact in bf16
    path = tmp_path / "bf.safetensors"
    write_safetensors(path, {"x": x}, as_dtype="bf16")
    assert read_safetensors_header(path)["x"]["dtype"] == "BF16"
    plain = read_safetensors(path)["x"]
    assert plain.dtype == np.float32 and np.array_equal(plain, x)
    wide = read_safetensors(path, dtype=np.float64)["x"]
    assert wide.dtype == np.float64 and np.array_equal(wide, x.astype(np.float64))


def test_names_selects_and_order_follows_request(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.ones(2, np.float32), "b": np.zeros(3, np.int8), "c": np.ones(1)})
    back = read_safetensors(path, names=["c", "a"])
    assert list(back) == ["c", "a"]
    with pytest.raises(CheckpointError, match="no such tensor") as info:
        read_safetensors(path, names=["zz"])
    assert info.value.tensor == "zz" and str(path) in str(info.value)


def test_arrays_read_are_independent(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.arange(4.0), "b": np.arange(4.0)})
    back = read_safetensors(path)
    back["a"][0] = 99.0
    assert back["b"][0] == 0.0 and not np.shares_memory(back["a"], back["b"])


def test_writer_accepts_non_contiguous_and_big_endian(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T          # Fortran-ordered view
    y = np.arange(5, dtype=">i4")                                 # big-endian
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": x, "y": y})
    back = read_safetensors(path)
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)
    assert back["y"].dtype == np.dtype("int32") and back["y"].dtype.isnative
    _, header, buffer = independent_read(path)
    begin, end = header["y"]["data_offsets"]
    assert buffer[begin:end] == np.arange(5, dtype="<i4").tobytes()


# ----- the byte layout, checked by an independent reader ------------------------------------------

@settings(max_examples=20, deadline=None)
@given(tensors=tensor_dicts())
def test_layout_follows_the_format(tmp_path_factory, tensors):
    path = tmp_path_factory.mktemp("layout") / "t.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    n, header, buffer = independent_read(path)
    raw = path.read_bytes()
    assert n % 8 == 0, "header length must be padded to a multiple of 8"
    text = raw[8:8 + n].decode("utf-8")
    json_part = text.rstrip(" ")
    assert json_part.startswith("{") and json_part.endswith("}") and len(text) - len(json_part) < 8
    assert list(header)[0] == "__metadata__" and header["__metadata__"] == {"format": "pt"}
    names = [k for k in header if k != "__metadata__"]
    assert sorted(names) == sorted(tensors)
    position = 0
    for name in names:                              # header order is data order: contiguous from 0
        entry = header[name]
        begin, end = entry["data_offsets"]
        assert begin == position
        assert begin % ITEMSIZE[entry["dtype"]] == 0, "widest dtypes first keeps every tensor aligned"
        array = tensors[name]
        assert entry["shape"] == list(array.shape)
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        assert buffer[begin:end] == little.tobytes()
        position = end
    assert position == len(buffer), "no bytes after the last tensor"
    sizes = [ITEMSIZE[header[k]["dtype"]] for k in names]
    assert sizes == sorted(sizes, reverse=True)


# ----- bfloat16 and float16 rounding ----------------------------------------------------------------

def bf16_reference(x32: np.ndarray) -> list:
    """Nearest bfloat16 by exact arithmetic, ties to the even pattern.  None marks NaN."""
    out = []
    for value in x32.ravel():
        if np.isnan(value):
            out.append(None)
            continue
        bits = int(np.array(value, np.float32).view(np.uint32))
        down, up = bits >> 16, (bits >> 16) + 1             # sign-magnitude: up is away from zero

        def as_float(b):
            if b & 0x7F80 == 0x7F80:                        # exponent all ones: the overflow point
                return float(np.sign(value)) * 2.0 ** 128
            return float(np.array(b << 16, np.uint32).view(np.float32))

        if bits & 0xFFFF == 0:
            out.append(down)
            continue
        d_down, d_up = abs(float(value) - as_float(down)), abs(as_float(up) - float(value))
        out.append(down if d_down < d_up or (d_down == d_up and down % 2 == 0) else up)
    return out


def check_bf16_bits(x32, got_bits):
    for expected, got, value in zip(bf16_reference(x32), got_bits.ravel().tolist(), x32.ravel()):
        if expected is None:
            assert got & 0x7F80 == 0x7F80 and got & 0x7F, f"NaN must stay NaN, got {got:#06x}"
            assert (got >> 15) == int(np.signbit(value))
        else:
            assert got == expected, f"{value!r}: got {got:#06x}, expected {expected:#06x}"


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(width=32)))
def test_bf16_rounding_matches_exact_reference(x32):
    check_bf16_bits(x32, float32_to_bf16_bits(x32))


@pytest.mark.parametrize("bits, expected", [
    (0x3F808000, 0x3F80),   # exact tie, lower neighbour even: stays
    (0x3F818000, 0x3F82),   # exact tie, lower neighbour odd: up to even
    (0x3F808001, 0x3F81),   # just past the tie: up
    (0x3F807FFF, 0x3F80),   # just below the tie: down
    (0xBF818000, 0xBF82),   # negative ties go away from zero to even too
    (0x7F7FFFFF, 0x7F80),   # float32 max rounds to bf16 infinity
    (0x7F7F7FFF, 0x7F7F),   # but below the halfway point it stays finite
    (0x80000000, 0x8000),   # -0.0 keeps its sign
    (0x00000001, 0x0000),   # smallest subnormal rounds to zero
    (0x7F800001, 0x7FC0),   # a signalling NaN whose payload would round into infinity stays NaN
    (0xFF800001, 0xFFC0),
])
def test_bf16_rounding_edge_cases(bits, expected):
    x = np.array([bits], dtype=np.uint32).view(np.float32)
    assert int(float32_to_bf16_bits(x)[0]) == expected


def test_bf16_widening_is_exact():
    all_bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    wide = bf16_bits_to_float32(all_bits)
    finite = np.isfinite(wide)
    assert np.array_equal(float32_to_bf16_bits(wide[finite]), all_bits[finite])   # exact round trip
    assert np.all(np.isnan(wide[(all_bits & 0x7F80) == 0x7F80][1:127]))


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, max_side=5),
                  elements=st.floats(width=32)),
       st.sampled_from([np.float32, np.float64]))
def test_write_as_bf16_and_f16_round_like_the_references(tmp_path_factory, x, source_dtype):
    folder = tmp_path_factory.mktemp("conv")
    x = x.astype(source_dtype)
    write_safetensors(folder / "b.st", {"x": x}, as_dtype="bf16")
    write_safetensors(folder / "h.st", {"x": x}, as_dtype="f16")
    _, header, buffer = independent_read(folder / "b.st")
    assert header["x"]["dtype"] == "BF16"
    stored_bits = np.frombuffer(buffer, dtype="<u2").reshape(x.shape)
    check_bf16_bits(x.astype(np.float32), stored_bits)
    back = read_safetensors(folder / "h.st")["x"]
    assert back.dtype == np.float16
    with np.errstate(over="ignore"):
        assert back.tobytes() == x.astype(np.float16).tobytes()   # numpy's cast is the reference


def test_as_dtype_leaves_integers_alone(tmp_path):
    write_safetensors(tmp_path / "t.st", {"i": np.arange(3), "f": np.ones(2)}, as_dtype="bf16")
    header = read_safetensors_header(tmp_path / "t.st")
    assert header["i"]["dtype"] == "I64" and header["f"]["dtype"] == "BF16"


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 1e3,
                        np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF], np.uint32).view(np.float32)])
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(float32_to_bf16_bits(x), theirs)


# ----- malformed files ------------------------------------------------------------------------------

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def entry(**changes):
    return {**F32_2, **changes}


BAD_FILES = [
    # (id, header, data, claimed header length, message pattern, tensor named)
    ("empty file", None, b"", None, "shorter than the 8-byte", None),
    ("header length past end", {"a": F32_2}, bytes(8), 10_000, "past the end of the file", None),
    ("header length absurd", b"{}", b"", 2**62, "over the", None),
    ("header length just over limit", b"{}", b"", MAX_HEADER_BYTES + 1, "over the", None),
    ("not utf-8", b"\xff\xfe\xfd", b"", None, "not UTF-8", None),
    ("not json", b"{not json", b"", None, "not valid JSON", None),
    ("json not object", b"[1, 2]", b"", None, "must be a JSON object", None),
    ("duplicate key", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                      b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"\x00", None,
     "duplicate key", None),
    ("NaN in header", b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', bytes(8), None,
     "not valid JSON", None),
    ("entry not object", {"a": 5}, b"", None, "entry must be an object", "a"),
    ("missing dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "'dtype': missing", "a"),
    ("missing shape", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8), None, "'shape': missing", "a"),
    ("missing offsets", {"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "'data_offsets': missing", "a"),
    ("dtype not string", {"a": entry(dtype=4)}, bytes(8), None, "must be a string", "a"),
    ("unknown dtype", {"a": entry(dtype="F128")}, bytes(8), None, "unknown dtype 'F128'", "a"),
    ("unsupported fp8", {"a": entry(dtype="F8_E4M3")}, bytes(8), None, "does not read", "a"),
    ("shape not list", {"a": entry(shape="2")}, bytes(8), None, "must be a list of ints", "a"),
    ("negative dim", {"a": entry(shape=[-2])}, bytes(8), None, "non-negative ints", "a"),
    ("float dim", {"a": entry(shape=[2.0])}, bytes(8), None, "non-negative ints", "a"),
    ("bool dim", {"a": entry(shape=[True, 2])}, bytes(8), None, "non-negative ints", "a"),
    ("too many dims", {"a": entry(shape=[1] * 65)}, bytes(8), None, "more than 64", "a"),
    ("huge empty shape", {"a": entry(shape=[0, 2**62, 2**62], data_offsets=[0, 0])}, b"", None,
     "too large for numpy", "a"),
    ("offsets not pair", {"a": entry(data_offsets=[0])}, bytes(8), None, "pair of ints", "a"),
    ("offsets floats", {"a": entry(data_offsets=[0, 8.0])}, bytes(8), None, "pair of ints", "a"),
    ("offsets string", {"a": entry(data_offsets="0,8")}, bytes(8), None, "pair of ints", "a"),
    ("begin after end", {"a": entry(data_offsets=[8, 0])}, bytes(8), None, "not a range", "a"),
    ("negative begin", {"a": entry(data_offsets=[-8, 0])}, bytes(8), None, "not a range", "a"),
    ("end past buffer", {"a": entry(data_offsets=[0, 8])}, bytes(4), None, "past the end of the data buffer", "a"),
    ("byte count mismatch", {"a": entry(data_offsets=[0, 4])}, bytes(4), None, "needs 8", "a"),
    ("overlap", {"a": F32_2, "b": entry(data_offsets=[4, 12])}, bytes(12), None, "overlap tensor 'a'", "b"),
    ("empty tensor inside another", {"a": F32_2, "b": entry(shape=[0], data_offsets=[4, 4])}, bytes(8),
     None, "overlap tensor 'a'", "b"),
    ("gap", {"a": entry(shape=[1], data_offsets=[0, 4]), "b": entry(shape=[1], data_offsets=[8, 12])},
     bytes(12), None, "no tensor covers", "b"),
    ("trailing bytes", {"a": F32_2}, bytes(12), None, "after the last tensor", None),
    ("metadata not object", {"__metadata__": ["x"], "a": F32_2}, bytes(8), None, "'__metadata__'", None),
    ("metadata value not str", {"__metadata__": {"format": 1}, "a": F32_2}, bytes(8), None,
     "must be a string", None),
]


@pytest.mark.parametrize("header, data, header_len, pattern, tensor",
                         [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_malformed_files_are_refused_by_name(tmp_path, header, data, header_len, pattern, tensor):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        write_raw(path, header, data, header_len)
    for read in (read_safetensors_header, read_safetensors):
        with pytest.raises(CheckpointError, match=pattern) as info:
            read(path)
        assert str(path) in str(info.value)
        assert info.value.tensor == tensor
        if tensor is not None:
            assert repr(tensor) in str(info.value)


@pytest.mark.parametrize("length", [0, 1, 7])
def test_files_shorter_than_the_length_field(tmp_path, length):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x08" * length)
    with pytest.raises(CheckpointError, match=f"file is {length} bytes long"):
        read_safetensors(path)


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_truncated_real_file(tmp_path, cut):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.ones(4, np.float32), "b": np.ones(3, np.float64)})
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    with pytest.raises(CheckpointError, match="past the end"):
        read_safetensors(path)


def test_bool_bytes_must_be_zero_or_one(tmp_path):
    path = write_raw(tmp_path / "b.st", {"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}},
                     b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="other than 0 and 1") as info:
        read_safetensors(path)
    assert info.value.tensor == "m"


def test_an_empty_file_with_no_tensors_is_valid(tmp_path):
    path = write_raw(tmp_path / "e.st", b"{}      ")
    assert read_safetensors(path) == {} and read_safetensors_header(path) == {}


def test_header_length_is_checked_before_reading_it(tmp_path, monkeypatch):
    """A forged header length must be refused from the file size alone, without parsing anything."""
    import npllama.io.safetensors as module

    def must_not_parse(*args):
        raise AssertionError("the header was parsed before its length was checked")

    monkeypatch.setattr(module, "_parse_json", must_not_parse)
    path = write_raw(tmp_path / "h.st", b"{}", header_len=50_000_000)
    with pytest.raises(CheckpointError, match="past the end of the file"):
        read_safetensors_header(path)


def test_checkpoint_error_is_a_value_error_and_pickles():
    err = CheckpointError("/x/model.safetensors", "bad offsets", tensor="w", field="data_offsets")
    assert isinstance(err, ValueError)
    assert str(err) == "/x/model.safetensors: tensor 'w': field 'data_offsets': bad offsets"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.tensor == "w" and again.field == "data_offsets"


# ----- bad arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("tensors, error, pattern", [
    ([np.ones(2)], TypeError, "tensors must be a dict"),
    ({"a": [1.0, 2.0]}, TypeError, r"tensors\['a'\] must be a numpy array"),
    ({"a": np.ones(2, np.complex64)}, TypeError, "complex64"),
    ({"a": np.array(["x"], dtype=object)}, TypeError, "object"),
    ({1: np.ones(2)}, TypeError, "names must be str"),
    ({"__metadata__": np.ones(2)}, ValueError, "reserved"),
])
def test_write_refuses_bad_tensors(tmp_path, tensors, error, pattern):
    with pytest.raises(error, match=pattern):
        write_safetensors(tmp_path / "t.st", tensors)
    assert not list(tmp_path.iterdir()), "nothing may be left behind"


def test_write_refuses_bad_metadata_and_as_dtype(tmp_path):
    with pytest.raises(TypeError, match="metadata must map str to str"):
        write_safetensors(tmp_path / "t.st", {}, metadata={"a": 1})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        write_safetensors(tmp_path / "t.st", {}, metadata=["a"])
    with pytest.raises(ValueError, match="as_dtype must be"):
        write_safetensors(tmp_path / "t.st", {}, as_dtype="f8")


def test_read_refuses_bad_arguments(tmp_path):
    path = tmp_path / "t.st"
    write_safetensors(path, {"a": np.ones(2)})
    with pytest.raises(TypeError, match="dtype must be None, np.float32 or np.float64"):
        read_safetensors(path, dtype=np.float16)
    with pytest.raises(TypeError, match="dtype must be"):
        read_safetensors(path, dtype="not a dtype")
    with pytest.raises(TypeError, match="single str"):
        read_safetensors(path, names="a")
    with pytest.raises(TypeError, match="names must hold str"):
        read_safetensors(path, names=[1])


# ----- the reference implementation -----------------------------------------------------------------

INTEROP_DTYPES = SUPPORTED  # safetensors.numpy handles all of them (not bf16: numpy has none)


@settings(max_examples=15, deadline=None)
@given(tensors=tensor_dicts(INTEROP_DTYPES))
def test_reference_package_reads_our_files_and_we_read_its(tmp_path_factory, tensors):
    st_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path_factory.mktemp("interop")
    write_safetensors(folder / "ours.st", tensors, metadata={"format": "pt"})
    theirs_read = st_numpy.load_file(str(folder / "ours.st"))
    assert set(theirs_read) == set(tensors)
    for name, array in tensors.items():
        assert same_bits(theirs_read[name], array)

    st_numpy.save_file(tensors, str(folder / "theirs.st"), metadata={"format": "pt"})
    ours_read = read_safetensors(folder / "theirs.st")
    for name, array in tensors.items():
        assert same_bits(ours_read[name], array)
    if all(name.isascii() and name.isprintable() for name in tensors):  # JSON escapes may differ otherwise
        assert (folder / "ours.st").read_bytes() == (folder / "theirs.st").read_bytes()


def test_reference_package_reads_our_bf16(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    x = np.array([1.0, -3.5, 65280.0], np.float32)                  # exact in bf16
    write_safetensors(tmp_path / "b.st", {"x": x}, as_dtype="bf16")
    with safetensors.safe_open(str(tmp_path / "b.st"), framework="numpy") as f:
        assert f.get_slice("x").get_dtype() == "BF16"
        assert f.get_slice("x").get_shape() == [3]


# ----- atomic single-file writes -------------------------------------------------------------------

def test_atomic_write_bytes_and_text(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "state.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")                     # f.write raises mid-way
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"], "temporary file left behind"
    with pytest.raises(TypeError, match="text must be a str"):
        atomic_write_text(target, b"bytes")


def test_atomic_write_fsyncs_before_replacing(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_safetensors(tmp_path / "t.st", {"a": np.ones(3)})
    kinds = [e[0] for e in events]
    replace_at = kinds.index("replace")
    temp_name = events[replace_at][1]
    assert ("fsync", temp_name) in events[:replace_at], "data must be fsynced before the rename"
    assert events[replace_at][2] == str(tmp_path / "t.st")
    assert ("fsync", str(tmp_path)) in events[replace_at:], "the folder must be fsynced after it"


def test_checksums_written_in_one_pass_are_the_tensors_sha256(tmp_path):
    # the header is written before the sums are known and filled in afterwards: same bytes as
    # hashing first, and a tensor spanning several chunks is hashed whole
    import hashlib

    import npllama.io.safetensors as safetensors_io

    rng = np.random.default_rng(0)
    tensors = {"big": rng.standard_normal((3, safetensors_io.CHUNK_BYTES // 8 + 5)).astype(np.float32),
               "empty": np.zeros((0, 4), np.float64), "scalar": np.array(2.5), "flags": np.array([True, False])}
    safetensors_io.write_safetensors(tmp_path / "a.safetensors", tensors, checksums=True)
    metadata = safetensors_io.read_safetensors_header(tmp_path / "a.safetensors")["__metadata__"]
    for name, array in tensors.items():
        dtype = safetensors_io._NAME_OF[array.dtype.newbyteorder("=")]
        expected = hashlib.sha256(f"{dtype}{list(array.shape)}".encode("ascii") + array.tobytes()).hexdigest()
        assert metadata[safetensors_io.CHECKSUM_PREFIX + name] == expected, name
    back = safetensors_io.read_safetensors(tmp_path / "a.safetensors")
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array)
    data = bytearray((tmp_path / "a.safetensors").read_bytes())
    data[-40] ^= 1  # in big's last chunk (only the 2 bytes of flags come after it)
    (tmp_path / "a.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="big.*checksum|checksum.*big"):
        safetensors_io.read_safetensors(tmp_path / "a.safetensors")


@pytest.mark.parametrize("source", [np.float32, np.float64])
@pytest.mark.parametrize("as_dtype", ["bf16", "f16", "f32", "f64"])
def test_as_written_is_what_the_file_reads_back(tmp_path, source, as_dtype):
    """as_written is the writer's own rounding: equal (bit for bit, inf and NaN included) to the
    tensor read back from the file, at the edges of each type's range too."""
    values = np.array([0.0, -1.5, 1 / 3, 65504.0, 65519.0, 65520.0, -7e4, 3.3e38, 3.39e38, 3.4e38,
                       np.inf, -np.inf, np.nan], dtype=source)
    write_safetensors(tmp_path / "t.safetensors", {"x": values}, as_dtype=as_dtype)
    read_back = read_safetensors(tmp_path / "t.safetensors")["x"]
    np.testing.assert_array_equal(as_written(values, as_dtype), read_back)
