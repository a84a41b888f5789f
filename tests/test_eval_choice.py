"""`npllama eval choice --json`: the result as one JSON object on stdout, as eval perplexity, mlm and
sop give theirs; notes (items cut to fit) stay on stderr."""
import json

import numpy as np
import pytest

from npllama import Llama
from npllama.cli import main
from npllama.datasets import make_choice_items, write_jsonl
from npllama.finetune import evaluate_choice
from npllama.tokenizer import Tokenizer


def eval_choice(capsys, *argv):
    status = main(["eval", "choice", *argv, "--no-progress", "--backend", "numpy"])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def test_json_is_the_line_as_one_object_and_the_note_stays_on_stderr(small_model_dir, tmp_path, capsys):
    model = Llama.from_pretrained(small_model_dir)
    tokenizer = Tokenizer.load(small_model_dir / "tokenizer.model")
    context = model.config.max_position_embeddings
    item = {"question": "Who ran?", "choices": ["the dog", "the cat", "a bird"], "answer": 1}
    records = [{**item, "context": "The dog ran. " * context}, item, {**item, "answer": 0}]
    items = write_jsonl(tmp_path / "items.jsonl", records)
    expected = evaluate_choice(model, tokenizer, records, progress=False)
    out, err = eval_choice(capsys, "--model", str(small_model_dir), "--data", str(items), "--json")
    record = json.loads(out)   # the whole of stdout: one object
    assert record == {"model": str(small_model_dir), "adapter": None, "data": str(items), "items": 3,
                      "accuracy": expected["accuracy"], "accuracy_per_token": expected["accuracy_per_token"],
                      "chance": pytest.approx(1 / 3), "cut": 1, "template": "plain", "limit": 200, "seed": None}
    line, err_of_the_line = eval_choice(capsys, "--model", str(small_model_dir), "--data", str(items))
    assert err == err_of_the_line and "1 of the 3 items did not fit" in err, err   # the note, as without --json
    assert f"accuracy {record['accuracy']:.3f}, per-token accuracy {record['accuracy_per_token']:.3f}" in line


def test_json_of_the_built_in_items_names_their_seed(small_model_dir, capsys):
    model = Llama.from_pretrained(small_model_dir)
    tokenizer = Tokenizer.load(small_model_dir / "tokenizer.model")
    for seed_flag, seed in (([], 0), (["--seed", "3"], 3)):
        record = json.loads(eval_choice(capsys, "--model", str(small_model_dir), "--limit", "2", *seed_flag,
                                        "--json")[0])
        expected = evaluate_choice(model, tokenizer, make_choice_items(2, seed=seed)[:2], progress=False)
        assert (record["data"], record["seed"], record["items"], record["limit"]) == (None, seed, 2, 2), record
        assert record["accuracy"] == expected["accuracy"] and np.isfinite(record["chance"])
        assert "units" not in record   # no loss reported: accuracies are shares, with no unit
