"""Planted bugs: wrong student files, each with the diagnosis `exercise check` must give it.

The tests run every one of these through `check_file` and assert the named check fails first with
a message containing `expect`.  A teacher can write them into a folder to see the table:

    from npllama.exercises.planted import write_planted
    write_planted("linear", "demo/")       # then: npllama exercise check linear demo/
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class PlantedBug:
    op: str
    label: str       # the kind of bug, e.g. "wrong sign"
    check: str       # the check that must fail first
    grad: str        # the gradient the diagnosis must name
    expect: str      # a phrase the diagnosis (message or hint) must contain
    source: str      # a complete student file


def _bug(op, label, check, grad, expect, body):
    return PlantedBug(op, label, check, grad, expect, "import numpy as np\n\n\n" + body.strip() + "\n")


PLANTED = [
    _bug("linear", "wrong sign", "gradient", "dx", "sign", """
def linear_backward(dy, cache):
    x, weight = cache
    dx = -(dy @ weight)
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return dx, dweight
"""),
    _bug("linear", "transposed weight", "returns", "dweight", "transpose", """
def linear_backward(dy, cache):
    x, weight = cache
    dx = dy @ weight
    dweight = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])   # (in, out): the transpose
    return dx, dweight
"""),
    _bug("linear", "counted twice", "gradient", "dweight", "2x", """
def linear_backward(dy, cache):
    x, weight = cache
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    dweight = dy2.T @ x2
    dweight += dy2.T @ x2            # accumulated twice
    return dy @ weight, dweight
"""),
    _bug("rmsnorm", "missing term", "gradient", "dx", "missing the term", """
def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    dx = rstd * dy * weight                     # forgets that rstd depends on x
    dweight = np.sum((dy * x * rstd).reshape(-1, x.shape[-1]), axis=0)
    return dx, dweight
"""),
    _bug("layernorm", "missing term", "gradient", "dx", "mean", """
def layernorm_backward(dy, cache):
    x, mean, rstd, weight = cache
    D = x.shape[-1]
    xhat = (x - mean) * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))   # no -mean(dxhat)
    return dx, np.sum((dy * xhat).reshape(-1, D), axis=0), np.sum(dy.reshape(-1, D), axis=0)
"""),
    _bug("cross_entropy", "wrong mask", "gradient", "dlogits", "ignored", """
def cross_entropy_backward(dloss, cache):
    probs, safe_targets, counted, n_counted, logits_shape = cache
    dlogits = probs.copy()
    dlogits[np.arange(len(safe_targets)), safe_targets] -= 1
    dlogits *= float(dloss) / max(n_counted, 1)          # every row, ignored ones too
    return dlogits.reshape(logits_shape)
"""),
    _bug("cross_entropy", "wrong count", "gradient", "dlogits", "divided by every position", """
def cross_entropy_backward(dloss, cache):
    probs, safe_targets, counted, n_counted, logits_shape = cache
    dlogits = probs.copy()
    dlogits[np.arange(len(safe_targets)), safe_targets] -= 1
    dlogits *= counted[:, None] * (float(dloss) / len(safe_targets))   # N, not n_counted
    return dlogits.reshape(logits_shape)
"""),
    _bug("softmax", "missing term", "gradient", "dx", "normalisation", """
def softmax_backward(dp, cache):
    p = cache
    return p * dp
"""),
    _bug("rope", "wrong sign", "gradient", "dx", "transpose", """
from npllama.ops.rope import rotate_half


def rope_backward(dy, cache):
    cos, sin = cache
    return dy * cos + rotate_half(dy * sin)      # the rotation itself, not its transpose
"""),
    _bug("embedding", "repeated ids", "gradient", "dweight", "np.add.at", """
def embedding_backward(dout, cache):
    tokens, weight_shape, dtype = cache
    dweight = np.zeros(weight_shape, dtype=dtype)
    dweight[tokens.reshape(-1)] += dout.reshape(-1, weight_shape[1])
    return dweight
"""),
    _bug("attention", "missing scale", "gradient", "dq", "sqrt(head_dim)", """
def attention_backward(dout, cache):
    q, k, v, p = cache.q, cache.k, cache.v, cache.attn_probs
    B, H, T, hd = q.shape
    KVH, S = k.shape[1], k.shape[2]
    n_rep = H // KVH
    g = lambda a: a.reshape(B, KVH, n_rep, *a.shape[2:])
    d_probs = (g(dout) @ v[:, :, None].swapaxes(-1, -2)).reshape(B, H, T, S)
    dv = (g(p).swapaxes(-1, -2) @ g(dout)).sum(axis=2)
    d_scores = p * (d_probs - np.sum(d_probs * p, axis=-1, keepdims=True))
    dq = (g(d_scores) @ k[:, :, None]).reshape(B, H, T, hd)              # scale forgotten
    dk = (g(d_scores).swapaxes(-1, -2) @ g(q)).sum(axis=2)
    return dq, dk, dv
"""),
    _bug("attention", "kv heads not summed", "returns", "dk", "sum the gradients", """
def attention_backward(dout, cache):
    q, k, v, p, scale = cache.q, cache.k, cache.v, cache.attn_probs, cache.scale
    n_rep = cache.n_rep
    k_rep, v_rep = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)
    d_probs = dout @ v_rep.swapaxes(-1, -2)
    dv = p.swapaxes(-1, -2) @ dout                                       # (B, H, S, hd): one per query head
    d_scores = p * (d_probs - np.sum(d_probs * p, axis=-1, keepdims=True))
    return d_scores @ k_rep * scale, d_scores.swapaxes(-1, -2) @ q * scale, dv
"""),
    _bug("swiglu_act", "missing term", "gradient", "dgate", "second term", """
def swiglu_act_backward(dact, cache):
    gate, up, gate_sigmoid, silu_gate = cache
    return dact * up * gate_sigmoid, dact * silu_gate     # silu'(z) taken as sigmoid(z)
"""),
    _bug("swiglu", "missing branch", "gradient", "dx", "gate branch", """
from npllama.ops.linear import linear_backward
from npllama.ops.swiglu import swiglu_act_backward


def swiglu_backward(dout, cache):
    gate_cache, up_cache, act_cache, down_cache = cache
    dact, dw_down = linear_backward(dout, down_cache)
    dgate, dup = swiglu_act_backward(dact, act_cache)
    dx, dw_gate = linear_backward(dgate, gate_cache)
    _, dw_up = linear_backward(dup, up_cache)            # x's gradient through up is dropped
    return dx, dw_gate, dw_up, dw_down
"""),
    _bug("lora", "missing scaling", "gradient", "dlora_A", "scaling", """
def lora_backward(dy, cache):
    x_drop, weight, lora_A, lora_B, scaling, dropout_mask, lora_hidden = cache
    d_hidden = dy @ lora_B                                # scaling forgotten
    dlora_B = scaling * dy.reshape(-1, dy.shape[-1]).T @ lora_hidden.reshape(-1, lora_hidden.shape[-1])
    dlora_A = d_hidden.reshape(-1, d_hidden.shape[-1]).T @ x_drop.reshape(-1, x_drop.shape[-1])
    dx_drop = scaling * d_hidden @ lora_A
    if dropout_mask is not None:
        dx_drop = dx_drop * dropout_mask
    return dy @ weight + dx_drop, dlora_A, dlora_B
"""),
    _bug("classifier", "wrong position", "gradient", "dhidden", "last position", """
def classifier_backward(dlogits, cache):
    (pooled, score_weight), last_index, hidden_shape = cache
    dhidden = np.zeros(hidden_shape, dtype=pooled.dtype)
    dhidden[:, -1] = dlogits @ score_weight               # the end of the row, not last_index
    return dhidden, dlogits.T @ pooled
"""),
]

def correct_source(op: str) -> str:
    """A correct, self-contained student file for `op`: the project's own backward with its
    argument checks left out, the npllama functions it calls copied in (the exercise's helpers
    are imported, as a student may), so it passes screen.py's import rule."""
    from .definitions import get_exercise

    exercise = get_exercise(op)
    allowed = {name: module for module, name in exercise.helpers}
    imports = {f"from {allowed[n]} import {n}" for n in allowed}
    copied, todo = [], [exercise.reference]
    while todo:
        fn = todo.pop(0)
        if any(fn is done for done, _ in copied):
            continue
        copied.append((fn, _without_argument_checks(inspect.getsource(fn))))
        for name in fn.__code__.co_names:
            value = fn.__globals__.get(name)
            if inspect.isfunction(value) and value.__module__.startswith("npllama.") and name not in allowed \
                    and not _is_argument_check(name):
                todo.append(value)
    header = "import numpy as np\n" + "".join(f"{line}\n" for line in sorted(imports))
    return header + "\n\n" + "\n\n".join(src for _, src in copied)


def _is_argument_check(name: str) -> bool:
    return name.startswith(("require_", "check_"))


def _without_argument_checks(source: str) -> str:
    """The function without its argument checks: `if checking.get(...):` blocks and bare
    require_*/check_*_args calls (a student's file has no npllama.ops._checks)."""
    lines, skip_deeper_than = [], None
    for line in textwrap.dedent(source).splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        stripped = line.strip()
        if re.match(r"if checking\.get\(\)", stripped):
            skip_deeper_than = indent
            continue
        if re.match(r"(require_\w+|check_\w+_args)\(", stripped):
            continue
        line = re.sub(r"= check_\w+_args\((\w+), (\w+)\)$", r"= \2", line)   # `a, b = check_x_args(dout, cache)`
        lines.append(line)
    return "\n".join(lines) + "\n"


CORRECT = {op: correct_source(op) for op in ("embedding", "linear", "rmsnorm", "layernorm", "rope", "softmax",
                                              "attention", "swiglu_act", "swiglu", "cross_entropy", "lora",
                                              "classifier")}


def write_planted(op: str, folder) -> list[Path]:
    """Write the correct file and every planted bug of `op` into `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "correct.py"]
    written[0].write_text(CORRECT[op], encoding="utf-8")
    for bug in PLANTED:
        if bug.op == op:
            path = folder / (bug.label.replace(" ", "_") + ".py")
            path.write_text(bug.source, encoding="utf-8")
            written.append(path)
    return written
