"""`npllama debug`: trace a model's tensors, and find where two runs first diverge."""

import os

from . import HelpFormatter, UsageError, model_or_adapter_base

AGAINST = ("numba", "float64", "transformers")

# which loss_and_grads `debug trace` and `debug compare` run, by the kind of model (loss_inputs)
LOSSES = ("The loss traced: a language model's next-token loss; a masked-LM model's (`train --objective mlm`, "
          "`finetune sop`) masked-LM loss, its tokens masked as training masks its held-out text (--seed); a "
          "classifier's classification loss (--label).")

# what `debug trace/compare` and `viz` accept as the model to run and the text to run it on (load_inputs)
MODEL_TO_RUN = ("a run folder or Hugging Face LLaMA folder, a GGUF file or a llama2.c checkpoint, as npllama "
                "reads it (default: the latest run)")
TEXT_TO_RUN = ("text to run (tokenized with the model's tokenizer.model or tokenizer.json; a GGUF file's own; "
               "tokenizer.model or tokenizer.bin beside a llama2.c file)")


def _inputs(p) -> None:
    p.add_argument("--model", default=None, help=MODEL_TO_RUN)
    p.add_argument("--text", default=None, help=TEXT_TO_RUN)
    p.add_argument("--tokens", default=None, help="token ids instead of text, e.g. 1,5,9")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a LoRA adapter folder (PEFT layout) attached to "
                   "--model (without --model: to the base its adapter_config.json names): from `npllama finetune sft "
                   "--lora`, or from `finetune classify --lora` (the run is then that classifier's: give --label)")
    p.add_argument("--include", action="append", default=None, metavar="PATTERN",
                   help="record only names matching this fnmatch pattern (repeatable), "
                        "e.g. 'model.layers.0.*'")
    p.add_argument("--exclude", action="append", default=None, metavar="PATTERN",
                   help="do not record names matching this pattern (repeatable)")
    p.add_argument("--label", default=None, help="for a classifier folder (`finetune classify --out`, or a "
                   "LlamaForSequenceClassification one): the text's class, by name or index; the loss traced "
                   "is then the classification loss")
    add_mask_seed_option(p)


def add_mask_seed_option(p) -> None:
    """--seed of `debug trace/compare` and `viz grads`: the masks of a masked-LM model's loss (loss_inputs)."""
    p.add_argument("--seed", type=int, default=None, help="for a masked-LM model (`train --objective mlm`, "
                   "`finetune sop`), whose loss traced is the masked-LM loss: the seed of the masks, drawn as "
                   "training masks its held-out text (15%% of the ordinary tokens; needs the model's tokenizer) "
                   "(default: 0)")


def _tolerance(p, defaults="1e-3 in float32, 1e-9 in float64") -> None:
    p.add_argument("--rtol", type=float, default=None, help=f"relative tolerance (default: {defaults})")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: rtol times "
                   "the largest |value| of each tensor)")
    p.add_argument("--table", action="store_true", help="print every compared tensor, not just the first "
                   "divergence")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "debug", help="trace tensors; find where two runs first diverge",
        description="Record every named intermediate and gradient of one loss_and_grads call, or run the "
                    "same tokens two ways and report the first tensor (in execution order) that differs.")
    sub = p.add_subparsers(dest="action", metavar="<action>")
    sub.required = True

    compare = sub.add_parser(
        "compare", formatter_class=HelpFormatter,
        help="run twice (numpy vs numba, float32 vs float64, or vs transformers) and compare",
        description="Trace the numpy reference and a second run of the same tokens, then walk the "
                    f"tensors in execution order and report the first that differs beyond tolerance. {LOSSES} "
                    "A masked-LM model against transformers, which runs every Llama causally, is refused. "
                    "Exit status 1 when something diverges.")
    _inputs(compare)
    compare.add_argument("--against", choices=AGAINST, default="numba",
                         help="numba: the Numba kernels; float64: the same weights in float64; "
                              "transformers: transformers' LlamaForCausalLM (LlamaForSequenceClassification for a "
                              "classifier) on the same folder, or on --transformers-folder (needs torch)")
    compare.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                         help="dtype of both runs (numba and transformers comparisons); against "
                              "transformers in float64, transformers' float32 parts (RMSNorm, the RoPE "
                              "tables, the eager softmax) run in float64, its RoPE frequencies checked "
                              "against npllama's, and the tolerance is 1e-9")
    compare.add_argument("--stock-transformers", action="store_true",
                         help="with --against transformers --dtype float64: compare with transformers as "
                              "it ships, whose RMSNorm, RoPE tables and softmax stay float32 (tolerance "
                              "1e-3), not with its float64-faithful version")
    compare.add_argument("--transformers-folder", default=None, metavar="DIR",
                         help="with --against transformers: the Hugging Face folder transformers loads (or a run "
                              "folder, as for --model), "
                              "against the model npllama loads from --model (e.g. an edited or converted "
                              "model against the original); the parameters that differ are named before "
                              "any tensor (default: --model's folder, loaded by both)")
    from ..debug import PLANTED_BUGS

    compare.add_argument("--plant", default=None, metavar="BUG",
                         help="plant a deliberate bug in the numpy run to see what a divergence looks "
                              f"like: {', '.join(PLANTED_BUGS)}")
    compare.add_argument("--save", default=None, metavar="PREFIX",
                         help="also save both traces as PREFIX.a.npz and PREFIX.b.npz")
    _tolerance(compare, "1e-3 in float32, 1e-9 in float64; against transformers the same, and 1e-3 "
                        "with --stock-transformers")
    compare.set_defaults(run=run_compare)

    _register_train_compare(sub)

    tr = sub.add_parser("trace", formatter_class=HelpFormatter,
                        help="record one forward+backward pass, print a summary, save it",
                        description="Run loss_and_grads on the tokens under a trace and print name, shape, "
                                    f"dtype, mean, std, min, max, NaN/Inf of every tensor. {LOSSES}")
    _inputs(tr)
    tr.add_argument("--backend", choices=["numpy", "numba"], default="numpy",
                    help="op implementations to trace (numpy: the readable reference ops)")
    tr.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="the precision the model runs in")
    tr.add_argument("--out", default=None, metavar="FILE.npz", help="save the trace (a plain .npz)")
    tr.set_defaults(run=run_trace)

    diff = sub.add_parser("diff", help="compare two saved traces",
                          description="Report the first tensor of A (in its recorded order) that differs from B.")
    diff.add_argument("a", help="a trace saved with --out or Trace.save (.npz)")
    diff.add_argument("b", help="the trace to compare it with")
    _tolerance(diff)
    diff.set_defaults(run=run_diff)


def _register_train_compare(sub) -> None:
    """`debug train-compare`: its own action, not `compare --steps N`, since it takes batches of text
    and npllama train's optimizer flags, and none of compare's --against, --tokens, --label, --save."""
    from ..debug_training import PLANTED_TRAINING_BUGS
    from ..train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train-compare", formatter_class=HelpFormatter,
        help="train with npllama and with PyTorch from the same weights; report the first step and tensor "
             "where they part",
        description="Train a copy of the model for --steps steps twice, with what `npllama train` runs (its "
                    "AdamW, clipping and schedule) and with PyTorch (transformers' LlamaForCausalLM, "
                    "torch.optim.AdamW, clip_grad_norm_, a LambdaLR), on the same batches of windows cut "
                    "from the text. After each step compare, in this order: the loss, each gradient, the "
                    "gradient norm, the clipped gradients, the learning rate, AdamW's exp_avg and exp_avg_sq, "
                    "each parameter; report the first that differs beyond tolerance. Needs torch and "
                    "transformers. Exit status 1 when the runs part.")
    p.add_argument("--model", default=None, help="a run folder or Hugging Face LLaMA folder (LlamaForCausalLM), "
                   "a GGUF file or a llama2.c checkpoint (both sides train npllama's reading of it; its tokenizer "
                   "is found as debug compare finds it) (default: the latest run)")
    p.add_argument("--text", default=None, help="training text, tokenized with the model's tokenizer (default: "
                   "200 of the built-in stories npllama train trains on)")
    p.add_argument("--data", default=None, metavar="PATH", help="training text from a .txt or .jsonl file or a "
                   "folder of .txt/.jsonl files, as npllama train reads --data (a .txt cut at blank lines) "
                   "(not with --text; default: the 200 built-in stories --text defaults to)")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps to compare")
    p.add_argument("--total-steps", type=int, default=None, metavar="N", help="the length of the run the "
                   "learning-rate schedule is laid out over, npllama train's --steps (default: --steps)")
    p.add_argument("--batch-size", type=int, default=4, help="token windows per micro-batch (default: 4, "
                   "fewer than npllama train's 16: a comparison needs few tokens)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per window")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine "
                   "(default: a tenth of --lr, as npllama train)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: a tenth of "
                   "--total-steps, at most 40, as npllama train)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW's decoupled weight decay "
                   "of the matrices")
    p.add_argument("--beta1", type=float, default=d.beta1, help="AdamW's decay rate of the gradient's average")
    p.add_argument("--beta2", type=float, default=d.beta2, help="AdamW's decay rate of the squared gradient's "
                   "average")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="global gradient-norm limit")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the order the windows are taken in")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="precision of both runs. "
                   "float64 (transformers' float32 RMSNorm, RoPE tables and softmax replaced by float64 ones) "
                   "agrees to ~1e-13, so a wrong weight decay or eps shows at the step and tensor where it "
                   "happens; in float32 such a slip moves weights by less than float32's tolerance (1e-3) "
                   "and can show later, in a few entries, like round-off")
    p.add_argument("--backend", choices=["numpy", "numba"], default="numpy", help="npllama's op implementations")
    p.add_argument("--plant", default=None, metavar="BUG", help="plant a training-machinery bug on npllama's side "
                   "to see what a divergence looks like: " + "; ".join(
                       f"{name} ({what})" for name, (what, *_) in PLANTED_TRAINING_BUGS.items()))
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: 1e-3 in float32, "
                   "1e-9 in float64)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: rtol times the "
                   "largest |value| of each tensor)")
    p.add_argument("--table", action="store_true", help="print every step's losses, gradient norms, learning "
                   "rates and parameters' difference")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (on stderr, a step at a time, "
                   "saying whether the runs still agree)")
    p.set_defaults(run=run_train_compare)


def run_train_compare(args) -> int:
    import numpy as np

    from .. import debug, debug_training

    if args.rtol is not None and args.rtol < 0 or args.atol is not None and args.atol < 0:
        raise UsageError("--rtol and --atol must be >= 0")
    if args.plant is not None and args.plant not in debug_training.PLANTED_TRAINING_BUGS:
        raise UsageError(f"--plant {args.plant!r} is not a planted bug; choose one of "
                         f"{', '.join(debug_training.PLANTED_TRAINING_BUGS)}")
    if args.text is not None and args.data is not None:
        raise UsageError("give --text TEXT or --data PATH (the training text), not both")
    model_dir = debug.model_path(args.model)   # a folder, or a GGUF or llama2.c file, as debug compare takes
    tokenizer, no_tokenizer = debug.tokenizer_of(model_dir, vocab_size=None)
    if tokenizer is None:
        raise UsageError(f"{no_tokenizer}: train-compare cuts its batches from text with the model's tokenizer")
    batches = debug_training.text_batches(tokenizer, args.text, args.data, batch_size=args.batch_size,
                                          seq_len=args.seq_len, count=args.steps * args.grad_accum, seed=args.seed)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    try:
        report = debug_training.compare_training(
            str(model_dir), batches, steps=args.steps, total_steps=args.total_steps, grad_accum=args.grad_accum,
            lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            beta1=args.beta1, beta2=args.beta2, grad_clip=args.grad_clip, dtype=dtype, backend_name=args.backend,
            rtol=args.rtol, atol=args.atol, plant=args.plant, echo=print, progress=not args.no_progress)
    except ImportError as error:
        raise UsageError(str(error)) from None
    if args.table:
        print(report.table())
        print()
    print(report)
    return 0 if report.ok else 1


def _refuse_unwritable(flag: str, path, suffix: str = "") -> None:
    """A file the command writes after its run, refused before the run starts (not after it) when
    its folder does not exist (or a file stands where a folder is named) or its name lacks `suffix`."""
    from ..io.atomic import refuse_a_file_above

    if not path:
        return
    try:
        refuse_a_file_above(path, flag)
    except NotADirectoryError as error:
        raise UsageError(str(error)) from None
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: folder {folder!r} does not exist")
    if not path.endswith(suffix):
        raise UsageError(f"{flag} {path}: the file must end in {suffix} (a NumPy archive)")


def _print_comparison(comparison, table: bool) -> int:
    if table:
        print(comparison.table())
        print()
    print(comparison)
    return 0 if comparison.ok else 1


def run_compare(args) -> int:
    import contextlib

    import numpy as np

    from .. import debug

    if args.rtol is not None and args.rtol < 0 or args.atol is not None and args.atol < 0:
        raise UsageError("--rtol and --atol must be >= 0")
    if args.against == "float64" and args.dtype == "float64":
        raise UsageError("--dtype float64 with --against float64: that comparison runs float32 against "
                         "float64; as given, --dtype would be ignored")
    if args.stock_transformers and (args.against != "transformers" or args.dtype != "float64"):
        raise UsageError("--stock-transformers is for --against transformers --dtype float64 (in float32 "
                         "transformers runs as it ships anyway); as given, it would be ignored")
    if args.adapter is not None and args.against == "transformers":
        raise UsageError("--adapter with --against transformers: transformers' Llama runs no LoRA adapters; "
                         "compare the adapted model against numba or float64, or merge the adapters into a model "
                         "folder first and give that as --model (`npllama finetune sft --lora --merge`; a "
                         "classification adapter in Python: clf = npllama.load_classifier(BASE, adapter=DIR); "
                         "clf.model.lora.merge(); clf.head.save(OUT, clf.tokenizer))")
    if args.transformers_folder is not None:
        if args.against != "transformers":
            raise UsageError("--transformers-folder is for --against transformers; as given, it would be ignored")
        from ..runs import resolve_model_dir

        try:   # a run folder names its model/ folder, as for --model
            args.transformers_folder = str(resolve_model_dir(args.transformers_folder))
        except FileNotFoundError as error:
            raise UsageError(f"--transformers-folder {args.transformers_folder}: {error}") from None
    if args.plant and args.plant not in debug.PLANTED_BUGS:
        raise UsageError(f"--plant {args.plant!r} is not a planted bug; choose one of "
                         f"{', '.join(sorted(debug.PLANTED_BUGS))}")
    _refuse_unwritable("--save", args.save)
    model_path = debug.model_path(model_or_adapter_base(args.model, args.adapter), args.adapter)
    if args.transformers_folder is not None:   # a classifier against a causal LM: refused before either loads
        debug.refuse_another_kind(model_path, args.transformers_folder)
    dtype = np.float64 if args.dtype == "float64" else np.float32   # (--against float64: float32, as refused above)
    model, model_dir, ids, _ = debug.load_inputs(model_path, args.text, args.tokens, dtype=dtype,
                                               classifier=True, adapter=args.adapter)
    targets, stack, what = _targets(debug, model, args.label)
    count, loss = len(ids), ""
    if args.against != "transformers" or debug.loss_traced(model) != "masked-LM":
        # (compare_transformers refuses a masked-LM model, which transformers would run causally)
        ids, targets, _, loss = loss_inputs(debug, model, model_dir, ids, targets, None, args.seed)
        loss = f"; the loss traced: {loss}"
    adapted = "" if args.adapter is None else f" + adapter {args.adapter}"
    print(f"{count} tokens, {what} {model_dir}{adapted} ({stack.config.num_hidden_layers} layers), "
          f"comparing numpy ({np.dtype(dtype).name}) against {args.against}"
          + (f" on {args.transformers_folder}" if args.transformers_folder is not None else "") + loss)
    planted = debug.planted_bug(args.plant, "numpy") if args.plant else contextlib.nullcontext()
    common = dict(rtol=args.rtol, atol=args.atol, include=args.include, exclude=args.exclude)
    with planted:
        if args.against == "numba":
            comparison = debug.compare_backends(model, ids, targets, **common)
        elif args.against == "float64":
            comparison = debug.compare_dtypes(model, ids, targets, **common)
        else:
            try:
                # npllama's model as loaded from --model, against --transformers-folder when given
                own_folder = args.transformers_folder is None
                comparison = debug.compare_transformers(model_dir if own_folder else model, ids, targets,
                                                        dtype=dtype, faithful=not args.stock_transformers,
                                                        transformers_folder=args.transformers_folder, **common)
            except ImportError as error:
                raise UsageError(str(error)) from None
    if args.save:
        for trace, which in zip(comparison.traces, "ab"):
            trace.save(f"{args.save}.{which}.npz")
        print(f"saved {args.save}.a.npz ({comparison.labels[0]}) and {args.save}.b.npz ({comparison.labels[1]})")
    return _print_comparison(comparison, args.table)


def run_trace(args) -> int:
    import numpy as np

    from .. import debug

    _refuse_unwritable("--out", args.out, ".npz")
    dtype = np.float64 if args.dtype == "float64" else np.float32
    model = model_or_adapter_base(args.model, args.adapter)
    model, model_dir, ids, labels = debug.load_inputs(model, args.text, args.tokens, dtype=dtype,
                                                    classifier=True, adapter=args.adapter)
    targets, _, _ = _targets(debug, model, args.label)
    tokens, targets, labels, loss = loss_inputs(debug, model, model_dir, ids, targets, labels, args.seed)
    t = debug.run_trace(model, tokens, targets, backend_name=args.backend, include=args.include,
                        exclude=args.exclude)
    t.meta["labels"] = labels
    t.summary()
    adapted = "" if args.adapter is None else f" + adapter {args.adapter}"
    print(f"{len(t)} tensors, {t.nbytes() / 1e6:.2f} MB, from {len(ids)} tokens of {model_dir}{adapted}; "
          f"the loss traced: {loss}")
    if args.out:
        t.save(args.out)
        print(f"saved {args.out}")
    return 0


def _targets(debug, model, label):
    """(targets, the decoder stack, what the model is) for the commands: a classifier's --label as
    its one row's class; None for a language model (next-token targets), which takes no --label."""
    if not debug._is_classifier(model):
        if label is not None:
            raise UsageError("--label is for a classifier folder; this model predicts tokens (its targets "
                             "are the next tokens)")
        return None, model, "model"
    try:
        return [debug.class_index(model, label)], model.model, "classifier"
    except ValueError as error:
        raise UsageError(str(error)) from None


def loss_inputs(debug, model, model_dir, ids, targets, labels, seed):
    """(tokens, targets, labels, the loss traced in words) for the model's loss_and_grads: a
    classifier's --label and a language model's next tokens as they are; a masked-LM model's tokens
    masked from --seed as training masks its held-out text (debug.masked_lm_batch), labels its
    masked inputs'."""
    from ..objectives import IGNORE_INDEX

    kind = debug.loss_traced(model)
    if kind != "masked-LM":
        if seed is not None:
            raise UsageError(f"--seed draws a masked-LM model's masks; this model's loss is the {kind} loss, "
                             f"which masks nothing: as given, --seed would be ignored")
        return ids, targets, labels, ("the classification loss of its --label" if kind == "classification" else
                                      "the next-token loss")
    tokenizer, no_tokenizer = debug.tokenizer_of(model_dir, model.config.vocab_size)
    if tokenizer is None:
        raise UsageError(f"{no_tokenizer}: a masked-LM model's loss is traced on its tokens masked as training masks "
                         f"them, with its tokenizer's <unk> as the mask")
    seed = 0 if seed is None else seed
    tokens, targets = debug.masked_lm_batch(ids, tokenizer, seed, seed_name="--seed")
    masked = int((targets != IGNORE_INDEX).sum())
    if labels is not None:
        labels = [tokenizer.id_to_piece(int(i)) for i in tokens[0]]
    return tokens, targets, labels, (f"the masked-LM loss, over {masked} of the {tokens.size} tokens, masked "
                                     f"from --seed {seed} as training masks its held-out text")


def run_diff(args) -> int:
    import numpy as np

    from ..debug import DEFAULT_RTOL
    from ..trace import Trace, compare

    a, b = Trace.load(args.a), Trace.load(args.b)
    rtol = DEFAULT_RTOL[np.float32] if args.rtol is None else args.rtol
    return _print_comparison(compare(a, b, rtol, args.atol, labels=(args.a, args.b)), args.table)
