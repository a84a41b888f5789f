"""A masked-LM model (`train --objective mlm`) says so in its config.json, so that nothing that
needs a causal LM (generation, instruction tuning) takes it for one."""
import json

import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.cli import main
from npllama.io import save_hf_folder
from npllama.runs import latest_run, model_objective
from npllama.train import TrainConfig, train

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
