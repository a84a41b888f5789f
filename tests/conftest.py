"""Session-wide: runs go to a temporary folder, and how many fuzz cases and faults were tried.

A test asks for the `robustness_count` fixture and calls `robustness_count("kind", n)`; the end of
the run prints the totals (`pytest -q` shows them under "robustness: cases tried").
"""
import collections
import os
import signal

import pytest

_COUNTS = pytest.StashKey[collections.Counter]()


def pytest_configure(config):
    config.stash[_COUNTS] = collections.Counter()
    # A shell without job control starts a background command (`pytest &`) with SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler, in this process or in the processes
    # the tests start (an ignored signal stays ignored across exec).  The Ctrl-C tests need the
    # usual behaviour wherever the suite was started from.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _runs_in_a_temporary_folder(tmp_path_factory):
    """`npllama train` records the latest run in $NPLLAMA_RUNS/LATEST (default ./runs): keep
    tests from writing into the checkout.  Tests that care set their own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(tmp_path_factory.getbasetemp() / "runs"))
        # nor into the user's cache (the thread counts `npllama train` measured: npllama/thread_choice.py)
        mp.setenv("NPLLAMA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        # On a cold kernel cache a run would start a compiling helper process and take its first
        # steps on the NumPy references (npllama/kernels/precompile.py): tests that compare two
        # runs bit for bit need both on the kernels, and no test should start stray processes.
        # tests/kernels/test_precompile.py and tests/test_train_while_compiling.py test it.
        mp.setenv("NPLLAMA_PARALLEL_COMPILE", "0")
        # The library's default memory budget is the machine's RAM.  On a shared 2-core CI machine a
        # test whose input is "within budget" must still not be allowed to take all of it: every
        # budgeted allocation in the suite is held to 4 GiB (tests that probe the limit set their own).
        if "NPLLAMA_MAX_MEMORY" not in os.environ:
            mp.setenv("NPLLAMA_MAX_MEMORY", str(4 * 1024**3))
        yield


@pytest.fixture
def robustness_count(request):
    """count(kind, n=1): record that this test tried n fuzz cases or injected faults of `kind`."""
    counts = request.config.stash[_COUNTS]

    def count(kind: str, n: int = 1) -> None:
        counts[kind] += n

    return count


def pytest_sessionfinish(session):
    """In a pytest-xdist worker (`-n 2`): hand this worker's counts to the controlling process."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["robustness_counts"] = dict(session.config.stash[_COUNTS])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, in the controlling process: a worker ended; add its counts to the totals."""
    node.config.stash[_COUNTS].update(getattr(node, "workeroutput", {}).get("robustness_counts", {}))


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(_COUNTS, None)
    if counts:
        terminalreporter.section("robustness: cases tried")
        for kind, n in sorted(counts.items()):
            terminalreporter.write_line(f"{n:7,d}  {kind}")
        terminalreporter.write_line(f"{sum(counts.values()):7,d}  in all")


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A Hugging Face folder as `npllama train` leaves one: a tiny random model (float32) and a
    tokenizer trained on stories and the built-in example sets.  Read-only: copy it to change it."""
    from npllama import Llama, LlamaConfig
    from npllama import datasets
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("small_model")
    texts = make_default_corpus(300, seed=0) + [r["text"] for r in datasets.make_dataset("sentiment", 300)]
    tokenizer = Tokenizer.train(texts, folder / "tok", vocab_size=400)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    Llama(config, seed=0).save_pretrained(folder / "model", extra_files={"tokenizer.model": tokenizer.model_bytes})
    return folder / "model"
