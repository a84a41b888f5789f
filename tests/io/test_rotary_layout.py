"""The RoPE layout permutation and the SentencePiece model writer."""
import numpy as np
import pytest

from npllama.io.rotary_layout import half_split_to_interleaved, interleaved_to_half_split
from npllama.io.sentencepiece_model import BYTE, CONTROL, NORMAL, UNKNOWN, build_bpe_model
from npllama.ops.rope import rope_cos_sin, rope_forward


@pytest.mark.parametrize("n_heads, head_dim", [(1, 2), (3, 4), (2, 8)])
def test_permutation_turns_adjacent_pairs_into_halves(n_heads, head_dim):
    rng = np.random.default_rng(0)
    w_meta = rng.standard_normal((n_heads * head_dim, 5))
    w_hf = interleaved_to_half_split(w_meta, n_heads)
    np.testing.assert_array_equal(half_split_to_interleaved(w_hf, n_heads), w_meta)
    # Rotating adjacent pairs of x @ w_meta.T is rotating halves of x @ w_hf.T (the same values, moved).
    x, position, half = rng.standard_normal(5), 3, head_dim // 2
    inv_freq = 1.0 / 10000.0 ** (np.arange(half) * 2 / head_dim)
    q_meta = (w_meta @ x).reshape(n_heads, half, 2)
    angle = position * inv_freq
    rotated_meta = np.stack([q_meta[..., 0] * np.cos(angle) - q_meta[..., 1] * np.sin(angle),
                             q_meta[..., 0] * np.sin(angle) + q_meta[..., 1] * np.cos(angle)], axis=-1)
    cos, sin = rope_cos_sin(np.array([position]), head_dim, 10000.0)
    q_hf = (w_hf @ x).reshape(1, n_heads, 1, head_dim)
    rotated_hf, _ = rope_forward(q_hf, cos, sin)
    np.testing.assert_allclose(interleaved_to_half_split(rotated_meta.reshape(-1, 1), n_heads).ravel(),
                               rotated_hf.ravel(), atol=1e-12)


def test_permutation_bad_input():
    with pytest.raises(ValueError, match="not n_heads .2. heads of an even head_dim"):
        interleaved_to_half_split(np.zeros((6, 3)), 2)
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        half_split_to_interleaved(np.zeros((4, 3)), 0)
    with pytest.raises(TypeError, match="weight must be a numpy array"):
        interleaved_to_half_split([[1.0, 2.0]], 1)


def test_sentencepiece_model_loads_with_its_pieces(tmp_path):
    from npllama.tokenizer import Tokenizer

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "a", "b", "\u2581a", "ab"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * 5
    (tmp_path / "t.model").write_bytes(build_bpe_model(pieces, scores, types, byte_fallback=True))
    tok = Tokenizer(tmp_path / "t.model")
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (264, 0, 1, 2)
    assert tok.encode("ab a", bos=True) == [1, 262, 261, 262]  # ▁a (score -4) beats ab (-5); then b
    assert tok.encode("z", bos=False) == [259, 3 + ord("z")]  # no piece: its byte
    assert tok.decode(tok.encode("ab a\u00e9")) == "ab a\u00e9"


@pytest.mark.parametrize("pieces, types, match", [
    (["a", "a"], [UNKNOWN, NORMAL], "repeats piece 0"),
    (["<unk>", "b"], [NORMAL, NORMAL], "exactly one UNKNOWN piece"),
    (["<unk>", ""], [UNKNOWN, NORMAL], "piece 1 must be a non-empty string"),
    (["<unk>", "b"], [UNKNOWN, 9], "piece 1 has type 9"),
])
def test_sentencepiece_model_bad_input(pieces, types, match):
    with pytest.raises(ValueError, match=match):
        build_bpe_model(pieces, [0.0] * len(pieces), types, byte_fallback=False)
