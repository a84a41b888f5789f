"""Generation: the KV-cache path equals recomputing everything, greedy is deterministic, sampling obeys its knobs."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, Tokenizer
from npllama.generate import generate, sample_next, stream_text


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40)
    m = Llama(config, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in m.params.values():  # larger weights: a less uniform next-token distribution
        p += 0.3 * rng.standard_normal(p.shape)
    return m


def greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        logits = model.forward(np.asarray([ids]))[0, -1]
        ids.append(int(np.argmax(logits)))
    return ids


def test_greedy_with_kv_cache_equals_recomputing_the_whole_sequence(model):
    prompt = [1, 5, 7, 2]
    assert generate(model, prompt, 20, temperature=0) == greedy_without_cache(model, prompt, 20)


def test_greedy_is_deterministic_and_sampling_is_seeded(model):
    prompt = [3, 4]
    assert generate(model, prompt, 15, temperature=0, seed=1) == generate(model, prompt, 15, temperature=0, seed=2)
    a = generate(model, prompt, 15, temperature=1.0, seed=7)
    assert a == generate(model, prompt, 15, temperature=1.0, seed=7)
    assert any(generate(model, prompt, 15, temperature=1.0, seed=s) != a for s in range(8, 12))


def test_top_k_1_and_tiny_top_p_are_greedy_on_logits_without_ties(model):
    """A random model's logits have no ties.  With a tie at the top, top_k=1 samples among the
    tied ids, as transformers' does (tests/test_sampling_semantics.py); a tiny top_p still takes
    the lower id, as greedy does (test_ties_at_the_top_p_cut_go_to_the_lower_ids)."""
    prompt = [2, 9, 4]
    greedy = generate(model, prompt, 12, temperature=0)
    assert generate(model, prompt, 12, temperature=1.3, top_k=1, seed=3) == greedy
    assert generate(model, prompt, 12, temperature=1.3, top_p=1e-9, seed=3) == greedy



@settings(max_examples=30, deadline=None)
@given(levels=st.lists(st.sampled_from([-1.0, 0.0, 2.0]), min_size=1, max_size=12),
       top_k=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_top_k_samples_only_ids_scoring_at_least_the_k_th(levels, top_k, seed):
    """Logits with ties (a flat row: an untrained or zeroed head): top_k samples only among the
    ids whose logit is at least the k-th largest -- every id tied with the k-th, as transformers'
    TopKLogitsWarper keeps them."""
    logits = np.array(levels)
    kth = np.sort(logits)[::-1][min(top_k, logits.size) - 1]
    allowed = set(np.flatnonzero(logits >= kth).tolist())
    rng = np.random.default_rng(seed)
    drawn = {sample_next(logits, 1.0, top_k, None, rng) for _ in range(20)}
    assert drawn <= allowed


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 2.8, 0.5])
    rng = np.random.default_rng(0)
    top3 = {sample_next(logits, 1.0, 3, None, rng) for _ in range(300)}
    assert top3 == {1, 2, 4}
    probs = np.exp(logits) / np.exp(logits).sum()
    # tokens 1 and 2 hold ~0.35 + ~0.31 of the mass: top_p=0.6 keeps exactly those two
    assert probs[1] + probs[2] > 0.6 > probs[1]
    nucleus = {sample_next(logits, 1.0, None, 0.6, rng) for _ in range(300)}
    assert nucleus == {1, 2}


def test_sampling_frequencies_follow_the_temperature():
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(logits, 1.0, None, None, rng) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1], atol=0.03)


def intended_probs(logits, temperature, top_k=None, top_p=None, repetition_penalty=1.0, previous=()):
    """The distribution the docs describe, step by step with full stable sorts: penalty (seen
    positive logits divided, negative ones multiplied), temperature, top_k, top_p."""
    z = np.array(logits, dtype=np.float64)
    for i in set(previous):
        z[i] = z[i] / repetition_penalty if z[i] > 0 else z[i] * repetition_penalty
    z = z / temperature
    if top_k is not None:
        z[z < np.sort(z)[::-1][min(top_k, z.size) - 1]] = -np.inf
    q = np.exp(z - z.max())
    q /= q.sum()
    if top_p is not None:
        order = np.argsort(-q, kind="stable")
        dropped = order[np.searchsorted(np.cumsum(q[order]), top_p) + 1:]
        q[dropped] = 0
        q /= q.sum()
    return q


SETTINGS = [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.7, top_k=4),
            dict(temperature=1.0, top_p=0.8),
            dict(temperature=0.9, top_k=5, top_p=0.7, repetition_penalty=1.4, previous=(3, 4, 6, 3))]


@pytest.mark.parametrize("setting", SETTINGS)
def test_sample_frequencies_match_the_intended_distribution(setting):
    """3000 seeded draws: every count within 5 binomial standard deviations of its expectation (a
    correct sampler misses that with probability ~1e-6 per id; the seed makes it deterministic),
    and no draw outside the kept ids."""
    from npllama.generate import next_token_probs

    logits = np.array([1.2, -0.3, 0.8, 2.0, -1.5, 0.1, 1.9, -0.7])
    penalty = {k: setting[k] for k in ("repetition_penalty", "previous") if k in setting}
    knobs = {k: setting.get(k) for k in ("temperature", "top_k", "top_p")}
    q = intended_probs(logits, **knobs, **penalty)
    np.testing.assert_allclose(next_token_probs(logits, **knobs, **penalty), q, rtol=1e-12, atol=1e-15)
    rng, n = np.random.default_rng(2024), 3000
    counts = np.bincount([sample_next(logits, rng=rng, **knobs, **penalty) for _ in range(n)], minlength=8)
    assert counts[q == 0].sum() == 0
    assert np.all(np.abs(counts - n * q) <= 5 * np.sqrt(n * q * (1 - q)) + 1), (counts, n * q)


@pytest.mark.parametrize("trial", range(6))
def test_the_distribution_is_transformers_logits_processors_on_logits_without_ties(trial):
    """transformers' RepetitionPenalty, Temperature, TopK and TopP processors, in that order (as
    its generate applies them), give the same probabilities in float64 -- negative logits and
    ids of the prompt penalised, top_k beyond the vocabulary, top_p = 1, a huge temperature."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from npllama.generate import next_token_probs

    rng = np.random.default_rng(trial)
    V = 30
    logits = rng.standard_normal(V) * [0.3, 1.0, 5.0][trial % 3]
    previous = rng.integers(0, V, size=6).tolist()
    logits[rng.integers(0, V, size=trial % 3)] = -np.inf     # masked ids
    for temperature, top_k, top_p, penalty in [(1.0, None, None, 1.3), (0.5, 5, None, 1.0), (2.0, None, 0.9, 1.2),
                                               (0.7, 12, 0.6, 0.8), (1e4, 100, 1.0, 1.5), (1.3, 3, 0.01, 1.1)]:
        processors = transformers.LogitsProcessorList([
            transformers.RepetitionPenaltyLogitsProcessor(penalty), transformers.TemperatureLogitsWarper(temperature),
            transformers.TopKLogitsWarper(top_k if top_k is not None else V),
            transformers.TopPLogitsWarper(top_p if top_p is not None else 1.0)])
        scores = processors(torch.tensor([previous]), torch.tensor(logits)[None].clone())
        expected = torch.softmax(scores, -1)[0].numpy()
        got = next_token_probs(logits, temperature, top_k, top_p, repetition_penalty=penalty, previous=previous)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
        # a vocabulary cut by vocab_size: transformers given the first 25 logits (ids past them not seen)
        seen = torch.tensor([[i for i in previous if i < 25]], dtype=torch.long)
        scores = processors(seen, torch.tensor(logits[:25])[None].clone())
        got = next_token_probs(logits, temperature, top_k, top_p, repetition_penalty=penalty, previous=previous,
                               vocab_size=25)
        np.testing.assert_allclose(got, torch.softmax(scores, -1)[0].numpy(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("probs, top_p, kept", [([0.7, 0.2, 0.1], 0.9, 2), ([0.5, 0.3, 0.2], 0.8, 2),
                                                ([0.6, 0.3, 0.1], 0.9, 2), ([0.1, 0.2, 0.7], 0.7, 1)])
def test_a_nucleus_whose_mass_is_top_p_but_for_rounding_reaches_it(probs, top_p, kept):
    """0.7 + 0.2 is 0.8999999999999999 in floats: top_p 0.9 still stops there, as the arithmetic
    says and transformers (float32) does; a third id was kept."""
    from npllama.generate import next_token_probs

    assert np.count_nonzero(next_token_probs(np.log(probs), 1.0, top_p=top_p)) == kept


def test_minus_inf_masks_an_id_as_in_transformers():
    """A -inf logit (transformers' way to ban an id) is never drawn, whatever the settings, and the
    other ids keep their proportions -- including when the penalty or top-k touch the masked ids."""
    from npllama.generate import next_token_probs

    logits = np.array([0.5, -np.inf, 1.5, -0.2, -np.inf, 1.0])
    rng = np.random.default_rng(0)
    for kwargs in (dict(), dict(top_k=5), dict(top_p=0.95), dict(repetition_penalty=1.3, previous=[1, 2, 4])):
        drawn = {sample_next(logits, 1.3, kwargs.pop("top_k", None), kwargs.pop("top_p", None), rng, **kwargs)
                 for _ in range(200)}
        assert drawn == {0, 2, 3, 5}
    finite = np.isfinite(logits)
    q = np.exp(logits[finite] / 1.3)
    np.testing.assert_allclose(next_token_probs(logits, 1.3)[finite], q / q.sum(), rtol=1e-12)
    assert sample_next(logits, 0, None, None, rng) == 2
    assert sample_next(-np.abs(logits), 1e-320, None, None, rng) == 3     # every finite logit overflows to -inf


def test_ties_at_the_top_p_cut_go_to_the_lower_ids():
    """Where transformers leaves it to torch.sort: at the top-p cut it keeps the tied id its sort
    puts last (id 2 here); npllama the lower id, as argmax.  (top_k keeps every tied id, as
    transformers does: tests/test_sampling_semantics.py.)"""
    from npllama.generate import next_token_probs

    logits = np.array([1.0, 3.0, 3.0, 2.0, -1.0])
    np.testing.assert_array_equal(next_token_probs(logits, 1.0, top_p=1e-9), [0, 1, 0, 0, 0])
    np.testing.assert_allclose(next_token_probs(logits, 1.0, top_k=1), [0, 0.5, 0.5, 0, 0])
    np.testing.assert_array_equal(next_token_probs(logits, 1e-320), [0, 1, 0, 0, 0])   # overflow: greedy
    np.testing.assert_array_equal(next_token_probs(logits, 1.0, vocab_size=1), [1])


def test_generation_stops_at_eos_and_streams_every_token(model):
    prompt = [1]
    free = generate(model, prompt, 25, temperature=0)
    eos = free[4]  # make the 4th generated token the end-of-sequence id
    seen = []
    ids = generate(model, prompt, 25, temperature=0, eos_id=eos, on_token=seen.append)
    assert ids[-1] == eos and len(ids) == free.index(eos, 1) + 1
    assert seen == ids[1:]


def test_stream_text_writes_the_new_text_only():
    class Pieces:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    written = []
    on_token = stream_text(Pieces(), [0, 1], written.append)
    for i in (2, 3, 4):
        on_token(i)
    assert "".join(written) == "cde"


@pytest.fixture(scope="module")
def byte_fallback_tokenizer(small_model_dir):
    """A SentencePiece tokenizer trained on English stories: an emoji, a CJK character or an
    accented letter is spelt with byte pieces (<0xF0> <0x9F> ...)."""
    from npllama.runs import load_tokenizer

    return load_tokenizer(small_model_dir)


def streamed(tokenizer, prompt_ids, new_ids, answer=False) -> str:
    written = []
    show = stream_text(tokenizer, prompt_ids, written.append, answer=answer)
    for i in new_ids:
        show(i)
        assert "\ufffd" not in "".join(written)   # a half-finished character is never shown
    show.flush()
    return "".join(written)


def test_stream_text_shows_characters_made_of_byte_pieces(byte_fallback_tokenizer):
    tok = byte_fallback_tokenizer
    prompt = tok.encode("Hi", bos=True)
    new = tok.encode("Hi 😀 café 猫 ok", bos=True)[len(prompt):]
    assert streamed(tok, prompt, new) == " 😀 café 猫 ok"


def test_an_answer_streamed_on_its_own_is_the_answer_decoded_alone(byte_fallback_tokenizer):
    """A chat answer is printed without the prompt: its first space only separated it from the
    prompt ('[/INST] The ball ...'), and decoding the answer's ids alone drops it.  Later spaces,
    a second leading one, and an answer that starts with no space are kept."""
    tok = byte_fallback_tokenizer
    prompt = tok.encode("[INST] Hi [/INST]", bos=True)
    for answer in ("The ball is red.", "  two spaces", "😀 first", ", comma"):
        new = tok.encode("[INST] Hi [/INST] " + answer, bos=True)[len(prompt):]
        assert streamed(tok, prompt, new) == tok.decode(prompt + new)[len(tok.decode(prompt)):]
        shown = streamed(tok, prompt, new, answer=True)
        assert shown == tok.decode(prompt + new)[len(tok.decode(prompt)) + 1:]
        assert shown == tok.decode(new) or answer.startswith(" ")


def test_stream_text_flush_writes_an_unfinished_character(byte_fallback_tokenizer):
    tok = byte_fallback_tokenizer
    prompt = tok.encode("Hi", bos=True)
    new = tok.encode("Hi 😀", bos=True)[len(prompt):-1]   # the emoji's last byte never comes
    text = streamed(tok, prompt, new)
    assert text == tok.decode(prompt + new)[len("Hi"):] and text.endswith("\ufffd")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from(list("ab cdé\nxyz😀猫ñ🎉\u00e9\u0301.")), max_size=30),
       split=st.integers(0, 100))
def test_stream_text_concatenated_is_the_decoded_text(byte_fallback_tokenizer, text, split):
    """prompt text + everything streamed == decode(all ids), wherever the prompt ends (if it ends
    inside a character, the streamed text begins with that character, not the prompt's U+FFFD);
    and what is streamed is text_after's text, generate_text's."""
    from npllama.generate import text_after

    tok = byte_fallback_tokenizer
    ids = tok.encode(text, bos=True)
    cut = 1 + split % len(ids)
    prompt, new = ids[:cut], ids[cut:]
    shown = streamed(tok, prompt, new)
    assert tok.decode(prompt).rstrip("\ufffd") + shown == tok.decode(ids)
    assert text_after(tok, prompt, new) == shown


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=[], max_new_tokens=3), ValueError, "at least one token"),
    (dict(prompt="hello", max_new_tokens=3), TypeError, "encode the text"),
    (dict(prompt=[1, 99], max_new_tokens=3), ValueError, "outside the vocabulary"),
    (dict(prompt=[1], max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(prompt=[1] * 30, max_new_tokens=11), ValueError, "max_position_embeddings = 40"),
    (dict(prompt=[1], max_new_tokens=3, temperature=-1), ValueError, "temperature"),
    (dict(prompt=[1], max_new_tokens=3, top_k=-1), ValueError, "top_k"),
    (dict(prompt=[1], max_new_tokens=3, top_p=1.5), ValueError, "top_p"),
    (dict(prompt=[1], max_new_tokens=3, threads=0), ValueError, "threads must be None or a positive int"),
    (dict(prompt=[1], max_new_tokens=3, threads=2.0), ValueError, "threads must be None or a positive int"),
])
def test_bad_generation_arguments_are_refused(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(model, **kwargs)


def test_model_generate_is_the_same_function(model):
    assert model.generate([1, 2], 5, temperature=0) == generate(model, [1, 2], 5, temperature=0)


def test_the_fast_decoder_and_the_reference_path_generate_the_same(model):
    from npllama import use_backend

    with use_backend("numpy"):
        reference = generate(model, [1, 5, 7], 15, temperature=0)
    with use_backend("numba"):
        fast = generate(model, [1, 5, 7], 15, temperature=0)
        on_three_threads = generate(model, [1, 5, 7], 15, temperature=0.9, seed=4, threads=3)
        on_one_thread = generate(model, [1, 5, 7], 15, temperature=0.9, seed=4, threads=1)
    assert fast == reference
    assert on_three_threads == on_one_thread      # sampled, too: the logits are the same bits


@pytest.mark.parametrize("only_on", [None, "numba"])
def test_generate_runs_a_use_op_override_on_the_numba_backend_too(model, only_on):
    """FastDecoder fuses every op into its own loops, so it cannot run an override: under one,
    generate decodes with the model's forward_step, which does (a planted bug must show)."""
    from npllama import use_backend, use_op
    from npllama.ops.rmsnorm import rmsnorm_forward

    def negated(x, weight, eps):
        y, cache = rmsnorm_forward(x, weight, eps)
        return -y, cache

    prompt = [1, 5, 7]
    with use_backend("numpy"), use_op("rmsnorm_forward", negated):
        expected = generate(model, prompt, 8, temperature=0)
    assert expected != generate(model, prompt, 8, temperature=0)     # the override changes the tokens
    with use_backend("numba"), use_op("rmsnorm_forward", negated, backend=only_on):
        assert generate(model, prompt, 8, temperature=0) == expected
        assert generate(model, [prompt, prompt], 8, temperature=0) == [expected, expected]
    with use_backend("numba"), use_op("rmsnorm_forward", negated, backend="numpy"):   # not in force here
        assert generate(model, prompt, 8, temperature=0) != expected


def test_generate_uses_the_fast_decoder_on_the_numba_backend_unless_an_override_is_in_force(model, monkeypatch):
    """Only an override in force sends generate to the model's forward_step: without one (or with
    one for the other backend) the numba backend decodes with FastDecoder (3-7x faster on the tiny
    preset, measured while writing this).  No test saw which one ran, so a condition that always
    chose forward_step would have passed them all."""
    from npllama import use_backend, use_op
    from npllama.ops.rmsnorm import rmsnorm_forward

    calls = []
    reference_step = model.forward_step
    monkeypatch.setattr(model, "forward_step", lambda *args, **kwargs: calls.append(1) or reference_step(*args,
                                                                                                        **kwargs))
    prompt = [1, 5, 7]
    with use_backend("numba"):
        generate(model, prompt, 4, temperature=0)
        generate(model, [prompt, prompt], 4, temperature=0)
        with use_op("rmsnorm_forward", rmsnorm_forward, backend="numpy"):
            generate(model, prompt, 4, temperature=0)
        assert calls == []
        with use_op("rmsnorm_forward", rmsnorm_forward):
            generate(model, prompt, 4, temperature=0)
        assert len(calls) == 4     # the prompt, then each new token but the last


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seeded_sampling_is_the_same_on_every_path_up_to_the_context_limit(model, dtype):
    """The numba FastDecoder, the reference KV cache, npllama.study() and a full forward per step
    with no cache draw the same tokens from one seed, for a prompt of several tokens, a batch of
    prompts, and every position up to max_position_embeddings."""
    import contextvars

    import npllama
    from npllama import use_backend

    m = Llama(model.config, dtype=dtype)
    for name, p in model.params.items():
        m.params[name][...] = p
    prompt, settings = [1, 5, 7, 2, 9], dict(temperature=1.2, top_k=6, top_p=0.9, repetition_penalty=1.3)
    n = m.config.max_position_embeddings - len(prompt)

    def studied():
        npllama.study()
        return generate(m, prompt, n, seed=11, **settings)

    rng, without_cache = np.random.default_rng(11), list(prompt)
    for _ in range(n):
        logits = m.forward(np.asarray([without_cache]))[0, -1]
        without_cache.append(sample_next(logits, rng=rng, previous=without_cache, **settings))
    with use_backend("numba"):
        fast = generate(m, prompt, n, seed=11, **settings)
        fast_batch = generate(m, [prompt, prompt[:2], prompt], n, seed=11, **settings)
    with use_backend("numpy"):
        reference = generate(m, prompt, n, seed=11, **settings)
        reference_batch = generate(m, [prompt, prompt[:2], prompt], n, seed=11, **settings)
    assert len(fast) == m.config.max_position_embeddings
    assert fast == reference == without_cache == contextvars.copy_context().run(studied)
    assert fast_batch == reference_batch and fast_batch[0] != fast_batch[2]   # one generator, its own draws per row


def test_greedy_sampling_takes_the_largest_logit_in_any_precision():
    from npllama.generate import sample_next

    rng = np.random.default_rng(0)
    for trial in range(50):
        logits = rng.standard_normal(1000).astype(np.float32)
        logits[rng.integers(0, 1000, size=3)] = logits.max()      # ties: the first one wins
        assert sample_next(logits, 0, None, None, rng) == int(np.argmax(logits.astype(np.float64)))
        assert sample_next(logits, 0, None, None, rng, vocab_size=500) == int(np.argmax(logits[:500]))


def full_sort_nucleus(probs, top_p):
    """The reference: a stable sort of the whole vocabulary."""
    from npllama.generate import NUCLEUS_ROUNDING

    order = np.argsort(-probs, kind="stable")
    return order[: int(np.searchsorted(np.cumsum(probs[order]), top_p - NUCLEUS_ROUNDING)) + 1]


@pytest.mark.parametrize("vocab", [1, 5, 64, 300, 32000])
def test_nucleus_by_partial_sort_equals_a_full_sort(vocab):
    from npllama.generate import nucleus

    rng = np.random.default_rng(vocab)
    for trial in range(40):
        logits = rng.standard_normal(vocab) * rng.choice([0.1, 1.0, 8.0])
        if trial % 3 == 0:
            logits = np.round(logits)          # many ties, some across the cut
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        for top_p in (1e-9, 0.3, 0.9, 0.999, 1 - 1e-12):
            np.testing.assert_array_equal(nucleus(probs, top_p, first_guess=4), full_sort_nucleus(probs, top_p))


# ----- batches, penalties, stops, seeds ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_batch_of_prompts_gives_each_prompts_own_generation(model, backend):
    from npllama import use_backend

    prompts = [[1, 5, 7], [2, 3], [4, 4, 9], [1]]   # two of one length: decoded as one batch
    with use_backend(backend):
        batch = generate(model, prompts, 12, temperature=0)
        assert batch == [generate(model, p, 12, temperature=0) for p in prompts]
        eos = batch[0][5]
        stopped = generate(model, prompts, 12, temperature=0, eos_id=eos)
    assert stopped[0] == batch[0][:batch[0].index(eos, 3) + 1]     # row 0 stopped at its first eos
    assert all(len(s) <= len(b) for s, b in zip(stopped, batch))
    assert generate(model, np.asarray([[1, 5, 7], [4, 4, 9]]), 4, temperature=0) == [batch[0][:7], batch[2][:7]]


def test_repetition_penalty_discourages_what_was_seen():
    logits = np.array([2.0, 1.9, -1.0, -1.05])
    rng = np.random.default_rng(0)
    assert sample_next(logits, 0, None, None, rng) == 0
    assert sample_next(logits, 0, None, None, rng, repetition_penalty=1.2, previous=[0]) == 1
    # negative logits are multiplied: a seen -1.0 becomes -1.2, below -1.05
    assert sample_next(logits[2:], 0, None, None, rng) == 0
    assert sample_next(logits[2:], 0, None, None, rng, repetition_penalty=1.2, previous=[0, 99]) == 1
    assert sample_next(logits[2:], 0, None, None, rng, repetition_penalty=1.2, previous=[1]) == 0
    assert sample_next(logits, 0, None, None, rng, vocab_size=1) == 0
    assert sample_next(np.array([0.0, 5.0]), 0, None, None, rng, vocab_size=1) == 0


def test_repetition_penalty_changes_a_looping_greedy_generation(model):
    plain = generate(model, [1], 30, temperature=0)
    penalised = generate(model, [1], 30, temperature=0, repetition_penalty=3.0)
    assert plain != penalised
    assert len(set(penalised[1:])) >= len(set(plain[1:]))


def test_stop_callback_ends_the_sequence(model):
    free = generate(model, [1], 20, temperature=0)
    seen_lengths = []

    def stop(new_ids):
        seen_lengths.append(len(new_ids))
        return len(new_ids) == 3

    assert generate(model, [1], 20, temperature=0, stop=stop) == free[:4]
    assert seen_lengths == [1, 2, 3]


def test_sampling_is_unseeded_unless_a_seed_is_given(model):
    runs = {tuple(generate(model, [1], 12, temperature=1.5)) for _ in range(6)}
    assert len(runs) > 1
    assert generate(model, [1], 12, temperature=1.5, seed=3) == generate(model, [1], 12, temperature=1.5, seed=3)


def test_stop_strings_and_generate_text():
    from npllama.generate import StopStrings

    stop = StopStrings(Letters(), ["cd", "x"])
    assert not stop([3, 4, 5]) and stop([3, 4, 5, 6])     # "abc", then "abcd"
    assert stop.cut("abcdef") == "ab" and stop.cut("abx") == "ab" and stop.cut("ab") == "ab"
    with pytest.raises(ValueError, match="stop strings must be non-empty"):
        StopStrings(Letters(), ["a", ""])


class StopsAfterTheString:
    """A stop rule other than StopStrings' own: the text stops after its first stop string (kept)."""

    def stop_at(self, text):
        found = [text.find(s) + len(s) for s in self.strings if s in text]
        return min(found) if found else None


@pytest.mark.parametrize("rule", ["own", "after the string"])
@pytest.mark.parametrize("answer", [False, True])
def test_the_clis_printer_stops_where_stop_strings_say_the_text_stops(capsys, rule, answer):
    """One rule of where a text stops: the CLI's printer asks the StopStrings object, so it prints
    what stop.cut keeps and ends the generation at the token where stop(new_ids) is true -- under
    StopStrings' rule and under another one a subclass gives it."""
    from npllama.commands.generate import StopAwarePrinter
    from npllama.generate import StopStrings, stream_text, text_after

    tokenizer = Letters()
    stop_class = StopStrings if rule == "own" else type("Kept", (StopsAfterTheString, StopStrings), {})
    prompt = [1, 3]                                                  # <1>a
    new = tokenizer.encode("bcdxcdef", bos=False)[1:]
    for strings in (["cd"], ["x", "de"], ["dxc", "f"], ["q"]):
        stop = stop_class(tokenizer, strings, after=prompt, answer=answer)
        printer = StopAwarePrinter(stop)
        show = stream_text(tokenizer, prompt, printer.write, answer=answer)
        steps = 0
        for steps, token in enumerate(new, 1):
            show(token)
            if printer.stopped(new[:steps]):
                break
        show.flush()
        printer.flush()
        full = text_after(tokenizer, prompt, new)                    # "bcdxcdef"
        ends = [full.find(s) + (0 if rule == "own" else len(s)) for s in strings if s in full]
        printed = capsys.readouterr().out
        assert printed == full[:min(ends, default=len(full))] == stop.cut(full), (rule, strings)
        api_steps = next((n for n in range(1, len(new) + 1) if stop(new[:n])), len(new))
        assert steps == api_steps, (rule, strings)


def test_stop_strings_decode_once_per_new_token_not_the_prompt_again():
    """generate calls a stop after every new id: it decodes prompt + new ids once, the prompt's own
    text (where the new text starts) having been found when the stop was made."""
    from npllama.generate import StopStrings

    decoded = []

    class CountingLetters(Letters):
        def decode(self, ids):
            decoded.append(list(ids))
            return super().decode(ids)

    prompt = [1, 3, 4, 5]                                   # <1>abc
    stop = StopStrings(CountingLetters(), ["de"], after=prompt)
    decoded.clear()
    assert not stop([6]) and stop([6, 7])                   # "d", then "de"
    assert decoded == [prompt + [6], prompt + [6, 7]]


class Letters:
    """A tokenizer of 32 ids: 0-2 special (</s> is 2), then a letter each."""
    vocab_size, eos_id = 32, 2

    def encode(self, text, bos=True):
        return [1] + [ord(c) - ord("a") + 3 for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 3) if i >= 3 else f"<{i}>" for i in ids)


def _always_says(model, token_id: int) -> None:
    """Edit `model` so that greedy decoding picks `token_id` whatever it reads: the blocks add
    nothing to the residual stream (o_proj, down_proj 0), so the final norm sees a token's
    embedding, whose first feature is made positive; only that feature survives the norm, and
    only `token_id`'s row of lm_head reads it."""
    params = model.params
    for name in params:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            params[name][...] = 0.0
    params["model.embed_tokens.weight"][:, 0] = 1.0
    params["model.norm.weight"][...] = 0.0
    params["model.norm.weight"][0] = 1.0
    params["lm_head.weight"][...] = 0.0
    params["lm_head.weight"][token_id, 0] = 1.0


def test_generate_text_is_the_text_after_the_prompt_with_its_first_space(small_model_dir):
    """SentencePiece drops the space of a text's first piece: "\u2581play" alone decodes as "play".
    generate_text's text is what follows the prompt (prompt + text reads as the whole sequence
    decoded), and a stop string " play" is found at the very start of the new text too."""
    from npllama.generate import StopStrings, generate_text, text_after

    model, tokenizer = Llama.from_pretrained(small_model_dir), Tokenizer(small_model_dir / "tokenizer.model")
    play = tokenizer.encode("play", bos=False)
    assert len(play) == 1 and tokenizer.id_to_piece(play[0]) == "\u2581play"     # a word's first piece
    _always_says(model, play[0])
    prompt = "Once upon a time"
    text = generate_text(model, tokenizer, prompt, 3, temperature=0.0)
    assert text == " play play play"
    prompt_ids = tokenizer.encode(prompt)
    assert prompt + text == tokenizer.decode(prompt_ids + play * 3)
    assert text_after(tokenizer, prompt_ids, play * 3) == text

    assert generate_text(model, tokenizer, prompt, 3, temperature=0.0, stop=[" play"]) == ""
    assert generate_text(model, tokenizer, [prompt, "One day"], 2, temperature=0.0, stop=["y p"]) == [" pla", " pla"]
    assert StopStrings(tokenizer, [" play"])(play)
    assert not StopStrings(tokenizer, ["a play"])(play)     # the piece read before the new ids is no part of them


def test_stop_strings_read_the_new_text_as_it_follows_each_prompt(small_model_dir):
    """An empty prompt's new text starts the text: its first word has no space ("play play"), and
    a stop string " play p" is first found at the second word -- the generation used to stop at
    the first one (the new ids were read after a plain piece, " play play"), returning "play play",
    which holds no stop string, where the text cut before its first stop string is "play".  Each
    prompt of a batch is read after its own text."""
    from npllama.generate import StopStrings, generate_text

    model, tokenizer = Llama.from_pretrained(small_model_dir), Tokenizer(small_model_dir / "tokenizer.model")
    play = tokenizer.encode("play", bos=False)
    _always_says(model, play[0])
    full = generate_text(model, tokenizer, ["", "Once"], 6, temperature=0.0)
    assert full == ["play play play play play play", " play play play play play play"]
    expected = [StopStrings(tokenizer, [" play p"]).cut(text) for text in full]
    assert expected == ["play", ""]
    assert generate_text(model, tokenizer, ["", "Once"], 6, temperature=0.0, stop=[" play p"]) == expected
    assert generate_text(model, tokenizer, "", 6, temperature=0.0, stop=[" play p"]) == "play"
    bos = tokenizer.encode("")
    assert not StopStrings(tokenizer, [" play"], after=bos)(play) and StopStrings(tokenizer, [" play"])(play)


def test_stop_strings_read_an_answer_as_it_is_shown_without_its_first_space(small_model_dir):
    """answer=True: the new ids are an answer shown on its own (stream_text(..., answer=True) drops
    the space that separates it from the prompt), and a stop string matches that text."""
    from npllama.chat import ChatTemplate
    from npllama.generate import StopStrings, stream_text, text_after

    tokenizer = Tokenizer(small_model_dir / "tokenizer.model")
    prompt = tokenizer.encode(ChatTemplate("llama2").prompt("Hi"), bos=False)
    play = tokenizer.encode("play", bos=False)
    assert text_after(tokenizer, prompt, play * 2) == " play play"
    shown = []
    show = stream_text(tokenizer, prompt, shown.append, answer=True)
    for i in play * 2:
        show(i)
    show.flush()
    assert "".join(shown) == "play play"
    answer = StopStrings(tokenizer, ["play"], after=prompt, answer=True)
    assert answer(play)
    spaced = StopStrings(tokenizer, [" play"], after=prompt, answer=True)
    assert not spaced(play) and spaced(play * 2)
    assert StopStrings(tokenizer, [" play"], after=prompt)(play)       # the text as it follows the prompt
    with pytest.raises(TypeError, match="answer must be True or False"):
        StopStrings(tokenizer, ["play"], answer="yes")


def test_generate_text_stops_at_each_end_id_the_config_lists():
    """A LLaMA-3 config lists several eos ids (end of text, end of turn): each ends a generation,
    besides the tokenizer's own </s>."""
    from npllama.generate import generate_text

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=[2, 20])
    model = Llama(config, seed=0)
    model.params["lm_head.weight"][20] += 100.0   # greedy always picks id 20, the second end id
    assert generate_text(model, Letters(), "ab", max_new_tokens=10, temperature=0.0) == Letters().decode([20])
    model.config.eos_token_id = 2                  # one end id: 20 no longer ends it
    assert len(generate_text(model, Letters(), "ab", max_new_tokens=10, temperature=0.0)) == 10


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=[1], max_new_tokens=3, repetition_penalty=0), ValueError, "repetition_penalty"),
    (dict(prompt=[1], max_new_tokens=3, repetition_penalty=float("nan")), ValueError, "repetition_penalty"),
    (dict(prompt=[1], max_new_tokens=3, vocab_size=24), ValueError, "vocab_size"),
    (dict(prompt=[1], max_new_tokens=3, eos_id="2"), TypeError, "eos_id"),
    (dict(prompt=[1], max_new_tokens=3, eos_id=[2, 99]), ValueError, r"eos_id 99 is not a token id of the model \(0 to"),
    (dict(prompt=[1], max_new_tokens=3, stop=5), TypeError, "stop"),
    (dict(prompt=[[1], [2]], max_new_tokens=3, stop=[print]), TypeError,
     r"stop must be None, a function or, for a batch of 2 prompts, a list of 2 functions \(or None\)"),
    (dict(prompt=[1], max_new_tokens=3, stop=[print]), TypeError, r"stop must be None, a function or"),
    (dict(prompt=[[1], []], max_new_tokens=3), ValueError, r"prompt\[1\] must hold at least one token"),
    (dict(prompt=[[1], [2]], max_new_tokens=3, on_token=print), ValueError, "one prompt"),
    # a batch of no prompt was "max() arg is an empty sequence"; one that mixes ids and lists was
    # taken for one prompt, "found [1]"
    (dict(prompt=np.zeros((0, 3), dtype=np.int64), max_new_tokens=3), ValueError,
     r"prompt is a batch of no prompt: give at least one"),
    (dict(prompt=[[1], 2], max_new_tokens=3), TypeError,
     r"prompt mixes token ids and lists of them: give one prompt \(a list of ids\) or a batch \(a list of id lists\)"),
    (dict(prompt=[1, np.array([2])], max_new_tokens=3), TypeError, r"prompt mixes token ids and lists of them"),
])
def test_bad_new_generation_arguments_are_refused(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(model, **kwargs)


def test_threads_above_the_budget_are_refused_before_any_thread_starts(model, monkeypatch):
    """As `train --threads`: at most NPLLAMA_MAX_THREADS (lowered here, so that a missing check
    would start 3 threads, not thousands)."""
    from npllama.kernels.decode import FastDecoder
    from npllama.kernels.threads import ENV_VARIABLE, decode_threads

    monkeypatch.setenv("NPLLAMA_MAX_THREADS", "2")
    with pytest.raises(ValueError, match=r"^threads must be at most 2 \(NPLLAMA_MAX_THREADS\), got 3$"):
        generate(model, [1], 3, temperature=0, threads=3)
    with pytest.raises(ValueError, match=r"threads must be at most 2 \(NPLLAMA_MAX_THREADS\), got 3$"):
        FastDecoder(model, threads=3)
    monkeypatch.setenv(ENV_VARIABLE, "3")
    with pytest.raises(ValueError, match=rf"^{ENV_VARIABLE} must be at most 2 \(NPLLAMA_MAX_THREADS\), got 3$"):
        decode_threads()
    monkeypatch.setenv(ENV_VARIABLE, "2")
    assert generate(model, [1], 3, temperature=0, threads=2) == generate(model, [1], 3, temperature=0)
    # refused before the per-thread buffers: 10**13 rows of them would be a MemoryError first
    with pytest.raises(ValueError, match=r"threads must be at most 2 \(NPLLAMA_MAX_THREADS\), got 10,000,000,000,000$"):
        FastDecoder(model, threads=10**13)
    # the default (every core) is not the caller's choice: it stays within the budget, not refused
    monkeypatch.delenv(ENV_VARIABLE)
    monkeypatch.setenv("NPLLAMA_MAX_THREADS", "1")
    assert decode_threads()[0] == 1 and FastDecoder(model).threads == 1


def test_a_thread_count_past_the_budget_is_refused_before_anything_is_allocated():
    """FastDecoder(threads=<huge>) checks the count first: not after the KV cache and the RoPE
    tables (here ~50 MB for a long context), nor after the per-thread buffers."""
    import tracemalloc

    from npllama.kernels.decode import FastDecoder

    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=2**18)
    long_context = Llama(config, seed=0)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"^threads must be at most \d+ \(NPLLAMA_MAX_THREADS\), got 1,000,000$"):
            FastDecoder(long_context, threads=10**6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB allocated before the thread count was refused"

@pytest.mark.parametrize("prompt, max_new_tokens, match", [
    ([1] * 41, 1, r"^the prompt alone \(41 tokens\) exceeds the model's context \(max_position_embeddings = 40\): "
                  r"shorten it$"),
    ([1] * 40, 1, r"^the prompt alone \(40 tokens\) fills the model's context .*no room for a new token"),
    ([1] * 30, 11, r"^the prompt \(30 tokens\) plus max_new_tokens \(11\) is longer than the model's context "
                   r"\(max_position_embeddings = 40\): use max_new_tokens 10 or less, or a shorter prompt$"),
    ([[1] * 30, [1]], 11, r"^the longest prompt \(30 tokens\) plus max_new_tokens \(11\)"),
])
def test_a_prompt_that_does_not_fit_the_context_is_refused_saying_what_fits(model, prompt, max_new_tokens, match):
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, max_new_tokens, temperature=0)
    if not _is_batch_prompt(prompt) and len(prompt) < 40:    # the largest count named does fit
        assert len(generate(model, prompt, 40 - len(prompt), temperature=0)) == 40


def _is_batch_prompt(prompt):
    return isinstance(prompt[0], list)


def test_a_greedy_distribution_is_one_row_not_an_identity_matrix():
    """temperature 0 gives a one-hot row; it was taken from np.eye(V), V x V floats (123 GiB for
    Llama 3's 128,256 ids).  Memory, not time: the peak stays near the row's own size."""
    import tracemalloc

    from npllama.generate import next_token_probs

    logits = np.random.default_rng(0).standard_normal(2048)
    tracemalloc.start()
    try:
        probs = next_token_probs(logits, 0.0, vocab_size=2000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert probs.shape == (2000,) and probs.sum() == 1.0 and probs[np.argmax(logits[:2000])] == 1.0
    assert peak < 100 * probs.nbytes


def test_end_ids_listed_in_generation_config_json_end_a_generation(tmp_path):
    """transformers' generate stops at generation_config.json's eos_token_id, which may list more
    ids than config.json (Meta-Llama-3-8B-Instruct: config.json 128001, generation_config.json
    [128001, 128009], its end of turn).  A folder loaded by from_pretrained stops there too; they
    were ignored, and a chat answer ran on past its end of turn."""
    import json

    from npllama.generate import end_ids, generate_text

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=2)
    model = Llama(config, seed=0)
    model.params["lm_head.weight"][20] += 100.0   # greedy always picks id 20
    model.save_pretrained(tmp_path / "m")
    generation_config = tmp_path / "m" / "generation_config.json"
    fields = json.loads(generation_config.read_text())
    assert fields["eos_token_id"] == 2
    assert len(generate_text(Llama.from_pretrained(tmp_path / "m"), Letters(), "ab", 10, temperature=0.0)) == 10
    generation_config.write_text(json.dumps({**fields, "eos_token_id": [2, 20]}))
    loaded = Llama.from_pretrained(tmp_path / "m")
    assert end_ids(loaded, Letters()) == [2, 20]
    assert generate_text(loaded, Letters(), "ab", max_new_tokens=10, temperature=0.0) == Letters().decode([20])
    generation_config.write_text(json.dumps({**fields, "eos_token_id": [2, 32]}))   # past the vocabulary
    with pytest.raises(ValueError, match=r"generation_config.json: field 'eos_token_id': must be None, an id or a "
                                         r"non-empty list of ids in \[0, 32\), got \[2, 32\] \(config.json's vocab_size is 32\)"):
        Llama.from_pretrained(tmp_path / "m")


HF_SHAPES = {
    "grouped-query": dict(),
    "multi-query, tied embeddings": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "llama3 rope scaling": dict(rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                     low_freq_factor=1.0, high_freq_factor=4.0,
                                                     original_max_position_embeddings=8)),
    "explicit head_dim": dict(head_dim=12, num_attention_heads=2, num_key_value_heads=1),
}


@pytest.mark.parametrize("shape", HF_SHAPES)
def test_greedy_generation_is_transformers_generate(shape, tmp_path):
    """A random LlamaForCausalLM saved by transformers: greedy tokens as its generate(do_sample=False)
    gives them, on both backends -- up to the last position of the context, with a repetition
    penalty over the prompt's ids, and stopping at either of two eos ids."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from npllama import use_backend

    hf_config = transformers.LlamaConfig(**{**dict(vocab_size=37, hidden_size=16, intermediate_size=24,
                                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                   max_position_embeddings=32), **HF_SHAPES[shape]})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():   # far from the init: clear margins between the top logits
            p.add_(0.2 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.5)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path, dtype=np.float64)
    rng = np.random.default_rng(0)
    for prompt, options in [(rng.integers(0, 37, 25).tolist(), dict()),
                            (rng.integers(0, 37, 4).tolist(), dict(repetition_penalty=1.5)),
                            (rng.integers(0, 37, 3).tolist(), dict(eos_token_id=None))]:
        n = 32 - len(prompt)
        ids = torch.tensor([prompt])
        if options.get("eos_token_id", 0) is None:   # two eos ids: the 3rd and 6th of the free run's new ids
            free = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                               eos_token_id=None, pad_token_id=0)[0].tolist()
            options = dict(eos_token_id=[free[len(prompt) + 5], free[len(prompt) + 2]])
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                               pad_token_id=0, **{"eos_token_id": None, **options})[0].tolist()
        if "eos_token_id" in options:    # it stopped early, at one of the two
            assert len(expected) <= len(prompt) + 6 and expected[-1] in options["eos_token_id"]
        ours_options = {"eos_id" if k == "eos_token_id" else k: v for k, v in options.items()}
        for backend in ("numpy", "numba"):
            with use_backend(backend):
                assert generate(ours, prompt, n, temperature=0, **ours_options) == expected, (backend, prompt)


DECODE_SHAPES = {
    "grouped-query, untied": dict(num_key_value_heads=2),
    "multi-query, tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "llama3 rope scaling": dict(num_key_value_heads=2, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8)),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("shape", DECODE_SHAPES)
def test_the_decoder_s_logits_are_the_full_forward_s_at_every_step_to_the_context_end(shape, backend):
    """generate's decoder (FastDecoder under numba, forward_step with a KV cache under numpy), fed a
    prompt of 1 or of max_position_embeddings - 1 tokens and then one token at a time up to the
    context's end, gives at every position the logits of one forward over the whole sequence."""
    from npllama import use_backend
    from npllama.generate import _decoder

    context = 20
    config = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=context, **DECODE_SHAPES[shape])
    model = Llama(config, seed=1, dtype=np.float64)
    sequence = np.random.default_rng(0).integers(0, 29, size=(1, context))
    with use_backend(backend):
        full = model.forward(sequence)
        for prompt_length in (1, context - 1):
            decode = _decoder(model, batch_size=1, max_length=context)
            steps = [decode(sequence[:, :prompt_length])] + [decode(sequence[:, t:t + 1])
                                                             for t in range(prompt_length, context)]
            np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-12)
        with pytest.raises(ValueError, match=r"fills the model's context \(max_position_embeddings = 20\)"):
            generate(model, sequence[0].tolist(), 1)


# ----- the sampling arguments: a wrong type is a TypeError, a wrong value a ValueError, each named
@pytest.mark.parametrize("knobs, error, message", [
    (dict(seed=1.5), TypeError, "seed must be None or a non-negative integer, got 1.5"),
    (dict(seed="1"), TypeError, "seed must be None or a non-negative integer, got '1'"),
    (dict(seed=True), TypeError, "seed must be None or a non-negative integer, got True"),
    (dict(seed=-1), ValueError, "seed must be None or a non-negative integer, got -1"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens must be a positive integer, got 2.0"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be a positive integer, got 0"),
    (dict(top_k=2.0), TypeError, "top_k must be None or an integer >= 0 (0 = no cut), got 2.0"),
    (dict(top_k=-1), ValueError, "top_k must be None or an integer >= 0 (0 = no cut), got -1"),
    (dict(top_p="0.9"), TypeError, "top_p must be None or a number in (0, 1], got '0.9'"),
    (dict(top_p=0.0), ValueError, "top_p must be None or a number in (0, 1], got 0.0"),
    (dict(temperature="hot"), TypeError, "temperature must be a finite number >= 0 (0 = greedy), got 'hot'"),
    (dict(temperature=-1.0), ValueError, "temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    (dict(repetition_penalty=None), TypeError, "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be a finite number > 0"),
])
def test_a_wrong_type_is_a_type_error_and_a_wrong_value_a_value_error(knobs, error, message):
    from npllama.generate import check_generation_args

    args = dict(max_new_tokens=2, temperature=1.0, top_k=None, top_p=None, seed=None) | knobs
    with pytest.raises(error) as e:
        check_generation_args(**args)
    assert message in str(e.value)


def test_top_k_0_cuts_nothing_as_in_transformers():
    """transformers adds no TopKLogitsWarper for top_k=0: every id keeps its probability."""
    from npllama.generate import next_token_probs

    logits = np.array([0.5, -1.0, 2.0, 0.0])
    np.testing.assert_array_equal(next_token_probs(logits, 1.0, top_k=0), next_token_probs(logits, 1.0))
    assert (next_token_probs(logits, 1.0, top_k=0) > 0).all()
