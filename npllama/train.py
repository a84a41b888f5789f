"""Pre-training (article §3.2): next-token prediction on a corpus, from scratch, on a CPU.

    result = train(TrainConfig())            # the tiny preset on the built-in corpus, a few minutes
    result = train(TrainConfig(data="my.txt", preset="stories260k", steps=2000, out="runs/mine"))
    result = train(TrainConfig(data="play.txt", doc_separator="whole-file", val_data="act5.txt",
                               num_hidden_layers=6, hidden_size=256, num_attention_heads=8, out="runs/play"))

Every step: loss and gradients of a batch (model.loss_and_grads), global-norm clipping, AdamW with
linear warmup then cosine decay.  Every `eval_every` steps a validation loss on held-out text;
every `checkpoint_every` steps a checkpoint (model + optimizer + data position, written
atomically), so `resume=True` continues with exactly the losses an uninterrupted run would have
had: `train(resume_config("runs/mine", steps=3000), resume=True)` (the run's saved settings, with
the ones given on top; more steps lay the warmup and cosine over the new total, and the line that
says where the learning rate goes names a rise).  Ctrl-C saves a checkpoint and stops.  A run folder is laid out as npllama/runs.py says.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import time
from pathlib import Path

import numpy as np

from .config import PRESETS, LlamaConfig, attends_causally, check_objective, python_scalar
from .data import check_doc_separator
from .interrupts import Interrupted, deferred_stop_signals, stop_signals_interrupt
from .io.atomic import atomic_write_bytes, atomic_write_text
from .io.errors import CheckpointError
from .loss_units import loss_unit
from .model_shape import (SHAPE_FLAGS, base_vocab_size, check_model_config_fields, check_new_model, check_shape,
                          init_from_config, init_from_dir, init_from_tokenizer_path, new_model_config, preset_config,
                          read_model_config_file)
from .optim import (AdamW, NonFiniteGradientError, TrainingError, _require_decay_fits_lr, clip_finite_step,
                    cosine_with_warmup)
from .backend import use_backend
from .parallel import (BatchSplitter, counted_targets, mean_over_targets, one_blas_thread, target_weights,
                       weighted_sum_function)
from .thread_choice import fastest_threads
from .resuming import (LOG_FILE, CheckpointWriteError,  # noqa: F401 (CheckpointWriteError: re-exported)
                       already_holds_a_run, check_finite, check_steps_reach, checked_step, data_fingerprint,
                       paths_as_str, record_changes, refuse_changed_data, reopen_run, reporting_write_errors,
                       require_files, require_settings, restore_optimizer, resume_command, saved_settings,
                       stop_line, truncate_log, what_is_left, write_settings)
from .runs import (TOKENIZER_FILE, files_besides_locks, mark_latest, not_empty, note_attention_dropout,
                   replacing_in_run, writing_run)

DTYPES = {"float32": np.float32, "float64": np.float64}
CONFIG_FILE = "train_config.json"


@dataclasses.dataclass
class TrainConfig:
    """Settings of a pre-training run.  Defaults: the tiny preset on the built-in corpus."""

    out: str = "runs/tiny"                 # the run folder (paths: a str or a pathlib.Path, kept as str)
    data: str | None = None                # .txt, folder of .txt, or .jsonl; None: built-in stories
    preset: str = "tiny"                   # model shape (npllama.config.PRESETS)
    # The model's shape on top of the preset (npllama/model_shape.py); None: the preset's
    model_config: dict | str | None = None # Hugging Face config fields, or the path of a JSON file of them
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int | None = None  # the context; None: the preset's, at least seq_len
    init_from: str | None = None           # start from this Hugging Face folder's weights (and shape)
    tokenizer: str | None = None           # an existing SentencePiece .model; None: train one
    vocab_size: int | None = None          # for a new tokenizer; None: model_config's, else the preset's
    steps: int = 400
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1                    # micro-batches per optimizer step
    lr: float = 2e-3
    min_lr: float | None = None            # where the cosine ends; None: a tenth of lr (as fine-tuning's)
    warmup_steps: int | None = None        # None: a tenth of the steps, at most 40
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8                  # batches of held-out text per evaluation; 0: all of it
    val_data: str | None = None            # held-out text (a file or folder like `data`); None: the end of data
    val_fraction: float | None = None      # share of data's tokens held out; None: 0.05 (without val_data)
    doc_separator: str = "blank-line"      # how a .txt splits into documents (npllama.data.DOC_SEPARATORS)
    checkpoint_every: int = 100
    seed: int = 0
    dtype: str = "float32"
    objective: str = "causal"              # "causal" (LLaMA's next-token loss) or "mlm" (BERT-style, §3.2.2)
    stop_after: int | None = None          # stop (with a checkpoint) after this many steps of this call
    skip_nonfinite: bool = False           # skip a batch whose loss/gradient is NaN/Inf instead of stopping
    samples: int = 3                       # samples printed at the end (objective causal; mlm prints none)
    sample_tokens: int = 80
    corpus_stories: int = 10_000           # size of the built-in corpus
    threads: int | None = None             # split each batch over this many threads (npllama/parallel.py);
                                           # None: the count measured fastest here (npllama/thread_choice.py)
    progress: bool = True

    def __post_init__(self):
        paths_as_str(self, (*self.PATH_SETTINGS, "model_config"))   # a model_config file's path too
        for field in dataclasses.fields(self):  # NumPy scalars are accepted as the numbers they hold
            setattr(self, field.name, python_scalar(getattr(self, field.name)))
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "corpus_stories"):
            _positive_int(name, getattr(self, name))
        for name in SHAPE_FLAGS:
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.warmup_steps is None:
            self.warmup_steps = min(40, self.steps // 10) if isinstance(self.steps, int) else 0
        for name in ("warmup_steps", "eval_batches", "eval_every", "checkpoint_every", "samples", "sample_tokens",
                     "seed"):
            _non_negative_int(name, getattr(self, name))
        for name in ("stop_after", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.threads is not None:
            from .budget import check_threads

            check_threads("threads", self.threads)  # each thread holds a copy of the gradients
        if not isinstance(self.out, str) or not self.out.strip():
            raise ValueError(f"out must name a run folder, got {self.out!r}")
        for name in ("data", "tokenizer"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a path (str) or None, got {getattr(self, name)!r}")
        if self.vocab_size is not None:
            from .tokenizer import MIN_VOCAB_SIZE

            _positive_int("vocab_size", self.vocab_size)
            if self.vocab_size < MIN_VOCAB_SIZE:
                raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 byte pieces, <unk>, <s>, "
                                 f"</s> and room for text), got {self.vocab_size}")
        for name in ("lr", "grad_clip"):
            _finite_number(name, getattr(self, name))
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if self.min_lr is None:   # a tenth of the lr given, so a low --lr alone is not refused for it
            self.min_lr = self.lr / 10
        for name in ("min_lr", "weight_decay", "beta1", "beta2"):
            _finite_number(name, getattr(self, name))
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be between 0 and lr ({self.lr}), got {self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        _require_decay_fits_lr(self.lr, self.weight_decay)
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.skip_nonfinite, bool) or not isinstance(self.progress, bool):
            raise TypeError("skip_nonfinite and progress must be True or False")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        check_objective(self.objective)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        self._check_held_out_text()
        for name in ("model_config", "init_from", "val_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, dict) if name == "model_config" else str):
                raise TypeError(f"{name} must be a path (str){' or a dict' if name == 'model_config' else ''} "
                                f"or None, got {value!r}")
        check_doc_separator(self.doc_separator)
        if isinstance(self.model_config, str):  # recorded as the fields, so a run never depends on the file
            self.model_config = read_model_config_file(self.model_config)
        elif self.model_config is not None:
            check_model_config_fields(self.model_config)
        check_shape(self)

    def _check_held_out_text(self) -> None:
        if self.val_fraction is not None:
            _finite_number("val_fraction", self.val_fraction)
            if not 0 < self.val_fraction < 1:
                raise ValueError(f"val_fraction must be strictly between 0 and 1, got {self.val_fraction}")
            if self.val_data is not None:
                raise ValueError("give val_data (held-out text of its own) or val_fraction (a share of "
                                 "data held out), not both")

    # Settings that must not change when a run is resumed: they define the model, the data and its
    # order.  The rest (steps, lr, ...) may; a resume applies the new values and records them.
    RESUME_FIXED = ("data", "preset", "tokenizer", "vocab_size", "batch_size", "seq_len", "grad_accum", "seed",
                    "objective", "dtype", "val_fraction", "val_data", "doc_separator", "corpus_stories",
                    "model_config", "init_from", *SHAPE_FLAGS)
    # Settings that only steer this one call (not the run's arithmetic): changed silently.
    RESUME_QUIET = ("out", "stop_after", "progress", "samples", "sample_tokens")
    # what resuming from Python takes: the saved settings, with the caller's on top
    RESUME_FROM_SAVED = "npllama.train.resume_config(run_dir, **changes)"
    PATH_SETTINGS = ("out", "data", "tokenizer", "val_data", "init_from")  # a respelled path is no change
    MODEL_SETTINGS = ("init_from",)   # a run folder and its model/ name one start (init_from_dir)
    RECORDED_ABSOLUTE = ("data", "tokenizer", "val_data", "init_from")    # the files the run reads

    @property
    def held_out_fraction(self) -> float:
        """The share of data's tokens held out when there is no val_data."""
        return 0.05 if self.val_fraction is None else self.val_fraction


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the run folder, the last step run, the last training-step and
    validation losses (None before the first of each), the unigram entropy of the training tokens
    (the loss a model that ignores context would reach: the bar to beat), whether the run stopped
    early, and the samples generated at the end."""
    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    unigram_entropy: float
    interrupted: bool = False              # stopped before `steps` (a signal, or stop_after)
    samples: list[str] = dataclasses.field(default_factory=list)
    stop_signal: int | None = None         # the signal that stopped it (SIGINT, SIGTERM, SIGHUP), if any


# With --skip-nonfinite, this many non-finite batches in a row means the model itself is broken
# (e.g. NaN parameters), not a bad batch: stop instead of skipping forever.
MAX_CONSECUTIVE_SKIPS = 20


class _StopRequested(Exception):
    """The run reached TrainConfig.stop_after: checkpoint and stop, like Ctrl-C."""


def train(tc: TrainConfig, resume: bool = False, echo=print) -> TrainResult:
    """Run (or continue) a pre-training run; returns the final losses and samples.

    Only one process writes a run folder at a time (npllama.runs.writing_run): a second one raises
    npllama.runs.RunInUseError before touching anything.  SIGTERM and SIGHUP stop the run like Ctrl-C: the
    step in progress finishes or never happened, a checkpoint is saved, and the result says
    `interrupted` (with `stop_signal`).  With `resume`, settings that define the run must equal
    the saved ones; the others (steps, lr, ...) may change, and each change is printed and recorded
    in log.jsonl and train_config.json."""
    from .runs import require_job_arguments

    require_job_arguments("tc", tc, TrainConfig, resume, echo)
    run_dir = Path(tc.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {tc.out!r} is a file, not a folder: choose a run folder")
    # before anything is written; --tokenizer where it is read (_tokenizer_file): a resume from a
    # checkpoint reads the run's own copy, so a run moved without the file still resumes
    require_files(tc, ("data", "val_data"), resume, CONFIG_FILE)
    # a new start's --tokenizer, read once: checked now, then the run's own copy
    given = None if resume else _check_a_new_start(tc)
    if resume:
        require_settings(run_dir, CONFIG_FILE)
    else:
        _refuse_a_folder_of_the_users(run_dir)
        _refuse_a_folder_holding_a_run(run_dir)   # said now, not after reading a large --data
    # --data and --val-data read now (the quick refusals above wait for no corpus): text that cannot
    # be read is refused before the folder is made
    with stop_signals_interrupt():
        try:
            texts = _load_corpus(tc) if tc.data is not None and not resume else None
            val_texts = _held_out_texts(tc) if tc.val_data is not None and not resume else None
        except KeyboardInterrupt as stop:   # a large corpus takes a while: nothing is written yet
            raise _said_what_is_left(stop, run_dir) from None
    with stop_signals_interrupt(), writing_run(run_dir):
        try:
            return _train_holding_the_run(tc, run_dir, resume, echo, texts, val_texts, given)
        except KeyboardInterrupt as stop:   # outside the steps (those stop with a checkpoint and a line)
            raise _said_what_is_left(stop, run_dir) from None


def _check_a_new_start(tc: TrainConfig, resume: bool = False):
    """What a new start checks before it writes anything: the --init-from folder, the held-out
    text, the model it will build (with a --tokenizer's vocabulary and ids).  Returns the
    --tokenizer read (None without one).  resume: a resume of a run with no checkpoint yet, which
    starts again from step 0 with its saved settings."""
    if tc.init_from is not None:
        if resume:   # a folder moved since the settings recorded it: say so, as for --data and --tokenizer
            require_files(tc, ("init_from",), resume, CONFIG_FILE)
        init_from_config(tc)  # the folder is readable and the shape settings agree with it
        if tc.tokenizer is not None and init_from_tokenizer_path(tc) is not None:
            raise ValueError(f"--init-from {tc.init_from!r} has its own tokenizer.model, which its "
                             f"embeddings were trained with: leave out --tokenizer")
        if tc.tokenizer is None and init_from_tokenizer_path(tc) is None \
                and (init_from_dir(tc) / "tokenizer.json").is_file():  # a tokenizer a new one would replace
            raise ValueError(f"--init-from {tc.init_from!r} has a tokenizer.json but no tokenizer.model: training "
                             f"needs the SentencePiece tokenizer.model its embeddings were trained with; pass it "
                             f"with --tokenizer (a new one, trained on --data, would give the ids other meanings)")
    if tc.data is not None and tc.val_data is not None:
        _refuse_held_out_text_in_data(tc)
    given = _tokenizer_file(tc, resume) if tc.tokenizer is not None else None
    if given is not None:
        _refuse_another_vocab_size(tc, given)
    check_new_model(tc, given)
    return given


def _check_a_restart(tc: TrainConfig, run_dir: Path):
    """A resume of a run that never reached a checkpoint (killed or failed before it) is a new
    start from step 0 with the saved settings: they are checked as a new start's are, before any
    work.  One refused now (the run may have been saved by a version that accepted it) cannot be
    changed by --resume, which keeps the settings that define the run; nothing was trained, so
    the refusal says to start the run again.  Returns the --tokenizer read, as _check_a_new_start."""
    try:
        return _check_a_new_start(tc, resume=True)
    except ValueError as error:
        raise ValueError(f"{str(run_dir)!r} has no checkpoint yet, so --resume would start the run again from "
                         f"step 0 with its saved settings ({CONFIG_FILE}), and they are refused now: {error}. "
                         f"Nothing was trained: start the run again without --resume (the same --out will do, "
                         f"as it holds no checkpoint) with settings that avoid this") from None


def _said_what_is_left(stop: KeyboardInterrupt, run_dir: Path) -> Interrupted:
    """A stop before the first step or after the last: what the run folder holds, and what to run."""
    return what_is_left(stop, run_dir, resume_command("train", run_dir), run_dir / "model",
                        (run_dir / "model").is_dir(), "the same command starts the run again")


def _train_holding_the_run(tc: TrainConfig, run_dir: Path, resume: bool, echo, texts=None,
                           val_texts=None, given_tokenizer=None) -> TrainResult:
    from .corpus import unigram_cross_entropy, unigram_entropy
    from .data import BatchLoader, evaluation_batches

    changes = {}
    if resume:
        changes, checkpoint = reopen_run(run_dir, tc, CONFIG_FILE)   # damage is refused here, before any write
    else:
        _refuse_a_folder_holding_a_run(run_dir)   # again under the lock: another start may have made one since
        checkpoint = None
    if checkpoint is None:  # a new start: files a failed start left are not this run's
        if resume:
            given_tokenizer = _check_a_restart(tc, run_dir)
        _remove_derived_files(run_dir, tc)
        write_settings(run_dir, tc, CONFIG_FILE)  # first, so a start killed from here on can be resumed

    # On a cold numba cache (a first run), a helper process compiles the kernels while this one
    # prepares the data and trains on the NumPy references (npllama/kernels/precompile.py).
    from .kernels.precompile import start_helper_on_a_cold_cache

    helper = start_helper_on_a_cold_cache(DTYPES[tc.dtype], decoding=bool(tc.samples) and attends_causally(tc.objective))
    if helper is not None:
        echo("compiling the Numba kernels for this machine in a helper process (a first run after an "
             "install or an edit); training starts on the NumPy reference meanwhile")
    if texts is None:
        texts = _load_corpus(tc)
    tokenizer = _prepare_tokenizer(tc, run_dir, texts, echo, checkpoint, given_tokenizer)
    train_ids, val_ids, tokens = _train_and_held_out_tokens(
        tc, run_dir, tokenizer, texts, val_texts, _checkpoint_tokens(checkpoint) if checkpoint is not None else None,
        echo)
    loader = BatchLoader(train_ids, tc.batch_size, tc.seq_len, seed=tc.seed)
    val_batches = evaluation_batches(val_ids, tc.batch_size, tc.seq_len, max_batches=tc.eval_batches or None)
    unigram = unigram_entropy(train_ids, tokenizer.vocab_size)

    state = {}
    if checkpoint is not None:
        model, optimizer, state = restore_checkpoint(checkpoint, tc, loader, tokenizer,
                                                     changed=set(changes), tokens=tokens)
        start_step = state["step"]
        check_steps_reach(tc.steps, start_step, checkpoint)
        write_settings(run_dir, tc, CONFIG_FILE)  # only now: a checkpoint that is refused changes nothing
        truncate_log(run_dir / LOG_FILE, start_step)
        echo(f"resuming {run_dir} at step {start_step}")
    else:
        if resume:
            echo(f"no checkpoint in {run_dir} yet: starting from step 0")
        model = _new_model(tc, tokenizer, echo)
        optimizer = _make_optimizer(model, tc)
        start_step = 0
        atomic_write_text(run_dir / LOG_FILE, "")
    mark_latest(run_dir)
    echo(f"model: {_describe_shape(tc, model.config)}, {model.num_parameters():,} parameters; "
         f"corpus: {len(train_ids):,} training and {len(val_ids):,} validation tokens; "
         f"unigram entropy {unigram:.3f} nats/token")

    loss_and_grads, loss = model.loss_and_grads, model.loss
    if tc.objective == "mlm":  # the bidirectional stack predicting masked tokens (npllama/objectives.py)
        from .objectives import mlm_objective, unk_in_text_note

        loader, val_batches, loss_and_grads, loss = mlm_objective(model, tokenizer, loader, val_batches,
                                                                  seed=tc.seed)
        unk_note = unk_in_text_note(train_ids, tokenizer)
        if unk_note:
            echo(unk_note)
    loop = _Loop(tc, run_dir, model, optimizer, loader, val_batches, tokenizer, echo, loss_and_grads, loss,
                 helper, tokens)
    loop.restore_losses(state)
    record_changes(loop.write_log, echo, start_step, changes)
    _say_where_the_learning_rate_goes(echo, tc, start_step, changes)
    stop = None
    try:
        try:
            loop.run(start_step)
        finally:
            loop.close()
        # The last step's checkpoint is saved inside the try: a stop signal between the end of the
        # steps and the end of this save then saves it below, as a stop during the steps does, where
        # it used to leave the last --checkpoint-every's, whose later steps a resume trained again.
        loop.save_checkpoint(loop.step)
    except (KeyboardInterrupt, _StopRequested) as stopped:
        stop = stopped
        if loop.saved_step != loop.step:
            loop.save_checkpoint(loop.step)
        why = "stopped as asked (--stop-after)" if isinstance(stopped, _StopRequested) else "interrupted"
        echo(stop_line(stopped, loop.step, run_dir, resume_command("train", run_dir), why))
    if helper is not None and not isinstance(stop, KeyboardInterrupt):
        signalled = _let_the_helper_finish(helper, echo)
        if signalled is not None:   # the checkpoint holds the last step: a resume writes the model
            stop = signalled
            echo(stop_line(signalled, loop.step, run_dir, resume_command("train", run_dir)))

    samples = []
    if stop is None:
        with reporting_write_errors("the final model", run_dir / "model"):
            _save_final_model(run_dir, model, tokenizer)
        _plot_losses(run_dir)

        def held_out():
            return unigram_cross_entropy(train_ids, val_ids, tokenizer.vocab_size)

        echo(f"done: step {loop.step}, validation loss {loop.last_val_loss:.3f} {loss_unit(tc.objective)} "
             f"{_compared_with_unigram(loop.last_val_loss, unigram, held_out)}; model saved in {run_dir / 'model'}")
        if attends_causally(tc.objective):  # a bidirectional masked-LM model does not generate text
            samples = _print_samples(model, tokenizer, tc, echo)
    signum = None
    if isinstance(stop, KeyboardInterrupt):
        signum = getattr(stop, "signum", signal.SIGINT)
    return TrainResult(run_dir, loop.step, loop.last_train_loss, loop.last_val_loss, unigram,
                       stop is not None, samples, stop_signal=signum)


def _checkpoint_tokens(checkpoint: Path):
    """The data_fingerprint a checkpoint recorded, or None (none recorded, or a training_state.json
    that restore_checkpoint will refuse, saying why)."""
    from .io.reading import read_json
    from .io.train_state import STATE_FILE

    try:
        return read_json(checkpoint / STATE_FILE, expect=dict).get("tokens")
    except (OSError, ValueError):
        return None


def restore_checkpoint(checkpoint, tc: TrainConfig, loader, tokenizer, changed=(), tokens=None):
    """(model, optimizer, state) from a run's checkpoint folder, with `loader` moved to its position.

    Whatever does not fit -- a malformed file, a damaged tensor (checksums), non-finite weights or
    optimizer state, optimizer state for other parameters, a step count that disagrees with the
    optimizer's, optimizer settings that disagree with `tc`, a loader position from another
    corpus -- raises CheckpointError naming the file.  `changed`: names of TrainConfig settings
    the resume changes on purpose; the optimizer takes those from `tc`.  The loader is moved last,
    after every check has passed.  `tokens`: the run's `data_fingerprint` now; a ValueError if
    the checkpoint recorded other tokens (the user's text changed since).
    """
    from .io.train_state import STATE_FILE, load_checkpoint

    checkpoint = Path(checkpoint)
    state_file = checkpoint / STATE_FILE
    model, optimizer_state, state = load_checkpoint(checkpoint, dtype=DTYPES[tc.dtype])
    step = checked_step(state, state_file)
    if tokens is not None:   # before the loader's check, whose message would blame the checkpoint
        _refuse_changed_tokens(state.get("tokens"), tokens, tc, checkpoint)
    if not isinstance(state.get("loader"), dict):
        raise CheckpointError(state_file, "must be the data loader's position (a JSON object)", field="loader")
    for name in ("train_loss", "val_loss", "val_step"):
        value = state.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CheckpointError(state_file, f"must be a number or null, got {value!r}", field=name)
    try:
        tokenizer.check_vocab(model.config.vocab_size)
    except ValueError as error:
        raise CheckpointError(checkpoint / "model" / "config.json", str(error), field="vocab_size") from None
    optimizer = _make_optimizer(model, tc)
    # a change of beta1 or beta2 on purpose changes the optimizer's betas
    changeable = {"betas" if name in ("beta1", "beta2") else name for name in changed}
    restore_optimizer(optimizer, optimizer_state, step, checkpoint, _optimizer_settings(tc), changeable)
    check_finite(model.params, checkpoint / "model" / "model.safetensors")
    try:
        loader.load_state_dict(state["loader"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(state_file, str(error), field="loader") from None
    return model, optimizer, state


def _refuse_changed_tokens(saved, now: dict, tc: TrainConfig, checkpoint: Path) -> None:
    """resuming.refuse_changed_data, with where the run's training and held-out tokens come from."""
    training = f"--data {tc.data!r}" if tc.data is not None else "the built-in stories"
    held_out = f"--val-data {tc.val_data!r}" if tc.val_data is not None else \
        f"the end of --data {tc.data!r}" if tc.data is not None else "the end of the built-in stories"
    refuse_changed_data(saved, now, tc.out, {"training": training, "held_out": held_out},
                        f"start a new run from these weights (`npllama train --init-from "
                        f"{shlex.quote(str(checkpoint / 'model'))} --out NEW ...`)")


SCHEDULE_SETTINGS = ("steps", "lr", "min_lr", "warmup_steps")   # what cosine_with_warmup is given


def _learning_rate(schedule: dict, step: int) -> float:
    """The learning rate of the step after `step` steps (as step_before_the_update takes it) under
    `schedule`, SCHEDULE_SETTINGS' values."""
    return cosine_with_warmup(step, max_lr=schedule["lr"], warmup_steps=schedule["warmup_steps"],
                              total_steps=schedule["steps"], min_lr=schedule["min_lr"])


def _say_where_the_learning_rate_goes(echo, tc: TrainConfig, start_step: int, changes: dict) -> None:
    """A resume that changes the schedule (a finished run given more --steps, say) moves the learning
    rate from where the run left it: the warmup and cosine are laid over the new total, so a run that
    had decayed to --min-lr climbs back up.  Said, with both rates, so that it is no surprise."""
    new = {name: getattr(tc, name) for name in SCHEDULE_SETTINGS}
    # the old settings alone (not a TrainConfig: beside this resume's other settings they may not pass its checks)
    old = {**new, **{name: was for name, (was, _) in changes.items() if name in SCHEDULE_SETTINGS}}
    if old == new or start_step == 0:
        return
    before, after = _learning_rate(old, start_step - 1), _learning_rate(new, start_step)
    # a rise the old schedule would have taken too (a warmup going on) is no news
    rises_again = after > before >= _learning_rate(old, start_step)
    echo(f"learning rate: {before:.3g} at step {start_step}, {after:.3g} from step {start_step + 1} on the "
         f"schedule over {tc.steps} steps (warmup {tc.warmup_steps}, --lr {tc.lr:g} down to --min-lr {tc.min_lr:g})"
         + (": it rises again" if rises_again else ""))


def step_before_the_update(step: int, tc: TrainConfig, accumulate, params, *, schedule=cosine_with_warmup,
                           clip=clip_finite_step, before_clip=None):
    """A pre-training step up to its update, in the order the loop runs it: the step's learning
    rate, the loss and gradients of its micro-batches (`accumulate()`), the gradients clipped to
    tc.grad_clip.  Returns (lr, loss, grads, grad_norm, problem): problem says why the step must be
    skipped (a non-finite loss or gradient), else None.  `npllama debug train-compare` runs the
    same function, with its pieces (schedule, clip) swappable and `before_clip(grads)` to see the
    gradients before clipping."""
    lr = schedule(step, max_lr=tc.lr, warmup_steps=tc.warmup_steps, total_steps=tc.steps, min_lr=tc.min_lr)
    loss, grads = accumulate()
    if before_clip is not None:
        before_clip(grads)
    grad_norm, problem = clip(loss, grads, params, tc.grad_clip)
    return lr, loss, grads, grad_norm, problem


def update(optimizer, grads: dict, lr: float) -> None:
    """The step's update: AdamW at the step's learning rate."""
    optimizer.step(grads, lr=lr)


class _Loop:
    """The step loop and what it writes (log lines, checkpoints)."""

    def __init__(self, tc, run_dir, model, optimizer, loader, val_batches, tokenizer, echo, loss_and_grads, loss,
                 helper, tokens):
        self.tc, self.run_dir, self.model, self.optimizer = tc, run_dir, model, optimizer
        self.tokens = tokens  # the tokens' fingerprint, kept in every checkpoint (_refuse_changed_tokens)
        self.loss_and_grads, self.loss = loss_and_grads, loss  # the objective's (tokens, targets) functions
        self.loader, self.val_batches, self.tokenizer, self.echo = loader, val_batches, tokenizer, echo
        # what every checkpoint saves beside the weights: the tokenizer, as transformers loads it
        self.tokenizer_files = _tokenizer_files(tokenizer, model.config)
        self.log = open(run_dir / LOG_FILE, "a", encoding="utf-8")
        self.step = 0
        self.last_train_loss = self.last_val_loss = self.last_val_step = None
        self.skipped_in_a_row = 0
        self.saved_step = None  # the step of the checkpoint last written by this loop
        # the loader's position after the last step taken (or skipped): what a checkpoint saves, not
        # the live one, which a step a stop signal abandons has moved past its batches
        self.loader_position = loader.state_dict()
        self.bar = None
        self.helper = helper              # a process compiling the kernels, or None
        self.on_reference = False         # whether steps run on the NumPy reference while it does
        self.splitter = BatchSplitter(1)  # until the thread count is chosen, as the kernels are ready

    def restore_losses(self, state: dict) -> None:
        """After a resume: the losses the checkpoint recorded, so the result (and whether the run
        still owes a final evaluation) are those of the uninterrupted run."""
        self.last_train_loss = state.get("train_loss")
        self.last_val_loss = state.get("val_loss")
        self.last_val_step = state.get("val_step")

    def run(self, start_step: int) -> None:
        tc = self.tc
        self.step = start_step
        self.bar = _progress_bar(tc, start_step)
        if self.helper is not None and self.helper.running():
            self._run_steps_while_the_kernels_compile(start_step)
        if self.step < tc.steps or self.last_val_step != self.step:
            # no --threads: the count measured fastest here for this shape (npllama/thread_choice.py);
            # any helper has ended by now, so the measurement has the cores to itself
            threads = tc.threads or fastest_threads(self.loss_and_grads, self.model.config, tc.batch_size,
                                                    tc.seq_len, self.model.dtype, run_dir=self.run_dir, echo=self.say)
            self.splitter = BatchSplitter(threads)
            self.optimizer.threads = self.splitter.update_threads   # every core, split or not
            with self.splitter.holding_blas(tc.batch_size):
                self._run_steps(start_step)
            self._evaluate_at_the_end()

    def _run_steps_while_the_kernels_compile(self, start_step: int) -> None:
        """Steps on the NumPy references, with BLAS on one core, while the helper compiles the
        training kernels on the other (the run's end too, if it comes first); then, while it
        compiles the decoding kernels for the samples, steps on the kernels, still on one core."""
        helper, first = self.helper, self.step + 1
        self.on_reference = True
        try:
            with one_blas_thread(), use_backend("numpy"):
                self._run_steps(start_step, until=lambda: not helper.running() or helper.training_kernels_ready())
                if self.step == self.tc.steps:
                    self._evaluate_at_the_end()
                    return      # the run is over; train() waits for a helper still at work
        finally:
            self.on_reference = False
        ran = {0: "no step", 1: f"step {first}"}.get(self.step - first + 1, f"steps {first}-{self.step}")
        if not helper.training_kernels_ready():
            self.say(f"the helper process ended (exit code {helper.process.returncode}) without caching the "
                     f"kernels; {ran} ran on the NumPy reference; the kernels compile here now")
            return
        still = helper.running()
        self.say(f"kernels compiled in {helper.seconds():.1f} s; {ran} ran on the NumPy reference meanwhile "
                 f"(marked \"backend\": \"numpy\" in {LOG_FILE}); the kernels take over now"
                 + (", on one core while the helper compiles the decoding kernels for the samples"
                    if still and helper.decoding else ""))
        if still:
            with one_blas_thread():
                self._run_steps(start_step, until=lambda: not helper.running())

    def _evaluate_at_the_end(self) -> None:
        if self.last_val_step != self.step:  # the run ends with a validation loss
            self.evaluate()

    def say(self, line: str) -> None:
        """A line for the user, above the progress bar if there is one."""
        if self.bar is None:
            self.echo(line)
            return
        with self.bar.external_write_mode():
            self.echo(line)

    def _run_steps(self, start_step: int, until=None) -> None:
        """Steps until the last (tc.steps), or until `until()` says so before a step."""
        tc = self.tc
        tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
        while self.step < tc.steps and (until is None or not until()):
            started = time.perf_counter()
            lr, loss, grads, grad_norm, problem = step_before_the_update(self.step, tc, self.accumulate,
                                                                         self.model.params)
            if problem is not None:
                self.non_finite(problem)
                continue
            # A step is all or nothing: a stop signal waits until the update, the step count and
            # its log line agree (a checkpoint saved in between would be unresumable).
            with deferred_stop_signals():
                try:
                    update(self.optimizer, grads, lr)
                except NonFiniteGradientError as error:  # the optimizer's own check, a second line of defence
                    self.non_finite(f"the gradient of {error.name} is not finite")
                    continue
                self.skipped_in_a_row = 0
                self.step += 1
                self.loader_position = self.loader.state_dict()
                seconds = time.perf_counter() - started
                self.last_train_loss = loss
                self.write_log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                "tokens_per_s": tokens_per_step / seconds,
                                **({"backend": "numpy"} if self.on_reference else {})})
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / seconds:,.0f}",
                                     refresh=False)   # redrawn on the bar's own schedule, not every step
            if tc.eval_every and (self.step % tc.eval_every == 0 or self.step == tc.steps):
                self.evaluate()
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < tc.steps:
                self.save_checkpoint(self.step)
            if tc.stop_after is not None and self.step - start_step >= tc.stop_after and self.step < tc.steps:
                raise _StopRequested()

    def accumulate(self):
        """Loss and gradients of grad_accum micro-batches, as one batch of all of them gives: each
        micro-batch's mean weighted by its share of the counted targets (not -100; they differ
        from one to the next under --objective mlm), as the split over threads weights its parts."""
        batches = [self.loader.next_batch() for _ in range(self.tc.grad_accum)]
        weights = target_weights([counted_targets(targets) for _, targets in batches])
        weighted_sum_into = weighted_sum_function()
        total_loss, total_grads = 0.0, None
        for weight, (tokens, targets) in zip(weights, batches):
            loss, grads = self.splitter.loss_and_grads(self.loss_and_grads, tokens, targets)
            total_loss += weight * loss
            if total_grads is None:
                total_grads, weight_a = grads, weight
                continue
            for name, g in grads.items():
                weighted_sum_into(total_grads[name], weight_a, g, weight)
            weight_a = 1.0   # the sum so far holds its weights already (exact: a * 1 == a)
        return total_loss, total_grads

    def non_finite(self, what: str) -> None:
        """A NaN/Inf loss or gradient: nothing was updated.  Skip the batch (the loader's position
        saved is then past it), or stop."""
        self.write_log({"step": self.step + 1, "skipped": what})
        self.skipped_in_a_row += 1
        if self.tc.skip_nonfinite and self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"step {self.step + 1}: {what}; {self.skipped_in_a_row} batches in a row were not "
                f"finite, so the model itself is broken rather than a batch. The last good checkpoint "
                f"is {self.run_dir / 'checkpoint'}; resume from it with a lower --lr.")
        if self.tc.skip_nonfinite:
            self.echo(f"step {self.step + 1}: {what}; batch skipped (--skip-nonfinite)")
            self.loader_position = self.loader.state_dict()   # the skipped batch is not drawn again
            return
        raise TrainingError(
            f"step {self.step + 1}: {what}; the parameters and optimizer state were not updated. "
            f"The last good checkpoint is {self.run_dir / 'checkpoint'} (resume with --resume). "
            f"Try a lower --lr, or pass --skip-nonfinite to skip such batches.")

    def evaluate(self) -> float:
        batches = self.val_batches
        if self.bar is not None:   # all of a large held-out text (--eval-batches 0) can take minutes
            from tqdm.auto import tqdm

            # shown only past a second, gone when done, and only on a terminal (disable=None): below the
            # step bar, tqdm draws it with cursor-up escapes a redirected log would keep
            batches = tqdm(batches, desc=f"step {self.step}: validation", unit="batch", leave=False, delay=1,
                           dynamic_ncols=True, disable=None)
        losses = [self.splitter.loss(self.loss, tokens, targets) for tokens, targets in batches]
        # the mean over every counted target held out, whatever each batch's count
        self.last_val_loss = mean_over_targets(losses, [targets for _, targets in self.val_batches])
        self.last_val_step = self.step
        self.write_log({"step": self.step, "val_loss": self.last_val_loss})
        if self.bar is not None:
            self.bar.write(f"step {self.step}: validation loss {self.last_val_loss:.4f}")
        return self.last_val_loss

    def save_checkpoint(self, step: int) -> None:
        from .io.train_state import save_checkpoint

        state = {"step": step, "loader": self.loader_position, "train_loss": self.last_train_loss,
                 "val_loss": self.last_val_loss, "val_step": self.last_val_step, "tokens": self.tokens}
        path = self.run_dir / "checkpoint"
        # deferred: a stop signal during a checkpoint lets it finish (the stop then saves nothing new:
        # saved_step is set inside, as the held signal is delivered when the block ends)
        with deferred_stop_signals(), reporting_write_errors(f"the checkpoint of step {step}", path):
            save_checkpoint(path, self.model, self.optimizer.state_dict(copy=False), state,
                            extra_files=self.tokenizer_files, replace_lock=replacing_in_run(self.run_dir))
            self.saved_step = step

    def write_log(self, record: dict) -> None:
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.splitter.close()
        self.optimizer.threads = 1        # its threads stop with the loop's
        self.log.close()


# ----- preparation --------------------------------------------------------------------------------
def _prepare_tokenizer(tc: TrainConfig, run_dir: Path, texts, echo, checkpoint=None, given_tokenizer=None):
    """The run's tokenizer: on a resume the checkpoint's own copy (the one its model was trained
    with); on a new start the --tokenizer given (given_tokenizer: as train() read it), or one
    trained on the texts."""
    from .data import Corpus
    from .tokenizer import Tokenizer

    path = run_dir / TOKENIZER_FILE
    if checkpoint is not None and (checkpoint / "model" / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer(checkpoint / "model" / TOKENIZER_FILE)
        if not path.is_file() or path.read_bytes() != tokenizer.model_bytes:
            atomic_write_bytes(path, tokenizer.model_bytes)
        return tokenizer
    if path.is_file():  # a resume of a run whose checkpoint predates tokenizer copies
        return Tokenizer(path)
    if tc.init_from is not None and checkpoint is not None:   # a checkpoint from before tokenizer copies
        require_files(tc, ("init_from",), True, CONFIG_FILE)
    init_from_tokenizer = init_from_tokenizer_path(tc) if tc.init_from is not None else None
    if init_from_tokenizer is not None or tc.tokenizer is not None:
        if given_tokenizer is None:   # --init-from's, or a resume's from a checkpoint before tokenizer copies
            # --init-from's tokenizer.model, else --tokenizer's (read naming the flag if it is gone)
            given_tokenizer = (Tokenizer(init_from_tokenizer) if init_from_tokenizer is not None
                               else _tokenizer_file(tc, resume=True))
        tokenizer = given_tokenizer
        atomic_write_bytes(path, tokenizer.model_bytes)
        return Tokenizer(path)
    vocab_size = base_vocab_size(tc) if tc.init_from is None else init_from_config(tc).vocab_size
    if tc.init_from is not None:   # allowed (a vocabulary transplant), but never silently
        echo(f"note: --init-from {tc.init_from} has no tokenizer.model, so a new tokenizer is trained on the data: "
             f"its ids mean other pieces than the embeddings were trained with; to keep them, pass the "
             f"tokenizer the weights were trained with as --tokenizer")
    # tokenizer.model and tokenizer.vocab, each written atomically (a full disk is an OSError saying so)
    try:
        # SentencePiece draws its sample of the documents (a seeded reservoir) as they stream past
        texts = texts.shown("training the tokenizer") if isinstance(texts, Corpus) else texts
        return Tokenizer.train(texts, path.with_suffix(""), vocab_size, input_sentence_size=200_000, echo=echo)
    except ValueError as error:
        if "character_coverage" not in str(error):
            raise
        # a run trains its tokenizer with the default coverage: a lower one is a tokenizer of its own
        raise ValueError(f"{error}  A run's own tokenizer keeps the default coverage: for a lower one, train "
                         f"it with `npllama tokenizer train --character-coverage` and give it as --tokenizer.") from None


def _tokenizer_file(tc: TrainConfig, resume: bool):
    """The --tokenizer file, read.  Required here, where it is read, not by every resume: one from a
    checkpoint reads the copy in the run folder.  A FileNotFoundError naming the flag if it is not
    there (on a resume: the path the run's settings recorded, unless given anew, which it may be)."""
    from .tokenizer import load_given

    require_files(tc, ("tokenizer",), resume, CONFIG_FILE)
    return load_given(tc.tokenizer, "--tokenizer")   # a folder or a tokenizer.json: said the command line's way


def _train_and_held_out_tokens(tc: TrainConfig, run_dir: Path, tokenizer, texts, val_texts=None, saved=None,
                               echo=print):
    """(train_ids, val_ids, their data_fingerprint): all of --data and --val-data's text (val_texts
    when already read), or --data with its last val_fraction held out.

    saved: the data_fingerprint of the checkpoint being resumed (None: none).  The token caches
    (tokens.npy, val_tokens.npy) vouch for their key (the text, the tokenizer), not for their own
    bytes: a damaged one would be taken for changed text.  So a stream read from a cache whose
    tokens are not the checkpoint's is made again from the text, which decides; one just made from
    the text (edited text is: its key is another) is not made again.  Streams made from the text
    become their caches only if the tokens are the checkpoint's (or there is none to compare
    with): a resume refused for changed text writes nothing into the run folder."""
    from .data import cached_tokens, tokenize_pending, train_val_split

    if tc.val_data is None:   # one stream: both parts come from tokens.npy
        streams = {"tokens.npy": (texts, ("training", "held_out"))}
    else:
        streams = {"tokens.npy": (texts, ("training",)),
                   "val_tokens.npy": (val_texts if val_texts is not None else _held_out_texts(tc), ("held_out",))}

    def parts(ids: dict):
        if tc.val_data is None:
            return train_val_split(ids["tokens.npy"], tc.held_out_fraction, bos_id=tokenizer.bos_id)
        return ids["tokens.npy"], ids["val_tokens.npy"]

    def differs(name: str, now: dict) -> bool:   # the stream's parts are not the checkpoint's
        return isinstance(saved, dict) and any(saved.get(part) != now[part] for part in streams[name][1])

    ids, made = {}, {}
    try:
        for name, (stream_texts, _) in streams.items():
            ids[name] = cached_tokens(stream_texts, tokenizer, run_dir / name)
            if ids[name] is None:
                made[name] = tokenize_pending(stream_texts, tokenizer, run_dir / name, progress=_bars(tc))
                ids[name] = made[name].ids
        train_ids, val_ids = parts(ids)
        tokens = data_fingerprint(train_ids, val_ids)
        suspect = [name for name in streams if name not in made and differs(name, tokens)]
        for name in suspect:
            made[name] = tokenize_pending(streams[name][0], tokenizer, run_dir / name, progress=_bars(tc))
            ids[name] = made[name].ids
        if suspect:
            train_ids, val_ids = parts(ids)
            remade = data_fingerprint(train_ids, val_ids)
            damaged = [name for name in suspect if any(remade[part] != tokens[part] for part in streams[name][1])]
            if damaged:
                echo(f"the token cache ({', '.join(str(run_dir / name) for name in damaged)}) did not hold the tokens "
                     f"of the text (damaged?): made again from the text")
            tokens = remade
    except BaseException:   # refused (a split with nothing on one side, ...) or stopped: nothing half-written stays
        for stream in made.values():
            stream.drop()
        raise
    # tokens that are not the checkpoint's: the resume is refused (restore_checkpoint), and the run
    # folder is left as it was (its caches still those of the checkpoint's text)
    refused = any(differs(name, tokens) for name in streams)
    for stream in made.values():
        if refused:
            stream.drop()
        else:
            stream.keep()
    return train_ids, val_ids, tokens


def _load_corpus(tc: TrainConfig):
    """The run's documents: the user's --data (a Corpus, streamed from disk), or the built-in stories."""
    from .corpus import make_default_corpus

    if tc.data is None:
        return make_default_corpus(tc.corpus_stories, seed=0)
    return _read_corpus(tc.data, tc)


def _read_corpus(path, tc: TrainConfig):
    """A Corpus of path, read through once now, so that what cannot be read is refused now.  Its
    reading bars show only for big corpora (a small one is read in the blink of an eye)."""
    from .data import Corpus

    return Corpus(path, tc.doc_separator, progress=_bars(tc))


def _bars(tc: TrainConfig) -> bool | None:
    """The progress= of the data's passes: None, a bar for a corpus worth one (the readers' own
    threshold), when the run shows progress; False, none, when it does not."""
    return None if tc.progress else False


def _new_model(tc: TrainConfig, tokenizer, echo):
    """A new run's model: random weights of the run's shape, or the --init-from folder's weights."""
    from .model import Llama

    if tc.init_from is None:
        config = new_model_config(tc, tokenizer)
        _check_budget(tc, config)
        note_attention_dropout((tc.model_config or {}).get("attention_dropout"), "--config", echo, kept=False)
        return Llama(config, seed=tc.seed, dtype=DTYPES[tc.dtype], objective=tc.objective)
    config = init_from_config(tc)
    tokenizer.check_vocab(config.vocab_size)
    _check_budget(tc, config)
    echo(f"starting from the weights in {init_from_dir(tc)}")
    note_attention_dropout(config.attention_dropout, f"{init_from_dir(tc)}'s config.json", echo)
    model = Llama.from_pretrained(init_from_dir(tc), dtype=DTYPES[tc.dtype])
    model.objective = tc.objective   # what this run trains it for, whatever the folder's was
    return model


def _describe_shape(tc: TrainConfig, config: LlamaConfig) -> str:
    reshaped = tc.init_from is None and config != preset_config(tc, config)
    name = f"from {tc.init_from}" if tc.init_from is not None else tc.preset + (" (reshaped)" if reshaped else "")
    return (f"{name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads ({config.num_key_value_heads} kv), "
            f"intermediate {config.intermediate_size}, context {config.max_position_embeddings}")


def _compared_with_unigram(val_loss: float, unigram: float, held_out=None) -> str:
    """How the validation loss compares with the unigram entropy (what a model that ignores the
    context would reach), in words that are right on either side of it.  Above it, held_out()
    gives word frequencies' loss on the held-out text itself: held-out text unlike the training
    text (a corpus whose end changes subject) is harder for any model, and a validation loss above
    the training text's entropy can still be well below what frequencies do there."""
    if val_loss <= unigram:
        return f"({100 * (1 - val_loss / unigram):.0f}% below the unigram entropy {unigram:.3f})"
    above = f"above the unigram entropy {unigram:.3f}, by {100 * (val_loss / unigram - 1):.0f}%"
    frequencies = held_out() if held_out is not None else None
    if frequencies is not None and val_loss < frequencies:
        return (f"({above}, but below the {frequencies:.3f} that word frequencies reach on the held-out text, "
                f"which is harder for them than the training text)")
    return f"({above}: the model has not yet learned more than word frequencies; train longer)"


ADAM_EPS = 1e-8


def _optimizer_settings(tc: TrainConfig) -> dict:
    """The AdamW settings (npllama.optim.AdamW.settings_names) a run's TrainConfig asks for."""
    return {"lr": tc.lr, "betas": (tc.beta1, tc.beta2), "eps": ADAM_EPS, "weight_decay": tc.weight_decay}


def _check_budget(tc: TrainConfig, config: LlamaConfig) -> None:
    """The model (with gradients and AdamW's moments) and one micro-batch per thread must fit the
    memory budget (npllama/budget.py) before anything is allocated."""
    from .budget import check_batch, check_model

    check_model(config, DTYPES[tc.dtype], training=True)
    check_batch(config, tc.batch_size, tc.seq_len, DTYPES[tc.dtype], training=True)


def _make_optimizer(model, tc: TrainConfig) -> AdamW:
    return AdamW(model.params, **_optimizer_settings(tc))


def resume_config(run_dir, **given) -> TrainConfig:
    """The settings for `npllama train --out run_dir --resume`: the saved ones, with the options the
    user gave on top (so the printed hint `npllama train --out DIR --resume` works as printed)."""
    from .resuming import built_on_saved, settings_over_saved

    # stop_after counts the steps of one call: the call that stopped there recorded it, and a resume
    # that took it over would stop again N steps on instead of continuing the run as the hint says
    return built_on_saved(TrainConfig(**settings_over_saved(TrainConfig, run_dir, CONFIG_FILE, given,
                                                            dropped=("stop_after",))))


def _refuse_held_out_text_in_data(tc: TrainConfig) -> None:
    """--val-data that is --data, lies in its folder or holds it would be trained on: its loss would
    look like generalisation and be memory."""
    data, val_data = (Path(p).expanduser().resolve() for p in (tc.data, tc.val_data))
    if val_data == data or data in val_data.parents or val_data in data.parents:
        where = ("is --data itself" if val_data == data else f"is inside --data {tc.data!r}" if data in val_data.parents
                 else f"holds --data {tc.data!r}")
        raise ValueError(f"--val-data {tc.val_data!r} {where}, so the held-out text would be trained on: move it "
                         f"out of --data (or leave out --val-data to hold out the end of --data)")


def _held_out_texts(tc: TrainConfig):
    """--val-data, read now, so that an empty or unreadable file is refused before the folder is
    made and the tokenizer trained (not after); the run uses these texts, not a second reading."""
    try:
        return _read_corpus(tc.val_data, tc)
    except ValueError as error:
        raise ValueError(f"--val-data {tc.val_data!r}: {error}") from None


def _refuse_another_vocab_size(tc: TrainConfig, tokenizer) -> None:
    """--vocab-size (or a --config file's vocab_size) sizes a tokenizer the run trains; with
    --tokenizer the model takes that tokenizer's size, so another one would be ignored (and
    recorded wrongly)."""
    pieces = tokenizer.vocab_size
    if tc.vocab_size is not None and pieces != tc.vocab_size:
        raise ValueError(f"--vocab-size {tc.vocab_size} disagrees with --tokenizer {tc.tokenizer!r}, which has "
                         f"{pieces} pieces (the model's vocabulary): leave out --vocab-size")
    from_file = (tc.model_config or {}).get("vocab_size")
    if tc.vocab_size is None and from_file is not None and from_file != pieces:
        # the field quoted as the file spells it (the command line would turn a bare name into its flag)
        raise ValueError(f"--config's \"vocab_size\": {from_file} disagrees with --tokenizer {tc.tokenizer!r}, "
                         f"which has {pieces} pieces (the model's vocabulary): set \"vocab_size\" to {pieces} in "
                         f"the file or leave it out")


def _refuse_a_folder_of_the_users(run_dir: Path) -> None:
    """A new start writes into a new or empty folder, or a run folder (whose earlier start may have
    failed before its first checkpoint: it has train_config.json).  Any other folder holds the
    user's own files, tokenizer.model among them would be replaced: refused before a lock file is
    made in it.  (A run folder is judged under the lock, which first says whether another process
    is writing it.)"""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in ("checkpoint", "model", CONFIG_FILE)):
        return
    held = files_besides_locks(run_dir)
    if held:
        raise not_empty(run_dir, held, f" and is not an npllama run folder (it has no {CONFIG_FILE})")


def _refuse_a_folder_holding_a_run(run_dir: Path) -> None:
    """A new start does not replace a run's checkpoint or finished model."""
    if (run_dir / "checkpoint").exists() or (run_dir / "model").exists():
        raise already_holds_a_run(run_dir)


def _remove_derived_files(run_dir: Path, tc: TrainConfig) -> None:
    """Before a run starts from step 0: a tokenizer a failed earlier start left is not this run's
    (it may have another vocab_size or come from another --tokenizer), so it is made again; and the
    temporaries of its interrupted writes go (a killed tokenizing pass leaves a partial
    `.tokens.npy.tmp-*`, gigabytes for a large corpus).  (tokens.npy is keyed by the tokenizer and
    the texts: a stale one is never used.)  A file the run was given to read (--tokenizer
    run_dir/tokenizer.model, say) is left in place: it is this run's, and the user's.  This
    process holds the run's lock: no one else's temporaries are in the folder."""
    from .runs import remove_stale_temporaries

    given = [Path(path).expanduser() for path in (tc.tokenizer, tc.data, tc.val_data, tc.model_config)
             if isinstance(path, (str, Path))]
    for name in (TOKENIZER_FILE, "tokenizer.vocab"):
        derived = run_dir / name
        if not any(_same_file(derived, path) for path in given):
            derived.unlink(missing_ok=True)
    remove_stale_temporaries(run_dir, recover=False)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:   # either is missing: nothing to keep
        return False


def _save_final_model(run_dir: Path, model, tokenizer) -> None:
    from .io.hf import objective_fields, save_hf_folder

    with deferred_stop_signals():
        save_hf_folder(run_dir / "model", model.config, model.params,
                       extra_files=_tokenizer_files(tokenizer, model.config),
                       replace_lock=replacing_in_run(run_dir), extra_config=objective_fields(model.objective),
                       keep_other_files=False)   # the run's own folder: all of it is this run's result


def _tokenizer_files(tokenizer, config) -> dict[str, bytes]:
    """tokenizer.model and the files that make it load in transformers' AutoTokenizer."""
    return tokenizer.hf_files(model_max_length=config.max_position_embeddings)


def _plot_losses(run_dir: Path) -> None:
    try:
        from .viz import plot_loss
    except ImportError:  # matplotlib is an optional extra
        return
    try:
        plot_loss(run_dir, run_dir / "loss.png")
    except ImportError:
        return


def _let_the_helper_finish(helper, echo):
    """A run that ends before its helper: without the wait, the helper would be stopped at exit
    and every later run would find the cache as cold (a run of a few steps, over and over).
    Ctrl-C skips the wait; SIGTERM or SIGHUP (a scheduler, `timeout`) stops the run, and is returned."""
    if not helper.running():
        return None
    echo("waiting for the helper process to finish compiling the kernels into numba's cache, so that "
         "later runs start on them (Ctrl-C skips this)")
    try:
        helper.wait()
    except KeyboardInterrupt as interrupt:
        helper.stop()
        if getattr(interrupt, "signum", signal.SIGINT) != signal.SIGINT:
            return interrupt
        echo("skipped: the next run compiles them again")
    return None


def _print_samples(model, tokenizer, tc: TrainConfig, echo) -> list[str]:
    from .generate import decodable_vocab_size, end_ids, generate, sample_seed

    if not tc.samples:
        return []
    prompts = ["Once upon a time", "There was once", "One day"] if tc.data is None else [""]
    texts = []
    echo("samples:")
    for i in range(tc.samples):
        prompt = prompts[i % len(prompts)]
        ids = generate(model, tokenizer.encode(prompt, bos=True), max_new_tokens=tc.sample_tokens,
                       temperature=0.8, top_k=40, seed=sample_seed(tc.seed, i), eos_id=end_ids(model, tokenizer),
                       vocab_size=decodable_vocab_size(model, tokenizer))
        text = tokenizer.decode(ids)
        texts.append(text)
        echo(f"  [{i + 1}] {text}")
    return texts


def _progress_bar(tc: TrainConfig, start_step: int):
    if not tc.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=tc.steps, initial=start_step, unit="step", dynamic_ncols=True, desc="train")


MAX_SETTING = 2**63 - 1  # integer settings end up in NumPy int64 arithmetic


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SETTING:
        raise ValueError(f"{name} must be a positive integer (at most 2**63 - 1), got {str(value)[:40]}")


def _non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SETTING:
        raise ValueError(f"{name} must be a non-negative integer (at most 2**63 - 1), got {str(value)[:40]}")


def _finite_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a finite number, got {str(value)[:40]}")
