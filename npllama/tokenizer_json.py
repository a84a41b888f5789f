"""A Hugging Face `tokenizer.json` (what transformers 5 saves, often without tokenizer.model), read
through the `tokenizers` library (`pip install 'npllama[hf]'`), with the same methods the jobs use
on npllama's SentencePiece `Tokenizer`.

    tok = JsonTokenizer("path/to/folder")          # tokenizer.json (+ tokenizer_config.json)
    tok.encode("Hello")                            # [bos, ...] as AutoTokenizer gives them

Which ids are BOS and EOS, and whether BOS goes first, come from tokenizer_config.json
(`bos_token`, `eos_token`, `add_bos_token`), as transformers reads them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .io.sentencepiece_model import BYTE_PIECE, SPACE
from .tokenizer import UNK_SURFACE, _require_text, check_ids, check_special, check_vocab_sizes
from .tokenizer_export import _json_bytes

JSON_FILE = "tokenizer.json"
# A token every decoder passes through as itself: the text decoded behind it keeps its first space.
_MARK = "A"
CONFIG_FILE = "tokenizer_config.json"
INSTALL_HINT = ("install the `tokenizers` library (pip install 'npllama[hf]') to read it, or convert the "
                "folder to a SentencePiece tokenizer.model: in Python with transformers, "
                "AutoTokenizer.from_pretrained(FOLDER) of the original model that has one")


class JsonTokenizer:
    """A tokenizer.json read with the `tokenizers` library."""

    def __init__(self, folder):
        folder = Path(folder).expanduser()
        path = folder / JSON_FILE if folder.is_dir() else folder
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist (expected a Hugging Face tokenizer.json)")
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError:
            raise ValueError(f"{str(path)!r} is a Hugging Face tokenizer.json; {INSTALL_HINT}") from None
        data = path.read_bytes()
        try:
            self._tok = _HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception subclass with a serde message
            raise ValueError(f"{str(path)!r} is not a valid tokenizer.json: {e}") from None
        self.path = path
        self.json_bytes = data
        self.config = _read_config(path.parent / CONFIG_FILE)
        self.fingerprint = hashlib.sha256(data).hexdigest()
        # No BOS named (no tokenizer_config.json): AutoTokenizer still puts the post-processor's
        # leading special token first (<s>, LLaMA-3's <|begin_of_text|>), so that is the BOS.
        pipeline = json.loads(data)     # what the tokenizers object does not expose: its model, decoder
        self.bos_id = self._special_id("bos_token")
        if self.bos_id is None:
            self.bos_id = _template_bos_id(pipeline, self._tok)
        self.eos_id = self._special_id("eos_token")
        self.pad_id = self._special_id("pad_token")
        self.unk_id = self._special_id("unk_token")
        if self.unk_id is None:
            self.unk_id = _model_unk_id(pipeline, self._tok)
        self.add_bos = bool(self.config.get("add_bos_token", self.bos_id is not None)) and self.bos_id is not None
        self._special_ids = set(self.control_pieces.values())
        # <0xHH> tokens are bytes only where the decoder says so (byte fallback, as SentencePiece's)
        self._byte_pieces = {}
        if _has_step(pipeline.get("decoder"), "ByteFallback"):
            self._byte_pieces = {i: int(token[3:5], 16) for token, i in self._tok.get_vocab().items()
                                 if BYTE_PIECE.fullmatch(token)}

    def _special_id(self, key: str) -> int | None:
        token = self.config.get(key)
        if isinstance(token, dict):  # {"content": "<s>", ...} as older transformers wrote it
            token = token.get("content")
        if not isinstance(token, str):
            return None
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """How many ids the tokenizer has, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def control_pieces(self) -> dict[str, int]:
        """The special (added) tokens: their text encodes to their id, as in transformers."""
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def id_to_piece(self, token_id: int) -> str:
        """The piece (str) of token_id; an id outside the vocabulary is refused by name."""
        self._check_ids([token_id])
        return self._tok.id_to_token(int(token_id))

    def piece_to_id(self, piece: str) -> int | None:
        """The id of piece, or None when the vocabulary has no such piece."""
        if not isinstance(piece, str):
            raise TypeError(f"piece must be a str, got {type(piece).__name__}")
        return self._tok.token_to_id(piece)

    def check_vocab(self, model_vocab_size: int) -> None:
        """A ValueError when the tokenizer has more ids than the model has embedding rows."""
        check_vocab_sizes(self.vocab_size, int(model_vocab_size), str(self.path))

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with BOS first if `bos` (and the tokenizer has one), EOS last if `eos`."""
        _require_text("text", text)
        self._check_special(bos, eos)
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts, bos: bool = True, eos: bool = False, num_threads=None) -> list[list[int]]:
        """[encode(text, bos, eos) for text in texts], each text checked first.  num_threads is
        ignored: it is taken so that callers of Tokenizer.encode_batch may pass it to either."""
        texts = list(texts)
        for i, text in enumerate(texts):
            _require_text(f"texts[{i}]", text)
        return [self.encode(text, bos, eos) for text in texts]

    def decode(self, ids) -> str:
        """The text of the ids, as npllama.Tokenizer (SentencePiece) writes it: special tokens (BOS,
        EOS, ...) give no text, <unk> gives UNK_SURFACE (" \u2047 "), and a run of byte pieces
        gives its UTF-8 text with one U+FFFD for each byte that is no part of a whole character."""
        ids = self._check_ids(ids)
        decoder = self._tok.decoder
        if decoder is None or not (self._byte_pieces or (self.unk_id is not None and self.unk_id in ids)):
            return self._tok.decode(ids, skip_special_tokens=True)
        runs, run = [], []
        for token_id in ids:
            if token_id == self.unk_id:
                runs.append(run)
                run = []
            else:
                run.append(token_id)
        runs.append(run)
        # A decoder drops the text's first space, the dummy prefix of its first piece ("\u2581Once" ->
        # "Once"); SentencePiece keeps it after <unk> and when the text starts with a byte piece.
        shown = [i for i in runs[0] if i not in self._special_ids]
        keep = [bool(shown) and shown[0] in self._byte_pieces] + [True] * (len(runs) - 1)
        return UNK_SURFACE.join(self._decode_run(run, keep_space) for run, keep_space in zip(runs, keep))

    def _decode_run(self, ids: list[int], keep_leading_space: bool) -> str:
        tokens, byte_texts = self._tokens(ids)
        # A byte run's text is final: a U+2581 it spells is that character, as SentencePiece writes
        # it, not the decoder's space mark -- so it passes the decoder as a character found nowhere else.
        stand_in = _unused_character("".join(tokens)) if any(SPACE in tokens[i] for i in byte_texts) else None
        if stand_in is not None:
            tokens = [t.replace(SPACE, stand_in) if i in byte_texts else t for i, t in enumerate(tokens)]
        text = (self._tok.decoder.decode([_MARK] + tokens)[len(_MARK):] if keep_leading_space
                else self._tok.decoder.decode(tokens))
        return text if stand_in is None else text.replace(stand_in, SPACE)

    def _tokens(self, ids: list[int]) -> tuple[list[str], set[int]]:
        """The tokens the decoder gets for ids: special tokens left out, each run of byte pieces
        as its text (the tokenizers library's ByteFallback would make a whole run with one broken
        character U+FFFDs, where SentencePiece keeps the whole characters); and which of the
        tokens are such texts."""
        tokens, byte_texts, run = [], set(), bytearray()
        for token_id in ids:
            if token_id in self._byte_pieces:
                run.append(self._byte_pieces[token_id])
                continue
            if run:
                byte_texts.add(len(tokens))
                tokens.append(_sentencepiece_utf8(run))
                run = bytearray()
            if token_id not in self._special_ids:
                tokens.append(self._tok.id_to_token(token_id))
        if run:
            byte_texts.add(len(tokens))
            tokens.append(_sentencepiece_utf8(run))
        return tokens, byte_texts

    def hf_files(self, chat_template: str | None = None, model_max_length: int | None = None,
                 pad_id: int | None = None) -> dict[str, bytes]:
        """tokenizer.json and tokenizer_config.json, to save beside a model; pad_id names the pad
        token when the config names none (the id the model pads with, e.g. </s>)."""
        config = dict(self.config)
        if pad_id is not None and not config.get("pad_token"):
            config["pad_token"] = self._tok.id_to_token(int(pad_id))
        if chat_template is not None:
            config["chat_template"] = chat_template
        if model_max_length is not None:
            config["model_max_length"] = int(model_max_length)
        return {JSON_FILE: self.json_bytes, CONFIG_FILE: _json_bytes(config)}

    def _check_special(self, bos: bool, eos: bool) -> None:
        check_special(self, bos, eos, "token", bos_hint=" (tokenizer_config.json names none)")

    def _check_ids(self, ids) -> list[int]:
        return check_ids(ids, self.vocab_size)

    def __repr__(self) -> str:
        return f"JsonTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _template_bos_id(pipeline, tok) -> int | None:
    """The id of the special token a TemplateProcessing post-processor (alone or in a Sequence)
    puts before a single text, or None."""
    post = pipeline.get("post_processor") if isinstance(pipeline, dict) else None
    if not isinstance(post, dict):
        return None
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    for step in steps if isinstance(steps, list) else []:
        single = step.get("single") if isinstance(step, dict) and step.get("type") == "TemplateProcessing" else None
        if isinstance(single, list) and single and isinstance(single[0], dict) and "SpecialToken" in single[0]:
            name = single[0]["SpecialToken"].get("id")
            ids = (step.get("special_tokens") or {}).get(name, {}).get("ids") or [tok.token_to_id(name)]
            return ids[0] if len(ids) == 1 and isinstance(ids[0], int) else None
    return None


def _has_step(step, kind: str) -> bool:
    """Whether a decoder (or a Sequence of them) has a step of type `kind`."""
    if not isinstance(step, dict):
        return False
    return step.get("type") == kind or any(_has_step(s, kind) for s in step.get("decoders") or [])


def _sentencepiece_utf8(data: bytes) -> str:
    """Bytes as SentencePiece decodes a run of byte pieces: each whole UTF-8 character as itself,
    every other byte as one U+FFFD ("\xe6\x97A" -> "\ufffd\ufffdA", where Python's "replace" gives one)."""
    text, i = [], 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                text.append(data[i:i + size].decode("utf-8"))
                break
            except UnicodeDecodeError:
                continue
        else:
            text.append("\ufffd")
            size = 1
        i += size
    return "".join(text)


def _model_unk_id(pipeline, tok) -> int | None:
    """The unknown token's id as the pipeline's model names it (BPE's unk_token, Unigram's unk_id)."""
    model = pipeline.get("model") if isinstance(pipeline, dict) else None
    if not isinstance(model, dict):
        return None
    if isinstance(model.get("unk_token"), str):
        return tok.token_to_id(model["unk_token"])
    unk_id = model.get("unk_id")
    return unk_id if isinstance(unk_id, int) and not isinstance(unk_id, bool) else None


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def _unused_character(text: str) -> str:
    """A private-use character that does not occur in `text`."""
    return next(c for c in map(chr, range(0xE000, 0xF900)) if c not in text)
