"""SwiGLU: the stable silu, the gated activation, the full feed-forward block, bad input."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.gradcheck import check_op
from npllama.ops.swiglu import (sigmoid, swiglu_act_backward, swiglu_act_forward, swiglu_backward,
                                swiglu_forward)

leading_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


def _silu(z):
    act, _ = swiglu_act_forward(z, np.ones_like(z))
    return act


# ----- silu ------------------------------------------------------------------------------------

def test_silu_known_values():
    z = np.array([0.0, 1.0, -1.0, 2.0])
    expected = z / (1 + np.exp(-z))  # safe in this range
    np.testing.assert_allclose(_silu(z), expected, rtol=1e-15)
    assert _silu(np.array([0.0]))[0] == 0.0
    assert _silu(np.array([1.0]))[0] == pytest.approx(0.7310585786300049, rel=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_is_stable_for_large_inputs(dtype):
    z = np.array([-1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        act, cache = swiglu_act_forward(z, np.ones_like(z))
        dgate, dup = swiglu_act_backward(np.ones_like(z), cache)
        s = sigmoid(z)
    assert act.dtype == dtype and dgate.dtype == dtype
    assert np.all(np.isfinite(act)) and np.all(np.isfinite(dgate)) and np.all(np.isfinite(dup))
    np.testing.assert_allclose(act[3:], z[3:], rtol=1e-6)    # silu(z) -> z for large z
    np.testing.assert_allclose(act[:2], 0.0, atol=1e-30)      # silu(z) -> 0 for very negative z
    np.testing.assert_allclose(dgate[3:], 1.0, rtol=1e-6)    # silu'(z) -> 1
    np.testing.assert_allclose(dgate[:2], 0.0, atol=1e-30)   # silu'(z) -> 0
    np.testing.assert_allclose(s, [0, 0, np.exp(-30.0), 1, 1, 1], rtol=1e-6, atol=1e-30)


def test_silu_minimum():
    # silu has its minimum at z* = -1.2784645..., where silu'(z*) = 0, value -0.2784645...
    z = np.array([-1.2784645427610738])
    act, cache = swiglu_act_forward(z, np.ones_like(z))
    dgate, _ = swiglu_act_backward(np.ones_like(z), cache)
    assert act[0] == pytest.approx(-0.2784645427610738, rel=1e-12)
    assert abs(dgate[0]) < 1e-14


# ----- the gated activation --------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(shape=leading_shapes, seed=st.integers(0, 2**31 - 1))
def test_act_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    gate, up = 3 * rng.standard_normal(shape), rng.standard_normal(shape)
    check_op(swiglu_act_forward, swiglu_act_backward, [gate, up], names=["gate", "up"],
             seed=seed).raise_if_failed()


# ----- the feed-forward block ------------------------------------------------------------------

def _weights(rng, D, F, dtype=np.float64):
    return (rng.standard_normal((F, D)).astype(dtype), rng.standard_normal((F, D)).astype(dtype),
            rng.standard_normal((D, F)).astype(dtype))


def test_forward_matches_the_formula_row_by_row():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    w_gate, w_up, w_down = _weights(rng, 4, 6)
    out, _ = swiglu_forward(x, w_gate, w_up, w_down)
    assert out.shape == (2, 3, 4)
    for b in range(2):
        for t in range(3):
            g = w_gate @ x[b, t]
            u = w_up @ x[b, t]
            expected = w_down @ (g / (1 + np.exp(-g)) * u)
            np.testing.assert_allclose(out[b, t], expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(shape=leading_shapes, D=st.integers(1, 5), F=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_swiglu_gradcheck(shape, D, F, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape + (D,))
    w_gate, w_up, w_down = _weights(rng, D, F)
    check_op(swiglu_forward, swiglu_backward, [x, w_gate, w_up, w_down],
             names=["x", "w_gate", "w_up", "w_down"], seed=seed).raise_if_failed()


def test_float32_stays_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    weights = _weights(rng, 3, 5, np.float32)
    out, cache = swiglu_forward(x, *weights)
    grads = swiglu_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert [g.shape for g in grads] == [(2, 3), (5, 3), (5, 3), (3, 5)]


# ----- bad input -------------------------------------------------------------------------------

def test_rejects_bad_shapes_and_dtypes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4))
    w_gate, w_up, w_down = _weights(rng, 4, 6)
    with pytest.raises(ValueError, match="w_up"):
        swiglu_forward(x, w_gate, w_up[:5], w_down)
    with pytest.raises(ValueError, match="w_down"):
        swiglu_forward(x, w_gate, w_up, w_down.T)
    with pytest.raises(ValueError, match="x has last dimension 3"):
        swiglu_forward(x[:, :3], w_gate, w_up, w_down)
    with pytest.raises(TypeError, match="dtypes must match"):
        swiglu_forward(x.astype(np.float32), w_gate, w_up, w_down)
    with pytest.raises(ValueError, match="w_gate must have 2"):
        swiglu_forward(x, w_gate[None], w_up, w_down)
    with pytest.raises(ValueError, match="same shape"):
        swiglu_act_forward(x, x[:, :3])
    with pytest.raises(TypeError, match="dtypes must match"):
        swiglu_act_forward(x, x.astype(np.float32))
    with pytest.raises(TypeError, match="gate must be"):
        swiglu_act_forward(np.ones((2, 4), dtype=int), x)
