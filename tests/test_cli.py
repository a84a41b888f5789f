"""The `npllama` command: train -> generate works, --help explains, user mistakes are one line and exit 2."""
import json
import os
import subprocess
import sys

import pytest

from npllama.cli import main

FAST = ["--preset", "stories260k", "--vocab-size", "360", "--batch-size", "4", "--seq-len", "32",
        "--eval-every", "0", "--checkpoint-every", "0", "--samples", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    corpus = base / "stories.txt"
    from npllama.corpus import write_default_corpus

    write_default_corpus(corpus, n_stories=300)
    mp = pytest.MonkeyPatch()
    mp.setenv("NPLLAMA_RUNS", str(base / "runs"))
    assert main(["train", "--data", str(corpus), "--out", str(base / "runs" / "r1"), "--steps", "3", *FAST]) == 0
    yield base / "runs" / "r1", mp
    mp.undo()


def test_train_then_generate_from_the_latest_run(run_dir, capsys):
    run, _ = run_dir
    assert (run / "model" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["generate", "--prompt", "Once upon a time", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("Once upon a time") and len(greedy.strip()) > len("Once upon a time")
    assert main(["generate", "--model", str(run), "--prompt", "Once upon a time", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy  # greedy is deterministic; --model finds the same run


def test_tokenizer_encode_decode_round_trip(run_dir, capsys):
    run, _ = run_dir
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--model", str(run / "tokenizer.model"), "Tom has 12 red balls."]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids[0] == 1
    assert main(["tokenizer", "decode", "--model", str(run / "tokenizer.model"), json.dumps(ids)]) == 0
    assert capsys.readouterr().out.strip() == "Tom has 12 red balls."


@pytest.mark.parametrize("argv, match", [
    (["train", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--data", "/no/such/file.txt"], "does not exist"),
    (["generate", "--model", "/no/such/run"], "does not exist"),
    (["tokenizer", "encode", "--model", "/no/such.model", "hi"], "does not exist"),
    (["tokenizer", "decode", "--model", "/no/such.model", "1", "x"], "does not exist"),
])
def test_user_mistakes_are_one_line_and_exit_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"npllama {argv[0]}: error:") and match in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_generate_without_any_run_says_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    assert main(["generate"]) == 2
    assert "run `npllama train` first" in capsys.readouterr().err


def test_generate_refuses_too_many_new_tokens(run_dir, capsys):
    run, _ = run_dir
    assert main(["generate", "--model", str(run), "--max-new-tokens", "100000"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err


def test_help_works_without_importing_the_heavy_parts():
    out = subprocess.run([sys.executable, "-c", "import sys, npllama.cli; npllama.cli.build_parser(); "
                          "print('numba' in sys.modules)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    help_text = subprocess.run([sys.executable, "-m", "npllama", "train", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--resume" in help_text and "built-in" in help_text


def test_npllama_train_into_a_log_file_writes_a_few_progress_lines_not_one_per_step(run_dir, tmp_path):
    # the bar's postfix (loss, lr, tok/s) changes every step; it must not force a redraw each time
    run, _ = run_dir
    corpus = run.parent.parent / "stories.txt"
    fast = [a for a in FAST if a != "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    done = subprocess.run([sys.executable, "-m", "npllama", "train", "--data", str(corpus), "--out",
                           str(tmp_path / "r"), "--steps", "40", *fast], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    redraws = done.stderr.count("train:")   # each draw of the bar, whether ended by \r or \n
    assert 1 <= redraws <= 5, done.stderr[-2000:]


def test_ctrl_c_while_the_commands_load_is_one_line_not_a_traceback(monkeypatch, capsys):
    # the parser imports every command module (a few tenths of a second): a Ctrl-C then printed
    # Python's traceback of the import under way
    import npllama.cli

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(npllama.cli, "build_parser", ctrl_c)
    assert main(["train", "--steps", "1"]) == 130
    assert capsys.readouterr().err == "npllama: interrupted before the command started; nothing was done\n"
