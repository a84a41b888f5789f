"""The two ways checkpoints lay out RoPE's pairs in the q and k projections, and the permutation
between them.

RoPE rotates pairs of coordinates of each head's query and key.  Which coordinates form a pair
is a convention of the checkpoint, baked into the rows of q_proj and k_proj:

* interleaved (Meta's original LLaMA, llama2.c, llama.cpp's GGUF): pair j of a head is rows
  (2j, 2j + 1) of that head;
* half-split (Hugging Face, and npllama): pair j is rows (j, j + head_dim/2), so RoPE can be
  written with `rotate_half`.

The same model in the two layouts differs only by a permutation of rows inside each head of
q_proj and k_proj (v, o and everything else are untouched).  Loading an interleaved checkpoint
without permuting gives plausible text that degrades after a few dozen tokens: nothing fails,
which is why the tests compare logits against llama2.c's own forward pass.

    w_hf = interleaved_to_half_split(w_meta, n_heads)      # reading llama2.c / Meta
    w_meta = half_split_to_interleaved(w_hf, n_heads)      # writing GGUF
"""
from __future__ import annotations

import numpy as np


def interleaved_to_half_split(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head reordered from (x0, y0, x1, y1, ...) to (x0, x1, ..., y0, y1, ...).

    weight: (n_heads * head_dim, in_features), a q_proj or k_proj weight (k: n_heads = kv heads).
    """
    head_dim = _head_dim(weight, n_heads)
    rows = weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(rows.swapaxes(1, 2).reshape(weight.shape))


def half_split_to_interleaved(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of interleaved_to_half_split (what llama.cpp's converter applies to HF q/k)."""
    head_dim = _head_dim(weight, n_heads)
    rows = weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
    return np.ascontiguousarray(rows.swapaxes(1, 2).reshape(weight.shape))


def _head_dim(weight: np.ndarray, n_heads: int) -> int:
    if not isinstance(weight, np.ndarray) or weight.ndim < 1:
        raise TypeError(f"weight must be a numpy array of shape (n_heads * head_dim, ...), got {weight!r}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    if weight.shape[0] % (2 * n_heads):
        raise ValueError(f"weight has {weight.shape[0]} rows, which is not n_heads ({n_heads}) heads "
                         f"of an even head_dim")
    return weight.shape[0] // n_heads
