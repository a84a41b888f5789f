"""A full disk, simulated (for tests): a call that fails with ENOSPC, a file that fills up after
`room` bytes, and os.fdopen whose files opened for writing are on a full disk."""
import errno
import os


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class FillsUp:
    """A file object that takes `room` bytes and then fails, as a full disk does mid-file."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(bytes(data)[:self.room])
            disk_full()
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def files_on_a_full_disk(fdopen, only: str | None = None):
    """os.fdopen whose files opened for writing fail as a full disk does (ENOSPC); with `only`,
    just those whose path contains it (found through /proc/self/fd: Linux)."""
    def opened(fd, mode="r", *args, **kwargs):
        file = fdopen(fd, mode, *args, **kwargs)
        chosen = only is None or only in os.readlink(f"/proc/self/fd/{fd}")
        return FillsUp(file, room=0) if "w" in mode and chosen else file

    return opened
