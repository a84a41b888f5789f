"""FastDecoder returns exactly what model.forward_step returns, call for call."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, use_backend
from npllama.kernels.decode import FastDecoder

from .helpers import assert_close, requires_jit


def small_model(n_kv_heads, dtype, tie=False):
    config = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_heads,
                         max_position_embeddings=24, tie_word_embeddings=tie)
    return Llama(config, seed=3, dtype=dtype)


@given(dtype=st.sampled_from([np.float32, np.float64]), n_kv_heads=st.sampled_from([1, 2, 4]),
       B=st.integers(1, 2), chunks=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       tie=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_fast_decoder_equals_forward_step(dtype, n_kv_heads, B, chunks, tie, seed):
    """A prefill of any length, then steps of any length (1 = plain decoding), in the same order."""
    model = small_model(n_kv_heads, dtype, tie)
    tokens = np.random.default_rng(seed).integers(0, 23, size=(B, sum(chunks)))
    decoder = FastDecoder(model, batch_size=B, max_length=20)
    kv_cache = model.new_kv_cache(B, 20)
    start = 0
    with use_backend("numpy"):
        for n in chunks:
            expected = model.forward_step(tokens[:, start:start + n], kv_cache)
            assert_close(decoder.step(tokens[:, start:start + n]), expected, f"positions {start}..")
            start += n
    assert decoder.length == start


def test_reset_starts_a_new_sequence():
    model = small_model(2, np.float64)
    decoder = FastDecoder(model, max_length=8)
    first = decoder.step(np.array([[1, 2, 3]]))
    decoder.step(np.array([[4]]))
    decoder.reset()
    assert_close(decoder.step(np.array([[1, 2, 3]])), first, "after reset")


def test_bad_input():
    model = small_model(2, np.float32)
    decoder = FastDecoder(model, batch_size=1, max_length=4)
    with pytest.raises(ValueError, match="at most 4 positions"):
        decoder.step(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="batch_size=1"):
        decoder.step(np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids in \[0, 23\)"):
        decoder.step(np.array([[23]]))
    with pytest.raises(TypeError, match="tokens must be an integer"):
        decoder.step(np.array([[1.0]]))
    with pytest.raises(ValueError, match="max_length .* exceeds"):
        FastDecoder(model, max_length=100)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        FastDecoder(model, batch_size=0)


def test_weights_are_laid_out_once_per_model_and_read_in_place():
    from npllama.kernels.decode import model_weights

    model = small_model(2, np.float64)
    layout = model_weights(model)
    assert model_weights(model) is layout                      # a second decoder (generate call) reuses it
    assert FastDecoder(model).weights is layout
    assert layout.wq[0] is model.params["model.layers.0.self_attn.q_proj.weight"]   # the array, not a copy
    # a training step updates parameters in place: the next decode sees it without any refresh
    model.params["model.layers.1.mlp.down_proj.weight"] *= 3
    tokens = np.array([[1, 2, 3, 4]])
    decoder, kv_cache = FastDecoder(model, max_length=8), model.new_kv_cache(1, 8)
    with use_backend("numpy"):
        for t in range(4):
            assert_close(decoder.step(tokens[:, t:t + 1]), model.forward_step(tokens[:, t:t + 1], kv_cache),
                         f"position {t} after an in-place update")


@requires_jit
def test_one_compilation_of_the_step_serves_every_depth():
    """The layers reach the kernel as a table of addresses: a model of another depth (same
    dtype) reuses the compiled step instead of compiling it again (10-20 s each)."""
    from npllama.kernels.decode import _decode_token_part

    def depth(n_layers):
        config = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8)
        return Llama(config, seed=n_layers, dtype=np.float64)

    compiled = None
    for n_layers in (1, 3, 4):
        model = depth(n_layers)
        with use_backend("numpy"):
            expected = model.forward_step(np.array([[5]]), model.new_kv_cache(1, 4))
        assert_close(FastDecoder(model, max_length=4, threads=1).step(np.array([[5]])), expected,
                     f"{n_layers} layers")
        if compiled is None:
            compiled = len(_decode_token_part.signatures)
        assert len(_decode_token_part.signatures) == compiled, f"compiled again for {n_layers} layers"


@pytest.mark.parametrize("name, replacement, error, match", [
    ("model.layers.1.mlp.down_proj.weight", lambda a: a[:, :-1], ValueError, r"must have shape \(16, 24\)"),
    ("model.layers.0.self_attn.k_proj.weight", lambda a: np.vstack([a, a]), ValueError, "must have shape"),
    ("model.norm.weight", lambda a: np.concatenate([a, a]), ValueError, r"must have shape \(16,\)"),
    ("lm_head.weight", lambda a: a[:, :8], ValueError, r"must have shape \(23, 16\)"),
    ("model.embed_tokens.weight", lambda a: a[:-1], ValueError, "must have shape"),
    ("model.layers.1.input_layernorm.weight", lambda a: a.astype(np.float32), TypeError, "must be a float64 array"),
    ("lm_head.weight", lambda a: a.astype(np.float32), TypeError, "must be a float64 array"),
])
def test_a_weight_of_the_wrong_shape_or_dtype_is_refused_not_read_as_garbage(name, replacement, error, match):
    """The step reads the layers by address with the config's shapes, and the rest by the
    config's sizes: a replaced array that doesn't fit is refused, naming it."""
    model = small_model(2, np.float64)
    model.params[name] = replacement(model.params[name])
    with pytest.raises(error, match=f"{name} {match}"):
        FastDecoder(model, max_length=4).step(np.array([[1]]))


def test_an_address_table_reads_the_arrays_in_place_and_refuses_strided_ones():
    from numba import njit

    from npllama.kernels._addresses import address_table, matrix_at, vector_at

    a, b = np.arange(12.0).reshape(3, 4), np.arange(5.0)
    table = address_table([[a, b]])

    @njit
    def first_row_sum_and_last(table, like):
        return matrix_at(table[0, 0], 3, 4, like)[0].sum(), vector_at(table[0, 1], 5, like)[4]

    assert first_row_sum_and_last(table, b) == (6.0, 4.0)
    a[0, 0] = 100.0                                            # no copy: a change is seen
    assert first_row_sum_and_last(table, b) == (106.0, 4.0)
    with pytest.raises(ValueError, match=r"array \[0\]\[0\] must be C-contiguous"):
        address_table([[a[:, ::2]]])


def test_a_replaced_parameter_array_is_noticed():
    from npllama.kernels.decode import model_weights

    model = small_model(2, np.float64)
    layout = model_weights(model)
    name = "model.norm.weight"
    model.params[name] = model.params[name] * 0.5               # a new array object
    assert model_weights(model) is not layout
    with use_backend("numpy"):
        expected = model.forward_step(np.array([[5]]), model.new_kv_cache(1, 4))
    assert_close(FastDecoder(model, max_length=4).step(np.array([[5]])), expected, "after replacing a parameter")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matvec_equals_numpy_for_any_number_of_rows(dtype):
    from npllama.kernels.decode import _matvec

    rng = np.random.default_rng(0)
    for rows in range(1, 12):           # even and odd (the middle row paired with itself)
        for cols in (1, 3, 16, 67):
            w = rng.standard_normal((rows, cols)).astype(dtype)
            x = rng.standard_normal(cols).astype(dtype)
            out = np.full(rows, np.nan, dtype=dtype)
            _matvec(w, x, out)
            assert_close(out, w @ x, f"{rows}x{cols}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matvec_sums_a_row_the_same_way_wherever_it_falls(dtype):
    """A thread's share of rows may begin and end anywhere (a KV group of 6 rows, an odd share),
    so a row is paired with different partners, or with itself: every row of every slice must
    come out bit for bit as in the whole product, or the thread count would change the logits.
    The column counts include the models' own (288, 512, 768, 1376), whose sums LLVM splits
    into vector lanes with a remainder or none."""
    from npllama.kernels.decode import _matvec

    rng = np.random.default_rng(1)
    for cols in (6, 24, 30, 67, 288, 512, 768, 1376):
        w = rng.standard_normal((13, cols)).astype(dtype)
        x = rng.standard_normal(cols).astype(dtype)
        whole = np.empty(13, dtype=dtype)
        _matvec(w, x, whole)
        for start in range(13):
            for stop in range(start + 1, 14):
                part = np.empty(stop - start, dtype=dtype)
                _matvec(w[start:stop], x, part)
                assert np.array_equal(part, whole[start:stop]), f"rows {start}:{stop} of 13x{cols}"


# ---- the token step on several threads (npllama/kernels/threads.py, _sync.py) -------------------

def odd_model(n_kv_heads, dtype=np.float32):
    """Sizes that are not multiples of 4 nor of the thread count, so the row shares are uneven."""
    config = LlamaConfig(vocab_size=23, hidden_size=24, intermediate_size=30, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=n_kv_heads, max_position_embeddings=40)
    return Llama(config, seed=5, dtype=dtype)


def decode_logits(decoder, tokens):
    """Prefill tokens[:, :3], then one token per step; every step's logits stacked."""
    steps = [decoder.step(tokens[:, :3])[:, -1]]
    for t in range(3, tokens.shape[1]):
        steps.append(decoder.step(tokens[:, t:t + 1])[:, -1])
    return np.stack(steps)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_thread_count_gives_the_same_logits_bit_for_bit(n_kv_heads, dtype):
    """Products are split by rows and attention by KV group, so each number is computed
    the same way whatever the split: more threads (even more than groups, or than cores) change
    nothing, not even the last bit."""
    model = odd_model(n_kv_heads, dtype)
    tokens = np.random.default_rng(n_kv_heads).integers(0, 23, size=(1, 30))
    one = decode_logits(FastDecoder(model, max_length=40, threads=1), tokens)
    with use_backend("numpy"):
        kv_cache = model.new_kv_cache(1, 40)
        reference = np.stack([model.forward_step(tokens[:, :3], kv_cache)[:, -1]]
                             + [model.forward_step(tokens[:, t:t + 1], kv_cache)[:, -1] for t in range(3, 30)])
    assert_close(one, reference, "one thread vs forward_step")
    for threads in (2, 3, 5):
        assert np.array_equal(decode_logits(FastDecoder(model, max_length=40, threads=threads), tokens), one), \
            f"{threads} threads"


def test_helpers_that_fell_asleep_are_woken_by_the_next_token():
    """Between bursts of tokens the helpers leave numba and sleep on a semaphore; the next token
    must wake them (a lost wake-up would hang here) and give the same logits."""
    import time

    from npllama.kernels._sync import IDLE_FLAG, SLOT

    model = odd_model(2)
    tokens = np.random.default_rng(0).integers(0, 23, size=(1, 8))
    expected = decode_logits(FastDecoder(model, max_length=40, threads=1), tokens)
    decoder = FastDecoder(model, max_length=40, threads=3)
    flags = decoder._team.flags
    got = [decoder.step(tokens[:, :3])[:, -1]]
    for t in range(3, 8):
        deadline = time.monotonic() + 10
        while not all(flags[(3 + h) * SLOT + IDLE_FLAG] == 1 for h in (1, 2)):   # both helpers asleep
            assert time.monotonic() < deadline, "the helpers never went to sleep"
            time.sleep(0.005)
        got.append(finishes_within(10, decoder.step, tokens[:, t:t + 1])[:, -1])
    assert np.array_equal(np.stack(got), expected)


def finishes_within(seconds, fn, *args):
    """fn(*args), failing (not hanging) if it takes longer: a lost wake-up would wait forever."""
    import threading

    result = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"no result after {seconds} s: a helper was never woken"
    return result[0]


def helper_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("npllama-decode-")]


def test_helper_threads_end_with_their_decoder():
    import gc
    import time

    before = set(helper_threads())        # other tests' decoders may still be ending theirs
    decoder = FastDecoder(odd_model(2), max_length=40, threads=3)
    decoder.step(np.array([[1, 2]]))
    decoder.step(np.array([[3]]))
    own = set(helper_threads()) - before
    assert len(own) == 2
    del decoder
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in own):
        assert time.monotonic() < deadline, "helper threads outlived their decoder"
        time.sleep(0.01)


def test_a_decoder_used_from_two_threads_at_once_is_refused():
    decoder = FastDecoder(odd_model(2), max_length=40, threads=2)
    decoder.step(np.array([[1, 2]]))
    with decoder._team._running:          # as if another thread were inside step()
        with pytest.raises(RuntimeError, match="two threads at once"):
            decoder.step(np.array([[3]]))
    decoder.step(np.array([[3]]))          # and it still works afterwards


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_decodes_with_its_own_helpers():
    import os

    model = odd_model(2)
    tokens = np.random.default_rng(1).integers(0, 23, size=(1, 6))
    expected = decode_logits(FastDecoder(model, max_length=40, threads=1), tokens)
    decoder = FastDecoder(model, max_length=40, threads=2)
    decoder.step(np.array([[1, 2]]))        # the parent's helpers have started and run
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                            # child: the parent's helper threads do not exist here
        try:
            decoder.reset()
            ok = np.array_equal(decode_logits(decoder, tokens), expected)
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"


def test_a_failing_helper_raises_in_the_caller_instead_of_hanging():
    from numba import njit

    from npllama.kernels._sync import barrier, job_base
    from npllama.kernels.threads import Team

    @njit(nogil=True)
    def part(t, n, flags):
        barrier(flags, t, n, job_base(flags, n) + 1)

    def broken_helper(t, n, flags):
        raise ZeroDivisionError("planted")

    team = Team(2, broken_helper, ())
    with pytest.raises(RuntimeError, match="helper thread failed.*planted"):
        team.run(part, 0, 0)
    team.stop()


def test_thread_counts_are_checked(monkeypatch):
    from npllama.kernels.threads import ENV_VARIABLE, decode_threads

    model = odd_model(2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            FastDecoder(model, threads=bad)
    monkeypatch.setenv(ENV_VARIABLE, "many")
    with pytest.raises(ValueError, match=f"{ENV_VARIABLE} must be a positive int"):
        decode_threads()
    monkeypatch.setenv(ENV_VARIABLE, "3")
    assert decode_threads() == (3, True)
    decoder = FastDecoder(model)
    assert decoder.threads == 3 and decoder._chooser is None     # the user's count is used as given
    monkeypatch.delenv(ENV_VARIABLE)
    cores, chosen = decode_threads()
    assert cores >= 1 and not chosen
    assert (FastDecoder(model)._chooser is not None) == (cores > 1)   # the default is checked against 1


def run_chooser(chooser, step_of, steps):
    """Drive a TeamOrAlone for `steps` steps; step_of(way, step) -> (seconds, waited_share)."""
    ways = []
    for step in range(steps):
        way = chooser.next_way()
        ways.append(way)
        seconds, waited = step_of(way, step)
        chooser.record(way, seconds, waited if way == chooser.TEAM else 0.0)
    return ways


def test_a_quiet_team_is_kept_without_trying_one_thread():
    from npllama.kernels.threads import TeamOrAlone

    chooser = TeamOrAlone(2)
    ways = run_chooser(chooser, lambda way, step: (1.0, 0.05) if way == chooser.TEAM else (2.0, 0.0), 3000)
    assert set(ways) == {chooser.TEAM}


def test_a_team_that_waits_is_timed_against_one_thread_and_dropped_if_slower():
    from npllama.kernels.threads import TeamOrAlone

    TEAM, ALONE = TeamOrAlone.TEAM, TeamOrAlone.ALONE
    window, probe, first_gap = TeamOrAlone.WINDOW, TeamOrAlone.PROBE, TeamOrAlone.FIRST_GAP
    busy = lambda way, step: (4.0, 0.7) if way == TEAM else (2.0, 0.0)   # noqa: E731 -- other programs busy
    chooser = TeamOrAlone(2)
    ways = run_chooser(chooser, busy, window + 2 * probe + first_gap)
    assert ways[:window] == [TEAM] * window                               # the waiting is seen first
    assert ways[window:window + 2 * probe] == [TEAM, ALONE] * probe        # then both are timed
    assert set(ways[window + 2 * probe:]) == {ALONE}
    # alone, the team is timed again now and then, twice as far apart while alone stays faster
    ways = run_chooser(chooser, busy, 3000)
    team_at = [i for i, w in enumerate(ways) if w == TEAM]
    starts = [team_at[i] for i in range(0, len(team_at), probe)]
    gaps = [b - a - 2 * probe for a, b in zip(starts, starts[1:])]
    assert gaps[:3] == [2 * first_gap, 4 * first_gap, 8 * first_gap] and max(gaps) == TeamOrAlone.MAX_GAP


def test_a_team_that_waits_but_is_still_faster_is_kept_and_checked_less_often():
    from npllama.kernels.threads import TeamOrAlone

    TEAM, ALONE = TeamOrAlone.TEAM, TeamOrAlone.ALONE
    chooser = TeamOrAlone(2)
    # waits a lot (imbalance), yet one thread is slower still; one slow outlier among the probes
    ways = run_chooser(chooser, lambda way, step: ((9.0 if step == 8 else 1.5), 0.4) if way == TEAM else (2.0, 0.0),
                       4000)
    assert ways.count(TEAM) > 0.98 * len(ways)
    alone_at = [i for i, w in enumerate(ways) if w == ALONE]
    starts = [alone_at[i] for i in range(0, len(alone_at), TeamOrAlone.PROBE)]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > TeamOrAlone.MAX_GAP      # backing off, never every WINDOW steps
    # and when the machine gets quiet again while alone, the team comes back at the next check
    chooser = TeamOrAlone(2)
    flip = 100
    ways = run_chooser(chooser, lambda way, step: ((4.0, 0.7) if step < flip else (1.0, 0.05)) if way == TEAM
                       else (2.0, 0.0), 400)
    assert ways[flip - 1] == ALONE and set(ways[-100:]) == {TEAM}


def test_the_team_reports_how_long_its_threads_waited():
    from numba import njit

    from npllama.kernels._sync import _HAS_CYCLE_COUNTER, barrier, job_base, job_param, wait_for_job
    from npllama.kernels.threads import Team

    if not _HAS_CYCLE_COUNTER:
        pytest.skip("no cycle counter on this CPU: the share is always 0")

    @njit(nogil=True)
    def part(t, n, flags):          # thread 0 works job_param(0) loop turns, the others none
        total = 0.0
        if t == 0:
            for i in range(job_param(flags, n, 0)):
                total += np.sqrt(float(i))
        barrier(flags, t, n, job_base(flags, n) + 1)
        # A thread adds its wait after leaving a barrier: a second one makes thread 0 see the
        # helper's long wait at the first before it reads the share (else it may come a job late).
        barrier(flags, t, n, job_base(flags, n) + 2)
        return total

    def loop(t, n, flags):          # a helper's life, as _decode_helper's
        while True:
            job = wait_for_job(flags, t, n)
            if job < 0:
                return job
            part(t, n, flags)

    team = Team(2, loop, ())
    # The helper waits ~all the time (the first job also compiles `part`: left out).
    shares = [team.run(part, 20_000_000, 0) for _ in range(4)][1:]
    balanced = [team.run(part, 0, 0) for _ in range(3)]
    team.stop()
    # measured with the cycle counter while other processes share the cores: one job of three may
    # lose its helper for a slice (0.77 seen under a parallel test run); the middle one may not
    assert sorted(shares)[1] > 0.8 and min(shares) > 0.5, shares
    assert all(0 <= share <= 1 for share in shares + balanced)


def test_a_wait_carried_over_from_the_previous_job_counts_as_at_most_the_whole_job():
    from npllama.kernels._sync import _HAS_CYCLE_COUNTER, SLOT, STARTED, WAITED, _board, flags_for, waited_share

    if not _HAS_CYCLE_COUNTER:
        pytest.skip("no cycle counter on this CPU: the share is always 0")
    flags = flags_for(2)
    flags[_board(2) + STARTED] = 0                   # the job "started" at the counter's zero...
    flags[1 * SLOT + WAITED] = 1 << 62               # ...and thread 1 reports a longer wait than that
    assert waited_share(flags, 2, np.zeros(2, dtype=np.int64)) == 1.0


def test_after_a_blas_call_the_decoder_runs_alone_for_a_while():
    import time

    from npllama.kernels.threads import TeamOrAlone

    chooser = TeamOrAlone(2)
    chooser.after_blas(0.2)
    assert chooser.next_way() == chooser.ALONE
    chooser.record(chooser.ALONE, 9.0)            # not taken as a measurement
    time.sleep(0.25)
    assert chooser.next_way() == chooser.TEAM
    chooser.record(chooser.TEAM, 1.0, 0.01)
    assert chooser.next_way() == chooser.TEAM


@pytest.mark.parametrize("prompt_length", [17, 24, 25])
def test_a_mid_length_prompt_is_prefilled_on_one_blas_thread_and_a_long_one_then_decodes_alone(
        prompt_length, monkeypatch):
    """BLAS's idle threads spin after a call and slow the team: a prompt of up to
    PREFILL_ON_ONE_BLAS_THREAD positions runs BLAS on one thread (none left spinning, the team
    goes on at once); after a longer one the decoder runs alone for a while."""
    from npllama import parallel
    from npllama.kernels import decode, threads
    from npllama.parallel import _blas_controllers, default_workers

    if default_workers() < 2 or not parallel.blas_can_be_held():
        pytest.skip("BLAS has one thread here (or can't be set): nothing to hold")
    monkeypatch.setattr(decode, "PREFILL_ON_ONE_BLAS_THREAD", 24)
    monkeypatch.setattr(threads, "BLAS_SPIN_SECONDS", 60.0)   # still alone when checked, however slow
    monkeypatch.delenv("NPLLAMA_DECODE_THREADS", raising=False)
    model = odd_model(2)
    decoder = FastDecoder(model, max_length=40, threads=None)   # the default: every core, with the chooser
    if decoder.threads < 2:
        pytest.skip("one core here: no team to decode after the prompt")
    blas_threads = []
    step_rows = decoder._step_rows

    def recording(tokens, start):
        # NumPy's BLAS (another library loaded later, e.g. SciPy's, is not the one matmul calls)
        blas_threads.append(max(c.get_num_threads() for c in _blas_controllers()))
        return step_rows(tokens, start)

    monkeypatch.setattr(decoder, "_step_rows", recording)
    before = max(c.get_num_threads() for c in _blas_controllers())
    logits = decoder.step(np.arange(prompt_length).reshape(1, -1) % 23)
    assert blas_threads == [1 if prompt_length <= 24 else before]
    assert max(c.get_num_threads() for c in _blas_controllers()) == before   # given back
    assert parallel._blas_state["depth"] == 0
    alone = decoder._chooser.next_way() == decoder._chooser.ALONE
    assert alone == (prompt_length > 24)
    with use_backend("numpy"):
        expected = model.forward_step(np.arange(prompt_length).reshape(1, -1) % 23, model.new_kv_cache(1, 40))
    assert_close(logits, expected, "prefill")


@pytest.mark.parametrize("prompt_length", [2, 16, 17, 30])
def test_short_prompts_token_by_token_and_long_ones_through_blas_give_the_same_logits(prompt_length):
    from npllama.kernels.decode import ONE_BY_ONE_MAX

    model = odd_model(2, np.float64)
    tokens = np.random.default_rng(prompt_length).integers(0, 23, size=(1, prompt_length + 3))
    decoder = FastDecoder(model, max_length=40)
    with use_backend("numpy"):
        kv_cache = model.new_kv_cache(1, 40)
        expected = [model.forward_step(tokens[:, :prompt_length], kv_cache)]
        expected += [model.forward_step(tokens[:, t:t + 1], kv_cache) for t in range(prompt_length, prompt_length + 3)]
    got = [decoder.step(tokens[:, :prompt_length])]
    got += [decoder.step(tokens[:, t:t + 1]) for t in range(prompt_length, prompt_length + 3)]
    for g, e in zip(got, expected):
        assert_close(g, e, f"prompt of {prompt_length} ({'one by one' if prompt_length <= ONE_BY_ONE_MAX else 'BLAS'})")


def test_an_interruption_before_thread_0_runs_its_share_leaves_no_helper_waiting():
    """Ctrl-C can land between posting a job and running thread 0's share: the helpers are then
    inside the job, at a barrier thread 0 will never reach.  They must be let through (not left
    spinning for good), and the next step must be right."""
    model = odd_model(2)
    tokens = np.random.default_rng(2).integers(0, 23, size=(1, 8))
    expected = decode_logits(FastDecoder(model, max_length=40, threads=1), tokens)
    decoder = FastDecoder(model, max_length=40, threads=3)
    team = decoder._team

    def interrupted(*args):
        raise KeyboardInterrupt

    got = [decoder.step(tokens[:, :3])[:, -1]]
    for t in range(3, 8):
        with pytest.raises(KeyboardInterrupt):
            team.run(interrupted, int(tokens[0, t]), decoder.length)
        got.append(finishes_within(10, decoder.step, tokens[:, t:t + 1])[:, -1])
    assert np.array_equal(np.stack(got), expected)


def test_fast_decoder_refuses_to_ignore_an_override_adapters_or_a_trace():
    """FastDecoder runs its own fused loops, not the ops: under a `use_op` override (entered before
    it was made, or between two steps), with LoRA adapters or inside a trace it gave the plain
    model's logits, silently.  It refuses, naming what it would ignore; outside, it steps again."""
    from npllama import use_op
    from npllama.lora import attach_lora
    from npllama.ops.rmsnorm import rmsnorm_forward
    from npllama.trace import trace

    model = small_model(2, np.float64)

    def halved(x, weight, eps):
        y, cache = rmsnorm_forward(x, weight, eps)
        return y / 2, cache

    decoder = FastDecoder(model, max_length=8)
    decoder.step(np.array([[1, 2]]))
    with use_op("rmsnorm_forward", halved):
        with pytest.raises(ValueError, match="FastDecoder would ignore the use_op override of rmsnorm_forward.*"
                                             r"model.forward_step"):
            FastDecoder(model, max_length=8)
        with pytest.raises(ValueError, match="use_op override of rmsnorm_forward"):
            decoder.step(np.array([[3]]))
    assert decoder.length == 2          # the refused step took no position
    with use_op("rmsnorm_forward", halved, backend="numpy"), use_backend("numba"):
        decoder.step(np.array([[3]]))   # an override for the other backend is not in force here
    with trace():
        with pytest.raises(ValueError, match="the trace being recorded"):
            decoder.step(np.array([[4]]))
    attach_lora(model, r=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="the LoRA adapters attached"):
        decoder.step(np.array([[4]]))
    model.lora.detach()
    assert decoder.step(np.array([[4]])).shape == (1, 1, 23)


def test_fast_decoder_steps_under_overrides_of_ops_no_next_token_forward_runs():
    """A backward, the loss and a classification head change none of the logits: FastDecoder, which
    ignores them as forward_step does, steps under their overrides (it refused, saying it would
    ignore them), and generate decodes with it there."""
    from npllama import use_op
    from npllama.generate import _decoder
    from npllama.ops.rmsnorm import rmsnorm_backward

    model = small_model(2, np.float64)
    tokens = np.array([[1, 2, 3]])
    expected = FastDecoder(model, max_length=8).step(tokens)

    def noisy(*args):
        raise AssertionError("no next-token forward runs this op")

    for name in ("rmsnorm_backward", "cross_entropy_forward", "classifier_forward"):
        with use_op(name, noisy if name != "rmsnorm_backward" else rmsnorm_backward), use_backend("numba"):
            np.testing.assert_array_equal(FastDecoder(model, max_length=8).step(tokens), expected)
            decode = _decoder(model, batch_size=1, max_length=8)
            assert getattr(decode, "__self__", None).__class__ is FastDecoder, name
