"""Write files and folders so that a crash never leaves a half-written checkpoint behind.

The recipe is the classic one: write everything under a temporary name in the *same* folder
(so the final rename stays on one file system and is atomic), fsync the data, then rename it
into place and fsync the parent folder so the rename itself is durable.

    with atomic_directory("out/model") as tmp:       # tmp: a fresh empty folder beside out/model
        (tmp / "config.json").write_text(...)
        write_safetensors(tmp / "model.safetensors", params)
    # here out/model is the complete new folder; had the body raised, out/model would be untouched
    with atomic_directory("out/model", keep=lambda name, written: name != "old.bin") as tmp:
        ...                                            # the same, carrying over out/model's other files

    atomic_write_text("out/step.txt", "1200\\n")       # one file: temp file + fsync + os.replace
    with atomic_path("out/model.gguf") as tmp:       # the same, for a writer that opens the file
        tmp.write_bytes(b"GGUF")                       # itself (e.g. gguf.GGUFWriter(tmp, "llama"))

Replacing an existing folder cannot be a single rename (POSIX renames a folder only onto an
empty one), so it is three steps: old -> backup name, new -> final name, remove the backup.
At every instant the final path holds either the old or the new complete folder, except in the
short moment between the two renames; a crash exactly then leaves the old folder, complete, at
`.<name>.old-<random>` beside it (see `backup_paths`).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"


# ----- single files -----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a new name beside `path` for a writer that opens files itself (e.g. gguf's
    GGUFWriter); once the body has written and closed the file there, it is fsynced and moved
    to `path`.  On an exception the temporary file is removed and an existing `path` is left
    as it was."""
    final = Path(path)
    tmp = _fresh_name(final, _TMP_TAG)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path` for writing; on success fsync it and move it to `path`.

    On an exception the temporary file is removed and an existing `path` is left as it was.
    `mode` is "wb" or "w" (text, UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        # os.open with 0o666 lets the umask decide the permissions, as a plain open() would
        # (tempfile.mkstemp would leave the checkpoint readable by its owner only).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never a mix."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


# ----- whole folders ----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_directory(final_path, replace_lock=None, keep=None) -> Iterator[Path]:
    """Yield a new empty folder beside `final_path`; on success it becomes `final_path`.

    replace_lock: a context manager held only around the renames (and the removal of the old
    folder), e.g. npllama.runs.replacing_in_run(run_dir), so readers holding it never see the
    folder half replaced.
    keep: None, the existing folder is replaced whole; or keep(name, written) -> bool, asked once
    the body has run about each entry of the existing folder the body did not write (`written`:
    the set of names it did), whether it is carried over into the new folder.  A kept file is
    hard-linked (copied where linking fails, e.g. across file systems), a kept folder rebuilt so,
    a kept symbolic link made again as the same link: the existing folder is never written to.
    With keep, a `final_path` that is a link to a folder is saved through: the folder it links to
    is the one replaced (its relative links keep their meaning, its files are linked, not copied
    to another disk) and the link stays; without keep, the link itself is replaced.

    On success every file in it is fsynced and it is renamed into place, replacing an existing
    folder at `final_path` (old -> backup, new -> final, backup removed).  If the body (or carrying
    entries over) raises, the temporary folder is removed and `final_path` is not touched.  Missing
    parent folders are created.  A `final_path` that exists but is not a folder is refused before
    the body runs.
    """
    final = Path(final_path)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder; refusing to replace it")
    if keep is not None and final.is_symlink():
        final = final.resolve()   # the user's folder is the one linked to
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(final, _TMP_TAG)
    os.mkdir(tmp)  # mode 0o777 minus the umask: the folder ends up with ordinary permissions
    try:
        yield tmp
        _fsync_tree(tmp)
        if keep is not None and final.is_dir():
            written = frozenset(os.listdir(tmp))
            for entry in sorted(os.scandir(final), key=lambda e: e.name):
                if entry.name not in written and keep(entry.name, written):
                    _carry_over(entry, tmp / entry.name)
            _fsync_dir(tmp)
        with replace_lock if replace_lock is not None else contextlib.nullcontext():
            _move_into_place(tmp, final)
    except BaseException:
        _rmtree(tmp, ignore_errors=True)   # (a kept read-only sub-folder in it included)
        raise


@contextlib.contextmanager
def atomic_files_into(folder, replace_lock=None, stale=None) -> Iterator[Path]:
    """Yield a new empty folder inside `folder`; on success its files are fsynced and moved into
    `folder` (replacing files of the same names) under `replace_lock`, then the folder's entries
    are fsynced.  The temporary folder is removed either way; if the body raises, `folder` is
    not touched.  For a result of several files that lands beside other files, where
    atomic_directory would replace the whole folder.
    stale: None, or stale(written) -> names of files in `folder` that go with the new files
    (`written`: the set of names the body wrote), removed under the same lock once they are in."""
    folder = Path(folder)
    staging = _fresh_name(folder / "result", _TMP_TAG)
    os.mkdir(staging)
    try:
        yield staging
        _fsync_tree(staging)
        written = frozenset(os.listdir(staging))
        gone = [] if stale is None else sorted(set(stale(written)) - written)
        with replace_lock if replace_lock is not None else contextlib.nullcontext():
            for path in sorted(staging.iterdir()):
                os.replace(path, folder / path.name)
            for name in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / name)
            _fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def refuse_a_file_above(path, name: str = "path") -> None:
    """NotADirectoryError, naming `name` and the file, when a path above `path` is a file: the
    folders an output lies in are made when missing, but never where a file is."""
    path = Path(path)
    above = next((folder for folder in path.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(f"{name} {str(path)!r}: {str(above)!r} is a file, not a folder")


def refuse_replacing_inputs(final_path, inputs, name: str = "final_path") -> None:
    """ValueError if `atomic_directory(final_path)` would delete one of `inputs` (files being
    read to make the new folder): `final_path` is one of them or a folder above one.  A
    `final_path` that is a link to a folder is only unlinked, so nothing under it is deleted.
    `name`: how the caller's user calls the path (an argument, a command-line flag)."""
    final = Path(final_path)
    if final.is_symlink() or not final.exists():
        return
    replaced = final.resolve()
    for source in inputs:
        real = Path(source).resolve()   # a link inside final_path to a file elsewhere loses no data
        if real.is_relative_to(replaced):
            raise ValueError(f"{name} {str(final)!r} holds {str(source)!r}, which is being read: "
                             f"replacing the folder would delete it; choose another folder")


def backup_paths(final_path) -> list[Path]:
    """Backups of `final_path` left by an `atomic_directory` interrupted between its two renames.

    Normally empty.  If `final_path` is missing and this is not, the newest backup is the old
    complete folder: rename it back to `final_path` to recover.
    """
    final = Path(final_path)
    if not final.parent.is_dir():
        return []
    found = final.parent.glob(f".{final.name}{_OLD_TAG}*")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return
    backup = _fresh_name(final, _OLD_TAG)
    try:
        os.rename(final, backup)
        os.rename(tmp, final)
    except BaseException:   # a failure, or a Ctrl-C between the renames or just after either
        if os.path.lexists(backup) and not os.path.lexists(final):
            os.rename(backup, final)  # put the old folder back before reporting the failure
        elif os.path.lexists(backup):  # the new folder is in place: the old one goes, as below
            _fsync_dir(final.parent)
            _remove_backup(backup)
        raise
    try:
        _fsync_dir(final.parent)  # both renames are durable before the old copy goes away
    except KeyboardInterrupt:
        _fsync_dir(final.parent)
        _remove_backup(backup)
        raise
    _remove_backup(backup)


def _remove_backup(backup: Path) -> None:
    """Remove the old folder once the new one is in place, all of it even if a Ctrl-C comes meanwhile
    (half removed, backup_paths would offer it as the old complete folder)."""
    if backup.is_symlink():
        os.unlink(backup)  # final_path was a link to a folder: drop the link, not its target
        return
    try:
        _rmtree(backup)
    except KeyboardInterrupt:
        _rmtree(backup, ignore_errors=True)
        raise


def _rmtree(path: Path, ignore_errors: bool = False) -> None:
    """shutil.rmtree, also through read-only sub-folders (a user's, carried over by `keep` into the
    new folder and so also in the old one): write permission is given back to a folder whose
    entry could not be removed, then the removal is tried again."""
    def retry(function, name, error):
        error = error[1] if isinstance(error, tuple) else error   # onerror's exc_info, onexc's exception
        if not isinstance(error, PermissionError):
            if ignore_errors:
                return
            raise error
        try:
            parent = os.path.dirname(name)
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IWUSR | stat.S_IXUSR)
            function(name)
        except OSError:
            if not ignore_errors:
                raise
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


# ----- helpers ------------------------------------------------------------------------------------

def _carry_over(entry: os.DirEntry, destination: Path) -> None:
    """Make `entry` of the old folder appear at `destination` in the new one without writing to
    the old one: a link made again, a folder rebuilt (with its permissions), a file hard-linked
    (the same data, no copy) or, where the file system refuses the link, copied and fsynced."""
    if entry.is_symlink():
        os.symlink(os.readlink(entry.path), destination)
    elif entry.is_dir(follow_symlinks=False):
        os.mkdir(destination)
        for inner in os.scandir(entry.path):
            _carry_over(inner, destination / inner.name)
        shutil.copystat(entry.path, destination)
        _fsync_dir(destination)
    else:
        try:
            os.link(entry.path, destination)
        except OSError:   # another file system, a file system without hard links, a file not ours
            shutil.copy2(entry.path, destination)
            with open(destination, "rb") as f:
                os.fsync(f.fileno())


def _fresh_name(final: Path, tag: str) -> Path:
    """A hidden name beside `final` that does not exist yet, e.g. `.model.tmp-3f9a1c2b`."""
    while True:
        candidate = final.parent / f".{final.name}{tag}{secrets.token_hex(4)}"
        if not os.path.lexists(candidate):
            return candidate


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under root, folders after their contents."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            file_path = os.path.join(dirpath, name)
            if os.path.islink(file_path):
                continue
            with open(file_path, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable.  A no-op where folders cannot be
    opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
