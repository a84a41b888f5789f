"""`eval perplexity` of held-out text written like the training text scores it as training's
validation does: cut into documents (`<s> doc </s>` each), not as one text whose blank lines the
model never saw as tokens (a run trained at blank lines scored 4.18 nats on such a file against a
validation loss of 3.43 on the same kind of text)."""
import json
import warnings
import shutil

import numpy as np
import pytest

from npllama.cli import main
from npllama.data import evaluation_batches, split_documents, tokenize_corpus
from npllama.perplexity import perplexity
from npllama.runs import load_model_and_tokenizer

PARAGRAPHS = ["Once upon a time, there was a little girl named Lily.\nShe liked to play with her red ball.",
              "One day the ball rolled into the garden. Lily ran after it.",
              "Her friend Tom came to help.\nThey found the ball under a big tree and laughed."]
HELD_OUT = "\r\n\r\n".join(p.replace("\n", "\r\n") for p in PARAGRAPHS) + "\r\n"   # a Windows file


def training_validation_loss(model, tokenizer, text, doc_separator, seq_len):
    """The loss `npllama train` reports for `text` as --val-data with --eval-batches 0."""
    ids = tokenize_corpus(split_documents(text, doc_separator), tokenizer)
    total, count = 0.0, 0
    for tokens, targets in evaluation_batches(ids, batch_size=3, seq_len=seq_len):
        total += model.loss(tokens, targets) * targets.size
        count += targets.size
    return total / count, count


@pytest.mark.parametrize("doc_separator", ["blank-line", "line", "whole-file"])
def test_documents_are_scored_as_training_validation_scores_them(small_model_dir, doc_separator):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir, dtype=np.float64)
    expected, targets = training_validation_loss(model, tokenizer, HELD_OUT, doc_separator, seq_len=16)
    result = perplexity(model, tokenizer, HELD_OUT, context=16, doc_separator=doc_separator)
    assert result.tokens == targets
    assert result.documents == len(split_documents(HELD_OUT, doc_separator))
    assert result.mean_loss == pytest.approx(expected, rel=1e-10)
    # the text whole is another number: its newlines are tokens the documents never hold
    whole = perplexity(model, tokenizer, HELD_OUT, context=16)
    assert whole.documents is None and whole.mean_loss != pytest.approx(expected, rel=1e-6)


def test_a_bad_doc_separator_is_refused_naming_it(small_model_dir):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    with pytest.raises(ValueError, match="doc_separator must be blank-line, line, whole-file or marker"):
        perplexity(model, tokenizer, HELD_OUT, doc_separator="paragraph")


def run_folder(small_model_dir, tmp_path, doc_separator):
    """A run folder as `npllama train` leaves one: model/ and the settings it recorded."""
    run = tmp_path / "run"
    shutil.copytree(small_model_dir, run / "model")
    (run / "train_config.json").write_text(json.dumps({"doc_separator": doc_separator, "seq_len": 16}))
    return run


def eval_perplexity(capsys, *argv):
    status = main(["eval", "perplexity", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("as_given", ["run", "run/model"])
def test_eval_of_a_run_cuts_documents_as_the_run_was_trained(small_model_dir, tmp_path, capsys, as_given):
    run = run_folder(small_model_dir, tmp_path, "line")
    held_out = tmp_path / "held_out.txt"
    held_out.write_bytes(HELD_OUT.encode("utf-8"))
    model, tokenizer, _ = load_model_and_tokenizer(run / "model")
    expected = perplexity(model, tokenizer, HELD_OUT, context=16, doc_separator="line")
    status, out, _ = eval_perplexity(capsys, "--model", str(tmp_path / as_given), "--data", str(held_out),
                                     "--context", "16")
    assert status == 0 and f"mean loss {expected.mean_loss:.4f} nats" in out
    assert f"{expected.documents} documents cut at every line, as the run was trained" in out
    # a separator given is taken over the run's
    expected = perplexity(model, tokenizer, HELD_OUT, context=16, doc_separator="blank-line")
    status, out, _ = eval_perplexity(capsys, "--model", str(tmp_path / as_given), "--data", str(held_out),
                                     "--context", "16", "--doc-separator", "blank-line")
    assert status == 0 and f"mean loss {expected.mean_loss:.4f} nats" in out and "3 documents cut at blank lines" in out


def test_eval_of_a_model_folder_without_a_run_reads_the_text_whole(small_model_dir, tmp_path, capsys):
    held_out = tmp_path / "held_out.txt"
    held_out.write_bytes(HELD_OUT.encode("utf-8"))
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    expected = perplexity(model, tokenizer, HELD_OUT.replace("\r\n", "\n"))
    status, out, _ = eval_perplexity(capsys, "--model", str(small_model_dir), "--data", str(held_out))
    assert status == 0 and f"mean loss {expected.mean_loss:.4f} nats" in out and "documents" not in out
    status, _, err = eval_perplexity(capsys, "--model", str(small_model_dir), "--data", str(held_out),
                                     "--doc-separator", "paragraph")
    assert status == 2 and "--doc-separator" in err and "paragraph" in err


def test_eval_of_a_runs_checkpoint_cuts_documents_as_the_run_was_trained(small_model_dir, tmp_path, capsys):
    """`--model RUN/checkpoint` (or a run that has only its checkpoint yet) is the same run."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    shutil.copytree(small_model_dir, run / "checkpoint" / "model")
    (run / "checkpoint" / "training_state.json").write_text(json.dumps({"step": 1}))
    (run / "train_config.json").write_text(json.dumps({"doc_separator": "line", "seq_len": 16}))
    held_out = tmp_path / "held_out.txt"
    held_out.write_bytes(HELD_OUT.encode("utf-8"))
    for as_given in (run, run / "checkpoint"):
        status, out, _ = eval_perplexity(capsys, "--model", str(as_given), "--data", str(held_out), "--context", "16")
        assert status == 0 and "documents cut at every line, as the run was trained" in out


def test_a_marker_the_file_never_holds_is_said(small_model_dir, tmp_path, capsys):
    """As training warns of a --data that never holds its marker: the file is then one document."""
    run = run_folder(small_model_dir, tmp_path, "marker:<END>")
    held_out = tmp_path / "held_out.txt"
    held_out.write_bytes(HELD_OUT.encode("utf-8"))
    with pytest.warns(UserWarning, match="<END>.* never occurs in .*held_out.txt.*one document"):
        status, out, _ = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out))
    assert status == 0 and "1 document" in out
    only_markers = tmp_path / "only_markers.txt"
    only_markers.write_text("<END>\n\n<END> <END>\n")
    status, _, err = eval_perplexity(capsys, "--model", str(run), "--data", str(only_markers))
    assert status == 2 and "no document" in err and "<END>" in err


def test_a_runs_settings_that_cannot_be_read_are_an_error_unless_the_flags_they_give_are_given(
        small_model_dir, tmp_path, capsys):
    """Not silently read as a folder no run saved (the text whole, another number than training's):
    the file and its problem are named, with the flags that make the settings unneeded."""
    run = run_folder(small_model_dir, tmp_path, "line")
    (run / "train_config.json").write_text(json.dumps({"doc_separator": "line", "seq_len": 16, "colour": "red"}))
    held_out = tmp_path / "held_out.txt"
    held_out.write_bytes(HELD_OUT.encode("utf-8"))
    status, _, err = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out))
    assert status == 2 and "train_config.json" in err and "colour" in err and "give them" in err, err
    assert "--context and --doc-separator" in err and len(err.strip().splitlines()) == 1, err
    status, out, _ = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out), "--doc-separator", "line",
                                     "--context", "16")
    assert status == 0 and "documents cut at every line;" in out, out


def write_held_out(folder, form: str):
    """Held-out text in `form` as `npllama train --val-data` takes it: a .jsonl file whose records hold
    blank lines and line ends (each record one document all the same), or a folder of such a file, a
    .txt file of a story a line (the run's --doc-separator line cuts it) and a note that is not read."""
    from npllama.corpus import make_default_corpus

    stories = make_default_corpus(9, seed=9)
    records = [stories[0] + "\n\n" + stories[1], stories[2] + "\n" + stories[3], stories[4]]
    jsonl = folder / "held_out.jsonl"
    jsonl.write_text("".join(json.dumps({"text": text}) + "\n" for text in records))
    if form == "jsonl":
        return jsonl
    held_out = folder / "held_out"
    held_out.mkdir()
    jsonl.rename(held_out / "a.jsonl")
    (held_out / "b.txt").write_text("\n".join(stories[5:]) + "\n")
    (held_out / "notes.md").write_text("# not held-out text\n")
    return held_out


@pytest.fixture(scope="module", params=["jsonl", "folder"])
def run_with_held_out(request, tmp_path_factory):
    """(run folder, its --val-data, the validation loss it logged): an `npllama train` run on a .jsonl
    corpus (--doc-separator line) whose --val-data, a .jsonl file or a folder, was all scored
    (--eval-batches 0)."""
    from npllama.corpus import make_default_corpus
    from npllama.train import TrainConfig, train

    folder = tmp_path_factory.mktemp(f"run_{request.param}")
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n"
                                                for text in make_default_corpus(200, seed=0)))
    held_out = write_held_out(folder, request.param)
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the note the folder holds is left out, as eval leaves it out
        monkeypatch.setenv("NPLLAMA_RUNS", str(folder / "runs"))
        train(TrainConfig(out=str(folder / "run"), data=str(folder / "train.jsonl"), val_data=str(held_out),
                          doc_separator="line", preset="stories260k", vocab_size=360, batch_size=3, seq_len=24,
                          steps=20, eval_every=0, eval_batches=0, samples=0, progress=False, seed=4),
              echo=lambda *a: None)
    logged = [json.loads(line) for line in (folder / "run" / "log.jsonl").read_text().splitlines()]
    return folder / "run", held_out, [r["val_loss"] for r in logged if "val_loss" in r][-1]


def test_a_runs_jsonl_or_folder_held_out_text_gives_the_validation_loss_it_logged(run_with_held_out, capsys):
    """A .jsonl file was scored as its JSON text (braces, quotes, "text": keys), a folder refused."""
    run, held_out, val_loss = run_with_held_out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out), "--context", "24")
    assert status == 0, err
    assert f"mean loss {val_loss:.4f} nats" in out, (out, val_loss)
    # the folder's note is left out, and said to be, as training says it
    assert any("notes.md" in str(w.message) for w in caught) == held_out.is_dir()


def test_read_held_out_reads_a_path_for_python_as_training_reads_it(run_with_held_out):
    from npllama.perplexity import read_held_out

    run, held_out, val_loss = run_with_held_out
    model, tokenizer, _ = load_model_and_tokenizer(run, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        documents = read_held_out(held_out, doc_separator="line")
    result = perplexity(model, tokenizer, documents, context=24)
    assert result.mean_loss == pytest.approx(val_loss, rel=1e-5) and result.documents == len(documents)


def test_documents_are_encoded_as_cut_and_a_separator_beside_them_is_refused(small_model_dir):
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir, dtype=np.float64)
    documents = split_documents(HELD_OUT, "blank-line")
    assert perplexity(model, tokenizer, documents, context=16) == perplexity(model, tokenizer, HELD_OUT, context=16,
                                                                          doc_separator="blank-line")
    with pytest.raises(ValueError, match="doc_separator.*documents already.*leave it out"):
        perplexity(model, tokenizer, documents, doc_separator="line")
    with pytest.raises(TypeError, match="text must be a str, or documents"):
        perplexity(model, tokenizer, {"text": HELD_OUT})
    with pytest.raises(TypeError, match=r"text must be a str, or documents.*text\[1\] is a int"):
        perplexity(model, tokenizer, ["Once upon a time.", 7])


@pytest.mark.parametrize("name, content, message", [
    ("held_out.json", '[{"text": "Once upon a time."}]', "jq -c"),        # records as one JSON array
    ("held_out.jsonl", '{"story": "Once upon a time."}\n', '"text" field'),
    ("held_out.md", "# Once upon a time\n", "expected a .txt or .jsonl file"),
])
def test_what_training_refuses_to_read_is_refused_before_the_model_is_loaded(tmp_path, capsys, name, content,
                                                                             message):
    """Not scored as the file's characters (a JSON array's brackets and keys): a silent wrong number."""
    data = tmp_path / name
    data.write_text(content)
    status, out, err = eval_perplexity(capsys, "--model", str(tmp_path / "never-read"), "--data", str(data))
    assert status == 2 and out == "" and f"cannot read --data {data}" in err and message in err, err


@pytest.mark.parametrize("form", ["jsonl", "folder of .jsonl"])
def test_a_runs_damaged_settings_are_not_read_when_data_has_no_txt_file_to_cut(small_model_dir, tmp_path, capsys,
                                                                              form):
    """A .jsonl file (or a folder of them) is a document a record whatever --doc-separator says: the
    run's settings, read only for the separator, are not needed, so a damaged train_config.json is
    not an error asking for --doc-separator (which would change nothing); a .txt file still needs it."""
    run = run_folder(small_model_dir, tmp_path, "line")
    (run / "train_config.json").write_text('{"doc_separator": "li')   # cut short: not JSON
    records = "".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS)
    data = tmp_path / "held_out.jsonl"
    if form != "jsonl":
        data = tmp_path / "held_out"
        data.mkdir()
        (data / "a.jsonl").write_text(records)
    else:
        data.write_text(records)
    model, tokenizer, _ = load_model_and_tokenizer(run / "model")
    expected = perplexity(model, tokenizer, PARAGRAPHS, context=16)
    status, out, err = eval_perplexity(capsys, "--model", str(run), "--data", str(data), "--context", "16")
    assert status == 0 and f"mean loss {expected.mean_loss:.4f} nats" in out, err
    (data / "b.txt" if data.is_dir() else tmp_path / "b.txt").write_text(HELD_OUT)   # a .txt file to cut
    status, _, err = eval_perplexity(capsys, "--model", str(run), "--data", str(data if data.is_dir() else
                                                                                   tmp_path / "b.txt"), "--context", "16")
    assert status == 2 and "train_config.json" in err and "--doc-separator" in err, err


def test_with_no_flags_a_runs_model_is_scored_at_the_runs_seq_len_its_logged_validation_loss(run_with_held_out,
                                                                                             capsys):
    """--context defaults to the run's --seq-len, as eval mlm's does: the positions the model was trained
    on (max_position_embeddings is the preset's, which a run at a shorter --seq-len never saw, and there
    a run's loss is far worse, not better), and the validation loss the run logged.  --json says so."""
    run, held_out, val_loss = run_with_held_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, out, err = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out))
        assert status == 0, err
        assert f"mean loss {val_loss:.4f} nats" in out and "of up to 24 tokens; --context as the run was trained" in out
        status, out, err = eval_perplexity(capsys, "--model", str(run), "--data", str(held_out), "--json")
    record = json.loads(out)
    assert record["mean_loss"] == pytest.approx(val_loss, rel=1e-5) and record["context"] == 24, record
    assert record["perplexity"] == pytest.approx(np.exp(val_loss), rel=1e-5) and record["tokens"] > 0
    assert "context" in record["settings_of_the_run"] and record["units"] == {"mean_loss": "nats per token"}
    assert record["documents"] == (3 if held_out.suffix == ".jsonl" else 7)
