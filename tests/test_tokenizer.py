"""Tokenizer: LLaMA-style SentencePiece training, exact roundtrips, special ids, clear errors."""
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.corpus import make_default_corpus, write_default_corpus
from npllama.tokenizer import MIN_VOCAB_SIZE, Tokenizer

N_STORIES = 2000
VOCAB = 512


@pytest.fixture(scope="module")
def stories():
    return make_default_corpus(N_STORIES, seed=0)


@pytest.fixture(scope="module")
def tok(stories, tmp_path_factory):
    return Tokenizer.train(stories, tmp_path_factory.mktemp("tok") / "stories", VOCAB)


def pieces(tok, ids):
    return [tok.id_to_piece(i) for i in ids]


# ----- training writes a LLaMA-like model ----------------------------------------------------------

def test_training_writes_model_and_vocab(tok):
    assert tok.path.name == "stories.model" and tok.path.is_file()
    assert tok.path.with_suffix(".vocab").is_file()
    assert tok.vocab_size == VOCAB


def test_special_ids_are_llamas(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert pieces(tok, [0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    # byte fallback: ids 3..258 are the 256 bytes, in order, as in LLaMA's tokenizer.model
    assert pieces(tok, [3, 3 + 0x0A, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]


def test_bos_and_eos_flags(tok):
    assert tok.encode("Tom ran.")[0] == 1
    assert tok.encode("Tom ran.", bos=False)[0] not in (1, 2)
    ids = tok.encode("Tom ran.", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == tok.encode("Tom ran.", bos=False)
    assert tok.encode("", bos=True, eos=True) == [1, 2]


def test_common_words_are_single_pieces(tok):
    # The corpus is small and repetitive: frequent words must have become merges.
    for word in ("▁the", "▁said", "▁friend", "▁little"):
        assert tok.piece_to_id(word) != tok.unk_id, word
    assert len(tok.encode("Once upon a time, there was a little girl named Lily.", bos=False)) <= 14


def test_training_is_deterministic(stories, tok, tmp_path):
    again = Tokenizer.train(stories, tmp_path / "again", VOCAB)
    assert pieces(again, range(VOCAB)) == pieces(tok, range(VOCAB))


def test_training_is_quiet(stories, tmp_path, capfd):
    Tokenizer.train(stories[:200], tmp_path / "quiet", 400)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ----- roundtrips ----------------------------------------------------------------------------------

def test_roundtrip_on_corpus_stories(tok, stories):
    for story in stories[:300]:
        ids = tok.encode(story)
        assert tok.decode(ids) == story
        assert tok.unk_id not in ids


@pytest.mark.parametrize("text", [
    "In 2024 there were 1,234,567 people.",
    "Grüße aus Köln! Ça va? 日本語のテキスト 🙂",
    "  two  spaces, a\ttab,\na newline and a trailing space ",
    " leading space",
    "",
])
def test_roundtrip_on_unseen_text(tok, text):
    ids = tok.encode(text, bos=True, eos=True)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids  # byte fallback: nothing is lost


@settings(max_examples=25, deadline=None)
@given(st.text(st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)), max_size=60))
def test_roundtrip_any_text(tok, text):
    # Any text at all, control characters and all -- except U+2581 "▁", which SentencePiece uses
    # to write spaces and so decodes as a space (LLaMA's tokenizer does the same), and lone
    # surrogates, which are not text (see the next test).
    assert tok.decode(tok.encode(text)) == text


def test_a_lone_surrogate_is_refused_clearly(tok):
    with pytest.raises(ValueError, match="lone surrogate U\\+D800 at position 2"):
        tok.encode("ab\ud800c")
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        tok.encode_batch(["fine", "\udcff"])


def test_the_whitespace_marker_decodes_as_a_space(tok):
    assert tok.decode(tok.encode("a\u2581b")) == "a b"


def test_unknown_characters_become_utf8_bytes(tok):
    ids = tok.encode("日", bos=False)
    assert pieces(tok, ids) == ["▁", "<0xE6>", "<0x97>", "<0xA5>"]
    assert tok.unknown_characters("日 🙂 \x00") == []     # byte fallback: no character is lost


def test_digits_are_split_one_per_piece(tok):
    ids = tok.encode("1234567890", bos=False)
    assert pieces(tok, ids)[0] == "▁"
    assert [tok.decode([i]) for i in ids[1:]] == list("1234567890")
    # inside the corpus too: "counted to 10" is two pieces for the number
    assert [tok.decode([i]) for i in tok.encode("10", bos=False)[1:]] == ["1", "0"]


def test_frequent_numbers_are_still_split_into_digits(stories, tmp_path):
    # Without split_digits, a number this frequent would become one merged piece.
    numbers = [f"In 2024 there were 1234 cats and 2024 dogs, {n} {n} {n}." for n in range(1000, 1300)]
    t = Tokenizer.train(stories[:300] + numbers * 3, tmp_path / "numbers", 600)
    assert [t.decode([i]) for i in t.encode("2024", bos=False)[1:]] == ["2", "0", "2", "4"]
    assert all(sum(c.isdigit() for c in t.decode([i])) <= 1 for i in range(t.vocab_size))


def test_encode_batch_equals_encode(tok, stories):
    batch = stories[:50] + ["", "42 ✓"]
    assert tok.encode_batch(batch, bos=True, eos=True) == [tok.encode(t, eos=True) for t in batch]
    assert tok.encode_batch([]) == []


def test_decode_ignores_bos_and_eos_and_accepts_arrays(tok):
    ids = tok.encode("Mia had a red kite.", bos=False)
    assert tok.decode([1, *ids, 2]) == "Mia had a red kite."
    assert tok.decode(np.array([1, *ids], dtype=np.uint16)) == "Mia had a red kite."
    assert tok.decode([]) == ""


def test_id_to_piece_and_piece_to_id_are_inverse(tok):
    for i in (0, 1, 2, 100, 300, VOCAB - 1):
        assert tok.piece_to_id(tok.id_to_piece(i)) == i


# ----- loading -------------------------------------------------------------------------------------

def test_load_gives_the_same_tokenizer(tok):
    for loaded in (Tokenizer(tok.path), Tokenizer.load(str(tok.path))):
        assert loaded.vocab_size == tok.vocab_size and loaded.fingerprint == tok.fingerprint
        assert loaded.encode("The end.") == tok.encode("The end.")


def test_missing_model_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(ValueError, match=r"nope\.model.*does not exist"):
        Tokenizer(missing)


@pytest.mark.parametrize("content", [b"this is not a model" * 10, b"", b'{"model": {"type": "BPE"}}'])
def test_corrupt_model_file_is_a_clear_error(tmp_path, content):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.model.*not a valid SentencePiece model"):
        Tokenizer(bad)


def test_check_vocab(tok):
    tok.check_vocab(VOCAB)
    with pytest.raises(ValueError, match=r"vocab_size 512.*vocab_size 300"):
        tok.check_vocab(300)
    with pytest.warns(UserWarning, match="extra rows"):   # a padded embedding: accepted
        tok.check_vocab(32000)


# ----- bad input -----------------------------------------------------------------------------------

def test_encode_rejects_non_strings(tok):
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", 3])


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match="out of range for vocab_size 512"):
        tok.decode([5, 512])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="flat"):
        tok.decode([[1, 2]])
    with pytest.raises(ValueError, match=f"token id {2**70} is out of range"):   # an integer, past int64
        tok.decode([5, 2**70])
    with pytest.raises(TypeError, match="integers"):
        tok.decode([5, "6"])
    # ids in an object array (Python ints, as a list of ids mixed with one past int64 becomes) that
    # are all in range are ids like any other: decoded, not an error (nor a StopIteration)
    assert tok.decode(np.array([5, 6], dtype=object)) == tok.decode([5, 6])
    assert tok.decode(np.array([], dtype=object)) == ""
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(VOCAB)


def test_vocab_size_below_byte_fallback_minimum(stories, tmp_path):
    with pytest.raises(ValueError, match=rf"at least {MIN_VOCAB_SIZE}.*256 byte pieces|256 byte pieces.*{MIN_VOCAB_SIZE}"):
        Tokenizer.train(stories[:10], tmp_path / "t", 200)
    with pytest.raises(TypeError, match="vocab_size"):
        Tokenizer.train(stories[:10], tmp_path / "t", 512.0)


def test_vocab_size_too_large_for_the_corpus(stories, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large.*at most \d+.*smaller vocab"):
        Tokenizer.train(stories[:50], tmp_path / "t", 5000)


def test_vocab_size_too_small_for_the_characters(tmp_path):
    many_chars = ["".join(chr(0x4E00 + i) for i in range(k, k + 40)) for k in range(0, 400, 40)]
    with pytest.raises(ValueError, match="too small for this corpus.*character_coverage"):
        Tokenizer.train(many_chars, tmp_path / "t", 300, character_coverage=1.0)


def test_vocab_size_too_small_at_the_lowest_coverage_suggests_only_a_larger_vocabulary(tmp_path):
    # Before: "a character_coverage below 0.98 (down to 0.98)", advice that cannot be followed
    many_chars = ["".join(chr(0x4E00 + i) for i in range(k, k + 40)) for k in range(0, 400, 40)]
    with pytest.raises(ValueError, match="too small for this corpus") as raised:
        Tokenizer.train(many_chars, tmp_path / "t", 300, character_coverage=0.98)
    assert "larger vocab_size (at least" in str(raised.value) and "character_coverage" not in str(raised.value)


def chinese_text(characters=600, documents=200):
    """Chinese-looking documents: ~290 distinct characters, the commonest far more frequent (Zipf)."""
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + 37 * i) for i in range(characters)]
    weights = [1 / (rank + 1) ** 1.5 for rank in range(characters)]
    return ["".join(rng.choices(alphabet, weights, k=30)) + "。" for _ in range(documents)]


def test_a_lower_character_coverage_fits_chinese_in_a_small_vocabulary_from_the_command_line(tmp_path, capsys):
    # Before: the advice for a vocabulary too small for the characters was "from Python,
    # Tokenizer.train(..., character_coverage=...)": the command line had no way to follow it.
    from npllama.cli import main

    (tmp_path / "zh.txt").write_text("\n\n".join(chinese_text()), encoding="utf-8")
    argv = ["tokenizer", "train", "--data", str(tmp_path / "zh.txt"), "--vocab-size", "450", "--out"]
    assert main([*argv, str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size (at least" in err and "--character-coverage below 0.9995 (down to 0.98)" in err
    assert main([*argv, str(tmp_path / "b"), "--character-coverage", "0.98"]) == 0
    tok = Tokenizer(tmp_path / "b.model")
    text = chinese_text()[-1]
    assert tok.decode(tok.encode(text)) == text and tok.vocab_size == 450
    # `npllama train` trains its tokenizer with the default: it says how to get another
    assert main(["train", "--data", str(tmp_path / "zh.txt"), "--vocab-size", "450", "--out", str(tmp_path / "run"),
                 "--steps", "1", "--no-progress"]) == 2
    assert "`npllama tokenizer train --character-coverage` and give it as --tokenizer" in capsys.readouterr().err


def test_other_training_argument_errors(stories, tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(stories[:10], tmp_path / "t", 512, model_type="wordpiece")
    # documents of spaces and newlines are not text (not "no non-empty lines": these lines are not empty)
    with pytest.raises(ValueError, match="no text: texts_or_files holds only white space"):
        Tokenizer.train(["", "  \n "], tmp_path / "t", 512)
    with pytest.raises(ValueError, match=r"no text: texts_or_files holds only white space \(or nothing\)"):
        Tokenizer.train([], tmp_path / "t", 512)
    with pytest.raises(TypeError, match=r"texts_or_files\[1\]"):
        Tokenizer.train(["fine", 7], tmp_path / "t", 512)
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.train(tmp_path / "missing.txt", tmp_path / "t", 512)
    with pytest.raises(ValueError, match="character_coverage"):
        Tokenizer.train(stories[:10], tmp_path / "t", 512, character_coverage=2.0)
    # SentencePiece refuses less than 0.98 with an internal CHECK message; before, 0.9 to 0.98 got it
    with pytest.raises(ValueError, match=r"character_coverage must be a number in \[0.98, 1\], got 0.95"):
        Tokenizer.train(stories[:10], tmp_path / "t", 512, character_coverage=0.95)


@pytest.mark.parametrize("option, value", [("vocab_size", 10**11), ("input_sentence_size", 10**20),
                                           ("max_sentence_length", 10**11), ("num_threads", 10**11), ("seed", 2**40)])
def test_numbers_past_sentencepieces_ints_are_refused_by_name(stories, tmp_path, option, value):
    # before: "INVALID_ARGUMENT: cannot parse "99999999999" as int." (or a pybind11 TypeError for
    # the seed), naming no argument, after the announcement of a training that never started
    notes = []
    options = {"vocab_size": 400, option: value}
    with pytest.raises(ValueError, match=rf"^{option} must be at most [\d,]+ \(SentencePiece's limit\), got {value:,}$"):
        Tokenizer.train(stories[:200], tmp_path / "t", **options, echo=notes.append)
    with pytest.raises(ValueError, match=r"num_threads must be a positive int"):
        Tokenizer.train(stories[:200], tmp_path / "t", 400, num_threads=-1)
    assert notes == []


def test_numpy_integers_are_integers(stories, tmp_path):
    t = Tokenizer.train(stories[:300], tmp_path / "np", np.int64(400), seed=np.int64(1),
                        max_sentence_length=np.int32(4192))
    assert t.vocab_size == 400


# ----- other inputs --------------------------------------------------------------------------------

def test_train_from_files(tmp_path):
    path = write_default_corpus(tmp_path / "c.txt", n_stories=500, seed=1)
    for source in (path, str(path), [path]):
        t = Tokenizer.train(source, tmp_path / "from_file", 400)
        assert t.vocab_size == 400
        story = make_default_corpus(3, seed=1)[2]
        assert t.decode(t.encode(story)) == story


def test_files_are_read_as_text_whatever_their_line_ends(stories, tmp_path):
    """Files are read by us, not by SentencePiece, which before learned "\\r" and ".\\r" pieces from a
    Windows file, failed with "INTERNAL: ... [!sentences_.empty()]" on an old-Mac file (one line,
    too long to train on) and dropped every line over max_sentence_length without a word."""
    lines = stories[:300]
    files = {"unix": "\n".join(lines) + "\n", "windows": "\ufeff" + "\r\n".join(lines) + "\r\n",
             "mac": "\r".join(lines) + "\r"}
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_bytes(text.encode("utf-8"))
    unix = Tokenizer.train(tmp_path / "unix.txt", tmp_path / "unix", 400)
    for name in ("windows", "mac"):
        assert Tokenizer.train(tmp_path / f"{name}.txt", tmp_path / name, 400).model_bytes == unix.model_bytes, name
    long_line = " ".join(["Zyxwvutsr"] * 2000)   # 20 kB: over max_sentence_length, cut at spaces
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n" + long_line + "\n", encoding="utf-8")
    assert Tokenizer.train(tmp_path / "long.txt", tmp_path / "long", 400).piece_to_id("\u2581Zyxwvutsr") != 0
    (tmp_path / "nul.txt").write_bytes(("\n".join(lines) + "\nbad\0line\n").encode("utf-8"))
    with pytest.raises(ValueError, match=r"nul\.txt: holds a NUL byte \(byte \d+, line 301\)"):
        Tokenizer.train(tmp_path / "nul.txt", tmp_path / "nul", 400)


def test_documents_longer_than_a_sentencepiece_sentence_are_chunked(stories, tmp_path):
    # One huge line: SentencePiece alone would skip it (max_sentence_length) and find no text.
    one_line = " ".join(stories[:300])
    assert len(one_line.encode()) > 4192 * 10
    t = Tokenizer.train([one_line], tmp_path / "long", 400)
    assert t.decode(t.encode(stories[0])) == stories[0]


def test_input_sentence_size_limits_the_sample(tmp_path):
    # Lines of random words: a sample of 101 lines offers far fewer pairs to merge than all 2000,
    # so SentencePiece's "at most N pieces" limit (reported in our error) is far lower.
    rng = random.Random(0)
    lines = [" ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(8))
             for _ in range(2000)]

    def most_pieces(**options):
        with pytest.raises(ValueError, match="too large") as error:
            Tokenizer.train(lines, tmp_path / "t", 200_000, **options)
        return int(re.search(r"at most (\d+) pieces", str(error.value)).group(1))

    assert most_pieces(input_sentence_size=101) < 0.5 * most_pieces()
    with pytest.raises(ValueError, match="input_sentence_size"):
        Tokenizer.train(lines, tmp_path / "t", 512, input_sentence_size=50)


def test_a_generator_of_texts_is_read_one_text_at_a_time(stories, tmp_path):
    """Before, the texts were gathered in a list first: a generator streaming a corpus larger than
    memory was held whole, though SentencePiece keeps only its sample (input_sentence_size)."""
    import tracemalloc

    def corpus():   # 6 MB of text, made as it is read
        for i in range(600):
            yield "\n".join(stories[(i + k) % len(stories)] for k in range(30))

    tracemalloc.start()
    try:
        Tokenizer.train(corpus(), tmp_path / "streamed", 400, input_sentence_size=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2e6   # Python's side: a few texts at a time (SentencePiece's sample is not traced)
    with pytest.raises(TypeError, match=r"texts_or_files\[3\] must be a str"):   # raised as it was
        Tokenizer.train(iter([*stories[:3], b"bytes", *stories[3:300]]), tmp_path / "t", 400)


def test_training_on_a_sample_says_so(stories, tmp_path, capsys):
    """Before, a corpus of more documents than input_sentence_size (1,000,000 for `npllama tokenizer
    train`, 200,000 for `npllama train`) was sampled without a word, and the command line had no
    flag for it."""
    from npllama.cli import main

    notes = []
    Tokenizer.train(stories[:300], tmp_path / "sampled", 400, input_sentence_size=200, echo=notes.append)
    assert len(notes) == 2 and "random sample of 200 of the corpus' 300 documents" in notes[1]
    Tokenizer.train(stories[:300], tmp_path / "all", 400, input_sentence_size=300, echo=notes.append)
    assert len(notes) == 3 and notes[2].startswith("training a SentencePiece BPE tokenizer with 400 pieces")
    (tmp_path / "c.txt").write_text("\n\n".join(stories[:300]), encoding="utf-8")
    assert main(["tokenizer", "train", "--data", str(tmp_path / "c.txt"), "--vocab-size", "400",
                 "--input-sentence-size", "250", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out   # said before the (slow) training, which before was silent
    assert out.startswith("training a SentencePiece BPE tokenizer with 400 pieces on 300 documents ...\n")
    assert "random sample of 250 of the corpus' 300 documents" in out


def test_trainer_options_can_be_overridden(stories, tmp_path):
    t = Tokenizer.train(stories[:200], tmp_path / "nosplit", 400, split_digits=False,
                        user_defined_symbols=["<story>"])
    assert t.piece_to_id("<story>") != t.unk_id
    assert Path(f"{tmp_path / 'nosplit'}.model").is_file()


def test_train_reports_a_full_disk_as_such_and_leaves_no_half_written_model(tmp_path, monkeypatch):
    import errno
    import os

    from .full_disk import files_on_a_full_disk

    texts = ["the cat sat on the mat.", "a dog ran in the park."] * 50
    monkeypatch.setattr(os, "fdopen", files_on_a_full_disk(os.fdopen))
    with pytest.raises(OSError, match="training the tokenizer failed.*out of space") as raised:
        Tokenizer.train(texts, tmp_path / "tok", vocab_size=300)
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no tok.model, no temporary


def test_train_writes_the_vocab_file_sentencepiece_would(tmp_path):
    texts = ["the cat sat on the mat.", "a dog ran in the park."] * 50
    tokenizer = Tokenizer.train(texts, tmp_path / "tok", vocab_size=300)
    lines = (tmp_path / "tok.vocab").read_text(encoding="utf-8").splitlines()
    assert len(lines) == tokenizer.vocab_size == 300
    assert lines[:3] == ["<unk>\t0", "<s>\t0", "</s>\t0"] and lines[3] == "<0x00>\t0"
    assert (tmp_path / "tok.model").read_bytes() == tokenizer.model_bytes


def test_the_tokenizer_command_cuts_documents_as_told_and_trains_the_model_type_asked(tmp_path, capsys):
    """--doc-separator as `npllama train` reads it (a marker keeps blank lines inside a document), and
    --model-type unigram is SentencePiece's other algorithm."""
    from npllama.cli import main
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    stories = make_default_corpus(150)
    (tmp_path / "c.txt").write_text("\n\n<|doc|>".join(stories), encoding="utf-8")
    argv = ["tokenizer", "train", "--data", str(tmp_path / "c.txt"), "--vocab-size", "360"]
    assert main([*argv, "--doc-separator", "marker:<|doc|>", "--model-type", "unigram", "--out", str(tmp_path / "u")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    unigram, bpe = Tokenizer(tmp_path / "u.model"), Tokenizer(tmp_path / "b.model")
    assert unigram.model_bytes != bpe.model_bytes
    pieces = lambda tok: {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert not any("|" in p for p in pieces(unigram))   # cut at the marker: it was never text
    assert any("|" in p for p in pieces(bpe))           # cut at blank lines: "<|doc|>" opens each document
    assert unigram.decode(unigram.encode(stories[0], bos=False)) == stories[0]
    assert main([*argv, "--doc-separator", "comma", "--out", str(tmp_path / "x")]) == 2
    assert "--doc-separator must be" in capsys.readouterr().err


def test_without_byte_fallback_the_vocabulary_needs_no_byte_pieces(tmp_path):
    stories = make_default_corpus(100)
    small = Tokenizer.train(stories, tmp_path / "small", vocab_size=80, byte_fallback=False)
    assert small.vocab_size == 80 and small.encode("☃")[-1] == small.unk_id     # no byte piece to spell it
    with pytest.raises(ValueError, match=r"vocab_size=3 is too small: <unk>, <s> and </s> take 3 ids"):
        Tokenizer.train(stories, tmp_path / "tiny", vocab_size=3, byte_fallback=False)
    with pytest.raises(ValueError, match=r"its characters plus the 3 special pieces already need \d+\.  .*"
                                         r"the rarest characters are written as <unk>\.$"):
        Tokenizer.train(stories, tmp_path / "few", vocab_size=20, byte_fallback=False)


def test_a_folder_given_as_the_training_file_is_read_as_the_command_line_reads_it(tmp_path):
    (tmp_path / "texts").mkdir()
    with pytest.raises(ValueError, match=r"corpus folder .*texts' contains no .txt or .jsonl files"):
        Tokenizer.train(tmp_path / "texts", tmp_path / "tok", vocab_size=360)
    from npllama.data import load_texts

    write_default_corpus(tmp_path / "texts" / "stories.txt", n_stories=100)
    assert Tokenizer.train(tmp_path / "texts", tmp_path / "tok", vocab_size=360).model_bytes == \
        Tokenizer.train(load_texts(tmp_path / "texts"), tmp_path / "listed", vocab_size=360).model_bytes


def test_a_prefix_ending_in_a_slash_is_refused_before_training(tmp_path, capsys):
    """`--out tok/` (a folder the user meant to write into) wrote tok.model and tok.vocab beside the
    folder, since pathlib drops the slash; it is refused, naming --out (model_prefix in Python),
    before the training and before an older tok.model could be said to be replaced."""
    from npllama.cli import main
    from npllama.tokenizer import Tokenizer

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok.model").write_bytes(b"an older file")
    folder = str(tmp_path / "tok") + "/"
    with pytest.raises(ValueError, match=r"model_prefix must be a file prefix .* e.g. '.*tok/tokenizer'"):
        Tokenizer.train(["never read"], folder, 300)
    assert main(["tokenizer", "train", "--out", folder]) == 2
    err = capsys.readouterr().err
    assert "--out must be a file prefix" in err and "replace" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "tok.model"] and not any((tmp_path / "tok").iterdir())


def test_encoding_characters_a_tokenizer_without_byte_fallback_lacks_says_they_became_unk(tmp_path, capsys):
    # Before: `npllama tokenizer encode` with a .model trained without byte fallback turned 🙂 and 日
    # into <unk> (id 0) without a word, while the command's help promises decode(encode(x)) == x.
    from npllama.cli import main

    Tokenizer.train(make_default_corpus(100), tmp_path / "nobf", vocab_size=120, byte_fallback=False)
    model = str(tmp_path / "nobf.model")
    with pytest.warns(UserWarning, match=r"no byte fallback: 2 characters not in its vocabulary \('🙂', '日'\) "
                                         r"became <unk> \(id 0\)"):
        assert main(["tokenizer", "encode", "--model", model, "hi 🙂 日 🙂 <unk>"]) == 0
    # the typed "<unk>" is the control piece's id, as transformers gives it, and not a lost "<" or ">"
    assert json.loads(capsys.readouterr().out).count(0) == 4
    # text the vocabulary spells is encoded without a warning, a typed "<unk>" included
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["tokenizer", "encode", "--model", model, "hi <unk>"]) == 0
    assert Tokenizer(model).unknown_characters("hi <unk> 🙂") == ["🙂"]


def test_text_to_encode_that_is_not_utf8_is_named_as_such(tok, capsys, monkeypatch):
    # Before: Latin-1 bytes piped in (or given as the argument) were refused as "not valid Unicode
    # text: it holds a lone surrogate U+DCE9", Python's escape for the byte, not what the user gave.
    import io
    import os

    from npllama.cli import main

    argv = ["tokenizer", "encode", "--model", str(tok.path)]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a\ncaf\xe9"), encoding="utf-8",
                                                       errors="surrogateescape"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "standard input: is not UTF-8 text (byte 5, line 2" in err and "surrogate" not in err
    assert main([*argv, os.fsdecode(b"caf\xe9")]) == 2
    err = capsys.readouterr().err
    assert "the text argument: is not UTF-8 text (byte 3, line 1" in err and "surrogate" not in err
    # UTF-8 on standard input is encoded as it is, \r\n and a NUL byte included
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("é\r\n\0".encode()), encoding="utf-8"))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == tok.encode("é\r\n\0")


@pytest.mark.parametrize("stream", ["bytes", "text"])
def test_standard_input_over_the_read_budget_is_refused_by_both_commands(tok, capsys, monkeypatch, stream):
    # one reader of standard input serves tokenizer encode and classify --file -: before, encode read
    # any amount (NPLLAMA_MAX_READ aside), and classify failed on a text stream in sys.stdin's place
    import io

    from npllama.cli import main

    monkeypatch.setenv("NPLLAMA_MAX_READ", "10")
    data = "twelve bytes"

    def stdin():
        return io.StringIO(data) if stream == "text" else io.TextIOWrapper(io.BytesIO(data.encode()))

    monkeypatch.setattr("sys.stdin", stdin())
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 2
    assert "standard input is over the 10-byte limit" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", stdin())
    assert main(["classify", "--model", str(tok.path), "--file", "-"]) == 2
    assert "cannot read --file -: standard input is over the 10-byte limit" in capsys.readouterr().err
    data = "ten bytes!"    # at the limit: read
    monkeypatch.setattr("sys.stdin", stdin())
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 0
    assert json.loads(capsys.readouterr().out) == tok.encode(data)


class _BufferAllocatingWhatItIsAskedFor:
    """sys.stdin.buffer as a BufferedReader is under `ulimit -v 2000000`: read(n) allocates n bytes
    before it reads, so a read of more than the address space allows fails however little comes."""

    def __init__(self, data: bytes):
        import io

        self._data = io.BytesIO(data)

    def read(self, n=-1):
        if n < 0 or n > 1024**3:
            raise MemoryError
        return self._data.read(n)


def test_standard_input_is_read_in_blocks_not_one_read_of_the_whole_budget(tok, capsys, monkeypatch):
    # Before: one read of NPLLAMA_MAX_READ + 1 bytes (4 GiB by default), which a BufferedReader
    # allocates up front: a MemoryError under an address-space limit for two words of input
    import types

    from npllama.cli import main

    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=_BufferAllocatingWhatItIsAskedFor(b"hello there")))
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 0
    assert json.loads(capsys.readouterr().out) == tok.encode("hello there")
    monkeypatch.setenv("NPLLAMA_MAX_READ", "10")
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=_BufferAllocatingWhatItIsAskedFor(b"hello there")))
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 2
    assert "standard input is over the 10-byte limit" in capsys.readouterr().err


def test_a_text_stream_in_standard_inputs_place_is_encoded_as_it_is(tok, capsys, monkeypatch):
    # its text has no bytes beneath it: a lone surrogate in it is the text's, refused as encode refuses
    # it. Before: "standard input: is not UTF-8 text (byte 1 ...); it reads as Windows-1252/Latin-1
    # text ... save it again as CSV UTF-8" -- bytes the stream never had
    import io

    from npllama.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("a\udcffb"))
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 2
    err = capsys.readouterr().err
    assert "lone surrogate U+DCFF" in err and "UTF-8" not in err
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeffé\r\n\0"))   # as it is: nothing dropped or changed
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 0
    assert json.loads(capsys.readouterr().out) == tok.encode("\ufeffé\r\n\0")


def test_a_closed_standard_input_is_named_as_such(tok, capsys, monkeypatch):
    # `npllama tokenizer encode --model M <&-`: Python sets sys.stdin to None. Before: an
    # AttributeError traceback ('NoneType' object has no attribute 'read'), from both commands
    from npllama.cli import main

    monkeypatch.setattr("sys.stdin", None)
    assert main(["tokenizer", "encode", "--model", str(tok.path)]) == 2
    assert "standard input is closed" in capsys.readouterr().err
    assert main(["classify", "--model", str(tok.path), "--file", "-"]) == 2
    assert "cannot read --file -: standard input is closed" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "--model", str(tok.path)]) == 2   # its ids read from there too
    assert "standard input is closed" in capsys.readouterr().err


def test_decode_reads_its_ids_from_standard_input_within_the_read_budget(tok, capsys, monkeypatch):
    # before: sys.stdin.read() of any amount, past NPLLAMA_MAX_READ
    import io

    from npllama.cli import main

    ids = tok.encode("hello there", bos=False)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(ids).encode())))
    assert main(["tokenizer", "decode", "--model", str(tok.path)]) == 0
    assert capsys.readouterr().out == "hello there\n"
    monkeypatch.setenv("NPLLAMA_MAX_READ", "3")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ids)))
    assert main(["tokenizer", "decode", "--model", str(tok.path)]) == 2
    assert "standard input is over the 3-byte limit" in capsys.readouterr().err


def test_the_commands_help_names_the_one_character_that_does_not_come_back(tok, capsys):
    # Before: `npllama tokenizer --help` promised decode(encode(x)) is x for every x; U+2581 "▁",
    # SentencePiece's mark for a space, comes back as a space (the module docstring said so, the help not).
    from npllama.cli import main

    assert tok.decode(tok.encode("\u2581a b")) == " a b"
    with pytest.raises(SystemExit):
        main(["tokenizer", "--help"])
    assert "U+2581" in " ".join(capsys.readouterr().out.split())


def test_the_help_names_piece_names_in_the_text_as_the_other_exception(tok, tmp_path, capsys):
    # Before: the help and Tokenizer.decode promised decode(encode(x)) is x for every x without
    # U+2581, but a control piece's name typed in the text becomes its id (as transformers encodes
    # it) and comes back as nothing, and the text after a user-defined piece gets its own space.
    from npllama.cli import main

    assert tok.decode(tok.encode("a<s>b")) == "a b"
    ud = Tokenizer.train(make_default_corpus(100), tmp_path / "ud", 400, user_defined_symbols=["<|x|>"])
    assert ud.decode(ud.encode("a<|x|>b")) == "a<|x|> b"
    with pytest.raises(SystemExit):
        main(["tokenizer", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the name of a control or user-defined piece (<s>, </s>, <unk>)" in help_text, help_text
    assert '"a<s>b" -> "a b"' in " ".join(Tokenizer.decode.__doc__.split())


def test_a_folder_given_as_the_model_to_encode_with_names_its_tokenizer_model(tok, tmp_path, capsys):
    # Before: `--model runs/tiny` was refused as "is a folder, not a regular file", though the folder
    # holds the tokenizer.model the user meant.
    import shutil

    from npllama.cli import main

    shutil.copy(tok.path, tmp_path / "tokenizer.model")
    assert main(["tokenizer", "encode", "--model", str(tmp_path), "hi"]) == 2
    assert f"--model {str(tmp_path)!r} is a folder: give its tokenizer.model, --model " \
           f"{str(tmp_path / 'tokenizer.model')}" in capsys.readouterr().err
    assert main(["tokenizer", "decode", "--model", str(tmp_path / "empty"), "1"]) == 2   # no such file: said as before
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("doc_separator", ["blank-line", "marker:<END>", "line"])
def test_a_file_trains_the_same_tokenizer_from_python_as_from_the_command_line(tmp_path, doc_separator, capsys):
    """`Tokenizer.train("my.txt", ...)` and `npllama tokenizer train --data my.txt` are one route:
    documents cut as --doc-separator says, each seen whole (not a line at a time in Python only)."""
    from npllama.cli import main

    stories = make_default_corpus(200, seed=4)
    joiner = {"blank-line": "\n\n", "marker:<END>": "<END>\n", "line": "\n"}[doc_separator]
    data = tmp_path / "my.txt"
    data.write_text(joiner.join(s.replace("\n", " ") if doc_separator == "line" else s for s in stories),
                    encoding="utf-8")
    extra = [] if doc_separator == "blank-line" else ["--doc-separator", doc_separator]
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "400", "--out", str(tmp_path / "cli"),
                 *extra]) == 0
    by_python = Tokenizer.train(data, tmp_path / "python", 400, doc_separator=doc_separator)
    assert by_python.model_bytes == (tmp_path / "cli.model").read_bytes()
    if doc_separator == "blank-line":   # the default, as the command line's
        assert Tokenizer.train(str(data), tmp_path / "default", 400).model_bytes == by_python.model_bytes
    # a folder of files, as the command line reads it
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_bytes(data.read_bytes())
    assert main(["tokenizer", "train", "--data", str(folder), "--vocab-size", "400", "--out",
                 str(tmp_path / "cli_folder"), *extra]) == 0
    assert Tokenizer.train(folder, tmp_path / "py_folder", 400, doc_separator=doc_separator).model_bytes == \
        (tmp_path / "cli_folder.model").read_bytes()


def test_tokenizer_train_help_says_what_it_does_and_encode_says_the_text_is_positional(tmp_path, capsys):
    from npllama.cli import main

    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--help"])
    out = capsys.readouterr().out
    assert "Train a SentencePiece tokenizer" in out.split("options:")[0]   # a description, before the options
    Tokenizer.train(make_default_corpus(200, seed=0), tmp_path / "tok", 400)
    assert main(["tokenizer", "encode", "--model", str(tmp_path / "tok.model"), "--text", "Once upon a time"]) == 2
    err = capsys.readouterr().err
    assert "positional" in err and f"--model {tmp_path / 'tok.model'} 'Once upon a time'" in err
    assert "unrecognized" not in err
    assert main(["tokenizer", "encode", "--model", str(tmp_path / "tok.model"), "Once upon a time"]) == 0


def test_a_tokenizer_json_or_a_folder_given_to_train_names_the_tokenizer_model_to_give(tok, tmp_path, capsys):
    # Before: `npllama train --tokenizer runs/x/model/tokenizer.json` said to "load its folder with
    # npllama.runs.load_tokenizer", a Python function the command line cannot use, and a folder was
    # refused as "not a regular file"; the tokenizer.model beside it is what the flag takes.
    import shutil

    from npllama.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tok.path, folder / "tokenizer.model")
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(make_default_corpus(50)), encoding="utf-8")
    train = ["train", "--out", str(tmp_path / "run"), "--data", str(data), "--no-progress", "--tokenizer"]
    assert main([*train, str(folder / "tokenizer.json")]) == 2
    err = capsys.readouterr().err
    assert f"give the tokenizer.model beside it, --tokenizer {folder / 'tokenizer.model'}" in err, err
    assert "load_tokenizer" not in err
    assert main([*train, str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"is a folder: give its tokenizer.model, --tokenizer {folder / 'tokenizer.model'}" in err, err
    assert not (tmp_path / "run").exists()
    assert main(["tokenizer", "encode", "--model", str(folder / "tokenizer.json"), "hi"]) == 2
    assert f"--model {folder / 'tokenizer.model'}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="npllama.runs.load_tokenizer"):   # Python keeps its advice
        Tokenizer(folder / "tokenizer.json")
