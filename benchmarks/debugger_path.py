"""How far a debugger walks before it reaches the math: the study path, counted with sys.settrace.

    python benchmarks/debugger_path.py            # a one-layer tiny model, the reference backend
    python benchmarks/debugger_path.py --layers 4 --list

Two figures, for someone who sets a breakpoint in Llama.loss_and_grads and steps into every call:

    to attention_backward   npllama function calls from the first line of loss_and_grads until entering
                            npllama/ops/attention.py's attention_backward (the forward pass of
                            every layer, the loss, and the backward down to the last layer's
                            attention); target: at most 40 with one layer
    inside one block        the calls made inside block_backward of the last layer, and how many
                            of them are plumbing; target: plumbing at most 20%

Plumbing is every call that is not math: the backend switch (npllama/backend.py), traces
(npllama/trace.py), argument checks (npllama/ops/_checks.py and any check_*/require_* function),
and Llama's public boundary (public_method, _math, _finish, _check_*, LayerWeights.of_layer).
--list prints every call.  No pass/fail here; tests/test_debugger_path.py holds the targets.
"""
from __future__ import annotations

import argparse
import os
import sys

from _bench import positive_int  # first: puts the repo on sys.path

import numpy as np  # noqa: E402

import npllama  # noqa: E402
from npllama import Llama, LlamaConfig  # noqa: E402

PACKAGE = os.path.dirname(os.path.abspath(npllama.__file__))
PLUMBING_FILES = ("backend.py", "trace.py", os.path.join("ops", "_checks.py"))
# exceeded: the memory-budget check _check_inputs makes before any array is allocated
PLUMBING_NAMES = ("public_method", "_math", "_finish", "of_layer", "active_trace", "exceeded")


def is_plumbing(path: str, name: str) -> bool:
    return (path.endswith(PLUMBING_FILES) or name in PLUMBING_NAMES or name.startswith(("check_", "_check", "require_")))


def record_calls(run) -> list[tuple[str, str, int]]:
    """(file relative to the package, function name, depth) of every npllama call `run` makes."""
    calls, depth = [], [0]

    def tracer(frame, event, arg):
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGE):
            return None
        calls.append((os.path.relpath(path, PACKAGE), frame.f_code.co_name, depth[0]))
        depth[0] += 1

        def local(frame, event, arg):
            if event == "return":
                depth[0] -= 1
            return local
        return local

    sys.settrace(tracer)
    try:
        run()
    finally:
        sys.settrace(None)
    return calls


def measure(layers: int = 1, batch: int = 2, seq: int = 8):
    config = LlamaConfig.from_preset("tiny", num_hidden_layers=layers)
    model = Llama(config, seed=0)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch, seq + 1))
    with npllama.use_backend("numpy"):
        model.loss_and_grads(tokens[:, :-1], tokens[:, 1:])   # warm up: imports, rope tables
        calls = record_calls(lambda: model.loss_and_grads(tokens[:, :-1], tokens[:, 1:]))
    target = next(i for i, (path, name, _) in enumerate(calls)
                  if name == "attention_backward" and path == os.path.join("ops", "attention.py"))
    # A breakpoint in loss_and_grads stops after its decorator's wrapper was entered: count from there.
    entry = next(i for i, (_, name, _) in enumerate(calls) if name == "loss_and_grads")
    to_attention = calls[entry + 1:target]
    # the last layer's backward is the first block_backward; its calls are the deeper ones after it
    start = next(i for i, (_, name, _) in enumerate(calls) if name == "block_backward")
    block_depth = calls[start][2]
    inside = []
    for call in calls[start + 1:]:
        if call[2] <= block_depth:
            break
        inside.append(call)
    plumbing = [c for c in inside if is_plumbing(c[0], c[1])]
    return {"to_attention_backward": len(to_attention),
            "to_attention_backward_plumbing": sum(is_plumbing(p, n) for p, n, _ in to_attention),
            "inside_block_backward": len(inside), "inside_block_backward_plumbing": len(plumbing),
            "calls": calls, "target_index": target}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=positive_int, default=1, help="decoder layers (default: 1)")
    parser.add_argument("--list", action="store_true", help="print every call up to attention_backward")
    args = parser.parse_args(argv)
    m = measure(args.layers)
    if args.list:
        for path, name, depth in m["calls"][:m["target_index"] + 1]:
            tag = "  (plumbing)" if is_plumbing(path, name) else ""
            print(f"{'  ' * depth}{name}  [{path}]{tag}")
    print(f"tiny preset with {args.layers} layer(s), reference backend, B=2, T=8")
    print(f"  calls from inside loss_and_grads to attention_backward: {m['to_attention_backward']} "
          f"({m['to_attention_backward_plumbing']} plumbing)")
    share = m["inside_block_backward_plumbing"] / max(1, m["inside_block_backward"])
    print(f"  calls inside one block_backward: {m['inside_block_backward']}, of which plumbing "
          f"{m['inside_block_backward_plumbing']} ({share:.0%})")
    return m


if __name__ == "__main__":
    main()
