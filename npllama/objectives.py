"""BERT-style pre-training objectives, shown for comparison (article §3.2.2, §3.2.3, §4.3.2, §4.3.3).

LLaMA itself is trained with one objective only: predict the next token, under causal attention
(npllama.model.Llama.loss_and_grads).  The article also describes the two objectives of BERT-style
encoders; here they are, on the very same stack:

* Masked language modelling (MLM, §3.2.2 / §4.3.2).  The attention is bidirectional (the
  "encoder" of §3.1.1 is the decoder block without the causal mask: `causal=False`).  15% of the
  ordinary tokens are chosen; of those 80% become the mask token, 10% a random token, 10% stay as
  they are; the loss is the cross-entropy of the original token at the chosen positions only:

      inputs, targets = mask_tokens(tokens, rng, mask_token_id=..., vocab_size=..., special_ids=...)
      loss, grads = mlm_loss_and_grads(model, inputs, targets)

* Sentence order (SOP, ALBERT) / next sentence (NSP, BERT), §3.2.3 / §4.3.3.  Two consecutive
  segments A, B of a document make `<s> A </s> B </s>`; with probability 0.5 they are swapped
  (SOP) or B is replaced by a segment of another document (NSP).  A binary head on the last
  token's hidden state -- the classification head of npllama/ops/classifier.py with two labels --
  predicts which; its cross-entropy is added to the MLM loss:

      batches = SentenceOrderBatches(texts, tokenizer, batch_size=16, max_len=64, task="sop")
      batch = batches.next_batch()        # masked inputs, MLM targets, mask, sop labels
      loss, grads, parts = mlm_sop_loss_and_grads(model, sop_head_weight, batch)

The mask token.  LLaMA's vocabulary has no [MASK] piece, and adding one would change vocab_size
(and every checkpoint's shapes).  We use <unk> (id 0) instead: LLaMA's tokenizer spells every
unknown character with byte pieces (byte_fallback), so <unk> does not occur in encoded text unless
the text writes "<unk>" itself (WikiText and PTB do, for rare words) -- its embedding row is
otherwise unused, free to mean "masked".  See `mask_token_id`; a tokenizer without byte fallback
does write <unk>, and the jobs say how often either happens (`unk_in_text_note`).

Labels follow Hugging Face (BertForPreTraining, AlbertForPreTraining): 0 = B really follows A
(in order), 1 = swapped (SOP) or random (NSP).  Derivations: derivations/mlm.md,
derivations/sentence_order.md.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from .backend import noting_overrides
from .ops._checks import padding_mask_as_bool
from .ops.classifier import last_token_index   # (the heads' ops are the ops in force: Llama.head_ops)

IGNORE_INDEX = -100
MLM_PROBABILITY = 0.15          # share of ordinary tokens chosen for prediction (BERT)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1   # of the chosen: -> mask token, -> random token; the rest stay
SOP_HEAD = "sop_head.weight"    # the binary head's parameter name, shape (2, hidden_size)
TASKS = ("sop", "nsp")


def pad_id_of(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad piece, else </s> (LLaMA's has no pad)."""
    if tokenizer.pad_id is not None:
        return tokenizer.pad_id
    if tokenizer.eos_id is None:   # e.g. a lone tokenizer.json, with no tokenizer_config.json to name them
        raise ValueError("the tokenizer has neither a pad token nor </s> (eos_token) to pad a batch of texts with; "
                         "use a SentencePiece tokenizer.model, or a tokenizer.json whose tokenizer_config.json "
                         "names an eos_token or a pad_token")
    return tokenizer.eos_id


# ----- MLM masking -----------------------------------------------------------------------------------

def mask_token_id(tokenizer) -> int:
    """The id used as [MASK]: the tokenizer's <unk> (unused in text thanks to byte fallback)."""
    if tokenizer.unk_id is None:   # e.g. a tokenizer.json whose tokenizer_config.json names no unk_token
        raise ValueError("the tokenizer has no <unk> token, which masked-LM training uses as its [MASK] token; "
                         "use a SentencePiece tokenizer.model, or a tokenizer.json whose tokenizer_config.json "
                         "names an unk_token")
    return int(tokenizer.unk_id)


def unk_in_text_note(token_ids, tokenizer) -> str | None:
    """A line for the log when the text itself holds <unk>, which masked-LM uses as its mask: a
    tokenizer without byte fallback spells a character it does not know as <unk>, and any tokenizer
    encodes the text "<unk>" (WikiText and PTB write it for a rare word) as the token; the model
    then reads those positions as masked ones (they are never chosen for prediction).  None if none.

    token_ids: the encoded text, flat (an int array or list)."""
    token_ids = np.asarray(token_ids)
    if tokenizer.unk_id is None or token_ids.size == 0:
        return None
    from .data import SCAN_BLOCK

    # a block at a time: the stream of a large corpus is memory-mapped, and == would copy all of it
    count = sum(int(np.count_nonzero(token_ids[i:i + SCAN_BLOCK] == tokenizer.unk_id))
                for i in range(0, token_ids.size, SCAN_BLOCK))
    if count == 0:
        return None
    share = f"{count:,} of {token_ids.size:,} tokens of the text are <unk> ({100 * count / token_ids.size:.2g}%)"
    mask = "Masked-LM uses <unk> as its mask, so the model reads them as masked tokens"
    if _spells_bytes(tokenizer):    # byte fallback spells every character: the text wrote them
        return (f'{share}: the text writes "<unk>" itself (as WikiText and PTB do for a rare word), which is '
                f'encoded as the <unk> token.  {mask}; replace "<unk>" in the text to have it read as text')
    return (f"{share}: characters this tokenizer cannot spell (it has no byte fallback).  {mask}; a tokenizer "
            f"trained with byte fallback (npllama tokenizer train) has none")


def _spells_bytes(tokenizer) -> bool:
    """Whether the tokenizer has byte pieces (<0x00>..<0xFF>: byte fallback), whichever file it came from."""
    return all(tokenizer.piece_to_id(f"<0x{b:02X}>") not in (None, tokenizer.unk_id) for b in range(256))


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids never chosen for masking nor drawn as random replacements: <unk>/mask, <s>, </s>, pad."""
    ids = {tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    return tuple(sorted(i for i in ids if i is not None))


def mask_tokens(tokens, rng, *, mask_token_id: int, vocab_size: int, special_ids=(), attention_mask=None,
                mlm_probability: float = MLM_PROBABILITY):
    """BERT's masking.  tokens int (B, T) -> (inputs, targets), both int64 (B, T).

    Each ordinary token (not in special_ids, not padding) is chosen with probability
    mlm_probability; a chosen token becomes mask_token_id (80%), a random ordinary token (10%) or
    stays (10%).  targets holds the original token at chosen positions and -100 elsewhere, so the
    loss counts the chosen positions only -- including the 10% left unchanged, which teaches the
    model that an unmasked token may be wrong too.
    """
    tokens = np.asarray(tokens)
    if not np.issubdtype(tokens.dtype, np.integer) or tokens.ndim != 2:
        raise ValueError(f"tokens must be an integer array of shape (batch, seq_len), got "
                         f"{tokens.dtype} {tokens.shape}")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}")
    special = np.array(sorted(set(special_ids) | {mask_token_id}), dtype=np.int64)
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
    ordinary_ids = np.setdiff1d(np.arange(vocab_size), special)       # what random replacements draw from
    if ordinary_ids.size == 0:
        raise ValueError("the vocabulary has no ordinary token (every id is special)")
    candidates = ~np.isin(tokens, special)
    if attention_mask is not None:   # held to the model's rule: a cast to bool would take -inf as a token
        candidates &= padding_mask_as_bool(np.asarray(attention_mask), tokens.shape)

    chosen = candidates & (rng.random(tokens.shape) < mlm_probability)
    action = rng.random(tokens.shape)                                  # one draw decides 80/10/10
    to_mask = chosen & (action < MASK_SHARE)
    to_random = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)

    inputs = tokens.astype(np.int64)                                   # a copy
    inputs[to_mask] = mask_token_id
    inputs[to_random] = rng.choice(ordinary_ids, size=int(to_random.sum()))
    targets = np.where(chosen, tokens, IGNORE_INDEX).astype(np.int64)
    return inputs, targets


class MaskedLMBatches:
    """Wrap a causal-LM loader (npllama.data.BatchLoader) into MLM batches.

    next_batch() takes the loader's next (tokens, _) windows and masks them; the masking draws come
    from (seed, epoch, batch_index), so a resumed loader reproduces the same masks.
    """

    def __init__(self, loader, *, mask_token_id: int, vocab_size: int, special_ids=(), seed: int = 0):
        self.loader, self.seed = loader, int(seed)
        self.mask_token_id, self.vocab_size, self.special_ids = mask_token_id, vocab_size, tuple(special_ids)

    @classmethod
    def for_tokenizer(cls, loader, tokenizer, seed: int = 0) -> "MaskedLMBatches":
        """MaskedLMBatches with the tokenizer's mask token, vocabulary size and special ids."""
        return cls(loader, mask_token_id=mask_token_id(tokenizer), vocab_size=tokenizer.vocab_size,
                   special_ids=special_token_ids(tokenizer), seed=seed)

    def next_batch(self):
        """The loader's next windows, masked: (inputs, targets), int64 (B, T) (mask_tokens)."""
        rng = np.random.default_rng([self.seed, self.loader.epoch, self.loader.batch_index])
        tokens, _ = self.loader.next_batch()   # MLM predicts the tokens themselves: no shift
        return self.mask(tokens, rng)

    def mask(self, tokens, rng):
        """mask_tokens(tokens, rng) with this wrapper's mask token, vocabulary and special ids."""
        return mask_tokens(tokens, rng, mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
                           special_ids=self.special_ids)

    # the position is the wrapped loader's (checkpoints and resume go through it)
    def state_dict(self) -> dict:
        """The wrapped loader's position (the masks follow from it and the seed)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Move the wrapped loader to a position state_dict() returned."""
        self.loader.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.loader)


def mlm_objective(model, tokenizer, loader, val_batches, seed: int = 0):
    """What `npllama train --objective mlm` swaps into the causal-LM training loop.

    Returns (loader, val_batches, loss_and_grads, loss):
      loader         MaskedLMBatches around the causal loader: next_batch() -> (inputs, targets),
                     state_dict()/load_state_dict() as the loader's (masks are a function of position)
      val_batches    the validation windows, masked once with a fixed seed (comparable across evals)
      loss_and_grads(tokens, targets) and loss(tokens, targets): the MLM loss on the model
    """
    return (MaskedLMBatches.for_tokenizer(loader, tokenizer, seed), masked_held_out(val_batches, tokenizer, seed),
            lambda tokens, targets: mlm_loss_and_grads(model, tokens, targets),
            lambda tokens, targets: mlm_loss(model, tokens, targets))


def masked_held_out(val_batches, tokenizer, seed: int = 0) -> list:
    """Held-out windows (tokens, _) (data.evaluation_batches') as masked (inputs, targets), masked once
    with draws from `seed` alone: the validation batches of `npllama train --objective mlm` and of
    `npllama eval mlm`, so that one model always gets the same numbers."""
    batches = MaskedLMBatches.for_tokenizer(None, tokenizer, seed)   # (its mask needs no loader)
    rng = np.random.default_rng([seed, 3])
    return [batches.mask(tokens, rng) for tokens, _ in val_batches]


@noting_overrides
def evaluate_masked_lm(model, batches, on_batch=None) -> dict:
    """Held-out numbers of a masked-LM model over masked (inputs, targets) batches (masked_held_out's):
    {"mlm": loss per masked token, as mlm_loss computes it (nan if no token is masked: nothing was
    scored), "accuracy": share of masked tokens whose most likely token is the original,
    "masked_tokens": how many}.  on_batch(inputs): called after each batch (a progress bar)."""
    ops = model.head_ops({})
    loss_sum, right, masked = 0.0, 0, 0
    for inputs, targets in batches:
        logits = model.forward(inputs, causal=False)                            # (B, T, V)
        chosen = np.asarray(targets) != IGNORE_INDEX
        n = int(chosen.sum())
        if n:
            loss, _ = ops.cross_entropy_forward(logits, np.asarray(targets), IGNORE_INDEX)   # mlm_loss's
            loss_sum += float(loss) * n
            right += int((np.argmax(logits[chosen], axis=-1) == np.asarray(targets)[chosen]).sum())
            masked += n
        if on_batch is not None:
            on_batch(inputs)
    nan = float("nan")
    return {"mlm": loss_sum / masked if masked else nan, "accuracy": right / masked if masked else nan,
            "masked_tokens": masked}


# ----- sentence-order / next-sentence pairs -------------------------------------------------------
@dataclasses.dataclass
class SentenceOrderBatch:
    """One MLM + SOP batch.  inputs/targets as mask_tokens; sop_labels (B,): 0 in order, 1 not."""
    inputs: np.ndarray          # (B, T) int64, masked
    targets: np.ndarray         # (B, T) int64, -100 where not chosen
    attention_mask: np.ndarray  # (B, T) bool, False on padding
    sop_labels: np.ndarray      # (B,) int64


_CJK_CLOSERS = "\"'”’»)]」』）"      # quotes and brackets that may close a sentence
_CLOSERS = _CJK_CLOSERS + "“‘«"                # and German „...“ and »...« (in Chinese, “ opens the next one)
_OPENERS = "\"'“‘«„([（「『"
# Chinese and Japanese are written without spaces, between sentences too: ideographs, kana, CJK
# punctuation (。「」) and full-width forms (！？，).  Korean is written with spaces, so Hangul is not here.
_CJK = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uff9f\U00020000-\U0003ffff"
_WRITTEN_WITHOUT_SPACES = re.compile(f"[{_CJK}]")
# A sentence end: . ! ? … (runs of them) and closers, then white space; or CJK 。 ！ ？, which need no
# space after them, and ASCII ! ? between CJK characters, as informal Chinese types them ("真的吗?他问。");
# or a paragraph break (a blank line), punctuated or not.  French sets its closing
# » after a (no-break) space: « Oui ! » -- a » after a space closes only when white space follows it,
# since a German or Danish »Nein« opens with the same mark.
_SENTENCE_END = re.compile(rf"(?P<mark>[.!?…]+)(?P<closed>[{re.escape(_CLOSERS)}]*(?:[ \u00a0\u202f]+»)?)(?=\s)"
                           rf"|[。！？]+[{re.escape(_CJK_CLOSERS)}]*"
                           rf"|(?<=[{_CJK}])[!?]+[{re.escape(_CJK_CLOSERS)}]*(?=[{_CJK}{re.escape(_OPENERS)}])"
                           rf"|\n[ \t]*\n")
# words whose period does not end a sentence ("Mr. Smith", "e.g. this"); single letters too ("J. K.")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs cf e.g i.e".split())
_NEXT_CHARACTER, _LAST_WORD = re.compile(r"\s*(\S)"), re.compile(r"\S+$")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, in order, each stripped.

    A sentence ends at . ! ? or … (and any closing quotes or brackets, French « ... » with its
    spaces included) followed by white space, at Chinese/Japanese 。 ！ ？ (no space needed; ASCII
    ! ? too, between Chinese characters), and at a blank line.  Not a sentence end: the period of
    a title or abbreviation (Mr. Dr. St. e.g. i.e. ...) or of an initial ("J. K. Rowling"), and
    an ellipsis or a quoted “Hi!” followed by a lowercase word ('"Hi!" she said.', "Wait... what?").
    A newline inside a paragraph is not a sentence end (hard-wrapped text)."""
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        if end["mark"] is not None and not _ends_a_sentence(text, end):
            continue
        sentences.append(text[start:end.end()].strip())
        start = end.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def join_text(a: str, b: str) -> str:
    """Two stretches of text (sentences, or a question and its answer) one after the other, as they
    are written: with a space between them, but none where the characters meeting there (quotes
    and brackets aside) are Chinese or Japanese -- "他来了。" + "她走了。" is "他来了。她走了。".  A
    space the text would not have becomes a "▁" token in the model's input that pre-training
    never showed it."""
    return a + _space_between(a, b) + b


def join_sentences(sentences) -> str:
    """Sentences (split_sentences' pieces) back into one text: join_text between each two."""
    sentences = list(sentences)
    spaces = ["", *map(_space_between, sentences, sentences[1:])]
    return "".join(space + sentence for space, sentence in zip(spaces, sentences))


def _space_between(a: str, b: str) -> str:
    if not a or not b or a[-1].isspace() or b[0].isspace():
        return ""
    last, first = a.rstrip(_CLOSERS)[-1:], b.lstrip(_OPENERS)[:1]
    if not last or not first or any(_WRITTEN_WITHOUT_SPACES.match(c) for c in (last, first)):
        return ""
    return " "


def _ends_a_sentence(text: str, end: re.Match) -> bool:
    """Whether a match of . ! ? … (+ closers) before white space really ends a sentence."""
    following = _NEXT_CHARACTER.match(text, end.end())      # (bounded look-arounds: long texts stay linear)
    continued = bool(following and following[1].islower()
                     and (end["closed"] or "…" in end["mark"] or "..." in end["mark"]))
    if end["mark"] != ".":
        return not continued
    word = _LAST_WORD.search(text, max(0, end.start() - 16), end.start())
    word = word[0].lstrip(_CLOSERS + "(«„").lower() if word else ""
    return not (continued or word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))


def sentence_blocks(sentences: list[str], max_chars: int) -> list[list[str]]:
    """A document's sentences cut into consecutive blocks of about max_chars characters, each block
    one pair's text: a sentence joins its block while the block stays within max_chars, or while the
    block has fewer than two sentences (a pair needs two).  A document that fits is one block."""
    blocks, block, length = [], [], 0
    for sentence in sentences:
        if len(block) >= 2 and length + 1 + len(sentence) > max_chars:
            blocks.append(block)
            block, length = [], 0
        length += len(sentence) + (1 if block else 0)
        block.append(sentence)
    if len(block) >= 2 or not blocks:
        blocks.append(block)
    else:                       # a last lone sentence stays with the block before it
        blocks[-1].extend(block)
    return blocks


def sentence_order_pairs(documents: list[list[str]], rng, task: str = "sop",
                         max_chars: int | None = None) -> list[tuple[str, str, int]]:
    """(segment A, segment B, label) for each document of at least two sentences -- with max_chars,
    for each block of about max_chars characters of it (sentence_blocks), so that a long document
    gives a pair per stretch that fits a model's window rather than one pair in all.

    A and B are consecutive stretches of sentences, each joined as written (join_sentences: no
    space between Chinese sentences): B starts where A ends.  With
    probability 0.5 the pair is changed: SOP swaps A and B; NSP replaces B with a segment of
    another document.  Label 0 = unchanged (B follows A), 1 = changed.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    usable = [d for d in documents if len(d) >= 2]
    if not usable:
        raise ValueError("sentence-order pairs need documents of at least two sentences; none has two")
    if task == "nsp" and len(usable) < 2:
        raise ValueError("next-sentence pairs need at least two documents (B is drawn from another one)")
    pairs = []
    for i, document in enumerate(usable):
        for sentences in ([document] if max_chars is None else sentence_blocks(document, max_chars)):
            # a random stretch start < cut < end of the block: A = [start, cut), B = [cut, end).  Not
            # always from the block's first sentence, or "Once upon a time" would give the order away.
            start = int(rng.integers(0, len(sentences) - 1))
            cut = int(rng.integers(start + 1, len(sentences)))
            end = int(rng.integers(cut + 1, len(sentences) + 1))
            a, b = join_sentences(sentences[start:cut]), join_sentences(sentences[cut:end])
            label = int(rng.random() < 0.5)
            if label and task == "sop":
                a, b = b, a
            elif label:  # nsp: B from a random other document, as many sentences
                other = usable[(i + int(rng.integers(1, len(usable)))) % len(usable)]
                first = int(rng.integers(0, len(other)))
                b = join_sentences(other[first:first + end - cut])
            pairs.append((a, b, label))
    return pairs


def encode_pair(tokenizer, a: str, b: str, max_len: int) -> list[int]:
    """`<s> A </s> B </s>` in at most max_len tokens: a segment too long for its share keeps the tokens
    nearest the boundary between A and B -- A its end, B its start -- for that boundary is what the
    order is about (in order, the end of A runs on into the start of B).  Both keep at least one
    token."""
    _require_bos_eos(tokenizer)
    ids_a, ids_b = tokenizer.encode(a, bos=False), tokenizer.encode(b, bos=False)
    room = max_len - 3
    if room < 2:
        raise ValueError(f"max_len must be at least 5 for a pair (3 special tokens), got {max_len}")
    keep_a = min(len(ids_a), max(room // 2, room - len(ids_b)))
    keep_b = min(len(ids_b), room - keep_a)
    return [tokenizer.bos_id, *ids_a[len(ids_a) - keep_a:], tokenizer.eos_id, *ids_b[:keep_b], tokenizer.eos_id]


def _require_bos_eos(tokenizer) -> None:
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError(f"a pair is <s> A </s> B </s>, but the tokenizer has no "
                         f"{'<s> (bos_token)' if tokenizer.bos_id is None else '</s> (eos_token)'}")


def check_pair_tokenizer(tokenizer) -> None:
    """ValueError unless `tokenizer` has what MLM + SOP batches need: <s>, </s>, and <unk> as the mask."""
    _require_bos_eos(tokenizer)
    mask_token_id(tokenizer)


class SentenceOrderBatches:
    """MLM + SOP (or NSP) batches from a list of documents, shuffled each epoch, deterministic by seed.

    texts: the documents, each a str or the list of its sentences (split_sentences' result).  One
    pair per document of two or more sentences -- per block of one, when a document is longer
    than max_len tokens (sentence_blocks; its characters per token measured on the texts) --
    drawn once.  batch(step) is a function of (seed, step) alone, so a resumed run draws the same batches and masks; next_batch() walks the
    steps in order.  evaluation_batches() covers every pair once, in order, with fixed masks.
    """

    def __init__(self, texts, tokenizer, batch_size: int, max_len: int, task: str = "sop", seed: int = 0):
        check_pair_tokenizer(tokenizer)
        rng = np.random.default_rng([seed, 0])
        # each document as its sentences (a caller that split them already passes the lists)
        documents = [split_sentences(t) if isinstance(t, str) else list(t) for t in texts]
        max_chars = int((max_len - 3) * _chars_per_token(documents, tokenizer))
        pairs = sentence_order_pairs(documents, rng, task, max_chars=max_chars)
        if len(pairs) < batch_size:
            raise ValueError(f"only {len(pairs)} sentence pairs, fewer than one batch of {batch_size}")
        self.examples = [encode_pair(tokenizer, a, b, max_len) for a, b, _ in pairs]
        self.labels = np.array([label for _, _, label in pairs], dtype=np.int64)
        self.batch_size, self.seed, self.step = int(batch_size), int(seed), 0
        self.pad_id = pad_id_of(tokenizer)
        self.mask_token_id, self.vocab_size = mask_token_id(tokenizer), tokenizer.vocab_size
        self.special_ids = special_token_ids(tokenizer)

    def __len__(self) -> int:
        """The number of pairs."""
        return len(self.examples)

    def batch(self, step: int) -> SentenceOrderBatch:
        """Batch `step`: epochs of fresh permutations of the pairs, from (seed, epoch); masks from (seed, step)."""
        per_epoch = len(self.examples) // self.batch_size
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.examples))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size]
        return self._masked(rows, np.random.default_rng([self.seed, 2, step]))

    def next_batch(self) -> SentenceOrderBatch:
        """batch(step) at the current step, then the step advances."""
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def evaluation_batches(self, batch_size: int | None = None) -> list[SentenceOrderBatch]:
        """Every pair once, in order, in batches of batch_size (default: the training batch size;
        the last may be smaller); the masks come from the seed alone, so two evaluations of one
        model give the same numbers."""
        size = self.batch_size if batch_size is None else int(batch_size)
        rng = np.random.default_rng([self.seed, 3])
        return [self._masked(np.arange(start, min(start + size, len(self.examples))), rng)
                for start in range(0, len(self.examples), size)]

    def _masked(self, rows, rng) -> SentenceOrderBatch:
        tokens, attention_mask = pad_batch([self.examples[r] for r in rows], self.pad_id)
        inputs, targets = mask_tokens(tokens, rng, mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
                                      special_ids=self.special_ids, attention_mask=attention_mask)
        return SentenceOrderBatch(inputs, targets, attention_mask, self.labels[rows])


def _chars_per_token(documents, tokenizer, sample_chars: int = 100_000) -> float:
    """Characters per token of the documents' start (about sample_chars of them; each document a list
    of sentences): how much text fills a window."""
    sample, total = [], 0
    for sentences in documents:
        sample.append(join_sentences(sentences)[:sample_chars - total])
        total += len(sample[-1])
        if total >= sample_chars:
            break
    tokens = sum(len(tokenizer.encode(t, bos=False)) for t in sample)
    return total / max(tokens, 1)


def pad_batch(sequences: list[list[int]], pad_id: int):
    """Right-pad to the longest: (tokens int64 (B, T), attention_mask bool (B, T))."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs at least one sequence and no empty sequence")
    T = max(len(s) for s in sequences)
    tokens = np.full((len(sequences), T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), T), dtype=bool)
    for row, s in enumerate(sequences):
        tokens[row, :len(s)] = s
        attention_mask[row, :len(s)] = True
    return tokens, attention_mask


# ----- losses and gradients ------------------------------------------------------------------------
def mlm_loss_and_grads(model, inputs, targets, attention_mask=None):
    """Masked-LM loss (mean CE over targets != -100) under bidirectional attention, and its
    gradient for every parameter the model trains (all of them, or the LoRA adapters')."""
    return model.loss_and_grads(inputs, targets, attention_mask, IGNORE_INDEX, causal=False)


def mlm_loss(model, inputs, targets, attention_mask=None) -> float:
    """mlm_loss_and_grads' loss alone (evaluation)."""
    return model.loss(inputs, targets, attention_mask, IGNORE_INDEX, causal=False)


@noting_overrides
def mlm_sop_forward(model, sop_head_weight, batch: SentenceOrderBatch):
    """The forward half of mlm_sop_loss_and_grads: (mlm loss, sop loss, sop_logits (B, 2), cache).

    One bidirectional pass of the stack; the LM head reads every position (MLM), the binary head
    each row's last real token (SOP).  `cache` is what the backward half of mlm_sop_loss_and_grads needs."""
    # the heads' ops in force: the backend's, a use_op override, a trace's recording ones
    ops = model.head_ops({SOP_HEAD: sop_head_weight})
    hidden, caches = model.hidden_forward(batch.inputs, batch.attention_mask, causal=False)
    # the LM head over every position -> MLM loss
    logits, lm_cache = ops.linear_forward(hidden, model._lm_head_weight())      # (B, T, V)
    mlm, mlm_ce = ops.cross_entropy_forward(logits, np.asarray(batch.targets), IGNORE_INDEX)  # checks the targets
    # the binary head on each row's last token -> SOP loss
    sop_logits, sop_cache = ops.classifier_forward(hidden, sop_head_weight,
                                                   last_token_index(batch.attention_mask))  # (B, 2)
    sop, sop_ce = ops.cross_entropy_forward(sop_logits, batch.sop_labels)
    return mlm, sop, sop_logits, (caches, lm_cache, mlm_ce, sop_cache, sop_ce, hidden.dtype, ops)


@noting_overrides
def mlm_sop_loss_and_grads(model, sop_head_weight, batch: SentenceOrderBatch):
    """loss = MLM loss + SOP loss (ALBERT sums the two), both on one bidirectional forward pass.

    Returns (loss, grads, parts): grads has the model's trainable parameters plus SOP_HEAD;
    parts = {"mlm": ..., "sop": ...}.  One backward pass: the two heads' gradients with respect to
    the hidden states add (the SOP one is non-zero only at each row's last token).
    """
    mlm, sop, _, (caches, lm_cache, mlm_ce, sop_cache, sop_ce, dtype, ops) = mlm_sop_forward(model, sop_head_weight,
                                                                                             batch)
    one = np.ones((), dtype=dtype)
    dhidden_sop, d_sop_head = ops.classifier_backward(ops.cross_entropy_backward(one, sop_ce), sop_cache)
    dhidden_lm, d_lm_head = ops.linear_backward(ops.cross_entropy_backward(one, mlm_ce), lm_cache)
    # the LM head is trained too, as in Llama.backward (unless LoRA freezes it)
    lm_head = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    grads = model.hidden_backward(dhidden_lm + dhidden_sop, caches,
                                  head_grads={lm_head: d_lm_head, SOP_HEAD: d_sop_head})
    return float(mlm + sop), grads, {"mlm": float(mlm), "sop": float(sop)}


def evaluate_sentence_order(model, sop_head_weight, batches, on_batch=None) -> dict:
    """Held-out numbers of an MLM + SOP model over `batches` (e.g. SentenceOrderBatches.evaluation_batches()):
    {"mlm": MLM loss per masked token (nan if no token is masked: nothing was scored), "sop": SOP loss
    per pair, "sop_accuracy": share of pairs whose order the head got right, "pairs": how many,
    "masked_tokens": how many}.  on_batch(batch): called after each batch (a progress bar)."""
    mlm_sum = sop_sum = 0.0
    right = pairs = masked = 0
    for batch in batches:
        mlm, sop, sop_logits, _ = mlm_sop_forward(model, sop_head_weight, batch)
        n_masked, n_pairs = int((np.asarray(batch.targets) != IGNORE_INDEX).sum()), len(batch.sop_labels)
        mlm_sum += float(mlm) * n_masked
        sop_sum += float(sop) * n_pairs
        right += int((np.argmax(sop_logits, axis=-1) == batch.sop_labels).sum())
        pairs, masked = pairs + n_pairs, masked + n_masked
        if on_batch is not None:
            on_batch(batch)
    if pairs == 0:
        raise ValueError("evaluate_sentence_order needs at least one batch")
    return {"mlm": mlm_sum / masked if masked else float("nan"), "sop": sop_sum / pairs, "sop_accuracy": right / pairs,
            "pairs": pairs, "masked_tokens": masked}


def init_sop_head(hidden_size: int, seed: int = 0, dtype=np.float32, std: float = 0.02) -> np.ndarray:
    """A fresh binary head (2, hidden_size) ~ N(0, std^2), Hugging Face's initializer_range."""
    return (np.random.default_rng(seed).standard_normal((2, hidden_size)) * std).astype(dtype)
