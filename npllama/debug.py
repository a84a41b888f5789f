"""Finding the first divergence: run the same tokens two ways, trace both, compare in execution order.

    from npllama import debug
    ids = tokenizer.encode("Once upon a time")              # one sequence: its next tokens are the targets
    report = debug.compare_backends(model, ids)             # numpy reference vs numba kernels
    report = debug.compare_dtypes(model, ids)               # float32 vs float64
    report = debug.compare_transformers("runs/x/model", ids)  # npllama vs LlamaForCausalLM
    report = debug.compare_transformers(edited_model, ids, transformers_folder="runs/x/model")  # vs the original
    print(report)        # the first tensor that differs beyond tolerance, its worst index, both values

Every comparison records the forward intermediates and the backward gradients of one
`loss_and_grads` call (next-token loss on the given tokens; for a masked-LM model, the masked-LM
loss of the targets given, `masked_lm_batch`; for a SequenceClassifier, the classification loss of
the given labels) under the names of npllama.trace, then
`npllama.trace.compare` walks them in npllama's execution order.

The transformers side is traced with forward hooks on the Hugging Face modules, mapped to the same
names (`model.layers.0.mlp.gate_proj` output -> `model.layers.0.mlp.gate`, ...); the two steps that
are functions rather than modules (RoPE, and the attention probabilities) are caught by wrapping
`apply_rotary_pos_emb` for the duration of the call and by the attention module's second output.
Gradients come from `retain_grad()` on the same tensors.  torch and transformers are imported only
inside the functions that run transformers (here and in npllama.debug_training): nothing else in
npllama needs them.  In float64 the transformers side computes in float64 throughout
(`float64_faithful`; `compare_transformers(..., faithful=False)` runs it as it ships).

`planted_bug(name)` swaps a deliberately wrong op into a backend, to see what a divergence report
looks like (and to test that `compare` points at the right tensor).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from . import backend
from .ops.attention import attention_mask as _attended
from .gradcheck import rel_error
from .trace import Comparison, Trace, _qualname, _where_attended, compare, trace

# Default relative tolerances, against each tensor's scale.  float32 round-off stays near 1e-6 for
# most tensors, but gradients formed by cancellation (dq, dk and their weights' gradients, of a
# trained model) reach ~2e-4 between two correct backends; a real bug is off by 1e-1 or more.
DEFAULT_RTOL = {np.float32: 1e-3, np.float64: 1e-9}
# Stock transformers runs RMSNorm, the RoPE tables and the softmax in float32 even in float64, so
# against it both dtypes see float32 round-off: the float32 tolerance.  A model with large weights
# (large attention scores) reaches 2e-4 there, as between our two backends.
TRANSFORMERS_RTOL = DEFAULT_RTOL[np.float32]
FLOAT64_AGAINST_TRANSFORMERS = (
    "stock transformers (faithful=False, --stock-transformers) runs RMSNorm, the RoPE tables and the softmax "
    "in float32 even in float64: expect float32-size differences (more in gradients through a saturated "
    "softmax), not float64 agreement")
# Against the float64-faithful transformers (float64_faithful) both sides compute in float64 and
# differ by their operation order alone.  Measured on 2-layer random models (MHA, GQA, MQA with tied
# embeddings, llama3 rope_scaling, head_dim 6; norms moved off 1), every forward tensor, attn_probs,
# the loss and every gradient agree within rtol 7.5e-16 by compare's rule (|a - b| <= rtol * (|b| +
# max|b|)), and within 2.2e-14 with weights of size 1 (saturated softmaxes, gradients formed by
# cancellation).  DEFAULT_RTOL's 1e-9 for float64 leaves a margin of 4e4 above the worst of these and
# is 1e4 below a 1e-5 slip: an rms_norm_eps off by 0.1% moves input_layernorm.out by 7e-7 to 8e-5.
TRANSFORMERS_FLOAT64_RTOL = DEFAULT_RTOL[np.float64]
FLOAT64_FAITHFUL_TRANSFORMERS = (
    "float64: transformers ran float64-faithful (npllama.debug.float64_faithful: RMSNorm, the RoPE tables and "
    "the eager softmax in float64, its RoPE frequencies checked against npllama's), so wherever the two compute the "
    "same thing they agree to float64 round-off, and a difference beyond that is a real one; faithful=False (--stock-transformers) compares with stock transformers instead")
# A causal query before its row's first real token has no key it may attend.  npllama gives it zero
# attention; transformers' eager attention masks it with its dtype's most negative value everywhere,
# which its softmax spreads uniformly over every key -- except stock transformers in float64, whose
# float32 softmax turns float64's most negative value into -inf and so makes NaN.  A convention, not
# a bug, but every tensor at those positions differs.
LEFT_PADDING_AGAINST_TRANSFORMERS = (
    "a row of attention_mask starts with padding: the queries before its first real token may attend "
    "no key, which npllama answers with zero attention and transformers with {what}, so tensors at "
    "those positions differ by construction; pad on the right to compare")
LEFT_PADDING_UNIFORM = "a uniform one"
LEFT_PADDING_NAN = ("NaN (stock transformers in float64: its float32 softmax of float64's most negative "
                    "mask value; the NaN reaches the loss)")


# ----- inputs ---------------------------------------------------------------------------------------

def next_token_batch(ids) -> tuple[np.ndarray, np.ndarray]:
    """tokens (B, T) and their next-token targets (B, T), each row its own text; the last position
    of each row has none (-100).  ids: one sequence (T,), or rows of equal length (B, T)."""
    tokens = _rows(ids)
    targets = np.full_like(tokens, -100)
    targets[:, :-1] = tokens[:, 1:]
    return tokens, targets


def masked_lm_batch(ids, tokenizer, seed: int = 0, seed_name: str = "seed") -> tuple[np.ndarray, np.ndarray]:
    """A masked-LM model's inputs (B, T) and targets (B, T) for ids (as next_token_batch takes them):
    masked as `npllama train --objective mlm` masks its held-out windows and `npllama eval mlm` its
    text (objectives.masked_held_out, draws from `seed` alone): 15% of the ordinary tokens chosen,
    of those 80% made the mask (<unk>), 10% a random token, 10% kept; targets -100 except at the
    chosen positions.  A ValueError when the seed chooses none (a short text), naming a seed that
    chooses one (seed_name: what the message calls the seed, e.g. --seed)."""
    from .objectives import IGNORE_INDEX, masked_held_out

    tokens = _rows(ids)
    masked = lambda s: masked_held_out([(tokens, None)], tokenizer, s)[0]   # noqa: E731
    inputs, targets = masked(int(seed))
    if (targets != IGNORE_INDEX).any():
        return inputs, targets
    other = next((s for s in range(int(seed) + 1, int(seed) + 1000) if (masked(s)[1] != IGNORE_INDEX).any()), None)
    raise ValueError(f"{seed_name} {seed} masks none of the {tokens.size} tokens (each ordinary token is chosen with "
                     f"probability 15%, as in training), so there is no masked-LM loss: "
                     + ("give a longer text (<s>, </s> and <unk> are never chosen)" if other is None else
                        f"give a longer text, or {seed_name} {other}, which masks some"))


def _rows(ids) -> np.ndarray:
    """ids (T,) or (B, T) as int64 rows (B, T)."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"token ids must be a non-empty sequence (T,) or batch (B, T), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64)


# A masked-LM model reads every position both ways: with next-token targets each position would
# see the token it is asked for, a loss that measures nothing
MASKED_LM_NEEDS_TARGETS = (
    "the model is a masked-LM model (objective \"mlm\"), which runs with bidirectional attention: next-token "
    "targets mean nothing to it (each position sees the token it would predict); give its masked inputs and "
    "targets, as training masks them: tokens, targets = npllama.debug.masked_lm_batch(ids, tokenizer, seed)")


def parse_token_ids(text: str) -> list[int]:
    """'1,5,9' or '1 5 9' -> [1, 5, 9]."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--tokens must be integers separated by commas, e.g. 1,5,9; got {text!r}") from None
    if not ids:
        raise ValueError("--tokens is empty; give at least one token id, e.g. --tokens 1,5,9")
    return ids


def model_path(model=None, adapter=None) -> Path:
    """The model the commands' --model names: a GGUF file or a llama2.c checkpoint as it is (npllama
    reads both, see Llama.from_pretrained), else a Hugging Face folder (a run folder's model/; None:
    the latest run's, or with a LoRA `adapter` folder the base its adapter_config.json names)."""
    from .io.describe import describe_model_path
    from .io.gguf_import import looks_like_gguf
    from .io.llama2c import looks_like_llama2c
    from .lora import model_or_adapter_base
    from .runs import resolve_model_dir

    model = model_or_adapter_base(model, adapter)   # with an adapter alone its base, not the latest run
    if model is not None and Path(model).expanduser().is_file():
        path = Path(model).expanduser()
        if looks_like_gguf(path) or looks_like_llama2c(path):
            return path
        raise ValueError(f"--model takes a model folder (Hugging Face, or a run folder), a GGUF file or a llama2.c "
                         f"checkpoint; {describe_model_path(path)}")
    return resolve_model_dir(model)


def _tokenizer_of_file(path: Path, vocab_size: int | None):
    """The tokenizer of a GGUF file (its own vocabulary) or of a llama2.c checkpoint (tokenizer.model or
    llama2.c's tokenizer.bin beside it), as `npllama convert` would write it into the folder.
    vocab_size None: the checkpoint's own (its header's), for a caller that has not loaded it."""
    from .io.gguf_import import gguf_tokenizer_model_bytes, looks_like_gguf
    from .io.llama2c import read_llama2c_header, tokenizer_model_bytes
    from .tokenizer import Tokenizer

    if looks_like_gguf(path):
        return Tokenizer.from_bytes(gguf_tokenizer_model_bytes(path))
    if vocab_size is None:
        vocab_size = read_llama2c_header(path).vocab_size
    for beside in (path.parent / "tokenizer.model", path.parent / "tokenizer.bin"):
        if beside.is_file():
            return Tokenizer.from_bytes(tokenizer_model_bytes(beside, vocab_size))
    raise FileNotFoundError(f"no tokenizer.model or tokenizer.bin beside {str(path)!r}")


def tokenizer_of(model_dir: Path, vocab_size: int | None):
    """(the tokenizer of --model, or None; why there is none).  A folder's tokenizer.model (in or
    beside it) or tokenizer.json; a file's as `npllama convert` finds it (_tokenizer_of_file).
    model_dir: what model_path gives.  vocab_size: the model's, None when it is not loaded yet."""
    from .io.errors import CheckpointError
    from .runs import load_tokenizer

    try:
        return (_tokenizer_of_file(model_dir, vocab_size) if model_dir.is_file() else load_tokenizer(model_dir)), None
    except FileNotFoundError:
        looked_for = ("tokenizer.model or tokenizer.bin beside" if model_dir.is_file()
                      else "tokenizer.model or tokenizer.json in or beside")
        return None, f"no {looked_for} {str(model_dir)!r}"
    except CheckpointError as error:   # one is there, but cannot serve: say why, not that it is missing
        return None, f"the tokenizer of {str(model_dir)!r} cannot be used: {error}"


def _attach_adapter(llama, adapter, model_dir: Path, classifier: bool, tokenizer, no_tokenizer: str | None):
    """Attach the LoRA adapter folder `adapter` to `llama`: the SequenceClassifier it makes when it was
    saved for sequence classification (with `classifier`), else None (llama predicts tokens)."""
    from .classify import adapted_classifier, trained_pad_id
    from .finetune import SCORE, read_info
    from .lora import check_causal_lm, load_adapter

    adapters = load_adapter(llama, adapter, task=None if classifier else "CAUSAL_LM")
    if SCORE not in adapters.extra:
        check_causal_lm(llama)   # a classification adapter without its head is no token predictor either
        return None
    info = read_info(Path(adapter))   # read once: its pad id, labels, max_len and attention
    pad_token_id = None   # the id fine-tuning padded with: the adapter's record, else the tokenizer's
    if tokenizer is None and trained_pad_id(info, llama.config.vocab_size) is None:
        pad_token_id = llama.config.pad_token_id   # an adapter saved before the record, without its tokenizer
        if pad_token_id is None:
            # a GGUF or llama2.c base has no config.json to edit: its folder form has (npllama convert)
            where, fix = (("its config.json", "set config.json's pad_token_id") if model_dir.is_dir() else
                          (f"{model_dir.name}", f"convert it to a folder (npllama convert) and set that "
                                                f"config.json's pad_token_id"))
            raise ValueError(f"--adapter {str(adapter)!r} is a sequence-classification adapter, whose head skips "
                             f"the pad id, the base's tokenizer's; but there is {no_tokenizer}, and no pad_token_id "
                             f"in {where}: add the base's tokenizer, or {fix}")
    return adapted_classifier(llama, adapter, tokenizer, model_dir, pad_token_id, info).head


def load_inputs(model=None, text: str | None = None, tokens: str | None = None, dtype=np.float32,
                classifier: bool = False, adapter=None):
    """(model, model_dir, ids, labels) for the commands' --model / --text / --tokens.

    model: a run folder, a run's model/ folder, any Hugging Face folder (None: the latest run; with
    an adapter, the base its adapter_config.json names), a GGUF file or a llama2.c checkpoint (model_path).
    text needs the model's tokenizer (tokenizer.model in or beside the folder, or tokenizer.json in
    it; a GGUF file's own; tokenizer.model or tokenizer.bin beside a llama2.c file); tokens ("1,5,9")
    does not.
    labels are the tokens' pieces when a tokenizer is there, else their ids.
    classifier: a LlamaForSequenceClassification folder loads as a SequenceClassifier (debug
    compare/trace run its classification loss); otherwise it is refused as no token predictor.
    adapter: a LoRA adapter folder (PEFT layout) attached to the model: a causal-LM one, or with
    `classifier` a sequence-classification one (`finetune classify --lora`), which makes the model
    that classifier (npllama.load_classifier(model, adapter=...)); its head skips the pad id it was
    trained with (its finetune.json's pad_id), for an adapter without that record the model's
    tokenizer's, or without one (tokens given) config.json's pad_token_id.  A classifier folder
    takes no adapter."""
    from .model import Llama

    if (text is None) == (tokens is None):
        raise ValueError("give exactly one of --text (needs the model's tokenizer.model or tokenizer.json) or "
                         "--tokens 1,5,9 (token ids)")
    model_dir = model_path(model, adapter)
    if classifier and _is_classifier_folder(model_dir):
        if adapter is not None:   # (it would run without it)
            raise ValueError(f"--model {str(model_dir)!r} is a classifier (a LlamaForSequenceClassification "
                             f"folder), which --adapter does not attach to: give as --model the base language "
                             f"model the adapter {str(adapter)!r} was fine-tuned on")
        head = _from_folder(model_dir, dtype, label_names=True)
        llama = head.model
    else:
        head, llama = None, Llama.from_pretrained(model_dir, dtype=dtype)
    tokenizer, no_tokenizer = tokenizer_of(model_dir, llama.config.vocab_size)
    if adapter is not None:
        head = _attach_adapter(llama, adapter, model_dir, classifier, tokenizer, no_tokenizer)
    if text is not None and tokenizer is None:
        raise ValueError(f"{no_tokenizer}, so --text cannot be tokenized; pass token ids instead, e.g. "
                         f"--tokens 1,5,9")
    if text is not None:
        if not text:
            raise ValueError("--text is empty")
        tokenizer.check_vocab(llama.config.vocab_size)
        ids = tokenizer.encode(text, bos=True, eos=False)
    else:
        ids = parse_token_ids(tokens)
        vocab = llama.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"--tokens holds id {bad[0]}, outside the model's vocabulary [0, {vocab})")
    if len(ids) > llama.config.max_position_embeddings:
        raise ValueError(f"{len(ids)} tokens is longer than the model's context "
                         f"({llama.config.max_position_embeddings}); use a shorter text")
    if tokenizer is not None and tokenizer.vocab_size == llama.config.vocab_size:
        labels = [tokenizer.id_to_piece(i) for i in ids]
    else:
        labels = [str(i) for i in ids]
    return head or llama, model_dir, ids, labels


def class_index(classifier, label: str | None) -> int:
    """The index of `label` -- a class name or its index, as text -- among a SequenceClassifier's
    label names (the commands' --label)."""
    names = [str(n) for n in classifier.label_names]
    if label is None:
        raise ValueError(f"the model is a classifier: give the text's class with --label, one of {', '.join(names)}")
    if label in names:
        return names.index(label)
    if label.isdigit() and int(label) < len(names):
        return int(label)
    raise ValueError(f"--label {label!r} is not one of the classifier's labels ({', '.join(names)}) "
                     f"or their index (0 to {len(names) - 1})")


# ----- one traced run -------------------------------------------------------------------------------

def run_trace(model, tokens, targets=None, *, backend_name: str = "numpy", include=None, exclude=None,
              attention_mask=None) -> Trace:
    """Trace one loss_and_grads call of `model` on the given backend.

    model: a Llama -- tokens (B, T) with targets (B, T), or with targets None each row's next tokens
    (one sequence's ids may be flat; a masked-LM model needs its targets: masked_lm_batch) -- or a
    SequenceClassifier (npllama.finetune) -- tokens (B, T) or flat ids, targets its labels (B,),
    attention_mask None: every token real.  What `npllama.load_classifier` returns stands for its
    SequenceClassifier (`.head`).  meta["loss"] says which loss ran: loss_traced(model)."""
    model = _model_in_memory(model)
    if _is_classifier(model):
        tokens, targets, attention_mask = _classifier_batch(tokens, targets, attention_mask)
        run = lambda: model.loss_and_grads(tokens, attention_mask, targets)   # noqa: E731
    else:
        if targets is None and not model.attends_causally:
            raise ValueError(MASKED_LM_NEEDS_TARGETS)
        tokens, targets = _batch(tokens, targets)
        run = lambda: model.loss_and_grads(tokens, targets, attention_mask)   # noqa: E731
    with backend.use_backend(backend_name), trace(include, exclude) as t:
        run()
    t.meta.update(source="npllama", backend=backend_name, dtype=np.dtype(_dtype_of(model)).name,
                  tokens=np.asarray(tokens).tolist(), loss=loss_traced(model))
    return t


def loss_traced(model) -> str:
    """Which loss run_trace runs for `model`: "classification", "next-token" or "masked-LM"."""
    model = _traceable(model)
    if _is_classifier(model):
        return "classification"
    return "next-token" if model.attends_causally else "masked-LM"


def _batch(tokens, targets):
    if targets is None:
        return next_token_batch(tokens)
    return np.asarray(tokens), np.asarray(targets)


def _traceable(model):
    """A loaded classifier (npllama.classify.Classifier: model, head and tokenizer, for text) as its
    SequenceClassifier, the part that has a loss to trace; anything else as it is."""
    from .classify import Classifier

    return model.head if isinstance(model, Classifier) else model


def _model_in_memory(model):
    """_traceable(model) for the calls that run a model in memory (run_trace, compare_backends,
    compare_dtypes): anything else refused here, not as an AttributeError deep in the trace."""
    from .finetune import SequenceClassifier
    from .model import Llama

    model = _traceable(model)
    if not isinstance(model, (Llama, SequenceClassifier)):
        raise TypeError(f"model must be a Llama, a SequenceClassifier or a loaded classifier "
                        f"(npllama.load_classifier), got {type(model).__name__}")
    return model


def _is_classifier(model) -> bool:
    from .finetune import SequenceClassifier

    return isinstance(model, SequenceClassifier)


def _llama_of(model):
    """The Llama itself: a SequenceClassifier's model, or the model."""
    return model.model if _is_classifier(model) else model


def _dtype_of(model):
    return _llama_of(model).dtype


def _dtype_given_or_of(model_or_path, dtype):
    """dtype, or when it is None the dtype of a model in memory (a path: float32, as the CLI runs)."""
    if dtype is not None:
        return dtype
    model = _traceable(model_or_path)
    return _dtype_of(model) if hasattr(model, "loss_and_grads") else np.float32


def _classifier_batch(tokens, labels, attention_mask):
    """tokens (B, T), labels (B,), attention_mask (B, T) for a classifier's loss_and_grads."""
    if labels is None:
        raise ValueError("targets must be the classifier's labels, one per row of tokens (ints in "
                         "[0, num_labels)); got None")
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    attention_mask = np.ones(tokens.shape, dtype=bool) if attention_mask is None else np.asarray(attention_mask)
    return tokens, np.atleast_1d(np.asarray(labels)), attention_mask


# ----- the comparisons ------------------------------------------------------------------------------

def compare_backends(model, tokens, targets=None, backends=("numpy", "numba"), *, rtol=None, atol=None,
                     include=None, exclude=None, attention_mask=None) -> Comparison:
    """The same model on two backends (default: the NumPy reference vs the Numba kernels).
    model: a Llama, or a SequenceClassifier with targets its labels (see run_trace)."""
    model = _model_in_memory(model)
    a_name, b_name = backends
    a = run_trace(model, tokens, targets, backend_name=a_name, include=include, exclude=exclude,
                  attention_mask=attention_mask)
    b = run_trace(model, tokens, targets, backend_name=b_name, include=include, exclude=exclude,
                  attention_mask=attention_mask)
    rtol = DEFAULT_RTOL[_dtype_of(model)] if rtol is None else rtol
    return _noting_shared_code(compare(a, b, rtol, atol, labels=(a_name, b_name)), "ops", model)


def compare_dtypes(model, tokens, targets=None, *, backend_name="numpy", rtol=None, atol=None,
                   include=None, exclude=None, attention_mask=None) -> Comparison:
    """float32 vs float64 on the same parameters (the float32 values, cast exactly to float64).
    model: a Llama, or a SequenceClassifier with targets its labels (see run_trace).

    What differs is float32's round-off, ~1e-7 relative, and more where a step amplifies it (sharp
    attention: scores ~100 make the attention's gradients differ by ~1e-5), within the 1e-3
    tolerance.  A step that overflows in float32 alone shows as NaN or Inf in one trace only: a
    softmax without the max shift agrees to round-off while every score stays below ~88, and past
    that its float32 side is NaN (exp overflows to inf, inf / inf) while float64's, finite up to
    ~709, is not."""
    model = _model_in_memory(model)
    m32, m64 = _as_dtype(model, np.float32), _as_dtype(model, np.float64)
    a = run_trace(m32, tokens, targets, backend_name=backend_name, include=include, exclude=exclude,
                  attention_mask=attention_mask)
    b = run_trace(m64, tokens, targets, backend_name=backend_name, include=include, exclude=exclude,
                  attention_mask=attention_mask)
    rtol = DEFAULT_RTOL[np.float32] if rtol is None else rtol
    return _noting_shared_code(compare(a, b, rtol, atol, labels=("float32", "float64")), "precision", model)


# Said when a comparison of two npllama runs finds nothing, by what the two runs shared: a slip in
# what they shared is on both sides.  {shared}: the code besides model.py that ran on both sides;
# {see}: where to look next, for a model compare_transformers takes (_ELSEWHERE) or refuses (_REFUSED).
SHARED_CODE = {
    "ops": ("both runs ran npllama/model.py, which joins the ops (the heads' splits and merges, the residual "
            "sums, the sum of the q, k and v projections' dx, the tied embedding's two gradients){shared}, and "
            "differ only in the ops that have a kernel (npllama/ops against npllama/kernels): a slip in what "
            "both ran is on both sides and cannot show here; {see}"),
    "precision": ("both runs ran the same code, in float32 and in float64: a wrong step, in an op or in "
                  "npllama/model.py, is wrong on both sides and cannot show here, only float32's round-off "
                  "and range; compare_backends (`npllama debug compare`) checks the ops against the kernels; "
                  "{see}"),
}
_ELSEWHERE = {"ops": "compare_transformers (`npllama debug compare --against transformers`) checks model.py too",
              "precision": "compare_transformers (`--against transformers`) the ops and model.py"}
# compare_transformers refuses a model with LoRA adapters (_refuse_lora) and one that attends both
# ways: a finite-difference check of its loss sees every step it runs.
_REFUSED = ("compare_transformers refuses {what}; a finite-difference check of the loss sees every step: "
            "npllama.gradcheck(lambda *_: {loss}, params, grads) in float64, params the arrays that get "
            "gradients ({params}; docs/gradcheck.md)")
# the code a comparison of backends ran on both sides besides model.py (and lora.py): ops with no kernel
_SHARED_FUNCTION = re.compile(r"npllama\.ops\.[\w.]+")


def _noting_shared_code(comparison: Comparison, shared: str, model) -> Comparison:
    """`comparison`, with SHARED_CODE[shared] among its notes when it found no divergence: "no
    divergence" must not pass for a clean backward when the slip would be on both sides.  model:
    what was compared (a Llama or a SequenceClassifier), for what else can check it."""
    if not comparison.ok:
        return comparison
    classifier, llama = _is_classifier(model), _llama_of(model)
    both_ways = not model.causal if classifier else not llama.attends_causally
    refused = [what for what, is_so in (("a model with LoRA adapters", llama.lora is not None),
                                        ("a model that attends both ways (masked-LM)", both_ways)) if is_so]
    if refused:
        loss = "model.loss_and_grads(tokens, attention_mask, labels)[0]" if classifier else "model.loss(tokens, targets)"
        params = ("model.params" if classifier else
                  "model.lora.params" if llama.lora is not None else "model.params")
        see = _REFUSED.format(what=" and ".join(refused), loss=loss, params=params)
    else:
        see = _ELSEWHERE[shared]
    both = ""
    if shared == "ops":
        functions = _functions_run_on_both_sides(*comparison.traces)
        lora = ", npllama/lora.py's adapted projections" if llama.lora is not None else ""
        both = lora + (f", the ops with no kernel ({', '.join(functions)})" if functions else "")
    comparison.notes.append(SHARED_CODE[shared].format(shared=both, see=see))
    return comparison


def _functions_run_on_both_sides(a, b) -> list[str]:
    """The functions of npllama/ops that computed a record alike in both traces -- the ops with no
    kernel: the embedding lookup, a classifier head -- in the order they ran."""
    functions = {}
    for name, source in a.sources.items():
        found = _SHARED_FUNCTION.match(source) if b.sources.get(name) == source else None
        if found:
            functions[found[0]] = None
    return list(functions)


def compare_transformers(model_or_dir, tokens, targets=None, *, dtype=None, backend_name="numpy",
                         rtol=None, atol=None, include=None, exclude=None, attention_mask=None,
                         faithful: bool = True, transformers_folder=None) -> Comparison:
    """npllama vs transformers.LlamaForCausalLM on the same Hugging Face folder (or model); for a
    SequenceClassifier or a LlamaForSequenceClassification folder, vs LlamaForSequenceClassification,
    targets its labels (see run_trace).  attention_mask (B, T), 1 = real token, is given to both.

    A model given here is saved to a temporary folder that both sides load, so an edit made to it
    in npllama is on both sides; so is the path of a GGUF or llama2.c file, as npllama reads it (a
    run folder stands for its model/ folder).  A model with LoRA adapters attached is refused
    (transformers' Llama runs none), and so is a masked-LM model (model.attends_causally False:
    LlamaForCausalLM would run it causally).  transformers_folder: the Hugging Face folder transformers
    loads instead, against npllama's model as it is in memory (or as npllama loads model_or_dir: a
    folder, a GGUF or llama2.c file) -- an edited or converted model against the original.  The
    parameters that differ between the two are named in a note, before any tensor.

    In float64, stock transformers still runs RMSNorm, the RoPE tables and the eager softmax in
    float32; faithful (the default) replaces those with float64 versions (float64_faithful: its
    RoPE frequencies are checked against npllama's), so the comparison holds at float64 precision
    (TRANSFORMERS_FLOAT64_RTOL).  faithful=False compares with stock transformers, at float32's
    tolerance.  In float32 transformers runs as it ships either way.  The report's notes say which
    ran.  dtype: both sides' precision; None: a model's own (float32 for a path)."""
    if not isinstance(faithful, bool):
        raise TypeError(f"faithful must be True or False, got {faithful!r}")
    dtype = np.dtype(_dtype_given_or_of(model_or_dir, dtype)).type
    faithful_run = faithful and dtype == np.float64
    with _npllama_and_folder(model_or_dir, dtype, transformers_folder) as (ours, folder):
        if _is_classifier(ours) and not ours.causal:   # (numpy against numba, or the dtypes, compare it)
            from .finetune import BIDIRECTIONAL_NOTE

            raise ValueError(f"the classifier runs {BIDIRECTIONAL_NOTE}: there is nothing to compare")
        if not _is_classifier(ours) and not ours.attends_causally:
            raise ValueError("the model is a masked-LM model (objective \"mlm\"), which runs with bidirectional "
                             "attention, as it was trained; transformers' LlamaForCausalLM would run it causally, "
                             "so every tensor from the first attention on would differ: there is nothing to "
                             "compare (numpy against numba, or float64, compare it as it runs)")
        a = run_trace(ours, tokens, targets, backend_name=backend_name, include=include, exclude=exclude,
                      attention_mask=attention_mask)
        hf = load_transformers_model(folder, dtype)
        config = _llama_of(ours).config
        rope_notes = set_up_transformers(hf, config, faithful_run)
        b = transformers_trace(folder, tokens, targets, dtype=dtype, include=include, exclude=exclude,
                               attention_mask=attention_mask, hf_model=hf)
    if rtol is None:
        rtol = TRANSFORMERS_FLOAT64_RTOL if faithful_run else TRANSFORMERS_RTOL
    comparison = compare(a, b, rtol, atol, labels=("npllama", "transformers"))
    comparison.notes += (_loaded_differently(ours, hf, transformers_folder)
                         + _configured_differently(config, hf.config, transformers_folder) + rope_notes)
    if dtype == np.float64:
        comparison.notes.append(FLOAT64_FAITHFUL_TRANSFORMERS if faithful_run else FLOAT64_AGAINST_TRANSFORMERS)
    if attention_mask is not None and not np.asarray(attention_mask, dtype=bool)[..., 0].all():
        stock_float64 = dtype == np.float64 and not faithful_run
        comparison.notes.append(LEFT_PADDING_AGAINST_TRANSFORMERS.format(
            what=LEFT_PADDING_NAN if stock_float64 else LEFT_PADDING_UNIFORM))
    return comparison


# The settings of config.json that change what a Llama computes but not the shapes of its weights:
# a difference in one of them shows in no parameter, only in the tensors.  (RoPE's are checked
# through the frequencies themselves, by _rope_frequency_check.)
_COMPUTING_SETTINGS = ("rms_norm_eps", "num_attention_heads", "num_key_value_heads", "head_dim")


def _configured_differently(config, hf_config, transformers_folder=None) -> list[str]:
    """A note naming the settings that npllama's config and transformers' differ in (an rms_norm_eps
    that one side defaulted, a converted model with the heads split differently): like a parameter,
    such a setting shows first in the op that uses it, which is not where the mistake is."""
    differ = [f"{name} {getattr(config, name)!r} in npllama, {getattr(hf_config, name, None)!r} in transformers"
              for name in _COMPUTING_SETTINGS if getattr(config, name) != getattr(hf_config, name, None)]
    if not differ:
        return []
    where = "from the folder" if transformers_folder is None else f"from {str(transformers_folder)!r}"
    return [f"npllama's model and the one transformers loaded {where} are configured differently: "
            f"{'; '.join(differ)}; expect the first divergence where that setting is first used"]


def _loaded_differently(ours, hf, transformers_folder=None) -> list[str]:
    """A note naming the parameters in which npllama's model and transformers' differ.  From the
    same folder such a difference is a loader's slip (a weight transposed, permuted, scaled, a tied
    head untied); against another folder (transformers_folder) it is what was edited or converted.
    Either way it shows first in the op that reads the weight, and the report alone would send the
    reader into that correct op."""
    ours_params = ours.params   # a classifier's: its model's without the unused LM head, and score.weight
    differ = []
    theirs_params = dict(hf.named_parameters())
    for name, param in theirs_params.items():
        theirs = param.detach().cpu().numpy()
        mine = ours_params.get(name)
        if mine is None:
            differ.append(f"{name} (npllama has none)")
        elif mine.shape != theirs.shape:
            differ.append(f"{name} (shape {mine.shape} in npllama, {theirs.shape} in transformers)")
        elif not np.array_equal(mine, theirs):
            differ.append(f"{name} (relative error {rel_error(mine, theirs, tiny=1e-300):.3g})")
    differ += [f"{name} (transformers has none)" for name in ours_params if name not in theirs_params]
    if not differ:
        return []
    listed = "; ".join(differ[:3]) + (f", and {len(differ) - 3} more" if len(differ) > 3 else "")
    if transformers_folder is None:
        return [f"npllama and transformers loaded different parameters from the folder: {listed}; the first "
                f"divergence below may be where such a weight is first read, not a wrong step"]
    return [f"npllama's model and the one transformers loaded from {str(transformers_folder)!r} have different "
            f"parameters: {listed}; expect the first divergence where such a weight is first read (a "
            f"consequence of the difference, not necessarily a wrong step)"]


def _as_dtype(model, dtype):
    from .finetune import SequenceClassifier
    from .lora import LoraAdapters
    from .model import Llama

    if _dtype_of(model) == dtype:
        return model
    if _is_classifier(model):
        classifier = SequenceClassifier(_as_dtype(model.model, dtype), model.label_names, pad_id=model.pad_id)
        classifier.score_weight = model.score_weight.astype(dtype)
        return classifier
    params = {name: p.astype(dtype) for name, p in model.params.items()}
    copy = Llama(model.config, dtype=dtype, params=params, objective=model.objective)
    if model.lora is not None:   # without its adapters the copy would be another model
        lora = model.lora
        # (not attach_lora, whose rank check is for a choice of r: a loaded adapter's may exceed it)
        adapters = copy.lora = LoraAdapters(copy, lora.r, lora.lora_alpha, lora.lora_dropout,
                                            use_rslora=lora.use_rslora, modules=lora.module_settings)
        adapters.params = {name: p.astype(dtype) for name, p in lora.params.items()}
    return copy


@contextlib.contextmanager
def _npllama_and_folder(model_or_dir, dtype, transformers_folder):
    """(npllama's model in `dtype`, the folder transformers loads).  By default both come from one
    folder: model_or_dir, or a model saved to a temporary one.  With transformers_folder, npllama's
    model is model_or_dir as it is (or as npllama loads that path) and transformers loads the other."""
    model_or_dir = _traceable(model_or_dir)
    if isinstance(model_or_dir, (str, os.PathLike)):   # a run folder names its model/ folder, as for --model
        model_or_dir = model_path(model_or_dir)
    if transformers_folder is None:
        with _as_folder(model_or_dir) as folder:
            yield _from_folder(folder, dtype), folder
        return
    from .ops._checks import require_path

    require_path("transformers_folder", transformers_folder, "the Hugging Face folder transformers loads")
    if not (Path(transformers_folder) / "config.json").is_file():
        raise ValueError(f"transformers_folder {str(transformers_folder)!r} is not a Hugging Face folder "
                         f"(no config.json in it)")
    ours = model_or_dir
    given_a_path = isinstance(ours, (str, os.PathLike))
    if not given_a_path and not hasattr(ours, "loss_and_grads"):
        raise TypeError(f"model_or_dir must be a Llama, a SequenceClassifier or the path of a model, got "
                        f"{type(ours).__name__}")
    refuse_another_kind(ours, transformers_folder)     # a path's kind from its config.json: before either loads
    if given_a_path:
        ours = _from_folder(ours, dtype)
    _refuse_lora(ours)
    yield _as_dtype(ours, dtype), str(transformers_folder)


@contextlib.contextmanager
def _as_folder(model_or_dir):
    """A Hugging Face folder for transformers to load: the path itself, or a temporary save."""
    from .model import Llama

    model_or_dir = _traceable(model_or_dir)
    if isinstance(model_or_dir, (str, os.PathLike)) and Path(model_or_dir).is_file():
        # a GGUF or llama2.c file, which transformers' Llama does not read: both sides load npllama's
        # conversion of it, saved below
        model_or_dir = Llama.from_pretrained(model_or_dir)
    if hasattr(model_or_dir, "loss_and_grads"):
        _refuse_lora(model_or_dir)   # a folder saved from it would hold the base weights alone
    if _is_classifier(model_or_dir):
        with tempfile.TemporaryDirectory(prefix="npllama-compare-") as tmp:
            model_or_dir._save_hf_folder(Path(tmp) / "classifier")
            yield str(Path(tmp) / "classifier")
    elif hasattr(model_or_dir, "save_pretrained"):
        with tempfile.TemporaryDirectory(prefix="npllama-compare-") as tmp:
            model_or_dir.save_pretrained(tmp, dtype="float64" if model_or_dir.dtype == np.float64 else None)
            yield tmp
    else:
        yield str(model_or_dir)


def _refuse_lora(model) -> None:
    """ValueError for a model with LoRA adapters attached: transformers' Llama runs none, and the
    folder both sides would load holds the base weights alone (a silent comparison of the base model)."""
    if _llama_of(model).lora is not None:
        kind = "LlamaForSequenceClassification" if _is_classifier(model) else "LlamaForCausalLM"
        raise ValueError(f"model_or_dir has LoRA adapters ({_llama_of(model).lora.describe()}), which transformers' "
                         f"{kind} does not run: merge() them into the model first (its Llama's .lora.merge()), or "
                         f"compare the adapted model with compare_backends or compare_dtypes")


def refuse_another_kind(model, transformers_folder) -> None:
    """ValueError when transformers_folder holds another kind of model than npllama's `model` (a
    Llama or a SequenceClassifier, or the path of one): a classifier has no LM head to compare with
    LlamaForCausalLM's, a language model no score head.  A path's kind and the folder's are read
    from config.json alone, so that the mismatch is refused before either model is loaded."""
    model_is_a_classifier = (_is_classifier_folder(model) if isinstance(model, (str, os.PathLike))
                             else _is_classifier(model))
    folder_holds_a_classifier = _is_classifier_folder(transformers_folder)
    if model_is_a_classifier != folder_holds_a_classifier:
        raise ValueError(f"transformers_folder {str(transformers_folder)!r} holds {_kind(folder_holds_a_classifier)}, "
                         f"but the model is {_kind(model_is_a_classifier)}: give a folder of the same kind of model")


def _kind(classifier: bool) -> str:
    return ("a classifier (LlamaForSequenceClassification)" if classifier
            else "a language model (LlamaForCausalLM)")


def _is_classifier_folder(folder) -> bool:
    from .io.reading import parse_json
    from .runs import is_a_classifier_config

    config = Path(folder) / "config.json"
    raw = parse_json(config.read_text(encoding="utf-8"), str(config), expect=dict) if config.is_file() else {}
    return is_a_classifier_config(raw)


def _from_folder(folder, dtype, label_names: bool = False):
    """The Llama -- or, from a LlamaForSequenceClassification folder, the SequenceClassifier -- that
    transformers will load from `folder`.  label_names: the classifier's classes named as the
    folder names them (config.json's id2label, finetune.json's names), else "0", "1", ..."""
    from .classify import _label_names
    from .finetune import SequenceClassifier, read_info
    from .io.hf import load_hf_classifier_folder, objective_of
    from .model import Llama

    if not _is_classifier_folder(folder):
        return Llama.from_pretrained(folder, dtype=dtype)
    config, params, score, raw = load_hf_classifier_folder(folder, dtype=dtype)
    model = Llama(config, dtype=dtype, params=params, objective=objective_of(raw, Path(folder) / "config.json"))
    names = (_label_names(read_info(Path(folder)), raw, len(score)) if label_names
             else [str(i) for i in range(len(score))])
    classifier = SequenceClassifier(model, names, pad_id=config.pad_token_id)
    classifier.score_weight = score
    return classifier


# ----- transformers, traced with forward hooks ----------------------------------------------------

def import_torch_and_transformers():
    """(torch, transformers), or an ImportError saying what to install."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise ImportError("comparing with transformers needs torch and transformers: "
                          "pip install 'npllama[compare]'") from error
    return torch, transformers


def load_transformers_model(model_dir, dtype):
    """transformers' LlamaForCausalLM -- or LlamaForSequenceClassification, for such a folder -- on
    `model_dir`, with eager attention (whose probabilities can be recorded), in `dtype`."""
    torch, transformers = import_torch_and_transformers()
    hf_class = (transformers.LlamaForSequenceClassification if _is_classifier_folder(model_dir)
                else transformers.LlamaForCausalLM)
    progress_bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()   # "Loading weights" on stderr, every time
    try:
        hf = hf_class.from_pretrained(str(model_dir), attn_implementation="eager")
    finally:
        if progress_bar:
            transformers.utils.logging.enable_progress_bar()
    return hf.to(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)


def set_up_transformers(hf, config, faithful: bool) -> list[str]:
    """Ready `hf` for a comparison with npllama's model of `config`: float64-faithful if `faithful`
    (a float64 run), otherwise as transformers ships it; its RoPE frequencies are checked against
    npllama's either way.  Returns the notes (empty when nothing is to be said)."""
    return float64_faithful(hf, config) if faithful else _rope_frequency_check(hf, config)[0]


def float64_faithful(hf, config) -> list[str]:
    """Make a float64 transformers model compute in float64 throughout: its float32 islands --
    RMSNorm, the RoPE cos/sin tables, the eager softmax -- are replaced on `hf`'s own modules
    (nothing global is patched), and eager attention still returns its probabilities.

    config: the npllama LlamaConfig of the same folder.  The cos/sin tables use npllama's inverse
    frequencies (transformers rounds its own to float32 before any cast), but only once they are
    checked to agree with transformers' to float32 precision; when they do not, the tables use
    transformers' and the returned notes (otherwise empty) say so: the tables (model.rotary_emb.cos, .sin)
    then diverge, before q_rot and k_rot."""
    import torch

    notes, their_inv_freq = _rope_frequency_check(hf, config)
    if notes:
        inv_freq = torch.from_numpy(their_inv_freq)
    else:
        from .ops.rope import rope_inv_freq

        inv_freq = torch.from_numpy(rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling))

    def rmsnorm64(module):
        def forward(x):
            return module.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon))
        return forward

    def rotary64(module):
        def forward(x, position_ids):
            freqs = position_ids[:, :, None].double() * inv_freq[None, None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            return ((emb.cos() * module.attention_scaling).to(x.dtype),
                    (emb.sin() * module.attention_scaling).to(x.dtype))
        return forward

    def softmax64(module):
        # transformers' own eager attention runs, under a mode active only inside this module's
        # forward that turns its softmax(dtype=float32) into float64 for float64 scores.  A module
        # made faithful before keeps the forward it had then: one mode, not one per call
        forward = getattr(module.forward, "forward_made_float64", module.forward)
        mode = _float64_softmax_mode()

        def run(*args, **kwargs):
            with mode():
                return forward(*args, **kwargs)
        run.forward_made_float64 = forward
        return run

    for module in hf.modules():
        kind = type(module).__name__
        if kind == "LlamaRMSNorm":
            module.forward = rmsnorm64(module)
        elif kind == "LlamaRotaryEmbedding":
            module.forward = rotary64(module)
        elif kind == "LlamaAttention":
            module.forward = softmax64(module)
    return notes


@functools.lru_cache(maxsize=None)
def _float64_softmax_mode():
    """A torch function mode class (made on first use: torch is imported only where transformers
    runs) under which softmax(x, dtype=float32) of a float64 x is computed in float64."""
    import torch

    class Float64Softmax(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if (func is torch.nn.functional.softmax and kwargs.get("dtype") == torch.float32
                    and args[0].dtype == torch.float64):
                kwargs = dict(kwargs, dtype=torch.float64)
            return func(*args, **kwargs)

    return Float64Softmax


# transformers computes its RoPE inverse frequencies in float32 (a power, a division and, for llama3,
# the blend, each rounded), npllama's rope_inv_freq in float64.  Rounded to float32 the two agree
# to a few units in the last place: at most 5.3e-7 relative (4.4 ulps) over head_dim 6 to 128,
# rope_theta 1e4 and 5e5, no, linear and llama3 scaling.  The bound is 17 ulps; a wrong rope_theta,
# factor or wavelength band moves some frequency by a percent or more.
ROPE_FREQUENCY_RTOL = 2e-6


def _rope_frequency_check(hf, config) -> tuple[list[str], np.ndarray | None]:
    """([a note], transformers' inverse frequencies) when transformers' rotary embedding turns its
    pairs at other frequencies than npllama's rope_inv_freq for the same config; ([], None) when they
    agree to float32 precision."""
    from .ops.rope import rope_inv_freq

    rotary = next((m for m in hf.modules() if type(m).__name__ == "LlamaRotaryEmbedding"), None)
    if rotary is None:
        return [], None
    theirs = rotary.inv_freq.detach().cpu().double().numpy()   # float32 values (cast with the model)
    ours = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
    if ours.shape == theirs.shape:
        off = np.abs(ours.astype(np.float32) - theirs) / np.abs(theirs)
        if off.max() <= ROPE_FREQUENCY_RTOL:
            return [], None
        worst = int(np.argmax(off))
        how = (f"relative error up to {off[worst]:.3g}, at pair {worst}: {ours[worst]:.9g} in npllama, "
               f"{theirs[worst]:.9g} in transformers")
    else:
        how = f"{ours.shape[0]} frequencies in npllama, {theirs.shape[0]} in transformers"
    return [f"the RoPE frequencies differ: npllama's rope_inv_freq for head_dim={config.head_dim}, "
            f"rope_theta={config.rope_theta:g}, rope_scaling={config.rope_scaling} against transformers' "
            f"LlamaRotaryEmbedding.inv_freq ({how}); look at how each side reads rope_theta and "
            f"rope_scaling; the RoPE tables here are transformers' own, so model.rotary_emb.cos and .sin diverge"], theirs


def transformers_trace(model_dir, tokens, targets=None, *, dtype=np.float32, include=None,
                       exclude=None, attention_mask=None, hf_model=None) -> Trace:
    """Run transformers.LlamaForCausalLM on the folder and record what npllama's trace records,
    under the same names and layouts (heads split as (B, H, T, head_dim)).  A
    LlamaForSequenceClassification folder runs that class: targets are its labels, and `score.out`
    is its output logits (pooled_logits: its `score` module's (B, T, num_labels) read at the
    pooled positions, the only ones npllama's head computes).  hf_model: that folder already
    loaded by load_transformers_model (None: it is loaded here); it is left in eval mode, with this
    run's gradients in its parameters' .grad."""
    torch, transformers = import_torch_and_transformers()
    from transformers.models.llama import modeling_llama

    classifier = _is_classifier_folder(model_dir)
    if classifier:
        tokens, targets, attention_mask = _classifier_batch(tokens, targets, attention_mask)
    else:
        tokens, targets = _batch(tokens, targets)
    hf = (load_transformers_model(model_dir, dtype) if hf_model is None else hf_model).eval()
    cfg = hf.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    # (name, tensor, to_our_layout, the function that computed it), in execution order
    captured: list[tuple[str, object, object, str]] = []
    current_layer = [None]

    gradient_only = set()   # names whose tensor npllama does not record, only its gradient

    def keep(name, tensor, source, layout=None):
        if tensor.requires_grad and not tensor.is_leaf:
            tensor.retain_grad()
        captured.append((name, tensor, layout, source))

    def forward_of(module):   # as compare's "computed by" names it on our side
        return _qualname(type(module).forward)

    def heads(n_heads):  # (B, T, n*hd) -> (B, n, T, hd), our layout for the attention's output
        return lambda a: a.reshape(a.shape[0], a.shape[1], n_heads, head_dim).transpose(0, 2, 1, 3)

    def output_of(name, layout=None):
        def hook(module, args, output):
            keep(name, output[0] if isinstance(output, tuple) else output, forward_of(module), layout)
        return hook

    def input_of(name, producer, layout=None):
        def hook(module, args):
            keep(name, args[0], forward_of(producer), layout)
        return hook

    def attention_outputs(prefix):
        def hook(module, args, output):
            current_layer[0] = None
            out, probs = output[0], output[1] if len(output) > 1 else None
            if probs is not None:
                keep(prefix + "attn_probs", probs, forward_of(module))
            keep(prefix + "out", out, forward_of(module))
        return hook

    def entering_layer(prefix):
        def hook(module, args):
            current_layer[0] = prefix
        return hook

    original_rope = modeling_llama.apply_rotary_pos_emb
    # named by where the model finds it: transformers 5.25 may hold a module wrapping the function there
    rope_name = f"{modeling_llama.__name__}.apply_rotary_pos_emb"

    def rope_recorded(q, k, cos, sin, *args, **kwargs):
        q_rot, k_rot = original_rope(q, k, cos, sin, *args, **kwargs)
        if current_layer[0] is not None:
            keep(current_layer[0] + "q_rot", q_rot, rope_name)
            keep(current_layer[0] + "k_rot", k_rot, rope_name)
        return q_rot, k_rot

    handles = []

    def on(module, forward=None, pre=None):
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre))
        if forward is not None:
            handles.append(module.register_forward_hook(forward))

    on(hf.model.embed_tokens, output_of("model.embed_tokens.out"))

    def rope_tables(module, args, output):   # (1, T, hd) each, the same rows for every row of the batch
        for name, table in zip(("cos", "sin"), output):
            keep("model.rotary_emb." + name, table, forward_of(module), lambda a: a[0])
    on(hf.model.rotary_emb, rope_tables)
    for i, layer in enumerate(hf.model.layers):
        p = f"model.layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        on(layer.input_layernorm, output_of(p + "input_layernorm.out"))
        on(attn, attention_outputs(p + "self_attn."), pre=entering_layer(p + "self_attn."))
        on(attn.q_proj, output_of(p + "self_attn.q"))
        on(attn.k_proj, output_of(p + "self_attn.k"))
        on(attn.v_proj, output_of(p + "self_attn.v"))
        on(attn.o_proj, pre=input_of(p + "self_attn.attn", attn, heads(cfg.num_attention_heads)))
        on(layer.post_attention_layernorm, output_of(p + "post_attention_layernorm.out"),
           pre=input_of(p + "residual", layer))
        on(mlp.gate_proj, output_of(p + "mlp.gate"))
        on(mlp.up_proj, output_of(p + "mlp.up"))
        on(mlp.down_proj, pre=input_of(p + "mlp.act", mlp))
        on(mlp, output_of(p + "mlp.out"))
        on(layer, output_of(p + "out"))
    on(hf.model.norm, output_of("model.norm.out"))
    if not classifier:
        on(hf.lm_head, output_of("lm_head.out"))

    def softmax_input(x):   # the eager attention's scores q k^T * scaling + mask: d:attn_scores
        if current_layer[0] is not None:
            name = current_layer[0] + "attn_scores"
            gradient_only.add(name)
            keep(name, x, _qualname(torch.nn.functional.softmax) + " (its input's gradient, by autograd)")

    modeling_llama.apply_rotary_pos_emb = rope_recorded
    try:
        hf.zero_grad()
        if classifier:
            pad = cfg.pad_token_id
            if pad is None and len(tokens) > 1:
                raise ValueError("the classifier has no pad id: transformers' LlamaForSequenceClassification "
                                 "pools by config.pad_token_id and runs one row without it; give "
                                 "SequenceClassifier(..., pad_id=...) or one row of tokens")
            with _softmax_inputs(softmax_input):
                logits = hf(torch.from_numpy(tokens),
                            attention_mask=torch.from_numpy(attention_mask.astype(np.int64))).logits
            keep("score.out", logits, forward_of(hf))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets))
        else:
            # the padding npllama's side ran with, or transformers would attend the pads it masks
            padding = None if attention_mask is None else torch.from_numpy(np.asarray(attention_mask).astype(np.int64))
            with _softmax_inputs(softmax_input):
                logits = hf(torch.from_numpy(tokens), attention_mask=padding).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     torch.from_numpy(targets).reshape(-1), ignore_index=-100)
        loss.backward()
    finally:
        modeling_llama.apply_rotary_pos_emb = original_rope
        for h in handles:
            h.remove()

    def as_ours(tensor, layout):
        a = tensor.detach().cpu().numpy()
        return layout(a) if layout is not None else a

    t = Trace(include, exclude, meta={"source": "transformers", "transformers": transformers.__version__,
                                      "dtype": np.dtype(dtype).name, "tokens": tokens.tolist(),
                                      "targets": np.asarray(targets).tolist()})
    for name, tensor, layout, source in captured:
        if name in gradient_only:
            continue
        if classifier and name == "score.out":
            t.record("score.pooled_index", _pooled_index(tokens, cfg.pad_token_id), source=_POOLED_BY_TRANSFORMERS)
        t.record(name, as_ours(tensor, layout), source=source)
    t.record("loss", loss.detach().cpu().numpy(), source=_qualname(torch.nn.functional.cross_entropy))
    padding = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
    causal = _attended(tokens.shape[1], tokens.shape[1], causal=True, key_padding_mask=padding)
    for name, tensor, layout, source in reversed(captured):   # the backward pass runs the other way
        if tensor.grad is not None:
            grad = as_ours(tensor.grad, layout)
            if name.endswith(".attn_probs"):   # as npllama records it: 0 where a key was masked
                grad = _where_attended(grad, causal)
            t.record("d:" + name, grad, source=source if name in gradient_only else None)
    for name, param in reversed(list(hf.named_parameters())):   # as npllama's: last layer first
        if param.grad is not None:
            t.record("d:" + name, param.grad.detach().cpu().numpy())
    return t


@contextlib.contextmanager
def _softmax_inputs(seen):
    """Within the block, `seen(x)` for the input x of every torch.nn.functional.softmax call (the
    eager attention's, of its scores), before the call runs: a torch function mode, so that it
    sees the call however transformers spells it and under float64_faithful's own mode."""
    import torch

    class SoftmaxInputs(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.softmax:
                seen(args[0])
            return func(*args, **(kwargs or {}))

    with SoftmaxInputs():
        yield


_POOLED_BY_TRANSFORMERS = ("recomputed here by transformers' rule (LlamaForSequenceClassification.forward keeps "
                          "it in a local): the rightmost token that is not config.pad_token_id")


def _pooled_index(tokens, pad_token_id) -> np.ndarray:
    """Where LlamaForSequenceClassification reads each row: its last token without a pad id, else the
    rightmost token that is not the pad id (0 for a row of pads, as its argmax gives)."""
    B, T = tokens.shape
    if pad_token_id is None:
        return np.full(B, T - 1, dtype=np.int64)
    return np.argmax(np.arange(T) * (tokens != pad_token_id), axis=1).astype(np.int64)


# ----- planted bugs: see what a divergence looks like ---------------------------------------------

def _rope_forward_meta(x, cos, sin):
    """RoPE with Meta's adjacent-pair convention, (x[2i], x[2i+1]) rotated by angle i, applied to
    weights laid out for Hugging Face's half-split convention: the classic port bug."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]          # one angle per pair
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    y = np.empty_like(x)
    y[..., 0::2] = x_even * c - x_odd * s
    y[..., 1::2] = x_even * s + x_odd * c
    return y, (cos, sin)


def _rmsnorm_backward_no_projection(dy, cache):
    """RMSNorm backward that forgets rstd depends on x: dx = rstd * dy * weight."""
    x, rstd, weight = cache
    dx = rstd * dy * weight
    dweight = np.sum((dy * x * rstd).reshape(-1, x.shape[-1]), axis=0)
    return dx, dweight


def _swiglu_backward_up_sign(dout, cache):
    """SwiGLU backward with the sign of the up-branch gradient flipped."""
    from .ops.swiglu import swiglu_backward

    dx, dw_gate, dw_up, dw_down = swiglu_backward(dout, cache)
    return dx, dw_gate, -dw_up, dw_down


PLANTED_BUGS = {
    # name: (op function replaced, wrong version, where compare should point in a one-layer model)
    "rope-meta": ("rope_forward", _rope_forward_meta, "model.layers.0.self_attn.q_rot"),
    "rmsnorm-backward-no-projection": ("rmsnorm_backward", _rmsnorm_backward_no_projection,
                                       "d:model.layers.{last}.out"),
    "swiglu-backward-up-sign": ("swiglu_backward", _swiglu_backward_up_sign,
                                "d:model.layers.{last}.mlp.up_proj.weight"),
}


@contextlib.contextmanager
def planted_bug(name: str, backend_name: str = "numpy"):
    """Swap a deliberately wrong op into `backend_name`'s namespace for the block."""
    if name not in PLANTED_BUGS:
        raise ValueError(f"unknown planted bug {name!r}; choose one of {sorted(PLANTED_BUGS)}")
    op_name, wrong, _ = PLANTED_BUGS[name]
    with backend.use_op(op_name, wrong, backend=backend_name):
        yield wrong
