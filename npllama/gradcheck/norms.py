"""Norms that neither overflow nor underflow at any scale of float64, and the norm-wise relative
error the report gives (rel_error, public: the exercise checker and the trace comparison use it)."""
from __future__ import annotations

import numpy as np

from .constants import TINY


def rel_error(a: np.ndarray, b: np.ndarray, tiny: float = TINY) -> float:
    """Norm-wise relative error ||a - b|| / max(||a||, ||b||, tiny), in float64.  (The exercise
    checker and trace comparison pass tiny=1e-300: two all-but-zero arrays that differ count.)"""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(_norm(a - b) / max(_norm(a), _norm(b), tiny))


def _rms(v: np.ndarray) -> float:
    """Root mean square, without overflow or underflow at any scale of float64."""
    return _norm(v) / np.sqrt(v.size) if v.size else 0.0


def _largest_finite(v) -> float:
    """The largest |v_i| of the finite entries (0 where there are none)."""
    v = np.asarray(v)
    return float(np.max(np.abs(v[np.isfinite(v)]), initial=0.0))


def _norm(v) -> float:
    """Euclidean norm, scaled first so squares of 1e-200 or 1e200 neither vanish nor overflow."""
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return 0.0
    top = float(np.max(np.abs(v)))
    if top == 0 or not np.isfinite(top):
        return top
    return top * float(np.sqrt(np.sum(np.square(v / top))))
