"""Export a model to GGUF, the file llama.cpp (and ollama, LM Studio, ...) runs.

    export_gguf("runs/tiny/model", "tiny.gguf")                  # float32
    export_gguf("runs/tiny/model", "tiny-f16.gguf", outtype="f16")   # or "bf16", "q8_0"

Written with the `gguf` package that llama.cpp publishes (pip install 'npllama[gguf]'), with
what llama.cpp's own converter (convert_hf_to_gguf.py) writes for a LLaMA:

* tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output; no
  output with tied embeddings), norms always float32, matrices float32, float16, bfloat16 or
  Q8_0 (quantized by the `gguf` package; a matrix whose rows are not a multiple of Q8_0's
  32-value blocks stays float16, as llama.cpp's converter keeps it);
* q and k permuted back to the interleaved RoPE layout, because llama.cpp's LLaMA pairs adjacent
  values as Meta's checkpoints did (io/rotary_layout.py);
* the shape and hyper-parameters under `llama.*` (context, sizes, heads, kv heads, head size,
  RMSNorm eps, RoPE base, linear RoPE scaling, or LLaMA-3 scaling as a rope_freqs tensor;
  dynamic NTK scaling as plain RoPE, which it is within the context, as llama.cpp's converter
  writes it: llama.cpp has no dynamic scaling);
* the SentencePiece tokenizer as `tokenizer.ggml.*`: every piece, its score and type, BOS /
  EOS / UNK ids, BOS added and EOS not, and the folder's chat template if it has one.  An embedding larger than the tokenizer is padded with
  unused [PADn] pieces, as llama.cpp's converter does.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .atomic import atomic_path
from .hf import CHAT_TEMPLATE_FILE, load_hf_folder
from .safetensors import largest_finite, stays_finite
from .rotary_layout import half_split_to_interleaved
from .sentencepiece_model import UNUSED

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# Hugging Face suffix inside model.layers.N. -> llama.cpp's name inside blk.N.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_tensors(config, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp name -> array (float32), q and k in llama.cpp's interleaved RoPE layout."""
    tensors = {}
    for name, array in params.items():
        if name in _TOP_NAMES:
            tensors[_TOP_NAMES[name]] = array
            continue
        _, _, layer, suffix = name.split(".", 3)  # model.layers.<N>.<suffix>
        if suffix == "self_attn.q_proj.weight":
            array = half_split_to_interleaved(array, config.num_attention_heads)
        elif suffix == "self_attn.k_proj.weight":
            array = half_split_to_interleaved(array, config.num_key_value_heads)
        tensors[f"blk.{layer}.{_LAYER_NAMES[suffix]}"] = array
    if config.rope_scaling is not None and config.rope_scaling["rope_type"] == "llama3":
        from ..ops.rope import rope_inv_freq

        # llama.cpp divides each pair's frequency by this factor.
        plain = rope_inv_freq(config.head_dim, config.rope_theta)
        scaled = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        tensors["rope_freqs.weight"] = plain / scaled
    return {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in tensors.items()}


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, token types) for `vocab_size` ids from an npllama.Tokenizer, types as the
    .model file stores them (SentencePiece's numbering is GGUF's: a USER_DEFINED piece stays one, so
    llama.cpp matches it whole as SentencePiece does); ids past the tokenizer's pieces become [PADn]."""
    sp = tokenizer._sp
    if sp.get_piece_size() > vocab_size:
        raise ValueError(f"the tokenizer has {sp.get_piece_size()} pieces but the model's embedding only "
                         f"{vocab_size} rows: they do not belong together")
    pieces = [sp.id_to_piece(i).encode("utf-8") for i in range(sp.get_piece_size())]
    scores = [float(sp.get_score(i)) for i in range(sp.get_piece_size())]
    types = list(tokenizer.model_info.piece_types)
    for i in range(sp.get_piece_size(), vocab_size):
        pieces.append(f"[PAD{i}]".encode("utf-8"))
        scores.append(-1000.0)
        types.append(UNUSED)
    return pieces, scores, types


def llama_cpp_tokenizer_caveats(tokenizer) -> list[str]:
    """Why llama.cpp would split some text into other ids than `tokenizer.encode` (empty: it splits
    every text alike).  llama.cpp's SentencePiece ("llama") tokenizer merges pieces by score, as
    SentencePiece's BPE does, and rewrites nothing but spaces."""
    caveats = []
    kind = tokenizer.model_info.model_type_name
    if kind != "bpe":
        caveats.append(f"the tokenizer is a SentencePiece {kind} model, but llama.cpp encodes every SentencePiece "
                       f"vocabulary as BPE: it will split much text into other ids than npllama (the weights "
                       f"are exported exactly; give llama.cpp npllama's ids, or train a bpe tokenizer)")
    if tokenizer.model_info.normalizes:
        caveats.append("the tokenizer normalizes text (e.g. NFKC, collapsed spaces), which llama.cpp does not: "
                       "text with such characters or runs of spaces will get other ids than in npllama")
    return caveats


def export_gguf(model_dir, out, *, tokenizer=None, outtype: str = "f32", name: str | None = None,
                progress: bool = False, overwrite: bool = False, flag: str = "model_dir", echo=None) -> Path:
    """Write the Hugging Face folder `model_dir` (with its tokenizer.model) as the GGUF file `out`.

    llama.cpp runs every LLaMA with the causal mask, so a classifier (no LM head) and a masked-LM
    model (trained without the mask) are refused (flag: what the refusal calls `model_dir`).

    tokenizer: a SentencePiece .model (default: tokenizer.model in or beside the folder).
    outtype: "f32", "f16", "bf16" or "q8_0" for the matrices (norms stay float32, as llama.cpp wants).
    name: general.name (default: the folder's name).  progress: a bar while tensors are written.
    overwrite: replace an existing file `out` (else FileExistsError); a folder, or a file the model
    folder is loaded from (its weights, config, tokenizer), is never replaced.
    echo: told what is written, once every check has passed (a refused export says nothing).
    The file is written beside `out` and renamed into place, so a failure never leaves half a file;
    folders `out` lies in that do not exist yet are made.
    """
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF export needs the `gguf` package (llama.cpp's): "
                          "pip install 'npllama[gguf]'") from None
    from ..chat import folder_template_and_file, warn_if_not_jinja
    from ..tokenizer import Tokenizer

    from ..runs import require_a_language_model

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    model_dir, out = Path(model_dir), Path(out)
    # a masked-LM model run causally would silently compute something it was never trained for
    require_a_language_model(model_dir, flag, "llama.cpp (which runs every LLaMA with the causal mask)")
    check_gguf_out(out, model_dir, overwrite, flag="out", force="overwrite=True", tokenizer=tokenizer)
    config, params = load_hf_folder(model_dir, dtype=np.float32)
    tok = Tokenizer(tokenizer) if tokenizer is not None else _checked_gguf_tokenizer(model_dir)[1]
    for caveat in llama_cpp_tokenizer_caveats(tok):
        warnings.warn(caveat, stacklevel=2)
    pieces, scores, types = gguf_vocab(tok, config.vocab_size)
    end_ids = gguf_end_ids(config, tok, pieces)
    tensors = gguf_tensors(config, params)
    check_outtype_holds(tensors, outtype)
    template, template_file = folder_template_and_file(model_dir)   # what llama.cpp's chat mode renders turns with
    if template is not None:
        warn_if_not_jinja(template, f"the chat template in {str(template_file)!r}",
                          "it is written to the GGUF's tokenizer.chat_template as it is (fix it in that file "
                          "for a GGUF whose chat template works)")
    if echo is not None:
        echo(f"exporting {model_dir} to {out} ({outtype}) ...")

    out.parent.mkdir(parents=True, exist_ok=True)   # as convert's --out: its folders are made
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        try:
            _write_metadata(writer, gguf, config, name or model_dir.resolve().name, outtype)
            _write_vocab(writer, tok, pieces, scores, types, end_ids)
            if template is not None:
                writer.add_chat_template(template)
            for tensor_name, array in tensors.items():
                data, raw_dtype = _stored(gguf, array, outtype)
                writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    return out


def gguf_tokenizer(model_dir) -> Path:
    """The SentencePiece tokenizer.model in or beside `model_dir` that the GGUF's vocabulary is
    written from; a FileNotFoundError that says so when the folder has only a tokenizer.json
    (a Hugging Face tokenizers file, which the export does not convert), a ValueError when that
    tokenizer.json adds tokens the tokenizer.model lacks (runs.refuse_tokens_added_beyond)."""
    return _checked_gguf_tokenizer(model_dir)[0]


def _checked_gguf_tokenizer(model_dir):
    """gguf_tokenizer's path and the Tokenizer loaded from it (once: export_gguf writes the vocabulary
    from it)."""
    from ..runs import TOKENIZER_FILE, find_tokenizer, refuse_tokens_added_beyond
    from ..tokenizer import Tokenizer
    from ..tokenizer_json import JSON_FILE

    try:
        path = find_tokenizer(model_dir)
    except FileNotFoundError:
        if (Path(model_dir) / JSON_FILE).is_file():
            raise FileNotFoundError(
                f"{str(model_dir)!r} has a {JSON_FILE} but no {TOKENIZER_FILE} in or beside it: GGUF export "
                f"writes the vocabulary from a SentencePiece {TOKENIZER_FILE} and does not convert a "
                f"{JSON_FILE}") from None
        raise
    tok = Tokenizer(path)
    refuse_tokens_added_beyond(model_dir, tok)   # `export gguf` hands the path to export_gguf
    return path, tok


def check_gguf_out(out: Path, model_dir: Path | None, overwrite: bool, flag: str = "out",
                   force: str = "overwrite=True", tokenizer=None) -> None:
    """Refuse an `out` that is a folder, one of the files `model_dir` is loaded from (or the
    `tokenizer` given for it), or (without `overwrite`) any existing file.  `flag`, `force`: how
    the caller names the path and the override."""
    from .atomic import refuse_a_file_above

    out = Path(out)
    refuse_a_file_above(out, flag)
    if out.is_dir():
        raise IsADirectoryError(f"{flag} {str(out)!r} is a folder: give the path of the .gguf file to write, "
                                f"e.g. {str(out / 'model.gguf')!r}")
    if model_dir is not None and out.exists() and any(
            f.exists() and os.path.samefile(f, out)
            for f in _files_read_from(Path(model_dir)) + ([Path(tokenizer)] if tokenizer is not None else [])):
        raise FileExistsError(f"{flag} {str(out)!r} is a file of the model being exported: choose "
                              f"another path for the .gguf file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{flag} {str(out)!r} exists: pass {force} to replace it, or choose another path")


def _files_read_from(model_dir: Path) -> list[Path]:
    """The files an export of `model_dir` reads: its weights (the shards its index names too,
    whatever their names), config, index and tokenizer files, and the tokenizer.model found in or
    beside it (a run's)."""
    from ..runs import find_tokenizer
    from .hf import INDEX_NAME, shards_named_by

    names = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.model",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", CHAT_TEMPLATE_FILE)
    files = [model_dir / name for name in names] + sorted(model_dir.glob("*.safetensors"))
    files += [model_dir / shard for shard in shards_named_by(model_dir / INDEX_NAME)]
    with contextlib.suppress(FileNotFoundError):
        files.append(find_tokenizer(model_dir))
    return files


Q8_0_LEVELS = 127     # a Q8_0 block stores int8 values times one float16 scale, its largest |value| / 127


def check_outtype_holds(tensors: dict, outtype: str) -> None:
    """Every finite matrix entry stays finite in the file: float16 holds nothing past 65504 (a Q8_0
    block's float16 scale nothing past 65504 * 127, and a matrix whose rows are no multiple of 32 is
    float16 there), bfloat16 nothing past 3.39e38.  A weight beyond would be written as inf: a file
    llama.cpp runs to NaN.  Checked with the safetensors writer's rounding, which is IEEE's, as
    numpy's float16 cast and gguf's bfloat16 are."""
    for name, array in tensors.items():
        if array.ndim != 2 or outtype == "f32":      # vectors are written float32, as loaded
            continue
        largest = largest_finite(array)
        blocked = outtype == "q8_0" and array.shape[1] % 32 == 0
        stored, kind = ((largest / Q8_0_LEVELS, "f16") if blocked else
                        (largest, "bf16" if outtype == "bf16" else "f16"))
        if not stays_finite(stored, np.float32, kind):
            room = "bf16 (float32's range) or " if outtype != "bf16" else ""
            raise ValueError(f"tensor {name!r} holds {largest:.6g}, which outtype {outtype!r} would write as "
                             f"inf; export with outtype {room}'f32'")


def _stored(gguf, array: np.ndarray, outtype: str):
    """(data, raw_dtype) for writer.add_tensor: a matrix as `outtype`, a vector float32."""
    if array.ndim != 2 or outtype == "f32":
        return array, None
    if outtype == "q8_0" and array.shape[1] % 32 == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    if outtype == "bf16":
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    return array.astype(np.float16), None


def _write_metadata(writer, gguf, config, name: str, outtype: str) -> None:
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    if config.rope_scaling is not None and config.rope_scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])


# Pieces whose text says which end a GGUF field should name (llama.cpp's vocabulary loader takes
# these texts, among others -- <|end|>, <|endoftext|>, <EOT>, ... -- for its end of turn and end of
# message where a file names none)
END_OF_TURN_PIECES = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
END_OF_MESSAGE_PIECES = ("<|eom_id|>",)


class EndIds(NamedTuple):
    """Where a model's end ids go in a GGUF."""

    eos: int | None   # tokenizer.ggml.eos_token_id: the tokenizer's end piece if the model ends there, else its first end id
    eot: int | None   # tokenizer.ggml.eot_token_id (the end of a turn: LLaMA-3's <|eot_id|>)
    eom: int | None   # tokenizer.ggml.eom_token_id (the end of a message to a tool: LLaMA-3.1's <|eom_id|>)


def gguf_end_ids(config, tok, pieces: list[bytes]) -> EndIds:
    """The ids config.eos_token_id lists besides the tokenizer's end piece, placed in the GGUF
    fields llama.cpp stops at besides eos_token_id: an id whose piece (in `pieces`, the GGUF's) is
    an end of turn or of a message by its text goes to that field, the others fill the fields left
    in their order.  An id with no field left is warned about, naming it (the model is still
    right to export).  eos_token_id is the tokenizer's end piece when the model ends there, else the
    model's first end id: a GGUF's reader stops at eos_token_id, and the model does not stop at a
    piece that is not among its end ids (converted back, it would gain that id)."""
    ends = config.end_ids
    eos = tok.eos_id if tok.eos_id in ends or not ends else ends[0]
    others = [i for i in dict.fromkeys(ends) if i != eos]
    text = {i: pieces[i].decode("utf-8", "replace") for i in others}
    placed = {}
    for field, known in (("eot", END_OF_TURN_PIECES), ("eom", END_OF_MESSAGE_PIECES)):
        placed[field] = next((i for i in others if text[i] in known), None)
    rest = [i for i in others if i not in placed.values()]
    for field in placed:
        if placed[field] is None and rest:
            placed[field] = rest.pop(0)
    if rest:
        unwritten = ", ".join(f"{i} {text[i]!r}" for i in rest)
        plural = len(rest) > 1
        warnings.warn(f"eos_token_id lists {len(config.end_ids)} end ids {list(config.end_ids)}; a GGUF records "
                      f"end ids in tokenizer.ggml.eos_token_id ({eos}), eot_token_id ({placed['eot']}) and "
                      f"eom_token_id ({placed['eom']}) only: end id{'s' * plural} {', '.join(map(str, rest))} "
                      f"{'are' if plural else 'is'} not recorded in the GGUF's metadata -- llama.cpp stops at "
                      f"{'each' if plural else 'it'} only if it recognises its piece's text as an end of "
                      f"generation ({unwritten})", stacklevel=3)
    return EndIds(eos, **placed)


def _write_vocab(writer, tok, pieces, scores, types, end_ids: EndIds) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for add, token_id in ((writer.add_bos_token_id, tok.bos_id), (writer.add_eos_token_id, end_ids.eos),
                          (writer.add_unk_token_id, tok.unk_id), (writer.add_pad_token_id, tok.pad_id),
                          (writer.add_eot_token_id, end_ids.eot), (writer.add_eom_token_id, end_ids.eom)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(tok.bos_id is not None)
    writer.add_add_eos_token(False)
    # llama.cpp's default for a "llama" vocabulary is to add the space; a model trained without it
    # (add_dummy_prefix=False) must say so, or every text gains a leading "▁".
    writer.add_add_space_prefix(tok.adds_dummy_prefix)
