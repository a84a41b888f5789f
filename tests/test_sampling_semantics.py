"""The sampling knobs mean what transformers' generate(do_sample=True, ...) means with the same values.

`next_token_probs` is the filtered distribution npllama samples from; here it is checked against
transformers' LogitsProcessor classes applied as its generate builds them (RepetitionPenalty, then
Temperature, TopK, TopP: transformers/generation/utils.py, _get_logits_processor), on random logits
that include ties, -inf, one dominant logit, vocabularies of 1 and 2 ids and top_k past the
vocabulary.  The tests that need transformers and torch skip without them; the tests of the
filter itself and of the sampler need neither.
"""
import numpy as np
import pytest

from npllama.generate import generate, next_token_probs, sample_next


def transformers_probs(logits, temperature, top_k, top_p, repetition_penalty, previous):
    """The distribution transformers' generate(do_sample=True, ...) samples from, in float64: its
    processors built as _get_logits_processor builds them (a knob at its neutral value -- penalty 1,
    temperature 1, top_k None or 0, top_p 1 -- adds no processor) and applied in that order."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    processors = transformers.LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(transformers.RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if temperature != 1.0:
        processors.append(transformers.TemperatureLogitsWarper(float(temperature)))
    if top_k is not None and top_k != 0:
        processors.append(transformers.TopKLogitsWarper(int(top_k)))
    if top_p is not None and top_p < 1.0:
        processors.append(transformers.TopPLogitsWarper(float(top_p)))
    input_ids = torch.tensor([list(previous)], dtype=torch.long)
    scores = processors(input_ids, torch.tensor(np.asarray(logits, dtype=np.float64))[None].clone())
    return torch.softmax(scores, dim=-1)[0].numpy()


def random_case(rng):
    """Logits and knobs of one comparison: the shapes of rows that break a careless filter."""
    V = int(rng.choice([1, 2, 3, 5, 8, 40, 300]))
    kind = rng.integers(5)
    if kind == 0:
        logits = rng.standard_normal(V) * rng.choice([0.3, 1.0, 6.0])
    elif kind == 1:                                   # a few levels: ties everywhere, across every cut
        logits = rng.choice([-1.0, 0.0, 0.5, 2.0], V)
    elif kind == 2:
        logits = np.round(rng.standard_normal(V) * 2) / 2
    elif kind == 3:                                   # one dominant id
        logits = rng.standard_normal(V)
        logits[rng.integers(V)] = 40.0
    else:                                             # a flat row (an untrained head)
        logits = np.zeros(V)
    if V > 2 and rng.random() < 0.3:                  # masked ids
        logits[rng.integers(0, V, size=2)] = -np.inf
    knobs = dict(temperature=float(rng.choice([0.25, 0.7, 1.0, 1.6])),
                 top_k=[None, 0, 1, 2, 3, 5, V, V + 7][rng.integers(8)],
                 top_p=[None, 0.05, 0.3, 0.5, 0.9, 0.97, 1.0][rng.integers(7)],
                 repetition_penalty=float(rng.choice([1.0, 1.0, 1.3, 0.8])),
                 previous=rng.integers(0, V, size=int(rng.integers(1, 5))).tolist())
    return logits, knobs


def is_a_nucleus(kept, probs, top_p, rounding=1e-12) -> bool:
    """kept (a boolean mask) is a smallest set of the most likely ids of `probs` whose mass reaches
    top_p: no dropped id more likely than a kept one, the mass at least top_p, and short of it
    without the least likely kept id (all up to rounding)."""
    mass, least = probs[kept].sum(), probs[kept].min()
    most_dropped = probs[~kept].max(initial=0.0)
    return most_dropped <= least + rounding and mass >= top_p - rounding and mass - least < top_p + rounding


@pytest.mark.parametrize("seed", range(4))
def test_the_filtered_distribution_is_transformers_one_ties_included(seed):
    """The same kept ids and the same renormalised probabilities (float64, 1e-12), ties included --
    but where the definition of top-p leaves the choice: when its cut falls inside a run of
    equally likely ids, transformers keeps the ones torch.sort (unstable past 16 elements) puts
    last, npllama the lower ids; and when a set's mass is top_p but for rounding, the rounding of
    each one's sum decides whether it is enough.  There each set must be a nucleus by the
    definition, and npllama's probabilities the distribution before top-p, renormalised on it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    rng = np.random.default_rng(seed)
    compared = 0
    while compared < 150:
        logits, knobs = random_case(rng)
        if np.isneginf(logits).all():
            continue
        where = f"logits={logits.tolist()} {knobs}"
        top_p = knobs["top_p"]
        before_top_p = dict(knobs, top_p=None)
        probs = next_token_probs(logits, **before_top_p)
        np.testing.assert_allclose(probs, transformers_probs(logits, **before_top_p), rtol=0, atol=1e-12,
                                   err_msg=where)
        expected = transformers_probs(logits, **knobs)
        got = next_token_probs(logits, **knobs)
        if top_p is None or top_p == 1.0 or np.array_equal(got > 0, expected > 0):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=where)
            compared += 1
            continue
        ours, theirs = got > 0, expected > 0
        smaller = ours if ours.sum() <= theirs.sum() else theirs
        tie_at_the_cut = np.isclose(probs[ours].min(), probs[~ours].max(initial=-1.0), rtol=0, atol=1e-12)
        mass_is_top_p = abs(probs[smaller].sum() - top_p) <= 1e-12
        assert tie_at_the_cut or mass_is_top_p, where
        assert is_a_nucleus(ours, probs, top_p) and is_a_nucleus(theirs, probs, top_p), where
        np.testing.assert_allclose(got, np.where(ours, probs, 0) / probs[ours].sum(), rtol=0, atol=1e-12,
                                   err_msg=where)
        compared += 1


@pytest.mark.parametrize("logits, top_k, kept", [
    ([1.0, 3.0, 3.0, 2.0, -1.0], 1, [1, 2]),          # two ids share the largest logit
    ([1.0, 3.0, 2.0, 2.0, 2.0], 2, [1, 2, 3, 4]),     # three tied with the 2nd
    ([0.0, 0.0, 0.0], 2, [0, 1, 2]),                  # a flat row is kept whole
    ([0.5, -np.inf, -np.inf], 2, [0]),                # the k-th is -inf: masked ids stay masked
    ([2.0, 1.0], 5, [0, 1]),                          # top_k past the vocabulary
])
def test_top_k_keeps_every_id_tied_with_the_k_th(logits, top_k, kept):
    """transformers' TopKLogitsWarper drops the ids scoring below the k-th largest score: every id
    tied with it stays (more than k ids), each as likely as the softmax of the kept logits says."""
    logits = np.array(logits)
    probs = next_token_probs(logits, 1.0, top_k=top_k)
    assert np.flatnonzero(probs).tolist() == kept
    softmax = np.exp(logits[kept] - logits[kept].max())
    np.testing.assert_allclose(probs[kept], softmax / softmax.sum(), rtol=1e-12)


def test_top_k_0_and_top_p_1_cut_nothing_as_in_transformers_generate():
    """transformers' generate adds no TopK processor for top_k=0 and no TopP one for top_p=1.0
    (users pass top_k=0 to turn off its default top_k=50): both mean no cut here too, in
    next_token_probs, sample_next and generate."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(9)
    uncut = next_token_probs(logits, 0.8)
    np.testing.assert_array_equal(next_token_probs(logits, 0.8, top_k=0), uncut)
    np.testing.assert_array_equal(next_token_probs(logits, 0.8, top_k=0, top_p=1.0), uncut)
    assert np.all(uncut > 0)
    draws = [sample_next(logits, 0.8, 0, None, np.random.default_rng(s)) for s in range(5)]
    assert draws == [sample_next(logits, 0.8, None, None, np.random.default_rng(s)) for s in range(5)]


def test_sample_next_takes_the_knobs_as_next_token_probs_does():
    """One signature for the filter's two faces: top_k and top_p default to None (no cut) in both,
    so sample_next(logits, 0.8, rng=rng) draws from next_token_probs(logits, 0.8); the positional
    form (logits, temperature, top_k, top_p, rng) still works; rng None draws fresh randomness,
    as generate's seed None does."""
    import inspect

    sampling, probs = inspect.signature(sample_next).parameters, inspect.signature(next_token_probs).parameters
    assert [sampling[name].default for name in ("top_k", "top_p")] == [probs[name].default for name in
                                                                      ("top_k", "top_p")] == [None, None]
    logits = np.random.default_rng(1).standard_normal(7)
    by_keyword = [sample_next(logits, 0.8, rng=np.random.default_rng(s)) for s in range(20)]
    assert by_keyword == [sample_next(logits, 0.8, None, None, np.random.default_rng(s)) for s in range(20)]
    assert sample_next(logits, 1.0, top_p=1e-9, rng=np.random.default_rng(0)) == int(np.argmax(logits))
    assert len({sample_next(logits, 1.0) for _ in range(60)}) > 1     # no rng: a fresh generator each call
    with pytest.raises(TypeError, match="rng must be None or a numpy Generator"):
        sample_next(logits, 1.0, rng=0)


@pytest.fixture
def sizes(monkeypatch):
    """The length of every array npllama.generate sorts (sizes["sorted"]: np.lexsort, np.argsort,
    np.sort) and partitions (sizes["partitioned"]: np.argpartition), in order."""
    from npllama import generate as generation

    sizes = {"sorted": [], "partitioned": []}
    for name, kind in [("lexsort", "sorted"), ("argsort", "sorted"), ("sort", "sorted"),
                       ("argpartition", "partitioned")]:
        real = getattr(np, name)

        def recording(keys, *args, _real=real, _kind=kind, **kwargs):
            sizes[_kind].append(np.shape(keys)[-1])
            return _real(keys, *args, **kwargs)
        monkeypatch.setattr(generation.np, name, recording)
    return sizes


@pytest.mark.parametrize("top_k", [None, 40])
def test_the_nucleus_sorts_only_the_few_most_probable_ids_even_after_top_k(top_k, sizes):
    """nucleus promises a partial sort (np.argpartition, then a sort of the candidates, doubled
    until they hold top_p), not a sort of the vocabulary: at most twice the nucleus (or the first
    guess, 64) is sorted.  After top_k most ids have probability 0: they are never needed (the
    others hold all the mass) and must not join the candidates, nor the partition that finds
    them (numpy's partition of a row of mostly equal values, the zeros, is slow)."""
    logits = np.random.default_rng(0).standard_normal(32000) * 3
    probs = next_token_probs(logits, 1.0, top_k=top_k, top_p=0.9)
    kept = np.count_nonzero(probs)
    assert 0 < kept <= (top_k or 32000)
    assert sizes["sorted"] and max(sizes["sorted"]) <= 2 * max(64, kept), (kept, sizes)
    if top_k is not None:
        assert max(sizes["partitioned"], default=0) <= top_k, sizes


@pytest.mark.parametrize("above", [0, 3, 100])
@pytest.mark.parametrize("top_k", [None, 40])
def test_ids_tied_with_the_nucleus_cut_are_counted_not_sorted(above, top_k, sizes):
    """A flat row (an untrained or zeroed head), or a few likely ids above a flat rest: the cut
    falls inside a run of tied ids as long as the vocabulary.  They are all equally likely, so
    their order (lower id first) is known without sorting them: only the ids above the tie are
    sorted -- and the nucleus is still the one a full stable sort of the vocabulary gives.
    (top_k 40 keeps every id tied with the 40th: the whole flat rest.)"""
    vocab = 32000
    logits = np.zeros(vocab)
    logits[np.random.default_rng(above).choice(vocab, above, replace=False)] = \
        1 + np.arange(above) / max(above, 1)
    probs = next_token_probs(logits, 1.0, top_k=top_k, top_p=0.9)
    assert max(sizes["sorted"], default=0) <= 2 * max(64, above), sizes
    before = next_token_probs(logits, 1.0, top_k=top_k)
    order = np.argsort(-before, kind="stable")
    nucleus = order[: int(np.searchsorted(np.cumsum(before[order]), 0.9 - 1e-12)) + 1]
    np.testing.assert_array_equal(np.flatnonzero(probs), np.sort(nucleus))


def textbook_probs(logits, temperature, top_k=None, top_p=None):
    """The filter written out with full sorts, as a student would first write it: temperature,
    top_k (every id at least as likely as the k-th), top_p (most likely first, up to and
    including the id whose cumulative probability reaches top_p), renormalised."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[::-1][min(top_k, z.size) - 1], z, -np.inf)
    q = np.exp(z - z.max())
    q /= q.sum()
    if top_p is not None:
        order = np.argsort(-q, kind="stable")
        cumulative = np.cumsum(q[order])
        q[order[np.argmax(cumulative >= top_p - 1e-12) + 1:]] = 0
        q /= q.sum()
    return q


def chi_square_critical(dof: int, z: float = 4.75) -> float:
    """The chi-square value exceeded with probability ~1e-6 (z = 4.75 standard normal deviations),
    by Wilson and Hilferty's cube-root approximation (no scipy needed)."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("knobs", [dict(temperature=1.0), dict(temperature=0.5, top_k=3),
                                   dict(temperature=1.4, top_p=0.75), dict(temperature=0.8, top_k=4, top_p=0.8),
                                   dict(temperature=1.0, top_k=1)])
def test_sample_next_draws_from_the_filtered_distribution(knobs):
    """20000 seeded draws on a vocabulary of 6 (with a tie): no draw outside the kept ids and a
    chi-square statistic over the kept ids below its 1e-6 critical value -- false for a sampler
    that drew before the cut or renormalised wrongly (their frequencies are off by percents)."""
    logits = np.array([1.2, -0.4, 0.7, 2.0, 0.7, -2.0])
    expected = textbook_probs(logits, **knobs)
    np.testing.assert_allclose(next_token_probs(logits, **knobs), expected, rtol=0, atol=1e-12)
    rng, n = np.random.default_rng(7), 20000
    counts = np.bincount([sample_next(logits, rng=rng, **knobs) for _ in range(n)], minlength=logits.size)
    kept = expected > 0
    assert counts[~kept].sum() == 0, counts
    if kept.sum() > 1:
        chi_square = np.sum((counts[kept] - n * expected[kept]) ** 2 / (n * expected[kept]))
        assert chi_square < chi_square_critical(int(kept.sum()) - 1), (chi_square, counts, n * expected)


@pytest.mark.parametrize("knobs, error, match", [
    (dict(temperature=-0.1), ValueError, r"temperature must be a finite number >= 0 \(0 = greedy\), got -0.1"),
    (dict(temperature="hot"), TypeError, r"temperature must be a finite number >= 0 .*got 'hot'"),
    (dict(temperature=1.0, top_p=0.0), ValueError, r"top_p must be None or a number in \(0, 1\], got 0.0"),
    (dict(temperature=1.0, top_p=1.01), ValueError, r"top_p must be None or a number in \(0, 1\], got 1.01"),
    (dict(temperature=1.0, top_p="0.9"), TypeError, r"top_p must be None or a number in \(0, 1\], got '0.9'"),
    (dict(temperature=1.0, top_k=-1), ValueError, r"top_k must be None or an integer >= 0 \(0 = no cut\), got -1"),
    (dict(temperature=1.0, top_k=2.0), TypeError, r"top_k must be None or an integer >= 0 \(0 = no cut\), got 2.0"),
    (dict(temperature=1.0, repetition_penalty=0.0), ValueError, r"repetition_penalty must be a finite number > 0"),
])
def test_bad_knobs_are_refused_naming_the_argument_and_its_range(knobs, error, match):
    """A wrong type is a TypeError, a number out of range a ValueError; one message says both."""
    logits = np.zeros(4)
    with pytest.raises(error, match=match):
        next_token_probs(logits, **knobs)
    with pytest.raises(error, match=match):
        sample_next(logits, rng=np.random.default_rng(0), **knobs)
