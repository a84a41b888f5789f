"""llama2.c's tokenizer.bin, turned into a SentencePiece tokenizer.model that npllama (and
sentencepiece, transformers, llama.cpp's converter) can load.

tokenizer.bin is not a SentencePiece file: llama2.c's tokenizer.py exports a SentencePiece
model's pieces as

    uint32 max_token_length
    vocab_size times: float32 score, int32 length, `length` bytes of UTF-8 text

with SentencePiece's "▁" written as a plain space and BOS / EOS written as "\\n<s>\\n" and
"\\n</s>\\n".  The vocabulary size is not stored (run.c takes it from the model).  run.c then
encodes text the way SentencePiece's BPE does: a space before the text, characters (or their
UTF-8 bytes, as <0xHH> pieces, when a character has no piece), then repeatedly the merge whose
resulting piece has the highest score.

npllama therefore rebuilds the SentencePiece model those pieces came from: the same pieces with
"▁" restored, the same scores, types inferred from the text (<unk>, control <s> / </s>, byte
pieces <0xHH>, the rest normal), BPE with byte fallback when all 256 byte pieces are present,
identity normalisation and a dummy prefix (LLaMA's and llama2.c's training settings).  The
result is an ordinary tokenizer.model: `npllama.Tokenizer` loads it, and it is what a converted
folder carries.

tokenizer.bin does not carry SentencePiece's normalizer, so the rebuilt model has none, as run.c
encodes and as llama2.c trains its tokenizers.  A tokenizer.bin exported from a normalizing model
(SentencePiece's default nmt_nfkc) therefore gives that model's ids only on text the normalizer
leaves alone: full-width letters, ligatures, compatibility characters, odd spaces and runs of
spaces are split as they are written.  Convert with the original .model instead (`npllama convert
llama2c --tokenizer tokenizer.model`) to keep its normalizer.

    model_bytes = llama2c_tokenizer_to_sentencepiece("tokenizer.bin", vocab_size=32000)
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .reading import read_bytes
from .sentencepiece_model import BYTE, BYTE_PIECE, CONTROL, NORMAL, SPACE, UNKNOWN, build_bpe_model

# llama2.c's tokenizer.py wraps BOS and EOS in newlines; other exporters write them plainly.  Either
# spelling is read as the control piece (run.c itself takes ids 1 and 2 as BOS and EOS).
_EXPORTED_SPECIALS = {"\n<s>\n": "<s>", "\n</s>\n": "</s>", "<s>": "<s>", "</s>": "</s>"}
# No real piece is this long; a larger length field means the file is not a tokenizer.bin.
MAX_PIECE_BYTES = 1 << 16
MAX_FILE_BYTES = 64 * 1024**2  # LLaMA's 32,000 pieces take 0.4 MB, LLaMA-3's 128,000 about 2 MB


def read_llama2c_tokenizer(path, vocab_size: int | None = None) -> tuple[list[bytes], list[float]]:
    """The pieces (raw bytes, as stored) and scores of a tokenizer.bin.

    vocab_size: the model's vocabulary; the file must hold exactly that many pieces (a tokenizer
    made for another vocabulary would silently give wrong text).  None: as many as the file has.
    """
    path = Path(path)
    if not path.exists():  # what exists but is no regular file (a FIFO, /dev/zero) read_bytes refuses
        raise FileNotFoundError(f"llama2.c tokenizer {str(path)!r} does not exist")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or vocab_size < 1):
        raise ValueError(f"vocab_size must be None or a positive integer, got {vocab_size!r}")
    data = read_bytes(path, MAX_FILE_BYTES, error=CheckpointError)  # a regular file of bounded size, as every reader
    if len(data) < 4:
        raise CheckpointError(path, "is too short for a llama2.c tokenizer (no max_token_length)")
    (max_length,) = struct.unpack_from("<I", data, 0)
    if not 0 < max_length <= MAX_PIECE_BYTES:   # said first: it bounds every piece's length below
        raise CheckpointError(path, f"starts with max_token_length {max_length}, not a piece length in "
                                    f"1..{MAX_PIECE_BYTES} (not a llama2.c tokenizer.bin?)")
    pieces, scores, offset = [], [], 4
    while offset < len(data):
        if len(data) - offset < 8:
            raise CheckpointError(path, f"ends inside the entry of piece {len(pieces)}")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not 0 < length <= max_length or offset + length > len(data):
            raise CheckpointError(path, f"has piece {len(pieces)} of length {length}, outside 1..{max_length} "
                                        f"or past the end of the file (not a llama2.c tokenizer.bin?)")
        pieces.append(data[offset:offset + length])
        scores.append(score)
        offset += length
    if vocab_size is not None and len(pieces) != vocab_size:
        raise CheckpointError(path, f"holds {len(pieces)} pieces, but the model's vocabulary has "
                                    f"{vocab_size}: this tokenizer was made for another model")
    return pieces, scores


def llama2c_tokenizer_to_sentencepiece(path, vocab_size: int | None = None) -> bytes:
    """The bytes of a SentencePiece tokenizer.model equivalent to llama2.c's tokenizer.bin."""
    raw_pieces, scores = read_llama2c_tokenizer(path, vocab_size)
    pieces, types = [], []
    for i, raw in enumerate(raw_pieces):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(path, f"has piece {i}, which is not UTF-8 text ({raw!r})") from None
        piece, kind = _piece_and_type(text)
        pieces.append(piece)
        types.append(kind)
    if UNKNOWN not in types:
        raise CheckpointError(path, "has no <unk> piece, which a SentencePiece model needs")
    byte_fallback = sum(kind == BYTE for kind in types) == 256
    try:
        return build_bpe_model(pieces, scores, types, byte_fallback=byte_fallback)
    except ValueError as e:
        raise CheckpointError(path, f"cannot become a SentencePiece model: {e}") from None


def _piece_and_type(text: str) -> tuple[str, int]:
    if text in _EXPORTED_SPECIALS:
        return _EXPORTED_SPECIALS[text], CONTROL
    if text == "<unk>":
        return text, UNKNOWN
    if BYTE_PIECE.fullmatch(text):
        return text, BYTE
    return text.replace(" ", SPACE), NORMAL
