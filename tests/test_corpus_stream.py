"""A corpus read as a stream (npllama.data.Corpus) gives what the whole text in memory gives -- the
same documents, tokenizer and token stream -- in memory that does not grow with the corpus.

The files are read in tiny blocks here (READ_BLOCK), so documents, markers and JSON lines cross
block boundaries; the expected values are computed in the test from the documents written."""
import json
import tracemalloc
import warnings

import numpy as np
import pytest

import npllama.corpus
import npllama.data
from npllama.corpus import make_default_corpus, unigram_cross_entropy, unigram_entropy
from npllama.data import Corpus, evaluation_batches, load_texts, tokenize_corpus, train_val_split
from npllama.io.reading import read_text
from npllama.tokenizer import Tokenizer

STORIES = make_default_corpus(60, seed=3)
# a few stories over several lines, a Windows line end, a line of spaces and a BOM-free Unicode line
DOCS = [story.replace(". ", ".\n", 2) for story in STORIES[:40]] + ["Ünïcode line\r\nand more", "last one"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.train(make_default_corpus(200), tmp_path_factory.mktemp("tok") / "tok", vocab_size=360)


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(npllama.data, "READ_BLOCK", 13, raising=False)
    monkeypatch.setattr(npllama.data, "ENCODE_CHUNK", 5)


def plain(doc: str) -> str:
    return doc.replace("\r\n", "\n").strip()


def written(tmp_path, separator: str):
    """A file of DOCS cut as `separator` says, and the documents load_texts is to find in it."""
    if separator == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n\n", encoding="utf-8")
        return path, DOCS
    joiner = {"blank-line": "\n \n\n", "marker:<|end|>": "\n<|end|>\n"}.get(separator)
    if separator == "line":
        docs = [plain(line) for d in DOCS for line in plain(d).split("\n")]
        text = "\n".join(docs)
    elif separator == "whole-file":
        docs = ["\n\n".join(map(plain, DOCS))]
        text = docs[0]
    else:
        docs, text = [plain(d) for d in DOCS], joiner.join(DOCS)
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    return path, docs


@pytest.mark.parametrize("separator", ["blank-line", "line", "marker:<|end|>", "whole-file", "jsonl"])
def test_a_streamed_corpus_gives_the_documents_tokens_and_tokenizer_of_the_text_in_memory(
        tmp_path, tok, separator):
    path, docs = written(tmp_path, separator)
    corpus = Corpus(path, "blank-line" if separator == "jsonl" else separator)
    assert list(corpus) == docs and list(corpus) == docs      # and again: each iteration reads anew
    assert len(corpus) == len(docs) and corpus.n_chars == sum(map(len, docs))
    expected = np.concatenate([tok.encode(d, bos=True, eos=True) for d in docs])
    ids = tokenize_corpus(corpus, tok, cache_path=tmp_path / "cache" / "tokens.npy")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, expected)
    if separator in ("blank-line", "jsonl"):   # (SentencePiece needs a few documents to fill 300 pieces)
        streamed = Tokenizer.train(corpus, tmp_path / "streamed", vocab_size=360)
        listed = Tokenizer.train(docs, tmp_path / "listed", vocab_size=360)
        assert streamed.model_bytes == listed.model_bytes


def test_a_folder_is_streamed_file_by_file_in_path_order(tmp_path, tok):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("b one\n\nb two\n")
    (tmp_path / "a.jsonl").write_text('{"text": "a one"}\n{"text": "  "}\n')
    (tmp_path / "c.txt").write_text("c one")
    docs = ["a one", "b one", "b two", "c one"]
    ids = tokenize_corpus(Corpus(tmp_path), tok, cache_path=tmp_path / "out" / "tokens.npy")
    np.testing.assert_array_equal(ids, np.concatenate([tok.encode(d, bos=True, eos=True) for d in docs]))


def test_what_cannot_be_read_is_named_as_the_whole_file_names_it(tmp_path):
    # the bad byte several blocks in: the byte and line counted across blocks
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"first line\n\nsecond line\nthird line\ncaf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8") as streamed:
        Corpus(path)
    with pytest.raises(ValueError, match="not UTF-8") as whole:
        read_text(path)
    assert str(streamed.value) == str(whole.value) and "byte 38, line 5" in str(whole.value)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": "a longer line, over blocks"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match="line 4: expected a JSON object"):
        Corpus(tmp_path / "bad.jsonl")
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(ValueError, match="is empty"):
        Corpus(tmp_path / "blank.txt")


def test_the_marker_warning_is_given_once_and_the_marker_found_across_blocks(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("Act one, a long scene.<|endoftext|>Act two, another long scene.")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert list(Corpus(path, "marker:<|endoftext|>")) == ["Act one, a long scene.", "Act two, another long scene."]
    assert not said
    path.write_text("Act one.\n\nAct two, without the marker at all.")
    with pytest.warns(UserWarning, match="never occurs"):
        corpus = Corpus(path, "marker:<|endoftext|>")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert list(corpus) == ["Act one.\n\nAct two, without the marker at all."]
    assert not said     # the first reading warned; the passes after it do not warn again


def test_a_marker_of_many_lines_is_found_across_blocks_shorter_than_it(tmp_path, monkeypatch):
    monkeypatch.setattr(npllama.data, "READ_BLOCK", 1)   # every line a block of its own
    path = tmp_path / "play.txt"
    path.write_text("Act one.\n-\n-\nAct two.\n-\n-\nAct three.")
    assert list(Corpus(path, "marker:\n-\n-\n")) == ["Act one.", "Act two.", "Act three."]
    path.write_text("Act one.\n-\n-\nAct two.")      # the only marker: no later one finds it either
    assert list(Corpus(path, "marker:\n-\n-\n")) == ["Act one.", "Act two."]

def test_the_cache_serves_a_corpus_and_a_list_of_the_same_documents_and_notices_a_change(tmp_path, tok,
                                                                                         monkeypatch):
    path, docs = written(tmp_path, "blank-line")
    cache = tmp_path / "run" / "tokens.npy"
    first = np.array(tokenize_corpus(docs, tok, cache_path=cache))
    monkeypatch.setattr(tok, "encode_batch", lambda *a, **k: pytest.fail("tokenized again"))
    np.testing.assert_array_equal(tokenize_corpus(Corpus(path), tok, cache_path=cache), first)
    monkeypatch.undo()
    path.write_text(path.read_text().replace("Once", "Twice", 1))
    changed = tokenize_corpus(Corpus(path), tok, cache_path=cache)
    assert not np.array_equal(changed, first)
    assert json.loads((tmp_path / "run" / "tokens.npy.json").read_text())["n_tokens"] == changed.shape[0]


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_tokens_come_from_memory(tmp_path, tok):
    path, docs = written(tmp_path, "blank-line")
    (tmp_path / "file").write_text("")
    with pytest.warns(RuntimeWarning, match="could not write the token cache"):
        ids = tokenize_corpus(Corpus(path), tok, cache_path=tmp_path / "file" / "tokens.npy")
    np.testing.assert_array_equal(ids, np.concatenate([tok.encode(d, bos=True, eos=True) for d in docs]))


def test_the_held_out_split_of_the_mapped_stream_is_a_view(tmp_path, tok):
    path, _ = written(tmp_path, "blank-line")
    ids = tokenize_corpus(Corpus(path), tok, cache_path=tmp_path / "tokens.npy")
    train, val = train_val_split(ids, 0.2, bos_id=tok.bos_id)
    assert np.shares_memory(train, ids) and np.shares_memory(val, ids)
    assert val[0] == tok.bos_id and train.shape[0] + val.shape[0] == ids.shape[0]


def test_a_corpus_file_removed_after_its_first_reading_is_refused_not_blamed_on_the_cache(tmp_path, tok):
    path, _ = written(tmp_path, "blank-line")
    corpus = Corpus(path)
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # not "could not write the token cache"
        with pytest.raises(ValueError, match="changed while it was being read .*or it was removed"):
            tokenize_corpus(corpus, tok, cache_path=tmp_path / "run" / "tokens.npy")

# ----- memory that does not grow with the corpus --------------------------------------------------

def peak_bytes(fn) -> int:
    """Peak bytes allocated through Python and NumPy while fn runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_and_tokenizing_a_corpus_takes_memory_independent_of_its_size(tmp_path, tok):
    def tokenized(n_copies):
        path = tmp_path / f"c{n_copies}.txt"
        path.write_text("\n\n".join(STORIES * n_copies))
        return lambda: tokenize_corpus(Corpus(path), tok, cache_path=tmp_path / f"run{n_copies}" / "tokens.npy")

    tokenized(1)()      # the first call imports and caches what any call needs: not measured
    small, big = peak_bytes(tokenized(2)), peak_bytes(tokenized(8))
    grown_text = len("\n\n".join(STORIES)) * 6    # 130 kB more text: holding it (as load_texts does) adds 4x that
    assert big - small < grown_text / 8, (small, big)


def test_the_train_path_statistics_take_memory_independent_of_the_stream_length(tmp_path, monkeypatch):
    monkeypatch.setattr(npllama.corpus, "COUNT_BLOCK", 1000, raising=False)
    monkeypatch.setattr(npllama.data, "SCAN_BLOCK", 1000, raising=False)

    def stream(n):
        ids = np.lib.format.open_memmap(tmp_path / f"ids{n}.npy", mode="w+", dtype=np.uint16, shape=(n,))
        ids[:] = np.arange(n) % 300
        ids.flush()
        return np.load(tmp_path / f"ids{n}.npy", mmap_mode="r", allow_pickle=False)

    def statistics(ids):
        train, val = train_val_split(ids, 0.5, bos_id=299)
        return lambda: (unigram_entropy(train, 300), unigram_cross_entropy(train, val, 300),
                        evaluation_batches(val, 2, 8, max_batches=1))

    small, big = stream(40_000), stream(160_000)
    grown = big.nbytes - small.nbytes     # 240 kB: one int64 copy of the tokens would add 4x that
    assert peak_bytes(statistics(big)) - peak_bytes(statistics(small)) < grown / 8
    ids = np.arange(5000) % 300
    np.testing.assert_allclose(unigram_entropy(stream(5000), 300), unigram_entropy(ids, 300), rtol=1e-12)
    counts = np.bincount(ids[:4000], minlength=300) + 1.0
    np.testing.assert_allclose(unigram_cross_entropy(ids[:4000], ids[4000:], 300),
                               -np.log(counts[ids[4000:]] / counts.sum()).mean(), rtol=1e-12)


def test_the_block_at_a_time_statistics_equal_the_whole_stream_ones(monkeypatch):
    # blocks of 7 tokens: the last block partial, and the first document start in the second block past the cut
    monkeypatch.setattr(npllama.corpus, "COUNT_BLOCK", 7, raising=False)
    monkeypatch.setattr(npllama.data, "SCAN_BLOCK", 7, raising=False)
    ids = np.arange(103) % 50 + 1
    ids[[0, 95]] = 0
    train, val = train_val_split(ids, 0.2, bos_id=0)
    assert train.shape[0] == 95 and val[0] == 0        # the cut at 82, the start 13 tokens on
    counts = np.bincount(train, minlength=51)
    p = counts[counts > 0] / train.size
    np.testing.assert_allclose(unigram_entropy(train, 51), -(p * np.log(p)).sum(), rtol=1e-12)
    np.testing.assert_allclose(unigram_cross_entropy(train, ids[:12], 51),
                               -np.log((counts + 1.0)[ids[:12]] / (counts + 1.0).sum()).mean(), rtol=1e-12)


def test_a_corpus_file_that_grows_past_the_budget_while_read_in_blocks_is_refused(tmp_path):
    from npllama.io.reading import read_text_blocks

    path = tmp_path / "growing.txt"
    path.write_text("one\ntwo\n")
    blocks = read_text_blocks(path, max_bytes=20, block_bytes=4)
    assert next(blocks) == "one\n"
    with path.open("a") as f:
        f.write("a line written meanwhile\n")
    with pytest.raises(ValueError, match="grew past the 20-byte limit while being read"):
        list(blocks)

def test_load_texts_still_lists_the_documents(tmp_path):
    path, docs = written(tmp_path, "marker:<|end|>")
    assert load_texts(path, "marker:<|end|>") == docs


def test_a_corpus_file_changed_after_its_first_reading_is_refused_not_cached(tmp_path, tok):
    path, _ = written(tmp_path, "blank-line")
    corpus = Corpus(path)
    with path.open("a") as f:
        f.write("\n\nA story written while the corpus was being tokenized.")
    with pytest.raises(ValueError, match="changed while it was being read"):
        tokenize_corpus(corpus, tok, cache_path=tmp_path / "run" / "tokens.npy")
    assert not (tmp_path / "run" / "tokens.npy.json").exists() and not (tmp_path / "run" / "tokens.npy").exists()
