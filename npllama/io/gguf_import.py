"""Read a LLaMA from a GGUF file (llama.cpp's format): its shape, its weights and its tokenizer.

    config, params = read_gguf("model-q8_0.gguf")          # npllama's (Hugging Face) names and layouts
    model = Llama.from_pretrained("model-q8_0.gguf")       # the same, as a Llama

Read with the `gguf` package that llama.cpp publishes (pip install 'npllama[gguf]').  What
llama.cpp's converter (and `npllama export gguf`) writes is undone:

* llama.cpp's tensor names become Hugging Face's, and q and k go back from the interleaved RoPE
  layout to the half-split one (io/rotary_layout.py);
* tensors stored as F32, F16, BF16 or Q8_0 are dequantized to float32 (or float64) on load:
  BF16 is the top half of a float32; Q8_0 stores blocks of 32 values as one float16 scale d and
  32 int8 q, each value d * q.  Other types (Q4_K, ...) are refused by name;
* the `llama.*` hyper-parameters become a LlamaConfig; a tensor `output.weight` absent means tied
  embeddings.  LLaMA-3 RoPE scaling is stored only as its result, a factor per pair (rope_freqs);
  the settings are found again from them (`_llama3_scaling`), or the file refused when they cannot be;
* `tokenizer.ggml.*` of a SentencePiece ("llama") vocabulary becomes a tokenizer.model
  (`gguf_tokenizer_model_bytes`), as io/llama2c_tokenizer.py does for llama2.c's tokenizer.bin;
  `tokenizer.chat_template` goes into the converted folder's tokenizer_config.json (with another
  vocabulary, which gets no tokenizer files, into chat_template.jinja).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from .errors import CheckpointError
from .gguf_export import _LAYER_NAMES, _TOP_NAMES
from .hf import CHAT_TEMPLATE_FILE
from .rotary_layout import interleaved_to_half_split
from .sentencepiece_model import BYTE, PIECE_TYPES, UNKNOWN, build_bpe_model

GGUF_MAGIC = b"GGUF"
READ_TYPES = ("F32", "F16", "BF16", "Q8_0")
Q8_0_BLOCK = 32     # values per Q8_0 block, stored after the block's float16 scale
INSTALL_HINT = "reading GGUF needs the `gguf` package (llama.cpp's): pip install 'npllama[gguf]'"
# llama.cpp name -> Hugging Face name (blk.N.<name> -> model.layers.N.<name>)
_HF_TOP_NAMES = {gguf: hf for hf, gguf in _TOP_NAMES.items()}
_HF_LAYER_NAMES = {gguf: hf for hf, gguf in _LAYER_NAMES.items()}


def looks_like_gguf(path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_architecture(path) -> str:
    """The architecture a GGUF file says it holds (general.architecture: "llama", "gpt2", ...).
    A file the `gguf` package cannot read, or without the field, is a CheckpointError."""
    path = Path(path)
    return _value(path, _reader(path), "general.architecture")


def read_gguf(path, dtype=np.float32) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """(config, params) of a GGUF LLaMA: params under Hugging Face's names and layouts, q and k
    half-split, each array of `dtype` (float32 or float64).  A malformed file, another
    architecture or a tensor type we do not read is a CheckpointError (a ValueError)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype}")
    path = Path(path)
    return _read_model(path, _reader(path), dtype)


def _read_model(path: Path, reader, dtype) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """read_gguf's (config, params) from an open reader."""
    from .hf import _check_memory_budget

    tensors = {t.name: t for t in reader.tensors}
    config = _config(path, reader, tensors)
    _check_memory_budget(path, config, dtype)
    expected = config.param_shapes()
    params = {}
    for name, tensor in tensors.items():
        if name == "rope_freqs.weight":   # read into config.rope_scaling
            continue
        hf_name = _hf_name(path, name)
        if hf_name not in expected:
            raise CheckpointError(path, f"is not a tensor of this model's shape (expected {list(expected)[:3]} ...)",
                                  tensor=name)
        array = dequantize(path, tensor)
        if array.shape != tuple(expected[hf_name]):
            raise CheckpointError(path, f"has shape {array.shape}, but the metadata's model needs "
                                        f"{tuple(expected[hf_name])}", tensor=name)
        if hf_name.endswith("self_attn.q_proj.weight"):
            array = interleaved_to_half_split(array, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = interleaved_to_half_split(array, config.num_key_value_heads)
        params[hf_name] = np.ascontiguousarray(array, dtype=dtype)
    missing = [tensor_name for tensor_name in expected if tensor_name not in params]
    if missing:
        raise CheckpointError(path, f"lacks the tensor(s) {missing[:4]} that its metadata's model needs")
    return config, {name: params[name] for name in expected}


def dequantize(path, tensor) -> np.ndarray:
    """A GGUF tensor as float32 in NumPy's order (rows of ne0 values: Hugging Face's (out, in))."""
    kind = tensor.tensor_type.name
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    if kind not in READ_TYPES:
        raise CheckpointError(path, f"is stored as {kind}, which npllama does not read (it reads "
                                    f"{', '.join(READ_TYPES)}): convert the model again with llama.cpp's "
                                    f"convert_hf_to_gguf.py --outtype f16, bf16 or q8_0", tensor=tensor.name)
    raw = np.asarray(tensor.data)
    if kind in ("F32", "F16"):
        return raw.astype(np.float32).reshape(shape)
    if kind == "BF16":   # the upper 16 bits of a float32
        return (raw.reshape(-1).view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    blocks = raw.reshape(-1, 2 + Q8_0_BLOCK)   # Q8_0: float16 scale d, then 32 int8 q
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


def gguf_tokenizer_model_bytes(path) -> bytes:
    """A SentencePiece tokenizer.model holding the GGUF's "llama" (SentencePiece) vocabulary: its
    pieces, scores and types, BPE with byte fallback when all 256 byte pieces are there, and
    llama.cpp's add_space_prefix as the dummy prefix.  GGUF does not carry the normalizer: the
    model is identity-normalized, as LLaMA's and as llama.cpp tokenizes."""
    path = Path(path)
    return _tokenizer_model(path, _reader(path))


def _tokenizer_model(path: Path, reader) -> bytes:
    """gguf_tokenizer_model_bytes from an open reader."""
    model = _value(path, reader, "tokenizer.ggml.model")
    if model != "llama":
        raise CheckpointError(path, f"has a {model!r} vocabulary; npllama reads a SentencePiece one "
                                    f"(\"llama\") as tokenizer.model", field="tokenizer.ggml.model")
    pieces = _value(path, reader, "tokenizer.ggml.tokens")
    scores = _value(path, reader, "tokenizer.ggml.scores", [0.0] * len(pieces))
    types = _value(path, reader, "tokenizer.ggml.token_type", None)
    if types is None:
        raise CheckpointError(path, "has no token types", field="tokenizer.ggml.token_type")
    if not len(pieces) == len(scores) == len(types):
        raise CheckpointError(path, f"has {len(pieces)} tokens, {len(scores)} scores and {len(types)} types")
    if any(kind not in PIECE_TYPES for kind in types):
        raise CheckpointError(path, f"has a token type outside {PIECE_TYPES}", field="tokenizer.ggml.token_type")
    # an unknown piece is what <unk> is; llama.cpp names its id separately
    unk = _value(path, reader, "tokenizer.ggml.unknown_token_id", None)
    if unk is not None and 0 <= unk < len(types) and UNKNOWN not in types:
        types = list(types)
        types[unk] = UNKNOWN
    try:
        return build_bpe_model(pieces, scores, types, byte_fallback=sum(t == BYTE for t in types) == 256,
                               add_dummy_prefix=bool(_value(path, reader, "tokenizer.ggml.add_space_prefix", True)))
    except ValueError as e:
        raise CheckpointError(path, f"its vocabulary is not a SentencePiece one: {e}") from None


# ----- helpers ------------------------------------------------------------------------------------

def _tokenizer_files(path: Path, reader, config: LlamaConfig) -> dict[str, bytes]:
    """The folder's tokenizer files: tokenizer.model and transformers' files beside it, with the
    file's chat template (tokenizer.chat_template) in tokenizer_config.json where `generate --chat`
    and transformers' apply_chat_template find it."""
    from ..tokenizer import Tokenizer

    tokenizer = Tokenizer.from_bytes(_tokenizer_model(path, reader))
    return tokenizer.hf_files(chat_template=_chat_template(path, reader, "tokenizer_config.json"),
                              model_max_length=config.max_position_embeddings)


def _chat_template(path: Path, reader, kept_in: str) -> str | None:
    """The file's chat template (tokenizer.chat_template), or None; one that does not compile is warned about,
    naming the converted folder's file it is `kept_in`."""
    template = _value(path, reader, "tokenizer.chat_template", None)
    template = template if isinstance(template, str) and template.strip() else None
    if template is not None:
        _warn_if_not_jinja(path, template, kept_in)
    return template


def _warn_if_not_jinja(path: Path, template: str, kept_in: str) -> None:
    """The file's chat template is kept as it is, as llama.cpp's files carry it; one that does not
    compile is said now, not first by `generate --chat` on the converted folder."""
    from ..chat import BUILTIN_TEMPLATES, warn_if_not_jinja

    warn_if_not_jinja(template, f"{path}: tokenizer.chat_template",
                      f"it is kept in {kept_in} as it is: chat and generate --chat need --chat-template "
                      f"({', '.join(sorted(BUILTIN_TEMPLATES))} or a .jinja file of your own)", stacklevel=3)


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ImportError(f"{str(path)!r} is a GGUF file; {INSTALL_HINT}") from None
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, TypeError) as e:
        # the gguf package's own words ("cannot reshape array ...") do not say what is wrong with the file
        raise CheckpointError(path, f"is not a readable GGUF file: cut short or damaged "
                                    f"({path.stat().st_size:,} bytes; the gguf package says: {e})") from None
    if reader.byte_order != "I":
        raise CheckpointError(path, "is a big-endian GGUF file, which npllama does not read")
    return reader


_REQUIRED = object()


def _value(path: Path, reader, key: str, default=_REQUIRED):
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(path, "is missing", field=key)
        return default
    try:
        return field.contents()
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise CheckpointError(path, f"cannot be read ({e})", field=key) from None


def _config(path: Path, reader, tensors: dict) -> LlamaConfig:
    arch = _value(path, reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(path, f"holds a {arch!r} model; npllama reads LLaMA ('llama')",
                              field="general.architecture")
    heads = _value(path, reader, "llama.attention.head_count")
    hidden = _value(path, reader, "llama.embedding_length")
    head_dim = _value(path, reader, "llama.attention.key_length", None)
    rope_theta = _decimal(_value(path, reader, "llama.rope.freq_base", 10000.0))
    embedding = tensors.get("token_embd.weight")
    vocab = _value(path, reader, "llama.vocab_size",
                   int(embedding.shape[1]) if embedding is not None else _REQUIRED)
    scaling = None
    scaling_type = _value(path, reader, "llama.rope.scaling.type", "none")
    if scaling_type == "linear":
        scaling = {"rope_type": "linear", "factor": _decimal(_value(path, reader, "llama.rope.scaling.factor"))}
    elif scaling_type != "none":
        raise CheckpointError(path, f"uses RoPE scaling {scaling_type!r}; npllama reads 'linear' or none",
                              field="llama.rope.scaling.type")
    if "rope_freqs.weight" in tensors:
        if scaling is not None:
            raise CheckpointError(path, "has both linear RoPE scaling and per-pair factors (rope_freqs)",
                                  tensor="rope_freqs.weight")
        if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
            head_dim = hidden // heads
        scaling = _llama3_scaling(path, dequantize(path, tensors["rope_freqs.weight"]), head_dim, rope_theta)
    # the ids llama.cpp starts and ends a text with: where the file names them, the model's too
    # (generation stops at config.eos_token_id; LlamaConfig's defaults are SentencePiece's 1 and 2)
    special = {field: value for field, key in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                                               ("eos_token_id", "tokenizer.ggml.eos_token_id"))
               if (value := _value(path, reader, key, None)) is not None}
    # llama.cpp stops at the end of turn and of a message too (LLaMA-3's <|eot_id|>, LLaMA-3.1's
    # <|eom_id|>): the model's end ids list them all (a file naming no eos_token_id ends at the
    # default one, 2, as llama.cpp's SentencePiece vocabulary does)
    ends = [special.get("eos_token_id", LlamaConfig.eos_token_id)]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        end = _value(path, reader, key, None)
        if isinstance(end, int) and isinstance(vocab, int) and not 0 <= end < vocab:
            # as llama.cpp, which warns and does without it: not the whole file refused as one
            # whose eos_token_id is wrong
            warnings.warn(f"{path}: {key} is {end}, no id of the vocabulary (0 to {vocab - 1}): not one "
                          f"of the model's end ids", stacklevel=2)
            continue
        if end is not None and end not in ends:
            ends.append(end)
    if len(ends) > 1:
        special["eos_token_id"] = ends
    try:
        config = LlamaConfig(
            **special, vocab_size=vocab, hidden_size=hidden,
            intermediate_size=_value(path, reader, "llama.feed_forward_length"),
            num_hidden_layers=_value(path, reader, "llama.block_count"),
            num_attention_heads=heads,
            num_key_value_heads=_value(path, reader, "llama.attention.head_count_kv", heads),
            max_position_embeddings=_value(path, reader, "llama.context_length"),
            rms_norm_eps=_decimal(_value(path, reader, "llama.attention.layer_norm_rms_epsilon")),
            rope_theta=rope_theta, rope_scaling=scaling, head_dim=head_dim,
            tie_word_embeddings="output.weight" not in tensors)
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"its metadata describes a model npllama cannot build: {e}") from None
    rotated = _value(path, reader, "llama.rope.dimension_count", config.head_dim)
    if rotated != config.head_dim:
        raise CheckpointError(path, f"rotates {rotated} of each head's {config.head_dim} dimensions; "
                                    f"LLaMA rotates all of them", field="llama.rope.dimension_count")
    return config


# LLaMA-3's published settings (3.1: factor 8; 3.2: factor 32), tried first so that a file made
# from one of Meta's models gets that model's own config back.
_LLAMA3_PUBLISHED = tuple({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192} for factor in (8.0, 32.0))
# Then Meta's low and high factors with an original context a power of two, as a smaller model made
# like LLaMA-3 takes them: where the factors leave the settings open, these are the likelier ones.
_LLAMA3_ORIGINAL_CONTEXTS = tuple(2 ** k for k in range(4, 21))


def _llama3_scaling(path: Path, factors: np.ndarray, head_dim, rope_theta) -> dict:
    """LLaMA-3 rope_scaling settings whose frequencies are the file's: llama.cpp divides pair i's
    frequency by factors[i] (what `npllama export gguf` and llama.cpp's converter write).

    factors[i] is `factor` for slow pairs, 1 for fast ones and, in between, 1 / ((1 - s) / factor + s)
    with s = original_max / (wavelength * (high - low)) - low / (high - low): linear in 1/wavelength.
    The frequencies depend on low_freq_factor, high_freq_factor and original_max only through that
    line's slope and intercept, so when no published setting fits, nor Meta's low and high factors
    with an original context a power of two, settings with the same line are made from them
    (low_freq_factor near 1, original_max a whole number); any settings that reproduce every factor
    give the same model, so with fewer than two pairs in the blend, where the factors leave the
    line open, one that reproduces them is chosen (_blend_line)."""
    from ..ops.rope import rope_inv_freq

    def reproduces(settings) -> bool:
        try:
            scaled = rope_inv_freq(head_dim, rope_theta, {"rope_type": "llama3", **settings})
        except (ValueError, TypeError, ZeroDivisionError):
            return False
        return scaled.shape == factors.shape and np.allclose(plain / scaled, factors, rtol=1e-5, atol=0)

    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    try:
        plain = rope_inv_freq(head_dim, rope_theta)
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"its metadata describes a model npllama cannot build: {e}") from None
    if factors.shape != plain.shape or not np.all(np.isfinite(factors)) or not np.all(factors >= 1):
        raise CheckpointError(path, f"must hold head_dim / 2 = {plain.size} factors >= 1 (LLaMA-3 RoPE "
                                    f"scaling), got {factors.size}", tensor="rope_freqs.weight")
    for settings in _LLAMA3_PUBLISHED:
        if reproduces(settings):
            return {"rope_type": "llama3", **settings}
    factor = float(factors.max())
    for context in _LLAMA3_ORIGINAL_CONTEXTS:
        settings = {**_LLAMA3_PUBLISHED[0], "factor": factor, "original_max_position_embeddings": context}
        if reproduces(settings):
            return {"rope_type": "llama3", **settings}
    if factor > 1:
        slope, intercept = _blend_line(plain / (2 * np.pi), factors, factor)
        if slope > 0 and intercept < 0:
            original_max = max(1, round(-slope / intercept))          # makes low_freq_factor about 1
            span = original_max / slope                               # high - low
            settings = {"factor": factor, "low_freq_factor": float(-intercept * span),
                        "high_freq_factor": float(-intercept * span + span),
                        "original_max_position_embeddings": int(original_max)}
            if reproduces(settings):
                return {"rope_type": "llama3", **settings}
    raise CheckpointError(path, "holds per-pair RoPE factors that no LLaMA-3 rope_scaling settings reproduce: "
                                "load the original Hugging Face folder instead", tensor="rope_freqs.weight")


def _blend_line(x: np.ndarray, factors: np.ndarray, factor: float) -> tuple[float, float]:
    """(slope, intercept) of LLaMA-3's blend s = slope * x + intercept in x = 1 / wavelength, from
    the pairs' factors: through every blended pair's s, below 0 at the scaled pairs (s < 0: fully
    scaled) and above 1 at the kept ones.  Two or more blended pairs fix the line (fitted; checked
    by the caller).  With one or none, as in a small model's few pairs, any such line gives the
    same frequencies: this one puts s = 0 and s = 1 halfway between neighbouring pairs."""
    scaled = factors >= factor * (1 - 1e-5)
    kept = factors <= 1 + 1e-5
    between = ~scaled & ~kept
    s = (1 / factors[between] - 1 / factor) / (1 - 1 / factor)
    if between.sum() >= 2:
        slope, intercept = np.polyfit(x[between], s, 1)
        return float(slope), float(intercept)
    last_scaled = x[scaled].max()                                   # factor > 1: one pair at least
    first_kept = x[kept].min() if kept.any() else 2 * x.max()       # none kept: past the fastest pair
    if not last_scaled < first_kept or not all(last_scaled < x[between]) or not all(x[between] < first_kept):
        return 0.0, 0.0                                             # out of order: no LLaMA-3 blend
    if between.sum() == 0:                                          # s = 0 and 1 at thirds of the gap
        slope = 3 / (first_kept - last_scaled)
        return slope, -slope * (last_scaled + (first_kept - last_scaled) / 3)
    (x_blend,), (s_blend,) = x[between], s
    # steep enough to reach 0 by halfway down to the scaled pairs and 1 by halfway up to the kept ones
    slope = max(s_blend / ((x_blend - last_scaled) / 2), (1 - s_blend) / ((first_kept - x_blend) / 2))
    return slope, s_blend - slope * x_blend


def _decimal(value):
    """A float32 field as the decimal it was written from (1e-05, not 9.99999974e-06), so the
    config equals the original's; anything else as it is (LlamaConfig names a wrong type)."""
    if isinstance(value, float):
        return float(str(np.float32(value)))
    return value


def _hf_name(path: Path, name: str) -> str:
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    parts = name.split(".", 2)   # blk.<N>.<name>
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _HF_LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{_HF_LAYER_NAMES[parts[2]]}"
    raise CheckpointError(path, "is not a LLaMA tensor npllama knows", tensor=name)


def convert_gguf(path, out, dtype=None) -> tuple[Path, bool]:
    """Write a GGUF LLaMA as a Hugging Face folder (config.json, model.safetensors and, when the
    file's vocabulary is SentencePiece's, tokenizer.model and transformers' tokenizer files, the
    file's chat template in tokenizer_config.json; with another vocabulary, no tokenizer and the
    chat template in chat_template.jinja).  Returns (folder, whether it has a
    tokenizer).  dtype: how to store the weights, as for save_hf_folder (None: float32).  An
    existing `out` is replaced whole, except a folder holding `path` (ValueError)."""
    from .atomic import refuse_replacing_inputs
    from .hf import save_hf_folder

    path = Path(path)
    refuse_replacing_inputs(out, [path], name="out")
    reader = _reader(path)     # one reader for the weights and the vocabulary: the file is parsed once
    config, params = _read_model(path, reader, np.dtype(np.float32))
    tokenizer = _value(path, reader, "tokenizer.ggml.model", None) == "llama"
    if tokenizer:
        extra = _tokenizer_files(path, reader, config)
    else:   # no tokenizer files to hold the chat template: its own file, where chat and transformers 5 read it
        template = _chat_template(path, reader, CHAT_TEMPLATE_FILE)
        extra = {} if template is None else {CHAT_TEMPLATE_FILE: template.encode("utf-8")}
    # replaced whole, as documented (the command asks for --force first): no file of another model stays
    save_hf_folder(out, config, params, dtype=dtype, extra_files=extra, keep_other_files=False)
    return Path(out), tokenizer
