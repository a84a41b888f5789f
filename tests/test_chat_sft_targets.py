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
