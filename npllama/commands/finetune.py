"""`npllama finetune classify|sft|sop`: adapt a pre-trained model to a task (article §3.3, §6, §9.2), or
train it on the masked-LM + sentence-order objectives (§3.2.3, §4.3.3)."""
import re
import sys

from . import (HelpFormatter, UsageError, defaults_only_when_given, doc_separator_rule, prepare_training_process,
               print_help_instead, refuse_ignored_flags)

LORA_HELP = ("train LoRA adapters (and the new head) only, the base weights frozen; saved in PEFT's "
             "adapter layout")


def register(subparsers) -> None:
    from ..finetune import ClassifyConfig, SFTConfig
    from ..finetune_sop import SentenceOrderConfig

    p = subparsers.add_parser(
        "finetune", help="fine-tune a trained model: text classification, instruction tuning, or masked-LM + "
                         "sentence order",
        description="Fine-tune a pre-trained model (a run folder from `npllama train` or any Hugging Face "
                    "LLaMA folder with tokenizer.model or tokenizer.json) on a downstream task, fully or with LoRA adapters.",
        formatter_class=HelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="<task>")

    c, d = tasks.add_parser(
        "classify", help="sequence classification (sentiment, news topic, spam, or your own labels)",
        description="Train a classification head on the last token's hidden state (Hugging Face's "
                    "LlamaForSequenceClassification), with every weight or LoRA adapters trainable. "
                    "Prints validation accuracy, macro-F1 and the confusion matrix beside the "
                    "majority-class baseline. With no --data it uses a built-in example set. A masked-LM "
                    "--base (`npllama train --objective mlm`) is fine-tuned and run with bidirectional "
                    "attention, as it was pre-trained.",
        formatter_class=HelpFormatter), ClassifyConfig()
    _common(c, d)
    c.add_argument("--data", default=None, help="training data: .jsonl with {\"text\", \"label\"} lines, or "
                   ".csv (comma- or semicolon-separated, as Excel saves it, or as a first line sep=X names) "
                   "or .tsv with a header row naming the columns text and label, UTF-8 (default: the built-in "
                   "--dataset)")
    c.add_argument("--dataset", default=d.dataset, choices=["sentiment", "topic", "spam"],
                   help="built-in example set used when --data is not given")
    c.add_argument("--val-data", default=None, help="validation file (default: split off --val-fraction)")
    c.add_argument("--labels", default=None, help="comma-separated label names in id order (, ， or 、), fixing the "
                   "head's size and order (a .jsonl file's integer labels are ids into it, unless the names are numbers) (default: the "
                   "sorted labels found in the data; a .jsonl file's integer labels >= 0 are class ids "
                   "from 0 to the largest, so labels 1-5 make six classes)")
    c.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the examples held out for validation, each label in proportion to its "
                   "count (a label keeps one example for training)")
    c.add_argument("--split", default=d.split, choices=["stratified", "shuffled"],
                   help="how --val-fraction is held out: stratified (each label by its share) or shuffled "
                   "(a random share, whatever their labels; a run saved before npllama "
                   "stratified resumes shuffled)")
    c.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-4, with --lora 3e-3)")
    c.add_argument("--max-len", type=int, default=d.max_len, help="tokens kept per text, from its beginning "
                   "(the head reads the last one kept)")
    _given_only(c, ClassifyConfig)
    c.set_defaults(run=run_classify)

    s, d = tasks.add_parser(
        "sft", help="instruction / dialogue tuning on prompt-response pairs or conversations",
        description="Supervised fine-tuning in a chat template (the base folder's, else LLaMA-3's if the tokenizer "
                    "has its <|start_header_id|>, else LLaMA-2's <s>[INST] prompt "
                    "[/INST] response </s>; --chat-template picks another), with the loss on the response only. With no --data it uses built-in story instructions "
                    "(\"Write a story about Lily.\").",
        formatter_class=HelpFormatter), SFTConfig()
    _common(s, d, lora_help="train LoRA adapters only, the base weights (the LM head too) frozen; saved in PEFT's "
                            "adapter layout (with --merge: merged into the weights)",
            seeds="the adapters, the split and the batch order")
    s.add_argument("--data", default=None, help=".jsonl with {\"prompt\", \"response\"} lines (optional "
                   "\"system\"), or {\"messages\": [{\"role\", \"content\"}, ...]} conversations, the loss on every "
                   "assistant message (default: built-in instructions)")
    s.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the examples held out for validation")
    s.add_argument("--chat-template", default=None, help="llama2, llama3 or a Jinja file to format the "
                   "examples with (default: the base folder's chat_template, else llama3 if the tokenizer has its "
                   "<|start_header_id|>, else llama2); saved with the model")
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3, with --lora 5e-3)")
    s.add_argument("--max-len", type=int, default=d.max_len, help="tokens kept per example, from its beginning "
                   "(a note counts those cut); an example whose prompt fills them all, leaving no response "
                   "token to learn, is skipped with a note naming its line (none left: refused)")
    s.add_argument("--merge", action="store_true", help="with --lora: save the merged model, not the adapter")
    s.add_argument("--samples", type=int, default=d.samples, help="greedy answers printed at the end")
    _given_only(s, SFTConfig)
    s.set_defaults(run=run_sft)

    o, d = tasks.add_parser(
        "sop", help="masked-LM + sentence-order (ALBERT) or next-sentence (BERT) training",
        description="Train on the two objectives of BERT-style models the article teaches (§3.2.3, §4.3.3): "
                    "each document gives a pair of consecutive stretches A, B of its sentences, half of them "
                    "swapped (--pairs sop) or with B from another document (--pairs nsp); `<s> A </s> B </s>` "
                    "runs without the causal mask with 15% of its tokens masked, and the loss is the masked-LM "
                    "loss plus a binary head's \"changed?\" cross-entropy. Prints the held-out MLM loss and the "
                    "head's accuracy before and after, beside the majority-label baseline. The result is a "
                    "masked-LM model (fine-tune it with `npllama finetune classify --base OUT`; generate refuses "
                    "it) with the head in sop_head.safetensors (a --base holding one, of the same --pairs, continues it); LoRA adapters are merged into it. With no --data "
                    "it uses built-in stories.",
        formatter_class=HelpFormatter), SentenceOrderConfig()
    _common(o, d, lora_help="train LoRA adapters (and the binary head) only, the base weights frozen; "
                              "merged into the weights when saved",
            seeds="the head, the adapters, the split, the pairs (where A and B are cut, which are changed), the "
                  "batch order and the masks")
    o.add_argument("--data", default=None, help="documents, read as `npllama train --data` reads them: a .txt "
                   "file (cut as --doc-separator says), a folder of .txt/.jsonl files, or a .jsonl file with a "
                   "\"text\" field; each document of two or more sentences gives one pair, a longer one a pair per "
                   "--max-len stretch (default: --stories "
                   "built-in stories)")
    o.add_argument("--doc-separator", default=d.doc_separator, metavar="blank-line|line|marker:TEXT|whole-file",
                   help="how a .txt file is cut into documents: at blank lines, at every newline (line), at every TEXT, "
                        "or not at all")
    o.add_argument("--stories", type=int, default=d.stories, help="built-in stories used when --data is not given")
    o.add_argument("--pairs", default=d.pairs, choices=["sop", "nsp"],
                   help="sop: B follows A or the two are swapped (ALBERT's sentence order); nsp: B follows A or "
                        "comes from another document (BERT's next sentence)")
    o.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the documents held out for validation")
    o.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3, with --lora 5e-3)")
    o.add_argument("--max-len", type=int, default=d.max_len, help="tokens per pair, <s> A </s> B </s> (a segment "
                   "too long keeps the text nearest the A|B boundary: the end of A, the start of B)")
    _given_only(o, SentenceOrderConfig)
    o.set_defaults(run=run_sop)
    p.set_defaults(run=print_help_instead(p))


def _common(p, d, lora_help: str = LORA_HELP,
            seeds: str = "the head, the adapters, the split and the batch order") -> None:
    p.add_argument("--base", default=None, help="the pre-trained model: a run folder or a Hugging Face "
                   "LLaMA folder with tokenizer.model or tokenizer.json (default: the latest `npllama train` run)")
    p.add_argument("--out", default=None, help="the run folder: checkpoints while training, then the result "
                   "(default: nothing saved, and a stop loses the run)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints in --out (0: only when stopped and at the end); Ctrl-C, "
                        "SIGTERM and SIGHUP save one and stop")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(d)}
    defining = ", ".join("--" + name.replace("_", "-") for name in d.RESUME_FIXED if name in fields)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings it was started with; "
                        f"options given with it change those settings, except the ones that define the run ({defining}); "
                        "a --data file edited since the checkpoint is refused too, and with --lora a --base whose "
                        "weights changed since (the checkpoint holds the adapters, not the base)")
    p.add_argument("--lora", action="store_true", help=lora_help)
    p.add_argument("--lora-r", type=int, default=d.lora_r, help="adapter rank r")
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="scaling = alpha / r")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout,
                   help="dropout on the adapters' input while training")
    p.add_argument("--lora-targets", default=",".join(d.lora_targets),
                   help="comma-separated projections to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    p.add_argument("--lora-mlp", action="store_true", help="also adapt the MLP (gate_proj, up_proj, down_proj)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="steps of linear learning-rate warmup before the cosine decay, at most --steps "
                        "(default: 20, at most --steps - 1)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW's decoupled weight decay")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds " + seeds)
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"],
                   help="the precision the model is trained in")
    p.add_argument("--backend", default=None, choices=["numpy", "numba"],
                   help="op implementations (default: $NPLLAMA_BACKEND or numba)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# flags that only mean something with (or without) --data
DATA_FLAG_RULES = (
    ("dataset", lambda c: c.data is None, "picks a built-in example set, used only without --data"),
    ("stories", lambda c: c.data is None, "sizes the built-in stories, used only without --data"),
    doc_separator_rule(),   # as train's: not the built-in stories, nor a .jsonl file (its records are documents)
    ("val_fraction", lambda c: getattr(c, "val_data", None) is None, "holds a share of the examples out for "
                                                                    "validation, which --val-data replaces"),
    ("split", lambda c: c.val_data is None, "says how --val-fraction's share is held out, which --val-data "
                                            "replaces"),
)


def _given_only(parser, cls) -> None:
    import dataclasses

    defaults_only_when_given(parser, {f.name for f in dataclasses.fields(cls)} | {"no_progress", "lora_mlp"})


def _config(cls, args):
    """The job's settings: the options given over the defaults, or with --resume over the run's
    saved settings (npllama.finetune_run)."""
    import dataclasses

    from ..lora import ATTENTION_TARGETS, MLP_TARGETS

    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in fields}  # only options on the command line
    lora_mlp = getattr(args, "lora_mlp", False)
    if "lora_targets" in given or lora_mlp:
        targets = tuple(t.strip() for t in given.get("lora_targets", ",".join(ATTENTION_TARGETS)).split(",")
                        if t.strip())
        given["lora_targets"] = targets + (MLP_TARGETS if lora_mlp else ())
    if "no_progress" in vars(args):
        given["progress"] = not args.no_progress
    if given.get("labels") is not None:
        # a Chinese keyboard types the full-width comma ， and lists with 、
        given["labels"] = tuple(n.strip() for n in re.split("[,，、]", given["labels"]) if n.strip())
    on_the_command_line = set(given)
    if args.resume and given.get("out") is None:
        raise UsageError("--resume needs --out: the run folder to continue")
    if given.get("out") is not None:   # before the model loads (was "[Errno 20] Not a directory")
        from ..io.atomic import refuse_a_file_above

        refuse_a_file_above(given["out"], "--out")   # a NotADirectoryError: cli says it in one line
    try:
        if args.resume:
            from ..finetune_run import require_resumable, settings_file
            from ..resuming import settings_over_saved

            require_resumable(given["out"], args.task)
            given = settings_over_saved(cls, given["out"], settings_file(args.task), given)
        lora = given.get("lora", False)
        if "lora_targets" in given and tuple(given["lora_targets"]) != ATTENTION_TARGETS and not lora:
            raise UsageError("--lora-targets / --lora-mlp need --lora")
        for name in ("lora_r", "lora_alpha", "lora_dropout"):   # else silently a full fine-tune
            if name in on_the_command_line and not lora:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} needs --lora (without it every weight is fine-tuned and {flag} "
                                 f"would be ignored)")
        if given.get("merge") and not lora:
            raise UsageError("--merge needs --lora (it folds the adapters into the base weights)")
        config = cls(**given)
        if args.resume:   # (cls.resume_config's settings, with the flags' checks between)
            from ..resuming import built_on_saved

            built_on_saved(config)
        refuse_ignored_flags(on_the_command_line, config, DATA_FLAG_RULES)
        return config
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def run_classify(args) -> int:
    from ..finetune import ClassifyConfig, classify

    return _fine_tune(args, classify, _config(ClassifyConfig, args))


def run_sft(args) -> int:
    from ..finetune import SFTConfig, sft

    return _fine_tune(args, sft, _config(SFTConfig, args))


def run_sop(args) -> int:
    from ..finetune_sop import SentenceOrderConfig, sentence_order

    return _fine_tune(args, sentence_order, _config(SentenceOrderConfig, args))


def _fine_tune(args, fine_tune, config) -> int:
    """Run it; a run that fails on the way (a NaN loss) is reported in one line, status 1."""
    from ..backend import get_backend, use_backend
    from ..finetune import OUT_AS_GIVEN
    from ..optim import TrainingError
    from ..resuming import CheckpointWriteError
    from ..runs import RunInUseError

    prepare_training_process()
    # the last line's advice names the flag, not the keyword -- for this job only, however it ends
    # (a Python fine-tune later in the process names out=DIR)
    flag_named = OUT_AS_GIVEN.set("--out DIR")
    try:
        with use_backend(args.backend or get_backend()):
            fine_tune(config, resume=args.resume)
    except (TrainingError, CheckpointWriteError, RunInUseError) as error:  # not a usage mistake: the run itself failed
        print(f"npllama finetune {args.task}: stopped: {error}", file=sys.stderr)
        return 1
    finally:
        OUT_AS_GIVEN.reset(flag_named)
    return 0
