"""The built-in default corpus: short children's stories generated from a small grammar.

`npllama train` with no arguments must learn something visible in a few minutes on a laptop,
with nothing downloaded.  Real text (TinyStories and the like) is megabytes to download; instead
we generate stories in the same spirit from a few hundred words, a few dozen sentence templates
and nine story arcs (setup -> problem -> resolution -> ending, with dialogue in quotes).  The
text is varied enough that a model must learn grammar, agreement (he/she, his/her), copying of
names and objects from earlier in the story and the shape of a story, and regular enough that a
~1M-parameter model learns it in minutes.

Everything is deterministic: `random.Random(seed)` (its `random()`/`choice` algorithms are the
same on every platform and Python version we support), so the same seed gives byte-for-byte the
same corpus everywhere.  Bump `CORPUS_VERSION` whenever the grammar changes: it is part of the
cached file name, so old caches are not reused by mistake.

    stories = make_default_corpus()                 # list[str], one story per item, ~3.8 MB
    path = default_corpus_path("~/.cache/npllama")  # written once, then reused
    h = unigram_entropy(ids, vocab_size)            # nats/token: the "no context" baseline

File format (`write_default_corpus`): UTF-8 text, one story per paragraph, stories separated by
one blank line -- the same rule `npllama.data.load_texts` uses for `.txt` files.  A story never
contains a newline.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.atomic import atomic_write_text

CORPUS_VERSION = 1
DEFAULT_N_STORIES = 10_000

# ----- the vocabulary ---------------------------------------------------------------------------

GIRL_NAMES = ("Lily", "Mia", "Anna", "Sara", "Lucy", "Zoe", "Emma", "Amy", "Ella", "Rose", "Kim",
              "Nina", "Ruby", "Daisy")
BOY_NAMES = ("Tom", "Ben", "Sam", "Max", "Tim", "Leo", "Jack", "Dan", "Finn", "Bob", "Jake", "Ned",
             "Oliver", "Kevin")
ANIMALS = ("dog", "cat", "rabbit", "bear", "duck", "fox", "frog", "mouse", "pig", "bird", "puppy",
           "kitten", "lion", "owl")
TRAITS = ("kind", "happy", "curious", "brave", "shy", "funny", "clever", "friendly", "busy",
          "gentle", "cheerful")
LOVES = ("play outside", "draw pictures", "sing songs", "read books", "run and jump",
         "build things with blocks", "look at the stars", "dig in the sand", "pick flowers",
         "splash in puddles", "climb trees", "play games with friends", "help other people",
         "dance to music", "ride a bike")

COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "brown")
SIZES = ("big", "little", "small", "shiny", "soft", "new", "old", "pretty", "funny")
TOYS = ("ball", "kite", "hat", "teddy bear", "toy car", "boat", "doll", "balloon", "drum", "scarf",
        "truck", "robot", "bucket", "train")
LIGHT_TOYS = ("kite", "hat", "balloon", "scarf")  # things the wind can carry up a tree

# Each place comes with its own hiding spots and things to see, so a story stays in one world.
PLACES = {
    "park": dict(spots=("under a bench", "behind a big tree", "next to the slide",
                        "in the tall grass", "under a bush"),
                 sights=("ducks in the pond", "birds in the trees", "kids on the swings")),
    "garden": dict(spots=("under a bush", "behind the flowers", "next to a big rock",
                          "under a pile of leaves"),
                   sights=("bees on the flowers", "butterflies", "a worm in the dirt")),
    "forest": dict(spots=("behind a big tree", "under a log", "next to a big rock",
                          "under a pile of leaves"),
                   sights=("a deer", "birds in the trees", "a squirrel with a nut")),
    "beach": dict(spots=("in the sand", "behind a big rock", "next to a sand castle",
                         "near the water"),
                  sights=("shells on the sand", "fish in the water", "a crab")),
    "farm": dict(spots=("in the hay", "behind the barn", "next to the fence", "under the cart"),
                 sights=("cows in the field", "pigs in the mud", "a horse")),
    "playground": dict(spots=("under the slide", "next to the swings", "in the sand box",
                              "behind a bench"),
                       sights=("kids on the swings", "a big slide", "birds on the fence")),
    "lake": dict(spots=("near the water", "behind a big rock", "under a bush", "in the tall grass"),
                 sights=("ducks on the water", "fish in the water", "a frog on a rock")),
    "hill": dict(spots=("behind a big rock", "in the tall grass", "under a bush",
                        "next to an old tree"),
                 sights=("the whole town", "clouds in the sky", "sheep in the grass")),
}
TIMES = ("One day", "One morning", "One sunny day", "One afternoon", "One warm day")
FEELINGS_GOOD = ("happy", "glad", "proud", "excited")
FEELINGS_BAD = ("sad", "upset", "worried")
FRIEND_MAKERS = ("drew a picture of a big sun", "made a card with a heart on it",
                 "picked some pretty flowers", "baked some cookies", "made a toy out of a box")
INSIDE_GAMES = ("built a fort with blankets", "drew pictures of the sun", "played a game with cards",
                "made a tower with blocks", "read a book about a dragon", "sang songs and danced")
SCARY = {  # (thing, at home?) -> (what the helper says, what the hero does at the end)
    ("a big dog", False): ("The dog is friendly. Look, it wants to play.", "patted the dog on the head"),
    ("a big spider", False): ("It is just a spider. It will not hurt you.", "watched the spider make a web"),
    ("the dark", True): ("Nothing is there. Look, I have a light.", "closed {his} eyes and fell asleep"),
    ("the loud storm", True): ("It is just thunder. We are safe inside.", "listened to the rain and fell asleep"),
}


# ----- characters ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Character:
    """A story character: a name and the pronouns that must agree with it."""
    name: str
    kind: str        # "girl", "boy", or an animal
    he: str          # "he" / "she"
    his: str         # "his" / "her"
    him: str         # "him" / "her"

    def intro(self, adjective: str) -> str:
        """'a kind little girl named Lily' / 'a shy fox named Tom'."""
        if self.kind in ("girl", "boy"):
            return f"{a(adjective)} little {self.kind} named {self.name}"
        return f"{a(adjective)} {self.kind} named {self.name}"


def make_character(rng: random.Random, exclude: str | None = None) -> Character:
    is_girl = rng.random() < 0.5
    names = [n for n in (GIRL_NAMES if is_girl else BOY_NAMES) if n != exclude]
    name = rng.choice(names)
    kind = rng.choice(ANIMALS) if rng.random() < 0.3 else ("girl" if is_girl else "boy")
    if is_girl:
        return Character(name, kind, "she", "her", "her")
    return Character(name, kind, "he", "his", "him")


def a(word: str) -> str:
    """The indefinite article: 'a ball', 'an orange ball'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


# ----- the story arcs ------------------------------------------------------------------------------
# Each arc sets its own scene (outside at a place, or at home), then tells a problem and how it is
# solved.  `s.pick` chooses one phrasing, `s.maybe` sometimes adds an optional sentence: the same
# events are told in several ways, which is what keeps a small model from just memorising.

@dataclass
class Scene:
    rng: random.Random
    hero: Character
    friend: Character
    place: str        # one of PLACES
    toy: str          # "red ball"
    parent: str       # "mom" / "dad"

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def maybe(self, sentence: str, p: float = 0.5) -> list[str]:
        return [sentence] if self.rng.random() < p else []

    def go_out(self) -> str:
        """The opening of an outdoor arc: the hero and the friend go to the place."""
        h, f = self.hero, self.friend
        when = self.rng.choice(TIMES)
        return self.pick(f"{when}, {h.name} went to the {self.place} with {h.his} friend {f.name}.",
                         f"{when}, {h.name} and {f.name} went to the {self.place}.")

    def sight(self) -> list[str]:
        return self.maybe(f"They saw {self.rng.choice(PLACES[self.place]['sights'])}.", p=0.3)


def arc_lost_toy(s: Scene) -> list[str]:
    h, f, spot = s.hero, s.friend, s.rng.choice(PLACES[s.place]["spots"])
    return [
        s.go_out(), *s.sight(),
        s.pick(f"{h.name} played with {h.his} {s.toy}.", f"{h.name} took {h.his} {s.toy} with {h.him}."),
        s.pick(f"But then {h.he} could not find it.", f"Then the {s.toy} was gone!"),
        s.pick(f'"Oh no! Where is my {s.toy}?" {h.name} cried.',
               f'"Where did my {s.toy} go?" asked {h.name}.'),
        s.pick(f'{f.name} said, "Do not worry. I will help you look."',
               f'"I can help you find it," said {f.name}.'),
        f"They looked and looked. At last, {f.name} found the {s.toy} {spot}.",
        f"{h.name} was so {s.pick(*FEELINGS_GOOD)}. {cap(h.he)} gave {f.name} a big hug.",
    ]


def arc_stuck_up_high(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    helper, helper_again = s.rng.choice(((f"{h.his} {s.parent}", f"{h.his} {s.parent}"),
                                         ("a tall man", "the man"),
                                         ("a kind old woman", "the old woman")))
    return [
        s.go_out(),
        s.pick(f"The wind blew {h.name}'s {s.toy} up into a tall tree.",
               f"A big wind came and {h.name}'s {s.toy} flew into a tree."),
        s.pick(f'"I cannot reach it!" said {h.name}.', f'"My {s.toy}!" cried {h.name}.'),
        s.pick(f"{f.name} tried to jump, but the tree was too tall.",
               f"{f.name} tried to climb the tree, but it was too high."),
        f"Then they saw {helper}.",
        *s.maybe(s.pick(f'"Can you help us, please?" asked {h.name}.',
                        f'"Please help us get the {s.toy}," said {f.name}.')),
        f"{cap(helper_again)} reached up and got the {s.toy}.",
        s.pick(f'"Thank you!" said {h.name} with a big smile.', f'{h.name} said, "Thank you so much!"'),
    ]


def arc_sharing(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    return [
        s.go_out(),
        f"{h.name} and {f.name} both wanted to play with the {s.toy}.",
        f'"It is mine!" said {h.name}. "No, it is mine!" said {f.name}.',
        *s.maybe(s.pick("They pulled and pulled.", "They both got angry and started to cry.")),
        f'Then {h.his} {s.parent} came and said, "You can take turns."',
        s.pick(f"So {h.name} played first, and then {f.name} played.",
               f"So {f.name} played first, and then {h.name} played."),
        s.pick(f"{h.name} learned that sharing is good.", f"{h.name} learned that it is nice to share.",
               "Playing together was much more fun."),
    ]


def arc_fear(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    thing, at_home = s.rng.choice(tuple(SCARY))
    comfort, brave_act = SCARY[thing, at_home]
    if at_home:
        opening = f"One night, {h.name} could not sleep."
        helper = f"{h.his} {s.parent}"
    else:
        opening = s.go_out()
        helper = f.name
    return [
        opening,
        f"{h.name} was scared of {thing}.",
        s.pick(f'"I am scared," {h.name} said.', f'"I do not like {thing}," said {h.name}.'),
        f'{cap(helper)} held {h.his} hand and said, "Do not be afraid. {comfort}"',
        *s.maybe(s.pick(f"{h.name} took a deep breath.", f"{h.name} counted to {s.rng.choice((3, 5, 10))}.")),
        f"Then {h.he} {brave_act.format(his=h.his)}.",
        s.pick(f"{h.name} was not scared anymore.", f"{h.name} felt brave and {s.pick(*FEELINGS_GOOD)}."),
    ]


def arc_broken(s: Scene) -> list[str]:
    h = s.hero
    thing = s.pick("cup", "vase", "plate", "lamp", "bowl")
    return [
        s.pick(f"One day, {h.name} was playing ball at home.", f"One day, {h.name} was running in the house."),
        f"{cap(h.he)} bumped the table and {h.his} {s.parent}'s {s.rng.choice(COLORS)} {thing} fell and broke.",
        s.pick(f"{h.name} felt very bad.", f"{h.name} wanted to hide it."),
        *s.maybe(f"But {h.he} knew that telling the truth is important."),
        f'"I broke your {thing}. I am sorry," said {h.name}.',
        f'{cap(h.his)} {s.parent} smiled and said, "Thank you for telling me the truth."',
        s.pick(f"Together they fixed the {thing} with glue.",
               f"Together they cleaned up and got a new {thing}."),
    ]


def arc_hurt_animal(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    animal = s.pick("bird", "duck", "bunny", "kitten")
    return [
        s.go_out(),
        f"{h.name} found a little {animal} with a hurt leg.",
        s.pick(f'"Poor little {animal}," said {h.name}.', f'"We have to help it," said {f.name}.'),
        f"They made a soft bed in a box and gave the {animal} water and food.",
        f"After {s.rng.randint(2, 9)} days, the {animal} was well again.",
        s.pick("It made a happy sound and went back to its home.",
               f"It looked at {h.name} and then went back to its family."),
        *s.maybe(f'"Goodbye, little {animal}!" said {h.name}.'),
    ]


def arc_rainy_day(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    return [
        f"One day, {h.name} and {f.name} wanted to go to the {s.place}.",
        s.pick("But then it started to rain.", "But then dark clouds came and it began to rain."),
        f"{h.name} was {s.pick(*FEELINGS_BAD)}.",
        s.pick(f'"Can we play inside?" asked {f.name}.', f'"Let us play inside," said {f.name}.'),
        f"So they {s.rng.choice(INSIDE_GAMES)}.",
        s.pick("Soon the rain stopped and the sun came out.", "After a while, the sun came out again."),
        *s.maybe(s.pick("They saw a big rainbow in the sky.",
                        f"They ran to the {s.place} and played until dinner.")),
    ]


def arc_baking(s: Scene) -> list[str]:
    h = s.hero
    treat = s.pick("cake", "pie", "cookies", "bread")
    for_whom = s.pick("grandma", "grandpa", f"{h.his} teacher")
    return [
        f"One day, {h.name} and {h.his} {s.parent} wanted to make {treat} for {for_whom}.",
        f"They put flour, milk and {s.rng.randint(2, 4)} eggs in a big bowl.",
        s.pick("Oops! The flour fell on the floor and made a big mess.",
               f"Oops! {h.name} spilled the milk and made a big mess."),
        s.pick(f'"It is ok," said {h.his} {s.parent}. "We can clean it up together."',
               f'"Do not worry," said {h.his} {s.parent}. "Let us clean it up."'),
        "They cleaned the floor and put the pan in the oven.",
        f"When {for_whom} ate the {treat}, {s.pick('everyone said it was yummy', 'everyone was happy')}.",
    ]


def arc_cheer_up(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    reason = s.pick(f"{f.his} {s.toy} was broken", f"it was {f.his} first day at a new school",
                    f"{f.he} missed {f.his} grandma", f"{f.he} lost a race")
    return [
        s.go_out(),
        f"{f.name} was sad because {reason}.",
        s.pick(f'"What is wrong?" asked {h.name}.', f"{h.name} saw that {f.name} was sad."),
        f"{h.name} wanted to help. So {h.he} {s.rng.choice(FRIEND_MAKERS)} for {f.him}.",
        s.pick(f'"This is for you," said {h.name}.', f'"I made this for you," said {h.name}.'),
        f'{f.name} smiled and said, "Thank you! You are a good friend."',
    ]


ARCS = (arc_lost_toy, arc_stuck_up_high, arc_sharing, arc_fear, arc_broken, arc_hurt_animal,
        arc_rainy_day, arc_baking, arc_cheer_up)


# ----- a whole story -----------------------------------------------------------------------------

def _introduce(s: Scene) -> list[str]:
    h, rng = s.hero, s.rng
    intro = h.intro(rng.choice(TRAITS))
    first = s.pick(f"Once upon a time, there was {intro}.", f"There was once {intro}.")
    second = s.pick(f"{cap(h.he)} loved to {rng.choice(LOVES)}.",
                    f"{h.name} was {rng.randint(3, 9)} years old.",
                    f"{cap(h.he)} had {a(s.toy)} that {h.he} loved very much.")
    return [first, *s.maybe(second, p=0.6)]


def _ending(s: Scene) -> list[str]:
    h, f = s.hero, s.friend
    return s.maybe(s.pick(f"From that day on, {h.name} and {f.name} were best friends.",
                          "It was a very good day.", f"{h.name} went home with a big smile.",
                          "The end."), p=0.4)


def make_story(rng: random.Random) -> str:
    """One story: who it is about, a problem and its resolution (one arc), maybe an ending."""
    hero = make_character(rng)
    friend = make_character(rng, exclude=hero.name)
    arc = rng.choice(ARCS)
    # Only light things blow up into trees.
    toy_nouns = LIGHT_TOYS if arc is arc_stuck_up_high else TOYS
    toy = f"{rng.choice(COLORS + SIZES)} {rng.choice(toy_nouns)}"
    scene = Scene(rng, hero, friend, rng.choice(tuple(PLACES)), toy, rng.choice(("mom", "dad")))
    return " ".join(_introduce(scene) + arc(scene) + _ending(scene))


def make_default_corpus(n_stories: int = DEFAULT_N_STORIES, seed: int = 0) -> list[str]:
    """`n_stories` generated stories (one string each, no newlines), deterministic by `seed`.

    The default 10,000 stories are about 3.8 MB of text and take well under two seconds.
    """
    if isinstance(n_stories, bool) or not isinstance(n_stories, int):
        raise TypeError(f"n_stories must be an int, got {n_stories!r}")
    if n_stories <= 0:
        raise ValueError(f"n_stories must be positive, got {n_stories}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    return [make_story(rng) for _ in range(n_stories)]


def make_play(n_speeches: int = 2000, seed: int = 0) -> str:
    """A play-like text with many line breaks (the layout of a play's script): speeches separated by
    blank lines, each a speaker's name in capitals on a line of its own, then one to four lines of
    the stories' sentences.  Words start lines as often as they follow spaces, which is what
    measures whether a tokenizer handles line-initial words (benchmarks/tokenizer_newlines.py)."""
    if isinstance(n_speeches, bool) or not isinstance(n_speeches, int) or n_speeches <= 0:
        raise ValueError(f"n_speeches must be a positive int, got {n_speeches!r}")
    rng = random.Random(seed)
    speakers = ["HAMLET", "OPHELIA", "KING", "QUEEN", "HORATIO", "POLONIUS", "LAERTES", "GHOST"]
    sentences: list[str] = []
    speeches = []
    for _ in range(n_speeches):
        lines = []
        for _ in range(rng.randint(1, 4)):
            if not sentences:
                sentences = [s.strip() for s in make_story(rng).replace("! ", "!|").replace(". ", ".|").split("|")]
            lines.append(sentences.pop())
        speeches.append(rng.choice(speakers) + ".\n" + "\n".join(lines))
    return "\n\n".join(speeches) + "\n"


def write_default_corpus(path, n_stories: int = DEFAULT_N_STORIES, seed: int = 0) -> Path:
    """Write the corpus to `path` (UTF-8, stories separated by a blank line) atomically."""
    path = Path(path)
    stories = make_default_corpus(n_stories, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n\n".join(stories) + "\n")  # a crash never leaves half a corpus
    return path


def default_corpus_path(cache_dir, n_stories: int = DEFAULT_N_STORIES, seed: int = 0) -> Path:
    """The default corpus as a file in `cache_dir`, generated on first use and reused afterwards.

    The file name carries the corpus version, size and seed, so a change to any of them writes a
    new file instead of silently reusing an old one.
    """
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"tinytales-v{CORPUS_VERSION}-n{n_stories}-seed{seed}.txt"
    if not path.is_file():
        write_default_corpus(path, n_stories, seed)
    return path


# ----- the baseline a model must beat ------------------------------------------------------------

def unigram_entropy(token_ids, vocab_size: int) -> float:
    """Entropy of the token frequencies, in nats per token: H = -sum_v p_v log p_v.

    This is the cross-entropy of the best model that ignores context (it predicts every token with
    its corpus frequency).  A language model's loss (also in nats, §4.3) must go well below it to
    show it has learned anything about context.
    """
    ids = _checked_ids("token_ids", token_ids, vocab_size, empty="the entropy")
    counts = _token_counts(ids, vocab_size)
    p = counts[counts > 0] / ids.size
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train_ids, held_out_ids, vocab_size: int) -> float:
    """Nats per held-out token of predicting each by its frequency in the training tokens (one
    count added to every id, so a token the training text lacks costs log(N + V), not infinity).

    unigram_entropy is this baseline only when the held-out text is like the training text; for
    other text (another genre, the end of a corpus that changes subject) it is this one."""
    train = _checked_ids("train_ids", train_ids, vocab_size)
    held_out = _checked_ids("held_out_ids", held_out_ids, vocab_size, empty="the cross-entropy")
    log_p = np.log((_token_counts(train, vocab_size) + 1.0) / (train.size + vocab_size))
    held_out = held_out.ravel()
    return float(-sum(log_p[held_out[i:i + COUNT_BLOCK]].sum() for i in range(0, held_out.size, COUNT_BLOCK))
                 / held_out.size)


COUNT_BLOCK = 1 << 20   # tokens at a time: np.bincount copies its input as int64, 4x a uint16 stream


def _token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id occurs in ids, counted a block at a time (a memory-mapped stream of any
    length is counted in the memory of one block)."""
    ids, counts = ids.ravel(), np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, ids.size, COUNT_BLOCK):
        counts += np.bincount(ids[start:start + COUNT_BLOCK], minlength=vocab_size)
    return counts


def _checked_ids(name: str, token_ids, vocab_size: int, empty: str | None = None) -> np.ndarray:
    """token_ids as an integer array of ids in [0, vocab_size); `empty` names what no tokens
    leave undefined (None: none may be given)."""
    ids = np.asarray(token_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {ids.dtype}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if ids.size == 0:
        if empty is not None:
            raise ValueError(f"{name} is empty: {empty} of no tokens is undefined")
        return ids.astype(np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}), found ids in [{lo}, {hi}]")
    return ids


__all__ = ["CORPUS_VERSION", "DEFAULT_N_STORIES", "make_default_corpus", "write_default_corpus",
           "default_corpus_path", "unigram_entropy", "unigram_cross_entropy", "make_story"]
