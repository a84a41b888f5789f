"""The tokenizer is trained on text as it is encoded: documents whole, newlines kept, so a word
that starts a line (no "▁" before it) costs about what it costs after a space."""
import numpy as np
import pytest

from npllama.corpus import make_play
from npllama.data import split_documents
from npllama.tokenizer import Tokenizer, _sentences


def scenes(n_speeches: int, seed: int) -> list[str]:
    speeches = split_documents(make_play(n_speeches, seed=seed))
    return ["\n\n".join(speeches[i:i + 20]) for i in range(0, len(speeches), 20)]


def word_cost(tokenizer: Tokenizer, word: str, after: str) -> int:
    """Tokens `word` adds after "so." and `after`: a newline (counted in the context), or a space
    (counted with the word, as its "▁")."""
    context = "so.\n" if after == "\n" else "so."
    return len(tokenizer.encode("so." + after + word, bos=False)) - len(tokenizer.encode(context, bos=False))


def line_initial_and_mid_line_cost(tokenizer: Tokenizer, documents: list[str]) -> tuple[float, float]:
    starts = {line.split(" ")[0] for d in documents for line in d.splitlines() if line}
    words = sorted(w for w in starts if w.isalpha() and len(w) >= 3)
    assert len(words) > 20
    return (np.mean([word_cost(tokenizer, w, "\n") for w in words]),
            np.mean([word_cost(tokenizer, w, " ") for w in words]))


def test_line_initial_words_tokenize_like_mid_line_ones(tmp_path):
    train, held_out = scenes(1500, seed=0), scenes(200, seed=1)
    tokenizer = Tokenizer.train(train, tmp_path / "doc", 600)
    start, mid = line_initial_and_mid_line_cost(tokenizer, held_out)
    assert start <= 1.15 * mid, (start, mid)
    # the old way -- trained on single lines -- spells line-initial words out: the test can tell
    lines = [line for d in train for line in d.splitlines() if line.strip()]
    by_lines = Tokenizer.train(lines, tmp_path / "lines", 600)
    old_start, old_mid = line_initial_and_mid_line_cost(by_lines, held_out)
    assert old_start > 1.2 * old_mid, (old_start, old_mid)
    per_char = lambda tok: sum(map(len, tok.encode_batch(held_out, bos=False))) / sum(map(len, held_out))  # noqa: E731
    assert per_char(tokenizer) < 0.95 * per_char(by_lines)


def test_long_documents_are_cut_after_newlines_and_nothing_is_lost():
    document = "".join(f"line {i} of the play\n" for i in range(300))
    pieces = list(_sentences([document], 256))
    assert len(pieces) > 1 and all(len(p.encode()) <= 256 for p in pieces)
    assert all(p.endswith("\n") for p in pieces)  # each piece keeps its newline
    assert "".join(pieces) == document
    assert list(_sentences(["  \n\n ", "a\nb"], 256)) == ["a\nb"]  # blank texts are skipped


def test_newline_pieces_travel_to_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = Tokenizer.train(scenes(600, seed=0), tmp_path / "t", 500)
    assert any("\n" in tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size))  # the case at stake
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    for name, data in tokenizer.hf_files().items():
        (folder / name).write_bytes(data)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    text = scenes(40, seed=3)[0]
    assert hf(text)["input_ids"] == tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
