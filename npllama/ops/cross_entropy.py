"""Cross-entropy loss over a vocabulary (article §4.3.1), the causal next-token loss LLaMA trains with.

    loss = mean over counted positions of  -log softmax(logits)[target]
         = mean over counted positions of  logsumexp(logits) - logits[target]

    logits: (..., V) float    targets: (...) integer in [0, V), or ignore_index (not counted)

Targets are already shifted (targets[t] is the token after position t).  When no position is
counted (every target is ignore_index) the loss is 0 and the gradient is 0, not 0/0 = NaN.
Derivation: derivations/cross_entropy.md
"""
import numbers
from typing import NamedTuple

import numpy as np

from ._checks import checking, require_float_array, require_ids_in_range, require_int_array


class CrossEntropyCache(NamedTuple):
    """What cross_entropy_backward needs.  N = the number of positions (all leading axes)."""

    probs: np.ndarray          # (N, V) softmax(logits)
    safe_targets: np.ndarray   # (N,) targets, with ignored rows set to 0 (harmless, masked below)
    counted: np.ndarray        # (N,) bool, targets != ignore_index
    n_counted: int
    logits_shape: tuple        # (..., V)


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Mean -log p[target] over targets != ignore_index.

    Returns (loss, cache); loss is a 0-d numpy scalar of logits.dtype.  With every target ignored
    the mean is over nothing: the loss is 0 and the gradient 0 (PyTorch's mean gives NaN).
    """
    if checking.get():
        check_cross_entropy_args(logits, targets, ignore_index)
    vocab_size = logits.shape[-1]

    logits_2d = logits.reshape(-1, vocab_size)                 # (N, V)
    targets_1d = targets.reshape(-1)                           # (N,)
    counted = targets_1d != ignore_index                       # (N,) bool
    n_counted = int(np.count_nonzero(counted))
    safe_targets = np.where(counted, targets_1d, 0)            # ignored rows index class 0, harmlessly
    rows = np.arange(logits_2d.shape[0])

    # log-sum-exp with the row max taken out: exp only ever sees numbers <= 0, so logits of
    # magnitude 1e4 neither overflow nor lose the answer.
    row_max = np.max(logits_2d, axis=-1, keepdims=True)        # (N, 1)
    shifted = logits_2d - row_max                              # (N, V), <= 0
    exps = np.exp(shifted)                                     # (N, V), in [0, 1]
    sum_exp = np.sum(exps, axis=-1, keepdims=True)             # (N, 1), in [1, V]
    log_probs_target = shifted[rows, safe_targets] - np.log(sum_exp[:, 0])  # (N,)
    losses = np.where(counted, -log_probs_target, 0)          # (N,)
    loss = logits.dtype.type(np.sum(losses) / n_counted if n_counted else 0)

    probs = exps / sum_exp                                     # (N, V), softmax, kept for backward
    return loss, CrossEntropyCache(probs, safe_targets, counted, n_counted, logits.shape)


def check_cross_entropy_args(logits, targets, ignore_index):
    """The forward's argument checks (shared with the kernel); returns the vocabulary size V."""
    require_float_array("logits", logits)
    require_int_array("targets", targets)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {type(ignore_index).__name__}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets has shape {targets.shape}, expected {logits.shape[:-1]} "
                         "(the leading shape of logits)")
    vocab_size = logits.shape[-1]
    if vocab_size == 0:
        raise ValueError(f"logits must have a non-empty last dimension (V), got shape {logits.shape}")
    require_ids_in_range(targets[targets != ignore_index], vocab_size,
                         f"targets contains {{id}}, outside [0, V) with V = {vocab_size} and not ignore_index")
    return vocab_size


def cross_entropy_backward(dloss, cache):
    """Returns dlogits = dloss * (softmax(logits) - onehot(target)) / n_counted on counted rows, 0 elsewhere."""
    probs, safe_targets, counted, n_counted, logits_shape = cache
    if checking.get():
        check_dloss(dloss)
    dlogits = probs.copy()                                     # (N, V)
    dlogits[np.arange(dlogits.shape[0]), safe_targets] -= 1    # softmax - onehot
    dlogits *= probs.dtype.type(dloss) / n_counted if n_counted else 0
    # ignored rows (and n_counted = 0) -> 0, set rather than multiplied by 0: an ignored row's
    # logits may hold NaN or inf (padding of a diverged model), and NaN * 0 is NaN.  In place: no
    # second (N, V) array at the size of the logits
    dlogits[~counted] = 0
    return dlogits.reshape(logits_shape)


def check_dloss(dloss):
    """The backward's check of dloss (shared with the kernel): a real scalar or 0-d array.  Not left
    to probs.dtype.type(dloss), which turns None into NaN and the string "1.0" into 1.0."""
    is_real_array = isinstance(dloss, np.ndarray) and dloss.dtype.kind in "fiu"
    if isinstance(dloss, (bool, np.bool_)) or not (isinstance(dloss, numbers.Real) or is_real_array):
        raise TypeError("dloss must be a real number (the gradient of the scalar loss), got "
                        f"{type(dloss).__name__}" + (f" of {dloss.dtype}" if isinstance(dloss, np.ndarray) else ""))
    if np.ndim(dloss) != 0:
        raise ValueError(f"dloss must be a scalar (the loss is a scalar), got shape {np.shape(dloss)}")
