"""`npllama viz`: PNG pictures of attention, loss curves and gradient norms (needs matplotlib)."""
from . import UsageError
from .debug import MODEL_TO_RUN, TEXT_TO_RUN, add_mask_seed_option, loss_inputs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "viz", help="pictures: attention maps, loss curves, gradient norms (needs matplotlib)",
        description="Draw PNG files (headless).  Needs matplotlib: pip install 'npllama[plot]'.")
    sub = p.add_subparsers(dest="action", metavar="<action>")
    sub.required = True

    attn = sub.add_parser("attention", help="a heatmap of one head's attention, tokens on both axes")
    attn.add_argument("--model", default=None, help=MODEL_TO_RUN)
    attn.add_argument("--text", default=None, help=TEXT_TO_RUN)
    attn.add_argument("--tokens", default=None, help="token ids instead of text, e.g. 1,5,9")
    attn.add_argument("--layer", type=int, default=0, help="which layer's attention to draw, 0 = first (default: 0)")
    attn.add_argument("--head", type=int, default=0, help="which head of that layer, 0 = first (default: 0)")
    attn.add_argument("--out", default=None, help="PNG to write (default: attention_L<layer>_H<head>.png)")
    attn.set_defaults(run=run_attention)

    loss = sub.add_parser("loss", help="train and validation loss curves from a run's log.jsonl")
    loss.add_argument("run_dir", metavar="RUN",
                      help="a run folder from `npllama train` or `npllama finetune`, or its log.jsonl")
    loss.add_argument("--out", default=None, help="PNG to write (default: loss.png in the run folder)")
    loss.set_defaults(run=run_loss)

    grads = sub.add_parser("grads", help="gradient norm per layer, from a saved trace or a fresh run")
    grads.add_argument("trace", nargs="?", default=None,
                       help="a trace .npz from `npllama debug trace --out` (or give --model and --text)")
    grads.add_argument("--model", default=None, help="run this model instead of reading a trace: " + MODEL_TO_RUN)
    grads.add_argument("--text", default=None, help=TEXT_TO_RUN)
    grads.add_argument("--tokens", default=None, help="token ids instead of text, e.g. 1,5,9")
    add_mask_seed_option(grads)
    grads.add_argument("--out", default="grad_norms.png", help="PNG to write (default: grad_norms.png)")
    grads.set_defaults(run=run_grads)


def _viz():
    from .. import viz

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"pictures need matplotlib: {viz.PLOT_EXTRA}") from None
    return viz


def run_attention(args) -> int:
    from .. import debug

    viz = _viz()
    model, model_dir, ids, labels = debug.load_inputs(args.model, args.text, args.tokens)
    probs = viz.attention_probs(model, ids, args.layer, args.head)
    out = args.out or f"attention_L{args.layer}_H{args.head}.png"
    title = f"layer {args.layer}, head {args.head}" + ("" if model.attends_causally else
                                                       " (bidirectional: a masked-LM model)")
    path = viz.plot_attention(probs, labels, out, title=title, masked=viz.masked_cells(model, len(ids)))
    print(f"wrote {path} ({len(ids)} tokens)")
    return 0


def run_loss(args) -> int:
    from pathlib import Path

    viz = _viz()
    run = Path(args.run_dir)
    out = args.out or (run / "loss.png" if run.is_dir() else run.with_name("loss.png"))
    path = viz.plot_loss(run, out, title=f"loss: {viz.log_file(run).resolve().parent.name}")
    print(f"wrote {path}")
    return 0


def run_grads(args) -> int:
    from .. import debug
    from ..trace import Trace

    viz = _viz()
    if args.trace is not None:
        if args.text is not None or args.tokens is not None or args.model is not None or args.seed is not None:
            raise UsageError("give either a trace file or --model with --text/--tokens (and --seed), not both "
                             "(a trace holds its model's gradients already)")
        trace = Trace.load(args.trace)   # checks the arrays' declared sizes against the budget first
        title = f"gradient norm per layer: {args.trace}"
    else:
        if args.text is None and args.tokens is None:
            raise UsageError("give a trace file, or --text / --tokens to run the model")
        model, model_dir, ids, _ = debug.load_inputs(args.model, args.text, args.tokens)
        tokens, targets, _, loss = loss_inputs(debug, model, model_dir, ids, None, None, args.seed)
        trace = debug.run_trace(model, tokens, targets, include=["d:model.layers.*"])
        title = f"gradient norm per layer: {len(ids)} tokens"
        print(f"the loss traced: {loss}")
    path = viz.plot_grad_norms(trace, args.out, title=title)
    print(f"wrote {path}")
    return 0
