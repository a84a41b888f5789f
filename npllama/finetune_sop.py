"""`npllama finetune sop`: masked-LM + sentence-order training (ALBERT's objectives, article §3.2.3, §4.3.3).

The other objectives the article teaches beside LLaMA's next-token loss, as a job with the life of
the other fine-tunes (npllama/finetune.py): a base model, data, AdamW steps, checkpoints, resume.

Each document of two or more sentences (each block of one about --max-len tokens long, when it is
longer) gives one pair of consecutive stretches A, B.  With
probability 0.5 the pair is changed: swapped for sentence order (SOP, ALBERT), or B replaced by a
stretch of another document for next-sentence prediction (NSP, BERT).  `<s> A </s> B </s>` goes
through the stack without the causal mask, 15% of its tokens masked; the loss is the MLM loss plus
the cross-entropy of a binary head `sop_head.weight` (2, D) on the last token ("changed or not?").
Validation reports the MLM loss and the head's accuracy on held-out documents beside the
majority-label baseline, before and after.

The result is a masked-LM model (bidirectional, `"npllama_objective": "mlm"` in its config.json):
`npllama finetune classify --base OUT` fine-tunes it BERT-style; `generate` refuses it.  Beside it,
`sop_head.safetensors` holds the binary head (load_sentence_order reads both).  With LoRA the
adapters are merged into the weights at the end: the result is a whole model either way.
Derivations: derivations/mlm.md, derivations/sentence_order.md.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .backend import noting_overrides
from .finetune import (FinetuneSettings, _write_info, lora_dropout_on, loss_change, read_info, report_saved,
                       run_steps, steps_timed)
from .loss_units import PAIR_LOSS_UNIT, loss_unit
from .objectives import (SOP_HEAD, TASKS, SentenceOrderBatches, check_pair_tokenizer, encode_pair,
                         evaluate_sentence_order, init_sop_head, mlm_sop_loss_and_grads, split_sentences,
                         unk_in_text_note)

HEAD_FILE = "sop_head.safetensors"        # the binary head, beside the model's own files
DEFAULT_STORIES = 3000                   # built-in documents when no --data is given


@dataclasses.dataclass
class SentenceOrderConfig(FinetuneSettings):
    """`npllama finetune sop`.  Defaults: the built-in stories, full training, sentence order.

    data: documents as `npllama train --data` reads them (.txt cut at doc_separator, .jsonl "text",
    or a folder); None: `stories` built-in stories.  pairs: "sop" (swapped) or "nsp" (B from
    another document).  lr None: 1e-3 full, 5e-3 LoRA.
    """
    TASK = "sop"

    pairs: str = "sop"
    doc_separator: str = "blank-line"
    stories: int = DEFAULT_STORIES
    val_fraction: float = 0.1

    RESUME_FIXED = FinetuneSettings.RESUME_FIXED + ("pairs", "doc_separator", "stories")

    def __post_init__(self):
        super().__post_init__()
        if self.pairs not in TASKS:
            raise ValueError(f"pairs must be one of {', '.join(TASKS)} (sentence order or next sentence), "
                             f"got {self.pairs!r}")
        from .data import check_doc_separator
        from .ops._checks import require_positive_int

        check_doc_separator(self.doc_separator)
        require_positive_int("stories", self.stories)
        if self.max_len < 5:
            raise ValueError(f"max_len must be at least 5 for a pair (<s> A </s> B </s>), got {self.max_len}")


@dataclasses.dataclass
class SentenceOrderResult:
    """What `sentence_order` returns: held-out masked-LM loss and pair accuracy before and after
    training, the baseline, the trainable parameter count, each step's loss, the training time in
    seconds, and the folder saved to (None without sc_.out)."""
    before: dict          # evaluate_sentence_order on the validation pairs, before training
    after: dict           # and after
    baseline: float       # the validation accuracy of always answering the commoner training label
    trainable: int
    losses: list          # each step's MLM + SOP loss
    seconds: float
    out: Path | None


def sentence_order(sc_: SentenceOrderConfig, echo=print, resume: bool = False) -> SentenceOrderResult:
    """Train a model on masked-LM + sentence order (or next sentence); report held-out MLM loss and
    pair accuracy before and after; save the model and its head to sc_.out if given.

    sc_.out is a run folder with checkpoints, stop signals and `resume` as in `classify`."""
    from .finetune_run import fine_tuning_run
    from .runs import require_a_language_model, require_job_arguments

    require_job_arguments("sc_", sc_, SentenceOrderConfig, resume, echo)
    check = lambda base: require_a_language_model(base, "--base", "masked-LM + sentence-order training",
                                                  causal=False)
    with fine_tuning_run(sc_, "sop", resume, echo, check_base=check) as run:
        return _sentence_order(sc_ if run is None else run.config, run, echo)


def _documents(sc_: SentenceOrderConfig) -> tuple[list[str], str]:
    from .corpus import make_default_corpus
    from .data import load_texts

    if sc_.data is None:
        return make_default_corpus(sc_.stories, seed=sc_.seed), f"{sc_.stories} built-in stories"
    return load_texts(sc_.data, sc_.doc_separator), sc_.data


def _sentence_order(sc_: SentenceOrderConfig, run, echo) -> SentenceOrderResult:
    from . import datasets
    from .runs import load_model_and_tokenizer, note_attention_dropout

    model, tokenizer, model_dir = load_model_and_tokenizer(sc_.base, dtype=sc_.model_dtype())
    note_attention_dropout(model.config.attention_dropout, f"{model_dir}'s config.json", echo)
    check_pair_tokenizer(tokenizer)
    texts, source = _documents(sc_)
    everything = len(texts)
    texts = documents_with_pairs(texts)
    if not texts:
        raise ValueError(f"none of the {everything} documents of {source} has two sentences, and each pair is "
                         f"cut from one document: {SENTENCES}")
    if len(texts) < everything:
        source += f" ({everything - len(texts)} of {everything} documents skipped: one sentence only)"
    try:
        train_rows, val_rows = datasets.split_train_val(len(texts), sc_.val_fraction, sc_.seed,
                                                        what="documents of 2+ sentences", val_file=False)
    except ValueError as error:
        if sc_.data is None or sc_.doc_separator != "blank-line" or everything > 1:
            raise
        # text written a paragraph per line (as Chinese often is) has no blank line to cut at
        raise ValueError(f"{error}: {source} has no blank line, so it is one document (doc_separator line "
                         f"makes each of its lines one)") from None
    max_len = min(sc_.max_len, model.config.max_position_embeddings)
    train = _pairs([texts[i] for i in train_rows], tokenizer, sc_, max_len, "training")
    val = _pairs([texts[i] for i in val_rows], tokenizer, sc_, max_len, "validation")
    val_batches = val.evaluation_batches(sc_.batch_size)   # (npllama eval sop scores held-out text so)
    if run is not None:   # what a resume must find again: each pair as encoded, with its label
        run.record_data(list(zip(train.examples, train.labels)), list(zip(val.examples, val.labels)),
                        data=sc_.data, built_in=f"the {sc_.stories} built-in stories")

    was_causal = model.attends_causally
    sc_.attach_lora_if_asked(model)
    head, head_source = _starting_head(model_dir, model, sc_)
    trained = model.lora.params if model.lora is not None else model.params
    params = {**trained, SOP_HEAD: head}
    trainable = int(sum(p.size for p in params.values()))
    commoner = int(np.mean(train.labels) > 0.5)
    baseline = float(np.mean(val.labels == commoner))
    echo(f"masked-LM + {_TASK_NAMES[sc_.pairs]} on {model_dir} ({'LoRA adapters' if sc_.lora else 'every weight'} "
         f"and the binary head, {trainable:,} parameters trained), from {source}: {len(train)} training / "
         f"{len(val)} validation pairs; bidirectional attention"
         + (" (the base was trained causally: the result is a masked-LM model)" if was_causal else ""))
    echo(head_source)
    unk_note = unk_in_text_note(np.concatenate(train.examples), tokenizer)
    if unk_note:
        echo(unk_note)

    before = evaluate_sentence_order(model, head, val_batches)
    sc = sc_.step_config(full_lr=1e-3, lora_lr=5e-3)
    step_loss = lambda batch: mlm_sop_loss_and_grads(model, params[SOP_HEAD], batch)[:2]
    started = time.perf_counter()
    with lora_dropout_on(model):
        losses = run_steps(params, step_loss, train.batch, sc, "sop", run=run, adapters=model.lora)
    seconds = time.perf_counter() - started
    after = evaluate_sentence_order(model, head, val_batches)
    echo(f"{steps_timed(sc_.steps, run, seconds)}; {loss_change(losses, 'sop')}")
    echo(_report(before, after, baseline, sc_.pairs))

    out = None
    if run is not None:
        info = {"task": "sop", "pairs": sc_.pairs, "base": str(model_dir), "data": source, "lora": sc_.lora,
                "steps": sc_.steps, "before": _json_numbers(before), "after": _json_numbers(after),
                "majority_baseline": baseline}
        out = run.publish(lambda folder: _save(folder, model, head, tokenizer, info))
    # a masked-LM model predicts no next token: a classifier fine-tuned from it is what it is for
    report_saved(echo, out, f"the masked-LM model and its {sc_.pairs.upper()} head ({HEAD_FILE})",
                 lambda folder: f"npllama finetune classify --base {folder} --out DIR, or score it on held-out "
                                f"documents: npllama eval sop --model {folder} --data FILE (generate and eval "
                                "perplexity refuse a masked-LM model)", sc_)
    return SentenceOrderResult(before, after, baseline, trainable, losses, seconds, out)


_TASK_NAMES = {"sop": "sentence order (SOP: are A and B swapped?)",
               "nsp": "next sentence (NSP: does B come from another document?)"}


SENTENCES = ("a sentence ends at . ! ? or … before a space, at 。！？, or at a blank line (and a .txt file is cut "
             "into documents at blank lines: --doc-separator whole-file or marker:TEXT keeps paragraphs together)")


def documents_with_pairs(texts) -> list[list[str]]:
    """The documents a pair is cut from: each text as its sentences, those of two or more only."""
    return [s for s in map(split_sentences, texts) if len(s) >= 2]


def held_out_pairs(documents, tokenizer, *, pairs: str, max_len: int, seed: int) -> SentenceOrderBatches:
    """The pairs `npllama finetune sop` validates on and `npllama eval sop` scores: one per document
    (per block of one longer than max_len tokens), drawn from `seed`; .evaluation_batches(batch_size)
    masks them once, from `seed` alone.  documents: documents_with_pairs' lists of sentences."""
    return SentenceOrderBatches(documents, tokenizer, batch_size=1, max_len=max_len, task=pairs, seed=seed)


def _pairs(texts, tokenizer, sc_, max_len, which) -> SentenceOrderBatches:
    try:
        if which == "validation":
            return held_out_pairs(texts, tokenizer, pairs=sc_.pairs, max_len=max_len, seed=sc_.seed)
        return SentenceOrderBatches(texts, tokenizer, batch_size=sc_.batch_size, max_len=max_len, task=sc_.pairs,
                                    seed=sc_.seed)
    except ValueError as error:  # say which documents, and what would help
        remedy = ("more documents, or a smaller --batch-size or --val-fraction" if which == "training" else
                  "more documents or a larger --val-fraction")
        raise ValueError(f"the {which} documents ({len(texts)}) give no usable batch: {error}; give {remedy}") from None


def _report(before: dict, after: dict, baseline: float, pairs: str) -> str:
    rows = [("", "before", "after"),
            (f"MLM loss ({loss_unit('mlm')})", _mlm(before), _mlm(after)),
            (f"{pairs.upper()} loss ({PAIR_LOSS_UNIT})", f"{before['sop']:.4f}", f"{after['sop']:.4f}"),
            (f"{pairs.upper()} accuracy", f"{before['sop_accuracy']:.3f}", f"{after['sop_accuracy']:.3f}")]
    width = max(len(r[0]) for r in rows)
    lines = [f"validation, {after['pairs']} pairs:"]
    lines += [f"  {name.ljust(width)}  {b:>8}  {a:>8}" for name, b, a in rows]
    lines.append(f"  majority-label baseline accuracy: {baseline:.3f}")
    if np.isnan(after["mlm"]):
        lines.append("  (no validation token was masked, so there is no MLM loss: give more documents)")
    return "\n".join(lines)


def _mlm(numbers: dict) -> str:
    return "n/a" if np.isnan(numbers["mlm"]) else f"{numbers['mlm']:.4f}"


def _json_numbers(numbers: dict) -> dict:
    """evaluate_sentence_order's numbers for finetune.json: a nan (nothing scored) as null."""
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in numbers.items()}


def _save(folder: Path, model, head: np.ndarray, tokenizer, info: dict) -> None:
    from .io.safetensors import write_safetensors

    if model.lora is not None:   # a whole model either way: the adapters fold into the weights
        model.lora.merge()
    model.objective = "mlm"
    model.save_pretrained(folder, extra_files=tokenizer.hf_files(model_max_length=model.config.max_position_embeddings))
    write_safetensors(Path(folder) / HEAD_FILE, {SOP_HEAD: head})
    _write_info(folder, info)


def load_sentence_order(folder, dtype=np.float32):
    """(model, sop_head_weight, tokenizer) from a folder `npllama finetune sop` saved."""
    from .runs import load_model_and_tokenizer

    from .io.train_state import PARAMS_FILE

    head_file = Path(folder).expanduser() / HEAD_FILE
    if not head_file.is_file() and (head_file.parent / PARAMS_FILE).is_file():   # a fine-tune's checkpoint/
        from .io.describe import describe_path

        raise FileNotFoundError(f"{str(folder)!r} has no {HEAD_FILE}: it {describe_path(folder)}")
    if not head_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {HEAD_FILE}: not a folder saved by `npllama finetune sop`")
    model, tokenizer, _ = load_model_and_tokenizer(folder, dtype=dtype)
    return model, _read_head(head_file, model.config.hidden_size, dtype), tokenizer


def _read_head(head_file: Path, hidden_size: int, dtype) -> np.ndarray:
    from .io.safetensors import read_safetensors

    head = read_safetensors(head_file).get(SOP_HEAD)
    if head is None or head.shape != (2, hidden_size):
        raise ValueError(f"{str(head_file)!r} must hold {SOP_HEAD} of shape (2, {hidden_size}), "
                         f"got {None if head is None else head.shape}")
    return head.astype(dtype)


def _starting_head(model_dir: Path, model, sc_: SentenceOrderConfig) -> tuple[np.ndarray, str]:
    """(the head to train, a line saying where it came from): the base's own head when the base is a
    `finetune sop` result of the same --pairs (training continues), else a fresh one."""
    fresh = init_sop_head(model.config.hidden_size, seed=sc_.seed, dtype=model.dtype)
    head_file = Path(model_dir) / HEAD_FILE
    if not head_file.is_file():
        return fresh, "the binary head starts fresh (random, seeded by --seed)"
    # finetune.json read by its one reader: no record, or one not npllama's, is {} (which question: unknown)
    pairs = read_info(Path(model_dir)).get("pairs")
    if pairs != sc_.pairs:   # a head that answered another question
        return fresh, (f"the binary head starts fresh: the base's {HEAD_FILE} was trained on --pairs "
                       f"{pairs or 'unknown'}, this run on {sc_.pairs}")
    return _read_head(head_file, model.config.hidden_size, model.dtype), \
        f"the binary head continues from the base's {HEAD_FILE}"


def sentence_order_score(model, sop_head_weight, tokenizer, texts, *, pairs: str = "sop", max_len: int | None = None,
                         batch_size: int = 16, seed: int = 0, progress: bool = False) -> dict:
    """A `finetune sop` model's held-out numbers on the documents `texts` (load_sentence_order's
    model, head and tokenizer), scored as the run scores its validation documents: a pair per
    document of two or more sentences (held_out_pairs, from `seed`), `batch_size` pairs at a time,
    masked from `seed` (evaluate_sentence_order).  With the run's --pairs, --max-len, --batch-size
    and --seed on its held-out documents these are the validation numbers it logged.

    max_len: tokens per pair, at most the model's context (None: the context), as in training.
    Returns evaluate_sentence_order's {"mlm", "sop", "sop_accuracy", "pairs", "masked_tokens"} and
    "documents" (those that gave pairs), "skipped_documents" (one sentence only),
    "majority_label_accuracy" (always answering these pairs' commoner label)."""
    from tqdm.auto import tqdm

    from .objectives import TASKS
    from .ops._checks import require_int, require_positive_int

    if pairs not in TASKS:
        raise ValueError(f"pairs must be one of {', '.join(TASKS)} (sentence order or next sentence), got {pairs!r}")
    require_positive_int("max_len", max_len, none_ok=True)
    require_positive_int("batch_size", batch_size)
    require_int("seed", seed)
    texts = list(texts)
    documents = documents_with_pairs(texts)
    if not documents:
        raise ValueError(f"none of the {len(texts)} documents has two sentences, and each pair is cut from one "
                         f"document: {SENTENCES}")
    positions = model.config.max_position_embeddings
    held_out = held_out_pairs(documents, tokenizer, pairs=pairs, max_len=min(max_len or positions, positions),
                              seed=int(seed))
    with tqdm(total=len(held_out), desc=f"{pairs.upper()} pairs", unit="pair", disable=not progress,
              leave=False) as bar:
        scores = evaluate_sentence_order(model, sop_head_weight, held_out.evaluation_batches(batch_size),
                                         on_batch=lambda batch: bar.update(len(batch.sop_labels)))
    changed = float(np.mean(held_out.labels))
    return {**scores, "documents": len(documents), "skipped_documents": len(texts) - len(documents),
            "majority_label_accuracy": max(changed, 1 - changed)}


@noting_overrides
def changed_probability(model, sop_head_weight, tokenizer, a: str, b: str, max_len: int | None = None) -> float:
    """The head's probability that the pair (A, B) was changed: swapped (SOP) or B from elsewhere (NSP).

    max_len: tokens of `<s> A </s> B </s>` (None: the model's max_position_embeddings); a longer pair
    keeps the text at the A|B boundary, as in training."""
    from .ops._checks import require_positive_int
    from .ops.classifier import last_token_index
    from .ops.softmax import softmax_forward

    positions = model.config.max_position_embeddings
    require_positive_int("max_len", max_len, none_ok=True)
    if max_len is not None and max_len > positions:
        raise ValueError(f"max_len must be at most the model's max_position_embeddings ({positions}), got {max_len}")
    ids = np.array([encode_pair(tokenizer, a, b, max_len or positions)])
    mask = np.ones(ids.shape, dtype=bool)
    ops = model.head_ops({SOP_HEAD: sop_head_weight})   # (a trace records the head too)
    hidden, _ = model.hidden_forward(ids, mask, causal=False)
    logits, _ = ops.classifier_forward(hidden, sop_head_weight, last_token_index(mask))   # (1, 2)
    probs, _ = softmax_forward(logits.astype(np.float64))
    return float(probs[0, 1])


__all__ = ["SentenceOrderConfig", "SentenceOrderResult", "sentence_order", "load_sentence_order",
           "sentence_order_score", "held_out_pairs", "documents_with_pairs", "changed_probability", "HEAD_FILE"]
