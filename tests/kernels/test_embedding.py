"""The embedding's backward kernel equals the reference; the scatter-add accumulates repeated ids.
(The forward lookup has no kernel: the reference serves both backends.)"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import embedding as kernel
from npllama.ops import embedding as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]), V=st.integers(1, 20), D=st.integers(1, 9),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_embedding_equals_reference(dtype, V, D, shape, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((V, D)).astype(dtype)
    tokens = rng.integers(0, V, size=shape)
    tokens.flat[0] = tokens.flat[-1]                   # at least one repeated id (when size > 1)
    dout = rng.standard_normal(tuple(shape) + (D,)).astype(dtype)
    _, cache = reference.embedding_forward(tokens, weight)
    assert_close(kernel.embedding_backward(dout, cache), reference.embedding_backward(dout, cache),
                 "dweight")


def test_repeated_ids_accumulate():
    weight = np.zeros((3, 2))
    _, cache = reference.embedding_forward(np.array([[1, 1, 1]]), weight)
    dweight = kernel.embedding_backward(np.ones((1, 3, 2)), cache)
    assert dweight.tolist() == [[0, 0], [3, 3], [0, 0]]
