"""`npllama convert llama2c|gguf FILE --out DIR`: a model from another program, as a Hugging Face folder."""
from pathlib import Path

from . import HelpFormatter, UsageError, print_help_instead

FORCE_HELP = ("replace --out if it exists and is not empty: the whole folder, files it holds included "
              "(never a folder holding the files being converted)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a model from another format into a Hugging Face folder",
        description="Read a model written by another program and write it as a Hugging Face folder "
                    "that `npllama generate --model DIR`, the Python API and transformers load.")
    sub = p.add_subparsers(dest="convert_command", metavar="<llama2c|gguf>")
    c = sub.add_parser(
        "llama2c", formatter_class=HelpFormatter,
        help="a llama2.c checkpoint (.bin: legacy, version 1 float32 or version 2 int8)",
        description="Convert a karpathy/llama2.c checkpoint (legacy run.c format, or export.py's "
                    "version 1 float32 / version 2 int8 Q8_0) and its tokenizer.bin. The q and k "
                    "weights are permuted from llama2.c's interleaved RoPE layout to Hugging Face's.")
    c.add_argument("checkpoint", help="the llama2.c model file, e.g. stories15M.bin")
    c.add_argument("--out", required=True, help="the folder to write")
    c.add_argument("--tokenizer", default=None,
                   help="llama2.c's tokenizer.bin (or a SentencePiece .model) for this model "
                        "(default: tokenizer.bin beside the checkpoint, if there is one)")
    c.add_argument("--no-tokenizer", action="store_true",
                   help="write the folder without a tokenizer even if one is found")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="how to store the weights")
    c.add_argument("--force", action="store_true", help=FORCE_HELP)
    c.set_defaults(run=llama2c)
    g = sub.add_parser(
        "gguf", formatter_class=HelpFormatter,
        help="a llama.cpp GGUF file of a LLaMA (F32, F16, BF16 or Q8_0 tensors)",
        description="Convert a llama.cpp GGUF file of a LLaMA and its SentencePiece vocabulary. "
                    "Quantized tensors are dequantized (Q8_0: each block of 32 values is its float16 "
                    "scale times 32 int8); other quantizations (Q4_K, ...) are refused. The q and k "
                    "weights are permuted from llama.cpp's interleaved RoPE layout to Hugging Face's.")
    g.add_argument("checkpoint", help="the .gguf file")
    g.add_argument("--out", required=True, help="the folder to write")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="how to store the weights")
    g.add_argument("--force", action="store_true", help=FORCE_HELP)
    g.set_defaults(run=gguf)
    p.set_defaults(run=print_help_instead(p))


def llama2c(args) -> int:
    from ..io.llama2c import FORMATS, convert_llama2c

    checkpoint, out = _checked_paths(args)
    header = _read_header(checkpoint)
    tokenizer = _tokenizer(args, checkpoint)
    _check_out(args, out, checkpoint, tokenizer)
    _check_tokenizer(args, tokenizer, header.to_config().vocab_size)
    dtype = _dtype(args.dtype)
    print(f"converting {checkpoint} ({FORMATS[header.version]}: {header.n_layers} layers, dim {header.dim}, "
          f"{header.n_heads} heads, vocab {header.vocab_size}, "
          f"{header.to_config().num_parameters():,} parameters) ...", flush=True)
    convert_llama2c(checkpoint, out, tokenizer=tokenizer, dtype=dtype)
    if tokenizer is None:
        print(f"wrote {out} without a tokenizer: copy one in as tokenizer.model, or convert again with "
              f"--tokenizer tokenizer.bin, before `npllama generate --model {out}`")
    else:
        print(f"wrote {out} with tokenizer.model from {tokenizer}; try `npllama generate --model {out}`")
    return 0


def gguf(args) -> int:
    import importlib.util

    from ..io.gguf_import import INSTALL_HINT, convert_gguf, looks_like_gguf   # (gguf itself is read later)
    from ..io.hf import CHAT_TEMPLATE_FILE

    checkpoint, out = _checked_paths(args)
    _check_out(args, out, checkpoint)
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(INSTALL_HINT)

    if not looks_like_gguf(checkpoint):
        raise UsageError(f"{str(checkpoint)!r} is not a GGUF file" + _hint(checkpoint))
    dtype = _dtype(args.dtype)
    print(f"converting {checkpoint} ...", flush=True)
    out, has_tokenizer = convert_gguf(checkpoint, out, dtype=dtype)
    if has_tokenizer:
        print(f"wrote {out} with tokenizer.model from the file's vocabulary; try `npllama generate --model {out}`")
    else:
        kept = f" (its chat template is in {CHAT_TEMPLATE_FILE})" if (out / CHAT_TEMPLATE_FILE).is_file() else ""
        print(f"wrote {out} without a tokenizer (the file's vocabulary is not SentencePiece's){kept}: copy the "
              f"model's tokenizer.model or tokenizer.json in before `npllama generate --model {out}`")
    return 0


def _read_header(checkpoint: Path):
    """The llama2.c header, or one line saying what the file is instead (a GGUF, a pickle...)."""
    from ..io import CheckpointError
    from ..io.describe import describe_file_kind
    from ..io.llama2c import read_llama2c_header

    try:
        return read_llama2c_header(checkpoint)
    except CheckpointError as error:
        kind, what = describe_file_kind(checkpoint)
        # the header's own words for a file that is (or starts like) a checkpoint; for anything else,
        # llama2.c's tokenizer.bin included, what the file is instead
        raise UsageError(str(error) if kind == "llama2c" else
                         f"not a llama2.c checkpoint: {str(checkpoint)!r} {what}") from None


def _tokenizer(args, checkpoint: Path):
    if args.no_tokenizer:
        if args.tokenizer:
            raise UsageError("--tokenizer and --no-tokenizer contradict each other; give one")
        return None
    if args.tokenizer is not None:
        if not Path(args.tokenizer).is_file():
            raise UsageError(f"--tokenizer {args.tokenizer!r} is not a file")
        return Path(args.tokenizer)
    beside = checkpoint.parent / "tokenizer.bin"
    return beside if beside.is_file() and beside.resolve() != checkpoint.resolve() else None


def _check_tokenizer(args, tokenizer: Path | None, vocab_size: int) -> None:
    """The tokenizer converts for this model, or one line naming where it came from (--tokenizer, or
    found beside the checkpoint), before the conversion is announced."""
    from ..io import CheckpointError
    from ..io.describe import describe_file_kind
    from ..io.llama2c import tokenizer_model_bytes

    if tokenizer is None:
        return
    try:
        tokenizer_model_bytes(tokenizer, vocab_size)
    except ValueError as error:   # CheckpointError, or a .model SentencePiece cannot parse
        # one sentence, the file named once: "<the file> <what is wrong with it>"
        problem = error.problem if isinstance(error, CheckpointError) else _said_of(tokenizer, error)
        kind, what = describe_file_kind(tokenizer)
        # a file of another known kind (the checkpoint, a GGUF) said as such: the reader's own words
        # ("has piece 1 of length 33554432") fit only a tokenizer, or a file nothing recognises (by its
        # kind, not by words in the sentence, which holds the path: my_tokenizers/stories15M.bin)
        tokenizer_json = kind == "json" and tokenizer.name == "tokenizer.json"
        if kind not in (None, "sentencepiece", "llama2c_tokenizer") and not tokenizer_json:
            problem = f"is not a tokenizer: it {what}"
        if args.tokenizer is not None:
            raise UsageError(f"--tokenizer {args.tokenizer!r} {problem}") from None
        raise UsageError(f"{str(tokenizer)!r}, found beside the checkpoint, {problem}; give the model's "
                         f"tokenizer with --tokenizer, or convert without one (--no-tokenizer)") from None


def _said_of(path: Path, error: ValueError) -> str:
    """What a reader's error says of `path`, without the path it opens with (the caller names the
    file its own way); a message that does not open with it, as it stands."""
    said = str(error)
    named = f"{str(path)!r} "
    return said[len(named):] if said.startswith(named) else f"cannot be read: {said}"


def _checked_paths(args) -> tuple[Path, Path]:
    """(checkpoint, out) of a convert command, before anything is read: the file exists, and --out
    is no file (--force replaces a folder, never a file: it cannot help)."""
    from ..io.atomic import refuse_a_file_above

    checkpoint, out = Path(args.checkpoint), Path(args.out)
    if not checkpoint.is_file():
        raise UsageError(f"{str(checkpoint)!r} is not a file" + _hint(checkpoint))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; convert writes a folder: give a new folder's path")
    refuse_a_file_above(out, "--out")   # a NotADirectoryError: a user's mistake to the CLI, as it stands
    return checkpoint, out


def _check_out(args, out: Path, *inputs: Path | None) -> None:
    """--out may be written: never a folder holding the files being converted (--force replaces
    it whole), and one that exists and is not empty only with --force."""
    from ..io.atomic import refuse_replacing_inputs

    try:
        refuse_replacing_inputs(out, [path for path in inputs if path is not None], name="--out")
    except ValueError as error:
        raise UsageError(str(error)) from None
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {str(out)!r} exists and is not empty; pass --force to replace it")


def _dtype(name: str):
    """--dtype as save_hf_folder takes it (NumPy has no bfloat16: that one is its name)."""
    import numpy as np

    return "bfloat16" if name == "bfloat16" else getattr(np, name)


def _hint(path: Path) -> str:
    """What the path is instead, said of the path the message has just named: ": it is a folder ..."."""
    from ..io.describe import describe_path

    return f": it {describe_path(path)}" if path.exists() else ""
