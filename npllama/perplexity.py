"""Perplexity of a text: how surprised the model is by each next token, exp(mean cross-entropy).

    result = perplexity(model, tokenizer, open("held_out.txt").read())
    result.tokens, result.mean_loss, result.perplexity

The text is encoded once (with BOS) and cut into consecutive windows of the model's context (or
`context` tokens); every token after the first is predicted once, from the tokens before it in its
window.  Windows do not overlap, so the first tokens of each window see little context: a smaller
`context` gives a higher (more pessimistic) perplexity.

With `doc_separator` (`npllama train`'s: "blank-line", "line", "marker:TEXT", "whole-file") the
text is cut into documents and encoded as training encodes its held-out text, `<s> doc </s>` after
one another: held-out text written like the training text then scores what training's validation
loss scores (with `context` = the run's seq_len, the same windows).  Encoded whole, the blank lines
between documents are newline tokens a model trained on documents never saw, and cost it dearly.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .ops._checks import require_positive_int


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    tokens: int          # tokens predicted (the text's tokens minus the first)
    mean_loss: float     # mean next-token cross-entropy, in nats
    perplexity: float    # exp(mean_loss)
    windows: int         # forward passes' rows: windows of at most `context` tokens
    documents: int | None = None   # documents the text was cut into (None: encoded whole)


def perplexity(model, tokenizer, text: str, *, context: int | None = None, batch_size: int = 8,
               progress: bool = False, doc_separator: str | None = None, source: str = "the text") -> PerplexityResult:
    """Mean next-token loss and perplexity of `text` under `model` (see the module docstring).
    source: the text's name (its file) in the warning that a marker:TEXT separator never occurs."""
    from .runs import require_next_token_model
    from .tokenizer import check_tokenizer_fits

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
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


def _encoded(tokenizer, text: str, doc_separator: str | None, source: str = "the text") -> tuple[list[int], int | None]:
    """(the text's ids, how many documents): encoded whole with BOS, or cut into documents as
    training encodes its held-out text (doc_separator), `<s> doc </s>` after one another.  source:
    the text's name in the warning that a marker:TEXT separator never occurs."""
    if doc_separator is None:
        return tokenizer.encode(text, bos=tokenizer.bos_id is not None), None
    from .data import split_documents, tokenize_corpus

    texts = split_documents(text, doc_separator, warn_about=source)
    if not texts:
        separators = f" and the separator {doc_separator[len('marker:'):]!r}" if doc_separator.startswith("marker:") else ""
        raise ValueError(f"text holds no document (only white space{separators}): there is nothing to predict")
    return tokenize_corpus(texts, tokenizer).tolist(), len(texts)


@dataclasses.dataclass(frozen=True)
class MaskedLMResult:
    masked_tokens: int   # tokens masked (BERT's 15% of the ordinary ones) and scored
    mean_loss: float     # mean cross-entropy over them, in nats
    accuracy: float      # share of them whose most likely token is the original
    windows: int         # rows of at most `context` tokens
    documents: int | None = None   # documents the text was cut into (None: encoded whole)


def masked_lm_score(model, tokenizer, text: str, *, context: int | None = None, batch_size: int = 8,
                    seed: int = 0, progress: bool = False, doc_separator: str | None = None,
                    source: str = "the text") -> MaskedLMResult:
    """The masked-LM loss and accuracy of `text` under a masked-LM model (objective "mlm"), scored as
    `npllama train --objective mlm` scores its held-out text: data.evaluation_batches' windows of
    `context` tokens, `batch_size` at a time, masked once from `seed` (objectives.masked_held_out),
    evaluated by objectives.evaluate_masked_lm.  With the run's --seq-len, --batch-size and --seed
    (and --eval-batches 0, or a text within it) the loss is the validation loss training reports."""
    from .data import evaluation_batches
    from .objectives import evaluate_masked_lm, masked_held_out

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if getattr(model, "objective", "causal") != "mlm":
        raise ValueError("masked_lm_score scores a masked-LM model (`npllama train --objective mlm`, `finetune "
                         "sop`); this one predicts the next token: use perplexity (`npllama eval perplexity`)")
    limit = model.config.max_position_embeddings
    context = limit if context is None else context
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or not 1 <= context <= limit:
        raise ValueError(f"context must be an int in [1, {limit}] (max_position_embeddings), got {context!r}")
    require_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    ids, documents = _encoded(tokenizer, text, doc_separator, source)
    if len(ids) < 2:
        raise ValueError(f"text must give at least two tokens (it gives {len(ids)}): there is nothing to mask")
    batches = masked_held_out(evaluation_batches(np.asarray(ids, dtype=np.int64), batch_size, int(context)),
                              tokenizer, int(seed))
    from tqdm.auto import tqdm

    with tqdm(total=len(ids) - 1, desc="masked-LM", unit="tok", disable=not progress, leave=False) as bar:
        scores = evaluate_masked_lm(model, batches, on_batch=lambda inputs: bar.update(inputs.size))
    if scores["masked_tokens"] == 0:
        raise ValueError(f"no token of the text was masked ({len(ids)} tokens, 15% of the ordinary ones drawn): "
                         f"give a longer text, or another seed")
    return MaskedLMResult(masked_tokens=scores["masked_tokens"], mean_loss=scores["mlm"], accuracy=scores["accuracy"],
                          windows=sum(len(inputs) for inputs, _ in batches), documents=documents)


def _by_length(windows: list[list[int]]) -> list[list[list[int]]]:
    """Windows grouped by length (only the text's last window is shorter), so each group is one array."""
    groups: dict[int, list[list[int]]] = {}
    for w in windows:
        groups.setdefault(len(w), []).append(w)
    return list(groups.values())
