"""Hugging Face folders (config.json + model.safetensors or shards) and atomic folder replacement."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npllama.io.hf as hf
from npllama import Llama, LlamaConfig
from npllama.io import (CheckpointError, atomic_directory, load_hf_folder, read_safetensors,
                        read_safetensors_header, save_hf_folder, write_safetensors)
from npllama.io.atomic import backup_paths


def small_config(**overrides):
    fields = dict(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=16)
    return LlamaConfig(**{**fields, **overrides})


def random_params(config, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in config.param_shapes().items()}


def write_folder(folder, config, tensors, config_dict=None):
    """A folder written by hand, so tests can put anything in it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict or config.to_dict()))
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    return folder


def write_sharded(folder, config, tensors, shards=2, weight_map_override=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        shard_name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        write_safetensors(folder / shard_name, part, metadata={"format": "pt"})
        weight_map.update({n: shard_name for n in part})
    weight_map.update(weight_map_override or {})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


# ----- round trips ------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(layers=st.integers(1, 2), kv_heads=st.sampled_from([1, 2]), tied=st.booleans(),
       save_dtype=st.sampled_from([np.float32, np.float64]), load_dtype=st.sampled_from([np.float32, np.float64]))
def test_save_then_load_round_trip(tmp_path_factory, layers, kv_heads, tied, save_dtype, load_dtype):
    config = small_config(num_hidden_layers=layers, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    params = random_params(config, save_dtype)
    folder = tmp_path_factory.mktemp("rt") / "model"
    save_hf_folder(folder, config, params)
    loaded_config, loaded = load_hf_folder(folder, dtype=load_dtype)
    assert loaded_config == config
    assert list(loaded) == list(config.param_shapes())
    for name, array in params.items():
        assert loaded[name].dtype == load_dtype
        np.testing.assert_array_equal(loaded[name], array.astype(load_dtype))


def test_loaded_arrays_are_contiguous_writeable_and_independent(tmp_path):
    config = small_config(tie_word_embeddings=True)
    params = random_params(config)
    folder = write_folder(tmp_path / "m", config,
                          {**params, "lm_head.weight": params["model.embed_tokens.weight"]})
    _, loaded = load_hf_folder(folder, dtype=np.float64)
    arrays = list(loaded.values())
    for array in arrays:
        assert array.flags.c_contiguous and array.flags.writeable and array.dtype == np.float64
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)


def test_saved_folder_has_what_transformers_expects(tmp_path):
    config = small_config(bos_token_id=1, eos_token_id=2)
    save_hf_folder(tmp_path / "m", config, random_params(config, np.float64))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["torch_dtype"] == "float64" and saved["model_type"] == "llama"
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["hidden_size"] == 8
    generation = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}
    header = read_safetensors_header(tmp_path / "m" / "model.safetensors")
    metadata = header["__metadata__"]
    assert metadata.pop("format") == "pt"  # transformers refuses a file without it
    # the rest: one checksum per tensor (npllama/io/safetensors.py), which transformers ignores
    assert set(metadata) == {"npllama.sha256:" + name for name in config.param_shapes()}
    assert {k for k in header if k != "__metadata__"} == set(config.param_shapes())
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F64"}


@pytest.mark.parametrize("dtype, torch_name, stored", [
    (np.float32, "float32", "F32"), (np.float64, "float64", "F64"),
    (np.float16, "float16", "F16"), ("bfloat16", "bfloat16", "BF16"),
])
def test_save_dtype_converts(tmp_path, dtype, torch_name, stored):
    config = small_config()
    params = random_params(config, np.float64)
    save_hf_folder(tmp_path / "m", config, params, dtype=dtype)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == torch_name
    header = read_safetensors_header(tmp_path / "m" / "model.safetensors")
    assert header["model.norm.weight"]["dtype"] == stored
    _, loaded = load_hf_folder(tmp_path / "m", dtype=np.float64)
    tolerance = {"F32": 1e-7, "F64": 0.0, "F16": 1e-3, "BF16": 8e-3}[stored]
    for name, array in params.items():
        np.testing.assert_allclose(loaded[name], array, rtol=tolerance, atol=tolerance * 1e-3)
    if stored == "F64":
        assert all(np.array_equal(loaded[n], params[n]) for n in params)


@pytest.mark.parametrize("dtype, value", [(np.float16, 65520.0), ("bfloat16", 1e39), (np.float32, -1e39)])
def test_save_refuses_a_weight_its_dtype_would_make_inf(tmp_path, dtype, value):
    config = small_config()
    params = random_params(config, np.float64)
    params["model.layers.0.mlp.up_proj.weight"][3, 1] = value
    with pytest.raises(ValueError, match=r"params\['model.layers.0.mlp.up_proj.weight'\] holds .* would be inf"):
        save_hf_folder(tmp_path / "m", config, params, dtype=dtype)
    assert not (tmp_path / "m").exists()
    params["model.layers.0.mlp.up_proj.weight"][3, 1] = 65519.0   # rounds to float16's 65504: kept
    params["model.norm.weight"][0] = np.inf                      # inf already: saved as it is
    save_hf_folder(tmp_path / "m", config, params, dtype=np.float16)
    _, loaded = load_hf_folder(tmp_path / "m")
    assert loaded["model.layers.0.mlp.up_proj.weight"][3, 1] == 65504.0 and np.isinf(loaded["model.norm.weight"][0])


@pytest.mark.parametrize("source", [np.float32, np.float64])
def test_save_refuses_a_weight_bfloat16_rounds_to_inf_though_float32_holds_it(tmp_path, source):
    """bfloat16's largest value (3.3895e38) is below float32's (3.4028e38): a float32 weight between
    them rounds to inf, so float32 arrays are checked too, by the writer's own rounding."""
    config = small_config()
    params = random_params(config, source)
    params["model.norm.weight"][0] = 3.4e38
    with pytest.raises(ValueError, match=r"params\['model.norm.weight'\] holds 3.4e\+38.* would be inf"):
        save_hf_folder(tmp_path / "m", config, params, dtype="bfloat16")
    assert not (tmp_path / "m").exists()
    params["model.norm.weight"][0] = 3.3e38   # rounds to a finite bfloat16: kept
    save_hf_folder(tmp_path / "m", config, params, dtype="bfloat16")
    assert np.isfinite(load_hf_folder(tmp_path / "m")[1]["model.norm.weight"][0])


@pytest.mark.parametrize("dtype, value, holds", [
    (np.float16, 7e4, "np.float32"), ("bfloat16", 3.4e38, "np.float32"), (np.float32, 1e39, "np.float64"),
    ("bfloat16", 1e39, "np.float64")])
def test_a_weight_that_would_be_inf_names_a_dtype_that_holds_it(tmp_path, dtype, value, holds):
    """The advice names a dtype the value fits in, never the one that just failed (float32 for a
    float64 value past float32's range)."""
    config = small_config()
    params = random_params(config, np.float64)
    params["model.norm.weight"][0] = value
    with pytest.raises(ValueError) as info:
        save_hf_folder(tmp_path / "m", config, params, dtype=dtype)
    advice = str(info.value).split("save with ")[1]
    assert advice.startswith(f"dtype={holds}")
    # spelled as the advice spells dtypes (np.float16, 'bfloat16'): "dtype=float16" never occurs in it
    assert ("'bfloat16'" if dtype == "bfloat16" else f"np.{np.dtype(dtype).name}") not in advice, advice


def users_files(folder):
    """Files a user keeps in a model folder that npllama does not write: a tokenizer, a README, a
    sub-folder of notes.  Returns {relative path: bytes}."""
    files = {"tokenizer.model": b"\x00sentencepiece bytes", "README.md": b"# my model\n",
             "notes/run-1.txt": b"lr 3e-4, loss 2.1\n", "notes/plots/loss.csv": b"step,loss\n1,2.5\n"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_save_pretrained_into_its_own_folder_keeps_the_users_files(tmp_path):
    config = small_config()
    folder = tmp_path / "my_model"
    Llama(config, seed=1).save_pretrained(folder)
    kept = users_files(folder)
    inodes = {name: (folder / name).stat().st_ino for name in kept}
    model = Llama.from_pretrained(folder)
    model.params["model.norm.weight"] += 1.0          # "fine-tuned"
    model.save_pretrained(folder)
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert {name: (folder / name).stat().st_ino for name in kept} == inodes, "hard-linked, not copied"
    _, loaded = load_hf_folder(folder)
    assert all(np.array_equal(loaded[n], model.params[n]) for n in model.params)
    assert [p.name for p in tmp_path.iterdir()] == ["my_model"], "no temporary or backup folder left"


def test_save_keeps_the_users_files_by_copying_where_they_cannot_be_linked(tmp_path, monkeypatch):
    import errno

    config = small_config()
    folder = tmp_path / "m"
    save_hf_folder(folder, config, random_params(config, seed=1))
    kept = users_files(folder)

    def cross_device(src, dst, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    new = random_params(config, seed=2)
    save_hf_folder(folder, config, new)
    assert tree(folder) == {**kept, **{n: tree(folder)[n] for n in ("config.json", "generation_config.json",
                                                                     "model.safetensors")}}
    _, loaded = load_hf_folder(folder)
    assert all(np.array_equal(loaded[n], new[n]) for n in new)


def test_save_replaces_its_own_files_and_drops_old_weights_that_would_load_instead(tmp_path):
    """An old sharded copy (which load_hf_folder prefers to model.safetensors) and an old pickle
    (which transformers loads with use_safetensors=False) are the previous weights: they go."""
    config = small_config(num_hidden_layers=2)
    folder = write_sharded(tmp_path / "m", config, random_params(config, seed=1), shards=3)
    (folder / "weights-extra.safetensors").write_bytes(b"named by the old index")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "weights-extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"):
        (folder / name).write_bytes(b"old pickle")
    (folder / "generation_config.json").write_text('{"eos_token_id": 3}')
    kept = users_files(folder)
    new = random_params(config, seed=2)
    save_hf_folder(folder, config, new)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {"config.json", "generation_config.json", "model.safetensors"} | {name.split("/")[0] for name in kept})
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == config.eos_token_id != 3
    _, loaded = load_hf_folder(folder)
    assert all(np.array_equal(loaded[n], new[n]) for n in new)


def test_a_save_drops_only_weights_files_an_old_index_names(tmp_path):
    """An index names its shards, but a save removes only what is a weights file of the folder:
    a file of the user's that a wrong index names (or one in a subfolder) stays."""
    config = small_config(num_hidden_layers=2)
    folder = write_sharded(tmp_path / "m", config, random_params(config, seed=1), shards=2)
    (folder / "parts").mkdir()
    for name in ("README.md", "parts/extra.safetensors"):
        (folder / name).write_text("the user's")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"].update({"a": "README.md", "b": "parts/extra.safetensors"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    save_hf_folder(folder, config, random_params(config, seed=2))
    assert [(folder / n).read_text() for n in ("README.md", "parts/extra.safetensors")] == ["the user's"] * 2
    assert not [p for p in folder.iterdir() if p.name.startswith("model-")]   # the old shards went


def test_a_tokenizer_saved_replaces_the_folder_s_tokenizer_files_and_only_then(tmp_path, small_model_dir):
    """transformers' AutoTokenizer reads tokenizer.json before tokenizer.model: an old one left
    beside a new tokenizer.model would be the tokenizer the folder loads with."""
    import shutil

    from npllama.tokenizer import Tokenizer

    folder = tmp_path / "m"
    shutil.copytree(small_model_dir, folder)
    tokenizer = Tokenizer(folder / "tokenizer.model")
    written = tokenizer.hf_files(model_max_length=128)
    for name in written:                              # another model's tokenizer, as a user's folder may hold
        (folder / name).write_bytes(b"another tokenizer's " + name.encode())
    (folder / "added_tokens.json").write_text('{"<extra>": 400}')
    model = Llama.from_pretrained(folder)
    model.save_pretrained(folder, extra_files={"tokenizer_config.json": b"{}"})   # no tokenizer given:
    assert (folder / "added_tokens.json").exists()                                 # its files stay
    assert (folder / "tokenizer.json").read_bytes() == b"another tokenizer's tokenizer.json"
    model.save_pretrained(folder, extra_files={"tokenizer.model": tokenizer.model_bytes})
    assert not (folder / "added_tokens.json").exists(), "the old tokenizer's file would change its ids"
    assert {name: (folder / name).read_bytes() for name in written} == written


def test_save_refuses_a_folder_holding_a_lora_adapter(tmp_path):
    """transformers (with PEFT installed) loads a folder with adapter_config.json as that adapter
    on the base it names: saved beside it, these weights would not be what the folder loads."""
    config = small_config()
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"adapter")
    before = tree(folder)
    with pytest.raises(ValueError, match=r"path .*adapter.* holds a LoRA adapter \(adapter_config.json\)"):
        Llama(config).save_pretrained(folder)
    assert tree(folder) == before and [p.name for p in tmp_path.iterdir()] == ["adapter"]


# ----- sharded folders
# ----- sharded folders --------------------------------------------------------------------------

def test_sharded_folder_loads_like_a_single_file(tmp_path):
    config = small_config(num_hidden_layers=2)
    params = random_params(config)
    folder = write_sharded(tmp_path / "m", config, params, shards=3)
    loaded_config, loaded = load_hf_folder(folder)
    assert loaded_config == config and list(loaded) == list(config.param_shapes())
    assert all(np.array_equal(loaded[n], params[n]) for n in params)


@pytest.mark.parametrize("bad_name", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                      "C:\\x.safetensors", "..\\x.safetensors", ""])
def test_shard_names_leaving_the_folder_are_refused(tmp_path, bad_name):
    config = small_config()
    params = random_params(config)
    write_safetensors(tmp_path / "x.safetensors", {"model.norm.weight": params["model.norm.weight"]})
    folder = write_sharded(tmp_path / "m", config, params,
                           weight_map_override={"model.norm.weight": bad_name})
    with pytest.raises(CheckpointError, match="not a plain file name inside the model folder") as info:
        load_hf_folder(folder)
    assert info.value.path.endswith("model.safetensors.index.json")
    assert info.value.tensor == "model.norm.weight"


def test_missing_shard_is_named(tmp_path):
    config = small_config()
    folder = write_sharded(tmp_path / "m", config, random_params(config), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        load_hf_folder(folder)
    assert info.value.path.endswith("model-00002-of-00002.safetensors")


def test_index_and_shards_must_agree(tmp_path):
    config = small_config()
    params = random_params(config)
    # The index sends a tensor to the other shard than the one holding it.
    folder = write_sharded(tmp_path / "a", config, params, shards=2,
                           weight_map_override={"model.norm.weight": "model-00002-of-00002.safetensors"})
    assert "model.norm.weight" in read_safetensors_header(folder / "model-00001-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="maps it to|not in this shard") as info:
        load_hf_folder(folder)
    assert info.value.tensor == "model.norm.weight"
    # A shard holds a tensor the index does not list.
    folder = write_sharded(tmp_path / "b", config, params, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.norm.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not list it") as info:
        load_hf_folder(folder)
    assert info.value.tensor == "model.norm.weight"


@pytest.mark.parametrize("index_text, pattern", [
    ("{not json", "not valid JSON"),
    ('{"metadata": {}}', "weight_map"),
    ('{"weight_map": {"model.norm.weight": 3}}', "shard must be a file name"),
])
def test_bad_index_files(tmp_path, index_text, pattern):
    config = small_config()
    folder = write_sharded(tmp_path / "m", config, random_params(config))
    (folder / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_hf_folder(folder)
    assert "model.safetensors.index.json" in str(info.value)


# ----- names, shapes, dtypes ----------------------------------------------------------------------

def test_missing_tensor_is_named(tmp_path):
    config = small_config()
    params = random_params(config)
    del params["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match="missing 1 parameter") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, params))
    assert info.value.tensor == "model.layers.0.mlp.up_proj.weight"
    assert info.value.path.endswith("model.safetensors")


def test_unexpected_tensor_is_named(tmp_path):
    config = small_config()
    params = {**random_params(config), "model.layers.1.mlp.up_proj.weight": np.ones((12, 8), np.float32)}
    with pytest.raises(CheckpointError, match="unexpected") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, params))
    assert info.value.tensor == "model.layers.1.mlp.up_proj.weight"


def test_a_base_model_checkpoint_is_told_apart(tmp_path):
    """transformers' LlamaModel saves the stack without the "model." prefix and without lm_head:
    the error says so instead of only calling every name unexpected."""
    config = small_config(tie_word_embeddings=True)
    base = {name.removeprefix("model."): array for name, array in random_params(config).items()}
    with pytest.raises(CheckpointError, match="lacks the 'model.' prefix.*LlamaModel") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, base))
    assert "model." + info.value.tensor in config.param_shapes()
    with pytest.raises(CheckpointError) as info:   # a name that is not ours at all: no such hint
        load_hf_folder(write_folder(tmp_path / "n", config, {**random_params(config), "extra.weight": np.ones(2)}))
    assert info.value.tensor == "extra.weight" and "prefix" not in str(info.value)


@pytest.mark.parametrize("bias", ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.mlp.down_proj.bias",
                                  "model.layers.3.self_attn.k_proj.bias"])   # (a layer the config lacks too)
def test_bias_tensors_in_a_checkpoint_labelled_llama_are_called_what_they_are(tmp_path, bias):
    """A Qwen2-style checkpoint (biases on q/k/v) relabelled llama, its config saying no biases: the error
    says the tensor is a bias, which LLaMA has none of, and that the checkpoint is probably another
    architecture -- not only that the name is unexpected."""
    config = small_config()
    params = {**random_params(config), bias: np.ones(8, np.float32)}
    with pytest.raises(CheckpointError, match=r"a bias.*LLaMA.*no biases.*another architecture.*Qwen2") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, params))
    assert info.value.tensor == bias and "\n" not in str(info.value)
    with pytest.raises(CheckpointError) as info:   # any other unexpected name: no such hint
        load_hf_folder(write_folder(tmp_path / "n", config, {**random_params(config), "extra.weight": np.ones(2)}))
    assert "bias" not in info.value.problem


def test_wrong_shape_is_named_before_any_data_is_read(tmp_path, monkeypatch):
    config = small_config()
    params = random_params(config)
    params["model.layers.0.self_attn.k_proj.weight"] = np.ones((8, 4), np.float32)
    folder = write_folder(tmp_path / "m", config, params)

    def must_not_read(*args, **kwargs):
        raise AssertionError("tensor data was read before the shapes were checked")

    monkeypatch.setattr(hf, "read_safetensors", must_not_read)
    with pytest.raises(CheckpointError, match=r"shape \(8, 4\) does not match the config, which needs \(8, 8\)") as info:
        load_hf_folder(folder)
    assert info.value.tensor == "model.layers.0.self_attn.k_proj.weight"


def test_integer_weights_are_refused(tmp_path):
    config = small_config()
    params = random_params(config)
    params["model.norm.weight"] = np.ones(8, np.int32)
    with pytest.raises(CheckpointError, match="not a float type") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, params))
    assert info.value.tensor == "model.norm.weight"


def test_rotary_inv_freq_buffer_is_skipped(tmp_path):
    config = small_config()
    params = random_params(config)
    stale = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(2, np.float32),
             "model.rotary_emb.inv_freq": np.ones(2, np.float32)}
    _, loaded = load_hf_folder(write_folder(tmp_path / "m", config, {**params, **stale}))
    assert list(loaded) == list(config.param_shapes())


def test_bf16_checkpoint_loads_as_float32_and_float64(tmp_path):
    config = small_config()
    params = random_params(config)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    write_safetensors(folder / "model.safetensors", params, metadata={"format": "pt"}, as_dtype="bf16")
    expected = read_safetensors(folder / "model.safetensors")           # our bf16 widening
    for dtype in (np.float32, np.float64):
        _, loaded = load_hf_folder(folder, dtype=dtype)
        for name in params:
            assert loaded[name].dtype == dtype
            np.testing.assert_array_equal(loaded[name], expected[name].astype(dtype))


# ----- tied embeddings --------------------------------------------------------------------------

def test_tied_lm_head_equal_to_embedding_is_dropped(tmp_path):
    config = small_config(tie_word_embeddings=True)
    params = random_params(config)
    folder = write_folder(tmp_path / "m", config, {**params, "lm_head.weight": params["model.embed_tokens.weight"]})
    _, loaded = load_hf_folder(folder)
    assert "lm_head.weight" not in loaded
    np.testing.assert_array_equal(loaded["model.embed_tokens.weight"], params["model.embed_tokens.weight"])


def test_tied_lm_head_that_differs_is_refused(tmp_path):
    config = small_config(tie_word_embeddings=True)
    params = random_params(config)
    head = params["model.embed_tokens.weight"].copy()
    head[3, 2] += 1.0
    with pytest.raises(CheckpointError, match="differs from model.embed_tokens.weight") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, {**params, "lm_head.weight": head}))
    assert info.value.tensor == "lm_head.weight"
    with pytest.raises(CheckpointError, match="does not match the config") as info:
        load_hf_folder(write_folder(tmp_path / "n", config, {**params, "lm_head.weight": head[:4]}))
    assert info.value.tensor == "lm_head.weight"


def test_untied_config_needs_lm_head(tmp_path):
    config = small_config(tie_word_embeddings=False)
    params = random_params(config)
    del params["lm_head.weight"]
    with pytest.raises(CheckpointError, match="missing") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, params))
    assert info.value.tensor == "lm_head.weight"


# ----- config.json ------------------------------------------------------------------------------

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8}


def test_other_architectures_are_refused(tmp_path):
    config = small_config()
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 16, "n_embd": 8}
    with pytest.raises(CheckpointError, match="model_type='gpt2'") as info:
        load_hf_folder(write_folder(tmp_path / "m", config, random_params(config), config_dict=gpt2))
    assert info.value.path.endswith("config.json")


@pytest.mark.parametrize("change, pattern, field", [
    ({"hidden_size": "8"}, "hidden_size must be an int", "hidden_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads", "num_key_value_heads"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "yarn", "rope_scaling"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps must be a positive", "rms_norm_eps"),
    # transformers 5.x layout: named by the field the file has
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "rope_parameters type 'yarn'",
     "rope_parameters"),
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}, "'longrope'",
     "rope_parameters"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "needs 'low_freq_factor'", "rope_parameters"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling type 'yarn'", "rope_scaling"),
    ({"rope_scaling": {"type": "dynamic"}}, "rope_scaling.factor must be a number", "rope_scaling.factor"),
    ({"attention_bias": True}, "attention_bias must be false: .* got True", "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias must be false: .* got True", "mlp_bias"),
    ({"mlp_bias": "no"}, "mlp_bias must be false: .* got 'no'", "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act must be 'silu'", "hidden_act"),
    # LLaMA-3 scaling's original context given twice, differently: transformers 5.x takes the top-level
    # one, 4.x the scaling's, so either reading is a guess
    ({"rope_scaling": LLAMA3_SCALING, "original_max_position_embeddings": 16},
     r"original_max_position_embeddings \(16\) .* rope_scaling.original_max_position_embeddings \(8\)",
     "original_max_position_embeddings"),
    ({"rope_scaling": None, "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 1e4},
      "original_max_position_embeddings": 16}, r"differs from rope_parameters.original_max_position_embeddings",
     "original_max_position_embeddings"),
    # a LLaMA-3 field given as null: no transformers version runs it (the test used to end in a bare TypeError)
    ({"rope_scaling": {**LLAMA3_SCALING, "original_max_position_embeddings": None}},
     "rope_scaling of type 'llama3' needs 'original_max_position_embeddings'", "rope_scaling"),
    ({"rope_scaling": {**LLAMA3_SCALING, "low_freq_factor": None}}, "needs 'low_freq_factor'", "rope_scaling"),
    # RoPE over part of each head: transformers builds scaled tables that small and then cannot run
    # (tests/test_hf_compare.py shows it); LLaMA rotates the whole head
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
     r"rope_scaling.partial_rotary_factor must be 1 .* 'linear' .* got 0.5", "rope_scaling.partial_rotary_factor"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "partial_rotary_factor": 0.25},
     r"partial_rotary_factor must be 1 .* 'dynamic' .* got 0.25", "partial_rotary_factor"),
    ({"rope_scaling": None, "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     r"rope_parameters.partial_rotary_factor must be 1", "rope_parameters.partial_rotary_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "partial_rotary_factor": "half"},
     "partial_rotary_factor must be a number", "partial_rotary_factor"),
    # a quantized checkpoint: transformers quantizes (or reads quantized tensors) on load
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}},
     r"quantization_config .*'gptq'.* npllama reads unquantized", "quantization_config"),
    # not an object: the message shows what the file holds (it said "quant_method None")
    ({"quantization_config": "gptq"}, r"quantization_config \('gptq'\) says this checkpoint is quantized",
     "quantization_config"),
    # more than the whole head: transformers' tables are then wider than its heads
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 2.0}},
     r"rope_scaling.partial_rotary_factor must be 1 .* got 2.0", "rope_scaling.partial_rotary_factor"),
])
def test_bad_config_fields_are_named(tmp_path, change, pattern, field):
    config = small_config()
    bad = {**config.to_dict(), **change}
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_hf_folder(write_folder(tmp_path / "m", config, random_params(config), config_dict=bad))
    assert info.value.path.endswith("config.json") and str(info.value).startswith(info.value.path)
    assert info.value.field == field


def test_attention_dropout_is_carried_through_a_folder_and_checked(tmp_path):
    """npllama's attention has no dropout, but a folder's value is written back for trainers that
    apply it (it was written as 0.0 whatever the folder said)."""
    config = small_config()
    fields = {**config.to_dict(), "attention_dropout": 0.1}
    loaded, params = load_hf_folder(write_folder(tmp_path / "m", config, random_params(config), config_dict=fields))
    assert loaded.attention_dropout == 0.1 and loaded.to_dict()["attention_dropout"] == 0.1
    Llama(loaded, params=params).save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["attention_dropout"] == 0.1
    assert LlamaConfig.from_dict({**fields, "attention_dropout": 0}).attention_dropout == 0.0
    for bad, error in [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.1", TypeError)]:
        with pytest.raises(error, match="attention_dropout"):
            LlamaConfig.from_dict({**fields, "attention_dropout": bad})


def test_values_transformers_accepts_that_change_no_number_are_accepted():
    """initializer_range only sets the spread of a fresh model's weights; transformers accepts 0 to 1,
    so 0 (a fresh model of zeros) is no reason to refuse a checkpoint.  partial_rotary_factor 1 (the
    whole head) is LLaMA's own RoPE, and with plain RoPE transformers 5 ignores any value (its
    LlamaRotaryEmbedding builds full-head tables); a quantization_config of null is none."""
    fields = small_config().to_dict()
    config = LlamaConfig.from_dict({**fields, "initializer_range": 0})
    assert config.initializer_range == 0.0
    assert all(not w.any() for name, w in Llama(config).params.items() if name.endswith("proj.weight"))
    with pytest.raises(ValueError, match="initializer_range must be a non-negative number, got -0.02"):
        LlamaConfig.from_dict({**fields, "initializer_range": -0.02})
    linear = {"rope_type": "linear", "factor": 2.0}
    assert LlamaConfig.from_dict({**fields, "rope_scaling": {**linear, "partial_rotary_factor": 1.0}}).rope_scaling \
        == {**linear, "partial_rotary_factor": 1.0}
    assert LlamaConfig.from_dict({**fields, "rope_scaling": linear, "partial_rotary_factor": 1}).rope_scaling == linear
    assert LlamaConfig.from_dict({**fields, "partial_rotary_factor": 0.5}) == small_config()
    assert LlamaConfig.from_dict({**fields, "quantization_config": None}) == small_config()
    # {} names no quantization method (transformers stops at that); the weights load as the floats they are
    assert LlamaConfig.from_dict({**fields, "quantization_config": {}}) == small_config()


def test_llama3_scaling_without_its_original_context_takes_the_one_transformers_5_takes():
    """transformers 5 fills a LLaMA-3 scaling's missing original_max_position_embeddings with the top-level
    one (Phi-3's place for it), else max_position_embeddings (4.x refused such a file)."""
    fields = small_config().to_dict()
    inner = {k: v for k, v in LLAMA3_SCALING.items() if k != "original_max_position_embeddings"}
    for layout in ({"rope_scaling": inner}, {"rope_scaling": None, "rope_parameters": {**inner, "rope_theta": 1e4}},
                   {"rope_scaling": {"type": "llama3", **{k: v for k, v in inner.items() if k != "rope_type"}}}):
        plain = LlamaConfig.from_dict({**fields, **layout})
        assert plain.rope_scaling == {**inner, "original_max_position_embeddings": fields["max_position_embeddings"]}
        top_level = LlamaConfig.from_dict({**fields, **layout, "original_max_position_embeddings": 4})
        assert top_level.rope_scaling == {**inner, "original_max_position_embeddings": 4}
    # no max_position_embeddings either: transformers' default for it, 2048 (npllama's too)
    del fields["max_position_embeddings"]
    assert LlamaConfig.from_dict({**fields, "rope_scaling": inner}).rope_scaling["original_max_position_embeddings"] \
        == transformers_default_max_position_embeddings() == 2048
    with pytest.raises(ValueError, match="needs 'original_max_position_embeddings'"):
        small_config(rope_scaling=inner)   # built in Python: nothing to take it from


def transformers_default_max_position_embeddings():
    """transformers' LlamaConfig default, when transformers is installed; else the value it has long had."""
    try:
        from transformers import LlamaConfig as TransformersLlamaConfig
    except ImportError:
        return 2048
    return TransformersLlamaConfig().max_position_embeddings


@pytest.mark.parametrize("rope_field", ["rope_scaling", "rope_parameters"])
@pytest.mark.parametrize("source, value, error", [
    ("original_max_position_embeddings", "8", TypeError), ("original_max_position_embeddings", 8.0, TypeError),
    ("original_max_position_embeddings", 0, ValueError), ("max_position_embeddings", "64", TypeError),
])
def test_a_bad_value_the_llama3_scaling_takes_its_original_context_from_is_named_where_it_is(
        rope_field, source, value, error):
    """The filled-in original_max_position_embeddings comes from a top-level field; a bad value there is
    reported under that field, not under a rope_scaling (or rope_parameters) key the file does not have."""
    fields = small_config().to_dict()
    inner = {k: v for k, v in LLAMA3_SCALING.items() if k != "original_max_position_embeddings"}
    layout = {"rope_scaling": inner} if rope_field == "rope_scaling" else \
        {"rope_scaling": None, "rope_parameters": {**inner, "rope_theta": 1e4}}
    with pytest.raises(error, match=rf"^{source} must be (an int|positive), got {value!r}") as info:
        LlamaConfig.from_dict({**fields, **layout, source: value})
    assert "." not in str(info.value).split(" ")[0]   # the top-level field, not a key inside the RoPE settings


def test_other_names_transformers_reads_as_llama_are_accepted(tmp_path):
    """'swish' is torch's SiLU in transformers too; 'LLaMAForCausalLM' was the class's first name."""
    config = small_config()
    fields = {**config.to_dict(), "hidden_act": "swish", "architectures": ["LLaMAForCausalLM"]}
    loaded, _ = load_hf_folder(write_folder(tmp_path / "m", config, random_params(config), config_dict=fields))
    assert loaded == config
    with pytest.raises(CheckpointError, match="npllama reads LLaMA configs"):
        load_hf_folder(write_folder(tmp_path / "n", config, random_params(config),
                                    config_dict={**fields, "architectures": ["MistralForCausalLM"]}))


def test_config_file_problems(tmp_path):
    config = small_config()
    folder = write_folder(tmp_path / "m", config, random_params(config))
    (folder / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json: is not valid JSON"):
        load_hf_folder(folder)
    (folder / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        load_hf_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_hf_folder(folder)


def test_both_config_layouts_load_to_equal_configs(tmp_path):
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
    common = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=16, hidden_size=8,
                  intermediate_size=12, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=16, rms_norm_eps=1e-5, tie_word_embeddings=False)
    v4 = {**common, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling},
          "torch_dtype": "bfloat16", "transformers_version": "4.45.0"}
    v5 = {**common, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling},
          "dtype": "bfloat16", "transformers_version": "5.0.0"}
    reference = small_config(num_key_value_heads=1, rope_theta=500000.0,
                             rope_scaling={"rope_type": "llama3", **scaling})
    params = random_params(reference)
    config_4, params_4 = load_hf_folder(write_folder(tmp_path / "v4", reference, params, config_dict=v4))
    config_5, params_5 = load_hf_folder(write_folder(tmp_path / "v5", reference, params, config_dict=v5))
    assert config_4 == config_5 == reference
    assert config_4.rope_theta == 500000.0 and config_4.rope_scaling["rope_type"] == "llama3"
    assert all(np.array_equal(params_4[n], params_5[n]) for n in params)


def test_a_rope_scaling_beside_rope_parameters_wins_as_in_transformers():
    """transformers (4.x, and 5.x too) takes a non-empty rope_scaling whole, with the top-level
    rope_theta (10000 when absent), over rope_parameters; tests/test_hf_compare.py checks this
    against transformers itself.  Without rope_scaling, rope_parameters is read."""
    llama3 = LLAMA3_SCALING
    linear = {"rope_type": "linear", "factor": 2.0}
    fields = {**small_config().to_dict(), "rope_parameters": {**linear, "rope_theta": 100.0}}
    del fields["rope_theta"]
    both = LlamaConfig.from_dict({**fields, "rope_scaling": llama3})
    assert (both.rope_theta, both.rope_scaling) == (10000.0, llama3)
    assert LlamaConfig.from_dict({**fields, "rope_scaling": llama3, "rope_theta": 7.0}).rope_theta == 7.0
    alone = LlamaConfig.from_dict({**fields, "rope_scaling": None, "rope_theta": 7.0})
    assert (alone.rope_theta, alone.rope_scaling) == (100.0, linear)
    # a top-level original_max_position_embeddings equal to the scaling's says the same thing twice
    same = LlamaConfig.from_dict({**fields, "rope_scaling": llama3, "original_max_position_embeddings": 8})
    assert same.rope_scaling == llama3


# ----- folder-level problems and bad arguments ------------------------------------------------------

def test_folder_without_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(small_config().to_dict()))
    with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
        load_hf_folder(folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="pickle checkpoint, which npllama does not open") as info:
        load_hf_folder(folder)
    assert f"from_pretrained('{folder}').save_pretrained('{folder}-safetensors'" in str(info.value)


def test_meta_original_folder_is_told_how_to_convert(tmp_path):
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    (folder / "params.json").write_text("{}")
    (folder / "consolidated.00.pth").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="config.json: missing.*Meta's original release.*"
                                              "convert_llama_weights_to_hf.py"):
        load_hf_folder(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_hf_folder(tmp_path / "nowhere")


def test_memory_budget_is_checked_before_reading(tmp_path, monkeypatch):
    config = small_config()
    folder = write_folder(tmp_path / "m", config, random_params(config))
    monkeypatch.setattr(hf, "_memory_budget", lambda: 1000)
    monkeypatch.setattr(hf, "read_safetensors_header", lambda *a: pytest.fail("read before the budget check"))
    with pytest.raises(CheckpointError, match=r"over the 0\.0 GiB") as info:
        load_hf_folder(folder, dtype=np.float64)
    assert info.value.path.endswith("config.json")
    assert str(config.num_parameters()) in str(info.value).replace(",", "")


def test_memory_budget_default_is_bounded():
    assert 0 < hf._memory_budget() <= hf.MAX_LOAD_BYTES


@pytest.mark.parametrize("dtype", [np.float16, np.int32, None, "float128x"])
def test_load_refuses_other_dtypes(tmp_path, dtype):
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        load_hf_folder(tmp_path, dtype=dtype)


def test_save_checks_params(tmp_path):
    config = small_config()
    good = random_params(config)
    cases = [
        ({k: v for k, v in good.items() if k != "model.norm.weight"}, ValueError, "missing 'model.norm.weight'"),
        ({**good, "extra.weight": np.ones(2, np.float32)}, ValueError, "'extra.weight'"),
        ({**good, "model.norm.weight": np.ones(7, np.float32)}, ValueError,
         r"params\['model.norm.weight'\] has shape \(7,\)"),
        ({**good, "model.norm.weight": [1.0] * 8}, TypeError, "must be a numpy array"),
        ({**good, "model.norm.weight": np.ones(8, np.int64)}, TypeError, "float32 or float64"),
        ({**good, "model.norm.weight": np.ones(8, np.float64)}, TypeError, "mix dtypes"),
        ([1, 2], TypeError, "params must be a dict"),
    ]
    for params, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            save_hf_folder(tmp_path / "m", config, params)
    tied = small_config(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tie_word_embeddings=True"):
        save_hf_folder(tmp_path / "m", tied, {**random_params(tied), "lm_head.weight": good["lm_head.weight"]})
    with pytest.raises(TypeError, match="config must be a LlamaConfig"):
        save_hf_folder(tmp_path / "m", config.to_dict(), good)
    with pytest.raises(TypeError, match="dtype must be None"):
        save_hf_folder(tmp_path / "m", config, good, dtype=np.int8)
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_save_writes_extra_files(tmp_path):
    config = small_config()
    save_hf_folder(tmp_path / "m", config, random_params(config),
                   extra_files={"tokenizer.model": b"\x00spm", "README.md": bytearray(b"hi")})
    assert (tmp_path / "m" / "tokenizer.model").read_bytes() == b"\x00spm"
    assert (tmp_path / "m" / "README.md").read_bytes() == b"hi"
    load_hf_folder(tmp_path / "m")                              # extra files do not disturb loading


@pytest.mark.parametrize("extra, error, pattern", [
    ({"../tokenizer.model": b""}, ValueError, "plain file name"),
    ({"sub/tokenizer.model": b""}, ValueError, "plain file name"),
    ({"..": b""}, ValueError, "plain file name"),
    ({"C:x": b""}, ValueError, "plain file name"),
    ({"config.json": b"{}"}, ValueError, "cannot replace 'config.json'"),
    ({"tokenizer.model": "text"}, TypeError, "must be bytes"),
    ([("tokenizer.model", b"")], TypeError, "extra_files must be a dict"),
])
def test_save_refuses_bad_extra_files(tmp_path, extra, error, pattern):
    config = small_config()
    with pytest.raises(error, match=pattern):
        save_hf_folder(tmp_path / "m", config, random_params(config), extra_files=extra)
    assert not list(tmp_path.iterdir())


def test_save_failure_leaves_the_old_folder(tmp_path, monkeypatch):
    config = small_config()
    old = random_params(config, seed=1)
    save_hf_folder(tmp_path / "m", config, old)
    users_files(tmp_path / "m")
    before = tree(tmp_path / "m")

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "write_safetensors", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_hf_folder(tmp_path / "m", config, random_params(config, seed=2))
    assert tree(tmp_path / "m") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_failing_while_keeping_the_users_files_leaves_the_old_folder(tmp_path, monkeypatch):
    import shutil

    config = small_config()
    save_hf_folder(tmp_path / "m", config, random_params(config, seed=1))
    users_files(tmp_path / "m")
    before = tree(tmp_path / "m")

    def fail(*args, **kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(shutil, "copy2", fail)
    with pytest.raises(OSError, match="no space left"):
        save_hf_folder(tmp_path / "m", config, random_params(config, seed=2))
    assert tree(tmp_path / "m") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ----- atomic_directory ---------------------------------------------------------------------------

def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_directory_creates_the_folder(tmp_path):
    final = tmp_path / "deep" / "ckpt"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.is_dir() and not final.exists()
        (tmp / "a.txt").write_text("A")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"B")
    assert tree(final) == {"a.txt": b"A", "sub/b.bin": b"B"}
    assert [p.name for p in final.parent.iterdir()] == ["ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o777 & ~umask, "ordinary permissions, not mkdtemp's 0o700"


def test_atomic_directory_body_raising_leaves_old_folder_untouched(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert tree(final) == {"old.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "fresh"):
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def recording_fsyncs(monkeypatch) -> list:
    """Events [("fsync", path), ...] as os.fsync is called, by the path of each descriptor."""
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    events, real_fsync = [], os.fsync

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return events


def test_atomic_directory_replaces_and_fsyncs_before_renaming(tmp_path, monkeypatch):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    events = recording_fsyncs(monkeypatch)
    real_rename = os.rename

    def rename(src, dst):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        if os.fspath(dst) == str(final):
            # The instant between the two renames: the old folder is complete under its backup name.
            assert not final.exists()
            (backup,) = backup_paths(final)
            assert tree(backup) == {"old.txt": b"old"}
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert tree(final) == {"new.txt": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and backup_paths(final) == []
    renames = [e for e in events if e[0] == "rename"]
    assert renames[0][1] == str(final) and renames[1] == ("rename", str(tmp), str(final))
    first_rename = events.index(renames[0])
    assert ("fsync", str(tmp / "new.txt")) in events[:first_rename], "files fsynced before renaming"
    assert ("fsync", str(tmp)) in events[:first_rename], "the folder itself fsynced before renaming"
    assert ("fsync", str(tmp_path)) in events[first_rename:], "the parent fsynced after renaming"


def test_atomic_files_into_moves_fsynced_files_beside_the_others_and_leaves_nothing(tmp_path, monkeypatch):
    from npllama.io.atomic import atomic_files_into

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("kept")
    (run / "model.safetensors").write_text("old")
    events = recording_fsyncs(monkeypatch)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.fspath(b))), real_replace(a, b)))
    with atomic_files_into(run) as staging:
        (staging / "model.safetensors").write_text("new")
        (staging / "config.json").write_text("{}")
    assert tree(run) == {"log.jsonl": b"kept", "model.safetensors": b"new", "config.json": b"{}"}
    first_move = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert ("fsync", str(staging / "model.safetensors")) in events[:first_move], "files fsynced before moving"
    assert events[-1] == ("fsync", str(run)), "the folder's entries fsynced after the moves"
    with pytest.raises(RuntimeError):
        with atomic_files_into(run) as staging:
            (staging / "model.safetensors").write_text("half")
            raise RuntimeError("the save failed")
    assert tree(run) == {"log.jsonl": b"kept", "model.safetensors": b"new", "config.json": b"{}"}


def test_atomic_directory_failed_rename_restores_the_old_folder(tmp_path, monkeypatch):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
    assert tree(final) == {"old.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_directory_refuses_to_replace_a_file(tmp_path):
    target = tmp_path / "ckpt"
    target.write_text("a file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_directory(target):
            pytest.fail("the body must not run")
    assert target.read_text() == "a file" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_directory_keep_carries_the_old_entries_over_without_touching_them(tmp_path):
    final = tmp_path / "ckpt"
    (final / "sub" / "deeper").mkdir(parents=True)
    (final / "sub" / "deeper" / "a.txt").write_text("a")
    (final / "same.txt").write_text("old")
    (final / "stale.txt").write_text("stale")
    (final / "was_a_folder").mkdir()
    (final / "was_a_folder" / "x").write_text("x")
    (tmp_path / "elsewhere.txt").write_text("target")
    os.symlink("../elsewhere.txt", final / "link.txt")
    old_inode = (final / "same.txt").stat().st_ino
    seen = []

    def keep(name, written):
        seen.append((name, written))
        return name != "stale.txt"

    with atomic_directory(final, keep=keep) as tmp:
        (tmp / "same.txt").write_text("new")          # the body's entries win, file or folder
        (tmp / "was_a_folder").write_text("a file now")
    assert tree(final) == {"sub/deeper/a.txt": b"a", "same.txt": b"new", "was_a_folder": b"a file now",
                           "link.txt": b"target"}
    assert os.readlink(final / "link.txt") == "../elsewhere.txt", "a link stays a link"
    assert sorted(name for name, _ in seen) == ["link.txt", "stale.txt", "sub"], "asked only about the others"
    assert all(written == {"same.txt", "was_a_folder"} for _, written in seen)
    assert (final / "same.txt").stat().st_ino != old_inode, "the old file was not written through a link"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "elsewhere.txt"]


def test_a_classifier_folder_reads_its_config_once(tmp_path, monkeypatch):
    from npllama import Llama
    from npllama.io.hf import load_hf_classifier_folder
    from npllama.io.safetensors import write_safetensors

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    model = Llama(config, seed=0)
    folder = tmp_path / "clf"
    model.save_pretrained(folder)
    tensors = {n: p for n, p in model.params.items() if n != "lm_head.weight"}
    tensors["score.weight"] = np.ones((3, 8), dtype=np.float32)
    write_safetensors(folder / "model.safetensors", tensors)
    fields = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**fields, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    reads, real = [], hf.read_json
    monkeypatch.setattr(hf, "read_json", lambda path, *a, **k: (reads.append(os.path.basename(path)), real(path, *a, **k))[1])
    _, _, score, raw = load_hf_classifier_folder(folder)
    assert reads.count("config.json") == 1 and raw["id2label"]["2"] == "c" and score.shape == (3, 8)


def test_several_end_ids_survive_a_round_trip_and_end_a_generation(tmp_path):
    """LLaMA-3's config.json lists several eos ids (end of text, end of turn): they are kept, written
    back as a list, and each one ends a plain generation."""
    from npllama import Llama, LlamaConfig
    from npllama.generate import end_ids

    config = LlamaConfig.from_dict({"vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
                                    "num_hidden_layers": 1, "num_attention_heads": 2, "eos_token_id": [5, 7, 9]})
    assert config.eos_token_id == [5, 7, 9] and config.end_ids == (5, 7, 9)
    Llama(config, seed=0).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["eos_token_id"] == [5, 7, 9]
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["eos_token_id"] == [5, 7, 9]
    reloaded = Llama.from_pretrained(tmp_path / "m")
    assert reloaded.config == config
    tokenizer = type("Tok", (), {"eos_id": 2})()
    assert end_ids(reloaded, tokenizer) == [2, 5, 7, 9]
    for bad in ([], [5, 40], [5, "7"], [True]):
        if bad == []:
            assert LlamaConfig.from_dict({**config.to_dict(), "eos_token_id": bad}).eos_token_id is None
            continue
        with pytest.raises(ValueError, match="eos_token_id must be None, an id or a non-empty list"):
            LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, eos_token_id=bad)


def test_generation_config_json_end_ids_join_once_and_survive_save_and_load(tmp_path):
    """generation_config.json's eos_token_id (one id, a list, null) joins config.json's without
    duplicates; a folder saved from the joined model and loaded again, several times, keeps the
    same ids in both files (nothing grows); without the file, config.json's id alone.  A file that
    is no JSON object is refused, as config.json is (it was silently ignored, while invalid JSON
    was refused)."""
    folder = tmp_path / "m"
    Llama(small_config(eos_token_id=2), seed=0).save_pretrained(folder)
    generation = folder / "generation_config.json"
    for listed, expected in [(None, 2), (7, [2, 7]), ([7, 2, 7], [2, 7]), ([2], 2), ([], 2)]:
        generation.write_text(json.dumps({"bos_token_id": 1, "eos_token_id": listed}))
        assert Llama.from_pretrained(folder).config.eos_token_id == expected, listed
    generation.unlink()
    assert Llama.from_pretrained(folder).config.eos_token_id == 2
    generation.write_text(json.dumps({"eos_token_id": [9, 7]}))
    for _ in range(3):
        Llama.from_pretrained(folder).save_pretrained(folder)
        assert json.loads((folder / "config.json").read_text())["eos_token_id"] == [2, 9, 7]
        assert json.loads(generation.read_text())["eos_token_id"] == [2, 9, 7]
    for not_an_object in ("[7]", "7", '"eos"', "null"):
        generation.write_text(not_an_object)
        with pytest.raises(CheckpointError, match=r"generation_config.json: must hold a JSON object"):
            Llama.from_pretrained(folder)


@pytest.mark.parametrize("bad", [40, -1, True, 2.0, "2", [2, 40], [2, None], [[2]]])
def test_generation_config_json_end_ids_are_checked_as_config_json_s(tmp_path, bad):
    """The ids generation_config.json adds are refused exactly where LlamaConfig refuses its own
    eos_token_id, with its message (one check serves both; hf.py had a copy of its own)."""
    folder = tmp_path / "m"
    Llama(small_config(eos_token_id=2), seed=0).save_pretrained(folder)
    with pytest.raises(ValueError) as refused_by_config:
        small_config(eos_token_id=bad)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": bad}))
    with pytest.raises(CheckpointError) as refused_by_file:
        Llama.from_pretrained(folder)
    assert refused_by_file.value.field == "eos_token_id"
    assert refused_by_file.value.problem.startswith(str(refused_by_config.value).removeprefix("eos_token_id "))


def test_save_pretrained_into_a_linked_folder_saves_into_the_folder_linked_to(tmp_path):
    """`models/current -> /data/run-7`: as transformers would, the save goes to run-7, the link stays
    (it was replaced by a new folder at the link, with copies of run-7's files and its relative
    links dangling, while run-7 itself kept the old weights)."""
    config = small_config()
    target = tmp_path / "data" / "run-7"
    save_hf_folder(target, config, random_params(config, seed=1))
    (tmp_path / "data" / "shared.txt").write_text("shared")
    os.symlink("../shared.txt", target / "notes.txt")
    (tmp_path / "models").mkdir()
    os.symlink(target, tmp_path / "models" / "current")
    new = random_params(config, seed=2)
    save_hf_folder(tmp_path / "models" / "current", config, new)
    assert (tmp_path / "models" / "current").is_symlink()
    assert (target / "notes.txt").read_text() == "shared"
    _, loaded = load_hf_folder(target)
    assert all(np.array_equal(loaded[n], new[n]) for n in new)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["run-7", "shared.txt"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["current"]


def _interrupting(real, on_call: int, after: bool):
    """`real`, raising KeyboardInterrupt (a Ctrl-C) at its `on_call`-th call, before or after doing it."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == on_call and not after:
            raise KeyboardInterrupt
        result = real(*args, **kwargs)
        if len(calls) == on_call and after:
            raise KeyboardInterrupt
        return result
    return wrapper


@pytest.mark.parametrize("on_call, after, new", [(1, False, False), (1, True, False), (2, False, False),
                                                 (2, True, True)])
def test_a_ctrl_c_at_the_swap_leaves_the_old_folder_or_the_new_one_and_nothing_else(tmp_path, monkeypatch, on_call,
                                                                                      after, new):
    """The swap is two renames (old -> backup, new -> final): a Ctrl-C just after the first one left
    no folder at `final` at all, the old one hidden at its backup name."""
    config = small_config()
    old = random_params(config, seed=1)
    save_hf_folder(tmp_path / "m", config, old)
    users_files(tmp_path / "m")
    monkeypatch.setattr(os, "rename", _interrupting(os.rename, on_call, after))
    with pytest.raises(KeyboardInterrupt):
        save_hf_folder(tmp_path / "m", config, random_params(config, seed=2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no temporary or backup folder left"
    _, loaded = load_hf_folder(tmp_path / "m")
    expected = random_params(config, seed=2) if new else old
    assert all(np.array_equal(loaded[n], expected[n]) for n in expected)
    assert (tmp_path / "m" / "notes" / "plots" / "loss.csv").read_bytes() == b"step,loss\n1,2.5\n"


def test_a_ctrl_c_while_the_old_folder_is_removed_still_removes_it(tmp_path, monkeypatch):
    """Once the new folder is in place the old one goes: a Ctrl-C then left it half removed at a
    name backup_paths calls "the old complete folder"."""
    import npllama.io.atomic as atomic

    config = small_config()
    save_hf_folder(tmp_path / "m", config, random_params(config, seed=1))
    users_files(tmp_path / "m")
    real_unlink = os.unlink
    seen = []

    def unlink(path, *args, **kwargs):   # rmtree's: the first file of the backup goes, then Ctrl-C
        real_unlink(path, *args, **kwargs)
        seen.append(path)
        if len(seen) == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(atomic.os, "unlink", unlink)
    new = random_params(config, seed=2)
    with pytest.raises(KeyboardInterrupt):
        save_hf_folder(tmp_path / "m", config, new)
    monkeypatch.undo()
    assert seen and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert backup_paths(tmp_path / "m") == []
    _, loaded = load_hf_folder(tmp_path / "m")
    assert all(np.array_equal(loaded[n], new[n]) for n in new)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_sub_folder_is_kept_and_the_old_one_removed(tmp_path):
    """A sub-folder the user made read-only (chmod a-w) is carried over as it is; the old folder's
    copy of it could not be removed, and the save failed with PermissionError after it had succeeded."""
    config = small_config()
    save_hf_folder(tmp_path / "m", config, random_params(config, seed=1))
    (tmp_path / "m" / "frozen").mkdir()
    (tmp_path / "m" / "frozen" / "a.txt").write_text("a")
    os.chmod(tmp_path / "m" / "frozen", 0o555)
    try:
        save_hf_folder(tmp_path / "m", config, random_params(config, seed=2))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
        assert (tmp_path / "m" / "frozen" / "a.txt").read_text() == "a"
        assert not os.access(tmp_path / "m" / "frozen", os.W_OK)
    finally:
        os.chmod(tmp_path / "m" / "frozen", 0o755)
