"""The `npllama` command's subcommands, one module each (see npllama/cli.py)."""


class UsageError(Exception):
    """A mistake in how a command was called: printed as one line, exit status 2."""


import argparse as _argparse


class HelpFormatter(_argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def add_run_options(p) -> None:
    """--dtype and --backend, as every command that runs a model takes them."""
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="the precision the model runs in")
    p.add_argument("--backend", default=None, choices=["numpy", "numba"],
                   help="op implementations (default: $NPLLAMA_BACKEND or numba)")


def add_adapter_option(p, model_flag: str) -> None:
    """--adapter: a causal-LM LoRA adapter folder applied to the model named by `model_flag`."""
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder (PEFT layout, e.g. from "
                   f"`npllama finetune sft --lora --out DIR`) applied to {model_flag} (without {model_flag}: "
                   f"to the base the adapter names, its adapter_config.json's base_model_name_or_path)")


def load_run_model(path, adapter, dtype: str, flag: str = "--model", job: str = "generating text", **for_masked_lm):
    """(model, tokenizer, model_dir) for --model/--base `path` (None: the base the adapter names,
    without one the latest run), with the LoRA `adapter` folder applied when one is given.  Every
    caller predicts tokens (`job`), so a masked-LM model (`train --objective mlm`) is refused
    before it is loaded (for_masked_lm="...": what the refusal says to do instead)."""
    import numpy as np

    from .. import runs
    from ..runs import load_model_and_tokenizer

    path = model_or_adapter_base(path, adapter, flag)
    runs.require_a_language_model(path, flag, job, **for_masked_lm)     # not a classifier, not a masked-LM model
    model, tokenizer, model_dir = load_model_and_tokenizer(path, dtype=getattr(np, dtype))
    note_a_checkpoint_loaded(path, model_dir)
    if adapter is not None:
        from ..lora import load_adapter

        # under the adapter run's reader lock (a fine-tune may be replacing it); a classification
        # adapter is refused: every command loading through here predicts tokens
        load_adapter(model, adapter, task="CAUSAL_LM")
    return model, tokenizer, model_dir


def note_a_checkpoint_loaded(given, model_dir) -> None:
    """Say on stderr when the run `given` (None: the latest run) had no model/ yet, so that its
    checkpoint's model was loaded: text from a run stopped at step 248 of 1000 would otherwise read
    as the finished model's.  A checkpoint named as --model needs no word."""
    import sys
    from pathlib import Path

    from ..io.reading import read_json
    from ..io.train_state import STATE_FILE
    from ..resuming import resume_command

    model_dir = Path(model_dir)
    checkpoint = model_dir.parent
    if model_dir.name != "model" or not (checkpoint / STATE_FILE).is_file():
        return
    if given is not None and Path(given).expanduser().resolve() in (model_dir.resolve(), checkpoint.resolve()):
        return
    run = checkpoint.parent
    try:   # a writer may have replaced the checkpoint since it was loaded: then no step is named
        step = read_json(checkpoint / STATE_FILE, expect=dict)["step"]
        saved = f", saved at step {int(step)}"
    except (OSError, ValueError, KeyError, TypeError):
        saved = ""
    print(f"[{run} has no model/ yet: loaded its {checkpoint.name}/{model_dir.name}/{saved} (the run writes "
          f"model/ when it finishes; `{resume_command('train', run)}` continues a stopped one)]",
          file=sys.stderr, flush=True)


def model_or_adapter_base(model, adapter, flag: str = "--model"):
    """`flag`'s model, or with --adapter alone the base the adapter names
    (npllama.lora.model_or_adapter_base), which a line on stderr names: not the latest run."""
    import sys

    from .. import lora

    return lora.model_or_adapter_base(model, adapter, flag, say=lambda line: print(line, file=sys.stderr))


def defaults_only_when_given(parser, names) -> None:
    """Leave options the user did not give out of the parsed namespace, so a command can tell them
    apart: a new run fills them from its settings class's defaults, a --resume from the run's
    saved settings.  The help still shows each default."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if action.dest not in names:
            continue
        shown = action.default
        if shown is not None and shown is not False and "default" not in (action.help or ""):
            action.help = f"{action.help or ''} (default: {shown})".strip()
        action.default = _argparse.SUPPRESS


def refuse_ignored_flags(on_the_command_line, settings, rules) -> None:
    """A UsageError for a flag the run would ignore (a built-in set's size beside --data, say).
    rules: (setting name, used(settings) -> bool, what the flag does); the flag is named as typed."""
    for name, used, what in rules:
        if name in on_the_command_line and not used(settings):
            raise UsageError(f"--{name.replace('_', '-')} {what}: as given, it would be ignored")


def reads_text_files(settings) -> bool:
    """Whether --data (or --val-data, when the command has it) may hold .txt files, which
    --doc-separator cuts: a .txt file or a folder (whatever it holds), not the built-in stories
    nor a .jsonl file."""
    from pathlib import Path

    return any(path is not None and (not path.lower().endswith(".jsonl") or Path(path).expanduser().is_dir())
               for path in (settings.data, getattr(settings, "val_data", None)))


def doc_separator_rule(text_flags: str = "--data"):
    """refuse_ignored_flags' rule for --doc-separator in a command that reads `text_flags` (e.g.
    "--data or --val-data") as `npllama train` reads --data."""
    return ("doc_separator", reads_text_files,
            f"says how .txt files are cut into documents, so it needs a {text_flags} that is not a .jsonl file "
            f"(each of whose records is a document as it stands)")


def prepare_training_process() -> None:
    """A training process reuses the same big blocks every step: keeping freed memory in the
    heap saves 10-20% of a step in page faults (npllama/kernels/memory.py, benchmarks/README.md).
    Commands that train call this once; the library never changes the allocator on its own."""
    from ..kernels.memory import keep_freed_memory

    keep_freed_memory()


def print_help_instead(parser):
    """The run function of a command given without its subcommand: its help, exit status 2."""
    return lambda args: parser.print_help() or 2
