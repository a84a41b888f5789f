"""Small building blocks the kernels inline: exp for x <= 0, row max, sums and dot products.

They are written so that LLVM turns the loops that use them into vector instructions
(AVX2/AVX-512); numba's straightforward versions run one element at a time.

exp_nonpositive(x)
------------------
Numba compiles `np.exp` to a call into the C math library, one element at a time; NumPy's own
exp uses SIMD and is ~5x faster.  Softmax, cross-entropy and SiLU spend most of their time in
exp, so the kernels call `exp_nonpositive` instead: plain arithmetic that LLVM turns into
vector instructions (AVX2/AVX-512) inside the caller's loop.  All those kernels only ever need
exp of numbers <= 0 (x - row_max, -|z|), which keeps the function branch-free and simple.

The method is Cephes' (exp.c / expf.c): write x = k ln2 + r with |r| <= ln2/2, evaluate exp(r)
with a polynomial (float32) or a rational function (float64), and multiply by 2^k built directly
from the exponent bits.  Accuracy: a few ulp in float32 (~3e-7 relative), ~1 ulp in float64
(~2e-16 relative).  Results below the smallest normal number are flushed to 0 (exp(-88) in
float32, exp(-708) in float64); exp(-inf) = 0 (masked entries), exp(NaN) = NaN.

With NUMBA_DISABLE_JIT=1 the kernels run as Python and `exp_nonpositive` is simply np.exp.

row_max(a), row_abs_max(a), row_sum(a), row_dot(a, b), row_dot3(a, b, c)
-------------------------------------------------------------------
A float sum is only vectorised if the compiler may reassociate it (several partial sums added
at the end): the sums are compiled with the 'reassoc' and 'contract' fast-math flags and
nothing else, so NaN, Inf and -inf keep their meaning.  Flags are per function, so they do not
leak into exp_nonpositive (whose range reduction reassociation would spoil).  A float max is
not vectorised even so; row_max and row_abs_max take the max of integer keys that sort like the floats (see
below).

Numba's on-disk cache keys a kernel on its own file only, so a kernel that inlines these would
keep stale code after an edit here; npllama/kernels/__init__.py drops the whole cache whenever
any kernel source changes.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


def exp_nonpositive(x):
    """exp(x) for a scalar x <= 0 (also -inf -> 0 and NaN -> NaN)."""
    return np.exp(x)


@intrinsic
def _bits_of_float(typingctx, x):
    """Reinterpret a float32 as an int32, a float64 as an int64 (the inverse of _float_from_bits)."""
    if x == types.float32:
        return types.int32(types.float32), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.IntType(32))
    if x == types.float64:
        return types.int64(types.float64), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.IntType(64))
    return None


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32, of an int64 as a float64 (no conversion)."""
    if bits == types.int32:
        return types.float32(types.int32), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.FloatType())
    if bits == types.int64:
        return types.float64(types.int64), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.DoubleType())
    return None


@overload(exp_nonpositive)
def _exp_nonpositive_jit(x):
    if x == types.float32:
        return _exp_float32
    if x == types.float64:
        return _exp_float64
    return None


def _exp_float32(x):
    # Below log(smallest normal float32) the result would be denormal: flush to 0.
    lowest = np.float32(-87.33654)
    x_safe = max(x, lowest)                     # keeps k in range; -inf lands here too
    k = np.floor(x_safe * np.float32(1.44269504088896341) + np.float32(0.5))  # round(x / ln2)
    # r = x - k ln2, with ln2 split in two so that k * ln2_hi is exact.
    r = x_safe - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    exp_r = p * (r * r) + r + np.float32(1.0)   # exp(r), |r| <= ln2 / 2
    two_to_k = _float_from_bits(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    y = exp_r * two_to_k
    if x >= lowest:
        return y
    return x - x if x != x else np.float32(0.0)  # NaN stays NaN; -inf and tiny results give 0


def _exp_float64(x):
    lowest = -708.3964185322641                 # log(smallest normal float64)
    x_safe = max(x, lowest)
    k = np.floor(x_safe * 1.4426950408889634074 + 0.5)
    r = x_safe - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6
    rr = r * r
    # Pade form: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
    p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
             + 9.99999999999999999910e-1)
    q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
         + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0
    exp_r = 1.0 + 2.0 * (p / (q - p))
    two_to_k = _float_from_bits(np.int64((np.int64(k) + np.int64(1023)) << np.int64(52)))
    y = exp_r * two_to_k
    if x >= lowest:
        return y
    return x - x if x != x else 0.0


# 'reassoc' lets LLVM split a sum into vector lanes; 'contract' allows fused multiply-add.
# Neither assumes anything about NaN or Inf.
REDUCTION_FLAGS = {"reassoc", "contract"}


@njit(cache=True, error_model="numpy", nogil=True, fastmath=REDUCTION_FLAGS)
def row_sum(a):
    """sum(a) of a 1-D array, in a's dtype."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i]
    return total


@njit(cache=True, error_model="numpy", nogil=True, fastmath=REDUCTION_FLAGS)
def row_dot(a, b):
    """sum(a * b) of two 1-D arrays of the same length and dtype."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i] * b[i]
    return total


@njit(cache=True, error_model="numpy", nogil=True, fastmath=REDUCTION_FLAGS)
def row_dot3(a, b, c):
    """sum(a * b * c) of three 1-D arrays of the same length and dtype."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i] * b[i] * c[i]
    return total


def row_max(a):
    """max(a) of a 1-D array: -inf if empty or all -inf, NaN if a holds a (positive) NaN."""
    return np.max(a, initial=-np.inf)


def _compile_by_dtype(python_version, for_float32, for_float64):
    """Inside a kernel, python_version(a) compiles to for_float32 or for_float64 by a's dtype."""
    @overload(python_version)
    def _by_dtype(a):
        if a.dtype == types.float32:
            return for_float32
        if a.dtype == types.float64:
            return for_float64
        return None


# A float max is a compare-and-select that LLVM will not vectorise without assuming "no NaN".
# Integers it vectorises.  Read as a signed integer, a float's bits are in the floats' order for
# x >= 0 and in reverse order for x < 0; flipping every bit but the sign of the negative ones
# gives a key whose integer order is the float order (-inf < ... < -0 < +0 < ... < +inf < NaN),
# so the max of the keys is the key of the max.  ~5x faster than a float compare loop.

def _row_max_float32(a):
    magnitude = np.int32(0x7FFFFFFF)
    best = np.int32(_bits_of_float(np.float32(-np.inf)) ^ magnitude)      # key of -inf
    for i in range(a.size):
        bits = _bits_of_float(a[i])
        key = bits if bits >= 0 else np.int32(bits ^ magnitude)
        best = key if key > best else best
    return _float_from_bits(best if best >= 0 else np.int32(best ^ magnitude))


def _row_max_float64(a):
    magnitude = np.int64(0x7FFFFFFFFFFFFFFF)
    best = np.int64(_bits_of_float(-np.inf) ^ magnitude)
    for i in range(a.size):
        bits = _bits_of_float(a[i])
        key = bits if bits >= 0 else np.int64(bits ^ magnitude)
        best = key if key > best else best
    return _float_from_bits(best if best >= 0 else np.int64(best ^ magnitude))


_compile_by_dtype(row_max, _row_max_float32, _row_max_float64)


def row_abs_max(a):
    """max |a| of a 1-D array: 0 if empty, NaN if a holds a NaN, else inf if it holds an inf."""
    return np.max(np.abs(a), initial=0)


# |x| is x's bits without the sign, and for those the integer order is the order of |x|
# (0 < ... < inf < NaN): the max of the keys is the key of max |x|, vectorised like row_max.

def _row_abs_max_float32(a):
    magnitude = np.int32(0x7FFFFFFF)
    best = np.int32(0)
    for i in range(a.size):
        key = np.int32(_bits_of_float(a[i]) & magnitude)   # numba would widen int32 & int32
        best = key if key > best else best
    return _float_from_bits(best)


def _row_abs_max_float64(a):
    magnitude = np.int64(0x7FFFFFFFFFFFFFFF)
    best = np.int64(0)
    for i in range(a.size):
        key = _bits_of_float(a[i]) & magnitude
        best = key if key > best else best
    return _float_from_bits(best)


_compile_by_dtype(row_abs_max, _row_abs_max_float32, _row_abs_max_float64)
