"""RoPE kernels equal the reference, including on the head-split views the model passes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels import rope as kernel
from npllama.ops import rope as reference

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]), B=st.integers(1, 3), H=st.integers(1, 4),
       T=st.integers(0, 6), half=st.integers(1, 5), offset=st.integers(0, 50),
       layout=st.sampled_from(["heads_view", "contiguous", "3d"]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_rope_equals_reference(dtype, B, H, T, half, offset, layout, seed):
    rng = np.random.default_rng(seed)
    hd = 2 * half
    cos, sin = reference.rope_cos_sin(np.arange(offset, offset + T), hd, 10000.0, dtype=dtype)
    if layout == "heads_view":   # (B, H, T, hd) view of a (B, T, H*hd) projection, as in the model
        x = rng.standard_normal((B, T, H * hd)).astype(dtype).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    elif layout == "contiguous":
        x = rng.standard_normal((B, H, T, hd)).astype(dtype)
    else:
        x = rng.standard_normal((B, T, hd)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)

    y, cache = kernel.rope_forward(x, cos, sin)
    y_ref, cache_ref = reference.rope_forward(x, cos, sin)
    assert_close(y, y_ref, "y")
    assert_close(kernel.rope_backward(dy, cache), reference.rope_backward(dy, cache_ref), "dx")


def test_rope_backward_is_laid_out_for_a_free_head_merge():
    """dx comes back as a (B, H, T, hd) view of (B, T, H, hd) memory: merging heads is a reshape."""
    B, H, T, hd = 2, 3, 4, 6
    cos, sin = reference.rope_cos_sin(np.arange(T), hd, 10000.0)
    _, cache = kernel.rope_forward(np.zeros((B, H, T, hd)), cos, sin)
    dx = kernel.rope_backward(np.ones((B, H, T, hd)), cache)
    assert dx.shape == (B, H, T, hd)
    assert dx.transpose(0, 2, 1, 3).flags.c_contiguous


@pytest.mark.parametrize("shape", [(0, 4), (3, 0, 4), (2, 3, 0, 4), (0, 3, 5, 4), (1, 2, 2, 0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_of_no_positions_or_no_rows_is_empty_as_in_the_reference(shape, dtype):
    """T = 0 (an empty chunk) or no rows: the reference returns empty arrays; the kernel's
    reshape to (-1, 1, T, hd) could not infer -1 from a size of 0 and raised."""
    T, hd = shape[-2], shape[-1]
    cos, sin = reference.rope_cos_sin(np.arange(T), hd, 10000.0, dtype=dtype)
    x = np.zeros(shape, dtype=dtype)
    y, cache = kernel.rope_forward(x, cos, sin)
    y_ref, cache_ref = reference.rope_forward(x, cos, sin)
    assert_close(y, y_ref, "y")
    assert_close(kernel.rope_backward(x, cache), reference.rope_backward(x, cache_ref), "dx")
