"""The math: reference forward/backward pairs in plain NumPy, one file per op.

Each op is `<op>_forward(...) -> (out, cache)` and `<op>_backward(dout, cache) -> grads`, the grads
in the order of the forward's differentiable inputs.  derivations/<op>.md holds the math.
"""
from .attention import attention_backward, attention_forward
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .embedding import embedding_backward, embedding_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .rmsnorm import rmsnorm_backward, rmsnorm_forward
from .rope import rope_backward, rope_cos_sin, rope_forward
from .softmax import softmax_backward, softmax_forward
from .swiglu import swiglu_act_backward, swiglu_act_forward, swiglu_backward, swiglu_forward
