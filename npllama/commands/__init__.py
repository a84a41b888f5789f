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
