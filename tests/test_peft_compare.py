"""npllama's LoRA adapters against Hugging Face PEFT, both ways: same logits, same adapter gradients.

Optional: skipped unless torch, transformers and peft are installed.  Float64 throughout, with
transformers' float32 islands replaced as in test_hf_compare (npllama.debug.float64_faithful), so the
comparison is good to round-off.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from npllama import Llama, LlamaConfig, use_backend  # noqa: E402
from npllama.finetune import SequenceClassifier  # noqa: E402
from npllama.gradcheck import rel_error  # noqa: E402
from npllama.io.errors import CheckpointError  # noqa: E402
from npllama.lora import ALL_TARGETS, PARENT, attach_lora, load_adapter  # noqa: E402
from npllama.objectives import pad_batch  # noqa: E402

from npllama.debug import float64_faithful  # noqa: E402

VOCAB = 40


def base_folder(path, tied=False, kv_heads=2, seed=0, layers=2):
    """A small float64 Llama saved by npllama (weights away from init, so gradients are sizeable)."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32,
                         tie_word_embeddings=tied)
    model = Llama(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += 0.2 * rng.standard_normal(p.shape)
    model.save_pretrained(path)
    return path


def tokens_and_targets(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (2, 9)), rng.integers(0, VOCAB, (2, 9))


@pytest.mark.parametrize("tied, kv_heads, settings", [
    (False, 2, dict(r=4, lora_alpha=8, target_modules=ALL_TARGETS, lora_dropout=0.1)),
    (True, 1, dict(r=2, lora_alpha=5, target_modules=("v_proj", "down_proj"), use_rslora=True)),
])
def test_npllama_adapter_in_peft_gives_the_same_logits_and_gradients(tmp_path, tied, kv_heads, settings):
    base = base_folder(tmp_path / "base", tied, kv_heads)
    model = Llama.from_pretrained(base, dtype=np.float64)
    adapters = attach_lora(model, **settings)
    rng = np.random.default_rng(3)
    for p in adapters.params.values():
        p += 0.3 * rng.standard_normal(p.shape)   # B != 0: the adapters matter
    adapters.save_adapter(tmp_path / "adapter", base_model_name_or_path=str(base))
    tokens, targets = tokens_and_targets()
    with use_backend("numpy"):
        logits = model.forward(tokens)
        loss, grads = model.loss_and_grads(tokens, targets)

    hf = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float64, attn_implementation="eager")
    float64_faithful(hf, model.config)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter", is_trainable=True).eval()
    theirs = peft_model(torch.from_numpy(tokens)).logits
    torch_loss = torch.nn.functional.cross_entropy(theirs.reshape(-1, VOCAB), torch.from_numpy(targets).reshape(-1))
    torch_loss.backward()
    torch_grads = {n.replace(".default", ""): p.grad.numpy() for n, p in peft_model.named_parameters()
                   if p.requires_grad}
    assert rel_error(logits, theirs.detach().numpy()) < 1e-12
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    assert set(torch_grads) == set(grads)
    for name, g in grads.items():
        assert rel_error(g, torch_grads[name]) < 1e-10, name


def causal_lm(base):
    return transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float64, attn_implementation="eager")


def peft_adapter(hf, path, task_type="CAUSAL_LM", **lora):
    """An adapter made by PEFT on the transformers model `hf` and saved, every trainable tensor
    moved off its init (B != 0)."""
    torch.manual_seed(0)
    model = peft.get_peft_model(hf, peft.LoraConfig(task_type=task_type, **lora))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


def loaded_like_peft(theirs, base, adapter, seed, **load):
    """The adapters npllama loads from `adapter` onto `base` (float64), after checking that the
    model they make gives PEFT's logits (`theirs`, made float64-faithful) on a batch from `seed`."""
    float64_faithful(theirs.base_model.model, Llama.from_pretrained(base).config)
    tokens, _ = tokens_and_targets(seed)
    model = Llama.from_pretrained(base, dtype=np.float64)
    adapters = load_adapter(model, adapter, **load)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(tokens)).logits.numpy()
    assert rel_error(model.forward(tokens), expected) < 1e-12
    return adapters


def test_peft_adapter_in_npllama_gives_the_same_logits(tmp_path):
    base = base_folder(tmp_path / "base", tied=True, kv_heads=1)
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=3, lora_alpha=7, use_rslora=True,
                          target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"])
    loaded_like_peft(theirs, base, tmp_path / "adapter", 1)


def test_an_all_linear_peft_adapter_loads(tmp_path):
    """target_modules="all-linear" (PEFT's usual recipe) is saved as every module's full path."""
    base = base_folder(tmp_path / "base")
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, target_modules="all-linear")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert "model.layers.1.mlp.down_proj" in saved        # what the loader has to read
    assert loaded_like_peft(theirs, base, tmp_path / "adapter", 2).target_modules == ALL_TARGETS


EVERY_PATH = [f"model.layers.{i}.{PARENT[t]}.{t}" for i in range(3) for t in ALL_TARGETS]


@pytest.mark.parametrize("selection", [
    dict(target_modules=["self_attn.q_proj", "mlp.down_proj"]),                     # suffixes of several names
    dict(target_modules=["model.layers.2.self_attn.q_proj", "v_proj"]),             # a path and a name
    dict(target_modules=r".*\.(q|v)_proj"),                                         # a regular expression, whole
    dict(target_modules=r"model\.layers\.[02]\.mlp\..*_proj"),
    dict(target_modules=["q_proj", "up_proj"], layers_to_transform=[0, 2]),
    dict(target_modules=["q_proj", "up_proj"], layers_to_transform=1),
    # a whole path is taken in every layer it names, whatever layers_to_transform says
    dict(target_modules=["q_proj", "model.layers.0.mlp.up_proj"], layers_to_transform=[2], layers_pattern="layers"),
    dict(target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 1, r"layers\.1\.self_attn\.q_proj": 3},
         alpha_pattern={"down_proj": 5, "q_proj": 0.5}),
    dict(target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 1}, alpha_pattern={"q_proj": 4}, use_rslora=True),
    # patterns that both match a module: the first one listed gives its r and alpha (PEFT's get_pattern_key)
    dict(target_modules=["q_proj", "v_proj"], rank_pattern={r"layers\.1\.self_attn\.q_proj": 3, "q_proj": 1},
         alpha_pattern={r"model\.layers\.0\..*": 6, "v_proj": 0.5}),
    dict(target_modules=["q_proj", "v_proj"], exclude_modules=["model.layers.1.self_attn.q_proj", "layers.2.self_attn.v_proj"]),
    dict(target_modules=["q_proj", "v_proj"], exclude_modules=r".*\.0\..*"),
    # as a string, exclude_modules is matched against whole names: "v_proj" excludes no module
    dict(target_modules=["q_proj", "v_proj"], exclude_modules="v_proj"),
])
def test_a_peft_adapter_on_chosen_modules_gives_the_same_logits_and_saves_back_as_peft_reads_it(tmp_path, selection):
    """npllama picks the modules, ranks and alphas by PEFT's rules (target_modules as names,
    suffixes, paths or a regular expression; layers_to_transform, layers_pattern, exclude_modules,
    rank_pattern, alpha_pattern), and writes them back so that PEFT picks the same again."""
    base = base_folder(tmp_path / "base", layers=3)
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, lora_alpha=3, **selection)
    adapters = loaded_like_peft(theirs, base, tmp_path / "adapter", 5)
    peft_layers = {name: theirs.get_submodule("base_model.model." + name)
                   for name in theirs.base_model.targeted_module_names}
    assert adapters.module_settings == {name: (layer.r["default"], layer.lora_alpha["default"])
                                        for name, layer in peft_layers.items()}

    adapters.save_adapter(tmp_path / "again")
    again = peft.PeftModel.from_pretrained(causal_lm(base), tmp_path / "again").eval()
    float64_faithful(again.base_model.model, adapters.model.config)
    tokens, _ = tokens_and_targets(6)
    with torch.no_grad():
        expected = again(torch.from_numpy(tokens)).logits.numpy()
    assert sorted(again.base_model.targeted_module_names) == sorted(adapters.modules())
    assert rel_error(adapters.model.forward(tokens), expected) < 1e-12


def test_twenty_paths_or_more_are_condensed_to_suffixes_as_peft_does_before_layers_to_transform(tmp_path):
    """PEFT condenses a target_modules list of 20 or more to the suffixes that tell them apart
    (q_proj, ...), which layers_to_transform then limits: 21 paths with layers_to_transform=[1]
    adapt layer 1 only.  (PEFT saves the condensed list; a file with the paths is another tool's.)"""
    base = base_folder(tmp_path / "base", layers=3)
    peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, target_modules=EVERY_PATH, layers_to_transform=[1])
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "target_modules": EVERY_PATH}))
    theirs = peft.PeftModel.from_pretrained(causal_lm(base), tmp_path / "adapter").eval()
    adapters = loaded_like_peft(theirs, base, tmp_path / "adapter", 8)
    assert adapters.modules() == theirs.base_model.targeted_module_names == EVERY_PATH[7:14]


def test_twenty_entries_that_condense_to_no_fewer_stay_as_they_are_as_peft_keeps_them(tmp_path):
    """PEFT replaces a long target_modules list by its suffixes only when that makes it shorter: 20
    entries, each needing one suffix of its own, stay whole, so a path among them is still taken
    whatever layers_to_transform says (condensed, "0.self_attn.q_proj" would be limited to layer 1)."""
    base = base_folder(tmp_path / "base")
    targets = ["model.layers.0.self_attn.q_proj"] + [f"other_{i}" for i in range(19)]
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, target_modules=targets, layers_to_transform=[1])
    assert theirs.base_model.targeted_module_names == ["model.layers.0.self_attn.q_proj"]
    adapters = loaded_like_peft(theirs, base, tmp_path / "adapter", 9)
    assert adapters.modules() == ["model.layers.0.self_attn.q_proj"]


def test_a_peft_adapter_whose_config_says_fan_in_fan_out_loads_with_a_warning_as_peft_does(tmp_path):
    """fan_in_fan_out=true describes weights stored (in, out) (GPT-2's Conv1D): PEFT warns that a
    Linear target is not so and computes plain LoRA; npllama used to refuse the adapter."""
    base = base_folder(tmp_path / "base")
    peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, target_modules=["q_proj", "down_proj"])
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "fan_in_fan_out": True}))
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to True"):
        theirs = peft.PeftModel.from_pretrained(causal_lm(base), tmp_path / "adapter").eval()
    with pytest.warns(UserWarning, match=r"adapter_config.json: fan_in_fan_out is true, but the adapted modules of a "
                                         r"Llama are Linear layers .*loading with fan_in_fan_out false, as PEFT does"):
        adapters = loaded_like_peft(theirs, base, tmp_path / "adapter", 7)
    assert adapters.peft_config()["fan_in_fan_out"] is False


def test_a_peft_adapter_that_trains_the_lm_head_is_refused(tmp_path):
    """modules_to_save=["lm_head"]: PEFT swaps in its trained head; npllama used to drop it silently."""
    base = base_folder(tmp_path / "base")
    peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(CheckpointError, match=r"field 'modules_to_save': is \['lm_head'\]"):
        load_adapter(Llama.from_pretrained(base, dtype=np.float64), tmp_path / "adapter")


@pytest.mark.parametrize("targets", [["k_proj", "down_proj"], ["k_proj", "down_proj", "score"]])
def test_sequence_classification_adapter_both_ways(tmp_path, targets):
    """A SEQ_CLS adapter with the score head as modules_to_save: npllama's loads in PEFT's
    LlamaForSequenceClassification, PEFT's in npllama's SequenceClassifier, logits equal.  A head
    among target_modules too is no LoRA target: PEFT trains a module of modules_to_save whole."""
    base = base_folder(tmp_path / "base", tied=True)
    tokens, mask = pad_batch([[1, 5, 6, 7, 8, 9], [1, 10, 11]], pad_id=2)
    hf_mask = torch.from_numpy(mask.astype(np.int64))

    def hf_classifier():
        return transformers.LlamaForSequenceClassification.from_pretrained(
            base, num_labels=3, pad_token_id=2, dtype=torch.float64, attn_implementation="eager")

    model = Llama.from_pretrained(base, dtype=np.float64)
    adapters = attach_lora(model, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "up_proj"])
    rng = np.random.default_rng(4)
    for p in adapters.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    ours = SequenceClassifier(model, ["a", "b", "c"])
    ours.score_weight += rng.standard_normal(ours.score_weight.shape)
    ours.save(tmp_path / "ours", tokenizer=None)
    hf = hf_classifier()
    float64_faithful(hf, model.config)
    with torch.no_grad():
        expected = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()(
            torch.from_numpy(tokens), attention_mask=hf_mask).logits.numpy()
    assert rel_error(ours.logits(tokens, mask), expected) < 1e-12

    theirs = peft_adapter(hf_classifier(), tmp_path / "theirs", task_type="SEQ_CLS", r=2, lora_alpha=3,
                          target_modules=targets)
    assert json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier", "score"]
    float64_faithful(theirs.base_model.model, model.config)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(tokens), attention_mask=hf_mask).logits.numpy()
    plain = Llama.from_pretrained(base, dtype=np.float64)
    head = SequenceClassifier(plain, ["a", "b", "c"])
    head.score_weight = load_adapter(plain, tmp_path / "theirs").extra.pop("score.weight")
    assert rel_error(head.logits(tokens, mask), expected) < 1e-12
    if "score" in targets:   # a SEQ_CLS config without modules_to_save: PEFT still trains its head whole
        config_path = tmp_path / "theirs" / "adapter_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "modules_to_save": None}))
        again = peft.PeftModel.from_pretrained(hf_classifier(), tmp_path / "theirs").eval()
        assert sorted(again.base_model.targeted_module_names) == [f"model.layers.{i}.{m}" for i in range(2)
                                                                  for m in ("mlp.down_proj", "self_attn.k_proj")]
        plain = Llama.from_pretrained(base, dtype=np.float64)
        assert load_adapter(plain, tmp_path / "theirs").modules() == [f"model.layers.{i}.{m}" for i in range(2)
                                                                       for m in ("self_attn.k_proj", "mlp.down_proj")]


def test_a_peft_adapter_ranked_above_a_projections_dimension_gives_the_same_logits(tmp_path):
    """PEFT makes an r=6 adapter on a k_proj of 4 outputs (one kv head) without a word; npllama used
    to refuse loading it, telling the user to "choose r <= 4" -- a choice nobody loading it has."""
    base = base_folder(tmp_path / "base", kv_heads=1)
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=6, lora_alpha=5, target_modules=["k_proj", "q_proj"])
    assert loaded_like_peft(theirs, base, tmp_path / "adapter", 3).r == 6


def test_a_peft_adapter_with_bias_all_on_a_llama_gives_the_same_logits(tmp_path):
    """bias="all" trains every bias of the model: a LLaMA has none, so PEFT saves plain LoRA, which
    npllama refused ("supports only 'none'")."""
    base = base_folder(tmp_path / "base")
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", r=2, bias="all", target_modules=["v_proj", "up_proj"])
    loaded_like_peft(theirs, base, tmp_path / "adapter", 4)


def test_a_peft_adapter_saved_without_a_task_type_gives_the_same_logits(tmp_path):
    """get_peft_model(model, LoraConfig(...)) without task_type wraps the model in a plain PeftModel
    and writes "task_type": null; the tensors are named as for CAUSAL_LM."""
    base = base_folder(tmp_path / "base")
    theirs = peft_adapter(causal_lm(base), tmp_path / "adapter", task_type=None, r=2, target_modules=["q_proj"])
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] is None
    loaded_like_peft(theirs, base, tmp_path / "adapter", 4, task="CAUSAL_LM")
