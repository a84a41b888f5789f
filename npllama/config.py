"""LlamaConfig: the model's shape, with Hugging Face field names, validated on construction.

`LlamaConfig.from_dict` reads both config.json layouts in use: transformers 4.x (`rope_theta`,
`rope_scaling`, `torch_dtype` at top level) and 5.x (`rope_parameters` holding `rope_theta` and
the scaling fields, `dtype`); a file with both is read as transformers reads it (a non-empty
`rope_scaling` wins).  `to_dict` writes the 4.x layout, which both versions read.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# rope_scaling types we implement.  Others (yarn, longrope, ...) are refused by name.  "dynamic"
# (NTK-aware scaling) changes RoPE only for sequences past max_position_embeddings, which npllama
# never runs: within the context it is plain RoPE, as in transformers.
ROPE_TYPES = ("default", "linear", "llama3", "dynamic")
LLAMA3_ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

# Whether a model trained with each objective runs its stack under the causal mask ("mlm":
# `npllama train --objective mlm`, the stack without it).  The one rule that what runs a model
# (the model's default attention, the classifier, viz, the next-token checks) asks.
ATTENDS_CAUSALLY = {"causal": True, "mlm": False}


def check_objective(objective) -> str:
    """`objective` when it is one ATTENDS_CAUSALLY knows, else a ValueError naming them: the one
    check of the model, a run's settings and the rule below."""
    if not isinstance(objective, str) or objective not in ATTENDS_CAUSALLY:
        raise ValueError(f"objective must be one of {', '.join(map(repr, ATTENDS_CAUSALLY))}, got {objective!r}")
    return objective


def attends_causally(objective: str) -> bool:
    """Whether a model trained with `objective` (a key of ATTENDS_CAUSALLY) reads each token with the
    earlier ones only -- the causal mask -- and so predicts next tokens: False for a masked-LM model."""
    return ATTENDS_CAUSALLY[check_objective(objective)]

# Refuse configs whose parameters alone would not fit in memory before anything is allocated.
MAX_PARAMETERS = 20_000_000_000
# The RoPE tables and the KV cache grow with the context; past this many positions (2**24, above
# every published LLaMA context) a config is taken to be corrupt rather than ambitious.
MAX_POSITION_EMBEDDINGS = 2**24
# Past this many layers (4096; the deepest published LLaMA has 126) a config is taken to be
# corrupt: a small layer of a few thousand parameters stays under MAX_PARAMETERS for millions of
# layers, and listing their parameters (param_shapes) would fill memory with names.
MAX_HIDDEN_LAYERS = 4096


@dataclasses.dataclass
class LlamaConfig:
    """The model's shape, under the field names of Hugging Face's LlamaConfig (config.json).

    The defaults are the first LLaMA-7B's; `LlamaConfig.from_preset("tiny", **overrides)` gives the small
    shapes in PRESETS.  num_key_value_heads None: num_attention_heads (no grouped-query attention);
    head_dim None: hidden_size // num_attention_heads.  rope_scaling: None, or a dict with
    "rope_type" ("linear", "llama3" or "dynamic") and its fields, as in config.json.  eos_token_id: one id or
    a list (LLaMA-3).  attention_dropout is carried to config.json only: npllama's attention has no
    dropout.  A field of the wrong type raises TypeError, an inconsistent or out-of-range one
    ValueError, both naming the field.
    """
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (plain multi-head)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2   # LLaMA-3 lists several (end of text, end of turn, ...)
    pad_token_id: int | None = None
    # Carried from and back to config.json for other trainers (transformers applies it in training);
    # npllama's attention has no dropout, and its training jobs say so when this is not 0.
    attention_dropout: float = 0.0

    def __post_init__(self):
        for field in dataclasses.fields(self):  # NumPy scalars are numbers too: keep plain Python ones
            setattr(self, field.name, python_scalar(getattr(self, field.name)))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            _require_positive_int(name, getattr(self, name))
        # With head_dim given, hidden_size need be no multiple of the heads: the projections are
        # (heads * head_dim, hidden_size), as transformers 4.x built them (5.x refuses such a config.json)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}), or head_dim must be given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        _require_positive_int("head_dim", self.head_dim)
        if self.max_position_embeddings > MAX_POSITION_EMBEDDINGS:
            raise ValueError(f"max_position_embeddings must be at most {MAX_POSITION_EMBEDDINGS:,}, "
                             f"got {self.max_position_embeddings:,}")
        if self.num_hidden_layers > MAX_HIDDEN_LAYERS:
            raise ValueError(f"num_hidden_layers must be at most {MAX_HIDDEN_LAYERS:,}, "
                             f"got {self.num_hidden_layers:,}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})")
        _require_positive_float("rms_norm_eps", self.rms_norm_eps)
        _require_positive_float("rope_theta", self.rope_theta)
        # only the spread of a fresh model's weights: transformers accepts 0 (a model of zeros) to 1
        if _finite_float("initializer_range", self.initializer_range) < 0:
            raise ValueError(f"initializer_range must be a non-negative number, got {self.initializer_range}")
        check_attention_dropout(self.attention_dropout)
        if not isinstance(self.tie_word_embeddings, bool):
            raise TypeError(f"tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
        if isinstance(self.eos_token_id, (list, tuple)):   # kept as a list, as config.json holds it
            self.eos_token_id = [python_scalar(i) for i in self.eos_token_id]
        check_end_ids(self.eos_token_id, self.vocab_size)
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value < self.vocab_size):
                raise ValueError(f"{name} must be None or an id in [0, {self.vocab_size}), got {value!r}")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        if self.num_parameters() > MAX_PARAMETERS:
            raise ValueError(
                f"config describes {self.num_parameters():,} parameters, more than npllama "
                f"accepts ({MAX_PARAMETERS:,}); check hidden_size, intermediate_size, "
                f"num_hidden_layers and vocab_size")

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: eos_token_id's one, or each of its list (LLaMA-3's
        end of text and end of turn), none when it is None."""
        return check_end_ids(self.eos_token_id, self.vocab_size)

    # ----- derived sizes -------------------------------------------------------------------
    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's Hugging Face name and shape, in the order of the forward pass."""
        D, F, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q_dim = self.num_attention_heads * self.head_dim
        kv_dim = self.num_key_value_heads * self.head_dim
        shapes = {"model.embed_tokens.weight": (V, D)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (D,)
            shapes[p + "self_attn.q_proj.weight"] = (q_dim, D)
            shapes[p + "self_attn.k_proj.weight"] = (kv_dim, D)
            shapes[p + "self_attn.v_proj.weight"] = (kv_dim, D)
            shapes[p + "self_attn.o_proj.weight"] = (D, q_dim)
            shapes[p + "post_attention_layernorm.weight"] = (D,)
            shapes[p + "mlp.gate_proj.weight"] = (F, D)
            shapes[p + "mlp.up_proj.weight"] = (F, D)
            shapes[p + "mlp.down_proj.weight"] = (D, F)
        shapes["model.norm.weight"] = (D,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (V, D)
        return shapes

    def num_parameters(self) -> int:
        """The total of param_shapes(), computed without building it (so a corrupt config with a
        billion layers is refused at once instead of filling memory with names)."""
        D, F, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q_dim = self.num_attention_heads * self.head_dim
        kv_dim = self.num_key_value_heads * self.head_dim
        per_layer = 2 * D + q_dim * D + 2 * kv_dim * D + D * q_dim + 3 * F * D
        head = 0 if self.tie_word_embeddings else V * D
        return V * D + self.num_hidden_layers * per_layer + D + head

    # ----- Hugging Face config.json ----------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        """Build from a Hugging Face config.json dict (transformers 4.x or 5.x layout), read as
        transformers reads it; a file that transformers 4.x and 5.x would build different models from
        (a top-level original_max_position_embeddings other than LLaMA-3 scaling's) is a ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        check_architecture_fields(d)
        rope_parameters = d.get("rope_parameters")
        if rope_parameters is not None and not isinstance(rope_parameters, dict):
            raise TypeError(f"rope_parameters must be an object, got {rope_parameters!r}")
        # Which field holds the RoPE settings, as transformers decides it: a non-empty rope_scaling (the
        # 4.x field) is taken whole over rope_parameters (5.x), which 4.x never reads and 5.x reads
        # only without one.  rope_theta is the chosen field's, else the top-level one, else 10000.
        rope_field = "rope_scaling" if d.get("rope_scaling") or not rope_parameters else "rope_parameters"
        rope_scaling = d.get(rope_field)
        rope_theta = d.get("rope_theta")
        if isinstance(rope_scaling, dict):
            rope_theta = rope_scaling.get("rope_theta", rope_theta)
            rope_scaling = {k: v for k, v in rope_scaling.items() if k != "rope_theta"}
            rope_scaling = _with_llama3_original_context(rope_scaling, d, cls.max_position_embeddings)
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kwargs["rope_theta"] = 10000.0 if rope_theta is None else rope_theta
        if rope_field == "rope_parameters":  # a 5.x config: report problems under the file's field
            try:
                rope_scaling = _normalise_rope_scaling(rope_scaling)
            except (ValueError, TypeError) as e:
                raise type(e)(str(e).replace("rope_scaling", "rope_parameters")) from None
        kwargs["rope_scaling"] = rope_scaling
        if "rms_norm_eps" not in d:
            kwargs["rms_norm_eps"] = 1e-6  # transformers' default when the field is absent
        if isinstance(kwargs.get("bos_token_id"), list):  # one id begins a text
            kwargs["bos_token_id"] = kwargs["bos_token_id"][0] if kwargs["bos_token_id"] else None
        if kwargs.get("eos_token_id") == []:
            kwargs["eos_token_id"] = None
        missing = [n for n in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if n not in d]
        if missing:
            raise ValueError(f"config is missing required field(s): {', '.join(missing)}")
        for name, value in list(kwargs.items()):
            field_type = {f.name: f.type for f in dataclasses.fields(cls)}[name]
            if value is not None and "float" in str(field_type) and _is_int(value):
                kwargs[name] = float(value)
        config = cls(**kwargs)
        _check_top_level_original_context(d, config.rope_scaling, rope_field)
        top_level_partial = d.get("partial_rotary_factor")   # (read only where the RoPE settings lack it)
        if config.rope_scaling and "partial_rotary_factor" not in config.rope_scaling and top_level_partial is not None:
            _check_whole_head_rotation("partial_rotary_factor", top_level_partial, config.rope_scaling["rope_type"])
        return config

    def to_dict(self) -> dict[str, Any]:
        """A config.json dict in the transformers 4.x layout (transformers 5 reads it too)."""
        d = dataclasses.asdict(self)
        d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                 attention_bias=False, mlp_bias=False, use_cache=True,
                 pretraining_tp=1)
        if d["rope_scaling"] is not None:
            d["rope_scaling"] = dict(d["rope_scaling"])
        return d

    # ----- presets ---------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlamaConfig":
        """A named shape (see PRESETS); keyword arguments override fields, e.g. vocab_size."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Presets: `tiny` trains in minutes on 2 cores; the others are the classic llama2.c shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
    "stories260k": dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=5,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512),
    "stories15m": dict(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
    "stories42m": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
    "stories110m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
}


def check_architecture_fields(d: dict) -> None:
    """The config.json fields that say which architecture a model has, beyond its shape: a LLaMA
    (model_type, architectures), without biases, with SiLU in its SwiGLU, not quantized.  Anything else is a
    ValueError naming the field and the value npllama implements, never a model silently built
    without what the file asks for."""
    model_type = d.get("model_type", "llama")
    architectures = d.get("architectures") or []
    if not isinstance(architectures, list):
        raise TypeError(f"architectures must be a list of class names, got {architectures!r}")
    # "LLaMAForCausalLM": the class's name in transformers' first LLaMA conversions (early 2023)
    if model_type != "llama" or any("llama" not in a.lower() for a in architectures if isinstance(a, str)):
        raise ValueError(
            f"config is for model_type={model_type!r}, architectures={architectures!r}; "
            f"npllama reads LLaMA configs (model_type 'llama')")
    for flag in ("attention_bias", "mlp_bias"):
        if d.get(flag) not in (False, None):  # (absent or null: transformers' default, false)
            raise ValueError(f"{flag} must be false: LLaMA's projections have no biases and npllama "
                             f"implements none, got {d[flag]!r}")
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):  # transformers maps both names to torch's SiLU
        raise ValueError(f"hidden_act must be 'silu' (or its other name 'swish') for LLaMA's SwiGLU, "
                         f"got {act!r}")
    quantization = d.get("quantization_config")
    if quantization:   # transformers quantizes the weights as it loads them, or reads them quantized
        what = f"quant_method {quantization.get('quant_method')!r}" if isinstance(quantization, dict) else repr(quantization)
        raise ValueError(f"quantization_config ({what}) says this checkpoint is quantized, "
                         f"which transformers applies on loading; npllama reads unquantized float weights "
                         f"(F32, F64, F16, BF16) only: use the unquantized model, or dequantize this one first")


def _with_llama3_original_context(scaling: dict, d: dict, default_context: int) -> dict:
    """A LLaMA-3 scaling without original_max_position_embeddings, completed as transformers 5 reads it:
    with the top-level original_max_position_embeddings (Phi-3's place for it), else with
    max_position_embeddings (transformers 4.x refused such a file).  Any other scaling unchanged."""
    if (scaling.get("rope_type") or scaling.get("type")) != "llama3" or "original_max_position_embeddings" in scaling:
        return scaling
    source = "original_max_position_embeddings" if "original_max_position_embeddings" in d else "max_position_embeddings"
    context = python_scalar(d.get(source, default_context))
    _require_positive_int(source, context)   # named as the file names it, not as a key the RoPE settings lack
    return {**scaling, "original_max_position_embeddings": context}


def _check_whole_head_rotation(name: str, partial_rotary_factor, rope_type: str) -> None:
    """A partial_rotary_factor (RoPE over that share of each head) beside a scaled RoPE must be 1.
    transformers' LlamaForCausalLM computes a scaled RoPE's frequencies over int(head_dim *
    partial_rotary_factor) dimensions: mostly tables it then cannot apply to its whole heads (no model
    runs), and where they do fit (0.99: 7 of 8) frequencies other than LLaMA's.  npllama refuses such a
    file rather than run a full-head RoPE the file does not describe.  (With plain RoPE, transformers
    5 builds full-head tables whatever the field says, as npllama does; from_dict lets it pass there.)"""
    if _finite_float(name, partial_rotary_factor) != 1:
        raise ValueError(f"{name} must be 1 (RoPE over the whole head, as LLaMA's) with {rope_type!r} RoPE "
                         f"scaling, got {partial_rotary_factor!r}: transformers' LlamaForCausalLM computes that "
                         f"scaling's frequencies over int(head_dim * {name.split('.')[-1]}) dimensions, not the "
                         f"whole head (mostly tables its heads cannot take); npllama implements RoPE over the "
                         f"whole head")


def _check_top_level_original_context(d: dict, rope_scaling: dict | None, rope_field: str) -> None:
    """A top-level original_max_position_embeddings (Phi-3's place for it) beside LLaMA-3 scaling's own:
    transformers 5.x takes the top-level one, 4.x only ever reads the scaling's, so when they differ
    the file means one of two RoPEs, and guessing would be a silently different model."""
    top_level = d.get("original_max_position_embeddings")
    if top_level is None or rope_scaling is None or rope_scaling["rope_type"] != "llama3":
        return
    inner = rope_scaling["original_max_position_embeddings"]
    if python_scalar(top_level) != inner:
        raise ValueError(
            f"original_max_position_embeddings ({top_level!r}) at the top level of config.json differs from "
            f"{rope_field}.original_max_position_embeddings ({inner}): transformers 5.x builds LLaMA-3 RoPE "
            f"scaling with the top-level one, 4.x with {rope_field}'s; remove the wrong one")


def check_attention_dropout(value) -> None:
    """A TypeError unless value is a real number, a ValueError unless it is a probability in [0, 1]
    (a config.json field kept, not used)."""
    if not 0 <= _finite_float("attention_dropout", value) <= 1:
        raise ValueError(f"attention_dropout must be a probability in [0, 1], got {value}")


def python_scalar(value):
    """A NumPy scalar (np.int64(3), np.float32(0.5), np.bool_(True)) as the Python number it holds;
    anything else unchanged.  So every check below accepts NumPy scalars wherever it accepts
    Python numbers, and what is stored (and saved to JSON) is always a Python number."""
    if isinstance(value, np.generic) and value.shape == () and value.dtype.kind in "biuf":
        return value.item()
    return value


def check_end_ids(eos_token_id, vocab_size: int) -> tuple[int, ...]:
    """The ids an eos_token_id field holds (None: none; one id; or a non-empty list of ids, each
    in [0, vocab_size)), else a ValueError naming the field.  LlamaConfig checks its own with it,
    and io/hf.py the ids a generation_config.json adds."""
    ids = eos_token_id if isinstance(eos_token_id, list) else [] if eos_token_id is None else [eos_token_id]
    if (isinstance(eos_token_id, list) and not ids) or not all(_is_int(i) and 0 <= i < vocab_size for i in ids):
        raise ValueError(f"eos_token_id must be None, an id or a non-empty list of ids in "
                         f"[0, {vocab_size}), got {eos_token_id!r}")
    return tuple(ids)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_float(name: str, value) -> float:
    """float(value) for a real number; a TypeError for anything else, a ValueError for a value too
    large for a float (a 400-digit int) or not finite."""
    value = python_scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large to be a number npllama can use, got an integer of "
                         f"{len(str(abs(int(value))))} digits") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _require_positive_int(name: str, value) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _require_positive_float(name: str, value) -> None:
    if _finite_float(name, value) <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")


def _normalise_rope_scaling(scaling) -> dict | None:
    """Validate rope_scaling and return it with a 'rope_type' key (None for plain RoPE)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise TypeError(f"rope_scaling must be a dict or None, got {scaling!r}")
    scaling = {key: python_scalar(value) for key, value in scaling.items()}
    for key in ("type", "rope_type"):  # transformers 4.x wrote "type", later ones "rope_type"
        if key in scaling and not (scaling[key] is None or isinstance(scaling[key], str)):
            raise TypeError(f"rope_scaling.{key} must be a string (one of {ROPE_TYPES}), got {scaling[key]!r}")
    rope_type = scaling.pop("type", None)
    rope_type = scaling.get("rope_type") or rope_type or "default"
    scaling["rope_type"] = rope_type
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported; npllama implements {ROPE_TYPES}")
    # Every known field is checked when present, whatever the type: a "factor": "x" is an error
    # even where the type would not use it, rather than a value silently ignored.
    for field in ("factor", "low_freq_factor", "high_freq_factor"):
        if field in scaling and scaling[field] is not None:
            _require_positive_float(f"rope_scaling.{field}", scaling[field])
    if scaling.get("original_max_position_embeddings") is not None:
        _require_positive_int("rope_scaling.original_max_position_embeddings",
                              scaling["original_max_position_embeddings"])
    if rope_type == "default":
        return None
    _require_positive_float("rope_scaling.factor", scaling.get("factor"))
    if "partial_rotary_factor" in scaling:
        _check_whole_head_rotation("rope_scaling.partial_rotary_factor", scaling["partial_rotary_factor"], rope_type)
    if rope_type == "llama3":
        for field in LLAMA3_ROPE_FIELDS:
            if scaling.get(field) is None:   # (a null is no value: no transformers version runs it)
                raise ValueError(f"rope_scaling of type 'llama3' needs {field!r}")
        if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
            raise ValueError("rope_scaling.high_freq_factor must be greater than low_freq_factor")
    return scaling
