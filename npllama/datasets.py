"""Fine-tuning data: small example datasets the project makes itself, and readers for your own files.

The article's downstream tasks (§6): text classification -- sentiment analysis (§6.1.1), news
topics (§6.1.2), spam detection (§6.1.3); generation from instructions (§6.2); question answering
by choosing an answer (§6.3).  Nothing is downloaded: each example set is generated from templates
in the spirit of the built-in stories (npllama/corpus.py), deterministic by seed, so
`npllama finetune classify` works with no file given.

    records = make_dataset("sentiment", seed=0)        # [{"text": ..., "label": "positive"}, ...]
    write_jsonl("sentiment.jsonl", records)
    texts, labels = load_labelled("sentiment.jsonl")   # or a .csv with a header "text,label"
    ids, names = encode_labels(labels, label_names=["negative", "positive"])   # [1, 0, ...], the names

File formats:
* classification: .jsonl, one {"text": str, "label": str or int} per line; or .csv (separated by
  commas, or semicolons as Excel saves it where the comma is the decimal mark) or .tsv, with a
  header row holding the columns `text` and `label`.
* instruction pairs (SFT): .jsonl, one {"prompt": str, "response": str} per line ("system" optional).
* multiple choice: .jsonl, one {"question": str, "choices": [str, ...], "answer": int} per line.

Every reader names the file and line of a problem: a malformed line, a missing field, an unknown
label, an empty file.  The templates are deliberately simple (a small model learns them in
minutes) but not trivial: negations, mixed sentences and shared filler words mean a model must read
more than one word to be right.
"""
from __future__ import annotations

import csv
import json
import numbers
import random
import re
from pathlib import Path

from . import corpus, data

# ----- classification: sentiment (§6.1.1) --------------------------------------------------------
THINGS = ("toy", "ball", "kite", "book", "cake", "movie", "song", "game", "teddy bear", "puzzle",
          "bike", "doll", "picnic", "trip to the zoo", "boat", "drum", "show", "story")
GOOD = ("great", "wonderful", "lovely", "fun", "amazing", "good", "nice", "beautiful", "perfect",
        "sweet", "exciting")
BAD = ("bad", "boring", "awful", "terrible", "ugly", "broken", "poor", "horrible", "dull", "silly",
       "too small")
FILLERS = ("We got it on Monday.", "My mom bought it for me.", "It came in a red box.",
           "I saw it at the shop.", "My friend has one too.", "We went there last week.")


def _sentiment(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(("negative", "positive"))
    good = label == "positive"
    thing = rng.choice(THINGS)
    adj, other = (rng.choice(GOOD), rng.choice(BAD)) if good else (rng.choice(BAD), rng.choice(GOOD))
    kid = rng.choice(corpus.GIRL_NAMES + corpus.BOY_NAMES)
    sentences = [rng.choice((
        f"The {thing} was {adj}.",
        f"I {'loved' if good else 'hated'} this {thing}. It was {adj}.",
        f"This {thing} is {adj}.",
        f"The {thing} was not {other}.",                       # negation: the opposite word, negated
        f"{kid} played with the {thing} and was {rng.choice(corpus.FEELINGS_GOOD if good else corpus.FEELINGS_BAD)}.",
        f"At first I thought the {thing} was {other}, but it was {adj}.",   # mixed: the last word wins
    ))]
    if rng.random() < 0.5:
        sentences.append(rng.choice(FILLERS))
    if rng.random() < 0.5:
        sentences.append(rng.choice((f"We will {'buy it again' if good else 'never buy it again'}.",
                                     f"{'I would' if good else 'I would not'} tell my friends to get one.",
                                     f"{'Five' if good else 'One'} stars.")))
    rng.shuffle(sentences)
    return " ".join(sentences), label


# ----- classification: news topics (§6.1.2) ------------------------------------------------------
TOPICS = {
    "world": dict(who=("The president", "The king", "The queen", "Leaders of ten countries", "The mayor",
                       "The new government"),
                  did=("met in the capital", "signed a peace deal", "visited the old city",
                       "spoke about the long war", "opened a new border", "talked about the flood"),
                  extra=("Many people came to watch.", "The talks will go on next week.",
                         "Both sides said it was a good start.")),
    "sports": dict(who=("The home team", "The young runner", "The football club", "The tennis star",
                        "The swim team", "The coach"),
                   did=("won the big game", "lost the final match", "scored three goals",
                        "broke the world record", "trained for the cup", "played in the rain"),
                   extra=("The fans cheered all night.", "The next match is on Sunday.",
                          "It was the best season in years.")),
    "business": dict(who=("The bank", "The big shop", "A small company", "The car maker", "The market",
                          "The new owner"),
                     did=("sold more than last year", "made a lot of money", "cut prices",
                          "opened ten new stores", "bought another company", "lost money this month"),
                     extra=("Prices went up again.", "Workers will get more pay.",
                            "The shares fell in the morning.")),
    "science": dict(who=("The scientists", "A team of doctors", "The space agency", "The lab",
                         "A young student", "The museum"),
                    did=("found a new kind of frog", "sent a robot to the moon", "made a new medicine",
                         "saw a bright star explode", "studied the deep sea", "built a faster computer"),
                    extra=("The study took five years.", "They will test it again.",
                           "It may help many people.")),
}


def _topic(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(tuple(TOPICS))
    t = TOPICS[label]
    day = rng.choice(("On Monday", "Yesterday", "This week", "Last night", "Today"))
    who = rng.choice(t["who"])
    sentences = [f"{day}, {who[0].lower() + who[1:]} {rng.choice(t['did'])}."]
    if rng.random() < 0.6:
        sentences.append(rng.choice(t["extra"]))
    if rng.random() < 0.3:  # a sentence of another topic's vocabulary: the main one must outweigh it
        other = TOPICS[rng.choice([k for k in TOPICS if k != label])]
        sentences.append(rng.choice(other["extra"]))
    return " ".join(sentences), label


# ----- classification: spam (§6.1.3) --------------------------------------------------------------
def _spam(rng: random.Random) -> tuple[str, str]:
    # About one message in four is spam, as in real inboxes: the majority baseline is ~75%.
    name = rng.choice(corpus.GIRL_NAMES + corpus.BOY_NAMES)
    place = rng.choice(tuple(corpus.PLACES))
    time = rng.choice(("at 5", "after school", "tomorrow", "on Sunday", "tonight", "at noon"))
    if rng.random() < 0.25:
        prize = rng.choice(("a new phone", "1000 dollars", "a free trip", "a gift card", "a big prize",
                            "free tickets"))
        number = "".join(rng.choice("0123456789") for _ in range(5))
        text = rng.choice((
            f"WIN {prize.upper()} NOW! Text YES to {number}.",
            f"Congratulations {name}! You have won {prize}. Call {number} to claim it.",
            f"Free offer: get {prize} today only. Click the link and reply {number}.",
            f"URGENT! Your account will be closed. Send your code to {number} {time}.",
            f"You are our lucky winner! {corpus.cap(prize)} is waiting for you. Reply STOP to {number} to end.",
        ))
        return text, "spam"
    text = rng.choice((
        f"Hey {name}, are we still going to the {place} {time}?",
        f"Can you pick me up {time}? I will be at the {place}.",
        f"Thanks for the cake, {name}! It was so good.",
        f"Mom says dinner is {time}. Don't be late.",
        f"I won the game today! Call me {time}.",
        f"{name} lost a {rng.choice(corpus.TOYS)} at the {place}. Did you see it?",
        f"Free {time}? We could go to the {place}.",
    ))
    return text, "ham"


CLASSIFICATION = {  # name -> (generator, label names in id order, default size)
    "sentiment": (_sentiment, ("negative", "positive"), 2000),
    "topic": (_topic, tuple(TOPICS), 2000),
    "spam": (_spam, ("ham", "spam"), 2000),
}


def make_dataset(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """`n` examples of a built-in classification set: [{"text": str, "label": str}, ...]."""
    if name not in CLASSIFICATION:
        raise ValueError(f"unknown example dataset {name!r}; choose one of: {', '.join(CLASSIFICATION)}")
    generator, _, default_n = CLASSIFICATION[name]
    n = default_n if n is None else _positive_int("n", n)
    rng = random.Random(f"{name}-{seed}")
    return [dict(zip(("text", "label"), generator(rng))) for _ in range(n)]


def label_names(name: str) -> tuple[str, ...]:
    """The labels of a built-in classification set, in id order."""
    if name not in CLASSIFICATION:
        raise ValueError(f"unknown example dataset {name!r}; choose one of: {', '.join(CLASSIFICATION)}")
    return CLASSIFICATION[name][1]


# ----- instruction pairs (§6.2) and multiple choice (§6.3) -----------------------------------------
NAMES = corpus.GIRL_NAMES + corpus.BOY_NAMES


def make_instructions(n: int = 1000, seed: int = 0) -> list[dict]:
    """[{"prompt", "response"}]: "Write a story about Lily at the park." -> a story that is about that.

    The stories are the built-in corpus' grammar (seeded apart from the pre-training corpus); the
    prompt names the hero (the first name in the story) and, when the story has one, the place.
    """
    rng = random.Random(f"instructions-{seed}")
    pairs = []
    for _ in range(_positive_int("n", n)):
        story = corpus.make_story(rng)
        hero = next(w.strip('.,!?"') for w in story.split() if w.strip('.,!?"') in NAMES)
        place = next((p for p in corpus.PLACES if f"the {p}" in story), None)
        prompt = rng.choice((f"Write a story about {hero}.", f"Tell me a short story about {hero}.",
                             f"Write a story about {hero} at the {place}." if place else
                             f"Write a bedtime story about {hero}."))
        pairs.append({"prompt": prompt, "response": story})
    return pairs


def make_choice_items(n: int = 200, seed: int = 0, num_choices: int = 4) -> list[dict]:
    """n items [{"question", "choices", "answer"}]: which sentence comes next in this story?

    The question is the start of a story (cut at a sentence boundary); one choice is the story's
    real next sentence, the others are sentences at the same place in other stories (other names,
    other objects).  A model that follows the story -- names, pronouns, what happened -- scores the
    true continuation highest; chance is 1 / num_choices.
    """
    from .objectives import split_sentences

    if not 2 <= num_choices <= 10:
        raise ValueError(f"num_choices must be between 2 and 10, got {num_choices}")
    _positive_int("n", n)
    # the distractors' stories come from a stream of their own, the same whatever n: so n items are
    # the first n of more (`eval choice --limit 50` is the first 50 of the default 200), and 20
    # items' worth of stories let even an item with ten choices find its distractors
    rng, others_rng = random.Random(f"choice-{seed}"), random.Random(f"choice-{seed}-distractors")
    others = [split_sentences(corpus.make_story(others_rng)) for _ in range(20 * (num_choices + 2))]
    others = [s for s in others if len(s) >= 4]
    items = []
    for _ in range(n):
        # a story cut too deep for enough other stories that long is replaced by a fresh one (one
        # cut after its second sentence nearly always finds them), so there are n items
        while (item := _choice_item(_story_of_four_sentences(rng), others, num_choices, rng)) is None:
            pass
        items.append(item)
    return items


def _choice_item(story: list[str], others: list[list[str]], num_choices: int, rng: random.Random) -> dict | None:
    """make_choice_items' item from `story` cut at a random sentence, its distractors the sentences
    at that place in `others`; None when too few of them are that long."""
    from .objectives import join_sentences

    cut = rng.randrange(2, len(story))
    right = story[cut]
    wrong = []
    for other in others:
        if len(wrong) == num_choices - 1:
            break
        if len(other) > cut and other[cut] != right and other[cut] not in wrong and rng.random() < 0.5:
            wrong.append(other[cut])
    if len(wrong) < num_choices - 1:
        return None
    choices = wrong + [right]
    rng.shuffle(choices)
    return {"question": join_sentences(story[:cut]), "choices": choices, "answer": choices.index(right)}


def _story_of_four_sentences(rng: random.Random) -> list[str]:
    """A story's sentences, at least four of them (a question of two or more, the next one, more)."""
    from .objectives import split_sentences

    while len(story := split_sentences(corpus.make_story(rng))) < 4:
        pass
    return story


# ----- writing and reading ------------------------------------------------------------------------
def write_jsonl(path, records: list[dict]) -> Path:
    """One JSON object per line, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _read_numbered_jsonl(path, required: dict[str, type | tuple]) -> list[tuple[int, dict]]:
    """(line, object) for each object of a .jsonl file, each checked to have `required` fields of
    the given types; an empty file is an error."""
    path = _existing_file(path)
    numbered = data.read_numbered_jsonl(path, required)
    if not numbered:
        raise ValueError(f"{path} is empty: it holds no examples")
    return numbered


def load_labelled(path) -> tuple[list[str], list]:
    """(texts, labels) from a .jsonl file ({"text", "label"} lines) or a .csv/.tsv file (header text,label)."""
    texts, labels, _ = read_labelled(path)
    return texts, labels


def read_labelled(path) -> tuple[list[str], list, list[int]]:
    """load_labelled's (texts, labels) and the line each example starts on, which encode_labels'
    errors name (blank lines, a CSV header and multi-line fields make it differ from the count)."""
    path = _existing_file(path)
    suffix = path.suffix.lower()          # Windows names files DATA.CSV
    if suffix in (".csv", ".tsv"):
        return _load_csv(path)
    if suffix != ".jsonl":
        raise ValueError(f"{path}: expected a .jsonl, .csv or .tsv file, got {path.suffix or 'no extension'!r}")
    numbered = _read_numbered_jsonl(path, {"text": str, "label": (str, int)})
    labels = []
    for line, r in numbered:
        label = r["label"].strip() if isinstance(r["label"], str) else r["label"]   # as a CSV label is read
        if not r["text"].strip() or label == "":
            raise ValueError(f"{path} line {line}: empty {'text' if not r['text'].strip() else 'label'}")
        labels.append(label)
    return [r["text"] for _, r in numbered], labels, [line for line, _ in numbered]


def _load_csv(path: Path) -> tuple[list[str], list, list[int]]:
    try:
        return _read_csv_rows(path)
    except csv.Error as error:  # one _csv_rows does not name the line of (none known)
        raise ValueError(f"{path}: not a readable CSV file ({error})") from None


def _read_csv_rows(path: Path) -> tuple[list[str], list, list[int]]:
    from .budget import max_read
    from .io.reading import read_text

    text = read_text(path, max_bytes=max_read())   # a regular file, within budget
    if not text.strip():
        raise ValueError(f"{path} is empty: it holds no header and no examples")
    # csv reads the first line as the header row, even a blank one: a header naming no column
    # the lines as csv breaks them, numbered from 1, in one pass (the file is not split into a list):
    # the first with text is the header, and the empty ones, which csv skips between rows, are kept
    # so that a malformed row is named by its own line
    empty, header, blank, named_separator = set(), None, 0, None
    for number, match in enumerate(re.finditer(r"(.*?)(?:\r\n|\r|\n|\Z)", text, re.S), 1):
        line = match.group(1)
        if not line:
            empty.add(number)
        elif number == 1 and line[:4].lower() == "sep=":
            if not (hint := _SEPARATOR_LINE.fullmatch(line)):   # (a header row does not name a column "sep=...")
                raise ValueError(f"{path} line 1, {line!r}, names no separator npllama reads: a separator line "
                                 f"is sep= and the one character between the columns (sep=; or sep=, or sep= "
                                 f"and a tab character itself, not \\t), not a letter, digit, space or double quote")
            named_separator = hint.group(1)
        elif header is None and line.strip():
            header, blank = line, number - 1   # (text is not blank: there is one)
    if header is None:   # (named_separator: the file is its "sep=" line alone)
        raise ValueError(f"{path} holds only its line 1, {text.splitlines()[0]!r}: no header row and no examples")
    separator = named_separator or _column_separator(path, header)
    first = 2 if named_separator else 1   # the header row's line, if nothing blank comes before it
    if blank >= first:
        which = f"line {first} is" if blank == first else f"lines {first}-{blank} are"
        where = "the line after the sep= line" if named_separator else "the first line"
        raise ValueError(f"{path} {which} blank: {where} must be the header row naming the columns "
                         f"text and label ({_separator_name(separator)}-separated); remove the blank "
                         f"line{'s' if blank > first else ''} before it")
    # csv's own cap on a field (131,072 characters) is no limit of npllama's: the file is within its read
    # budget, and a .jsonl text of any length is read
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        return _csv_rows(path, text, separator, empty, first)
    finally:
        csv.field_size_limit(limit)


def _csv_rows(path: Path, text: str, separator: str, empty: set[int],
              header_line: int) -> tuple[list[str], list, list[int]]:
    import io

    with io.StringIO(text, newline="") as f:
        # strict: a quote that is never closed is an error where the row starts, rather than a field
        # that swallows the rest of the file ("too few columns" on the last line)
        reader = csv.DictReader(f, strict=True, delimiter=separator)
        if header_line == 2:
            # the "sep=" line is passed by the DictReader's own reader, whose line count names the
            # lines in messages: it stays the file's
            next(reader.reader)
        try:
            header = reader.fieldnames
        except csv.Error as error:
            raise ValueError(_not_valid(path, header_line, error, separator)) from None
        # "Text, Label" typed by hand names the same columns
        reader.fieldnames = [_column_name(name) for name in header]
        twice = [c for c in ("text", "label") if reader.fieldnames.count(c) > 1]
        if twice:   # DictReader would keep the last of them, silently
            raise ValueError(f"{path}: the header row names the column {' and '.join(twice)} more than once "
                             f"(case and spaces aside); give each once")
        missing = [c for c in ("text", "label") if c not in reader.fieldnames]
        if missing:   # (blank lines before it are refused above; a quoted name may span lines)
            raise ValueError(f"{path} line {header_line}: the header row must name the columns text and "
                             f"label; missing "
                             f"{', '.join(missing)} (found {', '.join(map(repr, reader.fieldnames))})"
                             + (f"; it is split at each {_separator_name(separator)}, as line 1 "
                                f"({'sep=' + separator!r}) names" if header_line == 2 else ""))
        texts, labels, lines = [], [], []
        for start, row in _rows_with_their_start(reader, path, empty):
            where = f"{path} line {reader.line_num}"
            if row["text"] is None or row["label"] is None:
                raise ValueError(f"{where}: too few columns")
            if None in row:   # a separator inside an unquoted text would shift the label: never guess
                raise ValueError(f"{path} line {start}: more columns than the header row's "
                                 f"{len(reader.fieldnames)}; a {_separator_name(reader.reader.dialect.delimiter)} "
                                 f"inside a text must be in a quoted field (\"...\")")
            if not row["text"].strip() or not row["label"].strip():
                raise ValueError(f"{where}: empty text or label")
            texts.append(row["text"])
            labels.append(row["label"].strip())
            lines.append(start)
    if not texts:
        raise ValueError(f"{path} is empty: it holds a header but no examples")
    return texts, labels, lines


# Excel's line 1 naming the column separator, which it writes for another locale's reader ("sep=;");
# a tool writing it as a row of the sheet pads it with the row's empty cells ("sep=;;"), an editor may
# leave spaces after it
_SEPARATOR_LINE = re.compile(r'sep=([^"\w\s]|\t)\1*\s*', re.IGNORECASE)


def _column_separator(path: Path, header: str) -> str:
    """A tab for a .tsv file; for a .csv file the separator its header row (line) puts between text
    and label: a comma, or the semicolon (or tab) Excel writes where the comma is the decimal mark."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    for separator in (",", ";", "\t"):
        names = {_column_name(name) for name in next(csv.reader([header], delimiter=separator))}
        if {"text", "label"} <= names:
            return separator
    return ","       # the header's error names the columns it found


def _separator_name(separator: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab"}.get(separator, repr(separator))


def _column_name(name) -> str | None:
    return name.strip().lower() if isinstance(name, str) else name


def _rows_with_their_start(reader, path: Path, empty: set[int]):
    """(the line a row starts on, the row) for the reader's rows; a malformed one raises ValueError
    naming the line it starts on (after the `empty` lines the reader skips)."""
    while True:
        start = reader.line_num + 1
        while start in empty:
            start += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if "unexpected end of data" in str(error):
                raise ValueError(f"{path} line {start}: a quoted field starts on this line and its closing "
                                 f"quote is missing (the rest of the file would be one field)") from None
            raise ValueError(_not_valid(path, start, error, reader.reader.dialect.delimiter)) from None
        # counted back from where the row ends: blank lines before it were skipped, not part of it
        yield reader.line_num - _line_breaks(row), row


def _not_valid(path: Path, line: int, error: csv.Error, separator: str) -> str:
    """The message for csv's error in the row (or header row) starting on `line`."""
    kind = "TSV" if path.suffix.lower() == ".tsv" else "CSV"
    if "expected after" not in str(error):    # none other known: csv's own words
        return f"{path} line {line}: not valid {kind} ({error})"
    # csv's own words ("'\t' expected after '\"'") show a raw tab and say nothing of the cause: a
    # field that starts with a quote is quoted up to the next quote, whatever the writer meant
    return (f"{path} line {line}: not valid {kind}: a field that starts with a quote is quoted up to its closing "
            f"quote, which must be followed by a {_separator_name(separator)} or the line's end; a text that "
            f"starts with a quote, or has quotes in a quoted field, is quoted whole with each of its own quotes "
            f"written twice ({_QUOTED_EXAMPLE})")


# the text "Hi," she said as a CSV or TSV field
_QUOTED_EXAMPLE = '"""Hi,"" she said"'


def _line_breaks(row: dict) -> int:
    """How many line breaks a CSV row's fields hold (each one a line the reader counted)."""
    fields = [f for value in row.values() for f in (value if isinstance(value, list) else [value])]
    return sum(len(re.findall(r"\r\n|\r|\n", f)) for f in fields if isinstance(f, str))


def encode_labels(labels: list, label_names=None, num_labels: int | None = None,
                  source: str | None = None, lines: list[int] | None = None, *, whose: str = "the labels",
                  unknown_hint: str = "") -> tuple[list[int], tuple]:
    """Label values -> ids.  Returns (ids, label_names).

    label_names: the labels in id order; None: the sorted distinct labels (whole numbers written as
    text in numeric order), except that ints >= 0 are class ids, 0..max (ints with a negative one
    name their classes, in order).  An int is an id into label_names given as text; where the
    names are numbers themselves (ints, or whole numbers as text), an int that is none of them is
    unknown.  num_labels: the size of an
    existing classification head; the labels must fit it.  An unknown label or a count mismatch
    raises ValueError naming it (and the file, `source`, the labels come from, and the example's
    line there, from `lines`: read_labelled's).  whose, unknown_hint: how an unknown label's
    message names label_names ("the classifier's labels are a, b"), and what it adds after them
    (how to keep a label only validation has).
    """
    try:
        return _encode_labels(labels, label_names, num_labels, lines, whose, unknown_hint)
    except ValueError as error:
        if source is None:
            raise
        raise ValueError(f"{source}: {error}") from None


def check_label_names(label_names) -> None:
    """label_names given (`finetune classify --labels`, a saved classifier's, a built-in set's): two or
    more, none empty, none twice.  A name given twice would make a class no example can have (each label finds its first id), and
    none would leave nothing to name the data's labels in the error that followed."""
    names = [str(name) for name in label_names]
    if any(not name.strip() for name in names):
        raise ValueError(f"labels must be non-empty names, got {names}")
    twice = sorted({name for name in names if names.count(name) > 1}, key=names.index)
    if twice:
        raise ValueError(f"labels must name each class once, got {', '.join(map(repr, twice))} more than once "
                         f"in {', '.join(names)}")
    if len(names) < 2:
        raise ValueError(f"labels must name at least two classes (classification picks one of them), got {names}")


def labels_alike_note(label_names) -> str | None:
    """A line naming the labels that differ only in case or in the spaces inside them ("Pos" and
    "pos", "happy  cat" and "happy cat") -- separate classes, as the data writes them, but more
    often one class typed two ways -- or None when there are none."""
    groups: dict[str, list[str]] = {}
    for name in map(str, label_names):
        groups.setdefault(" ".join(name.split()).casefold(), []).append(name)
    alike = [names for names in groups.values() if len(names) > 1]    # in the labels' order
    if not alike:
        return None
    return (f"labels that differ only in case or spaces are separate classes: "
            f"{'; '.join(' and '.join(map(repr, names)) for names in alike)} "
            f"(write each class one way in the data if they are one)")


def _encode_labels(labels: list, label_names, num_labels: int | None, lines, whose: str,
                   unknown_hint: str) -> tuple[list[int], tuple]:
    if not labels:
        raise ValueError("the dataset is empty: no labels")
    if label_names is not None:
        check_label_names(label_names)
    if label_names is None:
        if all(isinstance(v, int) for v in labels) and min(labels) >= 0:
            from .budget import check_label_count

            check_label_count(max(labels) + 1)  # before the names (and a k x k confusion matrix) exist
            label_names = tuple(range(max(labels) + 1))
        elif all(isinstance(v, int) for v in labels):   # -1 cannot be a class id: the values name the classes
            label_names = tuple(sorted(set(labels)))
        else:
            label_names = tuple(sorted({str(v) for v in labels}, key=_in_number_order))
    label_names = tuple(label_names)
    index = {str(name): i for i, name in enumerate(label_names)}
    # an integer is an id into names given as text (--labels); where the names are integers themselves
    # -- or read back as text from a saved classifier's id2label ("-1", "1") -- an integer that is not
    # one of them is unknown, not the id of another
    ids_allowed = not any(_whole_number(str(name)) for name in label_names)
    where = (lambda i: f"example {i + 1}") if lines is None else (lambda i: f"line {lines[i]}")
    ids = []
    for i, value in enumerate(labels):
        if str(value) in index:
            ids.append(index[str(value)])
        elif isinstance(value, int) and ids_allowed and 0 <= value < len(label_names):  # an id into label_names
            ids.append(value)
        elif isinstance(value, int) and ids_allowed:
            raise ValueError(f"{where(i)} has label id {value}, but there are only {len(label_names)} "
                             f"labels ({', '.join(map(str, label_names))}): label count mismatch")
        else:
            # "0" from a CSV where a .jsonl file's 0 would be an id (--help: only those are)
            as_text = (" (a label written as text, as every .csv/.tsv label is, is a name: only a .jsonl file's "
                       "integer labels are class ids)" if isinstance(value, str) and ids_allowed
                       and _whole_number(value) and 0 <= int(value) < len(label_names) else "")
            raise ValueError(f"{where(i)} has the unknown label {value!r}; {whose} are "
                             f"{', '.join(map(str, label_names))}{as_text}{unknown_hint}")
    if len(label_names) < 2:
        raise ValueError(f"classification needs at least two labels, the data has only {list(label_names)}")
    if num_labels is not None and num_labels != len(label_names):
        raise ValueError(f"the data has {len(label_names)} labels ({', '.join(map(str, label_names))}) but "
                         f"the classification head has num_labels = {num_labels}")
    return ids, label_names


def _in_number_order(name: str):
    """A sort key: names that are whole numbers in their numeric order ("2" before "10", as in a CSV
    file of class numbers), then the others as text."""
    return (0, int(name), name) if _whole_number(name) else (1, 0, name)


def _whole_number(name: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", name) is not None


def load_sft(path) -> list[dict]:
    """Instruction examples from a .jsonl file, one JSON object a line, either
    {"prompt", "response"(, "system")}: one exchange, or
    {"messages": [{"role", "content"}, ...]}: a conversation (Hugging Face's and TRL's layout).
    A line with both is refused (null fields aside); other fields are ignored."""
    return read_sft(path)[0]


def read_sft(path) -> tuple[list[dict], list[int]]:
    """load_sft's examples and the line each is on, which errors found later name (blank lines
    make the line differ from the count)."""
    from .chat import check_messages

    if Path(path).suffix.lower() in (".csv", ".tsv"):
        raise ValueError(f"{str(path)!r}: instruction data is a .jsonl file (one JSON object a line, "
                         f'{{"prompt": ..., "response": ...}} or {{"messages": [...]}}), not {Path(path).suffix}')
    numbered = _read_numbered_jsonl(path, {})
    records = [r for _, r in numbered]
    for line, r in numbered:
        where = f"{path} line {line}"
        if not isinstance(r, dict) or not ("messages" in r or "prompt" in r):
            # a file in another layout (Alpaca's instruction/output) is told by the fields it does have
            has = data.fields_found(r, "prompt", "response", "system", "messages") if isinstance(r, dict) else f"this line is a JSON {data.json_type_name(r)}"
            raise ValueError(f'{where} must be a JSON object with "prompt" and "response" fields, or with a '
                             f'"messages" list of {{"role", "content"}} objects; {has}')
        if "messages" in r:
            # (null is no value: a table exported with both layouts' columns has them on every line)
            beside = [field for field in ("prompt", "response", "system") if r.get(field) is not None]
            if beside:   # one of the two would be dropped unseen: a system message the model never sees
                raise ValueError(f'{where} has "messages" and also {", ".join(map(json.dumps, beside))}: a line is '
                                 f'either {{"prompt", "response"(, "system")}} or {{"messages": [...]}}; put a system '
                                 f'message in the conversation, as {{"role": "system", "content": ...}} first in '
                                 f'"messages"')
            try:
                messages = check_messages(r["messages"])
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}: {e}") from None
            if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
                raise ValueError(f"{where} has no assistant message with text (nothing to learn)")
            continue
        for field in ("prompt", "response", "system"):
            if field == "system" and r.get(field) is None:
                continue
            if field not in r:
                raise ValueError(f'{where} has no "{field}" field: each line is {{"prompt": ..., "response": ...}} '
                                 f'(with an optional "system"), or {{"messages": [...]}}')
            if not isinstance(r[field], str):
                raise ValueError(f'{where}: "{field}" must be a string, got {data.json_type_name(r[field])}')
            if field == "system" and not r[field].strip():   # as chat.turn_messages refuses it
                raise ValueError(f'{where}: "system" is empty; leave it out (or null) for no system message, '
                                 f'or give its text')
        if not r["response"].strip():
            raise ValueError(f"{where} has an empty response (nothing to learn)")
    return records, [line for line, _ in numbered]


def load_choice_items(path) -> list[dict]:
    """Multiple-choice items: [{"context"?, "question", "choices", "answer"}] from a .jsonl file; the
    optional context is a passage the question is about (reading comprehension)."""
    numbered = _read_numbered_jsonl(path, {"question": str, "choices": list})
    for line, r in numbered:
        check_choice_item(r, f"{path} line {line}")
    return [r for _, r in numbered]


def check_choice_item(item, where: str) -> None:
    """A ValueError, naming `where` (a file's line, items[i]), unless `item` is a multiple-choice item:
    {"question": str, "choices": at least two different non-empty strs, "answer": the right one's
    index from 0, optionally "context": str}."""
    from .data import json_type_name

    if not isinstance(item, dict):
        raise ValueError(f'{where}: an item must be a dict with "question", "choices" and "answer", '
                         f"got {json_type_name(item)}")
    for field, kind, name in (("question", str, "str"), ("choices", (list, tuple), "list")):
        if not isinstance(item.get(field), kind):
            raise ValueError(f'{where}: "{field}" must be a {name}, got '
                             f'{"nothing" if field not in item else json_type_name(item[field])}')
    choices = item["choices"]
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{where}: an item needs at least two non-empty string choices")
    # a choice written twice (spaces around it aside) is one answer offered twice: after a question in
    # English the two are the same text ("q" + " a" and "q" + "a" are both "q a"; chat templates trim
    # the answer) and tie, whichever is called right; where a space does tell them apart (no space
    # after Chinese, a question ending in one) the item measures the space, not the answer
    first_of = {}
    for i, choice in enumerate(choices):
        if choice.strip() in first_of:
            raise ValueError(f"{where}: choices {first_of[choice.strip()]} and {i} are the same text "
                             f"({choice.strip()!r}); give each choice once")
        first_of[choice.strip()] = i
    if not isinstance(item.get("context", ""), str):
        raise ValueError(f'{where}: "context" must be a string (the passage), got {json_type_name(item["context"])}')
    answer = item.get("answer")
    if not isinstance(answer, numbers.Integral) or isinstance(answer, bool):   # "B", the right choice's text, ...
        raise ValueError(f'{where}: "answer" must be the index of the right choice, counting from 0, '
                         f'got {"nothing" if answer is None else repr(answer)}')
    if not 0 <= answer < len(choices):
        raise ValueError(f"{where}: answer {answer}, but only {len(choices)} choices (answers count from 0)")


def split_train_val(n: int, val_fraction: float, seed: int = 0, what: str = "examples",
                    val_file: bool = True, strata=None) -> tuple[list[int], list[int]]:
    """A shuffled split of range(n) into (train, val) indices; both sides non-empty.

    what: the items' name in the error; val_file: whether the job takes a separate validation file
    (the error suggests one only then).  strata: one label per item, or None.  With labels, each label
    is held out in proportion to its count (stratified): round(n * val_fraction) items in all, as
    without, shared out by largest remainder, and a label keeps one item for training while another
    label can give one instead -- so a rare label is not held out whole by chance, and each label's
    count in validation is its exact share rounded up or down (largest remainder can round down a
    share above one half: 7, 7, 6 items with 2 held out give the label of 6 none)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        side, change = ("validation", "larger") if n_val == 0 else ("training", "smaller")
        remedies = [f"more {what}"] + [f"a {change} val_fraction"] * (n > 1) + ["a separate validation file"] * val_file
        remedy = remedies[0] if len(remedies) == 1 else f"{', '.join(remedies[:-1])} or {remedies[-1]}"
        raise ValueError(f"cannot split {n} {what} with val_fraction={val_fraction}: one side would be empty "
                         f"(no {what} for {side}); give {remedy}")
    if strata is None:
        return order[n_val:], order[:n_val]
    if len(strata) != n:
        raise ValueError(f"strata must give one label per item ({n}), got {len(strata)}")
    groups: dict = {}
    for i in order:                          # each label's items in the shuffled order
        groups.setdefault(strata[i], []).append(i)
    held = _stratified_counts({label: len(items) for label, items in groups.items()}, n_val)
    val = {i for label, items in groups.items() for i in items[:held[label]]}
    return [i for i in order if i not in val], [i for i in order if i in val]


def _stratified_counts(counts: dict, n_val: int) -> dict:
    """How many of each label's items to hold out: n_val in all, each label's share of n_val rounded
    by largest remainder (ties to the label seen first), at most count - 1 while the other labels
    can make up the total."""
    n = sum(counts.values())
    exact = {label: c * n_val / n for label, c in counts.items()}
    held = {label: int(e) for label, e in exact.items()}      # at most count - 1, as n_val < n
    by_remainder = sorted(counts, key=lambda label: -(exact[label] - held[label]))
    for keep in (1, 0):          # keep one for training; give it up only if nothing else makes n_val
        while sum(held.values()) < n_val:
            room = [label for label in by_remainder if held[label] < counts[label] - keep]
            if not room:
                break
            for label in room[:n_val - sum(held.values())]:
                held[label] += 1
    return held


def _existing_file(path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    return path


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
