"""`npllama generate`: continue a prompt with a trained model, streaming tokens as they come."""
import sys

from . import HelpFormatter, UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a trained model",
        description="Generate text with a KV cache: the prompt is processed in one forward pass, then "
                    "one token per step, printed as it comes. Temperature 0 is greedy decoding.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="a run folder from `npllama train`, or a Hugging Face "
                   "LLaMA folder with tokenizer.model (default: the latest run)")
    p.add_argument("--prompt", default="Once upon a time", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one each run)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default=None, choices=["numpy", "numba"])
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np

    from ..backend import get_backend, use_backend
    from ..generate import generate, stream_text
    from ..runs import load_model_and_tokenizer

    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    model, tokenizer, _ = load_model_and_tokenizer(args.model, dtype=getattr(np, args.dtype))
    prompt_ids = tokenizer.encode(args.prompt, bos=True)
    with use_backend(args.backend or get_backend()):
        for i in range(args.num_samples):
            seed = None if args.seed is None else args.seed + i
            sys.stdout.write(args.prompt)
            on_token = stream_text(tokenizer, prompt_ids, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
            generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=seed, eos_id=tokenizer.eos_id,
                     on_token=on_token)
            sys.stdout.write("\n" + ("-" * 40 + "\n" if i < args.num_samples - 1 else ""))
    return 0
