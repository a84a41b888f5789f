"""A conversation whose prompt leaves no response token to learn from is skipped with a note that
names its line, how many were skipped and the limit that cut them: --max-len, or the model's
context when --max-len already reaches past it (raising --max-len then changes nothing).  Only a
file whose every example is so is refused (one such line refused the whole run, while classify
cuts an over-long text with a note)."""
import json

import pytest

from npllama.cli import main
from npllama.finetune import SFTConfig, sft


def sft_file(tmp_path, words: int, long_lines=(7,), short=6):
    path = tmp_path / "chats.jsonl"
    rows = [{"prompt": f"Say {i}.", "response": "OK."} for i in range(short)]
    for line in sorted(long_lines):
        rows.insert(line - 1, {"prompt": " ".join(["story"] * words), "response": "OK."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(small_model_dir, data, max_len):
    from npllama import use_backend

    said = []
    with use_backend("numpy"):
        result = sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, batch_size=2, max_len=max_len,
                               samples=0, progress=False), echo=said.append)
    return result, said


def skip_note(said):
    notes = [line for line in said if "skipped" in line]
    assert len(notes) == 1, said
    return notes[0]


def test_a_prompt_longer_than_max_len_is_skipped_naming_its_line(small_model_dir, tmp_path):
    result, said = run(small_model_dir, sft_file(tmp_path, 60, long_lines=(3, 8)), max_len=32)
    note = skip_note(said)
    assert note.startswith("2 of 8 examples are skipped, their prompt fills") and "lines 3, 8" in note, note
    assert "fills all 32 tokens (--max-len)" in note and "raise --max-len or shorten the prompt" in note, note
    opening = next(line for line in said if line.startswith("instruction-tuning"))
    assert "5 train / 1 validation examples" in opening, opening   # the 6 kept, split
    assert said.index(opening) < said.index(note)
    assert len(result.losses) == 1


@pytest.mark.parametrize("max_len", [1000, 129])
def test_a_prompt_longer_than_the_context_does_not_ask_for_a_larger_max_len(small_model_dir, tmp_path, max_len):
    # the model's context is 128 positions, so --max-len 1000 (or 129) keeps 129 tokens: raising it changes nothing
    _, said = run(small_model_dir, sft_file(tmp_path, 400), max_len=max_len)
    note = skip_note(said)
    assert "1 of 7 examples is skipped, its prompt fills" in note and "line 7" in note and "fills all 129 tokens" in note, note
    assert "--max-len" not in note, note
    assert "max_position_embeddings" in note and "shorten the prompt" in note, note


def test_a_file_whose_every_prompt_is_too_long_is_refused(small_model_dir, tmp_path, capsys):
    data = sft_file(tmp_path, 60, long_lines=(1, 2, 3), short=0)
    with pytest.raises(ValueError, match=r"every example of .*chats.jsonl \(3\).*fills all 32 tokens.*lines 1, 2, 3.*"
                                         r"raise --max-len"):
        run(small_model_dir, data, max_len=32)
    assert main(["finetune", "sft", "--base", str(small_model_dir), "--data", str(data), "--max-len", "32",
                 "--steps", "1", "--no-progress", "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "every example" in err and "Traceback" not in err, err


def test_the_help_says_a_prompt_that_fills_max_len_is_skipped(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "sft", "--help"])
    assert "skipped" in " ".join(capsys.readouterr().out.split())


def test_the_answers_printed_are_to_the_validation_prompts_once_examples_are_skipped(small_model_dir, tmp_path):
    # the kept examples are split; the prompts answered at the end must be those of the validation
    # examples among them, not of the examples at those positions before the skipped ones were left out
    from npllama import datasets, use_backend

    data = sft_file(tmp_path, 60, long_lines=(1, 2), short=20)
    with use_backend("numpy"):
        said = []
        sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, batch_size=2, max_len=32, samples=2,
                      val_fraction=0.2, progress=False), echo=said.append)
    _, val_rows = datasets.split_train_val(20, 0.2, 0, val_file=False)
    asked = [line.split("\n")[1] for line in said if line.startswith("\nuser: ")]
    assert asked == [f"user: Say {i}." for i in val_rows[:2]], (asked, val_rows)
