"""benchmarks/prenorm_vs_postnorm.py: its hand-written backward is right, and it runs on its smallest setting."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npllama import gradcheck

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prenorm_vs_postnorm.py"


def load_script():
    spec = importlib.util.spec_from_file_location("prenorm_vs_postnorm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["prenorm", "postnorm", "prenorm_layernorm", "postnorm_rmsnorm"])
def test_each_variants_backward_passes_the_gradient_check(variant):
    bench = load_script()
    kind = bench.VARIANTS[variant][1]
    params = bench.init_params(kind, vocab=7, D=8, F=6, layers=2, seed=1, std=0.3)
    rng = np.random.default_rng(2)
    for name, p in params.items():
        if p.ndim == 1:   # norm weights and biases away from 1 and 0, so their gradients are exercised
            p += 0.3 * rng.standard_normal(p.shape)
    tokens, targets = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))
    _, grads, _ = bench.loss_and_grads(variant, params, tokens, targets, layers=2, heads=2)
    assert set(grads) == set(params)
    loss = lambda *_: bench.loss_and_grads(variant, params, tokens, targets, layers=2, heads=2)[0]
    report = gradcheck(loss, params, grads, max_entries=8)
    report.raise_if_failed()
    assert report.max_err_over_bound < 0.5


def test_post_norm_puts_a_norm_on_the_skip_path_and_pre_norm_does_not():
    # pre-norm: the gradient reaching a block's input contains the block's output gradient
    # unchanged (identity path); post-norm: it is first multiplied by the norm's Jacobian.
    bench = load_script()
    rng = np.random.default_rng(3)
    for variant, identity in (("prenorm", True), ("postnorm", False)):
        params = bench.init_params(bench.VARIANTS[variant][1], vocab=7, D=8, F=6, layers=1, seed=0, std=0.0)
        x = rng.standard_normal((1, 4, 8))
        cos, sin = bench.rope_cos_sin(np.arange(4), 4, 10000.0)
        _, cache = bench.block_forward(variant, x, params, 0, 2, cos, sin)
        dout = rng.standard_normal(x.shape)
        dx = bench.block_backward(variant, dout, cache, {}, 0)
        # all weights 0: the sub-layers output 0 and pass no gradient, only the skip path remains
        assert np.allclose(dx, dout) == identity


def test_the_script_runs_on_its_smallest_setting(tmp_path):
    out = tmp_path / "r.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "gradient norm at initialisation" in run.stdout and "loss after 10 AdamW steps" in run.stdout
    result = json.loads(out.read_text())
    for variant in ("prenorm", "postnorm"):
        row = result["variants"][variant]
        assert len(row["layer_grad_norm"]) == 2 and all(g > 0 for g in row["layer_grad_norm"])
        (training,) = row["training"].values()
        assert training["train_loss_last10"] < row["init_loss"]   # ten steps already lower the loss


def test_bad_arguments_end_in_one_line():
    run = subprocess.run([sys.executable, str(SCRIPT), "--hidden", "30", "--heads", "4"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "--heads must divide --hidden" in run.stderr and "Traceback" not in run.stderr
