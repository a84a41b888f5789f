"""Each derivation's FINAL vectorised backward formula, transcribed from the .md as written, against
the op's backward in npllama/ops (float64, tiny shapes, random inputs); and, at the end, the
intermediate steps a slip could hide in.

A derivation and its code cannot drift apart silently: if the code changes, the formula here no
longer matches it; if the .md changes, `test_cited_lines_still_hold_the_formula` fails until the
transcription below is brought in line.  The formulas here use only NumPy and the symbols of the
.md; nothing below calls the op whose backward it checks, except to get the answer to compare with.
The ops' forward passes are used only to make the caches their backwards read.
"""
import math
from pathlib import Path

import numpy as np
import pytest

from npllama.ops.attention import attention_backward, attention_forward
from npllama.ops.classifier import classifier_backward, classifier_forward
from npllama.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from npllama.ops.embedding import embedding_backward, embedding_forward
from npllama.ops.layernorm import layernorm_backward, layernorm_forward
from npllama.ops.linear import linear_backward, linear_forward
from npllama.ops.lora import lora_backward, lora_forward
from npllama.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from npllama.ops.rope import rope_backward, rope_cos_sin, rope_forward, rope_inv_freq
from npllama.ops.softmax import softmax_backward, softmax_forward
from npllama.ops.swiglu import swiglu_backward, swiglu_forward

ROOT = Path(__file__).resolve().parent.parent

# (file, first line, last line, a snippet the cited lines must contain): the formula each test
# below transcribes.  Line numbers are 1-based, inclusive.
CITED = {
    "rmsnorm": ("rmsnorm.md", 72, 77, r"\mathrm{dx} = \mathrm{rstd}\,\big(\mathrm{dxhat} - \mathrm{xhat}\cdot\mathrm{mean}(\mathrm{dxhat}\odot\mathrm{xhat})\big)"),
    "layernorm": ("layernorm.md", 86, 93, "\\mathrm{mean}(\\mathrm{dxhat}) -\n"
                  r"\mathrm{xhat}\cdot\mathrm{mean}(\mathrm{dxhat}\odot\mathrm{xhat})\Big)}"),
    "linear": ("linear.md", 47, 50, r"\mathrm{dweight} = \mathrm{dy}^\top\,x"),
    "embedding": ("embedding.md", 55, 56, "np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, D))"),
    "softmax": ("softmax.md", 57, 59, r"\mathrm{dx} = p\odot\big(\mathrm{dp} - \textstyle\sum_{\text{last axis}}(\mathrm{dp}\odot p)\big)"),
    "cross_entropy": ("cross_entropy.md", 94, 98, "scale = dloss / n_counted if n_counted else 0"),
    "attention": ("attention.md", 202, 215, r"dk_g &= \mathrm{scale}\textstyle\sum_{h:\ g(h) = g} d\_attn\_scores_h^T q_h"),
    "rope": ("rope.md", 160, 163, r"dx = dy \odot \mathrm{cos} - \mathrm{rotate\_half}(dy \odot \mathrm{sin})"),
    "rope_llama3": ("rope.md", 100, 110, r"(1 - \mathrm{smooth})\,\mathrm{inv\_freq}_i / \mathrm{factor} + \mathrm{smooth}\cdot\mathrm{inv\_freq}_i"),
    "swiglu": ("swiglu.md", 99, 107, r"d\mathrm{gate} &= d\mathrm{act}\odot\mathrm{up}\odot\sigma\odot\big(1 + \mathrm{gate}\odot(1-\sigma)\big)"),
    "lora": ("lora.md", 78, 82, "dlora_A = d_lora_hidden.reshape(-1, r).T @ x_drop.reshape(-1, in_)"),
    "classifier": ("classifier.md", 76, 78, "dhidden[np.arange(B), last_index] = dpooled"),
    "mlm": ("mlm.md", 53, 57, r"\mathrm{dlogits}_{b,t} = c_{b,t}\,(\mathrm{softmax}(\mathrm{logits}_{b,t}) - \mathrm{onehot}(\mathrm{targets}_{b,t}))/\sum c"),
    "sentence_order": ("sentence_order.md", 58, 64, r"$`(-(\sigma - y),\ \sigma - y) = p_b - \mathrm{onehot}(y_b)`$"),
    "transformer_block": ("transformer_block.md", 143, 149, r"dx &= dh + J_{\mathrm{N}_{w_{in}}}^T J_{\mathrm{Attn}}^T\, dh"),
    "adamw": ("adamw.md", 191, 196, "p -= lr * m_hat / (sqrt(v_hat) + eps)"),
    # intermediate steps, where a slip (a transpose, a factor, a sign, a grouping) would not reach
    # the final formula above but would mislead a student following the derivation
    "rmsnorm_two_paths": ("rmsnorm.md", 51, 63, r"\sum_j \mathrm{dxhat}_j\,x_j\cdot\Big(-\frac{\mathrm{rstd}^3\,x_k}{D}\Big)"),
    "layernorm_steps": ("layernorm.md", 36, 65, r"\mathrm{dx}_j = \mathrm{dx\_centered}_j + \frac{\mathrm{dmean}}{D}"),
    "softmax_jacobian": ("softmax.md", 40, 53, r"\frac{\partial p_j}{\partial x_i} = p_j\,(\delta_{ij} - p_i)"),
    "cross_entropy_via_softmax": ("cross_entropy.md", 88, 89, r"$`\mathrm{dp} = -\mathrm{onehot}/p`$ collapses to $`p - \mathrm{onehot}`$"),
    "attention_group_sum": ("attention.md", 142, 153, r"linear map $`v \mapsto Ev`$"),
    "attention_mask_offset": ("attention.md", 77, 79, r"\mathrm{allowed}_{b,t,s} = \big(\neg\,\mathrm{causal} \ \lor\ s \le q\_offset + t\big)\ \land\ \mathrm{key\_padding\_mask}_{b,s}"),
    "adamw_clip": ("adamw.md", 144, 154, r"\mathrm{clip\_coef} = \mathrm{max\_norm}/(\mathrm{total\_norm} + 10^{-6})"),
    "adamw_schedule": ("adamw.md", 168, 177, r"\mathrm{min\_lr} + (\mathrm{max\_lr}-\mathrm{min\_lr})\cdot\tfrac12\big(1+\cos(\pi\cdot\mathrm{progress})\big)"),
    "rope_pairs": ("rope.md", 148, 150, r"$`dx_{i+h} = -dy_i \sin\phi + dy_{i+h}\cos\phi`$"),
    "adamw_moments": ("adamw.md", 63, 70, r"m_t = (1-\beta_1)\sum_{i=1}^{t} \beta_1^{\,t-i}\, g_i"),
    "swiglu_silu_derivative": ("swiglu.md", 34, 80, r"\mathrm{silu}'(z) = \sigma(z) + z\,\sigma(z)(1-\sigma(z)) = \sigma(z)\big(1 + z(1 - \sigma(z))\big)"),
    "transformer_block_head": ("transformer_block.md", 104, 138, "`decoder_backward` sets the pad token's row of this lookup gradient to 0"),
    "rmsnorm_eps_fraction": ("rmsnorm.md", 79, 82, r"a fraction" "\n"
                             r"$`\mathrm{mean\_square}/(\mathrm{mean\_square} + \mathrm{eps})`$ of it otherwise"),
    "rope_sin_negated": ("rope.md", 153, 156, r"the forward with $`\mathrm{sin}`$ negated"),
    "rope_dynamic_ntk": ("rope.md", 118, 124, r"$`\theta\,(\mathrm{factor}\cdot T/T_{\max} - (\mathrm{factor} - 1))^{d/(d-2)}`$"),
    "rope_dynamic_ntk_slowed": ("rope.md", 121, 124, r"is slowed by $`s^{2i/(d-2)}`$"),
    "attention_padding_key": ("attention.md", 166, 167, r"give it $`dv = 0`$ and $`dk = 0`$"),
    "softmax_rows_sum_0": ("softmax.md", 63, 63, r"$`\sum_i\mathrm{dx}_i = 0`$"),
    "cross_entropy_rows_sum_0": ("cross_entropy.md", 101, 101, "Each counted row of `dlogits` sums to zero"),
    "embedding_exercise_1": ("embedding.md", 87, 89, "`tokens = [2, 2, 0]`, `V = 3`, `D = 1`, `dout = [[1], [10], [100]]`"),
}


@pytest.mark.parametrize("name", sorted(CITED))
def test_cited_lines_still_hold_the_formula(name):
    file, first, last, snippet = CITED[name]
    lines = (ROOT / "derivations" / file).read_text(encoding="utf-8").splitlines()
    cited = "\n".join(lines[first - 1:last])
    assert snippet in cited, (f"derivations/{file}:{first}-{last} no longer holds the formula this test "
                              f"transcribes ({snippet!r}); update the transcription and the citation")


def test_every_derivation_is_transcribed():
    assert {file[:-3] for file, *_ in CITED.values()} == {p.stem for p in (ROOT / "derivations").glob("*.md")}


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


def close(a, b, tol=1e-12):
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    assert rel_err(a, b) < tol, rel_err(a, b)


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


# ----- the transcribed formulas, reused by the whole-block test ---------------------------------

def rmsnorm_formula(dy, x, rstd, weight):
    """rmsnorm.md:72-77."""
    xhat = x * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    dweight = np.sum((dy * xhat).reshape(-1, x.shape[-1]), axis=0)
    return dx, dweight


def linear_formula(dy, x, weight):
    """linear.md:47-50: dx = dy weight, dweight = dy^T x (leading axes flattened)."""
    return dy @ weight, dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])


def rotate_half(x):
    """rope.md: rotate_half([x1, x2]) = [-x2, x1]."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_formula(dy, cos, sin):
    """rope.md:160-163."""
    return dy * cos - rotate_half(dy * sin)


def softmax_rows(scores):
    """attention.md's softmax over s with -inf masked; a row with no allowed key is all zeros."""
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), 0.0, m)
    e = np.exp(scores - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(s > 0, s, 1.0)


def attention_formula(dout, q, k, v, allowed):
    """attention.md:202-215, per batch element and query head h, kv head g(h) = h // n_rep."""
    B, H, T, hd = q.shape
    KVH = k.shape[1]
    n_rep = H // KVH
    scale = 1 / math.sqrt(hd)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    probs = np.zeros((B, H, T, k.shape[2]))
    for b in range(B):
        for h in range(H):
            g = h // n_rep
            attn_scores = np.where(allowed[b], scale * q[b, h] @ k[b, g].T, -np.inf)
            attn_probs = softmax_rows(attn_scores)
            d_attn_probs = dout[b, h] @ v[b, g].T
            d_attn_scores = attn_probs * (d_attn_probs - np.sum(d_attn_probs * attn_probs, axis=-1, keepdims=True))
            dq[b, h] = scale * d_attn_scores @ k[b, g]
            dk[b, g] += scale * d_attn_scores.T @ q[b, h]
            dv[b, g] += attn_probs.T @ dout[b, h]
            probs[b, h] = attn_probs
    return dq, dk, dv, probs


def swiglu_formula(dout, x, w_gate, w_up, w_down):
    """swiglu.md:99-107 (the forward's gate, up, sigma, act recomputed from the .md's forward)."""
    D, F = w_down.shape
    gate, up = x @ w_gate.T, x @ w_up.T
    sigma = 1 / (1 + np.exp(-gate))          # fine here: |gate| is small
    act = gate * sigma * up
    rows = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    dact = dout @ w_down
    dW_down = rows(dout).T @ rows(act)
    dgate = dact * up * sigma * (1 + gate * (1 - sigma))
    dup = dact * gate * sigma
    dx = dgate @ w_gate + dup @ w_up
    dW_gate = rows(dgate).T @ rows(x)
    dW_up = rows(dup).T @ rows(x)
    return dx, dW_gate, dW_up, dW_down


# ----- one test per derivation --------------------------------------------------------------------

def test_rmsnorm(rng):
    x, weight, dy = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal((2, 3, 5))
    _, cache = rmsnorm_forward(x, weight, 1e-5)
    rstd = 1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)   # the .md's forward
    for mine, theirs in zip(rmsnorm_formula(dy, x, rstd, weight), rmsnorm_backward(dy, cache)):
        close(mine, theirs)


def test_layernorm(rng):
    x, weight, bias, dy = (rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5),
                           rng.standard_normal((2, 3, 5)))
    _, cache = layernorm_forward(x, weight, bias, 1e-5)
    mean = np.mean(x, axis=-1, keepdims=True)
    rstd = (np.mean((x - mean) ** 2, axis=-1, keepdims=True) + 1e-5) ** -0.5
    xhat = (x - mean) * rstd
    dxhat = dy * weight                                                    # layernorm.md:86-93
    dx = rstd * (dxhat - np.mean(dxhat, axis=-1, keepdims=True)
                 - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    dweight = np.sum((dy * xhat).reshape(-1, 5), axis=0)
    dbias = np.sum(dy.reshape(-1, 5), axis=0)
    for mine, theirs in zip((dx, dweight, dbias), layernorm_backward(dy, cache)):
        close(mine, theirs)


def test_linear(rng):
    x, weight, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((2, 3, 5))
    _, cache = linear_forward(x, weight)
    for mine, theirs in zip(linear_formula(dy, x, weight), linear_backward(dy, cache)):
        close(mine, theirs)


def test_embedding(rng):
    V, D = 5, 3
    tokens = np.array([[2, 2, 0], [4, 2, 1]])
    weight, dout = rng.standard_normal((V, D)), rng.standard_normal((2, 3, D))
    _, cache = embedding_forward(tokens, weight)
    dweight = np.zeros((V, D), weight.dtype)                               # embedding.md:55-56
    np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, D))
    close(dweight, embedding_backward(dout, cache))


def test_softmax(rng):
    x, dp = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 6))
    x[0, 0, 2:] = -np.inf                                                  # a masked stretch
    x[1, 2, :] = -np.inf                                                   # a fully masked row
    p, cache = softmax_forward(x)
    dx = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))                 # softmax.md:57-59
    close(dx, softmax_backward(dp, cache))
    assert np.all(dx[1, 2] == 0)
    assert np.abs(dx.sum(axis=-1)).max() < 1e-14                           # softmax.md:63: no (1,...,1) part


@pytest.mark.parametrize("all_ignored", [False, True])
def test_cross_entropy(rng, all_ignored):
    logits = rng.standard_normal((2, 3, 7)) * 3
    targets = np.array([[1, -100, 6], [0, 3, -100]])
    if all_ignored:
        targets[:] = -100
    dloss = 0.7
    _, cache = cross_entropy_forward(logits, targets)
    # cross_entropy.md:94-98, with its forward's names
    logits_shape, N = logits.shape, 6
    logits_2d, targets_1d = logits.reshape(N, -1), targets.reshape(-1)
    counted = targets_1d != -100
    n_counted = int(counted.sum())
    safe_targets = np.where(counted, targets_1d, 0)
    shifted = logits_2d - logits_2d.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    dlogits = probs.copy()
    dlogits[np.arange(N), safe_targets] -= 1
    scale = dloss / n_counted if n_counted else 0
    dlogits = np.where(counted[:, None], dlogits * scale, 0)
    dlogits = dlogits.reshape(logits_shape)
    close(dlogits, cross_entropy_backward(np.float64(dloss), cache))     # all ignored: both exactly 0
    assert np.abs(dlogits.sum(axis=-1)).max() < 1e-15                      # cross_entropy.md:101: rows sum to 0


@pytest.mark.parametrize("H, KVH, causal, padded", [(4, 2, True, True), (3, 3, False, False), (2, 1, True, False)])
def test_attention(rng, H, KVH, causal, padded):
    B, T, hd = 2, 4, 3
    q, k, v = rng.standard_normal((B, H, T, hd)), rng.standard_normal((B, KVH, T, hd)), rng.standard_normal((B, KVH, T, hd))
    dout = rng.standard_normal((B, H, T, hd))
    key_padding_mask = None
    allowed = np.ones((B, T, T), dtype=bool)
    if causal:
        allowed &= np.tril(np.ones((T, T), dtype=bool))                    # s <= q_offset + t, q_offset 0
    if padded:
        key_padding_mask = np.ones((B, T), dtype=bool)
        key_padding_mask[1, :2] = False                                    # left padding: query 0 of row 1 sees nothing
        allowed &= key_padding_mask[:, None, :]
    _, cache = attention_forward(q, k, v, causal, key_padding_mask)
    dq, dk, dv, probs = attention_formula(dout, q, k, v, allowed)
    close(probs, cache.attn_probs)
    for mine, theirs in zip((dq, dk, dv), attention_backward(dout, cache)):
        close(mine, theirs)
    if padded:                                                             # attention.md:166-167
        assert np.all(dk[1, :, :2] == 0) and np.all(dv[1, :, :2] == 0)
        assert np.all(np.abs(dv[1, :, 2:]).sum(axis=-1) > 0)               # the real keys do get some


def test_rope(rng):
    x, dy = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((2, 3, 5, 6))
    cos, sin = rope_cos_sin(np.arange(7, 12), 6, 10000.0, {"rope_type": "llama3", "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    _, cache = rope_forward(x, cos, sin)
    close(rope_formula(dy, cos, sin), rope_backward(dy, cache))
    # the formula is the gradient for any tables, not only ones whose halves agree (rope.md)
    cos2, sin2 = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    _, cache2 = rope_forward(x, cos2, sin2)
    close(rope_formula(dy, cos2, sin2), rope_backward(dy, cache2))


def test_rope_sin_negated(rng):
    """rope.md:153-156: with real tables (halves agree) the backward is the forward with sin negated;
    with tables whose halves differ it is not, though the formula above still is the gradient."""
    dy = rng.standard_normal((2, 3, 5, 6))
    cos, sin = rope_cos_sin(np.arange(4, 9), 6, 10000.0)
    _, cache = rope_forward(dy, cos, sin)
    close(rope_backward(dy, cache), rope_forward(dy, cos, -sin)[0])
    cos2, sin2 = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    _, cache2 = rope_forward(dy, cos2, sin2)
    assert rel_err(rope_backward(dy, cache2), rope_forward(dy, cos2, -sin2)[0]) > 1e-3


def test_rope_dynamic_ntk_base():
    """rope.md:118-124: transformers' dynamic base theta * s^(d/(d-2)), s = factor * T/T_max - (factor - 1),
    slows pair i by s^(2i/(d-2)): pair 0 not at all, the slowest pair by exactly s (position
    interpolation); npllama, which never runs past T_max, keeps plain RoPE's frequencies."""
    d, theta, factor, T_max = 64, 10000.0, 4.0, 2048
    plain = rope_inv_freq(d, theta)
    np.testing.assert_array_equal(rope_inv_freq(d, theta, {"rope_type": "dynamic", "factor": factor}), plain)
    for T in (T_max, 3000, 4 * T_max):
        s = factor * T / T_max - (factor - 1)
        raised = rope_inv_freq(d, theta * s ** (d / (d - 2)))
        assert raised[0] == 1.0
        assert math.isclose(plain[-1] / raised[-1], s, rel_tol=1e-12)
        close(plain / raised, s ** (2 * np.arange(d // 2) / (d - 2)))


def test_rope_llama3_inv_freq():
    """rope.md:100-110, the one forward formula checked here: LLaMA-3's three frequency bands (a
    convention students and ports get wrong), against rope_inv_freq, with pairs in every band."""
    d, rope_theta = 64, 500000.0
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    T_orig, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    inv_freq = rope_theta ** (-2 * np.arange(d // 2) / d)
    lam = 2 * np.pi / inv_freq
    lam_low, lam_high = T_orig / low_freq_factor, T_orig / high_freq_factor
    smooth = (T_orig / lam - low_freq_factor) / (high_freq_factor - low_freq_factor)
    expected = np.where(lam > lam_low, inv_freq / factor,
                        np.where(lam < lam_high, inv_freq, (1 - smooth) * inv_freq / factor + smooth * inv_freq))
    assert (lam > lam_low).any() and (lam < lam_high).any() and ((lam >= lam_high) & (lam <= lam_low)).any()
    close(expected, rope_inv_freq(d, rope_theta, scaling), 1e-15)


def test_swiglu(rng):
    D, F = 4, 6
    x, dout = rng.standard_normal((2, 3, D)), rng.standard_normal((2, 3, D))
    w_gate, w_up, w_down = rng.standard_normal((F, D)), rng.standard_normal((F, D)), rng.standard_normal((D, F))
    _, cache = swiglu_forward(x, w_gate, w_up, w_down)
    for mine, theirs in zip(swiglu_formula(dout, x, w_gate, w_up, w_down), swiglu_backward(dout, cache)):
        close(mine, theirs)


@pytest.mark.parametrize("dropout", [False, True])
def test_lora(rng, dropout):
    in_, out, r, scaling = 5, 4, 2, 1.5
    x, dy = rng.standard_normal((2, 3, in_)), rng.standard_normal((2, 3, out))
    weight, lora_A, lora_B = rng.standard_normal((out, in_)), rng.standard_normal((r, in_)), rng.standard_normal((out, r))
    dropout_mask = (rng.random(x.shape) > 0.3) / 0.7 if dropout else None
    _, cache = lora_forward(x, weight, lora_A, lora_B, scaling, dropout_mask)
    x_drop = x * dropout_mask if dropout else x
    lora_hidden = x_drop @ lora_A.T
    d_lora_out = scaling * dy                                              # lora.md:78-82
    dlora_B = d_lora_out.reshape(-1, out).T @ lora_hidden.reshape(-1, r)
    d_lora_hidden = d_lora_out @ lora_B
    dlora_A = d_lora_hidden.reshape(-1, r).T @ x_drop.reshape(-1, in_)
    dx = dy @ weight + (d_lora_hidden @ lora_A) * (dropout_mask if dropout else 1)
    for mine, theirs in zip((dx, dlora_A, dlora_B), lora_backward(dy, cache)):
        close(mine, theirs)


def test_classifier(rng):
    B, T, D, num_labels = 3, 4, 5, 3
    hidden, S = rng.standard_normal((B, T, D)), rng.standard_normal((num_labels, D))
    last_index = np.array([3, 1, 2])
    dlogits = rng.standard_normal((B, num_labels))
    _, cache = classifier_forward(hidden, S, last_index)
    pooled = hidden[np.arange(B), last_index]
    dpooled, dscore_weight = dlogits @ S, dlogits.T @ pooled              # classifier.md step 1
    dhidden = np.zeros(hidden.shape, dtype=dpooled.dtype)                 # classifier.md:76-78
    dhidden[np.arange(B), last_index] = dpooled
    for mine, theirs in zip((dhidden, dscore_weight), classifier_backward(dlogits, cache)):
        close(mine, theirs)


def test_mlm(rng):
    B, T, V, D = 2, 5, 7, 4
    h, W_head = rng.standard_normal((B, T, D)), rng.standard_normal((V, D))
    targets = np.full((B, T), -100)
    targets[0, 1], targets[1, 3], targets[1, 4] = 3, 0, 6                 # the chosen positions
    logits, head_cache = linear_forward(h, W_head)
    _, ce_cache = cross_entropy_forward(logits, targets)
    c = targets != -100                                                    # mlm.md:53-55
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(V)[np.where(c, targets, 0)]
    dlogits = c[..., None] * (p - onehot) / c.sum()
    dlogits_op = cross_entropy_backward(np.float64(1.0), ce_cache)
    close(dlogits, dlogits_op)
    dh, dW_head = dlogits @ W_head, dlogits.reshape(-1, V).T @ h.reshape(-1, D)   # mlm.md step 2
    for mine, theirs in zip((dh, dW_head), linear_backward(dlogits_op, head_cache)):
        close(mine, theirs)


def test_sentence_order(rng):
    B, T, D = 4, 3, 5
    hidden, S = rng.standard_normal((B, T, D)), rng.standard_normal((2, D))
    last_index, y = np.array([2, 1, 2, 0]), np.array([0, 1, 1, 0])
    sop_logits, sop_cache = classifier_forward(hidden, S, last_index)
    _, sop_ce = cross_entropy_forward(sop_logits, y)
    d_sop_logits = cross_entropy_backward(np.float64(1.0), sop_ce)
    delta = sop_logits[:, 1] - sop_logits[:, 0]                            # sentence_order.md:58-64
    sigma = 1 / (1 + np.exp(-delta))
    logistic = np.stack([-(sigma - y), sigma - y], axis=1) / B
    close(logistic, d_sop_logits)
    dhidden_sop, dS = classifier_backward(d_sop_logits, sop_cache)
    close(dS, logistic.T @ hidden[np.arange(B), last_index])               # sentence_order.md step 2
    expected = np.zeros_like(hidden)
    expected[np.arange(B), last_index] = logistic @ S
    close(dhidden_sop, expected)


def test_transformer_block(rng):
    """transformer_block.md:143-149 and its steps 9-1, built from the formulas transcribed above (not
    from the ops), against npllama.model.block_backward."""
    from npllama.config import LlamaConfig
    from npllama.model import LayerWeights, block_backward, block_forward

    B, T, D, H, KVH, F = 2, 3, 8, 4, 2, 12
    hd = D // H
    config = LlamaConfig(vocab_size=11, hidden_size=D, intermediate_size=F, num_hidden_layers=1,
                         num_attention_heads=H, num_key_value_heads=KVH, max_position_embeddings=16)
    shapes = [(D,), (H * hd, D), (KVH * hd, D), (KVH * hd, D), (D, H * hd), (D,), (F, D), (F, D), (D, F)]
    w = LayerWeights(*(rng.standard_normal(s) * (1 if len(s) == 1 else 0.5) for s in shapes))
    x, dout = rng.standard_normal((B, T, D)), rng.standard_normal((B, T, D))
    cos, sin = rope_cos_sin(np.arange(T), hd, 10000.0)
    eps = config.rms_norm_eps
    _, cache = block_forward(x, w, cos, sin, config, True, None)

    # the forward, as the .md numbers it (needed for what each backward formula reads)
    rstd = lambda a: 1 / np.sqrt(np.mean(a * a, -1, keepdims=True) + eps)  # noqa: E731
    heads = lambda a, n: a.reshape(B, T, n, hd).transpose(0, 2, 1, 3)     # noqa: E731
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, -1)           # noqa: E731
    xn = x * rstd(x) * w.input_layernorm                                    # 1
    q, k, v = heads(xn @ w.q_proj.T, H), heads(xn @ w.k_proj.T, KVH), heads(xn @ w.v_proj.T, KVH)   # 2
    q_rot = q * cos + rotate_half(q) * sin                                  # 3
    k_rot = k * cos + rotate_half(k) * sin
    allowed = np.broadcast_to(np.tril(np.ones((T, T), dtype=bool)), (B, T, T))
    _, _, _, probs = attention_formula(np.zeros((B, H, T, hd)), q_rot, k_rot, v, allowed)
    a = merge(probs @ np.repeat(v, H // KVH, axis=1))                       # 4, 5 (merge)
    h = x + a @ w.o_proj.T                                                  # 5 (W_o), 6
    hn = h * rstd(h) * w.post_attention_layernorm                          # 7

    # the backward: dh = dout + J_N_post^T J_SwiGLU^T dout;  dx = dh + J_N_in^T J_Attn^T dh
    dhn, dW_gate, dW_up, dW_down = swiglu_formula(dout, hn, w.gate_proj, w.up_proj, w.down_proj)   # 9, 8
    dh_norm, dw_post = rmsnorm_formula(dhn, h, rstd(h), w.post_attention_layernorm)                 # 7
    dh = dout + dh_norm
    da, dW_o = linear_formula(dh, a, w.o_proj)                                                       # 6, 5
    dq_rot, dk_rot, dv, _ = attention_formula(da.reshape(B, T, H, hd).transpose(0, 2, 1, 3),
                                              q_rot, k_rot, v, allowed)                               # 4
    dq, dk = rope_formula(dq_rot, cos, sin), rope_formula(dk_rot, cos, sin)                          # 3
    dxn_q, dW_q = linear_formula(merge(dq), xn, w.q_proj)                                            # 2
    dxn_k, dW_k = linear_formula(merge(dk), xn, w.k_proj)
    dxn_v, dW_v = linear_formula(merge(dv), xn, w.v_proj)
    dx_norm, dw_in = rmsnorm_formula(dxn_q + dxn_k + dxn_v, x, rstd(x), w.input_layernorm)           # 1
    dx = dh + dx_norm

    dx_code, grads = block_backward(dout, cache)
    close(dx, dx_code)
    mine = LayerWeights(dw_in, dW_q, dW_k, dW_v, dW_o, dw_post, dW_gate, dW_up, dW_down)
    for field, m, t in zip(LayerWeights._fields, mine, grads):
        assert rel_err(m, t) < 1e-12, field


def test_adamw(rng):
    """adamw.md:191-196 against npllama.optim.AdamW.step: a decayed matrix and an undecayed vector,
    three steps with different learning rates."""
    from npllama.optim import AdamW

    params = {"w": rng.standard_normal((3, 4)), "norm": rng.standard_normal(4)}
    mine = {n: p.copy() for n, p in params.items()}
    lr0, beta1, beta2, eps, weight_decay = 1e-2, 0.9, 0.95, 1e-8, 0.1
    opt = AdamW(params, lr=lr0, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    m = {n: np.zeros_like(p) for n, p in mine.items()}
    v = {n: np.zeros_like(p) for n, p in mine.items()}
    for t, lr in enumerate((1e-2, 3e-3, 5e-2), start=1):
        grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
        opt.step({n: g.copy() for n, g in grads.items()}, lr=lr)
        for n, g in grads.items():
            p = mine[n]
            if n == "w":                                   # decay[name]: 2-D only (default_no_decay)
                p *= 1 - lr * weight_decay
            m[n] *= beta1
            m[n] += (1 - beta1) * g
            v[n] *= beta2
            v[n] += (1 - beta2) * (g * g)
            m_hat = m[n] / (1 - beta1 ** t)
            v_hat = v[n] / (1 - beta2 ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
        for n in params:
            close(mine[n], params[n], 1e-14)
            close(m[n], opt.m[n], 1e-14)
            close(v[n], opt.v[n], 1e-14)


# ----- intermediate steps -----------------------------------------------------------------------

def test_rmsnorm_two_paths(rng):
    """rmsnorm.md:51-63, one row: d rstd / d x_k = -rstd^3 x_k / D, and x_k's direct path through
    xhat_k plus its path through rstd into every xhat_j."""
    D, eps = 6, 1e-3
    x, weight, dy = rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal(D)
    _, cache = rmsnorm_forward(x, weight, eps)
    mean_square = np.mean(x * x)
    rstd = 1 / np.sqrt(mean_square + eps)
    drstd_dx = -0.5 * (mean_square + eps) ** -1.5 * 2 * x / D              # line 53
    close(drstd_dx, -rstd**3 * x / D)                                      # line 54
    dxhat = dy * weight
    dx = dxhat * rstd + np.sum(dxhat * x) * (-rstd**3 * x / D)             # lines 61-62
    close(dx, rmsnorm_backward(dy, cache)[0])


def test_rmsnorm_eps_fraction(rng):
    """rmsnorm.md:79-82 and exercise 1 (lines 101-103): the bracket removes the fraction
    mean_square / (mean_square + eps) of dxhat's component along xhat (all of it when eps = 0), so
    <dx, x> = rstd <dxhat, x> eps / (mean_square + eps)."""
    D = 5
    x, weight, dy = rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal(D)
    for eps in (0.0, 0.3):
        _, cache = rmsnorm_forward(x, weight, eps)
        dx, _ = rmsnorm_backward(dy, cache)
        mean_square = np.mean(x * x)
        rstd = 1 / np.sqrt(mean_square + eps)
        xhat, dxhat = x * rstd, dy * weight
        component = (dxhat @ xhat) / (xhat @ xhat) * xhat
        close(xhat * np.mean(dxhat * xhat), mean_square / (mean_square + eps) * component)
        close(dx, rstd * (dxhat - mean_square / (mean_square + eps) * component))
        assert math.isclose(dx @ x, rstd * (dxhat @ x) * eps / (mean_square + eps), rel_tol=1e-12, abs_tol=1e-15)


def test_embedding_exercise_1():
    """embedding.md:87-89: the exercise runs as written; np.add.at (and the op) give row 2 the sum
    1 + 10, dweight[tokens] += dout keeps only the last write, 10, and row 2 is the only row that differs."""
    tokens, dout = np.array([2, 2, 0]), np.array([[1.0], [10.0], [100.0]])
    by_hand = np.array([[100.0], [0.0], [11.0]])
    dweight = np.zeros((3, 1))
    np.add.at(dweight, tokens, dout)
    np.testing.assert_array_equal(dweight, by_hand)
    _, cache = embedding_forward(tokens, np.zeros((3, 1)))
    np.testing.assert_array_equal(embedding_backward(dout, cache), by_hand)
    naive = np.zeros((3, 1))
    naive[tokens] += dout
    assert np.flatnonzero(naive[:, 0] != by_hand[:, 0]).tolist() == [2] and naive[2, 0] == 10.0


def test_layernorm_steps(rng):
    """layernorm.md:36-65, steps 1-6 in reverse, as written, against the closed form's code."""
    x, weight, bias, dy = (rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal(5),
                           rng.standard_normal((3, 5)))
    eps, D = 1e-5, 5
    _, cache = layernorm_forward(x, weight, bias, eps)
    mean = np.mean(x, axis=-1, keepdims=True)
    x_centered = x - mean
    var = np.mean(x_centered**2, axis=-1, keepdims=True)
    rstd = (var + eps) ** -0.5
    xhat = x_centered * rstd
    dxhat = dy * weight                                                    # 1
    drstd = np.sum(dxhat * x_centered, axis=-1, keepdims=True)             # 2
    dvar = drstd * (-0.5 * rstd**3)                                        # 3
    dx_centered = dxhat * rstd + dvar * 2 * x_centered / D                 # 4
    dmean = -np.sum(dx_centered, axis=-1, keepdims=True)                   # 5
    dx = dx_centered + dmean / D                                           # 6
    close(dx, layernorm_backward(dy, cache)[0])
    close(dx_centered, rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)))   # lines 78-80
    close(dmean, -rstd * np.sum(dxhat, axis=-1, keepdims=True))            # line 84


def test_softmax_jacobian(rng):
    """softmax.md:40-53: the Jacobian p_j (delta_ij - p_i), summed against dp."""
    x, dp = rng.standard_normal(6), rng.standard_normal(6)
    p, cache = softmax_forward(x)
    jacobian = p[:, None] * (np.eye(6) - p[None, :])                       # [j, i] = d p_j / d x_i
    close(jacobian.T @ dp, softmax_backward(dp, cache))


def test_cross_entropy_via_softmax(rng):
    """cross_entropy.md:88-89: softmax's backward with dp = -onehot / p is p - onehot (one counted
    row, dloss = 1, so n_counted = 1)."""
    logits, target = rng.standard_normal((1, 7)), np.array([4])
    _, cache = cross_entropy_forward(logits, target)
    p = softmax_rows(logits)
    dp = -np.eye(7)[target] / p
    dx = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))                 # softmax.md:57-59
    close(dx, p - np.eye(7)[target])
    close(dx, cross_entropy_backward(np.float64(1.0), cache))


def test_attention_group_sum(rng):
    """attention.md:142-153 and its g(h) = floor(h / n_rep) (line 49): repeat the kv heads with the
    0/1 matrix E (E[h, g] = 1 where g = g(h)), take plain multi-head gradients of the repeated k and
    v, and E^T (the group sum) gives the grouped op's dk and dv; E built by tiling does not."""
    B, H, KVH, T, hd = 1, 6, 2, 3, 2
    q, k, v = rng.standard_normal((B, H, T, hd)), rng.standard_normal((B, KVH, T, hd)), rng.standard_normal((B, KVH, T, hd))
    dout = rng.standard_normal((B, H, T, hd))
    _, cache = attention_forward(q, k, v, True)
    _, dk, dv = attention_backward(dout, cache)
    n_rep = H // KVH
    allowed = np.broadcast_to(np.tril(np.ones((T, T), dtype=bool)), (B, T, T))
    for E, grouping in ((np.eye(KVH)[np.arange(H) // n_rep], "interleave"), (np.eye(KVH)[np.arange(H) % KVH], "tile")):
        k_rep, v_rep = np.einsum("hg,bgsj->bhsj", E, k), np.einsum("hg,bgsj->bhsj", E, v)
        _, dk_rep, dv_rep, _ = attention_formula(dout, q, k_rep, v_rep, allowed)   # n_rep = 1
        dk_mine, dv_mine = np.einsum("hg,bhsj->bgsj", E, dk_rep), np.einsum("hg,bhsj->bgsj", E, dv_rep)
        if grouping == "interleave":
            close(dk_mine, dk)
            close(dv_mine, dv)
        else:
            assert rel_err(dv_mine, dv) > 1e-3


def test_rope_pairs(rng):
    """rope.md:148-150: per pair (i, i + h) at position p, dx is dy rotated by -phi."""
    T, d = 4, 6
    h = d // 2
    positions = np.arange(3, 3 + T)
    cos, sin = rope_cos_sin(positions, d, 10000.0)
    dy = rng.standard_normal((2, T, d))
    _, cache = rope_forward(rng.standard_normal((2, T, d)), cos, sin)
    phi = positions[:, None] * 10000.0 ** (-2 * np.arange(h) / d)          # (T, h)
    dy_i, dy_ih = dy[..., :h], dy[..., h:]
    dx = np.concatenate([dy_i * np.cos(phi) + dy_ih * np.sin(phi),
                         -dy_i * np.sin(phi) + dy_ih * np.cos(phi)], axis=-1)
    close(dx, rope_backward(dy, cache))


def test_adamw_moments(rng):
    """adamw.md:63-70: after t steps m_t = (1 - beta1) sum_i beta1^(t-i) g_i and likewise v_t with g^2;
    adamw.md:94-95: the first step is lr * g / (|g| + eps)."""
    from npllama.optim import AdamW

    beta1, beta2, lr, eps = 0.9, 0.95, 1e-2, 1e-8
    params = {"w": rng.standard_normal((2, 3))}
    start = params["w"].copy()
    opt = AdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0)
    gs = [rng.standard_normal((2, 3)) for _ in range(4)]
    for t, g in enumerate(gs, start=1):
        opt.step({"w": g.copy()})
        if t == 1:
            close(params["w"], start - lr * g / (np.abs(g) + eps), 1e-14)
        close(opt.m["w"], (1 - beta1) * sum(beta1 ** (t - i) * gs[i - 1] for i in range(1, t + 1)), 1e-14)
        close(opt.v["w"], (1 - beta2) * sum(beta2 ** (t - i) * gs[i - 1] ** 2 for i in range(1, t + 1)), 1e-14)


def test_attention_mask_with_offset(rng):
    """attention.md:73-91: query t sits at q_offset + t, allowed = (not causal or s <= q_offset + t)
    and key_padding_mask[b, s]; a chunk of T new queries after S - T cached keys (q_offset = S - T)
    gives the last T rows of the full forward over all S positions."""
    B, H, KVH, S, T, hd = 2, 4, 2, 5, 2, 3
    q_all = rng.standard_normal((B, H, S, hd))
    k, v = rng.standard_normal((B, KVH, S, hd)), rng.standard_normal((B, KVH, S, hd))
    dout = rng.standard_normal((B, H, T, hd))
    key_padding_mask = np.ones((B, S), dtype=bool)
    key_padding_mask[1, :2] = False                                        # left padding in row 1
    q_offset = S - T
    q = q_all[:, :, q_offset:]                                             # the T new queries
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    allowed = (s <= q_offset + t) & key_padding_mask[:, None, :]           # line 78, causal
    out, cache = attention_forward(q, k, v, True, key_padding_mask, q_offset)
    dq, dk, dv, probs = attention_formula(dout, q, k, v, allowed)
    close(probs, cache.attn_probs)
    for mine, theirs in zip((dq, dk, dv), attention_backward(dout, cache)):
        close(mine, theirs)
    full, _ = attention_forward(q_all, k, v, True, key_padding_mask)       # lines 88-91
    close(out, full[:, :, q_offset:])


def test_adamw_clip(rng):
    """adamw.md:144-154: total_norm over every entry of every gradient, clip_coef = max_norm /
    (total_norm + 1e-6) applied when below 1, the norm from before clipping returned."""
    from npllama.optim import clip_grad_norm

    for max_norm in (0.5, 1e3):                                            # clipped, left alone
        grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
        before = {n: g.copy() for n, g in grads.items()}
        total_norm = math.sqrt(sum(np.sum(g**2) for g in before.values()))     # line 145
        clip_coef = max_norm / (total_norm + 1e-6)                             # line 150
        assert math.isclose(clip_grad_norm(grads, max_norm), total_norm, rel_tol=1e-14)
        for n in grads:
            close(grads[n], before[n] * clip_coef if clip_coef < 1 else before[n], 1e-14)


def test_adamw_schedule():
    """adamw.md:168-177: linear warmup from (step + 1) / warmup_steps, half a cosine from max_lr to
    min_lr, then min_lr."""
    from npllama.optim import cosine_with_warmup

    max_lr, min_lr, warmup_steps, total_steps = 3e-3, 3e-4, 4, 11
    for step in range(total_steps + 3):
        if step < warmup_steps:
            lr = max_lr * (step + 1) / warmup_steps
        elif step < total_steps:
            progress = (step - warmup_steps) / (total_steps - warmup_steps)
            lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            lr = min_lr
        assert math.isclose(cosine_with_warmup(step, max_lr=max_lr, warmup_steps=warmup_steps,
                                               total_steps=total_steps, min_lr=min_lr), lr, rel_tol=1e-14), step


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tied", [False, True])
def test_transformer_block_head_and_embedding(tied, causal):
    """transformer_block.md:104-138, the steps around the blocks: dlogits, the LM head, the final
    norm, and the embedding's scatter-add with its one exception (the pad row of the lookup gradient
    is 0 in the causal stack; the bidirectional stack keeps it) and, tied, the LM head's gradient
    added into E -- against Llama.loss_and_grads on a padded batch."""
    import npllama
    from npllama import Llama, LlamaConfig
    from npllama.model import block_backward

    V, pad = 13, 2
    config = LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                         tie_word_embeddings=tied, pad_token_id=pad)
    model = Llama(config, seed=3, dtype=np.float64)
    tokens = np.array([[4, 7, pad, 9, 5], [pad, pad, 3, 11, 6]])   # pad also read as a real token in row 0
    attention_mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    targets = np.array([[7, pad, 9, 5, -100], [-100, -100, 11, 6, -100]])
    with npllama.use_backend("numpy"):                                     # caches block_backward reads
        _, grads = model.loss_and_grads(tokens, targets, attention_mask, causal=causal)
        logits, cache = model.forward_with_caches(tokens, attention_mask, causal=causal)
    E = model.params["model.embed_tokens.weight"]
    W_lm = E if tied else model.params["lm_head.weight"]
    hidden = cache.lm_head.x

    counted = targets != -100                                              # 1
    dlogits = counted[..., None] * (softmax_rows(logits) - np.eye(V)[np.where(counted, targets, 0)]) / counted.sum()
    dhidden, dW_lm = linear_formula(dlogits, hidden, W_lm)                 # 2
    x_L, rstd_L, w_norm = cache.norm
    dx, dw_norm = rmsnorm_formula(dhidden, x_L, rstd_L, w_norm)            # 3
    close(dw_norm, grads["model.norm.weight"])
    for layer in reversed(cache.layers):                                   # blocks: test_transformer_block
        dx, _ = block_backward(dx, layer)
    dE = np.zeros_like(E)                                                  # the scatter-add
    np.add.at(dE, tokens.reshape(-1), dx.reshape(-1, E.shape[1]))
    assert np.abs(dE[pad]).max() > 0                                       # the math's gradient of the pad row...
    if causal:
        dE[pad] = 0                                                        # ...which the causal stack drops, as transformers does
    if tied:
        dE = dE + dW_lm
        assert "lm_head.weight" not in grads
    else:
        close(dW_lm, grads["lm_head.weight"])
    close(dE, grads["model.embed_tokens.weight"])


def test_swiglu_silu_derivative():
    """swiglu.md:34-80: the stable sigma (e = exp(-|z|), two branches) and silu'(z) =
    sigma (1 + z (1 - sigma)) against central differences of z sigma(z), in float64 and float32 out
    to |z| = 1000 with no overflow or invalid value (sigma underflowing to 0 gives exactly 0, never inf * 0), and the
    minimum of SiLU at z* ~ -1.278 where silu' = 0 and silu ~ -0.278."""
    from npllama.ops.swiglu import swiglu_act_backward, swiglu_act_forward

    def sigma(z):                                                          # lines 37-39
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1 / (1 + e), e / (1 + e))

    def dsilu(z):                                                          # line 71
        s = sigma(z)
        return s * (1 + z * (1 - s))

    for dtype in (np.float64, np.float32):
        z = np.array([-1000.0, -800.0, -100.0, -30.0, -3.0, -1.0, -1e-3, 0.0, 2e-3, 1.5, 20.0, 800.0, 1000.0], dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is the point
            mine = dsilu(z)
            _, cache = swiglu_act_forward(z, np.ones_like(z))
            dgate, _ = swiglu_act_backward(np.ones_like(z), cache)
        assert mine.dtype == dtype and np.all(np.isfinite(mine))
        close(mine, dgate, 1e-6 if dtype == np.float32 else 1e-15)
        assert mine[0] == 0 and mine[-1] == 1                             # the limits of line 75-78
    z, h = np.linspace(-40, 40, 801), 1e-6
    silu = lambda a: a * sigma(a)                                          # noqa: E731
    np.testing.assert_allclose(dsilu(z), (silu(z + h) - silu(z - h)) / (2 * h), rtol=1e-7, atol=1e-9)
    z_star = -1.2784645427610738                                          # root of 1 + z (1 - sigma(z)) = 0
    assert abs(dsilu(np.array(z_star))) < 1e-15 and math.isclose(silu(np.array(z_star)), -0.2784645, rel_tol=1e-6)
