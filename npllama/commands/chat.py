"""`npllama chat`: a conversation with a chat model, one user message a line on standard input."""
import sys

from . import HelpFormatter, add_adapter_option, add_run_options
from .generate import (StopAwarePrinter, add_chat_options, add_sampling_options, add_stop_option,
                       chat_template, check_sampling_options, note_spelt_markers, stop_strings)


DEFAULT_ANSWER_TOKENS = 200


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="talk with a chat model: a message a line, each answer streamed",
        description="A conversation in the model's chat template: each line of standard input is a user "
                    "message (typed, or piped from a file), each answer is generated with a KV cache and "
                    "printed as it comes, and the whole conversation is the next prompt.  When the "
                    "conversation and --max-new-tokens no longer fit the model's context, the oldest "
                    "exchanges are dropped, and a line on stderr says so.  Every line is sent as it is (there are no "
                    "/commands; blank lines are skipped).  At a terminal, Ctrl-C stops the answer being "
                    "written and the chat goes on; Ctrl-C at the prompt, or Ctrl-D (end of input), ends it.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="a run folder from `npllama finetune sft --out`, or a Hugging "
                   "Face LLaMA folder with tokenizer.model or tokenizer.json (default: the latest run)")
    add_adapter_option(p, "--model")
    add_chat_options(p, implies="")
    add_sampling_options(p, max_new_tokens=None, temperature=0.7, max_new_tokens_help=(
        f"an answer's length at most, in tokens (default: {DEFAULT_ANSWER_TOKENS}, or half the model's context "
        "when that is less, so that the conversation so far has the other half)"))
    add_stop_option(p, answers_only=True)
    add_run_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..backend import get_backend, use_backend
    from ..generate import StopStrings, answer_text, decodable_vocab_size, generate, sample_seed, stream_text
    from . import load_run_model

    check_sampling_options(args)
    stops = stop_strings(args)
    model, tokenizer, model_dir = load_run_model(args.model, args.adapter, args.dtype, "--model", "chatting")
    template = chat_template(args, model_dir, tokenizer)
    end_ids = template.stop_ids(tokenizer, model)
    stops += template.stop_texts(tokenizer)   # an end of turn the tokenizer spells in pieces
    # matched (by the printer, asking it: stop_at, settled) against each answer as printed, as
    # generate --chat matches it: one for the chat, not a decode of the whole conversation each turn
    stop = StopStrings(tokenizer, stops) if stops else None
    context = model.config.max_position_embeddings
    note_spelt_markers(template, tokenizer, args.system, context)
    answer_room = "--max-new-tokens {}"
    if args.max_new_tokens is None:    # room for an answer that leaves some for what was said before
        args.max_new_tokens = default_answer_tokens(context)
        answer_room = "room for a {}-token answer (the default --max-new-tokens)"
    answer_room = answer_room.format(args.max_new_tokens)
    conversation = Conversation(template, tokenizer, args.system)
    typed = sys.stdin.isatty()
    with use_backend(args.backend or get_backend()):
        for turn, line in enumerate(_lines(typed)):
            prompt_ids, dropped = conversation.ask(line, room=args.max_new_tokens, context=context)
            if dropped:
                _say(f"[the conversation no longer fits the model's context ({context} tokens) with "
                     f"{answer_room}: {dropped_words(dropped, len(conversation.exchanges), args.system)}]")
            if len(prompt_ids) >= context:
                _say(f"[{not_sent_words(len(prompt_ids), context, len(conversation.exchanges), args.system)}]")
                continue
            room = min(args.max_new_tokens, context - len(prompt_ids))
            printer = StopAwarePrinter(stop)
            show = stream_text(tokenizer, prompt_ids, printer.write, answer=True)
            try:
                ids = generate(model, prompt_ids, room, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=sample_seed(args.seed, turn), eos_id=end_ids,
                               on_token=show, repetition_penalty=args.repetition_penalty, threads=args.threads,
                               stop=printer.stopped if stop is not None else None,
                               vocab_size=decodable_vocab_size(model, tokenizer))
            except KeyboardInterrupt:
                _write("\n")    # the answer's line ends before whatever is said next
                if not typed:    # a piped chat has no one to go on talking: Ctrl-C ends it
                    raise
                # at a terminal Ctrl-C stops this answer only, as a chat program's does; the
                # conversation goes on from what was printed of it
                printed = printer.text[:printer.printed]
                if not printed.strip():    # an empty answer would stay in every later prompt: unsay the question
                    _say("[answer stopped (Ctrl-C) before its first word: the message is dropped]")
                    continue
                _say("[answer stopped (Ctrl-C): the conversation goes on from what was printed]")
                conversation.answer(printed)
                continue
            show.flush()
            printer.flush()
            _write("\n")
            answer = ids[len(prompt_ids):]
            ended = bool(answer) and answer[-1] in end_ids
            if not ended and not printer.done and room < args.max_new_tokens:
                _say(f"[answer cut after {room} tokens: the model's context ({context} tokens) is full]")
            # the conversation goes on from what was printed: the answer as shown (not its ids
            # decoded alone, which keep its first space for some tokenizers), up to its stop string
            said = answer_text(tokenizer, prompt_ids, answer[:-1] if ended else answer)
            conversation.answer(stop.cut(said) if stop is not None else said)
    return 0


def default_answer_tokens(context: int) -> int:
    """--max-new-tokens left out: DEFAULT_ANSWER_TOKENS, or half the context when that is less.  Room
    for an answer as long as the context (the tiny model's is 256) would drop every earlier exchange
    at each turn, a chat with no memory."""
    return max(1, min(DEFAULT_ANSWER_TOKENS, context // 2))


class Conversation:
    """The messages so far, rendered by the template; the oldest exchanges go first when the prompt
    and the room for an answer would not fit the model's context (the system message stays)."""

    def __init__(self, template, tokenizer, system: str | None):
        self.template, self.tokenizer = template, tokenizer
        self.system = [{"role": "system", "content": system}] if system else []
        self.exchanges: list[list[dict]] = []    # [user message, assistant message] pairs

    def ask(self, text: str, room: int, context: int) -> tuple[list[int], int]:
        """(the prompt's ids with the user's `text` last, how many old exchanges were dropped to
        leave `room` tokens for the answer).  A prompt that cannot fit even alone drops nothing."""
        question = {"role": "user", "content": text}
        for dropped in range(len(self.exchanges) + 1):
            messages = self.system + [m for pair in self.exchanges[dropped:] for m in pair] + [question]
            ids = self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True), bos=False)
            if len(ids) + room <= context:
                break
        if len(ids) >= context:
            return ids, 0
        del self.exchanges[:dropped]
        self.question = question
        return ids, dropped

    def answer(self, text: str) -> None:
        self.exchanges.append([self.question, {"role": "assistant", "content": text}])


def _lines(typed: bool):
    """The user's messages: each non-empty line, until the end of input (Ctrl-D)."""
    while True:
        if typed:
            _say("> ", end="")
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            if typed:
                _say("")      # "npllama chat: interrupted" on a line of its own, not after the "> "
            raise
        if not line:
            if typed:
                _say("")
            return
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def dropped_words(dropped: int, kept: int, system: str | None) -> str:
    """What Conversation.ask dropped, in words: the oldest of several exchanges, or every one."""
    if kept:
        words = "dropped the oldest exchange" if dropped == 1 else f"dropped the {dropped} oldest exchanges"
    else:
        words = "dropped the earlier exchange" if dropped == 1 else f"dropped all {dropped} earlier exchanges"
    return words + ("; the system prompt stays" if system else "")


def not_sent_words(prompt_tokens: int, context: int, earlier: int, system: str | None) -> str:
    """Why a message is not sent: even with every earlier exchange left out, its prompt leaves
    no room for an answer in the model's context.  Those `earlier` exchanges stay (nothing was
    dropped for it), for the next message."""
    alone = "this message and the system prompt alone make" if system else "this message alone makes"
    kept = "" if not earlier else ("; the earlier exchange is kept" if earlier == 1
                                   else f"; the {earlier} earlier exchanges are kept")
    return (f"not sent: {alone} a prompt of {prompt_tokens} tokens, and the model's context is {context}"
            f"{', leaving no room for an answer' if prompt_tokens == context else ''}{kept}")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)
