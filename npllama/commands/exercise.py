"""`npllama exercise`: write one op's backward pass yourself and have it checked (classroom mode)."""

from . import HelpFormatter, UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "exercise", help="write an op's backward pass yourself and check it",
        description="Classroom mode. `start OP` writes a starter file (signature, docstring, shapes, "
                    "derivation pointer, a body to fill in); `check OP FILE` runs the project's own "
                    "gradient checks on it and explains any failure; `check OP FOLDER` checks every "
                    ".py file in a folder and prints a table.")
    sub = p.add_subparsers(dest="action", metavar="<action>")
    sub.required = True

    ls = sub.add_parser("list", help="the exercises, one per backward pass in npllama/ops")
    ls.set_defaults(run=run_list)

    start = sub.add_parser("start", help="write the starter file for an exercise",
                           formatter_class=HelpFormatter)
    start.add_argument("op", help="which exercise (see `npllama exercise list`)")
    start.add_argument("--out", default=None, help="file or folder to write (default: ./<op>_backward.py)")
    start.add_argument("--force", action="store_true", help="overwrite an existing file")
    start.set_defaults(run=run_start)

    check = sub.add_parser("check", help="check a file (or every .py file in a folder)",
                           formatter_class=HelpFormatter)
    check.add_argument("op", help="which exercise (see `npllama exercise list`)")
    check.add_argument("path", help="a .py file defining <op>_backward, or a folder of them")
    check.add_argument("--cases", type=int, default=8, help="random cases per check, after the edge cases")
    check.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    check.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    check.set_defaults(run=run_check)


def run_list(args) -> int:
    from ..exercises import EXERCISES

    rows = [("exercise", "write", "derivation", "checks")]
    for op, ex in EXERCISES.items():
        rows.append((op, ex.signature[4:-1], ex.derivation, ", ".join(c.name for c in ex.checks())))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print("\nStart one with `npllama exercise start <exercise>`.")
    return 0


def run_start(args) -> int:
    from ..exercises import get_exercise, write_starter

    ex = get_exercise(args.op)
    try:
        path = write_starter(args.op, args.out, force=args.force)
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}: fill in {ex.backward_name}, then run")
    print(f"    npllama exercise check {ex.op} {path}")
    return 0


def run_check(args) -> int:
    import json
    from pathlib import Path

    from ..exercises import check_file, check_folder, format_table, get_exercise

    get_exercise(args.op)  # an unknown name is a usage error before anything runs
    if args.cases < 0:
        raise UsageError(f"--cases must be >= 0, got {args.cases}")
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give a .py file or a folder of them)")
    if path.is_dir():
        reports = check_folder(args.op, path, n_random=args.cases, seed=args.seed)
        print(format_table(reports))
    else:
        reports = [check_file(args.op, path, n_random=args.cases, seed=args.seed)]
        print(reports[0].format())
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in reports], indent=2, default=str) + "\n")
    return 0 if all(r.ok for r in reports) else 1
