"""Shared by the kernel tests: the tolerance a kernel must meet against its reference."""
import numpy as np
import pytest
from numba import config as numba_config

# Tests of compilation itself (signatures, the precompile helper) have nothing to test when
# NUMBA_DISABLE_JIT=1 runs the kernels as Python; every other kernel test runs that way too.
requires_jit = pytest.mark.skipif(numba_config.DISABLE_JIT, reason="tests numba's compilation; NUMBA_DISABLE_JIT=1")

# Relative to the size of the expected values: float64 kernels agree to rounding (~1e-12),
# float32 ones to ~1e-5 (different summation orders, exp accurate to a few ulp).
TOLERANCE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def assert_close(actual, expected, what="", scale=None):
    """Same shape and dtype, and |actual - expected| <= tol * scale everywhere.

    scale defaults to max(|expected|.max(), 1e-3); the floor is for outputs that are exactly 0
    in theory (e.g. dq with a single key), where both sides hold only rounding noise.  Pass the
    size of the terms instead where the output is a difference of much larger terms
    (cancellation), since rounding errors scale with the terms, not with the difference."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.size == 0:
        return
    tol = TOLERANCE[expected.dtype]
    if scale is None:
        scale = max(float(np.max(np.abs(expected))), 1e-3)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale, err_msg=what)


def assert_all_close(actuals, expecteds, what=""):
    assert len(actuals) == len(expecteds), f"{what}: {len(actuals)} outputs, expected {len(expecteds)}"
    for i, (a, e) in enumerate(zip(actuals, expecteds)):
        assert_close(a, e, f"{what}[{i}]")
