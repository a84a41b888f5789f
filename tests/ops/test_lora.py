"""LoRA: y = x W^T + scaling ((x * dropout_mask) A^T) B^T, the base weight frozen."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npllama.gradcheck import check_op
from npllama.ops.lora import lora_backward, lora_forward

seeds = st.integers(0, 2**32 - 1)
lead_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)


def _setup(seed, lead_shape, n_in, n_out, r, dropout_p=0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead_shape + (n_in,)).astype(dtype)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    lora_A = rng.standard_normal((r, n_in)).astype(dtype)
    lora_B = rng.standard_normal((n_out, r)).astype(dtype)  # nonzero: PEFT's zero init would hide bugs
    mask = None
    if dropout_p > 0:
        mask = ((rng.random(x.shape) >= dropout_p) / (1 - dropout_p)).astype(dtype)
    return x, weight, lora_A, lora_B, mask


@settings(max_examples=25, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, n_in=st.integers(1, 5), n_out=st.integers(1, 5),
       r=st.integers(1, 3), scaling=st.floats(0.25, 4) | st.floats(-4, -0.25),
       dropout_p=st.sampled_from([0.0, 0.5]))
def test_gradcheck(seed, lead_shape, n_in, n_out, r, scaling, dropout_p):
    # |scaling| >= 0.25: a near-zero scaling makes the adapter's gradients so small that the
    # round-off of the (much larger) base output, divided by the finite-difference step, dominates.
    x, weight, lora_A, lora_B, mask = _setup(seed, lead_shape, n_in, n_out, r, dropout_p)
    report = check_op(lora_forward, lora_backward, [x, weight, lora_A, lora_B], wrt=[0, 2, 3],
                      names=["x", "weight", "lora_A", "lora_B"], extra_args=(scaling, mask),
                      seed=seed % 1000)
    report.raise_if_failed()


@settings(max_examples=20, deadline=None)
@given(seed=seeds, lead_shape=lead_shapes, n_in=st.integers(1, 6), n_out=st.integers(1, 6),
       r=st.integers(1, 3), scaling=st.floats(-4, 4))
def test_forward_equals_merged_weight(seed, lead_shape, n_in, n_out, r, scaling):
    # Without dropout the adapter is the linear layer with weight W + scaling * B A.
    x, weight, lora_A, lora_B, _ = _setup(seed, lead_shape, n_in, n_out, r)
    y, _ = lora_forward(x, weight, lora_A, lora_B, scaling)
    np.testing.assert_allclose(y, x @ (weight + scaling * lora_B @ lora_A).T, rtol=1e-12, atol=1e-12)


def test_dropout_mask_acts_on_adapter_input_only():
    x, weight, lora_A, lora_B, _ = _setup(0, (2, 3), 4, 5, 2)
    zeros = np.zeros_like(x)
    y, cache = lora_forward(x, weight, lora_A, lora_B, 2.0, dropout_mask=zeros)
    np.testing.assert_allclose(y, x @ weight.T, rtol=1e-14)  # everything dropped: the base layer
    dx, dA, dB = lora_backward(np.ones_like(y), cache)
    np.testing.assert_allclose(dx, np.ones_like(y) @ weight, rtol=1e-14)
    assert not dA.any()  # the adapter saw only zeros


def test_zero_B_gives_base_output_and_gradient_only_for_B():
    # PEFT's init: B = 0, so a fresh adapter changes nothing; only B gets a gradient at first.
    x, weight, lora_A, _, _ = _setup(1, (3,), 4, 5, 2)
    lora_B = np.zeros((5, 2))
    y, cache = lora_forward(x, weight, lora_A, lora_B, 8.0)
    np.testing.assert_allclose(y, x @ weight.T, rtol=1e-14)
    _, dA, dB = lora_backward(np.ones_like(y), cache)
    assert not dA.any() and dB.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(dtype):
    x, weight, lora_A, lora_B, mask = _setup(2, (2, 3), 4, 5, 2, dropout_p=0.25, dtype=dtype)
    y, cache = lora_forward(x, weight, lora_A, lora_B, 2.0, mask)
    assert y.dtype == dtype
    assert all(g.dtype == dtype for g in lora_backward(np.ones_like(y), cache))


def test_bad_inputs():
    x, weight, lora_A, lora_B, _ = _setup(3, (2,), 4, 5, 2)
    with pytest.raises(ValueError, match="lora_A must have shape"):
        lora_forward(x, weight, lora_A[:, :3], lora_B, 1.0)
    with pytest.raises(ValueError, match="lora_B must have shape"):
        lora_forward(x, weight, lora_A, lora_B[:, :1], 1.0)
    with pytest.raises(ValueError, match="x has last dimension"):
        lora_forward(x[:, :3], weight, lora_A, lora_B, 1.0)
    with pytest.raises(TypeError, match="dtypes must match"):
        lora_forward(x, weight, lora_A.astype(np.float32), lora_B, 1.0)
    with pytest.raises(TypeError, match="scaling"):
        lora_forward(x, weight, lora_A, lora_B, "2")
    with pytest.raises(TypeError, match="scaling"):
        lora_forward(x, weight, lora_A, lora_B, float("nan"))
    with pytest.raises(ValueError, match="dropout_mask must have the shape"):
        lora_forward(x, weight, lora_A, lora_B, 1.0, dropout_mask=np.ones((3, 4)))
    with pytest.raises(TypeError, match="lora_A must be a numpy array"):
        lora_forward(x, weight, lora_A.tolist(), lora_B, 1.0)
