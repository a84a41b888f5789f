"""What `finetune sft` learns, checked against what `chat` and `generate --chat` read: the loss
on the tokens the template writes for the assistant and nothing else, and an answer that ends
where the model learned to end it."""
import pytest

from npllama.chat import ChatTemplate
from npllama.runs import load_tokenizer

# Zephyr's template (HuggingFaceH4/zephyr-7b-beta): every message ends with eos_token and a
# newline, so a conversation's text ends with "</s>\n", not with </s>.
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
          "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a b"},
                {"role": "assistant", "content": "c d"}, {"role": "user", "content": "e"},
                {"role": "assistant", "content": "f g h"}]


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[:3]], ids=["two answers", "one answer"])
def test_a_template_that_writes_its_own_eos_gets_no_extra_one(small_model_dir, messages):
    """The ids trained on are the conversation as the template renders it (as transformers'
    apply_chat_template tokenizes it): an EOS is added only for a template that writes none
    after the answer.  Before, Zephyr's "...</s>\\n" got another, counted </s> after the newline:
    a target the template never writes, learned as if the model answered "</s>\\n</s>"."""
    tokenizer = load_tokenizer(small_model_dir)
    template = ChatTemplate(ZEPHYR, tokenizer.id_to_piece(tokenizer.bos_id), tokenizer.id_to_piece(tokenizer.eos_id))
    ids, counted = template.encode_conversation(tokenizer, messages)
    assert ids == tokenizer.encode(template.render(messages, add_generation_prompt=False), bos=False)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    learned = [i for i, c in zip(ids, counted) if c]
    # each answer's text and the </s> after it (decode leaves control pieces out)
    assert tokenizer.decode(learned) == "".join(answers) and learned[-1] == tokenizer.eos_id
    assert learned.count(tokenizer.eos_id) == len(answers)


@pytest.fixture(scope="module")
def spelled_end_of_turn_model(small_model_dir, tmp_path_factory):
    """`finetune sft --chat-template llama3` on a tokenizer without LLaMA-3's control pieces: each
    answer ends with <|eot_id|> spelled in a dozen pieces, which the model learns to write.
    (folder, the SFTResult, the greedy answer to "Hi" with nothing but EOS to stop it)."""
    from npllama.backend import use_backend
    from npllama.datasets import write_jsonl
    from npllama.finetune import SFTConfig, sft
    from npllama.generate import generate
    from npllama.runs import load_model_and_tokenizer

    folder = tmp_path_factory.mktemp("spelled_eot")
    data = write_jsonl(folder / "hi.jsonl", [{"prompt": "Hi", "response": "Hello."}] * 8)
    result = sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=40, lr=3e-2, samples=1, progress=False,
                           max_len=128, chat_template="llama3", out=str(folder / "sft")), echo=lambda *_: None)
    model, tokenizer, _ = load_model_and_tokenizer(folder / "sft")
    template = ChatTemplate.for_folder(folder / "sft", tokenizer)
    assert template.stop_ids(tokenizer, model) == [tokenizer.eos_id]   # <|eot_id|> is no one id here
    prompt = tokenizer.encode(template.prompt("Hi"), bos=False)
    with use_backend("numpy"):
        unstopped = tokenizer.decode(generate(model, prompt, 40, temperature=0, eos_id=tokenizer.eos_id)[len(prompt):])
    # what the tests below need: the model writes the end of turn, and more after it
    assert "<|eot_id|>" in unstopped and not unstopped.endswith("<|eot_id|>"), unstopped
    return folder / "sft", result, unstopped


def test_sft_samples_end_at_a_spelled_end_of_turn(spelled_end_of_turn_model):
    """Before: the sample went on past the <|eot_id|> the model had learned to write ("Hello.<|eot_id|>eot_id|>...")."""
    _, result, unstopped = spelled_end_of_turn_model
    assert result.samples == [unstopped.split("<|eot_id|>")[0]]


def test_generate_chat_stops_at_a_spelled_end_of_turn(spelled_end_of_turn_model, capsys):
    from npllama.cli import main

    folder, _, unstopped = spelled_end_of_turn_model
    assert main(["generate", "--model", str(folder), "--chat", "--prompt", "Hi", "--max-new-tokens", "40",
                 "--temperature", "0", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out == unstopped.split("<|eot_id|>")[0] + "\n"


def test_chat_stops_at_a_spelled_end_of_turn_and_keeps_the_answer_without_it(spelled_end_of_turn_model,
                                                                              monkeypatch, capsys):
    """Each answer ends at the end of turn; the next prompt holds the answer as printed, not the
    end-of-turn text and what the model wrote after it."""
    import io

    from npllama.cli import main

    folder, _, unstopped = spelled_end_of_turn_model
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHi\n"))
    assert main(["chat", "--model", str(folder), "--max-new-tokens", "40", "--temperature", "0",
                 "--backend", "numpy"]) == 0
    answers = capsys.readouterr().out.splitlines()
    assert len(answers) == 2 and answers[0] == unstopped.split("<|eot_id|>")[0], answers
    assert "<|" not in answers[1], answers


def test_the_python_answer_recipe_stops_at_a_spelled_end_of_turn(spelled_end_of_turn_model):
    """npllama/chat.py's docstring (and README): the answer as `npllama chat` shows it, in Python."""
    from npllama.backend import use_backend
    from npllama.generate import StopStrings, answer_text, generate
    from npllama.runs import load_model_and_tokenizer

    folder, _, unstopped = spelled_end_of_turn_model
    model, tokenizer, _ = load_model_and_tokenizer(folder)
    template = ChatTemplate.for_folder(folder, tokenizer)
    ids = tokenizer.encode(template.prompt("Hi"), bos=False)
    stop = StopStrings(tokenizer, template.stop_texts(tokenizer), after=ids, answer=True)
    with use_backend("numpy"):
        new = generate(model, ids, 40, temperature=0, eos_id=template.stop_ids(tokenizer, model), stop=stop)[len(ids):]
    answer = stop.cut(answer_text(tokenizer, ids, new))
    assert answer == unstopped.split("<|eot_id|>")[0] and len(new) < 40
