"""Split a training batch over the cores: data parallelism inside one process.

`BatchSplitter(workers).loss_and_grads(fn, tokens, targets)` runs fn(tokens, targets) -- a
model's loss_and_grads -- on `workers` slices of the batch's rows at once, one Python thread
each with BLAS on one thread, and combines their losses and gradients into the whole batch's.

Why: on 2 cores OpenBLAS splits each large matrix product over both, but everything else in a
step -- the numba kernels, attention's small per-head products, Python -- runs on one core while
OpenBLAS's worker thread spins on the other.  Two threads that each run the whole step for half
the rows keep both cores busy.  Measured: `npllama train` on the tiny preset, 29,000-30,000
tokens/s with --threads 2 against 22,900-24,100 with --threads 1 (three runs each, alternating);
a bare s15m step +1-4% (benchmarks/README.md).  NumPy's matmul releases the GIL and the kernels
are compiled with nogil, so the threads really run side by side.

The price is memory: each thread holds its own gradients until they are summed, (workers - 1)
times the parameters' size more than an unsplit step (s15m on 2 threads: 716 instead of 547 MiB
per step, still 0.70x PyTorch's).

The result is the whole batch's to round-off (the sums go in a different order).  fn returns a
mean over the targets that are not `ignore_index`, so the parts are weighted by how many of
those each holds: sum_i (n_i / n) * part_i is the mean over the batch, whatever the split.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .trace import active_trace


class BatchSplitter:
    """Runs loss_and_grads on row slices of a batch in `workers` threads (1: just calls it)."""

    def __init__(self, workers: int):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.workers = workers
        self._executor = None
        self._blas = _OneBlasThread if workers > 1 and blas_can_be_held() else None

    @property
    def update_threads(self) -> int:
        """How many threads the optimizer's update should share out its parameters over beside
        this split: every core BLAS may use, or the split's workers if more.  Split or not, the
        step's products use every core, so the update does too (its result is the same bits for
        any count); and the thread choice (thread_choice.py) can leave the optimizer out of its
        timing because it costs the same whichever split is chosen."""
        return max(self.workers, default_workers())

    def loss_and_grads(self, loss_and_grads, tokens, targets, ignore_index: int = -100):
        """(loss, grads) of loss_and_grads(tokens, targets), computed in slices of rows."""
        split = self._run(loss_and_grads, tokens, targets, ignore_index)
        if split is None:
            return loss_and_grads(tokens, targets)
        loss = 0.0
        for weight, (part_loss, _) in split:
            loss += weight * part_loss
        return loss, self._weighted_sum(split)

    def loss(self, loss, tokens, targets, ignore_index: int = -100) -> float:
        """loss(tokens, targets) (a mean over counted targets, no gradients), in slices of rows."""
        split = self._run(loss, tokens, targets, ignore_index)
        if split is None:
            return loss(tokens, targets)
        return sum(weight * part_loss for weight, part_loss in split)

    def holding_blas(self, rows: int):
        """A context in which BLAS stays on one thread, for a whole training loop over batches of
        `rows` rows: OpenBLAS's own worker thread, once woken by any product on two threads (a
        gradient norm's dot product), spins for up to ~0.1 s and would take a core from the next
        split's workers.  Measured in `npllama train` on tiny: 18,300 tokens/s splitting without
        this, against 26,600 in a run with no split at all.  Batches too small to split keep
        BLAS's threads."""
        if self._blas is None or min(rows, self.workers) < 2:
            return contextlib.nullcontext()
        return self._blas()

    def _run(self, fn, tokens, targets, ignore_index):
        """[(weight, fn(tokens[rows], targets[rows])) for each part], or None: do not split
        (fewer than two parts with counted targets, one worker, no BLAS control, or an active
        trace, which records one call's intermediates)."""
        if self._blas is None or active_trace() is not None:
            return None
        parts = self._parts(targets, ignore_index)
        if len(parts) < 2:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="npllama-batch")
        with self._blas():
            # each part in a copy of this context: the backend chosen here holds there too
            futures = [self._executor.submit(contextvars.copy_context().run, fn, tokens[rows], targets[rows])
                       for rows, _ in parts]
            wait(futures)  # all of them, even if one failed: none still runs when we return
        return list(zip(target_weights([count for _, count in parts]), (future.result() for future in futures)))

    def _weighted_sum(self, split):
        """sum_i weight_i * grads_i, into the first part's arrays (fresh arrays of that call's own),
        the parameters shared out over the workers: each part's gradients are as large as the
        model, and one core would take ~0.1 s at m42m to add them."""
        (first_weight, (_, grads)), rest = split[0], split[1:]
        weighted_sum_into = weighted_sum_function()
        by_size = sorted(grads, key=lambda name: grads[name].size, reverse=True)
        shares = [by_size[i::self.workers] for i in range(self.workers)]

        def add_up(names):
            for name in names:
                weight_a = first_weight
                for weight, (_, part_grads) in rest:
                    weighted_sum_into(grads[name], weight_a, part_grads[name], weight)
                    weight_a = 1.0   # exact: a * 1 == a
        futures = [self._executor.submit(add_up, names) for names in shares if names]
        wait(futures)
        for future in futures:
            future.result()      # re-raises a worker's error
        return grads

    def _parts(self, targets, ignore_index):
        """(row slice, number of counted targets) for each worker's share of the rows; parts with
        no counted target are left out (their mean would be 0/0)."""
        rows = np.shape(targets)[0] if np.ndim(targets) else 0
        bounds = [rows * i // self.workers for i in range(self.workers + 1)]
        parts = []
        for start, stop in zip(bounds, bounds[1:]):
            if stop > start:
                count = counted_targets(targets[start:stop], ignore_index)
                if count:
                    parts.append((slice(start, stop), count))
        return parts

    def close(self) -> None:
        """Shut the worker threads down, waiting for running work (nothing when there are none)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def counted_targets(targets, ignore_index: int = -100) -> int:
    """How many targets are not ignore_index: what a part's mean loss is weighted by in the whole's."""
    return int(np.count_nonzero(np.asarray(targets) != ignore_index))


def target_weights(counts) -> list[float]:
    """n_i / n for each part's count of counted targets: sum_i weight_i * mean_i is the mean over
    all of them.  Equal shares when nothing is counted at all (each mean is then 0, its gradients 0)."""
    total = sum(counts)
    return [count / total for count in counts] if total else [1 / len(counts)] * len(counts)


def mean_over_targets(losses, targets) -> float:
    """The mean loss over every counted target of several batches, from each batch's mean loss and
    its targets (batches count different numbers of targets: a mean of the means is another number)."""
    weights = target_weights([counted_targets(t) for t in targets])
    return float(sum(weight * loss for weight, loss in zip(weights, losses)))


def weighted_sum_function():
    """a = a * wa + b * wb in place: the numba kernel when that backend is in force (one pass over
    memory) and the arrays suit it, else NumPy, which rounds the same way (each product, then
    the sum)."""
    from .backend import get_backend

    kernel = None
    if get_backend() == "numba":
        from .kernels.gradients import weighted_sum_into as kernel

    def weighted_sum_into(a, weight_a, b, weight_b):
        if (kernel is not None and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
                and a.flags.c_contiguous and b.flags.c_contiguous):
            kernel(a, weight_a, b, weight_b)
        else:
            a *= a.dtype.type(weight_a)
            a += b * a.dtype.type(weight_b)
    return weighted_sum_into


def default_workers() -> int:
    """As many workers as BLAS has threads (OPENBLAS_NUM_THREADS, or the cores), so that one
    setting keeps deciding how many cores a process uses; 1 if BLAS cannot be controlled."""
    controllers = _blas_controllers()
    if not controllers:
        return 1
    with _blas_lock:   # while a split holds BLAS at one thread, the count it had is the saved one
        counts = _blas_state["saved"] if _blas_state["depth"] else [c.get_num_threads() or 1 for c in controllers]
    return max(1, max(counts))


def blas_can_be_held() -> bool:
    """Whether one_blas_thread() can set BLAS's threads here (threadpoolctl knows the library)."""
    return bool(_blas_controllers())


def one_blas_thread():
    """A context in which BLAS computes on the calling thread alone: none of its worker threads
    is woken, so none is left spinning on a core afterwards (OpenBLAS's spin for ~0.1 s after a
    call).  Process-wide while it lasts, like BatchSplitter's; a no-op where BLAS can't be set
    (blas_can_be_held() says which)."""
    return _OneBlasThread()


_blas_state = {"controllers": None, "depth": 0, "saved": None}
_blas_lock = threading.Lock()


def _blas_controllers() -> list:
    """threadpoolctl's handles on the BLAS libraries loaded in this process (looked up once)."""
    if _blas_state["controllers"] is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_state["controllers"] = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # noqa: BLE001 -- no threadpoolctl or an unreadable library: no splitting
            _blas_state["controllers"] = []
    return _blas_state["controllers"]


class _OneBlasThread:
    """Holds BLAS at one thread.  Nested or concurrent uses share it: the first in saves the
    thread counts, the last out restores them."""

    def __enter__(self):
        with _blas_lock:
            if _blas_state["depth"] == 0:
                _blas_state["saved"] = [c.get_num_threads() or 1 for c in _blas_controllers()]
                for c in _blas_controllers():
                    c.set_num_threads(1)
            _blas_state["depth"] += 1

    def __exit__(self, *exc):
        with _blas_lock:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                for c, n in zip(_blas_controllers(), _blas_state["saved"]):
                    c.set_num_threads(n)
        return False
