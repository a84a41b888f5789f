"""`npllama tokenizer train|encode|decode`: SentencePiece tokenizers with LLaMA's settings."""
import argparse
import json
from functools import partial

from . import (HelpFormatter, UsageError, defaults_only_when_given, print_help_instead,
               doc_separator_rule, refuse_ignored_flags)

DEFAULT_DOC_SEPARATOR = "blank-line"


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a SentencePiece tokenizer, encode or decode text",
                              description="SentencePiece tokenizers (BPE, as LLaMA's, or --model-type unigram) with LLaMA's settings (byte "
                                          "fallback, digits split, <unk>=0, <s>=1, </s>=2). The text is "
                                          "not normalized (as LLaMA's): full-width ＡＢＣ１２３ and ABC123, "
                                          "or 繁體 and 简体, stay different characters (normalize a corpus "
                                          "first, e.g. with Python's unicodedata.normalize('NFKC', text), to "
                                          "make them one), and decode(encode(x)) is x, but for U+2581 ▁, "
                                          "SentencePiece's mark for a space, which comes back as a space, and "
                                          "the name of a control or user-defined piece (<s>, </s>, <unk>): "
                                          "encoded as that piece's id, as transformers does, it comes back as "
                                          "nothing (or <unk>'s ⁇, or the user-defined piece), and the text "
                                          "after it gets a space of its own.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="<train|encode|decode>")
    t = sub.add_parser("train", help="train a tokenizer on a corpus",
                       description="Train a SentencePiece tokenizer (LLaMA's settings) on --data, read as "
                                   "`npllama train --data` reads it: a .txt file cut into documents as "
                                   "--doc-separator says, each seen whole, its newlines included, so the "
                                   "tokenizer learns the text as it will be encoded (Python: "
                                   "npllama.tokenizer.Tokenizer.train(PATH, OUT, VOCAB_SIZE, doc_separator=...), "
                                   "the same tokenizer). Writes OUT.model and OUT.vocab; `npllama train "
                                   "--tokenizer OUT.model` trains a model with it.",
                       formatter_class=HelpFormatter)
    t.add_argument("--data", default=None, help="a .txt file (cut into documents as --doc-separator says), a "
                   "folder of .txt/.jsonl files, or a .jsonl file with a \"text\" field (default: built-in stories)")
    t.add_argument("--doc-separator", default=DEFAULT_DOC_SEPARATOR, metavar="blank-line|line|marker:TEXT|whole-file",
                   help="how a .txt file is cut into documents, as `npllama train` cuts it (the tokenizer sees "
                        "each document whole, newlines included)")
    t.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"],
                   help="SentencePiece's algorithm: byte-pair merges (LLaMA's) or a unigram language model")
    t.add_argument("--vocab-size", type=int, default=512,
                   help="pieces in the vocabulary, 256 byte pieces and <unk>, <s>, </s> included (Chinese or "
                        "Japanese text needs a piece per character it uses, or --character-coverage below 1)")
    t.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of the text's characters (counted with repeats) that get a piece of their own, "
                        "in [0.98, 1]; the rarest others are spelled with UTF-8 byte pieces (three for a Chinese "
                        "character)")
    t.add_argument("--input-sentence-size", type=int, default=1_000_000, metavar="N",
                   help="train on a random sample of N documents (long ones count once per ~4 kB piece) when the "
                        "corpus has more, so that a huge corpus trains in bounded memory (0: on all of them; else more than 100)")
    t.add_argument("--out", default="tokenizer", help="output prefix: writes OUT.model and OUT.vocab")
    t.add_argument("--force", action="store_true", help="replace OUT.model and OUT.vocab if they exist")
    defaults_only_when_given(t, {"doc_separator"})   # so a --doc-separator nothing reads is refused
    t.set_defaults(run=train)
    e = sub.add_parser("encode", help="text -> token ids (JSON list on stdout)")
    e.add_argument("--model", required=True, help="SentencePiece .model file")
    e.add_argument("text", nargs="?", default=None, help="text to encode (default: standard input, read as it is: the "
                   "newline `echo` ends it with is encoded too, as <0x0A>; `echo -n` or printf leave it out)")
    # (the text is positional: a --text of habit is told so, not "unrecognized arguments")
    e.add_argument("--text", dest="text_flag", default=None, help=argparse.SUPPRESS)
    e.add_argument("--no-bos", action="store_true", help="do not prepend <s>")
    e.add_argument("--eos", action="store_true", help="append </s>")
    e.add_argument("--pieces", action="store_true", help="print the pieces instead of ids")
    e.set_defaults(run=encode)
    d = sub.add_parser("decode", help="token ids -> text")
    d.add_argument("--model", required=True, help="SentencePiece .model file")
    d.add_argument("ids", nargs="*", help="ids, as separate arguments, a JSON list, or on stdin")
    d.set_defaults(run=decode)
    p.set_defaults(run=print_help_instead(p))


def train(args) -> int:
    from ..corpus import make_default_corpus
    from ..tokenizer import Tokenizer, model_prefix_path

    from pathlib import Path

    from ..io.atomic import refuse_a_file_above

    # its folders are made, never where a file is (was "[Errno 17] File exists"); the
    # NotADirectoryError is one of cli's USER_ERRORS: one line, exit status 2
    refuse_a_file_above(args.out, "--out")
    prefix = model_prefix_path(args.out)   # a folder ("tok/") refused before "would replace tok.model"
    existing = [str(p) for p in (Path(f"{prefix}.model"), Path(f"{prefix}.vocab")) if p.exists()]
    if existing and not args.force:   # before the (slow) training
        raise UsageError(f"--out {args.out!r} would replace {' and '.join(existing)}: pass --force to replace "
                         f"{'them' if len(existing) > 1 else 'it'}, or choose another --out")
    if Path(f"{prefix}.model").is_dir():
        raise UsageError(f"--out {args.out!r}: {prefix}.model is a folder")
    from ..data import check_doc_separator

    doc_separator = getattr(args, "doc_separator", DEFAULT_DOC_SEPARATOR)
    check_doc_separator(doc_separator)   # before the corpus is read (cli names the flag)
    refuse_ignored_flags(vars(args), args, [doc_separator_rule()])
    # Python's route: --data read as a stream (SentencePiece samples --input-sentence-size documents
    # of it, the corpus is never held whole), cut into documents as --doc-separator says
    tok = Tokenizer.train(args.data or make_default_corpus(), args.out, args.vocab_size, model_type=args.model_type,
                          character_coverage=args.character_coverage, doc_separator=doc_separator,
                          input_sentence_size=args.input_sentence_size, echo=partial(print, flush=True))
    print(f"wrote {tok.path} ({tok.vocab_size} pieces)")
    return 0


def _load(path):
    """The --model tokenizer, or a one-line error naming --model."""
    from ..tokenizer import load_given

    return load_given(path, "--model")


def encode(args) -> int:
    if args.text_flag is not None:
        from shlex import quote

        raise UsageError(f"the text to encode is positional, without --text: npllama tokenizer encode "
                         f"--model {quote(args.model)} {quote(args.text_flag)}")
    tok = _load(args.model)
    text = _text_to_encode(args.text)
    ids = tok.encode(text, bos=not args.no_bos, eos=args.eos)
    print(json.dumps([tok.id_to_piece(i) for i in ids] if args.pieces else ids, ensure_ascii=False))
    if tok.unk_id in ids:
        _warn_of_lost_characters(tok, text)
    return 0


def _text_to_encode(argument: str | None) -> str:
    """The text argument, else standard input, as it is (\\r\\n and a byte-order mark included).
    Bytes that are not UTF-8 are refused naming the byte and line, as a corpus file's are: Python
    would hand them on as lone surrogates, which encode refuses in its own terms."""
    import os

    from ..io.reading import decode_text

    def text(data: bytes, source: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return decode_text(data, source, UsageError)   # raises, naming the byte and line (and UTF-16 or GBK)

    if argument is None:   # (a text stream in its place, io.StringIO, gives its text as it is)
        from ..budget import max_read
        from ..io.reading import read_standard_input

        return read_standard_input(max_read(), UsageError, decode=lambda data: text(data, "standard input"))
    try:
        data = os.fsencode(argument)   # the bytes given, undone from Python's escapes
    except UnicodeEncodeError:   # a surrogate no byte makes (main() called from Python): encode refuses it
        return argument
    return text(data, "the text argument")


def _warn_of_lost_characters(tok, text: str) -> None:
    """A tokenizer without byte fallback (not one `tokenizer train` writes) encodes a character it has no
    piece for as <unk>: the text cannot be decoded back, which the ids alone do not show."""
    import warnings

    lost = tok.unknown_characters(text)
    if lost:   # else the <unk> is a typed "<unk>", the control piece's id
        shown = ", ".join(map(repr, lost[:10])) + (", ..." if len(lost) > 10 else "")
        warnings.warn(f"this tokenizer has no byte fallback: {len(lost)} character{'s' if len(lost) > 1 else ''} "
                      f"not in its vocabulary ({shown}) became <unk> (id {tok.unk_id}), which decodes as "
                      f"{tok.decode([tok.unk_id])!r}, not as the text", stacklevel=2)


def decode(args) -> int:
    tok = _load(args.model)
    from ..io.reading import parse_json

    if args.ids:
        raw = " ".join(args.ids)
    else:   # within the read budget, as encode reads it; a byte that is not UTF-8 is shown in the error below
        from ..budget import max_read
        from ..io.reading import read_standard_input

        raw = read_standard_input(max_read(), UsageError, decode=lambda data: data.decode("utf-8", "surrogateescape"))

    try:
        ids = parse_json(raw, "the ids", expect=list) if raw.strip().startswith("[") else \
            [int(x) for x in raw.replace(",", " ").split()]
    except ValueError as error:   # bad syntax, too deeply nested, or not a list
        raise UsageError(f"ids must be integers (separate, comma-separated, or a JSON list), got "
                         f"{raw.strip()[:60]!r} ({error})") from None
    print(tok.decode(ids))
    return 0
