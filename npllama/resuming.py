"""What every resumable job (pre-training, fine-tuning) does to continue a run where it stopped.

A run folder records the job's settings in a JSON file (train_config.json, finetune_config.json)
beside its checkpoint/.  `--resume` reads them back, refuses changes to the settings that define
the run (model, data and its order), applies and reports the others, and restores the optimizer
from the checkpoint with every check in one place.  The jobs differ only in their settings class
and in what their checkpoint holds besides the optimizer.

    saved = saved_settings(run_dir, TrainConfig, "train_config.json")     # validated like new ones
    changes = changes_on_resume(run_dir, tc, TrainConfig, "train_config.json")
    restore_optimizer(optimizer, optimizer_state, step, checkpoint, wanted, changeable)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .io.atomic import atomic_write_text
from .io.errors import CheckpointError

MAX_SETTINGS_BYTES = 1024**2  # a settings file is a few kB
LOG_FILE = "log.jsonl"         # a run's log, one JSON line per event (both jobs)


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or the final model) failed, e.g. the disk is full.  The folder being
    replaced still holds the last one written completely (npllama.io.atomic); `errno` is the
    original error's."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


@contextlib.contextmanager
def reporting_write_errors(what: str, path: Path):
    """Turn an OSError while writing `what` into a CheckpointWriteError that says what survived."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except OSError as error:
        raise CheckpointWriteError(
            f"writing {what} to {path} failed: {error}. {path} still holds the last one written "
            f"completely; free some space (or fix the permissions) and continue with --resume",
            errno=error.errno) from error


# ----- the run's settings ---------------------------------------------------------------------------
def require_settings(run_dir, file_name: str, also: str = "") -> Path:
    """The run's settings file, or a FileNotFoundError "nothing to resume" (`also` added to it)."""
    path = Path(run_dir) / file_name
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {str(path)!r} does not exist{also}")
    return path


def reopen_run(run_dir, config, file_name: str) -> tuple[dict, Path | None]:
    """A resume's first steps, before anything is written: (the settings it changes, as
    changes_on_resume checks them; the checkpoint to resume from, or None if there is none yet,
    damage refused), with the temporaries an interrupted write left removed in between."""
    from .runs import checkpoint_to_resume, remove_stale_temporaries

    changes = changes_on_resume(run_dir, config, file_name)
    remove_stale_temporaries(run_dir)
    return changes, checkpoint_to_resume(run_dir)


def saved_settings(run_dir, config_class, file_name: str) -> dict:
    """The settings a run folder's `file_name` records, validated by `config_class` like
    command-line ones (any problem is a CheckpointError naming the file)."""
    return _saved_settings_and_older(run_dir, config_class, file_name)[0]


def _saved_settings_and_older(run_dir, config_class, file_name: str) -> tuple[dict, set]:
    """(saved_settings, the names among them the file lacks, taken from SETTINGS_OF_OLDER_RUNS)."""
    from .io.reading import read_json

    path = require_settings(run_dir, file_name)
    saved = read_json(path, expect=dict, max_bytes=MAX_SETTINGS_BYTES, error=CheckpointError)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise CheckpointError(path, f"has settings npllama does not know: {', '.join(unknown)}")
    # a setting added since the run was saved: the value the run was made with, not today's default
    older = {name: value for name, value in getattr(config_class, "SETTINGS_OF_OLDER_RUNS", {}).items()
             if name not in saved}
    settings = {**older, **saved}
    try:
        config = config_class(**settings)
    except (TypeError, ValueError):
        config = config_class(**_without_refused_call_settings(config_class, settings, path))
    return _as_dict(config), set(older)


def _without_refused_call_settings(config_class, saved: dict, path: Path) -> dict:
    """`saved` without the settings that steer only one call (config_class.RESUME_QUIET: samples,
    progress, ...) whose value an older npllama accepted and this one refuses: the resuming call
    gives its own value, or the default (a resume ignores the saved ones: changes_on_resume).  A
    refused setting that belongs to the run is a CheckpointError saying why and what to do."""
    quiet = [name for name in getattr(config_class, "RESUME_QUIET", ()) if name in saved]
    kept = {name: value for name, value in saved.items() if name not in quiet}
    try:
        config_class(**kept)
    except (TypeError, ValueError) as refused:   # named: not a dropped one the class happened to check first
        raise CheckpointError(path, f"holds an invalid setting: {refused} (a value an older npllama accepted, or "
                                    f"the file was edited): this npllama cannot resume the run; start a new one "
                                    f"with another --out") from None
    for name in quiet:   # each one kept that is still valid
        try:
            config_class(**kept, **{name: saved[name]})
        except (TypeError, ValueError):
            continue
        kept[name] = saved[name]
    return kept


def write_settings(run_dir, config, file_name: str) -> None:
    """The settings as JSON, the files the run reads (config.RECORDED_ABSOLUTE) named absolute: as
    given they would be relative to the working directory of the start, and a resume from another
    one would read another file, or none."""
    import os

    settings = _as_dict(config)
    for name in getattr(config, "RECORDED_ABSOLUTE", ()):
        if names_a_file(config, name, settings.get(name)):
            settings[name] = os.path.abspath(os.path.expanduser(settings[name]))
    atomic_write_text(Path(run_dir) / file_name, json.dumps(settings, indent=2) + "\n")


def changes_on_resume(run_dir, config, file_name: str) -> dict:
    """{name: (saved, new)} for the settings this resume changes.  A change to a setting that defines
    the run (config.RESUME_FIXED) is refused with a ValueError naming each one; settings in
    config.RESUME_QUIET steer only this call and are left out; one whose value follows another's
    (config.RESUME_FOLLOWS) is not named when that one changes too.  Paths (config.PATH_SETTINGS) that
    name the same file -- respelled, absolute, through a symlink -- are no change."""
    saved, older = _saved_settings_and_older(run_dir, type(config), file_name)
    new = _as_dict(config)
    differing = {name: (saved[name], new[name]) for name in saved
                 if saved[name] != new[name] and not same_path(config, name, saved[name], new[name])}
    fixed = [f"{name} ({old!r} -> {value!r}"
             + (f"; the run was saved before npllama had this setting: give {name}={old!r} to resume it)"
                if name in older else ")")
             for name, (old, value) in differing.items()
             if name in config.RESUME_FIXED and not moved_file(config, name, old, value)
             and getattr(config, "RESUME_FOLLOWS", {}).get(name) not in differing]   # named by what it follows
    if fixed:
        raise ValueError(f"cannot resume {str(run_dir)!r} with different settings: {', '.join(fixed)}; "
                         f"these define the run (model, tokenizer, data and its order): start a new run "
                         f"with another --out to change them{_python_resume_hint(config, differing)}")
    return {name: change for name, change in differing.items() if name not in config.RESUME_QUIET}


def settings_over_saved(config_class, run_dir, file_name: str, given: dict, dropped=()) -> dict:
    """The settings to resume run_dir with: the saved ones (`file_name`) with `given` on top, as the
    command line's --resume takes them.  dropped: saved settings that steered only the call that
    saved them (their default, unless given)."""
    saved = saved_settings(run_dir, config_class, file_name)   # validated like command-line settings
    return {**{name: value for name, value in saved.items() if name not in dropped}, **given, "out": str(run_dir)}


def built_on_saved(config):
    """`config`, marked as made from a run's saved settings (settings_over_saved): a refusal to resume
    with it comes from a change asked for, and does not point to config.RESUME_FROM_SAVED."""
    config._built_on_saved_settings = True
    return config


def _python_resume_hint(config, differing: dict) -> str:
    """A refusal whose every new value is its setting's default comes from settings built from the
    defaults (`TrainConfig(out=run, steps=...)` in Python), not from changes asked for: it names the
    function that gives the run's own settings (config.RESUME_FROM_SAVED), when the class has one
    and the settings were not made by it (the command line's --resume makes them so)."""
    helper = getattr(config, "RESUME_FROM_SAVED", None)
    if helper is None or getattr(config, "_built_on_saved_settings", False):
        return ""
    defaults = _as_dict(type(config)())
    if any(new != defaults.get(name) for name, (_, new) in differing.items() if name in config.RESUME_FIXED):
        return ""
    return (f" (in Python, {helper.format(cls=type(config).__name__)} gives the run's saved settings with your "
            f"changes on top: the ones given here are the defaults)")


# ----- the data a checkpoint was trained on ------------------------------------------------------------
def data_fingerprint(training, held_out) -> dict:
    """What a checkpoint records of the data a run reads, so that a resume can tell whether --data
    (or --val-data) was edited since: the settings hold only their paths.  `training`, `held_out`:
    a token stream (a 1-D array: pre-training's), or a list of examples (fine-tuning's: each a
    tuple of int sequences or ints -- the token ids first, then their mask, label, ...)."""
    return {"training": _fingerprint(training), "held_out": _fingerprint(held_out)}


def _fingerprint(data) -> dict:
    from .data import token_digest

    if isinstance(data, np.ndarray):   # a stream, maybe memory-mapped: token_digest reads it a block at a time
        return {"tokens": int(len(data)), "sha256": token_digest(data)}
    parts = [np.atleast_1d(np.asarray(part, dtype=np.int64)) for example in data for part in example]
    # each part after its length: ([1, 2], [3]) and ([1], [2, 3]) are other examples
    stream = np.concatenate([np.zeros(0, np.int64)] + [np.r_[len(part), part] for part in parts])
    return {"tokens": sum(len(example[0]) for example in data), "sha256": token_digest(stream)}


def weights_digest(params: dict) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and values): what a LoRA fine-tune's
    checkpoint keeps of the frozen base, which a resume reads from --base again."""
    h = hashlib.sha256()
    for name in sorted(params):
        array = np.ascontiguousarray(params[name])
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.reshape(-1).view(np.uint8))   # the bytes as they lie: no copy of a large tensor
    return h.hexdigest()


def refuse_changed_base(saved, now: str, run_name, base, restart: str) -> None:
    """A ValueError if the checkpoint's weights_digest of the frozen base (`saved`) is not the one
    of the base read now (`base`, as given): the adapters trained so far fit the weights they were
    trained on, and the steps still to come would fit others.  A checkpoint written before the
    digest existed (None) is not checked."""
    if isinstance(saved, str) and saved != now:
        raise ValueError(f"cannot resume {str(run_name)!r}: the base model (--base {str(base)!r}) has other weights "
                         f"than when the checkpoint was saved (retrained or replaced since?), and the LoRA adapters "
                         f"of the steps taken were fitted to the old ones: put the original base back, or {restart}")


def refuse_changed_data(saved, now: dict, run_name, sources: dict, restart: str) -> None:
    """A ValueError if the checkpoint's data_fingerprint (`saved`) is not the one of the data read
    now: a resume on other training text would not continue the run that was stopped, and other
    held-out text would give validation numbers that do not compare with the earlier ones.
    sources: {"training": ..., "held_out": ...}, where each part was read from, as the user names
    it ("--data 'x.txt'"; one naming "built-in" data has no file to put back); restart: what to
    do instead.  A checkpoint written before the fingerprint existed (None) is not checked."""
    if not isinstance(saved, dict):
        return
    for part, text in (("training", "the training text"), ("held_out", "the held-out text")):
        if saved.get(part) == now[part]:
            continue
        was, tokens = (saved[part] if isinstance(saved.get(part), dict) else {}).get("tokens"), now[part]["tokens"]
        count = (f"{tokens:,} tokens now, {was:,} then" if isinstance(was, int) and was != tokens
                 else f"{tokens:,} tokens, but other ones")
        # built-in data changes only with npllama's version: there is no file to put back
        put_back = "put the original text back, or " if "built-in" not in sources[part] else ""
        raise ValueError(f"cannot resume {str(run_name)!r}: {text} ({sources[part]}) has changed since the "
                         f"checkpoint ({count}), so the resumed run would not continue the one that was trained: "
                         f"{put_back}{restart}")


def paths_as_str(config, names=None) -> None:
    """Path settings (config.PATH_SETTINGS, or `names`) given as pathlib.Path (any os.PathLike)
    become the str they spell: the settings are saved as JSON, and a Python user passes Paths."""
    import os

    for name in config.PATH_SETTINGS if names is None else names:
        value = getattr(config, name, None)   # a job's settings class may lack one of them
        if isinstance(value, os.PathLike):
            setattr(config, name, os.fspath(value))


def require_files(config, names, resume: bool, file_name: str) -> None:
    """A FileNotFoundError naming the flag of the first of the settings `names` whose file does not
    exist.  On a resume the path is the one the run's settings (`file_name`) recorded absolute,
    unless given anew, and a file moved since may be given anew (moved_file): the error says so."""
    for name in names:
        path = getattr(config, name, None)
        if names_a_file(config, name, path) and not Path(path).expanduser().exists():
            flag = f"--{name.replace('_', '-')}"
            moved = (f" (the path the run's {file_name} records, unless given now): if it was moved, give its "
                     f"new path with {flag}") if resume else ""
            raise FileNotFoundError(f"{flag} {path!r} does not exist{moved}")


def moved_file(config, name: str, saved, given) -> bool:
    """Whether `given` is a new place of a file the run reads (config.RECORDED_ABSOLUTE) that is no
    longer where the settings recorded it (`saved`): a run folder moved or copied to another place
    or machine with its files.  It is no change of the run: the checkpoint's digest of the data
    (refuse_changed_data) still refuses other text."""
    return (names_a_file(config, name, saved) and names_a_file(config, name, given)
            and not Path(saved).expanduser().exists() and Path(given).expanduser().exists())


def names_a_file(config, name: str, value) -> bool:
    """Whether `value` of the setting `name` is the path of a file the run reads
    (config.RECORDED_ABSOLUTE), not the name of something built in (config.BUILT_IN_NAMES: a chat
    template's "llama2", which a file of that name does not replace)."""
    return (name in getattr(config, "RECORDED_ABSOLUTE", ()) and isinstance(value, str)
            and value not in getattr(config, "BUILT_IN_NAMES", {}).get(name, ()))


def same_path(config, name: str, a, b) -> bool:
    """`runs/x`, `./runs/x`, `/home/me/runs/x` and a symlink to it name the same file: not a change.
    A model setting (config.MODEL_SETTINGS) compares the model each loads: `runs/x` and `runs/x/model`."""
    if name not in config.PATH_SETTINGS or not isinstance(a, str) or not isinstance(b, str):
        return False
    if name in getattr(config, "MODEL_SETTINGS", ()):
        from .runs import same_model_folder

        return same_model_folder(a, b)
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _as_dict(config) -> dict:
    """The settings as JSON values (tuples become lists, as they come back from the file)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ----- the checkpoint -------------------------------------------------------------------------------
def checked_step(state: dict, state_file: Path) -> int:
    """training_state.json's step: a non-negative integer."""
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(state_file, f"must be a non-negative integer, got {step!r}", field="step")
    return step


def check_steps_reach(steps: int, step: int, checkpoint: Path) -> None:
    """A resume asked to end before the step its checkpoint has reached would save the run as finished
    and record it as shorter than it is: refused, saying which --steps would do."""
    if steps < step:
        raise ValueError(f"--steps {steps} is below the step the checkpoint in {checkpoint} has reached "
                         f"({step}): give --steps {step} (to end the run there) or more")


def restore_optimizer(optimizer, optimizer_state: dict, step: int, checkpoint: Path, wanted: dict,
                      changeable=()) -> None:
    """Load a checkpoint's optimizer state into `optimizer` (made for the restored parameters), then
    give it the settings `wanted` ({name: value} of optimizer.settings_names).

    The state must fit the parameters and have taken `step` steps.  A saved setting that differs
    from the wanted one is either changed on purpose by this resume (named in `changeable`) or a
    checkpoint that disagrees with its own settings file: then it is refused.  `lr` is always
    taken from `wanted` (the schedule sets it at every step anyway).  Every problem is a
    CheckpointError naming the file."""
    from .io.train_state import OPTIMIZER_FILE, STATE_FILE

    checkpoint = Path(checkpoint)
    try:
        optimizer.load_state_dict(optimizer_state)
    except (TypeError, ValueError) as error:
        raise CheckpointError(checkpoint, f"the optimizer state ({STATE_FILE} + {OPTIMIZER_FILE}) does "
                                          f"not fit the model: {error}") from None
    if optimizer.step_count != step:
        raise CheckpointError(checkpoint / STATE_FILE, f"is {step}, but the optimizer state has taken "
                                                       f"{optimizer.step_count} steps", field="step")
    for name, value in wanted.items():
        saved = getattr(optimizer, name)
        if name != "lr" and saved != value and name not in changeable:
            raise CheckpointError(checkpoint / OPTIMIZER_FILE, f"the optimizer state has {name} = {saved!r}, "
                                                               f"but the run's settings say {value!r}", field=name)
    optimizer.with_settings(**wanted)


def check_finite(params: dict, file: Path) -> None:
    """A checkpoint is only saved from finite weights: a NaN/Inf one was altered."""
    for name, p in params.items():
        if not np.isfinite(p).all():
            raise CheckpointError(file, "holds NaN/Inf: a checkpoint is only saved from finite weights, so "
                                        "this one was altered", tensor=name)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint's step: the resumed run writes them again.  A line a
    kill cut short is dropped too; the log is replaced atomically, so a kill now loses nothing."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a line cut short by a kill, or not ours
            continue
        line_step = record.get("step") if isinstance(record, dict) else None
        if isinstance(line_step, int) and line_step <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def record_changes(write_log, echo, step: int, changes: dict) -> None:
    """Log and say the settings a resume changed (applied from `step` on); nothing if none."""
    if changes:
        write_log({"step": step, "settings_changed": changes})
        echo("settings changed on resume (applied from this step on): "
             + ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items()))


def resume_command(job: str, run_dir) -> str:
    """The command that continues the run in `run_dir` (`job`: "train", "finetune sft"), as a shell
    takes it: the folder quoted (a space in it would make two words)."""
    import shlex

    return f"npllama {job} --out {shlex.quote(str(run_dir))} --resume"


def stop_line(stop: BaseException, step: int, run_dir, resume_command: str, why: str = "interrupted") -> str:
    """What a run stopped by `stop` says: why, where its checkpoint is, and how to continue."""
    import signal

    from .interrupts import Interrupted

    if isinstance(stop, Interrupted) and stop.signum != signal.SIGINT:
        why = f"stopped by {signal.Signals(stop.signum).name}"
    return (f"\n{why}: checkpoint saved at step {step} in {Path(run_dir) / 'checkpoint'}; "
            f"continue with `{resume_command}`")


def what_is_left(stop: KeyboardInterrupt, run_dir, resume_command: str, result: Path, finished: bool,
                 before_the_first: str):
    """The Interrupted a stop outside the steps (before the first, after the last; those in between
    stop with a checkpoint and a stop_line) raises: what the run folder holds, and what to run.
    result: where the run's result is saved, `finished` if it is there (a resume may go on past
    it); before_the_first: what to do when the run has reached no checkpoint yet."""
    import signal

    from .interrupts import Interrupted

    run_dir = Path(run_dir)
    if (run_dir / "checkpoint").is_dir():
        detail = (f"the checkpoint in {run_dir / 'checkpoint'} is as it was; continue with `{resume_command}`"
                  + (f" (the result saved last is in {result})" if finished else ""))
    elif finished:
        detail = f"the finished result is in {result}"
    else:
        detail = f"before the first step, so nothing was trained; {before_the_first}"
    return Interrupted(getattr(stop, "signum", signal.SIGINT), detail)


def already_holds_a_run(run_dir) -> ValueError:
    """The error (returned, for the caller to raise) for a new run asked into a folder holding one."""
    return ValueError(f"run folder {str(run_dir)!r} already holds a run; pass --resume to continue it, or "
                      f"choose another --out")

