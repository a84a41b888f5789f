"""Finding the first divergence: planted bugs are located at the right tensor; backends, dtypes and
(when installed) transformers agree; the `npllama debug` command."""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, backend, debug
from npllama.commands import UsageError
from npllama.commands import debug as debug_command


def tiny_config(**overrides):
    fields = dict(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.fixture(scope="module")
def model():
    return Llama(tiny_config(), seed=0)


IDS = [1, 7, 3, 12, 5, 9, 2, 8]


def rope_forward_meta(x, cos, sin):
    """Meta's adjacent-pair RoPE on Hugging Face-layout weights: the classic port bug."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    y = np.empty_like(x)
    y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return y, (cos, sin)


# ----- planted bugs are found at the first affected tensor ---------------------------------------------

def test_wrong_rope_convention_is_reported_at_q_rot(model):
    with npllama.use_op("rope_forward", rope_forward_meta, backend="numpy"):
        report = debug.compare_backends(model, IDS)
    first = report.first
    assert first.name == "model.layers.0.self_attn.q_rot"
    index = [d.name for d in report.diffs].index(first.name)
    assert [d.name for d in report.diffs[:index]] == [
        "model.embed_tokens.out", "model.layers.0.input_layernorm.out", "model.layers.0.self_attn.q",
        "model.layers.0.self_attn.k", "model.layers.0.self_attn.v", "model.rotary_emb.cos", "model.rotary_emb.sin"]
    assert all(not d.diverged and d.rel_err < 1e-6 for d in report.diffs[:index])
    a, b = report.traces
    assert a[first.name][first.worst_index] == pytest.approx(first.a_value)
    assert b[first.name][first.worst_index] == pytest.approx(first.b_value)
    assert abs(first.a_value - first.b_value) > 1e-3
    assert "suspect the step that computes model.layers.0.self_attn.q_rot" in str(report)


@pytest.mark.parametrize("bug", sorted(debug.PLANTED_BUGS))
def test_each_planted_bug_is_located(model, bug):
    expected = debug.PLANTED_BUGS[bug][2].format(last=model.config.num_hidden_layers - 1)
    with debug.planted_bug(bug):
        report = debug.compare_backends(model, IDS)
    assert not backend.overrides()  # nothing left planted afterwards
    assert report.first is not None and report.first.name == expected
    assert debug.compare_backends(model, IDS).ok


def test_backward_bug_leaves_the_forward_untouched(model):
    with debug.planted_bug("rmsnorm-backward-no-projection"):
        report = debug.compare_backends(model, IDS)
    assert all(not d.diverged for d in report.diffs if not d.name.startswith("d:"))
    assert report.first.name == "d:model.layers.1.out"  # dx of the final norm's backward


def test_unknown_planted_bug():
    with pytest.raises(ValueError, match="rope-meta"):
        with debug.planted_bug("nope"):
            pass


# ----- clean comparisons agree ------------------------------------------------------------------------

def test_backends_agree(model):
    report = debug.compare_backends(model, IDS)
    assert report.ok and report.labels == ("numpy", "numba") and len(report.diffs) > 50


def test_float32_agrees_with_float64(model):
    report = debug.compare_dtypes(model, IDS)
    assert report.ok, str(report)
    assert report.labels == ("float32", "float64")
    worst = max(d.rel_err for d in report.diffs)
    assert 1e-10 < worst < 1e-5  # float32 round-off, nothing more


def _softmax_without_max_shift(x, check_values=True):
    exps = np.exp(x)
    probs = exps / exps.sum(axis=-1, keepdims=True)
    return probs, probs


def test_compare_dtypes_docstring_says_what_a_softmax_without_the_max_shift_does():
    # the docstring said such a softmax shows as a difference "far more than ~1e-7"; it agrees to
    # round-off until a score passes float32's exp overflow (~88), and is then NaN in float32 only
    doc = " ".join(debug.compare_dtypes.__doc__.split())
    assert "without the max shift agrees" in doc and "NaN" in doc and "~88" in doc, doc
    config = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)

    def sharpened(factor):
        m = Llama(config, seed=0)
        for w in ("q_proj", "k_proj"):
            m.params[f"model.layers.0.self_attn.{w}.weight"] *= factor
        return m

    probs = "model.layers.0.self_attn.attn_probs"
    with npllama.use_op("softmax_forward", _softmax_without_max_shift):
        plain = debug.compare_dtypes(sharpened(1), IDS)
        assert plain.ok and max(d.rel_err for d in plain.diffs) < 1e-6, str(plain)
        with np.errstate(over="ignore", invalid="ignore"):
            overflowed = debug.compare_dtypes(sharpened(300), IDS)   # scores past 88, below 709
    t32, t64 = overflowed.traces
    assert np.isnan(t32[probs]).any() and np.isfinite(t64[probs]).all()
    assert overflowed.first.name == probs and "NaN or Inf in one trace only" in str(overflowed)
    # and what "ill-conditioned" means here: sharp attention (scores ~100) amplifies round-off
    # beyond float32's ~1e-7, with the reference softmax, all within the 1e-3 tolerance
    with npllama.use_backend("numpy"):
        sharp = debug.compare_dtypes(sharpened(100), IDS)
    assert sharp.ok and max(d.rel_err for d in sharp.diffs) > 1e-6, str(sharp)


def test_run_trace_records_metadata_and_targets(model):
    t = debug.run_trace(model, IDS, include=["loss", "lm_head.out"])
    assert t.names() == ["lm_head.out", "loss"]
    assert t.meta["backend"] == "numpy" and t.meta["tokens"] == [IDS]
    tokens, targets = debug.next_token_batch(IDS)
    assert float(t["loss"]) == pytest.approx(model.loss(tokens, targets), rel=1e-6)


def test_next_token_batch_and_token_parsing():
    tokens, targets = debug.next_token_batch([4, 5, 6])
    np.testing.assert_array_equal(tokens, [[4, 5, 6]])
    np.testing.assert_array_equal(targets, [[5, 6, -100]])
    assert debug.parse_token_ids("1, 5 9") == [1, 5, 9]
    with pytest.raises(ValueError, match="integers separated by commas"):
        debug.parse_token_ids("1,x")
    with pytest.raises(ValueError, match="empty"):
        debug.parse_token_ids(" , ")
    with pytest.raises(ValueError, match="non-empty"):
        debug.next_token_batch([])
    with pytest.raises(TypeError, match="integers"):
        debug.next_token_batch([1.5, 2.0])
    # rows of a batch, each its own text: no target crosses from one row into the next
    tokens, targets = debug.next_token_batch([[4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(targets, [[5, 6, -100], [8, 9, -100]])
    with pytest.raises(ValueError, match=r"sequence \(T,\) or batch \(B, T\), got shape \(1, 1, 3\)"):
        debug.next_token_batch([[[4, 5, 6]]])


def test_a_batch_without_targets_is_compared_row_by_row(model):
    # a (B, T) batch and no targets was refused ("a non-empty flat sequence"), as the module's
    # example showed it
    batch = np.array([IDS, IDS[::-1]])
    report = debug.compare_dtypes(model, batch)
    assert report.ok, str(report)
    t = debug.run_trace(model, batch, include=["loss"])
    assert float(t["loss"]) == pytest.approx(model.loss(*debug.next_token_batch(batch)), rel=1e-6)


# ----- loading inputs for the commands ----------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder_with_tokenizer(tmp_path_factory):
    from npllama.tokenizer import Tokenizer

    rng = random.Random(0)
    words = "the cat sat on a mat dog ran to big red ball tree sun moon happy little girl boy".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)]
    path = tmp_path_factory.mktemp("with_tok")
    tok = Tokenizer.train(lines, path / "tok", vocab_size=300)
    Llama(tiny_config(vocab_size=300), seed=1).save_pretrained(path / "model")
    (path / "model" / "tokenizer.model").write_bytes(tok.path.read_bytes())
    return path / "model"


def test_load_inputs_with_token_ids(folder):
    model, model_dir, ids, labels = debug.load_inputs(str(folder), tokens="1,2,3")
    assert ids == [1, 2, 3] and labels == ["1", "2", "3"] and model.config.vocab_size == 29
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        debug.load_inputs(str(folder), tokens="1,2,99")
    with pytest.raises(ValueError, match="--tokens 1,5,9"):
        debug.load_inputs(str(folder), text="hello")   # no tokenizer.model beside it
    with pytest.raises(ValueError, match="exactly one of"):
        debug.load_inputs(str(folder))
    with pytest.raises(ValueError, match="longer than the model's context"):
        debug.load_inputs(str(folder), tokens=",".join(["1"] * 40))


def test_load_inputs_with_text(folder_with_tokenizer):
    model, _, ids, labels = debug.load_inputs(str(folder_with_tokenizer), text="the cat sat")
    assert ids[0] == 1 and len(ids) == len(labels) >= 4      # <s> first
    assert labels[0] == "<s>" and "".join(labels[1:]).replace("\u2581", " ").strip() == "the cat sat"


# ----- a GGUF file or a llama2.c checkpoint as --model -------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory, folder_with_tokenizer):
    """{"gguf": a GGUF file with its vocabulary, "llama2c": a llama2.c checkpoint with tokenizer.model beside it},
    written by the project's own writers (io/gguf_export.py; the tests' llama2.c writer)."""
    pytest.importorskip("gguf")
    from npllama.io.gguf_export import export_gguf
    from tests.io.llama2c_files import random_llama2c_weights, write_legacy

    path = tmp_path_factory.mktemp("files")
    export_gguf(folder_with_tokenizer, path / "tiny.gguf")
    (path / "llama2c").mkdir()
    write_legacy(path / "llama2c" / "tiny.bin", random_llama2c_weights(vocab_size=300))
    (path / "llama2c" / "tokenizer.model").write_bytes((folder_with_tokenizer / "tokenizer.model").read_bytes())
    return {"gguf": path / "tiny.gguf", "llama2c": path / "llama2c" / "tiny.bin"}


@pytest.mark.parametrize("kind", ["gguf", "llama2c"])
def test_a_gguf_or_llama2c_file_is_compared_and_traced_as_npllama_reads_it(model_files, kind, capsys):
    file = model_files[kind]
    model, model_dir, ids, labels = debug.load_inputs(str(file), text="the cat sat")
    assert model_dir == file and ids[0] == 1 and labels[0] == "<s>"      # its tokenizer, found as convert finds it
    assert all(np.array_equal(p, Llama.from_pretrained(file).params[n]) for n, p in model.params.items())
    assert run_cli(["debug", "compare", "--model", str(file), "--text", "the cat sat"]) == 0
    assert run_cli(["debug", "compare", "--model", str(file), "--tokens", "1,2,3", "--plant", "rope-meta"]) == 1
    assert run_cli(["debug", "trace", "--model", str(file), "--tokens", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert f"model {file} (2 layers)" in out and "no divergence" in out and "FIRST DIVERGENCE" in out
    assert f"from 3 tokens of {file}" in out


@pytest.mark.parametrize("kind", ["gguf", "llama2c"])
def test_viz_draws_a_gguf_or_llama2c_file_and_its_help_says_it_may(model_files, kind, tmp_path, capsys):
    """viz runs its model through load_inputs, as debug does, so it takes the same files and says so."""
    pytest.importorskip("matplotlib")
    from npllama.cli import main

    file = model_files[kind]
    for action in ("attention", "grads"):
        with pytest.raises(SystemExit):
            main(["viz", action, "--help"])
        assert "a GGUF file or a llama2.c checkpoint" in " ".join(capsys.readouterr().out.split())
    png = tmp_path / f"{kind}.png"
    assert main(["viz", "attention", "--model", str(file), "--tokens", "1,2,3", "--out", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")     # a PNG image, not merely some bytes


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_gguf_file_is_compared_with_transformers_on_npllamas_conversion(model_files, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    assert run_cli(["debug", "compare", "--model", str(model_files["gguf"]), "--tokens", "1,2,3", "--against",
                    "transformers", "--dtype", "float64"]) == 0
    assert "no divergence" in capsys.readouterr().out
    assert debug.compare_transformers(model_files["llama2c"], [1, 2, 3]).ok


def test_another_file_as_model_is_refused_saying_what_model_takes(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match=r"--model takes a model folder \(Hugging Face, or a run folder\), a GGUF "
                                         r"file or a llama2.c checkpoint; .*notes.txt"):
        run_cli(["debug", "compare", "--model", str(tmp_path / "notes.txt"), "--tokens", "1,2"])


# ----- the command ------------------------------------------------------------------------------------

def run_cli(argv):
    parser = argparse.ArgumentParser(prog="npllama")
    debug_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_compare_exit_status_and_report(folder, capsys):
    assert run_cli(["debug", "compare", "--model", str(folder), "--tokens", "1,2,3,4"]) == 0
    assert "no divergence" in capsys.readouterr().out
    assert run_cli(["debug", "compare", "--model", str(folder), "--tokens", "1,2,3,4",
                    "--plant", "rope-meta", "--table"]) == 1
    out = capsys.readouterr().out
    assert "FIRST DIVERGENCE" in out and "model.layers.0.self_attn.q_rot" in out and "DIFFERS" in out


def test_cli_compare_float64_saves_traces_and_diff_reads_them(folder, tmp_path, capsys):
    prefix = str(tmp_path / "cmp")
    assert run_cli(["debug", "compare", "--model", str(folder), "--tokens", "1,2,3", "--against",
                    "float64", "--save", prefix]) == 0
    capsys.readouterr()
    assert run_cli(["debug", "diff", prefix + ".a.npz", prefix + ".b.npz"]) == 0
    assert run_cli(["debug", "diff", prefix + ".a.npz", prefix + ".b.npz", "--rtol", "1e-12"]) == 1
    assert "FIRST DIVERGENCE" in capsys.readouterr().out


def test_cli_trace_prints_summary_and_saves(folder, tmp_path, capsys):
    out_file = tmp_path / "t.npz"
    assert run_cli(["debug", "trace", "--model", str(folder), "--tokens", "3,4,5", "--include",
                    "model.layers.1.*", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.self_attn.attn_probs" in out and "model.layers.0." not in out
    from npllama.trace import Trace

    assert Trace.load(out_file).names()[0] == "model.layers.1.input_layernorm.out"


def test_cli_errors_are_one_line(folder, monkeypatch, capsys):
    import npllama.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", {"debug": "npllama.commands.debug"})  # only ours: others may be mid-edit
    assert cli.main(["debug", "compare", "--model", str(folder), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tokens" in err and "Traceback" not in err
    assert cli.main(["debug", "compare", "--model", str(folder), "--tokens", "1", "--rtol", "-1"]) == 2
    with pytest.raises(UsageError):
        run_cli(["debug", "compare", "--model", str(folder), "--tokens", "1", "--atol", "-1"])



@pytest.mark.parametrize("argv, named", [
    (["compare", "--against", "float64", "--dtype", "float64"], "--dtype"),   # would be ignored
    (["compare", "--stock-transformers"], "--stock-transformers"),             # against numba
    (["compare", "--against", "transformers", "--stock-transformers"], "--stock-transformers"),   # float32
    (["compare", "--plant", "no-such-bug"], "rope-meta"),
    (["compare", "--transformers-folder", "{missing}"], "--transformers-folder"),            # against numba
    (["compare", "--against", "transformers", "--transformers-folder", "{missing}"],
     "--transformers-folder .*does not exist"),
    (["compare", "--against", "transformers", "--transformers-folder", "{tmp}"], "--transformers-folder .*holds no model"),
    (["compare", "--save", "{missing}/cmp"], "--save"),
    (["compare", "--against", "transformers", "--adapter", "{missing}"],   # (classify has no --merge)
     "--adapter with --against transformers.*finetune sft --lora --merge.*load_classifier"),
    (["trace", "--out", "{missing}/t.npz"], "--out"),
    (["trace", "--out", "t.txt"], "--out t.txt: .*npz"),
    # a file where a folder is needed: said as such (was "folder ... does not exist", of a file that does)
    (["trace", "--out", "{afile}/t.npz"], "--out .*afile/t.npz.*afile' is a file, not a folder"),
    (["trace", "--out", "{afile}/sub/t.npz"], "--out .*afile' is a file, not a folder"),
    (["compare", "--save", "{afile}/cmp"], "--save .*afile' is a file, not a folder"),
])
def test_cli_refuses_a_flag_it_cannot_honour_before_anything_runs(tmp_path, argv, named):
    # the model folder does not exist either: the flag must be refused first, not after a run
    (tmp_path / "afile").write_text("a file, not a folder")
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path, afile=tmp_path / "afile") for a in argv]
    with pytest.raises(UsageError, match=named):
        run_cli(["debug", *argv, "--model", str(tmp_path / "no-model"), "--tokens", "1,2"])


def test_compare_help_gives_the_default_tolerances_it_uses(capsys):
    with pytest.raises(SystemExit):
        run_cli(["debug", "compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for rtol in (*debug.DEFAULT_RTOL.values(), debug.TRANSFORMERS_RTOL, debug.TRANSFORMERS_FLOAT64_RTOL):
        assert f"{rtol:.0e}".replace("e-0", "e-") in text, (rtol, text)
    assert all(bug in text.replace(" ", "") for bug in debug.PLANTED_BUGS)   # --plant's help lists them all (wrapped at hyphens)


def test_core_never_imports_torch_transformers_or_matplotlib():
    code = ("import sys, numpy as np, npllama, npllama.debug, npllama.trace, npllama.viz, npllama.exercises\n"
            "from npllama import Llama, LlamaConfig, debug\n"
            "m = Llama(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=1,"
            " num_attention_heads=2, max_position_embeddings=8))\n"
            "debug.compare_backends(m, [1, 2, 3])\n"
            "bad = [n for n in ('torch', 'transformers', 'matplotlib', 'hypothesis') if n in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- against transformers (optional) -------------------------------------------------------------

@pytest.mark.slow  # imports torch and transformers (several seconds); skipped when they are absent
def test_transformers_agrees_and_finds_the_planted_rope_bug(folder, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    report = debug.compare_transformers(folder, IDS)
    assert report.ok, str(report)
    assert report.labels == ("npllama", "transformers")
    compared = {d.name for d in report.diffs}
    for name in ["model.layers.0.self_attn.q_rot", "model.layers.1.self_attn.attn_probs",
                 "model.layers.0.mlp.act", "model.layers.1.residual", "d:model.layers.0.self_attn.k_rot",
                 "d:model.layers.0.input_layernorm.out", "d:model.layers.1.mlp.up_proj.weight", "loss"]:
        assert name in compared, name
    assert max(d.rel_err for d in report.diffs) < 1e-5
    with npllama.use_op("rope_forward", rope_forward_meta):
        assert debug.compare_transformers(folder, IDS).first.name == "model.layers.0.self_attn.q_rot"




@pytest.mark.slow  # imports torch and transformers (several seconds); skipped when they are absent
def test_a_replaced_backward_against_transformers_explains_the_gradients_only_transformers_has(folder):
    # transformers records d:mlp.act/gate/up; a replacement of swiglu_backward on npllama's side
    # computes them where no recording op sees them: the report must say so, not list them bare
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with debug.planted_bug("swiglu-backward-up-sign"):
        report = debug.compare_transformers(folder, IDS)
    assert report.first.name == "d:model.layers.1.mlp.up_proj.weight"
    inside = [n for n in report.only_in_b if n.endswith((".mlp.act", ".mlp.gate", ".mlp.up"))]
    assert len(inside) == 6 and all(n.startswith("d:") for n in inside)
    note = next(n for n in report.notes if "use_op" in n)
    assert "swiglu_backward by npllama.debug._swiglu_backward_up_sign" in note
    assert "records only what it returns" in note and "recorded in transformers only" in note


@pytest.mark.slow  # imports torch and transformers (several seconds); skipped when they are absent
def test_a_bug_on_the_transformers_side_is_credited_to_transformers_function_too(folder, monkeypatch):
    # "computed by" naming only npllama's function would send the reader into correct code
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    def rotate_adjacent_pairs(x):   # Meta's pairing where transformers uses rotate_half
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)

    monkeypatch.setattr(modeling_llama, "rotate_half", rotate_adjacent_pairs)
    report = debug.compare_transformers(folder, IDS)
    assert report.first.name == "model.layers.0.self_attn.q_rot"
    assert "modeling_llama.apply_rotary_pos_emb (in transformers)" in str(report)
    sources = report.traces[1].sources
    assert sources["model.layers.1.self_attn.attn_probs"].endswith("LlamaAttention.forward")
    assert sources["model.layers.1.mlp.act"].endswith("LlamaMLP.forward")

@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_correct_model_with_large_weights_agrees_with_transformers_at_the_default_tolerance(tmp_path):
    # large weights make large attention scores: float32 round-off (transformers keeps RMSNorm,
    # RoPE and the softmax in float32 even in float64) reaches ~2e-4 in the gradients formed by
    # cancellation, as between the numpy and numba backends; no bug is there to find
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    m = Llama(tiny_config(), seed=0)
    rng = np.random.default_rng(0)
    for p in m.params.values():
        p += rng.standard_normal(p.shape).astype(p.dtype)
    m.save_pretrained(tmp_path)
    ids = list(rng.integers(0, 29, 16))
    assert debug.compare_backends(m, ids).ok
    for dtype in (np.float32, np.float64):
        report = debug.compare_transformers(tmp_path, ids, dtype=dtype, faithful=False)
        assert report.ok, str(report)
    assert any("float32" in note for note in report.notes)   # float64: says why it is not exact
    # float64-faithful transformers (the default): saturated softmaxes are float64 on both sides too
    report = debug.compare_transformers(tmp_path, ids, dtype=np.float64)
    assert report.ok and report.rtol == debug.TRANSFORMERS_FLOAT64_RTOL, str(report)

@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_padded_batch_is_compared_with_transformers_under_the_same_padding(folder):
    # rows of different lengths, padded on the right: transformers must be given the padding that
    # npllama ran with, or it attends the pads and the report blames npllama's attention
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    rows = [IDS, IDS[:5]]
    tokens = np.zeros((2, len(IDS)), dtype=np.int64)
    mask = np.zeros(tokens.shape, dtype=bool)
    targets = np.full(tokens.shape, -100)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
        targets[i, :len(row) - 1] = row[1:]
    report = debug.compare_transformers(folder, tokens, targets, attention_mask=mask)
    assert report.ok, str(report)
    assert np.all(report.traces[1]["model.layers.0.self_attn.attn_probs"][1, :, :, len(rows[1]):] == 0)


def _left_padded_batch(targets_on_padding: bool):
    """Two rows of IDS, the second's first 3 positions padding: (tokens, attention_mask, targets)."""
    tokens = np.array([IDS, IDS])
    mask = np.ones(tokens.shape, dtype=bool)
    mask[1, :3] = False
    targets = np.full(tokens.shape, -100)
    targets[:, :-1] = tokens[:, 1:]
    if not targets_on_padding:
        targets[1, :3] = -100
    return tokens, mask, targets


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_left_padding_against_transformers_is_explained(folder):
    # the queries before a row's first real token attend nothing: npllama gives them zero attention,
    # transformers a uniform one, so attn_probs differs there without a bug on either side
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    tokens, mask, targets = _left_padded_batch(targets_on_padding=False)
    report = debug.compare_transformers(folder, tokens, targets, attention_mask=mask)
    assert report.first.name == "model.layers.0.self_attn.attn_probs"
    assert "pad on the right" in str(report)
    right_padded = np.ones(tokens.shape, dtype=bool)
    right_padded[1, -3:] = False
    targets[1] = -100
    targets[1, :4] = tokens[1, 1:5]
    assert "pad on the right" not in str(debug.compare_transformers(folder, tokens, targets,
                                                                     attention_mask=right_padded))


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
@pytest.mark.parametrize("faithful", [True, False])
def test_the_left_padding_note_says_what_float64_transformers_gives_the_queries_before_the_first_token(
        folder, faithful):
    # the float64-faithful softmax spreads a query that may attend no key uniformly, as float32 does;
    # only stock transformers' float32 softmax of float64's most negative mask makes NaN of it
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    tokens, mask, targets = _left_padded_batch(targets_on_padding=True)
    report = debug.compare_transformers(folder, tokens, targets, dtype=np.float64, attention_mask=mask,
                                        faithful=faithful)
    note = next(n for n in report.notes if "pad on the right" in n)
    before_first_token = report.traces[1]["model.layers.0.self_attn.attn_probs"][1, :, :3]
    made_nan = bool(np.isnan(before_first_token).any())
    assert made_nan == (not faithful)
    assert ("NaN" in note) == made_nan, note
    assert ("uniform" in note) == (not made_nan), note


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_weight_loaded_differently_from_transformers_is_named_not_the_op_reading_it(folder, monkeypatch):
    # a loader's slip (here: one weight scaled on npllama's side) makes the first op that reads
    # the weight diverge; the report must say the weights differ, or it sends the reader into a
    # correct linear_forward
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    load = Llama.from_pretrained.__func__

    def load_with_a_slip(cls, *args, **kwargs):
        model = load(cls, *args, **kwargs)
        model.params["model.layers.1.self_attn.v_proj.weight"] *= 1.5
        return model

    report = debug.compare_transformers(folder, IDS)
    assert report.ok and not any("parameter" in note for note in report.notes), str(report)
    monkeypatch.setattr(Llama, "from_pretrained", classmethod(load_with_a_slip))
    report = debug.compare_transformers(folder, IDS)
    assert report.first.name == "model.layers.1.self_attn.v"
    text = str(report)
    assert "model.layers.1.self_attn.v_proj.weight" in text and "loaded" in text, text



@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_weight_edited_in_npllama_is_compared_against_transformers_on_the_original_folder(folder, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    edited = Llama.from_pretrained(folder)
    weight = "model.layers.1.self_attn.v_proj.weight"
    edited.params[weight] *= 1.5
    # given the model alone, both sides load the edited model: nothing can diverge
    assert debug.compare_transformers(edited, IDS).ok
    report = debug.compare_transformers(edited, IDS, transformers_folder=folder)
    assert report.first.name == "model.layers.1.self_attn.v"          # where that weight is first read
    note = next(n for n in report.notes if weight in n)
    assert "have different parameters" in note and "loaded different" not in note, note
    assert str(folder) in note and note.count(".weight") == 1           # that weight alone
    unedited = debug.compare_transformers(Llama.from_pretrained(folder), IDS, transformers_folder=folder)
    assert unedited.ok and not any("parameters" in n for n in unedited.notes), str(unedited)
    # a parameter on npllama's side alone is named too: an untied LM head against a tied folder
    tied = Llama(tiny_config(tie_word_embeddings=True), seed=0)
    tied.save_pretrained(tmp_path / "tied")
    untied = Llama(tiny_config(), params={**tied.params, "lm_head.weight": tied.params["model.embed_tokens.weight"].copy()})
    notes = debug.compare_transformers(untied, IDS, transformers_folder=tmp_path / "tied").notes
    assert any("lm_head.weight (transformers has none)" in n for n in notes), notes
    # in float64 too (npllama's float32 model cast to float64, as transformers casts the folder)
    assert debug.compare_transformers(edited, IDS, dtype=np.float64, transformers_folder=folder).first.name == \
        "model.layers.1.self_attn.v"


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
@pytest.mark.parametrize("given", ["model", "classifier"])
def test_a_float64_model_given_without_dtype_is_compared_in_float64(folder, given):
    # a float64 model is compared as it is, at float64's tolerance, not silently cast to float32
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from npllama.finetune import SequenceClassifier

    model64 = Llama.from_pretrained(folder, dtype=np.float64)
    if given == "model":
        report = debug.compare_transformers(model64, IDS, transformers_folder=folder)
    else:
        classifier = SequenceClassifier(model64, ["a", "b"], pad_id=0)
        report = debug.compare_transformers(classifier, IDS, [1])
    assert report.ok, str(report)
    assert report.rtol == 1e-9
    assert all(t["loss"].dtype == np.float64 for t in report.traces)
    # a float32 model stays float32, and an explicit dtype still casts
    model32 = Llama.from_pretrained(folder)
    assert debug.compare_transformers(model32, IDS, transformers_folder=folder).rtol == 1e-3
    assert debug.compare_transformers(model32, IDS, dtype=np.float64, transformers_folder=folder).rtol == 1e-9


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
@pytest.mark.parametrize("setting, differs", [
    (dict(rms_norm_eps=1e-3), ("rms_norm_eps 0.001 in npllama, 1e-05 in transformers", "input_layernorm.out")),
    # the same weight shapes ((16, 16) and (8, 16)) cut into 2 heads of 8 instead of 4 of 4: the
    # RoPE tables, (T, head_dim), are the first tensors whose shape shows it
    (dict(num_attention_heads=2, num_key_value_heads=1),
     ("num_attention_heads 2 in npllama, 4 in transformers", "model.rotary_emb.cos")),
])
def test_a_setting_that_differs_from_the_transformers_folder_is_named(folder, model, setting, differs):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    named, first = differs
    reconfigured = Llama(tiny_config(**setting), params=model.params)
    report = debug.compare_transformers(reconfigured, IDS, transformers_folder=folder)
    assert report.first.name.endswith(first), str(report)
    note = next((n for n in report.notes if "configured differently" in n), None)
    assert note is not None and named in note and str(folder) in note, report.notes
    assert not any("configured differently" in n
                   for n in debug.compare_transformers(model, IDS, transformers_folder=folder).notes)


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_cli_compares_the_model_of_model_against_transformers_on_another_folder(folder, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    edited = Llama.from_pretrained(folder)
    edited.params["model.layers.0.mlp.up_proj.weight"] *= 1.5
    edited.save_pretrained(tmp_path / "edited")
    argv = ["debug", "compare", "--model", str(tmp_path / "edited"), "--tokens", "1,2,3,4", "--against",
            "transformers"]
    assert run_cli(argv) == 0   # one folder, loaded by both
    capsys.readouterr()
    assert run_cli(argv + ["--transformers-folder", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"against transformers on {folder}" in out
    assert "model.layers.0.mlp.up_proj.weight (relative error" in out and "FIRST DIVERGENCE" in out
    assert run_cli(["debug", "compare", "--model", str(folder), "--tokens", "1,2,3,4", "--against",
                    "transformers", "--transformers-folder", str(folder)]) == 0


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_cli_transformers_folder_takes_a_run_folder_as_model_does(folder, tmp_path, capsys):
    # --model runs/x loads runs/x/model; --transformers-folder runs/x must name the same model
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    Llama.from_pretrained(folder).save_pretrained(tmp_path / "run" / "model")
    assert run_cli(["debug", "compare", "--model", str(tmp_path / "run"), "--tokens", "1,2,3,4", "--against",
                    "transformers", "--transformers-folder", str(tmp_path / "run")]) == 0
    assert f"against transformers on {tmp_path / 'run' / 'model'}" in capsys.readouterr().out


def test_transformers_folder_is_checked_before_anything_runs(folder, tmp_path, model):
    # (refused before transformers is imported: these need neither torch nor transformers)
    with pytest.raises(TypeError, match="transformers_folder must be"):
        debug.compare_transformers(model, IDS, transformers_folder=3)
    with pytest.raises(ValueError, match=r"transformers_folder .*\(no config.json in it\)"):
        debug.compare_transformers(model, IDS, transformers_folder=tmp_path)
    from npllama.finetune import SequenceClassifier
    from npllama.lora import attach_lora

    with pytest.raises(ValueError, match=r"holds a language model \(LlamaForCausalLM\), but the model is a "
                                         r"classifier \(LlamaForSequenceClassification\)"):
        debug.compare_transformers(SequenceClassifier(model, ["a", "b"]), IDS, [0], transformers_folder=folder)
    adapted = Llama.from_pretrained(folder)
    attach_lora(adapted, r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="LoRA adapters.*merge"):
        debug.compare_transformers(adapted, IDS, transformers_folder=folder)


# ----- how the two runs were made, said before any tensor -----------------------------------------

def adapted(model, seed=0):
    """A copy of `model` with LoRA adapters on q and v whose B is not 0 (fresh adapters change nothing)."""
    from npllama.lora import attach_lora

    copy = Llama(model.config, params={n: p.copy() for n, p in model.params.items()})
    adapters = attach_lora(copy, r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    rng = np.random.default_rng(seed)
    adapters.params = {n: 0.3 * rng.standard_normal(p.shape).astype(p.dtype) for n, p in adapters.params.items()}
    return copy


def rmsnorm_backward_of_my_own(dy, cache):
    from npllama.ops.rmsnorm import rmsnorm_backward

    return rmsnorm_backward(dy, cache)


def test_lora_adapters_and_a_replaced_op_are_both_noted(model, tmp_path):
    with npllama.use_op("rmsnorm_backward", rmsnorm_backward_of_my_own):
        report = debug.compare_backends(adapted(model), IDS)
    assert report.ok, str(report)
    text = str(report)
    assert "NOTE: both traces ran with LoRA adapters (r=2, lora_alpha=4 on q_proj, v_proj)" in text, text
    assert "NOTE: both traces ran ops replaced with use_op: rmsnorm_backward by " \
           "tests.test_debug.rmsnorm_backward_of_my_own" in text, text
    # kept in a saved trace, and said when only one side ran with adapters
    with_lora, _ = report.traces
    with_lora.save(tmp_path / "lora.npz")
    assert npllama.trace.Trace.load(tmp_path / "lora.npz").lora == "r=2, lora_alpha=4 on q_proj, v_proj"
    assert with_lora.select("model.layers.0.*").lora == with_lora.lora     # a part of the trace says so too
    # a trace saved before traces noted LoRA (no "lora" in its metadata) loads, noting none
    archive = dict(np.load(tmp_path / "lora.npz", allow_pickle=False))
    meta = json.loads(str(archive["__meta__"]))
    del meta["meta"]["lora"]
    np.savez(tmp_path / "older.npz", **{**archive, "__meta__": np.array(json.dumps(meta))})
    older = npllama.trace.Trace.load(tmp_path / "older.npz")
    assert older.lora is None and len(older) == len(with_lora)
    against_base = npllama.trace.compare(tmp_path / "lora.npz", debug.run_trace(model, IDS), 1e-3,
                                         labels=("adapted", "base"))
    note = next(n for n in against_base.notes if "LoRA" in n)
    assert note.startswith("adapted ran with LoRA adapters (r=2, lora_alpha=4 on q_proj, v_proj); base's trace "
                           "notes none"), note
    assert against_base.first.name == "model.layers.0.self_attn.q"      # what the adapters change first
    assert not any("LoRA" in n for n in debug.compare_backends(model, IDS).notes)


def test_cli_runs_a_model_with_a_lora_adapter_and_notes_it(folder_with_tokenizer, tmp_path, capsys):
    from npllama.finetune import SequenceClassifier

    folder = folder_with_tokenizer    # (a classifier pads with its tokenizer's pad id)
    base = Llama.from_pretrained(folder)
    adapted(base).lora.save_adapter(tmp_path / "sft")
    classifier = SequenceClassifier(adapted(base, seed=1), ["neg", "pos"])
    classifier.save(tmp_path / "classify", tokenizer=None)          # a SEQ_CLS adapter with its head
    for adapter, label in ((tmp_path / "sft", []), (tmp_path / "classify", ["--label", "pos"])):
        argv = ["--model", str(folder), "--adapter", str(adapter), "--tokens", "1,7,3,12", *label]
        assert run_cli(["debug", "compare", *argv]) == 0
        out = capsys.readouterr().out
        assert f"{folder} + adapter {adapter}" in out
        assert "NOTE: both traces ran with LoRA adapters (r=2, lora_alpha=4 on q_proj, v_proj)" in out, out
        assert run_cli(["debug", "trace", *argv]) == 0
        out = capsys.readouterr().out
        assert "d:base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in out
        assert ("d:score.weight" in out) == bool(label)
    # the adapters' run, not the base model's: a planted bug in a base op shows as usual
    assert run_cli(["debug", "compare", "--model", str(folder), "--adapter", str(tmp_path / "sft"), "--tokens",
                    "1,7,3,12", "--plant", "rope-meta"]) == 1


def test_an_adapter_without_model_runs_on_the_base_it_names_in_trace_and_compare(folder_with_tokenizer, tmp_path,
                                                                                  monkeypatch, capsys):
    # --adapter alone runs on the base its adapter_config.json names, not the latest run: `debug
    # compare` resolved --model before it looked at the adapter, and said "no trained model found"
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "no-runs"))   # no latest run to fall back on
    adapted(Llama.from_pretrained(folder_with_tokenizer)).lora.save_adapter(
        tmp_path / "sft", base_model_name_or_path=str(folder_with_tokenizer))
    for command in ("trace", "compare"):
        assert run_cli(["debug", command, "--adapter", str(tmp_path / "sft"), "--tokens", "1,7,3,12"]) == 0, \
            capsys.readouterr().err
        assert f"{folder_with_tokenizer} + adapter {tmp_path / 'sft'}" in capsys.readouterr().out


def test_a_classification_adapters_finetune_json_is_read_once(folder_with_tokenizer, tmp_path, monkeypatch):
    # its pad id and its labels, max_len and attention come from one reading: a fine-tune replacing
    # the folder in between could otherwise mix two runs' records
    from pathlib import Path

    from npllama.debug import load_inputs
    from npllama.finetune import SequenceClassifier
    from npllama.io import reading

    base = Llama.from_pretrained(folder_with_tokenizer)
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"], pad_id=3).save(tmp_path / "classify", tokenizer=None)
    read, real_read_json = [], reading.read_json
    monkeypatch.setattr(reading, "read_json", lambda path, *args, **kwargs: (
        read.append(Path(path).name), real_read_json(path, *args, **kwargs))[1])
    without_tokenizer = _base_without_tokenizer(folder_with_tokenizer, 0)   # then the pad id is looked up too
    loaded = load_inputs(without_tokenizer, tokens="1,7,3", classifier=True, adapter=tmp_path / "classify")
    assert list(loaded[0].label_names) == ["neg", "pos"] and loaded[0].pad_id == 3
    assert read.count("finetune.json") == 1, read


def _base_without_tokenizer(folder, pad_token_id):
    """A copy of the model folder without its tokenizer, config.json's pad_token_id set as given."""
    copy = folder.parent / f"without_tokenizer_{pad_token_id}"
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    (copy / "tokenizer.model").unlink()
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    (copy / "config.json").write_text(json.dumps({**config, "pad_token_id": pad_token_id}), encoding="utf-8")
    return copy


def test_a_classification_adapter_runs_on_a_base_without_tokenizer_when_its_pad_id_is_known(folder_with_tokenizer,
                                                                                           tmp_path, capsys):
    from npllama.finetune import SequenceClassifier

    base = Llama.from_pretrained(folder_with_tokenizer)
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"]).save(tmp_path / "classify", tokenizer=None)
    # the head skips the pad id, which training took from the tokenizer: without one, config.json's
    bare = _base_without_tokenizer(folder_with_tokenizer, pad_token_id=7)
    head, _, ids, labels = debug.load_inputs(str(bare), tokens="1,7,3", classifier=True,
                                            adapter=str(tmp_path / "classify"))
    assert head.pad_id == 7 and labels == ["1", "7", "3"] and head.model.lora is not None
    with_tokenizer, *_ = debug.load_inputs(str(folder_with_tokenizer), tokens="1,7,3", classifier=True,
                                          adapter=str(tmp_path / "classify"))
    assert with_tokenizer.pad_id == 2     # the tokenizer's </s> (it has no pad piece), as training padded
    argv = ["--model", str(bare), "--adapter", str(tmp_path / "classify"), "--tokens", "1,7,3", "--label", "pos"]
    assert run_cli(["debug", "trace", *argv]) == 0
    assert "d:score.weight" in capsys.readouterr().out
    # neither a tokenizer nor a pad_token_id: said, naming both
    unknown = _base_without_tokenizer(folder_with_tokenizer, pad_token_id=None)
    with pytest.raises(ValueError, match=r"sequence-classification adapter.*pad id.*no tokenizer.*pad_token_id"):
        debug.load_inputs(str(unknown), tokens="1,7,3", classifier=True, adapter=str(tmp_path / "classify"))


def test_a_classification_adapter_without_tokenizer_skips_the_pad_id_it_was_trained_with(folder_with_tokenizer,
                                                                                          tmp_path):
    """An adapter fine-tuned as `finetune classify --lora` makes it -- on a base whose config.json says
    pad_token_id 0 while its tokenizer pads with </s> -- records the id it padded with (finetune.json):
    run without the tokenizer, its head skips that id, not config.json's, as load_classifier's does."""
    from npllama.classify import load_classifier
    from npllama.finetune import SequenceClassifier
    from npllama.objectives import pad_id_of
    from npllama.tokenizer import Tokenizer

    tokenizer = Tokenizer(folder_with_tokenizer / "tokenizer.model")
    base = Llama.from_pretrained(folder_with_tokenizer)
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"], pad_id=pad_id_of(tokenizer)).save(
        tmp_path / "classify", tokenizer, base_dir=folder_with_tokenizer)
    assert json.loads((tmp_path / "classify" / "finetune.json").read_text())["pad_id"] == 2
    bare = _base_without_tokenizer(folder_with_tokenizer, pad_token_id=0)
    head, *_ = debug.load_inputs(str(bare), tokens="1,7,3", classifier=True, adapter=str(tmp_path / "classify"))
    assert head.pad_id == 2 == load_classifier(folder_with_tokenizer, adapter=tmp_path / "classify").head.pad_id


def test_an_adapter_on_a_classifier_folder_is_refused_not_ignored(classifier_folder, model, tmp_path):
    adapted(model).lora.save_adapter(tmp_path / "sft")
    with pytest.raises(ValueError, match=r"--model .*classifier.* --adapter"):
        debug.load_inputs(str(classifier_folder), tokens="1,2,3", classifier=True, adapter=str(tmp_path / "sft"))


def test_a_classification_adapter_runs_on_a_gguf_base(model_files, folder_with_tokenizer, tmp_path):
    from npllama.finetune import SequenceClassifier

    base = Llama.from_pretrained(model_files["gguf"])
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"]).save(tmp_path / "classify", tokenizer=None)
    head, model_dir, _, labels = debug.load_inputs(str(model_files["gguf"]), text="the cat", classifier=True,
                                                  adapter=str(tmp_path / "classify"))
    assert model_dir == model_files["gguf"] and labels[0] == "<s>" and list(head.label_names) == ["neg", "pos"]
    assert head.model.lora is not None


def test_a_classification_adapter_on_a_llama2c_file_without_tokenizer_says_how_to_give_the_pad_id(tmp_path):
    """A llama2.c file has no config.json to set pad_token_id in: the message names the file and the way."""
    from npllama.finetune import SequenceClassifier
    from tests.io.llama2c_files import random_llama2c_weights, write_legacy

    write_legacy(tmp_path / "tiny.bin", random_llama2c_weights(vocab_size=64))
    base = Llama.from_pretrained(tmp_path / "tiny.bin")
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"]).save(tmp_path / "classify", tokenizer=None)
    with pytest.raises(ValueError) as refused:
        debug.load_inputs(str(tmp_path / "tiny.bin"), tokens="1,2", classifier=True,
                          adapter=str(tmp_path / "classify"))
    message = str(refused.value)
    assert "no pad_token_id in tiny.bin" in message and "npllama convert" in message, message
    assert "config.json:" not in message, message


def test_a_tokenizer_beside_a_file_that_cannot_serve_is_named_not_called_missing(tmp_path):
    from tests.io.llama2c_files import random_llama2c_weights, write_legacy

    write_legacy(tmp_path / "tiny.bin", random_llama2c_weights(vocab_size=64))
    (tmp_path / "tokenizer.bin").write_bytes(b"not a tokenizer")
    with pytest.raises(ValueError) as refused:
        debug.load_inputs(str(tmp_path / "tiny.bin"), text="the cat")
    assert "tokenizer.bin" in str(refused.value) and "no tokenizer.model or tokenizer.bin" not in str(refused.value)
    assert debug.load_inputs(str(tmp_path / "tiny.bin"), tokens="1,2")[2] == [1, 2]   # ids need no tokenizer


def test_a_model_with_lora_is_refused_by_transformers_not_compared_without_its_adapters(model):
    # saved to a folder for transformers, the model would lose its adapters on both sides: the
    # comparison would pass, of the base model (needs neither torch nor transformers: refused first)
    with pytest.raises(ValueError, match=r"LoRA adapters \(r=2, .*\), which transformers' LlamaForCausalLM "
                                         r"does not run: merge\(\) them"):
        debug.compare_transformers(adapted(model), IDS)


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_an_edited_weight_and_a_replaced_op_are_both_noted_against_transformers(folder, model):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    edited = Llama(model.config, params={n: p.copy() for n, p in model.params.items()})
    edited.params["model.layers.1.mlp.up_proj.weight"] *= 1.5
    with npllama.use_op("rmsnorm_backward", rmsnorm_backward_of_my_own):
        report = debug.compare_transformers(edited, IDS, transformers_folder=folder)
    text = str(report)
    assert "model.layers.1.mlp.up_proj.weight (relative error" in text, text
    assert "npllama ran ops replaced with use_op: rmsnorm_backward by tests.test_debug.rmsnorm_backward_of_my_own" \
        in text, text


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, model):
    from npllama.finetune import SequenceClassifier

    path = tmp_path_factory.mktemp("classifier") / "classifier"
    # a model of its own (the same weights): a classifier's pad id becomes its model's pad_token_id,
    # which would change the module's `model` for the tests that run after this fixture
    own = Llama(model.config, dtype=model.dtype, params=model.params)
    SequenceClassifier(own, ["neg", "pos"], pad_id=0)._save_hf_folder(path)
    assert model.config.pad_token_id is None
    return path


def _loading_fails(monkeypatch):
    """Make every way a comparison loads a model fail, so a refusal that comes after a load shows."""
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mismatch was refused")

    monkeypatch.setattr(Llama, "from_pretrained", classmethod(no_loading))
    monkeypatch.setattr(debug, "_from_folder", no_loading)
    monkeypatch.setattr(debug, "load_transformers_model", no_loading)


@pytest.mark.parametrize("ours, theirs, said", [
    ("classifier_folder", "folder", "holds a language model (LlamaForCausalLM), but the model is a classifier "
                                    "(LlamaForSequenceClassification)"),
    ("folder", "classifier_folder", "holds a classifier (LlamaForSequenceClassification), but the model is a "
                                    "language model (LlamaForCausalLM)"),
])
def test_a_classifier_against_a_causal_lm_folder_is_refused_before_anything_loads(ours, theirs, said, request,
                                                                                 monkeypatch, capsys):
    ours, theirs = request.getfixturevalue(ours), request.getfixturevalue(theirs)
    _loading_fails(monkeypatch)
    argv = ["debug", "compare", "--model", str(ours), "--tokens", "1,2,3", "--label", "pos", "--against",
            "transformers", "--transformers-folder", str(theirs)]
    with pytest.raises(ValueError) as refused:
        run_cli(argv)
    assert said in str(refused.value)
    assert capsys.readouterr().out == ""    # not even the line that starts a comparison
    with pytest.raises(ValueError, match=re.escape(said)):   # from Python, given the path
        debug.compare_transformers(str(ours), [1, 2, 3], [1] if ours.name == "classifier" else None,
                                   transformers_folder=theirs)


def test_a_run_folder_given_to_compare_transformers_is_its_models_kind(classifier_folder, folder, tmp_path,
                                                                       monkeypatch):
    # as --model reads it: the run's model/ folder, here a classifier's (not "a language model")
    shutil.copytree(classifier_folder, tmp_path / "run" / "model")
    _loading_fails(monkeypatch)
    with pytest.raises(ValueError, match=re.escape("holds a language model (LlamaForCausalLM), but the model is a "
                                                   "classifier (LlamaForSequenceClassification)")):
        debug.compare_transformers(str(tmp_path / "run"), [1, 2, 3], [1], transformers_folder=folder)


# ----- float64 against a float64-faithful transformers (optional) -----------------------------------

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 4}   # IDS run past it
FLOAT64_KINDS = {   # kinds of model the float64 tolerance against transformers was measured on
    "gqa": {},
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "llama3_rope": dict(rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
    "odd_head_dim": dict(head_dim=6),
}


@pytest.fixture(scope="module", params=list(FLOAT64_KINDS))
def float64_folder(request, tmp_path_factory):
    model = Llama(tiny_config(**FLOAT64_KINDS[request.param]), seed=1, dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in model.params.values():
        if p.ndim == 1:   # norms off 1, so that their gradients matter
            p += 0.3 * rng.standard_normal(p.shape)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path, dtype="float64")
    return path


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_float64_against_transformers_agrees_to_float64_round_off_with_attn_probs_on_both_sides(float64_folder):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    report = debug.compare_transformers(float64_folder, IDS, dtype=np.float64)
    assert report.ok and report.rtol == debug.TRANSFORMERS_FLOAT64_RTOL <= 1e-9, str(report)
    compared = {d.name: d.rel_err for d in report.diffs}
    for name in ["model.layers.0.self_attn.attn_probs", "model.layers.1.self_attn.attn_probs",
                 "d:model.layers.1.self_attn.attn_probs", "model.layers.1.self_attn.q_rot", "loss",
                 "d:model.layers.0.self_attn.q_proj.weight", "d:model.embed_tokens.weight"]:
        assert compared[name] < 1e-12, (name, compared.get(name))   # float64 round-off, not float32's
    assert max(compared.values()) < 1e-12
    assert any("float64-faithful" in note for note in report.notes), report.notes


def eps_slip(x, weight, eps):
    """RMSNorm with rms_norm_eps 0.1% too large: a change of about 1e-5 in its output."""
    from npllama.ops.rmsnorm import rmsnorm_forward

    return rmsnorm_forward(x, weight, eps * 1.001)


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_a_slip_of_size_1e5_is_found_in_float64_and_would_hide_from_stock_transformers(folder):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with npllama.use_op("rmsnorm_forward", eps_slip):
        found = debug.compare_transformers(folder, IDS, dtype=np.float64)
        stock = debug.compare_transformers(folder, IDS, dtype=np.float64, faithful=False)
    assert found.first is not None, str(found)
    assert found.first.name == "model.layers.0.input_layernorm.out"
    assert 1e-6 < found.first.rel_err < 1e-4   # the size of slip meant
    assert stock.ok, str(stock)                # within float32's tolerance: invisible there
    assert any("stock transformers" in note for note in stock.notes), stock.notes
    # and stock is stock, though a faithful comparison ran before it: its softmax is float32's
    assert stock.diffs[[d.name for d in stock.diffs].index("model.layers.1.self_attn.attn_probs")].rel_err > 1e-9


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_rope_frequencies_are_checked_not_taken_from_npllama(tmp_path, monkeypatch):
    # float64's RoPE tables are built from npllama's frequencies (transformers rounds its own to
    # float32): a wrong llama3 factor on npllama's side must not be copied into transformers' side
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import dataclasses

    Llama(tiny_config(rope_theta=500000.0, rope_scaling=LLAMA3_SCALING), seed=0).save_pretrained(tmp_path)
    load = Llama.from_pretrained.__func__

    def load_with_a_wrong_factor(cls, *args, **kwargs):
        model = load(cls, *args, **kwargs)
        scaling = dict(model.config.rope_scaling, factor=4.0)   # the folder says 8
        return Llama(dataclasses.replace(model.config, rope_scaling=scaling), dtype=model.dtype, params=model.params)

    report = debug.compare_transformers(tmp_path, IDS, dtype=np.float64)
    assert report.ok and not any("RoPE frequencies differ" in note for note in report.notes), str(report)
    monkeypatch.setattr(Llama, "from_pretrained", classmethod(load_with_a_wrong_factor))
    for dtype, faithful in [(np.float64, True), (np.float64, False), (np.float32, True)]:
        report = debug.compare_transformers(tmp_path, IDS, dtype=dtype, faithful=faithful)
        assert report.first.name == "model.rotary_emb.cos", str(report)   # the tables, not the op applying them
        note = next((n for n in report.notes if "RoPE frequencies differ" in n), "")
        assert "rope_theta=500000" in note and "'factor': 4.0" in note, report.notes
        # and no other note tells the reader that this run's two sides agree
        assert not any("both sides agree" in n for n in report.notes), report.notes
    # what train-compare uses: the same check, the same note
    hf = debug.load_transformers_model(tmp_path, np.float64)
    notes = debug.float64_faithful(hf, Llama.from_pretrained(tmp_path).config)
    assert len(notes) == 1 and "rope_scaling" in notes[0]


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_float64_faithful_twice_on_one_model_patches_its_modules_once(folder, monkeypatch):
    # calling it again on a model already made faithful must not wrap the attention's forward in a
    # second float64-softmax mode (one more per call), nor leave a mode active after the forward
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from torch.overrides import _get_current_function_mode_stack

    hf = debug.load_transformers_model(folder, np.float64)
    config = Llama.from_pretrained(folder).config
    mode = debug._float64_softmax_mode()
    handle, softmaxes_handled = mode.__torch_function__, []

    def counting(self, func, *args, **kwargs):
        if func is torch.nn.functional.softmax:
            softmaxes_handled.append(len(_get_current_function_mode_stack()))
        return handle(self, func, *args, **kwargs)

    monkeypatch.setattr(mode, "__torch_function__", counting)
    for _ in range(2):
        assert debug.float64_faithful(hf, config) == []
    logits = hf(torch.tensor([IDS])).logits
    assert len(softmaxes_handled) == config.num_hidden_layers, softmaxes_handled   # one mode per softmax
    assert logits.dtype == torch.float64 and _get_current_function_mode_stack() == []


def test_compare_transformers_faithful_must_be_a_bool(folder):
    with pytest.raises(TypeError, match="faithful"):
        debug.compare_transformers(folder, IDS, faithful="no")


@pytest.mark.slow  # imports torch and transformers; skipped when they are absent
def test_cli_compares_float64_with_faithful_transformers_unless_told_stock(folder, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    argv = ["debug", "compare", "--model", str(folder), "--tokens", "1,2,3,4", "--against", "transformers",
            "--dtype", "float64"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "rtol = 1e-09" in out and "float64-faithful" in out, out
    assert run_cli([*argv, "--stock-transformers"]) == 0
    out = capsys.readouterr().out
    assert "rtol = 0.001" in out and "stock transformers" in out, out


# ----- a debugger can step into every op ---------------------------------------------------------------

STEP_SCRIPT = """
import os, sys, json
import numpy as np
from npllama import Llama, LlamaConfig
model = Llama(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=8))
import npllama
package = os.path.dirname(os.path.abspath(npllama.__file__)) + os.sep
entered = set()
def profile(frame, event, arg):
    if event == "call" and frame.f_code.co_filename.startswith(package):
        path = frame.f_code.co_filename[len(package):]
        entered.add(path + ":" + frame.f_code.co_name)
sys.setprofile(profile)
model.loss_and_grads(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))
sys.setprofile(None)
print(json.dumps(sorted(entered)))
"""


def python_frames_entered(**env):
    import json
    import os

    result = subprocess.run([sys.executable, "-c", STEP_SCRIPT], check=True, capture_output=True, text=True,
                            env={**os.environ, **env})
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def njit_functions():
    """Names of the functions in npllama/kernels decorated with (numba.)njit / jit, read from source."""
    import ast
    from pathlib import Path

    import npllama.kernels

    names = set()
    for path in Path(npllama.kernels.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    if getattr(target, "id", getattr(target, "attr", "")) in ("njit", "jit"):
                        names.add(f"kernels{os.sep}{path.name}:{node.name}")
    return names


def test_numpy_backend_steps_through_the_reference_ops():
    entered = python_frames_entered(NPLLAMA_BACKEND="numpy")
    for op in ("attention.py:attention_backward", "rmsnorm.py:rmsnorm_backward", "rope.py:rope_forward",
               "cross_entropy.py:cross_entropy_backward", "swiglu.py:swiglu_act_backward"):
        assert f"ops{os.sep}{op}" in entered, op
    assert not any(name.startswith("kernels") for name in entered)


def test_disabled_jit_runs_the_kernels_as_python():
    jitted = njit_functions()
    if not jitted:
        pytest.skip("no @njit kernels yet")
    entered = python_frames_entered(NPLLAMA_BACKEND="numba", NUMBA_DISABLE_JIT="1")
    assert jitted & entered, "with NUMBA_DISABLE_JIT=1 the @njit kernels should run as Python frames"


def test_a_classification_adapters_recorded_pad_id_wins_over_its_bases_tokenizers(folder_with_tokenizer, tmp_path):
    # trained with another pad id than the tokenizer's (<unk> here; the tokenizer pads with </s>):
    # load_classifier and debug, given the tokenizer, take the record, as the head trained with it;
    # without the record (an adapter saved before it was kept), the tokenizer's, as before
    from npllama.classify import load_classifier
    from npllama.finetune import SequenceClassifier
    from npllama.tokenizer import Tokenizer

    tokenizer = Tokenizer(folder_with_tokenizer / "tokenizer.model")
    base = Llama.from_pretrained(folder_with_tokenizer)
    SequenceClassifier(adapted(base, seed=1), ["neg", "pos"], pad_id=0).save(
        tmp_path / "classify", tokenizer, base_dir=folder_with_tokenizer)
    loaded = load_classifier(folder_with_tokenizer, adapter=tmp_path / "classify").head
    head, *_ = debug.load_inputs(str(folder_with_tokenizer), tokens="1,7,3", classifier=True,
                                 adapter=str(tmp_path / "classify"))
    assert loaded.pad_id == head.pad_id == 0
    info = tmp_path / "classify" / "finetune.json"
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "pad_id"}))
    assert load_classifier(folder_with_tokenizer, adapter=tmp_path / "classify").head.pad_id == 2
