"""describe_model_path: a file or folder of the wrong kind is named, with how to load it."""
import json
import pickle
import zipfile

import numpy as np
import pytest
from gguf_files import write_gguf_header
from llama2c_files import random_llama2c_weights, write_legacy, write_llama2c_tokenizer, write_v2

from npllama import Llama, LlamaConfig
from npllama.io import write_safetensors
from npllama.io.describe import describe_model_path

TINY = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                   num_attention_heads=2, max_position_embeddings=16)


def _zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))


def _safetensors(path):
    write_safetensors(path, {"x": np.zeros(3, np.float32)})


def _hf(path):
    Llama(TINY).save_pretrained(path)


def _hf_pickle(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY.to_dict()))
    (path / "pytorch_model.bin").write_bytes(pickle.dumps({}, protocol=2))


def _adapter(path):
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")


def _classification_adapter(path):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS",
                                                          "base_model_name_or_path": "runs/tiny/model"}))


def _causal_adapter(path):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))


def _meta(path):
    path.mkdir()
    (path / "params.json").write_text("{}")
    (path / "consolidated.00.pth").write_bytes(b"PK\x03\x04")


def _folder_holding_a_gguf(path):
    path.mkdir()
    write_gguf_header(path / "model-q8.gguf")


def _plain_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("hello")


def _tokenizer_model(path):
    from npllama.corpus import make_default_corpus
    from npllama.tokenizer import Tokenizer

    Tokenizer.train(make_default_corpus()[:200], path.with_suffix(""), vocab_size=400)


def _tokenizer_bin(path):
    sp = path.parent / "sp.model"
    _tokenizer_model(sp)
    write_llama2c_tokenizer(path, sp)


CASES = [
    ("model.gguf", write_gguf_header, ["GGUF file", "llama.cpp", "gguf_file="]),
    ("stories.bin", lambda p: write_legacy(p, random_llama2c_weights()),
     ["llama2.c checkpoint (legacy float32, 2 layers, dim 16)", "npllama convert llama2c", "load_llama2c"]),
    ("q80.bin", lambda p: write_v2(p, random_llama2c_weights()), ["llama2.c checkpoint (version 2 int8 Q8_0"]),
    ("model.safetensors", _safetensors, ["safetensors file", "config.json"]),
    ("ckpt.pt", _zip, ["PyTorch checkpoint", "never opens", "export.py"]),
    ("old.bin", lambda p: p.write_bytes(pickle.dumps({"w": 1}, protocol=4)), ["pickle", "never opens"]),
    ("hf", _hf, ["Hugging Face model folder", "from_pretrained"]),
    ("hf-pickle", _hf_pickle, ["pytorch_model.bin", "never opens", "save_pretrained"]),
    ("adapter", _adapter, ["adapter", "base model"]),
    # the base its config names, and the flags and commands that attach it (was "load its base model
    # and attach the adapter", with no base and no flag)
    ("cls_adapter", _classification_adapter, ["load its base model ('runs/tiny/model', as its adapter_config.json",
                                              "--model BASE --adapter ", "cls_adapter in `npllama classify`"]),
    ("lm_adapter", _causal_adapter, ["load its base model and attach", "lm_adapter in `npllama generate`, `chat` "
                                     "and `eval`"]),
    ("meta", _meta, ["Meta's original LLaMA", "convert_llama_weights_to_hf"]),
    ("folder", _folder_holding_a_gguf, ["without config.json", "model-q8.gguf", "GGUF file"]),
    ("plain", _plain_folder, ["without config.json", "not a Hugging Face model folder"]),
    ("config.json", lambda p: p.write_text("{}"), ["config.json: pass the folder"]),
    ("tokenizer.model", _tokenizer_model, ["SentencePiece tokenizer, not a model"]),
    ("tokenizer.bin", _tokenizer_bin, ["llama2.c's tokenizer.bin (400 pieces)", "--tokenizer"]),
    ("empty.bin", lambda p: p.write_bytes(b""), ["is empty"]),
    ("noise.dat", lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)), ["unknown kind (1,000 bytes)"]),
]


@pytest.mark.parametrize("name, make, phrases", CASES, ids=[c[0] for c in CASES])
def test_each_kind_is_named_with_what_to_do(tmp_path, name, make, phrases):
    path = tmp_path / name
    make(path)
    message = describe_model_path(path)
    assert message.startswith(repr(str(path)))
    for phrase in phrases:
        assert phrase in message, message


def test_missing_path_and_truncated_llama2c(tmp_path):
    assert describe_model_path(tmp_path / "nothing").endswith("does not exist")
    with pytest.raises(TypeError, match="path must be a file or folder path"):
        describe_model_path(3)
    path = tmp_path / "v2.bin"
    write_v2(path, random_llama2c_weights())
    path.write_bytes(path.read_bytes()[:-10])
    assert "llama2.c's \"ak42\" magic but cannot be used: the file is 7,286 bytes" in describe_model_path(path)
    path = tmp_path / "legacy.bin"
    write_legacy(path, random_llama2c_weights())
    path.write_bytes(path.read_bytes()[:-10])
    assert "starts like a llama2.c checkpoint, but the file is" in describe_model_path(path)


def test_a_gguf_npllama_cannot_read_is_not_sent_to_convert_gguf(tmp_path):
    """A GGUF of another architecture, or one cut short, was described as any GGUF: "turn a LLaMA ...
    into a model folder with `npllama convert gguf`", which then refused it."""
    gguf = pytest.importorskip("gguf")
    other = tmp_path / "gpt2.gguf"
    write_gguf_header(other, architecture="gpt2")
    message = describe_model_path(other)
    assert "GGUF file" in message and "of a 'gpt2' model" in message and "LLaMA" in message, message
    assert "npllama convert gguf" not in message and "gguf_file=" in message, message
    cut = tmp_path / "cut.gguf"
    writer = gguf.GGUFWriter(cut, "llama")
    writer.add_tensor("token_embd.weight", np.ones((32, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cut.write_bytes(cut.read_bytes()[:-100])   # a download or copy cut short
    message = describe_model_path(cut)
    assert "GGUF's magic but cannot be read" in message and "npllama convert gguf" not in message, message
    write_gguf_header(other, architecture="llama")
    assert "npllama convert gguf gpt2.gguf" in describe_model_path(other)


def test_a_numpy_archive_is_not_called_a_pytorch_checkpoint(tmp_path):
    import numpy as np

    from npllama.io.describe import describe_model_path

    with open(tmp_path / "trace.npz", "wb") as f:
        np.savez(f, a=np.zeros(3))
    said = describe_model_path(tmp_path / "trace.npz")
    assert "NumPy archive" in said and "Trace.load" in said and "PyTorch" not in said


def _fine_tune_run(run, finished: bool):
    """A `finetune sop --out run` folder as the run leaves it: its settings, its checkpoint/ (the
    trained tensors, the optimizer's state), and once finished its model at the top."""
    (run / "checkpoint").mkdir(parents=True)
    (run / "sop_config.json").write_text("{}")
    (run / "checkpoint" / "training_state.json").write_text(json.dumps({"step": 4}))
    for name in ("params.safetensors", "optimizer.safetensors"):
        _safetensors(run / "checkpoint" / name)
    if finished:
        Llama(TINY).save_pretrained(run)


@pytest.mark.parametrize("finished", [True, False])
def test_a_fine_tunes_checkpoint_is_named_with_its_run_not_as_weights_to_rename(tmp_path, finished):
    """A fine-tune's checkpoint/ holds what resumes the run (params.safetensors: only what it trains),
    no model: not "put optimizer.safetensors in a folder as model.safetensors", but the run folder to
    pass instead, or, unfinished, how to finish it."""
    run = tmp_path / "sop run"
    _fine_tune_run(run, finished)
    message = describe_model_path(run / "checkpoint")
    assert "model.safetensors next to" not in message and "params.safetensors holds only" in message, message
    assert "training checkpoint" in message and f"the run folder {str(run)!r}" in message, message
    if finished:
        assert "Hugging Face model folder" in message and "pass it as --model" in message, message
    else:
        assert f"`npllama finetune sop --out '{run}' --resume`" in message, message


def test_a_train_checkpoint_without_its_model_names_the_run(tmp_path):
    run = tmp_path / "run"
    Llama(TINY).save_pretrained(run / "model")
    (run / "train_config.json").write_text("{}")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "training_state.json").write_text(json.dumps({"step": 4}))
    _safetensors(run / "checkpoint" / "optimizer.safetensors")
    message = describe_model_path(run / "checkpoint")
    assert "model.safetensors next to" not in message and "model/ folder is missing" in message, message
    assert f"the run folder {str(run)!r} is an npllama run folder: pass it as --model" in message, message


def test_a_gguf_without_its_architecture_names_the_field(tmp_path):
    """A GGUF with no general.architecture was described as "has GGUF's magic but cannot be read:
    the file is missing" -- of a file that is there (the field's name was dropped)."""
    pytest.importorskip("gguf")
    path = tmp_path / "bare.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))   # version 3, no tensors, no fields
    message = describe_model_path(path)
    assert "general.architecture" in message and "is missing" in message, message
    assert "the file is missing" not in message and "cannot be read" not in message, message


def test_a_message_that_names_the_path_says_what_it_is_without_naming_it_again(tmp_path, capsys):
    """Each message that names the path, then says what it is (refuse_a_model_file, "holds no
    model", sop's head, load_hf_folder, convert's checkpoint) names it once: "'x' is a file, not a
    model folder: it is a file of unknown kind", not "...: 'x' is a file of unknown kind"."""
    from npllama.cli import main
    from npllama.finetune_sop import load_sentence_order
    from npllama.io.hf import load_hf_folder
    from npllama.io.train_state import PARAMS_FILE

    text = tmp_path / "notes.txt"
    text.write_text("some notes, not a model\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    write_safetensors(checkpoint / PARAMS_FILE, {"x": np.zeros(3, np.float32)})
    said = []
    for argv in (["generate", "--model", str(text), "--prompt", "hi"],
                 ["export", "gguf", "--model", str(text), "--out", str(tmp_path / "x.gguf")],
                 ["train", "--init-from", str(text), "--steps", "1", "--out", str(tmp_path / "r")],
                 ["generate", "--model", str(empty), "--prompt", "hi"],
                 ["convert", "gguf", str(text), "--out", str(tmp_path / "c")],
                 ["convert", "llama2c", str(empty), "--out", str(tmp_path / "c")]):
        assert main(argv) == 2, argv
        said.append((argv, capsys.readouterr().err.strip()))
    for call, path in [(lambda: load_sentence_order(checkpoint), checkpoint), (lambda: load_hf_folder(text), text)]:
        with pytest.raises(FileNotFoundError) as caught:
            call()
        said.append((path, str(caught.value)))
    for where, message in said:
        path = next(p for p in (text, empty, checkpoint) if str(p) in message)
        assert message.count(str(path)) == 1 and ": it " in message, (where, message)


def test_a_model_file_given_with_a_tilde_is_named_as_typed(tmp_path, monkeypatch, capsys):
    """--model/--init-from '~/notes.txt' is named as typed, as the flags named it before the shared
    check (refuse_a_model_file), not as the path the tilde expands to."""
    from npllama.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes.txt").write_text("some notes, not a model\n")
    for argv in (["export", "gguf", "--model", "~/notes.txt", "--out", str(tmp_path / "x.gguf")],
                 ["train", "--init-from", "~/notes.txt", "--steps", "1", "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{argv[argv.index('~/notes.txt') - 1]} '~/notes.txt' is a file, not a model folder: it is" in err, err
