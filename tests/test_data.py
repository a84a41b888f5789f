"""Data pipeline: reading corpora, tokenizing with a cache, splitting, and resumable batches."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.corpus import make_default_corpus
from npllama.data import (BatchLoader, evaluation_batches, load_texts, split_documents,
                          tokenize_corpus, train_val_split)
from npllama.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def stories():
    return make_default_corpus(2000, seed=0)


@pytest.fixture(scope="module")
def tok(stories, tmp_path_factory):
    return Tokenizer.train(stories, tmp_path_factory.mktemp("tok") / "stories", 512)


# ----- load_texts ----------------------------------------------------------------------------------

def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\nstill first\n\n\n  \nsecond doc\n\t\nthird\n\n", encoding="utf-8")
    assert load_texts(path) == ["first doc\nstill first", "second doc", "third"]


def test_txt_with_windows_line_endings(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    assert load_texts(path) == ["one\ntwo", "three"]


def test_txt_without_blank_lines_is_one_document(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb\nc")
    assert load_texts(path) == ["a\nb\nc"]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.text("ab \n", min_size=1, max_size=12), min_size=1, max_size=6))
def test_split_documents_rule(chunks):
    # Documents without blank lines inside, joined by blank lines, come back as they were.
    docs = ["\n".join(line for line in c.split("\n") if line.strip()).strip() for c in chunks]
    docs = [d for d in docs if d]
    assert split_documents("\n\n".join(docs)) == docs


def test_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [{"text": "one"}, {"text": "two\n\nstill two", "id": 7}, {"text": "  "}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert load_texts(path) == ["one", "two\n\nstill two"]


@pytest.mark.parametrize("bad_line, message", [
    ('{"text": "unclosed', r"c\.jsonl' line 2: is not valid JSON"),
    ('{"txt": "typo"}', r"c\.jsonl' line 2: expected a JSON object with a \"text\" field"),
    ('["text"]', r"line 2: expected a JSON object"),
    # a JSON array file or pretty-printed JSON saved as .jsonl: before, "expected a JSON object" and
    # "is not valid JSON (Expecting value: line 1 column 2 (char 1))", with no word of JSON Lines
    ('[{"text": "a"}, {"text": "b"}]', r"line 2: expected a JSON object with a \"text\" field, got a JSON array; "
                                       r"a JSON array of objects becomes JSON Lines with jq -c '\.\[\]'"),
    ('[\n  {"text": "a"}\n]', r"line 2: '\[' alone on a line starts JSON written over many lines, but a \.jsonl "
                               r"file holds one JSON object per line; .*jq -c"),
    ('{\n  "text": "a"\n}', r"line 2: '\{' alone on a line starts JSON written over many lines"),
    ('{"text": 42}', r"line 2: \"text\" must be a str, got int"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + bad_line + "\n")
    with pytest.raises(ValueError, match=message):
        load_texts(path)


def test_chinese_text_saved_as_gbk_is_refused_saying_how_to_convert_it(tmp_path):
    # Chinese Windows saves text as GBK (GB18030): before, only "is not UTF-8 text (byte 0: ...)"
    (tmp_path / "zh.txt").write_bytes("今天天气晴朗，小明去了公园。\n".encode("gb18030") * 20)
    with pytest.raises(ValueError, match=r"zh.txt: is not UTF-8 text \(byte 0, line 1: .*it reads as Chinese text in "
                                         r"GB18030/GBK.*iconv -f GB18030 -t UTF-8"):
        load_texts(tmp_path / "zh.txt")
    (tmp_path / "fr.txt").write_bytes("Un caf\xe9 na\xefve, s'il vous pla\xeet.\n".encode("latin-1") * 20)
    # Western Windows and Excel's plain "CSV" save Windows-1252: before, no advice at all
    with pytest.raises(ValueError, match=r"fr.txt: is not UTF-8 text \(byte 6, line 1: [^;]*; it reads as "
                                         r"Windows-1252/Latin-1 .*\"CSV UTF-8\".*iconv -f WINDOWS-1252 -t UTF-8"):
        load_texts(tmp_path / "fr.txt")


@pytest.mark.parametrize("data, message", [
    # Notepad's "Unicode": before, "is not UTF-8 text (byte 0: invalid start byte)", with no word of what it is
    ("Hello.\r\n\r\nWorld.\r\n".encode("utf-16"), r"u.txt: is UTF-16 text .*iconv -f UTF-16 -t UTF-8"),
    # UTF-16 without its byte-order mark is valid UTF-8 with every other byte NUL: before, read and
    # trained on as "H\x00e\x00l\x00..." without a word
    ("Hello.\n\nWorld.\n".encode("utf-16-le"), r"u.txt: holds a NUL byte \(byte 1, line 1\).*UTF-16LE text "
                                                r"without a byte-order mark.*iconv -f UTF-16LE -t UTF-8"),
    ("Hello.\n\nWorld.\n".encode("utf-16-be"), r"byte 0, line 1.*iconv -f UTF-16BE"),
    (b"one\n\ntwo\r\nth\x00ree\n", r"u.txt: holds a NUL byte \(byte 12, line 4\).*tr -d"),   # a stray one: also refused
    # Latin-1 / Windows-1252 far into a file: before, only the byte, to be counted by hand
    (b"caf\xc3\xa9\n" * 3 + b"\r\n\rna\xefve\n", r"u.txt: is not UTF-8 text \(byte 23, line 6: "),
])
def test_text_that_is_not_utf8_is_refused_naming_line_byte_and_encoding(tmp_path, data, message):
    (tmp_path / "u.txt").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        load_texts(tmp_path / "u.txt")


def test_line_makes_each_line_a_document(tmp_path):
    # text written a paragraph per line (as Chinese often is): before, no separator cut at single
    # newlines, and such a file was one document whatever --doc-separator said
    text = "第一段。\n第二段！\n  \n第三段\u2028同一段\n"
    assert split_documents(text, "line") == ["第一段。", "第二段！", "第三段\u2028同一段"]
    assert split_documents(text, "blank-line") == ["第一段。\n第二段！", "第三段\u2028同一段"]
    (tmp_path / "zh.txt").write_text(text.replace("\n", "\r\n"), encoding="utf-8")
    assert load_texts(tmp_path / "zh.txt", "line") == ["第一段。", "第二段！", "第三段\u2028同一段"]


@pytest.mark.parametrize("separator", ["blank-line", "line", "whole-file", "marker:<|end|>"])
def test_a_windows_file_with_a_bom_reads_as_the_same_text(tmp_path, separator):
    """Notepad's UTF-8: a byte-order mark and \\r\\n line ends.  The documents are those of the
    plain file, whatever the separator: no U+FEFF before the first word, no \\r in any document."""
    text = "Café 東京 😀\nline two\n\nsecond\n<|end|>\nthird\u2028still third\x85same line\n"
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_bytes(text.encode("utf-8"))
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    expected = load_texts(plain, separator)
    assert load_texts(windows, separator) == expected
    assert any("\u2028still third\x85same line" in doc for doc in expected)   # line breaks of other kinds stay
    assert split_documents(text.replace("\n", "\r"), separator) == expected     # old Mac line ends too


def test_jsonl_with_a_bom_crlf_and_unicode_line_separators_in_its_strings(tmp_path):
    texts = ["one\u2028two", "caf\x85e", "three\r\nfour"]   # valid JSON, written unescaped
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"text": t}, ensure_ascii=False)
                                                   for t in texts).encode("utf-8") + b"\r\n")
    assert load_texts(path) == texts


def test_folder_reads_txt_and_jsonl_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("b1\n\nb2")
    (tmp_path / "a.txt").write_text("a1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "c1"}\n')
    (tmp_path / "notes.md").write_text("ignored")
    with pytest.warns(UserWarning, match=r"left out what is not \.txt or \.jsonl \(notes\.md\)"):
        assert load_texts(tmp_path) == ["a1", "b1", "b2", "c1"]


def test_a_folder_says_what_it_leaves_out_and_follows_links(tmp_path):
    """Before: hidden files and folders were read (Jupyter's .ipynb_checkpoints copy of a corpus
    trained twice), .md/.csv files and Windows' .TXT skipped without a word, a linked folder never
    read and a link to nothing skipped."""
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    for path, text in [(corpus / "a.txt", "a1"), (corpus / "B.TXT", "b1"), (corpus / "notes.md", "# notes"),
                       (corpus / ".ipynb_checkpoints" / "a-checkpoint.txt", "a1"), (corpus / ".draft.txt", "d"),
                       (elsewhere / "c.jsonl", '{"text": "c1"}')]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (corpus / "linked").symlink_to(elsewhere)
    (corpus / "loop").symlink_to(corpus)            # read once, not forever
    with pytest.warns(UserWarning, match=r"left out what is not \.txt or \.jsonl \(notes\.md\) and what is hidden "
                                         r"\(\.draft\.txt, \.ipynb_checkpoints\)"):
        assert load_texts(corpus) == ["b1", "a1", "c1"]
    assert load_texts(corpus / "B.TXT") == ["b1"]
    (corpus / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    with pytest.raises(ValueError, match=r"gone\.txt' is a symbolic link to .*deleted\.txt', which does not exist"):
        load_texts(corpus)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt.*does not exist"):
        load_texts(tmp_path / "nothing.txt")


def test_empty_corpora_are_rejected(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n\n")
    with pytest.raises(ValueError, match=r"empty\.txt.*is empty"):
        load_texts(tmp_path / "empty.txt")
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="is empty"):
        load_texts(tmp_path / "empty.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"no \.txt or \.jsonl files to read$"):
        load_texts(tmp_path / "folder")
    # before, only "contains no .txt or .jsonl files", though it held text in hidden ones
    (tmp_path / "folder" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "folder" / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("Once upon a time.")
    (tmp_path / "folder" / "notes.md").write_text("# notes")
    with pytest.raises(ValueError, match=r"no \.txt or \.jsonl files to read \(left out what is not \.txt or \.jsonl "
                                         r"\(notes\.md\) and what is hidden \(\.ipynb_checkpoints\)\)$"):
        load_texts(tmp_path / "folder")


def test_unsupported_format_and_bad_encoding(tmp_path):
    (tmp_path / "c.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"\.txt or \.jsonl.*'\.csv'$"):
        load_texts(tmp_path / "c.csv")
    (tmp_path / "c.json").write_text('[{"text": "a"}]')
    with pytest.raises(ValueError, match=r"\.txt or \.jsonl.*'\.json'; a JSON array of objects becomes JSON Lines"):
        load_texts(tmp_path / "c.json")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8"):
        load_texts(tmp_path / "latin1.txt")


# ----- tokenize_corpus -----------------------------------------------------------------------------

def test_stream_layout_is_bos_doc_eos(tok, stories):
    ids = tokenize_corpus(stories[:20], tok)
    expected = np.concatenate([tok.encode(s, bos=True, eos=True) for s in stories[:20]])
    assert ids.dtype == np.uint16 and ids.ndim == 1
    np.testing.assert_array_equal(ids, expected)
    assert (ids == tok.bos_id).sum() == 20 and (ids == tok.eos_id).sum() == 20


def count_encodes(monkeypatch, tok):
    calls = []
    original = tok.encode_batch

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tok, "encode_batch", counting)
    return calls


def test_progress_follows_characters_not_documents(tok, stories, monkeypatch, capsys):
    """Before, the bar was shown for more than ten chunks of 1024 documents: a corpus of a few long
    books (--doc-separator whole-file or marker) tokenized for minutes without a word."""
    import npllama.data

    books = [" ".join(stories[i:i + 100]) for i in range(0, 500, 100)]     # five long documents
    expected = np.concatenate([tok.encode(book, eos=True) for book in books])
    monkeypatch.setattr(npllama.data, "ENCODE_CHUNK_CHARS", sum(map(len, books)) // 20, raising=False)
    calls = count_encodes(monkeypatch, tok)
    np.testing.assert_array_equal(tokenize_corpus(books, tok), expected)
    assert len(calls) == 5 and "tokenizing" in capsys.readouterr().err      # one book a step, with a bar
    np.testing.assert_array_equal(tokenize_corpus(books[:1], tok), expected[:len(tok.encode(books[0], eos=True))])
    assert "tokenizing" not in capsys.readouterr().err


def test_cache_hit_skips_tokenizing(tok, stories, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "tokens.npy"
    calls = count_encodes(monkeypatch, tok)
    first = tokenize_corpus(stories[:300], tok, cache_path=cache)
    assert calls and cache.is_file() and (tmp_path / "cache" / "tokens.npy.json").is_file()
    n_calls, mtime = len(calls), cache.stat().st_mtime_ns
    second = tokenize_corpus(stories[:300], tok, cache_path=cache)
    assert len(calls) == n_calls and cache.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.uint16 and not second.flags.writeable  # memory-mapped, read-only


def test_cache_is_invalidated_by_new_text(tok, stories, tmp_path, monkeypatch):
    cache = tmp_path / "tokens.npy"
    before = np.array(tokenize_corpus(stories[:100], tok, cache_path=cache))
    calls = count_encodes(monkeypatch, tok)
    changed = stories[:99] + [stories[99] + " The end."]
    after = tokenize_corpus(changed, tok, cache_path=cache)
    assert calls  # re-encoded
    assert after.shape[0] > before.shape[0]
    np.testing.assert_array_equal(after, np.concatenate([tok.encode(s, eos=True) for s in changed]))
    # A change that keeps every length: the key hashes the text, not just its size.
    tokenize_corpus(stories[:100], tok, cache_path=cache)
    calls.clear()
    same_length = stories[:99] + [stories[99].replace("a", "e", 1)]
    assert same_length[99] != stories[99] and len(same_length[99]) == len(stories[99])
    tokenize_corpus(same_length, tok, cache_path=cache)
    assert calls
    # The same text cut into documents differently ("ab", "c" vs "a", "bc") is another stream.
    tokenize_corpus([stories[0] + stories[1], stories[2]], tok, cache_path=cache)
    calls.clear()
    moved = tokenize_corpus([stories[0], stories[1] + stories[2]], tok, cache_path=cache)
    assert calls
    assert (np.asarray(moved) == tok.bos_id).sum() == 2


def test_cache_is_invalidated_by_another_tokenizer(tok, stories, tmp_path):
    cache = tmp_path / "tokens.npy"
    tokenize_corpus(stories[:100], tok, cache_path=cache)
    other = Tokenizer.train(stories[:500], tmp_path / "other", 400)
    ids = tokenize_corpus(stories[:100], other, cache_path=cache)
    np.testing.assert_array_equal(ids, np.concatenate([other.encode(s, eos=True) for s in stories[:100]]))


def test_damaged_cache_is_rebuilt(tok, stories, tmp_path):
    cache = tmp_path / "tokens.npy"
    good = np.array(tokenize_corpus(stories[:50], tok, cache_path=cache))
    cache.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(tokenize_corpus(stories[:50], tok, cache_path=cache), good)
    np.save(cache, np.arange(7, dtype=np.uint16))  # a valid array that the key does not describe
    np.testing.assert_array_equal(tokenize_corpus(stories[:50], tok, cache_path=cache), good)


def test_tokenize_corpus_rejects_bad_input(tok, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        tokenize_corpus([], tok)
    with pytest.raises(TypeError, match="list of str"):
        tokenize_corpus("one string", tok)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenize_corpus(["a", None], tok)
    with pytest.raises(ValueError, match=r"\.npy"):
        tokenize_corpus(["a"], tok, cache_path=tmp_path / "tokens.bin")


# ----- train_val_split -----------------------------------------------------------------------------

def test_split_is_a_tail_on_a_document_boundary(tok, stories):
    ids = tokenize_corpus(stories[:400], tok)
    train, val = train_val_split(ids, 0.1, bos_id=tok.bos_id)
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    assert val[0] == tok.bos_id and train[-1] == tok.eos_id
    assert 0.07 < val.shape[0] / ids.shape[0] <= 0.1
    train2, val2 = train_val_split(ids, 0.1, bos_id=tok.bos_id)
    np.testing.assert_array_equal(val, val2)


def test_split_without_bos_is_an_exact_fraction():
    ids = np.arange(1000, dtype=np.uint16)
    train, val = train_val_split(ids, 0.05)
    assert train.shape[0] == 950 and val[0] == 950


def test_split_rejects_bad_fractions():
    ids = np.arange(100)
    for bad in (0.0, 1.0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(ids, bad)
    with pytest.raises(ValueError, match="one side would be empty"):
        train_val_split(np.arange(3), 0.01)
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(np.zeros((10, 10), dtype=np.int64), 0.1)


# ----- BatchLoader ---------------------------------------------------------------------------------

def test_batches_are_shifted_windows():
    ids = np.arange(1000, dtype=np.uint16)  # every token distinct: a window is known by its start
    loader = BatchLoader(ids, batch_size=4, seq_len=16, seed=0)
    tokens, targets = loader.next_batch()
    assert tokens.shape == targets.shape == (4, 16)
    assert tokens.dtype == targets.dtype == np.int64
    assert tokens.flags.c_contiguous and targets.flags.c_contiguous
    np.testing.assert_array_equal(targets, tokens + 1)  # next token
    starts = tokens[:, 0]
    assert np.all(starts % 16 == 0)  # windows start at multiples of seq_len
    np.testing.assert_array_equal(tokens, starts[:, None] + np.arange(16))


def test_an_epoch_visits_every_window_once():
    ids = np.arange(16 * 12 + 1)
    loader = BatchLoader(ids, batch_size=4, seq_len=16, seed=3)
    assert len(loader) == 3 and loader.n_windows == 12
    starts = [t[:, 0] for t, _ in loader]
    assert len(starts) == 3 and loader.epoch == 1 and loader.batch_index == 0
    assert sorted(np.concatenate(starts).tolist()) == list(range(0, 16 * 12, 16))
    # every token except the very first is a target exactly once
    targets = np.concatenate([np.concatenate(tg) for _, tg in BatchLoader(ids, 4, 16, seed=3)])
    assert sorted(targets.tolist()) == list(range(1, 16 * 12 + 1))


def test_shuffling_is_deterministic_by_seed_and_varies_by_epoch():
    ids = np.arange(5000)

    def starts(seed, n):
        loader = BatchLoader(ids, 8, 10, seed=seed)
        return [loader.next_batch()[0][:, 0].tolist() for _ in range(n)]

    assert starts(0, 5) == starts(0, 5)
    assert starts(0, 5) != starts(1, 5)
    loader = BatchLoader(ids, 8, 10, seed=0)
    first_epoch = [t[:, 0].tolist() for t, _ in loader]
    second_epoch = [t[:, 0].tolist() for t, _ in loader]
    assert len(first_epoch) == len(second_epoch) == len(loader) == 499 // 8
    assert first_epoch != second_epoch


@settings(max_examples=20, deadline=None)
@given(stop_after=st.integers(0, 30), seed=st.integers(0, 2**32 - 1))
def test_resume_gives_the_same_batches(stop_after, seed):
    ids = np.arange(7 * 9 * 3 + 5)  # 27 windows of 7 -> 3 batches of 9 per epoch: crosses epochs
    uninterrupted = BatchLoader(ids, 9, 7, seed=seed)
    expected = [uninterrupted.next_batch() for _ in range(stop_after + 8)][stop_after:]

    first_run = BatchLoader(ids, 9, 7, seed=seed)
    for _ in range(stop_after):
        first_run.next_batch()
    state = json.loads(json.dumps(first_run.state_dict()))  # survives a trip through a JSON file

    resumed = BatchLoader(ids, 9, 7, seed=seed)
    resumed.load_state_dict(state)
    for want_tokens, want_targets in expected:
        tokens, targets = resumed.next_batch()
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_array_equal(targets, want_targets)


def test_state_dict_contents():
    loader = BatchLoader(np.arange(1000), 4, 8, seed=np.int64(5))
    for _ in range(len(loader) + 2):
        loader.next_batch()
    state = loader.state_dict()
    assert state == {"epoch": 1, "batch_index": 2, "seed": 5, "batch_size": 4, "seq_len": 8,
                     "n_windows": 124}
    assert all(type(v) is int for v in state.values())


def test_load_state_dict_refuses_a_different_setup():
    loader = BatchLoader(np.arange(1000), 4, 8, seed=0)
    state = loader.state_dict()
    for name, other in (("seq_len", BatchLoader(np.arange(1000), 4, 9)),
                        ("batch_size", BatchLoader(np.arange(1000), 5, 8)),
                        ("seed", BatchLoader(np.arange(1000), 4, 8, seed=1)),
                        ("n_windows", BatchLoader(np.arange(2000), 4, 8))):
        with pytest.raises(ValueError, match=f"saved with {name}="):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="batch_index"):
        loader.load_state_dict({**state, "batch_index": len(loader)})
    with pytest.raises(ValueError, match="missing epoch"):
        loader.load_state_dict({k: v for k, v in state.items() if k != "epoch"})
    with pytest.raises(TypeError, match="dict"):
        loader.load_state_dict([1, 2])


def test_too_small_corpus_says_what_is_needed():
    with pytest.raises(ValueError, match=r"has 100 tokens.*needs 129.*--batch-size.*--seq-len"):
        BatchLoader(np.arange(100), batch_size=4, seq_len=32)
    BatchLoader(np.arange(129), batch_size=4, seq_len=32)  # exactly enough


def test_loader_rejects_bad_arguments():
    ids = np.arange(1000)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        BatchLoader(ids, 0, 8)
    with pytest.raises(ValueError, match="seq_len must be positive"):
        BatchLoader(ids, 4, -1)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        BatchLoader(ids, 4, 8.0)
    with pytest.raises(TypeError, match="integer numpy array"):
        BatchLoader(ids.astype(np.float32), 4, 8)
    with pytest.raises(TypeError, match="integer numpy array"):
        BatchLoader(list(range(1000)), 4, 8)
    with pytest.raises(ValueError, match="seed must be non-negative"):
        BatchLoader(ids, 4, 8, seed=-1)


def test_loader_reads_a_memory_mapped_cache(tok, stories, tmp_path):
    cache = tmp_path / "tokens.npy"
    tokenize_corpus(stories[:200], tok, cache_path=cache)
    mapped = tokenize_corpus(stories[:200], tok, cache_path=cache)
    assert isinstance(mapped, np.memmap)
    a = BatchLoader(mapped, 4, 32, seed=1).next_batch()
    b = BatchLoader(np.array(mapped), 4, 32, seed=1).next_batch()
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].max() < tok.vocab_size


# ----- evaluation_batches --------------------------------------------------------------------------

def test_evaluation_batches_are_fixed_and_in_order():
    ids = np.arange(10 * 16 + 1)  # 16 windows of 10
    batches = evaluation_batches(ids, batch_size=4, seq_len=10, max_batches=3)
    assert len(batches) == 3
    starts = [t[:, 0].tolist() for t, _ in batches]
    assert starts == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 100, 110]]
    for tokens, targets in batches:
        assert tokens.dtype == np.int64 and tokens.shape == (4, 10)
        np.testing.assert_array_equal(targets, tokens + 1)
    again = evaluation_batches(ids, 4, 10, 3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(evaluation_batches(ids, 4, 10)) == 4  # None: all full batches


def test_evaluation_batches_score_the_windows_left_over_in_a_smaller_last_batch():
    ids = np.arange(10 * 18 + 1)  # 18 windows of 10: four batches of 4 and 2 left over
    batches = evaluation_batches(ids, batch_size=4, seq_len=10)
    assert [t.shape[0] for t, _ in batches] == [4, 4, 4, 4, 2]
    assert [s for t, _ in batches for s in t[:, 0].tolist()] == list(range(0, 180, 10))  # each window once
    assert [t.shape[0] for t, _ in evaluation_batches(ids, 4, 10, max_batches=4)] == [4, 4, 4, 4]


def test_evaluation_on_a_small_set_uses_one_smaller_batch():
    batches = evaluation_batches(np.arange(21), batch_size=8, seq_len=10, max_batches=5)
    assert len(batches) == 1 and batches[0][0].shape == (2, 10)


@pytest.mark.parametrize("n_tokens, seq_len, batch_size", [(25, 10, 8), (187, 10, 4), (8, 10, 4), (2, 10, 4),
                                                           (30, 10, 4), (29, 10, 4)])  # 1 and 2 short of 3 whole windows
def test_evaluation_batches_score_every_held_out_target_once(n_tokens, seq_len, batch_size):
    """The tokens after the last whole window are a last, shorter window: with ids = 0..n-1, every
    target 1..n-1 appears exactly once, after the token before it."""
    batches = evaluation_batches(np.arange(n_tokens), batch_size=batch_size, seq_len=seq_len)
    for tokens, targets in batches:
        np.testing.assert_array_equal(targets, tokens + 1)
    scored = np.concatenate([targets.ravel() for _, targets in batches])
    np.testing.assert_array_equal(np.sort(scored), np.arange(1, n_tokens))
    *whole, last = batches
    assert all(tokens.shape[1] == seq_len for tokens, _ in whole)
    if (n_tokens - 1) % seq_len:
        assert last[0].shape == (1, (n_tokens - 1) % seq_len)


def test_evaluation_batches_max_batches_counts_the_shorter_window_last():
    ids = np.arange(10 * 8 + 6)  # two batches of 4 windows, then 5 targets more
    assert [t.shape for t, _ in evaluation_batches(ids, 4, 10)] == [(4, 10), (4, 10), (1, 5)]
    assert [t.shape for t, _ in evaluation_batches(ids, 4, 10, max_batches=2)] == [(4, 10), (4, 10)]


def test_evaluation_errors():
    with pytest.raises(ValueError, match=r"ids has 1 token.*at least 2"):
        evaluation_batches(np.arange(1), 4, 10)
    with pytest.raises(ValueError, match="max_batches"):
        evaluation_batches(np.arange(100), 4, 10, max_batches=0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluation_batches(np.arange(100), 0, 10)


def test_token_digest_is_of_the_values_not_their_storage():
    """A checkpoint's record of its tokens: the same ids stored as uint16, int32 or int64 (or
    memory-mapped) give one digest; one id changed, two swapped, one dropped, or one past uint16
    (a large vocabulary) give another."""
    from npllama.data import token_digest

    ids = np.random.default_rng(0).integers(0, 32000, 5000)
    digest = token_digest(ids.astype(np.uint16))
    assert token_digest(ids.astype(np.int32)) == digest == token_digest(ids.astype(np.int64))
    changed, swapped = ids.copy(), ids.copy()
    changed[4321] += 1
    swapped[[10, 11]] = swapped[[11, 10]]
    wide = ids.copy()
    wide[7] = 70000
    others = {token_digest(a) for a in (changed, swapped, ids[:-1], wide)}
    assert digest not in others and len(others) == 4
    assert token_digest(wide) == token_digest(wide.astype(np.int32))


def test_token_digest_format_per_block_and_across_storage(monkeypatch):
    """The digest is kept in checkpoints, so its bytes are fixed: per block of SCAN_BLOCK ids, b'\\x02'
    and the ids as little-endian uint16 when they all fit, else b'\\x08' and int64.  A stream whose
    blocks straddle the uint16 range (one narrow, one wide) digests the same stored as int32 or
    int64; negative ids are wide; an empty stream hashes nothing."""
    import hashlib

    import npllama.data as data

    monkeypatch.setattr(data, "SCAN_BLOCK", 4)
    ids = np.array([1, 2, 65535, 0, 65536, 3, -1, 7, 9], dtype=np.int64)     # narrow, wide, narrow (last)
    expected = hashlib.sha256(b"\x02" + ids[:4].astype("<u2").tobytes() + b"\x08" + ids[4:8].astype("<i8").tobytes()
                              + b"\x02" + ids[8:].astype("<u2").tobytes()).hexdigest()
    assert data.token_digest(ids) == data.token_digest(ids.astype(np.int32)) == expected
    assert data.token_digest(ids[:0]) == hashlib.sha256(b"").hexdigest()
    assert data.token_digest(np.array([0, 1, 2, 3, 4])) != data.token_digest(np.array([0, 1, 2, 3]))
