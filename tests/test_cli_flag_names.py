"""From the command line an error names the flag as the user typed it (--batch-size, not
batch_size): where a library name becomes a flag, and where a word of prose stays a word."""
import pytest

from npllama.cli import build_parser, _as_the_user_typed_it, _innermost_parser
from npllama.io.errors import CheckpointError

# Each refused setting, named as its flag before any model is loaded: the command-line rows of
# tests/test_bad_input.py.  Here: the translation itself.


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
                    "--model 'm' is a classification model (LlamaForSequenceClassification), not a language model",
                    "use it with `npllama classify` (Python: npllama.load_classifier(base, adapter=...))"):
        assert _as_the_user_typed_it(ValueError(message), generate) == message
    assert _as_the_user_typed_it(ValueError("num_hidden_layers must be a positive integer"), train) == \
        "--layers must be a positive integer"
    damaged = CheckpointError("run/train_config.json", "batch_size must be a positive int")
    assert _as_the_user_typed_it(damaged, train) == str(damaged)


REFUSAL = ValueError("cannot resume 'run' with different settings: lora_targets (['q_proj'] -> ['q_proj', 'up_proj'])")


# lora_targets is set by --lora-targets and by --lora-mlp (which adds the MLP): a refusal names what the
# user typed, the default flag when the command line holds neither; argparse takes an abbreviation
# ("--lora-m" for --lora-mlp), named as the whole flag; a token after "--" is no flag typed
@pytest.mark.parametrize("typed, named", [
    (["--lora-mlp"], "--lora-mlp"), (["--lora-targets", "q_proj"], "--lora-targets"),
    (["--lora-targets=q_proj", "--lora-mlp"], "--lora-targets / --lora-mlp"), ([], "--lora-targets"),
    (["--lora-m"], "--lora-mlp"), (["--lora-ta", "q_proj", "--lora-ml"], "--lora-targets / --lora-mlp"),
    (["--lora-targ=q_proj"], "--lora-targets"), (["--", "--lora-mlp"], "--lora-targets")])
def test_a_setting_more_than_one_flag_sets_is_named_by_the_flags_typed(typed, named):
    argv_base = ["finetune", "classify", "--resume", "--out", "run"]
    finetune = _innermost_parser(build_parser(), argv_base)
    said = _as_the_user_typed_it(REFUSAL, finetune, [*argv_base, *typed])
    assert said == f"cannot resume 'run' with different settings: {named} (['q_proj'] -> ['q_proj', 'up_proj'])"
