"""Every public class, function and method of the modules a Python user calls says what it takes
and returns: a user reading `help(npllama.train.TrainResult)` gets prose, not the field list a
dataclass writes for itself, and `help(Comparison.ok)` is not blank."""
import importlib
import inspect

import pytest

MODULES = ["npllama.model", "npllama.config", "npllama.optim", "npllama.train", "npllama.finetune",
           "npllama.finetune_sop", "npllama.trace", "npllama.perplexity", "npllama.tokenizer", "npllama.data",
           "npllama.backend", "npllama.lora", "npllama.objectives", "npllama.classify"]


def has_own_doc(obj) -> bool:
    doc = obj.__doc__
    if not doc or not doc.strip():
        return False
    # a dataclass without a docstring gets "Name(field: type, ...)" as its __doc__
    return not (inspect.isclass(obj) and doc.startswith(obj.__name__ + "("))


def public_objects():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{module_name}.{name}", obj
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if isinstance(member, property) or inspect.isfunction(member):
                        yield f"{module_name}.{name}.{attr}", member


def test_every_public_class_function_and_method_has_a_docstring():
    missing = [name for name, obj in public_objects() if not has_own_doc(obj)]
    assert not missing, f"no docstring of their own: {missing}"


@pytest.mark.parametrize("name", ["npllama.train.TrainResult", "npllama.finetune.ClassifyResult",
                                  "npllama.finetune.SFTResult", "npllama.finetune_sop.SentenceOrderResult",
                                  "npllama.perplexity.PerplexityResult", "npllama.perplexity.MaskedLMResult"])
def test_what_a_job_returns_is_described(name):
    """The results the jobs return were dataclasses with no docstring (help() showed the field list)."""
    module, _, cls = name.rpartition(".")
    assert has_own_doc(getattr(importlib.import_module(module), cls))
