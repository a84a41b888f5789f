"""The lines `npllama eval` prints: the model named as --model gave it (a run folder, not the run/model
folder it resolves to, which the refusals never name either), and counts in the singular for one."""
import shutil

import numpy as np
import pytest

from npllama import Llama
from npllama.cli import main
from npllama.datasets import write_jsonl

TEXT = "\n\n".join(f"Tom has {i} red balls. He gives one to Sue, and she smiles at him." for i in range(3))


@pytest.fixture(scope="module")
def runs(small_model_dir, tmp_path_factory):
    """(folder, held-out text, choice items): the folder holds for each objective a run with its
    model/ (causal/, mlm/) and one with its checkpoint only (causal_checkpointed/, mlm_checkpointed/)."""
    import json

    folder = tmp_path_factory.mktemp("eval_lines")
    tokenizer = {"tokenizer.model": (small_model_dir / "tokenizer.model").read_bytes()}
    mlm = Llama.from_pretrained(small_model_dir)
    mlm.objective = "mlm"
    for model_in in ("model", "checkpoint/model"):
        run = "" if model_in == "model" else "_checkpointed"
        shutil.copytree(small_model_dir, folder / f"causal{run}" / model_in)
        mlm.save_pretrained(folder / f"mlm{run}" / model_in, extra_files=tokenizer)
        if run:
            for objective in ("causal", "mlm"):
                (folder / f"{objective}{run}" / "checkpoint" / "training_state.json").write_text(json.dumps({"step": 1}))
    (folder / "held_out.txt").write_text(TEXT)
    items = write_jsonl(folder / "items.jsonl", [{"question": "Who ran?", "choices": ["Tom", "Sue"], "answer": 0}])
    return folder, folder / "held_out.txt", items


COMMANDS = {
    "perplexity": ("causal", ["eval", "perplexity", "--data", "HELD_OUT", "--context", "16"]),
    "mlm": ("mlm", ["eval", "mlm", "--data", "HELD_OUT", "--context", "16"]),
    "choice": ("causal", ["eval", "choice", "--data", "ITEMS"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("as_given, shown", [
    ("RUN", "RUN (its model/)"), ("RUN/model", "RUN/model"),
    ("RUN_checkpointed", "RUN_checkpointed (its checkpoint/model/)"),
    ("RUN_checkpointed/checkpoint", "RUN_checkpointed/checkpoint (its model/)")])
def test_the_result_line_names_the_model_as_given(runs, capsys, command, as_given, shown):
    """`--model RUN` printed 'RUN/model on ...', a folder the user never named."""
    folder, held_out, items = runs
    objective, argv = COMMANDS[command]
    run = folder / objective
    model = as_given.replace("RUN", str(run))
    argv = [{"HELD_OUT": str(held_out), "ITEMS": str(items)}.get(arg, arg) for arg in argv]
    assert main([*argv, "--model", model, "--no-progress", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{shown.replace('RUN', str(run))} on "), out


def record(text: str) -> str:
    import json

    return json.dumps({"text": text}) + "\n"


# (the files of --data: a file's name, or "folder/NAME"; its doc_separator; taken from the run?; the words)
HELD_OUT = [
    ({"a.txt": "One."}, "blank-line", False, "1 document cut at blank lines; "),
    ({"a.txt": "One.\n\nTwo."}, "blank-line", True, "2 documents cut at blank lines, as the run was trained; "),
    ({"a.txt": "One.\nTwo."}, "whole-file", False, "1 document (the file whole); "),
    ({"a.jsonl": record("One.")}, None, False, "1 document, a JSON line; "),
    ({"a.jsonl": record("One.") + record("Two.")}, None, False, "2 documents, a JSON line each; "),
    ({"folder/a.jsonl": record("One.")}, None, False, "1 document from 1 file; "),
    ({"folder/a.jsonl": record("One."), "folder/b.jsonl": record("Two.")}, None, False,
     "2 documents from 2 files; "),
    ({"folder/a.txt": "One.\nTwo."}, None, False, "1 document from 1 file, the .txt file one document; "),
    ({"folder/a.txt": "One.\nTwo."}, "whole-file", True,
     "1 document from 1 file, the .txt file one document, as the run was trained; "),
    ({"folder/a.txt": "One.", "folder/b.txt": "Two."}, None, False,
     "2 documents from 2 files, each .txt file one document; "),
    ({"folder/a.txt": "One."}, "line", False, "1 document from 1 file, the .txt file cut at every line; "),
    ({"folder/a.txt": "One.\nTwo.", "folder/b.jsonl": record("Three.")}, "line", True,
     "3 documents from 2 files, the .txt file cut at every line, as the run was trained; "),
    ({"folder/a.txt": "One.\nTwo.", "folder/b.txt": "Three."}, "line", False,
     "3 documents from 2 files, the .txt files cut at every line; "),
]


@pytest.mark.parametrize("files, doc_separator, as_trained, words", HELD_OUT)
def test_how_the_held_out_text_was_read_is_said_in_the_singular_for_one(tmp_path, files, doc_separator, as_trained,
                                                                      words):
    """'1 document, a JSON line each' and the like: every branch, with one and with more."""
    from npllama.commands.eval import _documents_cut
    from npllama.data import split_documents
    from npllama.perplexity import read_held_out

    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(content)
    path = tmp_path / ("folder" if "/" in next(iter(files)) else next(iter(files)))
    if path.suffix == ".txt":   # a .txt file's text, which perplexity cuts at doc_separator
        held_out = read_held_out(path)
        documents, separator = len(split_documents(held_out, doc_separator)), doc_separator
    else:
        held_out, separator = read_held_out(path, doc_separator), None
        documents = len(held_out)
    assert _documents_cut(documents, held_out, separator, as_trained) == words


@pytest.mark.parametrize("long, short, said", [
    (1, 0, "the item did not fit the model's context ({context} tokens) with a choice: the beginning of its "),
    (1, 1, "1 of the 2 items did not fit the model's context ({context} tokens) with a choice: the beginning of its "),
    (2, 1, "2 of the 3 items did not fit the model's context ({context} tokens) with a choice: the beginning of their "),
])
def test_choice_items_cut_to_fit_are_counted_in_the_singular_for_one(runs, small_model_dir, capsys, long, short, said):
    """'1 of the 1 items did not fit ...: the beginning of their passage' for one item."""
    folder, _, _ = runs
    context = Llama.from_pretrained(small_model_dir).config.max_position_embeddings
    item = {"question": "Who ran?", "choices": ["the dog", "the cat"], "answer": 0}
    items = write_jsonl(folder / f"long_{long}_{short}.jsonl",
                        [{**item, "context": "The dog ran. " * context}] * long + [item] * short)
    assert main(["eval", "choice", "--model", str(small_model_dir), "--data", str(items), "--no-progress",
                 "--backend", "numpy"]) == 0
    err = capsys.readouterr().err
    assert said.format(context=context) in err, err
