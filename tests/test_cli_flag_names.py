"""From the command line an error names the flag as the user typed it (--batch-size, not
batch_size), and finetune's own settings are checked before the base model is loaded."""
import re

import pytest

from npllama.cli import build_parser, main, _as_the_user_typed_it, _innermost_parser
from npllama.io.errors import CheckpointError

INTERNAL = re.compile(r"\b(val_fraction|val_data|batch_size|eval_batches|doc_separator|max_len|target_modules|"
                      r"grad_clip|warmup_steps|lora_r|lora_targets|r \(the LoRA rank\))\b")


@pytest.fixture(autouse=True)
def no_latest_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))   # no model: a check must come before loading
    monkeypatch.delenv("NPLLAMA_TRACEBACK", raising=False)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--val-fraction", "2"], "--val-fraction"),
    (["train", "--val-fraction", "0.1", "--val-data", "x.txt"], "--val-data"),
    (["train", "--eval-batches", "-1"], "--eval-batches"),
    (["train", "--doc-separator", "paragraphs"], "--doc-separator"),
    (["train", "--grad-clip", "0"], "--grad-clip"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--steps", "0"], "--steps"),
    (["finetune", "classify", "--steps", "0"], "--steps"),
    (["finetune", "classify", "--batch-size", "0"], "--batch-size"),
    (["finetune", "classify", "--lr", "-1"], "--lr"),
    (["finetune", "sft", "--lr", "-1"], "--lr"),
    (["finetune", "classify", "--max-len", "1"], "--max-len"),
    (["finetune", "classify", "--val-fraction", "1.5"], "--val-fraction"),
    (["finetune", "classify", "--lora", "--lora-r", "0"], "--lora-r"),
    (["finetune", "classify", "--lora", "--lora-targets", "q_proj,attn"], "--lora-targets"),
    (["finetune", "sft", "--lora", "--lora-dropout", "1"], "--lora-dropout"),
])
def test_the_error_names_the_flag_before_anything_loads(argv, flag, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and not INTERNAL.search(err), err
    assert "no trained model" not in err   # checked before looking for the model


def test_library_names_become_flags_only_where_they_are_the_setting():
    train = _innermost_parser(build_parser(), ["train"])
    finetune = _innermost_parser(build_parser(), ["finetune", "classify"])
    assert _as_the_user_typed_it(ValueError("warmup_steps (5) must not exceed steps (3)"), train) == \
        "--warmup-steps (5) must not exceed --steps (3)"
    assert _as_the_user_typed_it(ValueError("r (the LoRA rank) must be a positive int, got 0"), finetune) == \
        "--lora-r (the LoRA rank) must be a positive int, got 0"
    assert _as_the_user_typed_it(ValueError("cannot resume 'run' with different settings: seed (1 -> 4), "
                                            "max_len (8 -> 16)"), finetune) == \
        "cannot resume 'run' with different settings: --seed (1 -> 4), --max-len (8 -> 16)"
    # prose, paths, flags the message names already, and a file's own fields stay as they are
    for message in ("a tenth of the steps", "--data 'my_data/batch_size' does not exist",
                    "the model's shape: num_attention_heads (--heads) (3) must divide"):
        assert _as_the_user_typed_it(ValueError(message), train) == message
    # generate's flags --prompt, --adapter and --model are also words of its prose
    generate = _innermost_parser(build_parser(), ["generate"])
    for message in ("the prompt (30 tokens) plus --max-new-tokens (120) is longer than the context",
                    "adapter 'a' is a sequence-classification adapter (task_type SEQ_CLS): use classify",
                    "--model 'm' is a classification model (LlamaForSequenceClassification), not a language model"):
        assert _as_the_user_typed_it(ValueError(message), generate) == message
    assert _as_the_user_typed_it(ValueError("num_hidden_layers must be a positive integer"), train) == \
        "--layers must be a positive integer"
    damaged = CheckpointError("run/train_config.json", "batch_size must be a positive int")
    assert _as_the_user_typed_it(damaged, train) == str(damaged)
