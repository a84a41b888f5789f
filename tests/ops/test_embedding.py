"""Embedding: out = weight[tokens]; backward scatter-adds dout into the rows that were read."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op
from npllama.ops.embedding import embedding_backward, embedding_forward

lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def _setup(seed, lead_shape, V, D, dtype=np.float64):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=lead_shape)
    weight = rng.standard_normal((V, D)).astype(dtype)
    return rng, tokens, weight


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 6), D=st.integers(1, 4))
def test_forward_reads_one_row_per_token(seed, lead_shape, V, D):
    _, tokens, weight = _setup(seed, lead_shape, V, D)
    out, _ = embedding_forward(tokens, weight)
    assert out.shape == lead_shape + (D,)
    for idx in np.ndindex(lead_shape):
        np.testing.assert_array_equal(out[idx], weight[tokens[idx]])


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 5), D=st.integers(1, 4))
def test_gradcheck(seed, lead_shape, V, D):
    # V is small next to the number of tokens, so ids repeat often
    _, tokens, weight = _setup(seed, lead_shape, V, D)
    report = check_op(embedding_forward, embedding_backward, [tokens, weight], wrt=[1],
                      names=["tokens", "weight"], seed=seed % 1000)
    report.raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, V=st.integers(1, 6), D=st.integers(1, 4))
def test_backward_equals_onehot_matmul(seed, lead_shape, V, D):
    rng, tokens, weight = _setup(seed, lead_shape, V, D)
    out, cache = embedding_forward(tokens, weight)
    dout = rng.standard_normal(out.shape)
    onehot = np.eye(V)[tokens.reshape(-1)]                   # (N, V)
    expected = onehot.T @ dout.reshape(-1, D)                # (V, D)
    np.testing.assert_allclose(embedding_backward(dout, cache), expected, rtol=1e-12, atol=1e-12)


def test_repeated_tokens_accumulate_and_unused_rows_are_zero():
    weight = np.arange(12, dtype=np.float64).reshape(4, 3)
    tokens = np.array([[2, 2], [0, 2]])
    _, cache = embedding_forward(tokens, weight)
    dout = np.array([[[1.0, 2, 3], [10, 20, 30]], [[-1, -1, -1], [100, 200, 300]]])
    dweight = embedding_backward(dout, cache)
    np.testing.assert_array_equal(dweight[2], [111.0, 222, 333])
    np.testing.assert_array_equal(dweight[0], [-1.0, -1, -1])
    np.testing.assert_array_equal(dweight[1], 0)
    np.testing.assert_array_equal(dweight[3], 0)


def test_all_tokens_the_same_id_gradcheck():
    weight = np.random.default_rng(1).standard_normal((3, 2))
    tokens = np.full((2, 5), 1)
    check_op(embedding_forward, embedding_backward, [tokens, weight], wrt=[1]).raise_if_failed()


def test_empty_tokens():
    weight = np.ones((3, 2))
    out, cache = embedding_forward(np.zeros((0,), dtype=np.int64), weight)
    assert out.shape == (0, 2)
    np.testing.assert_array_equal(embedding_backward(np.zeros((0, 2)), cache), np.zeros((3, 2)))


def test_output_does_not_alias_weight():
    weight = np.ones((3, 2))
    out, _ = embedding_forward(np.array([0, 1]), weight)
    out[...] = 7.0
    np.testing.assert_array_equal(weight, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("token_dtype", [np.int32, np.int64, np.uint16])
def test_dtype_follows_weight(dtype, token_dtype):
    weight = np.ones((5, 3), dtype=dtype)
    tokens = np.array([[0, 4, 4]], dtype=token_dtype)
    out, cache = embedding_forward(tokens, weight)
    assert out.dtype == dtype
    assert embedding_backward(np.ones(out.shape, dtype=dtype), cache).dtype == dtype


@pytest.mark.parametrize("bad_id", [5, 6, 1000, -1])
def test_out_of_range_ids_rejected(bad_id):
    weight = np.ones((5, 3))
    tokens = np.array([0, 1, bad_id, 2])
    with pytest.raises(ValueError, match="tokens") as info:
        embedding_forward(tokens, weight)
    assert str(bad_id) in str(info.value) and "V = 5" in str(info.value)


def test_float_tokens_rejected():
    with pytest.raises(TypeError, match="tokens"):
        embedding_forward(np.array([0.0, 1.0]), np.ones((5, 3)))


def test_list_tokens_rejected():
    with pytest.raises(TypeError, match="tokens"):
        embedding_forward([0, 1], np.ones((5, 3)))


def test_weight_must_be_2d():
    with pytest.raises(ValueError, match="weight"):
        embedding_forward(np.array([0, 1]), np.ones(5))


def test_integer_weight_rejected():
    with pytest.raises(TypeError, match="weight"):
        embedding_forward(np.array([0, 1]), np.ones((5, 3), dtype=np.int64))


def test_backward_rejects_wrong_dout_shape():
    _, cache = embedding_forward(np.array([[0, 1]]), np.ones((5, 3)))
    with pytest.raises(ValueError, match="dout"):
        embedding_backward(np.ones((2, 3)), cache)
