"""`npllama debug trace/compare` of a masked-LM model (`train --objective mlm`, `finetune sop`) trace
its masked-LM loss, the tokens masked as training masks its held-out text (seeded), and say so.
They traced next-token targets on the bidirectional stack: each position saw the very token it was
asked for, a loss that measures nothing.  `debug diff` says when two traces ran different losses."""
import numpy as np
import pytest

from npllama import Llama, debug
from npllama.cli import main
from npllama.objectives import IGNORE_INDEX, masked_held_out, mlm_loss
from npllama.tokenizer import Tokenizer
from npllama.trace import Trace

TEXT = "Tom went to the park with his red ball. He saw a big dog there, and the dog saw him."


@pytest.fixture(scope="module")
def folders(small_model_dir, tmp_path_factory):
    """(a masked-LM folder with its tokenizer, the causal one it was saved from, the tokenizer)."""
    folder = tmp_path_factory.mktemp("debug_mlm")
    mlm = Llama.from_pretrained(small_model_dir)
    mlm.objective = "mlm"
    mlm.save_pretrained(folder / "mlm", extra_files={"tokenizer.model": (small_model_dir / "tokenizer.model").read_bytes()})
    return folder / "mlm", small_model_dir, Tokenizer.load(small_model_dir / "tokenizer.model")


def test_the_masks_are_the_ones_training_draws_for_its_held_out_text(folders):
    _, _, tokenizer = folders
    ids = tokenizer.encode(TEXT, bos=True)
    inputs, targets = debug.masked_lm_batch(ids, tokenizer, seed=3)
    expected_inputs, expected_targets = masked_held_out([(np.array([ids]), None)], tokenizer, 3)[0]
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, expected_targets)
    assert (targets != IGNORE_INDEX).any()
    with pytest.raises(ValueError, match=r"seed 0 masks none of the 1 tokens.*give a longer text"):
        debug.masked_lm_batch([tokenizer.bos_id], tokenizer, seed=0)   # <s> is never chosen


def test_python_refuses_next_token_targets_for_a_masked_lm_model(folders):
    folder, _, tokenizer = folders
    mlm = Llama.from_pretrained(folder)
    ids = tokenizer.encode(TEXT, bos=True)
    for run in (debug.run_trace, debug.compare_backends, debug.compare_dtypes):
        with pytest.raises(ValueError, match="masked-LM model.*masked_lm_batch"):
            run(mlm, ids)
    inputs, targets = debug.masked_lm_batch(ids, tokenizer, seed=3)
    t = debug.run_trace(mlm, inputs, targets)
    assert float(t["loss"]) == pytest.approx(mlm_loss(mlm, inputs, targets), rel=1e-6) and t.meta["loss"] == "masked-LM"


def test_debug_trace_traces_the_masked_lm_loss_and_says_so(folders, tmp_path, capsys):
    folder, _, tokenizer = folders
    out = tmp_path / "t.npz"
    assert main(["debug", "trace", "--model", str(folder), "--text", TEXT, "--seed", "3", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    inputs, targets = debug.masked_lm_batch(tokenizer.encode(TEXT, bos=True), tokenizer, seed=3)
    masked = int((targets != IGNORE_INDEX).sum())
    assert f"the loss traced: the masked-LM loss, over {masked} of the {inputs.size} tokens" in said, said
    t = Trace.load(out)
    assert float(t["loss"]) == pytest.approx(mlm_loss(Llama.from_pretrained(folder), inputs, targets), rel=1e-5)
    assert t.meta["tokens"] == inputs.tolist() and "<unk>" in t.meta["labels"]   # the masked inputs, as traced
    # another seed, other masks: another loss
    assert main(["debug", "trace", "--model", str(folder), "--text", TEXT, "--seed", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert Trace.load(out).meta["tokens"] != inputs.tolist()


def test_viz_grads_of_a_masked_lm_model_draws_its_masked_lm_gradients(folders, tmp_path, monkeypatch, capsys):
    # Before: `viz grads --model` of a masked-LM model stopped on next-token targets with a hint
    # for Python (masked_lm_batch) that the command line cannot take; it now runs the masked-LM
    # loss as `debug trace` does, its masks drawn from --seed
    pytest.importorskip("matplotlib")
    from npllama import viz

    folder, causal, tokenizer = folders
    drawn = []
    monkeypatch.setattr(viz, "plot_grad_norms", lambda trace, out, title: drawn.append(trace) or out)
    assert main(["viz", "grads", "--model", str(folder), "--text", TEXT, "--seed", "3",
                 "--out", str(tmp_path / "g.png")]) == 0
    inputs, targets = debug.masked_lm_batch(tokenizer.encode(TEXT, bos=True), tokenizer, seed=3)
    expected = debug.run_trace(Llama.from_pretrained(folder), inputs, targets, include=["d:model.layers.*"])
    assert drawn[0].names() == expected.names()
    for name in expected.names():
        np.testing.assert_allclose(drawn[0][name], expected[name], rtol=1e-5, atol=1e-8)
    assert "masked-LM loss" in capsys.readouterr().out
    assert main(["viz", "grads", "--model", str(causal), "--text", TEXT, "--seed", "3"]) == 2   # masks nothing
    assert "--seed" in capsys.readouterr().err


def test_debug_compare_runs_the_masked_lm_loss_on_both_sides(folders, capsys):
    folder, _, _ = folders
    assert main(["debug", "compare", "--model", str(folder), "--text", TEXT, "--against", "float64"]) == 0
    said = capsys.readouterr().out
    assert "the loss traced: the masked-LM loss" in said and "no divergence" in said, said


def test_a_seed_for_a_model_that_masks_nothing_is_refused_and_a_short_text_names_a_seed(folders, capsys):
    folder, causal, _ = folders
    assert main(["debug", "trace", "--model", str(causal), "--text", TEXT, "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "next-token loss" in err and "ignored" in err, err
    assert main(["debug", "trace", "--model", str(causal), "--text", TEXT]) == 0
    assert "the loss traced: the next-token loss" in capsys.readouterr().out
    assert main(["debug", "trace", "--model", str(folder), "--text", "Tom."]) == 2
    err = capsys.readouterr().err
    assert "--seed 0 masks none" in err and "Traceback" not in err, err


def test_diff_says_the_traces_ran_different_losses(folders, tmp_path, capsys):
    folder, causal, _ = folders
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["debug", "trace", "--model", str(causal), "--text", TEXT, "--out", str(a)]) == 0
    assert main(["debug", "trace", "--model", str(folder), "--text", TEXT, "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["debug", "diff", str(a), str(b)]) == 1
    said = capsys.readouterr().out
    assert "different losses" in said and "next-token" in said and "masked-LM" in said, said


def test_the_help_says_which_loss_is_traced(capsys):
    for action in ("trace", "compare"):
        with pytest.raises(SystemExit):
            main(["debug", action, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert "masked-LM loss" in shown and "next-token loss" in shown and "--seed" in shown, (action, shown)
