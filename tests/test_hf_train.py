"""When one CPU is not enough: a saved npllama model trained further by transformers + accelerate
on 2 CPU processes (npllama/hf_train.py), then loaded back in npllama with transformers' logits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.corpus import make_default_corpus
from npllama.hf_train import main
from npllama.tokenizer import Tokenizer


@pytest.mark.parametrize("argv, match", [
    (["--model", "{tmp}", "--data", "{tmp}", "--out", "o"], "has no config.json"),
    (["--model", "{tmp}", "--data", "{tmp}", "--out", "o", "--steps", "0"], "--steps must be a positive integer"),
    (["--model", "{tmp}", "--data", "{tmp}", "--out", "o", "--lr", "nan"], "--lr must be a finite number"),
])
def test_mistakes_are_one_line_before_torch_is_imported(tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        main([a.format(tmp=tmp_path) for a in argv])


@pytest.mark.parametrize("name, content, match", [
    ("notes.md", "# a story\n\nOnce upon a time.", r"cannot read corpus file .*notes\.md.*expected a \.txt or \.jsonl file .*got '\.md'"),
    ("missing.txt", None, r"corpus .*missing\.txt.* does not exist"),
    ("blank.txt", "\n\n   \n", r"corpus .*blank\.txt.* is empty"),
])
def test_data_npllama_train_refuses_is_one_line_before_torch_is_imported(tmp_path, name, content, match):
    """--data is read as npllama train reads it, before torch: a Markdown file used to get past the
    checks and end in a traceback from the corpus reader, after torch and accelerate had started."""
    start, _, _ = tiny_start_folder(tmp_path)
    data = tmp_path / name
    if content is not None:
        data.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit, match="^hf_train: error: --data: " + match):
        main(["--model", str(start), "--data", str(data), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_two_processes_train_and_npllama_reloads_the_result(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    stories = make_default_corpus()[:200]
    tokenizer = Tokenizer.train(stories, tmp_path / "sp", vocab_size=400)
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n\n".join(stories), encoding="utf-8")
    config = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    start = Llama(config, seed=0)
    start.save_pretrained(tmp_path / "start", extra_files={"tokenizer.model": tokenizer.model_bytes})

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "npllama.hf_train", "--model", str(tmp_path / "start"), "--data", str(corpus),
               "--out", str(tmp_path / "trained"), "--steps", "4", "--batch-size", "2", "--seq-len", "32",
               "--lr", "1e-2", "--log-every", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 4/4" in result.stdout and "2 processes" in result.stdout

    record = json.loads((tmp_path / "trained" / "hf_train.json").read_text())
    assert record["num_processes"] == 2 and record["steps"] == 4 and len(record["losses"]) == 4
    assert record["losses"][-1] < record["losses"][0]  # lr 1e-2 on a random init: it learns at once

    trained = Llama.from_pretrained(tmp_path / "trained", dtype=np.float32)
    moved = [name for name in start.params if not np.allclose(trained.params[name], start.params[name])]
    assert len(moved) == len(start.params)  # every tensor was trained (and saved, and read back)

    tokens = np.array([tokenizer.encode("Once upon a time, Lily had a red ball.")])
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "trained").float().eval()
    with torch.no_grad():
        expected = hf(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(trained.forward(tokens), expected, rtol=0, atol=1e-4)
    assert Tokenizer(tmp_path / "trained" / "tokenizer.model").model_bytes == tokenizer.model_bytes


def test_windows_stay_in_the_streams_dtype_and_a_batch_is_widened_to_int64(tmp_path):
    torch = pytest.importorskip("torch")
    from npllama.data import Corpus, load_texts, tokenize_corpus
    from npllama.hf_train import _as_int64_batch, _token_windows

    stories = make_default_corpus()[:60]
    tokenizer = Tokenizer.train(stories, tmp_path / "sp", vocab_size=400)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n\n".join(stories), encoding="utf-8")

    windows = _token_windows(tmp_path / "model", Corpus(corpus, progress=False), seq_len=16)
    stream = tokenize_corpus(load_texts(corpus), tokenizer, progress=False)
    assert windows.dtype == np.uint16     # not widened for the whole corpus
    np.testing.assert_array_equal(windows, stream[: windows.size].reshape(-1, 16))
    assert len(stream) - windows.size < 16
    batch = _as_int64_batch([windows[3], windows[0]])
    assert batch.dtype == torch.int64 and batch.shape == (2, 16)
    np.testing.assert_array_equal(batch.numpy(), windows[[3, 0]])


def tiny_start_folder(path, objective="causal"):
    """A saved npllama model (its tokenizer files written by save_pretrained) and a corpus to train it on."""
    stories = make_default_corpus()[:60]
    tokenizer = Tokenizer.train(stories, path / "sp", vocab_size=400)
    corpus = path / "stories.txt"
    corpus.write_text("\n\n".join(stories), encoding="utf-8")
    config = LlamaConfig(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)
    Llama(config, seed=0, objective=objective).save_pretrained(
        path / "start", extra_files={"tokenizer.model": tokenizer.model_bytes})
    return path / "start", corpus, tokenizer


def test_a_masked_lm_folder_is_refused_before_torch_is_imported(tmp_path):
    """hf_train trains LlamaForCausalLM, under the causal mask; a masked-LM model's config.json keeps its
    npllama_objective "mlm" through save_pretrained, so the causally trained result would be run
    bidirectionally by npllama."""
    start, corpus, _ = tiny_start_folder(tmp_path, objective="mlm")
    with pytest.raises(SystemExit, match=r"hf_train: error: --model .* is a masked-LM model"):
        main(["--model", str(start), "--data", str(corpus), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_classifier_folder_is_refused_before_torch_is_imported(tmp_path):
    """A LlamaForSequenceClassification folder has no lm_head: LlamaForCausalLM.from_pretrained would
    start one from random numbers and train that."""
    start, corpus, _ = tiny_start_folder(tmp_path)
    fields = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**fields, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(SystemExit, match=r"hf_train: error: --model .* is a classification model"):
        main(["--model", str(start), "--data", str(corpus), "--out", str(tmp_path / "o")])


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """hf_train run in this process (one process, no launcher): 2 steps with a weight decay so strong
    (lr * weight_decay = 0.5) that a decayed weight halves each step, far beyond Adam's steps of ~lr."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    tmp_path = tmp_path_factory.mktemp("hf_train")
    start, corpus, tokenizer = tiny_start_folder(tmp_path)
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):   # each step's betas and the global norm of the gradient it takes
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append((self.param_groups[0]["betas"], float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))))
        return step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", recording_step)
        assert main(["--model", str(start), "--data", str(corpus), "--out", str(tmp_path / "out"), "--steps", "2",
                     "--batch-size", "2", "--seq-len", "16", "--lr", "1e-3", "--weight-decay", "500",
                     "--grad-clip", "1e-3", "--cpu"]) == 0
    return start, tmp_path / "out", tokenizer, seen


def test_the_trained_folder_holds_every_tokenizer_file_of_the_start_folder(one_process_run):
    """npllama's folders carry tokenizer.json and tokenizer_config.json beside tokenizer.model: transformers'
    AutoTokenizer reads them (and tokens added to tokenizer.json exist only there)."""
    from transformers import AutoTokenizer

    from npllama.io.hf import TOKENIZER_FILES

    start, out, tokenizer, _ = one_process_run
    written = [name for name in TOKENIZER_FILES if (start / name).is_file()]
    assert "tokenizer.json" in written
    for name in written:
        assert (out / name).read_bytes() == (start / name).read_bytes(), name
    text = "Once upon a time, Lily had a red ball."
    assert AutoTokenizer.from_pretrained(out).encode(text) == tokenizer.encode(text, bos=True)


def test_doc_separator_cuts_the_corpus_as_npllama_train_cuts_it(tmp_path):
    """`npllama train --doc-separator line` trains on <s> line </s> per line; hf_train reads the same
    corpus into the same token stream when given the same flag (and refuses a bad one by name)."""
    from npllama.data import Corpus, tokenize_corpus
    from npllama.hf_train import _read_corpus, _token_windows, build_parser

    start, _, tokenizer = tiny_start_folder(tmp_path)
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(make_default_corpus()[:20]).replace("\n\n", "\n"), encoding="utf-8")
    args = build_parser().parse_args(["--model", str(start), "--data", str(corpus), "--out", "o",
                                      "--doc-separator", "line"])
    windows = _token_windows(start, _read_corpus(args), 16)
    by_line = tokenize_corpus(Corpus(corpus, "line", progress=False), tokenizer, progress=False)
    whole = tokenize_corpus(Corpus(corpus, "blank-line", progress=False), tokenizer, progress=False)
    assert not np.array_equal(by_line, whole)   # (the flag matters for this corpus)
    assert not np.array_equal(windows, whole[: windows.size].reshape(-1, 16))
    np.testing.assert_array_equal(windows, by_line[: windows.size].reshape(-1, 16))
    with pytest.raises(SystemExit, match="hf_train: error: --doc-separator must be blank-line, line"):
        main(["--model", str(start), "--data", str(corpus), "--out", "o", "--doc-separator", "lines"])


def test_weight_decay_shrinks_the_matrices_and_not_the_norm_weights(one_process_run):
    """As npllama train's AdamW (npllama.optim.default_no_decay): a norm weight's natural value is 1, and
    decay would only fight the normalisation."""
    start, out, *_ = one_process_run
    before, after = Llama.from_pretrained(start).params, Llama.from_pretrained(out).params
    for name, array in after.items():
        ratio = np.abs(array).mean() / np.abs(before[name]).mean()
        if array.ndim == 1:
            assert ratio == pytest.approx(1, abs=0.01), name
        else:
            assert ratio < 0.3, name   # two halvings, give or take Adam's steps


def test_out_the_same_folder_as_model_or_above_it_is_refused_and_nothing_is_written(tmp_path):
    """save_pretrained would write the trained weights over the start folder's (and then the tokenizer
    copy fails on a file copied onto itself): refused before torch is imported, the folder untouched."""
    start, corpus, _ = tiny_start_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in start.iterdir()}
    for out in (start, tmp_path / "start" / ".", tmp_path):
        with pytest.raises(SystemExit, match=r"hf_train: error: --out .* holds --model"):
            main(["--model", str(start), "--data", str(corpus), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in start.iterdir()} == before


@pytest.mark.parametrize("flags, match", [
    (["--lr", "0.01", "--weight-decay", "100"], r"--lr \* --weight-decay must be below 1 .* got --lr=0.01, --weight-decay=100"),
    (["--beta1", "1"], "--beta1 must be in"),
    (["--beta2", "-0.1"], "--beta2 must be in"),
    (["--grad-clip", "0"], "--grad-clip must be a positive number"),
])
def test_optimizer_settings_npllama_train_refuses_are_refused(tmp_path, flags, match):
    """The same checks as `npllama train` (npllama.train.TrainConfig), not a copy of them."""
    with pytest.raises(SystemExit, match="hf_train: error: .*" + match):
        main(["--model", str(tmp_path), "--data", str(tmp_path), "--out", "o", *flags])


def test_the_optimizer_defaults_are_npllama_trains():
    """betas (0.9, 0.95), not torch's (0.9, 0.999); gradient clipping at 1.0; the weight decay."""
    from npllama.hf_train import build_parser
    from npllama.train import TrainConfig

    args, d = build_parser().parse_args(["--model", "m", "--data", "d", "--out", "o"]), TrainConfig()
    assert (args.beta1, args.beta2, args.grad_clip, args.weight_decay) == (d.beta1, d.beta2, d.grad_clip,
                                                                             d.weight_decay)


def test_a_config_npllama_would_refuse_is_refused_before_training(tmp_path):
    """attention_bias true trains in transformers, but npllama cannot load the result back."""
    start, corpus, _ = tiny_start_folder(tmp_path)
    fields = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**fields, "attention_bias": True}))
    with pytest.raises(SystemExit, match=r"hf_train: error: .*config.json.*attention_bias must be false"):
        main(["--model", str(start), "--data", str(corpus), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_steps_use_npllama_trains_betas_and_clip_the_gradient_norm(one_process_run):
    """Each AdamW step of the run saw (0.9, 0.95) and a gradient of global norm at most --grad-clip (1e-3,
    far below the unclipped norm)."""
    *_, seen = one_process_run
    assert len(seen) == 2
    for betas, norm in seen:
        assert betas == (0.9, 0.95)
        assert norm <= 1e-3 * (1 + 1e-5)


def test_stale_tokenizer_files_in_out_are_removed(tmp_path):
    """--out holding another model's tokenizer.json (an earlier run): a start folder with tokenizer.model
    alone must not leave it there, where AutoTokenizer would read it."""
    from npllama.hf_train import _write_tokenizer_files

    start, out = tmp_path / "start", tmp_path / "out"
    start.mkdir(), out.mkdir()
    (start / "tokenizer.model").write_bytes(b"new")
    (out / "tokenizer.model").write_bytes(b"old")
    (out / "tokenizer.json").write_text("{}")
    (out / "notes.txt").write_text("kept")
    _write_tokenizer_files(start, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tokenizer.model"]
    assert (out / "tokenizer.model").read_bytes() == b"new"


def test_a_tokenizer_beside_the_model_folder_is_taken_and_copied(tmp_path):
    """A model folder whose tokenizer.model lies in the run folder around it, where npllama generate
    finds it (runs.find_tokenizer): before, hf_train refused it as having no tokenizer."""
    from npllama.hf_train import _check_args, _write_tokenizer_files, build_parser

    start, corpus, tokenizer = tiny_start_folder(tmp_path / "run")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (start / name).unlink(missing_ok=True)
    args = build_parser().parse_args(["--model", str(start), "--data", str(corpus), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"has neither tokenizer.model \(in or beside it\) nor tokenizer.json"):
        _check_args(args)
    (tmp_path / "run" / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    _check_args(args)
    out = tmp_path / "o"
    out.mkdir()
    _write_tokenizer_files(start, out)
    assert (out / "tokenizer.model").read_bytes() == tokenizer.model_bytes


def test_the_trained_folder_reads_text_with_the_tokenizer_it_was_trained_with(tmp_path):
    """The folder holds a tokenizer.json, a tokenizer.model lies beside it: npllama (load_tokenizer,
    which _token_windows trains with) takes the tokenizer.model, so --out must get it too, or npllama
    reads the result with the tokenizer.json alone and other ids than it was trained on."""
    from npllama.hf_train import _write_tokenizer_files
    from npllama.runs import load_tokenizer

    start, _, _ = tiny_start_folder(tmp_path / "run")
    (start / "tokenizer.model").unlink()
    assert (start / "tokenizer.json").is_file()
    other = Tokenizer.train(make_default_corpus(seed=1)[:60], tmp_path / "other", vocab_size=400)
    (tmp_path / "run" / "tokenizer.model").write_bytes(other.model_bytes)
    text = "Once upon a time a fox found a shiny stone."
    trained_with = load_tokenizer(start).encode(text)
    assert trained_with == other.encode(text)
    out = tmp_path / "o"
    out.mkdir()
    _write_tokenizer_files(start, out)
    assert load_tokenizer(out).encode(text) == trained_with


def test_the_chat_template_goes_with_the_model_and_a_stale_one_goes(tmp_path):
    """A fine-tuned chat model's chat_template.jinja is what `npllama chat` talks in: --out gets it,
    and an earlier model's template there goes when the start folder has none."""
    from npllama.chat import read_folder_template
    from npllama.hf_train import _write_tokenizer_files

    start, out = tmp_path / "start", tmp_path / "out"
    start.mkdir(), out.mkdir()
    (start / "tokenizer.model").write_bytes(b"tok")
    (start / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    _write_tokenizer_files(start, out)
    assert read_folder_template(out) == "{{ messages[0]['content'] }}"
    (start / "chat_template.jinja").unlink()
    _write_tokenizer_files(start, out)
    assert read_folder_template(out) is None
