"""Write a SentencePiece model file (`tokenizer.model`) from a list of scored pieces.

A `.model` file is a protobuf `ModelProto` (sentencepiece_model.proto): the pieces with their
scores and types, the trainer's settings that matter when encoding (model type, byte fallback,
special ids) and the normalizer's.  We write the few fields that matter by hand -- protobuf's
wire format is simple -- so npllama needs no protobuf package to make one.  The result loads in
`sentencepiece` (and so in `npllama.Tokenizer`) like a model SentencePiece trained itself.

Used to turn llama2.c's tokenizer.bin (pieces and scores, see io/llama2c_tokenizer.py) into a
tokenizer.model that travels with a converted model.  `read_model_info` reads back what the
`sentencepiece` library does not tell: each piece's type (USER_DEFINED included) and the model type,
which the GGUF and tokenizer.json exports need.
"""
from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# SentencePiece.Type in sentencepiece_model.proto (GGUF's token types use the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PIECE_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
MODEL_TYPE_UNIGRAM, MODEL_TYPE_BPE = 1, 2  # TrainerSpec.ModelType (also WORD = 3, CHAR = 4)
MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
SPACE = "\u2581"   # "▁", the character SentencePiece writes a space as inside a piece
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")   # a byte-fallback piece's text: <0x0A> is byte 10

# Field numbers in sentencepiece_model.proto.
_MODEL_PIECES, _MODEL_TRAINER_SPEC, _MODEL_NORMALIZER_SPEC = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TYPE_TAG = bytes([_PIECE_TYPE << 3])   # the key byte of a piece's type field (a varint, wire type 0)
_TRAINER_MODEL_TYPE, _TRAINER_VOCAB_SIZE, _TRAINER_BYTE_FALLBACK = 3, 4, 35
_TRAINER_UNK_ID, _TRAINER_BOS_ID, _TRAINER_EOS_ID, _TRAINER_PAD_ID = 40, 41, 42, 43
_NORMALIZER_NAME, _NORMALIZER_CHARSMAP, _NORMALIZER_ADD_DUMMY_PREFIX = 1, 2, 3
_NORMALIZER_REMOVE_EXTRA_WHITESPACES, _NORMALIZER_ESCAPE_WHITESPACES = 4, 5


def build_bpe_model(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                    byte_fallback: bool, add_dummy_prefix: bool = True) -> bytes:
    """The bytes of a BPE SentencePiece model whose piece i is pieces[i] with scores[i], types[i].

    As in LLaMA's tokenizer: text is not normalised ("identity", spaces kept as they are),
    `add_dummy_prefix` puts a space before the text, and merges are applied in order of the
    merged piece's score.  The special ids are found from the types: the one UNKNOWN piece is
    <unk>; CONTROL pieces named "<s>" and "</s>" are BOS and EOS (absent: -1).
    """
    if not (len(pieces) == len(scores) == len(types)) or not pieces:
        raise ValueError(f"pieces, scores and types must be non-empty and of one length, got "
                         f"{len(pieces)}, {len(scores)}, {len(types)}")
    unknown = [i for i, t in enumerate(types) if t == UNKNOWN]
    if len(unknown) != 1:
        raise ValueError(f"a SentencePiece model needs exactly one UNKNOWN piece (<unk>), got {len(unknown)}")
    n_bytes = sum(t == BYTE for t in types)
    if 0 < n_bytes < 256:   # sentencepiece would refuse to load the model, with no word of why
        raise ValueError(f"it has {n_bytes} of the 256 byte pieces <0x00> ... <0xFF>: a tokenizer with "
                         f"byte fallback has all of them, one without has none")
    seen: dict[str, int] = {}
    body = bytearray()
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
        if not isinstance(piece, str) or not piece:
            raise ValueError(f"piece {i} must be a non-empty string, got {piece!r}")
        if piece in seen:
            raise ValueError(f"piece {i} ({piece!r}) repeats piece {seen[piece]}: SentencePiece needs "
                             f"every piece once")
        seen[piece] = i
        if kind not in PIECE_TYPES:
            raise ValueError(f"piece {i} has type {kind!r}, not one of {PIECE_TYPES}")
        if not math.isfinite(score):
            raise ValueError(f"piece {i} ({piece!r}) has a non-finite score {score}")
        entry = (_bytes_field(_PIECE_TEXT, piece.encode("utf-8")) + _float_field(_PIECE_SCORE, score)
                 + _varint_field(_PIECE_TYPE, kind))
        body += _bytes_field(_MODEL_PIECES, entry)

    def special(name: str) -> int:
        i = seen.get(name, -1)
        return i if i >= 0 and types[i] == CONTROL else -1

    trainer = (_varint_field(_TRAINER_MODEL_TYPE, MODEL_TYPE_BPE)
               + _varint_field(_TRAINER_VOCAB_SIZE, len(pieces))
               + _varint_field(_TRAINER_BYTE_FALLBACK, int(bool(byte_fallback)))
               + _varint_field(_TRAINER_UNK_ID, unknown[0])
               + _varint_field(_TRAINER_BOS_ID, special("<s>"))
               + _varint_field(_TRAINER_EOS_ID, special("</s>"))
               + _varint_field(_TRAINER_PAD_ID, -1))
    normalizer = (_bytes_field(_NORMALIZER_NAME, b"identity")
                  + _varint_field(_NORMALIZER_ADD_DUMMY_PREFIX, int(bool(add_dummy_prefix)))
                  + _varint_field(_NORMALIZER_REMOVE_EXTRA_WHITESPACES, 0))
    body += _bytes_field(_MODEL_TRAINER_SPEC, trainer) + _bytes_field(_MODEL_NORMALIZER_SPEC, normalizer)
    return bytes(body)


@dataclass(frozen=True)
class ModelInfo:
    """What a .model file says beyond what `sentencepiece` exposes."""
    piece_types: tuple[int, ...]   # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED or BYTE per id
    model_type: int                # MODEL_TYPE_UNIGRAM, MODEL_TYPE_BPE, ... (unigram when unset)
    # The normalizer: its rules (nmt_nfkc's NFKC, ...) compiled into a character map (empty for
    # "identity"), and what it does with spaces (protobuf's defaults when unset: all true).
    precompiled_charsmap: bytes = b""
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    @property
    def normalizes(self) -> bool:
        """Whether the text is rewritten before it is split (characters mapped, spaces collapsed)."""
        return bool(self.precompiled_charsmap) or self.remove_extra_whitespaces

    @property
    def model_type_name(self) -> str:
        """The SentencePiece model type as a word ("unigram", "bpe", ...), or its number if unknown."""
        return MODEL_TYPE_NAMES.get(self.model_type, str(self.model_type))


def read_model_info(data: bytes) -> ModelInfo:
    """The piece types, model type and normalizer of a serialized ModelProto (protobuf defaults when
    unset: NORMAL, UNIGRAM).  ValueError if `data` is not a well-formed protobuf message."""
    types, model_type, normalizer = [], MODEL_TYPE_UNIGRAM, {}
    for number, value in _fields(data):
        if number == _MODEL_PIECES:   # a piece without a type field's tag byte (most of them) is NORMAL
            types.append(NORMAL if _TYPE_TAG not in value else
                         next((v for n, v in _fields(value) if n == _PIECE_TYPE), NORMAL))
        elif number == _MODEL_TRAINER_SPEC:
            model_type = next((v for n, v in _fields(value) if n == _TRAINER_MODEL_TYPE), model_type)
        elif number == _MODEL_NORMALIZER_SPEC and isinstance(value, bytes):
            normalizer = dict(_fields(value))
    return ModelInfo(tuple(types), model_type,
                     precompiled_charsmap=bytes(normalizer.get(_NORMALIZER_CHARSMAP, b"")),
                     remove_extra_whitespaces=bool(normalizer.get(_NORMALIZER_REMOVE_EXTRA_WHITESPACES, 1)),
                     escape_whitespaces=bool(normalizer.get(_NORMALIZER_ESCAPE_WHITESPACES, 1)))


# ----- protobuf wire format -------------------------------------------------------------------

def _fields(data: bytes):
    """(field number, value) of each field of a message: ints for varints, bytes otherwise."""
    position = 0
    while position < len(data):
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _read_varint(data, position)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = data[position:position + size], position + size
        elif wire_type == 2:
            size, position = _read_varint(data, position)
            value, position = data[position:position + size], position + size
        else:
            raise ValueError(f"not a SentencePiece model: protobuf wire type {wire_type} at byte {position}")
        if position > len(data):
            raise ValueError("not a SentencePiece model: a protobuf field runs past the end of the data")
        yield number, value


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("not a SentencePiece model: a protobuf varint is cut off")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32s are written as 64-bit two's complement (10 bytes)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _float_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)
