"""LoRA on the whole model: gradients, PEFT names and config, save/load, merge, bad input."""
import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, gradcheck, use_backend
from npllama.io.errors import CheckpointError
from npllama.io.safetensors import read_safetensors, write_safetensors
from npllama.lora import ALL_TARGETS, LoraAdapters, attach_lora, load_adapter, peft_name


def tiny_config(**overrides):
    fields = dict(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    fields.update(overrides)
    return LlamaConfig(**fields)


def base_model(seed=0, dtype=np.float64, **config):
    """Weights moved away from init's tiny ones, so gradients have a size worth checking.
    config: tiny_config's overrides (tests/test_finetune_config_matrix.py varies them)."""
    model = Llama(tiny_config(**config), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 5)
    for p in model.params.values():
        p += (0.3 if p.ndim == 1 else 0.2) * rng.standard_normal(p.shape).astype(dtype)
    return model


def adapted_model(targets=ALL_TARGETS, r=2, dtype=np.float64, seed=0, config=None, **kwargs):
    """A model with adapters whose B is random (PEFT's B = 0 would make half the checks vacuous).
    config: base_model's config overrides, a dict."""
    model = base_model(seed, dtype, **(config or {}))
    rng = np.random.default_rng(seed + 7)
    adapters = attach_lora(model, r=r, lora_alpha=3.0, target_modules=targets, seed=seed, **kwargs)
    for name, p in adapters.params.items():
        p += 0.3 * rng.standard_normal(p.shape).astype(dtype)
    return model, adapters


def batch(config, B=2, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T)))


@settings(max_examples=6, deadline=None)
@given(targets=st.sets(st.sampled_from(ALL_TARGETS), min_size=1).map(lambda t: tuple(x for x in ALL_TARGETS if x in t)),
       r=st.integers(1, 2), n_kv_heads=st.sampled_from([1, 2, 4]), n_layers=st.integers(1, 2), tied=st.booleans(),
       use_rslora=st.booleans(), causal=st.booleans(), B=st.integers(1, 2), T=st.integers(1, 5), data=st.data())
@example(targets=("q_proj", "v_proj"), r=2, n_kv_heads=2, n_layers=2, tied=False, use_rslora=False, causal=True,
         B=2, T=5, data=None)
@example(targets=ALL_TARGETS, r=2, n_kv_heads=2, n_layers=2, tied=False, use_rslora=False, causal=True, B=2, T=5,
         data=None)
def test_whole_model_gradients_of_the_adapters(targets, r, n_kv_heads, n_layers, tied, use_rslora, causal, B, T, data):
    # over the projections adapted, the rank, GQA groupings (k_proj, v_proj are KVH*hd wide), the
    # depth, tied embeddings, rsLoRA's scaling, the bidirectional stack and right padding
    config = dict(num_key_value_heads=n_kv_heads, num_hidden_layers=n_layers, tie_word_embeddings=tied)
    model, adapters = adapted_model(targets, r=r, config=config, use_rslora=use_rslora)
    tokens, targets_ = batch(model.config, B, T)
    n_pad = 2 if data is None else data.draw(st.integers(0, T - 1), label="padding of the last row")
    mask = np.ones((B, T), dtype=np.int64)
    mask[-1, T - n_pad:] = 0
    before = {n: p.copy() for n, p in model.params.items()}
    with use_backend("numpy"):
        loss, grads = model.loss_and_grads(tokens, targets_, mask, causal=causal)
        assert list(grads) == list(adapters.params)  # the adapters' gradients and nothing else
        # the default step (1e-4 of each adapter's scale) keeps the loss's round-off, divided by the
        # step, well below the smallest adapter gradients (~1e-4)
        report = gradcheck(lambda *_: model.loss(tokens, targets_, mask, causal=causal), adapters.params, grads,
                           max_entries=None if data is None else 8)
    report.raise_if_failed()
    if data is None:   # the two fixed cases measure this close; a drawn one may hold smaller gradients (~3e-7)
        assert report.max_rel_err < 1e-7
    assert all(np.array_equal(before[n], p) for n, p in model.params.items())  # base untouched


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_base_with_a_pad_token_id_trains_its_adapters(backend):
    # config.json's pad_token_id zeroes the pad row of the embedding's gradient; under LoRA the
    # table is frozen and has none, which must not stop the adapters' gradients
    model, adapters = adapted_model(("q_proj", "v_proj"))
    tokens, targets = batch(model.config)
    with use_backend(backend):
        _, without_pad = model.loss_and_grads(tokens, targets)
        model.config.pad_token_id = 0
        _, with_pad = model.loss_and_grads(tokens, targets)
    # the adapters' gradients only (named here, not read off adapters.params, which keys them)
    assert sorted(with_pad) == sorted(peft_name(f"model.layers.{i}.self_attn.{t}", which)
                                      for i in range(model.config.num_hidden_layers)
                                      for t in ("q_proj", "v_proj") for which in ("lora_A", "lora_B"))
    assert all(np.array_equal(with_pad[n], without_pad[n]) for n in without_pad)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fresh_adapters_change_nothing_and_attach_only_targets(backend):
    model = Llama(tiny_config(), seed=1, dtype=np.float64)
    tokens, _ = batch(model.config)
    with use_backend(backend):
        base_logits = model.forward(tokens)
        adapters = attach_lora(model, r=4, target_modules=["v_proj", "q_proj"])
        adapted_logits = model.forward(tokens)
    # B = 0 at init: the adapter adds exactly nothing.  On numba the plain projection is the
    # linear kernel (one 2-D product) and the adapted one LoRA's reference product: round-off apart.
    if backend == "numpy":
        np.testing.assert_array_equal(adapted_logits, base_logits)
    else:
        np.testing.assert_allclose(adapted_logits, base_logits, rtol=1e-12, atol=1e-15)
    assert adapters.target_modules == ("q_proj", "v_proj")
    assert sorted(adapters.params) == sorted(
        f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight"
        for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB")
    A = adapters.params["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert A.shape == (4, 8) and np.abs(A).max() <= 1 / np.sqrt(8) and np.abs(A).max() > 0.1
    assert adapters.params["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape == (4, 4)
    assert adapters.scaling == 16 / 4


def test_merge_gives_the_same_logits():
    model, adapters = adapted_model()
    tokens, _ = batch(model.config, T=7)
    adapted_logits = model.forward(tokens)
    assert not np.allclose(adapted_logits, Llama(model.config, seed=0, dtype=np.float64).forward(tokens))
    adapters.merge()
    assert model.lora is None
    np.testing.assert_allclose(model.forward(tokens), adapted_logits, rtol=1e-12, atol=1e-12)


def test_save_load_round_trip_in_peft_layout(tmp_path):
    model, adapters = adapted_model(("q_proj", "k_proj", "v_proj", "o_proj"), lora_dropout=0.1)
    adapters.extra["score.weight"] = np.arange(16.0).reshape(2, 8)
    tokens, _ = batch(model.config)
    logits = model.forward(tokens)
    adapters.save_adapter(tmp_path / "adapter", base_model_name_or_path="runs/tiny", task_type="SEQ_CLS")

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 3.0, 0.1)
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False
    assert config["base_model_name_or_path"] == "runs/tiny" and config["modules_to_save"] == ["score"]
    tensors = read_safetensors(tmp_path / "adapter" / "adapter_model.safetensors")
    assert set(tensors) == set(adapters.params) | {"base_model.model.score.weight"}

    fresh = base_model(0)
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert fresh.lora is loaded and loaded.scaling == adapters.scaling
    np.testing.assert_array_equal(loaded.extra["score.weight"], adapters.extra["score.weight"])
    np.testing.assert_array_equal(fresh.forward(tokens), logits)


def test_dropout_only_in_training_mode():
    model, adapters = adapted_model(lora_dropout=0.5)
    tokens, _ = batch(model.config)
    eval_logits = model.forward(tokens)
    np.testing.assert_array_equal(model.forward(tokens), eval_logits)
    adapters.training = True
    assert not np.allclose(model.forward(tokens), eval_logits)


def test_decode_with_kv_cache_sees_the_adapters():
    model, _ = adapted_model()
    tokens, _ = batch(model.config, B=1, T=6)
    cache = model.new_kv_cache(1)
    stepwise = np.concatenate([model.forward_step(tokens[:, t:t + 1], cache) for t in range(6)], axis=1)
    np.testing.assert_allclose(stepwise, model.forward(tokens), rtol=1e-10, atol=1e-12)


def test_bad_arguments():
    model = Llama(tiny_config(), seed=0)
    with pytest.raises(ValueError, match=r"r=5 is larger than k_proj's smaller dimension"):
        attach_lora(model, r=5, target_modules=["k_proj"])  # k_proj is (4, 8) with 2 kv heads
    with pytest.raises(ValueError, match="r=9 is larger than q_proj"):
        attach_lora(model, r=9)
    with pytest.raises(ValueError, match="r \\(the LoRA rank\\) must be a positive int"):
        attach_lora(model, r=0)
    with pytest.raises(ValueError, match="target_modules"):
        attach_lora(model, target_modules=["lm_head"])
    with pytest.raises(ValueError, match="lora_alpha"):
        attach_lora(model, r=2, lora_alpha=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        attach_lora(model, r=2, lora_dropout=1.0)
    assert model.lora is None  # nothing attached by the failed calls
    attach_lora(model, r=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        attach_lora(model, r=2)


def test_save_adapter_into_an_existing_folder_keeps_the_users_files(tmp_path):
    """As PEFT's save_pretrained: the adapter's files are replaced, the folder's others stay; an
    old adapter_model.bin (PEFT's older format, the previous adapter) goes with the old adapter."""
    _, adapters = adapted_model(("q_proj",))
    folder = tmp_path / "a"
    adapters.save_adapter(folder)
    kept = {"README.md": b"my adapter", "chat_template.jinja": b"{{ messages }}", "eval/scores.json": b"{}"}
    for name, data in kept.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "adapter_model.bin").write_bytes(b"an older adapter, pickled")
    for p in adapters.params.values():
        p += 1.0
    adapters.save_adapter(folder)
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert not (folder / "adapter_model.bin").exists()
    reloaded = load_adapter(base_model(), folder)
    assert all(np.array_equal(reloaded.params[n], adapters.params[n]) for n in adapters.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_save_adapter_refuses_a_model_folder(tmp_path):
    """An adapter saved beside a model's config.json would change what transformers (with PEFT)
    loads from the folder: the adapter on the base it names, not the model."""
    model, adapters = adapted_model(("q_proj",))
    model.lora = None
    model.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(ValueError, match=r"path .*m' holds a model \(config.json\)"):
        adapters.save_adapter(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_load_refuses_bad_folders(tmp_path):
    model, adapters = adapted_model(("q_proj",))
    adapters.save_adapter(tmp_path / "a")
    other = Llama(tiny_config(num_hidden_layers=3), seed=0, dtype=np.float64)
    with pytest.raises(CheckpointError, match="missing"):
        load_adapter(other, tmp_path / "a")  # layer 2 has no adapter in the file
    wider = Llama(tiny_config(hidden_size=16), seed=0, dtype=np.float64)
    with pytest.raises(CheckpointError, match="does not match the base model"):
        load_adapter(wider, tmp_path / "a")

    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for field, value, message in [("peft_type", "IA3", "LORA"), ("bias", "everything", "bias"),
                                  ("target_modules", "q_proj|v_proj", "regular expression"),
                                  ("rank_pattern", {"q_proj": 4}, "field 'rank_pattern': gives it rank 4, but")]:
        config_path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(CheckpointError, match=message):
            load_adapter(Llama(tiny_config(), seed=0, dtype=np.float64), tmp_path / "a")
    for text, message in [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("[1, 2]", "object"),
                          (json.dumps({**config, "lora_alpha": 10**400}), "lora_alpha")]:
        config_path.write_text(text)
        with pytest.raises((CheckpointError, ValueError), match=message):
            load_adapter(Llama(tiny_config(), seed=0, dtype=np.float64), tmp_path / "a")
    config_path.write_text(json.dumps(config))

    tensors = read_safetensors(tmp_path / "a" / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = np.zeros((2, 8))
    write_safetensors(tmp_path / "a" / "adapter_model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_adapter(Llama(tiny_config(), seed=0, dtype=np.float64), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(Llama(tiny_config(), seed=0), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(model, tmp_path / "a")


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_a_trace_records_the_mlp_steps_and_their_gradients_with_adapters_attached(backend_name):
    import npllama

    model = base_model()
    tokens, targets = batch(model.config)
    with npllama.use_backend(backend_name), npllama.trace() as base:
        model.loss_and_grads(tokens, targets)
    adapters = attach_lora(model, r=2, target_modules=("q_proj", "gate_proj", "up_proj"))
    with npllama.use_backend(backend_name), npllama.trace() as t:
        _, grads = model.loss_and_grads(tokens, targets)
    for step in ("gate", "up", "act"):
        name = f"model.layers.0.mlp.{step}"
        np.testing.assert_allclose(t[name], base[name], rtol=1e-12)   # B = 0: the adapted model is the base
        np.testing.assert_allclose(t["d:" + name], base["d:" + name], rtol=1e-10, atol=1e-15)
    # the adapters' gradients are recorded under PEFT names, credited to the adapters' backward
    lora_a = "d:base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"
    assert set(t.names("d:base_model.*")) == {"d:" + n for n in adapters.params}
    assert "LoraOps.swiglu_backward" in t.sources[lora_a]


@pytest.mark.parametrize("task_type, extra", [("SEQ_CLS", True), ("SEQ_CLS", False), ("CAUSAL_LM", True)])
def test_a_classification_adapter_is_refused_where_tokens_are_predicted(tmp_path, task_type, extra):
    """An adapter saved for sequence classification (task_type SEQ_CLS, or a 'score' head among
    modules_to_save) labels texts: generating or scoring text with it is refused, saying so."""
    from npllama.generate import generate
    from npllama.perplexity import perplexity

    model, adapters = adapted_model()
    if extra:
        adapters.extra["score.weight"] = np.zeros((2, model.config.hidden_size))
    adapters.save_adapter(tmp_path / "cls", task_type=task_type)
    adapters.detach()
    with pytest.raises(ValueError, match=r"^adapter '.*cls' is a sequence-classification adapter .*"
                                         r"npllama classify --model BASE --adapter .*cls"):
        load_adapter(model, tmp_path / "cls", task="CAUSAL_LM")
    assert model.lora is None
    load_adapter(model, tmp_path / "cls")            # as load_classifier does: any adapter
    with pytest.raises(ValueError, match="is a sequence-classification adapter"):
        generate(model, [1, 2], 3, temperature=0)

    class Letters:
        bos_id = 1

        def encode(self, text, bos=False):
            return [1] * bos + [2 + ord(c) % 9 for c in text]

    with pytest.raises(ValueError, match="is a sequence-classification adapter"):
        perplexity(model, Letters(), "some text")


def test_a_causal_lm_adapter_is_loaded_for_causal_use(tmp_path):
    from npllama.generate import generate

    model, adapters = adapted_model()
    adapters.save_adapter(tmp_path / "sft")
    expected = generate(model, [1, 2], 3, temperature=0)
    adapters.detach()
    assert load_adapter(model, tmp_path / "sft", task="CAUSAL_LM").task_type == "CAUSAL_LM"
    assert generate(model, [1, 2], 3, temperature=0) == expected
    with pytest.raises(ValueError, match="task must be None or 'CAUSAL_LM'"):
        load_adapter(model, tmp_path / "sft", task="causal")


def test_merging_twice_or_after_detach_is_refused():
    """merge() folds B A into the weights once: a second merge (or one after detach) would add it
    again and change the model without a word."""
    model, adapters = adapted_model(("q_proj", "down_proj"))
    tokens, _ = batch(model.config)
    adapted_logits = model.forward(tokens)
    adapters.merge()
    for again in (adapters.merge, adapters.merge):
        with pytest.raises(ValueError, match=r"not attached to their model \(already merged"):
            again()
    np.testing.assert_allclose(model.forward(tokens), adapted_logits, rtol=1e-12, atol=1e-12)
    other, detached = adapted_model(("v_proj",))
    before = {n: p.copy() for n, p in other.params.items()}
    detached.detach()
    with pytest.raises(ValueError, match="already merged, or detached"):
        detached.merge()
    assert all(np.array_equal(before[n], p) for n, p in other.params.items())


@pytest.mark.parametrize("field, value", [
    ("modules_to_save", ["lm_head"]), ("modules_to_save", ["embed_tokens", "score"]),
    ("trainable_token_indices", [3, 5]), ("alora_invocation_tokens", [7]), ("lora_bias", True),
    ("layer_replication", [[0, 2]]), ("target_parameters", ["mlp.up_proj.weight"]),
    ("use_bdlora", {"nblocks": 2}), ("init_lora_weights", "pissa_niter_4"), ("init_lora_weights", "olora"),
])
def test_load_refuses_peft_fields_that_would_change_the_outputs(tmp_path, field, value):
    """PEFT applies these on loading; ignoring them would give other logits than PEFT's silently."""
    model, adapters = adapted_model(("q_proj",))
    adapters.save_adapter(tmp_path / "a")
    config_path = tmp_path / "a" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), field: value}))
    with pytest.raises(CheckpointError, match=rf"field '{field}': .*(not supported|only a classification head|"
                                              rf"changes the base weights)"):
        load_adapter(base_model(), tmp_path / "a")


def test_load_takes_only_a_classification_head_beside_the_adapters(tmp_path):
    model, adapters = adapted_model(("q_proj",))
    adapters.extra["score.weight"] = np.ones((2, 8))
    adapters.save_adapter(tmp_path / "a", task_type="SEQ_CLS")
    config_path = tmp_path / "a" / "adapter_config.json"
    # PEFT's SEQ_CLS lists both names it knows for a head
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "modules_to_save": ["classifier", "score"]}))
    assert list(load_adapter(base_model(), tmp_path / "a").extra) == ["score.weight"]
    tensors = read_safetensors(tmp_path / "a" / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.weight"] = np.zeros((11, 8))   # a trained LM head the config does not list
    write_safetensors(tmp_path / "a" / "adapter_model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="'base_model.model.lm_head.weight': unexpected"):
        load_adapter(base_model(), tmp_path / "a")


def test_whole_model_gradients_with_dropout_masks_and_tied_embeddings():
    """Training mode (dropout on every adapted projection, MLP ones included) on a tied-embedding
    GQA model: each loss evaluation restarts the dropout generator, so it draws the masks that the
    analytic gradient used."""
    model = Llama(tiny_config(tie_word_embeddings=True), seed=3, dtype=np.float64)
    rng = np.random.default_rng(4)
    for p in model.params.values():
        p += (0.3 if p.ndim == 1 else 0.2) * rng.standard_normal(p.shape)
    adapters = attach_lora(model, r=2, lora_alpha=3.0, lora_dropout=0.3, target_modules=ALL_TARGETS, seed=5)
    for p in adapters.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    adapters.training = True
    start = adapters.dropout_state
    tokens, targets = batch(model.config)

    def loss(*_):
        adapters.dropout_state = start
        return model.loss(tokens, targets)

    with use_backend("numpy"):
        adapters.dropout_state = start
        _, grads = model.loss_and_grads(tokens, targets)
        reset = loss()
        assert model.loss(tokens, targets) != pytest.approx(reset)   # without the reset: other masks
        report = gradcheck(loss, adapters.params, grads)
    report.raise_if_failed()
    assert report.max_rel_err < 1e-7


def _doubled_act_forward(gate, up):
    from npllama.ops.swiglu import swiglu_act_forward

    act, cache = swiglu_act_forward(gate, up)
    return 2.0 * act, cache


def _doubled_act_backward(dact, cache):
    from npllama.ops.swiglu import swiglu_act_backward

    return swiglu_act_backward(2.0 * dact, cache)


@pytest.mark.parametrize("replaced", ["swiglu_act_forward", "swiglu_act_backward"])
def test_a_pass_keeps_its_silu_gate_override_while_another_context_runs_the_same_adapters(replaced):
    # use_op lives in a ContextVar: a thread without it, running the same adapted model in the
    # middle of this context's pass, must not change which SiLU-gate ops this pass computes with.
    # The interleaving is forced: the first SiLU-gate forward of the overridden pass runs a whole
    # pass in the context from before the override (another thread's), then carries on.
    import contextvars

    from npllama import use_op
    from npllama.ops.swiglu import swiglu_act_backward, swiglu_act_forward

    model, _ = adapted_model(("q_proj", "gate_proj"))   # 2 layers: a SwiGLU after the interruption
    tokens, targets = batch(model.config)
    doubled = {"swiglu_act_forward": _doubled_act_forward, "swiglu_act_backward": _doubled_act_backward}
    ops = {"swiglu_act_forward": swiglu_act_forward, "swiglu_act_backward": swiglu_act_backward,
           replaced: doubled[replaced]}
    other_context, others = None, []

    def act_forward_interrupted(gate, up):
        if not others:
            others.append(other_context.run(model.loss_and_grads, tokens, targets))
        return ops["swiglu_act_forward"](gate, up)

    def pass_with_the_override(act_forward):
        with use_op("swiglu_act_forward", act_forward), use_op("swiglu_act_backward", ops["swiglu_act_backward"]):
            return model.loss_and_grads(tokens, targets)

    with use_backend("numpy"):   # in both contexts: only the override tells them apart
        alone_loss, alone_grads = pass_with_the_override(ops["swiglu_act_forward"])
        reference_loss, _ = model.loss_and_grads(tokens, targets)
        other_context = contextvars.copy_context()
        loss, grads = pass_with_the_override(act_forward_interrupted)
    assert others[0][0] == pytest.approx(reference_loss, rel=1e-12)   # the other context: no override
    assert (alone_loss == pytest.approx(reference_loss, rel=1e-12)) == (replaced == "swiglu_act_backward")
    assert loss == pytest.approx(alone_loss, rel=1e-12)
    for name, grad in alone_grads.items():
        np.testing.assert_allclose(grads[name], grad, rtol=1e-12, atol=1e-15, err_msg=name)


def test_dropout_is_inverted_kept_inputs_are_scaled_by_one_over_keep():
    # PEFT's nn.Dropout: y = x W^T + scaling * ((x * kept / keep) A^T) B^T, so the adapter's
    # output keeps its expected value in training (kept ~ Bernoulli(keep), keep = 1 - p)
    model, adapters = adapted_model(targets=("q_proj",), lora_dropout=0.25)
    module = adapters.modules()[0]
    W = model.params[module + ".weight"]
    A, B = adapters.params[peft_name(module, "lora_A")], adapters.params[peft_name(module, "lora_B")]
    x = np.random.default_rng(1).standard_normal((2, 3, W.shape[1]))
    linear_forward = adapters.op_bindings({})["linear_forward"]   # the adapters' linear, as the model runs it
    adapters.training = True
    state = adapters.dropout_state
    y, _ = linear_forward(x, W)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    kept = rng.random(x.shape) < 0.75
    expected = x @ W.T + adapters.scaling * ((x * kept / 0.75) @ A.T) @ B.T
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_an_adapter_names_its_base_absolute_and_loads_with_it_from_another_folder(small_model_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    # PEFT records base_model_name_or_path as given, and AutoPeftModel reads it from the working
    # directory: a relative --base would name another folder (or none) wherever the adapter is used
    # next.  npllama records the folder absolute, and --adapter without --model loads that base,
    # not the latest run's model (which need not be the one the adapter was trained on)
    import shutil

    from npllama.cli import main
    from npllama.finetune import SFTConfig, sft

    there, elsewhere = tmp_path / "there", tmp_path / "elsewhere"
    there.mkdir(), elsewhere.mkdir()
    shutil.copytree(small_model_dir, there / "base")
    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "no-runs"))   # no latest run to fall back on
    monkeypatch.chdir(there)
    with use_backend("numpy"):
        sft(SFTConfig(base="base", out=str(tmp_path / "adapter"), lora=True, lora_r=2, steps=1, batch_size=2,
                      max_len=56, samples=0, progress=False), echo=lambda *_: None)
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert config["base_model_name_or_path"] == str((there / "base").resolve())
    monkeypatch.chdir(elsewhere)
    argv = ["generate", "--adapter", str(tmp_path / "adapter"), "--prompt", "Once", "--max-new-tokens", "2",
            "--backend", "numpy"]
    assert main(argv) == 0
    # which base it runs is said (on stderr, apart from the text): the latest run is not it
    assert f"base model: {(there / 'base').resolve()} (named by the adapter" in capsys.readouterr().err
    # an adapter an older npllama saved, naming its base relative to a folder unknown here: refused,
    # saying where the base comes from
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "base"}))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'base'" in err and "base_model_name_or_path" in err and "--model" in err and len(err.splitlines()) == 1
    assert main([*argv, "--model", str(there / "base")]) == 0


@pytest.mark.parametrize("recorded, said", [
    # a Hub name, as PEFT records a base it downloaded: npllama reads local folders only
    ("meta-llama/Llama-2-7b-hf", "a Hugging Face Hub name: npllama reads local folders; download it "
                                 "(`huggingface-cli download meta-llama/Llama-2-7b-hf --local-dir DIR`)"),
    # a path relative to the folder an older npllama (or PEFT) fine-tuned in
    ("./models/base", "a path relative to the folder the fine-tune ran in"),
    # absolute on the machine it was fine-tuned on, Windows' too: not "relative"
    ("/home/someone/models/base", "an absolute path on the machine it was fine-tuned on"),
    ("C:\\Users\\someone\\base", "an absolute path on the machine it was fine-tuned on"),
])
def test_an_adapter_naming_a_base_that_is_no_folder_here_says_what_the_name_is(tmp_path, monkeypatch, recorded,
                                                                               said):
    from npllama.lora import base_of_adapter

    monkeypatch.chdir(tmp_path)
    adapted_model()[1].save_adapter(tmp_path / "adapter", base_model_name_or_path=recorded)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == recorded     # no folder here: kept as given, as PEFT keeps it
    with pytest.raises(ValueError) as refused:
        base_of_adapter(tmp_path / "adapter", "--model")
    message = str(refused.value)
    assert repr(recorded) in message and said in message and message.endswith("with --model"), message
    assert ("relative" in message) == ("absolute" not in said), message   # (a Hub name may be a path too)


def test_an_adapter_folder_that_is_none_given_without_model_says_so_not_no_trained_model(tmp_path, monkeypatch,
                                                                                          capsys):
    # --adapter alone takes its base from the adapter: a mistyped or empty adapter folder was passed
    # over, and the latest run was loaded instead -- or, without one, "no trained model found; run
    # `npllama train` first", which is not what is wrong
    from npllama.cli import main

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "no-runs"))
    (tmp_path / "empty").mkdir()
    for adapter in (tmp_path / "empty", tmp_path / "mistyped"):
        for command in ADAPTER_COMMANDS:
            assert main([*adapter_command(command, tmp_path), "--adapter", str(adapter)]) == 2
            err = capsys.readouterr().err
            assert f"{adapter / 'adapter_config.json'} does not exist" in err and "no trained model" not in err, err



# Every command that takes --adapter, as a run quick on a tiny model (chat reads one line from stdin;
# TEXT: a short text file).  test_every_command_that_takes_adapter_is_here keeps the list whole.
ADAPTER_COMMANDS = {
    "generate": ["generate", "--prompt", "Once", "--max-new-tokens", "1", "--backend", "numpy"],
    "chat": ["chat", "--max-new-tokens", "1", "--backend", "numpy"],
    "classify": ["classify", "--text", "a good day", "--backend", "numpy"],
    "eval choice": ["eval", "choice", "--limit", "1", "--no-progress", "--backend", "numpy"],
    "eval perplexity": ["eval", "perplexity", "--data", "TEXT", "--context", "8", "--no-progress",
                        "--backend", "numpy"],
    "debug compare": ["debug", "compare", "--tokens", "1,2", "--against", "float64"],
    "debug trace": ["debug", "trace", "--tokens", "1,2", "--backend", "numpy"],
}


def adapter_command(command: str, tmp_path) -> list[str]:
    """ADAPTER_COMMANDS[command], its TEXT a file written in tmp_path."""
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time there was a good day. " * 4, encoding="utf-8")
    return [str(text) if arg == "TEXT" else arg for arg in ADAPTER_COMMANDS[command]]


def test_every_command_that_takes_adapter_is_here():
    from npllama.cli import build_parser

    from .test_cli_help import all_parsers

    taking = {name.removeprefix("npllama ") for name, parser in all_parsers(build_parser())
              if any("--adapter" in action.option_strings for action in parser._actions)}
    assert taking == set(ADAPTER_COMMANDS)


@pytest.mark.parametrize("command", ADAPTER_COMMANDS)
def test_adapter_alone_runs_the_base_it_names_and_says_so_or_asks_for_model(command, small_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    # every command given --adapter without --model loads the base the adapter records (not the
    # latest run: there is none here), and says on stderr which base runs, in the same words; a
    # recorded base that is no folder here is refused in one line naming --model, the way to give it
    import io

    from npllama.cli import main

    monkeypatch.setenv("NPLLAMA_RUNS", str(tmp_path / "no-runs"))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    model = Llama.from_pretrained(small_model_dir)
    adapters = attach_lora(model, r=2)
    task_type = "CAUSAL_LM"
    if command == "classify":   # a sequence-classification adapter: its head saved beside it
        adapters.extra["score.weight"] = np.zeros((2, model.config.hidden_size), np.float32)
        task_type = "SEQ_CLS"
    adapters.save_adapter(tmp_path / "adapter", str(small_model_dir), task_type=task_type)
    argv = [*adapter_command(command, tmp_path), "--adapter", str(tmp_path / "adapter")]
    assert main(argv) == 0, capsys.readouterr().err
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("base model:")]
    assert said == [f"base model: {small_model_dir.resolve()} (named by the adapter's adapter_config.json; "
                    f"give --model for another)"]
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(config_path.read_text().replace(str(small_model_dir.resolve()), str(tmp_path / "gone")))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and repr(str(tmp_path / "gone")) in err, err
    assert err.rstrip().endswith("which is not a folder here: give that base model with --model"), err


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_a_model_whose_adapters_ran_is_freed_once_nothing_refers_to_it(backend_name):
    # backend.bind keeps the op sets it re-bound (at most 64, for every model in the process): the
    # LoRA ops among them must not keep their adapters, and so the adapted model and its weights,
    # alive after the caller has dropped them (a loop loading one base model after another)
    import gc
    import weakref

    model, adapters = adapted_model(("q_proj", "gate_proj"))
    tokens, targets = batch(model.config)
    with use_backend(backend_name):
        model.loss_and_grads(tokens, targets)
        model.forward(tokens)
    weight = weakref.ref(model.params["model.layers.0.mlp.down_proj.weight"])
    adapters.detach()
    del model, adapters
    gc.collect()
    assert weight() is None


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_the_adapters_follow_base_weights_replaced_by_new_arrays(backend_name):
    # the ops a call binds find the adapted weights by their ids: weights assigned anew
    # (model.params[name] = ...) are still adapted, whether the old arrays are kept (other ids) or
    # freed (their addresses, and so ids, may be handed to the new ones: same numbers)
    import gc

    model, adapters = adapted_model(("q_proj", "gate_proj", "down_proj"))
    tokens, targets = batch(model.config)
    with use_backend(backend_name):
        loss, grads = model.loss_and_grads(tokens, targets)
        kept = dict(model.params)
        for round_ in range(4):
            for name in list(model.params):
                model.params[name] = model.params[name].copy()
            if round_:
                gc.collect()   # the previous round's arrays are freed
            again, again_grads = model.loss_and_grads(tokens, targets)
            assert again == loss, round_
            for name, grad in grads.items():
                np.testing.assert_array_equal(again_grads[name], grad, err_msg=name)
    del kept


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_an_adapted_model_reuses_its_re_bound_code_from_call_to_call(backend_name):
    # the adapters hand out the same ops for the same weights (LoraAdapters.op_bindings), so
    # backend.bind re-binds the model's code once, not at every step (and evicts nothing else)
    model, _ = adapted_model(("q_proj", "gate_proj"))
    with use_backend(backend_name):
        assert model._math() is model._math()


def test_adapters_with_per_module_settings_have_a_scaling_per_module_and_no_single_one():
    """`modules` gives each projection its own r and alpha (a PEFT rank_pattern): `scalings` holds
    each module's alpha / r; `scaling`, one number for all, is refused rather than one of them."""
    model = base_model()
    q0, v1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"
    adapters = LoraAdapters(model, r=2, lora_alpha=4, modules={q0: (2, 4), v1: (4, 2)})
    assert adapters.modules() == [q0, v1] and adapters.scalings == {q0: 2.0, v1: 0.5}
    assert adapters.params[peft_name(v1, "lora_A")].shape == (4, 8) and not adapters.is_uniform()
    with pytest.raises(ValueError, match=r"scale their modules differently .*adapters.scalings\[module\]"):
        adapters.scaling
    same = LoraAdapters(base_model(), r=2, lora_alpha=4, modules={q0: (2, 4), v1: (2, 4)})
    assert same.scaling == 2.0


def test_the_models_repr_gives_the_ranks_its_adapters_have():
    """A PEFT adapter with rank_pattern has ranks by module: repr says their range, not the config's
    default r, which no module may have."""
    model = base_model()
    assert "LoRA" not in repr(model)
    attach_lora(model, r=3)
    assert repr(model).endswith(", float64, LoRA r=3)")
    model.lora.detach()
    model = base_model()
    model.lora = LoraAdapters(model, r=8, modules={"model.layers.0.self_attn.q_proj": (2, 4.0),
                                                   "model.layers.1.self_attn.v_proj": (4, 4.0)})
    assert repr(model).endswith(", float64, LoRA r=2..4 by module)")
