"""MLM masking, sentence-order pairs, and whole-model gradient checks of the MLM and MLM+SOP losses."""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from npllama import Llama, LlamaConfig, gradcheck, use_backend
from npllama.lora import attach_lora
from npllama.objectives import (SOP_HEAD, MaskedLMBatches, SentenceOrderBatch, SentenceOrderBatches, encode_pair,
                                evaluate_sentence_order, init_sop_head, mask_tokens, mlm_loss, mlm_loss_and_grads,
                                join_sentences, join_text, mlm_objective, mlm_sop_forward, mlm_sop_loss_and_grads,
                                pad_batch, sentence_blocks, sentence_order_pairs, split_sentences)

SPECIAL = (0, 1, 2)  # <unk> (= mask), <s>, </s>


def tiny_config(**overrides):
    fields = dict(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    fields.update(overrides)
    return LlamaConfig(**fields)


def perturbed_model(config, seed=0):
    model = Llama(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():  # away from init's tiny weights: gradients worth checking
        p += (0.3 if p.ndim == 1 else 0.2) * rng.standard_normal(p.shape)
    return model


# ----- masking ---------------------------------------------------------------------------------------
def test_masking_statistics_on_a_large_sample():
    rng = np.random.default_rng(0)
    V = 50
    tokens = rng.integers(3, V, size=(400, 500))
    tokens[:, 0], tokens[:, -1] = 1, 2                  # <s> ... </s> on every row
    attention_mask = np.ones_like(tokens, dtype=bool)
    attention_mask[:50, 400:] = False                   # some padding
    inputs, targets = mask_tokens(tokens, np.random.default_rng(1), mask_token_id=0, vocab_size=V,
                                  special_ids=SPECIAL, attention_mask=attention_mask)
    eligible = attention_mask & (tokens > 2)
    chosen = targets != -100
    assert not chosen[~eligible].any()                  # never <s>, </s>, padding
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005
    np.testing.assert_array_equal(targets[chosen], tokens[chosen])
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])   # only chosen tokens change
    n = chosen.sum()
    masked = inputs[chosen] == 0
    kept = inputs[chosen] == tokens[chosen]
    replaced = ~masked & ~kept
    # random replacements draw among V - 3 ordinary ids, so 1/(V-3) of them happen to keep the token
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(replaced.sum() / n - 0.1 * (1 - 1 / (V - 3))) < 0.006
    assert abs(kept.sum() / n - (0.1 + 0.1 / (V - 3))) < 0.006
    assert inputs[chosen][replaced].min() >= 3          # never a special id as a random token
    assert inputs.dtype == targets.dtype == np.int64


def test_masking_is_deterministic_by_rng_and_leaves_input_alone():
    tokens = np.random.default_rng(0).integers(3, 20, size=(4, 9))
    original = tokens.copy()
    a = mask_tokens(tokens, np.random.default_rng(5), mask_token_id=0, vocab_size=20)
    b = mask_tokens(tokens, np.random.default_rng(5), mask_token_id=0, vocab_size=20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(tokens, original)


def test_masked_lm_batches_reproduce_after_resume():
    from npllama.data import BatchLoader

    ids = np.random.default_rng(0).integers(3, 30, size=2000)
    make = lambda: MaskedLMBatches(BatchLoader(ids, 4, 16, seed=3), mask_token_id=0, vocab_size=30,
                                   special_ids=SPECIAL, seed=9)
    first = make()
    batches = [first.next_batch() for _ in range(3)]
    resumed = make()
    resumed.loader.load_state_dict({**first.loader.state_dict(), "batch_index": 2})
    np.testing.assert_array_equal(resumed.next_batch()[0], batches[2][0])
    assert (batches[0][1] != -100).any()


def test_mask_tokens_bad_arguments():
    tokens = np.array([[3, 4, 5]])
    with pytest.raises(ValueError, match="mask_token_id 20 is outside"):
        mask_tokens(tokens, np.random.default_rng(0), mask_token_id=20, vocab_size=10)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(tokens, np.random.default_rng(0), mask_token_id=0, vocab_size=10, mlm_probability=0)
    with pytest.raises(ValueError, match="shape \\(batch, seq_len\\)"):
        mask_tokens(tokens[0], np.random.default_rng(0), mask_token_id=0, vocab_size=10)
    with pytest.raises(ValueError, match="no ordinary token"):
        mask_tokens(tokens, np.random.default_rng(0), mask_token_id=0, vocab_size=2, special_ids=(1,))


# ----- sentence-order pairs -------------------------------------------------------------------------
# Document k, sentence j reads "d<k>s<j>."; every fourth document has a single sentence.
DOCS = [[f"d{k}s{j}." for j in range(1 if k % 4 == 2 else 2 + k % 3)] for k in range(200)]


def _where(segment):
    """(document, first sentence, last sentence) of a segment such as "d7s1. d7s2."."""
    first, last = segment.split()[0], segment.split()[-1]
    doc = first[1:first.index("s")]
    return doc, int(first[first.index("s") + 1:-1]), int(last[last.index("s") + 1:-1])


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_sentence_order_pairs(task):
    pairs = sentence_order_pairs(DOCS, np.random.default_rng(0), task)
    assert len(pairs) == 150  # the one-sentence document makes no pair
    labels = np.array([label for *_, label in pairs])
    assert 0.35 < labels.mean() < 0.65
    for a, b, label in pairs:
        (doc_a, first_a, last_a), (doc_b, first_b, last_b) = _where(a), _where(b)
        if label == 0:   # B follows A in the same document
            assert doc_a == doc_b and first_b == last_a + 1
        elif task == "sop":  # swapped: the first segment is the later one
            assert doc_a == doc_b and first_a == last_b + 1
        else:            # nsp: B from another document
            assert doc_a != doc_b


@pytest.mark.parametrize("max_chars", [1, 12, 30, 10_000])
def test_sentence_blocks_keep_the_order_and_two_sentences_each(max_chars):
    sentences = [f"s{j}." + "x" * (j % 4) for j in range(11)]
    blocks = sentence_blocks(sentences, max_chars)
    assert [s for block in blocks for s in block] == sentences      # consecutive, in order, nothing lost
    assert all(len(block) >= 2 for block in blocks)
    for block in blocks[:-1]:   # within the budget, or as short as a pair allows
        assert len(" ".join(block)) <= max_chars or len(block) == 2, block
    assert (len(blocks) == 1) == (max_chars == 10_000)    # a document that fits is one block


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_a_long_document_gives_a_pair_per_block_each_within_the_block(task):
    long_docs = [[f"d{k}s{j}." for j in range(40)] for k in range(3)]
    pairs = sentence_order_pairs(long_docs, np.random.default_rng(0), task, max_chars=30)
    assert len(pairs) > 3 * 5          # one per block, not one per document
    for a, b, label in pairs:
        (doc_a, first_a, last_a), (doc_b, first_b, last_b) = _where(a), _where(b)
        if label == 0 or task == "sop":   # both stretches from one block: a few sentences apart at most
            assert doc_a == doc_b and max(last_a, last_b) - min(first_a, first_b) < 10


def test_split_sentences_and_encode_pair():
    assert split_sentences('Tom said "Hi." Then he ran! Did he? Yes.') == [
        'Tom said "Hi."', "Then he ran!", "Did he?", "Yes."]

    class Tok:  # one id per character, so lengths are easy to reason about
        bos_id, eos_id = 1, 2

        def encode(self, text, bos=True):
            return [10 + ord(c) % 50 for c in text]

    ids = encode_pair(Tok(), "abc", "de", max_len=16)
    assert ids[0] == 1 and ids[4] == 2 and ids[-1] == 2 and len(ids) == 8
    long = encode_pair(Tok(), "a" * 30, "b" * 30, max_len=11)
    assert len(long) == 11 and long.count(2) == 2
    # a segment cut to fit keeps the text at the A|B boundary: A's end, B's start (before: A's start)
    cut = encode_pair(Tok(), "x" * 20 + "yz", "uv" + "w" * 20, max_len=7)
    assert cut == [1, *Tok().encode("yz"), 2, *Tok().encode("uv"), 2]
    assert encode_pair(Tok(), "abcdef", "u", max_len=7)[1:4] == Tok().encode("def")   # B's spare room to A
    with pytest.raises(ValueError, match="max_len must be at least 5"):
        encode_pair(Tok(), "a", "b", max_len=4)
    with pytest.raises(ValueError, match="at least two sentences"):
        sentence_order_pairs([["one."]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="task must be one of"):
        sentence_order_pairs(DOCS, np.random.default_rng(0), task="nextsent")


@pytest.mark.parametrize("text, sentences", [
    ("Mr. Smith met Dr. Who. They talked.", ["Mr. Smith met Dr. Who.", "They talked."]),
    ("J. K. Rowling wrote it, e.g. this one. Yes.", ["J. K. Rowling wrote it, e.g. this one.", "Yes."]),
    ('"Hi!" she said. Wait... what? Really?! Yes.', ['"Hi!" she said.', "Wait... what?", "Really?!", "Yes."]),
    ("She said 'no.' He said \u201cStop.\u201d Er sagte \u201eJa.\u201c Dann (gut.) Fin.",
     ["She said 'no.'", "He said \u201cStop.\u201d", "Er sagte \u201eJa.\u201c", "Dann (gut.)", "Fin."]),
    ("\u4ed6\u6765\u4e86\u3002\u5979\u8d70\u4e86\uff01\u4e3a\u4ec0\u4e48\uff1f\u201c\u597d\u3002\u201d\u5bf9",
     ["\u4ed6\u6765\u4e86\u3002", "\u5979\u8d70\u4e86\uff01", "\u4e3a\u4ec0\u4e48\uff1f",
      "\u201c\u597d\u3002\u201d", "\u5bf9"]),
    # ASCII ! ? typed between Chinese characters end a sentence too (before: one sentence); not in 3.5
    ("真的吗?他问。好!!「走吧。」版本3.5很好!下载吧?Wow!好。",
     ["真的吗?", "他问。", "好!!", "「走吧。」", "版本3.5很好!", "下载吧?Wow!好。"]),
    ("A title\n\nA hard-wrapped\nline. It ended\u2026 Then more.",
     ["A title", "A hard-wrapped\nline.", "It ended\u2026", "Then more."]),
    ("i went home. it rained. 3.5 is a number.", ["i went home.", "it rained.", "3.5 is a number."]),
    # French « » with (no-break) spaces inside; a » followed by a letter opens a German quote
    ("« Bonjour ! » dit-il. « Ça va ? » Oui. Er rief: Komm! »Nein«, sagte sie.",
     ["« Bonjour ! » dit-il.", "« Ça va ? »", "Oui.", "Er rief: Komm!",
      "»Nein«, sagte sie."]),
    ("Er sagte: »Nein.« Dann ging er.", ["Er sagte: »Nein.«", "Dann ging er."]),
])
def test_split_sentences_knows_titles_initials_quotes_ellipses_and_chinese(text, sentences):
    # Before: "Mr." ended a sentence, \u3002 and closing quotes other than " never did, so a Chinese
    # document (the article's language) was "one sentence" and gave no pair.
    assert split_sentences(text) == sentences


def test_chinese_sentences_of_a_pair_are_joined_without_the_space_english_takes():
    # Before: A and B were " ".join(sentences), so every Chinese sentence boundary inside a stretch
    # got a space the corpus never has (and so a "▁" token pre-training never showed the model).
    chinese = "今天天气晴朗。小明和小红去了公园。“这是谁的？”小红问。「不知道。」他说。最后他们回家了！"
    english = "It was sunny. Tom went out. \u201cWhose is it?\u201d he asked. Then he went home!"
    for text, sep in ((chinese, ""), (english, " ")):
        sentences = split_sentences(text)
        assert join_sentences(sentences) == text
        for seed in range(10):
            for a, b, label in sentence_order_pairs([sentences], np.random.default_rng(seed)):
                for segment in (a, b):   # each a stretch of the text as written
                    assert segment in text and segment.startswith(tuple(sentences)), segment
                if label == 0:
                    assert a + sep + b in text


@pytest.mark.parametrize("a, b, joined", [
    ("他来了。", "她走了。", "他来了。她走了。"),
    ("他说：“好。”", "“走吧。”她说。", "他说：“好。”“走吧。”她说。"),
    ("我用 Python。", "It works.", "我用 Python。It works."),
    ("It works.", "我也喜欢。", "It works.我也喜欢。"),
    ("Tom ran.", "\u201cStop!\u201d", "Tom ran. \u201cStop!\u201d"),
    ("これは本です。", "あれは？", "これは本です。あれは？"),
    ("나는 갔다.", "그리고 왔다.", "나는 갔다. 그리고 왔다."),       # Korean is written with spaces
    ("Answer: ", "yes", "Answer: yes"), ("", "x", "x"),
])
def test_join_text_puts_a_space_only_where_the_script_writes_one(a, b, joined):
    assert join_text(a, b) == joined


def test_a_tokenizer_without_unk_bos_or_eos_is_refused_by_name():
    # a tokenizer.json whose tokenizer_config.json names no unk_token (LLaMA-3 style): before, int(None)
    class Tok:
        unk_id, bos_id, eos_id, pad_id, vocab_size = None, 1, 2, None, 13

        def encode(self, text, bos=True):
            return [5, 6]

    with pytest.raises(ValueError, match=r"the tokenizer has no <unk> token, which masked-LM training uses as its "
                                         r"\[MASK\] token"):
        SentenceOrderBatches(["One. Two."] * 4, Tok(), batch_size=2, max_len=16)
    with pytest.raises(ValueError, match="no <unk> token"):
        MaskedLMBatches.for_tokenizer(None, Tok())
    Tok.unk_id, Tok.eos_id = 0, None
    with pytest.raises(ValueError, match=r"a pair is <s> A </s> B </s>, but the tokenizer has no </s> \(eos_token\)"):
        encode_pair(Tok(), "One.", "Two.", max_len=16)


# ----- whole-model gradients ------------------------------------------------------------------------
def _mlm_batch(config, seed=0, B=2, T=6, padding=None):
    """Every row <s> then ordinary tokens, row i right-padded by padding[i] (default: row 1 by 2),
    half the real ordinary tokens chosen."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, config.vocab_size, size=(B, T))
    tokens[:, 0] = 1
    attention_mask = np.ones((B, T), dtype=bool)
    for row, n_pad in enumerate([0, 2] + [0] * (B - 2) if padding is None else padding):
        attention_mask[row, T - n_pad:] = False
    inputs, targets = mask_tokens(tokens, rng, mask_token_id=0, vocab_size=config.vocab_size,
                                  special_ids=SPECIAL, attention_mask=attention_mask, mlm_probability=0.5)
    return inputs, targets, attention_mask


def _drawn_mlm_batch(config, data, B, T, seed):
    """_mlm_batch with each row's padding drawn (at least <s> and one token left)."""
    padding = [data.draw(st.integers(0, T - 2), label=f"padding of row {row}") for row in range(B)]
    return _mlm_batch(config, seed, B, T, padding)


def _model_over_axes(tied, n_layers, n_kv_heads, seed):
    return perturbed_model(tiny_config(tie_word_embeddings=tied, num_hidden_layers=n_layers,
                                       num_key_value_heads=n_kv_heads), seed=seed)


# the batch's shape and padding, the depth, one kv head or one per head (MQA, MHA), tied embeddings;
# the fixed cases are the former parametrized ones (_mlm_batch), whose max_rel_err is measured close
MODEL_AXES = dict(tied=st.booleans(), n_layers=st.integers(1, 2), n_kv_heads=st.sampled_from([1, 2]),
                  B=st.integers(1, 3), T=st.integers(2, 6), seed=st.integers(0, 100), data=st.data())


@settings(max_examples=5, deadline=None)
@given(**MODEL_AXES)
@example(tied=False, n_layers=2, n_kv_heads=1, B=2, T=6, seed=0, data=None)
@example(tied=True, n_layers=2, n_kv_heads=1, B=2, T=6, seed=0, data=None)
def test_mlm_whole_model_gradients(tied, n_layers, n_kv_heads, B, T, seed, data):
    model = _model_over_axes(tied, n_layers, n_kv_heads, seed)   # the fixed cases: seed 0
    if data is None:
        inputs, targets, attention_mask = _mlm_batch(model.config)
    else:
        inputs, targets, attention_mask = _drawn_mlm_batch(model.config, data, B, T, seed)
    with use_backend("numpy"):
        loss, grads = mlm_loss_and_grads(model, inputs, targets, attention_mask)
        assert list(grads) == list(model.params)
        assert loss == pytest.approx(mlm_loss(model, inputs, targets, attention_mask))
        report = gradcheck(lambda *_: mlm_loss(model, inputs, targets, attention_mask), model.params, grads,
                           max_entries=24 if data is None else 8)
    report.raise_if_failed()
    if data is None:
        assert report.max_rel_err < 1e-7


def test_mlm_attention_is_bidirectional():
    # Under MLM a later token changes an earlier prediction; under the causal LM it cannot.
    model = perturbed_model(tiny_config())
    inputs = np.array([[1, 0, 5, 6, 7]])
    changed = inputs.copy()
    changed[0, 4] = 8
    first = lambda x, causal: model.forward_with_caches(x, causal=causal)[0][0, 1]
    with use_backend("numpy"):
        assert not np.allclose(first(inputs, False), first(changed, False))
        np.testing.assert_array_equal(first(inputs, True), first(changed, True))


def _sop_batch(config, seed=0):
    inputs, targets, attention_mask = _mlm_batch(config, seed, B=3, T=6)
    attention_mask[2, 3:] = False
    targets[2, 3:] = -100
    return SentenceOrderBatch(inputs, targets, attention_mask, np.array([0, 1, 1]))


@settings(max_examples=3, deadline=None)
@given(**MODEL_AXES)
@example(tied=False, n_layers=2, n_kv_heads=1, B=3, T=6, seed=0, data=None)
@example(tied=True, n_layers=2, n_kv_heads=1, B=3, T=6, seed=0, data=None)
def test_mlm_sop_whole_model_gradients(tied, n_layers, n_kv_heads, B, T, seed, data):
    # the SOP head reads each row's last real token: the drawn padding moves it
    model = _model_over_axes(tied, n_layers, n_kv_heads, seed)   # the fixed cases: seed 0
    if data is None:
        batch = _sop_batch(model.config)
    else:
        batch = SentenceOrderBatch(*_drawn_mlm_batch(model.config, data, B, T, seed),
                                   np.random.default_rng(seed).integers(0, 2, B))
    sop_head = np.random.default_rng(3).standard_normal((2, model.config.hidden_size))
    params = {**model.params, SOP_HEAD: sop_head}
    with use_backend("numpy"):
        loss, grads, parts = mlm_sop_loss_and_grads(model, sop_head, batch)
        assert list(grads) == list(params)
        assert loss == pytest.approx(parts["mlm"] + parts["sop"]) and parts["sop"] > 0
        report = gradcheck(lambda *_: mlm_sop_loss_and_grads(model, sop_head, batch)[0], params, grads,
                           max_entries=16 if data is None else 8)
    report.raise_if_failed()
    if data is None:
        assert report.max_rel_err < 1e-7


@pytest.mark.parametrize("tied", [False, True])
def test_mlm_sop_with_lora_trains_adapters_and_head_only(tied):
    model = perturbed_model(tiny_config(tie_word_embeddings=tied))
    adapters = attach_lora(model, r=2)
    for p in adapters.params.values():
        p += 0.3 * np.random.default_rng(0).standard_normal(p.shape)
    batch = _sop_batch(model.config)
    sop_head = init_sop_head(model.config.hidden_size, dtype=np.float64, std=0.5)
    params = {**adapters.params, SOP_HEAD: sop_head}
    with use_backend("numpy"):
        _, grads, _ = mlm_sop_loss_and_grads(model, sop_head, batch)
        assert list(grads) == list(params)
        report = gradcheck(lambda *_: mlm_sop_loss_and_grads(model, sop_head, batch)[0], params, grads,
                           max_entries=8)
    report.raise_if_failed()
    assert report.max_rel_err < 1e-7


def test_evaluate_sentence_order_weights_mlm_per_masked_token_and_sop_per_pair():
    # one batch of 3 pairs, or the same pairs as batches of 1 and 2 (padding trimmed): the same numbers,
    # though the batches hold different numbers of pairs and of masked tokens
    model = perturbed_model(tiny_config())
    whole = _sop_batch(model.config)
    sop_head = np.random.default_rng(3).standard_normal((2, model.config.hidden_size))

    def rows(r, T):
        return SentenceOrderBatch(whole.inputs[r, :T], whole.targets[r, :T], whole.attention_mask[r, :T],
                                  whole.sop_labels[r])
    parts = [rows(slice(0, 1), 6), rows(slice(1, 3), 6)]
    with use_backend("numpy"):
        one, split = evaluate_sentence_order(model, sop_head, [whole]), evaluate_sentence_order(model, sop_head, parts)
        masked = [int((p.targets != -100).sum()) for p in parts]
        assert masked[0] != masked[1], masked      # a mean of the batches' means would differ
        assert split == pytest.approx(one, rel=1e-12) and one["pairs"] == 3
        # ... and they are the one batch's own: its losses, and the share of pairs the head orders right
        mlm, sop, sop_logits, _ = mlm_sop_forward(model, sop_head, whole)
        right = np.argmax(sop_logits, axis=-1) == whole.sop_labels
        assert 0 < right.sum() < 3, right                # neither 0 nor 1 is what a dropped count gives
        assert one == pytest.approx({"mlm": mlm, "sop": sop, "sop_accuracy": right.mean(), "pairs": 3,
                                     "masked_tokens": int((whole.targets != -100).sum())}, rel=1e-12)
        # no masked token (a tiny validation set can draw none): no MLM loss to report -- before, 0.0
        unmasked = SentenceOrderBatch(whole.inputs, np.full_like(whole.targets, -100), whole.attention_mask,
                                      whole.sop_labels)
        nothing = evaluate_sentence_order(model, sop_head, [unmasked])
        assert np.isnan(nothing["mlm"]) and nothing["masked_tokens"] == 0 and nothing["sop"] == one["sop"]


def test_bad_targets_and_padding():
    model = Llama(tiny_config(), seed=0)
    inputs, targets, attention_mask = _mlm_batch(model.config)
    with pytest.raises(ValueError, match="targets must have the inputs' shape"):
        mlm_loss_and_grads(model, inputs, targets[:, :3])
    with pytest.raises(ValueError, match="no empty sequence"):
        pad_batch([[1, 2], []], pad_id=0)
    tokens, mask = pad_batch([[5, 6, 7], [8]], pad_id=2)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [8, 2, 2]])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False]])


def test_mlm_objective_plugs_into_a_causal_training_loop(tmp_path):
    # What `npllama train --objective mlm` does: swap the loader, the validation batches and the loss.
    from npllama.data import BatchLoader
    from npllama.optim import AdamW

    class Tok:
        unk_id, bos_id, eos_id, pad_id, vocab_size = 0, 1, 2, None, 13

    model = Llama(tiny_config(), seed=0)
    ids = np.random.default_rng(0).integers(3, 13, size=3000)
    loader, val, loss_and_grads, loss = mlm_objective(model, Tok(), BatchLoader(ids, 4, 12, seed=1),
                                                      [(ids[None, :12], ids[None, 1:13])], seed=2)
    assert loader.state_dict()["batch_index"] == 0 and len(loader) == len(loader.loader)
    inputs, targets = val[0]
    assert (inputs == 0).any() or (targets != -100).any()
    before = loss(inputs, targets)
    optimizer = AdamW(model.params, lr=3e-3)
    for _ in range(30):
        optimizer.step(loss_and_grads(*loader.next_batch())[1])
    assert loader.state_dict()["batch_index"] == 30 % len(loader)
    assert loss(inputs, targets) < before


# ----- <unk> in the text itself: the mask's one ambiguity -------------------------------------------
def test_text_holding_unk_is_reported_for_masked_lm(tmp_path, capsys):
    import npllama.cli
    from npllama import Tokenizer
    from npllama.corpus import make_default_corpus
    from npllama.objectives import unk_in_text_note

    stories = make_default_corpus(300)
    without = Tokenizer.train(stories, tmp_path / "no_fallback", vocab_size=300, byte_fallback=False)
    with_fallback = Tokenizer.train(stories, tmp_path / "fallback", vocab_size=512)
    text = "The cat ☃ sat on the ☃ mat."
    ids = without.encode(text)
    assert ids.count(without.unk_id) == 2
    assert unk_in_text_note(ids, without).startswith(f"2 of {len(ids)} tokens of the text are <unk>")
    assert unk_in_text_note(with_fallback.encode(text), with_fallback) is None
    # before, the text "<unk>" (WikiText's rare word) was blamed on a byte fallback the tokenizer has
    note = unk_in_text_note(with_fallback.encode("The <unk> sat on the mat."), with_fallback)
    assert note.startswith("1 of ") and 'the text writes "<unk>" itself' in note and "byte fallback" not in note
    # the same tokenizers as a Hugging Face tokenizer.json (a base folder without tokenizer.model)
    from npllama.tokenizer_json import JsonTokenizer

    for tokenizer, name in ((without, "json_without"), (with_fallback, "json_with")):
        (tmp_path / name).mkdir()
        for file, data in tokenizer.hf_files().items():
            (tmp_path / name / file).write_bytes(data)
        json_tokenizer = JsonTokenizer(tmp_path / name)
        assert unk_in_text_note(json_tokenizer.encode(text), json_tokenizer) == unk_in_text_note(tokenizer.encode(text),
                                                                                                tokenizer)
    assert unk_in_text_note(JsonTokenizer(tmp_path / "json_with").encode("The <unk> sat."),
                            JsonTokenizer(tmp_path / "json_with")).endswith('to have it read as text')
    assert unk_in_text_note([], without) is None
    # `npllama train --objective mlm` says so, with its count over the training text
    data = tmp_path / "snow.txt"
    data.write_text("\n\n".join(story.replace(". ", ". ☃ ", 1) for story in stories))
    assert npllama.cli.main(["train", "--objective", "mlm", "--tokenizer", str(tmp_path / "no_fallback.model"),
                             "--data", str(data), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                             "--eval-every", "0", "--eval-batches", "1", "--samples", "0", "--threads", "1",
                             "--no-progress", "--backend", "numpy", "--out", str(tmp_path / "run")]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "are <unk>" in line]
    assert len(said) == 1 and "Masked-LM uses <unk> as its mask" in said[0]
    count = int(said[0].split()[0].replace(",", ""))
    assert count >= 0.9 * 0.95 * len(stories)          # one snowman a story, 5% held out for validation
    # and `npllama finetune sop` on that model, over its training pairs
    few = tmp_path / "few.txt"
    few.write_text("\n\n".join(data.read_text().split("\n\n")[:20]))
    assert npllama.cli.main(["finetune", "sop", "--base", str(tmp_path / "run"), "--data", str(few),
                             "--steps", "1", "--batch-size", "2", "--max-len", "32", "--no-progress",
                             "--backend", "numpy"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "are <unk>" in line]
    assert len(said) == 1 and "Masked-LM uses <unk> as its mask" in said[0]


def test_the_unk_count_of_a_large_memory_mapped_stream_copies_no_stream(tmp_path):
    # == on the whole stream made a bool copy of it: a byte a token, 470 MB at TinyStories' size
    import tracemalloc

    from npllama.objectives import unk_in_text_note

    ids = np.lib.format.open_memmap(tmp_path / "tokens.npy", mode="w+", dtype=np.uint16, shape=(8_000_000,))
    ids[:] = 5
    ids[::1000] = 0
    ids.flush()
    ids = np.load(tmp_path / "tokens.npy", mmap_mode="r", allow_pickle=False)
    tokenizer = type("NoFallback", (), {"unk_id": 0, "piece_to_id": lambda self, piece: 0})()
    tracemalloc.start()
    note = unk_in_text_note(ids, tokenizer)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert note.startswith("8,000 of 8,000,000 tokens of the text are <unk>")
    assert peak < 3_000_000, peak          # a block's bool mask, not the stream's 8 MB
