"""AdamW's update of one parameter in a single pass over memory (npllama.optim.AdamW's math).

    p *= 1 - lr * weight_decay
    m  = beta1 m + (1 - beta1) g
    v  = beta2 v + (1 - beta2) g^2
    p -= lr * (m / bias_correction1) / (sqrt(v / bias_correction2) + eps)

with bias_correction1 = 1 - beta1^t and bias_correction2 = 1 - beta2^t at step t.  The NumPy
version makes about ten passes over four arrays, allocating a temporary for each; this makes
one, reading p, g, m, v once and writing p, m, v once.  Every scalar is
rounded to the parameter's dtype first, as NumPy does with Python floats, so float32 stays float32.
"""
import numpy as np
from numba import njit, prange


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                 bias_correction2):
    """Update p, m, v in place.  p, m, v contiguous; g, m, v of p's shape and dtype.
    weight_decay = 0 for parameters that are not decayed."""
    for name, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"{name} must have p's shape {p.shape} and dtype {p.dtype}, "
                             f"got {a.shape} {a.dtype}")
    if p.dtype not in (np.float32, np.float64):
        raise TypeError(f"p must be float32 or float64, got {p.dtype}")
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")
    as_dtype = p.dtype.type
    _adamw_update_flat(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1),
                       v.reshape(-1), as_dtype(lr), as_dtype(beta1), as_dtype(beta2), as_dtype(eps),
                       as_dtype(1 - lr * weight_decay), as_dtype(1 - beta1), as_dtype(1 - beta2),
                       as_dtype(bias_correction1), as_dtype(bias_correction2))


@njit(cache=True, error_model="numpy", nogil=True)
def _adamw_update_flat(p, g, m, v, lr, beta1, beta2, eps, decay, one_minus_beta1, one_minus_beta2,
                       bias_correction1, bias_correction2):
    for i in prange(p.size):
        gi = g[i]
        m[i] = beta1 * m[i] + one_minus_beta1 * gi
        v[i] = beta2 * v[i] + one_minus_beta2 * (gi * gi)
        m_hat = m[i] / bias_correction1
        v_hat = v[i] / bias_correction2
        p[i] = p[i] * decay - lr * m_hat / (np.sqrt(v_hat) + eps)
