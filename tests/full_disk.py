"""A full disk, simulated: files opened for writing fail with ENOSPC (for tests)."""
import errno
import os


def files_on_a_full_disk(fdopen, only: str | None = None):
    """os.fdopen whose files opened for writing fail as a full disk does (ENOSPC); with `only`,
    just those whose path contains it (found through /proc/self/fd: Linux)."""
    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def opened(fd, mode="r", *args, **kwargs):
        file = fdopen(fd, mode, *args, **kwargs)
        chosen = only is None or only in os.readlink(f"/proc/self/fd/{fd}")
        return FullDisk(file) if "w" in mode and chosen else file

    return opened
