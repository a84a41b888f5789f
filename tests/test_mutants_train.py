"""What the training loops feed the optimizer: the learning rate of every step and the clipped
gradients.  A loop can call the schedule one step late, drop min_lr or skip the clip and still
learn, so these look at each update as AdamW receives it (found by mutation testing)."""
import numpy as np
import pytest

from npllama.finetune import StepConfig, run_steps
from npllama.optim import AdamW, cosine_with_warmup, global_grad_norm


@pytest.fixture
def updates(monkeypatch):
    """Every AdamW.step call as (lr, global norm of the gradients it was given)."""
    seen = []
    real_step = AdamW.step

    def step(self, grads, lr=None):
        seen.append((lr, global_grad_norm(grads)))
        return real_step(self, grads, lr=lr)

    monkeypatch.setattr(AdamW, "step", step)
    return seen


def quiet(*_args, **_kwargs):
    pass


STEPS, WARMUP, LR, MIN_LR, GRAD_CLIP, SEED = 5, 2, 5e-3, 1e-3, 0.05, 3
BETAS, WEIGHT_DECAY = (0.8, 0.9), 0.2


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory):
    """A tiny `npllama train` run, recording each update, and the token streams its loader and
    validation batches were made from."""
    import npllama.data
    from npllama.train import TrainConfig, train

    seen = {"updates": []}
    real_step, RealLoader, real_evaluation_batches = AdamW.step, npllama.data.BatchLoader, npllama.data.evaluation_batches

    def step(self, grads, lr=None):
        seen["updates"].append((lr, global_grad_norm(grads)))
        seen["settings"] = (self.betas, self.weight_decay)
        return real_step(self, grads, lr=lr)

    class Loader(RealLoader):
        def __init__(self, ids, *args, **kwargs):
            super().__init__(ids, *args, **kwargs)
            seen["train_ids"], seen["loader_seed"] = np.asarray(ids), self.seed

    def evaluation_batches(ids, *args, **kwargs):
        seen["val_ids"] = np.asarray(ids)
        return real_evaluation_batches(ids, *args, **kwargs)

    out = tmp_path_factory.mktemp("schedule") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AdamW, "step", step)
        mp.setattr(npllama.data, "BatchLoader", Loader)
        mp.setattr(npllama.data, "evaluation_batches", evaluation_batches)
        train(TrainConfig(out=str(out), preset="stories260k", vocab_size=360, batch_size=2, seq_len=16,
                          corpus_stories=100, eval_every=0, eval_batches=1, checkpoint_every=0, samples=0,
                          progress=False, threads=1, steps=STEPS, warmup_steps=WARMUP, lr=LR, min_lr=MIN_LR,
                          grad_clip=GRAD_CLIP, seed=SEED, beta1=BETAS[0], beta2=BETAS[1],
                          weight_decay=WEIGHT_DECAY), echo=quiet)
    return out, seen


def test_pretraining_steps_take_the_scheduled_lr_and_clipped_gradients(pretraining_run):
    _, seen = pretraining_run
    # step s (from 0) of a run of STEPS steps: warmup to LR, then the cosine towards MIN_LR
    expected = [cosine_with_warmup(s, max_lr=LR, warmup_steps=WARMUP, total_steps=STEPS, min_lr=MIN_LR)
                for s in range(STEPS)]
    assert [lr for lr, _ in seen["updates"]] == pytest.approx(expected, rel=1e-12)
    # a random model's gradient norm is ~1: clipped to GRAD_CLIP before AdamW sees it
    assert [norm for _, norm in seen["updates"]] == pytest.approx([GRAD_CLIP] * STEPS, rel=1e-4)
    assert seen["settings"] == (BETAS, WEIGHT_DECAY)


def test_pretraining_holds_out_the_corpus_end_from_a_document_start_and_shuffles_by_its_seed(pretraining_run):
    from npllama.tokenizer import Tokenizer

    out, seen = pretraining_run
    tokenizer = Tokenizer(out / "tokenizer.model")
    train_ids, val_ids = seen["train_ids"], seen["val_ids"]
    # validation is the held-out end (5% of the stream), not the training text, cut where a document starts
    assert 0 < len(val_ids) < len(train_ids) / 10
    assert val_ids[0] == tokenizer.bos_id and train_ids[-1] == tokenizer.eos_id
    assert seen["loader_seed"] == SEED


def _quadratic(params, target):
    """0.5 * ||p - target||^2 with its gradient: a gradient norm of ||p - target||."""
    def loss_and_grads(_batch):
        d = params["w"] - target
        return 0.5 * float(np.vdot(d, d)), {"w": d.copy()}
    return loss_and_grads


def test_fine_tuning_steps_take_the_scheduled_lr_and_clipped_gradients(updates):
    params = {"w": np.zeros((3, 4))}
    target = np.full((3, 4), 10.0)                   # gradient norm ~35 at first: clipping must act
    sc = StepConfig(steps=6, batch_size=1, lr=1e-2, warmup_steps=2, grad_clip=0.5, progress=False)
    losses = run_steps(params, _quadratic(params, target), lambda step: None, sc)
    assert len(losses) == 6
    # fine-tuning's schedule: warmup, then the cosine down to a tenth of lr
    expected = [cosine_with_warmup(s, max_lr=1e-2, warmup_steps=2, total_steps=6, min_lr=1e-3) for s in range(6)]
    assert [lr for lr, _ in updates] == pytest.approx(expected, rel=1e-12)
    assert [norm for _, norm in updates] == pytest.approx([0.5] * 6, rel=1e-6)


def test_fine_tuning_decays_the_weights_by_its_weight_decay():
    """A zero gradient leaves only the decoupled decay: each step multiplies w by 1 - lr * weight_decay."""
    params = {"w": np.ones((2, 3))}
    sc = StepConfig(steps=2, batch_size=1, lr=1e-2, warmup_steps=0, weight_decay=0.5, progress=False)
    run_steps(params, lambda _batch: (0.0, {"w": np.zeros((2, 3))}), lambda step: None, sc)
    lrs = [cosine_with_warmup(s, max_lr=1e-2, warmup_steps=0, total_steps=2, min_lr=1e-3) for s in range(2)]
    np.testing.assert_allclose(params["w"], (1 - lrs[0] * 0.5) * (1 - lrs[1] * 0.5), rtol=1e-14)


def test_fine_tuning_warmup_is_cut_to_leave_a_step_after_it(updates):
    """warmup_steps >= steps: warmup is cut to steps - 1 steps, so the run reaches lr (not 3/20 of it)."""
    params = {"w": np.zeros(2)}
    sc = StepConfig(steps=3, batch_size=1, lr=1e-2, warmup_steps=20, grad_clip=1e9, progress=False)
    run_steps(params, _quadratic(params, np.ones(2)), lambda step: None, sc)
    assert [lr for lr, _ in updates] == pytest.approx([1e-2 / 2, 1e-2, 1e-2], rel=1e-12)


# ----- accumulation and validation: means over every counted target ------------------------------
def _tiny_model():
    from npllama import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16),
                 seed=0, dtype=np.float64)


def _tokens_and_targets():
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, 50, (6, 8)), rng.integers(0, 50, (6, 8))
    targets[:2, 1:] = -100    # the parts count 2, 16 and 13 targets
    targets[4, :3] = -100
    return tokens, targets


def test_validation_loss_is_the_mean_over_every_held_out_target():
    """Validation batches count different numbers of targets (a smaller last batch, -100s): the
    loss is that of all of them as one batch, not a mean of the batches' means."""
    import types

    from npllama import use_backend
    from npllama.parallel import BatchSplitter
    from npllama.train import _Loop

    model = _tiny_model()
    tokens, targets = _tokens_and_targets()
    loop = types.SimpleNamespace(val_batches=[(tokens[:2], targets[:2]), (tokens[2:], targets[2:])],
                                 splitter=BatchSplitter(1), loss=model.loss, step=7, bar=None,
                                 write_log=lambda record: None)
    with use_backend("numpy"):
        assert _Loop.evaluate(loop) == pytest.approx(model.loss(tokens, targets), rel=1e-12)


# ----- masked LM and sentence order -----------------------------------------------------------------
class FakeTokenizer:
    """What the MLM and sentence-order batches read of a tokenizer; a character per token."""
    unk_id, bos_id, eos_id, pad_id, vocab_size = 0, 1, 2, 3, 40

    def encode(self, text, bos=False):
        return [4 + ord(c) % 36 for c in text]


def _specials_chosen_or_drawn(inputs, targets, tokens):
    """The special ids (FakeTokenizer's 1, 2, 3) a masking chose for prediction or drew as a
    random replacement, and how many positions it chose."""
    drawn = inputs[(inputs != tokens) & (inputs != FakeTokenizer.unk_id)]
    return set(targets[np.isin(targets, (1, 2, 3))]) | set(drawn[np.isin(drawn, (1, 2, 3))]), int((targets != -100).sum())


def test_special_tokens_are_never_masked_nor_drawn_as_replacements():
    """Both maskings the jobs run -- masked-LM pre-training's and sentence order's -- are given the
    tokenizer's special ids, not only special_token_ids computing them."""
    from npllama.objectives import MaskedLMBatches, SentenceOrderBatches, special_token_ids

    assert special_token_ids(FakeTokenizer()) == (0, 1, 2, 3)
    tokens = np.tile(np.arange(1, 9), (4, 8))   # a third of them <s>, </s> or pad
    batches = MaskedLMBatches.for_tokenizer(None, FakeTokenizer(), seed=0)
    specials, chosen = _specials_chosen_or_drawn(*batches.mask(tokens, np.random.default_rng(0)), tokens)
    assert specials == set() and chosen > 10
    texts = [f"Story {i} starts here. It goes on a while. Then it ends." for i in range(30)]
    for batch in SentenceOrderBatches(texts, FakeTokenizer(), batch_size=8, max_len=64, seed=1).evaluation_batches():
        tokens = np.where(batch.targets != -100, batch.targets, batch.inputs)
        specials, _ = _specials_chosen_or_drawn(batch.inputs, batch.targets, tokens)
        assert specials == set()


def test_mlm_validation_masks_are_fixed_by_the_seed():
    """Validation losses compare from run to run only if the same tokens are masked each time."""
    from npllama.objectives import mlm_objective

    val = [(np.arange(4, 40).reshape(3, 12), None)]
    first = mlm_objective(None, FakeTokenizer(), None, val, seed=5)[1]
    again = mlm_objective(None, FakeTokenizer(), None, val, seed=5)[1]
    other = mlm_objective(None, FakeTokenizer(), None, val, seed=6)[1]
    for (a_in, a_t), (b_in, b_t) in zip(first, again):
        np.testing.assert_array_equal(a_in, b_in)
        np.testing.assert_array_equal(a_t, b_t)
    assert not np.array_equal(first[0][1], other[0][1])


def test_sentence_order_batches_deal_the_pairs_in_a_fresh_order_each_epoch():
    from npllama.objectives import SentenceOrderBatches

    texts = [f"Story {i} starts here. It goes on a while. Then it ends." for i in range(8)]
    batches = SentenceOrderBatches(texts, FakeTokenizer(), batch_size=2, max_len=64, seed=1)

    def rows(step):   # each pair by its tokens before masking
        batch = batches.batch(step)
        tokens = np.where(batch.targets != -100, batch.targets, batch.inputs)
        return [tuple(row[real]) for row, real in zip(tokens, batch.attention_mask)]
    first = [row for step in range(4) for row in rows(step)]
    second = [row for step in range(4, 8) for row in rows(step)]
    assert sorted(first) == sorted(second)    # every pair once per epoch
    assert first != second


def test_sft_validation_loss_is_the_mean_over_every_response_token():
    """Examples whose responses differ in length, in batches of 2, 2 and 1: the loss is that of all
    of them as one batch (the right padding changes no earlier position under causal attention)."""
    from npllama import use_backend
    from npllama.finetune import sft_batch, sft_loss

    model = _tiny_model()
    rng = np.random.default_rng(3)
    examples = []
    for prompt, response in [(3, 2), (2, 9), (4, 1), (2, 6), (5, 3)]:
        ids = [1, *rng.integers(4, 50, prompt + response)]
        examples.append((ids, [False] * (1 + prompt) + [True] * response))
    with use_backend("numpy"):
        whole = model.loss(*sft_batch(examples, pad_id=0))
        assert sft_loss(model, examples, pad_id=0, batch_size=2) == pytest.approx(whole, rel=1e-12)


def test_sentence_order_evaluation_batches_are_fixed():
    """Two evaluations of one model must see the same masks, or their numbers do not compare."""
    from npllama.objectives import SentenceOrderBatches

    texts = [f"Story {i} starts here. It goes on a while. Then it ends." for i in range(6)]
    batches = SentenceOrderBatches(texts, FakeTokenizer(), batch_size=2, max_len=64, seed=1)
    first, again = batches.evaluation_batches(), batches.evaluation_batches()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)


def test_next_sentence_pairs_take_a_changed_b_from_another_document():
    from npllama.objectives import sentence_order_pairs

    documents = [[f"d{d}s{s}." for s in range(4)] for d in range(3)]
    home = {sentence: d for d, document in enumerate(documents) for sentence in document}
    pairs = sentence_order_pairs(documents, np.random.default_rng(0), task="nsp")
    pairs += [p for seed in range(1, 40) for p in sentence_order_pairs(documents, np.random.default_rng(seed), "nsp")]
    changed = [(a, b) for a, b, label in pairs if label == 1]
    assert len(changed) > 20
    for a, b in changed:
        assert home[a.split()[0]] != home[b.split()[0]], (a, b)


def test_lora_a_starts_uniform_within_one_over_sqrt_in_features():
    """PEFT's init (kaiming_uniform with a = sqrt(5)): A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    from npllama.lora import attach_lora

    model = _tiny_model()
    adapters = attach_lora(model, r=4, lora_alpha=8)
    for name, p in adapters.params.items():
        if "lora_A" in name:
            bound = 1 / np.sqrt(p.shape[1])
            assert np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound, name
        else:
            assert not p.any(), name


def test_a_resume_takes_the_optimizer_settings_it_changes_on_purpose():
    """A resume may change weight_decay or the betas (a changed setting the run records): the
    restored optimizer must use the new values, not the checkpoint's."""
    from pathlib import Path

    from npllama.resuming import restore_optimizer

    params = {"w": np.ones((2, 2))}
    saved = AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    saved.step({"w": np.full((2, 2), 0.5)})
    optimizer = AdamW({"w": params["w"].copy()}, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    wanted = {"lr": 3e-3, "betas": (0.8, 0.9), "eps": 1e-8, "weight_decay": 0.05}
    restore_optimizer(optimizer, saved.state_dict(), 1, Path("checkpoint"), wanted,
                      changeable={"betas", "weight_decay"})
    assert (optimizer.lr, optimizer.betas, optimizer.weight_decay) == (3e-3, (0.8, 0.9), 0.05)
    assert optimizer.step_count == 1
    np.testing.assert_array_equal(optimizer.m["w"], saved.m["w"])


def test_sft_validation_examples_are_held_out_of_training(small_model_dir, tmp_path, monkeypatch):
    import npllama.finetune as finetune
    from npllama.datasets import write_jsonl

    records = [{"prompt": f"Question number {i}?", "response": f"Answer {i} is {i * 7}."} for i in range(10)]
    seen = {"val": set(), "train": set()}
    real_sft_loss = finetune.sft_loss

    def sft_loss(model, examples, pad_id, batch_size=16):
        seen["val"] |= {tuple(ids) for ids, _ in examples}
        return real_sft_loss(model, examples, pad_id, batch_size)

    def run_steps(params, loss_and_grads, make_batch, sc, *args, **kwargs):
        for step in range(4):   # two epochs of 4 batches of 2: every training example
            tokens, targets, mask = make_batch(step)
            for row, real, t in zip(tokens, mask, targets):
                seen["train"].add((*row[real], int(t[real][-1])))   # an example: its inputs, then its last target
        return [0.0]

    monkeypatch.setattr(finetune, "sft_loss", sft_loss)
    monkeypatch.setattr(finetune, "run_steps", run_steps)
    finetune.sft(finetune.SFTConfig(base=str(small_model_dir), data=str(write_jsonl(tmp_path / "d.jsonl", records)),
                                    val_fraction=0.2, batch_size=2, steps=4, samples=0, progress=False,
                                    chat_template="llama2"), echo=quiet)
    assert len(seen["val"]) == 2 and len(seen["train"]) == 8
    assert not seen["val"] & seen["train"]


def test_sentence_order_evaluates_the_head_it_trained_on_held_out_documents(small_model_dir, tmp_path, monkeypatch):
    """The head the result reports on is the array the step loop updated, and the validation pairs
    come from documents the training pairs do not."""
    import npllama.finetune_sop as finetune_sop

    documents = [f"Doc {i} begins. It has a middle part. It ends here." for i in range(20)]
    (tmp_path / "docs.txt").write_text("\n\n".join(documents), encoding="utf-8")
    seen = {"heads": [], "documents": {}}
    real_evaluate, real_pairs = finetune_sop.evaluate_sentence_order, finetune_sop._pairs

    def evaluate(model, head, batches):
        seen["heads"].append(head.copy())
        return real_evaluate(model, head, batches)

    def pairs(texts, *args):
        seen["documents"][args[-1]] = {" ".join(sentences) for sentences in texts}
        return real_pairs(texts, *args)

    def run_steps(params, *args, **kwargs):
        params[finetune_sop.SOP_HEAD] += 1.0      # stands for training: the head moves
        return [0.0]

    monkeypatch.setattr(finetune_sop, "evaluate_sentence_order", evaluate)
    monkeypatch.setattr(finetune_sop, "_pairs", pairs)
    monkeypatch.setattr(finetune_sop, "run_steps", run_steps)
    finetune_sop.sentence_order(finetune_sop.SentenceOrderConfig(
        base=str(small_model_dir), data=str(tmp_path / "docs.txt"), batch_size=2, max_len=32, steps=1,
        val_fraction=0.2, progress=False), echo=quiet)
    before, after = seen["heads"]
    np.testing.assert_array_equal(after, before + 1.0)
    training, validation = seen["documents"]["training"], seen["documents"]["validation"]
    assert len(training) == 16 and len(validation) == 4 and not training & validation
