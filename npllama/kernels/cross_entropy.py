"""Cross-entropy kernel: log-sum-exp, loss and gradient of each row in one numba pass.

Same signatures and results as npllama.ops.cross_entropy (derivations/cross_entropy.md):

    loss = mean over counted rows of  logsumexp(logits) - logits[target]
    dlogits = (softmax(logits) - onehot(target)) / n_counted   on counted rows, 0 elsewhere

The forward pass already writes dlogits (for dloss = 1) while each 32000-wide row is still in
cache; backward hands that array over (scaled if dloss != 1).  Only
the first backward call gets it; a second call recomputes it from the logits and the saved
log-sum-exp, so every call returns a fresh array the caller may modify.
"""

import dataclasses

import numpy as np
from numba import njit, prange

from ..ops._checks import require_kernel_cache
from ..ops.cross_entropy import check_cross_entropy_args, check_dloss
from ._simd import exp_nonpositive, row_max, row_sum
from .memory import empty_like_same_page_offset


@dataclasses.dataclass
class FusedCrossEntropyCache:
    """What this kernel's cross_entropy_backward needs.  N = positions (all leading axes).

    The forward computes dlogits in the same pass as the loss and hands it over once: the first
    backward takes it (dlogits becomes None), a second recomputes it from the logits and lse."""

    dlogits: np.ndarray | None   # (N, V) the gradient for dloss = 1, until a backward takes it
    logits: np.ndarray           # (N, V)
    targets: np.ndarray          # (N,) int64
    counted: np.ndarray          # (N,) bool, targets != ignore_index
    grad_scale: np.floating      # 1 / (number counted), 0 when none is
    lse: np.ndarray              # (N,) log-sum-exp of each row
    shape: tuple                 # (..., V) of the logits


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Mean -log p[target] over targets != ignore_index.  Returns (loss, cache)."""
    vocab_size = check_cross_entropy_args(logits, targets, ignore_index)
    logits_2d = np.ascontiguousarray(logits).reshape(-1, vocab_size)     # (N, V)
    targets_1d = targets.reshape(-1).astype(np.int64)                    # (N,)
    counted = targets_1d != ignore_index
    n_counted = int(np.count_nonzero(counted))
    dtype = logits.dtype
    grad_scale = dtype.type(1 / n_counted if n_counted else 0)

    dlogits = empty_like_same_page_offset(logits_2d)    # read and written side by side: no 4K aliasing
    lse = np.empty(logits_2d.shape[0], dtype=dtype)
    row_losses = np.empty(logits_2d.shape[0], dtype=dtype)
    _loss_and_grad_rows(logits_2d, targets_1d, counted, grad_scale, True, dlogits, lse, row_losses)
    loss = dtype.type(np.sum(row_losses) / n_counted if n_counted else 0)
    return loss, FusedCrossEntropyCache(dlogits, logits_2d, targets_1d, counted, grad_scale, lse, logits.shape)


def cross_entropy_backward(dloss, cache):
    """Returns dlogits = dloss * (softmax(logits) - onehot(target)) / n_counted on counted rows."""
    require_kernel_cache("cross_entropy", cache, FusedCrossEntropyCache)
    check_dloss(dloss)
    dtype = cache.logits.dtype
    dlogits, cache.dlogits = cache.dlogits, None
    if dlogits is None:  # handed over already: recompute from the logits and the saved lse
        dlogits = empty_like_same_page_offset(cache.logits)
        _loss_and_grad_rows(cache.logits, cache.targets, cache.counted, cache.grad_scale,
                            False, dlogits, cache.lse, np.empty(0, dtype=dtype))
    if dloss != 1:
        dlogits *= dtype.type(dloss)
    return dlogits.reshape(cache.shape)


@njit(cache=True, error_model="numpy", nogil=True)
def _loss_and_grad_rows(logits, targets, counted, grad_scale, forward, dlogits, lse, row_losses):
    """Per row r: lse[r] and row_losses[r] (when forward; else lse is given) and
    dlogits[r] = (softmax(logits[r]) - onehot(targets[r])) * grad_scale, or 0 if not counted."""
    N, V = logits.shape
    zero, one = logits.dtype.type(0), logits.dtype.type(1)
    for r in prange(N):
        x, d = logits[r], dlogits[r]
        if not counted[r]:          # an ignored target (an SFT prompt, padding): no exp pass at all
            d[:] = 0
            if forward:
                lse[r] = zero       # never read: the backward skips this row too
                row_losses[r] = zero
            continue
        total = one
        if forward:
            # exp(x - max) goes into d first, so the exps are taken once per element.
            m = row_max(x)
            for i in range(V):
                d[i] = exp_nonpositive(x[i] - m)
            total = row_sum(d)
            lse[r] = m + np.log(total)
            row_losses[r] = lse[r] - x[targets[r]]
            prob_scale = grad_scale / total                 # d holds exp(x - max)
            for i in range(V):
                d[i] = d[i] * prob_scale
        else:
            row_lse = lse[r]
            for i in range(V):
                d[i] = exp_nonpositive(x[i] - row_lse) * grad_scale
        d[targets[r]] -= grad_scale
