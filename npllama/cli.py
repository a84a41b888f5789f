"""`npllama <command>`: a thin argparse front over the jobs.

Each command lives in npllama/commands/<name>.py with `register(subparsers)`, which adds its parser
and sets `run=<function(args) -> int | None>`.  Command modules import the heavy parts (numba,
the model) inside `run`, so `npllama --help` stays instant.

User mistakes (a missing file, a bad value) end with exit status 2 and one readable line; set
NPLLAMA_TRACEBACK=1 to see the full traceback instead.  A mistyped command or flag gets a
"did you mean ...?".  Output into a pipe closed early (`npllama generate | head`) ends quietly.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings

from .commands import UsageError

# name -> module; the order is the order of `npllama --help`.
COMMANDS = {
    "train": "npllama.commands.train",
    "generate": "npllama.commands.generate",
    "chat": "npllama.commands.chat",
    "tokenizer": "npllama.commands.tokenizer",
    "finetune": "npllama.commands.finetune",
    "classify": "npllama.commands.classify",
    "eval": "npllama.commands.eval",
    "debug": "npllama.commands.debug",
    "exercise": "npllama.commands.exercise",
    "explain": "npllama.commands.explain",
    "viz": "npllama.commands.viz",
    "convert": "npllama.commands.convert",
    "export": "npllama.commands.export",
}

USER_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError,
               RecursionError, OverflowError)  # absurd input (JSON nested 100k deep, 10**400)
# Any other OSError (a full disk, a name too long, a read-only folder) is the machine's answer,
# not a bug: one line too, with exit status 1 (the command failed, it was not misused).


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line on stderr (status 2), like every other
    user mistake, instead of the whole usage block.  Subcommand parsers inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{_suggestion(message, self)} (see `{self.prog} --help`)\n")


# tasks a user looks for under a command that does them under another name
_MLM = "masked-LM training is `npllama train --objective mlm` (--init-from DIR to start from a model)"
_DONE_ELSEWHERE = {
    ("npllama finetune", "mlm"): _MLM, ("npllama finetune", "masked-lm"): _MLM,
    ("npllama finetune", "nsp"): "next-sentence training is `npllama finetune sop --pairs nsp`",
    ("npllama eval", "classify"): "a classifier is scored by `npllama classify --model DIR --data FILE`",
}


def _suggestion(message: str, parser: argparse.ArgumentParser) -> str:
    """"; did you mean 'generate'?" for argparse's invalid-choice message, else ""."""
    import re

    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not match:
        return ""
    elsewhere = _DONE_ELSEWHERE.get((parser.prog, match.group(1).lower()))
    if elsewhere:
        return f"; {elsewhere}"
    choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
    close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


# the model a command runs is --model; the one a fine-tune starts from is --base
_FLAG_SYNONYMS = {"--model": "--base", "--base": "--model"}


def _flag_suggestions(parser: argparse.ArgumentParser, argv: list[str], extras: list[str]) -> str:
    """"; did you mean --temperature?" for mistyped flags, looking in the (sub)command's parser."""
    parser = _innermost_parser(parser, argv)
    known = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    flags = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")]
    hints = []
    for flag in flags:
        # far apart as strings (difflib offers --help for --model), but the same thing to a user
        synonym = _FLAG_SYNONYMS.get(flag)
        close = [synonym] if synonym in known else difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{flag} -> {close[0]}" if len(flags) > 1 else close[0])
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def _innermost_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand named in argv (npllama eval perplexity -> its parser)."""
    for token in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers and token in subparsers[0].choices:
            parser = subparsers[0].choices[token]
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="npllama",
        description="LLaMA in NumPy with hand-written backward passes: train a tokenizer and a small "
                    "model, generate text, fine-tune, and look inside.",
        epilog="Run `npllama <command> --help` for a command's options.  With no arguments, "
               "`npllama train` trains the tiny preset on the built-in corpus.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"npllama {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:   # every command module is imported here: a Ctrl-C may land in an import
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
    except KeyboardInterrupt:
        print("npllama: interrupted before the command started; nothing was done", file=sys.stderr)
        return 130

    if extras:  # argparse would report these as the top-level parser's; name the command instead
        prog = _innermost_parser(parser, argv).prog
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)}"
                       f"{_flag_suggestions(parser, argv, extras)} (see `{prog} --help`)\n")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    if not sys.stderr.isatty():
        # A progress bar redrawn ten times a second floods a log file with carriage returns:
        # outside a terminal tqdm redraws every 30 s instead (TQDM_MININTERVAL overrides).
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    shown_as, warnings.formatwarning = warnings.formatwarning, _one_line_warning(args.command)
    try:
        status = args.run(args)
    except BrokenPipeError:  # the reader went away (`npllama generate | head`): stop quietly
        _discard_stdout()
        return 0
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGHUP where a command handles them
        detail = getattr(interrupt, "detail", "")
        print(f"npllama {args.command}: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", 2)  # 130 for Ctrl-C (SIGINT is 2)
    except USER_ERRORS as error:
        if os.environ.get("NPLLAMA_TRACEBACK"):
            raise
        said = _as_the_user_typed_it(error, _innermost_parser(parser, argv), argv)
        print(f"npllama {args.command}: error: {said}", file=sys.stderr)
        return 2
    except OSError as error:
        if os.environ.get("NPLLAMA_TRACEBACK"):
            raise
        print(f"npllama {args.command}: error: {error}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown_as
    return int(status or 0)


def _one_line_warning(command: str):
    """warnings.formatwarning for the command line: `npllama <command>: warning: ...`, one line
    (not Python's file, line number and source line)."""
    def formatwarning(message, category, filename, lineno, line=None):
        return f"npllama {command}: warning: {message}\n"
    return formatwarning


# Names the library's checks use that are not a flag's dest: LoRA's own argument names
_ALIASES = {"r": "lora_r", "target_modules": "lora_targets", "model_prefix": "out"}   # Tokenizer.train's
# Settings that more than one flag sets: named by the ones typed (a resume that adds the MLP to the
# LoRA targets is refused for what --lora-mlp asked, which the user typed, not --lora-targets)
_SET_BY_FLAGS = {"lora_targets": ("--lora-targets", "--lora-mlp")}
# Settings named as the user names them: a setting before "must", "=", "*", its bare value in
# parentheses ("steps (3)", not "prompt (30 tokens)"), a change "seed (1 -> 4)", or a parenthesis
# and "must" ("r (the LoRA rank) must") -- not prose
# such as "adapter (task_type SEQ_CLS): ..." or "model (LlamaForSequenceClassification), ...")
_SETTING = re.compile(r"(?<![-\w./'\"])([A-Za-z_][A-Za-z0-9_]*)(?![\w'\"/-])(?=(\s*(must\b|\(-?[\d.e+-]+\)|\([^)]*\)\s*must\b|\([^()]*->[^()]*\)|=|\*)))?")

# The text before a word ends inside a call's parentheses: "load_classifier(base, adapter=...)"
_IN_A_CALL = re.compile(r"[A-Za-z_][\w.]*\([^()]*$")


def _as_the_user_typed_it(error: BaseException, parser: argparse.ArgumentParser, argv=()) -> str:
    """A library message with its setting names turned into the command's flags: "batch_size must
    be a positive integer" -> "--batch-size must be ...", "lr (0.002)" -> "--lr (0.002)".  Names with
    an underscore are replaced wherever they stand alone; plain words (steps, lr) only where they are
    clearly the setting (before "must", "(", "=" or "*"); a name followed by its flag, as in
    "num_attention_heads (--heads)", is left, and so is a keyword of Python code the message quotes
    ("npllama.load_classifier(base, adapter=...)").  A damaged file's message (CheckpointError) names the
    file's own fields and is left alone.  argv: the command line, for a setting more than one flag
    sets (_SET_BY_FLAGS), named by the ones it holds."""
    from .io.errors import CheckpointError

    message = str(error)
    if isinstance(error, CheckpointError) or not isinstance(error, (UsageError, ValueError, TypeError)):
        return message
    flags = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            flags.setdefault(action.dest, longs[0])
    given = _flags_typed(parser, argv)
    for setting, setters in _SET_BY_FLAGS.items():
        typed = [flag for flag in setters if flag in given]
        if setting in flags and typed:
            flags[setting] = " / ".join(typed)
    flags.update({alias: flags[dest] for alias, dest in _ALIASES.items() if dest in flags})

    def flag_for(match: re.Match) -> str:
        word, after = match.group(1), match.group(2)
        flag = flags.get(word)
        if flag is None or (("_" not in word or word in _ALIASES) and after is None):
            return word
        if message[match.end(1):].startswith(" (--"):   # already names its flag
            return word
        if _IN_A_CALL.search(message, 0, match.start(1)):   # a keyword of Python code the message quotes
            return word
        return flag

    return _SETTING.sub(flag_for, message)


def _flags_typed(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The parser's long options the command line holds, as argparse reads them: "--flag" or
    "--flag=value", or a prefix of one flag alone ("--lora-m" for --lora-mlp); nothing after "--"."""
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    typed = set()
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        matches = [name] if name in options else [o for o in options if o.startswith(name)]
        if len(matches) == 1:
            typed.add(matches[0])
    return typed


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured by a test)
        pass


if __name__ == "__main__":
    sys.exit(main())
