"""SwiGLU kernels equal the reference: the elementwise act alone and the whole MLP."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import swiglu as kernel
from npllama.ops import swiglu as reference

from .helpers import assert_close

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3)


@given(dtype=st.sampled_from([np.float32, np.float64]), shape=shapes,
       gate_scale=st.sampled_from([1.0, 40.0]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_swiglu_act_equals_reference(dtype, shape, gate_scale, seed):
    rng = np.random.default_rng(seed)
    gate = (gate_scale * rng.standard_normal(shape)).astype(dtype)   # 40: sigmoid saturates
    up, dact = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    act, cache = kernel.swiglu_act_forward(gate, up)
    act_ref, cache_ref = reference.swiglu_act_forward(gate, up)
    assert_close(act, act_ref, "act")
    for name, g, g_ref in zip(("dgate", "dup"), kernel.swiglu_act_backward(dact, cache),
                              reference.swiglu_act_backward(dact, cache_ref)):
        assert_close(g, g_ref, name)


@given(dtype=st.sampled_from([np.float32, np.float64]), leading=shapes, D=st.integers(1, 9),
       F=st.integers(1, 13), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_swiglu_equals_reference(dtype, leading, D, F, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(leading) + (D,)).astype(dtype)
    w_gate, w_up = (rng.standard_normal((F, D)).astype(dtype) for _ in range(2))
    w_down = rng.standard_normal((D, F)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = kernel.swiglu_forward(x, w_gate, w_up, w_down)
    out_ref, cache_ref = reference.swiglu_forward(x, w_gate, w_up, w_down)
    assert_close(out, out_ref, "out")
    for name, g, g_ref in zip(("dx", "dw_gate", "dw_up", "dw_down"), kernel.swiglu_backward(dout, cache),
                              reference.swiglu_backward(dout, cache_ref)):
        assert_close(g, g_ref, name)
