"""Every `npllama.x.y` an error message (or warning) names exists: a user told to call
npllama.runs.load_tokenizer must find it there."""
import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "npllama"
NAME = re.compile(r"\bnpllama(?:\.[A-Za-z_][A-Za-z_0-9]*)+")


def _message_strings(tree):
    """(line, text) of the string parts of every raise statement and warnings.warn call."""
    for node in ast.walk(tree):
        is_warning = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "warn"
        if isinstance(node, ast.Raise) or is_warning:
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.lineno, part.value


def _names_in_messages():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in _message_strings(tree):
            for name in NAME.findall(text):
                found.append((f"{path.relative_to(PACKAGE.parent)}:{line}", name.rstrip(".")))
    return found


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):   # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


MESSAGES = _names_in_messages()


def test_error_messages_do_name_some_api():
    assert len(MESSAGES) >= 3


@pytest.mark.parametrize("where, name", MESSAGES, ids=[f"{w} {n}" for w, n in MESSAGES])
def test_each_name_in_an_error_message_exists(where, name):
    assert _resolves(name), f"{where}: the message names {name}, which does not exist"


def test_tokenizer_encode_of_a_text_file_names_the_flag_not_an_api(tmp_path, capsys):
    from npllama.cli import main

    (tmp_path / "plays.txt").write_text("To be, or not to be\n")
    assert main(["tokenizer", "encode", "--model", str(tmp_path / "plays.txt"), "hi"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--model" in err and "is not a SentencePiece .model file" in err
