"""`npllama eval mlm`: a masked-LM model's loss and accuracy over the masked tokens of a text file
(`eval perplexity` refuses such a model and pointed nowhere), scored as `npllama train --objective
mlm` scores its held-out text: the same windows, the same masks from the seed, the same loss."""
import json

import numpy as np
import pytest

from npllama import Llama
from npllama.cli import main
from npllama.data import evaluation_batches
from npllama.loss_units import loss_unit
from npllama.objectives import IGNORE_INDEX, masked_held_out, mlm_loss, mlm_objective
from npllama.parallel import mean_over_targets
from npllama.perplexity import masked_lm_score
from npllama.tokenizer import Tokenizer

TEXT = "\n\n".join(f"Tom has {i} red balls. He gives one to Sue, and she smiles at him." for i in range(12))


@pytest.fixture(scope="module")
def models(small_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_mlm")
    tokenizer_bytes = (small_model_dir / "tokenizer.model").read_bytes()
    mlm = Llama.from_pretrained(small_model_dir, dtype=np.float64)
    mlm.objective = "mlm"
    mlm.save_pretrained(folder / "mlm", extra_files={"tokenizer.model": tokenizer_bytes})
    (folder / "held_out.txt").write_text(TEXT)
    return folder, mlm, Tokenizer.load(small_model_dir / "tokenizer.model")


def test_the_score_is_trainings_validation_loss_and_the_share_filled_in_right(models):
    _, mlm, tokenizer = models
    result = masked_lm_score(mlm, tokenizer, TEXT, context=16, batch_size=3, seed=5)
    ids = np.asarray(tokenizer.encode(TEXT, bos=True), dtype=np.int64)
    windows = evaluation_batches(ids, 3, 16)
    masked = masked_held_out(windows, tokenizer, 5)
    # the masks `npllama train --objective mlm` scores its held-out windows with
    for (a_in, a_t), (b_in, b_t) in zip(masked, mlm_objective(mlm, tokenizer, None, windows, seed=5)[1]):
        np.testing.assert_array_equal(a_in, b_in)
        np.testing.assert_array_equal(a_t, b_t)
    targets = [t for _, t in masked]
    expected = mean_over_targets([mlm_loss(mlm, i, t) for i, t in masked], targets)
    assert result.mean_loss == pytest.approx(expected, rel=1e-12)
    right = sum(int((mlm.forward(i, causal=False).argmax(-1) == t)[t != IGNORE_INDEX].sum()) for i, t in masked)
    assert result.masked_tokens == sum(int((t != IGNORE_INDEX).sum()) for t in targets) > 0
    assert result.accuracy == right / result.masked_tokens
    assert result.windows == sum(len(i) for i, _ in masked)
    assert masked_lm_score(mlm, tokenizer, TEXT, context=16, batch_size=3, seed=6).mean_loss != result.mean_loss


def test_a_causal_model_is_not_scored_as_a_masked_lm(small_model_dir):
    causal = Llama.from_pretrained(small_model_dir)
    tokenizer = Tokenizer.load(small_model_dir / "tokenizer.model")
    with pytest.raises(ValueError, match="masked-LM model.*perplexity"):
        masked_lm_score(causal, tokenizer, TEXT)


def test_the_command_prints_the_score_or_json(models, capsys):
    folder, mlm, tokenizer = models
    argv = ["eval", "mlm", "--model", str(folder / "mlm"), "--data", str(folder / "held_out.txt"), "--context",
            "16", "--batch-size", "3", "--seed", "5", "--no-progress", "--dtype", "float64"]
    assert main(argv) == 0
    line = capsys.readouterr().out
    result = masked_lm_score(mlm, tokenizer, TEXT, context=16, batch_size=3, seed=5)
    assert f"{result.masked_tokens:,} masked tokens (--seed 5), mean loss {result.mean_loss:.4f} nats per masked " \
           f"token, accuracy {result.accuracy:.3f}" in line, line
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["masked_tokens"] == result.masked_tokens and record["mean_loss"] == pytest.approx(result.mean_loss)
    assert record["accuracy"] == result.accuracy and record["seed"] == 5 and record["context"] == 16
    # the loss's unit is in the record, in the words the line uses (npllama.loss_units)
    assert record["units"] == {"mean_loss": loss_unit("mlm")} and f"{loss_unit('mlm')}, accuracy" in line, record


def test_perplexity_of_a_masked_lm_model_points_to_eval_mlm_and_back(models, small_model_dir, capsys):
    folder, _, _ = models
    data = str(folder / "held_out.txt")
    assert main(["eval", "perplexity", "--model", str(folder / "mlm"), "--data", data]) == 2
    err = capsys.readouterr().err
    assert f"npllama eval mlm --model {folder / 'mlm'} --data {data}" in err, err
    assert main(["eval", "mlm", "--model", str(small_model_dir), "--data", data, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "causal model" in err and f"npllama eval perplexity --model {small_model_dir}" in err, err


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """(run folder, its held-out text, the validation loss it logged): an `npllama train --objective mlm`
    run that scored all of its held-out text (--eval-batches 0), with a checkpoint of its last step."""
    from npllama.corpus import make_default_corpus
    from npllama.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("mlm_run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("NPLLAMA_RUNS", str(folder / "runs"))
        (folder / "train.txt").write_text("\n\n".join(make_default_corpus(200, seed=0)))
        (folder / "held_out.txt").write_text("\n\n".join(make_default_corpus(6, seed=9)))
        train(TrainConfig(out=str(folder / "run"), data=str(folder / "train.txt"),
                          val_data=str(folder / "held_out.txt"), objective="mlm", preset="stories260k", vocab_size=360,
                          batch_size=3, seq_len=24, steps=1, eval_every=0, eval_batches=0, checkpoint_every=1,
                          samples=0, progress=False, seed=4),
              echo=lambda *a: None)
    logged = [json.loads(line) for line in (folder / "run" / "log.jsonl").read_text().splitlines()]
    val_loss = [r["val_loss"] for r in logged if "val_loss" in r][-1]
    return folder / "run", folder / "held_out.txt", val_loss


def eval_mlm_json(capsys, *argv) -> dict:
    assert main(["eval", "mlm", *argv, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_on_a_runs_held_out_text_it_gives_the_validation_loss_the_run_logged(mlm_run, capsys):
    run, held_out, val_loss = mlm_run
    # the run's --seq-len, --batch-size and --seed given; its --doc-separator is read from the run
    record = eval_mlm_json(capsys, "--model", str(run), "--data", str(held_out), "--context", "24", "--batch-size",
                           "3", "--seed", "4")
    assert record["mean_loss"] == pytest.approx(val_loss, rel=1e-5) and record["documents"] == 6, (record, val_loss)


@pytest.mark.parametrize("as_given", ["run", "run/model", "run/checkpoint", "run/checkpoint/model"])
def test_with_no_flags_a_runs_model_is_scored_with_the_runs_settings_its_logged_validation_loss(
        mlm_run, capsys, as_given):
    """As `eval sop` takes its settings from the run: --context (the run's --seq-len), --batch-size and
    --seed default to the run's, so a run's model on its held-out text gives the loss it logged."""
    run, held_out, val_loss = mlm_run
    model = run.parent / as_given
    record = eval_mlm_json(capsys, "--model", str(model), "--data", str(held_out))
    assert record["mean_loss"] == pytest.approx(val_loss, rel=1e-5), (record, val_loss)
    assert (record["context"], record["batch_size"], record["seed"]) == (24, 3, 4)
    assert record["settings_of_the_run"] == ["context", "batch_size", "seed", "doc_separator"]
    assert main(["eval", "mlm", "--model", str(model), "--data", str(held_out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "(--seed 4)" in line and "--context, --batch-size and --seed as the run was trained" in line, line
    # a flag given is taken over the run's, the others still the run's
    record = eval_mlm_json(capsys, "--model", str(model), "--data", str(held_out), "--seed", "5")
    assert record["seed"] == 5 and record["settings_of_the_run"] == ["context", "batch_size", "doc_separator"]
    assert (record["context"], record["batch_size"]) == (24, 3) and record["mean_loss"] != pytest.approx(val_loss)


def test_a_folder_no_run_saved_is_scored_with_the_fixed_defaults(models, capsys):
    folder, mlm, _ = models
    record = eval_mlm_json(capsys, "--model", str(folder / "mlm"), "--data", str(folder / "held_out.txt"))
    assert record["settings_of_the_run"] == [] and record["documents"] is None
    assert (record["context"], record["batch_size"], record["seed"]) == (mlm.config.max_position_embeddings, 8, 0)


@pytest.fixture(scope="module", params=["jsonl", "folder"])
def mlm_run_with_held_out(request, tmp_path_factory):
    """(run folder, its --val-data, the validation loss it logged): an `npllama train --objective mlm`
    run (--doc-separator line) whose --val-data, a .jsonl file or a folder, was all scored."""
    import warnings

    from npllama.corpus import make_default_corpus
    from npllama.train import TrainConfig, train

    from .test_perplexity_documents import write_held_out

    folder = tmp_path_factory.mktemp(f"mlm_run_{request.param}")
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n"
                                                for text in make_default_corpus(200, seed=0)))
    held_out = write_held_out(folder, request.param)
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the note the folder holds is left out
        monkeypatch.setenv("NPLLAMA_RUNS", str(folder / "runs"))
        train(TrainConfig(out=str(folder / "run"), data=str(folder / "train.jsonl"), val_data=str(held_out),
                          doc_separator="line", objective="mlm", preset="stories260k", vocab_size=360,
                          batch_size=3, seq_len=24, steps=20, eval_every=0, eval_batches=0, samples=0,
                          progress=False, seed=4),
              echo=lambda *a: None)
    logged = [json.loads(line) for line in (folder / "run" / "log.jsonl").read_text().splitlines()]
    return folder / "run", held_out, [r["val_loss"] for r in logged if "val_loss" in r][-1]


def test_a_runs_jsonl_or_folder_held_out_text_gives_the_validation_loss_it_logged(mlm_run_with_held_out, capsys):
    """A .jsonl file was scored as its JSON text, a folder refused."""
    import warnings

    run, held_out, val_loss = mlm_run_with_held_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = eval_mlm_json(capsys, "--model", str(run), "--data", str(held_out))
    assert record["mean_loss"] == pytest.approx(val_loss, rel=1e-5), (record, val_loss)
    assert record["documents"] == (3 if held_out.suffix == ".jsonl" else 7)


def test_read_held_out_scores_a_path_for_python_as_training_reads_it(mlm_run_with_held_out):
    import warnings

    from npllama.perplexity import read_held_out
    from npllama.runs import load_model_and_tokenizer

    run, held_out, val_loss = mlm_run_with_held_out
    model, tokenizer, _ = load_model_and_tokenizer(run, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        documents = read_held_out(held_out, doc_separator="line")
    result = masked_lm_score(model, tokenizer, documents, context=24, batch_size=3, seed=4)
    for seed in (1.5, True):
        with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
            masked_lm_score(model, tokenizer, documents, context=24, batch_size=3, seed=seed)
    assert result.mean_loss == pytest.approx(val_loss, rel=1e-5) and result.documents == len(documents)


def test_a_causal_run_is_refused_by_the_name_it_was_given(small_model_dir, tmp_path, capsys):
    """`--model RUN` of a causal run was refused as 'RUN/model', a folder the user never named."""
    import shutil

    run = tmp_path / "causal_run"
    shutil.copytree(small_model_dir, run / "model")
    (tmp_path / "held_out.txt").write_text(TEXT)
    assert main(["eval", "mlm", "--model", str(run), "--data", str(tmp_path / "held_out.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--model {str(run)!r} is a causal model" in err, err
    assert f"`npllama eval perplexity --model {run} --data {tmp_path / 'held_out.txt'}`" in err, err


def test_a_runs_damaged_settings_are_asked_for_only_as_the_flags_that_matter(mlm_run, tmp_path, capsys):
    """Of a .jsonl file (a document a record whatever --doc-separator says) the run's settings give
    only --context, --batch-size and --seed: given, a damaged train_config.json is not read; left out,
    the error names them, not a --doc-separator that would change nothing."""
    import shutil

    from npllama.corpus import make_default_corpus

    run, _, _ = mlm_run
    damaged = tmp_path / "damaged_run"
    shutil.copytree(run / "model", damaged / "model")
    (damaged / "train_config.json").write_text('{"seq_len": 2')   # cut short: not JSON
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in make_default_corpus(4, seed=9)))
    flags = ["--context", "24", "--batch-size", "3", "--seed", "4"]
    expected = eval_mlm_json(capsys, "--model", str(run), "--data", str(data), *flags)
    assert eval_mlm_json(capsys, "--model", str(damaged), "--data", str(data), *flags)["mean_loss"] == \
           expected["mean_loss"]
    assert main(["eval", "mlm", "--model", str(damaged), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train_config.json" in err and "--context, --batch-size and --seed" in err, err
    assert "--doc-separator" not in err, err


def test_a_text_with_no_token_masked_names_the_seed_as_python_and_the_command_take_it(models, tmp_path, capsys):
    """'give a longer text, or another seed' named no argument: for Python it names seed=, for the command
    its --seed flag, and a seed taken from the run is said to be the run's."""
    import shutil

    folder, mlm, tokenizer = models
    short = "Tom ran."
    unmasked = []
    for seed in range(40):   # the draws from a seed mask none of a few tokens now and then
        try:
            masked_lm_score(mlm, tokenizer, short, seed=seed)
        except ValueError as error:
            unmasked.append((seed, str(error)))
    assert unmasked, "no seed of 40 left the short text unmasked: shorten it"
    seed, message = unmasked[0]
    assert "no token of the text was masked" in message and f"seed={seed}" in message, message
    assert "--seed" not in message, message
    data = tmp_path / "short.txt"
    data.write_text(short)
    argv = ["eval", "mlm", "--data", str(data), "--no-progress", "--dtype", "float64"]
    assert main([*argv, "--model", str(folder / "mlm"), "--seed", str(seed)]) == 2
    err = capsys.readouterr().err
    assert f"--seed {seed})" in err and "or another --seed" in err and "seed=" not in err, err
    assert "the run's" not in err, err
    run = tmp_path / "run"   # the same seed, not given but read from the run that saved the model
    shutil.copytree(folder / "mlm", run / "model")
    (run / "train_config.json").write_text(json.dumps({"objective": "mlm", "seq_len": mlm.config.max_position_embeddings,
                                                       "batch_size": 8, "seed": seed}))
    assert main([*argv, "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--seed {seed}, the run's)" in err and "or another --seed" in err, err
