"""Run folders: where `npllama train` writes, and how other commands find a model.

    runs/<name>/
        train_config.json      the settings of the run (resume checks them)
        tokenizer.model        the SentencePiece model the run uses
        tokens.npy             the tokenized corpus (a cache; safe to delete)
        log.jsonl              one JSON object per step / evaluation
        loss.png               the loss curves (when matplotlib is installed)
        checkpoint/            the latest resumable state, replaced atomically:
            model/             a Hugging Face folder (config.json, model.safetensors, tokenizer.model)
            optimizer.safetensors, training_state.json
        model/                 the final model, a Hugging Face folder with tokenizer.model inside
        .npllama.lock          held (flock) by the one process that writes the run: a second
                               `npllama train` into the folder is refused while it lives
        .npllama-read.lock     readers hold it shared while they load; the writer holds it only
                               for the instant it replaces checkpoint/ or model/
    runs/LATEST                the path of the run written last (what `--model` defaults to)

A fine-tuning run's folder (`npllama finetune ... --out`, npllama/finetune_run.py) has the same
locks, log.jsonl and checkpoint/, with its result at the top instead of in model/.

Anything that takes `--model` accepts a run folder, a run's `model/` or `checkpoint/`, or any
Hugging Face LLaMA folder (config.json + model.safetensors).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from .config import attends_causally
from .io.atomic import _OLD_TAG, _TMP_TAG, atomic_write_text, backup_paths
from .io.errors import CheckpointError
from .io.hf import OBJECTIVE_FIELD, objective_of

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not protected against a second writer
    fcntl = None

DEFAULT_RUNS_DIR = Path("runs")
LATEST_FILE = "LATEST"
TOKENIZER_FILE = "tokenizer.model"
WRITER_LOCK_FILE = ".npllama.lock"
READER_LOCK_FILE = ".npllama-read.lock"


def files_besides_locks(run_dir) -> list[str]:
    """The names in a run folder other than npllama's lock files and the temporaries and backups a
    killed npllama leaves (a folder a start was killed in is still npllama's), sorted."""
    return sorted(p.name for p in Path(run_dir).iterdir()
                  if p.name not in (WRITER_LOCK_FILE, READER_LOCK_FILE) and not _on_the_way(p.name)
                  and not p.name.startswith((f".checkpoint{_OLD_TAG}", f".model{_OLD_TAG}")))


def _on_the_way(name: str) -> bool:
    """A file npllama writes on the way to another: an atomic write's temporary, a tokenizer's
    training files, the token cache's partial file."""
    return (name.startswith(".") and _TMP_TAG in name) or name.startswith(".tokenizer-training.") \
        or (name.startswith("tokens.npy") and name.endswith(".tmp"))


def not_empty(run_dir, held: list[str], why: str = "") -> ValueError:
    """The refusal of an --out folder holding `held` (files of the user's, or of another job)."""
    return ValueError(f"--out {str(run_dir)!r} is not empty ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
                      f"{why}: choose a new or empty folder, so nothing in it is overwritten")


class RunInUseError(RuntimeError):
    """Another process is writing this run folder (it holds the folder's lock)."""


# ----- locks --------------------------------------------------------------------------------------
# flock locks belong to an open file and vanish with the process that holds them (a SIGKILL
# included), so a crashed run never leaves a folder locked.  The lock files themselves stay: removing
# one while another process opens it would let two processes lock two different files.

@contextlib.contextmanager
def writing_run(run_dir) -> "contextlib.AbstractContextManager[None]":
    """Hold the run folder's writer lock (creating the folder) for the block, or raise RunInUseError
    at once if another process holds it.  Every process that writes a run takes this first."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                raise RunInUseError(f"run folder {str(run_dir)!r} is being written by another process "
                                    f"(pid {holder}); wait for it to finish or stop it, or choose another "
                                    f"--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _reader_lock(run_dir, exclusive: bool):
    """The lock that separates a writer's folder replace from readers' loads (see the layout above).
    Readers that cannot open it (a read-only folder, an old run) read without it."""
    if fcntl is None:
        yield
        return
    path = Path(run_dir) / READER_LOCK_FILE
    try:
        fd = os.open(path, (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY, 0o666)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def replacing_in_run(run_dir):
    """For the writer: held around the renames that replace checkpoint/ or model/."""
    return _reader_lock(run_dir, exclusive=True)


def reading_run(path):
    """For readers: held while loading from a run folder (or a folder inside one), so a writer's
    replace never happens half-way through the load."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / WRITER_LOCK_FILE).is_file():
            return _reader_lock(candidate, exclusive=False)
    return contextlib.nullcontext()


def _writer_is_active(run_dir) -> bool:
    """True if some process holds the run's writer lock right now."""
    path = Path(run_dir) / WRITER_LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # cannot tell: behave as if a writer were there (do not rename anything)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def runs_dir() -> Path:
    """Where named runs live: $NPLLAMA_RUNS, else DEFAULT_RUNS_DIR."""
    return Path(os.environ.get("NPLLAMA_RUNS", DEFAULT_RUNS_DIR))


def mark_latest(run_dir: Path) -> None:
    """Record run_dir as the run `--model` defaults to."""
    base = runs_dir()
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base / LATEST_FILE, str(Path(run_dir).resolve()) + "\n")


def latest_run() -> Path:
    """The run folder written last, or a FileNotFoundError that says how to make one."""
    from .io.reading import read_text

    marker = runs_dir() / LATEST_FILE
    if marker.is_file():
        path = Path(read_text(marker, max_bytes=64 * 1024).strip())  # a path: a few hundred bytes
        if path.is_dir():
            return path
    # the fine-tunes name the model they start from --base, the other commands --model
    raise FileNotFoundError(f"no trained model found ({marker} names none); run `npllama train` first, or "
                            f"name a model folder: --model DIR (--base DIR for `npllama finetune`)")


def recover_checkpoint(run_dir: Path, rename: bool = True) -> Path | None:
    """The run's checkpoint folder, or None when it has none.  When checkpoint/ is missing because
    a replace was interrupted between its two renames (a crash, or a writer right now), the
    backup of the old one is the checkpoint: with `rename` it is moved back to checkpoint/ (only
    the run's writer, holding `writing_run`, may do that); without, a reader gets the backup's
    path and nothing is renamed."""
    checkpoint = Path(run_dir) / "checkpoint"
    if not checkpoint.exists():
        backups = backup_paths(checkpoint)
        if backups and rename:
            os.replace(backups[-1], checkpoint)
        elif backups:
            checkpoint = backups[-1]
    return checkpoint if (checkpoint / "training_state.json").is_file() else None


def checkpoint_to_resume(run_dir: Path) -> Path | None:
    """For `--resume`: the run's checkpoint (recovered from a backup if need be), or None when the
    run never reached one.  Anything else -- a checkpoint/ that is not a complete checkpoint, a
    final model/ without its checkpoint -- is damage, and raises CheckpointError saying what is
    wrong rather than letting the run start again from step 0."""
    run_dir = Path(run_dir)
    checkpoint = recover_checkpoint(run_dir)
    if checkpoint is not None:
        return checkpoint
    folder = run_dir / "checkpoint"
    if folder.is_symlink() or folder.exists():
        if not folder.is_dir():
            raise CheckpointError(folder, "is not a folder: the run's checkpoint is damaged; "
                                          "nothing was changed (restore it, or start a new run with another --out)")
        raise CheckpointError(folder / "training_state.json",
                              "is missing: the run's checkpoint is damaged or incomplete; nothing was "
                              "changed (restore it, or start a new run with another --out)")
    if (run_dir / "model").exists():
        raise CheckpointError(folder, "is missing although the run has a final model/: the checkpoint "
                                      "was deleted, so the run cannot continue; nothing was changed")
    return None


def remove_stale_temporaries(run_dir: Path, recover: bool = True) -> list[Path]:
    """Delete what interrupted writes left in a run folder; returns what was removed.

    A kill during an atomic write leaves hidden temporaries beside the file or folder being
    replaced (`.checkpoint.tmp-*`, `.log.jsonl.tmp-*`, the tokenizer's `.tokenizer-training.*`,
    data.py's `tokens.npy*.tmp`) and, if it came between the two renames of a folder replacement,
    the old folder under `.<name>.old-*`.  Such a backup is removed only once the folder it
    backs up exists again (else `recover_checkpoint` restores it first).  Only the process that
    owns the run (`npllama train --resume`) may call this: another writer's temporaries would go too.
    recover: restore a checkpoint from its backup first (a resume); a new start leaves backups be.
    """
    run_dir = Path(run_dir)
    if recover:
        recover_checkpoint(run_dir)
    removed = []
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        name = path.name
        stale = _on_the_way(name)
        for final in ("checkpoint", "model"):
            if name.startswith(f".{final}{_OLD_TAG}") and (run_dir / final).is_dir():
                stale = True
        if stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def refuse_a_model_file(path, flag: str | None = None) -> None:
    """A FileNotFoundError when `path` is a file: it may well hold a model (a llama2.c checkpoint,
    a GGUF), only not as a folder, so the message says what the file is and how to convert it.
    The one check of every option that names a model folder (--model, --base, --init-from);
    flag, when given, opens the message, naming the path as given ("~/m.bin")."""
    given, path = str(path), Path(path).expanduser()
    if path.is_file():
        from .io.describe import describe_path

        named = f"{flag} {given!r}" if flag else repr(given)
        raise FileNotFoundError(f"{named} is a file, not a model folder: it {describe_path(path)}")


def resolve_model_dir(path=None) -> Path:
    """The Hugging Face folder to load for `path` (None: the latest run's model)."""
    path = latest_run() if path is None else Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    refuse_a_model_file(path)
    candidates = _model_candidates(path)
    if not (path / "model" / "config.json").is_file():
        if _writer_is_active(path):  # never rename under a writer: read the backup where it lies
            checkpoint = recover_checkpoint(path, rename=False)
            if checkpoint is not None:
                candidates.append(checkpoint / "model")
        else:
            recover_checkpoint(path)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    from .io.describe import describe_path

    # what the folder is says what was expected instead (a Hugging Face folder, a run folder)
    raise FileNotFoundError(f"{str(path)!r} holds no model: it {describe_path(path)}")


def _model_candidates(path: Path) -> list[Path]:
    """Where a model folder named `path` may hold its model, in the order resolve_model_dir tries them."""
    candidates = [path, path / "model", path / "checkpoint" / "model"]
    if (path / "training_state.json").is_file():  # a run's checkpoint/ folder
        candidates.insert(0, path / "model")
    return candidates


def same_model_folder(a, b) -> bool:
    """Whether the paths `a` and `b` name one model: `runs/x` and `runs/x/model` do (resolve_model_dir
    loads the second for the first), as do respellings and symlinks.  Nothing is recovered or renamed."""
    def folder(path):
        path = Path(path).expanduser()
        found = next((c for c in _model_candidates(path) if (c / "config.json").is_file()), path)
        return found.resolve()
    return folder(a) == folder(b)


def find_tokenizer(model_dir: Path) -> Path:
    """tokenizer.model inside the model folder, or in the run folder around it."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / TOKENIZER_FILE, model_dir.parent / TOKENIZER_FILE,
                      model_dir.parent.parent / TOKENIZER_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {TOKENIZER_FILE} found in or beside {str(model_dir)!r}; "
                            f"a SentencePiece tokenizer is needed to turn text into tokens")


def load_tokenizer(model_dir: Path):
    """The tokenizer of a model folder: a SentencePiece tokenizer.model in or beside it, else a
    Hugging Face tokenizer.json in it (npllama.tokenizer_json, needs the `tokenizers` library); the
    tokenizer.json also when it holds tokens added beyond tokenizer.model, as transformers reads it."""
    from .tokenizer import Tokenizer
    from .tokenizer_json import JSON_FILE, JsonTokenizer

    try:
        tokenizer = Tokenizer(find_tokenizer(model_dir))
    except FileNotFoundError:
        if (Path(model_dir) / JSON_FILE).is_file():
            return JsonTokenizer(model_dir)
        raise FileNotFoundError(f"no {TOKENIZER_FILE} or {JSON_FILE} found in or beside {str(model_dir)!r}; "
                                f"a tokenizer is needed to turn text into tokens") from None
    added = _tokens_added_beyond(Path(model_dir) / JSON_FILE, tokenizer.vocab_size)
    if added:
        # tokenizer.add_special_tokens() (ChatML's <|im_start|>, say) writes the new tokens into
        # tokenizer.json only; transformers reads that file, so the model was trained on their ids
        try:
            import tokenizers  # noqa: F401
        except ImportError:
            raise ValueError(f"{str(Path(model_dir) / JSON_FILE)!r} has {len(added)} token(s) that "
                             f"{TOKENIZER_FILE} lacks ({', '.join(added[:4])}{', ...' if len(added) > 4 else ''}): "
                             f"install the `tokenizers` library (pip install 'npllama[hf]') to read it") from None
        return JsonTokenizer(model_dir)
    return tokenizer


def refuse_tokens_added_beyond(model_dir, tokenizer) -> None:
    """A ValueError when the folder's tokenizer.json holds tokens its tokenizer.model lacks: a job
    that can use only the SentencePiece model (a GGUF's vocabulary) would drop them."""
    from .tokenizer_json import JSON_FILE

    added = _tokens_added_beyond(Path(model_dir) / JSON_FILE, tokenizer.vocab_size)
    if added:
        raise ValueError(f"{str(Path(model_dir) / JSON_FILE)!r} has {len(added)} token(s) that {TOKENIZER_FILE} "
                         f"lacks ({', '.join(added[:4])}{', ...' if len(added) > 4 else ''}); the model was trained "
                         f"with them, and {TOKENIZER_FILE} alone cannot carry them")


def _tokens_added_beyond(json_file: Path, vocab_size: int) -> list[str]:
    """The added tokens of a tokenizer.json whose ids a SentencePiece model of vocab_size pieces lacks."""
    from .io.reading import read_json

    if not json_file.is_file():
        return []
    try:
        added = read_json(json_file, expect=dict).get("added_tokens") or []
    except (OSError, ValueError):
        return []     # not a tokenizer.json transformers could read either: tokenizer.model decides
    if not isinstance(added, list):
        return []
    return [t.get("content", "?") for t in added if isinstance(t, dict) and isinstance(t.get("id"), int)
            and t["id"] >= vocab_size]


def _model_config(path) -> tuple[Path, dict]:
    """(config.json's path, its fields) of the model of `--model path` (None: the latest run)."""
    from .io.reading import read_json

    with reading_model_dir(path) as model_dir:
        config_file = model_dir / "config.json"
        return config_file, read_json(config_file, expect=dict, error=CheckpointError)


def require_a_language_model(path, flag: str, job: str, causal: bool = True,
                             for_masked_lm: str = "train one with --objective causal (the default)") -> None:
    """ValueError unless the model of `path` (None: the latest run) is a language model `job` can
    start from: not a classifier (`npllama finetune classify`'s LlamaForSequenceClassification
    folder) and, with `causal`, not a masked-LM model (`npllama train --objective mlm`), the refusal
    then ending with `for_masked_lm`, what to do instead."""
    config_file, config = _model_config(path)
    refuse_other_than_a_language_model(config_file, config, f"{flag} " + (
        "the latest run" if path is None else repr(str(path))), job, causal, for_masked_lm,
        "DIR" if path is None else path)


def refuse_other_than_a_language_model(config_file, config: dict, shown: str, job: str, causal: bool,
                                       for_masked_lm: str, path) -> None:
    """require_a_language_model's refusals, for a folder already found: `config` is the fields of its
    `config_file`, `shown` how the message names it (e.g. "--model 'runs/x/model'"), `path` how the
    advice to classify with it does."""
    if is_a_classifier_config(config):
        raise ValueError(f"{shown} is a classification model (LlamaForSequenceClassification, e.g. from "
                         f"`npllama finetune classify`), not a language model: use it with `npllama classify "
                         f"--model {path}`; {job} needs a language model such as a run of `npllama train`")
    if causal and not attends_causally(objective_of(config, config_file)):
        raise ValueError(f"{shown} is a masked-LM model (bidirectional, {OBJECTIVE_FIELD} \"mlm\" in its "
                         f"config.json: from `npllama train --objective mlm` or `npllama finetune sop`): "
                         f"{job} needs a causal model; {for_masked_lm}")


def require_a_classifier(path, flag: str = "--model") -> None:
    """ValueError unless the model of `path` (None: the latest run) may be a classifier: one whose
    config.json names a language model (LlamaForCausalLM, as `npllama train` saves it) is refused,
    naming the classifier run in the runs folder finished last, if any, to give instead.  (The latest
    run is always a `train` run: a fine-tune does not become it.)  A folder naming neither
    architecture is left to the loader, which looks for score.weight."""
    import shlex

    config_file, config = _model_config(path)
    if not _architecture_is(config, "LlamaForCausalLM") or is_a_classifier_config(config):
        return
    shown = (f"the latest run {str(latest_run())!r} (what {flag} defaults to)" if path is None else
             f"{flag} {str(path)!r}")
    newest = newest_classifier_run()
    if newest is None:
        instead = (f"make one from it with `npllama finetune classify --base {shlex.quote(str(config_file.parent))} "
                   f"--out DIR` and give {flag} DIR")
    elif (newest / "adapter_config.json").is_file():   # a LoRA one: the base it names, and the adapter
        instead = (f"the classifier run finished last in {str(runs_dir())!r} is a LoRA adapter: give "
                   f"--adapter {shlex.quote(str(newest))} (on the base it names)")
    else:
        instead = f"the classifier run finished last in {str(runs_dir())!r}: {flag} {shlex.quote(str(newest))}"
    raise ValueError(f"{shown} is a language model (LlamaForCausalLM, e.g. from `npllama train`: `npllama generate` "
                     f"runs it), not a classifier (no score.weight head, which `npllama finetune classify --out DIR` "
                     f"trains); {instead}")


def newest_classifier_run() -> Path | None:
    """The folder in the runs folder (runs/, $NPLLAMA_RUNS) that `npllama finetune classify` saved a
    classifier (or a LoRA adapter of one) in last, or None."""
    from .finetune import INFO_FILE
    from .finetune_run import settings_file

    try:
        finished = [folder for folder in runs_dir().iterdir()
                    if (folder / settings_file("classify")).is_file() and (folder / INFO_FILE).is_file()]
    except OSError:   # no runs folder (yet), or one that cannot be listed
        return None
    return max(finished, key=lambda folder: (folder / INFO_FILE).stat().st_mtime, default=None)


CLASSIFIER_ARCHITECTURE = "LlamaForSequenceClassification"


def is_a_classifier_config(config: dict) -> bool:
    """Whether config.json's fields name a sequence classifier (LlamaForSequenceClassification)."""
    return _architecture_is(config, CLASSIFIER_ARCHITECTURE)


def _architecture_is(config: dict, name: str) -> bool:
    architectures = config.get("architectures") or []
    return isinstance(architectures, list) and name in architectures


def require_next_token_model(model, job: str) -> None:
    """TypeError unless `model` is a model (a Llama, or an object with its config and forward);
    ValueError unless it can predict next tokens for `job` (e.g. "generate"):
    not a masked-LM model (model.objective "mlm": `npllama train --objective mlm`, read from its
    config.json by Llama.from_pretrained), and without a sequence-classification LoRA adapter
    attached.  The one check that generate, perplexity and multiple-choice scoring share."""
    from .lora import check_causal_lm

    if not hasattr(model, "config") or not callable(getattr(model, "forward", None)):   # None, a folder's path
        raise TypeError(f"model must be a Llama (or an object with its config and forward), got "
                        f"{type(model).__name__}; load a folder with Llama.from_pretrained(path)")
    # the objective a Llama has; a stand-in with forward and config alone (a user's wrapper) is a causal LM
    if not attends_causally(getattr(model, "objective", "causal")):
        raise ValueError(f"{job} predicts next tokens, but this model is a masked-LM model (objective \"mlm\", "
                         f"{OBJECTIVE_FIELD} in its config.json: trained without the causal mask, by `npllama train "
                         f"--objective mlm` or `npllama finetune sop`), whose outputs are not next-token predictions; use a causal "
                         f"model (`npllama train`, --objective causal, the default), or fine-tune this one as a "
                         f"classifier (`npllama finetune classify --base DIR`)")
    check_causal_lm(model)      # not with a sequence-classification adapter attached


@contextlib.contextmanager
def reading_model_dir(path=None):
    """The model folder of `--model path` (None: the latest run), held under its run's reader lock
    for the block: resolved and loaded while no writer can replace it."""
    path = latest_run() if path is None else Path(path).expanduser()
    with reading_run(path):
        yield resolve_model_dir(path)


def load_model_and_tokenizer(path=None, dtype=None):
    """(model, tokenizer, model_dir) for `--model path` (None: the latest run)."""
    import numpy as np

    from .model import Llama

    with reading_model_dir(path) as model_dir:
        model = Llama.from_pretrained(model_dir, dtype=dtype or np.float32)
        tokenizer = load_tokenizer(model_dir)
    tokenizer.check_vocab(model.config.vocab_size)
    return model, tokenizer, model_dir


def note_attention_dropout(attention_dropout: float, source: str, echo, kept: bool = True) -> None:
    """A training job's word when `source` asks for dropout in attention: npllama's attention has
    none, so the run trains without it.  kept: the value goes on into the config.json saved, for
    trainers that apply it (a model folder's); else the new model's records 0.0 (a --config's)."""
    if attention_dropout:
        echo(f"note: {source} sets attention_dropout {attention_dropout}, but npllama's attention has no "
             f"dropout: this run trains without it"
             + ("" if kept else ", and the model's config.json records attention_dropout 0.0"))


def require_job_arguments(name: str, settings, settings_type: type, resume, echo) -> None:
    """A job's Python entry point (train, classify, sft, sentence_order), its arguments checked
    before anything is read or written: a dict of settings would fail later as an AttributeError
    deep inside, and resume="no" is truthy, so it would resume a run it was told not to."""
    if not isinstance(settings, settings_type):
        type_name = settings_type.__name__
        # an SFTConfig (its first letters spelled out), a SentenceOrderConfig
        spelled_out = type_name[:2].isupper() and type_name[0] in "FHLMNRSX"
        article = "an" if type_name[0] in "AEIOU" or spelled_out else "a"
        raise TypeError(f"{name} must be {article} {type_name}, got "
                        f"{'None' if settings is None else type(settings).__name__}"
                        + (f"; build one from a dict with {type_name}(**settings)"
                           if isinstance(settings, dict) else ""))
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be True or False, got {resume!r:.40}")
    if not callable(echo):
        raise TypeError(f"echo must be a function taking one str (such as print), got {echo!r:.40}")
