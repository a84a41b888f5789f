"""Perplexity of a text: how surprised the model is by each next token, exp(mean cross-entropy).

    result = perplexity(model, tokenizer, open("held_out.txt").read())
    result.tokens, result.mean_loss, result.perplexity
    result = perplexity(model, tokenizer, read_held_out("val.jsonl"), context=seq_len)   # as training reads it

The text is encoded once (with BOS) and cut into consecutive windows of the model's context (or
`context` tokens); every token after the first is predicted once, from the tokens before it in its
window.  Windows do not overlap, so the first tokens of each window see little context: a smaller
`context` gives a higher (more pessimistic) perplexity -- within the length the model was trained
on.  An `npllama train` model saw positions up to its --seq-len only, often far fewer than its
max_position_embeddings, and beyond them scores far worse: give it context=seq_len (`npllama eval
perplexity` does, for a run).

With `doc_separator` (`npllama train`'s: "blank-line", "line", "marker:TEXT", "whole-file") the
text is cut into documents and encoded as training encodes its held-out text, `<s> doc </s>` after
one another: held-out text written like the training text then scores what training's validation
loss scores (with `context` = the run's seq_len, the same windows).  Encoded whole, the blank lines
between documents are newline tokens a model trained on documents never saw, and cost it dearly.

`text` may also be documents already cut (a list of str, or a npllama.data.Corpus), encoded the
same way.  read_held_out(path, doc_separator) reads a file or folder as `npllama train` reads its
--val-data -- a .jsonl file a document a record, a folder of .txt and .jsonl files -- which is what
`npllama eval perplexity` and `eval mlm` score: a .jsonl file read as a str would be scored as JSON
text (its braces, quotes and "text": keys), another number than the run's validation loss.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .ops._checks import require_int, require_positive_int


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """What `perplexity` returns: how well a causal model predicts a held-out text, token by token."""
    tokens: int          # tokens predicted (the text's tokens minus the first)
    mean_loss: float     # mean next-token cross-entropy, in nats
    perplexity: float    # exp(mean_loss)
    windows: int         # forward passes' rows: windows of at most `context` tokens
    documents: int | None = None   # documents the text was cut into (None: encoded whole)


def read_held_out(path, doc_separator: str | None = None, progress: bool | None = False):
    """The held-out text at `path` as `npllama train` reads its --val-data (npllama.data.Corpus, the
    rules of load_texts), for perplexity and masked_lm_score:

        documents = read_held_out("val.jsonl")                        # a Corpus: a document a record
        documents = read_held_out("held_out/", doc_separator="line")  # a folder of .txt and .jsonl files
        perplexity(model, tokenizer, documents, context=seq_len)      # the run's validation loss

    A .jsonl file: each record's "text" one document, whatever doc_separator says; a .txt file: cut
    at doc_separator; a folder: its .txt and .jsonl files in sorted order, what it leaves out said in
    a warning, its .txt files cut at doc_separator (None: each one document, "whole-file").  These
    give a Corpus.  A .txt file with no doc_separator gives its text whole (a str, its line ends
    \\n), scored as one text.  Other files are refused as training refuses them (a ValueError
    naming the file); progress: Corpus' reading bar."""
    from pathlib import Path

    from .budget import max_read
    from .data import Corpus, unix_line_ends
    from .io.reading import read_text
    from .ops._checks import require_path

    path = Path(require_path("path", path, "a .txt or .jsonl file or a folder of them")).expanduser()
    if doc_separator is None and path.suffix.lower() == ".txt" and not path.is_dir():
        # a regular file within the read budget, UTF-8, its byte-order mark dropped, as training reads it
        return unix_line_ends(read_text(path, max_bytes=max_read()))
    return Corpus(path, "whole-file" if doc_separator is None else doc_separator, progress=progress)


def perplexity(model, tokenizer, text, *, context: int | None = None, batch_size: int = 8,
               progress: bool = False, doc_separator: str | None = None, source: str = "the text") -> PerplexityResult:
    """Mean next-token loss and perplexity of `text` -- a str, or documents (a list of str, a Corpus:
    read_held_out's) -- under `model` (see the module docstring).  doc_separator cuts a str only.
    source: the text's name (its file) in the warning that a marker:TEXT separator never occurs."""
    from .runs import require_next_token_model
    from .tokenizer import check_tokenizer_fits

    _require_text(text, doc_separator)
    require_next_token_model(model, "perplexity")   # not a masked-LM model, not a classification adapter
    check_tokenizer_fits(tokenizer, model)
    limit = model.config.max_position_embeddings
    context = limit if context is None else context
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or not 2 <= context <= limit:
        raise ValueError(f"context must be an int in [2, {limit}] (max_position_embeddings), got {context!r}")
    context = int(context)
    require_positive_int("batch_size", batch_size)
    ids, documents = _encoded(tokenizer, text, doc_separator, source)
    if len(ids) < 2:
        raise ValueError(f"text must give at least two tokens (it gives {len(ids)}): there is nothing to predict")
    # window k covers ids[k*context : (k+1)*context + 1]: inputs all but its last id, targets all but its first
    starts = list(range(0, len(ids) - 1, context))
    total_loss, total_tokens = 0.0, 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(ids) - 1, desc="perplexity", unit="tok", disable=not progress, leave=False)
    for first in range(0, len(starts), batch_size):
        windows = [ids[s:s + context + 1] for s in starts[first:first + batch_size]]
        for same_length in _by_length(windows):
            tokens = np.asarray([w[:-1] for w in same_length], dtype=np.int64)
            targets = np.asarray([w[1:] for w in same_length], dtype=np.int64)
            total_loss += model.loss(tokens, targets) * targets.size   # model.loss is the mean over targets
            total_tokens += targets.size
            bar.update(targets.size)
    bar.close()
    mean = total_loss / total_tokens
    return PerplexityResult(tokens=total_tokens, mean_loss=mean, perplexity=math.exp(min(mean, 700.0)),
                            windows=len(starts), documents=documents)


def _require_text(text, doc_separator) -> None:
    """A TypeError unless `text` is a str or documents (a list or tuple of str, a Corpus); a
    ValueError for a doc_separator beside documents, which are cut already."""
    from .data import Corpus

    if isinstance(text, str):
        return
    documents = "documents (a list of str, a npllama.data.Corpus: read_held_out's)"
    if not isinstance(text, (list, tuple, Corpus)):
        raise TypeError(f"text must be a str, or {documents}, got {type(text).__name__}")
    if isinstance(text, (list, tuple)):   # not token ids, say: the text is encoded here
        other = next((i for i, document in enumerate(text) if not isinstance(document, str)), None)
        if other is not None:
            raise TypeError(f"text must be a str, or {documents}; text[{other}] is a {type(text[other]).__name__}")
    if doc_separator is not None:
        raise ValueError(f"doc_separator cuts a str into documents; text is documents already (a "
                         f"{type(text).__name__}), so doc_separator={doc_separator!r} would be ignored: leave it out")


def _encoded(tokenizer, text, doc_separator: str | None, source: str = "the text") -> tuple[list[int], int | None]:
    """(the text's ids, how many documents): a str encoded whole with BOS, or cut into documents as
    training encodes its held-out text (doc_separator), `<s> doc </s>` after one another, as
    documents given (a list of str, a Corpus) are.  source: the text's name in the warning that a
    marker:TEXT separator never occurs."""
    from .data import split_documents, tokenize_corpus

    if not isinstance(text, str):
        if not len(text):
            raise ValueError("text holds no document (an empty list): there is nothing to predict")
        return tokenize_corpus(text, tokenizer).tolist(), len(text)
    if doc_separator is None:
        return tokenizer.encode(text, bos=tokenizer.bos_id is not None), None
    texts = split_documents(text, doc_separator, warn_about=source)
    if not texts:
        separators = f" and the separator {doc_separator[len('marker:'):]!r}" if doc_separator.startswith("marker:") else ""
        raise ValueError(f"text holds no document (only white space{separators}): there is nothing to predict")
    return tokenize_corpus(texts, tokenizer).tolist(), len(texts)


@dataclasses.dataclass(frozen=True)
class MaskedLMResult:
    """What `masked_lm_score` returns: how well a masked-LM model fills in the tokens masked in a text."""
    masked_tokens: int   # tokens masked (BERT's 15% of the ordinary ones) and scored
    mean_loss: float     # mean cross-entropy over them, in nats
    accuracy: float      # share of them whose most likely token is the original
    windows: int         # rows of at most `context` tokens
    documents: int | None = None   # documents the text was cut into (None: encoded whole)


class NoTokenMaskedError(ValueError):
    """masked_lm_score's text: too short for the draws from its seed to mask a token.  The message
    names the seed as Python passes it (seed=); worded(seed_used, seed_named) names it as another
    caller takes it (`npllama eval mlm`: its --seed flag, or the run's)."""

    def __init__(self, tokens: int, seed: int):
        self.tokens, self.seed = tokens, seed
        super().__init__(self.worded(f"seed={seed}", "seed"))

    def worded(self, seed_used: str, seed_named: str) -> str:
        """The message, with the seed called as the caller names it."""
        return (f"no token of the text was masked ({self.tokens} tokens, 15% of the ordinary ones drawn with "
                f"{seed_used}): give a longer text, or another {seed_named}")


def masked_lm_score(model, tokenizer, text, *, context: int | None = None, batch_size: int = 8,
                    seed: int = 0, progress: bool = False, doc_separator: str | None = None,
                    source: str = "the text") -> MaskedLMResult:
    """The masked-LM loss and accuracy of `text` (a str, or documents: as for perplexity) under a
    masked-LM model (objective "mlm"), scored as
    `npllama train --objective mlm` scores its held-out text: data.evaluation_batches' windows of
    `context` tokens, `batch_size` at a time, masked once from `seed` (objectives.masked_held_out),
    evaluated by objectives.evaluate_masked_lm.  With the run's --seq-len, --batch-size and --seed
    (and --eval-batches 0, or a text within it) the loss is the validation loss training reports.
    A text too short for `seed`'s draws to mask a token: NoTokenMaskedError (a ValueError)."""
    from .data import evaluation_batches
    from .objectives import evaluate_masked_lm, masked_held_out

    _require_text(text, doc_separator)
    if getattr(model, "objective", "causal") != "mlm":
        raise ValueError("masked_lm_score scores a masked-LM model (`npllama train --objective mlm`, `finetune "
                         "sop`); this one predicts the next token: use perplexity (`npllama eval perplexity`)")
    limit = model.config.max_position_embeddings
    context = limit if context is None else context
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or not 1 <= context <= limit:
        raise ValueError(f"context must be an int in [1, {limit}] (max_position_embeddings), got {context!r}")
    require_positive_int("batch_size", batch_size)
    require_int("seed", seed)
    ids, documents = _encoded(tokenizer, text, doc_separator, source)
    if len(ids) < 2:
        raise ValueError(f"text must give at least two tokens (it gives {len(ids)}): there is nothing to mask")
    batches = masked_held_out(evaluation_batches(np.asarray(ids, dtype=np.int64), batch_size, int(context)),
                              tokenizer, int(seed))
    from tqdm.auto import tqdm

    with tqdm(total=len(ids) - 1, desc="masked-LM", unit="tok", disable=not progress, leave=False) as bar:
        scores = evaluate_masked_lm(model, batches, on_batch=lambda inputs: bar.update(inputs.size))
    if scores["masked_tokens"] == 0:
        raise NoTokenMaskedError(len(ids), int(seed))
    return MaskedLMResult(masked_tokens=scores["masked_tokens"], mean_loss=scores["mlm"], accuracy=scores["accuracy"],
                          windows=sum(len(inputs) for inputs, _ in batches), documents=documents)


def _by_length(windows: list[list[int]]) -> list[list[list[int]]]:
    """Windows grouped by length (only the text's last window is shorter), so each group is one array."""
    groups: dict[int, list[list[int]]] = {}
    for w in windows:
        groups.setdefault(len(w), []).append(w)
    return list(groups.values())
