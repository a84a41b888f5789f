"""A conversation whose prompt leaves no response token to learn from is refused naming its line,
and the remedy named is the limit that cut it: --max-len, or the model's context when --max-len
already reaches past it (raising --max-len then changes nothing)."""
import json

import pytest

from npllama.finetune import SFTConfig, sft


def quiet(*_args):
    pass


def sft_file(tmp_path, words: int):
    path = tmp_path / "chats.jsonl"
    rows = [{"prompt": f"Say {i}.", "response": "OK."} for i in range(6)]
    rows.append({"prompt": " ".join(["story"] * words), "response": "OK."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(small_model_dir, data, max_len):
    from npllama import use_backend

    with use_backend("numpy"):
        sft(SFTConfig(base=str(small_model_dir), data=str(data), steps=1, batch_size=2, max_len=max_len,
                      samples=0, progress=False), echo=quiet)


def test_a_prompt_longer_than_max_len_asks_for_a_larger_max_len(small_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"line 7: .*fills all 32 tokens.*raise --max-len"):
        run(small_model_dir, sft_file(tmp_path, 60), max_len=32)


@pytest.mark.parametrize("max_len", [1000, 129])
def test_a_prompt_longer_than_the_context_does_not_ask_for_a_larger_max_len(small_model_dir, tmp_path, max_len):
    # the model's context is 128 positions, so --max-len 1000 (or 129) keeps 129 tokens: raising it changes nothing
    with pytest.raises(ValueError, match=r"line 7: .*fills all 129 tokens") as refused:
        run(small_model_dir, sft_file(tmp_path, 400), max_len=max_len)
    message = str(refused.value)
    assert "--max-len" not in message, message
    assert "max_position_embeddings" in message and "shorten the prompt" in message, message
