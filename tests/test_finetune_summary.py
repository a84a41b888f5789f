"""What `finetune classify` prints: the share of trainable parameters of the classifier itself
(no unused LM head), where the data came from, and a loss change that compares different steps."""
import json

import pytest

from npllama import Llama, LlamaConfig, datasets, use_backend
from npllama.finetune import ClassifyConfig, classify, loss_change
from npllama.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("summary")
    texts = [r["text"] for r in datasets.make_dataset("sentiment", 400)]
    tokenizer = Tokenizer.train(texts, folder / "tok", vocab_size=360)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=48)
    Llama(config, seed=0).save_pretrained(folder / "base",
                                          extra_files={"tokenizer.model": (folder / "tok.model").read_bytes()})
    return folder / "base"


def test_loss_change_never_compares_a_mean_with_itself():
    unit = "training loss (nats per text)"
    assert loss_change([2.0], "classify") == f"{unit} 2.000 (one step)"
    assert loss_change([2.0, 1.0], "classify") == f"{unit} 2.000 -> 1.000 (first -> last step)"
    assert loss_change([2.0, 2.0, 1.0, 1.0, 0.5], "classify") == f"{unit} 2.000 -> 0.750 (mean of the first -> last 2 steps)"
    assert loss_change([3.0] * 10 + [1.0] * 15, "classify").startswith(f"{unit} 3.000 -> 1.000 (mean of the first -> last 10")


def test_the_banner_and_the_summary(base_dir, tmp_path):
    said = []
    with use_backend("numpy"):
        full = classify(ClassifyConfig(base=str(base_dir), steps=4, max_len=24, progress=False), echo=said.append)
    banner = said[0]
    assert "every weight" in banner and "(100.00%)" in banner and full.trainable == full.total
    assert " on the built-in sentiment set:" in banner
    assert any("(first -> last 2 steps)" in line or "mean of the first -> last 2" in line for line in said), said
    # Before: "training loss 0.69 -> 0.68", no unit: a classifier's is a mean over its texts, not tokens
    assert any(line.startswith("4 steps in ") and "; training loss (nats per text) " in line for line in said), said
    rows = [{"text": r["text"], "label": r["label"]} for r in datasets.make_dataset("sentiment", 40)]
    (tmp_path / "c_ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    said.clear()
    with use_backend("numpy"):
        classify(ClassifyConfig(base=str(base_dir), data=str(tmp_path / "c_ok.jsonl"), steps=2, max_len=24,
                                progress=False), echo=said.append)
    assert f" on {tmp_path / 'c_ok.jsonl'}:" in said[0] and "on the " not in said[0]
