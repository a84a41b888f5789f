"""Numba versions of the hot loops, with the same signatures as their references in npllama.ops.

KERNELS maps an op function's name (e.g. "rmsnorm_forward") to its kernel; npllama.backend
swaps them in when the "numba" backend is in force.  Each is tested equal to its reference.
"""
KERNELS: dict = {}
