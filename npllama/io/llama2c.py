"""llama2.c checkpoints (`model.bin`): read them into npllama, or convert them to a Hugging Face folder.

    model = load_llama2c("stories15M.bin")                      # a Llama, ready to run
    convert_llama2c("stories15M.bin", "stories15M-hf", tokenizer="tokenizer.bin")

Three formats, as karpathy/llama2.c writes them (export.py) and reads them (run.c, runq.c):

* legacy (version 0, what run.c reads): a header of 7 int32 -- dim, hidden_dim, n_layers,
  n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier is not
  shared with the embedding -- then float32 weights in run.c's order: embedding, per-layer
  attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, two RoPE tables
  (seq_len * head_size / 2 floats each, unused), and the classifier if unshared.
* version 1 (float32): uint32 magic 0x616b3432 ("ak42"), int32 version, the same 7 int32, a
  byte "shared classifier", zeros up to 256 bytes; then the norms first (attention, ffn,
  final), embedding, wq, wk, wv, wo, w1, w2, w3, classifier if unshared.
* version 2 (int8 Q8_0, what runq.c reads): the version-1 header plus an int32 group size at
  byte 37; the norms in float32, then each other tensor as int8 values followed by one float32
  scale per group of `group_size` values (value = int8 * scale).

Every length is checked against the file's size before anything is read, and a file whose
size does not match its header is refused (CheckpointError, naming the file).

The model is LLaMA exactly (RMSNorm eps 1e-5, RoPE theta 10000, SwiGLU w2(silu(w1 x) * w3 x)),
but llama2.c pairs adjacent values for RoPE, Meta's layout, where npllama (like Hugging Face)
pairs the two halves of each head: wq and wk are permuted on the way in (io/rotary_layout.py).
w1, w2, w3 are gate_proj, down_proj, up_proj.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from .errors import CheckpointError
from .rotary_layout import interleaved_to_half_split

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
VERSIONED_HEADER_BYTES = 256
LEGACY_HEADER_BYTES = 7 * 4
FORMATS = {0: "legacy float32", 1: "version 1 float32", 2: "version 2 int8 Q8_0"}
# What run.c hard-codes.
RMS_NORM_EPS = 1e-5
ROPE_THETA = 10000.0
BOS_ID, EOS_ID = 1, 2


@dataclass(frozen=True)
class Llama2cHeader:
    """What a llama2.c checkpoint's header says (version 0 = the legacy format)."""
    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    group_size: int | None = None  # version 2 only

    @property
    def head_size(self) -> int:
        """dim // n_heads: the size of one attention head."""
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        """head_size * n_kv_heads: the output size of the key and value projections."""
        return self.head_size * self.n_kv_heads

    def to_config(self) -> LlamaConfig:
        """The LlamaConfig of this header's model (llama2.c's eps and rope theta, BOS and EOS ending a text)."""
        # run.c ends a generation at BOS, not EOS: llama2.c trains on texts each opened by BOS and
        # closed by nothing, so its models end a story with BOS.  EOS ends one too, as in models
        # trained with it.
        ends = [token for token in (EOS_ID, BOS_ID) if token < self.vocab_size]
        special = {"bos_token_id": BOS_ID if BOS_ID < self.vocab_size else None,
                   "eos_token_id": ends if len(ends) > 1 else (ends or [None])[0]}
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.dim, intermediate_size=self.hidden_dim,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads, max_position_embeddings=self.seq_len,
            rms_norm_eps=RMS_NORM_EPS, rope_theta=ROPE_THETA,
            tie_word_embeddings=self.shared_classifier, **special)

    def tensors(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(llama2.c name, shape, how stored) in file order; how: 'f32', 'q8' or 'skip' (float32
        bytes to step over).  Per-layer tensors have the layer count as their first dimension."""
        D, H, L, V, KV = self.dim, self.hidden_dim, self.n_layers, self.vocab_size, self.kv_dim
        matrices = [("wq", (L, D, D)), ("wk", (L, KV, D)), ("wv", (L, KV, D)), ("wo", (L, D, D)),
                    ("w1", (L, H, D)), ("w2", (L, D, H)), ("w3", (L, H, D))]
        classifier = [] if self.shared_classifier else [("wcls", (V, D))]
        if self.version == 0:
            rope_table = (self.seq_len * self.head_size // 2,)
            layout = [("token_embedding_table", (V, D), "f32"), ("rms_att_weight", (L, D), "f32"),
                      *[(n, s, "f32") for n, s in matrices[:4]], ("rms_ffn_weight", (L, D), "f32"),
                      *[(n, s, "f32") for n, s in matrices[4:]], ("rms_final_weight", (D,), "f32"),
                      ("freq_cis_real", rope_table, "skip"), ("freq_cis_imag", rope_table, "skip")]
            return layout + [(n, s, "f32") for n, s in classifier]
        norms = [("rms_att_weight", (L, D), "f32"), ("rms_ffn_weight", (L, D), "f32"),
                 ("rms_final_weight", (D,), "f32")]
        kind = "f32" if self.version == 1 else "q8"
        return norms + [(n, s, kind) for n, s in [("token_embedding_table", (V, D)), *matrices, *classifier]]

    def data_offset(self) -> int:
        """Where the weights start in the file: after the legacy header (version 0) or the versioned one."""
        return LEGACY_HEADER_BYTES if self.version == 0 else VERSIONED_HEADER_BYTES

    def file_size(self) -> int:
        """The exact size in bytes of a checkpoint with this header."""
        return self.data_offset() + sum(_stored_bytes(shape, how, self.group_size)
                                        for _, shape, how in self.tensors())


# ----- reading ------------------------------------------------------------------------------------

def read_llama2c_header(path) -> Llama2cHeader:
    """Parse and check the header of a llama2.c checkpoint (any of the three formats)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"llama2.c checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(VERSIONED_HEADER_BYTES)
    if len(head) < LEGACY_HEADER_BYTES:
        raise CheckpointError(path, f"is {len(head)} bytes, too short for a llama2.c header "
                                    f"({LEGACY_HEADER_BYTES} bytes at least)")
    (magic,) = struct.unpack_from("<I", head, 0)
    if magic == MAGIC:
        header = _versioned_header(path, head)
    else:
        fields = struct.unpack_from("<7i", head, 0)
        vocab_size = fields[5]
        header = Llama2cHeader(0, *fields[:5], abs(vocab_size), fields[6], shared_classifier=vocab_size > 0)
    _check_header(path, header)
    return header


def looks_like_llama2c(path) -> bool:
    """Whether `path` is a file whose header reads as a valid llama2.c checkpoint (its size checked
    too): what Llama.from_pretrained uses to pick this reader over a Hugging Face folder."""
    try:
        return Path(path).is_file() and read_llama2c_header(path) is not None
    except (CheckpointError, OSError, ValueError, TypeError, struct.error):
        return False


def _versioned_header(path: Path, head: bytes) -> Llama2cHeader:
    if len(head) < VERSIONED_HEADER_BYTES:
        raise CheckpointError(path, f"has the llama2.c magic \"ak42\" but only {len(head)} bytes, "
                                    f"less than the {VERSIONED_HEADER_BYTES}-byte header")
    (version,) = struct.unpack_from("<i", head, 4)
    if version not in (1, 2):
        raise CheckpointError(path, f"llama2.c format version {version} is not supported (npllama "
                                    f"reads the legacy format, version 1 float32 and version 2 int8)",
                              field="version")
    fields = struct.unpack_from("<7i", head, 8)
    shared = head[36]
    if shared not in (0, 1):
        raise CheckpointError(path, f"the shared-classifier flag must be 0 or 1, got {shared}",
                              field="shared_classifier")
    group_size = struct.unpack_from("<i", head, 37)[0] if version == 2 else None
    return Llama2cHeader(version, *fields, shared_classifier=bool(shared), group_size=group_size)


def _check_header(path: Path, h: Llama2cHeader) -> None:
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    for name in names:
        if getattr(h, name) <= 0:
            raise CheckpointError(path, f"must be positive, got {getattr(h, name)} (is this a "
                                        f"llama2.c checkpoint?)", field=name)
    if h.dim % h.n_heads or h.head_size % 2:
        raise CheckpointError(path, f"dim ({h.dim}) must be n_heads ({h.n_heads}) times an even head "
                                    f"size", field="dim")
    if h.n_heads % h.n_kv_heads:
        raise CheckpointError(path, f"n_kv_heads ({h.n_kv_heads}) must divide n_heads ({h.n_heads})",
                              field="n_kv_heads")
    if h.version == 2:
        if h.group_size <= 0:
            raise CheckpointError(path, f"must be positive, got {h.group_size}", field="group_size")
        for name, shape, how in h.tensors():
            if how == "q8" and int(np.prod(shape[1:] if len(shape) == 3 else shape)) % h.group_size:
                raise CheckpointError(path, f"{name} {shape} does not split into groups of "
                                            f"{h.group_size}", field="group_size")
    try:
        config = h.to_config()  # the sizes npllama accepts at all
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"the header describes a model npllama cannot build: {e}") from None
    expected, actual = h.file_size(), path.stat().st_size
    if expected != actual:
        raise CheckpointError(path, f"is {actual:,} bytes, but its {FORMATS[h.version]} header "
                                    f"({h.n_layers} layers, dim {h.dim}, vocab {h.vocab_size}) needs "
                                    f"exactly {expected:,}: truncated, or not a llama2.c checkpoint")
    from .hf import _check_memory_budget

    _check_memory_budget(path, config, np.dtype(np.float32))


def read_llama2c(path, dtype=np.float32) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """(config, params) from a llama2.c checkpoint: params in npllama's (Hugging Face) names and
    layouts, q and k permuted to the half-split RoPE layout, each array of `dtype`."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype}")
    header = read_llama2c_header(path)
    path = Path(path)
    raw: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        f.seek(header.data_offset())
        for name, shape, how in header.tensors():
            if how == "skip":
                f.seek(_stored_bytes(shape, how, None), 1)
            elif how == "f32":
                raw[name] = _read_exact(f, path, name, "<f4", int(np.prod(shape))).reshape(shape)
            else:
                raw[name] = _read_q8(f, path, name, shape, header.group_size)
    config = header.to_config()
    return config, _to_hf_params(raw, header, config, dtype)


def load_llama2c(path, dtype=np.float32):
    """A `Llama` with the weights of a llama2.c checkpoint (legacy, version 1 or version 2)."""
    from ..model import Llama

    config, params = read_llama2c(path, dtype=dtype)
    return Llama(config, dtype=dtype, params=params)


def _read_exact(f, path: Path, name: str, dtype: str, count: int) -> np.ndarray:
    array = np.fromfile(f, dtype=dtype, count=count)
    if array.size != count:  # the size was checked; a file changing under us still ends here
        raise CheckpointError(path, f"ended inside {name}", tensor=name)
    return array


def _read_q8(f, path: Path, name: str, shape: tuple[int, ...], group_size: int) -> np.ndarray:
    """One Q8_0 tensor (or one per layer): int8 values then float32 scales, dequantised."""
    per_layer = len(shape) == 3
    parts = []
    for _ in range(shape[0] if per_layer else 1):
        size = int(np.prod(shape[1:] if per_layer else shape))
        values = _read_exact(f, path, name, "i1", size).astype(np.float32)
        scales = _read_exact(f, path, name, "<f4", size // group_size)
        parts.append((values.reshape(-1, group_size) * scales[:, None]).reshape(-1))
    return np.concatenate(parts).reshape(shape)


def _stored_bytes(shape: tuple[int, ...], how: str, group_size: int | None) -> int:
    size = int(np.prod(shape))
    return size + 4 * (size // group_size) if how == "q8" else 4 * size


# llama2.c's per-layer tensors -> the Hugging Face name inside model.layers.<i>.
_LAYER_NAMES = {
    "rms_att_weight": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
    "rms_ffn_weight": "post_attention_layernorm.weight", "w1": "mlp.gate_proj.weight",
    "w3": "mlp.up_proj.weight", "w2": "mlp.down_proj.weight",
}


def _to_hf_params(raw: dict, h: Llama2cHeader, config: LlamaConfig, dtype) -> dict[str, np.ndarray]:
    def take(name):  # as `dtype`, and out of `raw`, so at most one extra copy is alive at a time
        return np.ascontiguousarray(raw.pop(name), dtype=dtype)

    params = {"model.embed_tokens.weight": take("token_embedding_table"),
              "model.norm.weight": take("rms_final_weight")}
    if not h.shared_classifier:
        params["lm_head.weight"] = take("wcls")
    for name, hf_name in _LAYER_NAMES.items():
        stacked = take(name)  # (n_layers, ...)
        for i in range(h.n_layers):
            weight = stacked[i]
            if name == "wq":
                weight = interleaved_to_half_split(weight, h.n_heads)
            elif name == "wk":
                weight = interleaved_to_half_split(weight, h.n_kv_heads)
            params[f"model.layers.{i}.{hf_name}"] = weight
    return {name: params[name] for name in config.param_shapes()}


# ----- converting ---------------------------------------------------------------------------------

def convert_llama2c(checkpoint, out, tokenizer=None, dtype=None) -> Path:
    """Write a llama2.c checkpoint as a Hugging Face folder (config.json, model.safetensors and,
    given a tokenizer, tokenizer.model) that `Llama.from_pretrained`, `npllama generate --model`
    and transformers load.  Returns the folder.  An existing `out` is replaced whole, except a
    folder holding the checkpoint or the tokenizer (ValueError: replacing it would delete them).

    tokenizer: None, llama2.c's tokenizer.bin (converted, see io/llama2c_tokenizer.py), or a
        SentencePiece .model file (copied); its vocabulary must be the model's.
    dtype: how to store the weights, as for save_hf_folder (None: float32, llama2.c's own).
    """
    from .atomic import refuse_replacing_inputs
    from .hf import save_hf_folder

    refuse_replacing_inputs(out, [checkpoint] + ([] if tokenizer is None else [tokenizer]), name="out")
    config, params = read_llama2c(checkpoint)
    extra = {} if tokenizer is None else {"tokenizer.model": tokenizer_model_bytes(tokenizer, config.vocab_size)}
    # replaced whole, as documented (the command asks for --force first): no file of another model stays
    save_hf_folder(out, config, params, dtype=dtype, extra_files=extra, keep_other_files=False)
    return Path(out)


def tokenizer_model_bytes(path, vocab_size: int) -> bytes:
    """A SentencePiece model's bytes from `path`: a .model file as it is, anything else read as
    llama2.c's tokenizer.bin.  Either must have exactly `vocab_size` pieces."""
    path = Path(path)
    if path.suffix == ".model":
        from ..tokenizer import Tokenizer

        sentencepiece = Tokenizer(path)
        if sentencepiece.vocab_size != vocab_size:
            raise CheckpointError(path, f"has {sentencepiece.vocab_size} pieces, but the model's "
                                        f"vocabulary has {vocab_size}: this tokenizer was made for another model")
        return sentencepiece.model_bytes
    from .llama2c_tokenizer import llama2c_tokenizer_to_sentencepiece

    return llama2c_tokenizer_to_sentencepiece(path, vocab_size)
