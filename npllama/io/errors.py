"""The one exception for bad checkpoint files.

A `CheckpointError` always says which file is wrong, which tensor or field inside it, and what
the problem is, e.g.

    CheckpointError: /ckpt/model.safetensors: tensor 'model.norm.weight': data_offsets end 120
    is past the end of the data buffer (100 bytes)

It subclasses ValueError, so code that already catches ValueError for bad input keeps working.
"""
from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint file (safetensors, config.json, index) is malformed or does not fit the model.

    Attributes: `path` (the file), `tensor` and `field` (None when not about one), `problem`.
    """

    def __init__(self, path, problem: str, *, tensor: str | None = None, field: str | None = None):
        self.path = os.fspath(path)
        self.problem = problem
        self.tensor = tensor
        self.field = field
        where = ""
        if tensor is not None:
            where += f"tensor {tensor!r}: "
        if field is not None:
            where += f"field {field!r}: "
        super().__init__(f"{self.path}: {where}{problem}")

    def __reduce__(self):
        # Exceptions pickle as cls(*self.args); ours needs its keyword arguments back
        # (multiprocessing sends exceptions between processes this way).
        return (_rebuild, (self.path, self.problem, self.tensor, self.field))


def _rebuild(path, problem, tensor, field):
    return CheckpointError(path, problem, tensor=tensor, field=field)
