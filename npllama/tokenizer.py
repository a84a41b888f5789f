"""SentencePiece tokenizer: train one with LLaMA's settings, or load any .model (LLaMA's included).

LLaMA's tokenizer is a SentencePiece BPE model with these choices, which `Tokenizer.train` copies:

* byte_fallback: a character that is not in the vocabulary is spelled as its UTF-8 bytes
  (<0x00> ... <0xFF>, 256 reserved pieces), so no text is ever lost to <unk>;
* split_digits: every digit is its own piece ("2024" -> 2 0 2 4), so numbers are read digit by digit;
* ids 0, 1, 2 = <unk>, <s> (BOS), </s> (EOS), and no padding piece (pad_id = -1);
* normalization "identity" and remove_extra_whitespaces=False: the text is not rewritten, so
  decode(encode(x)) == x exactly (for any x without U+2581 "▁" or the name of a control or
  user-defined piece such as "<s>", see `Tokenizer.decode`);
* add_dummy_prefix: a space is put before the text, so "Hello" at the start of a text is the same
  piece as " Hello" in the middle ("▁Hello");
* allow_whitespace_only_pieces: runs of spaces (indentation) may become single pieces.

    tok = Tokenizer.train(texts, "out/tok", vocab_size=512)   # writes out/tok.model, out/tok.vocab
    tok = Tokenizer("out/tok.model")                          # or a LLaMA tokenizer.model
    ids = tok.encode("Lily had a red ball.")                  # [1, ...]  (BOS first)
    tok.decode(ids)                                           # 'Lily had a red ball.'
"""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .ops._checks import require_int, require_non_negative_int, require_path

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_BYTE_PIECES = 256
N_SPECIAL_PIECES = 3  # <unk>, <s>, </s>
# byte_fallback reserves 256 byte pieces and 3 special ones; on top of those a model needs its
# characters and some merges to be of any use.
MIN_VOCAB_SIZE = N_BYTE_PIECES + N_SPECIAL_PIECES + 1
MODEL_TYPES = ("bpe", "unigram", "char", "word")
# SentencePiece's trainer refuses less (trainer_interface.cc), with an internal CHECK message.
MIN_CHARACTER_COVERAGE = 0.98
# What SentencePiece writes for <unk> (its trainer's default unk_surface, " \u2047 "): every
# tokenizer path decodes <unk> so, where transformers would drop it as a special token and hide
# that something was lost.
UNK_SURFACE = " \u2047 "

# LLaMA's trainer settings (see the module docstring).  Keyword arguments of `train` override them.
LLAMA_TRAINER_OPTIONS = dict(
    byte_fallback=True,
    split_digits=True,
    unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    split_by_whitespace=True,
    split_by_unicode_script=True,
    split_by_number=True,
    max_sentencepiece_length=16,
    hard_vocab_limit=True,
)


# The largest SentencePiece models in use (256k pieces) are about 4 MB; this is a generous bound.
MAX_MODEL_BYTES = 64 * 1024**2


class Tokenizer:
    """A loaded SentencePiece model with the few methods the jobs need.

    `Tokenizer(path)` and `Tokenizer.load(path)` are the same.  Missing or unreadable files raise
    ValueError naming the file.
    """

    def __init__(self, path):
        from .io.reading import read_bytes

        path = Path(require_path("path", path, "a SentencePiece .model file")).expanduser()
        if not path.exists():
            raise ValueError(f"tokenizer model {str(path)!r} does not exist (expected a SentencePiece "
                             f".model file, e.g. one written by Tokenizer.train or LLaMA's tokenizer.model)")
        # a regular file of bounded size: a FIFO would hang, /dev/zero or a huge file fill the memory
        self._load(read_bytes(path, MAX_MODEL_BYTES), path)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "tokenizer.model") -> "Tokenizer":
        """A tokenizer from the bytes of a .model file (`name` is only used in messages)."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"data must be the bytes of a SentencePiece .model file, got {type(data).__name__}")
        tokenizer = cls.__new__(cls)
        tokenizer._load(bytes(data), Path(name))
        return tokenizer

    def _load(self, data: bytes, path: Path) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError/OSError with an internal message
            raise ValueError(f"{str(path)!r} is not a valid SentencePiece model: it could not be parsed "
                             f"(a Hugging Face tokenizer.json, for example, is a different format: load "
                             f"its folder with npllama.runs.load_tokenizer)") from None
        if sp.get_piece_size() == 0:
            raise ValueError(f"{str(path)!r} is not a valid SentencePiece model (it has no pieces)")
        self.path = path
        self._sp = sp
        # The model as loaded: what checkpoints and saved models carry (not the file as it may be
        # by then), read once.
        self.model_bytes = data
        # What the model *is*, independent of where it lives: keys caches of tokenized corpora.
        self.fingerprint = hashlib.sha256(data).hexdigest()
        # Control pieces (<s>, </s>, Mistral's [INST], ...) and <unk> have no text of their own in
        # SentencePiece, which spells their names as ordinary text; transformers gives their ids.
        # So do we: encode() cuts the text at these names (longest first).
        # <unk> too: transformers matches it as a special token.
        self.control_pieces = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                               if sp.is_control(i) or sp.is_unknown(i)}
        # User-defined pieces (user_defined_symbols, e.g. "<|im_start|>") are matched whole by
        # SentencePiece too, but inside one text; transformers and llama.cpp cut the text at them as
        # at control pieces (the text after one gets its own dummy-prefix space), and so do we.
        from .io.sentencepiece_model import USER_DEFINED, read_model_info

        try:
            self._model_info = read_model_info(data)
            if len(self._model_info.piece_types) != sp.get_piece_size():
                raise ValueError(f"{len(self._model_info.piece_types)} pieces read, {sp.get_piece_size()} loaded")
        except ValueError as e:   # what sentencepiece let through, a stricter read refuses
            raise ValueError(f"{str(path)!r} is not a valid SentencePiece model: {e}") from None
        self._whole_pieces = dict(self.control_pieces)
        self._whole_pieces.update((sp.id_to_piece(i), i) for i, kind in enumerate(self.model_info.piece_types)
                                  if kind == USER_DEFINED)
        names = sorted(self._whole_pieces, key=len, reverse=True)
        self._control_pattern = re.compile("|".join(map(re.escape, names))) if names else None

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Load a SentencePiece .model file (same as `Tokenizer(path)`)."""
        return cls(path)

    # ----- training ------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts_or_files, model_prefix, vocab_size: int, *, model_type: str = "bpe",
              character_coverage: float = 0.9995, input_sentence_size: int = 1_000_000,
              max_sentence_length: int = 4192, num_threads: int | None = None, seed: int = 0,
              verbose: bool = False, echo=None, doc_separator: str = "blank-line",
              **trainer_options) -> "Tokenizer":
        """Train a SentencePiece model with LLaMA's settings; write `<model_prefix>.model/.vocab`.

        texts_or_files: either text -- an iterable of `str`, each a document trained on as it will be
            encoded, newlines included (documents longer than `max_sentence_length` bytes are cut
            after a newline, and such long lines at spaces, because SentencePiece skips over-long
            sentences), read one at a time (a generator over a huge corpus is never held whole) --
            or files: a `str`/`os.PathLike` path, or a list of `pathlib.Path`, each a .txt or .jsonl
            file or a folder of them, read into documents as `npllama tokenizer train --data` and
            `npllama train --data` read them (any size: read a block of lines at a time), so the same
            file gives the same tokenizer by either route.
        doc_separator: how a .txt file given is cut into documents (npllama.data.DOC_SEPARATORS):
            "blank-line" (`--doc-separator`'s default), "line" (each line a sentence of its own, as
            files were read before npllama read them as documents), "marker:TEXT" or "whole-file".
        vocab_size: the number of pieces, including 256 byte pieces and <unk>, <s>, </s>.  If the
            corpus cannot fill it, ValueError suggests the largest size that works.
        model_type: "bpe" (LLaMA's) or another of MODEL_TYPES.
        max_sentence_length: the longest sentence SentencePiece takes, in bytes (see above).
        input_sentence_size: at most this many sentences (documents) are used, sampled uniformly when the
            corpus has more, so huge corpora train in bounded memory.  0 = all; else more than 100.
        character_coverage: fraction of characters that get their own piece; the rarest rest are
            spelled with bytes (byte fallback).
        seed: seeds SentencePiece's sampling, so training is repeatable.
        num_threads: SentencePiece's threads (None: one per core, at most 16).
        verbose: show SentencePiece's own log on stderr.
        echo: a print-like function told when the training starts and whether it used a sample of the
            corpus (None: quiet).
        trainer_options: any other SentencePiece trainer option, overriding LLaMA's settings.
        """
        byte_fallback = trainer_options.get("byte_fallback", LLAMA_TRAINER_OPTIONS["byte_fallback"])
        _check_train_args(vocab_size, model_type, character_coverage, input_sentence_size,
                          max_sentence_length, seed, num_threads, byte_fallback)
        vocab_size, input_sentence_size, max_sentence_length, seed = map(
            int, (vocab_size, input_sentence_size, max_sentence_length, seed))   # NumPy ints as Python ones
        model_prefix = model_prefix_path(model_prefix)
        model_prefix.parent.mkdir(parents=True, exist_ok=True)
        options = dict(LLAMA_TRAINER_OPTIONS)
        options.update(
            vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, max_sentence_length=max_sentence_length,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            num_threads=num_threads or max(1, min(os.cpu_count() or 1, 16)),
            minloglevel=0 if verbose else 2,  # SentencePiece logs to stderr via absl; 2 = errors only
        )
        options.update(trainer_options)
        from .data import check_doc_separator

        check_doc_separator(doc_separator)
        files = _as_files(texts_or_files)
        if files is not None:
            # Read here, not by SentencePiece: it would train on \r (Windows line ends) and U+FFFD (bytes
            # that are not UTF-8) without a word, and skip a sentence longer than max_sentence_length.
            texts_or_files = _Documents(files, doc_separator)
        sentences = _sentences(texts_or_files, max_sentence_length)   # lazily: a generator of a huge corpus
        first = next(sentences, None)
        if first is None:
            raise ValueError("cannot train a tokenizer on no text: texts_or_files holds only white space (or nothing)")
        if echo is not None:   # the arguments are good and there is text: what follows takes a while
            what = f" on {len(texts_or_files):,} documents" if isinstance(texts_or_files, Sized) else ""
            echo(f"training a SentencePiece {model_type.upper()} tokenizer with {vocab_size} pieces{what} ...")
        reading = _Reading(itertools.chain([first], sentences))
        options["sentence_iterator"] = iter(reading)
        spm.set_random_generator_seed(seed)
        # SentencePiece writes into memory and we write the files: atomically (a kill never leaves
        # half a model), and a full disk is an OSError saying so, not "not a valid model" later.
        model = io.BytesIO()
        options["model_writer"] = model
        try:
            spm.SentencePieceTrainer.train(**options)
            failure = None
        except RuntimeError as exc:
            failure = _explain_training_error(exc, vocab_size, options["character_coverage"], byte_fallback)
        reading.raise_error()   # a file that could not be read comes first: SentencePiece's failure follows from it
        if failure is not None:
            raise failure
        if echo is not None and 0 < input_sentence_size < reading.count:
            echo(f"note: the tokenizer was trained on a random sample of {input_sentence_size:,} of the corpus' "
                 f"{reading.count:,} documents (long ones counted in pieces); "
                 f"the sample's size is input_sentence_size (`npllama tokenizer train --input-sentence-size N`; "
                 f"0 takes them all, in memory that grows with the corpus; `npllama train --tokenizer` takes "
                 f"the tokenizer it writes)")
        trained = cls.from_bytes(model.getvalue(), f"{model_prefix}.model")
        _write_trained_file(Path(f"{model_prefix}.model"), trained.model_bytes)
        _write_trained_file(Path(f"{model_prefix}.vocab"), trained.vocab_text().encode("utf-8"))
        return trained      # the bytes just written: no second read and parse of the file

    def vocab_text(self) -> str:
        """The .vocab file SentencePiece writes beside a model: "piece<TAB>score" per line, in id order."""
        return "".join(f"{self._sp.id_to_piece(i)}\t{self._sp.get_score(i):g}\n" for i in range(self.vocab_size))

    # ----- the vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The number of pieces: ids are 0 .. vocab_size - 1."""
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        """Id of <s>, put at the start of every document; None if the model has none."""
        return _none_if_negative(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        """Id of </s>, put at the end of every document; None if the model has none."""
        return _none_if_negative(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        """Id of the padding piece; None for LLaMA-style models, which have none (SentencePiece's -1)."""
        return _none_if_negative(self._sp.pad_id())

    @property
    def unk_id(self) -> int:
        """Id of <unk> (0 in LLaMA's), what an unknown piece name maps to."""
        return self._sp.unk_id()

    def id_to_piece(self, token_id: int) -> str:
        """The piece for one id, e.g. '▁ball' (▁ marks a leading space) or '<0x0A>' (a byte)."""
        self._check_ids([token_id])
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece; unknown pieces give unk_id."""
        if not isinstance(piece, str):
            raise TypeError(f"piece must be a str, got {type(piece).__name__}")
        return self._sp.piece_to_id(piece)

    def check_vocab(self, model_vocab_size: int) -> None:
        """Check that the model's embedding has a row for every tokenizer piece.

        A smaller embedding is a ValueError.  A larger one (padded to a multiple of 64, say, as some
        checkpoints are: 32064 rows for 32000 pieces) is accepted with a warning: the extra rows are
        never produced by encode, and generation should not sample them (generate's vocab_size).
        """
        require_int("model_vocab_size", model_vocab_size)
        check_vocab_sizes(self.vocab_size, int(model_vocab_size), str(self.path))

    # ----- encode / decode -------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`, with <s> first if `bos` and </s> last if `eos`.

        The name of a control piece in the text ("<s>", "</s>", Mistral's "[INST]") or of a
        user-defined piece becomes that piece's id, as transformers encodes it; the text between
        such pieces is encoded as SentencePiece encodes a text (with its dummy-prefix space), as
        transformers, llama.cpp and Mistral's reference tokenizer do.
        """
        _require_text("text", text)
        self._check_special(bos, eos)
        ids = [self.bos_id] if bos else []
        for is_control, segment in self._segments(text):
            if is_control:
                ids.append(self._whole_pieces[segment])
            else:
                ids.extend(self._sp.encode(segment, out_type=int))
        return ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str], bos: bool = True, eos: bool = False,
                     num_threads: int | None = None) -> list[list[int]]:
        """`encode` for many texts at once (SentencePiece runs them on several threads)."""
        if isinstance(texts, str):   # list("hello") would encode each character as a text
            raise TypeError("texts must be a list of str, not one str; for one text use encode(text) "
                            "or encode_batch([text])")
        texts = list(texts)
        for i, text in enumerate(texts):
            _require_text(f"texts[{i}]", text)
        self._check_special(bos, eos)
        if not texts:
            return []
        if self._control_pattern is not None and any(self._control_pattern.search(t) for t in texts):
            return [self.encode(text, bos, eos) for text in texts]
        return self._sp.encode(texts, out_type=int, add_bos=bos, add_eos=eos,
                               num_threads=num_threads or (os.cpu_count() or 1))

    def unknown_characters(self, text: str) -> list[str]:
        """The characters of `text` that `encode` writes as <unk>, in order of appearance: none with byte
        fallback (LLaMA's); without it, those the vocabulary has no piece for.  The names of control and
        user-defined pieces ("<unk>", "<s>") are matched whole, so their characters are not looked at."""
        _require_text("text", text)
        plain = "".join(segment for is_whole_piece, segment in self._segments(text) if not is_whole_piece)
        return [c for c in dict.fromkeys(plain) if self.unk_id in self._sp.encode(c, out_type=int)]

    def _segments(self, text: str) -> Iterator[tuple[bool, str]]:
        """(is a control or user-defined piece, text) in order; empty text segments are left out."""
        position = 0
        if self._control_pattern is not None:
            for match in self._control_pattern.finditer(text):
                if match.start() > position:
                    yield False, text[position:match.start()]
                yield True, match.group()
                position = match.end()
        if position < len(text) or not text:
            yield False, text[position:]

    def decode(self, ids) -> str:
        """The text of a sequence of ids.  <s>, </s> and padding produce no text, <unk> gives
        UNK_SURFACE (" \u2047 "); byte pieces are reassembled into UTF-8 (an incomplete byte
        sequence becomes U+FFFD).

        decode(encode(text)) == text for every text except one holding U+2581 "▁", the character
        SentencePiece writes spaces with, which comes back as a space, or the name of a control or
        user-defined piece ("<s>", "<|im_start|>"): encode gives its id, as transformers does, so a
        control piece's name comes back as nothing, and the text after such a piece gets a
        dummy-prefix space of its own ("a<s>b" -> "a b").
        """
        ids = self._check_ids(ids)
        return self._sp.decode(ids)

    # ----- travelling with a model folder ----------------------------------------------------------

    @property
    def model_info(self):
        """Each piece's type (NORMAL, CONTROL, USER_DEFINED, ...) and the model type (bpe, unigram),
        read from the model's bytes: `sentencepiece` tells neither (io/sentencepiece_model.py)."""
        return self._model_info

    @property
    def adds_dummy_prefix(self) -> bool:
        """Whether a space is put before the text (SentencePiece's add_dummy_prefix, as LLaMA's)."""
        pieces = self._sp.encode("a", out_type=str)
        return bool(pieces) and pieces[0].startswith("\u2581")

    def hf_files(self, chat_template: str | None = None, model_max_length: int | None = None,
                 pad_id: int | None = None) -> dict[str, bytes]:
        """The files that make a model folder's tokenizer load in transformers' AutoTokenizer with
        the same ids as `encode`: tokenizer.model, tokenizer.json, tokenizer_config.json,
        special_tokens_map.json (npllama/tokenizer_export.py).

        chat_template: a Jinja chat template (npllama.chat) stored in tokenizer_config.json.
        pad_id: the id the model pads with, when this tokenizer has no pad piece (e.g. </s>).
        """
        from .tokenizer_export import hf_tokenizer_files

        return hf_tokenizer_files(self, chat_template, model_max_length, pad_id)

    # ----- helpers ---------------------------------------------------------------------------------

    def _check_special(self, bos: bool, eos: bool) -> None:
        check_special(self, bos, eos, "piece")

    def _check_ids(self, ids) -> list[int]:
        return check_ids(ids, self.vocab_size)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


# ----- training helpers ------------------------------------------------------------------------------

def load_given(path, flag: str) -> Tokenizer:
    """The tokenizer a command's `flag` names (a SentencePiece .model file): a folder, or a file
    that is not one (a Hugging Face tokenizer.json), is refused in one line naming the flag and,
    when there is one, the tokenizer.model in or beside it -- what the flag takes.  Tokenizer(path)
    itself advises a Python caller (npllama.runs.load_tokenizer), which the command line cannot use."""
    given = Path(require_path(flag, path, "a SentencePiece .model file")).expanduser()
    if given.is_dir():   # a run or model folder: the file in it is what was meant
        inside = given / "tokenizer.model"
        raise ValueError(f"{flag} {str(path)!r} is a folder: " + (
            f"give its tokenizer.model, {flag} {inside}" if inside.is_file() else
            "give a SentencePiece .model file (it holds no tokenizer.model)"))
    try:
        return Tokenizer(given)
    except ValueError as error:
        if "not a valid SentencePiece model" not in str(error):
            raise
        beside = given.parent / "tokenizer.model"
        raise ValueError(f"{flag} {str(path)!r} is not a SentencePiece .model file (a Hugging Face tokenizer.json, "
                         f"for example, is another format): " + (
                             f"give the tokenizer.model beside it, {flag} {beside}"
                             if beside.is_file() and given.name != beside.name else
                             "give a tokenizer.model, e.g. a run's runs/NAME/tokenizer.model")) from None


def model_prefix_path(model_prefix) -> Path:
    """Tokenizer.train's <prefix> (of <prefix>.model and <prefix>.vocab) as a Path.  A prefix that
    ends in a slash names a folder: pathlib would drop the slash and write "tok.model" beside the
    folder "tok/" the user meant to write into, so it is refused, suggesting a name inside it."""
    require_path("model_prefix", model_prefix, "where to write <prefix>.model")
    if isinstance(model_prefix, str) and model_prefix.endswith(("/", os.sep)):
        raise ValueError(f"model_prefix must be a file prefix (<prefix>.model and <prefix>.vocab are written), "
                         f"not a folder: got {model_prefix!r}; give a name inside it, e.g. "
                         f"{model_prefix + 'tokenizer'!r}")
    return Path(model_prefix).expanduser()


def _require_text(name: str, text) -> None:
    """A str that is valid Unicode: SentencePiece needs UTF-8, and a lone surrogate (e.g. from
    text decoded with errors="surrogateescape") has no UTF-8 form."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text: it holds a lone surrogate "
                         f"U+{ord(text[e.start]):04X} at position {e.start}") from None


# SentencePiece's trainer holds these in 32-bit ints (the seed unsigned): a larger value was its
# "INVALID_ARGUMENT: cannot parse ... as int", naming no argument
MAX_TRAINER_INT, MAX_SEED = 2**31 - 1, 2**32 - 1


def _check_train_args(vocab_size, model_type, character_coverage, input_sentence_size, max_sentence_length, seed,
                      num_threads=None, byte_fallback=True):
    require_int("vocab_size", vocab_size)
    if not byte_fallback:   # (trainer option byte_fallback=False) no byte pieces: SentencePiece says what fits
        if vocab_size <= N_SPECIAL_PIECES:
            raise ValueError(f"vocab_size={vocab_size} is too small: <unk>, <s> and </s> take {N_SPECIAL_PIECES} "
                             f"ids, so vocab_size must be at least {N_SPECIAL_PIECES + 1}")
    elif vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback reserves {N_BYTE_PIECES} byte pieces "
            f"and {N_SPECIAL_PIECES} special ones (<unk>, <s>, </s>), so vocab_size must be at least "
            f"{MIN_VOCAB_SIZE}, and a few hundred more to leave room for characters and merges "
            f"(512 is a good small size)")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if (isinstance(character_coverage, bool) or not isinstance(character_coverage, (int, float))
            or not MIN_CHARACTER_COVERAGE <= character_coverage <= 1.0):
        raise ValueError(f"character_coverage must be a number in [{MIN_CHARACTER_COVERAGE}, 1], "
                         f"got {character_coverage!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer))
                                    or num_threads <= 0):
        raise ValueError(f"num_threads must be a positive int or None (one per core), got {num_threads!r}")
    for name, value in (("input_sentence_size", input_sentence_size),
                        ("max_sentence_length", max_sentence_length), ("seed", seed)):
        require_non_negative_int(name, value)
    for name, value, most in (("vocab_size", vocab_size, MAX_TRAINER_INT),
                              ("input_sentence_size", input_sentence_size, MAX_TRAINER_INT),
                              ("max_sentence_length", max_sentence_length, MAX_TRAINER_INT),
                              ("num_threads", num_threads or 1, MAX_TRAINER_INT), ("seed", seed, MAX_SEED)):
        if value > most:
            raise ValueError(f"{name} must be at most {most:,} (SentencePiece's limit), got {value:,}")
    if 0 < input_sentence_size <= 100:
        raise ValueError(f"input_sentence_size must be 0 (use every sentence) or more than 100, "
                         f"got {input_sentence_size}")
    if max_sentence_length < 16:
        raise ValueError(f"max_sentence_length must be at least 16 bytes, got {max_sentence_length}")


def _as_files(texts_or_files) -> list[Path] | None:
    """The files to read, or None if `texts_or_files` is text."""
    if isinstance(texts_or_files, (str, os.PathLike)):
        items = [Path(texts_or_files)]
    elif isinstance(texts_or_files, (list, tuple)) and texts_or_files and all(
            isinstance(item, Path) for item in texts_or_files):
        items = list(texts_or_files)
    else:
        return None
    for item in items:
        if not item.exists():
            raise ValueError(f"training file {str(item)!r} does not exist (to train on text, pass a "
                             f"list of strings instead of a path)")
    return items


class _Documents:
    """The documents of `files` (each a Corpus: a .txt or .jsonl file or a folder of them), as
    `npllama train --data` reads them; sized, and read again from disk each time it is iterated."""

    def __init__(self, files: list[Path], doc_separator: str):
        from .data import Corpus

        self.corpora = [Corpus(file, doc_separator) for file in files]   # read once now: what cannot be read is refused

    def __len__(self) -> int:
        return sum(map(len, self.corpora))

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.corpora)


class _Reading:
    """The sentences, handed to SentencePiece, which stops at an error raised while it reads them but
    raises a RuntimeError of its own: the error is kept, to be raised as it was (naming the file and
    line, or the text that is not a str)."""

    def __init__(self, sentences: Iterator[str]):
        self.sentences, self.error, self.count = sentences, None, 0

    def __iter__(self) -> Iterator[str]:
        try:
            for sentence in self.sentences:
                self.count += 1
                yield sentence
        except (ValueError, TypeError, OSError) as error:
            self.error = error
            raise

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Each text as one sentence, newlines kept: the tokenizer is trained on text as `encode` will
    see it, so it learns the newline and the words that follow one (a line-initial word has no "▁":
    trained on single lines, it would be spelled letter by letter after every newline).  A text
    longer than max_bytes is cut after a newline (each piece keeps its newline), long lines at spaces."""
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts_or_files must be an iterable of str or a path, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts_or_files[{i}] must be a str (or pass pathlib.Path objects for "
                            f"files), got {type(text).__name__}")
        piece, size = [], 0
        for line in text.splitlines(keepends=True):
            line_size = len(line.encode("utf-8"))
            if piece and size + line_size > max_bytes:
                if "".join(piece).strip():
                    yield "".join(piece)
                piece, size = [], 0
            if line_size > max_bytes:
                yield from _chunk(line, max_bytes)
                continue
            piece.append(line)
            size += line_size
        if piece and "".join(piece).strip():
            yield "".join(piece)


def _chunk(line: str, max_bytes: int) -> Iterator[str]:
    if len(line.encode("utf-8")) <= max_bytes:
        yield line
        return
    piece, size = [], 0
    for word in line.split(" "):
        word_size = len(word.encode("utf-8")) + 1
        if piece and size + word_size > max_bytes:
            yield " ".join(piece)
            piece, size = [], 0
        if word_size > max_bytes:  # one enormous "word": cut it by characters
            chars = max_bytes // 4  # at most 4 bytes per UTF-8 character
            yield from (word[k:k + chars] for k in range(0, len(word), chars))
            continue
        piece.append(word)
        size += word_size
    if piece:
        yield " ".join(piece)


def _write_trained_file(path: Path, data: bytes) -> None:
    """Write a trained tokenizer file atomically; a failure is an OSError naming the file (and a full
    disk as such), with the file as it was before."""
    import errno

    from .io.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        advice = (": the disk is out of space; free some space and train again" if error.errno == errno.ENOSPC
                  else "")
        raise OSError(error.errno, f"training the tokenizer failed: writing {path} failed "
                                   f"({error.strerror or error}){advice}") from error


def _explain_training_error(exc: RuntimeError, vocab_size: int, character_coverage: float,
                            byte_fallback: bool = True) -> Exception:
    """Turn SentencePiece's CHECK failures about the vocabulary size into advice."""
    message = str(exc).strip()
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        most = int(too_high.group(2))
        return ValueError(
            f"vocab_size={vocab_size} is too large for this corpus: SentencePiece can make at most "
            f"{most} pieces from it.  Use a smaller vocab size (<= {most}) or train on more text.")
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        needed = int(too_low.group(2))
        pieces = f"{N_BYTE_PIECES} byte pieces and " if byte_fallback else ""
        # without byte fallback the characters left out are <unk>, not bytes
        rarest = "spelled with bytes" if byte_fallback else "written as <unk>"
        # at the lowest coverage allowed, a lower one is no way out
        coverage = (f", or a character_coverage below {character_coverage:g} (down to {MIN_CHARACTER_COVERAGE}), "
                    f"so that the rarest characters are {rarest}" if character_coverage > MIN_CHARACTER_COVERAGE
                    else "")
        return ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: its characters plus the "
            f"{pieces}{N_SPECIAL_PIECES} special pieces already need {needed}.  "
            f"Use a larger vocab_size (at least {needed}; more leaves room for merged pieces; Chinese or "
            f"Japanese text uses thousands of characters){coverage}.")
    return ValueError(f"SentencePiece training failed: {message}")


def check_special(tokenizer, bos: bool, eos: bool, kind: str, bos_hint: str = "") -> None:
    """A ValueError if encode was asked for a BOS or EOS `kind` (piece, token) the tokenizer lacks; a
    TypeError if bos or eos is not a bool (a string such as "no" would count as yes)."""
    for name, flag in (("bos", bos), ("eos", eos)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    for wanted, token_id, name, hint in ((bos, tokenizer.bos_id, "bos", bos_hint), (eos, tokenizer.eos_id, "eos", "")):
        if wanted and token_id is None:
            raise ValueError(f"tokenizer {str(tokenizer.path)!r} has no {name.upper()} {kind}{hint}; "
                             f"call encode with {name}=False")


def check_ids(ids, vocab_size: int) -> list[int]:
    """ids as a list of ints, each in [0, vocab_size); TypeError/ValueError otherwise."""
    array = np.asarray(ids)
    if array.ndim > 1:
        raise ValueError(f"ids must be a flat sequence of token ids, got shape {array.shape}")
    if array.dtype == object and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                     for i in array.reshape(-1)):   # Python ints, some maybe past int64 (2**70)
        bad = next((int(i) for i in array.reshape(-1) if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is out of range for vocab_size {vocab_size}")
        array = array.astype(np.int64)     # all in range: ids like any other
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {array.dtype}")
    array = array.reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        bad = int(array[(array < 0) | (array >= vocab_size)][0])
        raise ValueError(f"token id {bad} is out of range for vocab_size {vocab_size}")
    return array.astype(np.int64).tolist()


def check_tokenizer_fits(tokenizer, model) -> None:
    """The error half of check_vocab, for a job given a model and a tokenizer (generate_text,
    perplexity): more pieces than the model has embedding rows is refused as such, not reported
    later as a token id out of the model's range.  A tokenizer that does not say its size (a
    stand-in object) is taken as it is."""
    # None, or the .model file's path (a str has an encode of its own)
    if isinstance(tokenizer, (str, bytes, os.PathLike)) or not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must be a Tokenizer (or an object with its encode), got "
                        f"{type(tokenizer).__name__}; load a .model file with Tokenizer(path)")
    size = getattr(tokenizer, "vocab_size", None)
    if size is not None and size > model.config.vocab_size:
        check_vocab_sizes(size, model.config.vocab_size, str(getattr(tokenizer, "path", "the tokenizer")))


def check_vocab_sizes(tokenizer_vocab_size: int, model_vocab_size: int, tokenizer_name: str) -> None:
    """A model needs an embedding row for every piece: fewer is an error; more (padding rows) a warning."""
    if model_vocab_size < tokenizer_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_name!r} has vocab_size {tokenizer_vocab_size} but the model has "
            f"vocab_size {model_vocab_size}, too few rows for its ids; use the tokenizer the model was "
            f"trained with (or train the model with vocab_size={tokenizer_vocab_size})")
    if model_vocab_size > tokenizer_vocab_size:
        warnings.warn(
            f"the model's embedding has {model_vocab_size} rows but tokenizer {tokenizer_name!r} has "
            f"vocab_size {tokenizer_vocab_size}: the {model_vocab_size - tokenizer_vocab_size} extra rows "
            f"(padding) are never encoded, and generation samples only ids below {tokenizer_vocab_size}",
            stacklevel=3)


def _none_if_negative(value: int) -> int | None:
    return None if value < 0 else value


__all__ = ["Tokenizer", "LLAMA_TRAINER_OPTIONS", "MIN_VOCAB_SIZE", "UNK_ID", "BOS_ID", "EOS_ID"]
