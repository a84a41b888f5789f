"""Loading an adapter folder whose adapter_config.json npllama did not write: what PEFT would run
loads and computes what PEFT computes; a setting that cannot load is refused naming the file and
the field, not as if the caller had passed a bad argument."""
import inspect
import json
import re

import numpy as np
import pytest

from npllama import Llama
from npllama.io.errors import CheckpointError
from npllama.io.safetensors import read_safetensors, write_safetensors
from npllama.lora import attach_lora, load_adapter, peft_name

from tests.test_lora import adapted_model, base_model, tiny_config


def saved_adapter(tmp_path, **config_changes):
    """An npllama adapter folder (q_proj, r=2) with adapter_config.json's fields changed."""
    _, adapters = adapted_model(("q_proj",))
    folder = adapters.save_adapter(tmp_path / "a")
    config_path = folder / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **config_changes}))
    return folder


@pytest.mark.parametrize("field, value, problem", [
    ("target_modules", ["q_proj", "embed_tokens"],
     r"\['q_proj', 'embed_tokens'\] selects 'model.embed_tokens': the token embedding, which PEFT adapts and "
     r"npllama cannot: npllama adapts only the projections q_proj, k_proj, .*merge_and_unload"),
    ("target_modules", ["lm_head"], r"\['lm_head'\] selects 'lm_head': the output head"),
    ("target_modules", ["self_attn"], "selects 'model.layers.0.self_attn': no Linear layer, which PEFT cannot"),
    ("target_modules", [], "empty"), ("target_modules", "q_proj", "selects no module .* such as "
                                                                  r"'model.layers.0.self_attn.q_proj'"),
    ("target_modules", "(q_proj", "no regular expression"),
    ("layers_to_transform", "0", "layer index"),
    ("layers_to_transform", [True], "layer index"),
    ("layers_pattern", "layers", "without layers_to_transform: PEFT refuses it"),
    ("rank_pattern", {"q_proj": 0}, "positive int"), ("rank_pattern", ["q_proj"], "must be an object"),
    ("alpha_pattern", {"q_proj": -2}, "positive finite number"), ("alpha_pattern", {"[": 2}, "no regular expression"),
    ("fan_in_fan_out", "yes", "true or false"),
    ("r", 0, "positive int"), ("r", "8", "positive int"), ("r", 2.5, "positive int"),
    ("lora_alpha", -1, "positive finite number"), ("lora_alpha", 10**40, "positive finite number"),
    ("lora_dropout", 1.0, r"in \[0, 1\)"), ("lora_dropout", "0.1", r"in \[0, 1\)"),
    ("use_rslora", "false", "True or False"),
    # PEFT's other tasks wrap other models: LlamaModel's keys lack "model.", a token classifier's
    # score head labels every token, not the text
    ("task_type", "FEATURE_EXTRACTION", "CAUSAL_LM.*SEQ_CLS"), ("task_type", "TOKEN_CLS", "CAUSAL_LM.*SEQ_CLS"),
    ("task_type", "QUESTION_ANS", "CAUSAL_LM.*SEQ_CLS"), ("task_type", 3, "CAUSAL_LM.*SEQ_CLS"),
])
def test_a_bad_setting_in_adapter_config_names_the_file_and_the_field(tmp_path, field, value, problem):
    folder = saved_adapter(tmp_path, **{field: value})
    model = base_model()
    with pytest.raises(CheckpointError, match=rf"adapter_config.json: field '{field}': .*{problem}") as error:
        load_adapter(model, folder)
    assert error.value.field == field
    assert model.lora is None


@pytest.mark.parametrize("limit", [dict(exclude_modules=["q_proj"]), dict(layers_to_transform=[5]),
                                   dict(layers_to_transform=1, layers_pattern="h")])
def test_a_selection_of_no_module_is_refused_naming_what_limited_it(tmp_path, limit):
    """PEFT refuses an adapter whose target_modules, as its other fields limit them, select nothing."""
    folder = saved_adapter(tmp_path, **limit)
    said = "".join(rf" with {field} {re.escape(repr(value))}" for field, value in limit.items())
    with pytest.raises(CheckpointError, match=rf"field 'target_modules': \['q_proj'\]{said} selects no module of "
                                              rf"this base model, and PEFT refuses such an adapter too"):
        load_adapter(base_model(), folder)


def test_an_adapter_ranked_above_a_projections_smaller_dimension_loads_and_computes_its_update(tmp_path):
    """PEFT makes and runs such adapters (r=64 on a small model's 32-wide k_proj, say): B A is then
    of rank min(out, in) < r, but y = x (W + scaling B A)^T all the same.  attach_lora still
    refuses to create one (a choice of r that buys nothing), loading one is no choice."""
    r, alpha = 6, 5.0          # k_proj is (4, 8): 2 kv heads of head_dim 2
    folder = saved_adapter(tmp_path, r=r, lora_alpha=alpha, target_modules=["k_proj"])
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(tiny_config().num_hidden_layers):
        module = f"model.layers.{layer}.self_attn.k_proj"
        tensors[peft_name(module, "lora_A")] = rng.standard_normal((r, 8))
        tensors[peft_name(module, "lora_B")] = rng.standard_normal((4, r))
    write_safetensors(folder / "adapter_model.safetensors", tensors)

    adapted = base_model()
    load_adapter(adapted, folder)
    merged = base_model()
    for name, A in tensors.items():
        if ".lora_A." in name:
            module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            merged.params[module + ".weight"] += alpha / r * tensors[name.replace("lora_A", "lora_B")] @ A
    tokens = np.random.default_rng(1).integers(0, 11, (2, 5))
    np.testing.assert_allclose(adapted.forward(tokens), merged.forward(tokens), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"r=6 is larger than k_proj's smaller dimension"):
        attach_lora(base_model(), r=r, target_modules=["k_proj"])


def test_a_loaded_adapters_dtype_copy_keeps_a_rank_above_a_projections_dimension(tmp_path):
    """npllama.debug runs a model in another dtype by copying it with its adapters."""
    from npllama.debug import _as_dtype

    folder = saved_adapter(tmp_path, r=6, target_modules=["k_proj"])
    rng = np.random.default_rng(2)
    write_safetensors(folder / "adapter_model.safetensors", {
        peft_name(f"model.layers.{layer}.self_attn.k_proj", which): rng.standard_normal(shape)
        for layer in range(2) for which, shape in (("lora_A", (6, 8)), ("lora_B", (4, 6)))})
    model = base_model()
    load_adapter(model, folder)
    copy = _as_dtype(model, np.float32)
    tokens = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(copy.forward(tokens), model.forward(tokens), rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_named():
    model = Llama(tiny_config(), seed=0)
    with pytest.raises(TypeError, match=r"load_adapter\(\)'s path must be a LoRA adapter folder .*got None"):
        load_adapter(model, None)
    with pytest.raises(TypeError, match="use_rslora must be True or False, got 'no'"):
        attach_lora(model, r=2, use_rslora="no")    # bool("no") is True: rsLoRA's scaling, silently
    with pytest.raises(ValueError, match="target_modules must be a non-empty list .* got None"):
        attach_lora(model, r=2, target_modules=None)
    assert model.lora is None


@pytest.mark.parametrize("other_base, problem", [
    (dict(hidden_size=16), r"shape \(2, 8\) does not match the base model, which needs \(2, 16\)"),
    (dict(num_hidden_layers=3), "missing"),
    (dict(num_hidden_layers=1), "unexpected"),   # a shallower base: layer 1's adapters have nowhere to go
])
def test_an_adapter_on_another_shape_of_base_says_which_base_it_was_fine_tuned_on(tmp_path, other_base, problem):
    """The usual cause is the wrong --model: say which one the adapter records, not only a tensor's shape."""
    base, adapters = adapted_model(("q_proj",))
    base.save_pretrained(tmp_path / "base")
    folder = adapters.save_adapter(tmp_path / "a", base_model_name_or_path=str(tmp_path / "base"))
    with pytest.raises(CheckpointError, match=rf"{problem}.*fine-tuned on '{re.escape(str(tmp_path / 'base'))}' "
                                              rf"\(its adapter_config.json's base_model_name_or_path\)"):
        load_adapter(Llama(tiny_config(**other_base), seed=0, dtype=np.float64), folder)
    unnamed = adapters.save_adapter(tmp_path / "unnamed")
    with pytest.raises(CheckpointError, match=rf"{problem}") as error:
        load_adapter(Llama(tiny_config(**other_base), seed=0, dtype=np.float64), unnamed)
    assert "fine-tuned on" not in str(error.value)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_an_adapter_that_trains_biases_of_a_llama_without_any_loads_as_plain_lora(tmp_path, bias):
    """PEFT's bias="all" or "lora_only" trains the biases of the adapted (or all) layers; a LLaMA's
    linear layers have none, so PEFT saves no bias tensor and computes plain LoRA.  A bias tensor in
    the file would still be refused, as every tensor npllama does not run is."""
    plain = saved_adapter(tmp_path / "plain")
    with_bias = saved_adapter(tmp_path / "bias", bias=bias)
    tokens = np.array([[1, 2, 3, 4, 5]])
    expected = base_model()
    load_adapter(expected, plain)
    model = base_model()
    load_adapter(model, with_bias)
    np.testing.assert_array_equal(model.forward(tokens), expected.forward(tokens))

    tensors = {**read_safetensors(with_bias / "adapter_model.safetensors"),
               "base_model.model.model.layers.0.self_attn.q_proj.bias": np.ones(8)}
    write_safetensors(with_bias / "adapter_model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"q_proj.bias': unexpected"):
        load_adapter(base_model(), with_bias)


def test_an_adapter_naming_modules_by_path_on_a_base_of_another_depth(tmp_path):
    """PEFT writes target_modules="all-linear" as every module's path.  On a shallower base the paths
    of the missing layers name tensors with nowhere to go, and the base the adapter records is what
    the user needs to hear; on a deeper one PEFT adapts the layers the paths name, and so does npllama."""
    base, adapters = adapted_model(("q_proj",))
    folder = adapters.save_adapter(tmp_path / "a", base_model_name_or_path=str(tmp_path / "base"))
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    config_path.write_text(json.dumps(config))
    load_adapter(base_model(), folder)   # (the paths are taken on the base of the right depth)
    with pytest.raises(CheckpointError, match=rf"layers.1.self_attn.q_proj.lora_A.weight': unexpected.*fine-tuned "
                                              rf"on '{re.escape(str(tmp_path / 'base'))}'"):
        load_adapter(Llama(tiny_config(num_hidden_layers=1), seed=0, dtype=np.float64), folder)
    deeper = Llama(tiny_config(num_hidden_layers=3), seed=0, dtype=np.float64)
    assert load_adapter(deeper, folder).modules() == config["target_modules"]


@pytest.mark.parametrize("field", ["use_rslora", "use_dora", "fan_in_fan_out"])
def test_an_adapter_config_with_a_switch_null_loads_as_plain_lora_as_peft_runs_it(tmp_path, field):
    """PEFT reads these with `if use_rslora:` etc.: null (a config written by another tool, or a
    LoraConfig(use_rslora=None)) computes plain LoRA, alpha / r, as a missing field does; only
    other values are refused."""
    expected = base_model()
    load_adapter(expected, saved_adapter(tmp_path / "plain"))
    model = base_model()
    adapters = load_adapter(model, saved_adapter(tmp_path / "null", **{field: None}))
    assert adapters.use_rslora is False and adapters.scaling == expected.lora.scaling
    tokens = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(model.forward(tokens), expected.forward(tokens))


@pytest.mark.parametrize("r", [3, 10**12])
def test_an_r_in_adapter_config_that_its_tensors_do_not_have_is_refused_naming_the_field_before_allocating(
        tmp_path, r):
    """r is no longer bounded by the base's dimensions (a PEFT adapter may exceed them): an r the
    file's tensors do not have (a typo, a config from another adapter) must be refused from the
    tensors' shapes, not by allocating r rows for every adapted projection first (a MemoryError, or
    gigabytes, for r=10**12 or 10**7) nor as if the base were the wrong one."""
    folder = saved_adapter(tmp_path, r=r)   # the tensors are of rank 2
    model = base_model()
    with pytest.raises(CheckpointError, match=rf"adapter_config.json: field 'r': is {r}, but .*lora_A.weight' "
                                              r"has rank 2") as error:
        load_adapter(model, folder)
    assert "fine-tuned on" not in str(error.value)
    assert model.lora is None


@pytest.mark.parametrize("task_type", [None, "absent"])
def test_an_adapter_saved_without_a_task_type_loads(tmp_path, task_type):
    """PEFT writes "task_type": null for get_peft_model(model, LoraConfig(...)) without one (a plain
    PeftModel around LlamaForCausalLM, the same tensor names); an old or hand-written config may
    leave the field out."""
    folder = saved_adapter(tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if task_type == "absent":
        del config["task_type"]
    else:
        config["task_type"] = task_type
    config_path.write_text(json.dumps(config))
    assert load_adapter(base_model(), folder, task="CAUSAL_LM").task_type is None


def test_the_fan_in_fan_out_warning_points_at_the_line_that_loads_the_adapter(tmp_path):
    """The warning is the caller's to act on: it names the caller's file and line, not a line above it."""
    folder = saved_adapter(tmp_path, fan_in_fan_out=True)
    model = base_model()
    with pytest.warns(UserWarning, match="fan_in_fan_out is true") as caught:
        line = inspect.currentframe().f_lineno + 1
        load_adapter(model, folder)
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_all_linear_in_any_case_is_peft_s_shorthand(tmp_path):
    """PEFT compares target_modules="all-linear" case-blind: "All-Linear" adapts every projection too."""
    model, adapters = adapted_model()
    folder = adapters.save_adapter(tmp_path / "a")
    config_path = folder / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "target_modules": "All-Linear"}))
    loaded = load_adapter(base_model(), folder)
    assert loaded.modules() == adapters.modules() and len(loaded.modules()) == 14
    tokens = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(loaded.model.forward(tokens), model.forward(tokens))
