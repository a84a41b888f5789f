"""`npllama explain OP`: print a derivation (derivations/<op>.md) as readable terminal text."""
import shutil

from . import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="print the derivation of an op's forward and backward pass",
        description="Print derivations/<op>.md with its LaTeX turned into plain text.  OP is an exercise "
                    "(see `npllama exercise list`) or a derivation's name (adamw, transformer_block, ...).")
    p.add_argument("op", nargs="?", default=None, help="the op or derivation; omit it to list them")
    p.add_argument("--backward", action="store_true", help="only the sections deriving the backward pass")
    p.add_argument("--markdown", action="store_true", help="print the Markdown source as it is")
    p.set_defaults(run=run_explain)


def run_explain(args) -> int:
    from ..exercises import EXERCISES
    from ..exercises.definitions import did_you_mean
    from ..exercises.derivation import available, derivation_markdown, explain_text

    if args.op is None:
        print("derivations: " + ", ".join(available()))
        print("exercises:   " + ", ".join(EXERCISES))
        return 0
    name = EXERCISES[args.op].derivation if args.op in EXERCISES else args.op
    if name.removeprefix("derivations/").removesuffix(".md") not in available():
        names = sorted(set(available()) | set(EXERCISES))
        raise UsageError(f"unknown op or derivation {args.op!r}{did_you_mean(args.op, names)}; choose one of: "
                         f"{', '.join(names)}")
    if args.markdown:
        print(derivation_markdown(name), end="")
    else:       # the terminal's columns ($COLUMNS, else 80 when it is not a terminal)
        print(explain_text(name, backward_only=args.backward, width=shutil.get_terminal_size().columns), end="")
    return 0
