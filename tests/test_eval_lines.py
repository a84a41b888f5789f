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
