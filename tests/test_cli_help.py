"""The command line explains itself: help on every flag, defaults said once, "did you mean ...",
progress bars that do not flood logs; packaging: py.typed, reprs."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import npllama
from npllama import LlamaConfig
from npllama.cli import build_parser, main


def all_parsers(parser, path=("npllama",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, path + (name,))


def test_every_flag_has_help():
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, parser in all_parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction))
               and not (action.help or "").strip()]
    assert missing == []


def test_every_default_is_said():
    """A flag with a default (not None or off) says it, whichever formatter its command uses."""
    from npllama.commands import HelpFormatter

    unsaid = [f"{name} {action.option_strings[-1]}" for name, parser in all_parsers(build_parser())
              for action in parser._actions
              if action.option_strings and not any(action.default is off for off in (None, False, argparse.SUPPRESS))
              and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
              and "default" not in (action.help or "") and not issubclass(parser.formatter_class, HelpFormatter)]
    assert unsaid == []


def test_defaults_are_said_once():
    from npllama.hf_train import build_parser as hf_train_parser

    for name, parser in [*all_parsers(build_parser()), ("npllama.hf_train", hf_train_parser())]:
        options = [" ".join(option.split()) for option in parser.format_help().split("\n  -")]
        for option in options:
            assert "(default: None)" not in option and option.count("(default:") <= 1, (name, option)


def test_no_help_shows_a_doubled_percent_sign():
    # argparse %-formats a flag's help but not a description: '15%%' there is printed as it is
    shown = [name for name, parser in all_parsers(build_parser()) if "%%" in parser.format_help()]
    assert shown == []


@pytest.mark.parametrize("argv, hint", [
    (["genrate"], "did you mean 'generate'?"),
    (["eval", "perplxity"], "did you mean 'perplexity'?"),
    (["generate", "--temprature", "0"], "did you mean --temperature?"),
    (["eval", "perplexity", "--data", "x", "--contxt", "5"], "did you mean --context?"),
    # the model flag is --model where a model is run, --base where one is a starting point or a base
    (["finetune", "classify", "--model", "x"], "did you mean --base?"),
    (["generate", "--base", "x"], "did you mean --model?"),
    # a task looked for under the command that does not do it: the command that does (was no hint at all)
    (["finetune", "mlm"], "masked-LM training is `npllama train --objective mlm`"),
    (["finetune", "nsp"], "`npllama finetune sop --pairs nsp`"),
    (["eval", "classify"], "`npllama classify --model DIR --data FILE`"),
])
def test_a_mistyped_command_or_flag_gets_a_suggestion(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and hint in err and err.count("\n") == 1


def test_progress_bars_redraw_rarely_outside_a_terminal(tmp_path):
    """A log file gets a few lines, not one per tenth of a second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env["PYTHONPATH"] = str(Path(npllama.__file__).resolve().parents[1])
    code = ("import sys, time; from npllama.cli import main\n"
            "import npllama.commands.eval as e\n"
            "def run(args):\n"
            "    from tqdm.auto import tqdm\n"
            "    for _ in tqdm(range(40)): time.sleep(0.05)\n"
            "    return 0\n"
            "e.run_perplexity = run\n"
            "sys.exit(main(['eval', 'perplexity', '--data', 'x']))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\r") <= 3   # the first draw and the last, not ~20 redraws


def test_reprs_and_typing_marker():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    assert eval(repr(config), {"LlamaConfig": LlamaConfig}) == config
    assert (Path(npllama.__file__).parent / "py.typed").is_file()
