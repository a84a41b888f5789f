"""The benchmark scripts run, on their smallest settings, and write every row they promise.

No timing is judged here (speed lives in benchmarks/, never in tests): these only keep the
scripts from rotting when the code they time changes -- a kernel that gains or loses a
direction, a renamed helper, a changed config."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script, *args, json_path):
    subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--json", str(json_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    return json.loads(json_path.read_text())


def test_bench_kernels_times_every_kernel_against_its_reference(tmp_path):
    from npllama.kernels import KERNELS

    result = run_benchmark("bench_kernels.py", "--shapes", "tiny", "--repeat", "1", json_path=tmp_path / "k.json")
    rows = {row["kernel"]: row for row in result["kernels"]}
    timed_ops = {name.rsplit("_", 1)[0] for name in KERNELS}
    assert timed_ops <= set(rows), f"kernels without a benchmark row: {timed_ops - set(rows)}"
    for name, row in rows.items():
        assert row["numba_fwd_ms"] > 0 and row["ref_fwd_ms"] > 0 and row["ratio"] > 0, name
    # the ops bound by BLAS also report what their products alone take
    for name in ("attention", "swiglu"):
        assert rows[name]["blas_ms"] > 0 and rows[name]["ceiling"] > 0
    assert result["keep_freed_memory"] in (True, False)


def test_bench_train_reports_steps_and_memory(tmp_path):
    # (--compare-with is run by the decode benchmark's test: the same code in _bench.py)
    result = run_benchmark("bench_train.py", "--configs", "tiny", "--rounds", "1", "--steps", "1", "--no-torch",
                           "--no-start-up", json_path=tmp_path / "t.json")
    (row,) = result["configs"]
    assert row["config"] == "tiny" and set(row["variants"]) == {"split", "unsplit", "products"}
    for label, variant in row["variants"].items():
        assert variant["step_s"]["median"] > 0 and variant["step_s"]["n"] == 1, label
        # whole-process peak RSS: at least NumPy, numba and the model, nothing subtracted
        assert variant["peak_rss_mib"]["median"] > 50, label
    assert result["environment"]["cpu"] and "blas" in result["environment"]
    assert result["start_up"] is None


def test_bench_train_start_up_runs_once_on_an_empty_cache_then_warm(tmp_path):
    """The plumbing of the start-up times, with a stand-in for the first training step that fills
    its numba cache as a compile would and says what the compile notice says when it found it empty
    (a real cold step compiles every training kernel: a minute of the suite on two busy cores; the
    notice itself is tests/kernels/test_compile_notice.py's)."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import start_up

    stand_in = (      # prints 7.5 s when it found the cache empty, 0.5 s after
        "import os, pathlib, sys\n"
        "cache = pathlib.Path(os.environ['NUMBA_CACHE_DIR'])\n"
        "cold = not any(cache.iterdir())\n"
        "if cold:\n"
        "    print('compiling the Numba kernels (once)', file=sys.stderr)\n"
        "    (cache / 'kernel.nbi').write_text('compiled')\n"
        "print('the step'); print(7.5 if cold else 0.5)\n")
    result = start_up(2, script=stand_in)
    assert result["cold_notice"] and not result["warm_notice"]      # the notice, only when cold
    assert result["cold_s"] == 7.5 and result["warm"]["n"] == 2 and result["warm"]["median"] == 0.5


def test_bench_train_start_up_script_takes_a_training_step():
    """The script start_up times, run here (kernels as this process has them): it prints its seconds last."""
    import contextlib
    import io

    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import STARTUP_SCRIPT

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(STARTUP_SCRIPT, {})
    assert float(printed.getvalue().strip().splitlines()[-1]) > 0


def test_bench_train_parts_time_every_op_the_step_calls(tmp_path):
    """--parts: a timer around every op the model calls and around AdamW, through npllama.use_op;
    the parts and the rest add up to the step, and an op the timers missed would be absent."""
    result = run_benchmark("bench_train.py", "--configs", "tiny", "--rounds", "1", "--steps", "2", "--no-torch",
                           "--no-start-up", "--only", "parts", json_path=tmp_path / "t.json")
    (row,) = result["configs"]
    assert set(row["variants"]) == {"parts"}
    (run,) = row["variants"]["parts"]["runs"]
    parts = run["parts_s"]
    called = {f"{op}_{way}" for op in ("embedding", "rmsnorm", "linear", "rope", "attention", "swiglu")
              for way in ("forward", "backward")} | {"cross_entropy_forward"}
    assert called <= set(parts), sorted(called - set(parts))
    assert parts["AdamW step (check + update)"] > 0 and parts["linear_forward"] > 0
    assert all(seconds >= 0 for part, seconds in parts.items() if not part.startswith("the rest")), parts
    # the rest is the step's time outside the timers: never more negative than clock noise
    assert parts["the rest (model.py's NumPy, Python)"] > -1e-3
    assert sum(parts.values()) <= 1.5 * max(run["steps_s"])


def test_bench_train_compares_with_another_checkout_in_the_same_rounds():
    import argparse

    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import variants_to_run

    args = argparse.Namespace(numpy=False, parts=False, no_torch=True, compare_with="/old", only=None)
    assert variants_to_run(args) == [("split", None), ("unsplit", None), ("products", None), ("split@old", "/old"),
                                     ("unsplit@old", "/old")]
    args.only = ["split@old", "split"]        # --only keeps the usual order
    assert variants_to_run(args) == [("split", None), ("split@old", "/old")]


def test_bench_train_only_old_variants_need_another_checkout():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_train.py"), "--only", "split@old"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "need --compare-with" in out.stderr


def test_bench_train_times_pytorch_with_fused_adamw(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import numpy as np

    from npllama import Llama, LlamaConfig

    Llama(LlamaConfig.from_preset("tiny"), seed=0, dtype=np.float32).save_pretrained(tmp_path / "model")
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_train.py"), "--child", "torch-fused", "tiny",
                          str(tmp_path / "model"), "--steps", "1"], check=True, capture_output=True, text=True,
                         timeout=300).stdout
    run = json.loads(out.strip().splitlines()[-1])
    assert run["variant"] == "torch-fused" and run["step_s"] > 0 and run["peak_rss_mib"] > 100


def test_bench_train_first_run_times_both_ways_on_empty_caches(tmp_path, monkeypatch):
    """The plumbing of --first-run, with a stand-in for `npllama train` that checks its caches are
    new folders inside its own and records which way it was started."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import first_run

    record = tmp_path / "ways.txt"
    monkeypatch.setenv("WAYS_RECORD", str(record))
    stand_in = [sys.executable, "-c", (
        "import os, pathlib\n"
        "here = pathlib.Path.cwd().resolve()\n"
        "for name in ('NUMBA_CACHE_DIR', 'NPLLAMA_CACHE_DIR', 'NPLLAMA_RUNS'):\n"
        "    assert pathlib.Path(os.environ[name]).resolve().parent == here and not os.path.exists(os.environ[name])\n"
        "with open(os.environ['WAYS_RECORD'], 'a') as f:\n"
        "    f.write(os.environ['NPLLAMA_PARALLEL_COMPILE'])\n"
        "import json, time\n"
        "pathlib.Path('run').mkdir()\n"
        "with open('run/log.jsonl', 'w') as log:\n"
        "    for step in (1, 2, 3):\n"
        "        log.write(json.dumps({'step': step, 'loss': 1.0}) + '\\n'); log.flush(); time.sleep(0.2)\n"
        "    log.write(json.dumps({'step': 3, 'val_loss': 1.0}) + '\\n')\n")]
    result = first_run(2, command=stand_in, last_step=3)
    for way in ("helper", "one_process"):
        first, last = result[way]["first_step"], result[way]["last_step"]
        assert first["n"] == last["n"] == 2
        # in each run step 3's line comes two 0.2 s sleeps after step 1's, so do the extremes
        assert 0 < first["min"] and last["min"] - first["min"] > 0.1 and last["max"] - first["max"] > 0.1
    assert record.read_text() == "1001"     # helper first, then one process; the other way round next
    with pytest.raises(RuntimeError, match="first run"):
        first_run(1, command=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="logged no step 4"):
        first_run(1, command=stand_in, last_step=4)


@pytest.mark.parametrize("variant", ["products", "torch-products"])
def test_bench_train_products_are_every_linear_layers_three_products(tmp_path, variant):
    import numpy as np

    if variant == "torch-products":
        pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import _products_step, training_batch

    from npllama import Llama, LlamaConfig

    config = LlamaConfig.from_preset("tiny")
    Llama(config, seed=0, dtype=np.float32).save_pretrained(tmp_path / "model")
    tokens, targets = training_batch("tiny")
    step, _ = _products_step(variant, tmp_path / "model", tokens, targets)
    step()
    D, F = config.hidden_size, config.intermediate_size
    assert len(step.shapes) == 7 * config.num_hidden_layers + 1 and step.shapes[-1] == (config.vocab_size, D)
    assert {(F, D), (D, F)} <= set(step.shapes)
    for shape, arrays in step.operands.items():
        W, X, Y, dY, dX, dW = (np.asarray(a) for a in arrays)
        assert W.shape == shape and X.shape == (tokens.size, shape[1])
        np.testing.assert_allclose(Y, X @ W.T, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dX, dY @ W, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(dW, dY.T @ X, rtol=1e-4, atol=1e-3)


def test_bench_decode_reports_prefill_first_token_and_steady_rate(tmp_path):
    result = run_benchmark("bench_decode.py", "--configs", "tiny", "--prompt", "16", "--tokens", "6", "--rounds", "1",
                           "--no-torch", "--compare-with", str(BENCHMARKS.parent), json_path=tmp_path / "d.json")
    (row,) = result["configs"]
    decoders = {"fast", "fast-1", "forward_step", "fast@old", "forward_step@old"}
    assert set(row["variants"]) == decoders | {"read-once"}
    for label in decoders:
        v = row["variants"][label]
        for key in ("prefill_s", "first_token_s", "tok_s", "tok_s_at_0", "peak_rss_mib"):
            assert v[key]["median"] > 0, (label, key)
        assert v["first_token_s"]["median"] > v["prefill_s"]["median"], label   # prefill is part of it
    # the read-once bound reads every weight but the embedding table (unless tied: the LM head)
    from npllama import Llama, LlamaConfig

    model = Llama(LlamaConfig.from_preset("tiny"), seed=0)
    assert not model.config.tie_word_embeddings
    weights_read = 4 * (sum(a.size for a in model.params.values()) - model.params["model.embed_tokens.weight"].size)
    read_once = row["variants"]["read-once"]
    assert read_once["tok_s"]["median"] > 0
    assert weights_read <= read_once["runs"][0]["bytes"] < weights_read + 4 * model.config.hidden_size


@pytest.mark.parametrize("tie", [False, True])
def test_a_model_exported_for_llama2c_reads_back_as_the_same_model(tmp_path, tie):
    import numpy as np

    sys.path.insert(0, str(BENCHMARKS))
    from bench_decode import export_llama2c

    from npllama import Llama, LlamaConfig
    from npllama.io.llama2c import read_llama2c

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8,
                         tie_word_embeddings=tie)
    model = Llama(config, seed=0, dtype=np.float32)
    export_llama2c(model, tmp_path / "m.bin")
    header = np.frombuffer((tmp_path / "m.bin").read_bytes()[:28], dtype=np.int32)
    assert list(header) == [16, 24, 2, 4, 2, 40 if tie else -40, 8]      # negative: its own classifier
    read_config, params = read_llama2c(tmp_path / "m.bin")   # the project's reader: q and k permuted back
    assert read_config.tie_word_embeddings == tie
    assert set(params) == set(model.params)
    for name, value in model.params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.parametrize("script, args, key", [
    ("bench_lora.py", ("--quick",), "results"),
])
def test_small_benchmarks_run(tmp_path, script, args, key):
    result = run_benchmark(script, *args, json_path=tmp_path / "out.json")
    assert result[key], f"{script} wrote no {key}"


@pytest.mark.parametrize("script", ["bench_kernels.py", "bench_train.py", "bench_decode.py", "bench_lora.py",
                                    "bench_trace.py"])
@pytest.mark.parametrize("args", [("--repeat", "0"), ("--repeat", "x")])
def test_benchmarks_refuse_a_bad_count_in_one_line(script, args):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--repeat: expected a positive integer" in result.stderr


def test_bench_checkpoint_times_save_load_and_the_hashing_share(tmp_path):
    result = run_benchmark("bench_checkpoint.py", "--configs", "tiny", "--repeat", "1", json_path=tmp_path / "c.json")
    (row,) = result["rows"]
    assert row["config"] == "tiny" and row["parameters"] > 0 and row["checkpoint_mb"] > 0
    for key in ("save_s", "load_s", "hash_s", "tokenizer_files_s"):
        assert row[key] > 0, key


def test_the_machine_line_says_when_openblas_kernels_are_forced(monkeypatch):
    """A pinned OPENBLAS_CORETYPE decides how fast NumPy's products are: every table's header
    says so, and says nothing when OpenBLAS chose by itself."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _bench

    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert "forced" not in _bench.machine_line(_bench.environment())
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert "[forced by OPENBLAS_CORETYPE=Haswell]" in _bench.machine_line(_bench.environment())
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    assert "[forced by OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=512]" in _bench.machine_line(_bench.environment())


def test_bench_corpus_reports_time_and_peak_memory_of_a_first_train(tmp_path):
    result = run_benchmark("bench_corpus.py", "--sizes", "0.05", json_path=tmp_path / "corpus.json")
    (row,) = result["rows"]
    assert row["size_mb"] == 0.05 and row["npllama"] == "this"
    # whole-process peak RSS: at least the interpreter, NumPy and SentencePiece, nothing subtracted
    assert row["wall_s"] > 0 and row["peak_rss_mib"] > 50
