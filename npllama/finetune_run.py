"""A fine-tuning job's run folder (`--out`): the same life as a pre-training run.

    out/
        classify_config.json | sft_config.json | sop_config.json   the job's settings (--resume checks them)
        log.jsonl                one line per step: loss, lr
        checkpoint/              the latest resumable state, replaced atomically
            params.safetensors   the tensors being trained (every weight, or LoRA adapters, and a head)
            optimizer.safetensors, training_state.json   (npllama/io/train_state.py)
        config.json, model.safetensors, ... | adapter_config.json, ...   the result, at the end
        finetune.json            what was trained and the final metrics
        .npllama.lock, .npllama-read.lock   the writer and reader locks (npllama/runs.py)

Every `checkpoint_every` steps a checkpoint is written; SIGINT, SIGTERM and SIGHUP finish the step
in progress (or undo nothing: it never happened), save a checkpoint and stop (npllama/interrupts.py);
`resume=True` continues with exactly the batches, dropout masks and updates an uninterrupted run
would have had.  The base model is read again from --base on a resume: only what is trained is
in the checkpoint (with LoRA, a digest of the frozen base's weights too, and a resume on other
weights is refused).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from .interrupts import deferred_stop_signals, stop_signals_interrupt
from .io.atomic import atomic_files_into, atomic_write_text
from .io.errors import CheckpointError
from .io.hf import CHAT_TEMPLATE_FILE
from .resuming import (LOG_FILE, already_holds_a_run, check_finite, check_steps_reach, checked_step, data_fingerprint,
                       record_changes, refuse_changed_base, refuse_changed_data, reopen_run, reporting_write_errors,
                       require_files, require_settings, restore_optimizer, resume_command, stop_line, truncate_log,
                       weights_digest, what_is_left, write_settings)
from .runs import files_besides_locks, not_empty, replacing_in_run, writing_run

# The files of a result of each kind, as the jobs save them into the run folder (finetune.py, finetune_sop.py)
MODEL_RESULT_FILES = ("config.json", "generation_config.json", "model.safetensors", "sop_head.safetensors",
                      "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ADAPTER_RESULT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", CHAT_TEMPLATE_FILE)

SETTINGS_FILES = {"classify": "classify_config.json", "sft": "sft_config.json", "sop": "sop_config.json"}


def settings_file(task: str) -> str:
    """The file a fine-tuning task ("classify", "sft", "sop") saves its settings to in its run folder."""
    return SETTINGS_FILES[task]


def require_resumable(run_dir, task: str) -> None:
    """A FileNotFoundError saying why, unless run_dir holds a `task` run's settings."""
    run_dir = Path(run_dir).expanduser()
    other = [t for t, name in SETTINGS_FILES.items() if t != task and (run_dir / name).is_file()]
    require_settings(run_dir, settings_file(task), f" ({str(run_dir)!r} holds a {other[0]} run)" if other else "")


@contextlib.contextmanager
def fine_tuning_run(config, task: str, resume: bool, echo, check_base=None):
    """The job's FinetuneRun, held for the block (writer lock, stop signals that save and stop), or
    None when config.out is None (nothing saved, nothing to resume).  check_base(base): called
    once --out is known to be usable and before anything is written in it."""
    check_base = check_base or (lambda base: None)
    if config.out is None:
        if resume:
            raise ValueError("resume needs out (--out): the run folder to continue")
        check_base(config.base)
        yield None
        return
    run_dir = Path(config.out).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {config.out!r} is a file, not a folder: choose a run folder")
    if resume:
        require_resumable(run_dir, task)
        require_files(config, config.RECORDED_ABSOLUTE, resume, settings_file(task))   # a run moved without them
    check_base(config.base)
    if config.base is None:  # the latest run, recorded as such: a resume reads the same base
        from .runs import latest_run

        config = dataclasses.replace(config, base=str(latest_run()))
    if not resume and run_dir.is_dir():   # said before a lock file is made in a folder of the user's
        refuse_a_folder_in_use(run_dir, config.base, runs_too=False)
    with stop_signals_interrupt(), writing_run(run_dir):
        run = FinetuneRun(run_dir, config, task, resume, echo)
        try:
            yield run
        except KeyboardInterrupt as stop:
            if run.stop_said:   # in the steps: a checkpoint was saved, and a line said so
                raise
            # before the first step or after the last (loading the base, tokenizing, evaluating)
            from .finetune import INFO_FILE   # (the result's record, written with it)

            command = resume_command(f"finetune {task}", run_dir)
            raise what_is_left(stop, run_dir, command, run_dir, (run_dir / INFO_FILE).is_file(),
                               "the same command starts it again (or "
                               f"`{command}`, with the settings it was given)") from None


def never_stepped(held) -> bool:
    """Whether a run folder's files (`held`, locks aside) are all a fine-tune's start left before its
    first checkpoint -- one refused for its data, say, as the settings are written before the data
    is read: nothing was trained, so a new start may take the folder, as `npllama train`'s may."""
    held = set(held)   # a settings file among them: a lone log.jsonl may be a user's own file
    return bool(held & set(SETTINGS_FILES.values())) and held <= {*SETTINGS_FILES.values(), LOG_FILE}


def refuse_a_folder_in_use(run_dir: Path, base, runs_too: bool = True) -> None:
    """A new start's --out: a new or empty folder, or one a start left before its first checkpoint
    (never_stepped); not one holding a run, nor other files -- the --base model among them (`base`),
    which the refusal names.  runs_too=False: a folder holding a run passes (judged under the run's
    lock, which first says whether another process writes it)."""
    held = files_besides_locks(run_dir)
    if never_stepped(held):
        return
    if {*SETTINGS_FILES.values(), "train_config.json", "checkpoint"} & set(held):
        if not runs_too:
            return
        raise already_holds_a_run(run_dir)
    if held:
        base_path = Path(base).expanduser().resolve() if base is not None else None
        holds_base = base_path is not None and base_path.is_relative_to(run_dir.resolve())
        raise not_empty(run_dir, held, f" and holds --base {str(base)!r}, the model being fine-tuned" if holds_base else "")


class FinetuneRun:
    """Settings, log and checkpoints of one fine-tuning run folder; made by fine_tuning_run."""

    def __init__(self, run_dir: Path, config, task: str, resume: bool, echo):
        self.run_dir, self.config, self.task, self.echo = run_dir, config, task, echo
        self.saved_step = None    # the step of the checkpoint this process wrote last
        self.resumed_at = 0       # the step a resume started from (restore); 0 on a new start
        self.stop_said = False    # whether a stop signal in the steps saved a checkpoint and said so
        self.checkpoint = None    # the checkpoint folder to resume from
        self.changes = {}
        self.data, self.data_sources = None, None   # the examples' fingerprint (record_data), kept in checkpoints
        self.base_weights = None   # with LoRA: the frozen base's weights_digest, kept in checkpoints
        if resume:
            self.changes, self.checkpoint = reopen_run(run_dir, config, settings_file(task))
            if self.checkpoint is None:
                echo(f"no checkpoint in {run_dir} yet: starting from step 0")
        else:
            self._refuse_a_folder_in_use()
            for name in SETTINGS_FILES.values():   # a never_stepped start's, perhaps of another task
                (run_dir / name).unlink(missing_ok=True)
        if self.checkpoint is None:
            write_settings(run_dir, config, settings_file(task))  # first: a start killed from here can resume
            atomic_write_text(run_dir / LOG_FILE, "")
        self._log = None

    def _refuse_a_folder_in_use(self) -> None:
        refuse_a_folder_in_use(self.run_dir, self.config.base)   # again under the lock

    # ----- the step loop's side -------------------------------------------------------------------
    def record_data(self, training: list, held_out: list, *, data, built_in: str, val_data=None) -> None:
        """The examples the job trains on and holds out (as resuming.data_fingerprint takes them),
        read from the file `data` (else the built-in data `built_in` names) and `val_data` (else a
        share of the former): every checkpoint keeps their fingerprint, and a resume whose examples
        differ from it is refused, naming where they came from."""
        source = f"--data {data!r}" if data is not None else built_in
        self.data = data_fingerprint(training, held_out)
        self.data_sources = {"training": source,
                             "held_out": f"--val-data {val_data!r}" if val_data is not None else
                             f"the share of {source} held out"}

    def restore(self, params: dict, optimizer, wanted: dict, adapters=None) -> tuple[int, list]:
        """(the step to start from, the losses of the steps before it): 0 and [] on a new start; on
        a resume, `params` (in place), `optimizer` and the adapters' dropout draws as the checkpoint
        left them.  Everything is checked before any parameter is changed.  With adapters, the
        base they adapt must have the weights the checkpoint was trained on (it is not in it)."""
        if adapters is not None:
            self.base_weights = weights_digest(adapters.model.params)
        if self.checkpoint is None:
            return 0, []
        from .io.train_state import PARAMS_FILE, STATE_FILE, load_params_checkpoint

        dtype = next(iter(params.values())).dtype
        saved, optimizer_state, state = load_params_checkpoint(self.checkpoint, dtype=dtype)
        state_file = self.checkpoint / STATE_FILE
        step = checked_step(state, state_file)
        if self.data is not None:
            refuse_changed_data(state.get("data"), self.data, self.config.out, self.data_sources,
                                "start a new run with another --out")
        if self.base_weights is not None:
            refuse_changed_base(state.get("base_weights"), self.base_weights, self.config.out, self.config.base,
                                "start a new run with another --out")
        check_steps_reach(self.config.steps, step, self.checkpoint)
        losses = state.get("losses")
        if not isinstance(losses, list) or len(losses) != step or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in losses):
            raise CheckpointError(state_file, f"must list the loss of each of the {step} steps taken", field="losses")
        if set(saved) != set(params) or any(saved[n].shape != params[n].shape for n in params):
            raise CheckpointError(self.checkpoint / PARAMS_FILE, "holds other tensors than this run trains "
                                                                 "(another --base, --lora setting or label set)")
        check_finite(saved, self.checkpoint / PARAMS_FILE)
        restore_optimizer(optimizer, optimizer_state, step, self.checkpoint, wanted, changeable=set(self.changes))
        if adapters is not None:
            try:
                adapters.dropout_state = state.get("dropout")
            except (TypeError, ValueError, KeyError) as error:
                raise CheckpointError(state_file, f"is not a dropout generator's state ({error})",
                                      field="dropout") from None
        for name, array in params.items():
            array[...] = saved[name]
        truncate_log(self.run_dir / LOG_FILE, step)
        write_settings(self.run_dir, self.config, settings_file(self.task))  # only now: a refused resume changes nothing
        self.saved_step = self.resumed_at = step
        record_changes(self.write_log, self.echo, step, self.changes)
        self.echo(f"resuming {self.run_dir} at step {step}")
        return step, [float(x) for x in losses]

    def write_log(self, record: dict) -> None:
        """Append record to the run's log.jsonl as one JSON line, flushed (the file opened on first use)."""
        if self._log is None:
            self._log = open(self.run_dir / LOG_FILE, "a", encoding="utf-8")
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    def save(self, step: int, params: dict, optimizer, losses: list, dropout_state=None) -> None:
        """A checkpoint of `step`, written atomically; a stop signal meanwhile waits for it.
        dropout_state: the LoRA adapters' dropout draws after that step, if there are adapters."""
        from .io.train_state import save_params_checkpoint

        state = {"step": step, "losses": list(losses), "task": self.task}
        if self.data is not None:
            state["data"] = self.data
        if dropout_state is not None:
            state["dropout"] = dropout_state
        if self.base_weights is not None:
            state["base_weights"] = self.base_weights
        path = self.run_dir / "checkpoint"
        with deferred_stop_signals(), reporting_write_errors(f"the checkpoint of step {step}", path):
            save_params_checkpoint(path, params, optimizer.state_dict(copy=False), state,
                                   replace_lock=replacing_in_run(self.run_dir))
            self.saved_step = step   # inside: a signal held meanwhile comes as the block ends, and saves nothing new

    def stopped(self, stop: KeyboardInterrupt, step: int, save) -> None:
        """After a stop signal: save the step reached (unless saved) and say how to continue."""
        if self.saved_step != step:
            save()
        self.stop_said = True
        self.echo(stop_line(stop, step, self.run_dir, resume_command(f"finetune {self.task}", self.run_dir)))

    def close(self) -> None:
        """Close the log file (write_log opens it again if called later)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    # ----- the result -----------------------------------------------------------------------------
    def publish(self, save) -> Path:
        """save(folder) writes the result as a folder; its files are moved into the run folder
        under the run's replace lock, so a reader sees all of the old result or all of the new.
        An earlier result of the other kind (an adapter, a whole model: `sft --resume` may change
        --merge) goes with it: left beside the new one, it is what the folder would load as."""
        with deferred_stop_signals(), reporting_write_errors("the result", self.run_dir):
            with atomic_files_into(self.run_dir, replace_lock=replacing_in_run(self.run_dir),
                                   stale=_other_kind_of_result) as staging:
                save(staging)
        return self.run_dir


def _other_kind_of_result(written) -> tuple:
    """atomic_files_into's `stale` for a result: a whole model drops an earlier adapter's files, an
    adapter an earlier whole model's (a run folder starts empty: they can only be an earlier result)."""
    if "adapter_config.json" in written:
        return MODEL_RESULT_FILES
    if "config.json" in written:
        return ADAPTER_RESULT_FILES
    return ()
