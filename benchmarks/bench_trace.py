"""What tracing costs: a loss_and_grads step with tracing off, on, and with no trace code at all.

    python benchmarks/bench_trace.py                      # tiny preset, B=4, T=64, numpy backend
    python benchmarks/bench_trace.py --preset stories15m --batch 1 --seq 64
    python benchmarks/bench_trace.py --quick              # a few seconds (used by the tests)

Variants, each timed as the best of --repeat steps:

    no trace code   npllama/model.py with every trace hook removed from its syntax tree (the
                    `_record(...)` calls, `t = active_trace()` and the `if t is not None:` blocks),
                    loaded as a separate module: the model as it would be without tracing at all
    tracing off     the real model, no trace active (what every training step pays)
    trace selective the real model inside `npllama.trace(include=["*.attn_probs"])`
    trace all       the real model inside `npllama.trace()`, every tensor copied

It also counts the hook calls of one step and times a bare ContextVar lookup, which bounds the
cost of "tracing off" from the other side.  Prints a table (ratios against "no trace code") and
writes JSON with --json.  No pass/fail: timings are for reading.
"""
from __future__ import annotations

import argparse
import ast
import contextvars
import importlib.util
import sys
import time
from pathlib import Path

from _bench import positive_int, print_table, write_json  # first: --threads; puts the repo on sys.path

import numpy as np  # noqa: E402

import npllama  # noqa: E402
from npllama import Llama, LlamaConfig, use_backend  # noqa: E402
from npllama import model as model_module  # noqa: E402


class _StripTraceHooks(ast.NodeTransformer):
    """Remove `_record(...)` statements, `t = active_trace()` and `if t is not None:` blocks."""

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_record":
            return None
        return node

    def visit_Assign(self, node):
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "active_trace":
            return None
        return node

    def visit_If(self, node):
        test = node.test
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "t"
                and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)):
            return node.orelse or None
        return self.generic_visit(node)

    def generic_visit(self, node):
        node = super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):  # a block emptied of hooks still needs a statement
            block = getattr(node, field, None)
            if isinstance(block, list) and not block and field == "body":
                setattr(node, field, [ast.Pass()])
        return node


def untraced_model_module():
    """npllama/model.py without its trace hooks, as the module `npllama._model_untraced`."""
    source = Path(model_module.__file__).read_text(encoding="utf-8")
    tree = ast.fix_missing_locations(_StripTraceHooks().visit(ast.parse(source)))
    spec = importlib.util.spec_from_loader("npllama._model_untraced", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "npllama"
    sys.modules[spec.name] = module
    exec(compile(tree, model_module.__file__, "exec"), module.__dict__)
    return module


def time_variants(variants: dict, repeat: int) -> dict:
    """Best seconds per step of each variant, the variants interleaved step by step so that a
    machine that speeds up or slows down during the run affects all of them alike."""
    times = {name: [] for name in variants}
    for i in range(repeat + 1):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            if i:  # the first round warms caches
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}  # the least disturbed step of each


def traced(model, tokens, targets, **patterns):
    def step():
        with npllama.trace(**patterns):
            model.loss_and_grads(tokens, targets)
    return step


def count_hook_calls(module, model, tokens, targets) -> int:
    """How many times one step of `model` asks for the active trace (module: where it looks it up)."""
    calls = [0]
    original = getattr(module, "active_trace", None)

    def counting():
        calls[0] += 1
        return original()

    module.active_trace = counting
    try:
        model.loss_and_grads(tokens, targets)
    finally:
        module.active_trace = original
    return calls[0]


def contextvar_lookup_seconds(n=200_000) -> float:
    var = contextvars.ContextVar("bench", default=None)
    get = var.get
    start = time.perf_counter()
    for _ in range(n):
        get()
    return (time.perf_counter() - start) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--seq", type=positive_int, default=64)
    parser.add_argument("--repeat", type=positive_int, default=7)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    parser.add_argument("--quick", action="store_true", help="a tiny model and 3 repeats")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    if args.quick:
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        args.batch, args.seq, args.repeat = 2, 16, 3
    else:
        config = LlamaConfig.from_preset(args.preset)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, size=(args.batch, args.seq))
    targets = rng.integers(0, config.vocab_size, size=(args.batch, args.seq))

    untraced = untraced_model_module()
    model = Llama(config, seed=0)
    bare = untraced.Llama(config, seed=0, params=model.params)

    with use_backend(args.backend):
        loss_a, _ = model.loss_and_grads(tokens, targets)
        loss_b, _ = bare.loss_and_grads(tokens, targets)
        assert loss_a == loss_b, "the stripped model must compute the same loss"
        results = time_variants({
            "no trace code": lambda: bare.loss_and_grads(tokens, targets),
            "tracing off": lambda: model.loss_and_grads(tokens, targets),
            "trace selective": traced(model, tokens, targets, include=["*.attn_probs"]),
            "trace all": traced(model, tokens, targets),
        }, args.repeat)
        hooks = count_hook_calls(model_module, model, tokens, targets)
        bare_hooks = count_hook_calls(untraced, bare, tokens, targets)
    lookup = contextvar_lookup_seconds()

    base = results["no trace code"]
    print(f"{args.preset if not args.quick else 'quick'}: {model.num_parameters():,} parameters, "
          f"B={args.batch}, T={args.seq}, backend {args.backend}, best of {args.repeat} steps")
    print_table([{"variant": name, "ms": seconds * 1e3, "ratio": seconds / base} for name, seconds in results.items()],
                [("variant", "variant", "s"), ("ms", "ms/step", ".2f"), ("ratio", "ratio", ".3f")])
    bound = hooks * lookup
    print(f"tracing off pays {hooks} active_trace() lookups per step, {lookup * 1e9:.0f} ns each: "
          f"{bound * 1e6:.1f} us = {bound / base:.2e} of a step")
    print(f"(the stripped model makes {bare_hooks} such lookups)")
    write_json(args.json, {"results_seconds": results, "hook_calls": hooks, "hook_calls_stripped": bare_hooks,
                           "contextvar_lookup_seconds": lookup})
    return results


if __name__ == "__main__":
    main()
