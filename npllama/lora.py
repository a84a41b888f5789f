"""LoRA adapters for a Llama: attach, train, save in PEFT's layout, load, merge (article §9.2).

Fine-tuning every weight of a LLaMA needs, besides the weights, their gradients and two AdamW
moments: four copies of the model.  LoRA (Hu et al. 2021) freezes the pretrained weights and
learns, for a few chosen projections W (out, in), a low-rank update scaling * B A with
A (r, in), B (out, r) and r much smaller than in and out:

    y = x W^T + scaling * ((dropout(x)) A^T) B^T          scaling = lora_alpha / r

Only A and B are trained: for the tiny preset with r = 8 on q, k, v, o that is ~3% of the
parameters.  The math is in npllama/ops/lora.py and derivations/lora.md.

    adapters = attach_lora(model, r=8, lora_alpha=16, lora_dropout=0.05)   # model.lora is set
    loss, grads = model.loss_and_grads(tokens, targets)   # grads: the adapters' only, PEFT names
    AdamW(adapters.params, ...).step(grads)
    adapters.save_adapter("out/adapter")     # adapter_config.json + adapter_model.safetensors
    load_adapter(other_model, "out/adapter") # the same adapters, on another copy of the base
    adapters.merge()                         # W += scaling * B A; the model is plain again

Names and files follow Hugging Face PEFT, so `PeftModel.from_pretrained(base, "out/adapter")`
finds every tensor: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` etc.
Initialisation is PEFT's too: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a = sqrt(5)),
B = 0, so a freshly attached adapter leaves the model's output unchanged.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .ops._checks import require_non_negative_int, require_path
from .ops.lora import lora_backward, lora_forward
from .ops.swiglu import swiglu_act_backward, swiglu_act_forward

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
PARENT = {**{t: "self_attn" for t in ATTENTION_TARGETS}, **{t: "mlp" for t in MLP_TARGETS}}

PEFT_PREFIX = "base_model.model."   # PeftModel -> LoraModel -> the wrapped LlamaFor... model
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
OLD_WEIGHTS_NAME = "adapter_model.bin"   # PEFT's pickled format, read where WEIGHTS_NAME is missing
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")
CLASSIFICATION_HEADS = ("score",)   # modules_to_save of LlamaForSequenceClassification's head
HEAD_TENSORS = tuple(f"{h}.weight" for h in CLASSIFICATION_HEADS)   # their tensors, as PEFT saves them
SAVED_HEADS = ("classifier", "score")   # what PEFT's SEQ_CLS lists in modules_to_save (Llama has "score")
# adapter_config.json fields that change what a PEFT adapter computes, and what each sets
UNSUPPORTED_PEFT_FIELDS = {
    "layer_replication": "replicated layers",
    "target_parameters": "adapted parameters (not modules)", "trainable_token_indices": "trainable tokens",
    "lora_bias": "biases on lora_B", "alora_invocation_tokens": "activated LoRA (aLoRA) invocation tokens",
    "use_bdlora": "LoRA variants (BD-LoRA)", "arrow_config": "LoRA variants (Arrow routing)",
    "velora_config": "LoRA variants (VeLoRA)", "monteclora_config": "LoRA variants (MonteCLoRA)",
    "kasa_config": "LoRA variants (KaSA)", "use_qalora": "LoRA variants (QA-LoRA)",
}
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")   # inits that rewrite the base weights


class LoraSwiGLUCache(NamedTuple):
    """What the adapters' SwiGLU backward needs, and its intermediates for a trace."""

    gate_proj: tuple              # the adapters' linear cache of each projection
    up_proj: tuple
    act: tuple                    # the SiLU-gate forward's cache (reference or kernel)
    down_proj: tuple
    act_backward: Callable        # the SiLU-gate backward that reads that cache
    gate: np.ndarray              # (..., F)
    up: np.ndarray                # (..., F)
    act_out: np.ndarray           # (..., F) silu(gate) * up

    def intermediates(self) -> dict:
        """gate, up and act (..., F), as this forward computed them (as the SwiGLU caches' own)."""
        return {"gate": self.gate, "up": self.up, "act": self.act_out}


class LoraAdapters:
    """The adapters attached to one Llama: their parameters (PEFT names) and the projection hook.

    `training` switches dropout on (False by default, so evaluation and generation are
    deterministic).  `extra` holds other trainable tensors saved beside the adapters (PEFT's
    modules_to_save), e.g. {"score.weight": ...} for a classification head.  `task_type` and
    `source` are adapter_config.json's task_type and the folder, for adapters load_adapter read.

    By default every layer's target_modules are adapted with rank r and lora_alpha.  `modules`,
    {"model.layers.0.self_attn.q_proj": (r, lora_alpha), ...}, adapts those projections only, each
    with its own rank and alpha (what a PEFT adapter with layers_to_transform, rank_pattern or
    alpha_pattern computes); r and lora_alpha are then its config's defaults, as PEFT records them.
    """

    def __init__(self, model, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0,
                 target_modules=ATTENTION_TARGETS, seed: int = 0, use_rslora: bool = False, modules=None):
        self.lora_alpha, self.lora_dropout = _check_alpha(lora_alpha), _check_dropout(lora_dropout)
        self.r = _check_rank(r)
        self.use_rslora = _check_use_rslora(use_rslora)
        self.model = model
        if modules is None:   # every layer's target_modules, with r and lora_alpha
            modules = {m: (self.r, self.lora_alpha) for m in _modules(model.config.num_hidden_layers,
                                                                       _check_targets(target_modules))}
        # {module: (r, lora_alpha)} in model order; target_modules: the projections adapted somewhere
        self.module_settings = _check_module_settings(modules, model.config.num_hidden_layers)
        self.target_modules = tuple(t for t in ALL_TARGETS
                                    if any(m.endswith("." + t) for m in self.module_settings))
        # PEFT: alpha / r; rank-stabilised LoRA (use_rslora) divides by sqrt(r) instead.
        self.scalings = {m: alpha / (math.sqrt(rank) if self.use_rslora else rank)
                         for m, (rank, alpha) in self.module_settings.items()}
        self.training = False
        self.extra: dict[str, np.ndarray] = {}
        self.task_type: str | None = None
        self.source: str | None = None
        require_non_negative_int("seed", seed)
        self._rng = np.random.default_rng(seed)
        self.params = self._init_params(seed)
        # LoraOps made by op_bindings, by (adapted weights' ids, SiLU-gate ops): the next call with
        # the same ones gets the same functions, so backend.bind reuses its re-bound model code
        self._bound_ops: dict[tuple, LoraOps] = {}

    # ----- parameters ------------------------------------------------------------------------
    def modules(self) -> list[str]:
        """Every adapted projection, e.g. "model.layers.0.self_attn.q_proj", in model order."""
        return list(self.module_settings)

    @property
    def scaling(self) -> float:
        """The one scaling of adapters whose modules all share r and lora_alpha (a ValueError otherwise:
        `scalings` holds each module's)."""
        values = set(self.scalings.values())
        if len(values) != 1:
            raise ValueError("these adapters scale their modules differently (per-module r or lora_alpha): "
                             "read adapters.scalings[module]")
        return values.pop()

    def is_uniform(self) -> bool:
        """Whether every layer's target_modules are adapted, all with r and lora_alpha (plain LoRA
        settings, as attach_lora makes them)."""
        return self.module_settings == {m: (self.r, self.lora_alpha)
                                        for m in _modules(self.model.config.num_hidden_layers, self.target_modules)}

    def _init_params(self, seed):
        """PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (so the adapted model starts equal to the base)."""
        rng = np.random.default_rng([seed, 1])  # its own stream: dropout draws never shift the init
        dtype, params = self.model.dtype, {}
        for name, shape in _adapter_shapes(self.model, self.module_settings).items():
            if name.endswith(".lora_A.weight"):
                bound = 1.0 / math.sqrt(shape[1])
                params[name] = rng.uniform(-bound, bound, shape).astype(dtype)
            else:
                params[name] = np.zeros(shape, dtype=dtype)
        return params

    def num_parameters(self) -> int:
        """The entries of every adapter matrix (lora_A and lora_B of each adapted projection)."""
        return int(sum(p.size for p in self.params.values()))

    def describe(self) -> str:
        """The adapters in a few words, e.g. "r=8, lora_alpha=16 on q_proj, v_proj" (a trace's note)."""
        rslora = ", rsLoRA" if self.use_rslora else ""
        uneven = "" if self.is_uniform() else f" ({len(self.module_settings)} modules; per-module layers, r or alpha)"
        return f"r={self.r}, lora_alpha={self.lora_alpha:g}{rslora} on {', '.join(self.target_modules)}{uneven}"

    # ----- the ops the model runs while the adapters are attached -----------------------------
    def op_bindings(self, base: dict) -> dict:
        """LoRA enters the model through the projection ops it modifies (npllama.backend.bind):
        linear_forward/backward, and the SwiGLU whose three projections it may adapt.  A frozen
        weight gets no gradient (None); an adapted one gets {"lora_A": dA, "lora_B": dB}.
        `base`: the ops otherwise in force, whose SiLU-gate kernels the SwiGLU keeps using.

        The functions returned are bound to this call's weights and SiLU-gate ops (LoraOps) and
        nothing here changes afterwards: `use_op` is per thread, and another thread running the
        same adapters meanwhile must not change the ops this call's pass computes with."""
        from .backend import overrides

        replaced = sorted(set(overrides()) & set(LoraOps.OPS))
        if replaced:   # the adapters' own projections would run instead: never ignore an override silently
            raise ValueError(f"use_op({replaced[0]!r}, ...) cannot take effect while LoRA adapters are "
                             f"attached: the adapters run their own {', '.join(LoraOps.OPS)}. Override "
                             f"it on the model without adapters, or merge() them first")
        params = self.model.params
        modules = self.modules()
        weights = tuple(id(params[m + ".weight"]) for m in modules)
        act_ops = (base.get("swiglu_act_forward", swiglu_act_forward),
                   base.get("swiglu_act_backward", swiglu_act_backward))
        key = (weights, act_ops)
        ops = self._bound_ops.get(key)
        if ops is None:
            if len(self._bound_ops) >= _BOUND_OPS_LIMIT:   # (a trace's SiLU-gate ops are new at every call)
                self._bound_ops.clear()   # (one step, safe against another thread at the same point)
            ops = self._bound_ops[key] = LoraOps(self, dict(zip(weights, modules)), *act_ops)
        return ops.bindings

    def adapter_grads(self, model_grads: dict) -> dict:
        """The adapters' gradients under PEFT names, from the model's (keyed by the adapted weight)."""
        grads = {}
        for module in self.modules():
            g = model_grads[module + ".weight"]
            grads[peft_name(module, "lora_A")], grads[peft_name(module, "lora_B")] = g["lora_A"], g["lora_B"]
        return {name: grads[name] for name in self.params}

    @property
    def dropout_state(self) -> dict:
        """Where the dropout draws stand (the generator's state, JSON values): a resumed fine-tune
        sets it back, so it draws the masks an uninterrupted run would have."""
        return self._rng.bit_generator.state

    @dropout_state.setter
    def dropout_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state  # numpy checks it (TypeError/ValueError when it does not fit)

    def _dropout_mask(self, x):
        keep = 1.0 - self.lora_dropout
        return ((self._rng.random(x.shape) < keep) / keep).astype(x.dtype)  # inverted dropout

    # ----- merge, detach -------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the adapters into the base weights, W += scaling * B A, and detach them.

        The merged model computes what the adapted one did (without dropout), with no extra cost
        per token; it can be saved as an ordinary Hugging Face folder."""
        if self.model.lora is not self:   # merged (or detached) already: adding B A again would change the model
            raise ValueError("merge(): these adapters are not attached to their model (already merged, or "
                             "detached); merging them again would add scaling * B A to the weights twice")
        for module in self.modules():
            A, B = self.params[peft_name(module, "lora_A")], self.params[peft_name(module, "lora_B")]
            self.model.params[module + ".weight"] += (self.scalings[module] * (B @ A)).astype(self.model.dtype)
        self.detach()

    def detach(self) -> None:
        """Remove the adapters from the model (its base weights are as they were)."""
        if self.model.lora is self:
            self.model.lora = None

    # ----- PEFT files ----------------------------------------------------------------------
    def peft_config(self, base_model_name_or_path: str | None = None, task_type: str = "CAUSAL_LM") -> dict:
        """adapter_config.json's contents, with PEFT's LoraConfig field names.  Adapters on some
        layers only, or with per-module r or alpha, name each module by its full path (PEFT takes a
        target equal to a module's name as that module alone) and its r and alpha in rank_pattern
        and alpha_pattern (keys: the paths as regular expressions, matched whole)."""
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        target_modules, rank_pattern, alpha_pattern = list(self.target_modules), {}, {}
        if not self.is_uniform():
            target_modules = list(self.module_settings)
            for module, (rank, alpha) in self.module_settings.items():
                if rank != self.r:
                    rank_pattern[re.escape(module)] = rank
                if alpha != self.lora_alpha:
                    alpha_pattern[re.escape(module)] = alpha
        return {
            "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
            "r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
            "target_modules": target_modules, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "use_rslora": self.use_rslora,
            "use_dora": False, "modules_to_save": sorted(n.split(".")[0] for n in self.extra) or None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "revision": None,
        }

    def save_adapter(self, path, base_model_name_or_path: str | None = None,
                     task_type: str = "CAUSAL_LM") -> Path:
        """Write `path`/adapter_config.json and `path`/adapter_model.safetensors (PEFT's layout),
        atomically.  `extra` tensors are saved as PEFT saves modules_to_save: base_model.model.<name>.
        base_model_name_or_path naming a local folder is recorded absolute (base_of_adapter).

        Into an existing folder, as PEFT's save_pretrained: these two files replace those of the
        same names, an old adapter_model.bin (the previous adapter, pickled) goes, the folder's
        other files and sub-folders stay as they are; if the save fails, the folder is left as it
        was.  A folder holding a model (config.json) is refused (ValueError): transformers with PEFT
        would load the folder as this adapter on its base, no longer as that model."""
        from .io.atomic import atomic_directory
        from .io.hf import CONFIG_NAME as MODEL_CONFIG_NAME
        from .io.safetensors import write_safetensors

        if (Path(path) / MODEL_CONFIG_NAME).exists():
            raise ValueError(f"path {str(path)!r} holds a model ({MODEL_CONFIG_NAME}): an adapter saved beside it "
                             f"would make the folder load as the adapter on its base (transformers with PEFT), no "
                             f"longer as that model; save the adapter into another folder")

        if base_model_name_or_path is not None and Path(base_model_name_or_path).expanduser().exists():
            # a folder, absolute: PEFT reads the field from the working directory of whoever loads it
            base_model_name_or_path = str(Path(base_model_name_or_path).expanduser().resolve())
        config = self.peft_config(base_model_name_or_path, task_type)
        tensors = dict(self.params)
        tensors.update({PEFT_PREFIX + name: array for name, array in self.extra.items()})
        with atomic_directory(path, keep=lambda name, written: name != OLD_WEIGHTS_NAME) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
            write_safetensors(tmp / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
        return Path(path)


_BOUND_OPS_LIMIT = 16   # LoraOps kept per adapters (each is one small object)


class LoraOps:
    """The ops one call of the model runs with LoRA adapters attached, as LoraAdapters.op_bindings
    binds them: `bindings`, op name -> function.  They read the adapters' parameters, scaling and
    training switch as they run, and take from the call the adapted weights (`module_of`, id ->
    module) and the SiLU-gate ops its SwiGLU computes with -- fixed when made, whatever another
    thread binds later.

    The adapters are held by a weak reference: backend.bind keeps the op sets it re-bound, these
    functions among them, for the whole process, and they must not keep the adapters -- and so
    their model and its weights -- alive once nobody else refers to them."""

    OPS = ("linear_forward", "linear_backward", "swiglu_forward", "swiglu_backward", "embedding_backward")

    def __init__(self, adapters: LoraAdapters, module_of: dict[int, str], act_forward: Callable,
                 act_backward: Callable):
        self._adapters = weakref.ref(adapters)
        self.module_of = module_of
        self.act_forward, self.act_backward = act_forward, act_backward
        # made once: backend.bind keys its re-bound copies of the model's code by these functions
        self.bindings = {name: getattr(self, name) for name in self.OPS}

    @property
    def adapters(self) -> LoraAdapters | None:
        """The adapters these ops run (None once they have been freed)."""
        return self._adapters()

    def linear_forward(self, x, weight):
        """x W^T with W frozen, plus scaling * (dropout(x) A^T) B^T where W is adapted."""
        module = self.module_of.get(id(weight))
        if module is None:
            return x @ weight.T, (None, weight)
        adapters = self.adapters
        if adapters is None:
            raise RuntimeError("the LoRA adapters these ops were bound to have been freed (detached from "
                               "their model by another thread during this pass?)")
        A, B = adapters.params[peft_name(module, "lora_A")], adapters.params[peft_name(module, "lora_B")]
        mask = adapters._dropout_mask(x) if adapters.training and adapters.lora_dropout > 0 else None
        y, cache = lora_forward(x, weight, A, B, adapters.scalings[module], mask)
        return y, (cache, weight)

    @staticmethod
    def linear_backward(dy, cache):
        """(dx, the adapter's gradients or None for a frozen projection)."""
        lora_cache, weight = cache
        if lora_cache is None:
            return dy @ weight, None
        dx, dA, dB = lora_backward(dy, lora_cache)
        return dx, {"lora_A": dA, "lora_B": dB}

    def swiglu_forward(self, x, w_gate, w_up, w_down):
        """The SwiGLU with each projection through the adapters' linear."""
        gate, gate_cache = self.linear_forward(x, w_gate)
        up, up_cache = self.linear_forward(x, w_up)
        act, act_cache = self.act_forward(gate, up)
        out, down_cache = self.linear_forward(act, w_down)
        return out, LoraSwiGLUCache(gate_cache, up_cache, act_cache, down_cache, self.act_backward, gate, up, act)

    def swiglu_backward(self, dout, cache):
        """(dx, then for gate, up and down: the adapter's gradients or None for a frozen projection)."""
        gate_cache, up_cache, act_cache, down_cache, act_backward = cache[:5]
        dact, g_down = self.linear_backward(dout, down_cache)
        dgate, dup = act_backward(dact, act_cache)
        dx_gate, g_gate = self.linear_backward(dgate, gate_cache)
        dx_up, g_up = self.linear_backward(dup, up_cache)
        return dx_gate + dx_up, g_gate, g_up, g_down

    @staticmethod
    def embedding_backward(dout, cache):
        """No gradient: the embedding is frozen under LoRA."""
        return None


def _modules(num_layers: int, targets) -> list[str]:
    """The adapted projections of a model of num_layers layers, in model order."""
    return [f"model.layers.{i}.{PARENT[t]}.{t}" for i in range(num_layers) for t in ALL_TARGETS if t in targets]


def _adapter_shapes(model, module_settings: dict) -> dict:
    """{PEFT name: shape} of the adapters {module: (r, alpha)} on `model`: A (r, in), B (out, r).
    (What loading checks a file against before anything of r rows is allocated.)"""
    shapes = {}
    for module, (r, _) in module_settings.items():
        out_features, in_features = model.params[module + ".weight"].shape
        shapes[peft_name(module, "lora_A")], shapes[peft_name(module, "lora_B")] = (r, in_features), (out_features, r)
    return shapes


def peft_name(module: str, which: str) -> str:
    """"model.layers.0.self_attn.q_proj", "lora_A" -> PEFT's saved key
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"."""
    return f"{PEFT_PREFIX}{module}.{which}.weight"


def attach_lora(model, r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0,
                target_modules=ATTENTION_TARGETS, seed: int = 0, use_rslora: bool = False) -> LoraAdapters:
    """Attach fresh adapters to `model` (its base weights become frozen).  Returns them.

    r: the rank; scaling = lora_alpha / r (use_rslora: lora_alpha / sqrt(r)).  lora_dropout: on
    the adapters' input while `adapters.training`.  target_modules: projection names from
    ALL_TARGETS (q_proj, ..., down_proj), in every layer.  seed: A's random init (B starts at 0)
    and the dropout masks.
    """
    if model.lora is not None:
        raise ValueError("the model already has LoRA adapters attached; merge() or detach() them first")
    _check_rank_fits(model.config, _check_rank(r), _check_targets(target_modules))
    adapters = LoraAdapters(model, r, lora_alpha, lora_dropout, target_modules, seed, use_rslora)
    model.lora = adapters
    return adapters


def load_adapter(model, path, task: str | None = None) -> LoraAdapters:
    """Attach the adapters saved in the PEFT folder `path` (by npllama or by PEFT) to `model`.

    Adapts the modules PEFT would, by PEFT's rules: target_modules as names, suffixes of names
    ("self_attn.q_proj"), whole paths or a regular expression, limited by layers_to_transform,
    layers_pattern and exclude_modules, each with rank_pattern's and alpha_pattern's r and alpha
    (fan_in_fan_out true is a warning and false, as PEFT makes it for Linear layers).  Refuses, by
    name, a selection reaching a module npllama cannot adapt (lm_head, embed_tokens) and every other
    field that would make PEFT compute something else (UNSUPPORTED_PEFT_FIELDS, DoRA, a base-changing
    init, modules_to_save beyond a classification head); then checks that every tensor is there with
    the shape this base model needs.  A
    classification head saved beside the adapters (`score.weight`) lands in `adapters.extra`.
    task="CAUSAL_LM": the model will predict tokens (generate, perplexity, multiple choice), so an
    adapter saved for sequence classification is refused before its tensors are read.
    """
    from .runs import reading_run

    require_path("load_adapter()'s path", path, "a LoRA adapter folder")
    if task not in (None, "CAUSAL_LM"):
        raise ValueError(f"task must be None or 'CAUSAL_LM', got {task!r}")
    with reading_run(path):   # a fine-tuning run replacing the folder is never read half-way
        return _load_adapter(model, path, task)


def base_of_adapter(path, flag: str = "--model") -> str:
    """The base model an adapter folder was trained on, for a caller given the adapter but no base:
    its adapter_config.json's base_model_name_or_path, the one PEFT's AutoPeftModel loads.  npllama
    records it absolute; one recorded relative (as PEFT and older npllama record it, as given) is
    read from the working directory, as PEFT reads it.  A FileNotFoundError when `path` is no
    adapter folder (as load_adapter's: not the latest run's model in its stead); a ValueError
    naming `flag`, the way to give the base, when the file names none or a path that is no folder
    here."""
    from .io.errors import CheckpointError
    from .io.reading import read_json

    config_path, _ = _adapter_files(Path(path).expanduser())
    base = read_json(config_path, expect=dict, error=CheckpointError).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"adapter {str(path)!r} does not name its base model (its {CONFIG_NAME} has no "
                         f"base_model_name_or_path): give the base it was fine-tuned on with {flag}")
    if not Path(base).expanduser().is_dir():
        raise ValueError(f"adapter {str(path)!r} was fine-tuned on {base!r} (its {CONFIG_NAME}'s "
                         f"base_model_name_or_path, {_what_the_base_name_is(base)}), which is not a folder here: "
                         f"give that base model with {flag}")
    return base


def model_or_adapter_base(model, adapter, flag: str = "--model", say=None):
    """The model a caller given `model` and a LoRA `adapter` folder (either may be None) loads:
    `model` when given; else, with an adapter, the base it names (base_of_adapter, refused naming
    `flag`), told to `say` (a function taking one line; a command prints it on stderr, apart from
    its output) since nobody typed it; else None, the caller's own default (the latest run)."""
    if model is not None or adapter is None:
        return model
    base = base_of_adapter(adapter, flag)
    if say is not None:
        say(f"base model: {base} (named by the adapter's {CONFIG_NAME}; give {flag} for another)")
    return base


# A Hugging Face Hub name ("meta-llama/Llama-2-7b-hf"), as PEFT records a base it downloaded
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _what_the_base_name_is(base: str) -> str:
    """What a base_model_name_or_path that is no folder here may be, for base_of_adapter's refusal:
    an absolute path of the machine the adapter was made on (a POSIX or a Windows one, whichever
    this one is), a Hub name, or a path relative to the folder the fine-tune ran in."""
    from pathlib import PurePosixPath, PureWindowsPath

    if PurePosixPath(base).is_absolute() or PureWindowsPath(base).is_absolute() or base.startswith("~"):
        return "an absolute path on the machine it was fine-tuned on"
    relative = "a path relative to the folder the fine-tune ran in, which is not this one"
    if _HUB_NAME.fullmatch(base):
        return (f"a Hugging Face Hub name: npllama reads local folders; download it (`huggingface-cli download "
                f"{base} --local-dir DIR`) -- or {relative}")
    return relative


def is_classification_adapter(task_type, modules_to_save) -> bool:
    """Whether an adapter_config.json's task_type / modules_to_save say it was saved for sequence
    classification (a head, `score`, trained beside the adapters)."""
    heads = modules_to_save if isinstance(modules_to_save, list) else []
    return task_type == "SEQ_CLS" or any(h in CLASSIFICATION_HEADS for h in heads)


def check_causal_lm(model) -> None:
    """Refuse a model whose attached LoRA adapters were saved for sequence classification: they
    were trained to label texts through their head, and predicting tokens with them (generate,
    perplexity) gives meaningless text without any warning."""
    adapters = getattr(model, "lora", None)
    if adapters is None:
        return
    heads = sorted({name.split(".")[0] for name in adapters.extra})
    if is_classification_adapter(adapters.task_type, heads):
        raise ValueError(_classification_adapter_message(adapters.source, adapters.task_type, heads))


def _classification_adapter_message(source, task_type, heads) -> str:
    where = f"adapter {str(source)!r}" if source is not None else "the model's LoRA adapter"
    found = ", ".join(([f"task_type {task_type}"] if task_type else [])
                      + ([f"modules_to_save {heads}"] if heads else []))
    return (f"{where} is a sequence-classification adapter ({found}): it labels texts with its "
            f"classification head and does not predict tokens; use it with `npllama classify --model "
            f"BASE --adapter {source or 'DIR'}` (Python: npllama.load_classifier(base, adapter=...)), or "
            f"use a CAUSAL_LM adapter (`npllama finetune sft --lora`) here")


def _adapter_files(path) -> tuple[Path, Path]:
    """(adapter_config.json, adapter_model.safetensors) of the adapter folder `path`, or a
    FileNotFoundError naming the one missing."""
    folder = Path(path)
    files = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist (a PEFT adapter folder holds {CONFIG_NAME} "
                                    f"and {WEIGHTS_NAME})")
    return files


def _load_adapter(model, path, task=None) -> LoraAdapters:
    from .io.errors import CheckpointError
    from .io.safetensors import read_safetensors

    if model.lora is not None:
        raise ValueError("the model already has LoRA adapters attached; merge() or detach() them first")
    config_path, weights_path = _adapter_files(path)
    from .io.reading import read_json

    # a regular file of bounded size, JSON of bounded depth, an object at the top
    config = read_json(config_path, expect=dict, error=CheckpointError)
    _check_peft_config(config_path, config)
    if task == "CAUSAL_LM" and is_classification_adapter(config.get("task_type"), config.get("modules_to_save")):
        raise ValueError(_classification_adapter_message(path, config.get("task_type"),
                                                         config.get("modules_to_save")))
    # a base of another shape (or depth) is most often the wrong model given: say which one the adapter names
    other_base = _fine_tuned_on(config)
    head = "score" if is_classification_adapter(config.get("task_type"), config.get("modules_to_save")) else "lm_head"
    settings = _adapter_settings(config_path, config, model.config.num_hidden_layers, head, other_base)
    tensors = read_safetensors(weights_path, dtype=model.dtype)
    # checked against the file before LoraAdapters allocates r rows per projection: r is bounded by
    # no dimension of the base (a PEFT adapter may exceed them), and an r the file does not have
    # (10**9, a typo) would otherwise be a MemoryError or gigabytes taken, not this file's error
    expected = _adapter_shapes(model, settings["modules"])
    rank_of = {peft_name(m, which): rank for m, (rank, _) in settings["modules"].items() for which in ("lora_A", "lora_B")}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(weights_path, f"missing: adapter_config.json's target_modules and the "
                                                f"base model's layers need it{other_base}", tensor=name)
        got = tensors[name].shape
        if got != shape:
            rank_axis = 0 if name.endswith(".lora_A.weight") else 1
            if len(got) == 2 and got[1 - rank_axis] == shape[1 - rank_axis]:   # only the rank differs
                r = rank_of[name]
                field = "r" if r == settings["r"] else "rank_pattern"   # (the rank PEFT gives this module)
                says = f"is {r}" if field == "r" else f"gives it rank {r}"
                raise CheckpointError(config_path, f"{says}, but {WEIGHTS_NAME}'s {name!r} has rank "
                                                   f"{got[rank_axis]} (shape {got}): the config does not describe "
                                                   f"these tensors", field=field)
            raise CheckpointError(weights_path, f"shape {got} does not match the base model, which needs "
                                                f"{shape}{other_base}", tensor=name)
    adapters = LoraAdapters(model, **settings)
    for name in expected:
        adapters.params[name] = tensors.pop(name)
    for name in list(tensors):
        if name[len(PEFT_PREFIX):] not in HEAD_TENSORS or not name.startswith(PEFT_PREFIX):
            raise CheckpointError(weights_path, f"unexpected: no such adapter in this base model, nor a "
                                                f"classification head (is the adapter for another model?)"
                                                f"{other_base}", tensor=name)
        adapters.extra[name[len(PEFT_PREFIX):]] = tensors.pop(name)
    adapters.task_type = config.get("task_type") if isinstance(config.get("task_type"), str) else None
    adapters.source = str(path)
    model.lora = adapters
    return adapters


# ----- checks --------------------------------------------------------------------------------------

def check_lora_settings(target_modules, lora_alpha, lora_dropout) -> tuple[tuple[str, ...], float, float]:
    """The settings of LoRA adapters that need no model, checked: (targets in model order, alpha,
    dropout).  (A fine-tune checks them before it loads its base model.)"""
    return _check_targets(target_modules), _check_alpha(lora_alpha), _check_dropout(lora_dropout)


def _check_alpha(lora_alpha) -> float:
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real) or not 0 < lora_alpha <= 1e30:
        # (compared before any float(): a huge int would overflow it; inf and NaN fail the range)
        raise ValueError(f"lora_alpha must be a positive finite number (at most 1e30), got {lora_alpha!r:.40}")
    return float(lora_alpha)


def _check_dropout(lora_dropout) -> float:
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real) or not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be a number in [0, 1), got {lora_dropout!r}")
    return float(lora_dropout)


def _check_use_rslora(use_rslora) -> bool:
    if not isinstance(use_rslora, (bool, np.bool_)):   # bool("no") is True: rsLoRA's scaling, unasked
        raise TypeError(f"use_rslora must be True or False, got {use_rslora!r:.40}")
    return bool(use_rslora)


def _check_targets(target_modules) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    try:
        targets = tuple(target_modules)
    except TypeError:
        targets, got = (), f"{target_modules!r:.80}"
    else:
        got = f"{list(targets)!r}"
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown or not targets:
        if unknown and len(unknown) < len(targets):   # say which of them npllama cannot adapt
            got += f"; {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not"
        raise ValueError(f"target_modules must be a non-empty list of LLaMA projections ({', '.join(ALL_TARGETS)}), "
                         f"got {got}")
    return tuple(t for t in ALL_TARGETS if t in targets)   # model order, no duplicates


def _check_rank(r) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise ValueError(f"r (the LoRA rank) must be a positive int, got {r!r:.40}")
    return int(r)


def _check_module_settings(modules, num_layers: int) -> dict:
    """LoraAdapters' `modules`, {projection path: (r, lora_alpha)}, checked; in model order."""
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"modules must be a non-empty dict {{projection path: (r, lora_alpha)}}, got {modules!r:.80}")
    known = _modules(num_layers, ALL_TARGETS)
    unknown = [m for m in modules if m not in known]
    if unknown:
        raise ValueError(f"modules names {unknown[0]!r:.80}, which is no projection of this {num_layers}-layer model "
                         f"(they are named like {known[0]!r})")
    settings = {}
    for module in known:
        if module in modules:
            try:
                rank, alpha = modules[module]
            except (TypeError, ValueError):
                raise ValueError(f"modules[{module!r}] must be a pair (r, lora_alpha), got {modules[module]!r:.40}") from None
            settings[module] = _check_rank(rank), _check_alpha(alpha)
    return settings


def _check_rank_fits(config, r, targets) -> None:
    """attach_lora's choice of r: at most each adapted projection's smaller dimension.  (An adapter
    PEFT made may have a larger r; loaded, it computes scaling * B A all the same.)"""
    shapes = config.param_shapes()
    for t in targets:
        out_features, in_features = shapes[f"model.layers.0.{PARENT[t]}.{t}.weight"]
        if r > min(out_features, in_features):
            raise ValueError(f"r={r} is larger than {t}'s smaller dimension min(out, in) = "
                             f"min({out_features}, {in_features}); a rank-{r} update of it cannot exist "
                             f"(and would not be low-rank): choose r <= {min(out_features, in_features)}")


def _fine_tuned_on(config) -> str:
    """What an error about an adapter that does not fit the base adds: the base it records."""
    base = config.get("base_model_name_or_path")
    return (f"; the adapter was fine-tuned on {base!r} (its {CONFIG_NAME}'s base_model_name_or_path): "
            f"load it on that model" if isinstance(base, str) and base else "")


# ----- which modules a PEFT adapter adapts, by PEFT's own rules ------------------------------------
# (peft 0.21: LoraConfig.__post_init__, BaseTuner.inject_adapter, check_target_module_exists,
# _find_minimal_target_modules, _maybe_include_all_linear_layers, and get_pattern_key for rank_pattern
# and alpha_pattern.)  PEFT matches adapter_config.json against the names of transformers' model's
# modules; npllama lists those names and runs the same rules on them.

HEAD_MODULES = {"lm_head": "the output head", "score": "the classification head",
                "model.embed_tokens": "the token embedding"}   # modules PEFT can adapt and npllama cannot
_MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20   # peft.utils.constants


def _hf_module_names(num_layers: int, head: str) -> list[str]:
    """The module names of transformers' LlamaForCausalLM (head "lm_head") or LlamaForSequenceClassification
    ("score") of num_layers layers, in named_modules() order, without the model itself ("")."""
    names = ["model", "model.embed_tokens", "model.layers"]
    for i in range(num_layers):
        layer = f"model.layers.{i}"
        names += [layer, f"{layer}.self_attn", *(f"{layer}.self_attn.{t}" for t in ATTENTION_TARGETS),
                  f"{layer}.mlp", *(f"{layer}.mlp.{t}" for t in MLP_TARGETS), f"{layer}.mlp.act_fn",
                  f"{layer}.input_layernorm", f"{layer}.post_attention_layernorm"]
    return names + ["model.norm", "model.rotary_emb", head]


def _minimal_target_modules(targets: set, other_names: list) -> set:
    """PEFT's _find_minimal_target_modules: a long target list condensed to the shortest suffixes that
    match no other module.  (It is what PEFT then matches, so layers_to_transform applies to entries
    that were full paths.)"""
    def suffixes(name):
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts))][::-1]

    other_suffixes = {suffix for name in other_names for suffix in suffixes(name)}
    required = set()
    for item, item_suffixes in sorted(((t, suffixes(t)) for t in targets), key=lambda pair: pair[1]):
        for suffix in item_suffixes:
            if suffix in required or suffix in other_suffixes:
                continue
            if not any(item.endswith("." + r) for r in required):
                required.add(suffix)
                break
    return required or set(targets)


def _layer_index(key: str, layers_pattern) -> int | None:
    """The layer a module name is in, as PEFT finds it for layers_to_transform: the first number
    between dots after any name (no layers_pattern), or after one of layers_pattern's names."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return None if match is None else int(match["idx"])


def _peft_adapts(config: dict, targets, key: str) -> bool:
    """Whether PEFT puts an adapter on the module named `key` (check_target_module_exists)."""
    excluded = config.get("exclude_modules")
    if excluded:
        if isinstance(excluded, str):
            if re.fullmatch(excluded, key):
                return False
        elif key in excluded or any(key.endswith(f".{e}") for e in excluded):
            return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.get("modules_to_save") or ()):
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:   # a module named whole: layers_to_transform does not apply to it
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(key, config.get("layers_pattern"))
    return index is not None and (index == layers if isinstance(layers, int) else index in layers)


def _pattern_value(patterns: dict, key: str, default):
    """rank_pattern's or alpha_pattern's value for module `key` (PEFT's get_pattern_key: the first
    pattern that matches the end of the name after a dot), else `default`."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def _check_selection_fields(fail, config) -> None:
    """The fields _peft_module_settings reads, of the types PEFT takes, their patterns valid regular
    expressions; and the combinations LoraConfig itself refuses refused as it does."""
    def strings(value):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def valid_regex(field, pattern, template="{}"):
        try:
            re.compile(template.format(pattern))
        except re.error as error:
            fail(field, f"holds {pattern!r:.60}, which is no regular expression ({error})")

    targets = config["target_modules"]
    if not (isinstance(targets, str) and targets) and not (strings(targets) and targets):
        fail("target_modules", f"must be a non-empty list of module names (or suffixes of them, e.g. q_proj), "
                               f"'all-linear', or a regular expression string, got {targets!r:.80}")
    if isinstance(targets, str):
        valid_regex("target_modules", targets)
        for field in ("layers_to_transform", "layers_pattern"):   # LoraConfig refuses them beside a regex
            if config.get(field) is not None:
                fail(field, f"is {config[field]!r:.40}, but target_modules is a regular expression string: PEFT "
                            f"refuses the two together (select the layers in the expression)")
    layers = config.get("layers_to_transform")
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)   # noqa: E731
    if layers is not None and not integer(layers) and not (isinstance(layers, list) and all(map(integer, layers))):
        fail("layers_to_transform", f"must be a layer index or a list of them, got {layers!r:.60}")
    pattern = config.get("layers_pattern")
    if pattern is not None and not isinstance(pattern, str) and not strings(pattern):
        fail("layers_pattern", f"must be a name (e.g. 'layers') or a list of names, got {pattern!r:.60}")
    if pattern and layers is None:
        fail("layers_pattern", f"is {pattern!r:.40} without layers_to_transform: PEFT refuses it (the pattern "
                               f"only says where layers_to_transform's indices are)")
    for p in [pattern] if isinstance(pattern, str) else pattern or ():
        valid_regex("layers_pattern", p, r"(?:^|.*?\.){}\.(?P<idx>\d+)\.")
    excluded = config.get("exclude_modules")
    if excluded is not None and not isinstance(excluded, str) and not strings(excluded):
        fail("exclude_modules", f"must be a list of module names or a regular expression string, got {excluded!r:.60}")
    if isinstance(excluded, str):
        valid_regex("exclude_modules", excluded)
    for field, check in (("rank_pattern", _check_rank), ("alpha_pattern", _check_alpha)):
        patterns = config.get(field)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            fail(field, f"must be an object {{module name pattern: value}}, got {patterns!r:.60}")
        for key, value in patterns.items():
            valid_regex(field, key, r"(.*\.)?({})$")
            try:
                check(value)
            except ValueError as error:
                fail(field, f"[{key!r:.40}]: {error}")


def _peft_module_settings(path, config: dict, num_layers: int, head: str, other_base: str = "") -> dict:
    """{projection path: (r, lora_alpha)} PEFT adapts on a Llama of num_layers layers, by adapter_config.json
    (`config`, checked by _check_peft_config): the modules target_modules, layers_to_transform,
    layers_pattern and exclude_modules select, with rank_pattern's and alpha_pattern's r and alpha.
    A selection that reaches a module npllama cannot adapt, or none, is refused by name."""
    from .io.errors import CheckpointError

    names = _hf_module_names(num_layers, head)
    if config.get("task_type") == "SEQ_CLS":   # PeftModelForSequenceClassification saves its heads whole, never adapts them
        config = {**config, "modules_to_save": [*(config.get("modules_to_save") or ()), *SAVED_HEADS]}
    targets = config["target_modules"]
    if isinstance(targets, str) and targets.lower() == "all-linear":   # every Linear but the output layer
        classifier = config.get("task_type") == "SEQ_CLS"
        targets = {n for n in names if n.rsplit(".", 1)[-1] in ALL_TARGETS or (n == "score" and not classifier)}
    elif isinstance(targets, list):
        targets = set(targets)
        if len(targets) >= _MIN_TARGET_MODULES_FOR_OPTIMIZATION:
            suffixes = tuple("." + t for t in targets)
            condensed = _minimal_target_modules(targets, [n for n in names if n not in targets
                                                          and not n.endswith(suffixes)])
            if len(condensed) < len(targets):   # PEFT keeps the list as it is unless it gets shorter
                targets = condensed
    adapted = [name for name in names if _peft_adapts(config, targets, name)]
    if not adapted:
        regex = (" (PEFT matches a regular expression against whole module names such as "
                 f"{names[5]!r}: e.g. '.*\\.(q_proj|v_proj)')" if isinstance(targets, str) else "")
        limits = "".join(f" with {field} {config[field]!r:.60}" for field in ("layers_to_transform", "layers_pattern",
                                                                             "exclude_modules") if config.get(field))
        raise CheckpointError(path, f"{config['target_modules']!r:.80}{limits} selects no module of this base model, "
                                    f"and PEFT refuses such an adapter too{regex}{other_base}",
                              field="target_modules")
    projections = set(_modules(num_layers, ALL_TARGETS))
    others = [name for name in adapted if name not in projections]
    if others:
        name = others[0]
        why = (f"{HEAD_MODULES[name]}, which PEFT adapts and npllama cannot: npllama adapts only the projections "
               f"{', '.join(ALL_TARGETS)}; merge the adapter into its base with PEFT (merge_and_unload(), "
               f"save_pretrained) and load that model" if name in HEAD_MODULES
               else "no Linear layer, which PEFT cannot adapt either: name projections, e.g. q_proj")
        raise CheckpointError(path, f"{config['target_modules']!r:.80} selects {name!r}: {why}",
                              field="target_modules")
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    return {name: (_pattern_value(ranks, name, config["r"]), _pattern_value(alphas, name, config["lora_alpha"]))
            for name in adapted}


def _adapter_settings(path, config, num_layers: int, head: str = "lm_head", other_base: str = "") -> dict:
    """adapter_config.json's settings as LoraAdapters takes them, checked by its checks; one that
    fails them is a CheckpointError naming the file and the field (the caller gave no such argument).
    "modules": each adapted projection's (r, lora_alpha), by PEFT's rules (_peft_module_settings)."""
    from .io.errors import CheckpointError

    checks = {"r": _check_rank, "lora_alpha": _check_alpha, "lora_dropout": _check_dropout,
              "use_rslora": _check_use_rslora}
    defaults = {"lora_dropout": 0.0, "use_rslora": False}   # PEFT's, for a config that leaves them out
    null_as_default = ("use_rslora",)   # PEFT tests `if use_rslora:`, so null computes plain LoRA too
    settings = {}
    for field, check in checks.items():
        value = config.get(field, defaults.get(field))
        try:
            settings[field] = check(defaults[field] if value is None and field in null_as_default else value)
        except (TypeError, ValueError) as error:
            raise CheckpointError(path, str(error), field=field) from None
    settings["modules"] = _peft_module_settings(path, {**config, **settings}, num_layers, head, other_base)
    return settings


def _check_peft_config(path, config) -> None:
    from .io.errors import CheckpointError

    def fail(field, problem):
        raise CheckpointError(path, problem, field=field)

    if not isinstance(config, dict):
        fail(None, "must hold a JSON object")
    if config.get("peft_type") != "LORA":
        fail("peft_type", f"is {config.get('peft_type')!r}; npllama loads LoRA adapters ('LORA') only")
    if config.get("task_type") not in (None, *TASK_TYPES):
        # PEFT's other tasks wrap other models: LlamaModel (FEATURE_EXTRACTION), whose tensors are named
        # without "model.", or heads that label every token (TOKEN_CLS) or find answer spans (QUESTION_ANS)
        fail("task_type", f"is {config.get('task_type')!r:.40}; npllama loads adapters of LlamaForCausalLM "
                          f"('CAUSAL_LM': generate, chat, eval) and LlamaForSequenceClassification ('SEQ_CLS': "
                          f"classify) only")
    for field in ("r", "lora_alpha", "target_modules"):
        if field not in config:
            fail(field, "missing")
    _check_selection_fields(fail, config)
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        # (PEFT's "all" and "lora_only" train biases, which a LLaMA's linear layers do not have: PEFT saves
        # none and computes plain LoRA; a bias tensor in the file is refused as unexpected)
        fail("bias", f"is {config['bias']!r:.40}; PEFT's values are 'none', 'all' and 'lora_only'")
    if config.get("use_dora") not in (None, False):   # (PEFT tests `if use_dora:`: null is plain LoRA too)
        fail("use_dora", f"is {config['use_dora']!r}; npllama supports only False (plain LoRA, not DoRA)")
    fan_in_fan_out = config.get("fan_in_fan_out")
    if fan_in_fan_out not in (None, False, True):
        fail("fan_in_fan_out", f"is {fan_in_fan_out!r:.40}; it must be true or false")
    if fan_in_fan_out:   # it says weights are stored (in, out), as GPT-2's Conv1D; a Llama's Linear are (out, in)
        warnings.warn(f"{path}: fan_in_fan_out is true, but the adapted modules of a Llama are Linear layers "
                      f"(weights (out, in)): loading with fan_in_fan_out false, as PEFT does", stacklevel=4)
    # PEFT applies each of these when it loads the adapter; npllama would not, and would compute
    # other outputs than PEFT without a word.  So an adapter that sets one is refused.
    for field, what in UNSUPPORTED_PEFT_FIELDS.items():
        value = config.get(field)
        if not (value is None or value is False or (isinstance(value, (list, dict, str)) and not value)):
            fail(field, f"is {value!r:.80}; {what} are not supported by npllama (PEFT would apply them, "
                        f"npllama would not): only plain LoRA loads")
    heads = config.get("modules_to_save")
    if heads is not None and (not isinstance(heads, list) or not all(h in SAVED_HEADS for h in heads)):
        fail("modules_to_save", f"is {heads!r:.80}; npllama loads only a classification head beside the "
                                f"adapters (a subset of {list(SAVED_HEADS)}), not other trained modules")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.startswith(BASE_CHANGING_INITS):
        fail("init_lora_weights", f"is {init!r}: PEFT changes the base weights for such an adapter when it "
                                  f"loads it; convert it to a plain LoRA adapter with PEFT first "
                                  f"(save_pretrained(..., path_initial_model_for_weight_conversion=...))")
