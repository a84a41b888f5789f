"""Flags that would be silently ignored are refused in one line naming them, before anything loads."""
import pytest

from npllama.cli import main
from npllama.finetune import ClassifyConfig, SFTConfig


@pytest.fixture(autouse=True)
def no_latest_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))   # nothing to load: a refusal must come first
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)


def one_line_error(argv, capsys):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("task", ["classify", "sft", "sop"])
@pytest.mark.parametrize("flag, value", [("--lora-r", "4"), ("--lora-alpha", "8"), ("--lora-dropout", "0.1")])
def test_a_lora_setting_without_lora_is_refused(task, flag, value, capsys):
    err = one_line_error(["finetune", task, flag, value, "--no-progress"], capsys)
    assert f"{flag} needs --lora" in err


def test_warmup_longer_than_the_run_is_refused_as_train_refuses_it(capsys):
    err = one_line_error(["finetune", "classify", "--steps", "3", "--warmup-steps", "100"], capsys)
    assert "warmup" in err and "100" in err
    with pytest.raises(ValueError, match="must not exceed steps"):
        SFTConfig(steps=3, warmup_steps=4)


def test_the_default_warmup_is_not_refused_in_a_short_run_and_a_given_one_is_kept():
    # the default (20) is longer than 3 steps but not the user's choice: it is kept, and the loop
    # fits it to the run (min(warmup, steps - 1), finetune.run_steps); a given one is used as given
    assert ClassifyConfig(steps=3).step_config(1e-3, 1e-3).warmup_steps == 20
    assert ClassifyConfig(steps=3, warmup_steps=3).step_config(1e-3, 1e-3).warmup_steps == 3


def test_train_refuses_a_vocab_size_that_disagrees_with_its_tokenizer(tmp_path, capsys):
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    tok = Tokenizer.train(make_default_corpus(200, seed=0), tmp_path / "tok", 400)
    out = tmp_path / "run"
    err = one_line_error(["train", "--tokenizer", str(tok.path), "--vocab-size", "600", "--out", str(out)], capsys)
    assert "--vocab-size 600" in err and "400 pieces" in err and not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["train", "--doc-separator", "whole-file"], "--doc-separator"),           # no --data: the built-in stories
    (["train", "--data", "{docs}", "--doc-separator", "line"], "--doc-separator"),  # a .jsonl record is a document
    (["finetune", "sop", "--doc-separator", "whole-file"], "--doc-separator"),
    (["finetune", "sop", "--data", "{docs}", "--doc-separator", "line"], "--doc-separator"),  # as train's
    (["tokenizer", "train", "--doc-separator", "line"], "--doc-separator"),   # the built-in stories
    (["tokenizer", "train", "--data", "{docs}", "--doc-separator", "whole-file"], "--doc-separator"),
    (["finetune", "sop", "--data", "{docs}", "--stories", "50"], "--stories"),  # --data replaces the stories
    (["finetune", "classify", "--data", "{docs}", "--dataset", "topic"], "--dataset"),
    # a validation file replaces the held-out share and how it is chosen
    (["finetune", "classify", "--data", "{docs}", "--val-data", "{docs}", "--val-fraction", "0.3"], "--val-fraction"),
    (["finetune", "classify", "--data", "{docs}", "--val-data", "{docs}", "--split", "shuffled"], "--split"),
])
def test_a_flag_about_the_built_in_data_or_about_data_files_is_refused_where_it_would_not_apply(
        tmp_path, capsys, argv, flag):
    (tmp_path / "docs.jsonl").write_text('{"text": "One. Two.", "label": "a"}\n')
    err = one_line_error([a.format(docs=tmp_path / "docs.jsonl") for a in argv] + ["--out", str(tmp_path / "run")],
                         capsys)
    assert flag in err and "would be ignored" in err
    assert not list(tmp_path.glob("run*"))   # a run folder, or a tokenizer's run.model


@pytest.mark.parametrize("argv, words", [
    (["generate", "--temperature", "0", "--top-k", "5"], "--top-k would be ignored: --temperature 0 is greedy"),
    (["generate", "--temperature", "0", "--top-p", "0.9"], "--top-p would be ignored"),
    (["generate", "--temperature", "0", "--top-k", "0", "--top-p", "0.9"], "error: --top-p would be ignored"),
    (["chat", "--temperature", "0", "--top-k", "3", "--top-p", "1"], "error: --top-k would be ignored"),
    (["chat", "--temperature", "0", "--top-k", "5", "--top-p", "0.9"], "--top-k and --top-p would be ignored"),
    (["generate", "--temperature", "0", "--num-samples", "3"], "would print the same greedy text 3 times"),
])
def test_sampling_flags_that_greedy_decoding_ignores_are_refused(argv, words, capsys):
    """--temperature 0 takes the most likely token, which any top-k or top-p cut keeps: the cut
    did nothing, and --num-samples printed one text N times, without a word."""
    assert words in one_line_error(argv, capsys)


@pytest.mark.parametrize("neutral", [["--top-k", "0"], ["--top-p", "1"], ["--top-k", "0", "--top-p", "1.0"]])
def test_greedy_decoding_accepts_the_flags_values_that_cut_nothing(small_model_dir, neutral, capsys):
    """--top-k 0 and --top-p 1 cut nothing (as in transformers' generate): beside --temperature 0
    they change nothing and ignore nothing -- a script that passes --top-k 0 to turn off a cut
    must not be refused when it asks for greedy text -- and the text is the greedy one."""
    argv = ["generate", "--model", str(small_model_dir), "--prompt", "Once", "--max-new-tokens", "5",
            "--temperature", "0"]
    capsys.readouterr()
    assert main(argv) == 0
    greedy = capsys.readouterr().out
    assert main(argv + neutral) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == greedy


def test_train_refuses_samples_under_the_masked_lm_objective_which_prints_none(tmp_path, capsys):
    """A bidirectional masked-LM model does not generate text, so an --objective mlm run prints no
    samples: a --samples count given with it would be ignored without a word."""
    out = tmp_path / "run"
    err = one_line_error(["train", "--objective", "mlm", "--samples", "2", "--out", str(out)], capsys)
    assert "--samples" in err and "would be ignored" in err and "mlm" in err
    assert not out.exists()


def test_train_refuses_a_preset_beside_init_from_whose_folder_gives_the_shape(small_model_dir, tmp_path, capsys):
    """--init-from's folder fixes the model's shape (its config.json), as --config beside it is
    refused for: a --preset given with it trained the folder's shape without a word."""
    out = tmp_path / "run"
    err = one_line_error(["train", "--init-from", str(small_model_dir), "--preset", "stories15m",
                          "--out", str(out)], capsys)
    assert "--preset" in err and "would be ignored" in err and "--init-from" in err
    assert not out.exists()


def test_train_refuses_a_config_files_vocab_size_that_disagrees_with_its_tokenizer(tmp_path, capsys):
    """The model's vocabulary is --tokenizer's: a --config file's other vocab_size was dropped without
    a word (and recorded in train_config.json as if used), as --vocab-size beside it is refused for."""
    import json

    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    tok = Tokenizer.train(make_default_corpus(200, seed=0), tmp_path / "tok", 400)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 500}))
    out = tmp_path / "run"
    err = one_line_error(["train", "--tokenizer", str(tok.path), "--config", str(tmp_path / "config.json"),
                          "--out", str(out)], capsys)
    assert '--config\'s "vocab_size": 500' in err and "400 pieces" in err and not out.exists()
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 400}))   # agreeing: not refused
    from npllama.train import TrainConfig, _check_a_new_start

    _check_a_new_start(TrainConfig(out=str(out), tokenizer=str(tok.path), model_config=str(tmp_path / "config.json")))


def test_exercise_check_refuses_gradebook_for_a_single_file(tmp_path, capsys):
    # --gradebook names where a folder's gradebook goes: checking one file writes none
    submission = tmp_path / "rmsnorm_backward.py"
    submission.write_text("def rmsnorm_backward(dy, cache):\n    raise NotImplementedError\n")
    err = one_line_error(["exercise", "check", "rmsnorm", str(submission), "--gradebook", str(tmp_path / "book")],
                         capsys)
    assert "--gradebook" in err and "folder" in err
    assert not list(tmp_path.glob("book*"))


@pytest.mark.parametrize("folder", ["mixed", "named.jsonl"])
def test_tokenizer_train_takes_doc_separator_for_a_folder_which_may_hold_txt_files(tmp_path, monkeypatch, folder):
    # a folder (whatever its name) may hold .txt files, which --doc-separator cuts, as `train` reads one
    from npllama.tokenizer import Tokenizer

    (tmp_path / folder).mkdir()
    (tmp_path / folder / "a.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (tmp_path / folder / "b.jsonl").write_text('{"text": "four\\nfive"}\n', encoding="utf-8")
    seen = []

    def train(texts, out, *args, doc_separator, **kwargs):   # the documents it would read, without training
        from npllama.data import Corpus

        seen.extend(Corpus(texts, doc_separator))
        return type("Trained", (), {"path": f"{out}.model", "vocab_size": 0})()

    monkeypatch.setattr(Tokenizer, "train", staticmethod(train))
    assert main(["tokenizer", "train", "--data", str(tmp_path / folder), "--doc-separator", "line",
                 "--out", str(tmp_path / "tok")]) == 0
    assert sorted(seen) == ["four\nfive", "one", "three", "two"]   # a.txt cut at each line, b.jsonl's record whole
