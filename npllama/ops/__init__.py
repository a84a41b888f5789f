"""The math: reference forward/backward pairs in plain NumPy, one file per op.

Each op is `<op>_forward(...) -> (out, cache)` and `<op>_backward(dout, cache) -> grads`, the grads
in the order of the forward's differentiable inputs.  derivations/<op>.md holds the math.
"""
