"""`npllama train`'s default thread count: measured, the fastest kept, remembered per machine and run."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from npllama import LlamaConfig, parallel, thread_choice
from npllama.thread_choice import RUN_FILE, candidate_counts, fastest_threads, measure

CONFIG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)


def needs_blas_control():
    if not parallel._blas_controllers():
        pytest.skip("threadpoolctl cannot control this BLAS: no split, nothing to choose")


def sleeps_per_row(tokens, targets):
    """Time grows with the rows and the GIL is released: two threads on half the rows each win."""
    time.sleep(0.004 * len(tokens))
    return 0.0, {"w": np.zeros(1)}


def holds_the_gil(tokens, targets):
    """The same work whatever the rows, in pure Python (the GIL held throughout): two threads do it
    twice, one after the other, so they take about twice as long as one.  (A busy wait until a
    clock time would not do: two threads waiting side by side end together, and the two counts
    then differ only by noise.)"""
    total = 0
    for i in range(300_000):
        total += i
    return 0.0, {"w": np.zeros(1)}


def given_timings(monkeypatch, seconds: dict) -> list:
    """thread_choice.measure replaced by fixed timings (a test of what is done with a measurement
    must not hang on one round of a clock on a shared machine); the list records each call."""
    timed = []
    monkeypatch.setattr(thread_choice, "measure", lambda fn, *args, **kwargs: timed.append(args) or dict(seconds))
    return timed


@pytest.fixture
def two_workers(monkeypatch, tmp_path):
    needs_blas_control()
    monkeypatch.setattr(thread_choice, "default_workers", lambda: 2)
    monkeypatch.setenv("NPLLAMA_CACHE_DIR", str(tmp_path / "cache"))


def test_candidates_are_powers_of_two_and_the_most():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("fn, fastest", [(sleeps_per_row, "2"), (holds_the_gil, "1")])
def test_measure_finds_the_faster_count(fn, fastest):
    needs_blas_control()
    seconds = measure(fn, 64, batch_size=8, seq_len=4, counts=[1, 2], rounds=2)
    assert set(seconds) == {"1", "2"}
    assert min(seconds, key=seconds.get) == fastest, seconds


def test_the_choice_is_measured_once_then_read_from_the_cache(two_workers, tmp_path, monkeypatch):
    said = []
    assert fastest_threads(sleeps_per_row, CONFIG, 8, 4, np.float32, echo=said.append, rounds=1) == 2
    assert "measured now" in said[-1] and "--threads N" in said[-1]
    calls = []

    def counting(tokens, targets):
        calls.append(1)
        return holds_the_gil(tokens, targets)

    said.clear()
    assert fastest_threads(counting, CONFIG, 8, 4, np.float32, echo=said.append) == 2   # cached: not re-timed
    assert calls == [] and "cached in" in said[-1]
    # another shape is another measurement (and here another answer: its timings are given, not
    # taken -- one round of a GIL-bound function on a shared machine can come out either way)
    timed = given_timings(monkeypatch, {"1": 0.1, "2": 0.2})
    assert fastest_threads(holds_the_gil, CONFIG, 6, 4, np.float32, echo=said.append, rounds=1) == 1
    assert len(timed) == 1 and "measured now" in said[-1]


def test_a_run_folder_keeps_its_count_when_the_cache_is_gone(two_workers, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    assert fastest_threads(sleeps_per_row, CONFIG, 8, 4, np.float32, run_dir=run, echo=lambda *_: None,
                           rounds=1) == 2
    assert json.loads((run / RUN_FILE).read_text())["threads"] == 2
    monkeypatch.setenv("NPLLAMA_CACHE_DIR", str(tmp_path / "other-cache"))
    # the resumed run's function would now favour 1 thread; the run folder's count holds
    assert fastest_threads(holds_the_gil, CONFIG, 8, 4, np.float32, run_dir=run, echo=lambda *_: None) == 2


def test_a_damaged_cache_is_measured_again(two_workers, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / thread_choice.CACHE_FILE).write_text("{not json")
    timed = given_timings(monkeypatch, {"1": 0.1, "2": 0.2})
    assert fastest_threads(holds_the_gil, CONFIG, 8, 4, np.float32, echo=lambda *_: None, rounds=1) == 1
    assert len(timed) == 1 and len(json.loads((cache / thread_choice.CACHE_FILE).read_text())) == 1


def test_one_worker_or_one_row_measures_nothing(monkeypatch):
    monkeypatch.setattr(thread_choice, "default_workers", lambda: 1)
    assert fastest_threads(None, CONFIG, 8, 4, np.float32, echo=pytest.fail) == 1
    monkeypatch.setattr(thread_choice, "default_workers", lambda: 2)
    assert fastest_threads(None, CONFIG, 1, 4, np.float32, echo=pytest.fail) == 1


def test_train_without_threads_chooses_and_records_the_count(tmp_path):
    from npllama.train import TrainConfig, train

    said = []
    config = TrainConfig(out=str(tmp_path / "run"), steps=1, preset="stories260k", vocab_size=360, batch_size=4,
                         seq_len=16, corpus_stories=100, eval_batches=1, samples=0, progress=False)
    train(config, echo=lambda *a, **_: said.append(" ".join(map(str, a))))
    recorded = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert 1 <= recorded["threads"] <= parallel.default_workers()
    assert any(line.startswith(f"threads: {recorded['threads']} (") for line in said), said


def test_the_machine_key_names_numpys_blas_only_so_a_library_loaded_later_keeps_it(monkeypatch):
    """SciPy's OpenBLAS, loaded part-way through a process (numba imports it), changed the key:
    the next run of the same shape missed the cache, measured again and could choose another
    count, so two runs of one seed gave different bits."""
    import threadpoolctl

    from npllama import thread_choice

    numpy_lib = Path(np.__file__).resolve().parent.parent / "numpy.libs" / "libopenblas.so"
    other = dict(user_api="blas", internal_api="openblas", version="0.0.1", architecture="X", num_threads=2,
                 filepath="/elsewhere/scipy.libs/libopenblas.so")
    ours = dict(other, version="9.9.9", filepath=str(numpy_lib))
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [ours])
    alone = thread_choice._blas_description()
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [other, ours])
    assert thread_choice._blas_description() == alone == [["openblas", "9.9.9", "X", 2]]
    # a NumPy linked to the system's BLAS: nothing inside NumPy, so every library describes it
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [other])
    assert thread_choice._blas_description() == [["openblas", "0.0.1", "X", 2]]
