"""Each Numba kernel against its NumPy reference, forward + backward, on the shapes training uses.

    python benchmarks/bench_kernels.py                    # s15m shapes (B=4, T=256, D=288, V=32000)
    python benchmarks/bench_kernels.py --shapes tiny      # tiny shapes (B=16, T=128, D=128, V=512)
    python benchmarks/bench_kernels.py --json kernels.json --repeat 10
    python benchmarks/bench_kernels.py --long-context     # also attention at T = 256 .. 2048

Each row times the reference op and the kernel on the same float32 inputs (best of --repeat),
forward and backward, and prints the ratio reference / kernel (above 1: the kernel is faster).
The process first calls keep_freed_memory(), as `npllama train` does (--no-keep-freed-memory:
glibc's defaults, where fresh gradients cost page faults).  For the ops that are mostly matrix
products (attention, swiglu, linear) it also times those products alone, with the kernel's own
shapes and blocks, and prints the ceiling they put on the ratio.  "adamw" updates every parameter of the s15m model once: npllama.optim.AdamW's NumPy arithmetic
against npllama.kernels.adamw.adamw_update.  --long-context adds causal attention at growing T
(B=1, 6 heads, hd=48): time and peak NumPy memory (tracemalloc) of the reference, the kernel
keeping its probabilities, and the flash path, which keeps memory linear in T.
"""
from __future__ import annotations

import argparse
import tracemalloc

from _bench import (CONFIGS, best_time, environment, machine_line, make_config, positive_int, print_table,  # first: --threads
                    write_json)

import numpy as np  # noqa: E402

from npllama import ops as reference  # noqa: E402
from npllama.kernels import KERNELS  # noqa: E402
from npllama.kernels import attention as attention_kernel  # noqa: E402
from npllama import optim  # noqa: E402
from npllama.kernels.adamw import adamw_update  # noqa: E402
from npllama.kernels.memory import keep_freed_memory  # noqa: E402
from npllama.ops.rope import rope_cos_sin  # noqa: E402


def op_inputs(shapes: str, rng) -> dict:
    """name -> (forward args, function making dout from out): the shapes of one layer's ops."""
    cfg = make_config(shapes)
    B, T = CONFIGS[shapes]["batch"], CONFIGS[shapes]["seq"]
    D, F, V, H, hd = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_attention_heads,
                      cfg.head_dim)
    f32 = np.float32

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(f32)

    cos, sin = rope_cos_sin(np.arange(T), hd, 10000.0, dtype=f32)
    heads_view = normal(B, T, H * hd).reshape(B, T, H, hd).transpose(0, 2, 1, 3)   # as the model has it
    tokens = rng.integers(0, V, size=(B, T))
    return {
        "embedding": ((tokens, normal(V, D, scale=0.02)), None),
        "linear": ((normal(B, T, D), normal(D, D, scale=0.02)), None),          # q, k, v, o projections
        "rmsnorm": ((normal(B, T, D), np.ones(D, f32), 1e-5), None),
        "rope": ((heads_view, cos, sin), None),
        "softmax": ((normal(B, H, T, T),), None),
        "attention": ((normal(B, H, T, hd), normal(B, H, T, hd), heads_view), None),
        "swiglu_act": ((normal(B, T, F), normal(B, T, F)), None),
        "swiglu": ((normal(B, T, D), normal(F, D, scale=0.02), normal(F, D, scale=0.02),
                    normal(D, F, scale=0.02)), None),
        "cross_entropy": ((normal(B, T, V), tokens), lambda out: np.float32(1.0)),
    }


def bench_op(name, args, make_dout, repeat, rng):
    row = {"kernel": name}
    for side, use_kernels in (("ref", False), ("numba", True)):
        # an op without a kernel for one direction (embedding's forward) runs its reference there
        forward, backward = (getattr(reference, f"{name}_{d}") for d in ("forward", "backward"))
        if use_kernels:
            forward = KERNELS.get(name + "_forward", forward)
            backward = KERNELS.get(name + "_backward", backward)
        out, cache = forward(*args)
        dout = make_dout(out) if make_dout else rng.standard_normal(np.shape(out)).astype(np.float32)
        row[f"{side}_fwd_ms"] = best_time(lambda: forward(*args), repeat)["best"] * 1e3
        # a fresh forward per backward: a cache is meant to be used once (cross-entropy's is)
        row[f"{side}_bwd_ms"] = best_time(lambda: backward(dout, forward(*args)[1]), repeat)["best"] * 1e3
        row[f"{side}_bwd_ms"] = max(row[f"{side}_bwd_ms"] - row[f"{side}_fwd_ms"], 0.0)
    row["fwd_ratio"] = row["ref_fwd_ms"] / row["numba_fwd_ms"]
    # cross-entropy's kernel computes the gradient in its forward pass: its backward is next to
    # nothing, and a ratio to it would only measure the timer's noise
    computes_in_forward = row["numba_bwd_ms"] < 0.05 * row["numba_fwd_ms"]
    row["bwd_ratio"] = None if computes_in_forward else row["ref_bwd_ms"] / row["numba_bwd_ms"]
    row["ratio"] = (row["ref_fwd_ms"] + row["ref_bwd_ms"]) / (row["numba_fwd_ms"] + row["numba_bwd_ms"])
    if name in PRODUCTS_ALONE:
        products = PRODUCTS_ALONE[name]
        row["blas_ms"] = best_time(lambda: products(*args, dout), repeat)["best"] * 1e3
        row["outside_blas_ms"] = max(row["numba_fwd_ms"] + row["numba_bwd_ms"] - row["blas_ms"], 0.0)
        row["ceiling"] = (row["ref_fwd_ms"] + row["ref_bwd_ms"]) / row["blas_ms"]
    return row


def attention_products(q, k, v, dout):
    """The attention kernel's matrix products alone, forward and backward, in its own causal query
    blocks (kernels.attention._query_blocks) and into preallocated outputs: the time the kernel
    cannot go below while its products stay as they are."""
    B, H, T, hd = q.shape
    blocks = attention_kernel._query_blocks(B, H, 1, T, T, 0, True, q.itemsize, True)
    k_t, v_t = k.swapaxes(-1, -2), v.swapaxes(-1, -2)
    out, dq, dk, dv = (np.zeros_like(q) for _ in range(4))
    for r0, r1, n_keys in blocks:
        rows = slice(r0, r1)
        scores = q[:, :, rows] @ k_t[..., :n_keys]                      # forward: q k^T
        np.matmul(scores, v[:, :, :n_keys], out=out[:, :, rows])         # forward: probs v
        dv[:, :, :n_keys] += scores.swapaxes(-1, -2) @ dout[:, :, rows]  # backward: probs^T dout
        np.matmul(dout[:, :, rows], v_t[..., :n_keys], out=scores)       # backward: dout v^T
        np.matmul(scores, k[:, :, :n_keys], out=dq[:, :, rows])          # backward: d_scores k
        dk[:, :, :n_keys] += scores.swapaxes(-1, -2) @ q[:, :, rows]     # backward: d_scores^T q


def swiglu_products(x, w_gate, w_up, w_down, dout):
    """The SwiGLU kernel's seven matrix products alone (gate and up into the halves of one array)."""
    D, F = x.shape[-1], w_gate.shape[0]
    x_rows, dout_rows = x.reshape(-1, D), dout.reshape(-1, D)
    gate_up = np.empty((x_rows.shape[0], 2 * F), dtype=x.dtype)
    np.matmul(x_rows, w_gate.T, out=gate_up[:, :F])
    np.matmul(x_rows, w_up.T, out=gate_up[:, F:])
    act = gate_up[:, :F]
    act @ w_down.T
    dout_rows.T @ act
    dout_rows @ w_down
    gate_up[:, :F] @ w_gate
    gate_up[:, F:] @ w_up
    gate_up.T @ x_rows


def linear_products(x, weight, dout):
    """The linear kernel's three products (y, dx, dweight) over all rows at once."""
    x_rows, dout_rows = x.reshape(-1, x.shape[-1]), dout.reshape(-1, weight.shape[0])
    x_rows @ weight.T
    dout_rows @ weight
    dout_rows.T @ x_rows


# The time a kernel cannot go below while its matrix products stay as they are
PRODUCTS_ALONE = {"attention": attention_products, "swiglu": swiglu_products, "linear": linear_products}


def bench_adamw(repeat, rng):
    """One AdamW step over every parameter of the s15m model."""
    shapes = make_config("s15m").param_shapes()
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    m = {n: np.zeros_like(p) for n, p in params.items()}
    v = {n: np.zeros_like(p) for n, p in params.items()}
    lr, beta1, beta2, eps, wd, t = 3e-4, 0.9, 0.95, 1e-8, 0.1, 10
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t

    def step(update):
        return lambda: [update(p, grads[n], m[n], v[n], lr, beta1, beta2, eps, wd, bc1, bc2)
                        for n, p in params.items()]

    ref = best_time(step(optim.adamw_update), repeat)["best"] * 1e3
    fused = best_time(step(adamw_update), repeat)["best"] * 1e3
    return {"kernel": "adamw (15M params)", "ref_fwd_ms": ref, "numba_fwd_ms": fused,
            "fwd_ratio": ref / fused, "ratio": ref / fused}


def bench_long_context(repeat, rng):
    """Causal attention forward + backward at growing T: time and peak NumPy memory."""
    rows = []
    B, H, hd = 1, 6, 48
    for T in (256, 512, 1024, 2048):
        q, k, v, dout = (rng.standard_normal((B, H, T, hd)).astype(np.float32) for _ in range(4))
        row = {"T": T, "probs_MiB": B * H * T * T * 4 / 2**20}
        variants = [("ref", reference.attention_forward, reference.attention_backward, None),
                    ("kept", attention_kernel.attention_forward, attention_kernel.attention_backward, 10**9),
                    ("flash", attention_kernel.attention_forward, attention_kernel.attention_backward, 1)]
        for label, forward, backward, flash_min in variants:
            saved = attention_kernel.FLASH_MIN_KEYS
            if flash_min is not None:
                attention_kernel.FLASH_MIN_KEYS = flash_min
            try:
                def step():
                    out, cache = forward(q, k, v)
                    backward(dout, cache)
                step()
                tracemalloc.start()
                step()
                row[f"{label}_peak_MiB"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
                row[f"{label}_ms"] = best_time(step, max(1, repeat // 2), warmup=0)["best"] * 1e3
            finally:
                attention_kernel.FLASH_MIN_KEYS = saved
        rows.append(row)
    return rows


def bench_matvec(shapes: str, repeat: int, rng) -> list[dict]:
    """The decode step's products at the config's shapes: q/k/v/o, gate/up, down, the LM head."""
    from npllama.kernels.decode import _matvec

    cfg = make_config(shapes)
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    rows = []
    for label, (out_dim, in_dim) in (("q/k/v/o", (D, D)), ("gate/up", (F, D)), ("down", (D, F)),
                                     ("lm_head", (V, D))):
        w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
        x = rng.standard_normal(in_dim).astype(np.float32)
        out = np.empty(out_dim, dtype=np.float32)
        blas = best_time(lambda: w @ x, repeat=max(repeat, 20))["median"]
        numba_s = best_time(lambda: _matvec(w, x, out), repeat=max(repeat, 20))["median"]
        rows.append({"matrix": f"{label} {out_dim}x{in_dim}", "MB": w.nbytes / 1e6, "blas_us": 1e6 * blas,
                     "numba_us": 1e6 * numba_s, "ratio": blas / numba_s, "GB_s": w.nbytes / numba_s / 1e9})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, help="BLAS, numba and torch threads (default: all cores)")
    parser.add_argument("--shapes", choices=sorted(CONFIGS), default="s15m")
    parser.add_argument("--repeat", type=positive_int, default=7)
    parser.add_argument("--long-context", action="store_true")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="leave glibc's malloc as it is instead of configuring it as `npllama train` "
                             "does (see npllama.kernels.memory)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    kept = False if args.no_keep_freed_memory else keep_freed_memory()

    env = environment()
    print(machine_line(env))
    print(f"kernels vs NumPy references, float32, {args.shapes} shapes; numba threads "
          f"{env['numba_threads']}, OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, "
          f"keep_freed_memory {'on' if kept else 'off'}")
    rows = [bench_op(name, a, make_dout, args.repeat, rng)
            for name, (a, make_dout) in op_inputs(args.shapes, rng).items()]
    rows.append(bench_adamw(args.repeat, rng))
    print_table(rows, [("kernel", "kernel", "s"), ("ref_fwd_ms", "ref fwd ms", ".2f"),
                       ("numba_fwd_ms", "numba fwd ms", ".2f"), ("ref_bwd_ms", "ref bwd ms", ".2f"),
                       ("numba_bwd_ms", "numba bwd ms", ".2f"), ("fwd_ratio", "fwd x", ".1f"),
                       ("bwd_ratio", "bwd x", ".1f"), ("ratio", "fwd+bwd x", ".1f"),
                       ("blas_ms", "its BLAS ms", ".2f"), ("outside_blas_ms", "rest ms", ".2f"),
                       ("ceiling", "ceiling x", ".1f")])
    print("its BLAS ms: the kernel's matrix products alone (same shapes, same blocks); rest ms: the "
          "kernel's time outside them;\nceiling x: reference / its BLAS ms, the ratio the kernel would "
          "reach if everything but its products took no time.")
    print("\n" + machine_line(env))
    print("decode's matrix-vector products (batch 1): kernels.decode._matvec (one core, inside the "
          "one-token numba call) vs NumPy's W @ x (BLAS gemv, all its threads)")
    matvec_rows = bench_matvec(args.shapes, args.repeat, rng)
    print_table(matvec_rows, [("matrix", "matrix (rows x cols)", "s"), ("MB", "MB", ".1f"),
                              ("blas_us", "BLAS gemv us", ".0f"), ("numba_us", "_matvec us", ".0f"),
                              ("ratio", "x", ".2f"), ("GB_s", "_matvec GB/s", ".1f")])
    long_rows = None
    if args.long_context:
        print("\n" + machine_line(env))
        print("\ncausal attention forward + backward, B=1, H=6, hd=48 "
              "(peak = NumPy allocations, tracemalloc)")
        long_rows = bench_long_context(args.repeat, rng)
        print_table(long_rows, [("T", "T", "d"), ("probs_MiB", "(B,H,T,T) MiB", ".0f"),
                                ("ref_ms", "ref ms", ".1f"), ("ref_peak_MiB", "ref peak MiB", ".0f"),
                                ("kept_ms", "kept ms", ".1f"), ("kept_peak_MiB", "kept peak MiB", ".0f"),
                                ("flash_ms", "flash ms", ".1f"), ("flash_peak_MiB", "flash peak MiB", ".1f")])
    write_json(args.json, {"shapes": args.shapes, "environment": env, "keep_freed_memory": kept, "kernels": rows,
                           "long_context": long_rows,
                           "decode_matvec": matvec_rows})


if __name__ == "__main__":
    main()
