"""npllama.debug_training: a training run compared with PyTorch's, step by step.

Optional: skipped unless torch and transformers are installed (the CI installs them).
"""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from npllama import Llama, LlamaConfig, cli  # noqa: E402
from npllama import debug, debug_training  # noqa: E402
from npllama.debug_training import PLANTED_TRAINING_BUGS, compare_training  # noqa: E402

# clipping bites (the gradient norm is ~1.5), warmup covers step 1 and 2, the cosine steps 3 on
SETTINGS = dict(steps=3, warmup_steps=2, grad_clip=0.5, lr=1e-2, min_lr=1e-3, weight_decay=0.1)


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    for name, p in model.params.items():   # norms away from 1, so that their updates are tested too
        if p.ndim == 1:
            p += 0.3 * rng.standard_normal(p.shape)
    return model


def make_batches(n, seed=0):
    """n (tokens, targets) pairs; each ignores a different number of targets, so that
    micro-batches weigh differently in an accumulated step."""
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(n):
        window = rng.integers(0, 32, size=(2, 9))
        tokens, targets = window[:, :-1], window[:, 1:].copy()
        targets[0, :i % 4] = -100
        batches.append((tokens, targets))
    return batches


def test_float64_runs_agree_step_by_step_with_clipping_warmup_and_decay(model):
    before = {name: p.copy() for name, p in model.params.items()}
    report = compare_training(model, make_batches(3), dtype=np.float64, **SETTINGS)
    assert report.ok, str(report)
    assert max(d.rel_err for _, _, d in report.diffs) < 1e-10
    assert [r.step for r in report.rows] == [1, 2, 3]
    assert all(r.grad_norm[0] > SETTINGS["grad_clip"] for r in report.rows)   # the clipping was tested
    assert [r.lr[0] for r in report.rows] == pytest.approx([5e-3, 1e-2, 1e-2])
    assert {phase for _, phase, _ in report.diffs} == set(debug_training.PHASES)
    assert all(np.array_equal(p, before[name]) for name, p in model.params.items())   # trained a copy
    assert "no divergence" in str(report)


def test_a_low_lr_alone_is_taken_its_cosine_ending_at_a_tenth_of_it_as_npllama_trains(model):
    # npllama train's min_lr defaults to lr / 10; a fixed 2e-4 here refused lr 1e-4 for a flag not given
    report = compare_training(model, make_batches(4), dtype=np.float64, steps=4, warmup_steps=1, lr=1e-4)
    assert report.ok, str(report)
    assert report.rows[-1].lr[0] == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 2 / 3)))


@pytest.mark.parametrize("bug", list(PLANTED_TRAINING_BUGS))
def test_each_planted_bug_is_found_at_its_step_and_phase(model, bug):
    report = compare_training(model, make_batches(3), dtype=np.float64, plant=bug, **SETTINGS)
    first = report.first
    assert first is not None
    assert (first.step, first.phase) == (1, PLANTED_TRAINING_BUGS[bug][3])
    assert f"step 1, phase {first.phase!r}" in str(report) and bug in str(report)


@pytest.mark.parametrize("step, earlier", [(1, ""), (2, ", and all of step 1"), (3, ", and all of steps 1-2")])
def test_the_report_names_the_steps_before_the_first_divergence(step, earlier):
    from npllama.trace import diff_tensors

    same, apart = (diff_tensors("w", np.ones(2), b, 1e-9, None) for b in (np.ones(2), np.zeros(2)))
    diffs = [(s, phase, apart if (s, phase) == (step, "gradient") else same)
             for s in range(1, step + 1) for phase in debug_training.PHASES]
    report = str(debug_training.TrainingComparison([], diffs, 1e-9, None))
    assert f"everything before it in step {step} agrees (loss){earlier}\n" in report, report


def test_accumulated_micro_batches_of_unequal_weight_agree(model):
    report = compare_training(model, make_batches(4), dtype=np.float64, grad_accum=2,
                              **{**SETTINGS, "steps": 2})
    assert report.ok, str(report)


def test_a_config_with_attention_dropout_trains_without_it_on_both_sides():
    # npllama train trains without a folder's attention_dropout; transformers must not apply it either
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                         attention_dropout=0.5)
    report = compare_training(Llama(config, seed=0, dtype=np.float64), make_batches(1), dtype=np.float64,
                              **{**SETTINGS, "steps": 1, "warmup_steps": 0})
    assert report.ok, str(report)


def test_rope_frequencies_that_differ_from_transformers_are_noted_not_copied(model, monkeypatch):
    # float64's RoPE tables are built from npllama's frequencies; a wrong llama3 factor on npllama's
    # side must make the runs part, with a note saying why, not be copied into torch's side
    import dataclasses

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 4}
    config = dataclasses.replace(model.config, rope_theta=500000.0, rope_scaling=llama3)
    llama3_model = Llama(config, dtype=np.float64, params=model.params)
    load = Llama.from_pretrained.__func__

    def load_with_a_wrong_factor(cls, *args, **kwargs):
        loaded = load(cls, *args, **kwargs)
        scaling = dict(loaded.config.rope_scaling, factor=4.0)   # the folder says 8
        return Llama(dataclasses.replace(loaded.config, rope_scaling=scaling), dtype=loaded.dtype,
                     params=loaded.params)

    assert compare_training(llama3_model, make_batches(1), steps=1).ok
    monkeypatch.setattr(Llama, "from_pretrained", classmethod(load_with_a_wrong_factor))
    report = compare_training(llama3_model, make_batches(1), steps=1)
    assert report.first.step == 1 and report.first.phase == "loss", str(report)
    assert "NOTE: the RoPE frequencies differ" in str(report) and "'factor': 4.0" in str(report)


def test_text_batches_read_data_as_train_does(small_model_dir, tmp_path):
    from npllama.runs import load_tokenizer

    tokenizer = load_tokenizer(small_model_dir)
    stories = ["Once upon a time there was a cat.", "The dog ran to the park and back home again."] * 8
    (tmp_path / "stories.txt").write_text("\n\n".join(stories), encoding="utf-8")
    from_file = debug_training.text_batches(tokenizer, data=str(tmp_path / "stories.txt"), batch_size=2,
                                            seq_len=8, count=3)
    from_texts = debug_training.text_batches(tokenizer, batch_size=2, seq_len=8, count=3)   # the built-in stories
    for (tokens, _), (other, _) in zip(from_file, from_texts):
        assert set(tokens.ravel()) <= set(tokenizer.encode(" ".join(stories), bos=True)) | {tokenizer.eos_id}
        assert not np.array_equal(tokens, other)


def test_float32_agrees_within_its_default_tolerance(model):
    report = compare_training(model, make_batches(2), dtype=np.float32, **{**SETTINGS, "steps": 2})
    assert report.ok, str(report)
    assert report.rtol == debug_training.DEFAULT_RTOL[np.float32]


@pytest.mark.parametrize("change, named", [
    (dict(steps=0), "steps"),
    (dict(grad_accum=0), "grad_accum"),
    (dict(plant="no-such-bug"), "plant"),
    (dict(steps=5), "batches"),                 # 3 batches for 5 steps
    (dict(batches=[(np.zeros((1, 4), int), np.full((1, 4), -100))] * 3), r"batches\[0:1\] \(step 1\)"),
    (dict(total_steps=2), "total_steps"),       # shorter than the steps compared
    (dict(total_steps=4, warmup_steps=5), r"must not exceed total_steps \(4\)"),   # not TrainConfig's 'steps (4)'
    (dict(dtype=np.int64), "dtype"),
    (dict(lr=-1.0), "lr"),                      # TrainConfig's own check
])
def test_bad_settings_are_refused_naming_the_argument(model, change, named):
    arguments = {"batches": make_batches(3), **SETTINGS, **change}
    with pytest.raises(ValueError, match=named):
        compare_training(model, **arguments)


def test_a_classifier_is_refused(model):
    from npllama.finetune import SequenceClassifier

    # a model of its own: the classifier's pad id becomes its model's pad_token_id (the module's `model` keeps none)
    classifier = SequenceClassifier(Llama(model.config, dtype=model.dtype, params=model.params), ["a", "b"], pad_id=0)
    classifier.score_weight = np.zeros((2, model.config.hidden_size))
    with pytest.raises(ValueError, match="model is a LlamaForSequenceClassification"):
        compare_training(classifier, make_batches(3), **SETTINGS)


def test_a_masked_lm_model_is_refused_as_the_other_refusals_say(model):
    masked_lm = Llama(model.config, dtype=model.dtype, params=model.params, objective="mlm")
    with pytest.raises(ValueError, match=r"^model is a masked-LM model \(bidirectional attention"):
        compare_training(masked_lm, make_batches(3), **SETTINGS)


@pytest.mark.parametrize("reads_causally", [True, False])
def test_which_model_trains_like_llamaforcausallm_is_the_one_rule_of_causal_attention(model, monkeypatch,
                                                                                      reads_causally):
    """torch trains LlamaForCausalLM, with the causal mask; npllama trains a model as it attends
    (model.attends_causally, config's table): a new objective is compared or refused by that rule,
    not by its name being "causal"."""
    from npllama import config as config_module

    monkeypatch.setitem(config_module.ATTENDS_CAUSALLY, "invented", reads_causally)
    invented = Llama(model.config, dtype=model.dtype, params=model.params, objective="invented")
    if reads_causally:
        assert compare_training(invented, make_batches(1), steps=1).ok
    else:
        with pytest.raises(ValueError, match="masked-LM model"):
            compare_training(invented, make_batches(1), steps=1)


def run_cli(argv, capsys):
    status = cli.main(argv)
    return status, capsys.readouterr()


def test_cli_agrees_then_finds_a_planted_bug(small_model_dir, capsys):
    text = "Once upon a time there was a little cat who liked to play in the sun. " * 12
    argv = ["debug", "train-compare", "--model", str(small_model_dir), "--text", text, "--steps", "2",
            "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "1", "--dtype", "float64"]
    status, out = run_cli(argv + ["--table"], capsys)
    assert status == 0, out.out + out.err
    assert "no divergence" in out.out and "loss npllama" in out.out
    status, out = run_cli(argv + ["--plant", "warmup-off-by-one"], capsys)
    assert status == 1
    assert "FIRST DIVERGENCE at step 1, phase 'lr'" in out.out
    # no text given: the built-in stories npllama train trains on by default
    status, out = run_cli(argv[:4] + argv[6:], capsys)
    assert status == 0 and "no divergence" in out.out, out.out + out.err


def test_cli_takes_a_low_lr_alone_its_cosine_ending_at_a_tenth_of_it(small_model_dir, capsys, monkeypatch):
    # --min-lr's help says "a tenth of --lr, as npllama train": the flag's default must follow
    # --lr, not be TrainConfig's 2e-4 fixed when the parser is built (which refused --lr 1e-4)
    from npllama import debug_training

    seen = {}
    real = debug_training.compare_training
    monkeypatch.setattr(debug_training, "compare_training", lambda *a, **k: seen.update(k) or real(*a, **k))
    text = "Once upon a time there was a little cat who liked to play in the sun. " * 12
    status, out = run_cli(["debug", "train-compare", "--model", str(small_model_dir), "--text", text, "--steps", "1",
                           "--batch-size", "2", "--seq-len", "16", "--lr", "1e-4", "--no-progress"], capsys)
    assert status == 0, out.out + out.err
    assert seen["min_lr"] in (None, pytest.approx(1e-5))


@pytest.mark.parametrize("kind", ["gguf", "llama2c"])
def test_cli_trains_a_gguf_or_llama2c_file_as_debug_compare_reads_it(small_model_dir, tmp_path, capsys, kind):
    # the files `debug compare` and `debug trace` take (debug.model_path): both sides train npllama's
    # reading of the file, its tokenizer found as theirs is (a GGUF's own, tokenizer.model beside a llama2.c)
    if kind == "gguf":
        pytest.importorskip("gguf")
        from npllama.io.gguf_export import export_gguf

        file = export_gguf(small_model_dir, tmp_path / "small.gguf")
    else:
        from tests.io.llama2c_files import random_llama2c_weights, write_legacy

        file = tmp_path / "small.bin"
        write_legacy(file, random_llama2c_weights(vocab_size=400))
        (tmp_path / "tokenizer.model").write_bytes((small_model_dir / "tokenizer.model").read_bytes())
    argv = ["debug", "train-compare", "--model", str(file), "--text", "Once upon a time there was a cat. " * 8,
            "--steps", "1", "--batch-size", "1", "--seq-len", "8", "--dtype", "float64"]
    status, out = run_cli(argv, capsys)
    assert status == 0 and "no divergence" in out.out and f"model {file}" in out.out, out.out + out.err
    # without its tokenizer, said as for a folder: what is missing, and why train-compare needs it
    if kind == "llama2c":
        (tmp_path / "tokenizer.model").unlink()
        status, out = run_cli(argv, capsys)
        assert status == 2 and "no tokenizer.model or tokenizer.bin beside" in out.err
        assert "train-compare cuts its batches" in out.err and len(out.err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, named", [
    (["--plant", "nope"], "--plant"),
    (["--rtol", "-1"], "--rtol"),
    (["--text", "a b", "--data", "x.txt"], "not both"),
    (["--steps", "1", "--total-steps", "3", "--warmup-steps", "5", "--batch-size", "1", "--seq-len", "8"],
     "must not exceed --total-steps (3)"),
    (["--steps", "0"], "--steps must be a positive int"),
])
def test_cli_refuses_bad_flags_in_one_line(small_model_dir, capsys, extra, named):
    status, out = run_cli(["debug", "train-compare", "--model", str(small_model_dir), *extra], capsys)
    assert status == 2 and named in out.err and len(out.err.strip().splitlines()) == 1
    assert out.out == ""        # no start line for a run that never starts ("0 steps of ...")


def test_cli_without_torch_says_what_to_install(small_model_dir, capsys, monkeypatch):
    def missing():
        raise ImportError("comparing with transformers needs torch and transformers: "
                          "pip install 'npllama[compare]'")
    monkeypatch.setattr(debug, "import_torch_and_transformers", missing)
    status, out = run_cli(["debug", "train-compare", "--model", str(small_model_dir), "--text", "a b c " * 80,
                           "--steps", "1", "--batch-size", "1", "--seq-len", "8"], capsys)
    assert status == 2
    assert "pip install 'npllama[compare]'" in out.err and len(out.err.strip().splitlines()) == 1


def test_the_doc_names_each_planted_bug_with_the_phase_it_is_found_at():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "debugging.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Where two training runs part"):doc.index("## 3. Exercises")]
    for bug, (_, _, _, phase) in PLANTED_TRAINING_BUGS.items():
        said = section[section.index(f"`{bug}`"):][:120]
        assert f"`{phase}`" in said, (bug, said)
    for phase in debug_training.PHASES:
        assert f"`{phase}`" in section, phase


def test_the_steps_show_progress_on_stderr_with_whether_the_runs_still_agree(model, capsys):
    # a comparison of tens of steps takes minutes: a bar says how far it is, and whether they parted
    compare_training(model, make_batches(3), dtype=np.float64, progress=True, **SETTINGS)
    err = capsys.readouterr().err
    assert "train-compare" in err and "/3" in err and "agree" in err, err
    compare_training(model, make_batches(3), dtype=np.float64, progress=True, plant="warmup-off-by-one", **SETTINGS)
    assert "parted at step 1" in capsys.readouterr().err
    compare_training(model, make_batches(3), dtype=np.float64, **SETTINGS)   # quiet by default, from Python
    assert capsys.readouterr().err == ""


def test_cli_shows_progress_unless_told_not_to(small_model_dir, capsys):
    argv = ["debug", "train-compare", "--model", str(small_model_dir), "--text", "Once upon a time a cat sat. " * 12,
            "--steps", "2", "--batch-size", "1", "--seq-len", "8", "--warmup-steps", "1"]
    status, out = run_cli(argv, capsys)
    assert status == 0 and "/2" in out.err and "train-compare" in out.err, out.err
    status, out = run_cli(argv + ["--no-progress"], capsys)
    assert status == 0 and out.err == "", out.err


def test_the_docs_python_example_runs_as_written_and_agrees_with_the_command(small_model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    import re
    from pathlib import Path

    from npllama import corpus

    doc = (Path(__file__).resolve().parents[1] / "docs" / "debugging.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "compare_training(" in b)
    monkeypatch.chdir(tmp_path)
    corpus.write_default_corpus("stories.txt", n_stories=40)
    namespace = {}
    exec(compile(code.replace('"runs/tiny"', repr(str(small_model_dir))), "debugging.md", "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert report.first is None and len(report.table().splitlines()) == 1 + 4
    # the batches are the command's: the same run, from the command line, prints the same table
    command = re.search(r"\$ (npllama debug train-compare --model runs/tiny --data stories.txt [^\n]*) --table", doc)
    argv = command.group(1).split()[1:] + ["--no-progress", "--table"]
    status, out = run_cli([str(small_model_dir) if a == "runs/tiny" else a for a in argv], capsys)
    assert status == 0 and report.table() in out.out, out.out
