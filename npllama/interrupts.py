"""Stop signals (Ctrl-C, SIGTERM, SIGHUP): where they may land, and what they mean.

Two tools, both no-ops outside the main thread (the only thread Python runs signal handlers in):

    with stop_signals_interrupt():        # SIGTERM and SIGHUP raise Interrupted, like Ctrl-C
        with deferred_stop_signals():     # inside: a stop signal is held ...
            optimizer.step(grads)         # ... so an update is never half done
            step += 1
        # ... and delivered here, once the block is over

`deferred_stop_signals` is how an update stays all or nothing: AdamW's and SGD's `step()` run
inside it, and so does the training loop's bookkeeping of a step (step count, log line).  A
held signal is re-raised with the handler that was in force before (`signal.raise_signal`),
so it means exactly what it would have meant a moment earlier: KeyboardInterrupt for Ctrl-C,
termination for a SIGTERM nobody handles.

`stop_signals_interrupt` is for jobs that save their state on Ctrl-C (npllama train): containers,
systemd and `timeout` send SIGTERM, and a closed terminal SIGHUP; all three then save a
checkpoint and stop like Ctrl-C.  A signal the process ignores (e.g. SIGHUP under nohup) stays
ignored.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (`signum`: SIGINT, SIGTERM or SIGHUP).  A KeyboardInterrupt, so code
    that handles Ctrl-C handles the other two the same way."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.detail = detail   # what the stop left behind, for the command's last line ("" if nothing to say)


_held: list[int] | None = None  # signals received inside deferred_stop_signals; None: not deferring


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_stop_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while the block runs; deliver them (once each, in order) after it.

    Nested blocks are one block: the signals come after the outermost ends.  A signal is
    delivered even when the block raised: the user asked to stop either way."""
    global _held
    if _held is not None or not _in_main_thread():
        yield
        return
    held: list[int] = []
    previous = {}

    def hold(signum, _frame):
        if signum not in held:
            held.append(signum)

    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN or handler is None:  # ignored (nohup) or set outside Python
            continue
        previous[signum] = handler
        signal.signal(signum, hold)
    _held = held
    try:
        yield
    finally:
        _held = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise `Interrupted` as Ctrl-C does (SIGINT raises
    it too, so every stop carries its signal number).  Handlers are restored afterwards."""
    if not _in_main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN or handler is None:
            continue
        previous[signum] = handler
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_status(interrupt: BaseException) -> int:
    """The conventional exit status after a stop signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)
