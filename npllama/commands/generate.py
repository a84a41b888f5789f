"""`npllama generate`: continue a prompt with a trained model, streaming tokens as they come."""
import os
import sys
import time

from . import HelpFormatter, UsageError, add_adapter_option, add_run_options


DEFAULT_PROMPT = "Once upon a time"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a trained model",
        description="Generate text with a KV cache: the prompt is processed in one forward pass, then "
                    "one token per step, printed as it comes; a tokens/s line follows on stderr. "
                    "Temperature 0 is greedy decoding.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="a run folder from `npllama train`, or a Hugging Face "
                   "LLaMA folder with tokenizer.model or tokenizer.json (default: the latest run)")
    add_adapter_option(p, "--model")
    p.add_argument("--prompt", action="append", default=None, help="text to continue (with --chat: the user's "
                   f"message); one prompt a run (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--chat", action="store_true", help="wrap --prompt in the model's chat template (the "
                   "--adapter's or the folder's chat_template, else LLaMA-3's if the tokenizer has its "
                   "<|start_header_id|>, else LLaMA-2's) and print only the answer")
    add_chat_options(p)
    add_sampling_options(p)
    add_stop_option(p)
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations to print")
    add_run_options(p)
    p.set_defaults(run=run)


def add_sampling_options(p, max_new_tokens: int | None = 100, temperature: float = 0.8,
                         max_new_tokens_help: str = "generate at most this many tokens") -> None:
    """How tokens are drawn, as `generate` and `chat` take them; check_sampling_options checks them
    (a --max-new-tokens left None is the command's to choose once the model is loaded)."""
    integer, number = _number_or_text(int), _number_or_text(float)
    p.add_argument("--max-new-tokens", type=integer, default=max_new_tokens, help=max_new_tokens_help)
    p.add_argument("--temperature", type=number, default=temperature, help="0 = greedy (transformers' "
                   "do_sample=False); transformers' generate, not told, samples at 1.0 with top_k 50")
    p.add_argument("--top-k", type=integer, default=None, help="sample among the k most likely tokens (and any tied "
                   "with the k-th, as transformers' top_k keeps them); 0 = no cut, as in transformers")
    p.add_argument("--top-p", type=number, default=None, help="nucleus sampling threshold in (0, 1]: the most "
                   "likely tokens whose probabilities reach it (after --top-k; of tokens tied at the cut, the "
                   "lower ids, where transformers' sort keeps any)")
    p.add_argument("--repetition-penalty", type=number, default=1.0,
                   help="> 1 makes tokens already in the text (the prompt included) less likely, as "
                        "transformers does (1.1-1.3 typical; 1 = off)")
    p.add_argument("--seed", type=integer, default=None, help="random seed (default: a fresh one each run): the "
                   "same text each run with one --backend (numpy's generator: not transformers' text for the same "
                   "seed); the "
                   "first sample (a chat's first answer) uses SEED, each later one a seed made from SEED and its "
                   "number, so runs with different seeds share no sample")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of each decode step (default: every core, or $NPLLAMA_DECODE_THREADS; "
                        "at most $NPLLAMA_MAX_THREADS, 256 unless set); fewer can be faster while other "
                        "programs keep the cores busy; the text is the same for any count")


def _number_or_text(convert):
    """An argparse type: the value as convert(text) makes it, or the text itself when it is no such
    number, for check_sampling_options to refuse with what the flag takes ("--top-p must be in
    (0, 1], got 'x'"), where argparse would say only "invalid float value: 'x'"."""
    def parse(text: str):
        try:
            return convert(text)
        except ValueError:
            return text
    parse.__name__ = convert.__name__
    return parse


def add_stop_option(p, answers_only: bool = False) -> None:
    """--stop, as `generate` and `chat` (answers_only: it prints no continuation) take it;
    stop_strings reads it."""
    answer = ("\"play\" matches the answer \"play ball\", \" play\" does not)")
    matched = (f"an answer on its own, without the space the template puts before it ({answer}" if answers_only
               else "the prompt's own text aside: a continuation of --prompt with its first word's space "
                    "(\" play\" matches it in \"Once play\"), a chat's answer on its own, without the space "
                    f"the template puts before it ({answer}")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the generated text contains TEXT, and print it only up to there "
                        f"(repeatable; \\n is a newline).  TEXT is matched against the text as printed, {matched}")


def stop_strings(args) -> list[str]:
    """--stop's strings, \\n read as a newline; an empty one refused (before the model is loaded)."""
    stops = [s.replace("\\n", "\n") for s in args.stop or []]
    if any(not s for s in stops):
        raise UsageError("--stop must not be empty")
    return stops


def add_chat_options(p, implies: str = " (implies --chat)") -> None:
    """--system and --chat-template, as `generate --chat` and `chat` take them."""
    p.add_argument("--system", default=None, help=f"a system message{implies}")
    p.add_argument("--chat-template", default=None, help="llama2, llama3 or a Jinja file, instead of the "
                   "--adapter's or the folder's own template (a folder with none, as a `npllama train` run: "
                   f"llama3 if the tokenizer has <|start_header_id|>, else llama2, said on stderr){implies}")


def chat_template(args, model_dir, tokenizer):
    """The ChatTemplate of `chat` and `generate --chat`: --chat-template, else the --adapter's or the
    model folder's own, else a built-in one, which is named on stderr (note_builtin_template)."""
    from ..chat import BUILTIN_TEMPLATES, ChatTemplate

    template = ChatTemplate.for_folder(model_dir, tokenizer, name=args.chat_template, adapter=args.adapter,
                                       name_as="--chat-template")
    if args.chat_template is None:
        note_builtin_template(template, args.adapter, f"--chat-template {', '.join(sorted(BUILTIN_TEMPLATES))} "
                                                      f"or a Jinja file picks another")
    return template


def note_builtin_template(template, adapter, pick_another: str | None = None) -> None:
    """Say on stderr that `template`, the one found for a model (and its `adapter`, if any), is a
    built-in one because the folder has none: a `npllama train` run has no template, and answers
    (or scores) in a format the model never saw would otherwise look like its own.  pick_another:
    how the command takes another template, when it does."""
    from ..chat import BUILTIN_TEMPLATES

    if template.name not in BUILTIN_TEMPLATES:
        return
    where = "neither the adapter nor the model folder has" if adapter else "the model folder has"
    how = f" ({pick_another})" if pick_another else ""
    print(f"[{where} no chat template: the built-in {template.name} template is used{how}]", file=sys.stderr,
          flush=True)


def note_spelt_markers(template, tokenizer, system: str | None, context: int, prompt_ids=None) -> None:
    """Say on stderr, once, when the tokenizer has no piece for the special tokens `template` writes
    (`--chat-template llama3` on an npllama tokenizer): each is then spelt in many pieces, which
    take the context's room as the conversation's own words do.  prompt_ids: the one prompt of
    `generate --chat`, whose share of them is said; None (`chat`): what each prompt and each
    exchange before it costs."""
    asked = [{"role": "system", "content": system}] * (system is not None) + [{"role": "user", "content": ""}]

    def cost() -> str:
        own = template.own_tokens(tokenizer, asked)
        if prompt_ids is not None:
            return f"the template's own text takes {own} of this prompt's {len(prompt_ids)} tokens"
        exchange = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
        more = template.own_tokens(tokenizer, asked[:-1] + exchange + asked[-1:]) - own
        return f"the template's own text takes {own} tokens of each prompt, and {more} more for each earlier exchange"

    say_spelt_markers(template, tokenizer, context, cost)


def say_spelt_markers(template, tokenizer, context: int, cost) -> None:
    """npllama.chat.spelt_markers_note's note on stderr, if there is one."""
    from ..chat import spelt_markers_note

    note = spelt_markers_note(template, tokenizer, context, cost)
    if note is not None:
        print(f"[{note}]", file=sys.stderr, flush=True)


def check_sampling_options(args) -> None:
    """Every sampling flag, --chat-template and --system, checked before the model is loaded."""
    from ..generate import check_generation_args

    _check_threads(args)
    _check_args(args, check_generation_args)
    if args.temperature == 0:   # greedy: the most likely token, whatever the cut-offs keep with it
        # --top-k 0 and --top-p 1 cut nothing (next_token_probs): given, they ignore nothing
        ignored = [flag for flag, value, no_cut in (("--top-k", args.top_k, 0), ("--top-p", args.top_p, 1))
                   if value is not None and value != no_cut]
        if ignored:
            raise UsageError(f"{' and '.join(ignored)} would be ignored: --temperature 0 is greedy decoding (the "
                             f"most likely token, always kept by {'them' if len(ignored) > 1 else 'it'}); leave "
                             f"{'them' if len(ignored) > 1 else 'it'} out, or give a --temperature above 0 to sample")
    if args.system is not None and not args.system.strip():
        # Neither reading is safe to guess: no system message at all (the template's default, if
        # it has one), or an empty system turn (which some templates would render as an empty block).
        raise UsageError(f"--system is empty ({args.system!r}): leave --system out for no system message, "
                         f"or give the system message's text")
    if args.chat_template is not None:
        from ..chat import BUILTIN_TEMPLATES

        if args.chat_template not in BUILTIN_TEMPLATES and not os.path.isfile(args.chat_template):
            raise UsageError(f"--chat-template {args.chat_template!r} is neither "
                             f"{' nor '.join(sorted(BUILTIN_TEMPLATES))} nor a Jinja file")


def run(args) -> int:
    from ..backend import get_backend, use_backend
    from ..generate import StopStrings, check_context, decodable_vocab_size, generate, sample_seed, stream_text
    from ..generate import end_ids as plain_end_ids
    from . import load_run_model

    # Every argument is checked before the model is loaded or anything is printed.
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    check_sampling_options(args)
    if args.num_samples > 1 and args.temperature == 0:
        raise UsageError(f"--num-samples {args.num_samples} with --temperature 0 would print the same greedy "
                         f"text {args.num_samples} times: give a --temperature above 0 to sample different ones")
    stops = stop_strings(args)
    prompt = the_prompt(args.prompt)
    chat = args.chat or args.system is not None or args.chat_template is not None

    model, tokenizer, model_dir = load_run_model(args.model, args.adapter, args.dtype, "--model",
                                                 "generation (next-token sampling)")
    end_ids = plain_end_ids(model, tokenizer)
    if chat:
        template = chat_template(args, model_dir, tokenizer)
        prompt_ids = tokenizer.encode(template.prompt(prompt, args.system), bos=False)
        note_spelt_markers(template, tokenizer, args.system, model.config.max_position_embeddings, prompt_ids)
        end_ids = template.stop_ids(tokenizer, model)
        stops += template.stop_texts(tokenizer)   # an end of turn the tokenizer spells in pieces
        shown_prompt = ""
    else:
        prompt_ids = tokenizer.encode(prompt, bos=True)
        shown_prompt = prompt
    try:   # before the prompt is printed
        check_context(len(prompt_ids), args.max_new_tokens, model.config.max_position_embeddings,
                      flag="--max-new-tokens")
    except ValueError as error:
        raise UsageError(str(error)) from None
    # matched (by the printer, asking it: stop_at, settled) against the text as printed: stream_text
    # shows an answer (--chat) without its first space, so neither `after` nor `answer` has a part here
    stop = StopStrings(tokenizer, stops) if stops else None
    vocab_size = decodable_vocab_size(model, tokenizer)
    with use_backend(args.backend or get_backend()):
        for i in range(args.num_samples):
            seed = sample_seed(args.seed, i)
            sys.stdout.write(shown_prompt)
            printer = StopAwarePrinter(stop)
            show = stream_text(tokenizer, prompt_ids, printer.write, answer=chat)
            arrivals: list[float] = []

            def on_token(token_id: int, show=show, arrivals=arrivals) -> None:
                arrivals.append(time.perf_counter())
                show(token_id)

            started = time.perf_counter()
            try:
                ids = generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=seed, eos_id=end_ids,
                               on_token=on_token, repetition_penalty=args.repetition_penalty,
                               stop=printer.stopped if stop is not None else None,
                               vocab_size=vocab_size, threads=args.threads)
            except KeyboardInterrupt:
                sys.stdout.write("\n")     # the text's line ends before the "interrupted" line
                sys.stdout.flush()
                raise
            seconds = time.perf_counter() - started
            show.flush()      # a character whose last byte never came: shown as U+FFFD
            printer.flush()
            sys.stdout.write("\n" + ("-" * 40 + "\n" if i < args.num_samples - 1 else ""))
            sys.stdout.flush()
            new = len(ids) - len(prompt_ids)
            print(_speed_line(new, seconds, started, arrivals, len(prompt_ids)), file=sys.stderr)
    return 0


def the_prompt(prompts: list[str] | None) -> str:
    """--prompt's one value.  argparse would keep a repeated flag's last value alone: a second
    prompt is refused rather than continued in place of the first."""
    if prompts is None:
        return DEFAULT_PROMPT
    if len(prompts) > 1:
        raise UsageError(f"--prompt given {len(prompts)} times: one prompt a run (run generate once for each, "
                         f"or --num-samples N for several continuations of one)")
    return prompts[0]


def _speed_line(new: int, seconds: float, started: float, arrivals: list[float], prompt_tokens: int) -> str:
    """[N tokens in S s: R tokens/s, ...]; with the first token's latency (the prompt's prefill, and
    on a process's first call loading the compiled kernels) apart from the rate after it."""
    line = f"[{new} tokens in {seconds:.2f} s: {new / max(seconds, 1e-9):.1f} tokens/s"
    if len(arrivals) > 2:
        steady = (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9)
        line += f"; first token after {arrivals[0] - started:.2f} s, then {steady:.1f} tokens/s"
    return line + f", prompt {prompt_tokens} tokens]"


def _check_threads(args) -> None:
    """--threads, or $NPLLAMA_DECODE_THREADS where the numba decoder will read it: at least 1 and
    at most NPLLAMA_MAX_THREADS (npllama/budget.py)."""
    from ..backend import get_backend
    from ..budget import check_threads

    if args.threads is None:
        if (args.backend or get_backend()) == "numba":
            from ..kernels.threads import decode_threads

            decode_threads()          # a bad $NPLLAMA_DECODE_THREADS, said before anything is printed
        return
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    check_threads("--threads", args.threads)


def _check_args(args, check_generation_args) -> None:
    try:
        max_new_tokens = 1 if args.max_new_tokens is None else args.max_new_tokens   # None: chosen later
        check_generation_args(max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                              args.repetition_penalty)
    except (ValueError, TypeError) as error:
        # a flag cannot be None: "must be None or a number in (0, 1]" -> "must be in (0, 1]" (the
        # setting's name becomes its flag in cli.main, as every command's)
        raise UsageError(str(error).replace("must be None or a number in", "must be in").replace(
            "must be None or ", "must be ")) from None


class StopAwarePrinter:
    """Streams text to stdout as `stop` (a StopStrings, or None) says where the text ends: what it
    may still cut is held back, so the stop string itself (and anything after it) is never printed.
    The text it is given is the new text as shown (stream_text), which `stop` matches."""

    def __init__(self, stop):
        self.stop, self.text, self.printed, self.done = stop, "", 0, False

    def write(self, text: str) -> None:
        if self.done:
            return
        self.text += text
        end = len(self.text)
        if self.stop is not None:
            stop_at = self.stop.stop_at(self.text)
            self.done = stop_at is not None
            end = stop_at if self.done else self.stop.settled(self.text)
        if end > self.printed:
            sys.stdout.write(self.text[self.printed:end])
            self.printed = end
        sys.stdout.flush()

    def stopped(self, new_ids) -> bool:
        """generate's `stop`: true once the streamed text held a stop string.  The printer has
        decoded the text already (stream_text), so the ids are not decoded a second time."""
        return self.done

    def flush(self) -> None:
        if not self.done:
            sys.stdout.write(self.text[self.printed:])
            self.printed = len(self.text)
