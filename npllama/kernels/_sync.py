"""What a team of threads running numba code side by side needs: barriers and a job board.

FastDecoder's token step runs on several threads (npllama/kernels/threads.py starts them): the
calling thread and helpers that live inside a numba loop, waiting for the next token's job.
Numba has no atomics, so the few this needs are LLVM instructions: `load_acquire`,
`store_release` and `exchange` (sequentially consistent) on an int64 array, `flags`.

flags holds one 64-byte line (SLOT int64s) per use, so threads don't share a cache line:
  line t        (t < n)  thread t's COUNT, the number of the last barrier it reached, and WAITED,
                         the CPU cycles it has spent waiting at barriers (all jobs together)
  line n                 the job board: JOB (the job's number), QUIT, BASE (the barrier count
                         the job's barriers start above), STARTED (the cycle counter when it was
                         posted) and PARAMS (the job's own numbers)
  line n + t    (t >= 1) helper t's IDLE_FLAG (1 while it sleeps outside numba, see wait_for_job)
                         SEEN, the number of the last job it took, and DONE, of the last it finished
`flags_for(n)` makes it.

barrier(flags, t, n, epoch): thread t says it reached barrier number `epoch` and waits until all
n have.  Barrier counts only ever grow.  Waiting spins with the CPU's pause hint for a few
microseconds, then gives its core away (sched_yield) on every further check: when another
program holds a core, the thread we wait for may not be running, and spinning would only keep it
off the CPU (OpenMP's spinning barrier was measured 5-50x slower in that case:
benchmarks/README.md).
"""
import platform
import sys
import threading
import time

from llvmlite import ir
from numba import config as numba_config
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array

import numpy as np

SLOT = 8                       # int64s per line: 64 bytes, one cache line
COUNT, WAITED = 0, 1                      # offsets in a thread's barrier line
JOB, QUIT, BASE, STARTED, PARAMS = 0, 1, 2, 3, 4     # offsets in the job board's line
IDLE_FLAG, SEEN, DONE = 0, 1, 2          # offsets in a helper's line
SPINS_BEFORE_YIELD = 256       # pause instructions: ~1-10 us (a pause is 10-140 cycles by CPU)
YIELDS_BEFORE_IDLE = 2000      # then ~1-2 ms of sched_yield before a helper sleeps outside numba
IDLE, TO_QUIT = -1, -2         # what wait_for_job returns when there is no job
CAN_YIELD = sys.platform != "win32"    # sched_yield is POSIX


def _item_pointer(context, builder, sig, args):
    array_type = sig.args[0]
    array = make_array(array_type)(context, builder, args[0])
    index = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, array_type, array, [index], wraparound=False)


def _flags_and_index(flags, index) -> bool:
    return isinstance(flags, types.Array) and flags.dtype == types.int64 and isinstance(index, types.Integer)


@intrinsic
def load_acquire(typingctx, flags, index):
    """flags[index] (an int64 array), read with acquire ordering."""
    if not _flags_and_index(flags, index):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_item_pointer(context, builder, sig, args), "acquire", 8)
    return types.int64(flags, index), codegen


@intrinsic
def store_release(typingctx, flags, index, value):
    """flags[index] = value (an int64 array), written with release ordering."""
    if not (_flags_and_index(flags, index) and value == types.int64):
        return None

    def codegen(context, builder, sig, args):
        builder.store_atomic(args[2], _item_pointer(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()
    return types.void(flags, index, value), codegen


def _read_modify_write(name: str, operation: str, doc: str):
    """An intrinsic old = flags[index]; flags[index] = operation(old, value), one sequentially
    consistent step (LLVM's atomicrmw); returns old."""
    def typer(typingctx, flags, index, value):
        if not (_flags_and_index(flags, index) and value == types.int64):
            return None

        def codegen(context, builder, sig, args):
            return builder.atomic_rmw(operation, _item_pointer(context, builder, sig, args), args[2], "seq_cst")
        return types.int64(flags, index, value), codegen
    typer.__name__, typer.__qualname__, typer.__doc__ = name, name, doc
    return intrinsic(typer)


exchange = _read_modify_write("exchange", "xchg", "old = flags[index]; flags[index] = value, as one "
                              "sequentially consistent step; returns old.")
fetch_add = _read_modify_write("fetch_add", "add", "old = flags[index]; flags[index] += value, as one "
                               "sequentially consistent step; returns old (with value 0: a sequentially "
                               "consistent read).")


_PAUSE = {"x86_64": ("llvm.x86.sse2.pause", None), "AMD64": ("llvm.x86.sse2.pause", None),
          "aarch64": ("llvm.aarch64.hint", 1), "arm64": ("llvm.aarch64.hint", 1)}.get(platform.machine())


@intrinsic
def cpu_relax(typingctx):
    """The CPU's spin-wait hint (x86 pause, ARM yield); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if _PAUSE is not None:
            name, hint = _PAUSE
            arguments = [] if hint is None else [ir.Constant(ir.IntType(32), hint)]
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [a.type for a in arguments]), name)
            builder.call(function, arguments)
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): let the OS run another thread on this core."""
    def codegen(context, builder, sig, args):
        if CAN_YIELD:
            function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                      "sched_yield")
            builder.call(function, [])
        return context.get_dummy_value()
    return types.void(), codegen


_HAS_CYCLE_COUNTER = platform.machine() in ("x86_64", "AMD64")   # rdtsc; ARM's may trap in user space


@intrinsic
def cycles(typingctx):
    """The CPU's time-stamp counter (x86: constant rate, a few GHz); 0 where there is none."""
    def codegen(context, builder, sig, args):
        if not _HAS_CYCLE_COUNTER:
            return ir.Constant(ir.IntType(64), 0)
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                                  "llvm.readcyclecounter")
        return builder.call(function, [])
    return types.int64(), codegen


if numba_config.DISABLE_JIT:
    # NUMBA_DISABLE_JIT=1 runs the kernels as Python (to step through them): the same operations
    # on NumPy arrays, made indivisible by a lock (the GIL alone doesn't make a read-modify-write
    # one step), waiting by giving the GIL away.
    _python_atomics = threading.Lock()

    def load_acquire(flags, index):  # noqa: F811
        return flags[index]

    def store_release(flags, index, value):  # noqa: F811
        flags[index] = value

    def exchange(flags, index, value):  # noqa: F811
        with _python_atomics:
            old = flags[index]
            flags[index] = value
        return old

    def fetch_add(flags, index, value):  # noqa: F811
        with _python_atomics:
            old = flags[index]
            flags[index] = old + value
        return old

    def cpu_relax():  # noqa: F811
        pass

    def yield_core():  # noqa: F811
        time.sleep(0)

    def cycles():  # noqa: F811
        return time.perf_counter_ns()


@njit(cache=True, nogil=True)
def barrier(flags, t, n, epoch):
    """Thread t of n arrives at barrier `epoch` and returns once all n have arrived; returns epoch
    (so that `epoch = barrier(flags, t, n, epoch + 1)` counts them)."""
    if n == 1:
        return epoch
    store_release(flags, t * SLOT + COUNT, epoch)
    arrived = cycles()
    for other in range(n):
        spins = 0
        while load_acquire(flags, other * SLOT + COUNT) < epoch:
            if spins < SPINS_BEFORE_YIELD:
                cpu_relax()
                spins += 1
            else:
                yield_core()
    flags[t * SLOT + WAITED] += cycles() - arrived
    return epoch


@njit(cache=True, nogil=True)
def waited_share(flags, n, waited_before):
    """Called by thread 0 after a job: the largest share of the job's time (since publish_job)
    that one thread spent waiting at barriers, 0..1; waited_before (n,) holds each thread's
    WAITED as of the previous call and is updated.  0 where there is no cycle counter.  (A
    helper may still be adding its last wait: that much is counted with the next job.)"""
    elapsed = cycles() - flags[_board(n) + STARTED]
    worst = np.int64(0)
    for t in range(n):
        waited = flags[t * SLOT + WAITED]
        worst = max(worst, waited - waited_before[t])
        waited_before[t] = waited
    # A wait carried over from the previous job can exceed a short job's own time: at most 1.
    return min(1.0, worst / elapsed) if elapsed > 0 else 0.0


LET_THROUGH = 1 << 62    # a barrier count above every real one


def let_through(flags, t: int) -> None:
    """From Python: count thread t as arrived at every barrier from now on, when its share will
    not run (it failed, or was interrupted before it started), so no thread waits for it.
    publish_job leaves such counts out of the next job's base and resets thread 0's."""
    flags[t * SLOT + COUNT] = LET_THROUGH


def helpers_still_in_job(flags, n: int) -> bool:
    """From Python: whether a helper has not yet finished the last job posted."""
    job = flags[_board(n) + JOB]
    return any(flags[(n + t) * SLOT + DONE] < job for t in range(1, n))


def ask_helpers_to_quit(flags, n: int) -> None:
    """From Python: every helper returns TO_QUIT from wait_for_job (at once if it is waiting)."""
    flags[_board(n) + QUIT] = 1


def flags_for(n: int) -> np.ndarray:
    """The zeroed flags array of a team of n threads (layout: the module's docstring)."""
    return np.zeros(2 * n * SLOT, dtype=np.int64)


@njit(cache=True, nogil=True)
def _board(n):
    return n * SLOT


@njit(cache=True, nogil=True)
def job_param(flags, n, k):
    """The job's k-th number (k < 2), as publish_job wrote it."""
    return flags[_board(n) + PARAMS + k]


@njit(cache=True, nogil=True)
def job_base(flags, n):
    """The barrier count the current job's barriers start above."""
    return flags[_board(n) + BASE]


@njit(cache=True, nogil=True)
def publish_job(flags, n, p0, p1):
    """Called by thread 0: post a job with numbers p0, p1 and return the bit mask of helpers that
    are asleep outside numba (the caller wakes those).  The job's barriers start above every
    thread's count, so none can be mistaken for a barrier of an earlier job."""
    board = _board(n)
    base = np.int64(0)
    for t in range(n):
        count = load_acquire(flags, t * SLOT + COUNT)
        if count < LET_THROUGH:
            base = max(base, count)
    store_release(flags, COUNT, base)       # thread 0 let through an abandoned job: not this one
    flags[board + BASE] = base
    flags[board + STARTED] = cycles()
    flags[board + PARAMS] = p0
    flags[board + PARAMS + 1] = p1
    fetch_add(flags, board + JOB, np.int64(1))     # seq_cst: ordered before reading IDLE below
    asleep = np.int64(0)
    for t in range(1, n):
        if exchange(flags, (n + t) * SLOT + IDLE_FLAG, np.int64(0)) == 1:
            asleep |= np.int64(1) << t
    return asleep


@njit(cache=True, nogil=True)
def wait_for_job(flags, t, n):
    """Called by helper t: wait for a job it has not taken yet and return its number; or return
    TO_QUIT when asked to stop, or IDLE after ~1-2 ms without work, having set its IDLE flag: the
    helper then sleeps outside numba until thread 0 sees the flag and wakes it.  (A job posted
    while the flag is being set is not lost: the exchange and publish_job's are ordered, so
    either thread 0 sees the flag or this thread sees the job; maybe both, which costs one
    spurious wake-up.)"""
    board, own = _board(n), (n + t) * SLOT
    seen = flags[own + SEEN]       # kept here: the helper may leave numba and come back between jobs
    store_release(flags, own + DONE, seen)     # called again only after finishing what it took
    spins = 0
    yields = 0
    while True:
        if load_acquire(flags, board + QUIT) != 0:
            return TO_QUIT
        job = load_acquire(flags, board + JOB)
        if job > seen:
            flags[own + SEEN] = job
            return job
        if spins < SPINS_BEFORE_YIELD:
            cpu_relax()
            spins += 1
        elif yields < YIELDS_BEFORE_IDLE:
            yield_core()
            yields += 1
        else:
            exchange(flags, own + IDLE_FLAG, np.int64(1))
            if fetch_add(flags, board + JOB, np.int64(0)) > seen:   # a seq_cst read
                exchange(flags, own + IDLE_FLAG, np.int64(0))
                spins = 0
                yields = 0
                continue
            return IDLE
