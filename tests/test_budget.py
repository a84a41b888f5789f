"""Budgets (npllama/budget.py) and safe reading (npllama/io/reading.py): every input that sets a size is
refused before anything is allocated or read -- measured with tracemalloc, not assumed -- and a
FIFO or a device never blocks or streams forever."""
import io
import os
import struct
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from npllama import LlamaConfig, budget
from npllama.budget import BudgetError
from npllama.io.reading import parse_json, read_bytes, read_json, read_text

SMALL = 4 * 1024**2  # what a refusal may allocate at most


def refused_cheaply(call, error=BudgetError, match=None):
    """Run call(), which must raise `error`; return the exception after checking the peak allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SMALL, f"{peak:,} bytes allocated before refusing"
    return info.value


def config(**changes):
    fields = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                  num_attention_heads=8, max_position_embeddings=1024)
    return LlamaConfig(**{**fields, **changes})


# ----- memory ----------------------------------------------------------------------------------------

def test_a_model_over_the_budget_is_refused_before_its_parameters_exist(monkeypatch, robustness_count):
    big = config(hidden_size=8192, intermediate_size=28672, num_hidden_layers=20, num_attention_heads=64)
    assert big.num_parameters() > 19e9  # under LlamaConfig's own ceiling, far over this budget
    monkeypatch.setenv("NPLLAMA_MAX_MEMORY", str(8 * 1024**3))
    error = refused_cheaply(lambda: budget.check_model(big, np.float32))
    assert "NPLLAMA_MAX_MEMORY" in str(error) and f"{big.num_parameters():,} parameters" in str(error)
    budget.check_model(config(), np.float32)  # 42M parameters fit
    # training holds gradients and AdamW's two moments too: four copies
    assert budget.model_bytes(config(), np.float32, training=True) > 4 * config().num_parameters() * 4
    robustness_count("budgets: sizes refused before allocating")


def test_a_batch_over_the_budget_is_refused_before_the_forward_pass(monkeypatch):
    monkeypatch.setenv("NPLLAMA_MAX_MEMORY", str(2 * 1024**3))
    error = refused_cheaply(lambda: budget.check_batch(config(), 4096, 1024, np.float32))
    assert "4,096 x 1,024 tokens" in str(error)
    budget.check_batch(config(), 8, 128, np.float32)
    # the estimate grows with each size that sets it
    base = budget.batch_bytes(config(), 8, 128, np.float32)
    for changed in (budget.batch_bytes(config(), 16, 128, np.float32),
                    budget.batch_bytes(config(), 8, 256, np.float32),
                    budget.batch_bytes(config(num_hidden_layers=16), 8, 128, np.float32),
                    budget.batch_bytes(config(), 8, 128, np.float64)):
        assert changed > base


def test_the_batch_estimate_is_not_below_what_a_step_really_holds():
    from npllama import Llama

    small = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64)
    model = Llama(small, dtype=np.float32)
    tokens = np.random.default_rng(0).integers(0, 300, (4, 48))
    model.loss_and_grads(tokens, tokens)  # compiled and warmed: what is measured next is the arrays
    tracemalloc.start()
    try:
        model.loss_and_grads(tokens, tokens)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grads = sum(p.nbytes for p in model.params.values())
    assert budget.batch_bytes(small, 4, 48, np.float32) + grads >= 0.8 * peak  # an upper estimate (round-off aside)


def test_limits_come_from_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("NPLLAMA_MAX_THREADS", "8")
    budget.check_threads("threads", 8)
    with pytest.raises(BudgetError, match="at most 8"):
        budget.check_threads("threads", 9)
    for bad in ("many", "-1", "0"):
        monkeypatch.setenv("NPLLAMA_MAX_MEMORY", bad)
        with pytest.raises(ValueError, match=r"\$NPLLAMA_MAX_MEMORY must be a positive whole number"):
            budget.max_memory()
    monkeypatch.delenv("NPLLAMA_MAX_MEMORY")
    assert 0 < budget.max_memory() <= budget.DEFAULT_MAX_MEMORY


def test_threads_and_labels_are_refused_before_they_cost_anything():
    from npllama.datasets import encode_labels
    from npllama.train import TrainConfig

    refused_cheaply(lambda: TrainConfig(threads=1_000_000_000), match="threads must be at most")
    error = refused_cheaply(lambda: encode_labels([0, 1, 1_000_000]), match="1,000,001 classes")
    assert "NPLLAMA_MAX_LABELS" in str(error)
    assert encode_labels([0, 2, 1])[0] == [0, 2, 1]


# ----- .npz traces -----------------------------------------------------------------------------------

def npz_declaring(shape, data=b"") -> bytes:
    """A tiny .npz whose one array's header declares `shape` (float64) but holds `data`."""
    header = repr({"descr": "<f8", "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("d:model.layers.0.x.npy", npy)
    return buffer.getvalue()


def test_a_tiny_npz_declaring_terabytes_is_refused_from_its_headers(tmp_path, robustness_count):
    path = tmp_path / "trace.npz"
    path.write_bytes(npz_declaring((1_000_000, 1_000_000)))
    assert path.stat().st_size < 400
    error = refused_cheaply(lambda: budget.check_npz(path))
    assert "trace.npz" in str(error) and "7,450.58 GiB" in str(error)
    robustness_count("budgets: sizes refused before allocating")


def test_a_zip_bomb_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_MAX_MEMORY", str(16 * 1024**2))
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(4 * 1024**2))  # 32 MiB of zeros in a few kB
    assert path.stat().st_size < 200_000
    refused_cheaply(lambda: budget.check_npz(path), match="16.*budget|budget of 0.02 GiB")
    monkeypatch.setenv("NPLLAMA_MAX_MEMORY", str(64 * 1024**2))
    budget.check_npz(path)  # within a larger budget: accepted


def test_a_file_that_is_not_an_npz_is_named(tmp_path):
    path = tmp_path / "trace.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a readable .npz"):
        budget.check_npz(path)


def test_viz_grads_refuses_the_npz_in_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from npllama.cli import main

    path = tmp_path / "trace.npz"
    path.write_bytes(npz_declaring((1_000_000, 1_000_000)))
    assert main(["viz", "grads", str(path), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory budget" in err[0]


# ----- reading files -----------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path, robustness_count):
    from npllama.data import load_texts

    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    started = time.monotonic()
    for read in (lambda: load_texts(fifo), lambda: read_json(fifo), lambda: read_bytes(fifo, 10)):
        with pytest.raises(ValueError, match="FIFO"):
            read()
    assert time.monotonic() - started < 5
    robustness_count("reading: FIFOs, devices and oversized files refused")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_link_to_an_endless_device_is_refused_before_reading(tmp_path):
    from npllama.data import load_texts

    link = tmp_path / "corpus.txt"
    link.symlink_to("/dev/zero")
    refused_cheaply(lambda: load_texts(link), error=ValueError, match="a device")


def test_a_file_over_its_budget_is_refused_from_its_size(tmp_path, monkeypatch):
    from npllama.data import load_texts

    path = tmp_path / "corpus.txt"
    path.write_text("x" * 5000)
    monkeypatch.setenv("NPLLAMA_MAX_READ", "4096")
    refused_cheaply(lambda: load_texts(path), error=ValueError, match="5,000 bytes, over the 4,096-byte limit")
    assert read_text(path, max_bytes=5000) == "x" * 5000


def test_json_errors_are_named_never_a_recursion_or_attribute_error(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(deep, "stdin")
    path = tmp_path / "settings.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="settings.json: must hold a JSON object, got list"):
        read_json(path, expect=dict)
    path.write_bytes(b"\xff{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json(path)
    assert sys.getrecursionlimit() < 200_000  # the deep case really is past what json can recurse
