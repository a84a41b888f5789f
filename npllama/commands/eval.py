"""`npllama eval choice`: multiple-choice question answering by log-likelihood (article §6.3)."""
from . import HelpFormatter, print_help_instead


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: multiple-choice question answering",
        description="Evaluate a trained model on a task.", formatter_class=HelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="<task>")
    c = tasks.add_parser(
        "choice", help="multiple choice by the log-likelihood of each choice",
        description="Score each choice by the log-probability the model gives its tokens after the "
                    "question; the most likely choice is the model's answer. Prints accuracy (total "
                    "log-likelihood) and accuracy per token (length-normalised) beside chance. With no "
                    "--data it uses built-in items: which sentence comes next in a story?",
        formatter_class=HelpFormatter)
    c.add_argument("--base", default=None, help="the model: a run folder or a Hugging Face LLaMA folder "
                   "with tokenizer.model (default: the latest `npllama train` run)")
    c.add_argument("--adapter", default=None, help="a LoRA adapter folder (PEFT layout) to apply to --base")
    c.add_argument("--data", default=None, help=".jsonl with {\"question\", \"choices\": [...], \"answer\": "
                   "index} lines (default: built-in story-continuation items)")
    c.add_argument("--limit", type=int, default=200, help="evaluate at most this many items")
    c.add_argument("--template", default="plain", choices=["plain", "chat"],
                   help="chat: wrap the question in [INST] ... [/INST] (for models tuned with `finetune sft`)")
    c.add_argument("--seed", type=int, default=0, help="seed of the built-in items")
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    c.add_argument("--backend", default=None, choices=["numpy", "numba"])
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(run=run_choice)
    p.set_defaults(run=print_help_instead(p))


def run_choice(args) -> int:
    import numpy as np

    from ..backend import get_backend, use_backend
    from ..datasets import load_choice_items, make_choice_items
    from ..finetune import evaluate_choice
    from ..lora import load_adapter
    from ..runs import load_model_and_tokenizer
    from . import UsageError

    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    model, tokenizer, model_dir = load_model_and_tokenizer(args.base, dtype=getattr(np, args.dtype))
    if args.adapter is not None:
        load_adapter(model, args.adapter)
    items = make_choice_items(args.limit, seed=args.seed) if args.data is None else load_choice_items(args.data)
    items = items[:args.limit]
    with use_backend(args.backend or get_backend()):
        result = evaluate_choice(model, tokenizer, items, args.template, progress=not args.no_progress)
    source = "built-in story-continuation items" if args.data is None else args.data
    print(f"{model_dir}{' + ' + args.adapter if args.adapter else ''} on {result['n']} {source}: "
          f"accuracy {result['accuracy']:.3f}, per-token accuracy {result['accuracy_per_token']:.3f} "
          f"(chance {result['chance']:.3f})")
    return 0
