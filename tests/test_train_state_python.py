"""A training loop of one's own, saved with npllama.io.train_state and resumed from Python, goes on
exactly as the uninterrupted loop: the checkpoint comes back in the dtype it was written in."""
import numpy as np
import pytest

from npllama import Llama, LlamaConfig
from npllama.io.train_state import load_checkpoint, save_checkpoint
from npllama.optim import AdamW, clip_grad_norm

CONFIG = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
BATCHES = [np.random.default_rng(step).integers(0, 32, (2, 7)) for step in range(4)]


def train(model, optimizer, steps):
    losses = []
    for step in steps:
        loss, grads = model.loss_and_grads(BATCHES[step][:, :-1], BATCHES[step][:, 1:])
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads, lr=1e-2)
        losses.append(loss)
    return losses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_checkpoint_loads_in_the_dtype_it_was_saved_in_and_resumes_exactly(dtype, tmp_path):
    model = Llama(CONFIG, seed=0, dtype=dtype)
    optimizer = AdamW(model.params, lr=1e-2)
    uninterrupted = train(model, optimizer, range(4))

    model = Llama(CONFIG, seed=0, dtype=dtype)
    optimizer = AdamW(model.params, lr=1e-2)
    first = train(model, optimizer, range(2))
    save_checkpoint(tmp_path / "checkpoint", model, optimizer.state_dict(), {"step": 2})

    model, optimizer_state, state = load_checkpoint(tmp_path / "checkpoint")   # no dtype given
    assert model.dtype == dtype and {m.dtype for m in optimizer_state["m"].values()} == {np.dtype(dtype)}
    optimizer = AdamW(model.params, lr=1e-2)
    optimizer.load_state_dict(optimizer_state)
    assert first + train(model, optimizer, range(state["step"], 4)) == uninterrupted


def test_an_asked_dtype_still_wins(tmp_path):
    model = Llama(CONFIG, seed=0, dtype=np.float64)
    save_checkpoint(tmp_path / "checkpoint", model, AdamW(model.params).state_dict(), {"step": 0})
    model, optimizer_state, _ = load_checkpoint(tmp_path / "checkpoint", dtype=np.float32)
    assert model.dtype == np.float32 and optimizer_state["v"]["model.norm.weight"].dtype == np.float32


def test_an_optimizer_without_arrays_takes_the_weights_dtype(tmp_path):
    """SGD without momentum saves no arrays: the weights say what the run was trained in."""
    from npllama.optim import SGD

    model = Llama(CONFIG, seed=0, dtype=np.float64)
    save_checkpoint(tmp_path / "checkpoint", model, SGD(model.params, lr=0.1).state_dict(), {"step": 0})
    assert load_checkpoint(tmp_path / "checkpoint")[0].dtype == np.float64


def writer_and_loader(save, folder):
    """(write(step), load) for a checkpoint at `folder` of save_checkpoint's kind ("model") or
    save_params_checkpoint's ("params")."""
    from npllama.io.train_state import load_params_checkpoint, save_params_checkpoint

    model = Llama(CONFIG, seed=0)
    optimizer_state = AdamW(model.params).state_dict()
    if save == "model":
        return (lambda step: save_checkpoint(folder, model, optimizer_state, {"step": step})), load_checkpoint
    return ((lambda step: save_params_checkpoint(folder, model.params, optimizer_state, {"step": step})),
            load_params_checkpoint)


@pytest.mark.parametrize("save", ["model", "params"])
def test_a_folder_of_ones_own_files_is_refused_not_replaced(save, tmp_path):
    """save_checkpoint replaces a checkpoint folder whole; a folder holding anything else (the
    user's data, a run's log) is refused, naming it, and left as it was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    write, load = writer_and_loader(save, folder)
    with pytest.raises(ValueError, match=r"mine.*not a training checkpoint.*notes\.txt"):
        write(0)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]

    (folder / "notes.txt").unlink()
    write(1)                                                  # an empty folder is written into
    write(2)                                                  # and so is a checkpoint, replaced
    assert load(folder)[2]["step"] == 2


@pytest.mark.parametrize("save", ["model", "params"])
def test_a_checkpoint_folder_with_a_stray_file_is_still_a_checkpoint_and_replaced(save, tmp_path):
    """A file browser's .DS_Store in a checkpoint folder does not make it "not a training
    checkpoint": `npllama train` saves its run's checkpoint/ over it at every interval and stop."""
    folder = tmp_path / "checkpoint"
    write, load = writer_and_loader(save, folder)
    write(1)
    (folder / ".DS_Store").write_bytes(b"\0")
    write(2)
    assert load(folder)[2]["step"] == 2


def test_a_numpy_scalar_without_a_python_number_is_refused_as_a_type_error(tmp_path):
    """np.longdouble's .item() is itself (no Python float holds it): refused naming its type, not
    a RecursionError from json asking the fallback again and again."""
    model = Llama(CONFIG, seed=0)
    with pytest.raises(TypeError, match="longdouble"):
        save_checkpoint(tmp_path / "checkpoint", model, AdamW(model.params).state_dict(),
                        {"step": 0, "loss": np.longdouble(0.1)})
    assert not (tmp_path / "checkpoint").exists()


def test_numpy_scalars_in_the_state_are_saved_as_numbers_and_other_objects_refused_naming_their_type(tmp_path):
    """A loop's step counter or loss often is a NumPy scalar (np.int64 from an array, a float32
    loss): saved as the number it holds.  An object JSON cannot hold is refused, named."""
    model = Llama(CONFIG, seed=0)
    optimizer_state = AdamW(model.params).state_dict()
    state = {"step": np.int64(3), "loss": np.float32(1.5), "best": [np.float64(0.25)], "done": np.bool_(False)}
    save_checkpoint(tmp_path / "checkpoint", model, optimizer_state, state)
    loaded = load_checkpoint(tmp_path / "checkpoint")[2]
    assert {key: loaded[key] for key in state} == {"step": 3, "loss": 1.5, "best": [0.25], "done": False}
    assert type(loaded["step"]) is int
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(tmp_path / "other", model, optimizer_state, {"step": 0, "rng": np.zeros(3)})
