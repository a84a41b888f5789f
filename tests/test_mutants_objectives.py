"""The sentence-order head reads each row's last real token (found by mutation testing: a head
reading position T - 1 of every row, padding or not, passed every gradient check -- forward and
backward agree with each other -- and was caught only by a slow end-to-end training test)."""
import numpy as np
import pytest

from npllama import use_backend
from npllama.objectives import mlm_sop_forward

from .test_objectives import _sop_batch, perturbed_model, tiny_config


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sop_logits_are_the_head_on_each_rows_last_real_token(backend):
    model = perturbed_model(tiny_config())
    batch = _sop_batch(model.config)                  # row 2 is padded after 3 real tokens
    last_real = [int(np.flatnonzero(row)[-1]) for row in batch.attention_mask]
    assert last_real[2] < batch.attention_mask.shape[1] - 1
    sop_head = np.random.default_rng(3).standard_normal((2, model.config.hidden_size))
    with use_backend(backend):
        _, _, sop_logits, _ = mlm_sop_forward(model, sop_head, batch)
        hidden, _ = model.hidden_forward(batch.inputs, batch.attention_mask, causal=False)
    expected = np.stack([hidden[b, t] @ sop_head.T for b, t in enumerate(last_real)])
    np.testing.assert_allclose(sop_logits, expected, rtol=1e-12, atol=1e-12)
