"""Built-in example datasets and the readers for users' files, with their error messages."""
import collections
import json
import math
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.datasets import (encode_labels, label_names, load_choice_items, load_labelled, load_sft,
                              make_choice_items, make_dataset, make_instructions, read_labelled,
                              split_train_val, write_jsonl)


@pytest.mark.parametrize("name", ["sentiment", "topic", "spam"])
def test_builtin_sets_are_deterministic_and_labelled(name):
    records = make_dataset(name, 400, seed=3)
    assert records == make_dataset(name, 400, seed=3)
    assert records != make_dataset(name, 400, seed=4)
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(label_names(name))
    assert all(isinstance(r["text"], str) and len(r["text"]) > 10 for r in records)
    assert len({r["text"] for r in records}) > 250  # varied, not a handful of sentences repeated
    if name == "spam":
        assert 0.15 < counts["spam"] / 400 < 0.35  # imbalanced like a real inbox
    else:
        assert min(counts.values()) / 400 > 0.6 / len(counts)  # roughly balanced


def test_sentiment_words_are_not_a_giveaway_on_their_own():
    # Negated sentences put a "bad" word in a positive review: a bag of single words is not enough.
    records = make_dataset("sentiment", 2000)
    negated = [r for r in records if " was not " in r["text"]]
    assert negated and {r["label"] for r in negated} == {"positive", "negative"}


def test_instructions_and_choice_items():
    pairs = make_instructions(30, seed=1)
    assert pairs == make_instructions(30, seed=1)
    for p in pairs:
        name = p["prompt"].split("about ")[1].split()[0].strip(".")
        assert name in p["response"]  # the story is about the one the prompt names
    items = make_choice_items(40, seed=2)
    assert len(items) == 40
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert 0 <= item["answer"] < 4
    answers = Counter(item["answer"] for item in items)
    assert len(answers) >= 3  # the right answer is not always in one place


def test_make_choice_items_makes_as_many_items_as_asked():
    # Before: an item whose story was cut too deep for enough distractors was dropped, so
    # `eval choice --limit 1 --seed 1` had no item at all ("no multiple-choice items to evaluate") and
    # --limit 2 evaluated one
    for num_choices in (2, 4, 10):
        for n in (1, 2, 5, 40):
            for seed in range(4):
                items = make_choice_items(n, seed=seed, num_choices=num_choices)
                assert len(items) == n, (n, seed, num_choices)
                assert all(len(set(item["choices"])) == num_choices for item in items)
    assert make_choice_items(200, seed=0) == make_choice_items(200, seed=0)


def test_fewer_choice_items_are_the_first_of_more():
    # Before: the distractors came from the stories after the first n, so n changed every item:
    # `eval choice --limit 50` shared no item with the first 50 of the default 200
    for num_choices in (2, 4):
        many = make_choice_items(60, seed=1, num_choices=num_choices)
        for n in (1, 7, 59):
            assert make_choice_items(n, seed=1, num_choices=num_choices) == many[:n]
    assert make_choice_items(5, seed=1) != make_choice_items(5, seed=2)


def test_jsonl_and_csv_round_trip(tmp_path):
    records = make_dataset("topic", 20)
    write_jsonl(tmp_path / "t.jsonl", records)
    texts, labels = load_labelled(tmp_path / "t.jsonl")
    assert texts == [r["text"] for r in records] and labels == [r["label"] for r in records]
    (tmp_path / "t.csv").write_text('text,label\n"Hello, world",a\nBye,b\n', encoding="utf-8")
    assert load_labelled(tmp_path / "t.csv") == (["Hello, world", "Bye"], ["a", "b"])
    # Excel's "CSV UTF-8" starts with a byte-order mark: not part of the first column's name
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbftext,label\r\nHello,a\r\nBye,b\r\n")
    assert load_labelled(tmp_path / "excel.csv") == (["Hello", "Bye"], ["a", "b"])


@pytest.mark.parametrize("name, content, error, message", [
    ("bad.jsonl", '{"text": "ok", "label": "a"}\n{"text": "no label"}\n', ValueError,
     r'bad.jsonl\' line 2: expected a JSON object with a "label" field'),
    ("bad.jsonl", '{"text": "ok", "label": "a"}\n{not json\n', ValueError, "line 2: is not valid JSON"),
    ("bad.jsonl", '{"text": 3, "label": "a"}\n', ValueError, '"text" must be a str, got int'),
    # JSON's names for JSON's values (was "got NoneType", "got bool")
    ("bad.jsonl", '{"text": "ok", "label": null}\n', ValueError, 'line 1: "label" must be a str or int, got null$'),
    ("bad.jsonl", '{"text": "ok", "label": true}\n', ValueError, '"label" must be a str or int, got true/false$'),
    ("bad.jsonl", "\n\n", ValueError, "is empty"),
    ("bad.csv", "sentence,label\nhi,a\n", ValueError, "missing text"),
    ("bad.csv", "text,label\n", ValueError, "header but no examples"),
    ("bad.csv", "text,label\nhi\n", ValueError, "bad.csv line 2: too few columns"),
    ("missing.jsonl", None, FileNotFoundError, "does not exist"),
    ("x.txt", "hi", ValueError, "expected a .jsonl, .csv or .tsv file"),
], ids=["no label", "not json", "int text", "null", "bool", "empty", "no text column", "no rows", "short row",
        "missing", "other type"])
def test_reader_errors_name_the_file_and_line(tmp_path, name, content, error, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(error, match=message):
        load_labelled(path)


@pytest.mark.parametrize("line, found", [
    # another layout's names (a sentiment set's own columns): which fields the line does have
    ('{"sentence": "ok", "sentiment": "pos"}', r'this line has the fields "sentence", "sentiment"$'),
    # "Text"/"Label" typed as a CSV header is read (case aside), but JSON names are case-sensitive
    # every field typed in other case named at once, not one a run
    ('{"Text": "ok", "Label": "pos"}', r'this line has the fields "Text", "Label" \(JSON field names are '
                                       r'case-sensitive: write "text" for "Text", "label" for "Label"\)$'),
    ('{"TEXT ": "ok", "label": "pos"}', r'this line has the fields "TEXT ", "label" \(JSON field names are '
                                       r'case-sensitive: write "text" for "TEXT "\)$'),
    ('{}', r'this line has no fields$'),
])
def test_a_jsonl_line_without_a_field_names_the_fields_it_has(tmp_path, line, found):
    # before: 'expected a JSON object with a "text" field' alone, though a CSV header's error lists
    # the columns it found
    path = tmp_path / "mine.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine.jsonl' line 1: expected a JSON object with a \"text\" field; " + found):
        load_labelled(path)


@pytest.mark.parametrize("line, kind", [('"just a text"', "str"), ("null", "null"), ("3", "int")])
def test_a_jsonl_line_that_is_no_object_says_what_it_is(tmp_path, line, kind):
    # before: 'expected a JSON object with a "text" field' alone (finetune sft's reader says what it is)
    path = tmp_path / "mine.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf'line 1: expected a JSON object with a "text" field, got a JSON {kind}$'):
        load_labelled(path)


def test_a_label_error_names_the_line_the_example_is_on(tmp_path):
    # blank lines, a CSV header and a field over two lines: the example count is not the line
    jsonl, csv = tmp_path / "v.jsonl", tmp_path / "v.csv"
    jsonl.write_text('\n{"text": "a", "label": "x"}\n\n{"text": "c", "label": "z"}\n', encoding="utf-8")
    csv.write_text('text,label\n\n"two\nlines",x\nc,z\n', encoding="utf-8")
    for path, starts in ((jsonl, [2, 4]), (csv, [3, 5])):     # the two-line field's row starts on line 3
        texts, labels, lines = read_labelled(path)
        line = starts[-1]
        assert lines == starts and load_labelled(path) == (texts, labels)
        with pytest.raises(ValueError, match=f"v.{path.suffix[1:]}: line {line} has the unknown label 'z'"):
            encode_labels(labels, ("x", "y"), source=str(path), lines=lines)
    jsonl.write_text('{"text": "a", "label": "x"}\n\n{"text": " ", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="v.jsonl line 3: empty text"):
        load_labelled(jsonl)


def test_a_jsonl_label_is_read_as_a_csv_label_is(tmp_path):
    # spaces around a label do not make another class, and an empty label is refused, in both formats
    (tmp_path / "w.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": " pos "}\n',
                                      encoding="utf-8")
    (tmp_path / "w.csv").write_text("text,label\na,pos\nb, pos \n", encoding="utf-8")
    assert load_labelled(tmp_path / "w.jsonl")[1] == load_labelled(tmp_path / "w.csv")[1] == ["pos", "pos"]
    (tmp_path / "w.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": " "}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="w.jsonl line 2: empty label"):
        load_labelled(tmp_path / "w.jsonl")


def test_encode_labels():
    assert encode_labels(["b", "a", "b"]) == ([1, 0, 1], ("a", "b"))
    assert encode_labels([1, 0, 2]) == ([1, 0, 2], (0, 1, 2))
    assert encode_labels(["pos", "neg"], ("neg", "pos")) == ([1, 0], ("neg", "pos"))
    with pytest.raises(ValueError, match="example 2 has the unknown label 'maybe'"):
        encode_labels(["neg", "maybe"], ("neg", "pos"))
    with pytest.raises(ValueError, match="3 labels .* num_labels = 2"):
        encode_labels(["a", "b", "c"], num_labels=2)
    assert encode_labels([0, "b", 1], ("a", "b")) == ([0, 1, 1], ("a", "b"))  # ints are ids
    with pytest.raises(ValueError, match="label id 3, but there are only 2 labels .*label count mismatch"):
        encode_labels([0, 3], ("a", "b"))
    with pytest.raises(ValueError, match="dataset is empty"):
        encode_labels([])
    with pytest.raises(ValueError, match="at least two labels"):
        encode_labels(["a", "a"])


def test_encode_labels_refuses_names_given_twice_wherever_they_come_from():
    # not only `finetune classify --labels` (ClassifyConfig checks those first): a saved classifier's
    # id2label naming a class twice would score its second id as never right (each label finds its first)
    with pytest.raises(ValueError, match="labels must name each class once, got 'x' more than once in x, y, x"):
        encode_labels(["x", "y"], ("x", "y", "x"))
    with pytest.raises(ValueError, match="at least two classes"):
        encode_labels(["x"], ("x",))
    # a name may hold a space or a comma (only the --labels flag splits at commas)
    assert encode_labels(["very good", "bad, really"], ("bad, really", "very good")) == \
        ([1, 0], ("bad, really", "very good"))


def test_labels_that_are_numbers_keep_their_order_and_meaning(tmp_path):
    # a CSV file's labels are text: class numbers in numeric order, not "10" before "2"
    path = tmp_path / "many.csv"
    path.write_text("text,label\n" + "".join(f"t{k},{k}\n" for k in (10, 2, 1, 0, 11)), encoding="utf-8")
    ids, names = encode_labels(load_labelled(path)[1])
    assert names == ("0", "1", "2", "10", "11") and ids == [3, 2, 1, 0, 4]
    # -1 / 1 sentiment: a negative int cannot be a class id, so the values name the classes
    assert encode_labels([-1, 1, -1]) == ([0, 1, 0], (-1, 1))
    # validation labels checked against integer names: 0 is unknown, not the id of class 1
    with pytest.raises(ValueError, match="example 1 has the unknown label 0; the labels are -1, 1"):
        encode_labels([0], (-1, 1))
    # so too against those names read back as text (a saved classifier's id2label, classify --data)
    with pytest.raises(ValueError, match="example 1 has the unknown label 0; the labels are -1, 1"):
        encode_labels([0], ("-1", "1"))


def test_class_numbers_written_as_text_with_names_given_say_only_jsonl_integers_are_ids(tmp_path):
    # a CSV of 0/1 labels with --labels neg,pos: before, "unknown label '0'; the labels are neg, pos"
    # alone, though a .jsonl file's 0 would have been neg -- nothing said why the CSV's is not
    path = tmp_path / "ids.csv"
    path.write_text("text,label\nbad,0\ngood,1\n", encoding="utf-8")
    texts, labels, lines = read_labelled(path)
    with pytest.raises(ValueError, match=r"line 2 has the unknown label '0'; the labels are neg, pos \(a label "
                                         r"written as text, as every \.csv/\.tsv label is, is a name: only a "
                                         r"\.jsonl file's integer labels are class ids\)$"):
        encode_labels(labels, ("neg", "pos"), lines=lines)
    assert encode_labels([0, 1], ("neg", "pos")) == ([0, 1], ("neg", "pos"))   # the .jsonl integers
    # a name that is no class number, or one past the names, is just unknown
    for label in ("maybe", "2"):
        with pytest.raises(ValueError, match=rf"unknown label '{label}'; the labels are neg, pos$"):
            encode_labels([label], ("neg", "pos"))


def test_sft_and_choice_files(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "response": "Hello"}])
    assert load_sft(path) == [{"prompt": "Hi", "response": "Hello"}]
    write_jsonl(path, [{"prompt": "Hi", "response": "  "}])
    with pytest.raises(ValueError, match="empty response"):
        load_sft(path)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    write_jsonl(path, [{"messages": conversation, "id": 7}, {"prompt": "Hi", "response": "Yo", "system": None}])
    assert load_sft(path)[0]["messages"] == conversation      # HF's conversational layout; other fields ride along
    for record, message in (({"messages": conversation[:1]}, "sft.jsonl line 1 has no assistant message"),
                            ({"messages": [{"role": "bot", "content": "x"}]}, r"sft.jsonl line 1: messages\[0\]\['role'\]"),
                            ({"prompt": "Hi", "response": "Yo", "system": 5}, 'sft.jsonl line 1: "system" must be a string'),
                            ({"prompt": "Hi", "completion": "Yo"}, 'line 1 has no "response" field'),
                            ({"text": "Hi"}, 'with "prompt" and "response" fields, or with a "messages" list')):
        write_jsonl(path, [record])
        with pytest.raises(ValueError, match=message):
            load_sft(path)
    # an example is named by its line: blank lines do not shift it
    path.write_text(json.dumps({"prompt": "Hi", "response": "Yo"}) + "\n\n\n" + json.dumps({"prompt": "Hi", "response": ""}) + "\n")
    with pytest.raises(ValueError, match="sft.jsonl line 4 has an empty response"):
        load_sft(path)
    csv_file = tmp_path / "sft.csv"
    csv_file.write_text("prompt,response\nHi,Hello\n")
    with pytest.raises(ValueError, match="instruction data is a .jsonl file .* not .csv"):
        load_sft(csv_file)
    path = write_jsonl(tmp_path / "c.jsonl", [{"question": "Q", "choices": ["a", "b"], "answer": 1}])
    assert load_choice_items(path)[0]["answer"] == 1
    write_jsonl(path, [{"question": "Q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(ValueError, match="answer 2, but only 2 choices"):
        load_choice_items(path)
    write_jsonl(path, [{"question": "Q", "choices": ["a"], "answer": 0}])
    with pytest.raises(ValueError, match="at least two non-empty"):
        load_choice_items(path)
    path.write_text('{"question": "Q", "choices": ["a", "b"], "answer": 1}\n\n'
                    '{"question": "Q", "choices": ["a", "b"], "answer": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="c.jsonl line 3: answer 5, but only 2 choices"):   # the line, blank ones counted
        load_choice_items(path)
    # reading comprehension: a passage rides along; an answer given as a letter or the choice's text
    # is told what is wanted
    write_jsonl(path, [{"context": "Tom had a ball.", "question": "What did Tom have?", "choices": ["a ball", "a cat"],
                        "answer": 0}])
    assert load_choice_items(path)[0]["context"] == "Tom had a ball."
    for answer in ("A", "a ball", True):
        write_jsonl(path, [{"question": "Q", "choices": ["a ball", "a cat"], "answer": answer}])
        with pytest.raises(ValueError, match=r'c.jsonl line 1: "answer" must be the index of the right choice, counting from 0'):
            load_choice_items(path)
    write_jsonl(path, [{"context": ["Tom"], "question": "Q", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(ValueError, match='"context" must be a string'):
        load_choice_items(path)
    # a choice given twice would tie with itself, and whichever is called right the item measures nothing
    write_jsonl(path, [{"question": "Q", "choices": ["a dog", "a cat", "a dog "], "answer": 0}])
    with pytest.raises(ValueError, match=r"c.jsonl line 1: choices 0 and 2 are the same text \('a dog'\)"):
        load_choice_items(path)


def test_split_and_bad_arguments():
    train, val = split_train_val(10, 0.2, seed=0)
    assert sorted(train + val) == list(range(10)) and len(val) == 2
    with pytest.raises(ValueError, match="one side would be empty"):
        split_train_val(2, 0.1)
    # what would help, on the side that is empty; a validation file only for jobs that take one (sft, sop do not)
    with pytest.raises(ValueError, match=r"\(no examples for validation\); give more examples, a larger val_fraction "
                                         r"or a separate validation file$"):
        split_train_val(2, 0.1)
    with pytest.raises(ValueError, match=r"\(no documents for training\); give more documents or a smaller "
                                         r"val_fraction$"):
        split_train_val(3, 0.9, what="documents", val_file=False)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(10, 1.0)
    with pytest.raises(ValueError, match="unknown example dataset 'news'"):
        make_dataset("news")
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_dataset("spam", 0)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=40), val_fraction=st.sampled_from([0.1, 0.2, 0.5, 0.9]),
       seed=st.integers(0, 3))
def test_a_stratified_split_holds_out_each_label_by_its_share(labels, val_fraction, seed):
    n = len(labels)
    try:
        train, val = split_train_val(n, val_fraction, seed, strata=labels)
    except ValueError:                           # one side empty, as without labels
        assert round(n * val_fraction) in (0, n)
        return
    assert sorted(train + val) == list(range(n)) and len(val) == round(n * val_fraction)
    counts = collections.Counter(labels)
    held = collections.Counter(labels[i] for i in val)
    if len(train) >= len(counts):               # room for every label in training: each keeps one
        assert all(held[label] < counts[label] for label in counts), (counts, held)
    if all(counts[label] - 1 >= math.ceil(counts[label] * len(val) / n) for label in counts):
        # no label's limit below its share rounded up: each label's share is its exact share rounded
        assert all(abs(held[label] - counts[label] * len(val) / n) < 1 for label in counts), (counts, held)
    assert split_train_val(n, val_fraction, seed, strata=labels) == (train, val)    # seeded


def test_a_stratified_split_by_hand():
    labels = ["a"] * 16 + ["b"] * 3 + ["c"]
    train, val = split_train_val(20, 0.2, 0, strata=labels)
    assert sorted(labels[i] for i in val) == ["a", "a", "a", "b"]   # shares 3.2, 0.6, 0.2 of 4
    # nine labels of one text and one of three, 5 of 12 held out: the label of three gives two, and
    # three single texts go whole, as the 7 left for training cannot hold one of each of 10 labels
    labels = list("abcdefghi") + ["z"] * 3
    train, val = split_train_val(12, 0.45, 0, strata=labels)
    assert len(val) == 5 and sum(labels[i] == "z" for i in val) == 2
    with pytest.raises(ValueError, match=r"strata must give one label per item \(10\), got 9"):
        split_train_val(10, 0.2, strata=[0] * 9)


@pytest.mark.parametrize("lines, message", [
    # before: '"response" must be a string, got NoneType' for a line that has no "response" at all
    ('{"prompt": "hi", "response": "yo"}\n{"prompt": "hi"}\n',
     r'sft.jsonl line 2 has no "response" field: each line is \{"prompt"'),
    ('{"prompt": "hi", "response": null}\n', 'line 1: "response" must be a string, got null$'),
    ('{"prompt": "hi", "response": "yo", "system": 3}\n', '"system" must be a string, got int$'),
], ids=["no response", "null", "int"])
def test_sft_lines_without_a_field_say_which_and_the_expected_shape(tmp_path, lines, message):
    from npllama.datasets import read_sft

    bad = tmp_path / "sft.jsonl"
    bad.write_text(lines, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_sft(bad)


@pytest.mark.parametrize("line, fields", [
    ('{"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
     '"system"'),
    ('{"prompt": "a", "response": "b", "messages": [{"role": "user", "content": "hi"}, '
     '{"role": "assistant", "content": "yo"}]}', '"prompt", "response"'),
], ids=["system beside messages", "a pair beside messages"])
def test_an_sft_line_with_messages_and_the_pair_fields_is_refused(tmp_path, line, fields):
    # Before: the "messages" were trained on and the line's "system" (or its prompt/response pair)
    # dropped without a word: a system message the user wrote, never seen by the model
    from npllama.datasets import read_sft

    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "hi", "response": "yo"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sft.jsonl line 2 has \"messages\" and also " + re.escape(fields)
                       + r'.*\{"role": "system", "content": ...\} first in "messages"'):
        read_sft(bad)


def test_an_sft_line_with_messages_and_null_pair_fields_is_read(tmp_path):
    # A file that mixes both layouts, exported from a table (pandas, datasets' to_json), gives every
    # line every column, null where it has none: nothing is dropped, so nothing is refused
    from npllama.datasets import read_sft

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": messages, "prompt": None, "response": None, "system": None}) + "\n",
                    encoding="utf-8")
    assert [r["messages"] for r in read_sft(path)[0]] == [messages]


@pytest.mark.parametrize("name, content", [
    # Excel in much of Europe saves "CSV" with semicolons (a comma is the decimal mark there)
    ("excel.csv", b'\xef\xbb\xbftext;label\r\n"Hello, world";a\r\nBye;b\r\n'),
    ("t.tsv", b"text\tlabel\nHello, world\ta\nBye\tb\n"),
    ("T.CSV", b'text,label\n"Hello, world",a\nBye,b\n'),        # Windows' upper-case name
    ("spaced.csv", b'Text, Label\n"Hello, world",a\nBye,b\n'),  # a header typed by hand
], ids=["semicolons", "tsv", "upper-case suffix", "header case and spaces"])
def test_labelled_files_as_spreadsheets_save_them(tmp_path, name, content):
    # Before: "missing text, label (found text;label)", "expected a .jsonl or .csv file, got '.tsv'"
    (tmp_path / name).write_bytes(content)
    assert load_labelled(tmp_path / name) == (["Hello, world", "Bye"], ["a", "b"])


@pytest.mark.parametrize("separator", [";", ",", "\t", "|"], ids=["semicolon", "comma", "tab", "bar"])
@pytest.mark.parametrize("spelling", ["sep=", "SEP="])
def test_an_excel_separator_line_names_the_separator(tmp_path, separator, spelling):
    # Excel writes (and reads) a first line "sep=;" naming the separator for another locale's
    # reader. Before: "line 1: the header row must name the columns text and label; missing text,
    # label (found 'sep=;')" -- the separator line read as the header
    path = tmp_path / "excel.csv"
    rows = [f"text{separator}label", f'"Hello{separator} world"{separator}a', f"Bye{separator}b", ""]
    path.write_bytes(("\ufeff" + f"{spelling}{separator}\r\n" + "\r\n".join(rows)).encode("utf-8"))
    assert load_labelled(path) == ([f"Hello{separator} world", "Bye"], ["a", "b"])
    # the lines messages name stay the file's own, the separator line counted
    path.write_text(f"sep={separator}\ntext{separator}label\nok{separator}a\n\nbad\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"excel.csv line 5: too few columns"):
        load_labelled(path)
    path.write_text(f"sep={separator}\ntext{separator}lab\nok{separator}a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"excel.csv line 2: the header row must name .* missing label"):
        load_labelled(path)
    path.write_text(f"sep={separator}\n\n\ntext{separator}label\nok{separator}a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"excel.csv lines 2-3 are blank: the line after the sep= line must be "
                                         r"the header row .* remove the blank lines before it"):
        load_labelled(path)
    path.write_text(f"sep={separator}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds only its line 1, 'sep=(.|\\t)': no header row and no examples"):
        load_labelled(path)
    path.write_text(f'sep={separator}\n"text{separator}label\nok{separator}a\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"excel.csv line 2: not valid CSV"):   # the header's own line
        load_labelled(path)


@pytest.mark.parametrize("line", ["sep=;;", "sep=;;;", "sep=; ", "Sep=;\t"])
def test_a_separator_line_with_trailing_separators_or_spaces_names_its_separator(tmp_path, line):
    # a tool that writes the sep= line as a row of the sheet pads it with empty cells (sep=;;), an
    # editor may leave a space. Before: read as the header, "missing text, label (found 'sep=;')"
    # -- naming a line that looks like the one npllama reads
    path = tmp_path / "t.csv"
    path.write_text(f"{line}\r\ntext;label\r\nHello, world;a\r\n", encoding="utf-8")
    assert read_labelled(path) == (["Hello, world"], ["a"], [3])


@pytest.mark.parametrize("line", ["sep=\\t", "sep=x", "sep= ", "sep=", 'sep="', "SEP=\\t;"])
def test_a_separator_line_naming_no_usable_separator_is_named(tmp_path, line):
    # "sep=\t" typed with a backslash for a tab, a letter, a space, nothing: before, read as the
    # header row and refused as "missing text, label (found 'sep=\\t')", the sep= line not named
    path = tmp_path / "t.csv"
    path.write_text(f"{line}\ntext\tlabel\nhi\ta\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"t.csv line 1, {line!r}, names no separator npllama reads: ")
                       + r".*a tab character itself, not \\t"):
        load_labelled(path)


def test_a_header_split_at_another_separator_than_the_sep_line_names_is_told_so(tmp_path):
    # line 1 says comma, the rows use semicolons: before, "missing text, label (found 'text;label')"
    # alone, which does not say why the header was not split
    path = tmp_path / "t.csv"
    path.write_text("sep=,\ntext;label\nhi;a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: .* \(found 'text;label'\); it is split at each comma, "
                                         r"as line 1 \('sep=,'\) names"):
        load_labelled(path)


def test_a_text_like_a_separator_line_after_line_one_is_a_text(tmp_path):
    # only line 1 names the separator: a later "sep=;" is an example's text
    path = tmp_path / "t.csv"
    path.write_text("text,label\nsep=;,a\n", encoding="utf-8")
    assert load_labelled(path) == (["sep=;"], ["a"])


def test_a_semicolon_inside_a_comma_separated_text_stays_text(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\nfirst; then second,a\n"x;y",b\n', encoding="utf-8")
    assert load_labelled(tmp_path / "t.csv") == (["first; then second", "x;y"], ["a", "b"])


@pytest.mark.parametrize("name, separator, named", [("q.csv", ",", "CSV"), ("q.tsv", "\t", "TSV"),
                                                    ("semi.csv", ";", "CSV")])
@pytest.mark.parametrize("field", ['"Hi," she said', 'a "b" c', '"a "b" c"'],
                         ids=["text starts with a quote", "quotes inside", "quoted field with bare quotes"])
def test_a_bare_quote_is_refused_saying_how_to_quote_the_text(tmp_path, name, separator, named, field):
    # before: 'not valid CSV (\'\t\' expected after \'"\'); a quote inside a quoted field is written
    # twice ("")' -- "CSV" for a .tsv file, a raw tab in the message, and no word that a text
    # which merely starts with a quote must be quoted whole
    path = tmp_path / name
    path.write_text(f"text{separator}label\nok{separator}a\n{field}{separator}b\n", encoding="utf-8")
    if field == 'a "b" c':     # a quote inside an unquoted field is text (as Excel reads it)
        assert load_labelled(path) == (["ok", 'a "b" c'], ["a", "b"])
        return
    with pytest.raises(ValueError) as error:
        load_labelled(path)
    message = str(error.value)
    assert message.startswith(f"{path} line 3: not valid {named}")
    assert "\t" not in message
    sep_name = {",": "comma", ";": "semicolon", "\t": "tab"}[separator]
    assert f"a {sep_name}" in message
    # the remedy the message shows, written into the file, reads back as the text it stands for
    shown = re.search(r"\((\"{3}.*\")\)$", message).group(1)
    path.write_text(f"text{separator}label\nok{separator}a\n{shown}{separator}b\n", encoding="utf-8")
    assert load_labelled(path)[0] == ["ok", '"Hi," she said']


@pytest.mark.parametrize("name, separator, named", [("h.csv", ",", "CSV comma"), ("h.tsv", "\t", "TSV tab")])
def test_a_bare_quote_in_the_header_row_is_refused_as_in_a_row(tmp_path, name, separator, named):
    # before: 'not a readable CSV file (\'\t\' expected after \'"\')' -- csv's words, "CSV" for a .tsv file
    path = tmp_path / name
    path.write_text(f'"text" column{separator}label\nok{separator}a\n', encoding="utf-8")
    kind, word = named.split()
    with pytest.raises(ValueError, match=rf"h.{kind.lower()} line 1: not valid {kind}: a field that starts with a "
                                         rf"quote .* followed by a {word} or"):
        load_labelled(path)


@pytest.mark.parametrize("row, said", [('"Hi," she said,b', "not valid CSV"),
                                        ('"never closed,b', "a quoted field starts on this line")])
@pytest.mark.parametrize("blank", ["\n", "\n\n", "\r\n"], ids=["one", "two", "crlf"])
def test_a_malformed_row_after_blank_lines_is_named_by_its_own_line(tmp_path, row, said, blank):
    # before: the line after the previous row -- a blank one -- was named, not the row's
    path = tmp_path / "b.csv"
    path.write_text(f"text,label\nok,a\n{blank}{row}\nmore,a\n", encoding="utf-8", newline="")
    line = 3 + blank.count("\n")
    with pytest.raises(ValueError, match=rf"b.csv line {line}: {said}"):
        load_labelled(path)


@pytest.mark.parametrize("name", ["long.csv", "long.tsv"])
def test_a_text_over_csvs_field_size_limit_is_read(tmp_path, name):
    # before: 'not valid CSV (field larger than field limit (131072))' -- csv's own cap, not a limit of
    # npllama's (the file is within its read budget; a .jsonl text of any length is read)
    import csv

    separator = "\t" if name.endswith(".tsv") else ","
    long = "word " * 40_000
    path = tmp_path / name
    path.write_text(f"text{separator}label\n{long}{separator}a\n\"{long},\"{separator}b\n", encoding="utf-8")
    limit = csv.field_size_limit()
    assert load_labelled(path) == ([long, long + ","], ["a", "b"])
    assert csv.field_size_limit() == limit     # the process's limit left as it was


def test_an_sft_line_with_other_field_names_says_which_it_has(tmp_path):
    # Alpaca's layout: the error named only the fields expected, not the ones the line holds
    from npllama.datasets import read_sft

    bad = tmp_path / "alpaca.jsonl"
    bad.write_text('{"instruction": "Say hi", "input": "", "output": "Hi"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'alpaca.jsonl line 1 .*; this line has the fields "instruction", "input", "output"'):
        read_sft(bad)
    # the fields of either layout typed in other case are named, each with its spelling
    bad.write_text('{"Prompt": "Say hi", "Response": "Hi"}\n{"Messages": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'line 1 .*"Prompt", "Response" \(JSON field names are case-sensitive: '
                                         r'write "prompt" for "Prompt", "response" for "Response"\)$'):
        read_sft(bad)
    bad.write_text('{"Messages": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'line 1 .*"Messages" \(JSON field names are case-sensitive: '
                                         r'write "messages" for "Messages"\)$'):
        read_sft(bad)


@pytest.mark.parametrize("name, content, message", [
    # a separator inside an unquoted text shifted the columns: the label read was the text's second half
    ("semi.csv", "text;label\nfirst; then second;a\nbye;b\n",
     r"semi.csv line 2: more columns than the header row's 2; a semicolon inside a text must be in a quoted"),
    ("t.tsv", "text\tlabel\nhi\tthere\ta\nbye\tb\n", r"t.tsv line 2: more columns .* a tab inside a text"),
    ("c.csv", 'text,label\n"two\nlines",a\nhello, world,b\n', r"c.csv line 4: more columns .* a comma inside"),
    # "Text" and "text" fold to one name: DictReader kept the last one's values
    ("twice.csv", "text,label,Text\nkept,a,dropped\n", r"twice.csv: the header row names the column text more "
                                                        r"than once"),
], ids=["semicolon in text", "tab in text", "comma in text after a multi-line row", "column named twice"])
def test_a_row_that_does_not_fit_the_header_is_an_error_not_a_wrong_label(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_labelled(tmp_path / name)


@pytest.mark.parametrize("name, content, blank_lines", [
    ("blank.csv", "\ntext,label\nhello,pos\nbad,neg\n", 1),
    ("spaces.csv", "   \ntext;label\nhello;pos\n", 1),
    ("two.tsv", "\r\n\ntext\tlabel\nhello\tpos\n", 2),
])
def test_a_blank_line_where_the_header_row_belongs_is_named_with_what_is_expected(tmp_path, name, content,
                                                                                   blank_lines):
    """A blank line before the header row was read as a header naming no column: "missing text,
    label (found )", with no line.  The message names the file, the line, and the header expected."""
    (tmp_path / name).write_text(content, encoding="utf-8")
    lines = "line 1 is" if blank_lines == 1 else f"lines 1-{blank_lines} are"
    with pytest.raises(ValueError, match=rf"{name} {lines} blank: the first line must be the header row naming "
                                         rf"the columns text and label"):
        load_labelled(tmp_path / name)
    # a header on line 1 with the columns missing is named with its line too
    (tmp_path / "words.csv").write_text("words,kind\nhello,pos\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"words.csv line 1: the header row must name the columns text and label; "
                                         r"missing text, label \(found 'words', 'kind'\)"):
        load_labelled(tmp_path / "words.csv")
    # a quoted header name across lines: the header still starts on line 1
    (tmp_path / "quoted.csv").write_text('"many\nwords",kind\nhello,pos\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"quoted.csv line 1: the header row must name"):
        load_labelled(tmp_path / "quoted.csv")


def test_extra_named_columns_and_the_label_first_are_read(tmp_path):
    (tmp_path / "wide.csv").write_text('id;Label;Text;source\n1;a;"x; y";web\n2;b;bye;web\n', encoding="utf-8")
    assert load_labelled(tmp_path / "wide.csv") == (["x; y", "bye"], ["a", "b"])
