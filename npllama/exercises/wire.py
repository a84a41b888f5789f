"""What the process running a submission sends back to the grader, in a form the grader reads
without trusting it (sandbox.py).

A reply is one frame: 8 bytes giving the length of a JSON header, the header, then the raw bytes of
the arrays it lists (dtype and shape each).  Nothing in it is unpickled or evaluated: the header is
JSON, an array is `np.frombuffer` of bytes whose dtype must be a plain number or bool, and the
grader refuses a header or arrays larger than HEADER_LIMIT / REPLY_LIMIT before reading them.

A value the student's function returned travels as a description of its structure (`describe`),
rebuilt on the grader's side (`rebuild`) into what the checks look at:

    an array (any numeric dtype, NaNs included)   {"array": i}    ({"array": i, "scalar": true}: np.float64(2.0))
    a tuple, a list, a dict                       {"tuple": [...]}, {"list": [...]}, {"dict": [[key, value], ...]}
    None, a bool, an int, a float, a str          null, {"bool": b}, {"int": n}, {"float": x}, {"str": s}
    any other object                              {"object": "ItsClassName"}  (an int of more than MAX_INT_BITS too)

"Any other object" comes back as an instance of an empty class of the same name (`Described`): the
checks name its type ("got Matrix") as they would the original, but none of its code runs here.  A
tuple subclass (a NamedTuple) comes back as a tuple, an array subclass as an array.  An exception
the function raised comes back as its class name, the builtin exception classes it derives from, its
message and its traceback's frames, with their columns where Python keeps them (`remote_error`):
enough for the runner's crash diagnosis, which reads the type, the message and the student's own
lines, down to the lookup that raised.
"""
from __future__ import annotations

import builtins
import functools
import json
import keyword
import struct
import sys
import traceback

import numpy as np

HEADER_LIMIT = 4 * 2**20      # bytes of JSON in one reply: a described structure of MAX_NODES parts fits
REPLY_LIMIT = 16 * 2**20      # bytes of arrays in one reply; the exercises' gradients are a few KB
MAX_NODES = 100_000           # parts of a returned structure described (a long dx.tolist() is fine)
MAX_DEPTH = 32                # nesting of a returned structure (a list holding itself stops here)
MAX_TEXT = 2000               # characters of an exception's message, of a str
MAX_INT_BITS = 4096           # an int larger than this travels as its class name only
MAX_FRAMES = 40               # innermost frames of a traceback kept
NUMBER_KINDS = "biufc"        # dtypes that travel: bool, ints, floats, complex
LENGTH = struct.Struct("<Q")  # the length in front of a reply's header (and of each request, sandbox.py)


# what reading a malformed header or description can raise (json nesting itself: RecursionError;
# a number JSON reads as inf where an int is wanted: OverflowError)
MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError)


class WireError(Exception):
    """The child sent something that is not a reply (too large, malformed)."""


class TooLarge(Exception):
    """What the function returned is more than a reply may carry."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


# ----- the child's side --------------------------------------------------------------------------

def encode(header: dict, arrays: list) -> bytes:
    """One reply: the header (with the arrays' dtypes and shapes added) and the arrays' bytes."""
    arrays = [np.asarray(a, order="C") for a in arrays]     # (np.ascontiguousarray makes a 0-d array 1-d)
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}
    body = json.dumps(header).encode()
    return LENGTH.pack(len(body)) + body + b"".join(a.tobytes() for a in arrays)


def describe(value, arrays: list):
    """The structure of `value`, its arrays appended to `arrays`; TooLarge past the limits."""
    left = {"nodes": MAX_NODES, "bytes": REPLY_LIMIT - sum(a.nbytes for a in arrays)}

    def walk(v, depth):
        left["nodes"] -= 1
        if left["nodes"] < 0:
            raise TooLarge(f"a structure of more than {MAX_NODES} parts")
        if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype.kind in NUMBER_KINDS:
            a = np.asarray(v)
            left["bytes"] -= a.nbytes
            if left["bytes"] < 0:
                raise TooLarge(f"{_size(REPLY_LIMIT - left['bytes'])} of arrays (at most {_size(REPLY_LIMIT)} "
                               f"come back)")
            arrays.append(a)
            return {"array": len(arrays) - 1, **({"scalar": True} if isinstance(v, np.generic) else {})}
        if v is None:
            return None
        if isinstance(v, bool):
            return {"bool": v}
        if isinstance(v, int):    # JSON on either side refuses an int of more than 4300 digits
            return {"int": int(v)} if int(v).bit_length() <= MAX_INT_BITS else {"object": "int"}
        if isinstance(v, float):
            return {"float": float(v)}
        if isinstance(v, str):
            return {"str": str.__str__(v)[:MAX_TEXT]}
        if isinstance(v, (tuple, list, dict)):
            if depth >= MAX_DEPTH:
                raise TooLarge(f"a structure nested more than {MAX_DEPTH} deep")
            if isinstance(v, dict):
                return {"dict": [[walk(k, depth + 1), walk(x, depth + 1)] for k, x in dict.items(v)]}
            kind = "tuple" if isinstance(v, tuple) else "list"
            return {kind: [walk(x, depth + 1) for x in (tuple.__iter__(v) if kind == "tuple" else list.__iter__(v))]}
        return {"object": type(v).__name__}

    return walk(value, 0)


def error_header(error: BaseException) -> dict:
    """An exception as the runner's crash diagnosis reads it (remote_error rebuilds it)."""
    kind = type(error)
    frames = traceback.extract_tb(error.__traceback__)[-MAX_FRAMES:]
    return {"kind": "raise", "type": kind.__name__,
            "bases": [k.__name__ for k in kind.__mro__ if k.__module__ == "builtins"],
            "text": _text(error),
            "frames": [[f.filename, f.lineno, f.name, f.line or "", *frame_position(f)] for f in frames]}


# a frame's place within its line (Python 3.11+: FrameSummary's end_lineno, colno, end_colno), so
# the runner can name which of a line's lookups raised; None where the version does not keep it
POSITION_FIELDS = ("end_lineno", "colno", "end_colno")
FRAMES_HAVE_POSITIONS = sys.version_info >= (3, 11)


def frame_position(frame) -> list:
    return [getattr(frame, field, None) for field in POSITION_FIELDS]


def _text(error) -> str:
    try:
        return str(error)[:MAX_TEXT]
    except BaseException:   # a message that cannot be made is still an error to report
        return f"<{type(error).__name__} whose message could not be printed>"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


# ----- the grader's side -------------------------------------------------------------------------

def read(read_exactly) -> tuple[dict, list]:
    """(header, arrays) of the next reply; `read_exactly(n)` returns n bytes.  WireError for
    anything that is not a well-formed reply within the limits."""
    (length,) = LENGTH.unpack(read_exactly(LENGTH.size))
    if length > HEADER_LIMIT:
        raise WireError(f"a reply header of {_size(length)} (at most {_size(HEADER_LIMIT)})")
    try:
        header = json.loads(read_exactly(length))
        meta = [(np.dtype(dtype), tuple(int(n) for n in shape)) for dtype, shape in dict.pop(header, "arrays")]
    except MALFORMED as error:
        raise WireError(f"a malformed reply ({type(error).__name__})") from None
    sizes = []
    for dtype, shape in meta:
        if dtype.kind not in NUMBER_KINDS or dtype.fields is not None or any(n < 0 for n in shape):
            raise WireError(_array_text(dtype, shape))
        sizes.append(dtype.itemsize * int(np.prod(shape, dtype=object)))
        if sum(sizes) > REPLY_LIMIT:
            raise WireError(f"more than {_size(REPLY_LIMIT)} of arrays")
    arrays = []
    for (dtype, shape), size in zip(meta, sizes):
        data = read_exactly(size)
        try:    # an empty array can still have a shape NumPy refuses (65 dimensions, a dimension of 2**70)
            arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape).copy())
        except MALFORMED:
            raise WireError(_array_text(dtype, shape)) from None
    return header, arrays


def _array_text(dtype, shape: tuple) -> str:
    """A refused array as the row says it: a header may list a million dimensions."""
    shown = str(shape) if len(shape) <= 8 else f"({', '.join(map(str, shape[:8]))}, ...: {len(shape)} dimensions)"
    return f"an array of dtype {dtype} and shape {shown[:200]}"


def rebuild(tree, arrays: list):
    """The value `describe` described, with Described stand-ins for other objects."""
    if tree is None:
        return None
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise WireError("a value that is not described as one")
    (kind, content), *rest = tree.items()
    if kind == "array":
        a = arrays[content]
        return a[()] if rest else a
    if kind in ("bool", "int", "float", "str"):
        return {"bool": bool, "int": int, "float": float, "str": str}[kind](content)
    if kind in ("tuple", "list"):
        items = [rebuild(t, arrays) for t in content]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {_hashable(rebuild(k, arrays)): rebuild(v, arrays) for k, v in content}
    if kind == "object":
        return described_class(str(content))()
    raise WireError(f"a value of unknown kind {kind!r}")


def _hashable(key):
    return key if isinstance(key, (str, int, float, bool, type(None), Described)) else described_class("key")()


class Described:
    """A stand-in for an object of the student's own that did not travel: only its class name did."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object>"


@functools.lru_cache(maxsize=256)
def described_class(name: str) -> type:
    return type(name if name.isidentifier() and not keyword.iskeyword(name) else "object", (Described,), {})


def remote_error(header: dict) -> Exception:
    """The student's exception as the runner reads it: an instance of a class of the same name,
    deriving from the builtin exception it derived from (a ValueError stays a ValueError), whose
    str() is the original message and whose `student_frames` are its traceback.  SystemExit and
    KeyboardInterrupt come back as Exceptions of those names: in the grader's process they are
    the student's failure, not a request to stop."""
    bases = [b for b in header.get("bases", []) if isinstance(b, str)]
    base = next((getattr(builtins, b) for b in bases if isinstance(getattr(builtins, b, None), type)
                 and issubclass(getattr(builtins, b), Exception)), Exception)
    cls = _error_class(str(header.get("type", "Exception")), base)
    error = cls.__new__(cls)
    error.args = (str(header.get("text", ""))[:MAX_TEXT],)
    error.student_frames = [_frame(*frame) for frame in header.get("frames", [])[-MAX_FRAMES:]]
    return error


def _frame(filename, lineno, name, line, *position) -> traceback.FrameSummary:
    where = {}
    if FRAMES_HAVE_POSITIONS and len(position) == len(POSITION_FIELDS):
        # each field an int or nothing: a malformed one is dropped, not trusted
        where = {field: value if type(value) is int else None for field, value in zip(POSITION_FIELDS, position)}
    return traceback.FrameSummary(str(filename), int(lineno), str(name), line=str(line), lookup_line=False, **where)


@functools.lru_cache(maxsize=256)
def _error_class(name: str, base: type) -> type:
    name = name if name.isidentifier() and not keyword.iskeyword(name) else base.__name__
    return type(name, (base,), {"__str__": lambda self: self.args[0] if self.args else "",
                                "__module__": "submission"})
