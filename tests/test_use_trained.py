"""Using what you trained: `generate` with stops, penalties, chat and adapters; `classify`;
`eval perplexity`; sampling arguments refused before any work; a closed pipe ends quietly."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npllama
from npllama.classify import Classified, load_classifier
from npllama.cli import main
from npllama.finetune import ClassifyConfig, classify
from npllama.generate import generate
from npllama.perplexity import perplexity
from npllama.runs import load_model_and_tokenizer

TEXT = "Once upon a time, there was a little girl named Lily. She liked to play with her red ball."


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ----- generate ------------------------------------------------------------------------------------
def test_generate_prints_a_tokens_per_second_line(small_model_dir, capsys):
    status, out, err = run_cli(capsys, "generate", "--model", str(small_model_dir), "--prompt", "Once",
                               "--max-new-tokens", "6", "--temperature", "0")
    assert status == 0 and out.startswith("Once")
    assert "tokens/s" in err and "6 tokens in" in err and "first token after" in err


def test_the_speed_line_keeps_the_first_tokens_wait_apart_from_the_rate():
    from npllama.commands.generate import _speed_line

    # the first token took 0.5 s (prefill, kernels loading), then one every 10 ms
    arrivals = [10.5 + 0.01 * i for i in range(4)]
    line = _speed_line(4, 0.53, 10.0, arrivals, 7)
    assert line == "[4 tokens in 0.53 s: 7.5 tokens/s; first token after 0.50 s, then 100.0 tokens/s, prompt 7 tokens]"
    assert _speed_line(1, 0.2, 10.0, [10.2], 3) == "[1 tokens in 0.20 s: 5.0 tokens/s, prompt 3 tokens]"


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "--temperature must be a finite number"),
    ("--top-k", "-1", "--top-k must be an integer >= 0 (0 = no cut)"),
    ("--top-p", "2", "--top-p must be in (0, 1]"),
    ("--repetition-penalty", "0", "--repetition-penalty must be a finite number > 0"),
    ("--max-new-tokens", "0", "--max-new-tokens must be a positive integer"),
    ("--seed", "-3", "--seed must be a non-negative integer"),
    ("--chat-template", "nope.jinja", "--chat-template 'nope.jinja' is neither llama2 nor llama3"),
    ("--stop", "", "--stop must not be empty"),
])
def test_sampling_arguments_are_checked_before_loading_or_echoing(tmp_path, capsys, flag, value, message):
    # the model folder does not exist: an error about it would mean the model was loaded first
    status, out, err = run_cli(capsys, "generate", "--model", str(tmp_path / "missing"), flag, value)
    assert status == 2 and out == ""
    assert message in err and "missing" not in err and err.count("\n") == 1


def test_stop_string_cuts_the_output(small_model_dir, capsys):
    base = ["generate", "--model", str(small_model_dir), "--prompt", "Once", "--max-new-tokens", "40",
            "--temperature", "0"]
    _, free, _ = run_cli(capsys, *base)
    continuation = free[len("Once"):].rstrip("\n")
    stop = continuation[3:5]
    assert len(stop) == 2
    _, cut, err = run_cli(capsys, *base, "--stop", stop)
    assert cut == "Once" + continuation[:continuation.index(stop)] + "\n"
    new_tokens = int(err.split("[")[1].split()[0])
    assert new_tokens < 40


@pytest.fixture(scope="module")
def play_model_dir(small_model_dir, tmp_path_factory):
    """The small model edited to answer "play play play ..." whatever it reads (greedy)."""
    from npllama import Llama
    from .test_generate import _always_says

    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    _always_says(model, tokenizer.encode("play", bos=False)[0])
    folder = tmp_path_factory.mktemp("play") / "model"
    model.save_pretrained(folder, extra_files={"tokenizer.model": (small_model_dir / "tokenizer.model").read_bytes()})
    assert isinstance(Llama.from_pretrained(folder), Llama)
    return folder


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_a_stop_string_matches_the_text_as_printed(play_model_dir, capsys, chat):
    """generate prints a continuation after its prompt (" play play", its first space included) and
    a chat answer on its own ("play play"): a stop string matches what is printed, and the
    Python API's StopStrings (after the prompt, answer=True for an answer) stops at the same token."""
    from npllama.chat import ChatTemplate
    from npllama.generate import StopStrings

    _, tokenizer, _ = load_model_and_tokenizer(play_model_dir)
    base = ["generate", "--model", str(play_model_dir), "--prompt", "Once", "--max-new-tokens", "5",
            "--temperature", "0", "--backend", "numpy"] + (["--chat"] if chat else [])
    _, free, _ = run_cli(capsys, *base)
    shown_prompt = "" if chat else "Once"
    shown = free[len(shown_prompt):-1]
    assert shown == ("" if chat else " ") + "play play play play play"
    prompt_ids = (tokenizer.encode(ChatTemplate.for_folder(play_model_dir, tokenizer).prompt("Once"), bos=False)
                  if chat else tokenizer.encode("Once", bos=True))
    play = tokenizer.encode("play", bos=False)
    first_word = shown[:len(shown) - len(shown.lstrip())] + "play"       # " play", or "play" for an answer
    for stop in (first_word, "y p", "play play", " play p"):
        api = StopStrings(tokenizer, [stop], after=prompt_ids, answer=chat)
        tokens = next(n for n in range(1, 6) if api(play * n))
        _, out, err = run_cli(capsys, *base, "--stop", stop)
        assert out == shown_prompt + shown[:shown.index(stop)] + "\n", stop
        assert err.splitlines()[-1].startswith(f"[{tokens} tokens in"), (stop, err)
    # the start of the text as printed stops at the first token, and prints nothing of it
    _, out, err = run_cli(capsys, *base, "--stop", first_word)
    assert out == shown_prompt + "\n" and err.splitlines()[-1].startswith("[1 tokens in")


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_the_cli_stops_where_stop_strings_rule_says(play_model_dir, capsys, monkeypatch, chat):
    """generate prints by StopStrings' rule of where a text stops: a rule that keeps the stop string
    (a monkeypatched stop_at) prints it too."""
    from npllama.generate import StopStrings

    base = ["generate", "--model", str(play_model_dir), "--prompt", "Once", "--max-new-tokens", "5",
            "--temperature", "0", "--backend", "numpy", "--stop", "y p"] + (["--chat"] if chat else [])
    shown_prompt = "" if chat else "Once"
    _, out, _ = run_cli(capsys, *base)
    assert out == shown_prompt + ("" if chat else " ") + "pla\n"

    def after_the_string(self, text):
        found = [text.find(s) + len(s) for s in self.strings if s in text]
        return min(found) if found else None

    monkeypatch.setattr(StopStrings, "stop_at", after_the_string)
    _, out, err = run_cli(capsys, *base)
    assert out == shown_prompt + ("" if chat else " ") + "play p\n" and err.splitlines()[-1].startswith("[2 tokens in"), (out, err)


def test_chat_stops_at_a_stop_string_and_goes_on_from_what_it_printed(play_model_dir, monkeypatch, capsys):
    """`npllama chat --stop` follows generate --chat's rule: the answer as printed ("play play ..."),
    so "play" stops at its first word; the next prompt holds the answer as printed."""
    import io

    import npllama.generate as generation
    from npllama.chat import ChatTemplate

    prompts = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda model, prompt, *a, **k: prompts.append(prompt) or
                        real(model, prompt, *a, **k))

    def chat(*argv):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nGo on\n"))
        prompts.clear()
        return run_cli(capsys, "chat", "--model", str(play_model_dir), "--max-new-tokens", "5", "--temperature",
                       "0", "--backend", "numpy", *argv)

    assert chat()[1] == "play play play play play\n" * 2
    status, out, err = chat("--stop", "y p")
    assert status == 0 and out == "pla\n" * 2 and "has no chat template" in err and len(err.splitlines()) == 1
    _, tokenizer, _ = load_model_and_tokenizer(play_model_dir)
    template = ChatTemplate.for_folder(play_model_dir, tokenizer)
    said = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "pla"},
            {"role": "user", "content": "Go on"}]
    assert prompts[1] == tokenizer.encode(template.render(said), bos=False)
    assert chat("--stop", "play")[1] == "\n\n"
    assert chat("--stop", " play")[1] == "play\n" * 2
    # a stop string is no answer cut by a full context, where the context leaves less room than
    # --max-new-tokens (the model's 128 tokens here)
    _, out, err = chat("--stop", "y p", "--max-new-tokens", "500")
    assert out == "pla\n" * 2 and "answer cut" not in err, err


class Typed(__import__("io").StringIO):
    """Standard input as a terminal gives it."""

    def isatty(self):
        return True


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "piped"])
def test_ctrl_c_mid_answer_stops_the_answer_typed_and_ends_the_chat_piped(play_model_dir, monkeypatch, capsys,
                                                                          typed):
    """Ctrl-C while an answer streams: at a terminal it stops that answer on its own line and the
    conversation goes on from what was printed; from a pipe the chat ends, the answer's line ended
    before the one line that says so (not "...answer textnpllama chat: interrupted")."""
    import io

    import npllama.generate as generation
    from npllama.cli import main

    prompts, real = [], generation.generate

    def interrupted_first(model, prompt, *args, on_token, **kwargs):
        prompts.append(prompt)
        if len(prompts) > 1:
            return real(model, prompt, *args, on_token=on_token, **kwargs)
        tokens = []

        def ctrl_c_at_the_third(token_id):
            tokens.append(token_id)
            if len(tokens) == 3:
                raise KeyboardInterrupt
            on_token(token_id)

        return real(model, prompt, *args, on_token=ctrl_c_at_the_third, **kwargs)

    monkeypatch.setattr(generation, "generate", interrupted_first)
    monkeypatch.setattr("sys.stdin", (Typed if typed else io.StringIO)("Hi\nGo on\n"))
    status = main(["chat", "--model", str(play_model_dir), "--temperature", "0", "--backend", "numpy",
                   "--max-new-tokens", "6", "--chat-template", "llama2"])
    out, err = capsys.readouterr()
    stopped = "play play"           # the model says "play" at every step: Ctrl-C came at the third
    assert out.startswith(stopped + "\n")
    if not typed:
        assert status == 130 and out == stopped + "\n" and len(prompts) == 1
        assert err == "npllama chat: interrupted\n"
        return
    assert status == 0 and len(out.splitlines()) == 2 and len(prompts) == 2
    assert "[answer stopped (Ctrl-C): the conversation goes on from what was printed]" in err, err
    from npllama.chat import ChatTemplate
    from npllama.runs import load_tokenizer

    tokenizer = load_tokenizer(play_model_dir)
    said = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": stopped},
            {"role": "user", "content": "Go on"}]
    assert prompts[1] == tokenizer.encode(ChatTemplate("llama2").render(said), bos=False)


@pytest.mark.parametrize("at_token", [0, 1], ids=["in the prefill", "at the first token"])
def test_ctrl_c_before_the_answers_first_word_drops_the_question(play_model_dir, monkeypatch, capsys, at_token):
    """Before: Ctrl-C before anything of the answer was printed kept the question with an empty
    answer, which the model then read at every later turn.  The question is dropped instead: the next
    prompt is as if it had never been sent."""
    import npllama.generate as generation
    from npllama.chat import ChatTemplate
    from npllama.cli import main
    from npllama.runs import load_tokenizer

    prompts, real = [], generation.generate

    def interrupted_first(model, prompt, *args, on_token, **kwargs):
        prompts.append(prompt)
        if len(prompts) > 1:
            return real(model, prompt, *args, on_token=on_token, **kwargs)
        if at_token == 0:    # the prompt still being read: no token of the answer yet
            raise KeyboardInterrupt

        def ctrl_c_at_the_first(token_id):    # the first token made, but not yet printed
            raise KeyboardInterrupt

        return real(model, prompt, *args, on_token=ctrl_c_at_the_first, **kwargs)

    monkeypatch.setattr(generation, "generate", interrupted_first)
    monkeypatch.setattr("sys.stdin", Typed("Hi\nGo on\n"))
    status = main(["chat", "--model", str(play_model_dir), "--temperature", "0", "--backend", "numpy",
                   "--max-new-tokens", "3", "--chat-template", "llama2"])
    out, err = capsys.readouterr()
    assert status == 0 and len(prompts) == 2 and out.endswith("play play play\n"), (out, err)
    assert "[answer stopped (Ctrl-C) before its first word: the message is dropped]" in err, err
    assert "the conversation goes on from what was printed" not in err, err
    tokenizer = load_tokenizer(play_model_dir)
    only_the_next = [{"role": "user", "content": "Go on"}]
    assert prompts[1] == tokenizer.encode(ChatTemplate("llama2").render(only_the_next), bos=False)


@pytest.fixture(scope="module")
def byte_level_play_dir(tmp_path_factory):
    """A model folder with a byte-level BPE tokenizer.json (LLaMA-3's kind: decoding an answer's
    ids alone keeps its first space, " play"), edited to answer " play play ..." (greedy)."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from npllama import Llama, LlamaConfig
    from .test_generate import _always_says

    folder = tmp_path_factory.mktemp("byte_level")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.train_from_iterator(["Hi there, go on and play with the ball, play again"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True}
    model = Llama(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=128), seed=0)
    _always_says(model, tok.encode(" play").ids[0])
    model.save_pretrained(folder, extra_files={"tokenizer.json": tok.to_str().encode(),
                                               "tokenizer_config.json": json.dumps(config).encode()})
    return folder


def test_chat_goes_on_from_the_answer_as_printed_when_decoding_it_alone_keeps_its_space(
        byte_level_play_dir, monkeypatch, capsys):
    # Before: the conversation went on from tokenizer.decode(answer ids) cut at the stop string;
    # a byte-level tokenizer decodes them alone as " play play ..." (its first space kept), so
    # --stop " play" (found in the printed "play play" after its first word) cut that text at
    # its very start: "play" was printed and an empty answer went into the next prompt.
    import io

    import npllama.generate as generation
    from npllama.chat import ChatTemplate

    prompts = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda model, prompt, *a, **k: prompts.append(prompt) or
                        real(model, prompt, *a, **k))
    _, tokenizer, _ = load_model_and_tokenizer(byte_level_play_dir)
    assert tokenizer.decode(tokenizer.encode(" play play", bos=False)) == " play play"
    template = ChatTemplate.for_folder(byte_level_play_dir, tokenizer)
    for stop, printed in ((" play", "play"), ("y p", "pla"), ("play", "")):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nGo on\n"))
        prompts.clear()
        status, out, err = run_cli(capsys, "chat", "--model", str(byte_level_play_dir), "--max-new-tokens", "5",
                                   "--temperature", "0", "--backend", "numpy", "--stop", stop)
        assert status == 0 and out == f"{printed}\n" * 2, (stop, out, err)
        said = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": printed},
                {"role": "user", "content": "Go on"}]
        assert prompts[1] == tokenizer.encode(template.render(said), bos=False), stop


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_the_help_says_what_a_stop_string_is_matched_against(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--stop TEXT" in help_text and "matched against the text as printed" in help_text
    assert "without the space the template puts before it" in help_text
    # chat has no --prompt and prints no continuation: its help speaks of answers alone
    assert ("--prompt" in help_text.split("--stop TEXT")[-1]) == (command == "generate")


def test_generate_with_an_adapter_equals_the_merged_model(small_model_dir, tmp_path, capsys):
    from npllama.lora import attach_lora

    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    adapters = attach_lora(model, r=4, seed=1)
    for name, value in adapters.params.items():  # PEFT starts B at zero: make the adapter do something
        value += 0.5 * np.random.default_rng(len(name)).standard_normal(value.shape).astype(value.dtype)
    adapters.save_adapter(tmp_path / "adapter")
    args = ["--prompt", "Once", "--max-new-tokens", "12", "--temperature", "0"]
    _, with_adapter, _ = run_cli(capsys, "generate", "--model", str(small_model_dir), "--adapter",
                                 str(tmp_path / "adapter"), *args)
    _, without, _ = run_cli(capsys, "generate", "--model", str(small_model_dir), *args)
    adapters.merge()
    merged = generate(model, tokenizer.encode("Once"), 12, temperature=0, eos_id=tokenizer.eos_id)
    assert with_adapter == tokenizer.decode(merged) + "\n"
    assert with_adapter != without


def test_chat_wraps_the_prompt_in_the_template(small_model_dir, capsys):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    prompt = tokenizer.encode("<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST]", bos=False)
    expected = generate(model, prompt, 10, temperature=0, eos_id=tokenizer.eos_id)
    status, out, _ = run_cli(capsys, "generate", "--model", str(small_model_dir), "--prompt", "Hi",
                             "--system", "Be kind.", "--max-new-tokens", "10", "--temperature", "0")
    assert status == 0 and out == tokenizer.decode(expected[len(prompt):]) + "\n"


def test_a_closed_pipe_ends_quietly(small_model_dir):
    env = {**os.environ, "PYTHONPATH": str(Path(npllama.__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "npllama", "generate", "--model", str(small_model_dir), "--max-new-tokens", "100",
         "--num-samples", "30", "--temperature", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.read(5)
    process.stdout.close()   # like `| head -c 5`
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ----- classify ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifiers(small_model_dir, tmp_path_factory):
    """A full classifier folder and a LoRA one, each after a few fine-tuning steps."""
    out = tmp_path_factory.mktemp("classifiers")
    quiet = lambda *_: None
    settings = dict(base=str(small_model_dir), steps=4, batch_size=8, progress=False)
    full = classify(ClassifyConfig(**settings, out=str(out / "full")), echo=quiet)
    classify(ClassifyConfig(**settings, lora=True, out=str(out / "lora")), echo=quiet)
    return out / "full", out / "lora", full.label_names


def test_a_classifier_folder_loads_and_predicts(classifiers):
    full, _, names = classifiers
    clf = load_classifier(full)
    assert clf.label_names == names
    texts = ["I loved this story, it was wonderful.", "This was awful and boring.", "ok"]
    probs = clf.probabilities(texts)
    assert probs.shape == (3, len(names)) and np.allclose(probs.sum(1), 1)
    assert clf.predict(texts) == [names[i] for i in probs.argmax(1)]
    # batching and padding do not change a text's scores
    np.testing.assert_allclose(clf.logits(texts, batch_size=1), clf.logits(texts, batch_size=3), atol=1e-5)


def test_classify_cli_with_a_folder_and_with_an_adapter(classifiers, small_model_dir, capsys, tmp_path):
    full, lora, names = classifiers
    status, out, _ = run_cli(capsys, "classify", "--model", str(full), "--text", "I loved it.", "--text", "Bad.")
    assert status == 0 and len(out.splitlines()) == 2
    expected = load_classifier(full).predict(["I loved it.", "Bad."])
    assert [line.split()[0] for line in out.splitlines()] == expected
    texts = tmp_path / "texts.txt"
    texts.write_text("Great fun.\n\nTerrible.\n")
    status, out, _ = run_cli(capsys, "classify", "--model", str(small_model_dir), "--adapter", str(lora),
                             "--file", str(texts), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [r["text"] for r in rows] == ["Great fun.", "Terrible."]
    assert set(rows[0]["probabilities"]) == set(names)
    assert rows[0]["label"] == load_classifier(small_model_dir, adapter=lora).predict(["Great fun."])[0]


def test_classify_scores_a_labelled_test_file_as_fine_tuning_reports(classifiers, capsys, tmp_path):
    """classify --data: the file's texts classified by the folder's classifier, scored against their
    labels (accuracy, macro-F1, confusion matrix), the baseline the file's most frequent label."""
    full, _, names = classifiers
    texts = ["I loved this story.", "Awful and boring.", "A fine day.", "The worst film.", "Great fun.",
             "Bad, bad, bad."]
    truth = [names[i % 2] for i in range(len(texts))]
    truth[-1] = names[0]
    (tmp_path / "test.csv").write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, truth)))
    predicted = load_classifier(full).predict(texts)
    status, out, _ = run_cli(capsys, "classify", "--model", str(full), "--data", str(tmp_path / "test.csv"))
    accuracy = np.mean([p == y for p, y in zip(predicted, truth)])
    assert status == 0 and f"on 6 texts of {tmp_path / 'test.csv'}" in out
    assert f"test accuracy {accuracy:.3f}" in out
    assert f"(majority-class baseline, always {names[0]} (this file's most frequent label): accuracy 0.667)" in out
    status, out, _ = run_cli(capsys, "classify", "--model", str(full), "--data", str(tmp_path / "test.csv"), "--json")
    scores = json.loads(out)
    assert status == 0 and scores["n"] == 6 and scores["accuracy"] == pytest.approx(accuracy)
    confusion = np.array(scores["confusion"])
    assert confusion.sum() == 6 and [confusion[names.index(y)].sum() for y in names] == [4, 2]
    # a label the classifier does not have is named, with its line and the classifier's labels
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "Meh.", "label": "neutral"}) + "\n")
    status, _, err = run_cli(capsys, "classify", "--model", str(full), "--data", str(tmp_path / "bad.jsonl"))
    # once (was "the labels are a, b (the classifier's labels: a, b)")
    assert status == 2 and "line 1 has the unknown label 'neutral'" in err
    assert err.count(", ".join(names)) == 1 and f"the classifier's labels are {', '.join(names)}" in err
    status, _, err = run_cli(capsys, "classify", "--model", str(full), "--data", str(tmp_path / "test.csv"),
                             "--text", "hi")
    assert status == 2 and "without --text and --file" in err


def test_classify_lines_up_the_scores_after_chinese_labels(monkeypatch, capsys):
    # Before: labels padded by len(), so the scores after "正面" (two characters, four columns)
    # stood two columns right of those after "neutral".
    import unicodedata

    class Classifier:
        label_names = ["正面", "负面", "neutral"]

        def classify(self, texts, batch_size):   # every text read whole
            return Classified(np.eye(3)[[i % 3 for i in range(len(texts))]] * 0.9 + 0.1 / 3, [], None)

    monkeypatch.setattr(npllama.classify, "load_classifier", lambda *args, **kwargs: Classifier())
    status, out, _ = run_cli(capsys, "classify", "--model", "any", "--text", "好", "--text", "坏", "--text", "meh")
    starts = {sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line[:line.index("0.")])
              for line in out.splitlines()}
    assert status == 0 and len(starts) == 1, out


def test_classify_file_is_read_as_every_text_file_is(monkeypatch, tmp_path, capsys):
    # Before: a plain open(), so Notepad's byte-order mark stayed at the start of the first text
    # (and changed its prediction), and a GBK file's error did not say what to do.
    seen = []

    class Classifier:
        label_names = ["正面", "负面"]

        def classify(self, texts, batch_size):   # every text read whole
            seen.extend(texts)
            return Classified(np.full((len(texts), 2), 0.5), [], None)

    monkeypatch.setattr(npllama.classify, "load_classifier", lambda *args, **kwargs: Classifier())
    (tmp_path / "bom.txt").write_bytes("\ufeff好看\r\n\r\n难看\r\n".encode("utf-8"))
    assert run_cli(capsys, "classify", "--model", "any", "--file", str(tmp_path / "bom.txt"))[0] == 0
    assert seen == ["好看", "难看"]
    (tmp_path / "gbk.txt").write_bytes("好看，真的。\n".encode("gb18030"))
    status, _, err = run_cli(capsys, "classify", "--model", "any", "--file", str(tmp_path / "gbk.txt"))
    assert status == 2 and "cannot read --file" in err and "iconv -f GB18030" in err


def test_classify_file_dash_reads_standard_input(monkeypatch, tmp_path, capsys):
    # before: --file - looked for a file named "-" (and /dev/stdin was refused as no regular file),
    # though `tokenizer encode` reads standard input; read as --file is: a byte-order mark dropped,
    # other encodings named
    import io
    import sys

    seen = []

    class Classifier:
        label_names = ["pos", "neg"]

        def classify(self, texts, batch_size):
            seen.extend(texts)
            return Classified(np.full((len(texts), 2), 0.5), [], None)

    monkeypatch.setattr(npllama.classify, "load_classifier", lambda *args, **kwargs: Classifier())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeff好看\r\n\r\nbad\n".encode("utf-8"))))
    assert run_cli(capsys, "classify", "--model", "any", "--file", "-")[0] == 0
    assert seen == ["好看", "bad"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("好看，真的。\n".encode("gb18030"))))
    status, _, err = run_cli(capsys, "classify", "--model", "any", "--file", "-")
    assert status == 2 and "cannot read --file -: standard input" in err and "iconv -f GB18030" in err
    # a text stream in sys.stdin's place, as a notebook or a test puts there: before, an AttributeError
    # (no .buffer) from deep inside; tokenizer encode read it
    monkeypatch.setattr(sys, "stdin", io.StringIO("好看\nbad\n"))
    seen.clear()
    assert run_cli(capsys, "classify", "--model", "any", "--file", "-")[0] == 0
    assert seen == ["好看", "bad"]


def test_classify_refuses_a_language_model_folder(small_model_dir, capsys):
    status, _, err = run_cli(capsys, "classify", "--model", str(small_model_dir), "--text", "hi")
    assert status == 2 and "score.weight" in err and "npllama generate" in err


def test_classifier_logits_match_transformers(classifiers):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    full, _, _ = classifiers
    clf = load_classifier(full, dtype=np.float64)
    reference = transformers.LlamaForSequenceClassification.from_pretrained(str(full), dtype=torch.float64).eval()
    ids = clf.tokenizer.encode("What a lovely red ball.")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(clf.logits(["What a lovely red ball."]), expected, rtol=1e-5, atol=1e-6)
    # "</s>" in a text is the eos id, which is also the pad id: transformers' head reads the token
    # before it (the rightmost id that is not pad_token_id), and so does ours
    ids = clf.tokenizer.encode("A red ball. </s>")
    assert ids[-1] == clf.tokenizer.eos_id == reference.config.pad_token_id
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(clf.logits(["A red ball. </s>"]), expected, rtol=1e-5, atol=1e-6)


# ----- perplexity --------------------------------------------------------------------------------------
def test_perplexity_is_exp_of_the_mean_next_token_loss(small_model_dir):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir, dtype=np.float64)
    ids = tokenizer.encode(TEXT)
    logits = model.forward(np.asarray([ids[:-1]]))[0]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = -log_probs[np.arange(len(ids) - 1), ids[1:]].mean()
    result = perplexity(model, tokenizer, TEXT)
    assert result.tokens == len(ids) - 1 and result.windows == 1
    assert result.mean_loss == pytest.approx(expected, rel=1e-10)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-10)
    # windows of 8 tokens: each predicts from its own window only
    windowed = perplexity(model, tokenizer, TEXT, context=8, batch_size=2)
    losses = [model.loss(np.asarray([ids[s:s + 8]])[:, :len(ids[s + 1:s + 9])], np.asarray([ids[s + 1:s + 9]]))
              * len(ids[s + 1:s + 9]) for s in range(0, len(ids) - 1, 8)]
    assert windowed.tokens == len(ids) - 1 and windowed.windows == len(losses)
    assert windowed.mean_loss == pytest.approx(sum(losses) / (len(ids) - 1), rel=1e-10)
    assert perplexity(model, tokenizer, TEXT, context=np.int64(8), batch_size=np.int32(2)) == windowed
    # a last window holding a single target is still scored
    context = next(c for c in range(2, len(ids)) if (len(ids) - 1) % c == 1)
    last_one = perplexity(model, tokenizer, TEXT, context=context)
    assert last_one.tokens == len(ids) - 1 and last_one.windows == -(-(len(ids) - 1) // context)


def test_eval_perplexity_cli(small_model_dir, tmp_path, capsys):
    data = tmp_path / "held_out.txt"
    data.write_text(TEXT, encoding="utf-8")
    status, out, _ = run_cli(capsys, "eval", "perplexity", "--model", str(small_model_dir), "--data", str(data),
                             "--no-progress")
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    result = perplexity(model, tokenizer, TEXT)
    assert status == 0 and f"{result.tokens:,} tokens" in out and f"perplexity {result.perplexity:.3f}" in out
    assert f"mean loss {result.mean_loss:.4f} nats per token," in out and f"({result.windows} window" in out
    one = tmp_path / "one.txt"
    one.write_text("a", encoding="utf-8")     # <s> a: one token predicted, in one window
    assert tokenizer.encode("a") == tokenizer.encode("a", bos=True) and len(tokenizer.encode("a")) == 2
    status, out, _ = run_cli(capsys, "eval", "perplexity", "--model", str(small_model_dir), "--data", str(one),
                             "--no-progress")
    assert status == 0 and ": 1 token, mean loss" in out and "(1 window of up to 128 tokens)" in out
    status, _, err = run_cli(capsys, "eval", "perplexity", "--model", str(small_model_dir), "--data",
                             str(tmp_path / "nope.txt"))
    assert status == 2 and "cannot read --data" in err
    status, _, err = run_cli(capsys, "eval", "perplexity", "--model", str(small_model_dir), "--data", str(data),
                             "--context", "1000")
    assert status == 2 and "--context 1000" in err


def test_perplexity_bad_input(small_model_dir):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    with pytest.raises(ValueError, match="context must be an int in"):
        perplexity(model, tokenizer, TEXT, context=1)
    with pytest.raises(ValueError, match="at least two tokens"):
        perplexity(model, tokenizer, "")
    with pytest.raises(TypeError, match="text must be a str"):
        perplexity(model, tokenizer, [1, 2])


@pytest.mark.parametrize("which", ["folder", "adapter"])
def test_load_classifier_waits_while_a_writer_replaces_the_folder(classifiers, small_model_dir, which):
    # a writer replacing a run's folder holds the reader lock exclusively; every reader waits for it
    import threading
    import time

    from npllama.runs import replacing_in_run, writing_run

    full, lora, names = classifiers
    folder = full if which == "folder" else lora
    with writing_run(folder):  # makes it a run folder (its lock files), as a fine-tuning --out is
        pass
    loaded = []
    load = (lambda: load_classifier(full)) if which == "folder" else (
        lambda: load_classifier(small_model_dir, adapter=lora))
    with replacing_in_run(folder):
        reader = threading.Thread(target=lambda: loaded.append(load()))
        reader.start()
        time.sleep(1.0)
        assert reader.is_alive() and not loaded  # still waiting for the lock
    reader.join(timeout=60)
    assert loaded and loaded[0].label_names == names
