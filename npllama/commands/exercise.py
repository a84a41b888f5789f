"""`npllama exercise`: write one op's backward pass yourself and have it checked (classroom mode)."""

import shlex
import textwrap

from . import HelpFormatter, UsageError

EXERCISE_FILE_HELP = ("a teacher's own exercise: a .py file defining a subclass of npllama.exercises.Exercise "
                      "(docs/debugging.md, \"Your own exercise\"); OP then names one of its exercises, and its "
                      "reference backward must pass the exercise's own checks first")
# After this many seconds `check` of one file says it is still running: an endless loop would
# otherwise be silence until --timeout.  A right answer takes a second or two, and never sees it.
STILL_RUNNING_AFTER = 10.0
# ... and again every this many seconds until it is stopped: one note and then 110 s of silence
# looks like a hang
STILL_RUNNING_EVERY = 30.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "exercise", help="write an op's backward pass yourself and check it",
        description="Classroom mode. `list` shows the exercises; `start OP` writes a starter file "
                    "(signature, docstring, shapes, the derivation's backward section, a body to fill in); "
                    "`check OP FILE` runs the project's own gradient checks on it in a sandboxed process and "
                    "explains any failure, naming the mistake when the numbers show which step of the "
                    "derivation went wrong; `check OP FOLDER` grades every .py file in a folder (and in its "
                    "subfolders, one per student) and writes a gradebook; `notebook OP` writes the exercise as a "
                    "Jupyter notebook; `train OP FILE` trains the tiny model with your backward.  `npllama explain OP` prints the derivation.  "
                    "A teacher's own exercise (GELU, a LayerNorm variant, ...) is a .py file given to list, "
                    "start, notebook, check and train with --exercise-file FILE.")
    sub = p.add_subparsers(dest="action", metavar="<action>")
    sub.required = True

    ls = sub.add_parser("list", help="the exercises: one per backward pass in npllama/ops, then the decoder "
                                     "block and the whole model assembled from them")
    ls.add_argument("--exercise-file", default=None, metavar="FILE",
                    help="a teacher's own exercises: a .py file defining subclasses of npllama.exercises.Exercise "
                         "(docs/debugging.md, \"Your own exercise\"); lists those, each once its reference backward "
                         "passes the exercise's own checks")
    ls.set_defaults(run=run_list)

    start = sub.add_parser("start", help="write the starter file for an exercise",
                           formatter_class=HelpFormatter)
    start.add_argument("op", help="which exercise (see `npllama exercise list`)")
    start.add_argument("--out", default=None, help="file or folder to write (default: ./<backward>.py, the name of the function to write, e.g. ./rmsnorm_backward.py)")
    start.add_argument("--force", action="store_true", help="overwrite an existing file")
    start.add_argument("--quiet", action="store_true", help="do not print the derivation's backward section")
    start.add_argument("--exercise-file", default=None, metavar="FILE", help=EXERCISE_FILE_HELP)
    start.set_defaults(run=run_start)

    notebook = sub.add_parser("notebook", help="write the exercise as a Jupyter notebook (derivation, "
                                               "starter cell, check cell)")
    notebook.add_argument("op", help="which exercise (see `npllama exercise list`)")
    notebook.add_argument("--out", default=None, help="file or folder to write (default: ./<backward>.ipynb, the name of the function to write, e.g. ./rmsnorm_backward.ipynb)")
    notebook.add_argument("--force", action="store_true", help="overwrite an existing file")
    notebook.add_argument("--exercise-file", default=None, metavar="FILE", help=EXERCISE_FILE_HELP + "; the "
                          "notebook's check cell loads it, so hand it out with the notebook")
    notebook.set_defaults(run=run_notebook)

    trainer = sub.add_parser("train", help="train the tiny model with your backward in place of the library's "
                                           "and compare the loss curves",
                             formatter_class=HelpFormatter)
    trainer.add_argument("op", help="which exercise (an op of the model: see `npllama exercise list`)")
    trainer.add_argument("path", help="your .py file defining the exercise's backward (<op>_backward for a built-in one)")
    trainer.add_argument("--steps", type=int, default=200, help="training steps of each run")
    trainer.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    trainer.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    trainer.add_argument("--seed", type=int, default=0, help="seed of the model and the batches (both runs)")
    trainer.add_argument("--out", default=None, help="folder for the two runs and the plot (default: a temporary one)")
    trainer.add_argument("--exercise-file", default=None, metavar="FILE",
                         help=EXERCISE_FILE_HELP + "; its exercise must stand for an op of the model (forward_name "
                              "and backward_name those of one: a variant of rmsnorm, say), whose forward and "
                              "reference then train the reference run")
    trainer.set_defaults(run=run_train)

    check = sub.add_parser("check", help="check a file (or every .py file in a folder and its subfolders)",
                           formatter_class=HelpFormatter)
    check.add_argument("op", help="which exercise (see `npllama exercise list`)")
    check.add_argument("path", help="a .py file defining the exercise's backward (<op>_backward for a built-in one), "
                                        "or a folder of them (or of one folder per student)")
    check.add_argument("--cases", type=int, default=8, help="random cases per check, after the edge cases")
    check.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    check.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON (the gradebook's records)")
    check.add_argument("--gradebook", default=None, metavar="STEM",
                       help="for a folder: write the gradebook to STEM.csv and STEM.json "
                            "(default: ./gradebook-<op>)")
    check.add_argument("--timeout", type=float, default=120.0,
                       help="seconds one submission may run before it is stopped and failed")
    check.add_argument("--memory-mb", type=int, default=1024,
                       help="memory (MB) one submission may allocate before it is stopped and failed")
    check.add_argument("--allow-imports", action="store_true",
                       help="skip the import rule, for files you trust: the run-time guard that stays on "
                            "catches a direct call of the library's forward or backward, not every other route "
                            "a file allowed to import anything has to them")
    check.add_argument("--exercise-file", default=None, metavar="FILE",
                       help=EXERCISE_FILE_HELP + ", on the cases given by --cases and --seed, before any submission "
                            "is graded; each submission's process loads the file too")
    check.set_defaults(run=run_check)


def exercise_of(args, verify: bool = True):
    """The exercise OP names: a built-in one, or one of the teacher's file given by --exercise-file."""
    from ..exercises import get_exercise
    from ..exercises.teacher import exercise_in_file

    if args.exercise_file is None:
        return get_exercise(args.op)
    return exercise_in_file(args.exercise_file, args.op, verify=verify)


def run_list(args) -> int:
    from ..exercises import EXERCISES, load_exercises
    from ..exercises.starter import derivation_name

    exercises = EXERCISES if args.exercise_file is None else load_exercises(args.exercise_file)
    rows = [("exercise", "write", "derivation", "checks")]
    for op, ex in exercises.items():
        rows.append((op, ex.signature[4:-1], derivation_name(ex), ", ".join(c.name for c in ex.checks())))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    if args.exercise_file is None:
        print("\nStart one with `npllama exercise start <exercise>`; `npllama explain <exercise>` prints its "
              "derivation.")
    else:
        print(f"\nStart one with `npllama exercise start --exercise-file {shlex.quote(args.exercise_file)} <exercise>`.")
    return 0


def run_start(args) -> int:
    from ..exercises import write_starter

    ex = exercise_of(args)
    try:
        path = write_starter(ex, args.out, force=args.force)
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    if not args.quiet:
        from ..exercises.starter import derivation_name, derivation_quote

        quote = derivation_quote(ex)
        if quote:
            print(f"The math you need ({derivation_name(ex)}):\n")
            print(quote)
    # pasted here, where the teacher's file is the path given (the starter's own text reaches it
    # from the starter's folder)
    print(f"wrote {path}: fill in {ex.backward_name}, then run")
    print(f"    {ex.check_command(path, args.exercise_file)}")
    print("or, from pytest (a test file of your own, a course's CI), the same checks:")
    print(textwrap.indent(ex.pytest_test(path, args.exercise_file), "    ", lambda line: bool(line.strip())))
    return 0


def run_notebook(args) -> int:
    from ..exercises.notebook import write_notebook

    ex = exercise_of(args)
    try:
        path = write_notebook(ex, args.out, force=args.force)
    except FileExistsError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}: open it in Jupyter, fill in {ex.backward_name}, run the check cell")
    return 0


def run_check(args) -> int:
    """Each file is graded in its own process (time and memory limits): nothing a submission does
    can stop the grading.  Exit status 0 when every submission passes, 1 otherwise."""
    import sys
    from pathlib import Path

    from ..exercises import gradebook
    from ..exercises.definitions import NOT_THE_CHECK_CELL
    from ..exercises.gradebook import GradingInterrupted, format_gradebook, gradebook_json, write_gradebook
    from ..exercises.teacher import verify_reference
    from ..io.atomic import atomic_write_text
    from ..exercises.sandbox import grade_file

    exercise = exercise_of(args, verify=False)  # an unknown name is a usage error before anything runs
    if args.cases < 0:
        raise UsageError(f"--cases must be >= 0, got {args.cases}")
    if not 0 < args.timeout < float("inf"):
        raise UsageError(f"--timeout must be a positive, finite number of seconds, got {args.timeout}")
    if args.memory_mb < 64:
        raise UsageError(f"--memory-mb must be at least 64, got {args.memory_mb}")
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give a .py file or a folder of them)")
    if args.json:
        _refuse_replacing_what_is_checked(Path(args.json), path, exercise)
    if args.gradebook is not None and not path.is_dir():   # one file's result is printed, not a gradebook
        raise UsageError(f"--gradebook names the gradebook of a folder of submissions, but {str(path)!r} is one "
                         f"file: leave it out (--json FILE keeps its result)")
    if not exercise.builtin:     # on the class's own cases, before anyone is graded
        verify_reference(exercise, args.cases, args.seed)
    limits = dict(n_random=args.cases, seed=args.seed, timeout=args.timeout, memory_mb=args.memory_mb,
                  allow_imports=args.allow_imports)
    if path.is_dir():
        def progress(graded, done, total):
            print(f"[{done}/{total}] {graded.file}: {graded.status} ({graded.seconds:.1f} s)", file=sys.stderr,
                  flush=True)

        stem = args.gradebook or f"gradebook-{args.op}"
        try:
            graded = gradebook.grade_folder(exercise, path, progress=progress, **limits)
        except GradingInterrupted as interrupt:     # what was graded is kept, and said to be partial
            csv_path, json_path = write_gradebook(interrupt.graded, stem)
            interrupt.detail = (f"{len(interrupt.graded)} of {interrupt.total} submissions graded; "
                                f"their rows are in {csv_path} and {json_path}")
            raise
        print(format_gradebook(graded))
        others = gradebook.not_graded_in(path)
        if others:
            print(f"not graded (not .py files): {', '.join(others)}"
                  + (f"; a notebook is graded once its solution cell is saved as a .py file ({NOT_THE_CHECK_CELL})"
                     if any(name.endswith(".ipynb") for name in others) else ""))
        deeper = gradebook.two_folders_down(path)
        if deeper:
            print(f"not graded (two folders down: check each subfolder on its own): {', '.join(deeper)}")
        csv_path, json_path = write_gradebook(graded, stem)
        print(f"gradebook: {csv_path} and {json_path}")
    else:
        print(f"checking {path} against the {len(exercise.checks())} checks of exercise {args.op} "
              f"(in a process of its own, at most {args.timeout:g} s) ...", file=sys.stderr, flush=True)
        graded = [_with_still_running_notice(args.timeout, lambda: grade_file(exercise, path, **limits))]
        print(graded[0].report)
    if args.json:
        atomic_write_text(Path(args.json), gradebook_json(graded))   # a failed write leaves the old file whole
    return 0 if all(g.ok for g in graded) else 1


def _refuse_replacing_what_is_checked(json_path, path, exercise) -> None:
    """--json is written after the grading: never over the file checked, a submission of the folder
    checked, or the --exercise-file (the student's or the teacher's work would be lost)."""
    import os
    from pathlib import Path

    from ..exercises.gradebook import submissions_in

    if not json_path.exists():
        return
    try:
        read = submissions_in(path) if path.is_dir() else [path]
    except FileNotFoundError:   # a folder with nothing to grade: said by the grading
        read = []
    read = [(source, "a file being checked") for source in read]
    if exercise.exercise_file:
        read.append((Path(exercise.exercise_file), "the exercise file (--exercise-file)"))
    for source, what in read:
        if os.path.samefile(source, json_path):
            raise UsageError(f"--json {str(json_path)!r} is {str(source)!r}, {what}: writing the results there "
                             f"would replace it; choose another --json")


def _with_still_running_notice(timeout: float, grade):
    """grade(), with one line on stderr if it is still running after STILL_RUNNING_AFTER seconds,
    and another every STILL_RUNNING_EVERY seconds after it while the time limit is ahead (none when
    the time limit is no longer than the first: it says why it stopped itself)."""
    import sys
    import threading

    timers, lock, done = [], threading.Lock(), threading.Event()

    def arm(after: float, first: bool):
        with lock:     # none armed once grade() returned (a notice printing then must not start another)
            if after >= timeout or done.is_set():
                return
            timer = threading.Timer(after if first else STILL_RUNNING_EVERY, notice, (after, first))
            timer.daemon = True
            timers.append(timer)
            timer.start()

    def notice(after: float, first: bool):
        if first:
            print(f"still running after {after:g} s -- it is stopped at {timeout:g} s; --timeout changes it",
                  file=sys.stderr, flush=True)
        else:
            print(f"still running after {after:g} s (stops at {timeout:g} s; --timeout to change)",
                  file=sys.stderr, flush=True)
        arm(after + STILL_RUNNING_EVERY, False)

    arm(STILL_RUNNING_AFTER, True)
    try:
        return grade()
    finally:
        with lock:
            done.set()
            for timer in timers:
                timer.cancel()


def run_train(args) -> int:
    from pathlib import Path

    from ..exercises.runner import SubmissionError
    from ..exercises.training import train_with_submission

    exercise = exercise_of(args)
    if not Path(args.path).is_file():
        raise FileNotFoundError(f"{args.path} does not exist (give your .py file)")
    try:
        comparison = train_with_submission(exercise, args.path, steps=args.steps, batch_size=args.batch_size,
                                           seq_len=args.seq_len, seed=args.seed, out=args.out)
    except SubmissionError as error:
        raise UsageError(str(error)) from None
    print(comparison.format())
    return 0 if comparison.ok else 1
