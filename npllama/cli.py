"""`npllama <command>`: a thin argparse front over the jobs.

Each command lives in npllama/commands/<name>.py with `register(subparsers)`, which adds its parser
and sets `run=<function(args) -> int | None>`.  Command modules import the heavy parts (numba,
the model) inside `run`, so `npllama --help` stays instant.

User mistakes (a missing file, a bad value) end with exit status 2 and one readable line; set
NPLLAMA_TRACEBACK=1 to see the full traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .commands import UsageError

# name -> module; the order is the order of `npllama --help`.
COMMANDS = {
    "train": "npllama.commands.train",
    "generate": "npllama.commands.generate",
    "tokenizer": "npllama.commands.tokenizer",
    "finetune": "npllama.commands.finetune",
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
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # argparse would report these as the top-level parser's; name the command instead
        prog = " ".join(filter(None, ["npllama", getattr(args, "command", None)]))
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)\n")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        status = args.run(args)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGHUP where a command handles them
        print(f"npllama {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", 2)  # 130 for Ctrl-C (SIGINT is 2)
    except USER_ERRORS as error:
        if os.environ.get("NPLLAMA_TRACEBACK"):
            raise
        print(f"npllama {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if os.environ.get("NPLLAMA_TRACEBACK"):
            raise
        print(f"npllama {args.command}: error: {error}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
