"""`npllama classify`: label texts with a fine-tuned classifier folder (or a base model + adapter)."""
import json
import sys
from pathlib import Path

from . import HelpFormatter, UsageError, add_run_options, model_or_adapter_base

# every character str.splitlines (and so a terminal or a line reader) may break a line at, shown
# as its escape: \n, \r, \x0b, \x0c, \x1c-\x1e, \x85, \u2028, \u2029
_LINE_BREAKS_SHOWN = {ord(c): c.encode("unicode_escape").decode("ascii")
                      for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}

# how an error about --data's labels names the ones the classifier has
CLASSIFIERS_LABELS = "the classifier's labels"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="label texts with a fine-tuned classifier",
        description="Run a sequence classifier -- a folder from `npllama finetune classify --out DIR` or a "
                    "transformers LlamaForSequenceClassification folder (with score.weight) -- or a base "
                    "model with a classification LoRA adapter. Prints each text's label and probability. A text "
                    "is read as fine-tuning read it: its first `finetune classify --max-len` tokens, as the "
                    "folder's finetune.json records (else as many as the model's context holds).  With --data, a labelled test file is classified and scored "
                    "instead: accuracy, macro-F1 and the confusion matrix, as fine-tuning reports them.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="the classifier folder; with --adapter, the base model "
                   "folder (default: the latest run -- a `train` run, a language model, so refused, naming the "
                   "classifier run finished last; with --adapter, the base the adapter names)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder saved by `npllama finetune "
                   "classify --lora --out DIR` (PEFT SEQ_CLS layout, score.weight inside)")
    p.add_argument("--text", action="append", default=None, help="a text to classify (repeatable)")
    p.add_argument("--file", default=None, help="a plain text file (- for standard input): each non-empty line is classified as it is "
                   "(a .csv, .tsv, .json or .jsonl file is refused: give its text column alone)")
    p.add_argument("--data", default=None, help="a labelled test file, .csv/.tsv (header text,label) or .jsonl "
                   "({\"text\", \"label\"} lines) as `finetune classify --data` reads: every text is classified "
                   "and the predictions scored against the labels (labels as the classifier names them; in a "
                   ".jsonl file an int is the class numbered so, or a class id where the labels are not numbers); instead of --text/--file")
    p.add_argument("--json", action="store_true", help="print one JSON object per text, with every "
                   "label's probability (with --data: one object with the scores)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    add_run_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.data is not None:
        if args.text or args.file:
            raise UsageError("--data scores a labelled file; give it without --text and --file")
        return _score_file(args)
    texts = list(args.text or [])
    if any(not text.strip() for text in texts):   # training refuses an empty text too: nothing to read
        raise UsageError("--text is empty: give the text to classify")
    suffix = "" if args.file is None else Path(args.file).suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl", ".json"):
        raise UsageError(f"--file {args.file}: each line of --file is classified as it is, so a {suffix} file's "
                         f"header, quotes and field names would be read as text; give a plain text file with "
                         f"one text a line (its text column alone)")
    if args.file is not None:
        from ..budget import max_read
        from ..io.reading import read_text

        try:   # as every text file is read: a byte-order mark dropped, other encodings named
            if args.file == "-":   # standard input, as `tokenizer encode` reads it
                from ..io.reading import read_standard_input

                text = read_standard_input(max_read()).removeprefix("\ufeff")
            else:
                text = read_text(args.file, max_bytes=max_read())
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read --file {args.file}: {error}") from None
        texts += [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    if not texts:
        raise UsageError("give at least one --text or a --file with text")
    classifier = _classifier(args)
    probabilities = _classified(classifier, texts, args).probabilities
    from ..text_width import ljust, width as columns

    names = classifier.label_names
    width = max(columns(n) for n in names)
    for text, row in zip(texts, probabilities):
        best = int(row.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": names[best],
                              "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)}},
                             ensure_ascii=False))
        else:
            # one line a text: a line break inside one shown as \n, not as the start of another text
            shown = text.translate(_LINE_BREAKS_SHOWN)
            print(f"{ljust(names[best], width)}  {row[best]:.3f}  {shown}")
    sys.stdout.flush()
    return 0


def _score_file(args) -> int:
    """classify --data: every text of a labelled file classified, the predictions scored."""
    from .. import datasets
    from ..finetune import classification_metrics, format_metrics, majority_baseline

    try:   # the file before the model: a wrong column or label costs no loading
        texts, labels, lines = datasets.read_labelled(args.data)
    except (OSError, ValueError) as error:
        raise UsageError(f"--data: {error}") from None
    classifier = _classifier(args)
    names = classifier.label_names
    try:
        truth, _ = datasets.encode_labels(labels, names, source=args.data, lines=lines, whose=CLASSIFIERS_LABELS)
    except ValueError as error:   # whose labels these are, said once
        said = str(error)
        if CLASSIFIERS_LABELS not in said:
            said += f" ({CLASSIFIERS_LABELS}: {', '.join(map(str, names))})"
        raise UsageError(f"--data: {said}") from None
    predicted = _classified(classifier, texts, args).probabilities.argmax(1)
    metrics = classification_metrics(truth, predicted, len(names))
    majority, baseline = majority_baseline(truth, truth)    # the best constant answer on this file
    if args.json:
        print(json.dumps({"data": str(args.data), "n": len(texts), "label_names": list(map(str, names)),
                          "majority_baseline": baseline, **metrics}, ensure_ascii=False))
    else:
        print(f"{classifier.source or args.model} on {len(texts)} texts of {args.data}")
        print(format_metrics(metrics, names, baseline, names[majority], of="test",
                             baseline_from="this file's most frequent label"))
    sys.stdout.flush()
    return 0


def _classified(classifier, texts, args):
    """classifier.classify(texts) on --backend, saying on stderr how many texts it read the beginning
    of only (the rest cannot sway a label)."""
    from ..backend import get_backend, use_backend

    with use_backend(args.backend or get_backend()):
        classified = classifier.classify(texts, batch_size=args.batch_size)
    if classified.note:
        print(classified.note, file=sys.stderr)
    return classified


def _classifier(args):
    """The classifier --model and --adapter name: with --adapter alone, on the base the adapter names
    (refused naming --model: load_classifier would name its own argument, `path`)."""
    import numpy as np

    from ..classify import load_classifier
    from ..io.errors import CheckpointError
    from ..io.hf import SCORE_NAME
    from ..runs import require_a_classifier

    try:
        return load_classifier(model_or_adapter_base(args.model, args.adapter), dtype=getattr(np, args.dtype),
                               adapter=args.adapter)
    except CheckpointError as error:
        if error.tensor == SCORE_NAME and args.adapter is None:
            # a language model (the latest run is always one) told as such, with a classifier to give
            require_a_classifier(args.model, "--model")
        raise
