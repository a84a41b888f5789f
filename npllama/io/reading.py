"""Reading the small files a user or a run folder hands us, with every failure one clear error.

    settings = read_json("runs/tiny/train_config.json", expect=dict)
    text = read_text("notes.txt", max_bytes=MAX_TEXT_BYTES)

What can go wrong, and what the caller gets instead (a ValueError naming the file, or the
`error` class passed in, e.g. CheckpointError):

- not a regular file: a FIFO (a plain open() would wait forever for a writer), a device such as
  /dev/zero (endless), a folder -- refused before a byte is read (the open does not block);
- bigger than the budget: refused from its size before it is read, and the read itself stops
  at the budget (a file that grows meanwhile cannot push past it);
- not UTF-8, not JSON, nested deeper than Python's parser can follow (RecursionError), or JSON
  of the wrong type (a list where an object belongs) -- each named, never an AttributeError later.
"""
from __future__ import annotations

import codecs
import json
import os
import stat
from pathlib import Path

from .errors import CheckpointError

MAX_JSON_BYTES = 64 * 1024**2    # settings, logs and metadata are kB to MB
MAX_TEXT_BYTES = 4 * 1024**3     # one text file of a corpus; override per call


def _fail(error, path, problem):
    if error is CheckpointError or (isinstance(error, type) and issubclass(error, CheckpointError)):
        return error(path, problem)
    return error(f"{os.fspath(path)}: {problem}")


def open_regular_file(path, error=ValueError):
    """`path` opened for binary reading, if it is a regular file; a FIFO, a device or a folder is
    refused as `error` naming it before a byte is read.  The open never blocks (O_NONBLOCK: a
    plain open() of a FIFO waits for a writer; on regular files it changes nothing)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if (
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a folder" if stat.S_ISDIR(mode) else "something else"
            raise _fail(error, path, f"is {kind}, not a regular file; npllama reads only regular files")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, max_bytes: int, error=ValueError) -> bytes:
    """The bytes of a regular file of at most max_bytes, read without ever blocking or over-reading."""
    path = Path(path)
    with open_regular_file(path, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise _fail(error, path, f"is {size:,} bytes, over the {max_bytes:,}-byte limit "
                                     f"for this kind of file")
        data = f.read(size + 1)  # what fstat promised, +1 to notice a file that grew
        while len(data) > size and len(data) <= max_bytes:
            more = f.read(min(1024**2, max_bytes + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > max_bytes:
        raise _fail(error, path, f"grew past the {max_bytes:,}-byte limit while being read")
    return data


def read_text(path, max_bytes: int = MAX_TEXT_BYTES, error=ValueError) -> str:
    """A UTF-8 text file (see read_bytes); a file that is not UTF-8 is an error naming the byte.  A
    leading byte-order mark (Notepad and Excel write one) is not text: it is dropped, as Python's
    "utf-8-sig" codec drops it."""
    data = read_bytes(path, max_bytes, error)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise _fail(error, path, _not_utf8(data, e.start, e.reason)) from None


def holds_text(path, error=ValueError) -> bool:
    """Whether a UTF-8 text file holds anything but white space, read 1 MiB at a time (a corpus
    file handed to a trainer that reads it itself can be larger than memory); a file that is not
    UTF-8 is an error naming the byte, as in read_text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank, offset = True, 0
    with open_regular_file(path, error) as f:
        while True:
            chunk = f.read(1024**2)
            start = offset - len(decoder.getstate()[0])   # the decoder's buffer starts with held bytes
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise _fail(error, path, _not_utf8(chunk, start + e.start, e.reason)) from None
            blank = blank and not text.strip()
            offset += len(chunk)
            if not chunk:
                return not blank


def _not_utf8(data: bytes, position: int, reason: str) -> str:
    """The problem, and for Chinese text saved as GBK/GB18030 (Chinese Windows' default: the bytes
    read as GB18030 and hold its ， or 。), how to convert it."""
    problem = f"is not UTF-8 text (byte {position}: {reason})"
    try:
        chinese = any(mark in data.decode("gb18030") for mark in "，。")
    except UnicodeDecodeError:   # (a chunk may also end inside a character: no advice then)
        chinese = False
    if chinese:
        problem += ("; it reads as Chinese text in GB18030/GBK, Chinese Windows' encoding: convert it to UTF-8 "
                    "first, e.g. iconv -f GB18030 -t UTF-8 FILE > FILE-utf8.txt")
    return problem


def parse_json(text, where, expect=None, error=ValueError):
    """json.loads(text), with too-deep nesting, bad syntax and the wrong top-level type (`expect`,
    a type or tuple of types) reported as `error` naming `where`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _fail(error, where, "JSON nested too deeply to read") from None
    except ValueError as e:
        raise _fail(error, where, f"is not valid JSON ({e})") from None
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        wanted = {"dict": "a JSON object", "list": "a JSON array"}.get(names, names)
        raise _fail(error, where, f"must hold {wanted}, got {type(value).__name__}")
    return value


def read_json(path, expect=None, max_bytes: int = MAX_JSON_BYTES, error=ValueError):
    """A JSON file, checked as read_text and parse_json do."""
    return parse_json(read_text(path, max_bytes, error), path, expect, error)


__all__ = ["open_regular_file", "read_bytes", "read_text", "holds_text", "read_json", "parse_json", "MAX_JSON_BYTES", "MAX_TEXT_BYTES"]
