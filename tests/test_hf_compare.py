"""npllama against transformers.LlamaForCausalLM: same folder, same logits, same gradients.

Optional: skipped unless torch and transformers are installed (`pip install -e '.[compare]'`,
with `pip install torch==2.13.0` for the local CPU wheel).

Stock transformers runs RMSNorm, the RoPE tables and eager softmax in float32 even after
`.double()`.  The float64 comparison therefore swaps those three pieces of the torch model for
float64 versions (eager attention with its softmax in float64, a float64 RMSNorm, float64 cos/sin
from our inv_freq, once checked against transformers' own to float32 precision) so that what
remains compared is the whole computation at float64 precision.
"""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from npllama import Llama, use_backend  # noqa: E402
from npllama.debug import float64_faithful  # noqa: E402
from npllama.gradcheck import rel_error  # noqa: E402
from npllama.io import CheckpointError, write_safetensors  # noqa: E402

PAD_ID = 3  # in every batch (see batch), for the pad_token case
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}

CASES = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mqa_tied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    "llama3_rope": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                        rope_scaling=LLAMA3_SCALING),
    # head_dim given, not hidden_size / heads (32 / 4 = 8); position interpolation
    "head_dim_linear_rope": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                 rope_scaling={"rope_type": "linear", "factor": 4.0}),
    # rms_norm_eps far from the default (1e-5) and a small rope_theta, so that either one not
    # read from config.json shows in the logits
    "theta_eps": dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=500.0, rms_norm_eps=0.1),
    # fields transformers accepts that change nothing in LLaMA's math: "swish" is torch's SiLU;
    # pretraining_tp only split the matmuls in transformers 4.x (5.x ignores it)
    "swish_tp_mqa": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=6, hidden_act="swish",
                         pretraining_tp=2),
    # dynamic NTK scaling: plain RoPE up to max_position_embeddings (64 > SEQ_LEN), past which
    # transformers raises rope_theta and npllama refuses to run
    "dynamic_rope": dict(num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"rope_type": "dynamic", "factor": 3.0}),
    # transformers' table is nn.Embedding(padding_idx=pad_token_id): no lookup gradient to that row
    "pad_token_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                           pad_token_id=PAD_ID),
}
SEQ_LEN = 40  # past original_max_position_embeddings (16) in the llama3 case


def hf_config(case):
    fields = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_theta=10000.0)
    fields.update(CASES[case])
    scaling = fields.pop("rope_scaling", None)
    theta = fields.pop("rope_theta")
    rope_parameters = {"rope_type": "default", "rope_theta": theta, **(scaling or {})}
    try:  # transformers 5.x
        return transformers.LlamaConfig(**fields, rope_parameters=rope_parameters,
                                        attn_implementation="eager")
    except TypeError:  # transformers 4.x
        return transformers.LlamaConfig(**fields, rope_theta=theta, rope_scaling=scaling,
                                        attn_implementation="eager")


@pytest.fixture(scope="module", params=list(CASES))
def hf_folder(request, tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config(request.param))
    with torch.no_grad():  # norms start at 1; move them so their gradients matter
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path, safe_serialization=True)
    return path


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(2, SEQ_LEN))
    tokens[:, ::9] = PAD_ID
    targets = rng.integers(0, vocab, size=(2, SEQ_LEN))
    targets[0, :7] = -100
    return tokens, targets


def torch_logits_and_grads(hf_model, tokens, targets):
    hf_model.zero_grad()
    logits = hf_model(torch.from_numpy(tokens)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(targets).reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {name: p.grad.detach().numpy() for name, p in hf_model.named_parameters()}
    return logits.detach().numpy(), float(loss.detach()), grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folder_written_by_transformers_gives_same_logits_and_gradients(hf_folder, dtype):
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    hf_model = transformers.LlamaForCausalLM.from_pretrained(hf_folder, attn_implementation="eager").to(torch_dtype)
    ours = Llama.from_pretrained(hf_folder, dtype=dtype)
    if dtype == np.float64:
        assert float64_faithful(hf_model, ours.config) == []   # no note: the RoPE frequencies agree
    tokens, targets = batch(ours.config.vocab_size)
    torch_logits, torch_loss, torch_grads = torch_logits_and_grads(hf_model, tokens, targets)

    tol = 1e-5 if dtype == np.float32 else 1e-12
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            logits = ours.forward(tokens)
            loss, grads = ours.loss_and_grads(tokens, targets)
        assert logits.dtype == dtype
        assert rel_error(logits, torch_logits) < tol
        assert loss == pytest.approx(torch_loss, rel=tol)
        assert set(grads) == set(torch_grads)
        for name, g in grads.items():
            assert rel_error(g, torch_grads[name]) < 10 * tol, name


def test_folder_written_by_npllama_loads_in_transformers(hf_folder, tmp_path):
    ours = Llama.from_pretrained(hf_folder, dtype=np.float32)
    ours.save_pretrained(tmp_path / "saved")
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "saved", attn_implementation="eager")
    tokens, _ = batch(ours.config.vocab_size, seed=1)
    with torch.no_grad():
        torch_logits = hf_model(torch.from_numpy(tokens)).logits.numpy()
    assert rel_error(ours.forward(tokens), torch_logits) < 1e-5
    assert hf_model.config.tie_word_embeddings == ours.config.tie_word_embeddings


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_precision_shards_with_a_transformers_4_config_load_as_transformers_reads_them(tmp_path, half):
    """transformers writes bfloat16 (or float16) shards and an index; config.json rewritten as
    transformers 4.x wrote it (rope_theta, rope_scaling with "type", torch_dtype).  Every tensor loads
    exactly as transformers itself reads it, and the config is the one the 5.x layout gives."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config("llama3_rope")).to(getattr(torch, half))
    model.save_pretrained(tmp_path / "v5", max_shard_size="20KB")
    assert (tmp_path / "v5" / "model.safetensors.index.json").is_file()
    shutil.copytree(tmp_path / "v5", tmp_path / "v4")
    fields = json.loads((tmp_path / "v4" / "config.json").read_text())
    rope = fields.pop("rope_parameters")
    fields.update(rope_theta=rope.pop("rope_theta"), torch_dtype=fields.pop("dtype"),
                  rope_scaling={"type": rope.pop("rope_type"), **rope})
    (tmp_path / "v4" / "config.json").write_text(json.dumps(fields))
    reference = {n: t.double().numpy() for n, t in model.state_dict().items()}
    v5, v4 = Llama.from_pretrained(tmp_path / "v5", dtype=np.float64), Llama.from_pretrained(tmp_path / "v4", dtype=np.float64)
    assert v4.config == v5.config and v5.config.rope_scaling["rope_type"] == "llama3"
    assert set(v4.params) == set(reference)
    for name, array in v4.params.items():
        np.testing.assert_array_equal(array, reference[name], err_msg=name)


LINEAR = {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("rope_fields", [
    # a 5.x config with a 4.x rope_scaling added by hand (as older guides say): rope_scaling is
    # taken whole, rope_theta from the top level (or 10000), whatever rope_parameters says
    dict(rope_parameters={"rope_type": "default", "rope_theta": 100.0}, rope_scaling=LLAMA3_SCALING),
    dict(rope_parameters={"rope_type": "default", "rope_theta": 100.0}, rope_scaling=LLAMA3_SCALING, rope_theta=7.0),
    dict(rope_parameters={**LINEAR, "rope_theta": 100.0}, rope_scaling=LLAMA3_SCALING),
    # without rope_scaling, rope_parameters' own rope_theta over the top level's, else the top level's
    dict(rope_parameters={**LINEAR, "rope_theta": 100.0}, rope_theta=7.0),
    dict(rope_parameters=LINEAR, rope_theta=7.0),
    dict(rope_parameters={**LINEAR, "rope_theta": 100.0}, rope_scaling=None),
    dict(rope_parameters={"rope_theta": 100.0}, rope_scaling={}),
])
def test_rope_fields_are_read_as_transformers_reads_them(tmp_path, rope_fields):
    """A config.json may hold rope_scaling and rope_parameters both, and a rope_theta beside them;
    npllama takes from them the RoPE transformers builds (a wrong pick is a silently different
    model: the wrong theta or scaling)."""
    from npllama.io.hf import read_config

    fields = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=97, hidden_size=32,
                  intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64,
                  **json.loads(json.dumps(rope_fields)))   # (transformers fills in the dicts it is given)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    theirs = dict(transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters)
    ours = read_config(tmp_path / "config.json")
    assert ours.rope_theta == theirs.pop("rope_theta")
    theirs.pop("type", None)
    if theirs["rope_type"] == "default":
        assert ours.rope_scaling is None
    else:
        assert ours.rope_scaling == theirs


def test_dynamic_rope_is_plain_rope_up_to_the_context_and_refused_past_it(tmp_path):
    """transformers' dynamic NTK scaling changes nothing up to max_position_embeddings (16 here) and
    raises rope_theta past it; npllama agrees up to it and runs nothing longer."""
    fields = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                  max_position_embeddings=16, attn_implementation="eager")
    models = {}
    for rope_type in ("dynamic", "default"):
        torch.manual_seed(0)
        models[rope_type] = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **fields, rope_parameters={"rope_type": rope_type, "factor": 4.0, "rope_theta": 10000.0})).double()
        with torch.no_grad():   # weights large enough that attention, and so RoPE, shows in the logits
            for p in models[rope_type].parameters():
                p.mul_(5.0)
    models["dynamic"].save_pretrained(tmp_path)
    ours = Llama.from_pretrained(tmp_path, dtype=np.float64)
    assert ours.config.rope_scaling["rope_type"] == "dynamic"
    tokens = np.random.default_rng(0).integers(0, 97, size=(1, 17))
    with torch.no_grad():
        within = models["dynamic"](torch.from_numpy(tokens[:, :16])).logits.numpy()
        past, plain_past = (models[t](torch.from_numpy(tokens)).logits.numpy() for t in ("dynamic", "default"))
    assert rel_error(ours.forward(tokens[:, :16]), within) < 1e-6   # (transformers' RoPE tables are float32)
    assert rel_error(past, plain_past) > 1e-3   # past the context the scaling is there
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours.forward(tokens)


def test_a_top_level_original_max_position_embeddings_is_refused_where_transformers_versions_disagree(tmp_path):
    """transformers 5.x lets a top-level original_max_position_embeddings override LLaMA-3 scaling's own
    (4.x reads only the scaling's): npllama refuses such a file when the two differ, and reads it when
    they agree, as transformers does."""
    from npllama.io.hf import read_config
    from npllama.ops.rope import rope_inv_freq

    fields = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=4, max_position_embeddings=64, rope_scaling=LLAMA3_SCALING)
    original = LLAMA3_SCALING["original_max_position_embeddings"]
    for top_level in (original // 2, original):
        (tmp_path / "config.json").write_text(json.dumps({**fields, "original_max_position_embeddings": top_level}))
        theirs = transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(tmp_path)).model.rotary_emb
        with_top_level = rope_inv_freq(8, 10000.0, {**LLAMA3_SCALING, "original_max_position_embeddings": top_level})
        assert rel_error(with_top_level, theirs.inv_freq.double().numpy()) < 1e-6   # 5.x: the top-level value
        if top_level != original:
            assert rel_error(with_top_level, rope_inv_freq(8, 10000.0, LLAMA3_SCALING)) > 1e-2   # (a real change)
            with pytest.raises(CheckpointError, match="original_max_position_embeddings"):
                read_config(tmp_path / "config.json")
        else:
            assert read_config(tmp_path / "config.json").rope_scaling == LLAMA3_SCALING


def transformers_folder(path, rope_parameters, edit_config):
    """A tiny LlamaForCausalLM saved by transformers (its weights large enough that RoPE shows in the
    logits), its config.json then edited by `edit_config` as a hand-written or older file would be."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_parameters=rope_parameters))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    model.save_pretrained(path)
    fields = json.loads((path / "config.json").read_text())
    edit_config(fields)
    (path / "config.json").write_text(json.dumps(fields))
    return path


def transformers_logits(folder, tokens):
    hf_model = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").float()
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens)).logits.numpy()


LLAMA3_WITHOUT_CONTEXT = {k: v for k, v in LLAMA3_SCALING.items() if k != "original_max_position_embeddings"}
PLAIN_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("rope_parameters, edit_config", [
    # transformers accepts initializer_range in [0, 1]; it only sets a fresh model's spread
    (PLAIN_ROPE, lambda fields: fields.update(initializer_range=0.0)),
    # LLaMA-3 scaling without its original context: transformers 5 takes max_position_embeddings (64),
    # or the top-level original_max_position_embeddings when there is one
    ({**LLAMA3_WITHOUT_CONTEXT, "rope_theta": 500.0},
     lambda fields: fields["rope_parameters"].pop("original_max_position_embeddings")),
    ({**LLAMA3_WITHOUT_CONTEXT, "rope_theta": 500.0},
     lambda fields: (fields["rope_parameters"].pop("original_max_position_embeddings"),
                     fields.update(original_max_position_embeddings=8))),
    # partial_rotary_factor beside plain RoPE: transformers 5's LlamaRotaryEmbedding rotates the whole head
    (PLAIN_ROPE, lambda fields: fields.update(partial_rotary_factor=0.5)),
])
def test_fields_transformers_reads_give_its_logits_and_gradients(tmp_path, rope_parameters, edit_config):
    folder = transformers_folder(tmp_path, rope_parameters, edit_config)
    tokens, targets = (np.random.default_rng(seed).integers(0, 97, size=(2, 24)) for seed in (0, 1))
    hf_model = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").float()
    torch_logits, torch_loss, torch_grads = torch_logits_and_grads(hf_model, tokens, targets)
    ours = Llama.from_pretrained(folder, dtype=np.float32)
    assert rel_error(ours.forward(tokens), torch_logits) < 1e-5
    loss, grads = ours.loss_and_grads(tokens, targets)
    assert loss == pytest.approx(torch_loss, rel=1e-5)
    for name, g in grads.items():
        assert rel_error(g, torch_grads[name]) < 1e-4, name


@pytest.mark.parametrize("rope_parameters, edit_config", [
    ({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
     lambda fields: fields["rope_parameters"].update(partial_rotary_factor=0.5)),
    ({**LLAMA3_SCALING, "rope_theta": 500.0}, lambda fields: fields.update(partial_rotary_factor=0.5)),
])
def test_a_partial_rotary_factor_transformers_cannot_run_is_refused_by_name(tmp_path, rope_parameters, edit_config):
    """With scaled RoPE, transformers builds tables for head_dim * partial_rotary_factor dimensions and then
    fails to apply them to the whole head; npllama refuses the file naming the field, instead of running
    full-head RoPE the file does not describe."""
    folder = transformers_folder(tmp_path, rope_parameters, edit_config)
    tokens = np.random.default_rng(0).integers(0, 97, size=(1, 8))
    with pytest.raises(RuntimeError, match="size of tensor"):
        transformers_logits(folder, tokens)
    with pytest.raises(CheckpointError, match="partial_rotary_factor must be 1"):
        Llama.from_pretrained(folder)


def test_a_partial_rotary_factor_transformers_runs_with_other_frequencies_is_refused_by_name(tmp_path):
    """0.99 of a head of 8 is 7 dimensions: transformers' tables then fit its heads, but with frequencies
    computed over 7 dimensions, a RoPE other than LLaMA's (the logits differ from the same model's without
    the field); npllama refuses the file, as it refuses the values whose tables do not fit."""
    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    tokens = np.random.default_rng(0).integers(0, 97, size=(1, 16))
    whole_head = transformers_logits(transformers_folder(tmp_path / "whole", linear, lambda fields: None), tokens)
    folder = transformers_folder(tmp_path / "part", linear,
                                 lambda fields: fields["rope_parameters"].update(partial_rotary_factor=0.99))
    assert rel_error(transformers_logits(folder, tokens), whole_head) > 1e-3
    with pytest.raises(CheckpointError, match=r"partial_rotary_factor must be 1 .* got 0.99: .* int\(head_dim"):
        Llama.from_pretrained(folder)


def test_head_dim_given_with_a_hidden_size_heads_do_not_divide_runs_as_transformers_4_built_it(tmp_path):
    """hidden_size 30 is no multiple of 4 heads; head_dim 8 says each head's size, so the projections are
    q (4 * 8, 30), k and v (2 * 8, 30), o (30, 4 * 8).  transformers 4.x built that model; 5.x refuses the
    config (validate_architecture), but its modules still take the sizes from the config, so the same
    model is built from a config made with a hidden size the heads divide and then given 30.  npllama
    loads such a folder (written as 4.x wrote it) with the shapes above and transformers' logits, loss and
    gradients, to float32 and float64 precision."""
    fields = dict(vocab_size=97, hidden_size=30, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, rope_theta=500.0)
    torch.manual_seed(0)
    try:   # transformers 4.x
        hf_cfg = transformers.LlamaConfig(**fields, attn_implementation="eager")
    except Exception as refusal:   # 5.x: "hidden size (30) is not a multiple of the number of attention heads"
        if "not a multiple" not in str(refusal):
            raise
        hf_cfg = transformers.LlamaConfig(**{**fields, "hidden_size": 32}, attn_implementation="eager")
        hf_cfg.hidden_size = 30
    hf_model = transformers.LlamaForCausalLM(hf_cfg)
    with torch.no_grad():   # norms away from 1 and weights large enough that attention shows in the logits
        for p in hf_model.parameters():
            p.add_(0.3 * torch.randn_like(p)) if p.ndim == 1 else p.mul_(3.0)
    reference = {name: t.detach().numpy().copy() for name, t in hf_model.state_dict().items()}
    hand_computed = {"self_attn.q_proj.weight": (32, 30), "self_attn.k_proj.weight": (16, 30),
                     "self_attn.v_proj.weight": (16, 30), "self_attn.o_proj.weight": (30, 32)}
    for suffix, shape in hand_computed.items():
        assert reference[f"model.layers.0.{suffix}"].shape == shape, suffix   # transformers' model is 4.x's
    (tmp_path / "config.json").write_text(json.dumps({   # as transformers 4.x wrote it
        **fields, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}))
    write_safetensors(tmp_path / "model.safetensors", reference, metadata={"format": "pt"})

    tokens, targets = batch(97)
    for dtype, torch_dtype, tol in ((np.float32, torch.float32, 1e-5), (np.float64, torch.float64, 1e-12)):
        ours = Llama.from_pretrained(tmp_path, dtype=dtype)
        for suffix, shape in hand_computed.items():
            assert ours.params[f"model.layers.0.{suffix}"].shape == shape, suffix
        model = hf_model.to(torch_dtype)
        if dtype == np.float64:
            assert float64_faithful(model, ours.config) == []
        torch_logits, torch_loss, torch_grads = torch_logits_and_grads(model, tokens, targets)
        assert rel_error(ours.forward(tokens), torch_logits) < tol
        loss, grads = ours.loss_and_grads(tokens, targets)
        assert loss == pytest.approx(torch_loss, rel=tol)
        assert set(grads) == set(torch_grads)
        for name, g in grads.items():
            assert rel_error(g, torch_grads[name]) < 10 * tol, name


def test_a_padded_batch_gives_transformers_logits_loss_and_gradients(tmp_path):
    """attention_mask (a row padded on the left, one on the right): at the real positions the logits,
    and the loss over real targets with every gradient, are transformers' with the same mask, in float64."""
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(hf_config("gqa")).save_pretrained(tmp_path)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").double()
    ours = Llama.from_pretrained(tmp_path, dtype=np.float64)
    assert float64_faithful(hf_model, ours.config) == []
    tokens, targets = batch(ours.config.vocab_size)
    mask = np.ones_like(tokens)
    mask[0, -5:] = 0
    mask[1, :6] = 0
    targets[mask == 0] = -100
    hf_model.zero_grad()
    logits = hf_model(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(targets).reshape(-1), ignore_index=-100)
    loss.backward()
    real = mask == 1
    for backend in ("numpy", "numba"):
        with use_backend(backend):
            ours_logits = ours.forward(tokens, attention_mask=mask)
            ours_loss, grads = ours.loss_and_grads(tokens, targets, attention_mask=mask)
        assert rel_error(ours_logits[real], logits.detach().numpy()[real]) < 1e-12
        assert ours_loss == pytest.approx(float(loss), rel=1e-12)
        for name, p in hf_model.named_parameters():
            assert rel_error(grads[name], p.grad.numpy()) < 1e-11, name
