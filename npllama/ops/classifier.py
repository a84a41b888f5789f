"""Sequence classification head (article §6.1): one label per sequence from its last real token.

    pooled = hidden[b, last_index[b]]           # (B, D): the hidden state of each row's last token
    logits = pooled score_weight^T              # (B, num_labels)

This is Hugging Face's LlamaForSequenceClassification: a decoder has no [CLS] token, but under
causal attention the last token is the only one that has seen the whole text, so its (final-normed)
hidden state summarises the sequence.  `score_weight` is HF's `score.weight`, (num_labels, D), no
bias.  With padding, "last" means the last non-padding token: `last_token_index(attention_mask)`.
The loss on top is the ordinary cross-entropy over the labels (npllama.ops.cross_entropy).

The same head with num_labels = 2 is the sentence-order / next-sentence head (§3.2.3).
Derivation: derivations/classifier.md
"""
import numpy as np

from ._checks import padding_mask_as_bool, require_float_array, require_int_array
from .linear import linear_backward, linear_forward


def last_token_index(attention_mask):
    """(B, T) bool, or 0/1 of any numeric dtype, 1 = real token -> (B,) int64: the position of each
    row's last real token.

    The rightmost real token, so right padding (`1 1 1 0 0`) and left padding (`0 0 1 1 1`) both
    work.  A row without any real token is an error: there is nothing to classify.
    """
    mask = np.asarray(attention_mask)
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must have shape (batch, seq_len), got {mask.shape}")
    mask = padding_mask_as_bool(mask)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"attention_mask row {int(empty[0])} has no real token (all padding)")
    T = mask.shape[1]
    return (T - 1 - np.argmax(mask[:, ::-1], axis=1)).astype(np.int64)  # first True from the right


def classifier_forward(hidden, score_weight, last_index):
    """logits[b] = hidden[b, last_index[b]] @ score_weight.T.  Returns (logits (B, num_labels), cache)."""
    require_float_array("hidden", hidden, ndim=3)
    require_float_array("score_weight", score_weight, ndim=2)
    require_int_array("last_index", last_index)
    B, T, D = hidden.shape
    if score_weight.shape[1] != D:
        raise ValueError(f"score_weight must have shape (num_labels, {D}) to match hidden's last "
                         f"dimension, got {score_weight.shape}")
    if last_index.shape != (B,):
        raise ValueError(f"last_index must have shape (batch,) = ({B},), got {last_index.shape}")
    if last_index.min() < 0 or last_index.max() >= T:
        raise ValueError(f"last_index must lie in [0, {T}) (positions of hidden), got values in "
                         f"[{int(last_index.min())}, {int(last_index.max())}]")
    pooled = hidden[np.arange(B), last_index]                         # (B, D), a gather
    logits, linear_cache = linear_forward(pooled, score_weight)       # (B, num_labels)
    return logits, (linear_cache, last_index, hidden.shape)


def classifier_backward(dlogits, cache):
    """Returns (dhidden, dscore_weight); dhidden is zero except at each row's pooled position."""
    linear_cache, last_index, hidden_shape = cache
    dpooled, dscore_weight = linear_backward(dlogits, linear_cache)   # (B, D), (num_labels, D)
    dhidden = np.zeros(hidden_shape, dtype=dpooled.dtype)             # (B, T, D)
    dhidden[np.arange(hidden_shape[0]), last_index] = dpooled         # the gather's backward: scatter
    return dhidden, dscore_weight
