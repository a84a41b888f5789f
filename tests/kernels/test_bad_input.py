"""Each kernel rejects bad input the way its reference does: same exception type, a message
naming the argument."""
import re

import numpy as np
import pytest

from npllama import backend

f32 = np.zeros((2, 3, 4), dtype=np.float32)
f64 = np.zeros((2, 3, 4))
ints = np.zeros((2, 3), dtype=np.int64)
qkv = np.zeros((1, 2, 3, 4))

# (op, positional args, the argument name the message must mention)
BAD_FORWARD_CALLS = [
    ("embedding_forward", (np.zeros((2, 3)), np.zeros((5, 4))), "tokens"),         # float ids
    ("embedding_forward", (np.array([[5]]), np.zeros((5, 4))), "tokens"),          # id out of range
    ("embedding_forward", (ints, np.zeros(5)), "weight"),                          # 1-D table
    ("linear_forward", (f64, np.zeros((5, 3))), "in_features"),                   # wrong in
    ("linear_forward", (f64, np.zeros(4)), "weight"),                              # 1-D weight
    ("linear_forward", (f32, np.zeros((5, 4))), "dtypes must match"),
    ("linear_forward", (f64, np.zeros((0, 4))), "weight"),                         # no outputs
    ("rmsnorm_forward", (f32, np.ones(4), 1e-5), "dtypes must match"),                         # float64 weight
    ("rmsnorm_forward", (f64, np.ones(5), 1e-5), "weight"),                        # wrong D
    ("rmsnorm_forward", (f64, np.ones(4), -1.0), "eps"),
    ("rmsnorm_forward", (f64.astype(np.int64), np.ones(4), 1e-5), "x"),
    ("rope_forward", (qkv, np.zeros((3, 4)), np.zeros((2, 4))), "sin"),            # wrong T
    ("rope_forward", (qkv[..., :3], np.zeros((3, 3)), np.zeros((3, 3))), "head_dim"),  # odd
    ("rope_forward", (qkv[..., :0], np.zeros((3, 0)), np.zeros((3, 0))), "head_dim"),  # zero
    ("rope_forward", (qkv, np.zeros((3, 4), np.float32), np.zeros((3, 4))), "dtypes must match"),
    ("softmax_forward", (np.array([[0.0, np.nan]]),), "x"),
    ("softmax_forward", (np.array([[0.0, 1.0], [0.0, np.inf]], np.float32),), "x"),    # +inf, 2nd row
    ("softmax_forward", (np.array([[-np.inf, -np.nan]]),), "x"),   # NaN with its sign bit, row masked
    ("softmax_forward", (np.zeros((2, 0)),), "x"),
    ("attention_forward", (qkv, np.zeros((1, 3, 3, 4)), np.zeros((1, 3, 3, 4))), "heads"),  # 2 % 3
    ("attention_forward", (qkv, qkv, np.zeros((1, 2, 4, 4))), "v"),
    ("attention_forward", (qkv, qkv, qkv, True, np.ones((1, 3))), "key_padding_mask"),  # not bool
    ("attention_forward", (qkv, qkv, qkv, True, None, -1), "q_offset"),
    ("attention_forward", (qkv.astype(np.float32), qkv, qkv), "dtypes must match"),
    ("swiglu_act_forward", (np.zeros((2, 3)), np.zeros((3, 2))), "shape"),
    ("swiglu_forward", (np.zeros((2, 4)), np.zeros((6, 4)), np.zeros((6, 4)), np.zeros((6, 4))), "w_down"),
    ("swiglu_forward", (np.zeros((2, 4)), np.zeros((6, 4)), np.zeros((5, 4)), np.zeros((4, 6))), "w_up"),
    ("swiglu_forward", (np.zeros((2, 5)), np.zeros((6, 4)), np.zeros((6, 4)), np.zeros((4, 6))), "x"),
    ("swiglu_forward", (np.zeros((2, 4)), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((4, 0))), "w_gate"),  # F = 0
    ("cross_entropy_forward", (f64, np.zeros((2, 3))), "targets"),                  # float targets
    ("cross_entropy_forward", (f64, np.zeros((2, 2), dtype=np.int64)), "targets"),  # wrong shape
    ("cross_entropy_forward", (f64, np.full((2, 3), 4)), "targets"),                # id >= V
    ("cross_entropy_forward", (f64, ints, 1.5), "ignore_index"),
]


def raised(fn, args):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args)
    return info


@pytest.mark.parametrize("op, args, mentions", BAD_FORWARD_CALLS,
                         ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_FORWARD_CALLS)])
def test_kernel_rejects_what_the_reference_rejects(op, args, mentions):
    kernel_error = raised(backend.ops("numba").__dict__[op], args)
    reference_error = raised(backend.ops("numpy").__dict__[op], args)
    assert kernel_error.type is reference_error.type
    # as a word: "x" is in "expected" and "max", "v" in "have"
    assert re.search(rf"\b{re.escape(mentions)}\b", str(kernel_error.value)), str(kernel_error.value)


@pytest.mark.parametrize("op, args", [
    ("rmsnorm", (np.zeros((2, 4)), np.ones(4), 1e-5)),
    ("linear", (np.zeros((2, 3, 4)), np.zeros((5, 4)))),
    ("softmax", (np.zeros((2, 4)),)),
    ("swiglu_act", (np.zeros((2, 4)), np.zeros((2, 4)))),
    ("embedding", (np.zeros((2, 3), dtype=np.int64), np.zeros((5, 4)))),
    ("attention", (qkv, qkv, qkv)),
])
def test_backward_rejects_a_gradient_of_the_wrong_shape(op, args):
    F = backend.ops("numba")
    out, cache = F.__dict__[op + "_forward"](*args)
    with pytest.raises(ValueError, match="shape"):
        F.__dict__[op + "_backward"](np.zeros(np.shape(out) + (1,)), cache)


def test_cross_entropy_backward_rejects_a_non_scalar_dloss():
    F = backend.ops("numba")
    _, cache = F.cross_entropy_forward(f64, ints)
    with pytest.raises(ValueError, match="dloss must be a scalar"):
        F.cross_entropy_backward(np.ones(2), cache)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("dloss", [None, "1.0", True, np.array(True), np.ones((), dtype=complex)])
def test_cross_entropy_backward_rejects_a_dloss_that_is_not_a_real_number(backend_name, dloss):
    """None became float(None) = NaN and "1.0" became 1.0: a silently NaN (or accepted) gradient
    instead of an error naming dloss."""
    F = backend.ops(backend_name)
    _, cache = F.cross_entropy_forward(f64, ints)
    with pytest.raises(TypeError, match="dloss must be a real number"):
        F.cross_entropy_backward(dloss, cache)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("dloss", [2, 2.0, np.float32(2), np.int64(2), np.array(2.0), np.array(2)])
def test_cross_entropy_backward_takes_any_real_scalar_dloss(backend_name, dloss):
    F = backend.ops(backend_name)
    _, cache = F.cross_entropy_forward(f64 + np.arange(4), ints)
    _, cache_ref = F.cross_entropy_forward(f64 + np.arange(4), ints)
    np.testing.assert_array_equal(F.cross_entropy_backward(dloss, cache),
                                  2 * F.cross_entropy_backward(1.0, cache_ref))


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("dtype, other", [(np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("op, args", [
    ("rmsnorm", lambda d: (np.ones((2, 4), d), np.ones(4, d), 1e-5)),
    ("linear", lambda d: (np.ones((2, 3, 4), d), np.ones((5, 4), d))),
    ("rope", lambda d: (np.ones((1, 2, 3, 4), d), np.ones((3, 4), d), np.zeros((3, 4), d))),
    ("softmax", lambda d: (np.zeros((2, 4), d),)),
    ("attention", lambda d: (qkv.astype(d), qkv.astype(d), qkv.astype(d))),
    ("swiglu_act", lambda d: (np.ones((2, 4), d), np.ones((2, 4), d))),
    ("swiglu", lambda d: (np.ones((2, 4), d), np.ones((6, 4), d), np.ones((6, 4), d), np.ones((4, 6), d))),
    ("embedding", lambda d: (np.zeros((2, 3), dtype=np.int64), np.ones((5, 4), d))),
])
def test_backward_refuses_a_gradient_of_another_dtype(backend_name, dtype, other, op, args):
    """A float64 gradient of float32 activations (or the reverse): the reference would upcast and
    a kernel round it down -- two answers, each a silent cast.  Both refuse it, naming it."""
    F = backend.ops(backend_name)
    out, cache = F.__dict__[op + "_forward"](*args(dtype))
    grad_name = {"rmsnorm": "dy", "linear": "dy", "rope": "dy", "softmax": "dp", "swiglu_act": "dact"}.get(op, "dout")
    with pytest.raises(TypeError, match=rf"^{grad_name} must be {np.dtype(dtype)}, the dtype of the forward's "
                                        rf"input \(no silent casts\), got {np.dtype(other)}$"):
        F.__dict__[op + "_backward"](np.ones(np.shape(out), other), cache)
    F.__dict__[op + "_backward"](np.ones(np.shape(out), dtype), cache)      # its own dtype: accepted
