"""Run a fine-tuned text classifier: a LlamaForSequenceClassification folder (with `score.weight`,
as transformers and `npllama finetune classify --out` write it), or a base model plus a LoRA
adapter saved for sequence classification (PEFT's SEQ_CLS, the head among modules_to_save).

    clf = load_classifier("runs/sentiment")                      # or load_classifier(base, adapter=dir)
    clf.predict(["What a lovely day!", "I hated it."])           # ['positive', 'negative']
    clf.probabilities(["What a lovely day!"])                    # (1, num_labels), rows sum to 1
    clf.classify(["What a lovely day!"]).cut                     # [] (the texts read up to max_len only)

The head reads the hidden state of each text's last real token, as transformers' does.  A
classifier fine-tuned from a masked-LM model runs bidirectionally, as it was trained (its folder
records it; transformers would run it causally).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .finetune import SCORE, SequenceClassifier, cut_note, read_info
from .objectives import pad_batch, pad_id_of
from .ops._checks import require_path, require_positive_int


@dataclasses.dataclass(frozen=True)
class Classified:
    """Classifier.classify's answer for a list of texts."""
    probabilities: np.ndarray     # (len(texts), num_labels), each row sums to 1
    cut: list[int]                # the indices of the texts longer than max_len: read from their beginning alone
    note: str | None              # the line saying how many were cut (finetune.cut_note), None when none was


class Classifier:
    """A model, its classification head and its tokenizer, ready for text."""

    def __init__(self, model, score_weight: np.ndarray, label_names, tokenizer, source: str = "",
                 pad_token_id: int | None = None, max_len: int | None = None):
        score_weight = np.asarray(score_weight)
        if score_weight.shape != (len(label_names), model.config.hidden_size):
            raise ValueError(f"score_weight must have shape (num_labels={len(label_names)}, hidden_size="
                             f"{model.config.hidden_size}), got {score_weight.shape}")
        # the head skips the pad id as transformers does: config.json's pad_token_id, else the batches' pad
        self.head = SequenceClassifier(model, label_names,
                                       pad_id=pad_id_of(tokenizer) if pad_token_id is None else pad_token_id)
        self.head.score_weight = score_weight.astype(model.dtype, copy=False)
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.label_names = self.head.label_names
        # the head learned to read the last token of a text cut at fine-tuning's max_len: a longer
        # text read further would be judged from a position it was never trained (nor validated) at
        require_positive_int("max_len", max_len, none_ok=True)
        context = model.config.max_position_embeddings
        self.max_len = context if max_len is None else min(int(max_len), context)
        # what set max_len, as a note on texts cut there says it
        self.max_len_limit = ("the classifier's max_len, as fine-tuning cut them" if max_len is not None and
                              max_len <= context else "the model's context, max_position_embeddings")

    def logits(self, texts, batch_size: int = 32) -> np.ndarray:
        """(len(texts), num_labels) class scores, texts cut to max_len tokens (the beginning kept) as
        fine-tuning cut them, or to the model's context for a classifier made elsewhere."""
        require_positive_int("batch_size", batch_size)
        return self._logits(self._encode(texts), batch_size)

    def cut_texts(self, texts) -> list[int]:
        """The indices of the texts longer than max_len tokens: classified from their beginning alone."""
        return self._cut(self._encode(texts))

    def cut_note(self, texts) -> str | None:
        """A line saying how many texts are read up to max_len only, or None when none is."""
        return self._cut_note(self._encode(texts))

    def probabilities(self, texts, batch_size: int = 32) -> np.ndarray:
        """Softmax of the logits: each row sums to 1."""
        return _softmax(self.logits(texts, batch_size))

    def classify(self, texts, batch_size: int = 32) -> Classified:
        """The probabilities, which texts were cut at max_len and the note saying so, each text
        tokenised once (cut_note then probabilities would tokenise a large file twice)."""
        require_positive_int("batch_size", batch_size)
        whole = self._encode(texts)
        return Classified(_softmax(self._logits(whole, batch_size)), self._cut(whole), self._cut_note(whole))

    def _encode(self, texts) -> list[list[int]]:
        """Each text's ids, `<s> text`, whole: _logits reads the first max_len, _cut the rest's length."""
        return self.tokenizer.encode_batch(_check_texts(texts), bos=True)

    def _logits(self, whole, batch_size: int) -> np.ndarray:
        encoded = [ids[:self.max_len] for ids in whole]
        pad_id = pad_id_of(self.tokenizer)
        out = np.empty((len(encoded), len(self.label_names)), dtype=np.float64)
        for start in range(0, len(encoded), batch_size):
            tokens, mask = pad_batch(encoded[start:start + batch_size], pad_id)
            out[start:start + batch_size] = self.head.logits(tokens, mask)
        return out

    def _cut(self, whole) -> list[int]:
        return [i for i, ids in enumerate(whole) if len(ids) > self.max_len]

    def _cut_note(self, whole) -> str | None:
        cut = self._cut(whole)
        return cut_note(len(cut), len(whole), self.max_len, self.max_len_limit) if cut else None

    def predict(self, texts, batch_size: int = 32) -> list[str]:
        """The most likely label name of each text."""
        return [self.label_names[i] for i in self.logits(texts, batch_size).argmax(-1)]

    def __repr__(self) -> str:
        return f"Classifier({self.source!r}, labels={list(self.label_names)})"


def load_classifier(path=None, dtype=np.float32, adapter=None) -> Classifier:
    """A classifier folder (path), or a base model folder (path) with a SEQ_CLS LoRA `adapter`.

    path: a folder or a run folder holding one (None: the latest run, runs/LATEST; with an adapter,
    the base its adapter_config.json names).  dtype:
    np.float32 or np.float64.  A folder without score.weight raises CheckpointError (a ValueError).

    Every folder is read holding its run's reader lock (npllama.runs.reading_run), so a fine-tuning
    run that is replacing it never gets read half-way."""
    from .runs import load_model_and_tokenizer, load_tokenizer, reading_model_dir

    if path is not None:
        require_path("path", path, "a classifier folder or run")
    if adapter is not None:
        require_path("adapter", adapter, "a LoRA adapter folder")
        from .lora import load_adapter, model_or_adapter_base

        # None: the base the adapter was trained on, not the latest run (refused naming this argument)
        path = model_or_adapter_base(path, adapter, "load_classifier(path=BASE_FOLDER, adapter=...)")

        from .io.errors import CheckpointError
        from .io.hf import SCORE_NAME

        try:
            model, tokenizer, model_dir = load_model_and_tokenizer(path, dtype=dtype)
        except CheckpointError as error:
            if error.tensor != SCORE_NAME:
                raise
            # the generic advice (`npllama classify --model path`) would not say what --adapter wanted
            raise CheckpointError(error.path, f"this is a classifier already (its own score head), but the adapter "
                                  f"{str(adapter)!r} attaches to the base language model it was trained on: give "
                                  f"that as the model, or classify with this folder alone, without the adapter",
                                  tensor=SCORE_NAME) from None
        load_adapter(model, adapter)   # under the adapter run's reader lock
        return adapted_classifier(model, adapter, tokenizer, model_dir)

    from .io.hf import load_hf_classifier_folder, objective_of
    from .model import Llama

    with reading_model_dir(path) as model_dir:
        config, params, score, raw = load_hf_classifier_folder(model_dir, dtype=dtype)
        tokenizer = load_tokenizer(model_dir)
        info = read_info(model_dir)
        names = _label_names(info, raw, score.shape[0])
        # "mlm": fine-tuned from a masked-LM model, bidirectionally (finetune.SequenceClassifier.save)
        objective = objective_of(raw, model_dir / "config.json")
    model = Llama(config, dtype=dtype, params=params, objective=objective)
    tokenizer.check_vocab(config.vocab_size)
    # config.json's pad_token_id, checked as the config was read
    return Classifier(model, score, names, tokenizer, str(model_dir), config.pad_token_id, _trained_max_len(info))


def adapted_classifier(model, adapter, tokenizer, model_dir, pad_token_id: int | None = None,
                       info: dict | None = None) -> Classifier:
    """The Classifier made by `model` with the sequence-classification LoRA adapter folder `adapter`
    attached to it (load_adapter): the head is the adapter's score.weight, its labels and max_len
    finetune.json's.  The head skips the pad id fine-tuning padded with: finetune.json's "pad_id"
    (trained_pad_id), else the tokenizer's (pad_id_of), an adapter saved before the record being
    trained with that; pad_token_id: the id when neither is at hand (tokenizer None: npllama.debug's
    --tokens).  info: the adapter's finetune.json fields (read_info) when the caller has read them."""
    score = model.lora.extra.pop(SCORE, None)
    if score is None:
        raise ValueError(f"adapter {str(adapter)!r} has no score.weight: it is not a sequence-classification "
                         f"adapter (made with `npllama finetune classify --lora --out DIR`, or PEFT's SEQ_CLS)")
    info = read_info(Path(adapter)) if info is None else info
    names = _label_names(info, {}, score.shape[0])
    recorded = trained_pad_id(info, model.config.vocab_size)
    classifier = Classifier(model, score, names, tokenizer, f"{model_dir} + {adapter}",
                            pad_token_id if recorded is None else recorded, max_len=_trained_max_len(info))
    _check_attention(classifier, info.get("attention"), adapter, model_dir)
    return classifier


def _trained_max_len(info: dict) -> int | None:
    """finetune.json's max_len (the tokens fine-tuning kept per text), or None when it has none."""
    max_len = info.get("max_len")
    return max_len if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 0 else None


def trained_pad_id(info: dict, vocab_size: int) -> int | None:
    """finetune.json's pad_id (the id an adapter's head trained with), or None when it has none that
    the model's vocabulary holds."""
    pad_id = info.get("pad_id")
    return pad_id if isinstance(pad_id, int) and not isinstance(pad_id, bool) and 0 <= pad_id < vocab_size else None


def _label_names(info: dict, config: dict, num_labels: int) -> list[str]:
    """config.json's id2label, else finetune.json's label_names, else LABEL_0, LABEL_1, ..."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_labels:
        try:
            return [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(num_labels)]
        except KeyError:
            pass
    names = info.get("label_names")
    if isinstance(names, list) and len(names) == num_labels:
        return [str(n) for n in names]
    return [f"LABEL_{i}" for i in range(num_labels)]


def _check_attention(classifier: Classifier, recorded, adapter, model_dir) -> None:
    """An adapter is run with the attention it was trained with (finetune.json's "attention"),
    which its base's objective decides: refuse a base of the other kind rather than run it so."""
    if recorded in ("causal", "bidirectional") and recorded != classifier.head.attention:
        kind = {"causal": "a causal LM", "bidirectional": "a masked-LM model (npllama_objective \"mlm\")"}
        raise ValueError(f"adapter {str(adapter)!r} was fine-tuned with {recorded} attention on {kind[recorded]}, "
                         f"but the base {str(model_dir)!r} is {kind[classifier.head.attention]}: load it with the "
                         f"base it was trained on (finetune.json's \"base\")")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str; wrap one text in a list: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("texts must hold at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.strip():   # the head would read <s> alone: one answer for every empty text
            raise ValueError(f"texts[{i}] is empty: give the text to classify (fine-tuning refuses an empty "
                             f"text too)")
    return texts



def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


__all__ = ["Classified", "Classifier", "load_classifier"]
