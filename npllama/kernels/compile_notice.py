"""A one-line notice on stderr when a kernel is about to be compiled rather than loaded.

Numba compiles each kernel on its first call and keeps the machine code in a cache
(npllama/kernels/__pycache__, or $NUMBA_CACHE_DIR); later processes load it in milliseconds.
The first run after an install or an edit of a kernel file therefore spends 10-20 s compiling
before its first training step, which without a word looks like a hang.

Numba fires a "numba:compile" event only on a cache miss, just before compiling, so listening
for it is an exact test of a cold cache: nothing is printed when every kernel the run uses is
already cached, and only the kernels the run calls are ever compiled (they are all compiled
lazily, on first use).
"""
from __future__ import annotations

import sys
import threading

from numba.core import event

NOTICE = ("npllama: compiling the Numba kernels for this machine (first run after an install or "
          "an edit; about 10-30 s, cached for later runs)")


class CompileNotice(event.Listener):
    """Prints NOTICE once per process, at the first compilation of one of npllama's kernels."""

    def __init__(self, stream=None):
        self.stream = stream           # None: sys.stderr as it is when the notice is printed
        self.printed = False
        self._lock = threading.Lock()

    def on_start(self, ev) -> None:
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
        if not module.startswith("npllama."):
            return
        with self._lock:
            if self.printed:
                return
            self.printed = True
        print(NOTICE, file=self.stream or sys.stderr, flush=True)

    def on_end(self, ev) -> None:
        pass


_notice = CompileNotice()
_installed = False


def install() -> CompileNotice:
    """Listen for numba's compile events (once per process); returns the listener."""
    global _installed
    if not _installed:
        event.register("numba:compile", _notice)
        _installed = True
    return _notice
