"""Fine-tuning (article §3.3, §6, §9.2): classification, instruction tuning, multiple-choice scoring.

A pre-trained LLaMA has learned the causal next-token loss only.  Fine-tuning adapts it to a task
with a little labelled data, starting from its weights (§3.3.2) and taking a few hundred AdamW
steps (§3.3.3):

* `classify`: sentiment, news topic, spam (§6.1).  A classification head `score.weight`
  (num_labels, D) reads the hidden state of each text's last real token (Hugging Face's
  LlamaForSequenceClassification, npllama/ops/classifier.py); cross-entropy over the labels.
  Either every weight is trained (full fine-tuning) or only LoRA adapters and the head (§9.2,
  npllama/lora.py).  At the end: accuracy, macro-F1 and the confusion matrix on a validation
  split, printed beside the majority-class baseline (what always answering the most frequent
  training label scores).  On a masked-LM base (`npllama train --objective mlm`) the stack runs
  without the causal mask, as it was pre-trained (BERT-style), and the saved folder says so.
* `sft`: instruction / dialogue tuning (§6.2).  Prompt/response pairs or whole conversations
  ("messages") in a chat template (the base folder's, else LLaMA-3's or LLaMA-2's by the
  tokenizer's pieces); the next-token loss counts the assistant's tokens only (every other
  target is -100).
* `evaluate_choice`: multiple-choice question answering (§6.3) by the log-likelihood the model
  gives each choice after the question; the most likely choice is the answer.

The loop (`run_steps`) is the pre-training loop's recipe in small: AdamW, warmup then cosine,
global-norm clipping, a tqdm bar.  With `out`, the job has a run folder like pre-training's:
checkpoints every `checkpoint_every` steps, a checkpoint on Ctrl-C/SIGTERM/SIGHUP, and
`resume=True` to continue (npllama/finetune_run.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

import numpy as np

from .backend import noting_overrides
from .chat import BUILTIN_TEMPLATES
from .lora import ATTENTION_TARGETS, attach_lora, check_lora_settings
from .loss_units import loss_unit
from .objectives import IGNORE_INDEX, pad_batch, pad_id_of
from .ops._checks import require_non_negative_int, require_positive_int
from .ops.classifier import last_token_index   # (the head's ops are the ops in force: Llama.head_ops)
from .interrupts import deferred_stop_signals
from .io.hf import CHAT_TEMPLATE_FILE, objective_fields
from .optim import AdamW, TrainingError, clip_finite_step, cosine_with_warmup
from .parallel import mean_over_targets

DTYPES = {"float32": np.float32, "float64": np.float64}
SCORE = "score.weight"
INFO_FILE = "finetune.json"   # what was trained, on what, and the final metrics
BIDIRECTIONAL_NOTE = ("bidirectional attention (a masked-LM base): load it with npllama (load_classifier, "
                      "`npllama classify`); transformers' LlamaForSequenceClassification would run it "
                      "causally and give other predictions")


# ----- the shared loop ------------------------------------------------------------------------------
@dataclasses.dataclass
class StepConfig:
    """The settings of run_steps' AdamW loop (a fine-tune's FinetuneSettings.step_config makes one):
    steps, batch size, peak lr after linear warmup (cosine decay after), weight decay, global-norm
    clipping, the seed of the batch order, the progress bar, and checkpoints."""
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    progress: bool = True
    checkpoint_every: int = 0       # with a run folder: steps between checkpoints (0: only when stopped or done)

    def __post_init__(self):
        require_positive_int("steps", self.steps)
        require_positive_int("batch_size", self.batch_size)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        require_non_negative_int("warmup_steps", self.warmup_steps)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not 0 <= self.weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        require_non_negative_int("checkpoint_every", self.checkpoint_every)
        # numpy's generators take no negative seed, and said so without naming it
        require_non_negative_int("seed", self.seed)

    def optimizer_settings(self) -> dict:
        """AdamW's settings (npllama.optim.AdamW.settings_names) for this loop."""
        return {"lr": self.lr, "betas": ADAM_BETAS, "eps": ADAM_EPS, "weight_decay": self.weight_decay}


ADAM_BETAS, ADAM_EPS = (0.9, 0.95), 1e-8
DEFAULT_WARMUP_STEPS = 20   # fine-tuning's warmup when none is given (at most steps - 1)


def run_steps(params: dict, loss_and_grads, make_batch, sc: StepConfig, desc: str = "fine-tuning",
              run=None, adapters=None) -> list[float]:
    """sc.steps AdamW steps on `params` (updated in place).  Returns the loss of every step.

    make_batch(step) -> batch; loss_and_grads(batch) -> (loss, grads with the keys of params).
    run: the job's npllama.finetune_run.FinetuneRun, or None.  With one, a resume starts where its
    checkpoint left off, every sc.checkpoint_every steps and at the end a checkpoint is saved, and
    a stop signal saves one before it propagates (a step is all or nothing).  adapters: the LoRA
    adapters whose dropout draws the checkpoint keeps, if any.
    """
    from tqdm.auto import tqdm

    settings = sc.optimizer_settings()
    optimizer = AdamW(params, **settings)
    step, losses = (0, []) if run is None else run.restore(params, optimizer, settings, adapters)
    # the dropout draws as they stood after the last whole step (a stop can land mid-step, after some draws)
    dropout = None if adapters is None else adapters.dropout_state
    save = lambda: run.save(step, params, optimizer, losses, dropout)  # noqa: E731 (the state as it is now)
    bar = tqdm(total=sc.steps, initial=step, desc=desc, disable=not sc.progress, leave=False)
    try:
        while step < sc.steps:
            loss, grads = loss_and_grads(make_batch(step))
            _, problem = clip_finite_step(loss, grads, params, sc.grad_clip)
            if problem is not None:
                raise TrainingError(f"step {step + 1}: {problem}; stopped without applying this step "
                                    f"(try a lower --lr)")
            lr = cosine_with_warmup(step, max_lr=sc.lr, warmup_steps=min(sc.warmup_steps, sc.steps - 1),
                                    total_steps=sc.steps, min_lr=sc.lr / 10)
            with deferred_stop_signals():  # the update, the step count and its log line agree
                optimizer.step(grads, lr=lr)
                losses.append(loss)
                step += 1
                dropout = None if adapters is None else adapters.dropout_state
                if run is not None:
                    run.write_log({"step": step, "loss": loss, "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)   # the bar redraws on its own schedule
            if run is not None and sc.checkpoint_every and step % sc.checkpoint_every == 0 and step < sc.steps:
                save()
        # the last step's checkpoint, inside the try: a stop signal from the last step to the end of
        # this save is caught below and saves it, rather than leaving the last checkpoint_every's
        if run is not None and run.saved_step != step:
            save()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: keep what was done
        if run is not None:
            run.stopped(stop, step, save)
        raise
    finally:
        bar.close()
        if run is not None:
            run.close()
    return losses


@contextlib.contextmanager
def lora_dropout_on(model):
    """Training mode for the model's LoRA adapters (dropout on) inside the block, if it has any."""
    if model.lora is None:
        yield
        return
    model.lora.training = True
    try:
        yield
    finally:
        model.lora.training = False


def batch_rows(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The example indices of batch `step`: epochs of fresh permutations of range(n), from (seed, epoch)."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[index * batch_size:(index + 1) * batch_size]


# ----- sequence classification ----------------------------------------------------------------------
class SequenceClassifier:
    """A Llama with a classification head on its last real token (LlamaForSequenceClassification).

    params: what fine-tuning trains -- every weight of the model but the unused LM head, and
    `score.weight`; or, with LoRA adapters attached to the model, the adapters and `score.weight`.

    The stack runs with the attention its base was pre-trained with: causal for a causal LM (as
    LlamaForSequenceClassification does), bidirectional for a masked-LM model (model.objective
    "mlm", `npllama train --objective mlm`: the article's BERT-style pre-training then fine-tuning).
    """

    def __init__(self, model, label_names, seed: int = 0, pad_id: int | None = None):
        from .model import Llama

        if not isinstance(model, Llama):
            raise TypeError(f"model must be a Llama, got {type(model).__name__}")
        self.model = model
        self.pad_id = pad_id
        self.label_names = tuple(label_names)
        if len(self.label_names) < 2:
            raise ValueError(f"a classifier needs at least two labels, got {list(self.label_names)}")
        rng = np.random.default_rng([seed, 2])
        shape = (len(self.label_names), model.config.hidden_size)  # HF's init: N(0, initializer_range^2)
        self.score_weight = (rng.standard_normal(shape) * model.config.initializer_range).astype(model.dtype)

    @property
    def pad_id(self) -> int | None:
        """The id the batches are padded with, when known: the head skips it as transformers does
        (pooled_index), and it becomes the model's config.pad_token_id -- the embedding row the
        pad-row rule gives no gradient (model.decoder_backward) and the id save() writes -- so that
        a base whose config.json names another id (LLaMA-1's 0, its tokenizer padding with </s>)
        trains, saves, reloads and trains again with one pad id."""
        return self._pad_id

    @pad_id.setter
    def pad_id(self, pad_id: int | None) -> None:
        if pad_id is not None:
            require_non_negative_int("pad_id", pad_id)
            if pad_id >= self.model.config.vocab_size:
                raise ValueError(f"pad_id must be an id below the model's vocab_size "
                                 f"({self.model.config.vocab_size}), got {pad_id}")
            if self.model.config.pad_token_id != pad_id:
                self.model.config = dataclasses.replace(self.model.config, pad_token_id=int(pad_id))
        self._pad_id = None if pad_id is None else int(pad_id)

    @property
    def num_labels(self) -> int:
        """How many labels the head scores (the rows of score.weight)."""
        return len(self.label_names)

    @property
    def causal(self) -> bool:
        """False when the base model is a masked-LM model: it was pre-trained without the causal
        mask, so it is fine-tuned and run without it too."""
        return self.model.attends_causally

    @property
    def attention(self) -> str:
        """"causal" or "bidirectional": what the saved folder records (finetune.json)."""
        return "causal" if self.causal else "bidirectional"

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The trained arrays by name: the base model's (without lm_head.weight, which the head
        replaces) or, with LoRA, the adapters', and score.weight."""
        if self.model.lora is not None:
            return {**self.model.lora.params, SCORE: self.score_weight}
        return {**{n: p for n, p in self.model.params.items() if n != "lm_head.weight"}, SCORE: self.score_weight}

    def pooled_index(self, tokens, attention_mask) -> np.ndarray:
        """(B,) where the head reads each row: its last real token, skipping `pad_id` when known.

        transformers' LlamaForSequenceClassification finds the position by the ids alone, as the
        rightmost token that is not config.pad_token_id.  Where the pad id is also a real token --
        LLaMA pads with </s>, and a text "... </s>" encodes to it -- it reads the token before.  So
        does this head, so that a saved classifier gives the same logits in transformers."""
        mask = np.asarray(attention_mask)
        if self.pad_id is not None:
            mask = mask.astype(bool) & (np.asarray(tokens) != self.pad_id)
        return last_token_index(mask)

    @noting_overrides
    def logits(self, tokens, attention_mask) -> np.ndarray:
        """(B, num_labels) class scores."""
        ops = self.model.head_ops({SCORE: self.score_weight})
        hidden, _ = self.model.hidden_forward(tokens, attention_mask, causal=self.causal)
        return ops.classifier_forward(hidden, self.score_weight, self.pooled_index(tokens, attention_mask))[0]

    @noting_overrides
    def loss_and_grads(self, tokens, attention_mask, labels):
        """Mean cross-entropy of the labels, and its gradient for every trainable parameter."""
        # rows None: tokens not (B, T), which the forward refuses by name
        labels = self._checked_labels(labels, np.shape(tokens)[:1] if np.ndim(tokens) == 2 else None)
        # the head's ops in force: the backend's, a use_op override, a trace's recording ones
        ops = self.model.head_ops({SCORE: self.score_weight})
        hidden, caches = self.model.hidden_forward(tokens, attention_mask, causal=self.causal)   # (B, T, D)
        logits, head_cache = ops.classifier_forward(hidden, self.score_weight,
                                                    self.pooled_index(tokens, attention_mask))  # (B, num_labels)
        loss, ce_cache = ops.cross_entropy_forward(logits, labels)
        dlogits = ops.cross_entropy_backward(np.ones((), dtype=logits.dtype), ce_cache)   # (B, num_labels)
        dhidden, d_score = ops.classifier_backward(dlogits, head_cache)                  # (B, T, D)
        grads = self.model.hidden_backward(dhidden, caches, head_grads={SCORE: d_score})
        return float(loss), {name: grads[name] for name in self.params}

    def _checked_labels(self, labels, rows: tuple | None) -> np.ndarray:
        """labels as int64 (B,), checked before the forward runs and named as loss_and_grads names
        them (the cross-entropy op would speak of targets and V)."""
        labels = np.asarray(labels)
        # bool too is refused: True -> 1 would be label_names[1] by the accident of their order, and
        # astype(int64) would truncate a float 0.7 to label 0
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integer label ids, got dtype {labels.dtype}")
        if rows is not None and labels.shape != rows:
            raise ValueError(f"labels must have one label for each row of tokens, shape {rows}, got {labels.shape}")
        # -100 skips a row, as in transformers' cross-entropy (ignore_index)
        outside = (labels != -100) & ((labels < 0) | (labels >= self.num_labels))
        if outside.any():
            raise ValueError(f"labels must be label ids in [0, {self.num_labels}) (label_names {self.label_names}), "
                             f"or -100 to skip a row; got {labels[outside].flat[0]}")
        return labels.astype(np.int64, copy=False)

    def predict(self, encoded: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
        """Predicted label ids of the encoded texts (shortest first, so batches carry little padding)."""
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        predictions = np.empty(len(encoded), dtype=np.int64)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens, mask = pad_batch([encoded[r] for r in rows], pad_id)
            predictions[rows] = self.logits(tokens, mask).argmax(-1)
        return predictions

    def save(self, path, tokenizer, base_dir=None, info=None) -> Path:
        """Full fine-tuning: a Hugging Face LlamaForSequenceClassification folder (config.json with
        id2label, model.safetensors with model.* and score.weight) plus tokenizer.model.  With LoRA:
        the PEFT adapter folder (task SEQ_CLS; score.weight saved as modules_to_save).  Into an
        existing folder: the files written replace those of the same names, the others stay (as
        Llama.save_pretrained and LoraAdapters.save_adapter say).

        finetune.json records the attention ("causal" or "bidirectional"), and a bidirectional
        classifier's config.json records "npllama_objective": "mlm", so that load_classifier runs
        it as it was trained.  The pad id the head trained with is config.json's pad_token_id; an
        adapter, which has no config.json of its own (its base's may name another id), records it
        in finetune.json as "pad_id".  transformers knows neither: its LlamaForSequenceClassification
        would load such a folder and run it causally, giving other logits."""
        path = Path(path)
        if self.model.lora is not None:
            self.model.lora.extra[SCORE] = self.score_weight
            self.model.lora.save_adapter(path, base_model_name_or_path=str(base_dir) if base_dir else None,
                                         task_type="SEQ_CLS")
        else:
            self._save_hf_folder(path, tokenizer)
        attention = {"attention": self.attention}
        if self.model.lora is not None and self.pad_id is not None:
            attention["pad_id"] = self.pad_id
        if not self.causal:
            attention["transformers"] = BIDIRECTIONAL_NOTE
        _write_info(path, {"label_names": list(map(str, self.label_names)), **attention, **(info or {})})
        return path

    def _save_hf_folder(self, path, tokenizer=None):
        """The LlamaForSequenceClassification folder; without a tokenizer (npllama.debug's comparison
        with transformers) the weights and a config.json whose pad_token_id is the head's pad_id.
        An existing folder keeps its other files, as with save_hf_folder (npllama.io.hf.model_folder_keep)."""
        from .io.atomic import atomic_directory
        from .io.hf import model_folder_keep
        from .io.safetensors import write_safetensors
        from .runs import CLASSIFIER_ARCHITECTURE   # the name runs.is_a_classifier_config looks for

        # the id the head trained with; without one, the id the tokenizer's batches pad with
        pad_id = self.pad_id if self.pad_id is not None or tokenizer is None else pad_id_of(tokenizer)
        config = self.model.config.to_dict()
        config.update(architectures=[CLASSIFIER_ARCHITECTURE],
                      id2label={str(i): str(n) for i, n in enumerate(self.label_names)},
                      label2id={str(n): i for i, n in enumerate(self.label_names)},
                      problem_type="single_label_classification", pad_token_id=pad_id,
                      torch_dtype=str(np.dtype(self.model.dtype)))
        config.update(objective_fields(self.model.objective))   # an MLM base: load_classifier runs it bidirectionally
        tensors = {n: p for n, p in self.params.items()}
        with atomic_directory(path, keep=model_folder_keep(path)) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            write_safetensors(tmp / "model.safetensors", tensors, metadata={"format": "pt"})
            if tokenizer is not None:
                for name, data in tokenizer.hf_files(model_max_length=self.model.config.max_position_embeddings,
                                                     pad_id=pad_id).items():   # as config.json's
                    (tmp / name).write_bytes(data)   # tokenizer.model and what transformers reads


def steps_timed(steps: int, run, seconds: float) -> str:
    """The steps this process took and how long they took: "20 steps in 3.1 s", or after a resume
    at step 12 (FinetuneRun.resumed_at) "steps 13-20 of 20 in 1.2 s" -- not the run's 20; after a
    resume at the last step, that none was left."""
    first = 0 if run is None else run.resumed_at
    if first == 0:
        return f"{steps} step{'' if steps == 1 else 's'} in {seconds:.1f} s"
    if first == steps:
        return f"no step left to take: the checkpoint had reached step {steps} of {steps}"
    return f"steps {first + 1}-{steps} of {steps} in {seconds:.1f} s"


def loss_change(losses: list, objective: str) -> str:
    """How the training loss of `objective` ("classify", "sop": npllama.loss_units) moved: the
    means of the first and last 10 steps, or of the first and last halves of a shorter run (so that
    a run of 10 steps or fewer does not compare a mean with itself)."""
    loss = f"training loss ({loss_unit(objective)})"
    if len(losses) < 2:
        return f"{loss} {losses[0]:.3f} (one step)" if losses else "no steps taken"
    k = min(10, len(losses) // 2)
    if k == 1:
        return f"{loss} {losses[0]:.3f} -> {losses[-1]:.3f} (first -> last step)"
    return f"{loss} {np.mean(losses[:k]):.3f} -> {np.mean(losses[-k:]):.3f} (mean of the first -> last {k} steps)"


# How a fine-tune's caller gives the run folder: the command line's flag while `npllama finetune`
# runs the job (npllama.commands.finetune sets it), else None: the settings' keyword, `out`.
OUT_AS_GIVEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("npllama_out_as_given", default=None)


def report_saved(echo, out, what: str, use, settings) -> None:
    """The last line of a fine-tune: where its result went (`what`: "the classifier") and the command
    that uses it (`use(folder)`: the command given the folder, shell-quoted), or that nothing was kept
    without a run folder, named as the caller gives it (OUT_AS_GIVEN, else `settings`' keyword).
    A function, not a text with a word standing for the folder: the word could be part of the
    base's path in the same command."""
    if out is None:
        given = OUT_AS_GIVEN.get() or f"out=DIR ({type(settings).__name__}'s out)"
        echo(f"nothing saved: give {given} to keep the result")
    else:
        echo(f"saved {what} to {out}; use it: {use(shlex.quote(str(out)))}")


def as_shown_here(path) -> str:
    """`path` for a command to copy, shell-quoted: relative to the current folder when it lies in it
    (as a relative --base gives it), else absolute.  The same on a start and on a resume, which
    reads the base from the run's settings, recorded absolute."""
    absolute = Path(os.path.abspath(path))
    here = Path(os.getcwd())
    if not absolute.is_relative_to(here):
        return shlex.quote(str(absolute))
    shown = str(absolute.relative_to(here))
    return shlex.quote(f"./{shown}" if shown.startswith("-") else shown)   # "-base" would read as a flag


# the head reads the last token kept: what comes after it cannot sway the label
_CLASSIFIER_CUT = "the beginning kept, so the classifier never reads their end"


def note_validation_also_trained_on(train, val, why: str, measure: str, echo, items: str = "texts") -> None:
    """Say how many `val` items are equal to a training item (`why`: what makes them so), if any: the
    `measure` taken on them is partly on what the model was trained on, so it says too much."""
    seen = set(train)
    shared = sum(item in seen for item in val)
    if shared:
        echo(f"{shared} of {len(val)} validation {items} are also training {items} ({why}): {measure} below "
             f"is partly on {items} the model was trained on, not on new ones")


def cut_note(cut: int, total: int, max_len: int, limit: str, items: str = "texts", lost: str = _CLASSIFIER_CUT) -> str:
    """What to tell of `cut` of `total` `items` kept up to max_len tokens only (`limit`: what set
    it; `lost`: what the cut costs)."""
    return (f"{cut} of {total} {items} {'is' if cut == 1 else 'are'} longer than {max_len} tokens ({limit}): "
            f"cut there, {lost}")


def encode_texts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """`<s> text`, cut to max_len tokens (the beginning kept)."""
    return [ids[:max_len] for ids in tokenizer.encode_batch(list(texts), bos=True)]


def classification_metrics(y_true, y_pred, num_labels: int) -> dict:
    """accuracy, macro-F1, per-label precision/recall/F1, and the confusion matrix (rows: true
    label, columns: predicted).  macro-F1 is the unweighted mean of the F1 of each label that is
    a true label or a prediction here (scikit-learn's rule): a label absent from both -- a class
    the validation share happens not to hold -- says nothing of the classifier, and counted as
    F1 = 0 it made a perfect classifier's macro-F1 0.5 on a share holding one of two classes."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and of one shape, got {y_true.shape}, {y_pred.shape}")
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_pos = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(true_pos, predicted, out=np.zeros(num_labels), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros(num_labels), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_labels),
                   where=precision + recall > 0)
    present = (actual > 0) | (predicted > 0)
    return {"accuracy": float(true_pos.sum() / y_true.size), "macro_f1": float(f1[present].mean()),
            "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "confusion": confusion.tolist()}


def majority_baseline(train_labels, val_labels) -> tuple[int, float]:
    """(the most frequent training label, the validation accuracy of always predicting it)."""
    majority = int(np.bincount(np.asarray(train_labels)).argmax())
    return majority, float(np.mean(np.asarray(val_labels) == majority))


def format_metrics(metrics: dict, label_names, baseline: float, majority=None, of: str = "validation",
                   baseline_from: str | None = None) -> str:
    """Accuracy and macro-F1 beside the majority baseline (always predicting `majority`, the
    training set's most frequent label, named when given; `baseline_from` says where else it
    came from), then the confusion matrix.  `of`: which texts were scored."""
    from .text_width import rjust, width as columns

    names = [str(n) for n in label_names]
    width = max(8, *(columns(n) for n in names))
    always = "" if majority is None else f", always {majority}"
    source = "" if baseline_from is None else f" ({baseline_from})"
    lines = [f"{of} accuracy {metrics['accuracy']:.3f}   macro-F1 {metrics['macro_f1']:.3f}   "
             f"(majority-class baseline{always}{source}: accuracy {baseline:.3f})",
             "confusion matrix (rows: true label, columns: predicted)",
             " " * width + "".join(rjust(n, width + 1) for n in names)]
    for name, row in zip(names, metrics["confusion"]):
        lines.append(rjust(name, width) + "".join(str(v).rjust(width + 1) for v in row))
    return "\n".join(lines)


@dataclasses.dataclass
class FinetuneSettings:
    """What every fine-tuning job takes: the base model, the data, LoRA, and the step loop."""

    base: str | None = None          # model folder (None: the latest `npllama train` run)
    data: str | None = None          # the job's own data file; None: its built-in example set
    val_fraction: float = 0.2        # held out for validation
    lora: bool = False
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple = ATTENTION_TARGETS
    steps: int = 200
    batch_size: int = 16
    lr: float | None = None          # None: the job's default, which differs for full and LoRA
    warmup_steps: int | None = None  # None: 20 (the loop warms up for at most steps - 1)
    weight_decay: float = 0.0
    max_len: int = 128
    seed: int = 0
    dtype: str = "float32"
    out: str | None = None           # the run folder: checkpoints, then the result (None: nothing saved)
    checkpoint_every: int = 50       # steps between checkpoints in `out` (0: only when stopped or done)
    progress: bool = True

    # Settings that must not change when a run is resumed (the model, the data and its order); the
    # others (steps, lr, ...) may, and are recorded.  RESUME_QUIET ones steer only the one call.
    RESUME_FIXED = ("base", "data", "val_fraction", "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                    "batch_size", "max_len", "seed", "dtype", "dataset", "labels", "val_data", "chat_template",
                    "split")
    RESUME_QUIET = ("out", "progress", "samples")
    # what resuming from Python takes: the saved settings, with the caller's on top
    RESUME_FROM_SAVED = "{cls}.resume_config(run_dir, **changes)"
    TASK = None   # the `npllama finetune` task (npllama.finetune_run.SETTINGS_FILES), named by each job's class
    PATH_SETTINGS = ("base", "data", "val_data", "out", "chat_template")  # a respelled path is no change
    MODEL_SETTINGS = ("base",)   # a run folder and its model/ name one base
    # the files the run reads, saved absolute; a chat_template may be a built-in template's name instead
    RECORDED_ABSOLUTE = ("base", "data", "val_data", "chat_template")
    BUILT_IN_NAMES = {"chat_template": tuple(BUILTIN_TEMPLATES)}

    def __post_init__(self):
        from .resuming import paths_as_str

        paths_as_str(self)   # saved as JSON: a pathlib.Path becomes its str
        # the step loop's settings (StepConfig checks them), so that a mistake is reported before the
        # model loads; a given warmup longer than the run is refused, as `npllama train` refuses it
        self.step_config(1.0, 1.0)
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        require_positive_int("max_len", self.max_len)
        if self.max_len < 2:
            raise ValueError(f"max_len must be at least 2, got {self.max_len}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be strictly between 0 and 1, got {self.val_fraction!r}")
        require_positive_int("lora_r (the LoRA rank)", self.lora_r)
        try:   # the rank is checked against the model, when LoRA is attached
            check_lora_settings(self.lora_targets, self.lora_alpha, self.lora_dropout)
        except ValueError as error:   # named as this class names it
            raise ValueError(str(error).replace("target_modules", "lora_targets", 1)) from None
        require_non_negative_int("checkpoint_every", self.checkpoint_every)
        if self.out is not None and (not isinstance(self.out, str) or not self.out.strip()):
            raise ValueError(f"out must name a run folder (a str) or be None, got {self.out!r}")

    @classmethod
    def resume_config(cls, run_dir, **changes):
        """The settings to resume the run in run_dir, as `npllama finetune TASK --out run_dir --resume`
        takes them: the saved ones, with `changes` on top (`sft(SFTConfig.resume_config("runs/sft",
        steps=400), resume=True)`)."""
        from .finetune_run import require_resumable, settings_file
        from .resuming import built_on_saved, settings_over_saved

        require_resumable(run_dir, cls.TASK)
        return built_on_saved(cls(**settings_over_saved(cls, run_dir, settings_file(cls.TASK), changes)))

    def model_dtype(self):
        """The numpy dtype the base model is loaded in (dtype checked)."""
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        return DTYPES[self.dtype]

    def attach_lora_if_asked(self, model) -> None:
        """With lora set, attach adapters of these settings to model (attach_lora); else nothing."""
        if self.lora:
            attach_lora(model, r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                        target_modules=self.lora_targets, seed=self.seed)

    def step_config(self, full_lr: float, lora_lr: float) -> StepConfig:
        """The step loop's settings; lr None takes the job's default for full or LoRA training."""
        return StepConfig(steps=self.steps, batch_size=self.batch_size,
                          lr=self.lr if self.lr is not None else (lora_lr if self.lora else full_lr),
                          warmup_steps=DEFAULT_WARMUP_STEPS if self.warmup_steps is None else self.warmup_steps,
                          weight_decay=self.weight_decay, seed=self.seed, progress=self.progress,
                          checkpoint_every=self.checkpoint_every)


SPLITS = ("stratified", "shuffled")     # ClassifyConfig.split


@dataclasses.dataclass
class ClassifyConfig(FinetuneSettings):
    """`npllama finetune classify`.  Defaults: the built-in sentiment set, full fine-tuning.

    data: .jsonl/.csv/.tsv of {"text", "label"}; None: the built-in `dataset` (None with data: no
    built-in set is read, and classify_config.json records none).
    lr None: 3e-4 full, 3e-3 LoRA (few parameters take bigger steps).
    """
    TASK = "classify"

    dataset: str | None = "sentiment"   # built-in example set: sentiment, topic, spam
    labels: tuple | None = None      # the label names in id order (the head's size); None: from the data
    val_data: str | None = None      # a separate validation file; None: split off val_fraction
    split: str = "stratified"        # how val_fraction is split off: "stratified" by label, or "shuffled"

    # a run folder saved before the split was stratified resumes with the split it trained on
    SETTINGS_OF_OLDER_RUNS = {"split": "shuffled"}
    # dataset follows data (None beside a data file): a resume that changes both names data alone
    RESUME_FOLLOWS = {"dataset": "data"}

    def __post_init__(self):
        super().__post_init__()
        if self.data is not None:
            # the settings record what the run read (a run saved with data and "sentiment", before,
            # reads back as this too, so it resumes unchanged)
            self.dataset = None
        elif self.dataset is None:
            raise ValueError("dataset is None, but so is data: give a built-in set (sentiment, topic, spam) "
                             "or a data file")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {self.split!r}")
        if self.labels is not None:   # before the model loads
            from .datasets import check_label_names

            check_label_names(self.labels)


@dataclasses.dataclass
class ClassifyResult:
    """What `classify` returns: validation metrics (classification_metrics: accuracy, macro-F1,
    per-label scores, confusion matrix), the majority baseline's accuracy, the label names in id
    order, the trainable and total parameter counts, each step's loss, the training time in seconds,
    and the folder saved to (None without cc.out)."""
    metrics: dict
    baseline: float
    label_names: tuple
    trainable: int
    total: int
    losses: list
    seconds: float
    out: Path | None


def _classification_data(cc: ClassifyConfig):
    """(train texts, train label ids, val texts, val label ids, label names, description of the source)."""
    from . import datasets

    if cc.data is None:
        records = datasets.make_dataset(cc.dataset, seed=cc.seed)
        texts, labels, lines = [r["text"] for r in records], [r["label"] for r in records], None
        names, source = datasets.label_names(cc.dataset), f"built-in {cc.dataset} set"
    else:
        texts, labels, lines = datasets.read_labelled(cc.data)
        names, source = None, cc.data
    if cc.labels is not None:
        names = tuple(cc.labels)
    if cc.val_data is None:
        # the whole file's labels encoded before the split: a rare label held out whole is still one of
        # them, and an error names the file's example, not one of the shuffled held-out share
        ids, names = datasets.encode_labels(labels, names, source=cc.data, lines=lines)
        train_rows, val_rows = datasets.split_train_val(len(texts), cc.val_fraction, cc.seed,
                                                        strata=ids if cc.split == "stratified" else None)
        val_texts, val_ids = [texts[i] for i in val_rows], [ids[i] for i in val_rows]
        texts, train_ids = [texts[i] for i in train_rows], [ids[i] for i in train_rows]
    else:
        train_ids, names = datasets.encode_labels(labels, names, source=cc.data, lines=lines)
        val_texts, val_labels, val_lines = datasets.read_labelled(cc.val_data)
        # without --labels, the labels are the training data's: say so, and how to keep a label only
        # validation has
        hint = "" if cc.labels is not None else (
            f" (the labels of {'the ' if cc.data is None else ''}{source}; a label it has no example of can be "
            f"kept, as a class the head never learns, by naming every label with --labels)")
        val_ids, _ = datasets.encode_labels(val_labels, names, source=cc.val_data, lines=val_lines, unknown_hint=hint)
    return texts, train_ids, val_texts, val_ids, names, source


def classify(cc: ClassifyConfig, echo=print, resume: bool = False) -> ClassifyResult:
    """Fine-tune a classifier on cc's data, report validation metrics, save to cc.out if given.

    cc.out is a run folder (npllama/finetune_run.py): checkpoints on the way, the classifier at the
    end.  A stop signal saves a checkpoint and raises npllama.interrupts.Interrupted (a
    KeyboardInterrupt); `resume=True` continues the run in cc.out."""
    from .finetune_run import fine_tuning_run
    from .runs import require_a_language_model, require_job_arguments

    require_job_arguments("cc", cc, ClassifyConfig, resume, echo)
    check = lambda base: require_a_language_model(base, "--base", "fine-tuning a classifier", causal=False)
    with fine_tuning_run(cc, "classify", resume, echo, check_base=check) as run:
        return _classify(cc if run is None else run.config, run, echo)


def _classify(cc: ClassifyConfig, run, echo) -> ClassifyResult:
    from .runs import load_model_and_tokenizer, note_attention_dropout

    dtype = cc.model_dtype()
    texts, train_ids, val_texts, val_ids, names, source = _classification_data(cc)
    model, tokenizer, model_dir = load_model_and_tokenizer(cc.base, dtype=dtype)
    note_attention_dropout(model.config.attention_dropout, f"{model_dir}'s config.json", echo)
    max_len = min(cc.max_len, model.config.max_position_embeddings)

    pad_id = pad_id_of(tokenizer)   # also the saved config.json's pad_token_id
    classifier = SequenceClassifier(model, names, seed=cc.seed, pad_id=pad_id)
    cc.attach_lora_if_asked(model)
    trainable = int(sum(p.size for p in classifier.params.values()))
    # the classifier's own parameters: the base without its LM head (unused: the score head replaces
    # it, as in LlamaForSequenceClassification), the head, and any adapters
    total = int(sum(p.size for name, p in model.params.items() if name != "lm_head.weight")) \
        + classifier.score_weight.size + (sum(p.size for p in model.lora.params.values()) if model.lora else 0)
    shown = f"the {source}" if cc.data is None else source
    echo(f"fine-tuning {'LoRA adapters' if cc.lora else 'every weight'} of {model_dir} on {shown}: "
         f"{len(texts)} train / {len(val_texts)} validation texts, labels {', '.join(map(str, names))}; "
         f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%); "
         + ("causal attention" if classifier.causal else
            "bidirectional attention (the base is a masked-LM model, pre-trained without the causal mask)"))

    why = ("the built-in set's templates make some texts more than once" if cc.data is None and cc.val_data is None
           else "the data has duplicate rows" if cc.val_data is None
           else "duplicate rows, or a validation file cut from the training data")
    note_validation_also_trained_on(texts, val_texts, why, "the accuracy", echo)
    from .datasets import labels_alike_note

    alike = labels_alike_note(names)
    if alike:
        echo(alike)
    untrained = [str(names[i]) for i in np.flatnonzero(np.bincount(train_ids, minlength=len(names)) == 0)]
    if untrained:
        echo(f"no training text has the label {', '.join(untrained)}: the head cannot learn to predict it")
    whole = tokenizer.encode_batch(texts + val_texts, bos=True)
    cut = sum(len(ids) > max_len for ids in whole)
    if cut:
        echo(cut_note(cut, len(whole), max_len,
                      "--max-len" if max_len == cc.max_len else "the model's context, max_position_embeddings"))
    train_encoded = [ids[:max_len] for ids in whole[:len(texts)]]
    val_encoded = [ids[:max_len] for ids in whole[len(texts):]]
    train_labels = np.asarray(train_ids)
    if run is not None:   # what a resume must find again: each text as encoded, with its label
        run.record_data(list(zip(train_encoded, train_ids)), list(zip(val_encoded, val_ids)), data=cc.data,
                        val_data=cc.val_data, built_in=f"the built-in {cc.dataset} set")
    sc = cc.step_config(full_lr=3e-4, lora_lr=3e-3)

    def make_batch(step):
        rows = batch_rows(len(train_encoded), sc.batch_size, step, sc.seed)
        tokens, mask = pad_batch([train_encoded[r] for r in rows], pad_id)
        return tokens, mask, train_labels[rows]

    started = time.perf_counter()
    with lora_dropout_on(model):
        losses = run_steps(classifier.params, lambda b: classifier.loss_and_grads(*b), make_batch, sc, "classify",
                           run=run, adapters=model.lora)
    seconds = time.perf_counter() - started

    metrics = classification_metrics(val_ids, classifier.predict(val_encoded, pad_id), len(names))
    # the label named: with a tie in training the first one counts, which can sit below 1 / num_labels
    majority, baseline = majority_baseline(train_ids, val_ids)
    echo(f"{steps_timed(cc.steps, run, seconds)}; {loss_change(losses, 'classify')}")
    echo(format_metrics(metrics, names, baseline, names[majority]))
    out = None
    if run is not None:
        info = {"task": "classify", "base": str(Path(model_dir).resolve()), "data": source, "lora": cc.lora,
                "steps": cc.steps, "max_len": max_len, "metrics": metrics, "majority_baseline": baseline}
        out = run.publish(lambda folder: classifier.save(folder, tokenizer, base_dir=model_dir, info=info))
    if cc.lora:   # the adapter holds the head, not the base it adapts
        report_saved(echo, out, "the LoRA adapter (PEFT layout)", lambda folder: f"npllama classify --model "
                     f"{as_shown_here(model_dir)} --adapter {folder} --text \"...\" (or --data a labelled file)", cc)
    else:
        report_saved(echo, out, "the classifier",
                     lambda folder: f'npllama classify --model {folder} --text "..." (or --data a labelled file)', cc)
    return ClassifyResult(metrics, baseline, tuple(names), trainable, total, losses, seconds, out)


# ----- instruction tuning (SFT) ---------------------------------------------------------------------
def _own_tokens(template, tokenizer, conversations) -> int:
    """The template's own tokens (ChatTemplate.own_tokens) summed over `conversations`: each
    sequence of roles rendered once, the contents being left out anyway."""
    by_roles = {}
    for messages in conversations:
        roles = tuple(m["role"] for m in messages)
        if roles not in by_roles:
            by_roles[roles] = template.own_tokens(tokenizer, messages, add_generation_prompt=False)
    return sum(by_roles[tuple(m["role"] for m in messages)] for messages in conversations)


def encode_chat(tokenizer, prompt: str, response: str, system: str | None = None, template=None):
    """(ids, is_response): the turn's token ids and, per id, whether the loss counts it.

    The turn is written by the chat template (npllama.chat; default LLaMA-2's:
    <s>[INST] prompt [/INST] response </s>); the response and what ends it are counted, the rest
    not (the model should learn to answer, not to write questions).
    """
    from .chat import ChatTemplate

    template = template or ChatTemplate.for_folder(None, tokenizer, name="llama2")
    return template.encode_turn(tokenizer, prompt, response, system)


def sft_batch(examples: list[tuple[list[int], list[bool]]], pad_id: int):
    """(tokens, targets, attention_mask): next-token targets, -100 on prompt tokens and padding."""
    tokens, mask = pad_batch([ids[:-1] for ids, _ in examples], pad_id)
    targets = np.full(tokens.shape, IGNORE_INDEX, dtype=np.int64)
    for row, (ids, counted) in enumerate(examples):
        next_ids, next_counted = np.asarray(ids[1:]), np.asarray(counted[1:], dtype=bool)
        targets[row, :len(next_ids)] = np.where(next_counted, next_ids, IGNORE_INDEX)
    return tokens, targets, mask


def sft_loss(model, examples: list[tuple[list[int], list[bool]]], pad_id: int, batch_size: int = 16) -> float:
    """The loss per counted (response) token over `examples`, in batches of batch_size: each
    batch's mean weighted by its count of counted targets, which differs from batch to batch."""
    batches = [sft_batch(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    return mean_over_targets([model.loss(*batch) for batch in batches], [targets for _, targets, _ in batches])


@dataclasses.dataclass
class SFTConfig(FinetuneSettings):
    """`npllama finetune sft`.  Defaults: the built-in story instructions, full fine-tuning.

    data: .jsonl of {"prompt", "response"(, "system")} or {"messages": [...]}; None: the built-in instructions.
    lr None: 1e-3 full, 5e-3 LoRA (measured on the tiny preset).
    """
    TASK = "sft"

    val_fraction: float = 0.1
    batch_size: int = 8
    max_len: int = 256
    merge: bool = False              # with LoRA: save the merged model instead of the adapter
    chat_template: str | None = None  # "llama2", "llama3" or a .jinja file; None: the base folder's own
    samples: int = 2                 # greedy answers printed at the end

    def __post_init__(self):
        super().__post_init__()
        # a negative count would slice the validation prompts from the end: all but the last ones
        require_non_negative_int("samples", self.samples)


@dataclasses.dataclass
class SFTResult:
    """What `sft` returns: the validation loss per response token before and after training, each
    step's loss, the greedy answers to a few validation prompts, and the folder saved to (None
    without sc_.out)."""
    val_loss_before: float
    val_loss_after: float
    losses: list
    samples: list
    out: Path | None


def _sft_source(sc_: SFTConfig) -> str:
    return "the built-in instructions" if sc_.data is None else str(sc_.data)


def _named(kind: str, numbers: list, shown: int = 5) -> str:
    """("line", [3, 8]) as "lines 3, 8": the first `shown` numbers, then how many more."""
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return f"{kind}{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers[:shown]))}{more}"


def sft(sc_: SFTConfig, echo=print, resume: bool = False) -> SFTResult:
    """Instruction-tune a model: response-only next-token loss, report the validation loss before and
    after, print greedy answers to a few validation prompts, save to sc_.out if given.

    sc_.out is a run folder with checkpoints, stop signals and `resume` as in `classify`."""
    from .finetune_run import fine_tuning_run
    from .runs import require_a_language_model, require_job_arguments

    require_job_arguments("sc_", sc_, SFTConfig, resume, echo)
    check = lambda base: require_a_language_model(base, "--base", "instruction tuning (next-token loss on the responses)")
    with fine_tuning_run(sc_, "sft", resume, echo, check_base=check) as run:
        return _sft(sc_ if run is None else run.config, run, echo)


def _sft(sc_: SFTConfig, run, echo) -> SFTResult:
    from . import datasets
    from .chat import ChatTemplate, spelt_markers_note, turn_messages
    from .generate import StopStrings, decodable_vocab_size, generate
    from .runs import load_model_and_tokenizer, note_attention_dropout

    model, tokenizer, model_dir = load_model_and_tokenizer(sc_.base, dtype=sc_.model_dtype())
    note_attention_dropout(model.config.attention_dropout, f"{model_dir}'s config.json", echo)
    template = ChatTemplate.for_folder(model_dir, tokenizer, name=sc_.chat_template, name_as="chat_template")
    if sc_.data is None:
        records = datasets.make_instructions(seed=sc_.seed)
        lines = None
    else:
        records, lines = datasets.read_sft(sc_.data)
    conversations = [r["messages"] if "messages" in r else turn_messages(r["prompt"], r["response"], r.get("system"))
                     for r in records]
    # a row of max_len ids gives max_len - 1 positions, which must fit the model's context
    context = model.config.max_position_embeddings
    max_len = min(sc_.max_len, context + 1)
    # raising --max-len helps only while --max-len is what cuts
    limit, remedy = (("--max-len", "raise --max-len or shorten the prompt") if sc_.max_len <= context else
                     ("the model's context, max_position_embeddings + 1",
                      f"the model's context (max_position_embeddings {context}) holds no more, so shorten the prompt"))
    kind, numbers = ("example", range(1, len(conversations) + 1)) if lines is None else ("line", lines)
    kept, encoded, skipped, cut, written = [], [], [], 0, 0
    for i, messages in enumerate(conversations):
        try:
            ids, counted = template.encode_conversation(tokenizer, messages)
        except ValueError as e:      # e.g. LLaMA-2's template: roles must alternate
            raise ValueError(f"{_sft_source(sc_)} {kind} {numbers[i]}: {e}") from None
        written += len(ids)
        if sum(counted[1:max_len]) == 0:   # the prompt fills max_len: not one response token to learn
            skipped.append(numbers[i])
            continue
        cut += len(ids) > max_len
        kept.append(i)
        encoded.append((ids[:max_len], counted[:max_len]))
    too_long = f"fills all {max_len} tokens ({limit}), leaving no response token to learn from"
    if not encoded:
        raise ValueError(f"every example of {_sft_source(sc_)} ({len(skipped)}) has a prompt that {too_long} "
                         f"({_named(kind, skipped)}); {remedy}")
    conversations_read, conversations = conversations, [conversations[i] for i in kept]
    # the split after every example encoded: a line the template refuses is named before a count is judged
    train_rows, val_rows = datasets.split_train_val(len(encoded), sc_.val_fraction, sc_.seed, val_file=False)
    echo(f"instruction-tuning {'LoRA adapters' if sc_.lora else 'every weight'} of {model_dir} on {_sft_source(sc_)}: "
         f"{len(train_rows)} train / {len(val_rows)} validation examples")   # as classify opens: count them against the file
    spelt = spelt_markers_note(template, tokenizer, context, lambda: f"the template's own text takes "
                               f"{_own_tokens(template, tokenizer, conversations_read) / len(conversations_read):.0f} "
                               f"of an example's {written / len(conversations_read):.0f} tokens on average")
    if spelt is not None:
        echo(spelt)
    if skipped:
        echo(f"{len(skipped)} of {len(skipped) + len(encoded)} examples {'is' if len(skipped) == 1 else 'are'} "
             f"skipped, {'its' if len(skipped) == 1 else 'their'} prompt {too_long} ({_named(kind, skipped)}); {remedy}")
    if cut:
        echo(cut_note(cut, len(encoded), max_len, limit, items="examples",
                      lost="so the end of their answers (and the end of turn) is not learned"))
    # conversations compared by their messages (dicts: written as sorted JSON to be hashable)
    as_key = lambda i: json.dumps(conversations[i], sort_keys=True)
    note_validation_also_trained_on([as_key(i) for i in train_rows], [as_key(i) for i in val_rows],
                                    "the built-in instructions' templates make some conversations more than once"
                                    if sc_.data is None else "the data has duplicate rows",
                                    "the validation loss", echo, items="conversations")
    train, val = [encoded[i] for i in train_rows], [encoded[i] for i in val_rows]
    pad_id = pad_id_of(tokenizer)
    if run is not None:   # what a resume must find again: each conversation's ids and which of them are learned
        run.record_data(train, val, data=sc_.data, built_in="the built-in instructions")

    sc_.attach_lora_if_asked(model)
    params = model.lora.params if model.lora is not None else model.params

    def val_loss():
        return sft_loss(model, val[:64], pad_id)

    before = val_loss()
    sc = sc_.step_config(full_lr=1e-3, lora_lr=5e-3)
    make_batch = lambda step: sft_batch([train[r] for r in batch_rows(len(train), sc.batch_size, step, sc.seed)],
                                        pad_id)
    with lora_dropout_on(model):
        losses = run_steps(params, lambda b: model.loss_and_grads(*b), make_batch, sc, "sft", run=run,
                           adapters=model.lora)
    after = val_loss()
    echo(f"validation loss ({loss_unit('sft')}): {before:.4f} before, {after:.4f} after {sc_.steps} steps")

    samples = []
    end_ids = template.stop_ids(tokenizer, model)
    # an end of turn the tokenizer spells in pieces ends the answer as its text, as in `npllama chat`
    end_texts = template.stop_texts(tokenizer)
    for i in val_rows[:sc_.samples]:
        asked = conversations[i][:max(k for k, m in enumerate(conversations[i]) if m["role"] == "assistant")]
        prompt_ids = tokenizer.encode(template.render(asked, add_generation_prompt=True), bos=False)
        room = model.config.max_position_embeddings - len(prompt_ids)
        if room <= 0:
            continue
        stop = StopStrings(tokenizer, end_texts, after=prompt_ids) if end_texts else None
        ids = generate(model, prompt_ids, min(120, room), temperature=0.0, eos_id=end_ids,
                       vocab_size=decodable_vocab_size(model, tokenizer), stop=stop)
        answer = tokenizer.decode(ids[len(prompt_ids):])
        answer = stop.cut(answer) if stop is not None else answer
        samples.append(answer)
        # an answer of spaces alone would print as "assistant:" and nothing: say what the model wrote
        shown = answer if answer.strip() else "(only white space)" if answer else "(empty)"
        echo(f"\n{asked[-1]['role']}: {asked[-1]['content']}\nassistant: {shown}")

    def save(out: Path) -> None:
        if model.lora is not None and not sc_.merge:
            model.lora.save_adapter(out, base_model_name_or_path=str(model_dir), task_type="CAUSAL_LM")
            # the template travels with the adapter (as transformers saves one beside a tokenizer):
            # `generate --adapter --chat` formats as it was trained, whatever the base folder holds
            (out / CHAT_TEMPLATE_FILE).write_text(template.source, encoding="utf-8")
        else:
            if model.lora is not None:
                model.lora.merge()
            model.save_pretrained(out, extra_files=tokenizer.hf_files(  # the template travels with it
                chat_template=template.source, model_max_length=model.config.max_position_embeddings))
        _write_info(out, {"task": "sft", "base": str(Path(model_dir).resolve()), "steps": sc_.steps, "lora": sc_.lora,
                          "val_loss_before": before, "val_loss_after": after})

    out = None
    if run is not None:
        out = run.publish(save)
    if sc_.lora and not sc_.merge:
        report_saved(echo, out, "the LoRA adapter (PEFT layout)", lambda folder: f"npllama chat --model "
                     f"{as_shown_here(model_dir)} --adapter {folder} (or generate --chat, eval choice --template "
                     f"chat, with the same two flags)", sc_)
    else:
        report_saved(echo, out, "the merged model" if sc_.lora else "the model", lambda folder: f"npllama chat "
                     f"--model {folder} (or generate --chat, eval choice --template chat, with --model {folder})", sc_)
    return SFTResult(before, after, losses, samples, out)


# ----- multiple choice (§6.3) -----------------------------------------------------------------------
def choice_logprobs(model, tokenizer, question: str, choices: list[str], template: str = "plain"):
    """(log p(choice | question) summed over the choice's tokens, the choice's token counts).
    A question too long for the model's context keeps <s> and its end, the part nearest the
    answer (evaluate_choice counts the items so cut).

    All choices of one question go through the model as one padded batch.  The question is
    `<s> question` ("plain"), or a user's message in a chat template, ready for the assistant's
    answer (for SFT models): a ChatTemplate (npllama.chat), or "chat" for LLaMA-2's
    "<s>[INST] question [/INST]".  A plain choice is scored as the text goes on after the question:
    after a space, but with none in Chinese or Japanese (objectives.join_text); a chat answer as the
    template writes an assistant's answer (LLaMA-2's after a space, LLaMA-3's right after its
    header's "\n\n"), as `finetune sft` trains it.
    """
    from .runs import require_next_token_model

    require_next_token_model(model, "multiple-choice scoring")   # log p(choice | question), token by token
    # here, not in _choice_scores: evaluate_choice has checked its items (datasets.check_choice_item)
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise TypeError(f"choices must be a list of non-empty strs, got {choices!r}")
    if not choices or not all(c.strip() for c in choices):   # an empty one would score the question's last token
        raise ValueError(f"choices must be a list of non-empty strs, got {choices!r}")
    scores, lengths, _ = _choice_scores(model, tokenizer, question, choices, template)
    return scores, lengths


def _choice_scores(model, tokenizer, question: str, choices: list[str], template):
    """choice_logprobs' (scores, lengths), and whether the question was cut to fit the context; the
    model, question and choices checked by the caller (choice_logprobs, evaluate_choice)."""
    from .objectives import join_text

    chat = _chat_template(template)
    if chat is None:
        context = tokenizer.encode(question, bos=True)
        split = [_context_and_continuation(tokenizer, context, join_text(question, c)) for c in choices]
    else:
        split = [_chat_answer_split(chat, tokenizer, question, c) for c in choices]
    limit = model.config.max_position_embeddings
    longest = int(np.argmax([len(ids) for _, ids in split]))
    room = limit - len(split[longest][1])   # for the question
    if room < 2:
        raise ValueError(f"choice {longest} is {limit - room} tokens long, which leaves no room for the question "
                         f"in the model's context ({limit} tokens)")
    # a question too long keeps <s> and its end, the part nearest the answer
    cut = any(len(context) > room for context, _ in split)
    split = [(context if len(context) <= room else context[:1] + context[len(context) - room + 1:], ids)
             for context, ids in split]
    tokens, mask = pad_batch([context + ids for context, ids in split], pad_id_of(tokenizer))
    logits = model.forward(tokens, mask)                                  # (C, T, V)
    scores = []
    for row, (context, ids) in enumerate(split):
        positions = np.arange(len(context), len(context) + len(ids))     # where the choice's tokens sit
        predicting = logits[row, positions - 1].astype(np.float64)       # each predicted one step earlier
        log_probs = predicting - _logsumexp(predicting)                   # log softmax over V, those rows only
        scores.append(float(log_probs[np.arange(len(ids)), ids].sum()))
    return np.array(scores), np.array([len(ids) for _, ids in split]), cut


def _chat_template(template):
    """None for "plain"; LLaMA-2's ChatTemplate for "chat"; a ChatTemplate as it is."""
    from .chat import ChatTemplate

    if template == "plain" or isinstance(template, ChatTemplate):
        return None if template == "plain" else template
    if template == "chat":
        return ChatTemplate("llama2")
    raise ValueError(f"template must be 'plain', 'chat' or a ChatTemplate, got {template!r}")


def _chat_answer_split(chat, tokenizer, question: str, choice: str):
    """(context ids, choice ids): `choice` as the template writes an assistant's answer to
    `question`, up to its end of turn (LLaMA-2's " A dog." after "[/INST]", LLaMA-3's "A dog."
    after its "\n\n") -- the ids `finetune sft` (ChatTemplate.encode_turn) trains the answer on,
    placed by the template itself (ChatTemplate.encode_answer)."""
    from .chat import AnswerNotWritten, turn_messages

    try:
        ids, start = chat.encode_answer(tokenizer, turn_messages(question, choice))
    except AnswerNotWritten as error:
        raise ValueError(f"{error}, so there is no text of the choice's own to score; score without it: "
                         f"--template plain (template='plain' in Python)") from None
    start = min(start, len(ids) - 1)     # every choice is scored on a token at least
    return ids[:start], ids[start:]


def _context_and_continuation(tokenizer, context: list[int], text: str):
    """(context ids, choice ids): `text` (the question and a choice after it) encoded with <s> as the
    model reads it, cut where its ids stop being those of the question alone (`context`; a piece
    that spans the joint counts as the choice's)."""
    from .chat import _shared_length

    whole = tokenizer.encode(text, bos=True)
    shared = min(_shared_length(context, whole), len(whole) - 1)     # every choice is scored on a token at least
    return whole[:shared], whole[shared:]


def evaluate_choice(model, tokenizer, items: list[dict], template="plain", progress: bool = True) -> dict:
    """Accuracy of picking the most likely choice: by total log-likelihood ("accuracy") and by
    log-likelihood per token ("accuracy_per_token", fairer between long and short choices).
    A right answer tied with k-1 other choices for the best score counts 1/k (a tie broken at random).
    The items are checked first (datasets.check_choice_item: a ValueError naming items[i]).
    An item's optional "context" (a passage) comes before its question, as text goes on;
    "cut": how many items' passage and question did not fit the model's context beside a choice
    (their beginning was dropped, see choice_logprobs)."""
    from tqdm.auto import tqdm

    from .datasets import check_choice_item
    from .objectives import join_text
    from .runs import require_next_token_model

    # once, and outside the loop below, whose errors name the item
    require_next_token_model(model, "multiple-choice scoring")
    if not items:
        raise ValueError("no multiple-choice items to evaluate")
    for i, item in enumerate(items):     # all of them before the first is scored
        check_choice_item(item, f"items[{i}]")
    template = _chat_template(template) or "plain"    # "chat" compiled once, not once per item
    right = right_per_token = 0.0
    cut = 0
    for i, item in enumerate(tqdm(items, desc="choices", disable=not progress, leave=False)):
        question = join_text(item["context"], item["question"]) if item.get("context") else item["question"]
        try:
            scores, lengths, was_cut = _choice_scores(model, tokenizer, question, item["choices"], template)
        except ValueError as error:
            raise ValueError(f"items[{i}]: {error}") from None
        cut += was_cut
        right += _share_of_the_best(scores, item["answer"])
        right_per_token += _share_of_the_best(scores / lengths, item["answer"])
    chance = float(np.mean([1 / len(item["choices"]) for item in items]))
    return {"accuracy": right / len(items), "accuracy_per_token": right_per_token / len(items),
            "chance": chance, "n": len(items), "cut": cut}


# Scores this close to the highest tie with it.  Equal log-likelihoods need not come out as equal
# floats: a per-token score is a sum divided by a count, and 7 equal terms summed and divided by 7
# is not always the term (an ulp or so off, 1e-16 relative), which would decide the item by the
# rounding.  The tolerance is far above that and below the difference float32 makes: the same
# model's scores in float32 and float64 (or numpy and numba in float32) differ by ~1e-6 relative,
# so a near-tie that close can go either way between them, as any argmax would.
_TIE_RTOL = 1e-9


def _share_of_the_best(scores, answer: int) -> float:
    """1 when the answer's score is the highest, 1/k when it ties with k-1 others for the highest
    (within _TIE_RTOL of it), else 0: the expected credit of breaking the tie at random (taking the
    first listed would favour an answer listed early)."""
    top = scores.max()
    best = np.flatnonzero(scores >= top - _TIE_RTOL * abs(top))
    return float(answer in best) / len(best)


def _logsumexp(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def _write_info(folder: Path, info: dict) -> None:
    (Path(folder) / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_info(folder) -> dict:
    """finetune.json's fields (written by every `npllama finetune` job's --out: classify, sft, sop), or
    {} when the folder has none or it is not a JSON object (not npllama's, or damaged).  The one
    reader of that file: a file there that cannot be read is an OSError, not taken for no record."""
    from .io.reading import read_json

    info = Path(folder) / INFO_FILE
    if not info.is_file():
        return {}
    try:  # a regular file of bounded size holding an object, as every JSON we read
        return read_json(info, expect=dict)
    except ValueError:
        return {}


__all__ = ["SequenceClassifier", "ClassifyConfig", "classify", "SFTConfig", "sft", "encode_chat",
           "sft_batch", "choice_logprobs", "evaluate_choice", "classification_metrics",
           "majority_baseline", "run_steps", "read_info"]
