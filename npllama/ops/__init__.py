"""The math: reference forward/backward pairs in plain NumPy, one file per op.

Each op is `<op>_forward(...) -> (out, cache)` and `<op>_backward(dout, cache) -> grads`, the grads
in the order of the forward's differentiable inputs.  derivations/<op>.md holds the math.
"""
from .attention import attention_backward, attention_forward  # noqa: F401
from .classifier import classifier_backward, classifier_forward  # noqa: F401
from .cross_entropy import cross_entropy_backward, cross_entropy_forward  # noqa: F401
from .embedding import embedding_backward, embedding_forward  # noqa: F401
from .layernorm import layernorm_backward, layernorm_forward  # noqa: F401
from .linear import linear_backward, linear_forward  # noqa: F401
from .rmsnorm import rmsnorm_backward, rmsnorm_forward  # noqa: F401
from .rope import rope_backward, rope_cos_sin, rope_forward  # noqa: F401
from .softmax import softmax_backward, softmax_forward  # noqa: F401
from .swiglu import swiglu_act_backward, swiglu_act_forward, swiglu_backward, swiglu_forward  # noqa: F401
