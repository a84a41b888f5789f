"""The shape of the model a training run builds: a preset, with a Hugging Face config file and
single fields on top (`npllama train --preset tiny --config model.json --layers 6`), or the shape
of a pretrained folder (`--init-from DIR`).

    shape = shape_settings(tc)                    # {HF field name: value} of preset + file + flags
    config = new_model_config(tc, tokenizer)      # the LlamaConfig, with the tokenizer's vocab and ids

Field names are Hugging Face's, so a config.json copied from a model folder works as a --config
file.  Its bookkeeping fields (architectures, torch_dtype, ...) are accepted and ignored, those
naming the architecture (model_type, hidden_act, the biases) only when they describe a LLaMA;
bos_token_id and eos_token_id always come from the run's tokenizer; pad_token_id is the model's
(saved in its config.json, and under the causal objective the row its embedding lookups send no
gradient to, as transformers' nn.Embedding(padding_idx=...) does), so it is refused where that
rule would stop a token of the training text from learning (see _check_pad_token_id); any other
unknown field is refused, so a typo such as "hiden_size" is an error rather than a setting
silently ignored.
"""
from __future__ import annotations

from pathlib import Path

from .config import PRESETS, LlamaConfig, attends_causally, check_architecture_fields, check_attention_dropout

# TrainConfig field (HF name) -> the command-line flag that sets it
SHAPE_FLAGS = {
    "hidden_size": "--hidden-size",
    "num_hidden_layers": "--layers",
    "num_attention_heads": "--heads",
    "num_key_value_heads": "--kv-heads",
    "intermediate_size": "--intermediate-size",
    "max_position_embeddings": "--context",
}
# Fields of a transformers config.json that describe no shape: read past (those that name an
# architecture -- model_type, biases, hidden_act -- once check_architecture_fields accepts them).
IGNORED_CONFIG_FIELDS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "hidden_act",
    "attention_bias", "mlp_bias", "attention_dropout", "use_cache", "pretraining_tp", "_name_or_path",
    "bos_token_id", "eos_token_id",
})
# Fields of a --config file that are not the shape but are still the model's: kept.
KEPT_CONFIG_FIELDS = frozenset({"pad_token_id"})
SHAPE_CONFIG_FIELDS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "tie_word_embeddings", "head_dim", "initializer_range",
})
MAX_CONFIG_BYTES = 1024**2


def read_model_config_file(path) -> dict:
    """A --config file's fields (a JSON object), unknown ones refused with a ValueError."""
    from .io.reading import read_json

    path = Path(path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():   # a model folder: its config.json
        path = path / "config.json"
    elif path.is_dir():
        raise IsADirectoryError(f"--config {str(path)!r} is a folder without a config.json (expected a JSON "
                                f"file with Hugging Face field names, e.g. a model folder's config.json)")
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} does not exist (expected a JSON file with "
                                f"Hugging Face field names, e.g. a model folder's config.json)")
    fields = read_json(path, expect=dict, max_bytes=MAX_CONFIG_BYTES, error=ValueError)
    check_model_config_fields(fields, f"--config {str(path)!r}")
    return fields


def check_model_config_fields(fields, where: str = "model_config") -> None:
    """A TypeError unless fields is a dict, a ValueError (naming `where`) for a field npllama does not
    read, an architecture it would train as something else (biases, GELU), or a bad attention_dropout."""
    if not isinstance(fields, dict):
        raise TypeError(f"{where} must be a JSON object of Hugging Face config fields, got {type(fields).__name__}")
    unknown = sorted(set(fields) - SHAPE_CONFIG_FIELDS - KEPT_CONFIG_FIELDS - IGNORED_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{where} has fields npllama does not know: {', '.join(map(str, unknown))}; "
                         f"it reads {', '.join(sorted(SHAPE_CONFIG_FIELDS | KEPT_CONFIG_FIELDS))}")
    try:   # a model with biases or GELU would be trained as a LLaMA without them
        check_architecture_fields(fields)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    if "attention_dropout" in fields:   # read past (a new model trains without dropout), but not nonsense
        try:
            check_attention_dropout(fields["attention_dropout"])
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None


def _preset_settings(tc) -> dict:
    return {"rms_norm_eps": LlamaConfig.rms_norm_eps, **PRESETS[tc.preset]}


def shape_settings(tc) -> dict:
    """The shape fields of a new model (and its pad_token_id): the preset's, then tc.model_config's,
    then tc's single fields."""
    settings = _preset_settings(tc)
    settings.update({k: v for k, v in (tc.model_config or {}).items()
                     if k in SHAPE_CONFIG_FIELDS | KEPT_CONFIG_FIELDS})
    settings.update({name: getattr(tc, name) for name in SHAPE_FLAGS if getattr(tc, name) is not None})
    if tc.vocab_size is not None:
        settings["vocab_size"] = tc.vocab_size
    return settings


def base_vocab_size(tc) -> int:
    """Pieces of the tokenizer a new run trains: --vocab-size, else the --config file's, else the preset's."""
    return shape_settings(tc)["vocab_size"]


def check_shape(tc) -> None:
    """Validate the shape a new run would build (before any file is read), as LlamaConfig does;
    the error names the command-line flag where there is one."""
    if tc.init_from is not None:
        return  # the folder's shape; checked against the flags by check_init_from
    settings = shape_settings(tc)
    _build(settings, settings["vocab_size"], None, None, tc.seq_len, _explicit_context(tc))


def check_new_model(tc, tokenizer=None) -> None:
    """Before a new run (not a resume, not --init-from) writes anything: the model new_model_config
    will build is refused now rather than after the run folder is started.  tokenizer: the
    --tokenizer given (its vocabulary and ids), None for one the run trains (npllama's ids: <s> 1,
    </s> 2, no pad piece; its size is the shape's, checked by check_shape).  Not in check_shape,
    which TrainConfig runs on a resume's saved settings too: a run saved before --config's
    pad_token_id was kept resumes from its checkpoint's model, which has none."""
    from .tokenizer import BOS_ID, EOS_ID

    if tc.init_from is not None:
        return   # the folder's own pad_token_id, which transformers would fine-tune with as well
    if tokenizer is not None:
        new_model_config(tc, tokenizer)
    else:
        _check_pad_token_id(shape_settings(tc).get("pad_token_id"), BOS_ID, EOS_ID, None, tc.objective)


def new_model_config(tc, tokenizer) -> LlamaConfig:
    """The LlamaConfig of a new run's model (not --init-from: that folder's own config is used)."""
    settings = shape_settings(tc)
    config = _build(settings, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tc.seq_len,
                    _explicit_context(tc))
    _check_pad_token_id(config.pad_token_id, tokenizer.bos_id, tokenizer.eos_id, getattr(tokenizer, "pad_id", None),
                        tc.objective)
    return config


def preset_config(tc, config: LlamaConfig) -> LlamaConfig:
    """What the preset alone would make for this run: `config`'s vocabulary and special ids, the
    context stretched to seq_len as new_model_config stretches it.  A model equal to it is not
    reshaped, whatever --config and the flags repeated."""
    return _build(dict(_preset_settings(tc), pad_token_id=config.pad_token_id), config.vocab_size,
                  config.bos_token_id, config.eos_token_id, tc.seq_len, explicit_context=False)


def _check_pad_token_id(pad_id, bos_id, eos_id, tokenizer_pad_id, objective: str) -> None:
    """Refuse a --config pad_token_id that cannot be what it says.  Pretraining packs documents
    into windows and pads nothing, so the id only matters for the saved config.json (transformers'
    padding_idx, the id a classification head skips; npllama's fine-tuning pads with the
    tokenizer's pad piece, else </s>: objectives.pad_id_of) and, under the causal objective, for
    the pad-row rule (model.decoder_backward): the id's embedding row gets no gradient from its lookups.  <s> and </s> stand at every document's
    edges in the training text, so that rule would keep their rows at their random start."""
    if pad_id is None:
        return
    if tokenizer_pad_id is not None and pad_id != tokenizer_pad_id:
        raise ValueError(f"--config sets pad_token_id {pad_id}, but the tokenizer has a pad piece of its own, id "
                         f"{tokenizer_pad_id}, which fine-tuning pads with: set pad_token_id to {tokenizer_pad_id} "
                         f"or null")
    for name, special_id in (("<s>", bos_id), ("</s>", eos_id)):
        if attends_causally(objective) and pad_id == special_id:
            raise ValueError(f"--config's pad_token_id {pad_id} is {name}, a token every training document holds: "
                             f"the pad-row rule (as transformers' padding_idx) would give its embedding row no "
                             f"gradient, so it would never learn; pretraining pads nothing, so set pad_token_id "
                             f"to null, or to an id the training text does not hold")


def _explicit_context(tc) -> bool:
    """Whether the context was set (--context or --config), not just the preset's."""
    return tc.max_position_embeddings is not None or "max_position_embeddings" in (tc.model_config or {})


def _build(settings: dict, vocab_size: int, bos_id, eos_id, seq_len: int, explicit_context: bool) -> LlamaConfig:
    settings = dict(settings, vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id)
    if explicit_context and settings["max_position_embeddings"] < seq_len:
        raise ValueError(f"seq_len ({seq_len}) must not exceed the model's context, max_position_embeddings "
                         f"({settings['max_position_embeddings']}, set by --context or --config)")
    settings["max_position_embeddings"] = max(settings["max_position_embeddings"], seq_len)
    try:
        return LlamaConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        raise type(error)(f"the model's shape: {_with_flag_names(str(error))}") from None


def _with_flag_names(message: str) -> str:
    """'num_attention_heads (3) must ...' -> 'num_attention_heads (--heads) (3) must ...'."""
    for field, flag in SHAPE_FLAGS.items():
        message = message.replace(field, f"{field} ({flag})", 1)
    return message


# ----- --init-from ---------------------------------------------------------------------------------

def init_from_config(tc) -> LlamaConfig:
    """The config of the --init-from folder, after refusing every shape setting that disagrees with it."""
    from .io.hf import read_config

    config = read_config(init_from_dir(tc) / "config.json")
    if tc.model_config is not None:
        raise ValueError("--config and --init-from both give the model's shape: the folder's is used, "
                         "so leave out --config")
    conflicts = [f"{flag} {getattr(tc, name)} (the folder has {getattr(config, name)})"
                 for name, flag in SHAPE_FLAGS.items()
                 if getattr(tc, name) is not None and getattr(tc, name) != getattr(config, name)]
    if tc.vocab_size is not None and tc.vocab_size != config.vocab_size:
        conflicts.append(f"--vocab-size {tc.vocab_size} (the folder has {config.vocab_size})")
    if conflicts:
        raise ValueError(f"--init-from {tc.init_from!r} fixes the model's shape; these disagree with it: "
                         f"{'; '.join(conflicts)}")
    if tc.seq_len > config.max_position_embeddings:
        raise ValueError(f"seq_len ({tc.seq_len}) exceeds the --init-from model's context "
                         f"(max_position_embeddings {config.max_position_embeddings})")
    return config


def init_from_dir(tc) -> Path:
    """The Hugging Face folder --init-from names: the folder itself, or in a run folder of
    `npllama train` its final model/ (else its checkpoint's model/)."""
    from .runs import refuse_a_model_file

    folder = Path(tc.init_from).expanduser()
    refuse_a_model_file(tc.init_from, flag="--init-from")   # a llama2.c .bin, a .gguf: what it is, how to convert it
    if not folder.is_dir():
        raise FileNotFoundError(f"--init-from {tc.init_from!r} is not a folder (expected a Hugging Face "
                                f"model folder with config.json and model.safetensors, or a run folder)")
    for candidate in (folder, folder / "model", folder / "checkpoint" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"--init-from {tc.init_from!r} holds no config.json: expected a Hugging Face model "
                            f"folder (config.json and model.safetensors) or a run folder with a model/")


def init_from_tokenizer_path(tc) -> Path | None:
    """The --init-from folder's tokenizer.model, if it has one."""
    path = init_from_dir(tc) / "tokenizer.model"
    return path if path.is_file() else None
