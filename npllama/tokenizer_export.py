"""The files that let transformers read npllama's SentencePiece tokenizer with the same ids.

A model folder gets, beside tokenizer.model:

* tokenizer.json -- the same vocabulary and merges as a Hugging Face `tokenizers` pipeline that
  behaves as SentencePiece does (a "▁" put before the text and before the text after each control
  piece, spaces written as "▁", byte fallback; <s> added by the post-processor), written in plain
  Python, so neither protobuf nor the tokenizers library is needed to save it;
* tokenizer_config.json -- the special tokens, add_bos_token, the context length, a chat template;
* special_tokens_map.json.

transformers' AutoTokenizer then loads tokenizer.json as it is (PreTrainedTokenizerFast), instead of
converting tokenizer.model with its own rules (which in transformers 5 differ from SentencePiece
on text that starts with a space, and drop its normalizer).  A normalizing model (SentencePiece's
default nmt_nfkc: full-width letters, ligatures, compatibility characters to their NFKC forms,
odd spaces to " ", runs of spaces collapsed) keeps its normalizer: the character map SentencePiece
compiled its rules into, which the `tokenizers` library applies as SentencePiece does
("Precompiled"), and the collapsing of spaces.  tokenizer.json is written for BPE or unigram
models with the dummy-prefix space; others travel as tokenizer.model with a LlamaTokenizer config.
"""
from __future__ import annotations

import base64
import json

from .io.sentencepiece_model import MODEL_TYPE_BPE, SPACE



def hf_tokenizer_files(tokenizer, chat_template: str | None = None,
                       model_max_length: int | None = None, pad_id: int | None = None) -> dict[str, bytes]:
    """{file name: bytes} for a model folder (see the module docstring).  pad_id: the id a model
    pads with when the tokenizer has no pad piece (a classifier pads with </s>), named as the
    pad_token so that transformers pads with it too."""
    if chat_template is not None and not isinstance(chat_template, str):
        raise TypeError(f"chat_template must be a str (a Jinja template), got {type(chat_template).__name__}")
    if model_max_length is not None and (isinstance(model_max_length, bool) or not isinstance(model_max_length, int)
                                         or model_max_length < 1):
        raise ValueError(f"model_max_length must be None or a positive int, got {model_max_length!r}")
    sp = tokenizer._sp
    special = {name: sp.id_to_piece(token_id) for name, token_id in
               (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("unk_token", tokenizer.unk_id),
                ("pad_token", tokenizer.pad_id if tokenizer.pad_id is not None else pad_id))
               if token_id is not None}
    pipeline = tokenizer_json(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast" if pipeline else "LlamaTokenizer",
        **special,
        "pad_token": special.get("pad_token"),
        "add_bos_token": tokenizer.bos_id is not None,
        "add_eos_token": False,
        "add_prefix_space": tokenizer.adds_dummy_prefix,
        "legacy": True,     # a dummy-prefix space after each control piece too, as SentencePiece per segment
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in _added_tokens(tokenizer)},
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if chat_template is not None:
        config["chat_template"] = chat_template
    files = {"tokenizer.model": tokenizer.model_bytes, "tokenizer_config.json": _json_bytes(config),
             "special_tokens_map.json": _json_bytes(special)}
    if pipeline:
        files["tokenizer.json"] = _json_bytes(pipeline)
    return files


def tokenizer_json(tokenizer) -> dict | None:
    """The tokenizers pipeline of a SentencePiece model, or None if it cannot be reproduced."""
    sp = tokenizer._sp
    info = tokenizer.model_info
    if not tokenizer.adds_dummy_prefix or not info.escape_whitespaces:
        return None
    size = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(size)]
    normal = [i for i in range(size) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    if tokenizer.model_info.model_type == MODEL_TYPE_BPE:   # what the .model says it is
        model = {"type": "BPE", "dropout": None, "unk_token": pieces[tokenizer.unk_id],
                 "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                 "byte_fallback": True, "ignore_merges": False,
                 "vocab": {piece: i for i, piece in enumerate(pieces)}, "merges": _bpe_merges(sp, pieces, normal)}
    else:
        model = {"type": "Unigram", "unk_id": tokenizer.unk_id, "byte_fallback": True,
                 "vocab": [[piece, float(sp.get_score(i))] for i, piece in enumerate(pieces)]}
    bos = tokenizer.bos_id
    post = None
    if bos is not None:
        name = pieces[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name: {"id": name, "ids": [bos], "tokens": [name]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(tokenizer),
        "normalizer": {"type": "Sequence", "normalizers": _normalizers(info) + [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": model,
    }


def _bpe_merges(sp, pieces: list[str], normal: list[int]) -> list[list[str]]:
    """SentencePiece BPE merges two pieces into the one with the best score first: as a merge
    list, every split of a piece into two known pieces, ordered by the merged piece's score."""
    vocab = {pieces[i]: i for i in normal}
    merges = []
    for i in normal:
        piece = pieces[i]
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((-sp.get_score(i), i, left, right) for left, right in splits)
    merges.sort(key=lambda m: (m[0], m[1]))
    return [[left, right] for _, _, left, right in merges]


def _added_tokens(tokenizer) -> list[dict]:
    """<unk> and the control pieces (<s>, </s>, [INST], ...), special; the user-defined pieces
    (SentencePiece's user_defined_symbols), not special, so decode keeps their text: all matched
    as whole tokens, as SentencePiece matches them."""
    sp = tokenizer._sp
    special = {tokenizer.unk_id, *tokenizer.control_pieces.values()}
    whole = set(tokenizer._whole_pieces.values())   # those and the user-defined ones, as encode matches them
    return [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": i in special} for i in sorted(whole)]


def _normalizers(info) -> list[dict]:
    """SentencePiece's normalizer, before its dummy prefix and "▁": the character map, then (with
    remove_extra_whitespaces) no space at either end and none twice in a row."""
    steps = []
    if info.precompiled_charsmap:
        steps.append({"type": "Precompiled",
                      "precompiled_charsmap": base64.b64encode(info.precompiled_charsmap).decode("ascii")})
    if info.remove_extra_whitespaces:
        # \A, \z: the ends of the text (the tokenizers library's ^ and $ also match at each newline)
        steps += [{"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    return steps


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
