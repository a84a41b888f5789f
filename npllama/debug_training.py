"""Where two training runs part: npllama's training steps against PyTorch's, step by step.

    from npllama.debug_training import compare_training
    report = compare_training("runs/x/model", batches, steps=5, lr=2e-3, grad_clip=0.5, dtype=np.float64)
    print(report)         # per-step losses, and the first tensor of the first step that differs

Both runs start from the same weights (the model copied into transformers.LlamaForCausalLM as
`npllama.debug.compare_transformers` does) and take the same batches.  At each step they are
compared in the order a step computes things (PHASES): the loss, each parameter's gradient, the
global gradient norm, the clipped gradients, the step's learning rate, AdamW's moments exp_avg and
exp_avg_sq, and each parameter after the update.  The first tensor beyond tolerance is the place
the runs part; everything after it may differ as its consequence.

npllama's side is what `npllama train` runs: its AdamW (npllama.train._make_optimizer), the
loop's accumulation of micro-batches, `clip_finite_step` and `cosine_with_warmup`.  The PyTorch side
shares none of that code: torch.optim.AdamW with two parameter groups (decay for the parameters
npllama decays, none for the others), torch.nn.utils.clip_grad_norm_, and a LambdaLR written from
derivations/adamw.md's formula.  A bug in either shows as a divergence.

`PLANTED_TRAINING_BUGS` are deliberately wrong pieces of training machinery, swapped into npllama's
side with `plant=`, to see what a divergence looks like.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import types

import numpy as np

from .optim import decay_groups
from .trace import TensorDiff, _table, diff_tensors

PHASES = ("loss", "gradient", "grad norm", "clipped gradient", "lr", "exp_avg", "exp_avg_sq", "parameter")

# Default relative tolerances (each tensor's errors against its largest |value|, as in
# npllama.trace.compare).  float64: both sides compute in float64 throughout (transformers made
# float64-faithful) and differ by summation order only, measured ~1e-13 after 4 steps of a
# 1M-parameter model; 1e-9 leaves room for Adam's division by sqrt(v_hat), which amplifies the
# round-off of entries whose gradient is near eps, while a wrong piece of machinery is off by 1e-3
# or more.  float32: stock transformers against npllama differ by float32 round-off (measured
# ~1e-4 at most after 4 steps), so the 1e-3 of npllama.debug's other float32 comparisons.  One
# float32 hazard: an entry whose gradient is near zero (~eps, or ~1e-7 of its tensor's largest)
# has a sign float32 cannot settle, and Adam moves it by up to lr either way; a "parameter"
# divergence in a few such entries only is round-off -- rerun in float64 to tell.
DEFAULT_RTOL = {np.float64: 1e-9, np.float32: 1e-3}


# ----- the report -------------------------------------------------------------------------------

@dataclasses.dataclass
class Divergence:
    """The first tensor beyond tolerance: in which step (1 = the first update) and phase."""

    step: int
    phase: str
    diff: TensorDiff

    @property
    def name(self) -> str:
        """The diverged tensor's name (its trace record)."""
        return self.diff.name

    @property
    def detail(self) -> str:
        """How the tensor differs (TensorDiff.describe) and its largest absolute difference."""
        return f"{self.diff.describe()}; max abs difference {self.diff.max_abs_err:.3g}"

    def describe(self) -> str:
        """One line: the step, the phase, and the detail."""
        return f"step {self.step}, {self.phase}: {self.detail}"


@dataclasses.dataclass
class StepRow:
    """One step of both runs: (npllama, torch) pairs, and the largest relative difference of any
    parameter after the update."""

    step: int
    loss: tuple[float, float]
    grad_norm: tuple[float, float]
    lr: tuple[float, float]
    param_rel_err: float


@dataclasses.dataclass
class TrainingComparison:
    """What compare_training returns: a row per step and every tensor compared, in order."""

    rows: list[StepRow]
    diffs: list[tuple[int, str, TensorDiff]]     # (step, phase, diff) in the order compared
    rtol: float
    atol: float | None
    labels: tuple = ("npllama", "torch")
    plant: str | None = None
    notes: list = dataclasses.field(default_factory=list)   # how the two sides were set up (RoPE frequencies)

    @property
    def first(self) -> Divergence | None:
        """The first diverged tensor in the order compared (step by step), or None."""
        return next((Divergence(step, phase, d) for step, phase, d in self.diffs if d.diverged), None)

    @property
    def ok(self) -> bool:
        """True when no step's tensors diverged."""
        return self.first is None

    def table(self) -> str:
        """A text table with one row a step: both runs' loss, gradient norm and lr, and the
        parameters' relative difference after the step."""
        a, b = self.labels
        rows = [("step", f"loss {a}", f"loss {b}", f"grad norm {a}", f"grad norm {b}", f"lr {a}", f"lr {b}",
                 "params rel err")]
        for r in self.rows:
            rows.append((str(r.step), *(f"{v:.10g}" for pair in (r.loss, r.grad_norm, r.lr) for v in pair),
                         f"{r.param_rel_err:.2e}"))
        return _table(rows, right_from=1)

    def __str__(self) -> str:
        a, b = self.labels
        atol = "rtol * max|b| of each tensor" if self.atol is None else f"{self.atol:g}"
        lines = [f"compared {len(self.rows)} training step{'s' if len(self.rows) != 1 else ''} ({a} vs {b}), "
                 f"{len(self.diffs)} tensors; tolerance: rtol = {self.rtol:g}, atol = {atol}"]
        if self.plant:
            lines.append(f"NOTE: planted bug {self.plant!r} on {a}'s side: {PLANTED_TRAINING_BUGS[self.plant][0]}")
        lines += [f"NOTE: {note}" for note in self.notes]
        first = self.first
        if first is None:
            worst = max(self.diffs, key=lambda d: d[2].rel_err)
            lines.append(f"no divergence: every step agrees (largest relative error {worst[2].rel_err:.2e}, "
                         f"step {worst[0]}, {worst[1]} {worst[2].name})")
            return "\n".join(lines)
        lines.append(f"FIRST DIVERGENCE at step {first.step}, phase {first.phase!r}:")
        lines.append(f"  {first.detail}")
        earlier = PHASES[:PHASES.index(first.phase)]
        if earlier:
            lines.append(f"  everything before it in step {first.step} agrees ({', '.join(earlier)})"
                         + {1: "", 2: ", and all of step 1"}.get(first.step, f", and all of steps 1-{first.step - 1}"))
        lines.append(f"  suspect: {SUSPECTS[first.phase]}")
        return "\n".join(lines)


# Where to look, by the phase that parts first.
SUSPECTS = {
    "loss": "the weights the step starts from, the batch (tokens, targets, -100) or the forward pass "
            "(npllama debug compare --against transformers runs one step's forward and backward)",
    "gradient": "the backward pass or the accumulation of micro-batches (their weights)",
    "grad norm": "the global gradient norm (every parameter's squares summed, in float64)",
    "clipped gradient": "the clipping: one scale for all gradients, max_norm / (norm + 1e-6), applied "
                        "only when below 1",
    "lr": "the learning-rate schedule (warmup uses step + 1; the cosine runs from warmup_steps to "
          "total_steps)",
    "exp_avg": "the first moment: m = beta1 m + (1 - beta1) g, with g the clipped gradient alone",
    "exp_avg_sq": "the second moment: v = beta2 v + (1 - beta2) g^2",
    "parameter": "the update: decoupled weight decay p *= 1 - lr wd (decayed parameters only), the bias "
                 "corrections 1 - beta^t, eps outside the square root",
}


# ----- npllama's side: what `npllama train` runs ---------------------------------------------------

class _NpllamaRun:
    """npllama train's step on `model`: the loop's own step_before_the_update (schedule, accumulate,
    clip) and update (AdamW), train.py's functions, with the loop's accumulate."""

    def __init__(self, model, tc, plant=None):
        from . import optim
        from .parallel import BatchSplitter
        from .train import _Loop, _make_optimizer, update

        self.model, self.tc = model, tc
        self.optimizer = _make_optimizer(model, tc)
        self.schedule, self.clip, self.update = optim.cosine_with_warmup, optim.clip_finite_step, update
        if plant is not None:
            _, piece, wrong, _ = PLANTED_TRAINING_BUGS[plant]
            setattr(self, piece, wrong)
        self._accumulate = _Loop.accumulate    # the loop's own, called on a stand-in for the loop
        self._splitter = BatchSplitter(1)

    def step(self, step: int, batches) -> dict:
        from .train import step_before_the_update

        tc = self.tc
        loader = types.SimpleNamespace(next_batch=iter(batches).__next__)
        loop = types.SimpleNamespace(loader=loader, tc=tc, splitter=self._splitter,
                                     loss_and_grads=self.model.loss_and_grads)
        raw = {}
        lr, loss, grads, grad_norm, problem = step_before_the_update(
            step, tc, lambda: self._accumulate(loop), self.model.params, schedule=self.schedule, clip=self.clip,
            before_clip=lambda grads: raw.update((name, g.copy()) for name, g in grads.items()))
        if problem is not None:
            raise ValueError(f"npllama's step {step + 1} cannot go on: {problem}")
        self.update(self.optimizer, grads, lr)
        return _phases(loss, raw, grad_norm, grads, lr, self.optimizer.m, self.optimizer.v, self.model.params)


# ----- the PyTorch side: torch.optim.AdamW, clip_grad_norm_, LambdaLR ---------------------------

def _cosine_with_warmup_factor(step, warmup_steps, total_steps, min_ratio):
    """lr(step) / max_lr, from derivations/adamw.md section 5 (written here, not npllama's code)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _TorchRun:
    def __init__(self, hf, tc, eps):
        import torch

        self.torch, self.hf, self.tc = torch, hf, tc
        self.named = dict(hf.named_parameters())
        self.optimizer = torch.optim.AdamW(decay_groups(self.named.items(), tc.weight_decay),
                                           lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=eps)
        ratio = tc.min_lr / tc.lr
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _cosine_with_warmup_factor(step, tc.warmup_steps, tc.steps, ratio))

    def step(self, step: int, batches) -> dict:
        torch = self.torch
        self.optimizer.zero_grad()
        # the mean over every counted target of the step's micro-batches, as one batch of them all
        counted = sum(int((targets != -100).sum()) for _, targets in batches)
        loss = 0.0
        for tokens, targets in batches:
            logits = self.hf(torch.from_numpy(np.asarray(tokens, dtype=np.int64))).logits
            part = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), torch.from_numpy(np.asarray(targets, dtype=np.int64)).reshape(-1),
                ignore_index=-100, reduction="sum") / counted
            part.backward()
            loss += float(part.detach())
        raw = {name: p.grad.detach().numpy().copy() for name, p in self.named.items()}
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.named.values()), self.tc.grad_clip))
        clipped = {name: p.grad.detach().numpy() for name, p in self.named.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.schedule.step()
        state = {name: self.optimizer.state[p] for name, p in self.named.items()}
        return _phases(loss, raw, grad_norm, clipped, lr, {n: s["exp_avg"].numpy() for n, s in state.items()},
                       {n: s["exp_avg_sq"].numpy() for n, s in state.items()},
                       {name: p.detach().numpy() for name, p in self.named.items()})


def _phases(loss, grads, grad_norm, clipped, lr, exp_avg, exp_avg_sq, params) -> dict:
    """phase -> {name: a copy of the array}, in PHASES order."""
    def copies(arrays):
        return {name: np.array(a, copy=True) for name, a in arrays.items()}
    return dict(zip(PHASES, ({"loss": np.array(loss)}, copies(grads), {"grad_norm": np.array(grad_norm)},
                             copies(clipped), {"lr": np.array(lr)}, copies(exp_avg), copies(exp_avg_sq),
                             copies(params))))


# ----- the comparison -----------------------------------------------------------------------------

def compare_training(model, batches, *, steps: int, total_steps: int | None = None, grad_accum: int = 1,
                     lr: float = 2e-3, min_lr: float | None = None, warmup_steps: int | None = None,
                     weight_decay: float = 0.1, beta1: float = 0.9, beta2: float = 0.95, grad_clip: float = 1.0,
                     dtype=np.float64, backend_name: str = "numpy", rtol: float | None = None,
                     atol: float | None = None, plant: str | None = None, echo=None,
                     progress: bool = False) -> TrainingComparison:
    """Train a copy of `model` for `steps` steps with npllama and with PyTorch, and compare them
    after every step (see the module's docstring; the settings are npllama.train.TrainConfig's,
    with its defaults).

    model: a Llama, a Hugging Face LLaMA folder (LlamaForCausalLM), a run folder, or a GGUF file or
    llama2.c checkpoint (both sides train npllama's reading of it, as debug.compare_transformers
    runs it); the caller's model is not changed; a masked-LM model (model.attends_causally False) is
    refused, as torch trains it with the causal mask.  batches: (tokens, targets) pairs, each (B, T) ints with targets already shifted and
    -100 where there is none (what npllama.data.BatchLoader.next_batch gives); step k takes the
    next grad_accum of them, so at least steps * grad_accum are needed.  total_steps: the length of
    the run the schedule is laid out over (default: steps), warmup_steps None: TrainConfig's rule.
    plant: one of PLANTED_TRAINING_BUGS, swapped into npllama's side.  echo: told what runs, once the
    settings are checked and before the first step (None: quiet).  progress: a bar on stderr, a
    step at a time, saying whether the runs still agree (a comparison of tens of steps takes minutes)."""
    from tqdm.auto import tqdm

    from . import backend
    from .debug import (_as_folder, _from_folder, _is_classifier, load_transformers_model, model_path,
                        set_up_transformers)
    from .train import ADAM_EPS

    if isinstance(model, (str, os.PathLike)):
        model = model_path(model)   # a run folder names its model/ folder; a GGUF or llama2.c file is itself
    dtype = _checked_dtype(dtype)
    tc = _train_config(steps, total_steps, grad_accum, lr, min_lr, warmup_steps, weight_decay, beta1, beta2,
                       grad_clip, dtype)
    if plant is not None and plant not in PLANTED_TRAINING_BUGS:
        raise ValueError(f"plant must be one of {', '.join(PLANTED_TRAINING_BUGS)}, got {plant!r}")
    batches = _checked_batches(batches, steps, grad_accum)
    with _as_folder(model) as folder:
        ours = _from_folder(folder, dtype)
        _refuse_untrainable(ours, _is_classifier)
        # eval(): npllama's attention has no dropout (npllama train trains without a folder's
        # attention_dropout), so transformers' is turned off too; eval mode changes nothing else
        hf = load_transformers_model(folder, dtype).eval()
    notes = set_up_transformers(hf, ours.config, faithful=dtype == np.float64)
    npllama_run, torch_run = _NpllamaRun(ours, tc, plant), _TorchRun(hf, tc, ADAM_EPS)
    if echo is not None:
        windows, seq_len = np.shape(batches[0][0])
        shown = model if isinstance(model, (str, os.PathLike)) else f"a {type(model).__name__} in memory"
        echo(f"{steps} steps of {grad_accum} x {windows} windows of {seq_len} tokens, model {shown}, "
             f"{np.dtype(dtype).name}: npllama ({backend_name}) against torch")
    rtol = DEFAULT_RTOL[dtype] if rtol is None else rtol
    rows, diffs = [], []
    parted_at = None
    with tqdm(total=steps, desc="train-compare", unit="step", disable=not progress, leave=False,
              file=sys.stderr, postfix="the runs agree so far") as bar:
        for step in range(steps):
            step_batches = batches[step * grad_accum:(step + 1) * grad_accum]
            with backend.use_backend(backend_name):
                a = npllama_run.step(step, step_batches)
            b = torch_run.step(step, step_batches)
            step_diffs = [(step + 1, phase, diff_tensors(name, a[phase][name], b[phase][name], rtol, atol))
                          for phase in PHASES for name in a[phase]]
            diffs += step_diffs
            rows.append(_row(step + 1, a, b, step_diffs))
            if parted_at is None and any(d.diverged for _, _, d in step_diffs):
                parted_at = step + 1
                bar.set_postfix_str(f"the runs parted at step {parted_at}")
            bar.update()
    return TrainingComparison(rows, diffs, rtol, atol, plant=plant, notes=notes)


def _row(step, a, b, step_diffs) -> StepRow:
    def pair(phase, name):
        return float(a[phase][name]), float(b[phase][name])
    return StepRow(step, pair("loss", "loss"), pair("grad norm", "grad_norm"), pair("lr", "lr"),
                   max(d.rel_err for _, phase, d in step_diffs if phase == "parameter"))


def _checked_dtype(dtype):
    try:
        dtype = np.dtype(dtype).type
    except TypeError:
        dtype = None
    if dtype not in DEFAULT_RTOL:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dtype


def _train_config(steps, total_steps, grad_accum, lr, min_lr, warmup_steps, weight_decay, beta1, beta2,
                  grad_clip, dtype):
    """The TrainConfig `npllama train` would run with these settings (it checks them all)."""
    from .ops._checks import require_positive_int
    from .train import TrainConfig

    require_positive_int("steps", steps)
    require_positive_int("grad_accum", grad_accum)
    total_steps = steps if total_steps is None else total_steps
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < steps:
        raise ValueError(f"total_steps must be an int >= steps ({steps}), got {total_steps!r}")
    if isinstance(warmup_steps, (int, np.integer)) and warmup_steps > total_steps:
        # TrainConfig would name its own steps, which is total_steps here, not the steps compared
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps}), the "
                         f"length of the run the schedule is laid out over")
    return TrainConfig(steps=int(total_steps), grad_accum=int(grad_accum), lr=lr, min_lr=min_lr,
                       warmup_steps=warmup_steps, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
                       grad_clip=grad_clip, dtype=np.dtype(dtype).name)


def _checked_batches(batches, steps: int, grad_accum: int) -> list:
    needed = steps * grad_accum
    batches = list(batches)
    if len(batches) < needed:
        raise ValueError(f"batches holds {len(batches)} (tokens, targets) pairs; steps * grad_accum = "
                         f"{needed} are needed")
    checked = []
    for i, pair in enumerate(batches[:needed]):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"batches[{i}] must be a (tokens, targets) pair, got {type(pair).__name__}")
        tokens, targets = (np.asarray(a) for a in pair)
        if tokens.ndim != 2 or tokens.shape != targets.shape or not (
                np.issubdtype(tokens.dtype, np.integer) and np.issubdtype(targets.dtype, np.integer)):
            raise ValueError(f"batches[{i}] must hold two int arrays of one shape (B, T), got "
                             f"{tokens.dtype} {tokens.shape} and {targets.dtype} {targets.shape}")
        checked.append((tokens.astype(np.int64), targets.astype(np.int64)))
    for step in range(steps):
        first = step * grad_accum
        if all((targets == -100).all() for _, targets in checked[first:first + grad_accum]):
            raise ValueError(f"batches[{first}:{first + grad_accum}] (step {step + 1}) have no target that is not "
                             f"-100: the step's loss has nothing to average over")
    return checked


def text_batches(tokenizer, text: str | None = None, data: str | None = None, *, batch_size: int, seq_len: int,
                 count: int, seed: int = 0) -> list:
    """`count` (tokens, targets) pairs of npllama train's batches (npllama.data.BatchLoader, in the
    order `seed` gives) from `text` or from the file or folder `data` (read as train reads --data);
    with neither, from the built-in stories `npllama train` trains on by default."""
    from .corpus import make_default_corpus
    from .data import BatchLoader, load_texts, tokenize_corpus

    if text is not None and data is not None:
        raise ValueError("give text or data, not both")
    texts = load_texts(data) if data is not None else [text] if text is not None else make_default_corpus(200)
    loader = BatchLoader(tokenize_corpus(texts, tokenizer, progress=False), batch_size, seq_len, seed)
    return [loader.next_batch() for _ in range(count)]


def _refuse_untrainable(model, is_classifier) -> None:
    if is_classifier(model):
        raise ValueError("model is a LlamaForSequenceClassification: compare_training runs pre-training's "
                         "next-token loss (LlamaForCausalLM); give a language model")
    if model.lora is not None:
        raise ValueError("model has LoRA adapters: compare_training trains every parameter of a plain "
                         "Llama; merge() the adapters first")
    # torch trains it as LlamaForCausalLM, with the causal mask; npllama as the model attends
    if not model.attends_causally:
        raise ValueError(f"model is a masked-LM model (bidirectional attention, objective {model.objective!r}): "
                         f"compare_training runs the next-token loss that transformers' LlamaForCausalLM trains, "
                         f"with the causal mask; give a causal model (`npllama train`, --objective causal, the "
                         f"default)")


# ----- planted bugs: training machinery gone wrong ------------------------------------------------

def _adamw_step_without_bias_correction(optimizer, grads, lr):
    """AdamW that forgets m and v start at 0: m and v themselves instead of m_hat, v_hat."""
    from .optim import adamw_update

    optimizer.step_count += 1
    beta1, beta2 = optimizer.betas
    for name, p in optimizer.params.items():
        decay = optimizer.weight_decay if optimizer.decay[name] else 0.0
        adamw_update(p, grads[name], optimizer.m[name], optimizer.v[name], lr, beta1, beta2, optimizer.eps,
                     decay, 1.0, 1.0)


def _adam_step_with_l2_penalty(optimizer, grads, lr):
    """Adam with weight decay as an L2 penalty: g + wd * p fed into m and v (not AdamW)."""
    from .optim import adamw_update

    optimizer.step_count += 1
    t, (beta1, beta2) = optimizer.step_count, optimizer.betas
    for name, p in optimizer.params.items():
        decay = optimizer.weight_decay if optimizer.decay[name] else 0.0
        adamw_update(p, grads[name] + decay * p, optimizer.m[name], optimizer.v[name], lr, beta1, beta2,
                     optimizer.eps, 0.0, 1 - beta1 ** t, 1 - beta2 ** t)


def _clip_per_tensor(loss, grads, params, max_norm):
    """Clipping each gradient to max_norm on its own instead of all of them together."""
    from .optim import clip_grad_norm, global_grad_norm

    grad_norm = global_grad_norm(grads)
    for name, g in grads.items():
        clip_grad_norm({name: g}, max_norm)
    return grad_norm, None


def _warmup_off_by_one(step, *, max_lr, warmup_steps, total_steps, min_lr):
    """Warmup from lr 0 (max_lr * step / warmup_steps): one step behind npllama's schedule."""
    from .optim import cosine_with_warmup

    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return cosine_with_warmup(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr=min_lr)


PLANTED_TRAINING_BUGS = {
    # name: (what is wrong, which piece of _NpllamaRun it replaces, the wrong piece, where it shows)
    "adamw-no-bias-correction": ("AdamW without the bias corrections 1 - beta^t", "update",
                                 _adamw_step_without_bias_correction, "parameter"),
    "adamw-l2-decay": ("weight decay added to the gradient as an L2 penalty, not applied to p", "update",
                       _adam_step_with_l2_penalty, "exp_avg"),
    "clip-per-tensor": ("gradients clipped one tensor at a time, not by the global norm", "clip",
                        _clip_per_tensor, "clipped gradient"),
    "warmup-off-by-one": ("warmup from lr 0 at step 0: step / warmup_steps, not (step + 1) / warmup_steps",
                          "schedule", _warmup_off_by_one, "lr"),
}
