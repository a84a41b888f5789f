"""Reading the small files a user or a run folder hands us, with every failure one clear error.

    settings = read_json("runs/tiny/train_config.json", expect=dict)
    text = read_text("notes.txt", max_bytes=MAX_TEXT_BYTES)

What can go wrong, and what the caller gets instead (a ValueError naming the file, or the
`error` class passed in, e.g. CheckpointError):

- not a regular file: a FIFO (a plain open() would wait forever for a writer), a device such as
  /dev/zero (endless), a folder -- refused before a byte is read (the open does not block);
- bigger than the budget: refused from its size before it is read, and the read itself stops
  at the budget (a file that grows meanwhile cannot push past it);
- not UTF-8 (the byte and the line named; UTF-16, as Windows Notepad saves "Unicode", and NUL
  bytes refused as such, with how to convert), not JSON, nested deeper than Python's parser can
  follow (RecursionError), or JSON of the wrong type (a list where an object belongs) -- each
  named, never an AttributeError later.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
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
        size = _refuse_over_budget(f, path, max_bytes, error)
        data = f.read(size + 1)  # what fstat promised, +1 to notice a file that grew
        while len(data) > size and len(data) <= max_bytes:
            more = f.read(min(1024**2, max_bytes + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > max_bytes:
        raise _grew_past(error, path, max_bytes)
    return data


def _refuse_over_budget(f, path, max_bytes: int, error) -> int:
    """The size of the open file f, if it is within max_bytes."""
    size = os.fstat(f.fileno()).st_size
    if size > max_bytes:
        raise _fail(error, path, f"is {size:,} bytes, over the {max_bytes:,}-byte limit for this kind of file")
    return size


def _grew_past(error, path, max_bytes: int):
    return _fail(error, path, f"grew past the {max_bytes:,}-byte limit while being read")


def read_text(path, max_bytes: int = MAX_TEXT_BYTES, error=ValueError) -> str:
    """A UTF-8 text file (see read_bytes); a file that is not UTF-8 text is an error naming the byte
    and the line (see decode_text).  A leading byte-order mark (Notepad and Excel write one) is not
    text: it is dropped, as Python's "utf-8-sig" codec drops it."""
    return decode_text(read_bytes(path, max_bytes, error), path, error).removeprefix("\ufeff")


def read_text_blocks(path, max_bytes: int = MAX_TEXT_BYTES, error=ValueError, block_bytes: int = 1024**2,
                     read=None) -> Iterator[str]:
    """read_text's text in blocks of whole lines: each about block_bytes long (a longer line is a
    block of its own) and ending with a \n but the last, so a file of any size is read in the
    memory of one block.  Checked as read_text checks a file, with the same byte and line named;
    `read`, if given, is told the bytes each block took (for a progress bar)."""
    path = Path(path)
    with open_regular_file(path, error) as f:
        _refuse_over_budget(f, path, max_bytes, error)
        offset, line = 0, 1
        while data := f.read(block_bytes):
            if not data.endswith(b"\n"):
                data += f.readline()   # to the line's end: no character or \r\n is cut in two
            if offset + len(data) > max_bytes:
                raise _grew_past(error, path, max_bytes)
            text = decode_text(data, path, error, offset, line)
            yield text.removeprefix("\ufeff") if offset == 0 else text
            offset += len(data)
            line += _line_ends(data)
            if read is not None:
                read(len(data))


def read_standard_input(max_bytes: int = MAX_TEXT_BYTES, error=ValueError, decode=None) -> str:
    """Standard input's text, up to its end: more than max_bytes is refused as `error`, as a file
    over its budget is.  Its bytes are read a block at a time (a BufferedReader allocates what one
    read asks for before it reads, and max_bytes + 1, 4 GiB by default, is a MemoryError under an
    address-space limit, `ulimit -v`, for a line of text), then made text by decode(bytes) -> str
    (None: decode_text's check, standard input named in its errors).  A text stream put in
    sys.stdin's place (io.StringIO, as a test or a notebook does) has no bytes beneath it: its text
    is returned as it is, its UTF-8 bytes counted against max_bytes."""
    stream = sys.stdin
    if stream is None:   # the process was started with standard input closed (`<&-`)
        raise error("standard input is closed: there is nothing to read from it")
    buffer = getattr(stream, "buffer", None)
    read = stream.read if buffer is None else buffer.read
    blocks, size = [], 0
    while size <= max_bytes:
        block = read(min(1024**2, max_bytes + 1 - size))   # (characters of a text stream: no more than its bytes)
        if not block:
            break
        blocks.append(block)
        size += len(block) if buffer is not None else len(block.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise error(f"standard input is over the {max_bytes:,}-byte limit for a text file")
    if buffer is None:
        return "".join(blocks)
    data = b"".join(blocks)
    return decode_text(data, "standard input", error) if decode is None else decode(data)


def read_lines(path, error=ValueError) -> Iterator[str]:
    """The lines of a UTF-8 text file of any size, read a block of lines at a time, without their line ends
    (\\n, \\r\\n, or \\r alone as old Macs wrote -- such a file, with no \\n, is read whole before
    it is split); checked as read_text checks a file, and a leading byte-order mark dropped."""
    # blocks of whole lines (each ends at a \n, so no \r\n is cut in two), of any size in all
    for block in read_text_blocks(path, sys.maxsize, error):
        yield from block.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n").split("\n")


def decode_text(data: bytes, path, error=ValueError, offset: int = 0, line: int = 1) -> str:
    """data (the bytes of `path` from byte `offset`, which is on line `line`) as UTF-8 text.  Bytes
    that are not text are an error naming the byte and the line: UTF-16 (as Windows Notepad saves
    "Unicode"), a NUL byte (UTF-16 without a byte-order mark reads as UTF-8 with every other byte
    NUL, and would be trained on as such), and anything else that is not UTF-8."""
    if offset == 0 and data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _fail(error, path, "is UTF-16 text (it starts with a UTF-16 byte-order mark, as Windows Notepad saves "
                                 "\"Unicode\"), not UTF-8: save it as UTF-8 or convert it, e.g. "
                                 "iconv -f UTF-16 -t UTF-8 FILE > FILE-utf8.txt")
    nul = data.find(b"\0")
    if nul >= 0:
        raise _fail(error, path, f"holds a NUL byte ({_where(data, nul, offset, line)}), which text does not"
                                 f"{_nul_advice(data)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(error, path, _not_utf8(data, _where(data, e.start, offset, line), e.reason)) from None


def _where(data: bytes, position: int, offset: int, line: int) -> str:
    return f"byte {offset + position}, line {line + _line_ends(data[:position])}"


def _line_ends(data: bytes) -> int:
    """Line ends in data: \\n, \\r\\n and a \\r alone each end a line."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _nul_advice(data: bytes) -> str:
    """What a file with NUL bytes probably is: UTF-16 without a byte-order mark (ASCII text has a 0
    byte after or before every character), else binary data or a stray byte."""
    sample = data[:4096]
    for order, zeros in (("LE", sample[1::2]), ("BE", sample[0::2])):
        if len(zeros) >= 2 and zeros.count(0) >= 0.75 * len(zeros):
            return (f"; every other byte is 0, as in UTF-16{order} text without a byte-order mark: convert it to "
                    f"UTF-8, e.g. iconv -f UTF-16{order} -t UTF-8 FILE > FILE-utf8.txt")
    return ("; if it is a binary file, leave it out; if it is text with stray NUL bytes, remove them, "
            "e.g. tr -d '\\000' < FILE > FILE-clean.txt")


def _not_utf8(data: bytes, where: str, reason: str) -> str:
    """The problem, and for Chinese text saved as GBK/GB18030 (Chinese Windows' default: the bytes
    read as GB18030 and hold its ， or 。), or else bytes that read as Windows-1252 (Western Windows'
    default), how to convert it."""
    problem = f"is not UTF-8 text ({where}: {reason})"
    try:
        chinese = any(mark in data.decode("gb18030") for mark in "，。")
    except UnicodeDecodeError:   # (a chunk may also end inside a character: no advice then)
        chinese = False
    if chinese:
        problem += ("; it reads as Chinese text in GB18030/GBK, Chinese Windows' encoding: convert it to UTF-8 "
                    "first, e.g. iconv -f GB18030 -t UTF-8 FILE > FILE-utf8.txt")
    elif _decodes(data, "cp1252"):   # Western Windows' default, and Excel's plain "CSV" (one byte a character)
        problem += ("; it reads as Windows-1252/Latin-1 text (Western Windows' encoding, Excel's plain \"CSV\"): "
                    "convert it to UTF-8 first, e.g. save it again as \"CSV UTF-8\", or "
                    "iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE-utf8.txt")
    return problem


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


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


__all__ = ["open_regular_file", "read_bytes", "read_text", "read_text_blocks", "read_lines", "read_standard_input", "decode_text", "read_json", "parse_json",
           "MAX_JSON_BYTES", "MAX_TEXT_BYTES"]
