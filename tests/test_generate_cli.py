"""`npllama generate` and `npllama eval` as a user meets them: what is printed, and what is refused
before anything is printed (tests/test_cli.py trains a run; these use the small shared model folder)."""
import pytest

from npllama.cli import main


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, command: str = "generate") -> str:
    err = err.strip()
    assert err.startswith(f"npllama {command}: error:") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def scripted_generation(monkeypatch):
    """Make `generate` emit chosen ids (one by one, through on_token), so the printing is tested
    with characters an untrained model would never choose."""
    import npllama.generate

    script = []

    def fake_generate(model, prompt, max_new_tokens, *, on_token=None, stop=None, **_):
        ids = list(prompt)
        for i in script[:max_new_tokens]:
            ids.append(i)
            on_token(i)
            if stop is not None and stop(ids[len(prompt):]):
                break
        return ids

    monkeypatch.setattr(npllama.generate, "generate", fake_generate)
    return script


def test_generate_prints_characters_made_of_byte_pieces(small_model_dir, scripted_generation, capsys):
    from npllama.runs import load_tokenizer

    tok = load_tokenizer(small_model_dir)
    prompt = tok.encode("Hi", bos=True)
    scripted_generation.extend(tok.encode("Hi 😀 café 猫 ok", bos=True)[len(prompt):])
    code, out, _ = run_cli(["generate", "--model", str(small_model_dir), "--prompt", "Hi"], capsys)
    assert code == 0 and out == "Hi 😀 café 猫 ok\n"
    # a stop string made of byte pieces matches too
    code, out, _ = run_cli(["generate", "--model", str(small_model_dir), "--prompt", "Hi", "--stop", "猫"], capsys)
    assert code == 0 and out == "Hi 😀 café \n"


@pytest.mark.parametrize("env, argv, match", [
    ({}, ["--threads", "100000"], "--threads must be at most 256 (NPLLAMA_MAX_THREADS), got 100,000"),
    ({"NPLLAMA_MAX_THREADS": "2"}, ["--threads", "3"], "--threads must be at most 2 (NPLLAMA_MAX_THREADS), got 3"),
    ({"NPLLAMA_DECODE_THREADS": "100000"}, [],
     "NPLLAMA_DECODE_THREADS must be at most 256 (NPLLAMA_MAX_THREADS), got 100,000"),
])
def test_generate_refuses_too_many_threads_before_printing(small_model_dir, scripted_generation, capsys,
                                                          monkeypatch, env, argv, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(["generate", "--model", str(small_model_dir), "--backend", "numba", *argv], capsys)
    assert code == 2 and out == "" and match in one_line_error(err)


@pytest.fixture(scope="module")
def classification_adapter(small_model_dir, tmp_path_factory):
    """A SEQ_CLS LoRA adapter of the small model, as `finetune classify --lora --out` saves one."""
    import numpy as np

    from npllama import Llama
    from npllama.lora import attach_lora

    model = Llama.from_pretrained(small_model_dir)
    adapters = attach_lora(model, r=2)
    adapters.extra["score.weight"] = np.zeros((2, model.config.hidden_size), dtype=np.float32)
    return adapters.save_adapter(tmp_path_factory.mktemp("adapters") / "sent-lora", task_type="SEQ_CLS")


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "{model}", "--max-new-tokens", "3"],
    ["eval", "perplexity", "--model", "{model}", "--data", "{text}"],
    ["eval", "choice", "--model", "{model}", "--limit", "2"],
])
def test_a_classification_adapter_is_refused_for_causal_use(small_model_dir, classification_adapter, tmp_path,
                                                            capsys, argv):
    (tmp_path / "text.txt").write_text("Once upon a time there was a cat.\n")
    argv = [a.format(model=small_model_dir, text=tmp_path / "text.txt") for a in argv]
    code, out, err = run_cli([*argv, "--adapter", str(classification_adapter)], capsys)
    err = one_line_error(err, argv[0])
    assert code == 2 and out == ""
    assert "is a sequence-classification adapter (task_type SEQ_CLS, modules_to_save ['score'])" in err
    assert f"npllama classify --model BASE --adapter {classification_adapter}" in err
    assert "npllama.load_classifier(base, adapter=...)" in err     # Python code, not turned into a flag


@pytest.mark.parametrize("words, flags, match", [
    (400, [], r"the prompt alone \((\d+) tokens\) exceeds the model's context \(max_position_embeddings = 128\): "
              r"shorten it$"),
    (30, ["--max-new-tokens", "120"], r"the prompt \((\d+) tokens\) plus --max-new-tokens \(120\) is longer than "
                                      r"the model's context \(max_position_embeddings = 128\): use --max-new-tokens "
                                      r"(\d+) or less, or a shorter prompt$"),
])
def test_generate_refuses_a_prompt_too_long_before_printing_it(small_model_dir, scripted_generation, capsys,
                                                              words, flags, match):
    import re

    from npllama.runs import load_tokenizer

    prompt = " ".join(["story"] * words)
    tokens = len(load_tokenizer(small_model_dir).encode(prompt, bos=True))
    code, out, err = run_cli(["generate", "--model", str(small_model_dir), "--prompt", prompt, *flags], capsys)
    assert code == 2 and out == ""
    found = re.search(match, one_line_error(err))
    assert found and int(found.group(1)) == tokens
    if found.lastindex == 2:
        assert int(found.group(2)) == 128 - tokens


@pytest.fixture(scope="module")
def classifier_dir(small_model_dir, tmp_path_factory):
    """The small model as a LlamaForSequenceClassification folder: score.weight, no lm_head."""
    import json
    import shutil

    import numpy as np

    from npllama.io.safetensors import read_safetensors, write_safetensors

    folder = tmp_path_factory.mktemp("classifier") / "sent"
    shutil.copytree(small_model_dir, folder)
    tensors = read_safetensors(folder / "model.safetensors")
    tensors["score.weight"] = np.zeros((2, tensors.pop("lm_head.weight").shape[1]), dtype=np.float32)
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "neg", "1": "pos"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_classifier_folder_given_to_generate_says_to_use_classify(classifier_dir, capsys):
    from npllama import Llama
    from npllama.classify import load_classifier

    code, out, err = run_cli(["generate", "--model", str(classifier_dir)], capsys)
    err = one_line_error(err)
    assert code == 2 and out == ""
    assert "is a classification model" in err and f"npllama classify --model {classifier_dir}" in err
    with pytest.raises(ValueError, match="sequence-classification model .* npllama.load_classifier"):
        Llama.from_pretrained(classifier_dir)
    assert list(load_classifier(classifier_dir).label_names) == ["neg", "pos"]    # what it is for still works


@pytest.mark.parametrize("settings_file, command", [("train_config.json", "train"),
                                                     ("sft_config.json", "finetune sft")])
def test_a_run_that_saved_no_model_yet_says_how_to_start_it_again(tmp_path, capsys, settings_file, command):
    """A run stopped before its first checkpoint (a start refused for its --vocab-size, Ctrl-C
    while the tokenizer trained) leaves only its settings.  generate --model told the user to
    "pass it as --model", which they had just done; it now says what the folder lacks and how to
    start the run again, without repeating what a model folder holds."""
    run = tmp_path / "run"
    run.mkdir()
    (run / settings_file).write_text("{}")
    code, out, err = run_cli(["generate", "--model", str(run)], capsys)
    err = one_line_error(err)
    assert code == 2 and out == ""
    assert "saved no model yet" in err and f"`npllama {command} --out {run} --resume`" in err, err
    assert "pass it as --model" not in err and err.count("expected") <= 1, err


def test_a_fine_tuning_run_with_only_a_checkpoint_says_to_finish_it(tmp_path, capsys):
    """A fine-tuning checkpoint holds the trained tensors, not a model folder: such a run was said
    to have "stopped before its first checkpoint", and told to start again."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "sft_config.json").write_text("{}")
    (run / "checkpoint" / "params.safetensors").write_bytes(b"")
    code, _, err = run_cli(["generate", "--model", str(run)], capsys)
    err = one_line_error(err)
    assert code == 2 and "has not finished" in err and f"`npllama finetune sft --out {run} --resume`" in err, err
    assert "before its first checkpoint" not in err and "start it again" not in err, err


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0 (0 = no cut), got -1"),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
    # not numbers: argparse said only "invalid float value", not what the flag takes
    (["--temperature", "hot"], "--temperature must be a finite number >= 0 (0 = greedy), got 'hot'"),
    (["--top-p", "x"], "--top-p must be in (0, 1], got 'x'"),
    (["--top-k", "2.5"], "--top-k must be an integer >= 0 (0 = no cut), got '2.5'"),
    (["--repetition-penalty", "strong"], "--repetition-penalty must be a finite number > 0 (1 = none, 1.1-1.3 "
                                         "typical), got 'strong'"),
    (["--seed", "lucky"], "--seed must be a non-negative integer, got 'lucky'"),
    (["--max-new-tokens", "many"], "--max-new-tokens must be a positive integer, got 'many'"),
])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_generate_names_the_flag_and_what_it_takes(flags, message, command, capsys, tmp_path):
    code, out, err = run_cli([command, "--model", str(tmp_path / "never-read"), *flags], capsys)
    assert code == 2 and out == "" and one_line_error(err, command).endswith(message)


@pytest.mark.parametrize("content, what", [("", "empty"), ("  \n\n", "only whitespace")])
def test_eval_perplexity_of_an_empty_file_names_the_file(tmp_path, capsys, content, what):
    data = tmp_path / "empty.txt"
    data.write_text(content)
    code, out, err = run_cli(["eval", "perplexity", "--model", str(tmp_path / "never-read"), "--data", str(data)],
                             capsys)
    assert code == 2 and out == ""
    assert f"--data {data} holds no text ({what}): there is nothing to predict" in one_line_error(err, "eval")


@pytest.fixture
def masked_lm_dir(small_model_dir, tmp_path):
    """The small model marked as `train --objective mlm` marks it (config.json's npllama_objective)."""
    import json
    import shutil

    folder = tmp_path / "mlm"
    shutil.copytree(small_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "npllama_objective": "mlm"}))
    return folder


@pytest.mark.parametrize("argv, flag", [
    (["generate", "--model", "{model}"], "--model"),
    (["eval", "perplexity", "--model", "{model}", "--data", "{text}"], "--model"),
    (["eval", "choice", "--model", "{model}", "--limit", "2"], "--model"),
])
def test_a_masked_lm_model_is_refused_where_tokens_are_predicted(masked_lm_dir, tmp_path, capsys, argv, flag):
    (tmp_path / "text.txt").write_text("Once upon a time there was a cat.\n")
    argv = [a.format(model=masked_lm_dir, text=tmp_path / "text.txt") for a in argv]
    code, out, err = run_cli(argv, capsys)
    err = one_line_error(err, argv[0])
    assert code == 2 and out == "" and f"{flag} '{masked_lm_dir}' is a masked-LM model" in err


def test_perplexity_reads_a_file_with_a_byte_order_mark_as_its_text(small_model_dir, tmp_path, capsys):
    text = "Once upon a time there was a cat. It sat on a mat.\n"
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    (tmp_path / "bom.txt").write_text(text, encoding="utf-8-sig")   # as Notepad saves it
    outs = []
    for name in ("plain.txt", "bom.txt"):
        code, out, err = run_cli(["eval", "perplexity", "--model", str(small_model_dir), "--data",
                                  str(tmp_path / name), "--backend", "numpy"], capsys)
        assert code == 0, err
        outs.append(out.replace(name, "FILE"))
    assert outs[0] == outs[1]


def test_num_samples_with_a_seed_are_reproducible_and_neighbouring_seeds_share_none(small_model_dir, capsys):
    """--seed S --num-samples N: the same N samples each run, N different ones, the first is
    generate(seed=S)'s -- and --seed S+1 repeats none of them (seed + i made sample 2 of --seed 1
    the first of --seed 2)."""
    from npllama.generate import generate_text
    from npllama.commands import load_run_model

    def samples(seed):
        code, out, _ = run_cli(["generate", "--model", str(small_model_dir), "--prompt", "Hi", "--max-new-tokens",
                                "6", "--temperature", "1.5", "--seed", str(seed), "--num-samples", "3"], capsys)
        assert code == 0
        return out[:-1].split("\n" + "-" * 40 + "\n")   # each sample ends in a newline

    first = samples(1)
    assert len(set(first)) == 3 and samples(1) == first
    assert not set(first) & set(samples(2))
    model, tokenizer, _ = load_run_model(str(small_model_dir), None, "float32")
    assert first[0] == "Hi" + generate_text(model, tokenizer, "Hi", 6, temperature=1.5, seed=1)


@pytest.mark.parametrize("flags", [["--prompt", "Once", "--prompt", "Lily"], ["--prompt", "a", "--prompt", "a"]])
def test_a_second_prompt_is_refused_rather_than_silently_replacing_the_first(flags, capsys, tmp_path):
    """One prompt a run: argparse would keep the last --prompt and continue it alone."""
    code, out, err = run_cli(["generate", "--model", str(tmp_path / "never-read"), *flags], capsys)
    err = one_line_error(err)
    assert code == 2 and out == ""
    assert "--prompt given 2 times" in err and "one prompt a run" in err, err


def test_ctrl_c_mid_text_ends_its_line_before_saying_so(small_model_dir, monkeypatch, capsys):
    """The text printed so far ends with a newline, so a terminal shows "npllama generate:
    interrupted" on a line of its own, not glued to the half-written text."""
    import npllama.generate
    from npllama.runs import load_tokenizer

    said = load_tokenizer(small_model_dir).encode("upon a time", bos=False)

    def ctrl_c_after_the_text(model, prompt, max_new_tokens, *, on_token, **_):
        for i in said:
            on_token(i)
        raise KeyboardInterrupt

    monkeypatch.setattr(npllama.generate, "generate", ctrl_c_after_the_text)
    code, out, err = run_cli(["generate", "--model", str(small_model_dir), "--prompt", "Once", "--backend", "numpy"],
                             capsys)
    assert code == 130 and out == "Once upon a time\n" and err == "npllama generate: interrupted\n", (out, err)


@pytest.mark.parametrize("command", [["generate", "--max-new-tokens", "2"], ["chat"]])
@pytest.mark.parametrize("given", ["RUN", "latest"])
def test_a_run_without_model_yet_names_the_checkpoint_it_loads(small_model_dir, tmp_path, capsys, monkeypatch,
                                                               command, given):
    """`generate --model runs/x` for a run stopped (or still going) before it saved model/ loaded its
    checkpoint's model without a word: the text of step 248 of 1000 read as the finished model's.
    It now says on stderr that the run has no model/ yet, which checkpoint (its step) was loaded, and
    how to continue a stopped run; a model/ or a checkpoint named as --model loads without the note."""
    import io
    import json
    import shutil

    from npllama import runs

    run = tmp_path / "run"
    shutil.copytree(small_model_dir, run / "checkpoint" / "model")
    (run / "checkpoint" / "training_state.json").write_text(json.dumps({"step": 248}))
    (run / "train_config.json").write_text("{}")
    monkeypatch.setattr(runs, "latest_run", lambda: run)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))       # chat: no line, it ends at once
    argv = [*command, "--backend", "numpy", "--seed", "0"] + (["--model", str(run)] if given == "RUN" else [])
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    note = next((line for line in err.splitlines() if "checkpoint" in line), "")
    assert f"{run} has no model/ yet" in note and "its checkpoint/model/, saved at step 248" in note, err
    assert f"`npllama train --out {run} --resume`" in note, err

    for named in (run / "checkpoint", run / "checkpoint" / "model"):
        code, _, err = run_cli([*command, "--backend", "numpy", "--model", str(named)], capsys)
        assert code == 0 and "no model/ yet" not in err, err
    shutil.copytree(small_model_dir, run / "model")
    code, _, err = run_cli([*command, "--backend", "numpy", "--model", str(run)], capsys)
    assert code == 0 and "checkpoint" not in err, err
