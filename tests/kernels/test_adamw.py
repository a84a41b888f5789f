"""The one-pass AdamW update equals npllama.optim.adamw_update and npllama.optim.AdamW's step."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.kernels.adamw import adamw_update
from npllama import optim, use_backend
from npllama.optim import AdamW

from .helpers import assert_close


@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), step=st.integers(1, 1000),
       weight_decay=st.sampled_from([0.0, 0.1]), lr=st.sampled_from([1e-3, 0.5]),
       first_step=st.booleans(), zero_gradient=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_adamw_update_equals_numpy(dtype, shape, step, weight_decay, lr, first_step, zero_gradient, seed):
    rng = np.random.default_rng(seed)
    p, g = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.random(shape)).astype(dtype)
    if first_step:       # fresh moments and the largest bias correction, 1 / (1 - beta)
        step, m, v = 1, np.zeros_like(p), np.zeros_like(p)
    if zero_gradient:    # with fresh moments the step is 0 / (0 + eps): only the decay moves p
        g = np.zeros_like(p)
    beta1, beta2, eps = 0.9, 0.95, 1e-8
    args = (lr, beta1, beta2, eps, weight_decay, 1 - beta1**step, 1 - beta2**step)
    expected = [a.copy() for a in (p, g, m, v)]
    optim.adamw_update(*expected, *args)
    adamw_update(p, g, m, v, *args)
    for name, actual, want in zip("pgmv", (p, g, m, v), expected):
        assert_close(actual, want, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_update_reproduces_optim_adamw(dtype):
    """Three steps of npllama.optim.AdamW, and the same three with adamw_update on copies."""
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((5, 4)).astype(dtype), "norm": np.ones(4, dtype=dtype)}
    copies = {n: p.copy() for n, p in params.items()}
    m = {n: np.zeros_like(p) for n, p in params.items()}
    v = {n: np.zeros_like(p) for n, p in params.items()}
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for t in range(1, 4):
        grads = {n: rng.standard_normal(p.shape).astype(dtype) for n, p in params.items()}
        with use_backend("numpy"):  # AdamW's own NumPy lines (under numba it calls this kernel)
            opt.step(grads)
        for n in copies:
            decay = 0.1 if copies[n].ndim >= 2 else 0.0       # AdamW's default: no decay on 1-D
            adamw_update(copies[n], grads[n], m[n], v[n], 1e-2, 0.9, 0.95, 1e-8, decay,
                         1 - 0.9**t, 1 - 0.95**t)
    for n in params:
        assert_close(copies[n], params[n], n)


def test_adamw_update_rejects_bad_arrays():
    p = np.zeros((3, 2), dtype=np.float32)
    args = (1e-3, 0.9, 0.95, 1e-8, 0.0, 0.1, 0.05)
    with pytest.raises(ValueError, match="g must have p's shape"):
        adamw_update(p, np.zeros(6, dtype=np.float32), np.zeros_like(p), np.zeros_like(p), *args)
    with pytest.raises(ValueError, match="m must have p's shape .* and dtype"):
        adamw_update(p, np.zeros_like(p), np.zeros((3, 2)), np.zeros_like(p), *args)
    with pytest.raises(ValueError, match="p must be a writeable C-contiguous"):
        adamw_update(p.T, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32),
                     np.zeros((2, 3), np.float32), *args)
    with pytest.raises(TypeError, match="p must be float32 or float64"):
        z = np.zeros(3, dtype=np.int64)
        adamw_update(z, z, z, z, *args)
    with pytest.raises(TypeError, match="g must be a numpy array"):
        adamw_update(p, [[0, 0]] * 3, np.zeros_like(p), np.zeros_like(p), *args)
