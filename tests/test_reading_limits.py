"""Inputs read whole are regular files of bounded size, parsed with bounded depth: the tokenizer
model, the ids given to `tokenizer decode`; and sampling settings accept NumPy scalars."""
import os
import subprocess
import sys

import numpy as np
import pytest

from npllama import tokenizer as tokenizer_module
from npllama.corpus import make_default_corpus
from npllama.generate import check_generation_args
from npllama.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.train(make_default_corpus(200, seed=0), tmp_path_factory.mktemp("tok") / "t", vocab_size=400)


def test_a_tokenizer_model_must_be_a_regular_file_of_bounded_size(tok, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="is a device"):
        Tokenizer("/dev/zero")
    fifo = tmp_path / "fifo.model"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):      # refused at once, not a hang
        Tokenizer(fifo)
    monkeypatch.setattr(tokenizer_module, "MAX_MODEL_BYTES", len(tok.model_bytes) - 1)
    with pytest.raises(ValueError, match="limit"):
        Tokenizer(tok.path)
    monkeypatch.undo()
    assert Tokenizer(tok.path).encode("Once upon a time") == tok.encode("Once upon a time")


@pytest.mark.parametrize("raw, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": 1}', "ids must be integers"),
    ('[1, "a"]', "ids must be integers"),
    ("[1.5]", "ids must be integers"),
], ids=["deep", "object", "string", "float"])
def test_tokenizer_decode_refuses_bad_ids_in_one_line(tok, raw, message):
    result = subprocess.run([sys.executable, "-m", "npllama", "tokenizer", "decode", "--model", str(tok.path)],
                            input=raw, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sampling_settings_accept_numpy_scalars_as_python_numbers():
    check_generation_args(np.int64(5), np.float32(0.5), np.int32(3), np.float32(0.9), np.int64(1), np.float32(1.1))
    with pytest.raises(ValueError, match="temperature"):
        check_generation_args(5, np.float32(-1.0), None, None, None)
    with pytest.raises(ValueError, match="top_p"):
        check_generation_args(5, 1.0, None, np.float64(1.5), None)
