"""The tokenizer travels with a model folder: transformers reads it with the same ids, folders with
only a tokenizer.json load, padded embeddings are accepted, control pieces encode as their ids."""
import json
import sys
import warnings

import pytest

from npllama import Llama, LlamaConfig
from npllama.corpus import make_default_corpus
from npllama.runs import load_model_and_tokenizer, load_tokenizer
from npllama.tokenizer import Tokenizer

VOCAB = 400
TEXTS = ["Once upon a time, Lily saw a red ball.", "two\nlines\n\nand  double  spaces", "digits 12345 and 7",
         "naïve café 日本 ☃ 🙂", "", " ", "\n", " leading space", "\tTab", "Tom said: \"Hi!\"",
         "[INST] Hello [/INST] Hi there</s>", "<s>[INST]x[/INST] y", "a</s>b", "[INST]\nfoo", "end with space ",
         "<unk> is text", "ｆｕｌｌ ½ ﬁ", "<|im_start|>user\nhi<|im_end|>\n", "a <|im_end|> b<|im_start|>"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small LLaMA-style tokenizer with Mistral-v3-like control pieces [INST] and [/INST], and
    ChatML-like user-defined pieces <|im_start|> and <|im_end|> (SentencePiece's user_defined_symbols)."""
    texts = make_default_corpus(300, seed=0) + ["naïve café 2024"]
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "t", VOCAB,
                           control_symbols=["[INST]", "[/INST]"], user_defined_symbols=["<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory):
    """A model folder saved the way npllama saves one: model + tokenizer.model."""
    path = tmp_path_factory.mktemp("model") / "m"
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    Llama(config, seed=0).save_pretrained(path, extra_files={"tokenizer.model": tok.model_bytes})
    return path


# ----- control pieces ---------------------------------------------------------------------------
def test_control_pieces_encode_as_their_ids(tok):
    inst, end = tok.piece_to_id("[INST]"), tok.piece_to_id("[/INST]")
    assert tok.control_pieces["[INST]"] == inst and tok.control_pieces["</s>"] == tok.eos_id
    ids = tok.encode("[INST] Hello [/INST] Hi", bos=True)
    assert ids[:2] == [tok.bos_id, inst] and end in ids
    assert ids.count(inst) == 1
    # the text between the pieces is encoded as SentencePiece encodes it alone (llama.cpp, mistral-common)
    assert ids[2:ids.index(end)] == tok.encode(" Hello ", bos=False)
    assert tok.encode("a</s>", bos=False)[-1] == tok.eos_id
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_user_defined_pieces_cut_the_text_as_control_pieces_do(tok):
    """As transformers and llama.cpp encode them: the piece's id, and the text after it encoded
    alone (its own dummy-prefix space), where SentencePiece would go on inside one text."""
    start, end = tok.piece_to_id("<|im_start|>"), tok.piece_to_id("<|im_end|>")
    assert tok.model_info.piece_types[start] == tok.model_info.piece_types[end] == 4   # USER_DEFINED
    assert tok.encode("<|im_start|>user x<|im_end|> y", bos=False) == (
        [start] + tok.encode("user x", bos=False) + [end] + tok.encode(" y", bos=False))
    assert tok.decode(tok.encode("<|im_start|>user x<|im_end|>")) == "<|im_start|> user x<|im_end|>"
    assert "<|im_start|>" not in tok.control_pieces   # not special: decode keeps its text


def test_text_without_control_pieces_is_sentencepieces(tok):
    import sentencepiece as spm

    raw = spm.SentencePieceProcessor(model_proto=tok.model_bytes)
    for text in TEXTS[:6]:
        assert tok.encode(text) == raw.encode(text, add_bos=True)


# ----- a larger embedding than the vocabulary -------------------------------------------------------
def test_padded_embedding_is_accepted_with_a_warning(tok):
    with pytest.warns(UserWarning, match=r"464 rows.*vocab_size 400.*64 extra rows"):
        tok.check_vocab(VOCAB + 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.check_vocab(VOCAB)
    with pytest.raises(ValueError, match="vocab_size 400 but the model has vocab_size 300"):
        tok.check_vocab(300)


def test_a_padded_model_loads_and_generates_only_real_ids(tok, tmp_path):
    config = LlamaConfig(vocab_size=VOCAB + 64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = Llama(config, seed=0)
    model.params["lm_head.weight"][VOCAB:] += 50.0   # the padding rows would win every argmax
    model.save_pretrained(tmp_path / "padded", extra_files={"tokenizer.model": tok.model_bytes})
    with pytest.warns(UserWarning, match="extra rows"):
        model, tokenizer, _ = load_model_and_tokenizer(tmp_path / "padded")
    from npllama.generate import generate

    ids = generate(model, tokenizer.encode("Once"), 8, temperature=0.0, vocab_size=tokenizer.vocab_size)
    assert max(ids) < VOCAB
    tokenizer.decode(ids)


# ----- saved folders describe their tokenizer ------------------------------------------------------
def test_saved_folder_has_tokenizer_config(folder, tok):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert special == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert config["model_max_length"] == 64 and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer.model").is_file()
    assert config["added_tokens_decoder"][str(tok.piece_to_id("[INST]"))]["content"] == "[INST]"


def assert_same_as_npllama(tok, texts, encode, decode, decodes_unk=True):
    """decodes_unk=False: a decoder of transformers' own, which drops <unk> where SentencePiece
    (and every npllama tokenizer) writes " ⁇ "."""
    for text in texts:
        ids = tok.encode(text)
        assert encode(text) == ids, text
        if decodes_unk or tok.unk_id not in ids:
            assert decode(ids) == tok.decode(ids), text


def stories_and_texts():
    return TEXTS + make_default_corpus(200, seed=5) + ["  ".join(make_default_corpus(3, seed=6)), "x" * 300]


def test_saved_tokenizer_json_gives_npllamas_ids(folder, tok):
    """Read by the tokenizers library alone: no transformers, no protobuf."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert_same_as_npllama(tok, stories_and_texts(), lambda text: hf.encode(text).ids, hf.decode, decodes_unk=False)


def test_autotokenizer_gives_npllamas_ids(folder, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert_same_as_npllama(tok, stories_and_texts(), lambda text: hf(text)["input_ids"],
                           lambda ids: hf.decode(ids, skip_special_tokens=True), decodes_unk=False)


def test_naming_the_llamatokenizer_class_loses_a_leading_space_as_the_readme_says(folder, tok):
    """transformers 5's LlamaTokenizer.from_pretrained builds its own pipeline, not the folder's
    tokenizer.json: its Metaspace puts no "▁" before a text that starts with a space, where
    SentencePiece (and AutoTokenizer here) does.  The README says so; this keeps it true."""
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.LlamaTokenizer.from_pretrained(str(folder))
    assert hf("Once upon a time\n the end")["input_ids"] == tok.encode("Once upon a time\n the end")
    space = tok.piece_to_id("\u2581")
    assert tok.encode(" a")[:2] == [tok.bos_id, space] and hf(" a")["input_ids"] == tok.encode("a")


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tokenizer_json_of_other_trainings(model_type, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    texts = make_default_corpus(150, seed=1)
    other = Tokenizer.train(texts, tmp_path / model_type, 330, model_type=model_type, split_digits=False)
    hf = tokenizers.Tokenizer.from_str(other.hf_files()["tokenizer.json"].decode())
    assert_same_as_npllama(other, TEXTS + texts[:50], lambda text: hf.encode(text).ids, hf.decode, decodes_unk=False)


# What SentencePiece's nmt_nfkc rewrites: full-width letters and digits, a ligature, compatibility
# characters, no-break and ideographic spaces, a combining accent; and runs of spaces.
NORMALIZED = ["ＡＢＣ１２３", "ﬁne ﬁsh", "① ㎏", "cafe\u0301 café", "a\u00a0b c\u3000d", "  two  spaces  ",
              "a \n b\t\tc", "Ｘ<s>  Ｙ</s>  z", " ", ""]


@pytest.mark.parametrize("options", [
    dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),   # SentencePiece's defaults
    dict(normalization_rule_name="nmt_nfkc"),
    dict(remove_extra_whitespaces=True, model_type="unigram"),
], ids=["sentencepiece-defaults", "nfkc", "collapsed-spaces-unigram"])
def test_a_normalizing_tokenizer_travels_with_its_normalizer(options, tmp_path):
    """tokenizer.json carries SentencePiece's normalizer (its compiled character map, the collapsed
    spaces), so transformers and JsonTokenizer give SentencePiece's ids; it used to be left out,
    and transformers read tokenizer.model without the normalizer (or not at all, lacking protobuf)."""
    tokenizers = pytest.importorskip("tokenizers")
    texts = make_default_corpus(150, seed=0) + ["ＡＢＣ１２３ ﬁne ① ㎏ café a\u00a0b c\u3000d"] * 3
    tok = Tokenizer.train(texts, tmp_path / "t", 330, **options)
    if "nfkc" in str(options):
        assert tok.encode("ＡＢＣ ﬁ") == tok.encode("ABC fi")   # the normalizer is at work
    files = tok.hf_files()
    assert "tokenizer.json" in files
    hf = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
    assert_same_as_npllama(tok, NORMALIZED + texts[:40], lambda text: hf.encode(text).ids, hf.decode,
                           decodes_unk=False)
    from npllama.tokenizer_json import JsonTokenizer

    (tmp_path / "folder").mkdir()
    for name, data in files.items():
        if name != "tokenizer.model":
            (tmp_path / "folder" / name).write_bytes(data)
    assert_same_as_npllama(tok, NORMALIZED, JsonTokenizer(tmp_path / "folder").encode,
                           JsonTokenizer(tmp_path / "folder").decode)
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "folder"))
    assert [auto(text)["input_ids"] for text in NORMALIZED] == [tok.encode(text) for text in NORMALIZED]


def test_folder_with_only_tokenizer_json_loads(folder, tok, tmp_path):
    """What transformers 5 saves: tokenizer.json and tokenizer_config.json, no tokenizer.model."""
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    saved = tmp_path / "saved"
    transformers.AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(saved))
    (saved / "tokenizer.model").unlink(missing_ok=True)
    for name in ("config.json", "model.safetensors"):
        (saved / name).write_bytes((folder / name).read_bytes())
    model, json_tok, _ = load_model_and_tokenizer(saved)
    assert type(json_tok).__name__ == "JsonTokenizer"
    assert (json_tok.bos_id, json_tok.eos_id, json_tok.vocab_size) == (tok.bos_id, tok.eos_id, tok.vocab_size)
    assert_same_as_npllama(tok, TEXTS, json_tok.encode, json_tok.decode)


def test_a_lone_tokenizer_json_puts_the_post_processors_bos_first(folder, tok, tmp_path):
    """No tokenizer_config.json to name the BOS: AutoTokenizer adds what the post-processor's
    template puts first, and so does JsonTokenizer (it used to refuse encode: "no BOS token")."""
    pytest.importorskip("tokenizers")
    from npllama.tokenizer_json import JsonTokenizer

    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    json_tok = JsonTokenizer(tmp_path)
    assert json_tok.bos_id == tok.bos_id
    assert_same_as_npllama(tok, TEXTS, json_tok.encode, json_tok.decode)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert [hf(text)["input_ids"] for text in TEXTS] == [json_tok.encode(text) for text in TEXTS]



def test_a_lone_tokenizer_json_without_eos_is_refused_for_padding_by_name(folder, tmp_path):
    """No tokenizer_config.json to name </s> or a pad token: padding a batch (eval choice, finetune
    classify) says so, rather than failing inside NumPy on a None pad id."""
    pytest.importorskip("tokenizers")
    from npllama.finetune import choice_logprobs
    from npllama.objectives import pad_id_of
    from npllama.tokenizer_json import JsonTokenizer

    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    json_tok = JsonTokenizer(tmp_path)
    if json_tok.pad_id is not None or json_tok.eos_id is not None:
        pytest.skip("this tokenizer.json names its eos or pad token itself")
    with pytest.raises(ValueError, match=r"neither a pad token nor </s> \(eos_token\)"):
        pad_id_of(json_tok)
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        choice_logprobs(Llama.from_pretrained(folder), json_tok, "Once upon a time", ["a", "b"])

def test_our_folder_without_tokenizer_model_loads_from_its_tokenizer_json(folder, tok, tmp_path):
    pytest.importorskip("tokenizers")
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        if file.name != "tokenizer.model":
            (copy / file.name).write_bytes(file.read_bytes())
    json_tok = load_tokenizer(copy)
    assert type(json_tok).__name__ == "JsonTokenizer" and json_tok.vocab_size == tok.vocab_size
    assert_same_as_npllama(tok, stories_and_texts(), json_tok.encode, json_tok.decode)


def test_unk_decodes_as_sentencepiece_writes_it_on_every_path(folder, tok, tmp_path):
    """<unk> is " ⁇ " (SentencePiece's unk_surface) from tokenizer.model and from tokenizer.json,
    with or without tokenizer_config.json to name it: the same ids give the same text, and the
    space of a piece after <unk> stays (decoders drop only the text's first one)."""
    import sentencepiece as spm

    pytest.importorskip("tokenizers")
    from npllama.tokenizer_json import JsonTokenizer

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    raw = spm.SentencePieceProcessor(model_proto=tok.model_bytes)
    a, space_b = tok.encode("a", bos=False), tok.encode("  b\nc", bos=False)
    unk, bos, eos = tok.unk_id, tok.bos_id, tok.eos_id
    cases = [[unk], [unk, unk], [bos, unk, eos], a + [unk], [unk] + a, a + [unk] + space_b,
             [bos] + a + [unk, unk] + space_b + [eos], space_b + [unk] + [bos] + space_b]
    for json_tok in (JsonTokenizer(folder), JsonTokenizer(lone)):
        assert json_tok.unk_id == unk
        for ids in cases:
            assert json_tok.decode(ids) == tok.decode(ids) == raw.decode(ids), ids
    assert tok.decode(a + [unk] + space_b) == "a \u2047    b\nc"   # " \u2047 " and the three spaces of "  b"


def test_json_tokenizer_decodes_any_ids_as_sentencepiece(folder, tok):
    """Seeded: random ids (bytes, <unk>, control and user-defined pieces among them) give
    SentencePiece's text from tokenizer.json too -- a run of byte pieces with a broken character
    keeps its whole characters ("\xc3" then "日": "\ufffd日", where the tokenizers library's
    ByteFallback gave four U+FFFD), and a leading byte space stays."""
    import random

    pytest.importorskip("tokenizers")
    from npllama.tokenizer_json import JsonTokenizer

    json_tok, rng = JsonTokenizer(folder), random.Random(0)
    byte = tok.piece_to_id("<0x00>")
    assert json_tok.decode([byte + 0xC3, byte + 0xE6, byte + 0x97, byte + 0xA5]) == "\ufffd日"
    space_a = [byte + 0x20] + tok.encode("a", bos=False)
    assert json_tok.decode(space_a) == tok.decode(space_a) == "  a"
    # bytes spelling U+2581 are that character, not the decoder's space mark
    mark_bytes = [byte + 0xE2, byte + 0x96, byte + 0x81]
    for ids in (mark_bytes + tok.encode("a", bos=False), tok.encode("a", bos=False) + mark_bytes):
        assert json_tok.decode(ids) == tok.decode(ids) and "\u2581" in tok.decode(ids)
    for _ in range(1000):
        ids = [rng.choice([tok.unk_id, tok.bos_id, tok.eos_id, rng.randrange(byte, byte + 256),
                           rng.randrange(byte, byte + 256), rng.randrange(VOCAB)]) for _ in range(rng.randrange(6))]
        assert json_tok.decode(ids) == tok.decode(ids), ids


def test_tokenizer_json_without_the_library_says_how(folder, tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ValueError, match=r"tokenizer\.json.*pip install 'npllama\[hf\]'.*tokenizer\.model"):
        load_tokenizer(tmp_path)


def test_folder_without_any_tokenizer_names_both_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.model or tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_debug_commands_take_text_with_only_a_tokenizer_json(folder, tok, tmp_path):
    pytest.importorskip("tokenizers")
    from npllama import debug

    only_json = tmp_path / "only_json"
    only_json.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (only_json / name).write_bytes((folder / name).read_bytes())
    model, _, ids, labels = debug.load_inputs(str(only_json), text="Once upon a time")
    assert ids == tok.encode("Once upon a time", bos=True, eos=False)
    assert labels == [tok.id_to_piece(i) for i in ids]


def test_the_pad_id_a_model_pads_with_is_named_as_the_pad_token(folder, tok, tmp_path):
    """A classifier pads with </s> when the tokenizer has no pad piece: both tokenizer kinds name it
    in tokenizer_config.json, so transformers pads with the id config.json records."""
    import json

    assert tok.pad_id is None
    config = json.loads(tok.hf_files(pad_id=tok.eos_id)["tokenizer_config.json"])
    assert config["pad_token"] == "</s>" and json.loads(tok.hf_files()["tokenizer_config.json"])["pad_token"] is None
    pytest.importorskip("tokenizers")
    from npllama.tokenizer_json import JsonTokenizer

    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    json_config = json.loads(JsonTokenizer(tmp_path).hf_files(pad_id=tok.eos_id)["tokenizer_config.json"])
    assert json_config["pad_token"] == "</s>"
