"""Text generation with a KV cache: prefill the prompt in one forward, then one token per step.

    ids = generate(model, tokenizer.encode("Once upon a time"), max_new_tokens=100,
                   temperature=0.8, top_k=40, seed=0, eos_id=tokenizer.eos_id)

Sampling: temperature 0 is greedy (argmax); otherwise the logits are divided by the temperature,
optionally cut to the top_k most likely tokens and/or to the smallest set whose probability
reaches top_p (nucleus), renormalised, and sampled with a seeded generator.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def generate(model, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = 0,
             eos_id: int | None = None, on_token: Callable[[int], None] | None = None) -> list[int]:
    """The prompt followed by up to max_new_tokens generated ids (stops after eos_id).

    on_token(id) is called with each new id as soon as it is chosen (for streaming).
    """
    prompt = _check_prompt(prompt, model.config.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer))):
        raise TypeError(f"eos_id must be None or a token id (int), got {eos_id!r}")
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be None or a function of the new token id, got {on_token!r}")
    limit = model.config.max_position_embeddings
    if len(prompt) + max_new_tokens > limit:
        raise ValueError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({max_new_tokens}) is "
                         f"longer than the model's context, max_position_embeddings = {limit}; "
                         f"use at most {max(limit - len(prompt), 0)} new tokens or a shorter prompt")
    rng = np.random.default_rng(seed)
    decode = _decoder(model, max_length=len(prompt) + max_new_tokens)
    logits = decode(np.asarray([prompt], dtype=np.int64))[0, -1]  # prefill
    ids = list(prompt)
    for step in range(max_new_tokens):
        if not np.isfinite(logits).all():
            # argmax would pick the NaN and sampling would fail deep inside numpy: say what it is.
            raise ValueError(f"the model's logits at position {len(ids) - 1} are not finite (NaN/Inf): "
                             f"its parameters hold NaN/Inf, or its values overflow in {model.dtype.__name__}")
        next_id = sample_next(logits, temperature, top_k, top_p, rng)
        ids.append(next_id)
        if on_token is not None:
            on_token(next_id)
        if next_id == eos_id or step == max_new_tokens - 1:
            break
        logits = decode(np.asarray([[next_id]], dtype=np.int64))[0, -1]
    return ids


def _decoder(model, max_length: int):
    """A function tokens (1, T_new) -> logits (1, T_new, V) that remembers what it has seen.

    Under the numba backend: FastDecoder (weights laid out once for matrix-vector products, fused
    attention over a preallocated cache), tested equal to model.forward_step.  Otherwise, or with
    LoRA adapters attached or a trace recording, the model's own forward_step and KVCache, so
    every intermediate is the readable reference path.
    """
    from .backend import get_backend
    from .trace import active_trace

    if get_backend() == "numba" and getattr(model, "lora", None) is None and active_trace() is None:
        from .kernels.decode import FastDecoder

        return FastDecoder(model, batch_size=1, max_length=max_length).step
    cache = model.new_kv_cache(batch_size=1, max_length=max_length)
    return lambda tokens: model.forward_step(tokens, cache)


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
                rng: np.random.Generator) -> int:
    """One token id from a (vocab,) row of logits."""
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be a non-empty 1-D float array (one row), got {logits.dtype} {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite (they hold NaN or Inf)")
    _check_sampling(temperature, top_k, top_p)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    logits = logits.astype(np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):  # a temperature so small it overflows is greedy in the limit
        scaled = logits / temperature
    if not np.isfinite(scaled).all():
        return int(np.argmax(logits))
    if top_k is not None and top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        keep = nucleus(probs, top_p)
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


def nucleus(probs: np.ndarray, top_p: float, first_guess: int = 64) -> np.ndarray:
    """The smallest set of ids, most probable first (ties: the lower id first), whose probabilities
    reach top_p -- what a full stable sort of the vocabulary would give, found by sorting only
    the few most probable: np.argpartition picks the `n` largest, and everything tied with the
    n-th joins them so the cut never splits a tie arbitrarily; if their mass falls short of
    top_p, n doubles."""
    n = min(first_guess, probs.size)
    while True:
        if n >= probs.size:
            candidates = np.arange(probs.size)
        else:
            threshold = probs[np.argpartition(probs, probs.size - n)[probs.size - n]]
            candidates = np.flatnonzero(probs >= threshold)
        order = candidates[np.lexsort((candidates, -probs[candidates]))]   # by probability, then id
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= top_p or len(candidates) == probs.size:
            return order[: int(np.searchsorted(cumulative, top_p)) + 1]
        n *= 2


def stream_text(tokenizer, prompt_ids: Sequence[int], write: Callable[[str], None]) -> Callable[[int], None]:
    """An on_token callback that writes the newly decoded text (decoding the whole sequence each
    time, because a SentencePiece piece's text can depend on its neighbours)."""
    ids = list(prompt_ids)
    shown = [tokenizer.decode(ids)]

    def on_token(token_id: int) -> None:
        ids.append(token_id)
        text = tokenizer.decode(ids)
        if text.startswith(shown[0]):
            write(text[len(shown[0]):])
        shown[0] = text

    return on_token


def _check_prompt(prompt, vocab_size: int) -> list[int]:
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"prompt must be a 1-D sequence of token ids, got array {prompt.dtype} {prompt.shape}")
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        raise TypeError("prompt must be token ids; encode the text with the tokenizer first")
    prompt = list(prompt)
    if not prompt:
        raise ValueError("prompt must hold at least one token (e.g. the BOS id)")
    for i in prompt:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"prompt must hold integer token ids, found {i!r}")
        if not 0 <= i < vocab_size:
            raise ValueError(f"prompt holds token id {i}, outside the vocabulary [0, {vocab_size})")
    return [int(i) for i in prompt]


def _check_sampling(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < np.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
