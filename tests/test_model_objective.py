"""A masked-LM model (`train --objective mlm`) says so in its config.json, so that nothing that
needs a causal LM (generation, instruction tuning) takes it for one."""
import json
import re

import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.cli import main
from npllama.io import save_hf_folder
from npllama.runs import latest_run, load_model_and_tokenizer
from npllama.train import TrainConfig, train

def model_objective(path=None) -> str:
    """The objective of the model `--model path` names (None: the latest run), as it loads."""
    return load_model_and_tokenizer(path)[0].objective


FAST = dict(preset="stories260k", vocab_size=360, batch_size=4, seq_len=32, corpus_stories=300, eval_every=0,
            checkpoint_every=0, eval_batches=1, samples=0, progress=False, steps=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("objective")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPLLAMA_RUNS", str(base / "runs"))
        train(TrainConfig(out=str(base / "causal"), **FAST), echo=lambda *a: None)
        train(TrainConfig(out=str(base / "mlm"), objective="mlm", stop_after=1, **{**FAST, "steps": 2}),
              echo=lambda *a: None)   # stopped: only its checkpoint/ holds a model yet
        train(TrainConfig(out=str(base / "mlm"), objective="mlm", **{**FAST, "steps": 2}), resume=True,
              echo=lambda *a: None)
        yield base, mp


def test_the_saved_config_records_a_masked_lm_and_loads_as_before(runs):
    base, _ = runs
    for folder in ("model", "checkpoint/model"):
        config = json.loads((base / "mlm" / folder / "config.json").read_text())
        assert config["npllama_objective"] == "mlm", folder
    assert "npllama_objective" not in json.loads((base / "causal" / "model" / "config.json").read_text())
    assert model_objective(base / "mlm") == model_objective(base / "mlm" / "model") == "mlm"
    assert model_objective(base / "mlm" / "checkpoint") == "mlm"
    assert model_objective(base / "causal") == "causal"
    Llama.from_pretrained(base / "mlm" / "model")   # the extra field is not LLaMA's: ignored on load


def test_the_latest_run_is_the_masked_lm_and_says_so(runs):
    base, mp = runs
    # LATEST points at the run written last, masked-LM or not; what falls back to it checks
    # model_objective(None) (generate refuses a masked-LM model, finetune sft too)
    assert latest_run() == (base / "mlm").resolve()
    assert model_objective(None) == "mlm"


def test_finetune_sft_refuses_a_masked_lm_base_in_one_line(runs, capsys):
    base, mp = runs
    for argv in (["--base", str(base / "mlm")], []):   # given, or the latest run
        assert main(["finetune", "sft", *argv, "--steps", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--base" in err and "masked-LM" in err, err
        assert "model:" not in capsys.readouterr().out   # refused before the model was loaded


def test_transformers_loads_a_config_with_the_objective_field(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float32)
    save_hf_folder(tmp_path / "m", config, model.params, extra_config={"npllama_objective": "mlm"})
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config.npllama_objective == "mlm"
    with pytest.raises(ValueError, match="vocab_size"):
        save_hf_folder(tmp_path / "n", config, model.params, extra_config={"vocab_size": 3})


# ----- the Python API: a loaded model carries its objective -----------------------------------------
def test_a_loaded_model_carries_its_objective_through_save_pretrained(runs, tmp_path):
    base, _ = runs
    mlm = Llama.from_pretrained(base / "mlm" / "model")
    assert mlm.objective == "mlm" and "masked-LM" in repr(mlm)
    assert Llama.from_pretrained(base / "causal" / "model").objective == "causal"
    mlm.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["npllama_objective"] == "mlm"
    assert Llama.from_pretrained(tmp_path / "again").objective == "mlm"
    Llama(mlm.config).save_pretrained(tmp_path / "causal")   # the default: no field written
    assert "npllama_objective" not in json.loads((tmp_path / "causal" / "config.json").read_text())
    assert Llama.from_pretrained(tmp_path / "causal").objective == "causal"
    with pytest.raises(ValueError, match="objective must be one of"):
        Llama(mlm.config, objective="bert")


def test_a_bad_objective_in_config_json_names_the_file_and_field(runs, tmp_path):
    from npllama.io.errors import CheckpointError

    base, _ = runs
    Llama.from_pretrained(base / "mlm" / "model").save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "npllama_objective": "bert"}))
    with pytest.raises(CheckpointError, match="must be one of \"causal\", \"mlm\", got .bert.") as error:
        Llama.from_pretrained(tmp_path / "m")
    assert error.value.field == "npllama_objective"


def test_next_token_functions_refuse_a_masked_lm_model_with_one_message(runs):
    from npllama.finetune import choice_logprobs, evaluate_choice
    from npllama.generate import generate, generate_text
    from npllama.perplexity import perplexity
    from npllama.runs import load_model_and_tokenizer

    base, _ = runs
    model, tokenizer, _ = load_model_and_tokenizer(base / "mlm")
    assert model.objective == "mlm"
    item = {"question": "Who?", "choices": ["Tom", "Lily"], "answer": 0}
    calls = {"generate": lambda: generate(model, [1, 5], 3, temperature=0),
             "generate_text": lambda: generate_text(model, tokenizer, "Once", 3),
             "Llama.generate": lambda: model.generate([1, 5], 3),
             "perplexity": lambda: perplexity(model, tokenizer, "Once upon a time"),
             "choice_logprobs": lambda: choice_logprobs(model, tokenizer, "Who?", ["Tom", "Lily"]),
             "evaluate_choice": lambda: evaluate_choice(model, tokenizer, [item], progress=False)}
    messages = set()
    for name, call in calls.items():
        with pytest.raises(ValueError, match="masked-LM model") as error:
            call()
        assert "--objective mlm" in str(error.value) and "finetune classify" in str(error.value), name
        messages.add(str(error.value).split(" predicts")[1])
    assert len(messages) == 1   # one check, one message (only the job's name differs)

    causal, tokenizer, _ = load_model_and_tokenizer(base / "causal")   # unchanged for a causal model
    assert len(generate(causal, [1, 5], 3, temperature=0)) == 5
    assert perplexity(causal, tokenizer, "Once upon a time").tokens > 0
    assert evaluate_choice(causal, tokenizer, [item], progress=False)["n"] == 1


def test_transformers_loads_a_saved_masked_lm_model(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    base, _ = runs
    Llama.from_pretrained(base / "mlm" / "model").save_pretrained(tmp_path / "m")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config.npllama_objective == "mlm"


def test_a_causal_run_initialised_from_a_masked_lm_model_trains_and_samples(runs, tmp_path):
    base, _ = runs
    settings = {**FAST, "samples": 1, "sample_tokens": 4}
    result = train(TrainConfig(out=str(tmp_path / "c"), init_from=str(base / "mlm" / "model"), **settings),
                   echo=lambda *a: None)   # the samples are generated: the run's model is causal
    assert len(result.samples) == 1
    assert Llama.from_pretrained(tmp_path / "c" / "model").objective == "causal"


def test_export_gguf_refuses_a_masked_lm_model_before_writing(runs, tmp_path, capsys):
    # llama.cpp would run it with the causal mask it was never trained with
    pytest.importorskip("gguf")
    base, _ = runs
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", "--model", str(base / "mlm"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "masked-LM" in err and "llama.cpp" in err, err
    assert not out.exists()


def test_export_gguf_in_python_refuses_a_masked_lm_model_too(runs, tmp_path):
    # only the command refused it: export_gguf itself wrote a file llama.cpp runs causally
    pytest.importorskip("gguf")
    from npllama.io.gguf_export import export_gguf

    base, _ = runs
    out = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match="model_dir .* is a masked-LM model.*llama.cpp"):
        export_gguf(base / "mlm" / "model", out)
    assert not out.exists()
    export_gguf(base / "causal" / "model", out)   # a causal model is exported as before
    assert out.stat().st_size > 0


@pytest.mark.parametrize("reads_causally", [True, False])
def test_whatever_runs_a_model_asks_the_one_rule_of_which_objective_attends_causally(tmp_path, monkeypatch,
                                                                                     reads_causally):
    """A new objective declared once (config's table) is run, drawn, classified and refused by that one
    rule: no caller decides "causal" from the objective's name on its own (`!= "mlm"`, `== "causal"`)."""
    from npllama import viz
    from npllama.finetune import SequenceClassifier
    from npllama.io import hf
    from npllama.runs import require_a_language_model, require_next_token_model

    from npllama import config as config_module

    # declared in the table alone: the model, a run's settings and a config.json take it as one
    monkeypatch.setitem(config_module.ATTENDS_CAUSALLY, "invented", reads_causally)
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8)
    model = Llama(config, seed=0, dtype=np.float64, objective="invented")
    assert model.attends_causally is reads_causally
    assert TrainConfig(objective="invented").objective == "invented"
    assert hf.objective_of({hf.OBJECTIVE_FIELD: "invented"}, tmp_path / "config.json") == "invented"
    tokens = np.array([[1, 2, 3, 4]])   # the model's own attention when none is asked for
    assert np.array_equal(model.forward(tokens), model.forward(tokens, causal=reads_causally))
    assert not np.allclose(model.forward(tokens), model.forward(tokens, causal=not reads_causally))

    later_keys = np.triu(np.ones((4, 4), dtype=bool), 1)
    assert np.array_equal(viz.masked_cells(model, 4), later_keys if reads_causally else np.zeros((4, 4), bool))
    probs = viz.attention_probs(model, [1, 2, 3, 4], layer=0, head=0)
    assert bool(np.all(probs[later_keys] == 0)) is reads_causally
    assert SequenceClassifier(model, ["a", "b"]).causal is reads_causally

    model.save_pretrained(tmp_path / "model")   # its config.json records the objective
    for check in (lambda: require_next_token_model(model, "generate"),
                  lambda: require_a_language_model(tmp_path / "model", "--base", "instruction tuning")):
        if reads_causally:
            check()
        else:
            with pytest.raises(ValueError, match="needs a causal model|predicts next tokens"):
                check()


@pytest.mark.parametrize("wrong", ["prefix", "", ["mlm"], None])
def test_every_objective_check_names_the_objectives_it_knows_in_one_message(tmp_path, wrong):
    """The model, a run's settings and the rule itself refuse an unknown objective with one message
    (config.check_objective); a config.json's names its file and field, with the same objectives."""
    from npllama.config import attends_causally
    from npllama.io import hf
    from npllama.io.errors import CheckpointError

    assert attends_causally("causal") and not attends_causally("mlm")
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8)
    message = rf"^objective must be one of 'causal', 'mlm', got {re.escape(repr(wrong))}$"
    for refuse in (lambda: attends_causally(wrong), lambda: Llama(config, objective=wrong),
                   lambda: TrainConfig(objective=wrong)):
        with pytest.raises(ValueError, match=message):
            refuse()
    with pytest.raises(CheckpointError, match=r"must be one of \"causal\", \"mlm\"") as error:
        hf.objective_of({hf.OBJECTIVE_FIELD: wrong}, tmp_path / "config.json")
    assert error.value.field == hf.OBJECTIVE_FIELD


@pytest.mark.parametrize("reads_causally", [True, False])
def test_a_run_samples_text_and_keeps_the_pad_row_rule_as_the_one_rule_says(tmp_path, monkeypatch, capsys,
                                                                            reads_causally):
    """What a training run does because its model attends causally -- it writes sample text after
    training (--samples), and the pad-row rule (model.decoder_backward, the causal stack's) makes a
    pad id every document holds an error -- is asked of config's table, not of the objective's name."""
    from npllama import config as config_module, loss_units
    from npllama.model_shape import check_new_model

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setitem(config_module.ATTENDS_CAUSALLY, "invented", reads_causally)
    monkeypatch.setitem(loss_units.UNITS, "invented", "nats per token")   # what its loss is a mean of
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad_token_id": 1}))
    settings = TrainConfig(out=str(tmp_path / "padded"), model_config=str(path), objective="invented")
    if reads_causally:
        with pytest.raises(ValueError, match="pad_token_id 1 is <s>"):
            check_new_model(settings)
    else:
        check_new_model(settings)

    from npllama.corpus import write_default_corpus

    corpus = write_default_corpus(tmp_path / "stories.txt", n_stories=300)
    argv = ["train", "--objective", "invented", "--samples", "1", "--out", str(tmp_path / "run"), "--data",
            str(corpus), "--preset", "stories260k", "--vocab-size", "360", "--batch-size", "4", "--seq-len", "32",
            "--eval-every", "0", "--checkpoint-every", "0", "--eval-batches", "1", "--steps", "1", "--no-progress"]
    assert main(argv) == (0 if reads_causally else 2)
    out, err = capsys.readouterr()
    if reads_causally:
        assert "samples:\n  [1] " in out, out
    else:
        assert "--samples" in err and "would be ignored" in err and not (tmp_path / "run").exists()
    # a run made in Python with samples asked for: text from a next-token model only
    lines = []
    train(TrainConfig(out=str(tmp_path / "python"), objective="invented", **{**FAST, "samples": 1}),
          echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert ("samples:" in lines) is reads_causally, lines
