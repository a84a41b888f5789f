"""Pictures: the data behind them (always tested) and the PNG files (only with matplotlib)."""
import argparse
import json
import sys

import numpy as np
import pytest

from npllama import Llama, LlamaConfig, viz
from npllama.commands import UsageError
from npllama.commands import viz as viz_command

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_model(layers=3):
    return Llama(LlamaConfig(vocab_size=17, hidden_size=8, intermediate_size=12, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16), seed=0)


def write_log(path, steps=40):
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": 4.0 / step, "lr": 1e-3, "grad_norm": 1.0}) + "\n")
            if step % 10 == 0:
                f.write(json.dumps({"step": step, "val_loss": 5.0 / step}) + "\n")
        f.write(json.dumps({"step": steps + 1, "skipped": "non-finite loss"}) + "\n\n")


# ----- the data (no matplotlib needed) ----------------------------------------------------------------

def test_read_log_splits_train_and_validation(tmp_path):
    write_log(tmp_path / "log.jsonl")
    curves = viz.read_log(tmp_path)                      # a run folder works, and so does the file
    assert curves == viz.read_log(tmp_path / "log.jsonl")
    assert curves["step"] == list(range(1, 41)) and curves["loss"][3] == pytest.approx(1.0)
    assert curves["val_step"] == [10, 20, 30, 40] and curves["val_loss"][0] == pytest.approx(0.5)


def test_read_log_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        viz.read_log(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: is not valid JSON"):
        viz.read_log(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"step": 1, "skipped": "x"}\n')
    with pytest.raises(ValueError, match="no loss values"):
        viz.read_log(tmp_path)


def test_attention_probs_are_one_heads_causal_rows():
    model = tiny_model()
    probs = viz.attention_probs(model, [1, 2, 3, 4, 5], layer=2, head=1)
    assert probs.shape == (5, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(probs, 1) == 0) and probs[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"--layer must be in \[0, 3\)"):
        viz.attention_probs(model, [1, 2], layer=3, head=0)
    with pytest.raises(ValueError, match=r"--head must be in \[0, 2\)"):
        viz.attention_probs(model, [1, 2], layer=0, head=-1)


def test_grad_norms_per_layer_from_a_trace():
    from npllama import debug

    model = tiny_model()
    trace = debug.run_trace(model, [1, 2, 3, 4], include=["d:model.layers.*"])
    norms = viz.grad_norms(trace)
    assert set(norms) == set(viz.PARAM_KINDS) | {"out"}
    for kind, values in norms.items():
        assert values.shape == (3,) and np.all(values > 0), kind
    assert norms["mlp.up_proj.weight"][1] == pytest.approx(
        np.linalg.norm(trace["d:model.layers.1.mlp.up_proj.weight"]))
    with pytest.raises(ValueError, match="no per-layer gradients"):
        viz.grad_norms(debug.run_trace(model, [1, 2, 3], include=["model.*"]))


# ----- the pictures -----------------------------------------------------------------------------------

def run_cli(argv):
    parser = argparse.ArgumentParser(prog="npllama")
    viz_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_plot_functions_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    probs = np.tril(np.ones((4, 4)))
    probs /= probs.sum(-1, keepdims=True)
    assert is_png(viz.plot_attention(probs, ["<s>", "\u2581the", "\u2581cat", " "], tmp_path / "a.png"))
    write_log(tmp_path / "log.jsonl")
    assert is_png(viz.plot_loss(tmp_path, tmp_path / "loss.png"))
    from npllama import debug

    trace = debug.run_trace(tiny_model(), [1, 2, 3], include=["d:model.layers.*"])
    assert is_png(viz.plot_grad_norms(trace, tmp_path / "sub" / "g.png"))
    with pytest.raises(ValueError, match=".png"):
        viz.plot_loss(tmp_path, tmp_path / "loss.jpg")
    with pytest.raises(ValueError, match="labels"):
        viz.plot_attention(probs, ["a"], tmp_path / "b.png")


def test_chinese_token_labels_are_drawn_or_spelled_never_empty_boxes(tmp_path):
    # Before: matplotlib's default font has no Chinese, so "小明" was drawn as two empty boxes with
    # a "Glyph ... missing from font(s) DejaVu Sans" warning per character.
    pytest.importorskip("matplotlib")
    import warnings

    probs = np.tril(np.ones((4, 4)))
    probs /= probs.sum(-1, keepdims=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert is_png(viz.plot_attention(probs, ["<s>", "\u2581小明", "。", "\u24b6"], tmp_path / "zh.png"))
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "missing from font" in m], said
    # a machine without a Chinese font says so once, naming the characters (with one, nothing to say)
    assert all("小" in m and "\\u escapes" in m for m in said if "no installed font" in m), said
    assert len(said) <= 1, said
    # a character the default font lacks is taken from an installed font that has it: matplotlib's own
    # STIX fonts have Ⓐ (U+24B6), DejaVu Sans has not
    families, labels = viz._fonts_for(["\u24b6"])
    assert labels == ["\u24b6"] and len(families) == 2 and families[1].startswith("STIX")


def test_plotting_needs_no_pyplot_or_display(tmp_path):
    pytest.importorskip("matplotlib")
    import subprocess

    code = ("import sys, numpy as np\nfrom npllama import viz\n"
            f"viz.plot_attention(np.eye(2), ['a', 'b'], {str(tmp_path / 'a.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "DISPLAY"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert is_png(tmp_path / "a.png")


def test_cli_draws_all_three(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "attn.png"
    assert run_cli(["viz", "attention", "--model", str(tmp_path / "model"), "--tokens", "1,2,3,4",
                    "--layer", "1", "--head", "1", "--out", str(out)]) == 0
    assert is_png(out) and "4 tokens" in capsys.readouterr().out
    write_log(tmp_path / "log.jsonl")
    assert run_cli(["viz", "loss", str(tmp_path)]) == 0
    assert is_png(tmp_path / "loss.png")
    assert run_cli(["viz", "grads", "--model", str(tmp_path / "model"), "--tokens", "1,2,3",
                    "--out", str(tmp_path / "g.png")]) == 0
    assert is_png(tmp_path / "g.png")
    from npllama import debug

    debug.run_trace(model, [1, 2, 3]).save(tmp_path / "t.npz")
    assert run_cli(["viz", "grads", str(tmp_path / "t.npz"), "--out", str(tmp_path / "g2.png")]) == 0
    assert is_png(tmp_path / "g2.png")
    with pytest.raises(UsageError, match="not both"):
        run_cli(["viz", "grads", str(tmp_path / "t.npz"), "--tokens", "1"])
    with pytest.raises(UsageError, match=r"\(and --seed\), not both"):   # --seed alone is refused too: say it
        run_cli(["viz", "grads", str(tmp_path / "t.npz"), "--seed", "3"])


def test_cli_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` now fails
    write_log(tmp_path / "log.jsonl")
    with pytest.raises(UsageError, match=r"pip install 'npllama\[plot\]'"):
        run_cli(["viz", "loss", str(tmp_path)])
    with pytest.raises(ImportError, match="matplotlib"):
        viz.plot_loss(tmp_path, tmp_path / "loss.png")


def drawn_figure(monkeypatch):
    """The matplotlib Figure the next plot draws, instead of writing it (viz.save_png captured)."""
    drawn = []
    monkeypatch.setattr(viz, "save_png", lambda fig, path: drawn.append(fig) or path)
    return drawn


@pytest.mark.parametrize("settings, unit", [
    ({"train_config.json": {"objective": "causal"}}, "(nats per token)"),
    ({"train_config.json": {"objective": "mlm"}}, "(nats per masked token)"),
    ({"sft_config.json": {}}, "(nats per response token)"),
    ({"classify_config.json": {}}, "(nats per text)"),
    ({"sop_config.json": {}}, "per masked token + sentence-order loss per pair"),
    ({}, "cross-entropy loss (nats)")])       # a log on its own: no unit claimed
def test_loss_axis_names_the_unit_of_the_runs_loss(tmp_path, monkeypatch, settings, unit):
    # Before: every run's axis said "nats per token", though `finetune classify` logs the mean
    # cross-entropy of a batch's texts (one label each), and `finetune sop` an MLM loss plus a per-pair one.
    pytest.importorskip("matplotlib")
    drawn = drawn_figure(monkeypatch)
    write_log(tmp_path / "log.jsonl")
    for name, fields in settings.items():
        (tmp_path / name).write_text(json.dumps(fields))
    viz.plot_loss(tmp_path / "log.jsonl", tmp_path / "loss.png")
    assert unit in drawn[0].axes[0].get_ylabel()


def test_loss_title_names_the_run_folder_when_given_its_log(tmp_path, monkeypatch):
    # Before: `npllama viz loss runs/tiny/log.jsonl` was titled "loss: log.jsonl"
    pytest.importorskip("matplotlib")
    drawn = drawn_figure(monkeypatch)
    run = tmp_path / "my_run"
    run.mkdir()
    write_log(run / "log.jsonl")
    for given in (run, run / "log.jsonl"):
        assert run_cli(["viz", "loss", str(given)]) == 0
    assert [fig.axes[0].get_title() for fig in drawn] == ["loss: my_run"] * 2


def test_loss_moving_average_is_centred_on_its_steps(tmp_path, monkeypatch):
    # Before: the mean of steps s-w+1..s was drawn at step s, so on a falling loss the "mean" ran
    # above every step it averaged, (w-1)/2 steps late.  A centred mean of a straight line is the line.
    pytest.importorskip("matplotlib")
    drawn = drawn_figure(monkeypatch)
    with open(tmp_path / "log.jsonl", "w") as f:
        for step in range(1, 301):
            f.write(json.dumps({"step": step, "loss": 9.0 - 0.01 * step}) + "\n")
    viz.plot_loss(tmp_path, tmp_path / "loss.png")
    [smooth] = [line for line in drawn[0].axes[0].get_lines() if "mean of" in line.get_label()]
    steps, losses = smooth.get_data()
    assert len(steps) > 200
    np.testing.assert_allclose(losses, 9.0 - 0.01 * np.asarray(steps), atol=1e-9)


def test_grads_refuses_a_model_beside_a_trace_file(tmp_path):
    # Before: `viz grads t.npz --model other` drew the trace and ignored --model without a word
    pytest.importorskip("matplotlib")
    from npllama import debug

    debug.run_trace(tiny_model(), [1, 2, 3]).save(tmp_path / "t.npz")
    with pytest.raises(UsageError, match="--model"):
        run_cli(["viz", "grads", str(tmp_path / "t.npz"), "--model", str(tmp_path), "--out", str(tmp_path / "g.png")])
    assert not (tmp_path / "g.png").exists()


def test_attention_cells_the_causal_mask_hides_are_drawn_apart_from_learned_zeros(tmp_path, monkeypatch):
    # Before: a masked cell (a later token, which a causal model cannot see) was drawn in the colour
    # of 0 -- the same dark purple as a position the head learned to ignore -- so the causal
    # triangle did not stand out from the weights.
    pytest.importorskip("matplotlib")
    from npllama import debug

    model = tiny_model()
    monkeypatch.setattr(debug, "load_inputs", lambda *args, **kwargs: (model, None, [1, 2, 3, 4, 5], list("abcde")))
    drawn = drawn_figure(monkeypatch)
    assert run_cli(["viz", "attention", "--tokens", "1,2,3,4,5", "--out", str(tmp_path / "a.png")]) == 0
    ax = drawn[0].axes[0]
    [image] = ax.images
    colours = image.to_rgba(image.get_array())            # (T, S, 4): the colour of each cell
    zero = np.asarray(image.to_rgba(np.zeros((1, 1))))[0, 0]
    hidden = np.triu(np.ones((5, 5), bool), 1)
    for row, col in zip(*np.nonzero(hidden)):
        assert not np.allclose(colours[row, col], zero), (row, col)
    np.testing.assert_allclose(colours[hidden], colours[hidden][0:1].repeat(hidden.sum(), 0))   # one colour
    assert not np.allclose(colours[~hidden][:, :3], colours[hidden][0, :3])   # not a weight's colour either
    assert "grey" in drawn[0].axes[1].get_ylabel() and "causal mask" in drawn[0].axes[1].get_ylabel()


def test_attention_of_a_masked_lm_model_is_its_bidirectional_attention(tmp_path, monkeypatch):
    # Before: `viz attention --model` on a `train --objective mlm` run drew the causal attention the
    # model never runs (every later token at 0), with no mask told.
    model = tiny_model()
    model.objective = "mlm"
    probs = viz.attention_probs(model, [1, 2, 3, 4, 5], layer=1, head=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(probs[np.triu_indices(5, 1)] > 0)
    assert not viz.masked_cells(model, 5).any()
    pytest.importorskip("matplotlib")
    from npllama import debug

    monkeypatch.setattr(debug, "load_inputs", lambda *args, **kwargs: (model, None, [1, 2, 3, 4, 5], list("abcde")))
    drawn = drawn_figure(monkeypatch)
    assert run_cli(["viz", "attention", "--tokens", "1,2,3,4,5", "--out", str(tmp_path / "a.png")]) == 0
    assert "mask" not in drawn[0].axes[1].get_ylabel()
    assert "bidirectional" in drawn[0].axes[0].get_title()


@pytest.mark.parametrize("name", ["train_config.json", "finetune.json", "notes.txt"])
def test_a_file_beside_the_log_is_said_not_to_be_the_training_log(tmp_path, name):
    # Before: `viz loss RUN/train_config.json` said "train_config.json:1: is not valid JSON", as if
    # the settings file were damaged, and named neither the mistake nor the log beside it.
    write_log(tmp_path / "log.jsonl")
    (tmp_path / name).write_text(json.dumps({"objective": "causal", "steps": 40}, indent=2) + "\n")
    with pytest.raises(ValueError, match=rf"{name} is not a training log .*{tmp_path / 'log.jsonl'}") as error:
        viz.read_log(tmp_path / name)
    assert "not valid JSON" not in str(error.value)
    (tmp_path / "log.jsonl").unlink()   # alone: still not a log, and no run log to point to
    with pytest.raises(ValueError, match=rf"{name} is not a training log") as error:
        viz.read_log(tmp_path / name)
    assert "log.jsonl" in str(error.value)
    # a damaged log is still told as one, by line
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: is not valid JSON"):
        viz.read_log(tmp_path / "log.jsonl")


def test_a_log_of_one_step_draws_its_point(tmp_path, monkeypatch):
    # Before: a run stopped after its first step drew an empty plot: its one train loss was a line
    # without a marker, of no length.
    pytest.importorskip("matplotlib")
    drawn = drawn_figure(monkeypatch)
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    viz.plot_loss(tmp_path, tmp_path / "loss.png")
    [train] = drawn[0].axes[0].get_lines()
    assert train.get_marker() not in (None, "None", "", " ")


def isolated_points_without_marker(ax):
    """(label, x) of every finite point of a line drawn with no marker and no finite neighbour: a line
    of no length, which the picture does not show."""
    hidden = []
    for line in ax.get_lines():
        if line.get_marker() not in (None, "None", "", " "):
            continue
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        finite = np.isfinite(y)
        for i in np.nonzero(finite)[0]:
            if not (i > 0 and finite[i - 1]) and not (i + 1 < len(y) and finite[i + 1]):
                hidden.append((line.get_label(), x[i]))
    return hidden


@pytest.mark.parametrize("layers, include", [(1, "d:model.layers.*"), (3, "d:model.layers.1.*")])
def test_grad_norms_of_a_single_layer_are_all_drawn(tmp_path, monkeypatch, layers, include):
    # Before: the residual stream's norm was a dashed line without a marker, so a one-layer model's (or
    # a trace of one layer's) value was a line of no length: in the legend, nowhere in the picture.
    pytest.importorskip("matplotlib")
    from npllama import debug

    drawn = drawn_figure(monkeypatch)
    trace = debug.run_trace(tiny_model(layers), [1, 2, 3, 4], include=[include])
    viz.plot_grad_norms(trace, tmp_path / "g.png")
    ax = drawn[0].axes[0]
    assert isolated_points_without_marker(ax) == []
    # every recorded norm is a point of some line (the layer output's among them)
    norms = viz.grad_norms(trace)
    drawn_values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()])
    for values in norms.values():
        for value in values[np.isfinite(values)]:
            assert np.any(np.isclose(drawn_values, value, rtol=0, atol=0)), value


def test_token_labels_with_dollar_signs_are_drawn_as_written(tmp_path, monkeypatch):
    # Before: matplotlib read a label pair holding "$...$" as mathtext: "$x^2$" was drawn as x squared,
    # and "$\frac$" (LaTeX or shell text) stopped the plot with a ParseSyntaxException.
    pytest.importorskip("matplotlib")
    labels = ["$x^2$", "\u2581$\\frac$", "$", "a"]
    probs = np.tril(np.ones((4, 4)))
    probs /= probs.sum(-1, keepdims=True)
    assert is_png(viz.plot_attention(probs, labels, tmp_path / "a.png", title="run $1$"))
    drawn = drawn_figure(monkeypatch)
    viz.plot_attention(probs, labels, tmp_path / "a.png", title="run $1$")
    ax = drawn[0].axes[0]
    for texts in (ax.get_xticklabels(), ax.get_yticklabels(), [ax.title]):
        for text in texts:
            assert "$" not in text.get_text() or not text.get_parse_math(), text.get_text()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["$x^2$", "_$\\frac$", "$", "a"]
    write_log(tmp_path / "log.jsonl")
    viz.plot_loss(tmp_path, tmp_path / "loss.png", title="loss: $HOME$")   # a run folder's name, as written
    assert not drawn[-1].axes[0].title.get_parse_math()
    from npllama import debug

    trace = debug.run_trace(tiny_model(), [1, 2, 3, 4], include=["d:model.layers.*"])
    viz.plot_grad_norms(trace, tmp_path / "g.png", title="gradient norm per layer: $x^2$.npz")   # a trace's file name
    assert not drawn[-1].axes[0].title.get_parse_math()


def test_a_zero_gradient_norm_is_drawn_at_zero(tmp_path, monkeypatch):
    # Before: the axis was log-scaled, where 0 has no place: a layer whose gradient is 0 (here q, k
    # and v of a layer whose o_proj is 0, as some initialisations make it) was silently left out.
    pytest.importorskip("matplotlib")
    from npllama import debug

    model = tiny_model()
    model.params["model.layers.1.self_attn.o_proj.weight"][...] = 0
    trace = debug.run_trace(model, [1, 2, 3, 4], include=["d:model.layers.*"])
    norms = viz.grad_norms(trace)
    assert norms["self_attn.q_proj.weight"][1] == 0 and norms["self_attn.q_proj.weight"][0] > 0
    drawn = drawn_figure(monkeypatch)
    viz.plot_grad_norms(trace, tmp_path / "g.png")
    ax = drawn[0].axes[0]
    low, high = ax.get_ylim()
    assert low == 0   # a norm is never below 0: a symlog axis would run on into negative norms
    for kind, values in norms.items():
        for value in values:
            assert low <= value <= high and (ax.get_yscale() != "log" or value > 0), (kind, value)
    assert isolated_points_without_marker(ax) == []


def test_gradients_all_zero_are_refused_with_the_reason(tmp_path):
    # Before: `viz grads --model M --tokens 5` (one token: no next token, so a loss of 0 and every
    # gradient 0) wrote an empty log-scaled picture and a matplotlib warning.
    from npllama import debug

    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    trace = debug.run_trace(model, np.array([[1, 2, 3]]), np.array([[-100, -100, -100]]), include=["d:model.layers.*"])
    with pytest.raises(ValueError, match="every gradient norm in the trace is 0.*no target"):
        viz.plot_grad_norms(trace, tmp_path / "g.png")
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="every gradient norm in the trace is 0"):
        run_cli(["viz", "grads", "--model", str(tmp_path / "model"), "--tokens", "5", "--out", str(tmp_path / "g.png")])
    assert not (tmp_path / "g.png").exists()


def test_a_log_still_being_written_is_read_up_to_its_last_whole_line(tmp_path):
    # Before: `viz loss` on a run whose log.jsonl was being written (or whose run was killed in the middle
    # of a line) stopped at "log.jsonl:N: is not valid JSON" -- the line training had not finished.
    write_log(tmp_path / "log.jsonl", steps=20)
    whole = viz.read_log(tmp_path)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 21, "loss": 0.19')           # no newline: the writer is in the middle of it
    assert viz.read_log(tmp_path) == whole
    # a line that was finished (its newline written) and is damaged is still told, wherever it is
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(ValueError, match=r"log.jsonl:\d+: is not valid JSON"):
        viz.read_log(tmp_path)
    # a log whose only line is being written has no loss yet
    (tmp_path / "log.jsonl").write_text('{"step": 1, "lo')
    with pytest.raises(ValueError, match="no loss values yet"):
        viz.read_log(tmp_path)


def test_an_output_path_that_cannot_be_a_png_file_is_told_plainly(tmp_path):
    # Before: "[Errno 21] Is a directory: 'out.png'" and, for a path under a file, "[Errno 17] File
    # exists: 'notes'" -- which named no mistake.
    pytest.importorskip("matplotlib")
    probs = np.eye(2)
    (tmp_path / "pictures.png").mkdir()
    with pytest.raises(ValueError, match=r"pictures.png' is a folder: give the path of the \.png file to write"):
        viz.plot_attention(probs, ["a", "b"], tmp_path / "pictures.png")
    (tmp_path / "notes").write_text("x")
    for under in (tmp_path / "notes" / "a.png", tmp_path / "notes" / "sub" / "a.png"):
        with pytest.raises(ValueError, match=rf"{tmp_path / 'notes'}' is a file, not a folder"):
            viz.plot_attention(probs, ["a", "b"], under)
    assert is_png(viz.plot_attention(probs, ["a", "b"], tmp_path / "new" / "sub" / "a.png"))   # folders made


def test_gradients_holding_nan_or_inf_are_refused_naming_them(tmp_path):
    # Before: grad_norms' NaN stands for "not recorded", so a gradient holding NaN was drawn as a layer
    # not recorded (a gap), and a trace whose every gradient was NaN was refused as "every gradient norm
    # in the trace is 0 ... its loss had no target" -- untrue on both counts.
    from npllama import debug

    model = tiny_model()
    trace = debug.run_trace(model, [1, 2, 3, 4], include=["d:model.layers.*"])
    trace["d:model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of the trace's 30 per-layer gradients hold NaN or inf "
                                         r"\(d:model.layers.1.mlp.up_proj.weight\)"):
        viz.plot_grad_norms(trace, tmp_path / "g.png")
    model.params["model.layers.1.mlp.up_proj.weight"][0, 0] = np.inf   # every gradient NaN
    with np.errstate(all="ignore"):
        trace = debug.run_trace(model, [1, 2, 3, 4], include=["d:model.layers.*"])
    with pytest.raises(ValueError, match="30 of the trace's 30 per-layer gradients hold NaN or inf") as told:
        viz.plot_grad_norms(trace, tmp_path / "g.png")
    assert "is 0" not in str(told.value)
    assert not (tmp_path / "g.png").exists()


def test_all_zero_gradients_name_the_reason_of_the_loss_traced(tmp_path):
    # Before: "a single token has no next token to predict" whatever the loss; and "its loss had no
    # target" for weights that let no gradient through, whose loss had targets
    from npllama import debug

    trace = debug.run_trace(tiny_model(), np.array([[1, 2, 3]]), np.array([[-100, -100, -100]]),
                            include=["d:model.layers.*"])
    with pytest.raises(ValueError, match="no next token") as told:
        viz.plot_grad_norms(trace, tmp_path / "g.png")
    assert "weights that let no gradient through" in str(told.value)
    trace.meta["loss"] = "masked-LM"
    with pytest.raises(ValueError, match="no token was masked") as told:
        viz.plot_grad_norms(trace, tmp_path / "g.png")
    assert "next token" not in str(told.value)
