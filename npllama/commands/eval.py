"""`npllama eval choice`: multiple-choice question answering by log-likelihood (article §6.3);
`npllama eval perplexity`: the mean next-token loss and perplexity of held-out text;
`npllama eval mlm`: a masked-LM model's loss and accuracy over the masked tokens of held-out text
(both read --data as `npllama train` reads --val-data: .txt, .jsonl, a folder of them);
`npllama eval sop`: a `finetune sop` model's sentence-order (or next-sentence) accuracy on held-out documents."""
import sys

from . import HelpFormatter, add_adapter_option, add_run_options, print_help_instead


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: perplexity of a text (a masked-LM model: its masked-LM loss, "
                     "eval mlm), a `finetune sop` model's sentence-order accuracy, multiple-choice question "
                     "answering",
        description="Evaluate a trained model on a task.", formatter_class=HelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="<task>")
    c = tasks.add_parser(
        "choice", help="multiple choice by the log-likelihood of each choice",
        description="Score each choice by the log-probability the model gives its tokens after the "
                    "question, read as the text going on after it (a space between them, none in Chinese or "
                    "Japanese); the most likely choice is the model's answer (a right answer tied with k-1 "
                    "others counts 1/k). Prints accuracy (total log-likelihood) and accuracy per token "
                    "(length-normalised) beside chance (--json: as one JSON object). With no --data it uses "
                    "built-in items: which sentence comes next in a story?",
        formatter_class=HelpFormatter)
    c.add_argument("--model", "--base", dest="model", default=None, help="the model: a run folder or a Hugging "
                   "Face LLaMA folder with tokenizer.model or tokenizer.json (default: the latest `npllama train` "
                   "run); --base is its older name")
    add_adapter_option(c, "--model")
    c.add_argument("--data", default=None, help=".jsonl with {\"question\", \"choices\": [two or more "
                   "different texts], \"answer\": index of the right choice, from 0} lines, optionally a "
                   "\"context\" passage read before the question (reading comprehension) (default: built-in "
                   "story-continuation items)")
    c.add_argument("--limit", type=int, default=200, help="evaluate at most this many items")
    c.add_argument("--template", default="plain", choices=["plain", "chat"],
                   help="chat: the question as a user's message in the model's chat template (the "
                        "--adapter's or the folder's chat_template, else LLaMA-3's if the tokenizer has its "
                        "<|start_header_id|>, else LLaMA-2's [INST] ... [/INST]) and each choice as the "
                        "template writes the assistant's answer, as `finetune sft` trains it (the end of turn "
                        "after it is not scored), for models tuned with `finetune sft`")
    c.add_argument("--seed", type=int, default=None, help="seed of the built-in items, so only without --data "
                   "(default: 0)")
    _run_options(c)
    c.set_defaults(run=run_choice)

    ppl = tasks.add_parser(
        "perplexity", help="mean next-token loss and perplexity of held-out text (.txt, .jsonl, a folder)",
        description="Read --data as `npllama train` reads --val-data and encode it (a .txt file: one text with "
                    "BOS, or its documents as --doc-separator says; a .jsonl file or a folder: its documents; read "
                    "and encoded whole, in memory), cut it into "
                    "consecutive windows of --context tokens that do not overlap, and report the tokens "
                    "predicted, the mean cross-entropy (nats) and the perplexity exp(mean loss). Every token "
                    "after the first is predicted once, from the tokens before it in its window: the first "
                    "tokens of a window see little context, so a smaller --context usually gives a higher perplexity "
                    "(within the length the model was trained on: beyond it, a far higher one).",
        formatter_class=HelpFormatter)
    ppl.add_argument("--model", default=None, help="a run folder or a Hugging Face LLaMA folder with its "
                     "tokenizer (default: the latest `npllama train` run)")
    add_adapter_option(ppl, "--model")
    ppl.add_argument("--data", required=True, help=DATA_HELP)
    ppl.add_argument("--context", type=int, default=None, help="tokens per window (default: the run's --seq-len, "
                     "the positions its model was trained on, when --model is an `npllama train` run, else the "
                     "model's max_position_embeddings)")
    ppl.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ppl.add_argument("--doc-separator", default=None, metavar="blank-line|line|marker:TEXT|whole-file",
                     help="cut a .txt file into documents as `npllama train --doc-separator` does and score "
                          "them as its validation loss does (<s> document </s> after one another), so held-out "
                          "text written like the training text gets the loss training reports (at the run's "
                          "--seq-len, --context's default for a run, the same number) (default: the run's own "
                          "--doc-separator when --model is an `npllama train` run, else none: a .txt file is one "
                          "text, its blank lines included)")
    _run_options(ppl)
    ppl.set_defaults(run=run_perplexity)

    mlm = tasks.add_parser(
        "mlm", help="masked-LM loss and accuracy of held-out text, for a masked-LM model",
        description="For a masked-LM model (`npllama train --objective mlm`, `npllama finetune sop`), which "
                    "perplexity does not score: read and encode --data as perplexity does, cut it into windows of "
                    "--context tokens, --batch-size at a time, mask 15% of each window's ordinary tokens as "
                    "training does (80% the mask token, <unk>, 10% a random token, 10% kept; the draws from --seed alone, so "
                    "every run gives the same numbers), and report the masked tokens, the mean cross-entropy over "
                    "them (nats) and the share the model fills in right (its most likely token). With the run's "
                    "--seq-len (as --context), --batch-size, --seed and --doc-separator -- the defaults, read from "
                    "its train_config.json, when --model is an `npllama train --objective mlm` run -- its held-out "
                    "text gives the validation loss training logged (all of it scored: --eval-batches 0).",
        formatter_class=HelpFormatter)
    mlm.add_argument("--model", default=None, help="a masked-LM run folder or Hugging Face folder with its "
                     "tokenizer (default: the latest `npllama train` run)")
    mlm.add_argument("--data", required=True, help=DATA_HELP)
    mlm.add_argument("--context", type=int, default=None, help="tokens per window (default: the run's --seq-len "
                     "when --model is an `npllama train` run, else the model's max_position_embeddings)")
    mlm.add_argument("--batch-size", type=int, default=None, help="windows per forward pass; the masks drawn "
                     "depend on it, as in training (default: the run's --batch-size, else 8)")
    mlm.add_argument("--seed", type=int, default=None, help="seed of the masks (default: the run's --seed, else 0)")
    mlm.add_argument("--doc-separator", default=None, metavar="blank-line|line|marker:TEXT|whole-file",
                     help="as for perplexity (default: the run's own when --model is an `npllama train` run, "
                          "else none)")
    _run_options(mlm)
    mlm.set_defaults(run=run_mlm)

    sop = tasks.add_parser(
        "sop", help="sentence-order (or next-sentence) accuracy of a `finetune sop` model on held-out text",
        description="For a model `npllama finetune sop --out DIR` saved (its sop_head.safetensors beside it): read "
                    "the documents of --data as finetune sop reads its --data, cut a pair A, B from each document "
                    "of two or more sentences, change half of them (--pairs sop: swapped; nsp: B from another "
                    "document), mask 15% of their tokens, and report the share of pairs the head answers right "
                    "(beside always answering the commoner label), its loss (nats per pair) and the masked-LM "
                    "loss (nats per masked token). The pairs and masks are drawn from --seed alone, by the code "
                    "the run's validation uses, so with the run's settings -- the defaults, read from the folder's "
                    "sop_config.json -- its held-out documents give the validation numbers it logged.",
        formatter_class=HelpFormatter)
    sop.add_argument("--model", required=True, help="a folder `npllama finetune sop --out` saved")
    sop.add_argument("--data", required=True, help="held-out documents: a .txt file (cut at --doc-separator), "
                     "a .jsonl file with a \"text\" field, or a folder of them")
    sop.add_argument("--pairs", default=None, choices=["sop", "nsp"], help="the question the head was trained "
                     "on: sop (are A and B swapped?) or nsp (does B come from another document?) (default: the "
                     "run's, from its sop_config.json or finetune.json)")
    sop.add_argument("--max-len", type=int, default=None, help="tokens per pair, at most the model's context "
                     "(default: the run's --max-len from its sop_config.json, else the model's context)")
    sop.add_argument("--batch-size", type=int, default=None, help="pairs per forward pass; the masks drawn "
                     "depend on it, as in training (default: the run's --batch-size, else 16)")
    sop.add_argument("--seed", type=int, default=None, help="seed of the pairs (where A and B are cut, which are "
                     "changed) and the masks (default: the run's --seed, else 0)")
    sop.add_argument("--doc-separator", default=None, metavar="blank-line|line|marker:TEXT|whole-file",
                     help="how a .txt file is cut into documents (default: the run's --doc-separator, else "
                          "blank-line)")
    _run_options(sop)
    sop.set_defaults(run=run_sop)
    p.set_defaults(run=print_help_instead(p))


DATA_HELP = ("held-out text, read as `npllama train` reads --val-data: a UTF-8 .txt file (cut at "
             "--doc-separator, else one text), a .jsonl file with a \"text\" field (a document a line), or a "
             "folder of them (its .txt files cut at --doc-separator, else each one document)")


def _run_options(p) -> None:
    """--json, the run options and --no-progress, which every task takes."""
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_run_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_batch_size_and_separator(args) -> None:
    """--batch-size and --doc-separator, checked before the model is loaded (cli names the flag)."""
    from ..data import check_doc_separator
    from . import UsageError

    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.doc_separator is not None:
        check_doc_separator(args.doc_separator)


def _held_out(args, least_context: int):
    """--data read as `npllama train` reads --val-data (perplexity.read_held_out), once --batch-size,
    --context and --doc-separator are checked, before the model is loaded: a .txt file's text (cut
    later, at the --doc-separator given or the run's), the documents of a .jsonl file or of a folder
    with no .txt file (which no separator cuts) -- or None for a folder with .txt files, cut as they
    are read (_read_held_out, once the separator is known)."""
    from pathlib import Path

    from . import UsageError

    _check_batch_size_and_separator(args)
    if args.context is not None and args.context < least_context:
        raise UsageError(f"--context must be at least {least_context}, got {args.context}")
    if Path(args.data).expanduser().is_dir() and _holds_a_txt_file(args):
        return None
    text = _read_held_out(args, None)
    if isinstance(text, str) and not text.strip():
        raise UsageError(f"--data {args.data} holds no text ({'empty' if not text else 'only whitespace'}): "
                         f"there is nothing to predict; give a file with at least a sentence")
    return text


def _holds_a_txt_file(args) -> bool:
    """Whether the folder --data holds a .txt file (which --doc-separator cuts), as training lists
    its files (data.corpus_files); what it cannot read is refused now, before the model is loaded."""
    import warnings
    from pathlib import Path

    from ..data import corpus_files
    from . import UsageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # what it leaves out is said once, when it is read
            files = corpus_files(Path(args.data).expanduser())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read --data {args.data}: {error}") from None
    return any(file.suffix.lower() == ".txt" for file in files)


def _is_cut(held_out) -> bool:
    """Whether --data as _held_out gave it is cut at a --doc-separator: a .txt file's text, a folder
    with .txt files (None) -- not a Corpus of .jsonl records, which the run's settings, then not read,
    would not change."""
    return held_out is None or isinstance(held_out, str)


def _read_held_out(args, doc_separator):
    """perplexity.read_held_out of --data, what it refuses a UsageError naming --data."""
    from ..perplexity import read_held_out
    from . import UsageError

    try:
        return read_held_out(args.data, doc_separator, progress=False if args.no_progress else None)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read --data {args.data}: {error}") from None


def _text_and_separator(held_out, args, doc_separator):
    """(what perplexity/masked_lm_score score, the doc_separator that cuts it): --data's text cut at
    doc_separator, or its documents (a folder read now, its .txt files cut at doc_separator)."""
    if held_out is None:
        held_out = _read_held_out(args, doc_separator)
    return (held_out, doc_separator) if isinstance(held_out, str) else (held_out, None)


def _check_context(context: int | None, model) -> None:
    from . import UsageError

    if context is not None and context > model.config.max_position_embeddings:
        raise UsageError(f"--context {context} is longer than the model's context "
                         f"({model.config.max_position_embeddings} tokens)")


def _given_else_the_runs(given: dict, read_run, defaults: dict) -> tuple[dict, list[str]]:
    """(each setting: its flag's value in `given`, else the run's, else its value in `defaults`
    (None if none), the names of those taken from the run).  read_run() gives the run's settings by
    these names; it is asked only when a flag was left out (a run's settings that cannot be read
    are then an error, which giving every flag avoids)."""
    from ..io.errors import CheckpointError
    from . import UsageError

    left_out = [name for name, value in given.items() if value is None]
    try:
        run = read_run() if left_out else {}
    except CheckpointError as error:   # a damaged or edited settings file: no number from settings guessed
        raise UsageError(f"{error}; it gives {_flags(left_out)} when left out: give "
                         f"{'it' if len(left_out) == 1 else 'them'}") from None
    settings, from_run = {}, []
    for name, value in given.items():
        if value is None and name in run:
            value = run[name]
            from_run.append(name)
        elif value is None:
            value = defaults.get(name)
        settings[name] = value
    return settings, from_run


def _settings_of_the_run(model_dir, job: str) -> dict:
    """The settings, validated as its flags are (resuming.saved_settings), of the run that saved
    `model_dir` -- an `npllama train` run (job "train"), whose model is its model/ or checkpoint/model/,
    or a `finetune sop` run (job "sop"), whose model is the run folder itself -- or {} when no such
    run saved it."""
    from pathlib import Path

    from ..resuming import saved_settings

    model_dir = Path(model_dir)
    if job == "train":
        from ..io.train_state import STATE_FILE
        from ..train import CONFIG_FILE, TrainConfig

        if model_dir.name != "model":
            return {}
        run_dir = model_dir.parent
        if (run_dir / STATE_FILE).is_file():   # a run's checkpoint (or its backup)
            run_dir = run_dir.parent
        config_class, file_name = TrainConfig, CONFIG_FILE
    else:
        from ..finetune_run import settings_file
        from ..finetune_sop import SentenceOrderConfig

        run_dir, config_class, file_name = model_dir, SentenceOrderConfig, settings_file(job)
    return saved_settings(run_dir, config_class, file_name) if (run_dir / file_name).is_file() else {}


def _flags(names: list[str]) -> str:
    """'--context, --batch-size and --seed' for the settings `names`."""
    flags = ["--" + name.replace("_", "-") for name in names]
    return flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"


def _trained(names: list[str]) -> str:
    """'; --context and --seed as the run was trained' for the settings `names` taken from the run."""
    return f"; {_flags(names)} as the run was trained" if names else ""


def _windows_read(result, held_out, doc_separator, settings, from_run) -> str:
    """'12 documents cut at blank lines, as the run was trained; 30 windows of up to 64 tokens; --context
    as the run was trained' -- what eval perplexity and eval mlm scored, for their result lines."""
    documents = _documents_cut(result.documents, held_out, doc_separator, "doc_separator" in from_run)
    return (f"{documents}{_counted(result.windows, 'window')} of up to {settings['context']} tokens"
            f"{_trained([n for n in from_run if n != 'doc_separator'])}")


def _documents_cut(documents: int | None, held_out, doc_separator, as_trained: bool) -> str:
    """'12 documents cut at blank lines, as the run was trained; ' -- how --data was read, for the
    result line ('' for a text scored whole)."""
    from ..data import Corpus

    if documents is None:
        return ""
    counted = _counted(documents, "document")
    trained = ", as the run was trained" if as_trained else ""
    if not isinstance(held_out, Corpus):   # a .txt file's text, cut here
        return f"{counted} {_cut(doc_separator)}{trained}; "
    files, texts = held_out.files, [f for f in held_out.files if f.suffix.lower() == ".txt"]
    if not held_out.path.is_dir():
        if texts:
            return f"{counted} {_cut(held_out.doc_separator)}{trained}; "
        return f"{counted}, a JSON line{' each' if documents != 1 else ''}; "
    the_txt_files = "the .txt file" if len(texts) == 1 else "the .txt files"
    cut = ("" if not texts else
           f", {'each .txt file' if len(texts) != 1 else the_txt_files} one document{trained}"
           if held_out.doc_separator == "whole-file" else f", {the_txt_files} {_cut(held_out.doc_separator)}{trained}")
    return f"{counted} from {_counted(len(files), 'file')}{cut}; "


def _counted(count: int, noun: str) -> str:
    """'1 document', '1,200 documents'."""
    return f"{count:,} {noun}{'s' if count != 1 else ''}"


def run_mlm(args) -> int:
    import json

    import numpy as np

    from ..backend import get_backend, use_backend
    from ..loss_units import loss_unit
    from ..perplexity import NoTokenMaskedError, masked_lm_score
    from ..runs import load_model_and_tokenizer, require_a_language_model
    from . import UsageError

    held_out = _held_out(args, least_context=1)
    require_a_language_model(args.model, "--model", "the masked-LM loss", causal=False)   # not a classifier
    model, tokenizer, model_dir = load_model_and_tokenizer(args.model, dtype=getattr(np, args.dtype))
    if model.objective != "mlm":
        # named as given (a run folder, not the run/model folder it resolved to)
        shown = f"the latest run ({str(model_dir)!r})" if args.model is None else repr(args.model)
        raise UsageError(f"--model {shown} is a causal model (next-token prediction): `npllama eval mlm` scores a "
                         f"masked-LM model; use `npllama eval perplexity"
                         f"{'' if args.model is None else ' --model ' + args.model} --data {args.data}`")
    settings, from_run = _train_run_settings(args, model, model_dir, _is_cut(held_out),
                                             ("context", "batch_size", "seed"), {"batch_size": 8, "seed": 0})
    _check_context(settings["context"], model)
    text, doc_separator = _text_and_separator(held_out, args, settings["doc_separator"])
    with use_backend(args.backend or get_backend()):
        try:
            result = masked_lm_score(model, tokenizer, text, context=settings["context"],
                                     batch_size=settings["batch_size"], seed=settings["seed"],
                                     progress=not args.no_progress, doc_separator=doc_separator,
                                     source=args.data)
        except NoTokenMaskedError as error:   # the seed named as the command takes it: --seed, or the run's
            whose = ", the run's" if "seed" in from_run else ""
            raise UsageError(f"--data {args.data}: {error.worded(f'--seed {error.seed}{whose}', '--seed')}") from None
        except ValueError as error:   # a file of only separators
            raise UsageError(f"--data {args.data}: {error}") from None
    if args.json:
        print(json.dumps({"model": str(model_dir), "data": args.data, "masked_tokens": result.masked_tokens,
                          "mean_loss": result.mean_loss, "accuracy": result.accuracy, "windows": result.windows,
                          "documents": result.documents, "units": {"mean_loss": loss_unit("mlm")}, **settings,
                          "settings_of_the_run": from_run}))
        return 0
    print(f"{_model_named(args.model, model_dir)} on {args.data}: {_counted(result.masked_tokens, 'masked token')} "
          f"(--seed {settings['seed']}), mean loss {result.mean_loss:.4f} {loss_unit('mlm')}, accuracy "
          f"{result.accuracy:.3f} ({_windows_read(result, text, doc_separator, settings, from_run)})")
    return 0


def _train_run_settings(args, model, model_dir, cut: bool, names=("context",),
                        defaults=None) -> tuple[dict, list[str]]:
    """(the settings `names` and --doc-separator as `eval perplexity` / `eval mlm` run them, the names
    of those taken from the run): each given flag, else the `npllama train` run's (its --seq-len as
    --context: the positions its model was trained on, where max_position_embeddings may be far
    longer), else `defaults` (--context: the model's context).  cut: whether --data is cut at a
    separator (_is_cut); if not, doc_separator is None, not asked of the run."""
    given = {**{name: getattr(args, name) for name in names},
             **({"doc_separator": args.doc_separator} if cut else {})}
    settings, from_run = _given_else_the_runs(given, lambda: _settings_of_the_train_run(model_dir),
                                              {"context": model.config.max_position_embeddings, **(defaults or {})})
    return {"doc_separator": None, **settings}, from_run


def _settings_of_the_train_run(model_dir) -> dict:
    """The `npllama train` run's settings that eval's flags name (its --seq-len as --context), or {}."""
    run = _settings_of_the_run(model_dir, "train")
    return {name: run[setting] for name, setting in (("context", "seq_len"), ("batch_size", "batch_size"),
                                                     ("seed", "seed"), ("doc_separator", "doc_separator"))
            if setting in run}


def _sop_settings(args, model_dir) -> tuple[dict, list[str]]:
    """(--pairs, --max-len, --batch-size, --seed and --doc-separator as `eval sop` runs them, the names
    of those taken from the run): each given flag, else the run's setting (its sop_config.json;
    --pairs also from finetune.json), else the default."""
    from ..finetune import read_info
    from ..finetune_run import settings_file
    from . import UsageError

    def the_runs() -> dict:
        run = _settings_of_the_run(model_dir, "sop")
        if "pairs" not in run and (pairs := read_info(model_dir).get("pairs")) in ("sop", "nsp"):
            run["pairs"] = pairs
        return run

    given = {"pairs": args.pairs, "max_len": args.max_len, "batch_size": args.batch_size, "seed": args.seed,
             "doc_separator": args.doc_separator}
    settings, from_run = _given_else_the_runs(given, the_runs, {"batch_size": 16, "seed": 0,
                                                                "doc_separator": "blank-line"})
    if settings["pairs"] is None:   # the head answers one question: which one is not guessed
        raise UsageError(f"--model {str(model_dir)!r} does not say which question its head was trained on (no "
                         f"{settings_file('sop')}, no \"pairs\" in its finetune.json): give --pairs sop or nsp")
    return settings, from_run


def run_sop(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..backend import get_backend, use_backend
    from ..data import load_texts
    from ..finetune_sop import load_sentence_order, sentence_order_score
    from ..loss_units import PAIR_LOSS_UNIT, loss_unit
    from . import UsageError

    if args.max_len is not None and args.max_len < 5:
        raise UsageError(f"--max-len must be at least 5 for a pair (<s> A </s> B </s>), got {args.max_len}")
    _check_batch_size_and_separator(args)
    model_dir = Path(args.model).expanduser()
    model, head, tokenizer = load_sentence_order(model_dir, dtype=getattr(np, args.dtype))   # its head, first
    settings, from_run = _sop_settings(args, model_dir)
    try:
        texts = load_texts(args.data, settings["doc_separator"])
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read --data {args.data}: {error}") from None
    with use_backend(args.backend or get_backend()):
        try:
            result = sentence_order_score(model, head, tokenizer, texts, pairs=settings["pairs"],
                                          max_len=settings["max_len"], batch_size=settings["batch_size"],
                                          seed=settings["seed"], progress=not args.no_progress)
        except ValueError as error:   # no document of two sentences; nsp with one document
            raise UsageError(f"--data {args.data}: {error}") from None
    max_len = min(settings["max_len"] or model.config.max_position_embeddings, model.config.max_position_embeddings)
    if args.json:
        nan_as_null = lambda v: None if isinstance(v, float) and np.isnan(v) else v
        print(json.dumps({"model": str(model_dir), "data": args.data, "task": settings["pairs"],
                          **{k: nan_as_null(v) for k, v in result.items()},
                          "units": {"sop": PAIR_LOSS_UNIT, "mlm": loss_unit("mlm")}, "max_len": max_len,
                          "batch_size": settings["batch_size"], "seed": settings["seed"],
                          "doc_separator": settings["doc_separator"], "settings_of_the_run": from_run}))
        return 0
    task = settings["pairs"].upper()
    skipped = (f", {result['skipped_documents']:,} skipped: one sentence only" if result["skipped_documents"] else "")
    mlm = ("no token masked" if np.isnan(result["mlm"]) else
           f"masked-LM loss {result['mlm']:.4f} {loss_unit('mlm')} ({result['masked_tokens']:,} masked)")
    flags = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in
                     (("pairs", settings["pairs"]), ("max_len", max_len), ("batch_size", settings["batch_size"]),
                      ("seed", settings["seed"]), ("doc_separator", settings["doc_separator"])))
    trained = ", as the run was trained" if len(from_run) == len(settings) else _trained(from_run)
    print(f"{_model_named(args.model, model_dir)} on {args.data}: {_counted(result['pairs'], task + ' pair')} from "
          f"{_counted(result['documents'], 'document')}{skipped}: accuracy "
          f"{result['sop_accuracy']:.3f} (always the commoner label: {result['majority_label_accuracy']:.3f}), "
          f"{task} loss {result['sop']:.4f} {PAIR_LOSS_UNIT}, {mlm} ({flags}{trained})")
    return 0


def run_perplexity(args) -> int:
    import json

    from ..backend import get_backend, use_backend
    from ..loss_units import loss_unit
    from ..perplexity import perplexity
    from . import UsageError, load_run_model

    held_out = _held_out(args, least_context=2)
    model, tokenizer, model_dir = load_run_model(
        args.model, args.adapter, args.dtype, "--model", "perplexity (next-token prediction)",
        for_masked_lm=f"its masked-LM loss and accuracy are `npllama eval mlm"
                      f"{'' if args.model is None else ' --model ' + args.model} --data {args.data}`")
    # --batch-size is not the run's: it changes no window, so no number
    settings, from_run = _train_run_settings(args, model, model_dir, _is_cut(held_out))
    _check_context(settings["context"], model)
    text, doc_separator = _text_and_separator(held_out, args, settings["doc_separator"])
    with use_backend(args.backend or get_backend()):
        try:
            result = perplexity(model, tokenizer, text, context=settings["context"], batch_size=args.batch_size,
                                progress=not args.no_progress, doc_separator=doc_separator,
                                source=args.data)
        except ValueError as error:   # a file of only separators holds no document
            raise UsageError(f"--data {args.data}: {error}") from None
    if args.json:
        print(json.dumps({"model": str(model_dir), "adapter": args.adapter, "data": args.data,
                          "tokens": result.tokens, "mean_loss": result.mean_loss, "perplexity": result.perplexity,
                          "windows": result.windows, "documents": result.documents,
                          "units": {"mean_loss": loss_unit("causal")}, **settings, "batch_size": args.batch_size,
                          "settings_of_the_run": from_run}))
        return 0
    print(f"{_model_named(args.model, model_dir, args.adapter)} on {args.data}: "
          f"{_counted(result.tokens, 'token')}, mean loss {result.mean_loss:.4f} {loss_unit('causal')}, "
          f"perplexity {result.perplexity:.3f} ({_windows_read(result, text, doc_separator, settings, from_run)})")
    return 0


def _model_named(given, model_dir, adapter=None) -> str:
    """The model for a result line, named as the refusals name it: --model as given, with the folder
    it resolved to where that is another ('runs/x (its model/)'); left out, the folder loaded (the
    latest run's, or the base --adapter names); ' + ADAPTER' with one."""
    from pathlib import Path

    named = str(model_dir)
    if given is not None:
        try:
            inside = Path(model_dir).relative_to(Path(given).expanduser())
        except ValueError:   # not inside the folder given (resolve_model_dir looks nowhere else)
            named = f"{given} ({model_dir})"
        else:
            named = given if inside == Path() else f"{given} (its {inside.as_posix()}/)"
    return named + (f" + {adapter}" if adapter else "")


def _cut(doc_separator: str) -> str:
    """How the documents were cut, for the result line."""
    return {"blank-line": "cut at blank lines", "line": "cut at every line",
            "whole-file": "(the file whole)"}.get(doc_separator, f"cut at {doc_separator[len('marker:'):]!r}")


def run_choice(args) -> int:
    import json

    from ..backend import get_backend, use_backend
    from ..datasets import load_choice_items, make_choice_items
    from ..finetune import evaluate_choice
    from . import UsageError, load_run_model

    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    if args.seed is not None and args.data is not None:
        raise UsageError(f"--seed picks the built-in items, used only without --data; --data {args.data} "
                         f"gives the items")
    model, tokenizer, model_dir = load_run_model(args.model, args.adapter, args.dtype, "--model",
                                                 "multiple choice by next-token log-likelihood")
    seed = None if args.data is not None else 0 if args.seed is None else args.seed   # of the built-in items
    items = make_choice_items(args.limit, seed=seed) if args.data is None else load_choice_items(args.data)
    items = items[:args.limit]
    template = args.template
    if template == "chat":
        from ..chat import ChatTemplate, ChatTemplateError
        from .generate import note_builtin_template, say_spelt_markers

        try:
            template = ChatTemplate.for_folder(model_dir, tokenizer, adapter=args.adapter)
        except ChatTemplateError as error:   # eval choice picks no other chat template: plain asks without one
            raise ChatTemplateError(error.problem, error.where, "--template plain asks the questions without a "
                                    "chat template (or fix the template in that file)") from None
        note_builtin_template(template, args.adapter)
        asked = [{"role": "user", "content": ""}]
        say_spelt_markers(template, tokenizer, model.config.max_position_embeddings, lambda: f"the template's own "
                          f"text takes {template.own_tokens(tokenizer, asked)} tokens of each question's prompt")
    with use_backend(args.backend or get_backend()):
        result = evaluate_choice(model, tokenizer, items, template, progress=not args.no_progress)
    if args.json:   # no loss, so no units: the accuracies and chance are shares of the items
        print(json.dumps({"model": str(model_dir), "adapter": args.adapter, "data": args.data, "items": result["n"],
                          "accuracy": result["accuracy"], "accuracy_per_token": result["accuracy_per_token"],
                          "chance": result["chance"], "cut": result["cut"], "template": args.template,
                          "limit": args.limit, "seed": seed}))
    else:
        items_ = "items" if result["n"] != 1 else "item"
        source = f"built-in story-continuation {items_}" if args.data is None else f"{items_} of {args.data}"
        print(f"{_model_named(args.model, model_dir, args.adapter)} on {result['n']} {source}: "
              f"accuracy {result['accuracy']:.3f}, per-token accuracy {result['accuracy_per_token']:.3f} "
              f"(chance {result['chance']:.3f})")
    if result["cut"]:   # a note, on stderr with --json too
        which = "the item" if result["n"] == 1 else f"{result['cut']} of the {result['n']} items"
        print(f"{which} did not fit the model's context ({model.config.max_position_embeddings} tokens) with a "
              f"choice: the beginning of {'its' if result['cut'] == 1 else 'their'} passage or question was left "
              f"out (the end, nearest the answer, kept)", file=sys.stderr)
    return 0
