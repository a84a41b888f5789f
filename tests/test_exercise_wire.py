"""The sandbox child's replies (wire.py): what a student's function returned or raised comes back
as the checks need it, and nothing the child sends is unpickled, evaluated, or read past the limits."""
import inspect
import io
import json
import runpy
import struct
from typing import NamedTuple

import numpy as np
import pytest

from npllama.exercises import get_exercise, wire
from npllama.exercises.runner import _crash_hint, describe_exception
from npllama.exercises.sandbox import _signature


def round_trip(value):
    arrays = []
    tree = wire.describe(value, arrays)
    header, arrays = wire.read(io.BytesIO(wire.encode({"kind": "return", "value": tree}, arrays)).read)
    return wire.rebuild(header["value"], arrays)


class Pair(NamedTuple):
    a: object
    b: object


class Matrix:
    def __reduce__(self):       # would run if anything unpickled it
        raise AssertionError("unpickled")


def test_what_a_function_returns_comes_back_as_the_checks_read_it():
    x = np.array([[1.0, np.nan], [-np.inf, 2.5]])
    got = round_trip((x, x.astype(np.float32)[0], np.arange(3), np.array(True), np.float64(2.0), np.ones(2, complex)))
    assert isinstance(got, tuple) and len(got) == 6
    assert np.array_equal(got[0], x, equal_nan=True) and got[0].flags.writeable
    assert [g.dtype for g in got[:4]] == [np.float64, np.float32, np.arange(3).dtype, bool]
    assert got[3].shape == () and isinstance(got[4], np.float64) and got[5].dtype == complex
    assert round_trip([np.zeros(2)])[0].shape == (2,) and isinstance(round_trip([np.zeros(2)]), list)
    assert round_trip(Pair(1, None)) == (1, None)          # a NamedTuple is a tuple
    assert round_trip({"dx": 1.5, "n": 2, "ok": True, "s": "text"}) == {"dx": 1.5, "n": 2, "ok": True, "s": "text"}
    assert round_trip(None) is None and round_trip([[1.0, 2.0], [3.0]]) == [[1.0, 2.0], [3.0]]


def test_an_object_of_the_students_own_class_is_described_by_its_name():
    got = round_trip((Matrix(), np.array([object()], dtype=object)))
    assert [type(g).__name__ for g in got] == ["Matrix", "ndarray"]
    assert all(isinstance(g, wire.Described) for g in got) and repr(got[0]) == "<Matrix object>"


def test_an_int_too_long_for_json_comes_back_as_an_int_described_by_name():
    """(json.dumps refuses more than 4300 digits: the child died and the row said "crashed in C code")"""
    got = round_trip((2**4000, 10**5000))
    assert got[0] == 2**4000 and type(got[1]).__name__ == "int" and isinstance(got[1], wire.Described)


def test_a_structure_too_large_or_too_deep_is_not_sent():
    with pytest.raises(wire.TooLarge, match="at most 16.0 MB"):
        wire.describe([np.zeros(wire.REPLY_LIMIT // 8 + 1)], [])
    nested = []
    nested.append(nested)
    with pytest.raises(wire.TooLarge, match="nested"):
        wire.describe(nested, [])


def frame(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("data", [
    struct.pack("<Q", wire.HEADER_LIMIT + 1),                                # a header too long to read
    frame({"kind": "return", "arrays": [["<f8", [wire.REPLY_LIMIT]]]}),       # arrays too large to read
    frame({"kind": "return", "arrays": [["|O", [1]]]}, b"\0" * 8),            # object dtype: pickles
    frame({"kind": "return", "arrays": [["|V8", [1]]]}, b"\0" * 8),
    frame({"kind": "return", "arrays": [["<f8", [-1]]]}),
    frame({"kind": "return"}),                                                # no array list
    struct.pack("<Q", 3) + b"[1]",                                            # not a mapping
    struct.pack("<Q", 4) + b"{{{{",
    frame({"kind": "return", "arrays": [["<f8", [1] * 1000]]}, b"\0" * 8),    # more dimensions than NumPy has
    frame({"kind": "return", "arrays": [["<f8", [0, 2**70]]]}),               # empty, but a shape too large
    frame({"kind": "return", "arrays": [["<f8", [float("inf")]]]}),          # (JSON's Infinity, or 1e400)
], ids=["header", "arrays", "object", "void", "negative", "no arrays", "list", "not json", "1000 dims", "huge empty",
        "inf"])
def test_what_is_not_a_reply_within_the_limits_is_refused_before_it_is_read(data):
    asked = []

    def read_exactly(n):
        asked.append(n)
        return io.BytesIO(data[sum(asked) - n:]).read(n)

    with pytest.raises(wire.WireError) as refused:
        wire.read(read_exactly)
    assert max(asked) <= wire.HEADER_LIMIT and len(str(refused.value)) < 300


def test_a_value_or_signature_that_is_not_one_is_malformed_not_an_error_of_the_graders():
    with pytest.raises(wire.MALFORMED):
        wire.rebuild(json.loads('{"int": 1e400}'), [])
    assert _signature(json.loads('[["dy", 1e400]]')) == inspect.Signature()


def test_the_students_exception_comes_back_for_the_crash_diagnosis(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import numpy as np\n\ndef f(dy, x):\n    return np.einsum('ij,jk->ik', dy, x)\n")
    try:
        runpy.run_path(str(path))["f"](np.ones(2), np.ones(2))
    except ValueError as raised:
        error = wire.remote_error(json.loads(json.dumps(wire.error_header(raised))))
    assert isinstance(error, ValueError) and type(error).__name__ == "ValueError"
    described = describe_exception(error, str(path))
    assert described.startswith("your function raised ValueError: ")
    assert "(line 4 of mine.py: return np.einsum" in described
    # 'ij' given a 1-D operand: the hint names that count, as it does in the student's own process
    assert "einsum operand has another number of axes" in _crash_hint(error, get_exercise("rmsnorm"), None,
                                                                      str(path), "f")

    # a KeyboardInterrupt or SystemExit of the student's is their failure, not the grader's Ctrl-C
    for raised, base in ((SystemExit(3), Exception), (KeyboardInterrupt(), Exception), (KeyError("x"), KeyError),
                         (NotImplementedError(), NotImplementedError),
                         (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), UnicodeDecodeError)):
        error = wire.remote_error(wire.error_header(raised))
        assert type(error).__name__ == type(raised).__name__ and isinstance(error, base) and str(error) == str(raised)
