"""npllama: LLaMA in NumPy, every forward and backward pass written by hand.

    import numpy as np
    from npllama import Llama, LlamaConfig
    model = Llama(LlamaConfig.from_preset("tiny"), seed=0)            # random init, float32
    tokens = np.random.default_rng(0).integers(0, 512, size=(2, 16))  # (B, T) ids below vocab_size
    loss, grads = model.loss_and_grads(tokens[:, :-1], tokens[:, 1:])  # targets: the next tokens
"""
from .backend import get_backend, set_backend, study, use_backend, use_op
from .config import LlamaConfig
from .gradcheck import check_op, gradcheck, numerical_gradient
from .shape_tree import shapes  # `p npllama.shapes(cache)` in pdb: a cache as a short tree of shapes
from . import trace  # a callable module: `with npllama.trace() as t:` and `npllama.trace.compare(...)`

__version__ = "0.1.0"

# Heavier pieces load on first use, so `import npllama` stays quick.
_LAZY = {
    "Llama": ("npllama.model", "Llama"),
    "KVCache": ("npllama.model", "KVCache"),
    "Tokenizer": ("npllama.tokenizer", "Tokenizer"),
    "generate_text": ("npllama.generate", "generate_text"),
    "ChatTemplate": ("npllama.chat", "ChatTemplate"),
    "load_classifier": ("npllama.classify", "load_classifier"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'npllama' has no attribute {name!r}")


__all__ = ["Llama", "LlamaConfig", "KVCache", "Tokenizer", "generate_text", "ChatTemplate", "load_classifier",
           "check_op", "gradcheck", "numerical_gradient", "get_backend", "set_backend", "study", "use_backend", "use_op", "trace", "shapes"]
