"""--doc-separator marker:TEXT on a file that never holds TEXT: one line says so (the whole file
would otherwise be trained as one document without a word)."""
import warnings

import pytest

from npllama.data import load_texts


def test_a_marker_that_never_occurs_is_a_warning_naming_it_and_the_file(tmp_path):
    (tmp_path / "plays.txt").write_text("Act one.\n\nAct two.\n")
    with pytest.warns(UserWarning, match=r"'marker:<\|endoftext\|>' \(--doc-separator\) never occurs in .*plays.txt"):
        assert load_texts(tmp_path / "plays.txt", "marker:<|endoftext|>") == ["Act one.\n\nAct two."]
    (tmp_path / "ok.txt").write_text("Act one.<|endoftext|>Act two.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_texts(tmp_path / "ok.txt", "marker:<|endoftext|>") == ["Act one.", "Act two."]


def test_the_command_line_shows_it_in_one_line(tmp_path):
    # a real process: pytest records warnings itself, so only there is the line printed as users see it
    import os
    import subprocess
    import sys
    from pathlib import Path

    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "stories.txt", n_stories=300)
    argv = ["train", "--data", str(corpus), "--doc-separator", "marker:<|endoftext|>", "--out", str(tmp_path / "run"),
            "--preset", "stories260k", "--vocab-size", "360", "--batch-size", "2", "--seq-len", "32", "--steps", "1",
            "--eval-every", "0", "--eval-batches", "1", "--samples", "0", "--no-progress"]
    env = {**os.environ, "NPLLAMA_RUNS": str(tmp_path / "runs"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "npllama", *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "never occurs" in line]
    assert len(lines) == 1 and lines[0].startswith("npllama train: warning: the document separator"), out.stderr
    assert "warnings.warn" not in out.stderr
    # --val-data too, said once: it is read early (to refuse an empty file) and that reading is used
    held_out = write_default_corpus(tmp_path / "held_out.txt", n_stories=40)
    out = subprocess.run([sys.executable, "-m", "npllama", *argv, "--val-data", str(held_out), "--out",
                          str(tmp_path / "run2")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    about_held_out = [line for line in out.stderr.splitlines() if "never occurs" in line and "held_out" in line]
    assert len(about_held_out) == 1, out.stderr
