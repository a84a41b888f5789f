"""Arrays handed to a numba kernel by their addresses: one argument type for any number of layers.

Numba compiles a function once per combination of argument types, and a tuple of L arrays is a
different type for every L: the decode step took per-layer tuples and compiled anew, 10-20 s,
for each model depth it met (a 6-layer and an 8-layer model: two compilations, each cached
apart).  A table of addresses, int64 (L, k), has one type whatever L is; the kernel looks at
each entry as an array again with `matrix_at` / `vector_at`, without copying.

    table = address_table([[a0, b0], [a1, b1]])     # int64 (2, 2); the arrays must stay alive
    a1_again = matrix_at(table[1, 0], rows, cols, like)   # in a kernel: a1, same memory

The caller keeps the arrays alive for as long as the table is used (FastDecoder holds them in
its ModelWeights).  Under NUMBA_DISABLE_JIT the same functions run as Python, through ctypes.
"""
import ctypes

from llvmlite import ir
from numba import carray, njit, types
from numba import config as numba_config
from numba.extending import intrinsic

import numpy as np


def address_table(rows) -> np.ndarray:
    """int64 (len(rows), len(rows[0])): the address of each array's first element.  Each array
    must be C-contiguous (the kernels read it as one block)."""
    table = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=np.int64)
    for i, row in enumerate(rows):
        for j, array in enumerate(row):
            if not array.flags.c_contiguous:
                raise ValueError(f"address_table: array [{i}][{j}] must be C-contiguous")
            table[i, j] = array.ctypes.data
    return table


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to like's dtype."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(context.get_data_type(like.dtype)))
    return types.CPointer(like.dtype)(address, like), codegen


@njit(cache=True, nogil=True)
def matrix_at(address, rows, cols, like):
    """The C-contiguous (rows, cols) array of like's dtype that starts at `address`."""
    return carray(_pointer(address, like), (rows, cols))


@njit(cache=True, nogil=True)
def vector_at(address, size, like):
    """The (size,) array of like's dtype that starts at `address`."""
    return carray(_pointer(address, like), (size,))


if numba_config.DISABLE_JIT:
    # As Python (stepping through the kernels in a debugger): the same views through ctypes.
    def matrix_at(address, rows, cols, like):  # noqa: F811
        return vector_at(address, rows * cols, like).reshape(rows, cols)

    def vector_at(address, size, like):  # noqa: F811
        block = (ctypes.c_char * (int(size) * like.itemsize)).from_address(int(address))
        return np.frombuffer(block, dtype=like.dtype)
