"""GGUF export: the file's tensors, metadata and tokenizer, read back with llama.cpp's `gguf`
reader, run run.c's forward pass (interleaved RoPE, llama.cpp's convention) to npllama's logits;
llama-cpp-python's greedy tokens where it is installed."""
import contextlib
import json
import os
import subprocess
import warnings

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llama2c_files import run_c_forward  # noqa: E402

from npllama import Llama, LlamaConfig  # noqa: E402
from npllama.cli import main  # noqa: E402
from npllama.io.gguf_export import export_gguf  # noqa: E402
from npllama.tokenizer import Tokenizer  # noqa: E402

TOKENS = [1, 5, 77, 300, 12, 9, 260, 2, 40]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from npllama.corpus import make_default_corpus

    return Tokenizer.train(make_default_corpus()[:300], tmp_path_factory.mktemp("tok") / "sp", vocab_size=400)


def _model_folder(path, tokenizer, seed=0, **overrides):
    shape = dict(vocab_size=400, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    shape.update(overrides)
    model = Llama(LlamaConfig(**shape), seed=seed, dtype=np.float64)
    # Larger weights than the init's, so a wrong permutation cannot hide in small logits.
    for array in model.params.values():
        array *= 1 if array.ndim == 1 else 8.0
    model.save_pretrained(path, dtype=np.float32, extra_files={"tokenizer.model": tokenizer.model_bytes})
    return Llama.from_pretrained(path, dtype=np.float64)


def _read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return fields, tensors, {t.name: t.tensor_type for t in reader.tensors}


def _as_llama2c(fields, tensors):
    """The GGUF's tensors under llama2.c's names, for run.c's forward pass."""
    n_layers = fields["llama.block_count"]
    stack = lambda name: np.stack([tensors[f"blk.{i}.{name}.weight"] for i in range(n_layers)])  # noqa: E731
    m = dict(dim=fields["llama.embedding_length"], n_layers=n_layers,
             n_heads=fields["llama.attention.head_count"], n_kv_heads=fields["llama.attention.head_count_kv"],
             tok=tensors["token_embd.weight"], att_norm=stack("attn_norm"), ffn_norm=stack("ffn_norm"),
             wq=stack("attn_q"), wk=stack("attn_k"), wv=stack("attn_v"), wo=stack("attn_output"),
             w1=stack("ffn_gate"), w2=stack("ffn_down"), w3=stack("ffn_up"),
             final_norm=tensors["output_norm.weight"])
    m["cls"] = tensors.get("output.weight", m["tok"])
    return m


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_runs_like_the_model_in_llama_cpps_rope_layout(tmp_path, tokenizer, tied):
    model = _model_folder(tmp_path / "m", tokenizer, tie_word_embeddings=tied)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    fields, tensors, types = _read(tmp_path / "m.gguf")
    expected = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not tied else set())
    for i in range(2):
        expected |= {f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    assert set(types.values()) == {gguf.GGMLQuantizationType.F32}
    assert tensors["blk.0.attn_k.weight"].shape == (8, 16)  # numpy order: (out, in)
    # run.c's forward (adjacent RoPE pairs, as llama.cpp) on the file's tensors = npllama's logits
    reference = run_c_forward(_as_llama2c(fields, tensors), TOKENS)
    np.testing.assert_allclose(reference, model.forward(np.array([TOKENS]))[0], rtol=0, atol=1e-4)


def test_gguf_metadata_and_tokenizer(tmp_path, tokenizer):
    _model_folder(tmp_path / "m", tokenizer, num_key_value_heads=1, max_position_embeddings=48,
                  rope_theta=5000.0, rms_norm_eps=1e-6)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", name="tiny test")
    fields, _, _ = _read(tmp_path / "m.gguf")
    assert {k: fields[k] for k in (
        "general.architecture", "general.name", "llama.vocab_size", "llama.context_length",
        "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    )} == {"general.architecture": "llama", "general.name": "tiny test", "llama.vocab_size": 400,
           "llama.context_length": 48, "llama.embedding_length": 16, "llama.block_count": 2,
           "llama.feed_forward_length": 24, "llama.attention.head_count": 4,
           "llama.attention.head_count_kv": 1, "llama.rope.dimension_count": 4,
           "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
           "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
           "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False}
    assert fields["llama.rope.freq_base"] == 5000.0
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert fields["tokenizer.ggml.tokens"] == [tokenizer.id_to_piece(i) for i in range(400)]
    sp = tokenizer._sp
    assert fields["tokenizer.ggml.scores"] == pytest.approx([sp.get_score(i) for i in range(400)])
    types = fields["tokenizer.ggml.token_type"]
    assert types[:3] == [2, 3, 3] and types[3:259] == [6] * 256 and set(types[259:]) == {1}


def test_f16_padded_vocab_and_llama3_rope(tmp_path, tokenizer):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024}
    model = _model_folder(tmp_path / "m", tokenizer, vocab_size=410, hidden_size=32, num_attention_heads=2,
                          num_key_value_heads=2, rope_scaling=scaling)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", outtype="f16")
    fields, tensors, types = _read(tmp_path / "m.gguf")
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    np.testing.assert_allclose(tensors["blk.1.ffn_down.weight"],
                               model.params["model.layers.1.mlp.down_proj.weight"], rtol=1e-3)
    assert fields["tokenizer.ggml.tokens"][400:] == [f"[PAD{i}]" for i in range(400, 410)]
    assert fields["tokenizer.ggml.token_type"][400:] == [5] * 10
    # llama.cpp divides pair i's frequency by rope_freqs[i]; its converter computes them so:
    expected = []
    for freq in 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16):
        wavelen = 2 * np.pi / freq
        if wavelen < 1024 / 4.0:
            expected.append(1.0)
        elif wavelen > 1024 / 1.0:
            expected.append(8.0)
        else:
            smooth = (1024 / wavelen - 1.0) / (4.0 - 1.0)
            expected.append(1 / ((1 - smooth) / 8.0 + smooth))
    np.testing.assert_allclose(tensors["rope_freqs.weight"], expected, rtol=1e-6)
    assert len(set(np.round(expected, 3))) > 2  # the blend, not only the two ends


def test_dynamic_rope_is_exported_as_plain_rope(tmp_path, tokenizer):
    """Dynamic NTK scaling is plain RoPE within the context, and llama.cpp has no such scaling (its
    converter writes none for it): the GGUF holds plain RoPE, no scaling fields nor rope_freqs, and
    runs as npllama does."""
    model = _model_folder(tmp_path / "m", tokenizer, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    assert model.config.rope_scaling["rope_type"] == "dynamic"
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    fields, tensors, _ = _read(tmp_path / "m.gguf")
    assert not any(key.startswith("llama.rope.scaling") for key in fields) and "rope_freqs.weight" not in tensors
    reference = run_c_forward(_as_llama2c(fields, tensors), TOKENS)
    np.testing.assert_allclose(reference, model.forward(np.array([TOKENS]))[0], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def unusual_tokenizer(tmp_path_factory):
    """Trained without the dummy-prefix space, with user-defined pieces (user_defined_symbols)."""
    from npllama.corpus import make_default_corpus

    return Tokenizer.train(make_default_corpus()[:300], tmp_path_factory.mktemp("tok") / "odd", vocab_size=400,
                           add_dummy_prefix=False, user_defined_symbols=["<|im_start|>", "[SEP]"])


def test_user_defined_pieces_and_no_space_prefix_reach_llama_cpp(tmp_path, tokenizer, unusual_tokenizer):
    """llama.cpp matches USER_DEFINED pieces whole (a NORMAL one it would spell out by merges), and
    adds a space before the text unless tokenizer.ggml.add_space_prefix says not to."""
    _model_folder(tmp_path / "m", unusual_tokenizer)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    fields, _, _ = _read(tmp_path / "m.gguf")
    types = fields["tokenizer.ggml.token_type"]
    assert [types[unusual_tokenizer.piece_to_id(p)] for p in ("<|im_start|>", "[SEP]", "<s>", "<0x41>")] == [4, 4, 3, 6]
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    _model_folder(tmp_path / "plain", tokenizer)
    export_gguf(tmp_path / "plain", tmp_path / "plain.gguf")
    assert _read(tmp_path / "plain.gguf")[0]["tokenizer.ggml.add_space_prefix"] is True


@pytest.mark.parametrize("options, words", [
    (dict(model_type="unigram"), "SentencePiece unigram model, but llama.cpp encodes every SentencePiece vocabulary as BPE"),
    (dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True), "normalizes text")])
def test_a_tokenizer_llama_cpp_cannot_reproduce_is_exported_with_a_warning(tmp_path, tokenizer, options, words):
    from npllama.corpus import make_default_corpus

    other = Tokenizer.train(make_default_corpus()[:300], tmp_path / "tok", vocab_size=400, **options)
    _model_folder(tmp_path / "m", other)
    with pytest.warns(UserWarning, match=words):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").is_file()
    _model_folder(tmp_path / "plain", tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gguf(tmp_path / "plain", tmp_path / "plain.gguf")


LLAMA_TOKENIZE = os.environ.get("NPLLAMA_LLAMA_TOKENIZE")  # a built llama.cpp llama-tokenize


@pytest.mark.skipif(not LLAMA_TOKENIZE, reason="set NPLLAMA_LLAMA_TOKENIZE to llama.cpp's llama-tokenize")
@pytest.mark.parametrize("which", ["tokenizer", "unusual_tokenizer"])
def test_llama_cpp_tokenizes_as_npllama(tmp_path, which, request):
    tok = request.getfixturevalue(which)
    _model_folder(tmp_path / "m", tok)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    for text in ["Once upon a time", "  two  spaces\n\tand a tab ", "日本 😀", "a<s>b</s> c", "<|im_start|>user [SEP] x"]:
        done = subprocess.run([LLAMA_TOKENIZE, "-m", str(tmp_path / "m.gguf"), "-p", text, "--ids", "--log-disable"],
                              capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == str(tok.encode(text)), text


def test_the_folders_chat_template_goes_into_the_gguf(tmp_path, tokenizer):
    """As llama.cpp's converter writes it: llama.cpp's chat mode renders turns with it."""
    from npllama.chat import LLAMA3_TEMPLATE

    _model_folder(tmp_path / "m", tokenizer)
    export_gguf(tmp_path / "m", tmp_path / "plain.gguf")
    assert "tokenizer.chat_template" not in _read(tmp_path / "plain.gguf")[0]
    (tmp_path / "m" / "tokenizer_config.json").write_bytes(tokenizer.hf_files(LLAMA3_TEMPLATE)["tokenizer_config.json"])
    export_gguf(tmp_path / "m", tmp_path / "chat.gguf")
    assert _read(tmp_path / "chat.gguf")[0]["tokenizer.chat_template"] == LLAMA3_TEMPLATE


def test_refuses_a_tokenizer_larger_than_the_embedding(tmp_path, tokenizer):
    _model_folder(tmp_path / "m", tokenizer, vocab_size=399)
    with pytest.raises(ValueError, match="400 pieces but the model's embedding only 399 rows"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".m.gguf*"))
    with pytest.raises(ValueError, match="outtype must be one of"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf", outtype="q4")


def test_refuses_a_folder_whose_tokenizer_json_adds_tokens_its_tokenizer_model_lacks(tmp_path, tokenizer, capsys):
    # tokenizer.add_special_tokens() writes ChatML's tokens into tokenizer.json only: a GGUF built
    # from tokenizer.model would lose the ids the model was trained with
    _model_folder(tmp_path / "m", tokenizer, vocab_size=402)
    fields = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    fields["added_tokens"] = fields.get("added_tokens", []) + [{"id": 400, "content": "<|im_start|>"},
                                                               {"id": 401, "content": "<|im_end|>"}]
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=r"2 token\(s\) that tokenizer.model lacks \(<\|im_start\|>"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf*"))
    # `npllama export gguf` too, which hands export_gguf the tokenizer.model it found
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.gguf")]) == 2
    out, err = capsys.readouterr()
    assert "tokenizer.model lacks" in err and "exporting" not in out
    assert not list(tmp_path.glob("*.gguf*"))


def test_cli_export_gguf(tmp_path, tokenizer, capsys):
    _model_folder(tmp_path / "m", tokenizer)
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.gguf")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "x.gguf").is_file()
    (tmp_path / "m" / "tokenizer.model").unlink()
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "y.gguf")]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer.model" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind, said", [
    ({"npllama_objective": "mlm"}, "is a masked-LM model"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "is a classification model"),
])
def test_a_refused_export_does_not_announce_itself(tmp_path, tokenizer, capsys, kind, said):
    """`exporting X to Y ...` is printed once every check has passed, so only by an export that writes:
    a masked-LM model or a classifier (llama.cpp runs every LLaMA causally, with an LM head) is refused
    in one line on stderr, stdout silent."""
    _model_folder(tmp_path / "m", tokenizer)
    argv = ["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.gguf")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"exporting {tmp_path / 'm'} to {tmp_path / 'x.gguf'} (f32) ...\n") and "wrote" in out, out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **kind}))
    assert main([*argv[:-1], str(tmp_path / "y.gguf")]) == 2
    out, err = capsys.readouterr()
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (tmp_path / "y.gguf").exists()


def test_a_folder_with_only_tokenizer_json_is_refused_before_the_export_starts(tmp_path, tokenizer, capsys):
    # a Hugging Face folder may carry its tokenizer as tokenizer.json alone; the GGUF holds a
    # SentencePiece vocabulary, so the refusal must say that file is not enough, and say it first
    _model_folder(tmp_path / "m", tokenizer)
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    (tmp_path / "m" / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json.*SentencePiece tokenizer.model"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.gguf")]) == 2
    out, err = capsys.readouterr()
    assert "tokenizer.json" in err and "exporting" not in out
    assert not list(tmp_path.glob("*.gguf*"))


def test_llama_cpp_gives_the_same_greedy_tokens(tmp_path, tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = _model_folder(tmp_path / "m", tokenizer, hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, n_threads=1, verbose=False)
    prompt_ids = tokenizer.encode(PROMPT, bos=True)
    assert llm.tokenize(PROMPT.encode("utf-8"), add_bos=True) == prompt_ids
    ours = model.generate(prompt_ids, max_new_tokens=8, temperature=0)[len(prompt_ids):]
    theirs = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == len(ours) or token == tokenizer.eos_id:
            break
    assert theirs == ours


def test_cli_export_gguf_never_replaces_a_file_without_force_nor_a_folder(tmp_path, tokenizer, capsys):
    _model_folder(tmp_path / "m", tokenizer)
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "emptydir").mkdir()
    model = ["export", "gguf", "--model", str(tmp_path / "m"), "--out"]
    for out, words in [(tmp_path / "notes.txt", "pass --force"), (tmp_path / "emptydir", "is a folder"),
                       (tmp_path / "m" / "model.safetensors", "pass --force")]:
        assert main([*model, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and words in err, err
    assert main([*model, str(tmp_path / "m" / "model.safetensors"), "--force"]) == 2
    assert "a file of the model being exported" in capsys.readouterr().err
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "emptydir").is_dir()
    assert main([*model, str(tmp_path / "notes.txt"), "--force"]) == 0
    assert (tmp_path / "notes.txt").read_bytes()[:4] == b"GGUF"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_gguf(tmp_path / "m", tmp_path / "notes.txt")


def test_cli_export_gguf_names_the_model_after_the_run(tmp_path, tokenizer):
    """--model RUN exports RUN/model: general.name (what llama.cpp shows as the model's name) was
    "model" for every run; it is the run's name, or --name."""
    _model_folder(tmp_path / "stories-run" / "model", tokenizer)
    model = ["export", "gguf", "--model", str(tmp_path / "stories-run"), "--out"]
    assert main([*model, str(tmp_path / "a.gguf")]) == 0
    assert _read(tmp_path / "a.gguf")[0]["general.name"] == "stories-run"
    assert main([*model, str(tmp_path / "b.gguf"), "--name", "Tiny Stories"]) == 0
    assert _read(tmp_path / "b.gguf")[0]["general.name"] == "Tiny Stories"
    assert main(["export", "gguf", "--model", str(tmp_path / "stories-run" / "model"), "--out",
                 str(tmp_path / "c.gguf")]) == 0
    assert _read(tmp_path / "c.gguf")[0]["general.name"] == "model"   # the folder it was given


def test_cli_export_gguf_into_a_folder_not_yet_made(tmp_path, tokenizer, capsys):
    """--out in folders that do not exist yet is written there, as convert's --out is: it was
    refused as "[Errno 2] No such file or directory: 'nodir/.x.gguf.tmp-70812298'", a temporary
    file's name.  Under a file, --out is refused naming the flag and that file."""
    _model_folder(tmp_path / "m", tokenizer)
    model = ["export", "gguf", "--model", str(tmp_path / "m"), "--out"]
    assert main([*model, str(tmp_path / "new" / "deeper" / "x.gguf")]) == 0
    assert (tmp_path / "new" / "deeper" / "x.gguf").read_bytes()[:4] == b"GGUF"
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*model, str(tmp_path / "notes.txt" / "sub" / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {str(tmp_path / 'notes.txt' / 'sub' / 'x.gguf')!r}" in err, err
    assert f"{str(tmp_path / 'notes.txt')!r} is a file, not a folder" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_gguf_is_fsynced_before_it_is_renamed_into_place_and_an_interrupt_leaves_nothing(
        tmp_path, tokenizer, monkeypatch):
    """As every checkpoint writer (io/atomic.py): after a crash the path holds the old file or the
    whole new one, never a renamed file whose data had not reached the disk."""
    from test_hf import recording_fsyncs

    _model_folder(tmp_path / "m", tokenizer)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    out.write_bytes(b"old")
    events = recording_fsyncs(monkeypatch)
    real_replace = os.replace

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    export_gguf(tmp_path / "m", out, overwrite=True)
    (renamed,) = [e for e in events if e[0] == "replace" and e[2] == str(out)]
    before = events[:events.index(renamed)]
    assert ("fsync", renamed[1]) in before, "the new file's data is on disk before it takes the name"
    assert ("fsync", str(out.parent)) in events[events.index(renamed):], "the rename itself made durable"

    def interrupted(self, *args, **kwargs):
        self.fout[0].write(b"half a tensor")
        raise KeyboardInterrupt

    written = out.read_bytes()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tmp_path / "m", out, overwrite=True)
    assert out.read_bytes() == written and sorted(out.parent.iterdir()) == [out]


@pytest.mark.parametrize("taken", ["tokenizer.model", "m/generation_config.json", "m/tokenizer_config.json",
                                   "m/model.safetensors.index.json"])
def test_force_never_replaces_a_file_the_model_is_read_from(tmp_path, tokenizer, taken, capsys):
    """The run's tokenizer beside the folder, and every file of the folder export reads (config,
    index, tokenizer files), stay: --out on one of them is refused, with --force too."""
    _model_folder(tmp_path / "m", tokenizer)
    (tmp_path / "m" / "tokenizer.model").rename(tmp_path / "tokenizer.model")   # a run: model/ beside it
    out = tmp_path / taken
    if not out.exists():   # an index beside model.safetensors: still the folder's, whatever it says
        out.write_text("{}")
    before = out.read_bytes()
    assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(out), "--force"]) == 2
    assert "a file of the model being exported" in capsys.readouterr().err
    assert out.read_bytes() == before
    with pytest.raises(FileExistsError, match="a file of the model being exported"):
        export_gguf(tmp_path / "m", out, overwrite=True)
    elsewhere = tmp_path / "elsewhere.model"      # a tokenizer given by path: the same
    elsewhere.write_bytes(tokenizer.model_bytes)
    with pytest.raises(FileExistsError, match="a file of the model being exported"):
        export_gguf(tmp_path / "m", elsewhere, tokenizer=elsewhere, overwrite=True)
    assert elsewhere.read_bytes() == tokenizer.model_bytes


def test_force_never_replaces_a_shard_the_index_names_whatever_its_name(tmp_path, tokenizer, capsys):
    """The index may name shards anything, in subfolders too (transformers writes model-00001-of-...,
    other tools their own names): each is a file export reads, so --out on one is refused."""
    import json

    from npllama.io.safetensors import read_safetensors, write_safetensors

    folder = tmp_path / "m"
    _model_folder(folder, tokenizer)
    tensors = read_safetensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = list(tensors)
    (folder / "parts").mkdir()
    shards = {"parts/a.safetensors": names[:3], "weights-2.safetensors": names[3:]}
    for shard, held in shards.items():
        write_safetensors(folder / shard, {n: tensors[n] for n in held}, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: shard for shard, held in shards.items() for n in held}}))
    export_gguf(folder, tmp_path / "fine.gguf")   # the folder exports
    for shard in shards:
        out = folder / shard
        before = out.read_bytes()
        assert main(["export", "gguf", "--model", str(folder), "--out", str(out), "--force"]) == 2
        assert "a file of the model being exported" in capsys.readouterr().err
        with pytest.raises(FileExistsError, match="a file of the model being exported"):
            export_gguf(folder, out, overwrite=True)
        assert out.read_bytes() == before


def test_a_weight_the_outtype_would_make_inf_is_refused_naming_it(tmp_path, tokenizer):
    """float16 holds nothing past 65504, a Q8_0 block's float16 scale nothing past 65504 * 127 (and
    Q8_0 writes a matrix whose rows are no multiple of 32 as float16): a weight beyond would be inf
    in the file (NaN in llama.cpp).  Refused naming the tensor, with nothing left behind; outtypes
    that hold it export it."""
    from safetensors.numpy import load_file, save_file

    _model_folder(tmp_path / "m", tokenizer, hidden_size=48, intermediate_size=64)
    weights = load_file(tmp_path / "m" / "model.safetensors")
    q_proj, down_proj = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"

    def export_with(q, down, outtype):
        weights[q_proj][3, 5], weights[down_proj][0, 7] = q, down
        save_file(weights, tmp_path / "m" / "model.safetensors")
        return export_gguf(tmp_path / "m", tmp_path / f"{outtype}.gguf", outtype=outtype, overwrite=True)

    for outtype in ("f16", "q8_0"):     # q_proj's rows of 48: float16 in both
        with pytest.raises(ValueError, match=r"tensor 'blk\.0\.attn_q\.weight' holds 70000, which outtype "
                                             rf"'{outtype}' would write as inf; export with outtype bf16"):
            export_with(7e4, 0.5, outtype)
        assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*.gguf*"))
    with pytest.raises(ValueError, match=r"tensor 'blk\.0\.ffn_down\.weight' holds 9e\+06, which outtype 'q8_0'"):
        export_with(0.5, 9e6, "q8_0")     # rows of 64 in Q8_0 blocks: a scale past 65504
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_down\.weight' holds 70000, which outtype 'f16'"):
        export_with(0.5, 7e4, "f16")
    for outtype in ("q8_0", "bf16", "f32"):                  # a Q8_0 scale of 551: fine
        fields, tensors, _ = _read(export_with(0.5, 7e4, outtype))
        assert all(np.all(np.isfinite(t.astype(np.float32))) for t in tensors.values() if t.dtype.kind == "f")


def test_check_outtype_holds_at_its_edges():
    """Entries already inf or NaN are written as they are (not this check's business) and do not
    hide a finite one past the range; vectors are float32 whatever the outtype; a Q8_0 row of
    exactly 32 is one block (its scale holds 7e4), a row of 31 is float16 (it does not)."""
    from npllama.io.gguf_export import check_outtype_holds

    broken = np.zeros((2, 32), np.float32)
    broken[0, :2] = np.nan, np.inf
    check_outtype_holds({"w": broken}, "f16")
    broken[1, 3] = -7e4
    with pytest.raises(ValueError, match=r"tensor 'w' holds 70000, which outtype 'f16' would write as inf"):
        check_outtype_holds({"w": broken}, "f16")
    check_outtype_holds({"norm": np.full(4, 1e6, np.float32)}, "f16")
    for columns, holds in ((32, True), (31, False)):
        big = np.zeros((3, columns), np.float32)
        big[2, 0] = 7e4
        if holds:
            check_outtype_holds({"w": big}, "q8_0")
        else:
            with pytest.raises(ValueError, match="outtype 'q8_0' would write as inf"):
                check_outtype_holds({"w": big}, "q8_0")


@pytest.mark.parametrize("end_ids, eot", [(2, None), ([2], None), ([2, 7], 7), ([7, 2], 7)])
def test_a_second_end_id_is_written_as_llama_cpps_end_of_turn_and_read_back(tmp_path, tokenizer, end_ids, eot):
    """LLaMA-3 instruct models end a generation at <|end_of_text|> or <|eot_id|> (config.json's
    eos_token_id list): the tokenizer's end piece is tokenizer.ggml.eos_token_id, the other
    tokenizer.ggml.eot_token_id (llama.cpp's end of turn), and converting the file back lists both."""
    from npllama.io.gguf_import import read_gguf

    _model_folder(tmp_path / "m", tokenizer, eos_token_id=end_ids)
    export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    fields, _, _ = _read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_id == 2
    assert fields.get("tokenizer.ggml.eot_token_id") == eot
    config, _ = read_gguf(tmp_path / "m.gguf")
    assert config.eos_token_id == (2 if eot is None else [2, eot])
    assert set(config.end_ids) == set(Llama.from_pretrained(tmp_path / "m").config.end_ids)


@pytest.mark.parametrize("end_ids", [7, [7], [7, 9], 2])
def test_end_ids_come_back_as_they_went_through_export_and_convert(tmp_path, tokenizer, end_ids):
    """A model whose end ids do not include the tokenizer's end piece (</s>, 2) -- a chat model ending
    at an added piece, or a GGUF converted from one -- came back from export and convert with 2
    added ([2, 7]): the model then stopped where it never did.  Twice round, nothing changes."""
    from npllama.io.gguf_import import convert_gguf

    _model_folder(tmp_path / "m", tokenizer, eos_token_id=end_ids)
    folder = tmp_path / "m"
    for trip in range(2):
        export_gguf(folder, tmp_path / f"m{trip}.gguf")
        convert_gguf(tmp_path / f"m{trip}.gguf", tmp_path / f"back{trip}")
        folder = tmp_path / f"back{trip}"
        assert Llama.from_pretrained(folder).config.end_ids == tuple(np.atleast_1d(end_ids)), trip


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    """A tokenizer with the end pieces chat models have (LLaMA-3's, ChatML's, Gemma's)."""
    from npllama.corpus import make_default_corpus

    return Tokenizer.train(make_default_corpus()[:300], tmp_path_factory.mktemp("tok") / "sp", vocab_size=400,
                           control_symbols=["<|eom_id|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>"])


# end ids (a piece's text, or a plain piece's id) -> (eot_token_id, eom_token_id, the ids not written)
END_IDS = [
    (["</s>"], (None, None, [])),
    (["</s>", "<|eot_id|>"], ("<|eot_id|>", None, [])),
    (["<|eot_id|>", "</s>"], ("<|eot_id|>", None, [])),
    (["</s>", "<|eom_id|>"], (None, "<|eom_id|>", [])),
    (["</s>", 300], (300, None, [])),
    (["</s>", "<|eom_id|>", "<|eot_id|>"], ("<|eot_id|>", "<|eom_id|>", [])),    # LLaMA-3.1 instruct
    (["</s>", 300, 301], (300, 301, [])),
    (["</s>", 300, "<|eot_id|>"], ("<|eot_id|>", 300, [])),
    (["</s>", "<|im_end|>", "<end_of_turn>"], ("<|im_end|>", "<end_of_turn>", [])),
    (["</s>", 300, "<|eom_id|>", 301], (300, "<|eom_id|>", [301])),
    (["</s>", "<|eom_id|>", "<|eot_id|>", 300, 301], ("<|eot_id|>", "<|eom_id|>", [300, 301])),
]


@pytest.mark.parametrize("end_pieces, written", END_IDS)
def test_end_ids_are_written_as_eos_eot_and_eom_by_their_pieces_and_read_back(tmp_path, chat_tokenizer, end_pieces,
                                                                             written):
    """llama.cpp ends a generation at tokenizer.ggml.eos_token_id, eot_token_id and eom_token_id.
    An end id whose piece says which it is goes there (<|eot_id|> the end of turn, <|eom_id|> the
    end of a message to a tool; LLaMA-3.1 lists both beside <|end_of_text|>), the others fill the
    places left in order; only an id with no place left is warned about, and reading the file back
    gives the model every end id written."""
    import re

    from npllama.io.gguf_import import read_gguf

    ids = lambda items: [chat_tokenizer.piece_to_id(i) if isinstance(i, str) else i for i in items]  # noqa: E731
    end_ids = ids(end_pieces)
    (eot, eom), dropped = ids(written[:2]), ids(written[2])
    _model_folder(tmp_path / "m", chat_tokenizer, eos_token_id=end_ids if len(end_ids) > 1 else end_ids[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    about_end_ids = [str(w.message) for w in caught if "eos_token_id" in str(w.message)]
    fields, _, _ = _read(tmp_path / "m.gguf")
    assert fields["tokenizer.ggml.eos_token_id"] == chat_tokenizer.eos_id == 2
    assert (fields.get("tokenizer.ggml.eot_token_id"), fields.get("tokenizer.ggml.eom_token_id")) == (eot, eom)
    if dropped:
        assert len(about_end_ids) == 1, about_end_ids
        named = re.search(r"end ids? ([\d, ]+?) (?:is|are) not recorded in the GGUF's metadata", about_end_ids[0])
        assert named is not None and [int(i) for i in named.group(1).split(", ")] == dropped, about_end_ids
    else:
        assert about_end_ids == []
    config, _ = read_gguf(tmp_path / "m.gguf")
    assert config.end_ids[0] == 2
    assert sorted(config.end_ids) == sorted(set(end_ids) - set(dropped))


def test_an_index_that_is_a_fifo_is_not_waited_on_when_out_is_checked(tmp_path, tokenizer):
    """Which files export reads (so that --out never replaces one) is asked of the index as the
    loader and a save ask it (io.hf.shards_named_by): a FIFO named like the index is refused, not
    read until something writes into it."""
    import threading

    from npllama.io.gguf_export import check_gguf_out

    folder = tmp_path / "m"
    _model_folder(folder, tokenizer)
    fifo = folder / "model.safetensors.index.json"
    os.mkfifo(fifo)
    out = tmp_path / "existing.gguf"
    out.write_bytes(b"old")
    checking = threading.Thread(target=check_gguf_out, args=(out, folder, True), daemon=True)
    checking.start()
    checking.join(timeout=10)
    try:
        assert not checking.is_alive(), "the check waited on the FIFO"
    finally:   # let a waiting reader see end of file, so the thread ends
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        checking.join(timeout=10)


def test_cli_export_gguf_names_a_run_from_inside_it(tmp_path, tokenizer, monkeypatch):
    """A run's checkpoint (checkpoint/model, beside training_state.json) and a run's model/ given
    directly are named after the run: general.name was "checkpoint" for `--model RUN/checkpoint` and
    for the latest run while it trains, and "model" for `--model RUN/model` or `.` inside it."""
    run = tmp_path / "stories-run"
    _model_folder(run / "checkpoint" / "model", tokenizer)
    (run / "checkpoint" / "training_state.json").write_text("{}")
    (run / "log.jsonl").write_text("")
    for i, model in enumerate([run / "checkpoint", run / "checkpoint" / "model", f"{run}/checkpoint/"]):
        assert main(["export", "gguf", "--model", str(model), "--out", str(tmp_path / f"{i}.gguf")]) == 0
        assert _read(tmp_path / f"{i}.gguf")[0]["general.name"] == "stories-run", model
    _model_folder(run / "model", tokenizer)
    monkeypatch.chdir(run / "model")
    for i, model in enumerate([str(run / "model"), "."]):
        assert main(["export", "gguf", "--model", model, "--out", str(tmp_path / f"m{i}.gguf")]) == 0
        assert _read(tmp_path / f"m{i}.gguf")[0]["general.name"] == "stories-run", model


@pytest.mark.parametrize("content", [b"GGUF" + bytes(60), b"just some text\n"])
def test_export_gguf_says_a_model_file_is_a_file_in_the_words_every_command_uses(tmp_path, capsys, content):
    """--model FILE (a .gguf, a llama2.c .bin, anything) is refused by the check generate's --model
    goes through ('is a file, not a model folder: <what it is>'), named as --model, and before --out
    is judged (an --out that exists would otherwise be the complaint)."""
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(content)
    (tmp_path / "taken.gguf").write_bytes(b"mine")
    assert main(["generate", "--model", str(model_file), "--prompt", "hi"]) == 2
    said_by_generate = capsys.readouterr().err.strip().split("error: ", 1)[1]
    assert said_by_generate.startswith(f"{str(model_file)!r} is a file, not a model folder: "), said_by_generate
    assert main(["export", "gguf", "--model", str(model_file), "--out", str(tmp_path / "taken.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.strip().split("error: ", 1)[1] == f"--model {said_by_generate}", err
    assert (tmp_path / "taken.gguf").read_bytes() == b"mine"


def test_a_folders_chat_template_that_is_not_jinja_is_exported_with_a_warning_naming_it(tmp_path, tokenizer, capsys):
    """export gguf copies the folder's chat template into the GGUF as it is; one that does not compile
    was copied without a word (convert gguf warns of the same template coming back): one warning,
    one line on the command line, naming the file it is in, before the export is announced."""
    bad = "{% for m in messages %}{{ m['content'] | nosuchfilter }}{% endfor %}"
    _model_folder(tmp_path / "m", tokenizer)
    config = tmp_path / "m" / "tokenizer_config.json"
    config.write_bytes(tokenizer.hf_files(chat_template=bad)["tokenizer_config.json"])
    with pytest.warns(UserWarning) as record:
        export_gguf(tmp_path / "m", tmp_path / "x.gguf")
    said = [str(w.message) for w in record]
    assert len(said) == 1 and f"the chat template in {str(config)!r} is not valid Jinja" in said[0], said
    assert "nosuchfilter" in said[0], said
    assert _read(tmp_path / "x.gguf")[0]["tokenizer.chat_template"] == bad     # kept, as it is
    with pytest.warns(UserWarning) as record:   # the command prints each warning in one line
        assert main(["export", "gguf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "y.gguf")]) == 0
    assert [str(w.message) for w in record] == said
    config.write_bytes(tokenizer.hf_files(chat_template=bad.replace(" | nosuchfilter", ""))["tokenizer_config.json"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gguf(tmp_path / "m", tmp_path / "z.gguf")
