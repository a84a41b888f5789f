"""llama2.c checkpoints and tokenizer.bin: files written here to llama2.c's specification
(tests/io/llama2c_files.py) load with the logits of run.c's own forward pass."""
import os
import string
import struct
import subprocess

import numpy as np
import pytest

from npllama import Llama
from npllama.cli import main
from npllama.io import CheckpointError
from npllama.io.llama2c import convert_llama2c, load_llama2c, read_llama2c_header
from npllama.io.llama2c_tokenizer import llama2c_tokenizer_to_sentencepiece, read_llama2c_tokenizer
from npllama.tokenizer import Tokenizer

from gguf_files import write_gguf_header
from llama2c_files import (random_llama2c_weights, run_c_forward, write_legacy, write_llama2c_tokenizer,
                            write_v1, write_v2)

TOKENS = [3, 7, 1, 30, 12, 5, 9, 0, 2, 11, 39, 4]
WRITERS = {"legacy": write_legacy, "v1": write_v1, "v2": write_v2}


def _write(tmp_path, fmt, weights):
    path = tmp_path / f"{fmt}.bin"
    dequantised = WRITERS[fmt](path, weights)
    return path, (dequantised if fmt == "v2" else weights)


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("shape", [
    dict(shared=True),                                             # GQA: 4 heads on 2 kv heads
    dict(shared=False, n_heads=2, n_kv_heads=2, seq_len=12),       # unshared classifier, plain MHA
    dict(shared=True, dim=24, n_heads=2, n_kv_heads=1, n_layers=1),  # one kv head, head size 12
])
def test_logits_match_run_c_forward(tmp_path, fmt, shape):
    weights = random_llama2c_weights(**shape)
    path, as_written = _write(tmp_path, fmt, weights)
    model = load_llama2c(path, dtype=np.float64)
    logits = model.forward(np.array([TOKENS]))[0]
    np.testing.assert_allclose(logits, run_c_forward(as_written, TOKENS), rtol=0, atol=1e-10)
    assert model.config.tie_word_embeddings == shape["shared"]
    assert model.config.max_position_embeddings == weights["seq_len"]
    assert model.config.rms_norm_eps == 1e-5


def test_the_rope_permutation_is_what_makes_them_match(tmp_path, monkeypatch):
    """Without permuting q and k the first position still agrees (no rotation at 0) and later
    ones do not: the test above would catch a missing or wrong permutation."""
    path, weights = _write(tmp_path, "legacy", random_llama2c_weights())
    import npllama.io.llama2c as llama2c

    monkeypatch.setattr(llama2c, "interleaved_to_half_split", lambda w, n_heads: w)
    logits = load_llama2c(path, dtype=np.float64).forward(np.array([TOKENS]))[0]
    reference = run_c_forward(weights, TOKENS)
    np.testing.assert_allclose(logits[0], reference[0], atol=1e-10)
    assert np.abs(logits[1:] - reference[1:]).max() > 1e-3


def test_header_is_read_for_every_format(tmp_path):
    weights = random_llama2c_weights(shared=False, vocab_size=33, seq_len=20)
    for fmt in WRITERS:
        path, _ = _write(tmp_path, fmt, weights)
        header = read_llama2c_header(path)
        assert header.version == {"legacy": 0, "v1": 1, "v2": 2}[fmt]
        assert (header.dim, header.hidden_dim, header.n_layers, header.n_heads, header.n_kv_heads,
                header.vocab_size, header.seq_len) == (16, 24, 2, 4, 2, 33, 20)
        assert header.shared_classifier is False
        assert header.group_size == (8 if fmt == "v2" else None)


def test_float32_load_is_the_float32_file(tmp_path):
    weights = random_llama2c_weights()
    path, _ = _write(tmp_path, "v1", weights)
    model = load_llama2c(path)
    assert model.params["model.embed_tokens.weight"].dtype == np.float32
    np.testing.assert_array_equal(model.params["model.embed_tokens.weight"], weights["tok"])
    np.testing.assert_array_equal(model.params["model.layers.1.mlp.down_proj.weight"], weights["w2"][1])


# ----- bad files ----------------------------------------------------------------------------------

def _legacy_bytes(tmp_path, **shape):
    path, _ = _write(tmp_path, "legacy", random_llama2c_weights(**shape))
    return path, path.read_bytes()


def test_truncated_or_padded_file_is_refused(tmp_path):
    path, data = _legacy_bytes(tmp_path)
    for bad in (data[:-4], data + b"\0" * 4):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError, match=r"needs\s+exactly .*truncated, or not a llama2.c"):
            load_llama2c(path)


@pytest.mark.parametrize("field, value, match", [
    (0, 0, "dim.*must be positive"),
    (3, 3, "dim .16. must be n_heads .3."),
    (4, 3, "n_kv_heads .3. must divide n_heads .4."),
    (6, -5, "seq_len.*must be positive"),
])
def test_impossible_headers_name_the_field(tmp_path, field, value, match):
    path, data = _legacy_bytes(tmp_path)
    ints = list(struct.unpack_from("<7i", data))
    ints[field] = value
    path.write_bytes(struct.pack("<7i", *ints) + data[28:])
    with pytest.raises(CheckpointError, match=match):
        load_llama2c(path)


def test_unknown_version_and_bad_group_size(tmp_path):
    path, _ = _write(tmp_path, "v2", random_llama2c_weights())
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<i", 3)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="version 3 is not supported"):
        read_llama2c_header(path)
    data[4:8] = struct.pack("<i", 2)
    data[37:41] = struct.pack("<i", 7)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="groups of 7"):
        read_llama2c_header(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_llama2c(tmp_path / "missing.bin")
    path, _ = _write(tmp_path, "v1", random_llama2c_weights())
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        load_llama2c(path, dtype=np.int32)
    with pytest.raises(TypeError, match="path must be a file path"):
        load_llama2c(None)


# ----- tokenizer.bin ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentencepiece_and_bin(tmp_path_factory):
    from npllama.corpus import make_default_corpus

    folder = tmp_path_factory.mktemp("tok")
    tokenizer = Tokenizer.train(make_default_corpus()[:300], folder / "sp", vocab_size=400)
    write_llama2c_tokenizer(folder / "tokenizer.bin", folder / "sp.model")
    return tokenizer, folder / "tokenizer.bin"


TEXTS = ["Once upon a time, Lily had 12 red balls.", "  two  spaces\nand a new line",
         "naïve café — 日本語 😀 (bytes for unseen characters)", "x", ""]


def test_tokenizer_bin_becomes_the_sentencepiece_model_it_came_from(tmp_path, sentencepiece_and_bin):
    original, bin_path = sentencepiece_and_bin
    (tmp_path / "converted.model").write_bytes(llama2c_tokenizer_to_sentencepiece(bin_path, 400))
    converted = Tokenizer(tmp_path / "converted.model")
    assert (converted.vocab_size, converted.bos_id, converted.eos_id, converted.unk_id) == (400, 1, 2, 0)
    for text in TEXTS:
        ids = original.encode(text, bos=True, eos=True)
        assert converted.encode(text, bos=True, eos=True) == ids
        assert converted.decode(ids) == text
    assert [converted.id_to_piece(i) for i in range(400)] == [original.id_to_piece(i) for i in range(400)]


def test_tokenizer_bin_with_plain_bos_and_eos_names(tmp_path, sentencepiece_and_bin):
    """An exporter that writes <s> and </s> without llama2.c's newlines: still the control pieces
    (they were normal text, so the tokenizer had no BOS and decode wrote "<s>")."""
    original, bin_path = sentencepiece_and_bin
    data = bin_path.read_bytes().replace(b"\n<s>\n", b"<s>").replace(b"\n</s>\n", b"</s>")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(data.replace(struct.pack("<i", 5) + b"<s>", struct.pack("<i", 3) + b"<s>", 1)
                      .replace(struct.pack("<i", 6) + b"</s>", struct.pack("<i", 4) + b"</s>", 1))
    converted = Tokenizer.from_bytes(llama2c_tokenizer_to_sentencepiece(plain, 400))
    assert (converted.bos_id, converted.eos_id) == (1, 2)
    assert converted.model_info.piece_types == original.model_info.piece_types
    ids = original.encode(TEXTS[0], eos=True)
    assert converted.encode(TEXTS[0], eos=True) == ids and converted.decode(ids) == TEXTS[0]


def test_tokenizer_bin_checks(tmp_path, sentencepiece_and_bin):
    _, bin_path = sentencepiece_and_bin
    pieces, scores = read_llama2c_tokenizer(bin_path)
    assert len(pieces) == len(scores) == 400 and pieces[1] == b"\n<s>\n"
    with pytest.raises(CheckpointError, match="holds 400 pieces, but the model's vocabulary has 512"):
        read_llama2c_tokenizer(bin_path, vocab_size=512)
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(bin_path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="piece 399 .*past the end of the file"):
        read_llama2c_tokenizer(truncated)
    with pytest.raises(ValueError, match="vocab_size must be None or a positive integer"):
        read_llama2c_tokenizer(bin_path, vocab_size=0)
    # a text file: was "piece 0 has length 174353522, outside 1..1819043176", its first bytes read as a bound
    text = tmp_path / "notes.txt"
    text.write_text("hello world, not a tokenizer")
    with pytest.raises(CheckpointError, match=r"notes\.txt.*max_token_length 1819043176,.*not a llama2\.c tokenizer"):
        read_llama2c_tokenizer(text)
    # some byte pieces but not all: refused as such (SentencePiece could not load the rebuilt model)
    pieces, scores = read_llama2c_tokenizer(bin_path)
    partial = tmp_path / "partial.bin"
    with open(partial, "wb") as f:
        f.write(struct.pack("<I", 16))
        for piece, score in zip(pieces, scores):
            if piece != b"<0xFF>":
                f.write(struct.pack("<fi", score, len(piece)) + piece)
    with pytest.raises(CheckpointError, match="it has 255 of the 256 byte pieces"):
        llama2c_tokenizer_to_sentencepiece(partial)


# ----- npllama convert llama2c --------------------------------------------------------------------

def test_convert_writes_a_folder_generate_runs(tmp_path, sentencepiece_and_bin, capsys):
    _, bin_path = sentencepiece_and_bin
    weights = random_llama2c_weights(vocab_size=400, seq_len=32, shared=False)
    checkpoint, _ = _write(tmp_path, "legacy", weights)
    out = tmp_path / "hf"
    assert main(["convert", "llama2c", str(checkpoint), "--tokenizer", str(bin_path), "--out", str(out)]) == 0
    assert "legacy float32" in capsys.readouterr().out
    assert (out / "tokenizer.model").is_file()
    reloaded = Llama.from_pretrained(out, dtype=np.float64)
    np.testing.assert_allclose(reloaded.forward(np.array([TOKENS]))[0], run_c_forward(weights, TOKENS),
                               atol=1e-10)
    assert main(["generate", "--model", str(out), "--prompt", "Once upon", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Once upon")


def test_generation_ends_at_bos_as_run_c_ends_it(tmp_path, sentencepiece_and_bin):
    """run.c ends a generation at BOS ("the BOS (=1) token delimits sequences": `if (next == 1) break;`):
    llama2.c trains on stories each opened by BOS, with no EOS, so a stories model ends a story with
    BOS.  The converted model ended only at EOS (2) and ran on into another story.  This model
    copies its input (no attention or MLP output: the residual stream is the token's embedding,
    and the classifier is that embedding), so after BOS it says BOS."""
    from npllama.generate import end_ids, generate

    tokenizer, bin_path = sentencepiece_and_bin
    weights = random_llama2c_weights(vocab_size=400, shared=True)
    weights["wo"][:] = 0
    weights["w2"][:] = 0
    weights["tok"][1] *= 3          # BOS's own logit far above any other's
    checkpoint, _ = _write(tmp_path, "v1", weights)
    convert_llama2c(checkpoint, tmp_path / "hf", tokenizer=bin_path)
    model = Llama.from_pretrained(tmp_path / "hf")
    assert int(np.argmax(model.forward(np.array([[1]]))[0, -1])) == 1
    assert generate(model, [1], 5, temperature=0, eos_id=end_ids(model, tokenizer)) == [1, 1]
    assert set(model.config.end_ids) == {1, 2}     # EOS still ends it, as in models that do emit it
    assert model.config.bos_token_id == 1


def test_convert_api_and_tokenizer_beside_the_checkpoint(tmp_path, sentencepiece_and_bin, capsys):
    original, bin_path = sentencepiece_and_bin
    checkpoint, _ = _write(tmp_path, "v2", random_llama2c_weights(vocab_size=400))
    (tmp_path / "tokenizer.bin").write_bytes(bin_path.read_bytes())
    assert main(["convert", "llama2c", str(checkpoint), "--out", str(tmp_path / "a")]) == 0
    assert Tokenizer(tmp_path / "a" / "tokenizer.model").encode(TEXTS[0]) == original.encode(TEXTS[0])
    convert_llama2c(checkpoint, tmp_path / "b", tokenizer=original.path)  # a .model is copied
    assert (tmp_path / "b" / "tokenizer.model").read_bytes() == original.model_bytes


@pytest.mark.parametrize("name, content", [
    ("notes.json", b'{"a": 1}'),                            # a file describe knows: what it is instead
    ("other.model", b"not a SentencePiece model"),          # SentencePiece's reader
    ("text.txt", b"hello, not a tokenizer\n" * 20),         # llama2.c's reader: max_token_length
    ("tiny.bin", b"\x01\x00"),                              # ... too short
    ("bad_piece.bin", struct.pack("<Ifi", 16, 0.0, 999)),    # ... a piece's length
    ("checkpoint.bin", None),                               # the checkpoint itself
    ("tokenizer.bin", "other vocabulary"),                  # a real tokenizer.bin, for another model
])
def test_a_bad_tokenizer_is_named_once_in_one_sentence(tmp_path, name, content, capsys, sentencepiece_and_bin):
    """--tokenizer FILE that cannot be converted: '--tokenizer 'FILE' <what is wrong with it>', the
    path said once, no stray colon after it (was "--tokenizer 'x': is not a tokenizer: 'x' looks
    like ...", "--tokenizer 'x': starts with ..."); the same for one found beside the checkpoint."""
    checkpoint, _ = _write(tmp_path, "v1", random_llama2c_weights(vocab_size=64))
    tokenizer = tmp_path / "t" / name
    tokenizer.parent.mkdir()
    if content is None:
        tokenizer.write_bytes(checkpoint.read_bytes())
    elif content == "other vocabulary":
        tokenizer.write_bytes(sentencepiece_and_bin[1].read_bytes())
    else:
        tokenizer.write_bytes(content)
    assert main(["convert", "llama2c", str(checkpoint), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    said = err.strip().split("error: ", 1)[1]
    assert said.startswith(f"--tokenizer {str(tokenizer)!r} ") and err.count(repr(str(tokenizer))) == 1, err
    assert err.count("\n") == 1 and not said[len(f"--tokenizer {str(tokenizer)!r}"):].startswith(":"), err
    if name == "tokenizer.bin":   # the same file found beside the checkpoint: named as found there
        beside_checkpoint = tokenizer.parent / "model.bin"
        beside_checkpoint.write_bytes(checkpoint.read_bytes())
        assert main(["convert", "llama2c", str(beside_checkpoint), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"{str(tokenizer)!r}, found beside the checkpoint, holds 400 pieces" in err, err
        assert err.count(repr(str(tokenizer))) == 1 and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, match", [
    (["convert", "llama2c", "/no/such.bin", "--out", "x"], "is not a file"),
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/full"], "exists and is not empty; pass --force"),
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}"], "holds"),   # not "pass --force": that is refused too
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "/no/tok.bin"], "is not a file"),
    (["convert", "llama2c", "{tmp}", "--out", "{tmp}/o"], "is not a file"),
    (["convert", "llama2c", "{gguf}", "--out", "{tmp}/o"], "not a llama2.c checkpoint: '"),
    (["convert", "llama2c", "{cut}", "--out", "{tmp}/o"], "truncated, or not a llama2.c checkpoint"),
    # a file that is no tokenizer: named as the flag that gave it, or as found beside the checkpoint
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "{tmp}/notes.json"], "--tokenizer '"),
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "{tmp}/other.model"], "--tokenizer '"),
    (["convert", "llama2c", "{beside}", "--out", "{tmp}/o"], "found beside the checkpoint"),
    # a checkpoint given as the tokenizer: was "piece 1 has length 33554432, outside 1..64 or past the end"
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "{ckpt}"],
     "--tokenizer '{ckpt}' is not a tokenizer: it looks like a llama2.c checkpoint"),
    # --out below a file: was "[Errno 17] File exists: '.../notes.json'", naming no flag
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/notes.json/o"], "--out '{tmp}/notes.json/o': '{tmp}/notes.json' is a file"),
    # ... in a folder whose name says "tokenizer": was "starts with max_token_length 1634415666" (the
    # word was looked for in the whole sentence, path included)
    (["convert", "llama2c", "{ckpt}", "--out", "{tmp}/o", "--tokenizer", "{in_tokenizers}"],
     "--tokenizer '{in_tokenizers}' is not a tokenizer: it looks like a llama2.c checkpoint"),
    # the tokenizer given as the checkpoint: was "field 'hidden_dim': must be positive, got 0"
    (["convert", "llama2c", "{tokenizer_bin}", "--out", "{tmp}/o"], "tokenizer rather than a model: pass it to"),
])
def test_convert_mistakes_are_one_line(tmp_path, argv, match, capsys, sentencepiece_and_bin):
    checkpoint, _ = _write(tmp_path, "v1", random_llama2c_weights())
    (tmp_path / "notes.json").write_text('{"a": 1}')
    (tmp_path / "other.model").write_bytes(b"not a SentencePiece model")
    (tmp_path / "b").mkdir()
    beside, _ = _write(tmp_path / "b", "v1", random_llama2c_weights())
    (tmp_path / "b" / "tokenizer.bin").write_bytes(b"\x01\x00")
    gguf = tmp_path / "model.gguf"
    write_gguf_header(gguf)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(checkpoint.read_bytes()[:-1])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    (tmp_path / "my_tokenizers").mkdir()
    in_tokenizers = tmp_path / "my_tokenizers" / "stories.bin"
    in_tokenizers.write_bytes(checkpoint.read_bytes())
    paths = dict(ckpt=checkpoint, tmp=tmp_path, gguf=gguf, cut=cut, beside=beside, tokenizer_bin=sentencepiece_and_bin[1],
                 in_tokenizers=in_tokenizers)
    argv, match = [a.format(**paths) for a in argv], match.format(**paths)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert match in err and err.count("\n") == 1
    assert "converting" not in out     # refused before the conversion is announced
    if "gguf" in argv[2]:
        assert "is a GGUF file (llama.cpp's format)" in err


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/..", "{tmp}/tokdir"])
def test_convert_force_never_replaces_a_folder_holding_its_inputs(tmp_path, out, sentencepiece_and_bin, capsys):
    """--force replaces --out whole: a folder holding the checkpoint or the tokenizer (or one above
    them) would lose them, so it is refused, whatever --force says."""
    work = tmp_path / "work"
    work.mkdir()
    checkpoint, _ = _write(work, "v1", random_llama2c_weights(vocab_size=400))
    tokenizer = work / "tokdir" / "tokenizer.bin"
    tokenizer.parent.mkdir()
    tokenizer.write_bytes(sentencepiece_and_bin[1].read_bytes())
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    argv = ["convert", "llama2c", str(checkpoint), "--tokenizer", str(tokenizer), "--force",
            "--out", out.format(tmp=work)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "holds" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="out .* holds"):   # the Python API refuses it too
        convert_llama2c(checkpoint, work)
    assert checkpoint.is_file()


def test_convert_out_that_is_a_file_is_refused_even_with_force(tmp_path, capsys):
    checkpoint, _ = _write(tmp_path, "v1", random_llama2c_weights())
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    for force in ([], ["--force"]):
        assert main(["convert", "llama2c", str(checkpoint), "--out", str(taken), *force]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "is a file" in err and "--force" not in err   # no advice that cannot work
    assert taken.read_text() == "keep me"


def test_convert_may_replace_a_link_to_the_checkpoints_folder(tmp_path):
    """A link as --out is replaced by the new folder, and only the link goes: nothing is lost."""
    work = tmp_path / "work"
    work.mkdir()
    checkpoint, _ = _write(work, "v1", random_llama2c_weights())
    link = tmp_path / "link"
    link.symlink_to(work, target_is_directory=True)
    convert_llama2c(checkpoint, link)
    assert checkpoint.is_file() and not link.is_symlink() and (link / "config.json").is_file()


def test_mutated_headers_load_or_raise_checkpoint_error(tmp_path, robustness_count):
    """Seeded fuzz: random header bytes and cuts give a model or a CheckpointError, nothing else."""
    import random

    rng = random.Random(0)
    originals = {}
    for fmt in WRITERS:
        path, _ = _write(tmp_path, fmt, random_llama2c_weights(shared=fmt != "v1"))
        originals[fmt] = path.read_bytes()
    path, outcomes = tmp_path / "mutant.bin", {"loaded": 0, "refused": 0}
    for _ in range(200):
        data = bytearray(originals[rng.choice(list(originals))])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(48)
            value = rng.choice([0, -1, 1, 3, 7, 64, 2**31 - 1, -2**31, rng.randrange(2**32) - 2**31])
            data[at:at + 4] = struct.pack("<i", value)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            load_llama2c(path)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100
    robustness_count(f"llama2.c checkpoints: mutated headers ({outcomes['refused']} refused, "
                     f"{outcomes['loaded']} loaded)", 200)


def test_from_pretrained_reads_a_llama2c_file_and_names_other_files(tmp_path):
    from npllama.io.llama2c import read_llama2c

    path = tmp_path / "model.bin"
    write_legacy(path, random_llama2c_weights())
    model = Llama.from_pretrained(path, dtype=np.float64)
    config, params = read_llama2c(path, dtype=np.float64)
    assert model.config == config
    for name, value in params.items():
        np.testing.assert_array_equal(model.params[name], value)
    (tmp_path / "notes.gguf").write_bytes(b"GGUF" + bytes(60))   # read as GGUF (tests/io/test_gguf_import.py)
    with pytest.raises(CheckpointError, match="is not a readable GGUF file"):
        Llama.from_pretrained(tmp_path / "notes.gguf")


def test_the_tokenizer_is_read_as_a_bounded_regular_file(tmp_path, monkeypatch):
    import os

    import npllama.io.llama2c_tokenizer as llama2c_tokenizer

    if os.path.exists("/dev/zero"):  # an endless file: refused before a byte is read
        (tmp_path / "zero.bin").symlink_to("/dev/zero")
        with pytest.raises(CheckpointError, match="is a device"):
            read_llama2c_tokenizer(tmp_path / "zero.bin")
    big = tmp_path / "tokenizer.bin"
    big.write_bytes(struct.pack("<I", 4) + b"\0" * 200)
    monkeypatch.setattr(llama2c_tokenizer, "MAX_FILE_BYTES", 100)
    with pytest.raises(CheckpointError, match="over the 100-byte limit"):
        read_llama2c_tokenizer(big)


# ----- llama2.c's own run.c, where one is built ------------------------------------------------------

RUN_C = os.environ.get("NPLLAMA_LLAMA2C_RUN")  # llama2.c's `run`, built as its README says


@pytest.mark.skipif(not RUN_C, reason="set NPLLAMA_LLAMA2C_RUN to a built llama2.c `run`")
@pytest.mark.parametrize("shared", [True, False])
def test_run_c_writes_the_text_npllama_generates(tmp_path, sentencepiece_and_bin, shared):
    """run.c -t 0 (greedy) on a legacy file and its tokenizer.bin: the prompt's ids and the greedy
    continuation decode to run.c's own output (run.c drops bytes that are not printable)."""
    tokenizer, bin_path = sentencepiece_and_bin
    weights = random_llama2c_weights(dim=32, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=400,
                                     seq_len=48, shared=shared, seed=3)
    for name in ("tok", "wq", "wk", "w1", "w2", "cls"):
        weights[name] *= 4.0    # decisive logits: no near-ties between float orders
    write_legacy(tmp_path / "m.bin", weights)
    prompt, steps = "Once upon a time, Lily", 40
    done = subprocess.run([RUN_C, str(tmp_path / "m.bin"), "-z", str(bin_path), "-t", "0", "-n", str(steps),
                           "-i", prompt], capture_output=True, check=True)
    ids = tokenizer.encode(prompt)
    ours = load_llama2c(tmp_path / "m.bin").generate(ids, steps - len(ids) + 1, temperature=0, eos_id=tokenizer.bos_id)
    def printed_by_run_c(i):   # run.c's safe_printf: a lone byte piece only if printable or space
        piece = tokenizer.id_to_piece(i)
        return not (piece.startswith("<0x") and len(piece) == 6) or chr(int(piece[3:5], 16)) in string.printable
    text = tokenizer.decode([i for i in ours if i != tokenizer.bos_id and printed_by_run_c(i)])
    assert done.stdout.decode("utf-8").rstrip("\n") == text.rstrip("\n")
