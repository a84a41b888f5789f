"""Every fine-tuning objective on bases that differ in the config settings a Hugging Face LLaMA
checkpoint can have.

LoRA training once crashed on any base whose config.json set pad_token_id -- a bug that lived for
many sessions because nothing fine-tuned a base with that setting.  So this matrix crosses the
settings (pad_token_id unset, distinct, equal to eos or bos; tied embeddings; grouped-query or
plain attention; an explicit head_dim != hidden_size / heads; llama3 rope scaling;
attention_dropout; an embedding padded past the tokenizer; a tokenizer with or without a pad
piece) with the objectives (next-token, classification on a causal and on a masked-LM base, SFT,
masked-LM, masked-LM + sentence order) and what is trained (every weight, LoRA on the attention,
LoRA on o_proj and the MLP).

* In Python (float64, tiny): a few steps of the fine-tuning loop (npllama.finetune.run_steps) must
  lower the loss, and the gradient of what is trained must pass npllama.gradcheck.
* End to end (float32, the default backend): the jobs `classify`, `sft`, `sop` and `train`
  (causal and masked-LM, from the base) on saved bases, each a couple of steps.
"""
import json

import numpy as np
import pytest

from npllama import Llama, LlamaConfig, gradcheck, use_backend
from npllama import datasets
from npllama.finetune import (SCORE, ClassifyConfig, SequenceClassifier, SFTConfig, StepConfig, classify, run_steps,
                              sft, sft_batch)
from npllama.finetune_sop import SentenceOrderConfig, sentence_order
from npllama.lora import MLP_TARGETS, PARENT, peft_name
from npllama.objectives import (IGNORE_INDEX, SOP_HEAD, SentenceOrderBatch, init_sop_head, mlm_loss_and_grads,
                                mlm_sop_loss_and_grads, pad_batch)
from npllama.tokenizer import Tokenizer
from npllama.train import TrainConfig, train

from .test_lora import adapted_model, base_model

LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8)

# config.json settings, on top of test_lora.tiny_config (vocab 11, hidden 8, 4 heads, 2 kv heads:
# grouped-query already; bos 1, eos 2).  Ids 0-2 are <unk>, <s>, </s>.
CONFIGS = {
    "plain": {},
    "no_gqa": dict(num_key_value_heads=4),
    "pad_distinct": dict(pad_token_id=0),               # <unk>, as LLaMA-1 conversions set it
    "pad_is_eos": dict(pad_token_id=2),
    "pad_is_bos": dict(pad_token_id=1),
    "tied": dict(tie_word_embeddings=True),
    "tied_pad_is_eos": dict(tie_word_embeddings=True, pad_token_id=2),
    "head_dim": dict(head_dim=4),                       # 4 heads of 4 = 16 != hidden_size 8
    "llama3_rope": dict(rope_scaling=LLAMA3_ROPE),
    # attention_dropout: carried in config.json, npllama runs none (so no setting of its own here)
    "everything": dict(pad_token_id=2, tie_word_embeddings=True, num_key_value_heads=1, head_dim=4,
                       rope_scaling=LLAMA3_ROPE, attention_dropout=0.1),
}
TRAINED = {"full": None, "lora_attention": ("q_proj", "v_proj"), "lora_o_and_mlp": ("o_proj",) + MLP_TARGETS}
# classify_mlm: the classifier on a masked-LM base, which runs bidirectionally (SequenceClassifier.causal)
OBJECTIVES = ("causal", "classify", "classify_mlm", "sft", "mlm", "mlm_sop")


def batch_of_texts(config, pairs: bool = False):
    """Two texts, the second padded: right-padded with the config's pad_token_id, else </s> (as
    pad_id_of pads for a tokenizer without a pad piece).

    The texts are ordinary ids (3 and up): in the causal stack no real token may be the pad id, as
    transformers' convention gives the pad row of the embedding no gradient from its lookups
    (npllama.model.decoder_backward), which a finite difference would disagree with by design.
    pairs: `<s> A </s> B </s>` as sentence-order pairs are, each with a <unk> (the [MASK]), for the
    bidirectional stack, where every row -- the pad id's too -- trains."""
    rng = np.random.default_rng(0)
    texts = [list(rng.integers(3, config.vocab_size, 6)), list(rng.integers(3, config.vocab_size, 4))]
    if pairs:
        texts = [[1, *ids[:2], 2, 0, *ids[2:], 2] for ids in texts]
    pad_id = config.eos_token_id if config.pad_token_id is None else config.pad_token_id
    tokens, mask = pad_batch(texts, pad_id)
    return texts, tokens, mask, pad_id


def objective(name, model):
    """(the trained arrays {name: array}, loss_and_grads() -> (loss, grads)) of one objective on `model`."""
    texts, tokens, mask, pad_id = batch_of_texts(model.config, pairs=name in ("classify_mlm", "mlm", "mlm_sop"))
    trained = dict(model.lora.params if model.lora is not None else model.params)
    if name == "causal":
        targets = np.where(mask, np.roll(tokens, -1, axis=1), IGNORE_INDEX)
        return trained, lambda: model.loss_and_grads(tokens, targets, mask)
    if name.startswith("classify"):
        if name == "classify_mlm":   # a masked-LM base (npllama train --objective mlm)
            model.objective = "mlm"
        classifier = SequenceClassifier(model, ["a", "b", "c"], pad_id=pad_id)
        classifier.score_weight += np.random.default_rng(1).standard_normal(classifier.score_weight.shape)
        return classifier.params, lambda: classifier.loss_and_grads(tokens, mask, np.array([2, 0]))
    if name == "sft":   # the response is each text's second half
        examples = [(ids, [i >= len(ids) // 2 for i in range(len(ids))]) for ids in texts]
        return trained, lambda: model.loss_and_grads(*sft_batch(examples, pad_id))
    targets = np.where(mask & (tokens > 2) & (np.arange(tokens.shape[1]) % 2 == 1), tokens, IGNORE_INDEX)
    inputs = np.where(targets != IGNORE_INDEX, 0, tokens)                      # every other ordinary id masked
    if name == "mlm":
        return trained, lambda: mlm_loss_and_grads(model, inputs, targets, mask)
    head = init_sop_head(model.config.hidden_size, dtype=model.dtype, std=1.0)
    batch = SentenceOrderBatch(inputs, targets, mask, np.array([0, 1]))
    return {**trained, SOP_HEAD: head}, lambda: mlm_sop_loss_and_grads(model, head, batch)[:2]


@pytest.mark.parametrize("objective_name", OBJECTIVES)
@pytest.mark.parametrize("trained", TRAINED)
@pytest.mark.parametrize("config", CONFIGS)
def test_each_objective_trains_and_its_gradient_checks_on_each_kind_of_base(config, trained, objective_name):
    targets = TRAINED[trained]
    model = (base_model(**CONFIGS[config]) if targets is None
             else adapted_model(targets, config=CONFIGS[config])[0])
    params, loss_and_grads = objective(objective_name, model)
    with use_backend("numpy"):
        losses = run_steps(params, lambda _: loss_and_grads(), lambda step: None,
                           StepConfig(steps=3, lr=3e-3, warmup_steps=0, progress=False))
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        _, grads = loss_and_grads()
        # what is trained, and nothing else, named from the config and the targets (not from the
        # model's own params, which the gradients are keyed by); each trained array has a gradient
        assert sorted(grads) == sorted(names_trained(model.config, targets, objective_name))
        assert all(grads[n].shape == params[n].shape and np.any(grads[n] != 0) for n in grads), \
            [n for n in grads if not np.any(grads[n] != 0)]
        report = gradcheck_as_one(lambda: loss_and_grads()[0], params, grads)
    report.raise_if_failed()


def names_trained(config, targets, objective_name) -> list[str]:
    """The arrays an objective trains: every weight (a classifier's head in place of the LM head),
    or the adapters of `targets` in every layer; plus the head a classifier or sentence order adds."""
    if targets is None:
        names = [n for n in config.param_shapes()
                 if not (objective_name.startswith("classify") and n == "lm_head.weight")]
    else:
        names = [peft_name(f"model.layers.{i}.{PARENT[t]}.{t}", which) for i in range(config.num_hidden_layers)
                 for t in targets for which in ("lora_A", "lora_B")]
    extra = {"classify": [SCORE], "classify_mlm": [SCORE], "mlm_sop": [SOP_HEAD]}.get(objective_name, [])
    return names + extra


def gradcheck_as_one(loss, params: dict, grads: dict):
    """npllama.gradcheck of every trained array at once, as one vector along random directions: an
    error in any entry moves <gradient, direction> (a few loss evaluations, not a few per array)."""
    names = list(params)
    flat = np.concatenate([params[n].ravel() for n in names])
    starts = np.cumsum([0] + [params[n].size for n in names])

    def put(vector):
        for name, start, end in zip(names, starts, starts[1:]):
            params[name][...] = vector[start:end].reshape(params[name].shape)

    flat_grad = np.concatenate([grads[n].ravel() for n in names])
    report = gradcheck(lambda vector: put(vector) or loss(), [flat], [flat_grad], names=["trained"],
                       method="directional", directions=3)
    put(flat)   # (gradcheck put `flat` back as it was; the arrays too)
    return report


# ----- the jobs, end to end on saved bases ---------------------------------------------------------
# (base name: tokenizer with a pad piece?, config.json settings; "padded_vocab": the embedding has
# rows past the tokenizer, as many checkpoints' do, and its LM head prefers them)
BASES = {
    "llama2_like": (False, {}),
    "pad_is_eos_tied_gqa_head_dim": (False, dict(
        pad_token_id=2, tie_word_embeddings=True, num_key_value_heads=1, head_dim=12, attention_dropout=0.1,
        rope_scaling=dict(LLAMA3_ROPE, original_max_position_embeddings=16))),
    "tokenizer_pad_piece": (True, dict(pad_token_id=3)),
    "padded_vocab_pad_is_unk": (False, dict(pad_token_id=0, padded_vocab=4)),
}
JOBS = ("classify", "classify_lora", "sft", "sft_lora", "sop", "sop_lora", "train", "train_mlm")


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    """Two tokenizers (without and with a pad piece, id 3), and a little data for every job."""
    from npllama.corpus import make_default_corpus

    folder = tmp_path_factory.mktemp("config_matrix")
    texts = make_default_corpus(60, seed=0) + [r["text"] for r in datasets.make_dataset("sentiment", 60)] \
        + [p["prompt"] + " " + p["response"] for p in datasets.make_instructions(40)]
    tokenizers = {pad: Tokenizer.train(texts, folder / f"tok_{pad}", vocab_size=360, **({"pad_id": 3} if pad else {}))
                  for pad in (False, True)}
    assert tokenizers[True].pad_id == 3 and tokenizers[False].pad_id is None
    (folder / "labelled.jsonl").write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                                                   for r in datasets.make_dataset("sentiment", 40)))
    (folder / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in datasets.make_instructions(20)))
    (folder / "stories.txt").write_text("\n\n".join(make_default_corpus(40, seed=1)))
    return folder, tokenizers


def saved_base(folder, tokenizer, settings: dict):
    """A float32 base folder (hidden 16, one layer) with `settings` in its config.json and the tokenizer."""
    settings = dict(settings)
    padding_rows = settings.pop("padded_vocab", 0)
    config = LlamaConfig(**{**dict(vocab_size=tokenizer.vocab_size + padding_rows, hidden_size=16,
                                   intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                   max_position_embeddings=64), **settings})
    model = Llama(config, seed=0)
    if padding_rows:   # the LM head reads hidden[0] > 0 (the embedding's column 0), and only the padding rows weigh it
        model.params["model.embed_tokens.weight"][:, 0] = 3.0
        model.params["model.norm.weight"][1:] = 0.0
        model.params["lm_head.weight"][:, 0] = np.arange(config.vocab_size) >= tokenizer.vocab_size
    model.save_pretrained(folder, extra_files=tokenizer.hf_files())
    return folder


@pytest.mark.filterwarnings("ignore:the model's embedding has .* rows but tokenizer")   # padded_vocab: expected
@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("base_name", BASES)
def test_each_job_runs_on_each_kind_of_saved_base(job_files, tmp_path, base_name, job):
    folder, tokenizers = job_files
    pad_piece, settings = BASES[base_name]
    base = saved_base(tmp_path / "base", tokenizers[pad_piece], settings)
    shared = dict(base=str(base), steps=3, batch_size=4, warmup_steps=0, max_len=48, progress=False,
                  lora=job.endswith("_lora"), out=str(tmp_path / "out"))
    quiet = lambda *_: None   # noqa: E731
    if job.startswith("classify"):
        result = classify(ClassifyConfig(data=str(folder / "labelled.jsonl"), **shared), echo=quiet)
    elif job.startswith("sft"):   # its greedy samples decode: ids the tokenizer has, whatever the embedding has
        result = sft(SFTConfig(data=str(folder / "instructions.jsonl"), samples=1, **{**shared, "max_len": 64}),
                     echo=quiet)
        assert len(result.samples) == 1
    elif job.startswith("sop"):
        result = sentence_order(SentenceOrderConfig(data=str(folder / "stories.txt"), **shared), echo=quiet)
    else:   # pre-training from the base: next-token, or masked-LM; its samples decode too
        result = train(TrainConfig(out=str(tmp_path / "run"), init_from=str(base), data=str(folder / "stories.txt"),
                                   objective="mlm" if job == "train_mlm" else "causal", steps=3, batch_size=2,
                                   seq_len=16, warmup_steps=0, eval_every=3, eval_batches=1, threads=1,
                                   samples=1 if job == "train" else 0, sample_tokens=8, progress=False),
                       echo=quiet)
        log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
        result.losses = [record["loss"] for record in log if "loss" in record]
    assert len(result.losses) == 3 and np.all(np.isfinite(result.losses)), result.losses
    assert result.losses[-1] != result.losses[0]
