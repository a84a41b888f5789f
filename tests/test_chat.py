"""Chat templates: the built-in LLaMA-2/3 formats, a folder's own Jinja template, rendered as
transformers renders it, and used by `finetune sft` and `generate --chat`."""
import json
import re
import shutil

import pytest

from npllama.chat import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, ChatTemplate, read_folder_template
from npllama.finetune import encode_chat
from npllama.runs import load_tokenizer

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Why? "}]


def test_llama2_format():
    template = ChatTemplate("llama2")
    assert template.render(QUESTION) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Why? [/INST]"
    conversation = QUESTION + [{"role": "assistant", "content": "Because."}, {"role": "user", "content": "Ok"}]
    assert template.render(conversation) == ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Why? [/INST] Because. </s>"
                                             "<s>[INST] Ok [/INST]")
    assert template.prompt("Hi") == "<s>[INST] Hi [/INST]"


def test_llama3_format():
    template = ChatTemplate("llama3", bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    assert template.render(QUESTION) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert template.render(QUESTION, add_generation_prompt=False).endswith("Why?<|eot_id|>")
    assert template.end_of_turn == "<|eot_id|>"


def test_a_folder_without_a_template_gets_llama3s_when_its_tokenizer_has_llama3s_header_piece(tmp_path):
    # README, generate --chat, finetune sft --help: with no template of its own, a folder whose
    # tokenizer has <|start_header_id|> is rendered in LLaMA-3's format, any other in LLaMA-2's
    class Pieces:
        bos_id, eos_id = 0, 1

        def __init__(self, control):
            self.control_pieces = {piece: i for i, piece in enumerate(control)}

        def id_to_piece(self, i):
            return list(self.control_pieces)[i]

    llama3 = Pieces(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"])
    template = ChatTemplate.for_folder(tmp_path, llama3)
    assert template.name == "llama3" and template.render(QUESTION).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert ChatTemplate.for_folder(tmp_path, Pieces(["<s>", "</s>", "<|im_start|>"])).name == "llama2"


def test_folder_template_wins_and_is_found_in_either_file(tmp_path, small_model_dir):
    tokenizer = load_tokenizer(small_model_dir)
    assert ChatTemplate.for_folder(small_model_dir, tokenizer).name == "llama2"   # none of its own
    folder = tmp_path / "m"
    shutil.copytree(small_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    template = ChatTemplate.for_folder(folder, tokenizer)
    assert template.name == "custom" and template.render(QUESTION) == "<system>Be brief.<user> Why? "
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[-1]['content'] }}")
    assert ChatTemplate.for_folder(folder, tokenizer).render(QUESTION) == "<s> Why? "
    assert ChatTemplate.for_folder(folder, tokenizer, name="llama3").name == "llama3"
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]
    (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_folder_template(folder) == "y"
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "rag", "template": "y"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"named \['rag', 'tool_use'\] and none named 'default'"):
        ChatTemplate.for_folder(folder, tokenizer)       # not silently LLaMA-2's


def test_bad_messages_and_templates_are_refused():
    with pytest.raises(ValueError, match="alternate"):
        ChatTemplate("llama2").render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\]"):
        ChatTemplate("llama2").render([{"role": "robot", "content": "a"}])
    with pytest.raises(TypeError, match="non-empty list"):
        ChatTemplate("llama2").render([])
    with pytest.raises(ValueError, match="not valid Jinja"):
        ChatTemplate("{% for %}")
    with pytest.raises(ValueError, match="chat template failed"):   # the sandbox: no way into Python
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render(QUESTION)


def test_what_transformers_adds_to_jinja_renders_as_there():
    """tojson as json.dumps (Jinja's own escapes < > & ' and then the text joined to it), loop
    controls, and the {% generation %} tag: the texts transformers' apply_chat_template gives."""
    messages = [{"role": "user", "content": "a <b> & 'c'"}, {"role": "assistant", "content": "ok"}]
    tojson = ChatTemplate("{% for m in messages %}{{ '<|u|>' + (m['content'] | tojson) }}{% endfor %}")
    assert tojson.render(messages) == '<|u|>"a <b> & \'c\'"<|u|>"ok"'
    skip = ChatTemplate("{% for m in messages %}{% if m['role'] == 'assistant' %}{% continue %}{% endif %}"
                        "{{ m['content'] }}{% endfor %}")
    assert skip.render(messages) == "a <b> & 'c'"
    generation = ChatTemplate("{% for m in messages %}{% generation %}{% set x = m['content'] %}{{ x }}"
                              "{% endgeneration %}{% endfor %}{{ x }}")
    assert generation.render(messages) == "a <b> & 'c'ok"
    # tools and documents are given, as None (Mistral v0.3 writes its tool block when `tools is not none`)
    mistral = ChatTemplate("{% if tools is not none %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
                           "{% endif %}{% if documents is defined %}[INST] {{ messages[0]['content'] }}{% endif %}")
    assert mistral.render(messages) == "[INST] a <b> & 'c'"
    with pytest.raises(ValueError, match="chat template failed on these messages: .*not JSON serializable"):
        ChatTemplate("{{ nothing | tojson }}").render(messages)


def _both_templates(transformers, folder, source, tokenizer):
    """transformers' AutoTokenizer and npllama's ChatTemplate, read from one folder holding the
    tokenizer's files with `source` as its chat template."""
    folder.mkdir()
    for file, data in tokenizer.hf_files(chat_template=source).items():
        (folder / file).write_bytes(data)
    return transformers.AutoTokenizer.from_pretrained(str(folder)), ChatTemplate.for_folder(folder, tokenizer)


def test_same_text_as_transformers_apply_chat_template(tmp_path, small_model_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(small_model_dir)
    for name, source in (("llama2", LLAMA2_TEMPLATE), ("llama3", LLAMA3_TEMPLATE)):
        hf, ours = _both_templates(transformers, tmp_path / name, source, tokenizer)
        conversation = QUESTION + [{"role": "assistant", "content": "Fine."}, {"role": "user", "content": "Go on"}]
        for messages in (QUESTION, conversation, QUESTION[1:]):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert ours.render(messages) == text
            assert tokenizer.encode(text, bos=False) == hf(text, add_special_tokens=False)["input_ids"]


def test_sft_encoding_uses_the_template_and_counts_the_answer(small_model_dir):
    tokenizer = load_tokenizer(small_model_dir)
    ids, counted = encode_chat(tokenizer, "Write a story.", "Lily ran.")
    prompt = tokenizer.encode("<s>[INST] Write a story. [/INST]", bos=False)
    assert ids[:len(prompt)] == prompt and ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert counted == [False] * len(prompt) + [True] * (len(ids) - len(prompt))
    assert tokenizer.decode([i for i, c in zip(ids, counted) if c]).strip() == "Lily ran."
    custom = ChatTemplate("{{ bos_token }}Q: {{ messages[0]['content'] }}\nA:{% if not add_generation_prompt %}"
                          " {{ messages[1]['content'] }}{% endif %}")
    ids, counted = encode_chat(tokenizer, "hi", "ok", template=custom)
    assert tokenizer.decode(ids) == "Q: hi\nA: ok" and ids[-1] == tokenizer.eos_id   # EOS added: the template has none
    assert tokenizer.decode([i for i, c in zip(ids, counted) if c]).strip() == "ok"


def test_sft_saves_the_template_it_trained_with(small_model_dir, tmp_path, capsys):
    from npllama.cli import main
    from npllama.finetune import SFTConfig, sft

    out = tmp_path / "sft"
    sft(SFTConfig(base=str(small_model_dir), steps=1, samples=0, progress=False, max_len=129,
                  chat_template="llama3", out=str(out)), echo=lambda *_: None)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == LLAMA3_TEMPLATE
    tokenizer = load_tokenizer(out)
    template = ChatTemplate.for_folder(out, tokenizer)
    assert template.render(QUESTION[1:]).startswith("<s><|start_header_id|>user")
    # generate --chat formats with the folder's template: the same ids as rendering it here
    from npllama.generate import generate
    from npllama.runs import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer(out)
    prompt = tokenizer.encode(template.prompt("Hi"), bos=False)
    expected = generate(model, prompt, 5, temperature=0, eos_id=template.stop_ids(tokenizer))
    assert main(["generate", "--model", str(out), "--chat", "--prompt", "Hi", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(expected[len(prompt):]) + "\n"


def test_chat_stops_on_every_end_id_of_the_config(small_model_dir, tmp_path, capsys):
    """config.json's eos_token_id list (LLaMA-3.1: end of text, end of message, end of turn) ends a
    chat answer as it ends plain generation, beside the tokenizer's EOS and the template's end of turn."""
    from npllama.backend import use_backend
    from npllama.cli import main
    from npllama.generate import generate
    from npllama.runs import load_model_and_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(small_model_dir, folder)
    model, tokenizer, _ = load_model_and_tokenizer(folder)
    prompt = tokenizer.encode(ChatTemplate.for_folder(folder, tokenizer).prompt("Hi"), bos=False)
    with use_backend("numpy"):   # the backend the command runs: the kernels' float32 may break a near tie otherwise
        first = generate(model, prompt, 1, temperature=0)[-1]
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_id, first]
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()   # what came before the command (a first compile's notice) is not its output
    assert main(["generate", "--model", str(folder), "--chat", "--prompt", "Hi", "--max-new-tokens", "5",
                 "--temperature", "0", "--backend", "numpy"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("[1 tokens in")      # stopped at the first


def chatml_tokenizer():
    """A SentencePiece tokenizer holding ChatML's markers as user-defined pieces (not control pieces)."""
    import io

    import sentencepiece as spm

    from npllama.tokenizer import Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g h"] * 20), model_writer=model,
                                   vocab_size=300, hard_vocab_limit=False, byte_fallback=True, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"])
    return Tokenizer.from_bytes(model.getvalue())


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_an_end_of_turn_the_tokenizer_holds_as_a_user_defined_piece_stops_the_answer(tmp_path):
    """ChatML's <|im_end|> as a SentencePiece user-defined piece (not a control piece) is one token:
    the answer ends there; an end of turn the tokenizer spells in pieces is no stop id."""
    tokenizer = chatml_tokenizer()
    im_end = tokenizer.piece_to_id("<|im_end|>")
    chatml = ChatTemplate("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    assert chatml.end_of_turn == "<|im_end|>" and chatml.stop_ids(tokenizer) == sorted([tokenizer.eos_id, im_end])
    assert ChatTemplate("llama3").stop_ids(tokenizer) == [tokenizer.eos_id]   # <|eot_id|> in pieces here


def test_a_lora_adapter_carries_the_template_it_was_trained_with(small_model_dir, tmp_path, capsys):
    """`finetune sft --lora --chat-template FILE`: the adapter folder holds the template, and
    `generate --adapter --chat` formats with it, not with the base folder's (here: none, so LLaMA-2's)."""
    from npllama.cli import main
    from npllama.finetune import SFTConfig, sft

    jinja = tmp_path / "qa.jinja"
    jinja.write_text("{{ bos_token }}{% for m in messages %}{{ m['role'][0] + ': ' + m['content'] + '\\n' }}"
                     "{% endfor %}{% if add_generation_prompt %}{{ 'a:' }}{% endif %}")
    out = tmp_path / "adapter"
    sft(SFTConfig(base=str(small_model_dir), steps=1, samples=0, progress=False, max_len=64, lora=True, lora_r=2,
                  lr=0.05, chat_template=str(jinja), out=str(out)), echo=lambda *_: None)
    assert read_folder_template(out) == jinja.read_text()
    answers = []
    for flags in ([], ["--chat-template", str(jinja)]):
        assert main(["generate", "--model", str(small_model_dir), "--adapter", str(out), "--chat", "--prompt", "Hi",
                     "--max-new-tokens", "8", "--temperature", "0", "--backend", "numpy", *flags]) == 0
        printed = capsys.readouterr()
        answers.append((printed.out, printed.err.split(", prompt ")[-1]))   # the answer, the prompt's length
    assert answers[0] == answers[1]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a b"},
                {"role": "assistant", "content": "c d"}, {"role": "user", "content": "e"},
                {"role": "assistant", "content": "f g h"}]


def test_a_conversation_counts_every_assistant_message_and_its_end_only(small_model_dir):
    """encode_conversation: the ids of each assistant message and the end after it (LLaMA-2's </s>,
    ChatML's <|im_end|>, not the newline ChatML writes after it, which is never generated)."""
    tokenizer = load_tokenizer(small_model_dir)
    llama2 = ChatTemplate("llama2")
    ids, counted = llama2.encode_conversation(tokenizer, CONVERSATION)
    assert ids == tokenizer.encode(llama2.render(CONVERSATION, add_generation_prompt=False), bos=False)
    answers = [tokenizer.encode(f"{m['content']} ", bos=False) + [tokenizer.eos_id] for m in CONVERSATION[2::2]]
    assert [ids[i] for i, c in enumerate(counted) if c] == answers[0] + answers[1]
    assert llama2.encode_turn(tokenizer, "a b", "c d", "Be brief.") == llama2.encode_conversation(
        tokenizer, CONVERSATION[:3])

    tokenizer = chatml_tokenizer()
    chatml = ChatTemplate(CHATML)
    ids, counted = chatml.encode_conversation(tokenizer, CONVERSATION)
    im_end = tokenizer.piece_to_id("<|im_end|>")
    kept = [i for i, c in zip(ids, counted) if c]
    assert tokenizer.decode(kept) == "c d<|im_end|>f g h<|im_end|>"
    assert kept.count(im_end) == 2 and ids[-1] != im_end and not counted[-1]   # the last "\n" is not counted
    with pytest.raises(ValueError, match="starts with a system or user message"):
        chatml.encode_conversation(tokenizer, CONVERSATION[2:3])


@pytest.mark.parametrize("name", ["llama2", "llama3", "chatml"])
def test_an_answer_is_placed_whatever_the_other_messages_say(name, small_model_dir):
    # Before: written_answer rendered a fixed marker in the answer's place and refused a template
    # where it appeared other than once -- so a question (or system message) holding the marker's
    # text made LLaMA-2, LLaMA-3 and ChatML "not write an assistant's message as it is given".
    from npllama.chat import _ANSWER_MARKER

    tokenizer = chatml_tokenizer() if name == "chatml" else load_tokenizer(small_model_dir)
    template = ChatTemplate(CHATML if name == "chatml" else name)
    for said in ("a b", f"a {_ANSWER_MARKER} b", f"{_ANSWER_MARKER}X {_ANSWER_MARKER}"):
        messages = [{"role": "system", "content": f"Be brief. {said}"}, {"role": "user", "content": said},
                    {"role": "assistant", "content": "c d"}]
        text, start, end = template.written_answer(messages)
        assert text[start:end] == "c d" and text == template.render(messages, add_generation_prompt=False)
        ids, answer_start = template.encode_answer(tokenizer, messages)
        full, counted = template.encode_conversation(tokenizer, messages)
        assert ids[:answer_start] == full[:answer_start] and not any(counted[:answer_start])
        assert all(counted[answer_start:len(ids)]) and ids == full[:len(ids)]
        assert tokenizer.decode(ids[answer_start:]) == "c d"


def test_sft_learns_conversations(small_model_dir, tmp_path):
    """A {"messages"} file (Hugging Face's conversational layout) trains on every assistant message."""
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft

    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 4)
    said = []
    result = sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=2, samples=1, progress=False,
                           val_fraction=0.5, lr=1e-2), echo=said.append)
    # the sample, then the last line: where the result went (nowhere here)
    assert result.val_loss_after < result.val_loss_before and said[-2].startswith("\nuser: e\nassistant: ")
    assert said[-1].startswith("nothing saved"), said[-1]


def test_sft_says_what_max_len_cut_and_shows_samples_in_no_template_of_its_own(small_model_dir, tmp_path):
    """Examples longer than --max-len are counted in a line, not cut silently; a printed sample
    shows the user's words, not LLaMA-2's [INST] whatever template trained."""
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft

    long_answer = " ".join(["Lily ran to the park."] * 12)
    data = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Hi", "response": "Hello."}] * 6 +
                       [{"prompt": "Run", "response": long_answer}] * 4)
    said = []
    sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, samples=1, progress=False, max_len=40,
                  val_fraction=0.5), echo=said.append)
    assert said[0].startswith("instruction-tuning every weight of ") and said[0].endswith(
        "5 train / 5 validation examples")   # the opening line, then the cut note
    assert said[1].startswith("4 of 10 examples are longer than 40 tokens (--max-len): cut there")
    assert said[-2].startswith("\nuser: ") and "[INST]" not in said[-2]


def test_tokens_added_to_tokenizer_json_beyond_tokenizer_model_are_read(small_model_dir, tmp_path):
    """transformers' add_special_tokens (ChatML's markers on a LLaMA tokenizer) writes them into
    tokenizer.json only: the folder's tokenizer is then that file, as AutoTokenizer reads it."""
    pytest.importorskip("tokenizers")
    folder = tmp_path / "model"
    shutil.copytree(small_model_dir, folder)
    tokenizer = load_tokenizer(folder)
    pipeline = json.loads(tokenizer.hf_files()["tokenizer.json"])
    n = tokenizer.vocab_size
    pipeline["added_tokens"] += [{"id": n + i, "content": token, "single_word": False, "lstrip": False,
                                  "rstrip": False, "normalized": False, "special": True}
                                 for i, token in enumerate(("<|im_start|>", "<|im_end|>"))]
    (folder / "tokenizer.json").write_text(json.dumps(pipeline))
    assert load_tokenizer(small_model_dir).encode("<|im_end|>", bos=False) != [n + 1]
    ids = load_tokenizer(folder).encode("<|im_start|>user<|im_end|>", bos=False)
    assert ids[0] == n and ids[-1] == n + 1


def chat(argv, text, monkeypatch, capsys):
    """`npllama chat ARGV` with `text` as its standard input: (status, stdout, stderr)."""
    import io

    from npllama.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    status = main(["chat", "--temperature", "0", "--backend", "numpy", *argv])
    printed = capsys.readouterr()
    return status, printed.out, without_template_note(printed.err)


def without_template_note(err: str) -> str:
    """stderr without its first line's note that the model folder has no chat template of its own
    (the small model's: test_chat_says_which_template_it_uses_when_the_folder_has_none reads it)."""
    return re.sub(r"\A\[.* has no chat template: .*\]\n", "", err)


def test_chat_says_which_template_it_uses_when_the_folder_has_none(small_model_dir, tmp_path, monkeypatch,
                                                                     capsys):
    """A `npllama train` run has no chat template: the built-in one chat falls back on is named
    once, before the first answer; a folder with its own template, or --chat-template, is not noted."""
    from npllama.cli import main
    import io

    def stderr_of(*argv):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
        assert main(["chat", "--temperature", "0", "--backend", "numpy", "--max-new-tokens", "2", *argv]) == 0
        return capsys.readouterr().err

    assert stderr_of("--model", str(small_model_dir)) == (
        "[the model folder has no chat template: the built-in llama2 template is used "
        "(--chat-template llama2, llama3 or a Jinja file picks another)]\n")
    assert stderr_of("--model", str(small_model_dir), "--chat-template", "llama2") == ""
    # llama3's headers are no pieces of this tokenizer: that is said (test_a_template_s_spelt_markers_...)
    assert "no chat template" not in stderr_of("--model", str(small_model_dir), "--chat-template", "llama3")
    folder = tmp_path / "own"
    shutil.copytree(small_model_dir, folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert stderr_of("--model", str(folder)) == ""


def test_chat_answers_each_line_with_the_whole_conversation_as_the_prompt(small_model_dir, monkeypatch, capsys):
    from npllama.generate import generate
    from npllama.runs import load_model_and_tokenizer

    status, out, err = chat(["--model", str(small_model_dir), "--max-new-tokens", "6", "--system", "Be brief."],
                            "Hi\n\n  \nGo on\n", monkeypatch, capsys)     # blank lines are no messages
    assert status == 0 and err == ""
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    template = ChatTemplate.for_folder(small_model_dir, tokenizer)
    messages, expected = [{"role": "system", "content": "Be brief."}], ""
    for line in ("Hi", "Go on"):
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.encode(template.render(messages), bos=False)
        new = generate(model, prompt, 6, temperature=0, eos_id=template.stop_ids(tokenizer, model))[len(prompt):]
        answer = tokenizer.decode([i for i in new if i not in template.stop_ids(tokenizer, model)])
        messages.append({"role": "assistant", "content": answer})
        expected += tokenizer.decode(new) + "\n"
    assert out == expected


def test_chat_says_what_it_drops_when_the_conversation_outgrows_the_context(small_model_dir, monkeypatch, capsys):
    """The model's context is 128 tokens: the oldest exchange goes (said on stderr), the system
    message stays; a message too long to fit alone is not sent (said), and the chat goes on."""
    long = " ".join(["Lily ran to the park with her dog."] * 3)
    status, out, err = chat(["--model", str(small_model_dir), "--max-new-tokens", "30"],
                            f"{long}\n{long}\n{'word ' * 200}\nHi\n", monkeypatch, capsys)
    lines = err.splitlines()
    assert status == 0 and len(out.splitlines()) == 3, err
    dropped = ("[the conversation no longer fits the model's context (128 tokens) with --max-new-tokens 30: "
               "dropped the earlier exchange]")                   # the only one: not "the oldest"
    assert lines[0] == dropped and lines[2] == dropped and len(lines) == 3     # the second long one, for "Hi"
    assert re.fullmatch(r"\[not sent: this message alone makes a prompt of \d+ tokens, and the model's context is "
                        r"128; the earlier exchange is kept\]", lines[1]), lines[1]


def test_chat_says_truly_what_it_dropped_and_what_it_did_not_send(small_model_dir, monkeypatch, capsys):
    """The lines on stderr were wrong in several cases: "dropped the oldest exchange" when it was
    the only one, "even without the earlier exchanges" on a first message that had none, no word of
    the system prompt that stays, and "with --max-new-tokens 64" when the flag was not given."""
    from npllama.commands.chat import Conversation, dropped_words, not_sent_words
    from npllama.runs import load_model_and_tokenizer

    too_long = "word " * 200
    for system, alone in ((None, "this message alone makes"),
                          ("Be brief.", "this message and the system prompt alone make")):
        status, out, err = chat(["--model", str(small_model_dir)] + (["--system", system] if system else []),
                                f"{too_long}\n", monkeypatch, capsys)
        assert status == 0 and out == "", err
        assert re.fullmatch(rf"\[not sent: {alone} a prompt of \d+ tokens, and the model's context is 128\]\n",
                            err), err
    long = " ".join(["Lily ran to the park with her dog."] * 3)
    status, out, err = chat(["--model", str(small_model_dir), "--system", "Be brief."], f"{long}\n{long}\n",
                            monkeypatch, capsys)
    assert err == ("[the conversation no longer fits the model's context (128 tokens) with room for a 64-token "
                   "answer (the default --max-new-tokens): dropped the earlier exchange; the system prompt stays]\n")

    assert dropped_words(1, 2, None) == "dropped the oldest exchange"
    assert dropped_words(2, 1, "Be brief.") == "dropped the 2 oldest exchanges; the system prompt stays"
    assert dropped_words(3, 0, None) == "dropped all 3 earlier exchanges"
    assert not_sent_words(130, 128, 2, None) == ("not sent: this message alone makes a prompt of 130 tokens, and "
                                                 "the model's context is 128; the 2 earlier exchanges are kept")
    assert not_sent_words(128, 128, 0, None).endswith("is 128, leaving no room for an answer")

    # the oldest of several goes, and the newer stay: what "oldest" says is so
    model, tokenizer, _ = load_model_and_tokenizer(small_model_dir)
    conversation = Conversation(ChatTemplate.for_folder(small_model_dir, tokenizer), tokenizer, None)
    for question in ("Hi", "Go on", "And then"):
        conversation.ask(question, room=10, context=128)
        conversation.answer("Lily ran to the park.")
    question = {"role": "user", "content": "Lily ran to the park with her dog."}
    newest_and_question = tokenizer.encode(conversation.template.render(conversation.exchanges[-1] + [question]),
                                           bos=False)
    room = 128 - len(newest_and_question)     # room for the newest exchange, not for the two before it
    ids, dropped = conversation.ask(question["content"], room=room, context=128)
    assert (dropped, ids) == (2, newest_and_question)
    assert [pair[0]["content"] for pair in conversation.exchanges] == ["And then"]


def test_eval_choice_in_chat_asks_in_the_model_s_own_template(small_model_dir, tmp_path, monkeypatch, capsys):
    """`eval choice --template chat` on a model tuned in its own template (here a folder's
    chat_template.jinja) puts the question in that template, not in LLaMA-2's [INST]."""
    import numpy as np

    from npllama import finetune
    from npllama.cli import main
    from npllama.datasets import write_jsonl

    folder = tmp_path / "model"
    shutil.copytree(small_model_dir, folder)
    (folder / "chat_template.jinja").write_text("{{ bos_token }}Q: {{ messages[-1]['content'] }}\nA:")
    seen = []
    monkeypatch.setattr(finetune, "_choice_scores", lambda model, tokenizer, question, choices, template:
                        seen.append(template.prompt(question)) or (np.zeros(len(choices)), np.ones(len(choices)), False))
    items = write_jsonl(tmp_path / "items.jsonl", [{"question": "Who?", "choices": ["Tom", "Lily"], "answer": 0}])
    assert main(["eval", "choice", "--model", str(folder), "--data", str(items), "--template", "chat",
                 "--no-progress", "--backend", "numpy"]) == 0
    assert seen == ["<s>Q: Who?\nA:"]


def test_eval_choice_in_chat_says_which_template_it_uses_when_the_folder_has_none(small_model_dir, tmp_path,
                                                                                 capsys):
    """As chat and generate --chat say it: a model folder without a chat template is asked in a
    built-in one, which is named on stderr (the scores would otherwise look like the model's own
    format's); a folder with its own template, or --template plain, is not noted."""
    from npllama.cli import main
    from npllama.datasets import write_jsonl

    items = write_jsonl(tmp_path / "items.jsonl", [{"question": "Who?", "choices": ["Tom", "Lily"], "answer": 0}])

    def stderr_of(folder, template):
        assert main(["eval", "choice", "--model", str(folder), "--data", str(items), "--template", template,
                     "--no-progress", "--backend", "numpy"]) == 0
        return capsys.readouterr().err

    assert stderr_of(small_model_dir, "chat") == (
        "[the model folder has no chat template: the built-in llama2 template is used]\n")
    assert stderr_of(small_model_dir, "plain") == ""
    folder = tmp_path / "own"
    shutil.copytree(small_model_dir, folder)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert stderr_of(folder, "chat") == ""


def test_sft_names_the_example_a_template_refuses(small_model_dir, tmp_path):
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft

    ok = {"messages": CONVERSATION[1:3]}
    data = write_jsonl(tmp_path / "chat.jsonl", [ok, ok, {"messages": [CONVERSATION[1], CONVERSATION[3],
                                                                       CONVERSATION[2]]}, ok])
    data.write_text("\n" + data.read_text(encoding="utf-8"), encoding="utf-8")   # the third example on line 4
    with pytest.raises(ValueError, match=r"chat.jsonl line 4: the chat template failed .*must alternate"):
        sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, samples=0, progress=False),
            echo=lambda *_: None)


def test_chat_seeds_each_turn_as_generate_seeds_each_sample(small_model_dir, monkeypatch, capsys):
    """--seed S: the first answer uses S, each later turn sample_seed(S, turn) -- not S + turn,
    which made turn 2 of --seed 1 the first answer of --seed 2."""
    import npllama.generate
    from npllama.generate import sample_seed

    seeds, real = [], npllama.generate.generate
    monkeypatch.setattr(npllama.generate, "generate", lambda *a, **kw: seeds.append(kw["seed"]) or real(*a, **kw))
    status, _, err = chat(["--model", str(small_model_dir), "--max-new-tokens", "2", "--seed", "1"],
                          "Hi\nGo on\nAnd?\n", monkeypatch, capsys)
    assert status == 0 and err == ""
    assert seeds == [1, sample_seed(1, 1), sample_seed(1, 2)] and len(set(seeds + [2, 3])) == 5


def test_chat_without_max_new_tokens_keeps_the_conversation_on_a_small_context(small_model_dir, monkeypatch,
                                                                                capsys):
    """Left out, --max-new-tokens is half the model's context here (128 tokens: 64), not 200: room for
    answers as long as the whole context dropped every earlier exchange at every turn.  The second
    question's prompt then holds the first exchange."""
    from npllama.commands.chat import DEFAULT_ANSWER_TOKENS, default_answer_tokens

    assert default_answer_tokens(128) == 64 and default_answer_tokens(4096) == DEFAULT_ANSWER_TOKENS
    seen = []
    import npllama.generate as generation

    real = generation.generate

    def recorded(model, prompt, max_new_tokens, **kwargs):
        seen.append((len(prompt), max_new_tokens))
        return real(model, prompt, max_new_tokens, **kwargs)

    monkeypatch.setattr(generation, "generate", recorded)
    status, out, err = chat(["--model", str(small_model_dir)], "Hi\nGo on\n", monkeypatch, capsys)
    assert status == 0 and "dropped" not in err, err
    assert [room for _, room in seen] == [64, 64] and seen[1][0] > seen[0][0], seen   # the first exchange kept
    from npllama.cli import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    assert "half the model's context" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("system", ["", " \n"])
def test_an_empty_system_message_is_refused_in_python_and_in_data_as_on_the_command_line(tmp_path, system):
    """As chat and generate refuse an empty --system: "" was dropped without a word (no system
    message, so the template's default, if it has one) and a blank one sent as a blank system
    block; neither reading is safe to guess.  system=None is the way to have none."""
    from npllama.datasets import load_sft, write_jsonl

    template = ChatTemplate(LLAMA2_TEMPLATE, "<s>", "</s>")
    assert "<<SYS>>" not in template.prompt("Hi", None)
    for call in (lambda: template.prompt("Hi", system), lambda: template.encode_turn(None, "Hi", "Yo", system)):
        with pytest.raises(ValueError, match=r"^system is empty \(.*\): give system=None for no system message"):
            call()
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "response": "Yo"},
                                                {"prompt": "Hi", "response": "Yo", "system": system}])
    with pytest.raises(ValueError, match=r'sft.jsonl line 2: "system" is empty; leave it out \(or null\) for no '
                                         r'system message'):
        load_sft(data)



BAD_JINJA = "{% for m in messages %}{{ m['content'] | nosuchfilter }}{% endfor %}"


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.jinja"])
def test_a_folders_template_that_is_not_jinja_is_named_with_the_way_past_it(small_model_dir, tmp_path, monkeypatch,
                                                                             capsys, where):
    """A folder's chat template that does not compile (kept by `convert gguf` from a GGUF, say) is
    refused naming the file it is in and what to do instead: --chat-template for generate --chat and
    chat, --template plain for eval choice, name= in Python (was "the chat template is not valid
    Jinja: No filter named 'nosuchfilter'.", naming neither)."""
    import io

    from npllama.cli import main
    from npllama.datasets import write_jsonl

    folder = tmp_path / "model"
    shutil.copytree(small_model_dir, folder)
    if where == "chat_template.jinja":
        (folder / where).write_text(BAD_JINJA)
    else:
        config = json.loads((folder / where).read_text()) if (folder / where).is_file() else {}
        (folder / where).write_text(json.dumps({**config, "chat_template": BAD_JINJA}))
    named = repr(str(folder / where))
    items = write_jsonl(tmp_path / "items.jsonl", [{"question": "Who?", "choices": ["Tom", "Lily"], "answer": 0}])
    for argv, way_out in [(["generate", "--chat", "--prompt", "Hi"], "--chat-template"),
                          (["chat"], "--chat-template"),
                          (["eval", "choice", "--data", str(items), "--template", "chat", "--no-progress"],
                           "--template plain")]:
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
        assert main([*argv, "--model", str(folder), "--backend", "numpy"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "not valid Jinja" in err and "nosuchfilter" in err, err
        assert named in err and way_out in err, err
    # the way out it names works
    assert main(["generate", "--chat", "--prompt", "Hi", "--model", str(folder), "--chat-template", "llama2",
                 "--max-new-tokens", "1", "--backend", "numpy"]) == 0
    capsys.readouterr()
    tokenizer = load_tokenizer(folder)
    with pytest.raises(ValueError, match=re.escape(named) + r" is not valid Jinja: .*nosuchfilter.*give another with name: "):
        ChatTemplate.for_folder(folder, tokenizer)


def test_a_template_file_that_is_not_jinja_is_named_as_the_flag_gave_it(small_model_dir, tmp_path, capsys):
    from npllama.cli import main

    bad = tmp_path / "mine.jinja"
    bad.write_text(BAD_JINJA)
    assert main(["generate", "--chat", "--prompt", "Hi", "--model", str(small_model_dir), "--chat-template", str(bad),
                 "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert f"--chat-template {str(bad)!r} is not valid Jinja: " in err and "nosuchfilter" in err, err
    assert "llama2" in err and len(err.strip().splitlines()) == 1, err


def test_a_chat_template_error_survives_pickling_as_it_was():
    """Exceptions cross processes (multiprocessing) as pickles: ChatTemplateError comes back with
    its message, where and problem, not the message wrapped once more ("the chat template is not
    valid Jinja: the chat template in 'f' is not valid Jinja: ...")."""
    import pickle

    from npllama.chat import ChatTemplateError

    error = ChatTemplateError("No filter named 'x'", "the chat template in 'f'", "give another")
    back = pickle.loads(pickle.dumps(error))
    assert (str(back), back.where, back.problem) == (str(error), error.where, error.problem)


@pytest.fixture
def chatml_model(tmp_path, monkeypatch):
    """A folder with chatml_tokenizer() and ChatML as its template, whose "model" writes "a b c",
    ChatML's <|im_end|> (one user-defined piece: its id stops the answer) and " d e" after it."""
    import npllama.generate
    from npllama import Llama, LlamaConfig

    tokenizer = chatml_tokenizer()
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    folder = tmp_path / "chatml"
    Llama(config, seed=0).save_pretrained(folder, extra_files={
        "tokenizer.model": tokenizer.model_bytes, "tokenizer_config.json": json.dumps({"chat_template": CHATML}).encode()})
    script = tokenizer.encode("a b c", bos=False) + [tokenizer.piece_to_id("<|im_end|>")] + tokenizer.encode(" d e", bos=False)
    written = []

    def scripted(logits, rng, previous, **sampling):   # the script again at each answer
        written.append(None)
        return script[(len(written) - 1) % len(script)]

    monkeypatch.setattr(npllama.generate, "_sample", scripted)
    return folder, written


def test_an_end_of_turn_that_decodes_as_its_text_is_not_shown(chatml_model, monkeypatch, capsys):
    """<|im_end|> as a SentencePiece user-defined piece is one id (the answer stops there) that
    decodes as its text.  Before: generate --chat and chat printed "a b c<|im_end|>" (a spelled end
    of turn was cut, one whole piece was not)."""
    import io

    from npllama.cli import main

    folder, written = chatml_model
    assert main(["generate", "--model", str(folder), "--chat", "--prompt", "Hi", "--max-new-tokens", "10",
                 "--temperature", "0", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out == "a b c\n"
    written.clear()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHo\n"))
    assert main(["chat", "--model", str(folder), "--max-new-tokens", "20", "--temperature", "0",
                 "--backend", "numpy"]) == 0
    assert capsys.readouterr().out == "a b c\n d e a b c\n"   # the second answer: the script's rest, then again
    assert ChatTemplate(CHATML).stop_texts(chatml_tokenizer()) == ["<|im_end|>"]


def test_sft_samples_leave_out_an_end_of_turn_that_decodes_as_its_text(chatml_model, tmp_path):
    """Before: the sample was "a b c<|im_end|>"."""
    from npllama.backend import use_backend
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft

    folder, _ = chatml_model
    data = write_jsonl(tmp_path / "hi.jsonl", [{"prompt": "a", "response": "b"}] * 10)
    with use_backend("numpy"):
        result = sft(SFTConfig(base=str(folder), data=str(data), steps=1, samples=1, progress=False, max_len=32),
                     echo=lambda *_: None)
    assert result.samples == ["a b c"]


def test_a_control_piece_end_of_turn_is_no_stop_text():
    """A control piece decodes as no text: its id alone ends the answer (stop_ids), nothing to cut."""
    import io

    import sentencepiece as spm

    from npllama.tokenizer import Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g h"] * 20), model_writer=model,
                                   vocab_size=300, hard_vocab_limit=False, byte_fallback=True, minloglevel=2,
                                   control_symbols=["<|eot_id|>"])
    tokenizer = Tokenizer.from_bytes(model.getvalue())
    llama3 = ChatTemplate("llama3")
    assert llama3.stop_ids(tokenizer) == sorted([tokenizer.eos_id, tokenizer.piece_to_id("<|eot_id|>")])
    assert llama3.stop_texts(tokenizer) == [] and ChatTemplate("llama2").stop_texts(tokenizer) == []
    assert llama3.stop_texts(chatml_tokenizer()) == ["<|eot_id|>"]   # spelled in pieces there


def test_a_template_s_markers_the_tokenizer_has_no_piece_for_are_counted(small_model_dir):
    """llama3's <|start_header_id|>, <|end_header_id|> and <|eot_id|> on an npllama tokenizer:
    each spelt in many pieces; none for llama2 (plain text), nor for a tokenizer holding the
    marker whole (ChatML's <|im_start|>, <|im_end|> as user-defined pieces)."""
    tokenizer = load_tokenizer(small_model_dir)
    spelt = ChatTemplate("llama3").spelt_markers(tokenizer)
    assert list(spelt) == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert all(n == len(tokenizer.encode(marker, bos=False)) > 5 for marker, n in spelt.items())
    assert ChatTemplate("llama2").spelt_markers(tokenizer) == {}
    assert ChatTemplate(CHATML).spelt_markers(chatml_tokenizer()) == {}
    assert list(ChatTemplate(CHATML).spelt_markers(tokenizer)) == ["<|im_start|>", "<|im_end|>"]
    # the template's own text: the conversation rendered with its contents left empty
    llama3 = ChatTemplate("llama3")
    own = tokenizer.encode("<s><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n", bos=False)
    assert llama3.own_tokens(tokenizer, [{"role": "user", "content": "Why is the sky blue?"}]) == len(own)


def test_generate_chat_and_chat_say_what_a_template_spelt_in_pieces_costs(small_model_dir, monkeypatch, capsys):
    """Before: `--chat-template llama3` on an npllama tokenizer spent 72 of a 74-token prompt on
    headers spelt piece by piece, of a 128-token context, and nothing said so."""
    import io

    from npllama.cli import main

    tokenizer = load_tokenizer(small_model_dir)
    llama3 = ChatTemplate("llama3", "<s>", "</s>")
    spelt = llama3.spelt_markers(tokenizer)
    *first, last = map(str, spelt.values())
    counts = f"{', '.join(first)} and {last}"
    own = llama3.own_tokens(tokenizer, [{"role": "user", "content": ""}])
    prompt = tokenizer.encode(llama3.prompt("Hi"), bos=False)
    assert main(["generate", "--model", str(small_model_dir), "--chat-template", "llama3", "--prompt", "Hi",
                 "--max-new-tokens", "2", "--temperature", "0", "--backend", "numpy"]) == 0
    note = (f"[the tokenizer has no piece for the chat template's <|start_header_id|>, <|end_header_id|> and "
            f"<|eot_id|>: it spells them in {counts} pieces, so the template's own text takes {own} of this "
            f"prompt's {len(prompt)} tokens, of the model's context of 128 (--chat-template llama2 writes text "
            f"it has pieces for)]")
    assert capsys.readouterr().err.splitlines()[0] == note
    exchange = llama3.own_tokens(tokenizer, [{"role": r, "content": ""} for r in ("user", "assistant", "user")]) - own
    assert exchange > own / 2
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHo\n"))
    assert main(["chat", "--model", str(small_model_dir), "--chat-template", "llama3", "--max-new-tokens", "2",
                 "--temperature", "0", "--backend", "numpy"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "no piece" in line]
    assert said == [note.replace(f"{own} of this prompt's {len(prompt)} tokens",
                                 f"{own} tokens of each prompt, and {exchange} more for each earlier exchange")]
    assert main(["generate", "--model", str(small_model_dir), "--chat-template", "llama2", "--prompt", "Hi",
                 "--max-new-tokens", "2", "--temperature", "0", "--backend", "numpy"]) == 0
    assert "no piece" not in capsys.readouterr().err


@pytest.mark.parametrize("answer", ["Sure, it is", "Sure, it is ", " Sure\n", "Sure, it is CONTINUE_FINAL_MESSAGE_TAG"])
def test_a_final_message_is_continued_as_transformers_continues_it(tmp_path, small_model_dir, answer):
    """A conversation ending with an answer begun for the model: continue_final_message=True ends
    the text with that answer's content, as transformers' apply_chat_template cuts it (a trailing
    space llama3's trim drops is dropped, one llama2's template keeps stays).  Before: render had no
    such option, and its default add_generation_prompt=True put a second assistant header after it."""
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(small_model_dir)
    begun = QUESTION + [{"role": "assistant", "content": answer}]
    for name, source in (("llama2", LLAMA2_TEMPLATE), ("llama3", LLAMA3_TEMPLATE), ("chatml", CHATML)):
        hf, ours = _both_templates(transformers, tmp_path / name, source, tokenizer)
        text = ours.render(begun, continue_final_message=True)
        assert text == hf.apply_chat_template(begun, tokenize=False, continue_final_message=True), name
        assert text.rstrip().endswith(answer.strip()) and not text.endswith(("<|eot_id|>", "</s>", "<|im_end|>\n"))
        # the begun answer as the whole conversation starts it, no new header after it; a question
        # still gets its header by default
        # (the answer's own trailing space or newline may stay, as in transformers)
        assert ours.render(begun, add_generation_prompt=False).startswith(text.rstrip())
        assert ours.render(QUESTION) == hf.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="add_generation_prompt and continue_final_message exclude each other"):
        ChatTemplate("llama3").render(begun, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(TypeError, match="continue_final_message must be True or False"):
        ChatTemplate("llama3").render(begun, continue_final_message="yes")
    with pytest.raises(ValueError, match="does not write the final message"):
        ChatTemplate("{% for m in messages %}{{ m['role'] }}{% endfor %}").render(begun, continue_final_message=True)


def test_the_share_of_a_spelt_template_counts_the_system_message_s_header(small_model_dir, capsys):
    """generate --chat --system: the template's own text is the system message's header and end
    as well as the user's, all of them blank (only "Be brief." and "Hi" are the prompt's words)."""
    from npllama.cli import main

    tokenizer = load_tokenizer(small_model_dir)
    llama3 = ChatTemplate("llama3")
    own = llama3.own_tokens(tokenizer, [{"role": "system", "content": ""}, {"role": "user", "content": ""}])
    prompt = tokenizer.encode(llama3.prompt("Hi", "Be brief."), bos=False)
    assert own > ChatTemplate("llama3").own_tokens(tokenizer, [{"role": "user", "content": ""}]) + 20
    assert main(["generate", "--model", str(small_model_dir), "--chat-template", "llama3", "--prompt", "Hi",
                 "--system", "Be brief.", "--max-new-tokens", "1", "--temperature", "0", "--backend", "numpy"]) == 0
    assert f"own text takes {own} of this prompt's {len(prompt)} tokens" in capsys.readouterr().err


def test_a_tokenizer_json_holding_the_template_s_markers_gets_no_note(small_model_dir, tmp_path, capsys):
    """LLaMA-3's markers as added tokens of a tokenizer.json (as Meta's folders have them): each is
    one id, so nothing is spelt and nothing is said."""
    pytest.importorskip("tokenizers")
    from npllama.commands.generate import note_spelt_markers

    folder = tmp_path / "model"
    shutil.copytree(small_model_dir, folder)
    pipeline = json.loads(load_tokenizer(folder).hf_files()["tokenizer.json"])
    n = load_tokenizer(folder).vocab_size
    markers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    pipeline["added_tokens"] += [{"id": n + i, "content": token, "single_word": False, "lstrip": False,
                                  "rstrip": False, "normalized": False, "special": True}
                                 for i, token in enumerate(markers)]
    (folder / "tokenizer.json").write_text(json.dumps(pipeline))
    tokenizer, llama3 = load_tokenizer(folder), ChatTemplate("llama3")
    assert [tokenizer.encode(marker, bos=False) for marker in markers] == [[n], [n + 1], [n + 2]]
    assert llama3.spelt_markers(tokenizer) == {}
    note_spelt_markers(llama3, tokenizer, "Be brief.", 128, tokenizer.encode(llama3.prompt("Hi"), bos=False))
    note_spelt_markers(llama3, tokenizer, None, 128)
    assert capsys.readouterr().err == ""
    assert list(llama3.spelt_markers(load_tokenizer(small_model_dir))) == markers   # the same tokenizer without them


def test_a_final_message_the_template_rewrites_is_not_continued_as_in_transformers(small_model_dir):
    """A template that writes the content otherwise than given (upper-cased here): transformers'
    continue_final_message refuses it, since the text no longer ends with the message to go on
    with.  Before: the tag, upper-case already, was found and "SURE, IT IS" was continued."""
    upper = ChatTemplate("{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\\n' }}{% endfor %}")
    begun = QUESTION + [{"role": "assistant", "content": "Sure, it is"}]
    with pytest.raises(ValueError, match="does not write the final message 'Sure, it is' as it is given"):
        upper.render(begun, continue_final_message=True)
    assert upper.render(begun[:-1] + [{"role": "assistant", "content": "SURE"}],
                        continue_final_message=True).endswith("assistant: SURE")


def test_sft_and_eval_choice_say_what_a_template_spelt_in_pieces_costs(small_model_dir, tmp_path, capsys):
    """`finetune sft --chat-template llama3` and `eval choice --template chat` on a model tuned so,
    with an npllama tokenizer: every example and every question spends the spelt headers, said
    as generate --chat says it (npllama.chat.spelt_markers_note).  Before: nothing was said."""
    from npllama.chat import spelt_markers_note
    from npllama.cli import main
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft

    tokenizer = load_tokenizer(small_model_dir)
    rows = [{"prompt": "Hi", "response": "Hello."}] * 2 + [{"prompt": "Run far", "system": "Be brief.",
                                                            "response": "Lily ran to the park."}] * 2
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    llama3 = ChatTemplate("llama3")
    asked = [[{"role": "system", "content": ""}] * ("system" in row) + [{"role": "user", "content": ""},
                                                                        {"role": "assistant", "content": ""}]
             for row in rows]
    own = sum(llama3.own_tokens(tokenizer, m, add_generation_prompt=False) for m in asked) / len(rows)
    total = sum(len(encode_chat(tokenizer, r["prompt"], r["response"], r.get("system"), llama3)[0])
                for r in rows) / len(rows)
    said = []
    out = tmp_path / "sft"
    sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, samples=0, progress=False,
                  val_fraction=0.5, chat_template="llama3", out=str(out)), echo=said.append)
    note = spelt_markers_note(llama3, tokenizer, 128, lambda: f"the template's own text takes {own:.0f} of an "
                              f"example's {total:.0f} tokens on average")
    assert note.endswith("(--chat-template llama2 writes text it has pieces for)") and note in said
    said.clear()
    sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, samples=0, progress=False,
                  val_fraction=0.5, chat_template="llama2"), echo=said.append)
    assert not any("no piece" in line for line in said)

    items = write_jsonl(tmp_path / "items.jsonl", [{"question": "Who?", "choices": ["Tom", "Lily"], "answer": 0}])
    capsys.readouterr()
    assert main(["eval", "choice", "--model", str(out), "--data", str(items), "--template", "chat",
                 "--no-progress", "--backend", "numpy"]) == 0
    tuned = ChatTemplate.for_folder(out, tokenizer)    # llama3's source, as the folder holds it
    asked = tuned.own_tokens(tokenizer, [{"role": "user", "content": ""}])
    note = spelt_markers_note(tuned, tokenizer, 128, lambda: f"the template's own text takes {asked} tokens of "
                              f"each question's prompt")
    assert capsys.readouterr().err == f"[{note}]\n" and "--chat-template" not in note
