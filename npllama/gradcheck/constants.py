"""The numbers of the error model that several parts of the checker use: float64's round-off as
the bounds count it, and the sizes of a bound (next to its gradient) that make a probe loose or
leave it unresolved.  A number only one part uses lives with that part: the longer and shorter
steps in derivative.py, the re-measurement of a failing probe in remeasure.py, which probes are
drawn in checker.py.  The model itself is told in the package's docstring (__init__.py)."""
from __future__ import annotations

import numpy as np

TINY = 1e-30
SMALLEST = float(np.finfo(np.float64).tiny)   # the smallest normal float64, 2.2e-308
UNIT_ROUNDOFF = float(np.finfo(np.float64).eps)   # 2.2e-16
# The round-off of one evaluation of f, in units of u * F.  Measured on the 2-layer test models'
# loss (sixth differences along random directions, 12 cases): 0.1-1.2 u * |loss|.  16 keeps the
# bound ~30x above that noise and still far below any real mistake.
ROUNDOFF_FACTOR = 16.0
LOOSE_BOUND = 1e-3        # a relative bound above this could let a small mistake through: warn
# A probe whose bound still exceeds UNRESOLVED of the gradient, even at longer steps (derivative.py),
# cannot tell a right gradient from a wrong one, so it does not pass.
UNRESOLVED = 0.5
# The step (in the probe's own units) that moves each entry by its scale, max(|x_i|, rms(x)): the
# input's own size.  Up to it a flat f shows a masked entry; beyond it a window can span f's bends
# (derivative.py) and D(t) bend away as f far from the point does (remeasure.py).
OWN_SIZE_STEP = 1.0
