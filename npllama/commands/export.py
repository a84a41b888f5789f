"""`npllama export gguf --model DIR --out FILE`: a model for llama.cpp."""
import sys
from pathlib import Path

from . import HelpFormatter, print_help_instead


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to another program's format (GGUF for llama.cpp)",
                              description="Write a trained model in a format other programs run.")
    sub = p.add_subparsers(dest="export_command", metavar="<gguf>")
    g = sub.add_parser(
        "gguf", formatter_class=HelpFormatter, help="a GGUF file that llama.cpp runs",
        description="Write a GGUF file for llama.cpp with its tensor names, metadata and the "
                    "SentencePiece tokenizer; q and k are permuted to llama.cpp's RoPE layout. "
                    "Needs the gguf package: pip install 'npllama[gguf]'.")
    g.add_argument("--model", default=None, help="a run folder from `npllama train` or a Hugging Face "
                   "LLaMA folder with a SentencePiece tokenizer.model in or beside it (a folder with only "
                   "tokenizer.json is refused) (default: the latest run)")
    g.add_argument("--out", required=True, help="the .gguf file to write (an existing file only with --force)")
    g.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                   help="how to store the matrices (norms are always f32; q8_0 keeps a matrix whose rows "
                        "are not a multiple of 32 values in f16)")
    g.add_argument("--force", action="store_true", help="replace --out if the file exists (never a file the export "
                   "reads: the model's weights, config or tokenizer)")
    g.add_argument("--name", default=None, help="general.name in the file (default: the run's name when --model "
                                                "is a run or in one -- its model/ or checkpoint/ -- else the folder's)")
    g.set_defaults(run=gguf)
    p.set_defaults(run=print_help_instead(p))


def gguf(args) -> int:
    import importlib.util

    from . import UsageError

    if importlib.util.find_spec("gguf") is None:
        raise UsageError("GGUF export needs the `gguf` package: pip install 'npllama[gguf]' (or pip install gguf)")
    from ..io.gguf_export import check_gguf_out, export_gguf, gguf_tokenizer
    from ..runs import refuse_a_model_file, resolve_model_dir

    if args.model is not None:  # a .bin, a .gguf...: said (what it is) before --out is judged
        refuse_a_model_file(args.model, flag="--model")
    check_gguf_out(Path(args.out), None, args.force, flag="--out", force="--force")  # before the model loads
    model_dir = resolve_model_dir(args.model)
    check_gguf_out(Path(args.out), model_dir, args.force, flag="--out", force="--force")
    tokenizer = gguf_tokenizer(model_dir)
    # export_gguf refuses a classifier and a masked-LM model (llama.cpp runs every LLaMA causally):
    # it announces the export once its checks have passed, so a refused one prints only the refusal
    named = Path(args.model).expanduser() if args.model is not None else model_dir.parent
    name = args.name or _gguf_name(named, model_dir)
    out = export_gguf(model_dir, args.out, tokenizer=tokenizer, outtype=args.outtype, name=name,
                      progress=sys.stderr.isatty(), overwrite=True, flag="--model",
                      echo=lambda line: print(line, flush=True))
    print(f"wrote {out} ({out.stat().st_size / 1024**2:.1f} MiB, {args.outtype}) from {model_dir}; "
          f"run it with llama.cpp, e.g. `llama-cli -m {out} -p \"Once upon a time\"`")
    return 0


def _gguf_name(named: Path, model_dir: Path) -> str:
    """general.name by default: the run's name for a run's model/ or its checkpoint (checkpoint/model,
    beside training_state.json), however --model points into the run; else the folder --model names."""
    from ..io.train_state import STATE_FILE
    from ..resuming import LOG_FILE

    folder = model_dir.resolve()
    if folder.name == "model" and (folder.parent / STATE_FILE).is_file():
        return folder.parent.parent.name       # RUN/checkpoint/model
    run_files = (LOG_FILE, "checkpoint")       # what train and finetune leave beside model/
    if folder.name == "model" and any((folder.parent / f).exists() for f in run_files):
        return folder.parent.name              # RUN/model
    return named.resolve().name
