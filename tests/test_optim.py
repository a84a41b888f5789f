"""AdamW, SGD, schedules and clipping: against hand-written references, PyTorch (if installed),
closed forms, and the bad inputs each public function must reject."""
import math
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npllama.optim import (SGD, AdamW, NonFiniteGradientError, clip_finite_step, clip_grad_norm, constant,
                           cosine_with_warmup, default_no_decay, get_schedule, global_grad_norm)

EMBED = "model.embed_tokens.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"
SHAPES = {EMBED: (6, 4), Q_PROJ: (4, 4), NORM: (4,)}


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
    params[NORM] += 1.0  # norm weights live near 1
    return params


def make_grads_sequence(n_steps, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
            for _ in range(n_steps)]


def copy_dict(d):
    return {k: v.copy() for k, v in d.items()}


def reference_adamw(params0, grads_seq, lrs, betas, eps, weight_decay, decayed):
    """torch.optim.AdamW written out one formula a line, with fresh arrays (no in-place)."""
    beta1, beta2 = betas
    out = {}
    for name, p in params0.items():
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
            g = grads[name]
            if name in decayed:
                p = p * (1 - lr * weight_decay)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * (g * g)
            m_hat = m / (1 - beta1 ** t)
            v_hat = v / (1 - beta2 ** t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out[name] = (p, m, v)
    return out


# --- AdamW -------------------------------------------------------------------------------------

def test_adamw_matches_hand_written_reference_exactly_and_updates_in_place():
    params = make_params()
    params0 = copy_dict(params)
    arrays_before = {name: p for name, p in params.items()}
    grads_seq = make_grads_sequence(5)
    lrs = [1e-2, 3e-2, 2e-2, 5e-3, 1e-2]  # vary lr through the override, as a schedule would
    opt = AdamW(params, lr=0.123, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for grads, lr in zip(grads_seq, lrs):
        opt.step(grads, lr=lr)

    ref = reference_adamw(params0, grads_seq, lrs, (0.9, 0.95), 1e-8, 0.1, decayed={EMBED, Q_PROJ})
    for name in params:
        assert params[name] is arrays_before[name]  # in place: the same array objects
        p_ref, m_ref, v_ref = ref[name]
        assert np.array_equal(params[name], p_ref), name
        assert np.array_equal(opt.m[name], m_ref), name
        assert np.array_equal(opt.v[name], v_ref), name
        assert not np.array_equal(params[name], params0[name])
    assert opt.step_count == 5
    assert opt.lr == 0.123  # the override was for those steps only


def test_adamw_first_step_is_lr_times_sign_thanks_to_bias_correction():
    # At t = 1, m_hat = g and v_hat = g^2 exactly (up to rounding), so the step is lr * g / (|g| + eps).
    # Without bias correction it would be lr * (1 - beta1) / sqrt(1 - beta2) * sign(g) ~ 0.45 lr.
    params = make_params()
    params0 = copy_dict(params)
    grads = make_grads_sequence(1)[0]
    opt = AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    opt.step(grads)
    for name in params:
        expected_step = 1e-3 * grads[name] / (np.abs(grads[name]) + 1e-8)
        np.testing.assert_allclose(params0[name] - params[name], expected_step, rtol=1e-9)


def test_adamw_decay_is_decoupled_and_skips_norm_weights():
    # With a zero gradient the Adam part is 0 / (0 + eps) = 0: only the decay moves p,
    # by exactly the factor (1 - lr * weight_decay), and only for decayed (>= 2-D) parameters.
    params = make_params()
    params0 = copy_dict(params)
    zero_grads = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    opt = AdamW(params, lr=0.01, weight_decay=0.5)
    opt.step(zero_grads)
    assert np.array_equal(params[EMBED], params0[EMBED] * (1 - 0.01 * 0.5))  # embeddings decayed
    assert np.array_equal(params[Q_PROJ], params0[Q_PROJ] * (1 - 0.01 * 0.5))
    assert np.array_equal(params[NORM], params0[NORM])  # norm weight not decayed


def test_default_no_decay_and_custom_mask():
    params = make_params()
    assert default_no_decay(NORM, params[NORM]) is True
    assert default_no_decay(Q_PROJ, params[Q_PROJ]) is False
    assert default_no_decay(EMBED, params[EMBED]) is False
    opt = AdamW(params, no_decay=lambda name, a: "embed_tokens" in name or a.ndim < 2)
    assert opt.decay == {EMBED: False, Q_PROJ: True, NORM: False}


def _torch_group_params(torch, params0):
    decayed = [torch.tensor(params0[n].copy()) for n in (EMBED, Q_PROJ)]
    plain = [torch.tensor(params0[NORM].copy())]
    for t in decayed + plain:
        t.requires_grad_(True)
    return decayed, plain


def _set_torch_grads(torch, decayed, plain, grads):
    for t, n in zip(decayed + plain, (EMBED, Q_PROJ, NORM)):
        t.grad = torch.tensor(grads[n].copy())


@pytest.mark.parametrize("implementation", [{"foreach": False}, {"fused": True}], ids=["for-loop", "fused"])
def test_adamw_matches_torch(implementation):
    torch = pytest.importorskip("torch")
    params = make_params()
    params0 = copy_dict(params)
    grads_seq = make_grads_sequence(6)
    lrs = [1e-2, 2e-2, 3e-2, 2e-2, 1e-2, 5e-3]
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    decayed, plain = _torch_group_params(torch, params0)
    topt = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1},
                              {"params": plain, "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), eps=1e-8, **implementation)
    for grads, lr in zip(grads_seq, lrs):
        opt.step(grads, lr=lr)
        for group in topt.param_groups:
            group["lr"] = lr
        _set_torch_grads(torch, decayed, plain, grads)
        topt.step()
    for t, n in zip(decayed + plain, (EMBED, Q_PROJ, NORM)):
        np.testing.assert_allclose(params[n], t.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(opt.m[n], topt.state[t]["exp_avg"].numpy(), rtol=1e-12, atol=0)
        np.testing.assert_allclose(opt.v[n], topt.state[t]["exp_avg_sq"].numpy(), rtol=1e-12, atol=0)


def test_sgd_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params()
    params0 = copy_dict(params)
    grads_seq = make_grads_sequence(4)
    opt = SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    decayed, plain = _torch_group_params(torch, params0)
    topt = torch.optim.SGD([{"params": decayed, "weight_decay": 0.01},
                            {"params": plain, "weight_decay": 0.0}],
                           lr=0.05, momentum=0.9, foreach=False)
    for grads in grads_seq:
        opt.step(grads)
        _set_torch_grads(torch, decayed, plain, grads)
        topt.step()
    for t, n in zip(decayed + plain, (EMBED, Q_PROJ, NORM)):
        np.testing.assert_allclose(params[n], t.detach().numpy(), rtol=1e-12, atol=1e-14)


def quadratic_loss_and_grads(params, curvature, target):
    """loss = 1/2 sum curvature * (p - target)^2, gradient curvature * (p - target)."""
    diff = {n: params[n] - target[n] for n in params}
    loss = 0.5 * sum(float(np.sum(curvature[n] * diff[n] ** 2)) for n in params)
    return loss, {n: curvature[n] * diff[n] for n in params}


@pytest.mark.parametrize("make_opt", [
    lambda p: AdamW(p, lr=0.1, weight_decay=0.0),
    lambda p: SGD(p, lr=0.1, momentum=0.5),
], ids=["adamw", "sgd"])
def test_optimizing_a_quadratic_converges(make_opt):
    rng = np.random.default_rng(3)
    params = make_params()
    curvature = {n: rng.uniform(0.5, 3.0, s) for n, s in SHAPES.items()}
    target = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    opt = make_opt(params)
    loss0, _ = quadratic_loss_and_grads(params, curvature, target)
    total_steps = 400
    for step in range(total_steps):
        _, grads = quadratic_loss_and_grads(params, curvature, target)
        opt.step(grads, lr=cosine_with_warmup(step, max_lr=0.1, warmup_steps=10,
                                              total_steps=total_steps))
    loss, _ = quadratic_loss_and_grads(params, curvature, target)
    assert loss < 1e-6 * loss0
    for n in params:
        np.testing.assert_allclose(params[n], target[n], atol=1e-3)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("make_opt", [
    lambda p: AdamW(p, lr=1e-2), lambda p: SGD(p, lr=1e-2, momentum=0.9)], ids=["adamw", "sgd"])
def test_non_finite_gradient_raises_and_touches_nothing(make_opt, bad_value):
    params = make_params()
    opt = make_opt(params)
    grads_seq = make_grads_sequence(3)
    for grads in grads_seq[:2]:
        opt.step(grads)
    params_before = copy_dict(params)
    state_before = opt.state_dict()

    bad = copy_dict(grads_seq[2])
    bad[Q_PROJ][1, 2] = bad_value
    with pytest.raises(NonFiniteGradientError, match="q_proj") as info:
        opt.step(bad)
    assert isinstance(info.value, ValueError)
    assert info.value.name == Q_PROJ and info.value.names == [Q_PROJ]
    for name in params:
        assert np.array_equal(params[name], params_before[name])  # EMBED comes first: untouched too
    state_after = opt.state_dict()
    assert state_after["step"] == state_before["step"] == 2
    for key in ("m", "v", "momentum_buffer"):
        for name, a in state_before.get(key, {}).items():
            assert np.array_equal(state_after[key][name], a)


def test_non_finite_error_names_every_bad_parameter():
    params = make_params()
    grads = make_grads_sequence(1)[0]
    grads[EMBED][0, 0] = np.nan
    grads[NORM][:] = np.inf
    with pytest.raises(NonFiniteGradientError) as info:
        AdamW(params).step(grads)
    assert info.value.names == [EMBED, NORM]
    assert "4 non-finite" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.names == [EMBED, NORM] and str(copy) == str(info.value)


def test_non_finite_error_message_stays_short_when_every_gradient_is_bad():
    params = {f"layer{i}.weight": np.ones((2, 2)) for i in range(6)}
    grads = {name: np.full((2, 2), np.nan) for name in params}
    with pytest.raises(NonFiniteGradientError) as info:
        AdamW(params).step(grads)
    assert info.value.names == list(params)                      # all of them, for a program
    message = str(info.value)                                    # a few, for a person
    assert "'layer2.weight' (4 non-finite) and 3 more" in message and "layer3" not in message


@pytest.mark.parametrize("make_opt", [
    lambda p: AdamW(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.2),
    lambda p: SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1)], ids=["adamw", "sgd"])
def test_state_dict_round_trip_continues_identically(make_opt):
    grads_seq = make_grads_sequence(6)
    uninterrupted = make_params()
    opt_a = make_opt(uninterrupted)
    for grads in grads_seq:
        opt_a.step(grads)

    resumed = make_params()
    opt_b = make_opt(resumed)
    for grads in grads_seq[:3]:
        opt_b.step(grads)
    state = opt_b.state_dict()
    params_at_3 = copy_dict(resumed)
    saved = {k: copy_dict(v) for k, v in state.items() if isinstance(v, dict) and k != "hyperparams"}
    opt_b.step(grads_seq[3])  # a later step must not alter the saved state (it holds copies)
    for k, arrays in saved.items():
        for name, a in arrays.items():
            assert np.array_equal(state[k][name], a)

    for name in resumed:  # back to the saved parameters, in the live arrays
        resumed[name][...] = params_at_3[name]
    # a fresh optimizer with other hyper-parameters: load_state_dict restores everything
    opt_c = type(opt_b)(resumed, lr=0.5)
    opt_c.load_state_dict(state)
    assert opt_c.step_count == 3
    for grads in grads_seq[3:]:
        opt_c.step(grads)
    for name in uninterrupted:
        assert np.array_equal(resumed[name], uninterrupted[name]), name


def test_load_state_dict_rejects_bad_state():
    params = make_params()
    opt = AdamW(params)
    opt.step(make_grads_sequence(1)[0])
    good = opt.state_dict()

    missing = dict(good, m={k: v for k, v in good["m"].items() if k != NORM})
    with pytest.raises(ValueError, match=r"state\['m'\] is missing key 'model.norm.weight'"):
        opt.load_state_dict(missing)
    wrong_shape = dict(good, v=dict(good["v"], **{Q_PROJ: np.zeros((4, 5))}))
    with pytest.raises(ValueError, match=r"state\['v'\]\['model.layers.0.self_attn.q_proj.weight'\]"):
        opt.load_state_dict(wrong_shape)
    wrong_dtype = dict(good, m=dict(good["m"], **{NORM: np.zeros(4, np.float32)}))
    with pytest.raises(TypeError, match="dtype float32"):
        opt.load_state_dict(wrong_dtype)
    with pytest.raises(ValueError, match="optimizer 'SGD'"):
        opt.load_state_dict(SGD(make_params(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        opt.load_state_dict(dict(good, hyperparams=dict(good["hyperparams"], betas=(0.9, 1.0))))
    with pytest.raises(ValueError, match=r"state\['step'\]"):
        opt.load_state_dict(dict(good, step=-1))
    with pytest.raises(TypeError, match="state must be a dict"):
        opt.load_state_dict([good])
    assert opt.step_count == 1  # nothing was half-loaded


def test_sgd_matches_hand_written_reference_exactly():
    params = make_params()
    params0 = copy_dict(params)
    grads_seq = make_grads_sequence(4)
    opt = SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    for grads in grads_seq:
        opt.step(grads)
    for name, p in params0.items():
        buf = np.zeros_like(p)
        for grads in grads_seq:
            g = grads[name] + 0.01 * p if name != NORM else grads[name]
            buf = 0.9 * buf + g
            p = p - 0.05 * buf
        assert np.array_equal(params[name], p), name


def test_sgd_without_momentum_is_plain_gradient_descent():
    params = make_params()
    params0 = copy_dict(params)
    grads = make_grads_sequence(1)[0]
    opt = SGD(params, lr=0.1)
    opt.step(grads)
    assert opt.momentum_buffer == {}
    for name in params:
        assert np.array_equal(params[name], params0[name] - 0.1 * grads[name])
        assert not np.array_equal(grads[name], np.zeros_like(grads[name]))


@pytest.mark.parametrize("make_opt", [
    lambda p: AdamW(p, lr=1e-2), lambda p: SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1)],
    ids=["adamw", "sgd"])
def test_float32_stays_float32_and_tracks_float64(make_opt):
    params32 = make_params(dtype=np.float32)
    params64 = make_params(dtype=np.float64)
    opt32, opt64 = make_opt(params32), make_opt(params64)
    for g64 in make_grads_sequence(4):
        opt32.step({n: g.astype(np.float32) for n, g in g64.items()})
        opt64.step(g64)
    for name in params32:
        assert params32[name].dtype == np.float32
        np.testing.assert_allclose(params32[name], params64[name], rtol=1e-5, atol=1e-6)
    state = opt32.state_dict()
    for key in ("m", "v", "momentum_buffer"):
        for a in state.get(key, {}).values():
            assert a.dtype == np.float32


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [lambda p: AdamW(p), lambda p: SGD(p, lr=0.1)], ids=["adamw", "sgd"])
def test_step_rejects_mismatched_grads(make_opt):
    params = make_params()
    opt = make_opt(params)
    grads = make_grads_sequence(1)[0]
    with pytest.raises(ValueError, match="grads has key 'lm_head.weight', which is not one of this optimizer's params"):
        opt.step(dict(grads, **{"lm_head.weight": np.zeros((6, 4))}))
    with pytest.raises(ValueError, match="grads is missing key 'model.norm.weight'"):
        opt.step({k: v for k, v in grads.items() if k != NORM})
    with pytest.raises(ValueError, match=r"grads\['model.embed_tokens.weight'\] has shape \(4, 6\)"):
        opt.step(dict(grads, **{EMBED: grads[EMBED].T.copy()}))
    with pytest.raises(TypeError, match=r"grads\['model.norm.weight'\] has dtype float32"):
        opt.step(dict(grads, **{NORM: grads[NORM].astype(np.float32)}))
    with pytest.raises(TypeError, match="must be a numpy array"):
        opt.step(dict(grads, **{NORM: [1.0, 2.0, 3.0, 4.0]}))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.step(grads, lr=-1e-3)
    with pytest.raises(ValueError, match="lr must be finite"):
        opt.step(grads, lr=float("nan"))
    assert opt.step_count == 0


def test_step_notices_params_dict_changing_keys():
    params = make_params()
    opt = AdamW(params)
    params["lm_head.weight"] = np.zeros((6, 4))
    with pytest.raises(ValueError, match="gained or lost keys"):
        opt.step(dict(make_grads_sequence(1)[0], **{"lm_head.weight": np.zeros((6, 4))}))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-1e-3), ValueError, "lr must be >= 0"),
    (dict(betas=(1.0, 0.95)), ValueError, r"betas\[0\] must be < 1"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be >= 0"),
    (dict(betas=(0.9,)), ValueError, "betas must be a pair"),
    (dict(eps=-1e-8), ValueError, "eps must be > 0"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (dict(lr="fast"), TypeError, "lr must be a real number"),
    (dict(no_decay="norms"), TypeError, "no_decay must be callable"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdamW(make_params(), **kwargs)


def test_adamw_takes_betas_as_a_numpy_pair():
    assert AdamW(make_params(), betas=np.array([0.9, 0.95])).betas == (0.9, 0.95)


def test_sgd_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        SGD(make_params(), lr=0.1, momentum=-0.9)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SGD(make_params(), lr=-0.1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        SGD(make_params(), lr=0.1, weight_decay=-1.0)


def test_optimizers_reject_bad_params():
    with pytest.raises(TypeError, match="params must be a dict"):
        AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match="params is empty"):
        AdamW({})
    with pytest.raises(TypeError, match=r"params\['w'\] must be float32 or float64"):
        AdamW({"w": np.zeros(3, dtype=np.int64)})
    shared = np.zeros((2, 2))
    with pytest.raises(ValueError, match="same array"):
        AdamW({"model.embed_tokens.weight": shared, "lm_head.weight": shared})
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD({"w": frozen}, lr=0.1)


# --- schedules ---------------------------------------------------------------------------------

def test_cosine_with_warmup_key_points():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert cosine_with_warmup(0, **kw) == pytest.approx(0.1)     # (0 + 1) / 10: not zero at step 0
    assert cosine_with_warmup(4, **kw) == pytest.approx(0.5)
    assert cosine_with_warmup(9, **kw) == 1.0                    # warmup ends at max_lr
    assert cosine_with_warmup(10, **kw) == 1.0                   # cosine starts at max_lr
    assert cosine_with_warmup(60, **kw) == pytest.approx(0.55)   # halfway: (max + min) / 2
    assert cosine_with_warmup(35, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_with_warmup(110, **kw) == pytest.approx(0.1)   # total_steps: min_lr
    assert cosine_with_warmup(10_000, **kw) == 0.1               # past the end: constant min_lr
    assert cosine_with_warmup(0, max_lr=2.0, warmup_steps=0, total_steps=4) == 2.0
    assert cosine_with_warmup(3, max_lr=2.0, warmup_steps=3, total_steps=3) == 0.0


@settings(max_examples=20, deadline=None)
@given(warmup=st.integers(0, 20), decay=st.integers(0, 60),
       max_lr=st.floats(1e-5, 1.0), min_frac=st.floats(0.0, 1.0))
def test_cosine_is_bounded_rising_then_falling(warmup, decay, max_lr, min_frac):
    min_lr = min_frac * max_lr
    kw = dict(max_lr=max_lr, warmup_steps=warmup, total_steps=warmup + decay, min_lr=min_lr)
    lrs = np.array([cosine_with_warmup(s, **kw) for s in range(warmup + decay + 5)])
    assert np.all(lrs[:warmup] > 0)
    assert np.all(np.diff(lrs[:warmup]) > 0)                 # warmup strictly rising
    after = lrs[warmup:]
    assert np.all(np.diff(after) <= 1e-15 * max_lr)          # then never rising
    assert np.all(lrs <= max_lr * (1 + 1e-15))
    assert np.all(after >= min_lr * (1 - 1e-15))             # (warmup may start below min_lr)
    if decay >= 2 and min_lr < max_lr * (1 - 1e-6):  # (a gap of 1 ulp may round to no fall)
        assert np.all(np.diff(after[:decay + 1]) < 0)        # strictly falling along the cosine


def test_constant_and_get_schedule():
    assert constant(0, max_lr=0.3) == 0.3
    assert constant(0, max_lr=0.3, warmup_steps=3) == pytest.approx(0.1)
    assert constant(2, max_lr=0.3, warmup_steps=3) == pytest.approx(0.3)
    assert constant(1000, max_lr=0.3, warmup_steps=3, total_steps=10, min_lr=0.0) == 0.3
    assert get_schedule("cosine") is cosine_with_warmup
    assert get_schedule("cosine_with_warmup") is cosine_with_warmup
    assert get_schedule("constant") is constant
    kw = dict(max_lr=1.0, warmup_steps=2, total_steps=10, min_lr=0.1)
    assert [get_schedule("constant")(s, **kw) for s in (0, 5, 20)] == [0.5, 1.0, 1.0]


def test_schedules_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'; known: cosine,"):
        get_schedule("linear")
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=100)
    with pytest.raises(ValueError, match="step must be >= 0"):
        cosine_with_warmup(-1, **kw)
    with pytest.raises(TypeError, match="step must be an int"):
        cosine_with_warmup(1.5, **kw)
    with pytest.raises(ValueError, match=r"total_steps \(5\) must be >= warmup_steps \(10\)"):
        cosine_with_warmup(0, max_lr=1.0, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="min_lr must be <= 1.0"):
        cosine_with_warmup(0, min_lr=2.0, **kw)
    with pytest.raises(ValueError, match="max_lr must be >= 0"):
        constant(0, max_lr=-1.0)


# --- clipping ----------------------------------------------------------------------------------

def flat_norm(grads):
    return float(np.linalg.norm(np.concatenate([g.astype(np.float64).ravel() for g in grads.values()])))


def test_clip_grad_norm_scales_to_max_norm_in_place():
    grads = make_grads_sequence(1)[0]
    original = copy_dict(grads)
    arrays_before = dict(grads)
    norm = flat_norm(grads)
    returned = clip_grad_norm(grads, max_norm=norm / 3)
    assert returned == pytest.approx(norm, rel=1e-14)          # the pre-clip norm
    np.testing.assert_allclose(flat_norm(grads), norm / 3, rtol=1e-6)
    scale = (norm / 3) / (norm + 1e-6)                        # PyTorch's exact coefficient
    for name in grads:
        assert grads[name] is arrays_before[name]
        np.testing.assert_allclose(grads[name], original[name] * scale, rtol=1e-15)


@pytest.mark.parametrize("headroom", [2.0, 1.01])
def test_clip_grad_norm_leaves_small_gradients_alone(headroom):
    # clipping only ever shrinks: a norm just under max_norm is not scaled up to it
    grads = make_grads_sequence(1)[0]
    original = copy_dict(grads)
    norm = flat_norm(grads)
    assert clip_grad_norm(grads, max_norm=headroom * norm) == pytest.approx(norm, rel=1e-14)
    for name in grads:
        assert np.array_equal(grads[name], original[name])


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=4),
       log_scale=st.floats(-3, 3), ratio=st.floats(0.01, 0.99), seed=st.integers(0, 10**6))
def test_clip_grad_norm_float32_keeps_dtype_and_norm_in_float64(sizes, log_scale, ratio, seed):
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": (rng.standard_normal(n) * 10.0 ** log_scale).astype(np.float32)
             for i, n in enumerate(sizes)}
    norm = flat_norm(grads)  # float64 reference from the float32 values
    returned = clip_grad_norm(grads, max_norm=ratio * norm)
    assert returned == pytest.approx(norm, rel=1e-12)
    assert all(g.dtype == np.float32 for g in grads.values())
    # the 1e-6 in max_norm / (norm + 1e-6) matters for small norms: it is part of the semantics
    np.testing.assert_allclose(flat_norm(grads), ratio * norm * norm / (norm + 1e-6), rtol=1e-6)


def test_global_grad_norm_is_accurate_for_many_float32_values():
    g = np.full(2_000_000, 0.1, dtype=np.float32)
    exact = math.sqrt(g.size) * float(np.float32(0.1))
    # float64 sums of 2M terms are good to ~n*u = 2e-10 whatever order BLAS takes (1e-12 held on
    # two threads, not on one); float32 accumulation would be off by ~1e-4
    assert global_grad_norm({"w": g}) == pytest.approx(exact, rel=1e-9)


def test_clip_grad_norm_non_finite_norm_is_returned_and_grads_untouched():
    grads = make_grads_sequence(1)[0]
    grads[NORM][0] = np.inf
    original = copy_dict(grads)
    assert clip_grad_norm(grads, max_norm=1.0) == math.inf
    for name in grads:
        assert np.array_equal(grads[name], original[name])
    with pytest.raises(NonFiniteGradientError, match="model.norm.weight"):
        AdamW(make_params()).step(grads)


def test_clip_grad_norm_rejects_bad_input():
    grads = make_grads_sequence(1)[0]
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(grads, max_norm=0.0)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_grad_norm(grads, max_norm=-1.0)
    with pytest.raises(ValueError, match="grads is empty"):
        clip_grad_norm({}, max_norm=1.0)
    with pytest.raises(TypeError, match=r"grads\['w'\] must be float32 or float64"):
        clip_grad_norm({"w": np.ones(3, dtype=np.int32)}, max_norm=1.0)


def test_adamw_refuses_gradients_whose_square_overflows_before_touching_anything():
    params = {"w": np.ones((2, 2), dtype=np.float32)}
    opt = AdamW(params, lr=0.1)
    grads = {"w": np.array([[1.0, 2e19], [0.0, 1.0]], dtype=np.float32)}  # finite, but g*g = inf
    with pytest.raises(NonFiniteGradientError, match="too large to square") as info:
        opt.step(grads)
    assert info.value.name == "w" and info.value.counts == [1]
    np.testing.assert_array_equal(params["w"], 1.0)
    assert opt.step_count == 0 and np.all(opt.v["w"] == 0)


def test_with_settings_checks_every_setting_before_setting_any():
    params = {"w": np.ones((2, 2))}
    opt = AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert opt.with_settings(lr=2e-3, betas=(0.8, 0.99)) is opt
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (2e-3, (0.8, 0.99), 1e-8, 0.1)
    for bad, message in [(dict(lr=0.5, weight_decay=3.0), "lr \\* weight_decay"),
                         (dict(lr=1e-2, betas=(0.9, 1.0)), "betas\\[1\\]"),
                         (dict(weight_decay=0.2, eps=2.0), "eps"),
                         (dict(lr=float("nan")), "lr must be finite")]:
        with pytest.raises(ValueError, match=message):
            opt.with_settings(**bad)
        assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (2e-3, (0.8, 0.99), 1e-8, 0.1), bad
    with pytest.raises(TypeError, match="no setting.*momentum"):
        opt.with_settings(momentum=0.9)


def test_the_constructor_and_load_state_dict_check_settings_as_with_settings_does():
    params = {"w": np.ones((2, 2))}
    for bad in [dict(lr=0.5, weight_decay=3.0), dict(betas=(0.9, 1.0)), dict(eps=2.0)]:
        with pytest.raises(ValueError) as made:
            AdamW(params, **bad)
        with pytest.raises(ValueError) as changed:
            AdamW(params).with_settings(**bad)
        assert str(made.value) == str(changed.value)
    state = AdamW(params).state_dict()
    state["hyperparams"] = dict(state["hyperparams"], lr=0.5, weight_decay=3.0)
    opt = AdamW(params, lr=1e-3)
    with pytest.raises(ValueError, match="state\\['hyperparams'\\].*lr \\* weight_decay"):
        opt.load_state_dict(state)
    assert opt.lr == 1e-3
    sgd = SGD(params, lr=0.1, momentum=0.9)
    assert sgd.with_settings(lr=0.2).lr == 0.2
    with pytest.raises(ValueError, match="momentum cannot be switched"):
        sgd.with_settings(momentum=0.0)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_adamw_on_threads_is_the_same_bits_as_on_one(backend_name):
    """The parameters are shared out over the threads; each update is independent of the others,
    so any thread count gives the same parameters and moments, and the shares really run on
    threads of their own."""
    from npllama import use_backend

    results = []
    for threads in (1, 2, 3):
        params = make_params()
        opt = AdamW(params, lr=1e-2, weight_decay=0.1, threads=threads)
        shares, seen = [], set()
        original = opt._on_shares

        def recording(work):
            def recorded(names):
                shares.append(sorted(names))
                seen.add(threading.get_ident())
                return work(names)
            return original(recorded)
        opt._on_shares = recording
        with use_backend(backend_name):
            for grads in make_grads_sequence(3):
                opt.step(grads)
        per_pass = min(threads, len(params))            # 2 passes a step: the check, the update
        assert len(shares) == 2 * 3 * per_pass
        assert sorted(name for share in shares[:per_pass] for name in share) == sorted(params)
        # a pool thread that finished its share may take the next one too: at least two threads
        assert (len(seen) >= 2) == (threads > 1) and threading.get_ident() in seen
        results.append((params, opt.m, opt.v))
    for params, m, v in results[1:]:
        for name in params:
            assert np.array_equal(params[name], results[0][0][name])
            assert np.array_equal(m[name], results[0][1][name]) and np.array_equal(v[name], results[0][2][name])


def test_adamw_on_threads_still_checks_everything_before_touching_anything():
    params = make_params()
    opt = AdamW(params, lr=1e-2, threads=2)
    bad = make_grads_sequence(1)[0]
    bad[NORM][0] = np.nan
    bad[EMBED][0, 0] = np.inf
    before = copy_dict(params)
    with pytest.raises(NonFiniteGradientError) as info:
        opt.step(bad)
    assert info.value.names == [EMBED, NORM]           # in the dict's order, whichever thread found it
    assert opt.step_count == 0
    for name in params:
        assert np.array_equal(params[name], before[name])


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_optimizer_threads_must_be_a_positive_int(threads):
    with pytest.raises(ValueError, match="threads must be a positive int"):
        AdamW(make_params(), threads=threads)
    opt = AdamW(make_params())
    with pytest.raises(ValueError, match="threads must be a positive int"):
        opt.threads = threads
    assert opt.threads == 1


def test_clip_finite_step_clips_finite_steps_and_names_what_is_not_finite():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.full((2, 2), 3.0), "b": np.full(2, 4.0)}
    norm, problem = clip_finite_step(1.5, grads, params, max_norm=1.0)
    assert problem is None and norm == pytest.approx(math.sqrt(4 * 9 + 2 * 16))
    assert flat_norm(grads) == pytest.approx(1.0, rel=1e-5)          # clipped in place
    norm, problem = clip_finite_step(math.nan, grads, params, max_norm=1.0)
    assert math.isnan(norm) and "the loss is nan" in problem
    grads["b"][0] = math.inf
    norm, problem = clip_finite_step(1.5, grads, params, max_norm=1.0)
    assert norm == math.inf and "gradient of b" in problem and grads["w"][0, 0] != 0   # left as they were


def test_an_optimizer_over_some_parameters_says_how_to_freeze_the_rest():
    """Freezing = an optimizer over a sub-dict; the model's full grads are then refused with the
    way to pass only the optimizer's own, not with "not a parameter" of a name that is one."""
    params = make_params()
    trained = {name: p for name, p in params.items() if name != EMBED}
    grads = make_grads_sequence(1)[0]
    with pytest.raises(ValueError, match=r"grads has key 'model.embed_tokens.weight', which is not one of "
                                         r"this optimizer's params.*\{name: grads\[name\] for name in optimizer.params\}"):
        AdamW(trained).step(grads)
    AdamW(trained).step({name: grads[name] for name in trained})   # as the message says


@pytest.mark.parametrize("groups", [[{"params": {}, "lr": 1e-3}], [np.zeros(3)]], ids=["torch groups", "list"])
def test_a_list_of_parameters_or_groups_is_refused_saying_what_to_do(groups):
    with pytest.raises(TypeError, match="params must be a dict of name -> numpy array.*one optimizer per group"):
        AdamW(groups)


def test_float64_gradients_of_a_float32_model_are_refused_saying_where_they_come_from():
    """Accumulating micro-batches as `g * weight` with a NumPy float64 weight makes float64
    gradients of a float32 model (NumPy 2's promotion); the refusal says so and how to avoid it."""
    params = make_params(dtype=np.float32)
    grads = {name: g.astype(np.float32) * np.float64(0.5) for name, g in make_grads_sequence(1)[0].items()}
    assert grads[NORM].dtype == np.float64
    with pytest.raises(TypeError, match=r"has dtype float64, expected float32.*float\(weight\)"):
        AdamW(params).step(grads)
