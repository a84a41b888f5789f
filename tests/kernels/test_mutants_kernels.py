"""Kernel behaviours a plausible bug could change while every other test still passed (found by
mutation testing: each test here fails on a one-line mistake the rest of the suite let through)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import rope as kernel
from npllama.ops import rope as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]), B=st.integers(1, 2), H=st.integers(1, 3),
       T=st.integers(1, 4), half=st.integers(1, 4), heads_view=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_rope_kernel_equals_reference_for_any_tables(dtype, B, H, T, half, heads_view, seed):
    # rope_cos_sin's tables hold the same angle in both halves of a row, so a kernel that reads
    # sin[i] where it should read sin[i + half] agrees with the reference on them; the op takes
    # any (T, head_dim) tables (the reference is gradient-checked on such), and so must the kernel.
    rng = np.random.default_rng(seed)
    hd = 2 * half
    cos, sin = (rng.standard_normal((T, hd)).astype(dtype) for _ in range(2))
    if heads_view:   # (B, H, T, hd) view of a (B, T, H*hd) projection, as the model passes it
        x = rng.standard_normal((B, T, H * hd)).astype(dtype).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    else:
        x = rng.standard_normal((B, H, T, hd)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)

    y, cache = kernel.rope_forward(x, cos, sin)
    y_ref, cache_ref = reference.rope_forward(x, cos, sin)
    assert_close(y, y_ref, "y")
    assert_close(kernel.rope_backward(dy, cache), reference.rope_backward(dy, cache_ref), "dx")
