"""Tokens per character on held-out text, for a tokenizer trained on single lines (npllama before
issue 16) and one trained on whole documents with their newlines (as `Tokenizer.train` does now).

    python benchmarks/tokenizer_newlines.py                 # vocab 512, the stories and a play
    python benchmarks/tokenizer_newlines.py --vocab-size 1024

A document is encoded whole, so a word after a newline has no "▁" before it.  Trained on single
lines, the tokenizer never saw such a word and spells it out piece by piece; trained on the
documents it learns the newline and the words that start lines.  Corpora: the built-in stories
(one line each, so no change is expected) and a play-like text with many line breaks
(npllama.corpus.make_play).  The last 10% of each corpus's documents is held out.  No pass/fail.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from npllama.corpus import make_default_corpus, make_play
from npllama.data import split_documents
from npllama.tokenizer import Tokenizer


def tokens_per_char(tokenizer: Tokenizer, documents: list[str]) -> float:
    ids = tokenizer.encode_batch(documents, bos=False)
    return sum(map(len, ids)) / sum(map(len, documents))


def line_initial_cost(tokenizer: Tokenizer, documents: list[str]) -> tuple[float, float]:
    """Mean tokens of a word at the start of a line and of one after a space (words of 3+ letters)."""
    start, mid = [], []
    for document in documents:
        for line in document.splitlines():
            words = line.split(" ")
            for i, word in enumerate(words):
                if len(word) >= 3 and word.isalpha():
                    (mid if i else start).append(len(_pieces_of(tokenizer, word, line_initial=not i)))
    return sum(start) / max(len(start), 1), sum(mid) / max(len(mid), 1)


def _pieces_of(tokenizer: Tokenizer, word: str, line_initial: bool) -> list[int]:
    """The ids `word` adds after a newline (line_initial; the newline counted with what precedes)
    or after a space (the space counted with the word, as its "▁")."""
    before = "and so.\n" if line_initial else "and so."
    text = before + word if line_initial else before + " " + word
    return tokenizer.encode(text, bos=False)[len(tokenizer.encode(before, bos=False)):]


def scenes(play: str, speeches_per_scene: int = 20) -> list[str]:
    """The play cut into documents of 20 speeches, blank lines kept inside (--doc-separator marker:...)."""
    speeches = split_documents(play, "blank-line")
    return ["\n\n".join(speeches[i:i + speeches_per_scene]) for i in range(0, len(speeches), speeches_per_scene)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, default=512, help="pieces of each tokenizer")
    args = parser.parse_args()
    corpora = {"built-in stories": make_default_corpus(3000, seed=0),
               "play (make_play)": scenes(make_play(6000, seed=0))}
    print("| corpus | trained on | tokens/char (held out) | tokens per line-initial / mid-line word |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, documents in corpora.items():
            cut = int(len(documents) * 0.9)
            train, held_out = documents[:cut], documents[cut:]
            lines = [line for document in train for line in document.splitlines()]
            for label, texts in (("single lines (before)", lines), ("documents (now)", train)):
                tokenizer = Tokenizer.train(texts, Path(folder) / "t", args.vocab_size)
                start, mid = line_initial_cost(tokenizer, held_out)
                print(f"| {name} | {label} | {tokens_per_char(tokenizer, held_out):.4f} | {start:.2f} / {mid:.2f} |")


if __name__ == "__main__":
    main()
