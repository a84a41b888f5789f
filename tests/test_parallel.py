"""A batch split over threads gives the whole batch's loss and gradients (weighted by counted
targets), runs the backend chosen by the caller, and leaves BLAS's thread count as it found it."""
import threading

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, backend, use_backend
from npllama.gradcheck import rel_error
from npllama.parallel import BatchSplitter, _blas_controllers, default_workers

# BLAS's thread counts as the process started: what every test must find again afterwards.  Read
# once, not per test -- a test that left BLAS at one thread would otherwise make "threads come
# back" and "held at one" true for every later test.
BASELINE = [c.get_num_threads() for c in _blas_controllers()]
needs_blas_control = pytest.mark.skipif(not _blas_controllers() or max(BASELINE, default=1) < 2,
                                        reason="needs a BLAS threadpoolctl controls, on 2+ threads")


@pytest.fixture(autouse=True)
def blas_threads_are_restored():
    yield
    assert [c.get_num_threads() for c in _blas_controllers()] == BASELINE


def tiny_model():
    config = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return Llama(config, seed=3, dtype=np.float64)


def blas_threads():
    return [c.get_num_threads() for c in _blas_controllers()]


@needs_blas_control
@pytest.mark.parametrize("B, workers", [(4, 2), (5, 3), (3, 2)])
def test_split_batch_equals_the_whole_batch(B, workers):
    model = tiny_model()
    rng = np.random.default_rng(B)
    tokens, targets = rng.integers(0, 29, (B, 9)), rng.integers(0, 29, (B, 9))
    targets[0, :7] = -100            # the slices hold different numbers of counted targets
    targets[-1, :] = -100            # and the last row none at all
    loss, grads = model.loss_and_grads(tokens, targets)
    with BatchSplitter(workers) as splitter:
        split_loss, split_grads = splitter.loss_and_grads(model.loss_and_grads, tokens, targets)
    assert abs(split_loss - loss) < 1e-12 * abs(loss)
    assert split_grads.keys() == grads.keys()
    for name in grads:
        assert rel_error(split_grads[name], grads[name]) < 1e-12, name


@needs_blas_control
@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_the_parts_gradients_are_summed_with_their_weights_bit_for_bit(backend_name):
    """The numba pass (one trip through memory, the parameters shared out over the workers) and
    the NumPy lines both give sum_i w_i g_i exactly as written out here: each product rounded in
    the gradient's dtype, then added in part order.  Strided and float64 gradients included."""
    returned = {}

    def fake_loss_and_grads(tokens, targets):
        first = int(tokens[0, 0])
        rng = np.random.default_rng(first)
        grads = {"big": rng.standard_normal((64, 33)).astype(np.float32),
                 "strided": rng.standard_normal((8, 6)).astype(np.float32)[:, ::2],
                 "float64": rng.standard_normal(7)}
        returned[first] = {name: g.copy() for name, g in grads.items()}
        return float(first), grads

    tokens = np.arange(5)[:, None] * np.ones((1, 3), dtype=np.int64)   # row r holds r: parts tell apart
    targets = tokens.copy()
    targets[0, :2] = -100            # parts count 1, 6 and 6 targets: weights 1/13, 6/13, 6/13
    with BatchSplitter(3) as splitter, use_backend(backend_name):
        loss, grads = splitter.loss_and_grads(fake_loss_and_grads, tokens, targets)
    weights = {0: 1 / 13, 1: 6 / 13, 3: 6 / 13}          # by each part's first row
    assert sorted(returned) == sorted(weights)
    assert loss == pytest.approx(sum(w * first for first, w in weights.items()))
    for name in ("big", "strided", "float64"):
        dtype = returned[0][name].dtype.type
        expected = returned[0][name] * dtype(weights[0])
        expected = expected + returned[1][name] * dtype(weights[1])
        expected = expected + returned[3][name] * dtype(weights[3])
        assert grads[name].dtype == expected.dtype
        assert np.array_equal(grads[name], expected), name


@needs_blas_control
def test_each_slice_runs_in_a_thread_of_its_own_on_the_callers_backend():
    seen = []

    def record(tokens, targets):
        seen.append((threading.get_ident(), backend.get_backend(), len(tokens)))
        return 1.0, {"w": np.ones(2)}

    tokens = np.zeros((4, 3), dtype=np.int64)
    with BatchSplitter(2) as splitter, use_backend("numpy"):
        loss, grads = splitter.loss_and_grads(record, tokens, tokens)
    assert loss == 1.0 and np.array_equal(grads["w"], np.ones(2))   # weights 1/2 + 1/2
    assert sorted(rows for _, _, rows in seen) == [2, 2]
    assert {name for _, name, _ in seen} == {"numpy"}
    assert threading.get_ident() not in {thread for thread, _, _ in seen}


@needs_blas_control
def test_blas_threads_come_back_after_a_split_and_after_a_failing_slice():
    before = BASELINE

    def failing(tokens, targets):
        assert blas_threads() == [1] * len(before)   # one BLAS thread per worker while split
        if tokens[0, 0] == 1:
            raise ValueError("slice failed")
        return 0.5, {"w": np.zeros(1)}

    tokens = np.array([[0], [1]])
    with BatchSplitter(2) as splitter:
        with pytest.raises(ValueError, match="slice failed"):
            splitter.loss_and_grads(failing, tokens, np.zeros_like(tokens))
        assert blas_threads() == before
        splitter.loss_and_grads(failing, np.zeros_like(tokens), np.zeros_like(tokens))
    assert blas_threads() == before


def test_no_split_for_one_row_one_worker_or_an_active_trace():
    calls = []

    def count(tokens, targets):
        calls.append(len(tokens))
        return 0.0, {}

    two_rows = np.zeros((2, 3), dtype=np.int64)
    with BatchSplitter(2) as splitter:
        splitter.loss_and_grads(count, two_rows[:1], two_rows[:1])      # one row: nothing to split
        with npllama.trace():                                          # a trace wants one call's names
            splitter.loss_and_grads(count, two_rows, two_rows)
    with BatchSplitter(1) as serial:
        serial.loss_and_grads(count, two_rows, two_rows)
    assert calls == [1, 2, 2]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(workers):
    with pytest.raises(ValueError, match="workers must be a positive int"):
        BatchSplitter(workers)


def test_default_workers_is_blas_threads_even_while_a_split_holds_them():
    outside = default_workers()
    assert isinstance(outside, int) and outside >= 1
    with BatchSplitter(2) as splitter, splitter.holding_blas(rows=4):
        assert default_workers() == outside


@needs_blas_control
def test_a_loop_holds_blas_at_one_thread_only_when_its_batches_will_be_split():
    before = BASELINE
    with BatchSplitter(2) as splitter:
        with splitter.holding_blas(rows=4):
            assert blas_threads() == [1] * len(before)
        assert blas_threads() == before
        with splitter.holding_blas(rows=1):          # one row: no split, BLAS keeps its threads
            assert blas_threads() == before
    with BatchSplitter(1) as serial, serial.holding_blas(rows=4):
        assert blas_threads() == before


def test_the_update_uses_every_core_or_the_split_if_more(monkeypatch):
    """The optimizer's threads beside a split: BLAS's cores whether or not the batch is split,
    the split's workers if they are more."""
    from npllama import parallel

    monkeypatch.setattr(parallel, "default_workers", lambda: 2)
    assert [parallel.BatchSplitter(k).update_threads for k in (1, 2, 3)] == [2, 2, 3]
