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
import time
import weakref
from collections import deque

import numpy as np
from numba import config as numba_config

from ..budget import check_threads, max_threads
from ._sync import (IDLE, ask_helpers_to_quit, flags_for, helpers_still_in_job, let_through, publish_job,
                    waited_share)

BLAS_SPIN_SECONDS = 0.15  # how long BLAS's threads keep a core busy after a call (measured: ~0.1 s)
MAX_DECODE_THREADS = 8    # a batch-1 token step is memory-bound: more threads than this only add barriers
ENV_VARIABLE = "NPLLAMA_DECODE_THREADS"


def decode_threads() -> tuple[int, bool]:
    """The default thread count of a decode step, and whether it was chosen by the user:
    ($NPLLAMA_DECODE_THREADS, True) if set (at most NPLLAMA_MAX_THREADS, npllama/budget.py), else
    (the cores this process may run on, at most MAX_DECODE_THREADS and NPLLAMA_MAX_THREADS; 1 on
    Windows, which has no sched_yield; False)."""
    text = os.environ.get(ENV_VARIABLE)
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{ENV_VARIABLE} must be a positive int, got {text!r}")
        check_threads(ENV_VARIABLE, value)
        return value, True
    if numba_config.DISABLE_JIT:      # the kernels run as Python: threads would take turns on the GIL
        return 1, False
    return min(usable_cores(), max_threads()), False   # a default within the budget, never refused


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset`, a container's cpuset), at
    most MAX_DECODE_THREADS; 1 on Windows."""
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
        self._waited_before = np.zeros(self.n, dtype=np.int64)
        self._state = _HelperState(self.n)
        for t in range(1, self.n):
            threading.Thread(target=_serve, args=(t, self.n, self.flags, self.helper_loop, self.args, self._state),
                             name=f"npllama-decode-{t}", daemon=True).start()
        # Stop the helpers with the team; the callback holds no reference to the team itself.
        self._finalizer = weakref.finalize(self, _stop, self.flags, self.n, self._state)

    def run(self, part, p0: int, p1: int) -> float:
        """Post a job (numbers p0, p1, read with _sync.job_param) and run thread 0's share, part(0,
        n, flags, *args); returns when every thread has finished (part's last barrier), with the
        largest share of the job's time one thread spent waiting at barriers (_sync.waited_share)."""
        if not self._running.acquire(blocking=False):
            raise RuntimeError("a FastDecoder was used by two threads at once; give each thread its own")
        try:
            if self.pid != os.getpid():      # a forked child: the parent's helper threads are not here
                self._finalizer.detach()
                self._start_helpers()
            self._raise_if_a_helper_failed()
            asleep = 0
            try:
                asleep = publish_job(self.flags, self.n, p0, p1)
                self._wake(asleep)
                part(0, self.n, self.flags, *self.args)
            except BaseException:
                # Thread 0's share did not run (e.g. Ctrl-C between posting and running it): let
                # the helpers through this job's barriers, so that none is left waiting for it --
                # spinning for good -- and the next job starts above every count.  What they
                # wrote is thrown away with the step that raised.
                self._abandon(asleep)
                raise
            self._raise_if_a_helper_failed()
            return waited_share(self.flags, self.n, self._waited_before)
        finally:
            self._running.release()

    def _wake(self, asleep: int) -> None:
        """Release the helpers whose bits are set in `asleep` (publish_job's mask)."""
        for t in range(1, self.n):
            if asleep >> t & 1:
                self._state.wake[t].release()

    def _raise_if_a_helper_failed(self) -> None:
        if self._state.error is not None:
            raise RuntimeError(f"a decode helper thread failed: {self._state.error!r}") from self._state.error

    def _abandon(self, asleep: int) -> None:
        flags, n = self.flags, self.n
        let_through(flags, 0)
        self._wake(asleep)                        # again, in case the interruption came first
        while helpers_still_in_job(flags, n) and self._state.error is None:
            time.sleep(0.0001)                    # until no helper still writes the shared buffers

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
        let_through(flags, t)               # thread 0 finishes the job, then raises


def _stop(flags, n: int, state: _HelperState) -> None:
    ask_helpers_to_quit(flags, n)
    for t in range(1, n):
        state.wake[t].release()


class TeamOrAlone:
    """Whether the next step should run on the whole team or on the calling thread alone.

    A team is slower than one thread when other programs keep the cores busy: a thread then
    waits at each barrier for one that is not running (measured: half the speed of one thread,
    on a 2-core machine with two busy processes; for ~0.1 s after a BLAS call, a prompt's
    prefill, BLAS's own idle threads can be enough).  That shows as waiting: each team step
    reports the largest share of its time one thread spent at barriers.  While the median over
    WINDOW steps stays below `suspect`, the team is kept and nothing else is tried: on a quiet
    machine, no step is spent on the slower way.  Above it, PROBE steps of each way, interleaved,
    decide by their median times.  After a comparison the next one waits GAP steps, twice as
    many each time (FIRST_GAP .. MAX_GAP) while the choice holds, FIRST_GAP again when it
    changed; while alone, a comparison comes every GAP steps (other programs come and go).
    Either way gives the same numbers, so switching changes no result.

        chooser = TeamOrAlone(threads)
        way = chooser.next_way()                       # TEAM or ALONE
        ... run the step that way, timing it ...
        chooser.record(way, seconds, waited_share)     # waited_share: 0..1, 0 when alone
    """

    TEAM, ALONE = 0, 1
    WINDOW, PROBE = 8, 4
    FIRST_GAP, MAX_GAP = 32, 512

    def __init__(self, threads: int):
        # With n threads sharing the work evenly, the team is slower than one thread once a
        # thread waits more than 1 - 1/n of the time; suspect it well before that.
        self.suspect = 0.5 * (1 - 1 / threads)
        self.choice = self.TEAM
        self._plan: deque = deque()
        self._times: dict[int, list[float]] = {self.TEAM: [], self.ALONE: []}
        self._waits: deque = deque(maxlen=self.WINDOW)
        self._gap = self.FIRST_GAP // 2      # the first comparison makes it FIRST_GAP either way
        self._until_next = 0
        self._alone_until = 0.0

    def next_way(self) -> int:
        if self._alone_until and time.perf_counter() < self._alone_until:
            return self.ALONE
        return self._plan[0] if self._plan else self.choice

    def after_blas(self, seconds: float | None = None) -> None:
        """A BLAS call just ended: run alone for the next `seconds` (default BLAS_SPIN_SECONDS),
        while BLAS's idle threads keep spinning on the cores (OpenBLAS: 2^28 cycles, ~0.1 s;
        MKL: 0.2 s by default)."""
        self._alone_until = time.perf_counter() + (BLAS_SPIN_SECONDS if seconds is None else seconds)

    def record(self, way: int, seconds: float, waited_share: float = 0.0) -> None:
        if self._alone_until:
            if time.perf_counter() < self._alone_until:
                return                      # not a measurement of either way
            self._alone_until = 0.0
        if self._plan:
            if way == self._plan[0]:
                self._plan.popleft()
                self._times[way].append(seconds)
                if not self._plan:
                    self._decide()
            return
        self._until_next -= 1
        if self.choice == self.TEAM:
            self._waits.append(waited_share)
            if (self._until_next <= 0 and len(self._waits) == self.WINDOW
                    and statistics.median(self._waits) > self.suspect):
                self._plan.extend([self.TEAM, self.ALONE] * self.PROBE)
        elif self._until_next <= 0:
            self._plan.extend([self.TEAM, self.ALONE] * self.PROBE)

    def _decide(self) -> None:
        team, alone = (statistics.median(self._times[w]) for w in (self.TEAM, self.ALONE))
        choice = self.TEAM if team <= alone else self.ALONE
        self._gap = self.FIRST_GAP if choice != self.choice else min(2 * self._gap, self.MAX_GAP)
        self.choice, self._until_next = choice, self._gap
        self._times = {self.TEAM: [], self.ALONE: []}
        self._waits.clear()
