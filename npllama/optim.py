"""Optimizers, learning-rate schedules and global-norm gradient clipping (article §3.2, §3.3.3).

Parameters live in a dict of arrays (Hugging Face names, e.g. "model.layers.0.self_attn.q_proj.weight");
gradients come in a dict with the same keys.  Every update is made *in place* on the parameter
arrays (the model's params dict is the live state), in the parameters' own dtype.

    opt = AdamW(model.params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(total_steps):
        loss, grads = model.loss_and_grads(tokens, targets)
        grad_norm = clip_grad_norm(grads, max_norm=1.0)
        lr = cosine_with_warmup(step, max_lr=3e-4, warmup_steps=100, total_steps=total_steps)
        opt.step(grads, lr=lr)

The AdamW and SGD arithmetic is PyTorch's (torch.optim.AdamW, torch.optim.SGD), so a run can be
compared number for number.  Derivation: derivations/adamw.md
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .interrupts import deferred_stop_signals
from .ops._checks import require_float_array


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what to do.  Raised by
    the pre-training loop (npllama.train) and the fine-tuning loop (npllama.finetune)."""


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or Inf.  Raised before anything is updated.

    `name` is the first offending parameter, `names` all of them."""

    def __init__(self, names: list[str], counts: list[int], what: str = "non-finite"):
        self.names = list(names)
        self.counts = list(counts)
        self.name = self.names[0]
        self.what = what
        listed = ", ".join(f"{n!r} ({c} {what})" for n, c in zip(names[:3], counts))
        if len(names) > 3:  # a diverged model has them all: name a few, count the rest
            listed += f" and {len(names) - 3} more"
        problem = ("non-finite gradient (NaN or Inf)" if what == "non-finite"
                   else f"gradient entries too large to square ({what})")
        super().__init__(f"{problem} for parameter(s) {listed}; "
                         "parameters and optimizer state were left untouched")

    def __reduce__(self):  # so the error survives pickling (e.g. across processes)
        return self.__class__, (self.names, self.counts, self.what)


def default_no_decay(name: str, array: np.ndarray) -> bool:
    """True for parameters that get no weight decay: anything with fewer than 2 dimensions.

    In LLaMA that means the RMSNorm weights (1-D); biases, if a model had them, are 1-D too.
    Decay pulls a weight towards zero; a norm weight's natural value is 1, so decaying it only
    fights the normalisation.  Every matrix is decayed, the token embedding included -- the
    GPT-2 / nanoGPT / llm.c choice; with tied embeddings it is also the output matrix, which is
    decayed like every other projection."""
    return array.ndim < 2


def decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """torch.optim.AdamW's parameter groups for (name, parameter) pairs (torch's named_parameters()):
    decayed or not as default_no_decay says, so that a PyTorch run (npllama.hf_train, the torch side
    of `npllama debug training`) decays what npllama's AdamW decays."""
    decayed, kept = [], []
    for name, p in named_parameters:
        (kept if default_no_decay(name, p) else decayed).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


# --- argument checks -------------------------------------------------------------------------

def _require_number(name, value, *, low=None, low_inclusive=True, high=None, high_inclusive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {value}")
    return value


def _require_step(name, step):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"{name} must be >= 0, got {step}")
    return int(step)


def _require_betas(betas):
    if isinstance(betas, np.ndarray) and betas.ndim == 1:
        betas = betas.tolist()
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    beta1 = _require_number("betas[0]", betas[0], low=0.0, high=1.0)
    beta2 = _require_number("betas[1]", betas[1], low=0.0, high=1.0)
    return beta1, beta2


def _require_params(params):
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of name -> numpy array (e.g. model.params), got "
                        f"{type(params).__name__}; there are no parameter groups: for another lr or weight "
                        "decay, make one optimizer per group, each over a sub-dict of the parameters")
    if len(params) == 0:
        raise ValueError("params is empty: nothing to optimize")
    seen = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params keys must be str, got {name!r}")
        require_float_array(f"params[{name!r}]", p, min_ndim=0)
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only; the optimizer updates it in place")
        if id(p) in seen:
            raise ValueError(f"params[{name!r}] and params[{seen[id(p)]!r}] are the same array; "
                             "a tied weight must appear once (its gradients summed)")
        seen[id(p)] = name


def _require_same_arrays(what, arrays, params):
    """arrays (grads or saved moments) must have exactly params' keys, shapes and dtypes."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{what} must be a dict of name -> numpy array, got {type(arrays).__name__}")
    for name in params:
        if name not in arrays:
            raise ValueError(f"{what} is missing key {name!r} (every parameter needs one)")
    for name in arrays:
        if name not in params:
            # a frozen parameter is one the optimizer was not given: its gradient must be left out too
            how = ("; to train some parameters and freeze the rest, give the optimizer only the trained "
                   "ones and step it with their gradients alone: {name: grads[name] for name in optimizer.params}"
                   if what == "grads" else "")
            raise ValueError(f"{what} has key {name!r}, which is not one of this optimizer's params{how}")
    for name, p in params.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what}[{name!r}] must be a numpy array, got {type(a).__name__}")
        if a.shape != p.shape:
            raise ValueError(f"{what}[{name!r}] has shape {a.shape}, expected {p.shape} "
                             "(the parameter's shape)")
        if a.dtype != p.dtype:
            # the usual way there: NumPy 2 makes float32 * np.float64(w) float64 (a Python float keeps float32)
            why = ("; a float32 gradient scaled by a NumPy float64 number (a micro-batch's weight, say) "
                   "becomes float64 (NumPy 2): scale by float(weight)" if what == "grads" and a.dtype == np.float64 else "")
            raise TypeError(f"{what}[{name!r}] has dtype {a.dtype}, expected {p.dtype} "
                            f"(the parameter's dtype; no silent casts){why}")


def _require_usable_grads(grads, squarable, on_shares=None):
    """No NaN/Inf in any gradient; with `squarable` (AdamW) also no entry whose square overflows
    (|g| >= ~1.8e19 in float32: AdamW's second moment would become inf for good).  One pass over
    each gradient, max|g|, decides both: it is NaN or inf exactly when g holds a NaN or an inf.
    The counts for the message are taken only when something is wrong.  `on_shares` (an
    optimizer's) spreads the passes over its threads."""
    abs_max = _abs_max_kernel() or (lambda g: np.max(np.abs(g)))

    def peaks_of(names):
        return {name: abs_max(grads[name]) if np.size(grads[name]) else 0.0 for name in names}
    found = {}
    for share in (on_shares or (lambda work: [work(list(grads))]))(peaks_of):
        found.update(share)
    peaks = {name: found[name] for name in grads}      # in the dict's order, for the messages
    bad = [name for name, peak in peaks.items() if not np.isfinite(peak)]
    if bad:
        counts = [int(np.size(grads[n]) - np.count_nonzero(np.isfinite(grads[n]))) for n in bad]
        raise NonFiniteGradientError(bad, counts)
    if squarable:
        limits = {name: np.sqrt(np.finfo(g.dtype).max) for name, g in grads.items()}
        bad = [name for name, peak in peaks.items() if peak >= limits[name]]
        if bad:
            counts = [int(np.count_nonzero(np.abs(grads[n]) >= limits[n])) for n in bad]
            raise NonFiniteGradientError(bad, counts, what="overflowing when squared")


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2):
    """One AdamW update of p, m, v in place (bias_correction_i = 1 - beta_i^t; weight_decay = 0 for
    parameters that are not decayed).  npllama.kernels.adamw.adamw_update is the same in one pass."""
    p *= 1 - lr * weight_decay  # decoupled: shrink p itself, not via g
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    m_hat = m / bias_correction1  # bias correction: m, v start at 0
    v_hat = v / bias_correction2
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def _require_finite_state(what, arrays, non_negative=False):
    """Saved moments must be finite (and a second moment >= 0: it is a running mean of g^2):
    a NaN there would reach every parameter at the next step."""
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            count = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{what}[{name!r}] holds {count} NaN/Inf value(s); optimizer state must be finite")
        if non_negative and a.size and a.min() < 0:
            raise ValueError(f"{what}[{name!r}] holds negative values (min {a.min()}); a second moment "
                             f"is a mean of squares and cannot be negative")


# Limits past which a hyperparameter is a corrupt value rather than a choice.  Each is checked
# the same way when an optimizer is made and when its state is loaded.
MAX_EPS = 1.0            # Adam's eps is ~1e-8; past 1 it swamps sqrt(v) and the update vanishes


def _require_decay_fits_lr(lr, weight_decay, what=""):
    """p *= 1 - lr * weight_decay must shrink p, not zero or flip it."""
    if lr * weight_decay >= 1:
        raise ValueError(f"{what}lr * weight_decay must be below 1 (each step multiplies the weights by "
                         f"1 - lr * weight_decay), got lr={lr}, weight_decay={weight_decay}")


def _abs_max_kernel():
    """max |g| in one pass without a temporary (npllama/kernels/gradients.py) when the numba
    backend is in force, else None (the NumPy line runs)."""
    from .backend import get_backend

    if get_backend() != "numba":
        return None
    from .kernels.gradients import abs_max

    return abs_max


def _sum_of_squares_kernel():
    """sum(g**2) in float64 in one pass (npllama/kernels/gradients.py) when the numba backend is
    in force, else None (the NumPy lines run)."""
    from .backend import get_backend

    if get_backend() != "numba":
        return None
    from .kernels.gradients import sum_of_squares

    return sum_of_squares


def _fused_adamw_update():
    """The Numba AdamW update when the numba backend is in force, else None (the NumPy lines run)."""
    from .backend import get_backend

    if get_backend() != "numba":
        return None
    from .kernels.adamw import adamw_update

    return adamw_update


# --- optimizers --------------------------------------------------------------------------------

class _Optimizer:
    """What AdamW and SGD share: the params dict, the step count, the decay mask, grad checks."""

    name = "optimizer"

    def __init__(self, params, no_decay, threads=1):
        _require_params(params)
        if not callable(no_decay):
            raise TypeError(f"no_decay must be callable (name, array) -> bool, got {no_decay!r}")
        self.params = params                      # the live dict: updated in place, never copied
        self.decay = {name: not bool(no_decay(name, p)) for name, p in params.items()}
        self.step_count = 0
        self._executor = None
        self.threads = threads

    @property
    def threads(self) -> int:
        """How many threads share out a step's parameters (each updates its share; 1: the caller
        alone).  The updates are independent, so the result is the same bits for any count;
        npllama train sets it to the process's cores (BLAS's thread count), or to the threads
        its batch is split over if more."""
        return self._threads

    @threads.setter
    def threads(self, threads: int) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._threads = threads

    def _on_shares(self, work) -> list:
        """[work(names) for each share of the parameters], the shares run side by side on
        self.threads threads (the kernels and NumPy release the GIL), the largest parameters dealt
        out first so that the shares weigh about the same.  A share's error is raised once every
        share has finished, so none is still running when the caller goes on."""
        by_size = sorted(self.params, key=lambda name: self.params[name].size, reverse=True)
        shares = [share for share in (by_size[i::self.threads] for i in range(self.threads)) if share]
        if len(shares) < 2:
            return [work(list(self.params))]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="npllama-optimizer")
        others = [self._executor.submit(work, share) for share in shares[1:]]
        try:
            mine = work(shares[0])
        finally:
            wait(others)
        return [mine] + [future.result() for future in others]

    def with_settings(self, **settings):
        """Set hyper-parameters (any of `settings_names`; the rest keep their values) and return
        the optimizer.  The constructor goes through it, and so does a resume that changes them;
        load_state_dict checks a state's settings with the rest of the state.  Every path checks
        them with _checked_settings, all before any is set."""
        unknown = sorted(set(settings) - set(self.settings_names))
        if unknown:
            raise TypeError(f"{self.name} has no setting(s) {', '.join(unknown)}; "
                            f"its settings are {', '.join(self.settings_names)}")
        current = {name: getattr(self, name) for name in self.settings_names if hasattr(self, name)}
        checked = self._checked_settings({**current, **settings}, where="")
        for name, value in checked.items():
            setattr(self, name, value)
        return self

    def _begin_step(self, grads, lr, squarable=False):
        """Check everything before touching anything; return the lr for this step."""
        lr = self.lr if lr is None else _require_number("lr", lr, low=0.0)
        if set(self.params) != set(self.decay):
            raise ValueError("the params dict gained or lost keys since the optimizer was made; "
                             "make a new optimizer for the new parameter set")
        _require_same_arrays("grads", grads, self.params)
        _require_usable_grads(grads, squarable, self._on_shares)
        return lr

    def _check_state_header(self, state):
        """(step, no_decay_names, lr, weight_decay, hyperparams) of a state_dict(), all checked."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict (from state_dict()), got {type(state).__name__}")
        if state.get("optimizer") != self.name:
            raise ValueError(f"state is for optimizer {state.get('optimizer')!r}, "
                             f"this is {self.name!r}")
        no_decay_names = state.get("no_decay_names")
        if not isinstance(no_decay_names, (list, tuple)) or any(n not in self.params
                                                                for n in no_decay_names):
            raise ValueError("state['no_decay_names'] must list parameter names, "
                             f"got {no_decay_names!r}")
        hp = state.get("hyperparams")
        if not isinstance(hp, Mapping):
            raise ValueError(f"state['hyperparams'] must be a dict, got {hp!r}")
        missing = [name for name in self.settings_names if name not in hp]
        if missing:
            raise ValueError(f"state['hyperparams'] is missing {', '.join(map(repr, missing))}")
        settings = self._checked_settings({name: hp[name] for name in self.settings_names},
                                          where="state['hyperparams']")
        return _require_step("state['step']", state.get("step")), list(no_decay_names), settings

    def _state_header(self):
        return {"optimizer": self.name, "step": self.step_count,
                "no_decay_names": [n for n, d in self.decay.items() if not d]}

    @staticmethod
    def _copy_arrays(arrays):
        return {name: a.copy() for name, a in arrays.items()}


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's torch.optim.AdamW math.

    Per parameter p with gradient g, at step t = 1, 2, ...:

        p *= 1 - lr * weight_decay                 (decayed parameters only)
        m  = beta1 m + (1 - beta1) g
        v  = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)
        p -= lr * m_hat / (sqrt(v_hat) + eps)

    The moments m, v are kept in the parameter's dtype.  `no_decay(name, array) -> bool` picks the
    parameters that are not decayed (default: 1-D ones, i.e. the norm weights).  threads: see
    the `threads` property."""

    name = "AdamW"
    settings_names = ("lr", "betas", "eps", "weight_decay")

    @staticmethod
    def _checked_settings(settings, where):
        """lr, betas, eps, weight_decay checked (names in messages prefixed by `where`)."""
        def named(name):
            return f"{where}[{name!r}]" if where else name

        lr = _require_number(named("lr"), settings["lr"], low=0.0)
        weight_decay = _require_number(named("weight_decay"), settings["weight_decay"], low=0.0)
        # eps > 0: a gradient entry that is 0 at step 1 (an unused token's embedding row) has
        # m = v = 0, and with eps = 0 the update 0 / (sqrt(0) + 0) makes that parameter NaN.
        eps = _require_number(named("eps"), settings["eps"], low=0.0, low_inclusive=False, high=MAX_EPS,
                              high_inclusive=True)
        _require_decay_fits_lr(lr, weight_decay, f"{where}: " if where else "")
        return {"lr": lr, "betas": _require_betas(settings["betas"]), "eps": eps, "weight_decay": weight_decay}

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                 no_decay: Callable[[str, np.ndarray], bool] = default_no_decay, threads: int = 1):
        super().__init__(params, no_decay, threads)
        self.with_settings(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.m = {name: np.zeros_like(p) for name, p in params.items()}  # first moment
        self.v = {name: np.zeros_like(p) for name, p in params.items()}  # second moment

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter, in place.  `lr` overrides self.lr for this step only
        (so a schedule can drive it).  Nothing changes if any check fails."""
        lr = self._begin_step(grads, lr, squarable=True)
        _require_decay_fits_lr(lr, self.weight_decay)
        beta1, beta2 = self.betas
        fused = _fused_adamw_update()
        t = self.step_count + 1

        def update_share(names):
            for name in names:
                p, g, m, v = self.params[name], grads[name], self.m[name], self.v[name]
                update = adamw_update
                if fused is not None and p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous:
                    update = fused  # the same arithmetic in one pass over memory (npllama/kernels/adamw.py)
                update(p, g, m, v, lr, beta1, beta2, self.eps,
                       self.weight_decay if self.decay[name] else 0.0, 1 - beta1 ** t, 1 - beta2 ** t)
        with deferred_stop_signals():  # Ctrl-C/SIGTERM wait until every parameter is updated
            self.step_count = t
            self._on_shares(update_share)

    def state_dict(self, copy: bool = True) -> dict:
        """Step count, hyper-parameters, decay mask and moments: copies, so later steps don't alter
        it; copy=False gives the live moments, for a caller that writes them out at once (a
        checkpoint: 2x the parameter bytes not copied)."""
        state = self._state_header()
        state["hyperparams"] = {"lr": self.lr, "betas": tuple(self.betas), "eps": self.eps,
                                "weight_decay": self.weight_decay}
        state["m"] = self._copy_arrays(self.m) if copy else dict(self.m)
        state["v"] = self._copy_arrays(self.v) if copy else dict(self.v)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what state_dict() returned; everything is checked before anything is set."""
        step, no_decay_names, settings = self._check_state_header(state)
        _require_same_arrays("state['m']", state.get("m"), self.params)
        _require_same_arrays("state['v']", state.get("v"), self.params)
        _require_finite_state("state['m']", state["m"])
        _require_finite_state("state['v']", state["v"], non_negative=True)

        self.step_count = step
        for name, value in settings.items():        # checked by _check_state_header
            setattr(self, name, value)
        self.decay = {name: name not in no_decay_names for name in self.params}
        self.m = self._copy_arrays(state["m"])
        self.v = self._copy_arrays(state["v"])


class SGD(_Optimizer):
    """Stochastic gradient descent, PyTorch's torch.optim.SGD math (dampening 0, no Nesterov):

        g = g + weight_decay * p                   (L2 penalty, decayed parameters only)
        buf = momentum * buf + g                   (only if momentum != 0; buf starts at 0,
                                                    so step 1 gives buf = g as in PyTorch)
        p -= lr * buf                              (or lr * g without momentum)
    """

    name = "SGD"
    settings_names = ("lr", "momentum", "weight_decay")

    @staticmethod
    def _checked_settings(settings, where):
        """lr, momentum, weight_decay checked (names in messages prefixed by `where`)."""
        return {name: _require_number(f"{where}[{name!r}]" if where else name, settings[name], low=0.0)
                for name in SGD.settings_names}

    def with_settings(self, **settings):
        """As the base class's (lr, momentum, weight_decay), except that momentum cannot change
        between zero and non-zero."""
        if "momentum" in settings and hasattr(self, "momentum") and (settings["momentum"] == 0) != (self.momentum == 0):
            raise ValueError("momentum cannot be switched on or off once the optimizer exists (its "
                             "buffers would be missing or stale); make a new SGD")
        return super().with_settings(**settings)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0,
                 no_decay: Callable[[str, np.ndarray], bool] = default_no_decay):
        super().__init__(params, no_decay)
        self.with_settings(lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.momentum_buffer = ({name: np.zeros_like(p) for name, p in params.items()}
                                if self.momentum != 0 else {})

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter, in place; `lr` overrides self.lr for this step only."""
        lr = self._begin_step(grads, lr)
        with deferred_stop_signals():  # Ctrl-C/SIGTERM wait until every parameter is updated
            self.step_count += 1
            for name, p in self.params.items():
                g = grads[name]
                if self.weight_decay != 0 and self.decay[name]:
                    g = g + self.weight_decay * p  # a new array: the caller's grads stay as they were
                if self.momentum != 0:
                    buf = self.momentum_buffer[name]
                    buf *= self.momentum
                    buf += g
                    g = buf
                p -= lr * g

    def state_dict(self) -> dict:
        """Step count, hyper-parameters, decay mask and momentum buffers (copies, so later steps
        don't alter it)."""
        state = self._state_header()
        state["hyperparams"] = {"lr": self.lr, "momentum": self.momentum,
                                "weight_decay": self.weight_decay}
        state["momentum_buffer"] = self._copy_arrays(self.momentum_buffer)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what state_dict() returned; everything is checked before anything is set."""
        step, no_decay_names, settings = self._check_state_header(state)
        momentum = settings["momentum"]
        buffers = state.get("momentum_buffer")
        if momentum != 0:
            _require_same_arrays("state['momentum_buffer']", buffers, self.params)
            _require_finite_state("state['momentum_buffer']", buffers)
        elif buffers:
            raise ValueError("state['momentum_buffer'] must be empty when momentum is 0")

        self.step_count = step
        self.lr, self.momentum, self.weight_decay = settings["lr"], momentum, settings["weight_decay"]
        self.decay = {name: name not in no_decay_names for name in self.params}
        self.momentum_buffer = self._copy_arrays(buffers) if momentum != 0 else {}


# --- learning-rate schedules ---------------------------------------------------------------------

def _warmup_lr(step, max_lr, warmup_steps):
    # (step + 1) / warmup_steps, not step / warmup_steps: step 0 already takes a (small) step
    # instead of wasting a batch at lr 0, and the last warmup step reaches max_lr exactly.
    return max_lr * (step + 1) / warmup_steps


def cosine_with_warmup(step: int, *, max_lr: float, warmup_steps: int, total_steps: int,
                       min_lr: float = 0.0) -> float:
    """Linear warmup, then half a cosine from max_lr down to min_lr, then constant min_lr.

        step <  warmup_steps:                max_lr * (step + 1) / warmup_steps
        warmup_steps <= step < total_steps:  min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                                             progress = (step - warmup_steps) / (total_steps - warmup_steps)
        step >= total_steps:                 min_lr (where the cosine has arrived: progress 1)
    """
    step = _require_step("step", step)
    max_lr = _require_number("max_lr", max_lr, low=0.0)
    min_lr = _require_number("min_lr", min_lr, low=0.0, high=max_lr, high_inclusive=True)
    warmup_steps = _require_step("warmup_steps", warmup_steps)
    total_steps = _require_step("total_steps", total_steps)
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")

    if step < warmup_steps:
        return _warmup_lr(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step: int, *, max_lr: float, warmup_steps: int = 0, total_steps: int | None = None,
             min_lr: float | None = None) -> float:
    """Linear warmup (as in cosine_with_warmup), then max_lr forever.

    total_steps and min_lr are accepted and ignored, so every schedule from get_schedule() can be
    called with the same keywords."""
    step = _require_step("step", step)
    max_lr = _require_number("max_lr", max_lr, low=0.0)
    warmup_steps = _require_step("warmup_steps", warmup_steps)
    if step < warmup_steps:
        return _warmup_lr(step, max_lr, warmup_steps)
    return max_lr


SCHEDULES = {"cosine": cosine_with_warmup, "cosine_with_warmup": cosine_with_warmup,
             "constant": constant}


def get_schedule(name: str) -> Callable[..., float]:
    """The schedule function called `name` (one of SCHEDULES)."""
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


# --- gradient clipping ---------------------------------------------------------------------------

def global_grad_norm(grads: Mapping[str, np.ndarray]) -> float:
    """sqrt(sum over every gradient entry of g^2), accumulated in float64."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of name -> numpy array, got {type(grads).__name__}")
    if len(grads) == 0:
        raise ValueError("grads is empty: there is no gradient to measure")
    for name, g in grads.items():
        require_float_array(f"grads[{name!r}]", g, min_ndim=0)
    sum_sq = 0.0
    kernel = _sum_of_squares_kernel()
    for g in grads.values():
        if kernel is not None:
            sum_sq += kernel(g)                     # the same in one pass, no float64 copy
        else:
            g64 = g.astype(np.float64, copy=False)  # float32 squares summed in float32 lose digits
            sum_sq += float(np.vdot(g64, g64))
    return math.sqrt(sum_sq)


def describe_non_finite_params(params: Mapping[str, np.ndarray]) -> str:
    """Which parameters hold NaN/Inf (the usual reason for a non-finite loss), as a clause."""
    bad = [name for name, p in params.items() if not np.isfinite(p).all()]
    if not bad:
        return " (every parameter is finite: this batch overflowed the forward pass)"
    return f" (parameters holding NaN/Inf: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})"


def describe_bad_gradients(grads: Mapping[str, np.ndarray], grad_norm: float) -> str:
    """What is wrong with gradients whose global norm is not finite, as a clause."""
    bad = [name for name, g in grads.items() if not np.isfinite(g).all()]
    if bad:
        more = f" and {len(bad) - 1} other parameter(s)" if len(bad) > 1 else ""
        return f"the gradient of {bad[0]}{more} is not finite"
    largest = max(grads, key=lambda name: float(np.max(np.abs(grads[name]), initial=0.0)))
    return f"the gradient norm overflows ({grad_norm}); its largest entries are in {largest}"


def clip_finite_step(loss: float, grads: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                     max_norm: float) -> tuple[float, str | None]:
    """What both training loops do with a step's loss and gradients before the update:
    (grad_norm, None) once the gradients are clipped, or (nan or the norm, what is wrong) when the
    loss or the gradients are not finite -- then nothing was changed and the step must not go on."""
    if not math.isfinite(loss):
        return math.nan, f"the loss is {loss}{describe_non_finite_params(params)}"
    grad_norm = clip_grad_norm(grads, max_norm)
    if not math.isfinite(grad_norm):  # NaN/Inf in a gradient, or finite ones whose norm overflows
        return grad_norm, describe_bad_gradients(grads, grad_norm)
    return grad_norm, None


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm; return the norm
    from before clipping (PyTorch's torch.nn.utils.clip_grad_norm_).

    The scale is max_norm / (total_norm + 1e-6), applied when it is below 1 (the 1e-6 guards a
    zero norm).  A NaN/Inf norm is returned as is and the gradients are left alone: scaling
    would turn Inf into NaN and hide which parameter broke, and the optimizer's step() raises
    NonFiniteGradientError naming it."""
    max_norm = _require_number("max_norm", max_norm, low=0.0, low_inclusive=False)
    total_norm = global_grad_norm(grads)
    if not math.isfinite(total_norm):
        return total_norm
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for name, g in grads.items():
            if not g.flags.writeable:
                raise ValueError(f"grads[{name!r}] is read-only; clipping scales it in place")
        for g in grads.values():
            g *= clip_coef
    return total_norm
