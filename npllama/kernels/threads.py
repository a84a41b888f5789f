"""A team of threads that run one job side by side: FastDecoder's token step on every core.

    team = Team(n, helper_loop, args)    # starts n - 1 helper threads, each in helper_loop
    team.run(part, p0, p1)               # posts a job; the caller runs part(0, n, flags, *args)
    team.run_alone(part, p0, p1)         # the same job on the caller alone
    team.stop()                          # (also when the team is garbage-collected)

The calling thread is thread 0.  Each helper t runs `helper_loop(t, n, flags, *args)`, an
njit(nogil=True) function that waits for jobs with `_sync.wait_for_job` and runs its share of
each; it returns only to sleep (IDLE, after ~1-2 ms without work) or to stop (TO_QUIT).  So while
tokens follow each other, a job reaches the helpers with no Python, no GIL and no system call:
thread 0 writes the job board and every thread starts; between bursts the helpers sleep on a
semaphore and cost nothing.  Numba's own parallel loops were measured and lost here: their
thread pool takes 35-45 us to start each loop, and a token step has ~30 such loops.

Not for concurrent use: two threads calling `run` of one team at once get a RuntimeError.
"""
import os
import statistics
import sys
import threading
import weakref
from collections import deque

from ._sync import IDLE, QUIT, SLOT, flags_for, publish_job

MAX_DECODE_THREADS = 8    # a batch-1 token step is memory-bound: more threads than this only add barriers
ENV_VARIABLE = "NPLLAMA_DECODE_THREADS"


def decode_threads() -> tuple[int, bool]:
    """The default thread count of a decode step, and whether it was chosen by the user:
    ($NPLLAMA_DECODE_THREADS, True) if set, else (the cores this process may run on, at most
    MAX_DECODE_THREADS; 1 on Windows, which has no sched_yield; False)."""
    text = os.environ.get(ENV_VARIABLE)
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{ENV_VARIABLE} must be a positive int, got {text!r}")
        return value, True
    return _cores(), False


def _cores() -> int:
    if sys.platform == "win32":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # macOS
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DECODE_THREADS))


class Team:
    """n threads (the caller and n - 1 helpers) sharing `flags` (see npllama/kernels/_sync.py)."""

    def __init__(self, n: int, helper_loop, args: tuple):
        self.n, self.args, self.helper_loop = n, args, helper_loop
        self._running = threading.Lock()
        self._alone = flags_for(1)
        self._start_helpers()

    def _start_helpers(self) -> None:
        self.pid = os.getpid()
        self.flags = flags_for(self.n)
        self._state = _HelperState(self.n)
        for t in range(1, self.n):
            threading.Thread(target=_serve, args=(t, self.n, self.flags, self.helper_loop, self.args, self._state),
                             name=f"npllama-decode-{t}", daemon=True).start()
        # Stop the helpers with the team; the callback holds no reference to the team itself.
        self._finalizer = weakref.finalize(self, _stop, self.flags, self.n, self._state)

    def run(self, part, p0: int, p1: int) -> None:
        """Post a job (numbers p0, p1, read with _sync.job_param) and run thread 0's share, part(0,
        n, flags, *args); returns when every thread has finished (part's last barrier)."""
        if not self._running.acquire(blocking=False):
            raise RuntimeError("a FastDecoder was used by two threads at once; give each thread its own")
        try:
            if self.pid != os.getpid():      # a forked child: the parent's helper threads are not here
                self._finalizer.detach()
                self._start_helpers()
            if self._state.error is not None:
                raise RuntimeError(f"a decode helper thread failed: {self._state.error!r}") from self._state.error
            asleep = publish_job(self.flags, self.n, p0, p1)
            for t in range(1, self.n):
                if asleep >> t & 1:
                    self._state.wake[t].release()
            part(0, self.n, self.flags, *self.args)
            if self._state.error is not None:
                raise RuntimeError(f"a decode helper thread failed: {self._state.error!r}") from self._state.error
        finally:
            self._running.release()

    def run_alone(self, part, p0: int, p1: int) -> None:
        """The same job on the calling thread alone: part(0, 1, flags, *args)."""
        publish_job(self._alone, 1, p0, p1)
        part(0, 1, self._alone, *self.args)

    def stop(self) -> None:
        """Ask the helpers to return; they do within ~1 ms (or at once if asleep)."""
        self._finalizer()


class _HelperState:
    def __init__(self, n: int):
        self.wake = [None] + [threading.Semaphore(0) for _ in range(1, n)]
        self.error: BaseException | None = None


def _serve(t: int, n: int, flags, helper_loop, args: tuple, state: _HelperState) -> None:
    try:
        while helper_loop(t, n, flags, *args) == IDLE:
            state.wake[t].acquire()
    except BaseException as error:        # never leave thread 0 waiting at a barrier
        state.error = error
        flags[t * SLOT] = 1 << 62         # past every barrier: thread 0 finishes, then raises


def _stop(flags, n: int, state: _HelperState) -> None:
    flags[n * SLOT + QUIT] = 1
    for t in range(1, n):
        state.wake[t].release()


class FasterOfTwo:
    """Which of two ways to run a step is faster now -- the whole team, or the calling thread
    alone -- found by timing: PROBE steps of each, interleaved, then the faster way (by median)
    for the next EVERY steps, then a new comparison, because other programs come and go.  A
    team loses when other programs keep the cores busy: a thread then waits at each barrier for
    one that is not running (measured: half the speed of one thread, on a 2-core machine with
    two busy processes).  Either way gives the same numbers, so switching changes no result.

        chooser = FasterOfTwo()
        way = chooser.next_way()          # TEAM or ALONE
        ... run the step that way, timing it ...
        chooser.record(way, seconds)
    """

    TEAM, ALONE = 0, 1
    PROBE = 4
    EVERY = 128

    def __init__(self):
        self.choice = self.TEAM
        self._plan = deque([self.TEAM, self.ALONE] * self.PROBE)
        self._times: dict[int, list[float]] = {self.TEAM: [], self.ALONE: []}
        self._until_next = 0

    def next_way(self) -> int:
        return self._plan[0] if self._plan else self.choice

    def record(self, way: int, seconds: float) -> None:
        if self._plan:
            if way != self._plan[0]:
                return
            self._plan.popleft()
            self._times[way].append(seconds)
            if not self._plan:
                team, alone = (statistics.median(self._times[w]) for w in (self.TEAM, self.ALONE))
                self.choice = self.TEAM if team <= alone else self.ALONE
                self._times = {self.TEAM: [], self.ALONE: []}
                self._until_next = self.EVERY
        else:
            self._until_next -= 1
            if self._until_next <= 0:
                self._plan.extend([self.TEAM, self.ALONE] * self.PROBE)
