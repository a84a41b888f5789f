"""`npllama train` configurable like its peers: the model's shape over a preset (flags or a Hugging
Face config file), --init-from, the optimizer's betas, the held-out text, the document separator."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig
from npllama.cli import main
from npllama.data import split_documents
from npllama.io.train_state import load_checkpoint
from npllama.train import TrainConfig, _compared_with_unigram, train

FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300,
            eval_batches=2, samples=0, progress=False, eval_every=0, checkpoint_every=0)
SHAPE = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=80, max_position_embeddings=96)


def quiet(*_args, **_kwargs):
    pass


@pytest.fixture(scope="module")
def shaped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shaped") / "run"
    train(TrainConfig(out=str(out), steps=2, beta1=0.8, beta2=0.99, **SHAPE, **FAST), echo=quiet)
    return out


def test_shape_flags_build_that_model_and_are_recorded(shaped_run):
    config = Llama.from_pretrained(shaped_run / "model").config
    for name, value in SHAPE.items():
        assert getattr(config, name) == value, name
    saved = json.loads((shaped_run / "train_config.json").read_text())
    assert {name: saved[name] for name in SHAPE} == SHAPE
    assert (saved["beta1"], saved["beta2"]) == (0.8, 0.99)


def test_betas_reach_the_optimizer(shaped_run):
    _, optimizer_state, _ = load_checkpoint(shaped_run / "checkpoint")
    assert tuple(optimizer_state["hyperparams"]["betas"]) == (0.8, 0.99)


def test_resume_refuses_a_new_shape_and_takes_the_saved_one(shaped_run):
    with pytest.raises(ValueError, match=r"num_hidden_layers \(2 -> 3\)"):
        train(TrainConfig(**{**json.loads((shaped_run / "train_config.json").read_text()),
                             "num_hidden_layers": 3}), resume=True, echo=quiet)
    assert "num_hidden_layers" in TrainConfig.RESUME_FIXED and "init_from" in TrainConfig.RESUME_FIXED


def test_a_hugging_face_config_file_shapes_the_model_under_the_flags(tmp_path):
    hf = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                     rope_theta=500.0, tie_word_embeddings=True).to_dict()
    hf["transformers_version"] = "4.46.0"  # bookkeeping a real config.json carries: read past
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    tc = TrainConfig(out=str(tmp_path / "run"), model_config=str(path), num_hidden_layers=1,
                     **{**FAST, "vocab_size": None})
    assert tc.model_config["num_hidden_layers"] == 3  # recorded as fields: a run never needs the file again
    from npllama.model_shape import base_vocab_size, new_model_config

    class FakeTokenizer:
        vocab_size, bos_id, eos_id = 400, 1, 2

    config = new_model_config(tc, FakeTokenizer())
    assert base_vocab_size(tc) == 400  # the file's vocab_size sizes the trained tokenizer
    assert (config.hidden_size, config.num_key_value_heads, config.rope_theta) == (32, 1, 500.0)
    assert config.tie_word_embeddings and config.num_hidden_layers == 1  # the flag over the file


@pytest.mark.parametrize("fields, message", [
    ({"hiden_size": 64}, "hiden_size"),
    ({"hidden_size": 60, "num_attention_heads": 8}, "divisible"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    # read past as no shape, but a LLaMA trained without what they ask for is not the model asked for
    ({"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
    ({"attention_bias": True}, "attention_bias must be false"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "npllama reads LLaMA configs"),
])
def test_a_bad_config_file_is_one_line_naming_the_field(tmp_path, capsys, fields, message):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(fields))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--heads", "5"], "--heads"),
    (["--context", "16", "--seq-len", "32"], "context"),
    (["--layers", "0"], "--layers must be"),
    (["--beta2", "1.0"], "beta2"),
    (["--val-data", "x.txt", "--val-fraction", "0.1"], "not both"),
    (["--doc-separator", "comma"], "--doc-separator"),
    (["--eval-batches", "-1"], "--eval-batches"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_init_from_starts_from_the_folders_weights_and_tokenizer(shaped_run, tmp_path):
    out = tmp_path / "continued"
    train(TrainConfig(out=str(out), init_from=str(shaped_run / "model"), steps=1, lr=1e-9, min_lr=0.0,
                      **{**FAST, "vocab_size": None, "preset": "tiny"}), echo=quiet)
    source, continued = Llama.from_pretrained(shaped_run / "model"), Llama.from_pretrained(out / "model")
    assert continued.config.num_hidden_layers == 2 and continued.config.hidden_size == 48  # not tiny's
    for name, p in source.params.items():
        np.testing.assert_allclose(continued.params[name], p, atol=1e-6, err_msg=name)
    assert (out / "tokenizer.model").read_bytes() == (shaped_run / "model" / "tokenizer.model").read_bytes()


def test_init_from_a_folder_asking_for_attention_dropout_says_npllama_has_none_and_keeps_the_value(
        shaped_run, tmp_path):
    folder = tmp_path / "with_dropout"
    shutil.copytree(shaped_run / "model", folder)
    fields = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**fields, "attention_dropout": 0.1}))
    said = []
    out = tmp_path / "continued"
    train(TrainConfig(out=str(out), init_from=str(folder), steps=1, **{**FAST, "vocab_size": None}),
          echo=said.append)
    assert [line for line in said if "attention_dropout 0.1" in line and "trains without it" in line]
    # the value is the folder's, for trainers that apply it; it was written back as 0.0 before
    assert json.loads((out / "model" / "config.json").read_text())["attention_dropout"] == 0.1
    said.clear()
    train(TrainConfig(out=str(tmp_path / "plain"), init_from=str(shaped_run / "model"), steps=1,
                      **{**FAST, "vocab_size": None}), echo=said.append)
    assert not [line for line in said if "attention_dropout" in line]


def test_a_config_file_asking_for_attention_dropout_is_checked_and_answered_truly(tmp_path):
    path = tmp_path / "config.json"
    for bad, error in [(5, ValueError), ("abc", TypeError)]:
        path.write_text(json.dumps({"attention_dropout": bad}))
        with pytest.raises(error, match="attention_dropout"):
            TrainConfig(out=str(tmp_path / "run"), model_config=str(path))
    path.write_text(json.dumps({"attention_dropout": 0.1}))
    said = []
    train(TrainConfig(out=str(tmp_path / "run"), model_config=str(path), steps=1, **FAST), echo=said.append)
    assert [line for line in said if "--config sets attention_dropout 0.1" in line and "records attention_dropout 0.0" in line]
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["attention_dropout"] == 0.0


def test_init_from_refuses_shape_settings_that_disagree(shaped_run, tmp_path):
    base = dict(out=str(tmp_path / "run"), init_from=str(shaped_run / "model"), **{**FAST, "vocab_size": None})
    with pytest.raises(ValueError, match="--hidden-size 64 \\(the folder has 48\\)"):
        train(TrainConfig(**base, hidden_size=64), echo=quiet)
    with pytest.raises(ValueError, match="leave out --tokenizer"):
        train(TrainConfig(**base, tokenizer=str(shaped_run / "tokenizer.model")), echo=quiet)
    assert not (tmp_path / "run").exists()


def test_init_from_a_folder_with_only_a_tokenizer_json_asks_for_its_tokenizer_model(shaped_run, tmp_path):
    """As transformers 5 saves a folder: the run would have trained a new tokenizer, whose ids
    mean other pieces than the embedding rows were trained on.  Refused, nothing written; with
    --tokenizer it starts."""
    folder = tmp_path / "hf"
    shutil.copytree(shaped_run / "model", folder)
    (folder / "tokenizer.model").unlink()
    base = dict(out=str(tmp_path / "run"), init_from=str(folder), **{**FAST, "vocab_size": None, "steps": 1})
    with pytest.raises(ValueError, match=r"has a tokenizer\.json but no tokenizer\.model.*pass it with --tokenizer"):
        train(TrainConfig(**base), echo=quiet)
    assert not (tmp_path / "run").exists()
    train(TrainConfig(**base, tokenizer=str(shaped_run / "model" / "tokenizer.model")), echo=quiet)
    assert (tmp_path / "run" / "tokenizer.model").read_bytes() == (shaped_run / "model" / "tokenizer.model").read_bytes()


def test_init_from_a_folder_without_any_tokenizer_says_a_new_one_gives_the_ids_other_meanings(shaped_run, tmp_path):
    folder = tmp_path / "bare"
    shutil.copytree(shaped_run / "model", folder)
    for name in ("tokenizer.model", "tokenizer.json"):
        (folder / name).unlink(missing_ok=True)
    said = []
    train(TrainConfig(out=str(tmp_path / "run"), init_from=str(folder), **{**FAST, "vocab_size": None, "steps": 1}),
          echo=said.append)
    assert any("has no tokenizer.model" in line and "--tokenizer" in line for line in said), said


def test_val_data_is_the_held_out_text_and_eval_batches_0_scores_all_of_it(tmp_path):
    words = "the cat sat on a mat and then it ran to see the dog who was very happy".split()
    rng = np.random.default_rng(0)
    make = lambda n: "\n\n".join(" ".join(rng.choice(words, 30)) for _ in range(n))  # noqa: E731
    (tmp_path / "train.txt").write_text(make(200))
    (tmp_path / "val.txt").write_text(make(43))
    out = tmp_path / "run"
    result = train(TrainConfig(out=str(out), data=str(tmp_path / "train.txt"), val_data=str(tmp_path / "val.txt"),
                               steps=1, **{**FAST, "eval_batches": 0, "vocab_size": 300}), echo=quiet)
    from npllama.data import evaluation_batches, load_texts, tokenize_corpus
    from npllama.tokenizer import Tokenizer

    tokenizer = Tokenizer(out / "tokenizer.model")
    val_ids = tokenize_corpus(load_texts(tmp_path / "val.txt"), tokenizer)
    train_ids = tokenize_corpus(load_texts(tmp_path / "train.txt"), tokenizer)
    model = Llama.from_pretrained(out / "model")
    batches = evaluation_batches(val_ids, 4, 32)
    assert len(batches) > 2  # all of them, not eval_batches' default
    windows = (val_ids.size - 1) // 32
    assert windows % 4 and (val_ids.size - 1) % 32  # windows left over, and tokens after the last one
    assert sum(targets.size for _, targets in batches) == val_ids.size - 1   # every held-out target
    # the mean over every held-out target: each window's loss sum, by one call per window
    total = sum(model.loss(tokens[i:i + 1], targets[i:i + 1]) * targets.shape[1]
                for tokens, targets in batches for i in range(tokens.shape[0]))
    assert result.val_loss == pytest.approx(total / (val_ids.size - 1), rel=1e-5)
    assert np.load(out / "tokens.npy", allow_pickle=False).size == train_ids.size  # all of --data is trained on


def test_val_fraction_sets_the_share_held_out(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "run"), val_fraction=0.2, steps=1, **FAST), echo=quiet)
    log = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert log["val_fraction"] == 0.2 and result.val_loss is not None


@pytest.mark.parametrize("separator, expected", [
    ("blank-line", ["A.\nB.", "C.\n<|end|>\nD."]),
    ("line", ["A.", "B.", "C.", "<|end|>", "D."]),
    ("whole-file", ["A.\nB.\n\nC.\n<|end|>\nD."]),
    ("marker:<|end|>", ["A.\nB.\n\nC.", "D."]),
])
def test_doc_separator_chooses_where_documents_end(separator, expected):
    text = "A.\nB.\n\nC.\n<|end|>\nD.\n"
    assert split_documents(text, separator) == expected


def test_the_end_message_never_says_a_negative_percentage_below():
    assert _compared_with_unigram(2.0, 4.0).startswith("(50% below")
    above = _compared_with_unigram(4.5, 4.0)
    assert "above" in above and "12%" in above and "-" not in above.split("entropy")[1][:12]


def test_a_loss_above_the_entropy_but_below_frequencies_on_the_held_out_text_is_not_called_unlearned():
    # Before: a corpus whose end changes subject (stories, then an article held out) ended with
    # "the model has not yet learned more than word frequencies", at a validation loss of 6.23
    # where word frequencies reach 7.47 on that held-out text.
    said = _compared_with_unigram(6.23, 4.56, lambda: 7.47)
    assert "not yet learned" not in said and "below the 7.470 that word frequencies reach on the held-out" in said
    assert "not yet learned" in _compared_with_unigram(6.23, 4.56, lambda: 6.0)
    assert "not yet learned" in _compared_with_unigram(6.23, 4.56)


def test_unigram_cross_entropy_is_the_loss_of_training_frequencies_on_held_out_tokens():
    from npllama.corpus import unigram_cross_entropy, unigram_entropy

    train_ids, held_out = np.array([0, 0, 0, 1]), np.array([1, 2])
    counts = np.array([3, 1, 0, 0]) + 1.0            # one count added to each of the 4 ids
    expected = -np.mean(np.log(counts[[1, 2]] / counts.sum()))
    assert unigram_cross_entropy(train_ids, held_out, 4) == pytest.approx(expected, rel=1e-12)
    ids = np.random.default_rng(0).integers(0, 8, 20_000)   # text like the training text: about its entropy
    assert unigram_cross_entropy(ids[:10_000], ids[10_000:], 8) == pytest.approx(unigram_entropy(ids, 8), rel=1e-2)
    with pytest.raises(ValueError, match="held_out_ids is empty"):
        unigram_cross_entropy(train_ids, [], 4)


def test_resume_from_the_command_line_keeps_the_recorded_shape_and_betas(shaped_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(shaped_run, out)
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--beta1", "0.7", "--no-progress"]) == 0
    assert "beta1 0.8 -> 0.7" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert {name: saved[name] for name in SHAPE} == SHAPE and saved["beta1"] == 0.7 and saved["steps"] == 3
    _, optimizer_state, state = load_checkpoint(out / "checkpoint")
    assert state["step"] == 3 and tuple(optimizer_state["hyperparams"]["betas"]) == (0.7, 0.99)


def test_train_output_to_a_closed_pipe_ends_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(npllama.__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "npllama", "train", "--out", str(tmp_path / "run"), "--preset", "stories260k",
         "--vocab-size", "360", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.readline()
    process.stdout.close()   # like `npllama train | head -1`
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("name", ["val_data", "init_from", "data", "tokenizer"])
def test_resume_takes_a_respelled_or_symlinked_path_as_unchanged(tmp_path, monkeypatch, name):
    from npllama.resuming import changes_on_resume, write_settings
    from npllama.train import CONFIG_FILE

    def make(path):  # init_from names a model folder, the others files
        path.parent.mkdir(exist_ok=True)
        path.mkdir() if name == "init_from" else path.write_text("x\n")

    target = tmp_path / "files" / "the_thing"
    make(target)
    (tmp_path / "link").symlink_to(target)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(tmp_path)
    write_settings(run, TrainConfig(out=str(run), **{name: "files/the_thing"}), CONFIG_FILE)
    for spelling in ("./files/the_thing", str(target), "files/../files/the_thing", "link"):
        assert changes_on_resume(run, TrainConfig(out=str(run), **{name: spelling}), CONFIG_FILE) == {}, spelling
    make(tmp_path / "files" / "other")
    with pytest.raises(ValueError, match=f"cannot resume .*{name}"):  # another file is still another run
        changes_on_resume(run, TrainConfig(out=str(run), **{name: "files/other"}), CONFIG_FILE)


def test_a_config_files_pad_token_id_reaches_the_saved_model_and_its_pad_row_rule(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad_token_id": 0, "num_hidden_layers": 1}))
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), model_config=str(path), steps=1, **FAST), echo=quiet)
    assert json.loads((out / "model" / "config.json").read_text())["pad_token_id"] == 0
    model = Llama.from_pretrained(out / "model")
    assert model.config.pad_token_id == 0 and not model.config.tie_word_embeddings
    tokens = np.array([[1, 0, 5, 0, 7]])
    _, grads = model.loss_and_grads(tokens, np.array([[0, 5, 0, 7, 2]]))
    # the lookups of id 0 send nothing to its row, as nn.Embedding(padding_idx=0) in transformers
    assert not grads["model.embed_tokens.weight"][0].any() and grads["model.embed_tokens.weight"][5].any()


@pytest.mark.parametrize("pad, name", [(1, "<s>"), (2, "</s>")])
def test_a_config_file_padding_with_a_token_every_document_holds_is_refused_before_the_run(
        tmp_path, capsys, pad, name):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad_token_id": pad}))
    with pytest.raises(ValueError, match=f"pad_token_id {pad} is {name}"):
        train(TrainConfig(out=str(tmp_path / "run"), model_config=str(path)), echo=quiet)
    assert not (tmp_path / "run").exists()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "pad_token_id" in err and "null" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    # the masked-LM stack has no pad-row rule (model.decoder_backward): nothing to refuse there
    from npllama.model_shape import check_new_model

    check_new_model(TrainConfig(out=str(tmp_path / "run"), model_config=str(path), objective="mlm"))


def test_train_help_says_what_a_config_files_pad_token_id_does(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "pad_token_id" in " ".join(capsys.readouterr().out.split())


def test_a_config_files_pad_token_id_is_checked_against_the_given_tokenizers_ids(tmp_path):
    # a --tokenizer's ids are known once it is read: its </s>, or a pad piece of its own that the
    # file contradicts, are refused then, as the trained tokenizer's are before the run
    from types import SimpleNamespace

    from npllama.model_shape import new_model_config

    tokenizer = SimpleNamespace(vocab_size=400, bos_id=1, eos_id=5, pad_id=3)
    tc = TrainConfig(out=str(tmp_path / "run"), tokenizer="given.model", model_config={"pad_token_id": 5})
    with pytest.raises(ValueError, match=r"pad_token_id 5 is </s>"):
        new_model_config(tc, SimpleNamespace(vocab_size=400, bos_id=1, eos_id=5, pad_id=None))
    tc = TrainConfig(out=str(tmp_path / "run"), tokenizer="given.model", model_config={"pad_token_id": 0})
    with pytest.raises(ValueError, match=r"pad piece of its own, id 3.*set pad_token_id to 3 or null"):
        new_model_config(tc, tokenizer)
    tc = TrainConfig(out=str(tmp_path / "run"), tokenizer="given.model", model_config={"pad_token_id": 3})
    assert new_model_config(tc, tokenizer).pad_token_id == 3


def test_a_pad_token_id_a_given_tokenizer_refuses_is_refused_before_the_run_folder_is_made(shaped_run, tmp_path,
                                                                                            capsys):
    # --tokenizer's ids are read before anything is written, as the trained tokenizer's are known: a
    # refusal leaves no half-made run (train_config.json, tokenizer.model, tokens.npy) behind
    tokenizer = str(shaped_run / "tokenizer.model")
    fast = {k: v for k, v in FAST.items() if k != "vocab_size"}
    for fields, said in (({"pad_token_id": 2}, r"pad_token_id 2 is </s>"),
                         ({"pad_token_id": 400}, r"pad_token_id must be None or an id in \[0, 360\)")):
        out = tmp_path / "run"
        with pytest.raises(ValueError, match=said):
            train(TrainConfig(out=str(out), tokenizer=tokenizer, model_config=fields, steps=1, **fast), echo=quiet)
        assert not out.exists()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad_token_id": 2}))
    assert main(["train", "--config", str(path), "--tokenizer", tokenizer, "--out", str(tmp_path / "run")]) == 2
    assert "pad_token_id 2 is </s>" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_run_whose_saved_settings_hold_a_pad_token_id_of_before_it_was_kept_resumes(tmp_path):
    # before pad_token_id was kept, a --config file's (a copied config.json saying </s>, 2) was read
    # past: such a run's model has none, and its resume continues it as it was trained, not refused
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=2, stop_after=1, num_hidden_layers=1, **FAST), echo=quiet)
    saved = json.loads((out / "train_config.json").read_text())
    (out / "train_config.json").write_text(json.dumps({**saved, "model_config": {"pad_token_id": 2}}))
    result = train(npllama.train.resume_config(str(out)), resume=True, echo=quiet)
    assert result.step == 2 and not result.interrupted
    assert json.loads((out / "model" / "config.json").read_text()).get("pad_token_id") is None


def test_a_resume_before_the_first_checkpoint_of_settings_now_refused_says_to_start_again(tmp_path, capsys):
    # a run an older version started with a --config pad_token_id of </s> (read past then), killed
    # before its first checkpoint: --resume would start it from step 0 as a new start, and the saved
    # settings are refused as a new start's are -- before any work, saying that nothing was trained and
    # to start again without --resume (which may not change them), not "set pad_token_id to null"
    out = tmp_path / "run"
    tc = TrainConfig(out=str(out), steps=2, num_hidden_layers=1, **FAST)
    out.mkdir()
    saved = json.loads(json.dumps(dataclasses.asdict(tc)))
    (out / "train_config.json").write_text(json.dumps({**saved, "model_config": {"pad_token_id": 2}}))
    lines = []
    with pytest.raises(ValueError) as refused:
        train(npllama.train.resume_config(str(out)), resume=True, echo=lines.append)
    said = str(refused.value)
    assert "pad_token_id 2 is </s>" in said and "no checkpoint" in said and "without --resume" in said
    assert lines == [] and not (out / "tokenizer.model").exists()   # refused before a tokenizer is trained
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "without --resume" in capsys.readouterr().err


def test_init_from_a_folder_whose_pad_token_id_is_eos_trains_with_it_as_transformers_would(shaped_run, tmp_path):
    # a real LLaMA folder's config.json may say pad_token_id = </s> (many fine-tunes do): --init-from
    # trains it, not refused as a --config file's is -- the folder's model is what transformers would
    # fine-tune with nn.Embedding(padding_idx=2), so its </s> row gets no gradient from lookups there too
    folder = tmp_path / "base"
    shutil.copytree(shaped_run / "model", folder)
    fields = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**fields, "pad_token_id": fields["eos_token_id"]}))
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), init_from=str(folder), steps=1, weight_decay=0.0, **{**FAST, "vocab_size": None}),
          echo=quiet)
    assert json.loads((out / "model" / "config.json").read_text())["pad_token_id"] == 2
    assert not Llama.from_pretrained(folder).config.tie_word_embeddings   # the row only lookups would move
    before, after = (Llama.from_pretrained(f).params["model.embed_tokens.weight"] for f in (folder, out / "model"))
    np.testing.assert_array_equal(after[2], before[2])   # (no weight decay to move it either)
    assert not np.array_equal(after[3:], before[3:])


def test_the_default_min_lr_is_a_tenth_of_the_lr_so_a_lower_lr_alone_is_not_refused(capsys):
    """--lr below the old fixed default --min-lr (2e-4) was refused for a --min-lr never given; the
    cosine now ends at a tenth of --lr (as fine-tuning's does) unless --min-lr says otherwise."""
    assert TrainConfig().min_lr == 2e-4                    # the default run is unchanged
    assert TrainConfig(lr=1e-4).min_lr == pytest.approx(1e-5)
    assert TrainConfig(lr=1e-4, min_lr=0.0).min_lr == 0.0
    with pytest.raises(ValueError, match="min_lr must be between 0 and lr"):
        TrainConfig(lr=1e-4, min_lr=2e-4)                  # one given above --lr is still refused
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "a tenth of --lr" in " ".join(capsys.readouterr().out.split())


def test_weight_decay_shrinks_every_matrix_and_no_norm_weight_as_help_says(tmp_path, capsys):
    """One step from the same weights and batch with --weight-decay 0 and 0.5: each matrix (the
    embeddings too) differs by lr * 0.5 * its starting value (decoupled decay), each RMSNorm weight
    not at all -- and --help says which are decayed."""
    from npllama import use_backend

    runs = {}
    for decay in (0.0, 0.5):
        out = tmp_path / f"decay{decay}"
        with use_backend("numpy"):
            train(TrainConfig(out=str(out), steps=1, weight_decay=decay, lr=1e-2, dtype="float64", threads=1,
                              **FAST), echo=quiet)
        runs[decay] = Llama.from_pretrained(out / "model", dtype=np.float64).params
    start = Llama(Llama.from_pretrained(tmp_path / "decay0.0" / "model").config, seed=0, dtype=np.float64).params
    for name, before in start.items():
        difference = runs[0.0][name] - runs[0.5][name]
        expected = 1e-2 * 0.5 * before if before.ndim == 2 else np.zeros_like(before)
        np.testing.assert_allclose(difference, expected, rtol=0, atol=1e-15, err_msg=name)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "not the RMSNorm weights" in help_text
    # and --resume's list of the settings that define the run names the objective, which it refuses to change
    assert "objective" in help_text.split("--resume", 2)[2].split("--stop-after")[0]
    assert "objective" in TrainConfig.RESUME_FIXED


def test_a_resume_reads_the_tokenizer_file_the_settings_name_by_its_path_and_a_copy_does_as_well(shaped_run, tmp_path):
    """A run from before tokenizer copies (none in its checkpoint or folder) reads --tokenizer again
    on a resume.  Moved, it is named by its flag, with the way out; a copy given at a new path
    resumes the run as the original would have."""
    tokenizer = tmp_path / "tok.model"
    shutil.copy(shaped_run / "tokenizer.model", tokenizer)
    settings = dict(out=str(tmp_path / "run"), tokenizer=str(tokenizer), **{**FAST, "vocab_size": None, "steps": 2})
    assert train(TrainConfig(**settings, stop_after=1), echo=quiet).interrupted
    for copy in (tmp_path / "run" / "tokenizer.model", tmp_path / "run" / "checkpoint" / "model" / "tokenizer.model"):
        copy.unlink()                                       # the layout of a run from before the copies
    moved = tmp_path / "elsewhere" / "tok.model"
    moved.parent.mkdir()
    tokenizer.rename(moved)
    with pytest.raises(FileNotFoundError, match=r"--tokenizer '.*tok\.model' does not exist .*give its new path "
                                                r"with --tokenizer"):
        train(TrainConfig(**settings), resume=True, echo=quiet)
    result = train(TrainConfig(**{**settings, "tokenizer": str(moved)}), resume=True, echo=quiet)
    assert result.step == 2
    assert (tmp_path / "run" / "tokenizer.model").read_bytes() == moved.read_bytes()


def test_resume_takes_init_from_a_run_folder_or_its_model_as_the_same_start(tmp_path):
    """--init-from RUN starts from RUN/model (init_from_dir): naming that folder on --resume is no change
    (as finetune --base); a folder that holds another model still is."""
    from npllama.resuming import changes_on_resume, write_settings
    from npllama.train import CONFIG_FILE

    for name in ("base_run", "other"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    write_settings(run, TrainConfig(out=str(run), init_from=str(tmp_path / "base_run")), CONFIG_FILE)
    for spelling in (tmp_path / "base_run" / "model", f"{tmp_path / 'base_run' / 'model'}/"):
        assert changes_on_resume(run, TrainConfig(out=str(run), init_from=str(spelling)), CONFIG_FILE) == {}, spelling
    with pytest.raises(ValueError, match="cannot resume .*init_from"):
        changes_on_resume(run, TrainConfig(out=str(run), init_from=str(tmp_path / "other" / "model")), CONFIG_FILE)
