"""The built-in corpus: deterministic, small, fast, readable; and the unigram-entropy baseline."""
import hashlib
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama import corpus
from npllama.corpus import (default_corpus_path, make_default_corpus, unigram_entropy,
                            write_default_corpus)
from npllama.data import load_texts

# sha256 of "\n\n".join(make_default_corpus(200, seed=0)).  If you change the grammar on purpose,
# bump corpus.CORPUS_VERSION and update this; if it changes by itself, generation is not portable.
EXPECTED_SHA256_200 = "96e36a3a1702d978c546ea37610d9db8e0e60bf791904c16e5323c536d863492"


@pytest.fixture(scope="module")
def default_corpus():
    return make_default_corpus()


def words(stories):
    return [w for s in stories for w in re.findall(r"[a-z']+", s.lower())]


# ----- determinism ---------------------------------------------------------------------------------

def test_same_seed_gives_same_text():
    assert make_default_corpus(300, seed=7) == make_default_corpus(300, seed=7)


def test_different_seeds_give_different_text():
    a, b = make_default_corpus(300, seed=0), make_default_corpus(300, seed=1)
    assert a != b
    assert sum(x == y for x, y in zip(a, b)) < 10  # not just one story apart


def test_prefix_property():
    # More stories extend the corpus, they do not reshuffle it.
    assert make_default_corpus(500, seed=3)[:100] == make_default_corpus(100, seed=3)


def test_pinned_checksum():
    # Same seed, same bytes on every machine and Python version: random.Random is portable.
    text = "\n\n".join(make_default_corpus(200, seed=0))
    assert hashlib.sha256(text.encode()).hexdigest() == EXPECTED_SHA256_200, \
        "the corpus changed: if on purpose, bump CORPUS_VERSION and update EXPECTED_SHA256_200"


# ----- size and vocabulary (generation speed is not timed here: tests do not time anything) ---------

def test_default_size(default_corpus):
    stories = default_corpus
    n_bytes = sum(len(s.encode()) for s in stories)
    assert len(stories) == corpus.DEFAULT_N_STORIES == 10_000
    assert 2_000_000 <= n_bytes <= 4_500_000


def test_vocabulary_is_modest(default_corpus):
    stories = default_corpus
    vocabulary = set(words(stories))
    assert 200 <= len(vocabulary) <= 600
    assert set("".join(stories)) <= set(map(chr, range(32, 127)))  # plain ASCII, no newlines


def test_stories_are_varied(default_corpus):
    stories = default_corpus
    assert len(set(stories)) > 0.99 * len(stories)
    first_sentences = {s.split(".")[0] for s in stories}
    assert len(first_sentences) > 500  # names x kinds x traits x two phrasings
    # every arc is used
    assert all(any(marker in s for s in stories) for marker in
               ("could not find it", "into a tall tree", "take turns", "scared of", "telling me the truth",
                "hurt leg", "rain", "big bowl", "good friend"))


def test_stories_are_well_formed(default_corpus):
    stories = default_corpus
    for story in stories[:2000]:
        assert "\n" not in story
        assert story[0].isupper() and story[-1] in '."!'
        assert story.count('"') % 2 == 0  # every quote is closed
        assert "  " not in story
        # The hero is introduced by name and the story keeps using that name.
        hero = re.search(r"named (\w+)\.", story).group(1)
        assert story.count(hero) >= 2


def test_pronouns_agree_with_names(default_corpus):
    stories = default_corpus
    for story in stories[:2000]:
        hero = re.search(r"named (\w+)\.", story).group(1)
        # "Lily ... She loved" / "Tom ... He loved": the pronoun right after the intro agrees.
        follow = re.search(r"named \w+\. (He|She) ", story)
        if follow:
            expected = "She" if hero in corpus.GIRL_NAMES else "He"
            assert follow.group(1) == expected, story


def test_indefinite_articles(default_corpus):
    stories = default_corpus
    text = " ".join(stories)
    assert not re.search(r"\ba [aeiou]", text)
    assert not re.search(r"\ban [^aeiou\s]", text)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_stories"):
        make_default_corpus(0)
    with pytest.raises(TypeError, match="n_stories"):
        make_default_corpus("10")
    with pytest.raises(TypeError, match="seed"):
        make_default_corpus(10, seed=1.5)


# ----- files ---------------------------------------------------------------------------------------

def test_written_file_reads_back_as_the_same_stories(tmp_path):
    path = write_default_corpus(tmp_path / "sub" / "stories.txt", n_stories=150, seed=2)
    assert load_texts(path) == make_default_corpus(150, seed=2)
    assert path.read_text().count("\n\n") == 149  # one blank line between stories


def test_default_corpus_path_is_written_once(tmp_path):
    path = default_corpus_path(tmp_path, n_stories=100, seed=4)
    assert path.parent == tmp_path and "seed4" in path.name and f"v{corpus.CORPUS_VERSION}" in path.name
    first = path.stat().st_mtime_ns
    path.write_text("touched\n")  # a reused file is not regenerated
    assert default_corpus_path(tmp_path, n_stories=100, seed=4) == path
    assert path.read_text() == "touched\n" and path.stat().st_mtime_ns >= first
    assert default_corpus_path(tmp_path, n_stories=100, seed=5) != path
    assert not list(tmp_path.glob("*.tmp"))


# ----- unigram entropy -----------------------------------------------------------------------------

def test_unigram_entropy_of_uniform_tokens_is_log_vocab():
    ids = np.tile(np.arange(16), 10)
    assert unigram_entropy(ids, 16) == pytest.approx(math.log(16), rel=1e-12)
    assert unigram_entropy(ids, 1000) == pytest.approx(math.log(16), rel=1e-12)  # unused ids add nothing


def test_unigram_entropy_of_one_token_is_zero():
    assert unigram_entropy(np.full(50, 3, dtype=np.uint16), 8) == 0.0


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=200))
def test_unigram_entropy_matches_definition(ids):
    counts = np.bincount(ids, minlength=10)
    p = counts[counts > 0] / len(ids)
    expected = -sum(pi * math.log(pi) for pi in p)
    assert unigram_entropy(np.array(ids), 10) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert 0.0 <= unigram_entropy(np.array(ids), 10) <= math.log(10) + 1e-12


def test_unigram_entropy_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unigram_entropy(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        unigram_entropy(np.array([-1, 2]), 4)
    with pytest.raises(ValueError, match="empty"):
        unigram_entropy(np.array([], dtype=np.int64), 4)
    with pytest.raises(TypeError, match="integers"):
        unigram_entropy(np.array([0.5]), 4)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_entropy(np.array([0]), 0)
