"""Chat templates as the ecosystem writes them: a Jinja template in a folder's tokenizer_config.json
(`chat_template`) or chat_template.jinja, rendered as transformers renders it
(`apply_chat_template`), with LLaMA-2 and LLaMA-3 style defaults for folders that have none.

    template = ChatTemplate.for_folder("runs/sft/model", tokenizer)
    text = template.render([{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Why is the sky blue?"}])
    ids = tokenizer.encode(text, bos=False)      # the template writes BOS itself, as "<s>"

An answer, as `npllama chat` writes it: it ends at the template's end of turn, an id (stop_ids) or
the text the tokenizer spells it in (stop_texts: llama3's <|eot_id|> on an npllama tokenizer,
which eos_id alone would run past), and leaves it out:

    from npllama.generate import StopStrings, answer_text, generate
    stop = StopStrings(tokenizer, template.stop_texts(tokenizer), after=ids, answer=True)
    new = generate(model, ids, 200, eos_id=template.stop_ids(tokenizer, model), stop=stop)[len(ids):]
    answer = stop.cut(answer_text(tokenizer, ids, new))

The special tokens a template writes as text ("<s>", "</s>", "<|eot_id|>") become their ids when
encoded, because npllama's tokenizer encodes control pieces as their ids (as transformers does).
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from .io.hf import CHAT_TEMPLATE_FILE
from .ops._checks import require_path

# LLaMA-2-chat:  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# LLaMA-3-instruct: headers around each role, <|eot_id|> after each message.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

BUILTIN_TEMPLATES = {"llama2": LLAMA2_TEMPLATE, "llama3": LLAMA3_TEMPLATE}
# Stands for an answer in a rendering that shows where the template writes the answer: letters
# alone, which trimming (or any filter that keeps words) leaves as they are; lengthened (X...) when
# the conversation's own text holds it.
_ANSWER_MARKER = "npllamaANSWERmarker"
# A message ends with these in the built-in templates: generation stops at them.
END_OF_TURN = {"llama2": None, "llama3": "<|eot_id|>"}
ROLES = ("system", "user", "assistant")
# Written after the final message's content to find where it ends (continue_final_message), as
# transformers writes it.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# A special token as chat templates write them: <|eot_id|>, <|im_start|>, Gemma's <start_of_turn>.
_MARKER = re.compile(r"<\|[^|<>\s'\"]{1,40}\|>|<(?:start|end)_of_turn>")


class AnswerNotWritten(ValueError):
    """The chat template does not write an assistant's answer where a scorer can find its ids."""


class ChatTemplateError(ValueError):
    """A chat template that is not valid Jinja: `where` it came from ("the chat template in
    'm/tokenizer_config.json'"), the `problem` Jinja found, and the way past it."""

    def __init__(self, problem: str, where: str = "the chat template", way_out: str = ""):
        self.problem, self.where, self.way_out = problem, where, way_out
        super().__init__(f"{where} is not valid Jinja: {problem}" + (f"; {way_out}" if way_out else ""))

    def __reduce__(self):   # pickled as cls(*self.args) otherwise: the message wrapped once more
        return (type(self), (self.problem, self.where, self.way_out))


class ChatTemplate:
    """A Jinja chat template with the tokenizer's special tokens.

    source: the template text; or "llama2" / "llama3" for the built-in defaults.
    bos_token, eos_token: the strings the template writes for them (the tokenizer's <s>, </s>).
    end_of_turn: the token that ends a message, where generation stops (None: the built-in
    template's, or one the source writes: <|eot_id|>, <|im_end|>, <end_of_turn>).
    `ChatTemplate.for_folder(folder, tokenizer)` picks the template and tokens for a model folder.
    """

    def __init__(self, source: str, bos_token: str = "<s>", eos_token: str = "</s>",
                 end_of_turn: str | None = None):
        if not isinstance(source, str) or not source.strip():
            raise TypeError(f"source must be a Jinja template (str) or one of {sorted(BUILTIN_TEMPLATES)}, "
                            f"got {source!r}")
        self.name = source if source in BUILTIN_TEMPLATES else "custom"
        if source in BUILTIN_TEMPLATES:
            end_of_turn = end_of_turn or END_OF_TURN[source]
            source = BUILTIN_TEMPLATES[source]
        end_of_turn = end_of_turn or _end_of_turn(source)
        self.source, self.bos_token, self.eos_token = source, bos_token or "", eos_token or ""
        self.end_of_turn = end_of_turn
        self._template = _compile(source)

    @classmethod
    def for_folder(cls, folder, tokenizer=None, name: str | None = None, adapter=None,
                   name_as: str = "name") -> "ChatTemplate":
        """The folder's own template (tokenizer_config.json's chat_template, or chat_template.jinja),
        else a built-in one: LLaMA-3 style if the tokenizer has <|start_header_id|>, else LLaMA-2.
        name ("llama2", "llama3", or a .jinja file) overrides the folder's choice.  adapter: a LoRA
        adapter folder, whose own template (the one `finetune sft` trained it with) comes first.
        A template that is not valid Jinja is a ChatTemplateError naming the file it came from and
        the way past it: `name`, as the caller's user gives it (name_as: "--chat-template")."""
        if folder is not None:
            require_path("folder", folder, "a model folder")
        if adapter is not None:
            require_path("adapter", adapter, "a LoRA adapter folder")
        bos, eos = _special_tokens(tokenizer)
        if name is not None:
            if name in BUILTIN_TEMPLATES:
                return cls(name, bos, eos)
            path = Path(name).expanduser()
            if not path.is_file():
                raise ValueError(f"chat template {name!r} is neither {' nor '.join(sorted(BUILTIN_TEMPLATES))} "
                                 f"nor a Jinja file")
            return cls._compiled(path.read_text(encoding="utf-8"), bos, eos, f"{name_as} {name!r}",
                                 f"fix it, or give {name_as} {' or '.join(map(repr, sorted(BUILTIN_TEMPLATES)))} "
                                 f"(a built-in one)")
        own, file = folder_template_and_file(adapter) if adapter is not None else (None, None)
        if own is None and folder is not None:
            own, file = folder_template_and_file(folder)
        if own is not None:
            return cls._compiled(own, bos, eos, f"the chat template in {str(file)!r}",
                                 f"give another with {name_as}: {', '.join(map(repr, sorted(BUILTIN_TEMPLATES)))} "
                                 f"or a .jinja file of your own")
        pieces = getattr(tokenizer, "control_pieces", {}) or {}
        return cls("llama3" if "<|start_header_id|>" in pieces else "llama2", bos, eos)

    @classmethod
    def _compiled(cls, source: str, bos: str, eos: str, where: str, way_out: str) -> "ChatTemplate":
        """cls(source, ...), a template that is not valid Jinja said as coming from `where`."""
        try:
            return cls(source, bos, eos)
        except ChatTemplateError as error:
            raise ChatTemplateError(error.problem, where, way_out) from None

    def render(self, messages, add_generation_prompt: bool | None = None, continue_final_message: bool = False) -> str:
        """The conversation as text, ending with the assistant's header when add_generation_prompt
        (None: unless continue_final_message).  After a last message of the assistant's that header
        starts a second answer, as in transformers; continue_final_message=True instead ends the
        text where the last message's content ends, so the model goes on with it (an answer begun
        for it: "Sure, the answer is"), as transformers' apply_chat_template(continue_final_message=
        True) cuts it: a trailing space the template trims is left out, one it keeps stays."""
        if continue_final_message not in (True, False):
            raise TypeError(f"continue_final_message must be True or False, got {continue_final_message!r}")
        if continue_final_message and add_generation_prompt:
            raise ValueError("add_generation_prompt and continue_final_message exclude each other: a new "
                             "assistant header starts another message, continuing the final one writes none")
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        messages = check_messages(messages)
        if not continue_final_message:
            return self._render(messages, add_generation_prompt)
        # where the content ends: a tag written after it, as transformers finds it (a space the
        # template keeps after the tag shows that it keeps the content's own trailing space)
        tagged = messages[:-1] + [{**messages[-1], "content": messages[-1]["content"] + _CONTINUE_TAG}]
        text = self._render(tagged, add_generation_prompt=False)
        # transformers' two checks: the tag, and the content (stripped) somewhere in the text
        if _CONTINUE_TAG.strip() not in text or messages[-1]["content"].strip() not in text:
            raise ValueError(f"the chat template does not write the final message {messages[-1]['content']!r} as "
                             f"it is given, so there is no end of it to continue from")
        end = text.rindex(_CONTINUE_TAG.strip())
        return text[:end] if text[end:end + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:end].rstrip()

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            # tools and documents are None as apply_chat_template passes them when not given
            # (Mistral's template tests `tools is not none`: undefined would pass that test)
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         tools=None, documents=None)
        except (TemplateError, TypeError, ValueError) as e:  # e.g. tojson of something undefined
            raise ValueError(f"the chat template failed on these messages: {e}") from None

    def prompt(self, user: str, system: str | None = None) -> str:
        """One user turn (after an optional system message), ready for the assistant's answer."""
        return self.render(turn_messages(user, None, system), add_generation_prompt=True)

    def encode_turn(self, tokenizer, prompt: str, response: str, system: str | None = None):
        """(ids, is_response) of one exchange: the prompt's ids are not counted by a loss, the
        response's (and the end-of-turn token after it) are."""
        return self.encode_conversation(tokenizer, turn_messages(prompt, response, system))

    def encode_conversation(self, tokenizer, messages):
        """(ids, is_response) of a whole conversation: a loss counts the ids of every assistant
        message and what ends it (the template's end of turn, or </s>), nothing else.

        An assistant message's ids are those that rendering the conversation up to it adds after
        rendering it up to the assistant's header (add_generation_prompt): what the model has to
        write when it is asked at that point."""
        messages = check_messages(messages)
        if messages[0]["role"] == "assistant":
            raise ValueError("messages[0] is the assistant's: a conversation starts with a system or user message")
        ids = tokenizer.encode(self.render(messages, add_generation_prompt=False), bos=False)
        counted = [False] * len(ids)
        ends = set(self.stop_ids(tokenizer))
        ended = False     # whether the last message's counted ids end with an end id
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                answered = tokenizer.encode(self.render(messages[:k + 1], add_generation_prompt=False), bos=False)
                start, end = self._answer_start(tokenizer, messages[:k], ids), _shared_length(answered, ids)
                # up to the first end id: what a template writes after it (ChatML's "\n") the
                # model never generates, since generation stops there
                end = next((i + 1 for i in range(start, end) if ids[i] in ends), end)
                counted[start:end] = [True] * (end - start)
                ended = end > start and ids[end - 1] in ends
        if (self.end_of_turn is None and tokenizer.eos_id is not None and messages[-1]["role"] == "assistant"
                and not ended):
            # a template that writes no end: the model must learn to stop.  One that writes EOS
            # and more after it (Zephyr's "</s>\n") has taught it already
            ids.append(tokenizer.eos_id)
            counted.append(True)
        return ids, counted

    def encode_answer(self, tokenizer, messages) -> tuple[list[int], int]:
        """(ids, start) of a conversation whose last message is the assistant's, up to the end of
        that message's text: ids[start:] are the answer's ids as encode_conversation counts them
        (what the model writes when asked at the assistant's header), without the end of turn
        and whatever else the template writes after the answer's text.  Scoring an answer
        (finetune.choice_logprobs) reads them.

        AnswerNotWritten (a ValueError) when the template writes text of its own between the
        prompt and the answer (a header that only an answered conversation has): those ids are
        not the answer's."""
        messages = check_messages(messages)
        text, answer_start, answer_end = self.written_answer(messages)
        asked = self.render(messages[:-1], add_generation_prompt=True)
        if answer_start < len(asked) or not text.startswith(asked) or text[len(asked):answer_start].strip():
            raise AnswerNotWritten(f"the chat template does not write the answer {messages[-1]['content']!r} "
                                   f"right after its prompt {asked[-40:]!r}")
        ids = tokenizer.encode(text[:answer_end], bos=False)
        return ids, self._answer_start(tokenizer, messages[:-1], ids)

    def written_answer(self, messages) -> tuple[str, int, int]:
        """(text, start, end): the conversation rendered (add_generation_prompt=False), its last
        message the assistant's, and text[start:end] that message's content as the template writes
        it (LLaMA-2 and LLaMA-3 trim it).  Where the template puts the content is found by
        rendering a marker in its place, not by looking for the content's text, which may also be
        the question's or the template's own ("A" in a header "Assistant:")."""
        messages = check_messages(messages)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"the last message must be the assistant's, got {messages[-1]['role']!r}")
        text = self.render(messages, add_generation_prompt=False)
        marker = _ANSWER_MARKER
        while marker in text:     # a marker the other messages do not hold (a question may quote it)
            marker += "X"
        marked = self.render(messages[:-1] + [{**messages[-1], "content": marker}], add_generation_prompt=False)
        if marked.count(marker) != 1:
            raise AnswerNotWritten("the chat template does not write an assistant's message as it is given "
                                   f"(once, as text), so where it puts the answer {messages[-1]['content']!r} "
                                   "is unknown")
        before, after = marked.split(marker)
        if not (text.startswith(before) and text.endswith(after) and len(before) + len(after) <= len(text)):
            raise AnswerNotWritten(f"the chat template writes the conversation around the answer "
                                   f"{messages[-1]['content']!r} otherwise than around another answer, so "
                                   f"where that answer is written is unknown")
        return text, len(before), len(text) - len(after)

    def _answer_start(self, tokenizer, asked_messages, ids: list[int]) -> int:
        """Where an answer's ids start in `ids` (a conversation that goes on after asked_messages
        with the assistant's message): where they stop being the ids of the prompt the model is
        asked with, asked_messages rendered up to the assistant's header (a piece that spans the
        joint counts as the answer's)."""
        asked = tokenizer.encode(self.render(asked_messages, add_generation_prompt=True), bos=False)
        return _shared_length(asked, ids)

    def stop_ids(self, tokenizer, model=None) -> list[int]:
        """The ids that end an assistant's turn: EOS, the template's end-of-turn token, and the
        model config's eos_token_id (LLaMA-3.1 lists <|end_of_text|>, <|eom_id|> and <|eot_id|>)."""
        from .generate import end_ids

        ids = ({tokenizer.eos_id} - {None}) if model is None else set(end_ids(model, tokenizer))
        end_of_turn = self._end_of_turn_ids(tokenizer)
        if len(end_of_turn) == 1:
            ids.update(end_of_turn)
        return sorted(ids)

    def stop_texts(self, tokenizer) -> list[str]:
        """The end of turn as text, where an answer's decoded text shows it; an answer ends (and is
        cut) before it.  When the tokenizer spells it in several pieces (an npllama tokenizer has
        no <|eot_id|> piece, so `--chat-template llama3` writes it as a dozen), no stop id stands
        for it, yet the model learns to write it (encode_conversation counts it with the answer).
        One piece that decodes as its text (a SentencePiece user-defined piece such as
        "<|im_end|>") is a stop id, but the answer's decoded ids would show it.  [] for a control
        piece (it decodes as no text) and for a template without an end of turn."""
        ids = self._end_of_turn_ids(tokenizer)
        return [self.end_of_turn] if len(ids) > 1 or (ids and self.end_of_turn in tokenizer.decode(ids)) else []

    def spelt_markers(self, tokenizer) -> dict[str, int]:
        """The special tokens the template writes (<|start_header_id|>, <|eot_id|>, <|im_start|>,
        <start_of_turn>, ...) that `tokenizer` has no piece for, each with how many pieces it spells
        it in: {} when it has them all.  An npllama tokenizer has none of LLaMA-3's, so
        `--chat-template llama3` writes <|start_header_id|> as 14 pieces of "<", "|", "st", ...:
        text the model reads and writes as any other, in its context, however long."""
        markers = _MARKER.findall(self.source) + ([self.end_of_turn] if self.end_of_turn is not None else [])
        spelt = {marker: len(tokenizer.encode(marker, bos=False)) for marker in dict.fromkeys(markers)}
        return {marker: n for marker, n in spelt.items() if n > 1}

    def own_tokens(self, tokenizer, messages, add_generation_prompt: bool = True) -> int:
        """How many of the conversation's ids are the template's own text (headers, markers, BOS):
        the ids of `messages` rendered with every message's content left empty."""
        blank = [{**m, "content": ""} for m in check_messages(messages)]
        return len(tokenizer.encode(self.render(blank, add_generation_prompt), bos=False))

    def _end_of_turn_ids(self, tokenizer) -> list[int]:
        """The end of turn's ids: one when the tokenizer has it whole (a control piece, a
        SentencePiece user-defined piece such as "<|im_end|>", a tokenizer.json added token)."""
        return [] if self.end_of_turn is None else tokenizer.encode(self.end_of_turn, bos=False)

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name}, bos_token={self.bos_token!r}, eos_token={self.eos_token!r})"


def read_folder_template(folder) -> str | None:
    """The chat template a Hugging Face folder carries, or None."""
    return folder_template_and_file(folder)[0]


def folder_template_and_file(folder) -> tuple[str | None, Path | None]:
    """(the chat template a Hugging Face folder carries, the file it is in), or (None, None)."""
    folder = Path(folder)
    jinja_file = folder / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return None, None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({e})") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):   # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:   # transformers refuses too: no other template stands in for it
            raise ValueError(f"{str(config_file)!r} holds chat templates named {sorted(map(str, named))} and none "
                             f"named 'default': save the one to use as a .jinja file and pass it as --chat-template")
        template = named["default"]
    return (template, config_file) if isinstance(template, str) and template.strip() else (None, None)


def warn_if_not_jinja(source: str, where: str, kept: str, stacklevel: int = 2) -> None:
    """One warning when a chat template a conversion keeps as it is (convert gguf into
    tokenizer_config.json, export gguf into the GGUF) does not compile: "<where> is not valid Jinja:
    <problem>; <kept>", said now rather than first by `generate --chat` on what was written.
    stacklevel: the warning's, counted from the caller."""
    import warnings

    try:
        _compile(source)
    except ChatTemplateError as error:
        warnings.warn(str(ChatTemplateError(error.problem, where, kept)), stacklevel=stacklevel + 1)


def spelt_markers_note(template: ChatTemplate, tokenizer, context: int, cost) -> str | None:
    """What `generate --chat`, `chat`, `finetune sft` and `eval choice --template chat` say when
    `tokenizer` has no piece for special tokens `template` writes (ChatTemplate.spelt_markers):
    "the tokenizer has no piece for the chat template's <|start_header_id|>, ...: it spells them in
    14, ... pieces, so <cost()>, of the model's context of <context>", and which built-in template
    to pick instead when llama3 was picked by name; None when it has them all.  cost: called only
    then, what the template's own text takes ("the template's own text takes 72 of this prompt's
    74 tokens")."""
    spelt = template.spelt_markers(tokenizer)
    if not spelt:
        return None
    names, counts = _listed(list(spelt)), _listed([str(n) for n in spelt.values()])
    # the built-in llama3 was picked by name, not trained with: llama2's [INST] is plain text
    other = " (--chat-template llama2 writes text it has pieces for)" if template.name == "llama3" else ""
    return (f"the tokenizer has no piece for the chat template's {names}: it spells "
            f"{'it' if len(spelt) == 1 else 'them'} in {counts} pieces, so {cost()}, of the model's context of "
            f"{context}{other}")


def _listed(words: list[str]) -> str:
    """Words joined as a sentence lists them: a; a and b; a, b and c."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def turn_messages(prompt: str, response: str | None = None, system: str | None = None) -> list[dict]:
    """The messages of one exchange: an optional system message, the user's, the assistant's.
    system None: no system message; an empty or blank one is refused, as chat --system refuses it
    (no system message, or an empty system turn, which overrides a template's default one?)."""
    if isinstance(system, str) and not system.strip():
        raise ValueError(f"system is empty ({system!r}): give system=None for no system message, or its text")
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}] + (
        [{"role": "assistant", "content": response}] if response is not None else [])


def _shared_length(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_messages(messages) -> list[dict]:
    """A copy of `messages` (a non-empty list of {"role", "content"} dicts, roles among ROLES), or a
    TypeError/ValueError naming the first message that is not one."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TypeError(f"messages[{i}] must be a dict with a str 'content', got {message!r}")
        if message.get("role") not in ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {ROLES}, got {message.get('role')!r}")
    return [dict(m) for m in messages]


def _compile(source: str):
    """Compile as transformers does: a sandbox (a template from a downloaded folder cannot reach
    Python), trim_blocks and lstrip_blocks, {% break %} and {% continue %}, the {% generation %}
    tag, a tojson that writes JSON as json.dumps does, raise_exception() and strftime_now()."""
    import jinja2.ext
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes < > & ' and returns markup, which then escapes the text it is
        # joined to: "<|im_start|>" + x|tojson would become "&lt;|im_start|&gt;..."
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_generation_tag(), jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as e:
        line = getattr(e, "lineno", None)   # a syntax error's; an unknown filter has none
        raise ChatTemplateError(str(e).rstrip(".") + (f" (line {line})" if line else "")) from None


def _generation_tag():
    """{% generation %}...{% endgeneration %}: transformers marks the assistant's text with it (for
    its assistant-token mask); the text between is rendered as it stands."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    return GenerationTag


def _special_tokens(tokenizer) -> tuple[str, str]:
    if tokenizer is None:
        return "<s>", "</s>"
    bos = tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    return bos, eos


def _end_of_turn(source: str) -> str | None:
    for marker in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>"):
        if marker in source:
            return marker
    return None


__all__ = ["ChatTemplate", "ChatTemplateError", "AnswerNotWritten", "LLAMA2_TEMPLATE", "LLAMA3_TEMPLATE",
           "read_folder_template", "folder_template_and_file", "check_messages", "warn_if_not_jinja",
           "turn_messages", "spelt_markers_note"]
