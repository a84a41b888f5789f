"""The usage examples in the public docstrings run, so a renamed function or argument breaks this
test rather than the reader who copies the example.

An example is a block indented (4+ spaces) deeper than the text before it, after a blank line, in
the docstring of a public module, class, function or method (`examples()`).  Each one found is
listed below under its key, "<qualified name>:<n>" (the n-th example of that docstring): RUN
(run in a fresh namespace) or NOT_RUN (with the reason).  A new example must be put in one of
them.  A run example gets the module's names and the ones the prose leaves to the reader
(`model`, `tokenizer`, `tokens`, ... in `namespace()`), in a folder holding the files it names;
the few placeholders (`...`) and sizes too large for the test model are filled in, listed in RUN.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import shutil
import sys
import textwrap

import numpy as np
import pytest

import npllama
import npllama.io

MODULES = ["npllama", "npllama.backend", "npllama.config", "npllama.model", "npllama.tokenizer",
           "npllama.generate", "npllama.chat", "npllama.classify", "npllama.debug", "npllama.trace",
           "npllama.gradcheck", "npllama.data", "npllama.finetune", "npllama.finetune_sop",
           "npllama.objectives", "npllama.lora", "npllama.optim", "npllama.exercises",
           "npllama.tokenizer_json", "npllama.perplexity", "npllama.datasets", "npllama.corpus",
           "npllama.io", "npllama.kernels.decode", "npllama.loss_units"] + sorted(f"npllama.io.{m.name}" for m in pkgutil.iter_modules(npllama.io.__path__))
# the checker's public functions and classes are defined in its submodules (npllama.gradcheck re-exports
# them; npllama.gradcheck itself is the function, so the package is reached through import_module)
MODULES += sorted(f"npllama.gradcheck.{m.name}"
                  for m in pkgutil.iter_modules(importlib.import_module("npllama.gradcheck").__path__))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def examples(doc: str | None, margin: int) -> list[str]:
    """The indented blocks of a docstring whose text is indented by `margin` (its first line's too)."""
    if not doc:
        return []
    lines = doc.expandtabs().splitlines()
    indent = [margin] + [_indent(line) for line in lines[1:]]
    found, i = [], 1
    while i < len(lines):
        prose = next((j for j in reversed(range(i)) if lines[j].strip()), 0)
        if lines[i].strip() and not lines[i - 1].strip() and indent[i] >= indent[prose] + 4:
            end = i
            while end < len(lines) and (not lines[end].strip() or indent[end] >= indent[i]):
                end += 1
            found.append(textwrap.dedent("\n".join(lines[i:end])).strip("\n"))
            i = end
        else:
            i += 1
    return found


def documented_objects():
    """(module, qualified name, docstring, its text's indentation) for each public module and the
    functions, classes and methods it defines."""
    def margin(obj) -> int:
        return _indent(inspect.getsourcelines(obj)[0][0]) + 4

    for name in MODULES:
        module = importlib.import_module(name)
        yield name, name, module.__doc__, 0
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield name, f"{name}.{attr}", obj.__doc__, margin(obj)
            if inspect.isclass(obj):
                for method_name, method in vars(obj).items():
                    method = getattr(method, "__func__", method)   # classmethod, staticmethod
                    if inspect.isfunction(method) and not method_name.startswith("_"):
                        yield name, f"{name}.{attr}.{method_name}", method.__doc__, margin(method)


def all_examples() -> dict[str, tuple[str, str]]:
    """key -> (the module it is read in, the example)."""
    return {f"{where}:{n}": (module, code) for module, where, doc, margin in documented_objects()
            for n, code in enumerate(examples(doc, margin))}


NOT_RUN = {
    "npllama.backend:0": "a table of the switches, not code",
    "npllama.model:0": "pseudo-code of the forward pass",
    "npllama.data:1": "the token stream",
    "npllama.lora:0": "the formula",
    "npllama.optim.AdamW:0": "the update rule",
    "npllama.optim.SGD:0": "the update rule",
    "npllama.optim.cosine_with_warmup:0": "the schedule's formula",
    "npllama.exercises:0": "shell commands (tests/test_exercises.py runs them)",
    "npllama.exercises:2": "a pytest test, run by pytest (tests/test_exercise_audit_followups.py runs the one "
                           "`exercise start` prints)",
    "npllama.io.errors:0": "an example message",
    "npllama.io.llama2c_tokenizer:0": "the file layout",
    "npllama.io.safetensors:0": "the file layout",
    "npllama.io.train_state:0": "the folder layout",
}

# key -> what the example needs: `fill` replaces placeholders the prose leaves open (each must
# occur), `drop` removes lines (each must occur), `needs` modules importorskip'd; `check`: what its
# comments promise, evaluated after it.
RUN = {
    "npllama:0": {"check": "grads.keys() == model.params.keys()"},
    "npllama.tokenizer:0": {"check": "ids[0] == 1 and tok.decode(ids) == 'Lily had a red ball.'"},
    "npllama.generate:0": {"check": "len(batch) == 2 and isinstance(batch[0], list) and isinstance(text, str)"},
    "npllama.generate.StopStrings:0": {"fill": {", 200,": ", 20,"}},   # the test model's context is 128
    "npllama.generate.TextStream:0": {},
    "npllama.chat:0": {},
    "npllama.chat:1": {"fill": {"from npllama.generate import": 'template = ChatTemplate.for_folder("runs/sft/model", '
                                                                 'tokenizer)\nfrom npllama.generate import',
                                ", 200,": ", 20,"},   # (the test model's context is 128)
                       "check": "isinstance(answer, str) and len(new) <= 20"},
    "npllama.loss_units:0": {},
    "npllama.kernels.decode:0": {"fill": {"step(prompt_tokens)": "step(tokens[:1])",
                                          "step(next_tokens[:, None])": "step(tokens[:1, -1][:, None])"},
                                 "check": "logits.shape == (1, 1, model.config.vocab_size) and decoder.length == 9"},
    "npllama.classify:0": {},
    # compare_transformers: importing torch would take most of this test's time (tests/test_debug.py)
    "npllama.debug:0": {"drop": ["debug.compare_transformers("]},
    "npllama.trace:0": {"fill": {"t_numpy, t_numba": "t, t2"},   # (B, H, T, T):
                        "check": "t['model.layers.0.self_attn.attn_probs'].shape == (2, 4, 8, 8)"},
    "npllama.gradcheck:0": {},
    "npllama.data:0": {"check": "tokens.shape == targets.shape == (32, 128) and tokens.dtype == np.int64"},
    "npllama.data.Corpus:0": {"fill": {'Corpus("stories.txt")': 'Corpus("corpus.txt")',
                                       "for text in corpus: ...": "for text in corpus: pass"},
                              "check": "len(corpus) == 100 and corpus.n_chars == sum(map(len, corpus))"},
    "npllama.objectives:0": {"fill": {"mask_token_id=...": "mask_token_id=0",
                                      "vocab_size=...": "vocab_size=model.config.vocab_size",
                                      "special_ids=...": "special_ids=(1, 2)"}},
    "npllama.objectives:1": {},
    "npllama.lora:1": {"fill": {"AdamW(adapters.params, ...)": "AdamW(adapters.params, lr=1e-3)"}},
    "npllama.optim:0": {"fill": {"range(total_steps)": "range(2)"}},
    "npllama.exercises:1": {},
    "npllama.tokenizer_json:0": {},
    "npllama.perplexity:0": {"fill": {"context=seq_len": "context=16"}},
    "npllama.perplexity.read_held_out:0": {"fill": {"context=seq_len": "context=16"},
                                           "check": "len(documents) == 3"},   # held_out/'s stories
    "npllama.datasets:0": {"fill": {'("sentiment", seed=0)': '("sentiment", 20, seed=0)'},
                           "check": "names == ('negative', 'positive') and set(ids) == {0, 1}"},
    "npllama.corpus:0": {"fill": {"make_default_corpus()": "make_default_corpus(20)"}},
    "npllama.io.atomic:0": {"fill": {"write_text(...)": 'write_text("{}")'}},
    "npllama.io.describe:0": {},
    "npllama.io.gguf_export:0": {"needs": ["gguf"]},
    "npllama.io.gguf_import:0": {"needs": ["gguf"]},
    "npllama.io.hf:0": {},
    "npllama.io.llama2c:0": {},
    "npllama.io.llama2c_tokenizer:1": {"fill": {"vocab_size=32000": "vocab_size=400"}},
    "npllama.io.reading:0": {},
    "npllama.io.rotary_layout:0": {},
}

FOUND = all_examples()


def test_every_example_is_run_or_says_why_not():
    assert not set(RUN) & set(NOT_RUN)
    assert sorted(FOUND) == sorted(set(RUN) | set(NOT_RUN)), (
        "new examples (put them in RUN or NOT_RUN):\n"
        + "\n\n".join(f"{k}\n{FOUND[k][1]}" for k in set(FOUND) - set(RUN) - set(NOT_RUN))
        + "\nlisted but gone: " + ", ".join(sorted((set(RUN) | set(NOT_RUN)) - set(FOUND))))


@pytest.fixture(scope="module")
def workspace(small_model_dir, tmp_path_factory):
    """A folder holding every file the examples name, made once: model folders under the names
    they use, a classifier, a corpus, llama2.c and GGUF files."""
    from npllama import Llama
    from npllama.corpus import make_default_corpus
    from npllama.finetune import SequenceClassifier
    from npllama.runs import load_tokenizer
    from tests.io.llama2c_files import random_llama2c_weights, write_legacy, write_llama2c_tokenizer

    root = tmp_path_factory.mktemp("docstring_examples")
    for name in ("runs/tiny/model", "runs/x/model", "runs/sft/model", "path/to/folder", "TinyLlama-1.1B"):
        shutil.copytree(small_model_dir, root / name)
    model = Llama.from_pretrained(small_model_dir)
    tokenizer = load_tokenizer(small_model_dir)
    SequenceClassifier(model, ["negative", "positive"]).save(root / "runs/sentiment", tokenizer)
    stories = make_default_corpus(100, seed=0)
    (root / "corpus.txt").write_text("\n\n".join(stories), encoding="utf-8")
    (root / "held_out.txt").write_text(stories[0], encoding="utf-8")
    (root / "notes.txt").write_text("notes\n", encoding="utf-8")
    (root / "val.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in stories[:2]), encoding="utf-8")
    (root / "held_out").mkdir()
    (root / "held_out" / "stories.txt").write_text("\n".join(stories[2:5]), encoding="utf-8")
    (root / "runs/tiny/train_config.json").write_text(json.dumps({"steps": 2}), encoding="utf-8")
    write_legacy(root / "stories15M.bin", random_llama2c_weights(vocab_size=tokenizer.vocab_size))
    write_llama2c_tokenizer(root / "tokenizer.bin", small_model_dir / "tokenizer.model")
    return root


def namespace(small_model_dir, module_name: str) -> dict:
    """The module's names, and what the prose leaves to the reader: a float64 model and its tokenizer,
    tokens and targets (B, T), texts, small arrays for the gradient checks."""
    from npllama import Llama, LlamaConfig, Tokenizer
    from npllama.corpus import make_default_corpus
    from npllama.objectives import init_sop_head
    from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
    from npllama.optim import AdamW
    from npllama.trace import Trace
    from npllama.io.safetensors import write_safetensors

    rng = np.random.default_rng(0)
    model = Llama.from_pretrained(small_model_dir, dtype=np.float64)
    tokenizer = Tokenizer(small_model_dir / "tokenizer.model")
    tokens = rng.integers(3, model.config.vocab_size, size=(2, 8))
    prompt_ids = tokenizer.encode("Once upon a time")
    x, w = rng.standard_normal((3, 4)), rng.standard_normal(4)
    ns = dict(vars(importlib.import_module(module_name)))
    ns.update(np=np, npllama=npllama, sys=sys, Llama=Llama, LlamaConfig=LlamaConfig, Tokenizer=Tokenizer,
              Trace=Trace, AdamW=AdamW, write_safetensors=write_safetensors, rmsnorm_forward=rmsnorm_forward,
              rmsnorm_backward=rmsnorm_backward, rng=rng, model=model,
              other_model=Llama.from_pretrained(small_model_dir),
              tokenizer=tokenizer, tok=tokenizer, tokens=tokens, targets=np.roll(tokens, -1, axis=1),
              ids=prompt_ids, ids_a=prompt_ids, ids_b=prompt_ids[:2], prompt_ids=prompt_ids,
              texts=make_default_corpus(60, seed=0), vocab_size=model.config.vocab_size, params=model.params,
              sop_head_weight=init_sop_head(model.config.hidden_size, dtype=np.float64), total_steps=200,
              x=x, w=w, f=lambda x, w: x * w, dx=np.broadcast_to(w, x.shape).copy(), dw=x.sum(0),
              my_rmsnorm_backward=rmsnorm_backward, w_meta=rng.standard_normal((8, 4)), n_heads=2)
    return ns


@pytest.mark.parametrize("key", sorted(RUN))
def test_the_example_runs(key, small_model_dir, workspace, tmp_path, monkeypatch):
    how = RUN[key]
    for module in how.get("needs", []):
        pytest.importorskip(module)
    module, code = FOUND[key]
    for old, new in how.get("fill", {}).items():
        assert old in code, f"{key}: {old!r} is no longer in the example; update RUN"
        code = code.replace(old, new)
    for text in how.get("drop", []):
        assert text in code, f"{key}: {text!r} is no longer in the example; update RUN"
        code = "\n".join(line for line in code.splitlines() if text not in line)
    folder = tmp_path / "work"
    shutil.copytree(workspace, folder, symlinks=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HOME", str(tmp_path))      # "~/.cache/npllama" lands here
    if key == "npllama.io.gguf_import:0":
        from npllama.io.gguf_export import export_gguf

        export_gguf("runs/tiny/model", "model-q8_0.gguf", outtype="q8_0")
    ns = namespace(small_model_dir, module)
    exec(compile(code, key, "exec"), ns)   # noqa: S102
    if "check" in how:
        assert eval(how["check"], ns), f"{key}: {how['check']}"   # noqa: S307
