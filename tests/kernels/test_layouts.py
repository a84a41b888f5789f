"""Every kernel equals its reference whatever the memory layout of its arrays: C order, Fortran
order, a strided slice of a larger array, and read-only (a memory-mapped checkpoint, an array a
caller froze).  Each argument's layout is drawn on its own, forward inputs and gradients alike.

Read-only inputs also check that no kernel writes into what it was given (the op contract: no
in-place surprises); the strided ones that a kernel reading raw memory honours the strides."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama import backend
from npllama.kernels import attention as attention_kernel
from npllama.ops.rope import rope_cos_sin

from .helpers import assert_close

LAYOUTS = ("C", "fortran", "strided", "read_only")


def laid_out(a, layout):
    """The values of a, in the given layout."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":        # every other element of the last axis of a twice-as-wide array
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "read_only":
        a = a.copy()
        a.flags.writeable = False
        return a
    return np.ascontiguousarray(a)


def prepared(a, dtype, layout):
    """A float array in dtype and the layout; an int or bool array in the layout; others as given."""
    if not isinstance(a, np.ndarray):
        return a
    return laid_out(a.astype(dtype) if a.dtype.kind == "f" else a, layout)


def attention_args(rng, B, T):
    KVH, n_rep, hd = 2, 2, 3
    mask = np.ones((B, T), dtype=bool)
    mask[:, : T // 2] = False                         # left padding: the first queries see no key
    return [rng.standard_normal((B, KVH * n_rep, T, hd)), rng.standard_normal((B, KVH, T, hd)),
            rng.standard_normal((B, KVH, T, hd)), True, mask]


# op -> its forward's arguments (arrays first; non-arrays passed as they are)
def op_args(op, rng, B, T):
    D, F, V = 5, 7, 6
    x = rng.standard_normal((B, T, D))
    if op == "rmsnorm":
        return [x, rng.standard_normal(D), 1e-5]
    if op == "linear":
        return [x, rng.standard_normal((F, D))]
    if op == "rope":
        cos, sin = rope_cos_sin(np.arange(2, 2 + T), 4, 10000.0)
        return [rng.standard_normal((B, 3, T, 4)), cos, sin]
    if op == "softmax":
        scores = 3 * rng.standard_normal((B, T, V))
        scores[..., -1] = -np.inf                     # a masked column
        return [scores]
    if op == "attention":
        return attention_args(rng, B, T)
    if op == "swiglu_act":
        return [rng.standard_normal((B, T, F)), rng.standard_normal((B, T, F))]
    if op == "swiglu":
        return [x, rng.standard_normal((F, D)), rng.standard_normal((F, D)), rng.standard_normal((D, F))]
    if op == "cross_entropy":
        targets = rng.integers(0, V, size=(B, T))
        targets[0, 0] = -100
        return [rng.standard_normal((B, T, V)), targets]
    if op == "embedding":
        tokens = rng.integers(0, 3, size=(B, T))     # ids 0..2 of 6: repeated ids accumulate
        return [tokens, rng.standard_normal((V, D))]
    raise AssertionError(op)


OPS = ("rmsnorm", "linear", "rope", "softmax", "attention", "swiglu_act", "swiglu", "cross_entropy",
       "embedding")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_kernel_equals_reference_with_every_array_in_one_layout(op, layout):
    """Each op with all its arrays in each layout, at B = 2, T = 3 where Fortran order and C order
    differ: a kernel that writes into a reshape of a non-C array (a copy) is caught every time,
    not only when the mixed draws below happen to give that op that layout."""
    for dtype in (np.float32, np.float64):
        check_kernel_equals_reference(op, dtype, 2, 3, [layout] * 6, seed=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flash_attention_equals_reference_with_every_array_in_one_layout(layout, monkeypatch):
    """The same for attention's flash path (taken from 512 keys on), in blocks of 2 query rows
    so that T = 3 ends in a partial block."""
    monkeypatch.setattr(attention_kernel, "FLASH_MIN_KEYS", 1)
    monkeypatch.setattr(attention_kernel, "BLOCK_ROWS", (2, 2))
    for dtype in (np.float32, np.float64):
        check_kernel_equals_reference("attention", dtype, 2, 3, [layout] * 6, seed=0)


@given(op=st.sampled_from(OPS), dtype=st.sampled_from([np.float32, np.float64]), B=st.integers(1, 2),
       T=st.integers(1, 4), layouts=st.lists(st.sampled_from(LAYOUTS), min_size=6, max_size=6),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)   # each new mix of layouts is a numba compile (~0.4 s)
def test_kernel_equals_reference_in_any_layout(op, dtype, B, T, layouts, seed):
    """Arguments in different layouts from one another (dout Fortran, x strided, ...)."""
    check_kernel_equals_reference(op, dtype, B, T, layouts, seed)


def check_kernel_equals_reference(op, dtype, B, T, layouts, seed):
    """Forward and backward of the kernel equal the reference's, and neither changes any array it
    was given (the forward's arguments, or the upstream gradient).  layouts[-1] is dout's."""
    rng = np.random.default_rng(seed)
    args = op_args(op, rng, B, T)
    args = [prepared(a, dtype, layout) for a, layout in zip(args, layouts)]
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    kernel_ops, reference_ops = backend.ops("numba"), backend.ops("numpy")

    out, cache = getattr(kernel_ops, op + "_forward")(*args)
    out_ref, cache_ref = getattr(reference_ops, op + "_forward")(*args)
    scale = max(float(np.max(np.abs(out_ref))), 1.0)
    assert_close(out, out_ref, "out", scale=scale)

    if op == "cross_entropy":
        dout = dtype(0.5)
    else:
        dout = laid_out(rng.standard_normal(np.shape(out_ref)).astype(dtype), layouts[-1])
    dout_before = np.copy(dout)
    grads = getattr(kernel_ops, op + "_backward")(dout, cache)
    grads_ref = getattr(reference_ops, op + "_backward")(dout, cache_ref)
    grads, grads_ref = (g if isinstance(g, tuple) else (g,) for g in (grads, grads_ref))
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        # on the scale of the terms (inputs ~N(0, 1)): rmsnorm's and softmax's dx cancel
        assert_close(g, g_ref, f"grad {i}", scale=max(float(np.max(np.abs(g_ref), initial=0)), 1.0))

    for i, (a, b) in enumerate(zip(args, before)):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"argument {i} was modified")
    np.testing.assert_array_equal(dout, dout_before, err_msg="dout was modified")
