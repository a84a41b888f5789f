"""Argument checks shared by the ops: cheap, and each error names the argument and what was expected.

Arguments are checked once, at the public boundary of a call.  A user calling an op directly gets
every check.  Llama's public methods check their own arguments (tokens, targets, masks, the
parameters' shapes come from a validated config) and then set `checking` to False for the ops
they call, so a debugger stepping into an op lands on the math, not on a dozen re-checks of
shapes the model built itself.  `checking.get()` is a C call: it adds no Python frame.
"""
import contextvars
import numbers
import os

import numpy as np

checking: contextvars.ContextVar[bool] = contextvars.ContextVar("npllama_check_op_args", default=True)


def require_path(name, value, what: str = "a path"):
    """A TypeError unless value names a file or folder (a non-empty str or an os.PathLike such as
    pathlib.Path); pathlib's own message would not say which argument was None."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return value
    raise TypeError(f"{name} must be {what} (a str or pathlib.Path), got {value!r}")


def padding_mask_as_bool(mask: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    """attention_mask (an array, 1 = real token) as bool: booleans, or numbers that are exactly 0 or 1
    whatever their dtype (transformers' tokenizers give int64, a column read from a table float64).
    Any other value is refused by name, not rounded: an additive mask (0 / -inf) or a weight is no
    padding mask.  shape: the tokens' shape, which the mask must have (not broadcast to it)."""
    if shape is not None and mask.shape != shape:
        raise ValueError(f"attention_mask must have the tokens' shape {shape}, got {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    what = "attention_mask must hold 0/1 numbers or booleans (1 = real token)"
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise TypeError(f"{what}, got dtype {mask.dtype}")
    outside = (mask != 0) & (mask != 1)    # NaN too; ~10x faster than np.isin, on every masked forward
    if outside.any():
        raise ValueError(f"{what}, got {mask[outside].flat[0]}")
    return mask.astype(bool)


def require_float_array(name, a, ndim=None, min_ndim=1):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {a.shape}")


def require_int_array(name, a):
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer numpy array, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")


def is_int(value) -> bool:
    """An int or a NumPy integer, not a bool (True is no count)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def require_positive_int(name, value, none_ok=False):
    """value must be a positive int (a NumPy integer too, not a bool); or None when none_ok."""
    if none_ok and value is None:
        return
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}a positive int, got {value!r}")


def require_int(name, value):
    """value must be an int (a NumPy integer too, not a bool): a TypeError otherwise."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")


def require_non_negative_int(name, value):
    """value must be an int >= 0 (a NumPy integer too, not a bool)."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def require_last_dim(name, a, expected, what):
    if a.shape[-1] != expected:
        raise ValueError(f"{name} has last dimension {a.shape[-1]}, expected {expected} ({what})")


def require_shape(name, a, expected, what, dtype=None):
    """An upstream gradient must have its output's shape: numpy would otherwise broadcast it or fail deep inside.
    With dtype (a backward's check): an array must also have the forward's dtype -- NumPy would upcast
    a float64 gradient of float32 activations and a kernel would round it down, each silently."""
    if np.shape(a) != tuple(expected):
        raise ValueError(f"{name} has shape {np.shape(a)}, expected {tuple(expected)} ({what})")
    if dtype is not None and isinstance(a, (np.ndarray, np.generic)) and a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype)}, the dtype of the forward's input (no silent casts), "
                        f"got {a.dtype}")


def require_same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"dtypes must match (no silent casts): {listed}")


def require_eps(eps, dtype):
    """eps as a scalar of x's dtype (so a float64 eps cannot upcast float32 activations)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return dtype.type(eps)


def require_ids_in_range(ids, n, message):
    """Every id in [0, n); else ValueError(message.format(id=the first one outside))."""
    out_of_range = (ids < 0) | (ids >= n)
    if out_of_range.any():
        raise ValueError(message.format(id=int(ids[out_of_range].flat[0])))


def require_kernel_cache(op, cache, cache_type):
    """A fused kernel's backward (op "attention", "swiglu", ...) reads only its own forward's cache.
    Under the Numba backend a forward override built on the reference hands it the reference's
    cache, which would fail deep inside (an attribute or unpacking error) instead of saying why."""
    if not isinstance(cache, cache_type):
        raise TypeError(f"the Numba kernel {op}_backward needs its own forward's cache "
                        f"({cache_type.__name__}), got {type(cache).__name__}: with a forward override under "
                        f"the Numba backend, override the backward too, e.g. "
                        f"use_op('{op}_backward', npllama.ops.{op}.{op}_backward)")
