"""docs/debugging.md stays true: its pdb session is replayed against the current source, and the
advice it gives (record with these patterns, then plot) works."""
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npllama import Llama, LlamaConfig, debug, viz
from npllama.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "debugging.md").read_text(encoding="utf-8")


def squeeze(line: str) -> str:
    return " ".join(line.split())


def update_script():
    spec = importlib.util.spec_from_file_location("update_pdb_session", ROOT / "docs" / "update_pdb_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pdb_sessions_line_numbers_are_those_of_the_current_source():
    # each stop is found by its function and its source text (an error when the function no longer
    # has that line: the session itself is wrong); the numbers must be where those lines are today
    assert update_script().updated(DOC) == DOC, \
        "the line numbers of the pdb session in docs/debugging.md drifted: run python docs/update_pdb_session.py"


def test_the_update_script_restores_numbers_that_drifted():
    script = update_script()
    session = script.SESSION.search(DOC).group(2)
    assert "until" in session and "Breakpoint" in session and "model.py(" in session
    drifted = _drifted(session)
    assert drifted != session and script.current_session(drifted) == session
    with pytest.raises(ValueError, match=r"block_backward\(\) at `-> dq_rot, dk_rot = nothing`.*edit it by hand"):
        script.current_session(re.sub(r"-> dq_rot, dk_rot, dv = .*", "-> dq_rot, dk_rot = nothing", session))


def _drifted(session: str, by: int = 7) -> str:
    return re.sub(r"(\.py\(|\.py:|until )(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + by), session)


def test_the_update_script_follows_an_until_past_the_programs_output_and_to_a_return():
    # what the program prints between `until N` and where it stops, and a stop at a return
    # (pdb adds its value: `->(...)`), leave the `until` tied to that stop all the same
    script = update_script()
    source = (ROOT / "npllama" / "ops" / "attention.py").read_text(encoding="utf-8").splitlines()
    text = next(t.strip() for t in source if t.strip().startswith("return dq, dk, dv"))
    line = script.line_of("npllama/ops/attention.py", "attention_backward", text)
    session = (f"(Pdb) until {line - 2}\nsome output of the program\n--Return--\n"
               f"> npllama/ops/attention.py({line})attention_backward()->(array([1.]), None)\n-> {text}\n")
    assert script.current_session(_drifted(session)) == session


def test_the_update_script_refuses_what_it_cannot_place_rather_than_rewrite_it():
    script = update_script()
    first = script.first_line("npllama/ops/attention.py", "attention_backward")
    stop = script.line_of("npllama/ops/attention.py", "attention_backward", "q, k, v, attn_probs, scale, n_rep = cache")
    by_function = (f"(Pdb) break npllama.ops.attention.attention_backward\n"
                   f"Breakpoint 1 at npllama/ops/attention.py:{first}\n(Pdb) continue\n"
                   f"> npllama/ops/attention.py({stop})attention_backward()\n-> q, k, v, attn_probs, scale, n_rep = cache\n")
    assert script.current_session(_drifted(by_function)) == by_function
    # a breakpoint set by line number is no function's first line: not rewritten as one
    by_line = by_function.replace("break npllama.ops.attention.attention_backward",
                                  f"break npllama/ops/attention.py:{stop}").replace(f":{first}", f":{stop}")
    with pytest.raises(ValueError, match=r"break npllama/ops/attention.py:\d+.*by line number.*edit it by hand"):
        script.current_session(by_line)
    # an `until` that no stop follows has no line to keep its distance to
    with pytest.raises(ValueError, match=r"until 80.*no stop.*edit it by hand"):
        script.current_session("(Pdb) until 80\n(Pdb) p x\n1\n")


def test_the_update_script_says_when_a_stop_is_ambiguous_not_out_of_date(tmp_path, monkeypatch):
    script = update_script()
    (tmp_path / "twice.py").write_text("def f(x):\n    x = x + 1\n    x = x + 1\n    return x\n", encoding="utf-8")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    with pytest.raises(ValueError, match=r"f\(\) has 2 such lines.*cannot tell which"):
        script.current_session("> twice.py(3)f()\n-> x = x + 1\n")
    with pytest.raises(ValueError, match=r"f\(\) has 0 such lines.*out of date"):
        script.current_session("> twice.py(3)f()\n-> x = x + 2\n")


def test_the_update_script_places_a_function_whose_name_the_file_has_twice(tmp_path, monkeypatch):
    # two classes' `step` (as debug_training's runs have): a breakpoint names one by its class, as pdb's
    # `break module.Class.method` does, and a stop (pdb shows the bare name) is the one whose body holds
    # its text -- or, where both do, the one at the number the session had, moved as little as an edit
    # above it moves it
    script = update_script()
    source = ("class A:\n    def step(self, x):\n        x = x + 1\n        return x\n\n\n"
              "class B:\n    @staticmethod\n    def step(x):\n        y = x * 2\n        return x\n")
    (tmp_path / "twice.py").write_text("\n\n" + source, encoding="utf-8")   # the session's numbers: 2 less
    monkeypatch.setattr(script, "ROOT", tmp_path)
    assert script.first_line("twice.py", "B.step") == 10 and script.first_line("twice.py", "A.step") == 4
    session = ("(Pdb) break twice.B.step\nBreakpoint 1 at twice.py:{}\n(Pdb) continue\n"
               "> twice.py({})step()\n-> y = x * 2\n(Pdb) until {}\n> twice.py({})step()\n-> return x\n")
    assert script.current_session(session.format(8, 10, 11, 11)) == session.format(10, 12, 13, 13)
    assert script.current_session("> twice.py(4)step()\n-> return x\n") == "> twice.py(6)step()\n-> return x\n"
    # where the number is as near the one as the other, the script cannot tell: said, not guessed
    with pytest.raises(ValueError, match=r"2 functions named step have, as near to line 8 as one another.*cannot tell"):
        script.line_of("twice.py", "step", "return x", old_line=8)   # A.step ends at 6, B.step starts at 10
    with pytest.raises(ValueError, match=r"2 functions named step have, and no line number to choose by"):
        script.line_of("twice.py", "step", "return x")
    with pytest.raises(ValueError, match=r"no function named C.step"):
        script.first_line("twice.py", "C.step")


def test_the_pdb_session_in_the_doc_is_what_pdb_prints_today(tmp_path):
    # replayed with the current numbers, so that a drift fails the test above alone, with its fix
    doc = update_script().updated(DOC)
    script = re.search(r"Take a script `step.py`:\n\n```python\n(.*?)```", doc, re.S).group(1)
    session = re.search(r"```\n\$ python -m pdb step.py\n(.*?)```", doc, re.S).group(1).splitlines()
    commands = [line[len("(Pdb) "):] for line in session if line.startswith("(Pdb) ")]
    (tmp_path / "step.py").write_text(script, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NPLLAMA_BACKEND": "numpy"}
    run = subprocess.run([sys.executable, "-m", "pdb", "step.py"], input="\n".join(commands + ["q"]) + "\n",
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    printed = run.stdout.replace(str(ROOT) + os.sep, "").replace("(Pdb) ", "\n")
    seen = {squeeze(line) for line in printed.splitlines()}
    expected = [line for line in session if not line.startswith("(Pdb) ")]
    missing = [line for line in expected if squeeze(line) not in seen]
    assert not missing, f"the doc shows lines pdb no longer prints: {missing}"


def test_the_docs_trace_command_keeps_what_viz_grads_needs_and_a_filtered_trace_is_explained():
    line = next(line for line in DOC.splitlines() if line.startswith("npllama debug trace"))
    patterns = re.findall(r"--include '([^']+)'", line + next(
        l for l in DOC.splitlines()[DOC.splitlines().index(line) + 1:] if l.strip()))
    assert "d:model.layers.*" in patterns
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float64)
    assert viz.grad_norms(debug.run_trace(model, [1, 2, 3], include=patterns))
    with pytest.raises(ValueError, match=r"include=\['model.layers.0.\*'\].*'d:model.layers.\*'"):
        viz.grad_norms(debug.run_trace(model, [1, 2, 3], include=["model.layers.0.*"]))


def test_the_trace_examples_run_and_the_summary_shown_is_what_they_print(tmp_path, monkeypatch, capsys):
    import npllama

    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    traces = next(b for b in blocks if "with npllama.trace() as t:" in b)
    saving = next(b for b in blocks if 't.save("run.npz")' in b)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(traces, "debugging.md traces", "exec"), namespace)   # noqa: S102
    exec(compile(saving, "debugging.md saving", "exec"), namespace)   # noqa: S102
    assert namespace["t2"].names() == namespace["t"].names()
    shown = re.search(r"recorded with `include=\[\"\*\.self_attn\.\*\", \"loss\"\]`\):\n\n```\n(.*?)```", DOC, re.S)
    shown = [line for line in shown.group(1).splitlines() if line != "..."]
    capsys.readouterr()
    with npllama.trace(include=["*.self_attn.*", "loss"]) as t:
        namespace["model"].loss_and_grads(namespace["tokens"], namespace["targets"])
    t.summary()
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        if (row := summary_row(line)) is not None:
            printed[row[0]] = row
    assert summary_row(shown[0]) is None and shown[0].split() == ["name", "shape", "dtype", "mean", "std", "min",
                                                                  "max", "nan", "inf"]
    for line in shown[1:]:
        name, layout, numbers = summary_row(line)
        assert name in printed and printed[name][1] == layout, f"the doc shows {line!r}; the example prints no such row"
        mean, std = numbers[:2]
        # four digits, as printed; a mean that cancels (a gradient's) is held to its std's scale
        assert np.allclose(printed[name][2], numbers, rtol=2e-3, atol=2e-3 * std), (line, printed[name])


def summary_row(line: str):
    """(name, (shape, dtype), [mean, std, min, max, nan, inf]) of a line of Trace.summary(), else None."""
    match = re.fullmatch(r"(\S+)\s+(\([\d, ]*\))\s+(\w+)\s+(.*)", line.strip())
    if match is None:
        return None
    return match.group(1), (match.group(2), match.group(3)), [float(v) for v in match.group(4).split()]


def _own_implementation_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    return next(b for b in blocks if "def rotate_half" in b and "npllama.trace.compare(ours, mine" in b)


def _run_example(code: str):
    namespace = {}
    exec(compile(code, "debugging.md own implementation", "exec"), namespace)   # noqa: S102
    return namespace["report"]


def test_the_own_pytorch_implementation_example_agrees_and_finds_the_tiled_kv_heads_the_doc_shows(capsys):
    pytest.importorskip("torch")
    code = _own_implementation_example()
    report = _run_example(code)
    assert report.first is None and not report.only_in_a and not report.only_in_b
    claimed = int(re.search(r"no divergence: every shared tensor agrees` \((\d+) tensors", DOC).group(1))
    assert len(report.diffs) == claimed

    interleaved = "k, v = k.repeat_interleave(H // KVH, dim=1), v.repeat_interleave(H // KVH, dim=1)"
    assert interleaved in code
    tiled = _run_example(code.replace(interleaved, "k, v = k.repeat(1, H // KVH, 1, 1), v.repeat(1, H // KVH, 1, 1)"))
    assert tiled.first.name == "model.layers.0.self_attn.attn_probs"
    shown = re.search(r"instead of interleaving them:\n\n```\n(.*?)```", DOC, re.S).group(1).splitlines()
    printed = str(tiled)
    for line in shown:
        assert line.split("...")[0].rstrip() in printed, line


def test_the_own_implementation_example_needs_its_masked_attn_probs_gradient_as_the_doc_says(capsys):
    """Without zeroing d:attn_probs where the mask forbids a key, PyTorch's gradient there differs."""
    pytest.importorskip("torch")
    code = _own_implementation_example()
    masking = re.search(r"\nfor name in \[n for n in mine if n.endswith\(\"attn_probs\"\).*?\n.*?\n", code).group(0)
    report = _run_example(code.replace(masking, "\n"))
    assert report.first.name.startswith("d:") and report.first.name.endswith(".self_attn.attn_probs")


def test_the_note_on_a_replaced_op_is_what_compare_prints():
    shown = re.search(r"on one side only\":\n\n```\n(NOTE: .*?)\n```", DOC, re.S).group(1)
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    with debug.planted_bug("swiglu-backward-up-sign"):
        report = debug.compare_backends(Llama(config, seed=0), [1, 2, 3, 4])
    assert shown in str(report).splitlines(), str(report)


def test_the_edited_model_example_prints_the_note_and_divergence_the_doc_shows(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    code = next(b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if "transformers_folder=" in b)
    shown = re.search(re.escape(code) + r"```\n\n```\n(.*?)```", DOC, re.S).group(1).splitlines()
    # the shape of the runs/tiny `npllama train` makes by default, so that a reader's shapes are the doc's
    Llama(LlamaConfig.from_preset("tiny"), seed=0).save_pretrained(tmp_path / "runs" / "tiny" / "model")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    namespace = {}
    exec(compile(code, "debugging.md edited model", "exec"), namespace)   # noqa: S102
    printed = capsys.readouterr().out
    for line in (line for line in shown if line != "..."):
        assert line.split("...")[0].rstrip() in printed, (line, printed)
    # the command the doc gives, on the edited model saved where it says
    command = re.search(r"`(npllama debug compare [^`]*--transformers-folder [^`]*)`", DOC).group(1)
    Llama.from_pretrained("runs/tiny/model").save_pretrained("runs/edited")
    assert main(shlex.split(command)[1:]) == 0 and "no divergence" in capsys.readouterr().out
    namespace["model"].save_pretrained("runs/edited")   # the example's edit
    assert main(shlex.split(command)[1:]) == 1
    assert "model.layers.1.self_attn.v_proj.weight (relative error 0.333)" in capsys.readouterr().out


def test_the_hooks_the_doc_names_for_transformers_record_what_npllama_records_under_that_name():
    """"the output of `mlp.gate_proj` becomes `model.layers.i.mlp.gate`": a user hooking transformers
    themselves follows these words, so each pair is checked on a real LlamaForCausalLM, numerically."""
    import npllama

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    paragraph = re.search(r"records the same names with forward hooks:(.*?)Gradients come from", DOC, re.S).group(1)
    pairs = re.findall(r"the (output|input) of `([\w.]+)` becomes `model\.layers\.i\.([\w.]+)`", " ".join(paragraph.split()))
    named = {module for _, module, _ in pairs}
    assert {"mlp.gate_proj", "self_attn.o_proj", "mlp.down_proj"} <= named, pairs

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = Llama(config, seed=0)
    tokens = np.array([[1, 5, 9, 3, 7]])
    with npllama.trace() as ours:
        model.loss_and_grads(tokens, np.array([[5, 9, 3, 7, -100]]))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_dict())).eval()
    hf.load_state_dict({name: torch.from_numpy(value) for name, value in model.params.items()}, strict=False)
    caught = {}
    layer = hf.model.layers[0]
    for kind, module, name in pairs:
        target = layer.get_submodule(module)
        if kind == "output":
            target.register_forward_hook(lambda m, args, out, name=name: caught.__setitem__(name, out))
        else:
            target.register_forward_pre_hook(lambda m, args, name=name: caught.__setitem__(name, args[0]))
    with torch.no_grad():
        hf(torch.from_numpy(tokens))
    for _, module, name in pairs:
        theirs = caught[name].numpy()
        recorded = ours[f"model.layers.0.{name}"]
        if recorded.ndim == 4:   # heads split (B, H, T, hd), as the doc's table gives them
            recorded = recorded.transpose(0, 2, 1, 3).reshape(theirs.shape)
        np.testing.assert_allclose(recorded, theirs, rtol=1e-4, atol=1e-6, err_msg=f"{module} -> {name}")


def test_the_planted_bug_session_is_what_debug_compare_prints_on_the_model_the_doc_names(tmp_path, monkeypatch, capsys):
    shown = re.search(r"```\n\$ (npllama debug compare --model DIR [^\n]*--plant rope-meta)\n(.*?)```", DOC, re.S)
    command, lines = shown.group(1), shown.group(2).splitlines()
    # "DIR is the model of the example above, saved": the own-implementation example's model
    namespace = {}
    exec(compile(_own_implementation_example(), "debugging.md own implementation", "exec"), namespace)   # noqa: S102
    monkeypatch.chdir(tmp_path)
    namespace["model"].save_pretrained("DIR")
    capsys.readouterr()
    assert main(shlex.split(command)[1:]) == 1
    printed = capsys.readouterr().out.splitlines()
    missing = [line for line in lines if not any(same_but_roundoff(line, p) for p in printed)]
    assert not missing, f"the doc shows lines `debug compare --plant rope-meta` no longer prints: {missing}"


# a number with a decimal point (counts and indices have none): a value the run computed
DECIMAL = re.compile(r"-?\d+\.\d+(?:e[+-]?\d+)?")


def same_but_roundoff(shown: str, printed: str) -> bool:
    """`printed` is the line the doc `shown`, up to float32 round-off: the suite runs on machines whose
    BLAS and Numba kernels sum in other orders, so the last digit of a value (b = -0.1306916 on one,
    -0.13069162 on another) is no part of what the doc claims.  Words, counts and indices must be the
    same; each value within 1e-5 of itself or one unit of the last digit the doc shows; and the
    agreement of the tensors before the divergence (round-off itself) is not compared."""
    agreement = re.compile(r"to a relative error of [\d.e+-]+")
    shown, printed = agreement.sub("", shown), agreement.sub("", printed)
    if DECIMAL.split(shown) != DECIMAL.split(printed):
        return False
    for doc, run in zip(DECIMAL.findall(shown), DECIMAL.findall(printed)):
        mantissa = doc.split("e")[0]
        exponent = int(doc.split("e")[1]) if "e" in doc else 0
        last_digit = 10.0 ** (exponent - len(mantissa.split(".")[1]))
        if abs(float(doc) - float(run)) > max(1e-5 * abs(float(doc)), 1.000001 * last_digit):
            return False
    return True


def test_a_doc_line_matches_a_run_up_to_roundoff_not_beyond():
    line = "  worst at index (0, 3, 4, 1): a = 0.17064336, b = -0.1306916, |a - b| = 0.301"
    assert same_but_roundoff(line, line.replace("-0.1306916,", "-0.13069162,"))   # another machine's digit
    assert same_but_roundoff(line, line.replace("0.301", "0.302"))                 # rounded the other way
    assert not same_but_roundoff(line, line.replace("-0.1306916,", "-0.1307916,"))  # another value
    assert not same_but_roundoff(line, line.replace("0.301", "0.311"))
    assert not same_but_roundoff(line, line.replace("(0, 3, 4, 1)", "(0, 3, 4, 2)"))   # another entry
    assert not same_but_roundoff(line, line.replace("worst", "best"))
    assert same_but_roundoff("agree (to a relative error of 1.33e-07):", "agree (to a relative error of 0.00e+00):")


def test_the_classifier_example_builds_its_inputs_and_every_comparison_agrees(tmp_path, monkeypatch):
    """The Python classifier example runs as written on a `finetune classify --out` folder: its
    tokens, labels and mask are made in the block, padded with the id the head skips (a wrong pad
    id would show as a divergence at score.pooled_index against transformers)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import npllama
    from npllama import datasets
    from npllama.finetune import SequenceClassifier
    from npllama.objectives import pad_id_of
    from npllama.tokenizer import Tokenizer

    code = next(b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if "npllama.load_classifier(" in b)
    monkeypatch.chdir(tmp_path)
    tokenizer = Tokenizer.train([r["text"] for r in datasets.make_dataset("sentiment", 200)], tmp_path / "tok",
                                vocab_size=400)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    SequenceClassifier(Llama(config, seed=0), ["negative", "positive"], pad_id=pad_id_of(tokenizer)).save(
        "runs/sentiment", tokenizer)
    reports = []
    monkeypatch.setattr(debug, "compare_backends", _keeping(debug.compare_backends, reports))
    monkeypatch.setattr(debug, "compare_dtypes", _keeping(debug.compare_dtypes, reports))
    monkeypatch.setattr(debug, "compare_transformers", _keeping(debug.compare_transformers, reports))
    namespace = {"np": np, "npllama": npllama, "debug": debug}
    exec(compile(code, "debugging.md classifier", "exec"), namespace)   # noqa: S102
    assert len(reports) == 3 and all(report.first is None for report in reports), [r.first for r in reports]
    lengths = namespace["mask"].sum(axis=1)
    assert lengths[0] != lengths[1]    # padded: the pooled positions are the rows' last real tokens
    np.testing.assert_array_equal(reports[-1].traces[1]["score.pooled_index"], lengths - 1)


def _keeping(compare, reports):
    def kept(*args, **kwargs):
        reports.append(compare(*args, **kwargs))
        return reports[-1]
    return kept
