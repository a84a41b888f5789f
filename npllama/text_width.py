"""Text as a terminal lays it out: a Chinese or Japanese character, a full-width form or an emoji
takes two columns, a combining mark none.  Tables that hold the user's words (labels, file names)
pad by these columns, not by len(), or a row of Chinese labels runs past its column."""
from __future__ import annotations

import unicodedata


def width(text: str) -> int:
    """The columns `text` takes in a terminal."""
    return sum(_columns(c) for c in text)


def ljust(text: str, columns: int) -> str:
    """text padded with spaces on the right to `columns` terminal columns (wide characters count 2)."""
    return text + " " * max(0, columns - width(text))


def rjust(text: str, columns: int) -> str:
    """text padded with spaces on the left to `columns` terminal columns (wide characters count 2)."""
    return " " * max(0, columns - width(text)) + text


def _columns(character: str) -> int:
    if unicodedata.combining(character) or unicodedata.category(character) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1
