"""Text generation with a KV cache: prefill the prompt in one forward, then one token per step.

    ids = generate(model, tokenizer.encode("Once upon a time"), max_new_tokens=100,
                   temperature=0.8, top_k=40, eos_id=tokenizer.eos_id)          # unseeded: new text each call
    batch = generate(model, [ids_a, ids_b], 50, temperature=0)                  # a list of prompts -> a list
    text = generate_text(model, tokenizer, "Once upon a time", 100, stop=["THE END"], seed=0)

Sampling: temperature 0 is greedy (argmax); otherwise the logits are divided by the temperature,
optionally cut to the top_k most likely tokens and/or to the smallest set whose probability
reaches top_p (nucleus), renormalised, and sampled -- with a fresh random generator unless a seed
is given.  top_k None or 0 and top_p None or 1 cut nothing (transformers' generate adds no
processor for them).  A repetition penalty (CTRL's, as transformers applies it) first divides the positive
logits of every id already in the sequence (the prompt's included) by the penalty and multiplies
the negative ones by it.  `next_token_probs` gives the distribution itself.

Against transformers' generate(do_sample=True): the same order (repetition penalty, temperature,
top-k, top-p) and the same kept ids and probabilities (tests/test_sampling_semantics.py, float64).
top_k keeps every id tied with the k-th, as transformers does (top_k=1 samples among the ids that
share the largest logit).  Where transformers leaves a choice to chance, npllama makes its own:
at the top-p cut, of several equally likely ids it keeps the lower ones (transformers: those
torch.sort, unstable past 16 ids, puts last).  temperature 0 is transformers' do_sample=False
(which refuses temperature 0 when sampling); the defaults are not its top_k=50, temperature 1.0.
The random streams differ (numpy's Generator, not torch's), so a seed gives other text than
transformers with the same seed.  One seed gives the same ids on every run of one backend; the
numba FastDecoder's logits equal the numpy path's to round-off, not bit for bit, so a draw that
falls within round-off of the boundary between two ids can differ between the backends.
A stop string ends a generation once the new text holds it, and generate_text (and the CLI) cut
the text before it, where transformers' stop_strings leave it in the output.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .ops._checks import is_int, require_positive_int


def generate(model, prompt, max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | Sequence[int] | None = None, on_token: Callable[[int], None] | None = None,
             repetition_penalty: float = 1.0,
             stop: Callable[[list[int]], bool] | Sequence[Callable[[list[int]], bool] | None] | None = None,
             vocab_size: int | None = None, threads: int | None = None):
    """The prompt followed by up to max_new_tokens generated ids (stops after eos_id, or after any
    of several ids: a chat template's end-of-turn as well as EOS).  eos_id=None never stops early,
    where transformers' generate stops at the config's eos_token_id: pass
    eos_id=model.config.eos_token_id for that (`npllama generate` passes the folder's end ids).

    prompt: token ids -> a list of ids; or a list of prompts (a batch) -> a list of id lists.  The
        prompts of a batch that have one length are decoded together, one batched forward per step.
    temperature (0 = greedy), top_k, top_p, repetition_penalty: as the module's docstring says;
        top_k None or 0 and top_p None or 1 cut nothing, as in transformers' generate.
    seed: None draws fresh randomness each call; an int makes sampling repeatable.  One generator
        serves a whole batch, so a prompt's sample depends on the prompts decoded with it.
    on_token(id) is called with each new id as soon as it is chosen (streaming; one prompt only).
    stop(new_ids) -> True ends a sequence after its latest id (see `StopStrings`).  on_token has
        had that id already: a stream shows the stop string, and cuts it itself if it must not.
        A batch may have one stop for each prompt (a list, None for a prompt without one).
    vocab_size: sample only ids below it -- the tokenizer's vocabulary when the model's embedding
        has padding rows beyond it.
    threads: how many threads one decode step runs on (numba backend, one prompt at a time);
        None: $NPLLAMA_DECODE_THREADS, else every core.  Fewer can be faster when other programs
        keep the cores busy.  The logits are the same for any count.  At most NPLLAMA_MAX_THREADS
        (default 256, npllama/budget.py).
    """
    from .runs import require_next_token_model

    require_next_token_model(model, "generate")   # not a masked-LM model, not a classification adapter
    batched = _is_batch(prompt)
    prompts = [_check_prompt(p, model.config.vocab_size, f"prompt[{i}]") for i, p in enumerate(prompt)] \
        if batched else [_check_prompt(prompt, model.config.vocab_size)]
    check_generation_args(max_new_tokens, temperature, top_k, top_p, seed, repetition_penalty)
    end_ids = _check_eos(eos_id, model.config.vocab_size)
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be None or a function, got {on_token!r}")
    stops = _check_stop(stop, len(prompts), batched)
    require_positive_int("threads", threads, none_ok=True)
    if threads is not None:
        from .budget import check_threads

        check_threads("threads", threads)   # NPLLAMA_MAX_THREADS: more would only spin at the barriers
    if on_token is not None and batched:
        raise ValueError("on_token streams one sequence: give one prompt, not a batch")
    _check_vocab_size(vocab_size, model.config.vocab_size, "the model's vocab_size")
    check_context(max(len(p) for p in prompts), max_new_tokens, model.config.max_position_embeddings,
                  "the longest prompt" if batched and len(prompts) > 1 else "the prompt")
    rng = np.random.default_rng(seed)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                    vocab_size=vocab_size)
    results: list[list[int] | None] = [None] * len(prompts)
    for length in sorted({len(p) for p in prompts}):   # one batch per prompt length
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        outputs = _generate_rows(model, [prompts[i] for i in rows], max_new_tokens, sampling, rng,
                                 end_ids, on_token, [stops[i] for i in rows], threads)
        for i, ids in zip(rows, outputs):
            results[i] = ids
    return results if batched else results[0]


def _generate_rows(model, prompts: list[list[int]], max_new_tokens: int, sampling: dict, rng,
                   end_ids: set[int], on_token, stops: list, threads) -> list[list[int]]:
    """Decode prompts of one length together (stops: each one's stop or None); a finished row stops
    growing (its steps are wasted).
    The arguments were checked by `generate`, so each token is sampled without checking them again."""
    decode = _decoder(model, batch_size=len(prompts), max_length=len(prompts[0]) + max_new_tokens,
                      threads=threads)
    logits = decode(np.asarray(prompts, dtype=np.int64))[:, -1]   # prefill
    outputs = [list(p) for p in prompts]
    running = list(range(len(prompts)))
    for step in range(max_new_tokens):
        for row in running:
            ids = outputs[row]
            if not np.isfinite(logits[row]).all():
                # argmax would pick the NaN and sampling would fail deep inside numpy: say what it is.
                raise ValueError(f"the model's logits at position {len(ids) - 1} are not finite (NaN/Inf): "
                                 f"its parameters hold NaN/Inf, or its values overflow in {model.dtype.__name__}")
            next_id = _sample(logits[row], rng=rng, previous=ids, **sampling)
            ids.append(next_id)
            if on_token is not None:
                on_token(next_id)
        running = [row for row in running if outputs[row][-1] not in end_ids
                   and not (stops[row] is not None and stops[row](outputs[row][len(prompts[row]):]))]
        if not running or step == max_new_tokens - 1:
            break
        logits = decode(np.asarray([[ids[-1]] for ids in outputs], dtype=np.int64))[:, -1]
    return outputs


class StopStrings:
    """A `stop` for generate: true once the decoded new text holds one of `strings`.

        stop = StopStrings(tokenizer, ["THE END", "Q:"], after=prompt_ids)
        ids = generate(model, prompt_ids, 200, stop=stop)
        text = stop.cut(text_after(tokenizer, prompt_ids, ids[len(prompt_ids):]))   # before the stop string

    A stop string is matched against the new text as it is shown.  By default that is the text
    that follows `after` (the prompt's ids; `text_after`), as `generate` prints it after the prompt.
    None: as text that follows some other text -- after one plain piece, whose text is then taken
    off -- which is the text after any prompt whose own text is not empty.  SentencePiece drops
    the space of a text's first piece ("▁Lily" alone decodes as "Lily"): after a prompt, a stop
    string " Lily" is found at the very start of the new text too, and after an empty one (BOS
    alone) it is not.
    answer=True: the new text is an answer shown on its own (`generate --chat`, `npllama chat`,
    `stream_text(..., answer=True)`), without the space that separates it from the prompt: the
    answer " Lily went" is shown, and matched, as "Lily went" ("Lily" stops at its start, " Lily"
    does not).
    """

    def __init__(self, tokenizer, strings: Sequence[str], after: Sequence[int] | None = None,
                 answer: bool = False):
        if isinstance(strings, str):
            strings = [strings]
        strings = list(strings)
        for i, text in enumerate(strings):
            if not isinstance(text, str) or not text:
                raise ValueError(f"stop strings must be non-empty str, got {text!r} at position {i}")
        self.tokenizer, self.strings = tokenizer, strings
        # what settled holds back, found once: the printer asks at every token
        self._held_back = max((len(s) for s in strings), default=1) - 1
        # the ids read before the new ids: the prompt, or a plain piece standing for some text
        self.lead = tokenizer.encode("a", bos=False)[-1:] if after is None else list(after)
        # where the new text starts, found once: decoding the lead alone at every token would
        # double the work `generate` does for this stop between two decode steps
        self.start = _new_text_start(tokenizer, self.lead)
        if not isinstance(answer, bool):
            raise TypeError(f"answer must be True or False, got {answer!r}")
        self.answer = answer

    def __call__(self, new_ids: list[int]) -> bool:
        text = self.tokenizer.decode(self.lead + list(new_ids))[self.start:]   # text_after's text
        if self.answer:
            text = text[_answer_separator(text):]
        return self.stop_at(text) is not None

    def stop_at(self, text: str) -> int | None:
        """Where the new text `text` (as shown) ends: the start of its first stop string, or None
        when it holds none.  The one rule of where a stop string ends a text: `generate`'s stop
        (this object called with the new ids), `cut`, and the CLI's printer, which streams the
        text as shown and asks here (npllama/commands/generate.py, StopAwarePrinter)."""
        starts = [text.find(s) for s in self.strings if s in text]
        return min(starts) if starts else None

    def settled(self, text: str) -> int:
        """How much of `text` (as shown, no stop string in it yet) is sure to be kept, whatever text
        comes after it: all but its last characters, which may be the start of a stop string."""
        return max(len(text) - self._held_back, 0)

    def cut(self, text: str) -> str:
        """text up to where it stops (`stop_at`): all of it if it holds no stop string."""
        end = self.stop_at(text)
        return text if end is None else text[:end]


def generate_text(model, tokenizer, prompt, max_new_tokens: int = 100, *, stop: Sequence[str] | None = None,
                  **sampling):
    """The text generated after `prompt` (a str, or a list of str -> a list), cut before the first
    stop string; as it reads after the prompt, so prompt + text is the whole text (a first word's
    space included: " there", see `text_after`).  The prompt is encoded with BOS; sampling options
    as `generate` (seed None: fresh;
    eos_id: the tokenizer's and the model config's end ids; vocab_size: ids the tokenizer has)."""
    try:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
    except TypeError:   # not iterable (an int): the message below names the argument
        texts = []
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"prompt must be a str or a non-empty list of str, got {prompt!r}")
    from .tokenizer import check_tokenizer_fits

    check_tokenizer_fits(tokenizer, model)
    encoded = [tokenizer.encode(t, bos=True) for t in texts]
    # each prompt's new text is read as it follows that prompt (an empty one's first word has no space)
    stoppers = [StopStrings(tokenizer, stop, after=e) for e in encoded] if stop else None
    sampling.setdefault("eos_id", end_ids(model, tokenizer))
    sampling.setdefault("vocab_size", decodable_vocab_size(model, tokenizer))
    outputs = generate(model, encoded, max_new_tokens, stop=stoppers, **sampling)
    results = [text_after(tokenizer, e, ids[len(e):]) for e, ids in zip(encoded, outputs)]
    if stoppers is not None:
        results = [stopper.cut(text) for stopper, text in zip(stoppers, results)]
    return results[0] if isinstance(prompt, str) else results


def text_after(tokenizer, before_ids: Sequence[int], ids: Sequence[int]) -> str:
    """The text `ids` add after `before_ids`, as the whole sequence decodes: prompt + text_after(...)
    reads as decode(prompt_ids + ids).  Decoding `ids` alone is not that: SentencePiece drops the
    space that begins a text ("▁there" alone is "there", after "Once upon a time" it is
    " there").  An unfinished character at the end of `before_ids` counts as new text."""
    before = list(before_ids)
    return tokenizer.decode(before + list(ids))[_new_text_start(tokenizer, before):]


def answer_text(tokenizer, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
    """The text of an answer's `ids` (after a chat prompt's `prompt_ids`) as it is shown
    (stream_text(..., answer=True), StopStrings(..., answer=True)): the text they add after the
    prompt, without the space that separates it from the prompt.  Decoding the ids alone is not
    that for every tokenizer: a byte-level BPE (LLaMA-3's tokenizer.json) keeps the first space."""
    text = text_after(tokenizer, prompt_ids, ids)
    return text[_answer_separator(text):]


def _answer_separator(text: str) -> int:
    """How many characters at the start of an answer's text (the new text after a chat prompt) are
    not shown: its first space, which separates it from the prompt, as decoding the answer's ids
    alone drops it.  The one rule of what an answer shows, for streaming it and for stop strings."""
    return 1 if text.startswith(" ") else 0


def _new_text_start(tokenizer, before_ids: list[int]) -> int:
    """Where the text of ids that follow `before_ids` starts in the whole sequence's decoded text:
    after the text of `before_ids`, less an unfinished character at its end (decoded as U+FFFD
    until its last byte comes), which the new ids complete."""
    return len(tokenizer.decode(before_ids).rstrip("\ufffd"))


def check_generation_args(max_new_tokens, temperature, top_k, top_p, seed, repetition_penalty=1.0) -> None:
    """Every sampling argument, checked before any work (the CLI calls it before loading a model)."""
    # one message for each argument, saying all it must be; a wrong type raises it as a TypeError,
    # a number out of range as a ValueError (the CLI words both as a usage error)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise _refused(is_int(max_new_tokens),
                       f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p, repetition_penalty)
    if seed is not None and (not is_int(seed) or seed < 0):
        raise _refused(is_int(seed), f"seed must be None or a non-negative integer, got {seed!r}")


def sample_seed(seed: int | None, i: int) -> int | None:
    """The seed of the i-th of several generations seeded with `seed` (`--num-samples`, a chat's
    turns): `seed` itself for the first, so that one sample is generate(..., seed=seed)'s, and a
    hash of (seed, i) after it, so that runs with neighbouring seeds share no sample (seed + i
    made the second sample of --seed 1 the first of --seed 2)."""
    if seed is None or i == 0:
        return seed
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0])


def check_context(prompt_tokens: int, max_new_tokens: int, limit: int, what: str = "the prompt",
                  flag: str = "max_new_tokens") -> None:
    """Refuse a prompt of `prompt_tokens` ids plus `max_new_tokens` that would not fit the model's
    context (`limit` = max_position_embeddings), naming the largest max_new_tokens that fits (the
    CLI calls it before printing anything, with flag="--max-new-tokens")."""
    context = f"the model's context (max_position_embeddings = {limit})"
    if prompt_tokens >= limit:
        alone = "fills" if prompt_tokens == limit else "exceeds"
        room = ", leaving no room for a new token" if prompt_tokens == limit else ""
        raise ValueError(f"{what} alone ({prompt_tokens} tokens) {alone} {context}{room}: shorten it")
    if prompt_tokens + max_new_tokens > limit:
        raise ValueError(f"{what} ({prompt_tokens} tokens) plus {flag} ({max_new_tokens}) is longer than "
                         f"{context}: use {flag} {limit - prompt_tokens} or less, or a shorter prompt")


def _decoder(model, batch_size: int, max_length: int, threads: int | None = None):
    """A function tokens (B, T_new) -> logits (B, T_new, V) that remembers what it has seen.

    Under the numba backend: FastDecoder (weights laid out once for matrix-vector products, fused
    attention over a preallocated cache), tested equal to model.forward_step.  Otherwise, or with
    LoRA adapters attached, a `use_op` override of a forward op or a trace recording, the model's own
    forward_step and KVCache, so every intermediate is the readable reference path (FastDecoder
    runs its own fused loops, not the ops, and refuses to step where it would ignore one of them).
    """
    from .backend import get_backend

    if get_backend() == "numba":
        from .kernels.decode import FastDecoder, what_fused_decoding_ignores

        if what_fused_decoding_ignores(model) is None:
            return FastDecoder(model, batch_size=batch_size, max_length=max_length, threads=threads).step
    cache = model.new_kv_cache(batch_size=batch_size, max_length=max_length)
    return lambda tokens: model.forward_step(tokens, cache)


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None = None, top_p: float | None = None,
                rng: np.random.Generator | None = None, *, repetition_penalty: float = 1.0,
                previous: Sequence[int] = (), vocab_size: int | None = None) -> int:
    """One token id from a (vocab,) row of logits, drawn from `next_token_probs`'s distribution
    (the same arguments, and rng).

    logits: finite, or -inf for an id never to draw (transformers' mask); NaN and +inf are refused.
    rng: the numpy Generator to draw with (np.random.default_rng(seed) for repeatable draws);
        None: a fresh one, as generate's seed None.
    previous: the ids so far, which repetition_penalty (> 1 discourages them) applies to.
    vocab_size: only ids below it may be chosen (None: all).
    """
    _check_row(logits, temperature, top_k, top_p, repetition_penalty, vocab_size, previous)
    if rng is None:
        rng = np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be None or a numpy Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return _sample(np.asarray(logits), temperature, top_k, top_p, rng, repetition_penalty=repetition_penalty,
                   previous=previous, vocab_size=vocab_size)


def next_token_probs(logits: np.ndarray, temperature: float, top_k: int | None = None, top_p: float | None = None,
                     *, repetition_penalty: float = 1.0, previous: Sequence[int] = (),
                     vocab_size: int | None = None) -> np.ndarray:
    """The distribution sample_next draws from, float64 (vocab_size or len(logits),): the
    repetition penalty, then the temperature, then top_k, then top_p, as transformers'
    processors apply them; one-hot where the choice is greedy (temperature 0, or so small that
    logits / temperature overflows)."""
    _check_row(logits, temperature, top_k, top_p, repetition_penalty, vocab_size, previous)
    logits = np.asarray(logits)
    probs = _probs(logits, temperature, top_k, top_p, repetition_penalty, previous, vocab_size)
    if isinstance(probs, int):
        greedy, probs = probs, np.zeros(logits[:vocab_size].size)
        probs[greedy] = 1.0
    return probs


def _check_row(logits, temperature, top_k, top_p, repetition_penalty, vocab_size, previous) -> None:
    """-inf is allowed: it masks an id (as transformers' processors mask), which is then never drawn.
    An id of `previous` past the logits is allowed (a vocabulary cut by vocab_size: nothing to
    penalise); a negative one would index from the end and penalise the wrong id."""
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be a non-empty 1-D float array (one row), got {logits.dtype} {logits.shape}")
    _check_vocab_size(vocab_size, logits.size, "len(logits)")
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise ValueError("logits must be finite or -inf (a masked id); they hold NaN or +inf")
    if np.isneginf(logits[:vocab_size]).all():
        raise ValueError("logits are all -inf" + (f" below vocab_size={vocab_size}" if vocab_size is not None else "")
                         + ": every id is masked, none can be drawn")
    seen = np.asarray(previous)
    if seen.size and (seen.ndim != 1 or not np.issubdtype(seen.dtype, np.integer) or seen.min() < 0):
        raise ValueError(f"previous must be a sequence of token ids (ints >= 0), got {previous!r}")
    _check_sampling(temperature, top_k, top_p, repetition_penalty)


def _check_vocab_size(vocab_size, limit: int, what: str) -> None:
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or not 1 <= vocab_size <= limit):
        raise ValueError(f"vocab_size must be None or an int in [1, {limit}] ({what}), got {vocab_size!r}")


def _sample(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
            rng: np.random.Generator, *, repetition_penalty: float = 1.0, previous: Sequence[int] = (),
            vocab_size: int | None = None) -> int:
    """sample_next after its checks: logits finite or -inf, valid arguments."""
    probs = _probs(logits, temperature, top_k, top_p, repetition_penalty, previous, vocab_size)
    return probs if isinstance(probs, int) else int(rng.choice(probs.size, p=probs))


def _probs(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
           repetition_penalty: float, previous: Sequence[int], vocab_size: int | None) -> np.ndarray | int:
    """next_token_probs after its checks; a greedy choice is returned as the id itself (no
    distribution over the vocabulary is built for it)."""
    if temperature == 0 and (repetition_penalty == 1.0 or not len(previous)):
        return int(np.argmax(logits[:vocab_size]))     # the same id in any float precision
    logits = logits[:vocab_size].astype(np.float64)
    if repetition_penalty != 1.0 and len(previous):
        seen = np.unique(np.asarray(previous, dtype=np.int64))
        seen = seen[seen < logits.size]
        logits[seen] = np.where(logits[seen] > 0, logits[seen] / repetition_penalty,
                                logits[seen] * repetition_penalty)
    if temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore"):  # a temperature so small it overflows is greedy in the limit
        scaled = logits / temperature
    if np.isposinf(scaled).any() or np.isneginf(scaled).all():
        return int(np.argmax(logits))
    if top_k and top_k < scaled.size:     # None or 0: no cut (transformers' generate adds no TopK for 0)
        scaled = np.where(top_k_mask(scaled, top_k), scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        keep = nucleus(probs, top_p)
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return probs


def top_k_mask(scores: np.ndarray, top_k: int) -> np.ndarray:
    """The ids whose score is at least the top_k-th largest: transformers' TopKLogitsWarper, which
    drops only the ids scoring below it, so every id tied with the k-th stays (top_k=1 on a row
    whose largest score two ids share keeps both).  One partition, no sort of the vocabulary."""
    kth = np.partition(scores, -top_k)[-top_k]
    return scores >= kth


# Far above the rounding of a float64 sum of probabilities, far below any probability that matters.
NUCLEUS_ROUNDING = 1e-12


def nucleus(probs: np.ndarray, top_p: float, first_guess: int = 64) -> np.ndarray:
    """The smallest set of ids, most probable first (ties: the lower id first), whose probabilities
    reach top_p -- what a full stable sort of the vocabulary would give, found by sorting only
    the few most probable: np.argpartition picks the `n` largest, and everything tied with the
    n-th joins them so the cut never splits a tie arbitrarily; if their mass falls short of
    top_p, n doubles.  Only the candidates above the n-th are sorted: those tied with it are
    equally likely, so their order is the order of their ids, which they already have (a flat
    row, the whole vocabulary tied, sorts nothing).  Ids of probability 0 (cut by top_k) are
    never candidates: the others hold all the mass, and with them the n-th largest would be 0.
    A sum short of top_p by rounding only (under NUCLEUS_ROUNDING) reaches it:
    [0.7, 0.2, 0.1] at top_p 0.9 is two ids, though 0.7 + 0.2 is 0.8999999999999999 in floats."""
    top_p = top_p - NUCLEUS_ROUNDING
    possible = np.flatnonzero(probs > 0)
    chances = probs[possible]
    n = min(first_guess, possible.size)
    while True:
        threshold = chances[np.argpartition(chances, possible.size - n)[possible.size - n]]   # the n-th largest
        above, tied = possible[chances > threshold], possible[chances == threshold]   # each in id order
        order = np.concatenate([above[np.lexsort((above, -probs[above]))], tied])   # by probability, then id
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= top_p or order.size == possible.size:
            return order[: int(np.searchsorted(cumulative, top_p)) + 1]
        n = min(2 * n, possible.size)


def stream_text(tokenizer, prompt_ids: Sequence[int], write: Callable[[str], None],
                answer: bool = False) -> "TextStream":
    """An on_token callback that writes the newly decoded text as it becomes final; call its
    flush() after the last token.  answer=True: the new text is shown on its own (a chat answer),
    so its first space -- the one that separates it from the prompt -- is not written, as the
    tokenizer decoding the answer's ids alone drops it.  (see `TextStream`)"""
    return TextStream(tokenizer, prompt_ids, write, answer)


class TextStream:
    """Writes the text of the ids after `prompt_ids` as they come: once flush() has run, the
    prompt's text and everything written make tokenizer.decode(prompt_ids + new ids), however
    the ids arrive.

        show = TextStream(tokenizer, prompt_ids, sys.stdout.write)
        ids = generate(model, prompt_ids, 100, on_token=show)
        show.flush()

    The whole sequence is decoded each time, because a SentencePiece piece's text can depend on
    its neighbours.  A character outside ASCII may come as several byte pieces (<0xF0> <0x9F>
    <0x98> <0x80> is one emoji); until its last byte arrives, the decoded text ends in U+FFFD.
    That tail is held back until a later token turns it into the character (or shows it really
    is U+FFFD), and flush() writes whatever is still held.  (A prompt that itself ends inside a
    character: that character counts as new text, written once it is complete.)
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int], write: Callable[[str], None], answer: bool = False):
        self.tokenizer, self.write = tokenizer, write
        self.ids = list(prompt_ids)
        self.start = _new_text_start(tokenizer, self.ids)   # the prompt's text is not written
        self.text = ""          # the new text as last decoded (may end in a held-back U+FFFD run)
        self.written = 0        # how much of it has been written
        self.separator_left = answer    # an answer's first space is yet to be dropped

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)[self.start:]
        if self.separator_left and self.text:
            self.separator_left = False
            hidden = _answer_separator(self.text)
            self.start += hidden
            self.text = self.text[hidden:]
        final = len(self.text.rstrip("\ufffd"))      # an unfinished character decodes as U+FFFD
        if final > self.written:
            self.write(self.text[self.written:final])
            self.written = final

    def flush(self) -> None:
        """Write what is still held back: the end of the sequence makes it final."""
        if len(self.text) > self.written:
            self.write(self.text[self.written:])
            self.written = len(self.text)


def end_ids(model, tokenizer) -> list[int]:
    """The ids that end a plain generation: the tokenizer's </s> and the model config's eos_token_id
    (one id, or LLaMA-3's list: end of text, end of turn, ...; a folder's generation_config.json
    adds its own, as from_pretrained reads it)."""
    return sorted({tokenizer.eos_id, *model.config.end_ids} - {None})


def decodable_vocab_size(model, tokenizer) -> int:
    """generate's vocab_size for text to be decoded: the ids both the model and the tokenizer have.
    A checkpoint's embedding is often padded past its tokenizer (rows for added tokens, or to a
    multiple of 64); an id of those rows has no piece, and tokenizer.decode refuses it."""
    return min(tokenizer.vocab_size, model.config.vocab_size)


def _check_eos(eos_id, vocab_size: int) -> set[int]:
    ids = [eos_id] if eos_id is None or isinstance(eos_id, (int, np.integer)) else eos_id
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, set, frozenset)):
        raise TypeError(f"eos_id must be None, a token id (int) or a list of them, got {eos_id!r}")
    for i in ids:
        if i is not None and (isinstance(i, bool) or not isinstance(i, (int, np.integer))):
            raise TypeError(f"eos_id must be None, a token id (int) or a list of them, got {eos_id!r}")
        if i is not None and not 0 <= i < vocab_size:   # the model never emits it: nothing would stop
            raise ValueError(f"eos_id {int(i)} is not a token id of the model (0 to {vocab_size - 1})")
    return {int(i) for i in ids if i is not None}


def _is_batch(prompt) -> bool:
    """A list of prompts (each a sequence of ids), as opposed to one prompt.  A list that mixes ids
    and lists is neither (a TypeError), and so is a batch of no prompt (a ValueError)."""
    if isinstance(prompt, np.ndarray):
        if prompt.ndim == 2 and prompt.shape[0] == 0:
            raise ValueError(f"prompt is a batch of no prompt: give at least one, got an array of shape {prompt.shape}")
        return prompt.ndim == 2
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence) or not prompt:
        return False
    lists = [isinstance(p, (Sequence, np.ndarray)) and not isinstance(p, (str, bytes)) for p in prompt]
    if any(lists) and not all(lists):
        raise TypeError(f"prompt mixes token ids and lists of them: give one prompt (a list of ids) or a batch "
                        f"(a list of id lists), got {prompt!r}")
    return all(lists)


def _check_stop(stop, n_prompts: int, batched: bool) -> list:
    """generate's stop as one stop (or None) for each prompt: the same function for all, or a
    batch's list of them."""
    if stop is None or callable(stop):
        return [stop] * n_prompts
    if batched and isinstance(stop, (list, tuple)) and len(stop) == n_prompts \
            and all(s is None or callable(s) for s in stop):
        return list(stop)
    raise TypeError(f"stop must be None, a function or, for a batch of {n_prompts} prompts, a list of "
                    f"{n_prompts} functions (or None), got {stop!r}")


def _check_prompt(prompt, vocab_size: int, name: str = "prompt") -> list[int]:
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"{name} must be a 1-D sequence of token ids, got array {prompt.dtype} {prompt.shape}")
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        raise TypeError(f"{name} must be token ids; encode the text with the tokenizer first "
                        f"(or call generate_text)")
    prompt = list(prompt)
    if not prompt:
        raise ValueError(f"{name} must hold at least one token (e.g. the BOS id)")
    for i in prompt:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{name} must hold integer token ids, found {i!r}")
        if not 0 <= i < vocab_size:
            raise ValueError(f"{name} holds token id {i}, outside the vocabulary [0, {vocab_size})")
    return [int(i) for i in prompt]


def _check_sampling(temperature, top_k, top_p, repetition_penalty=1.0) -> None:
    from .config import python_scalar   # np.float32(0.5) is accepted as 0.5 is

    temperature, top_k, top_p, repetition_penalty = map(python_scalar, (temperature, top_k, top_p,
                                                                          repetition_penalty))
    # as in check_generation_args: a wrong type a TypeError, a number out of range a ValueError
    if not _is_number(temperature) or not 0 <= temperature < np.inf:
        raise _refused(_is_number(temperature),
                       f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise _refused(is_int(top_k), f"top_k must be None or an integer >= 0 (0 = no cut), got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise _refused(_is_number(top_p), f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not _is_number(repetition_penalty) or not 0 < repetition_penalty < np.inf:
        raise _refused(_is_number(repetition_penalty), f"repetition_penalty must be a finite number > 0 "
                       f"(1 = none, 1.1-1.3 typical), got {repetition_penalty!r}")


def _refused(right_type: bool, message: str) -> Exception:
    """The error for an argument refused with message: a ValueError if only its value is wrong."""
    return ValueError(message) if right_type else TypeError(message)


def _is_number(value) -> bool:
    """An int or a float (python_scalar has made NumPy scalars Python numbers), not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float))
