"""Traces: every named intermediate of the forward pass and every gradient of the backward pass.

    with npllama.trace() as t:
        loss, grads = model.loss_and_grads(tokens, targets)
    t["model.layers.0.self_attn.attn_probs"]          # (B, H, T, T)
    t["d:model.layers.0.input_layernorm.out"]          # the gradient flowing into that tensor
    t.summary()                                        # prints shape, dtype, mean, std, min, max, NaN/Inf
    t.save("run.npz");  t2 = Trace.load("run.npz")     # plain .npz, never pickle

    report = npllama.trace.compare(t_numpy, t_numba, rtol=1e-4)
    print(report)                                      # the first tensor that differs, and where

Names join the Hugging Face module path and the derivation's symbol; a gradient's name is the
tensor's name behind "d:".  `trace(include=["*.attn_probs"])` records only names matching the
patterns (fnmatch), so a large model can be traced without storing everything.  When no trace is
active the model pays one ContextVar lookup per layer, nothing more (benchmarks/bench_trace.py).

Records keep the order they were made in: the forward pass in execution order, then the
gradients in the order the backward pass produced them, then `d:<param name>` for every
parameter, in the order the backward finished them.  `compare` walks that order, so the first
divergence it reports is the earliest tensor that went wrong -- usually the output of the op
that has the bug.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import fnmatch
import functools
import io
import json
import numbers
import os
import re
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .gradcheck import rel_error
from .ops.attention import attention_mask

_active: contextvars.ContextVar["Trace | None"] = contextvars.ContextVar("npllama_trace", default=None)

# Keys of a saved .npz that are not records (a record name never starts with "__").
_NAMES_KEY = "__names__"
_META_KEY = "__meta__"
_FORMAT = "npllama-trace-1"
_PEFT_PREFIX = "base_model.model."   # npllama.lora.PEFT_PREFIX (trace.py sits above lora.py)


# The trace recording here, or None.  The ContextVar's own method (a C call): a debugger stepping
# through Llama's public methods does not stop in it.
active_trace = _active.get


class Trace:
    """An ordered record name -> array (copies, so later in-place updates do not change it).

    One rule for every record, however it is made: the first time a name is recorded it is kept
    under that name; when the same name comes again -- a second pass through the model inside the
    same `trace()` block, e.g. each decode step of `model.generate` after the prefill, or a second
    `loss_and_grads` -- the later values are kept too, under "pass2/<name>", "pass3/<name>", ...
    Nothing is overwritten and nothing is dropped, and two traces of the same calls line up name
    for name in `compare`."""

    def __init__(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 meta: Mapping | None = None):
        if isinstance(include, str) or isinstance(exclude, str):
            raise TypeError("include and exclude must be lists of patterns, not a single string")
        self.include = _patterns("include", include) if include is not None else None
        self.exclude = _patterns("exclude", exclude if exclude is not None else [])
        self.records: dict[str, np.ndarray] = {}
        self.meta: dict = dict(meta or {})   # free-form notes (backend, dtype, tokens, ...), saved too
        # record name -> the function(s) that computed it (e.g. "npllama.kernels.attention.attention_forward")
        self.sources: dict[str, str] = dict(self.meta.pop("sources", {}) or {})
        # op name -> the function a `use_op` replacement ran in its place, as it ran while recording
        self.replaced: dict[str, str] = dict(self.meta.pop("replaced", {}) or {})
        # record name -> the replaced op that kept it from being recorded: a replacement records only
        # what it returns, not the steps inside it (d:<layer>.mlp.act inside swiglu_backward)
        self.unrecorded: dict[str, str] = dict(self.meta.pop("unrecorded", {}) or {})
        # the LoRA adapters the traced model ran with ("r=8, lora_alpha=16 on q_proj, v_proj"), or None:
        # its projections' outputs include theirs, and its parameter gradients are theirs alone
        self.lora: str | None = self.meta.pop("lora", None)
        # name -> how many passes reached it so far (recorded, or left unrecorded by a replaced op)
        self._times_recorded: dict[str, int] = {}
        # parameter name -> the backward(s) giving its gradient, in the order they finished it
        self._parameter_sources: dict[str, list[str]] = {}
        self._recorders: dict[int, _Recorder] = {}       # id(a model's params) -> its recorder

    def wants(self, name: str) -> bool:
        """Whether a record called `name` is kept: not excluded, and included (include None: all)."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return self.include is None or any(fnmatch.fnmatchcase(name, p) for p in self.include)

    def record(self, name: str, value, source: str | None = None) -> None:
        """Keep a copy of `value` under `name` (or "pass<n>/<name>" when `name` was recorded
        before: see the class docstring), if the include/exclude patterns want `name`."""
        if not self.wants(name):
            return
        key = self._next_key(name)
        self.records[key] = _as_array(value, name)
        if source is not None:
            self.sources[key] = source

    def note_replaced(self, op_name: str, function: str) -> None:
        """The recorder's note that `function`, a `use_op` replacement, ran as op `op_name`."""
        self.replaced.setdefault(op_name, function)

    def note_lora(self, adapters: str) -> None:
        """The recorder's note that the model ran with LoRA adapters (described by `adapters`)."""
        self.lora = adapters

    def note_unrecorded(self, name: str, op_name: str) -> None:
        """The recorder's note that `name` (wanted, and recorded when the op is not replaced) was not
        recorded because a replacement ran as `op_name`.  It takes its pass's place, so that the
        passes of two traces still line up name for name."""
        if self.wants(name):
            self.unrecorded[self._next_key(name)] = op_name

    def rerecord(self, name: str, value, source: str | None = None) -> None:
        """Replace the latest record of `name` (this pass's) with `value`: the recorder's correction
        when the tensor an op went on with is not the one it recorded first (_Recorder.handed_on)."""
        key = _pass_key(name, self._times_recorded.get(name, 0))
        if key in self.records:
            self.records[key] = _as_array(value, name)
            if source is not None:
                self.sources[key] = source

    def _next_key(self, name: str) -> str:
        times = self._times_recorded.get(name, 0) + 1
        self._times_recorded[name] = times
        return _pass_key(name, times)

    def record_parameter_gradients(self, grads: Mapping) -> None:
        """Record every parameter's gradient as "d:" + its name, credited to the backward(s) that
        computed it, in the order the backward pass finished them (lm_head first, the embedding
        last): a bug in every layer is then found in the layer whose backward ran first."""
        finished = {base: i for i, base in enumerate(self._parameter_sources)}
        order = sorted(grads, key=lambda name: finished.get(_base_parameter(name), len(finished)))
        for name in order:
            self.record("d:" + name, grads[name], source=self._source_of_parameter_gradient(name))

    def note_parameter_gradient_source(self, parameter: str, function: str) -> None:
        """The recorder's note that `function` (a backward) computed part of `parameter`'s gradient;
        the latest note is the last place it changed (a tied matrix's gradient is a sum)."""
        functions = self._parameter_sources.pop(parameter, [])
        if function not in functions:
            functions.append(function)
        self._parameter_sources[parameter] = functions

    def _source_of_parameter_gradient(self, name: str) -> str | None:
        base = _base_parameter(name)
        functions = self._parameter_sources.get(base)
        if not functions:
            return None
        if len(functions) == 1:
            return functions[0]
        return "sum of " + " and ".join(functions) + f" ({base} is used more than once; {_TIED_SUM})"

    def recording_bindings(self, ops_in_force: dict, params: dict, config, head_params: Mapping | None = None,
                           lora: str | None = None) -> dict:
        """Op functions that run the ops in force (the reference where `ops_in_force` has none) and
        record what they return, for npllama.backend.bind: how a Llama is traced, with no trace
        code in the model.  Names come from the parameters an op is given and the cache it
        returned (see _Recorder); head_params names a head outside the model ({"score.weight": w}).
        lora: the LoRA adapters the model runs with, described (LoraAdapters.describe), or None.

        One recorder per model while the trace's block is open: a pass made of several calls -- an
        objective's hidden_forward, its head's ops, hidden_backward -- is recorded as one, as
        loss_and_grads is."""
        if lora is not None:
            self.note_lora(lora)
        return self._recorder(params, config).bindings(ops_in_force, head_params or {})

    def dispatch_bindings(self, ops_in_force: dict, params: dict, config) -> dict:
        """For each nested op (softmax, SiLU-gate) replaced with `use_op`: a function that tells the
        model's recorder it ran, then runs the replacement -- under the op's own name, and inside
        the ops in force that call it.  Bound before the LoRA adapters take their SiLU-gate ops
        from the ops in force, so the trace learns which replacements ran while it made a record,
        however the op that ran them reaches them."""
        return self._recorder(params, config).dispatch_bindings(ops_in_force)

    def _recorder(self, params: dict, config) -> "_Recorder":
        recorder = self._recorders.get(id(params))
        if recorder is None or recorder.params is not params:
            recorder = self._recorders[id(params)] = _Recorder(self, params, config)
        return recorder

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.records[name]
        except KeyError:
            if not self.records:
                raise KeyError(f"{name!r}: the trace is empty -- nothing was recorded yet (a trace fills "
                               f"while the model runs inside its `with` block"
                               + (f"; its include patterns are {self.include}" if self.include else "")
                               + ")") from None
            close = [n for n in self.records if name.split(".")[-1] in n][:5]
            raise KeyError(f"{name!r} was not recorded; recorded names include "
                           f"{close or list(self.records)[:5]}...") from None

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"<Trace: {len(self.records)} tensors, {self.nbytes() / 1e6:.1f} MB>"

    def names(self, pattern: str | None = None) -> list[str]:
        """Recorded names in order; with `pattern` (fnmatch), only the matching ones."""
        if pattern is None:
            return list(self.records)
        return [n for n in self.records if fnmatch.fnmatchcase(n, pattern)]

    def items(self):
        """(name, array) pairs in the order they were recorded."""
        return self.records.items()

    def nbytes(self) -> int:
        """The bytes the recorded arrays hold."""
        return int(sum(a.nbytes for a in self.records.values()))

    def select(self, *patterns: str) -> "Trace":
        """A new trace holding only the records whose names match one of the patterns (same arrays)."""
        def matches(name: str) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

        picked = Trace(self.include, self.exclude, meta=self.meta)
        picked.records = {n: a for n, a in self.records.items() if matches(n)}
        picked.sources = {n: s for n, s in self.sources.items() if n in picked.records}
        picked.replaced = dict(self.replaced)
        picked.lora = self.lora
        picked.unrecorded = {n: op for n, op in self.unrecorded.items() if matches(n)}
        return picked

    # ----- looking at it -----------------------------------------------------------------------
    def stats(self, name: str) -> dict:
        """shape, dtype, and mean/std/min/max over the finite entries, plus NaN and Inf counts."""
        return _stats(self[name])

    def format_summary(self, pattern: str | None = None) -> str:
        """The table `summary` prints, as a string."""
        rows = [("name", "shape", "dtype", "mean", "std", "min", "max", "nan", "inf")]
        for name in self.names(pattern):
            s = _stats(self.records[name])
            rows.append((name, str(s["shape"]), s["dtype"], _num(s["mean"]), _num(s["std"]),
                         _num(s["min"]), _num(s["max"]), str(s["nan"]), str(s["inf"])))
        note = "mean, std, min and max are over the finite entries"
        if len(rows) == 1 and pattern is not None and self.records:   # a mistyped pattern, not an empty trace
            note = (f"no record matches {pattern!r} (a pattern matches whole names); names look like "
                    + " and ".join(map(repr, self.names()[:2])))
        return _table(rows, right_from=3) + "\n" + note

    def summary(self, pattern: str | None = None, file=None) -> None:
        """Print a table: name, shape, dtype, mean, std, min, max, NaN and Inf counts."""
        print(self.format_summary(pattern), file=file or sys.stdout)

    # ----- files -------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write a plain .npz (no pickle): one array per record under its name, plus the order."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be the .npz file to write (a str or pathlib.Path), got {path!r:.40}")
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"path must end in .npz (a NumPy archive), got {path!r}")
        for name in self.records:
            if name.startswith("__"):
                raise ValueError(f"record name {name!r} starts with '__', reserved for the file's own keys")
        meta = {"format": _FORMAT, "include": self.include, "exclude": self.exclude,
                "meta": {**self.meta, "sources": self.sources, "replaced": self.replaced,
                         "unrecorded": self.unrecorded, "lora": self.lora}}
        arrays = dict(self.records)
        arrays[_NAMES_KEY] = np.array(list(self.records), dtype=np.str_)
        arrays[_META_KEY] = np.array(json.dumps(meta, default=_json_default))
        with open(path, "wb") as f:  # an open file, so numpy does not append a second ".npz"
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "Trace":
        """Read a trace written by `save` (or any .npz of named arrays), without unpickling anything."""
        from .budget import check_npz
        from .io.reading import parse_json

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"trace file {path!r} does not exist")
        check_npz(path)   # what its arrays declare, against the memory budget, before inflating any
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as error:  # a zip that is not an npz, a truncated file, ...
            raise ValueError(f"{path!r} is not a readable .npz trace ({error})") from None
        with archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"{path!r} holds a single array, not a trace (.npz of named arrays)")
            keys = list(archive.files)
            names = [str(n) for n in archive[_NAMES_KEY]] if _NAMES_KEY in keys else \
                [k for k in keys if not k.startswith("__")]
            meta = parse_json(str(archive[_META_KEY]), f"{path!r} (its metadata)", expect=dict) \
                if _META_KEY in keys else {}
            t = cls(meta.get("include"), meta.get("exclude"), meta=meta.get("meta"))
            for name in names:
                if name not in keys:
                    raise ValueError(f"{path!r} lists record {name!r} but does not contain it")
                t.records[name] = archive[name]
        return t


def _pass_key(name: str, times: int) -> str:
    """The key of the `times`-th record of `name`: the name itself for the first pass (and when not
    recorded yet), "pass<times>/<name>" for a later one."""
    return name if times <= 1 else f"pass{times}/{name}"


def _patterns(name: str, patterns) -> list[str]:
    """include or exclude as a list of fnmatch patterns; anything else refused now, where fnmatch
    would fail at the first record, inside the model's forward."""
    try:
        listed = list(patterns)
    except TypeError:
        listed = None
    if listed is None or not all(isinstance(p, str) for p in listed):
        raise TypeError(f"{name} must be a list of name patterns (str), got {patterns!r:.80}")
    return listed


class _Recorder:
    """Records each op's real outputs while a Llama runs (what ran, never a recomputation).

    Names join the Hugging Face module path and the derivation's symbol (derivations/
    transformer_block.md): an op that takes a parameter is named by it (the linear with
    model.layers.0.self_attn.q_proj.weight computes model.layers.0.self_attn.q); rope and
    attention take none and are named within the attention layer whose projections ran last.
    Intermediates inside an op come from its cache (`cache.intermediates()`), so under the Numba
    backend they are the kernel's own (the flash path keeps no attn_probs, and none is recorded).

    Gradients.  d:<name> is recorded where its value is complete: as the upstream gradient handed
    to the backward of the op that computed <name> (a tensor read by several ops, such as the
    normed input of q_proj, k_proj and v_proj, has its gradient summed in model.py before that).
    Its source is what *produced* it: the backward of the op(s) that read <name> in the forward
    pass, and the residual connection when <name> also fed one (see `gradient_source`) -- the
    function to step into when d:<name> is the first divergence.  Gradients inside an op's
    backward (d:attn_probs; the SwiGLU's d:gate, d:up, d:act) are caught where that backward
    hands them to its inner step: the nested op the reference calls (softmax_backward,
    swiglu_act_backward) or the kernel's row loop, re-bound for the call (`_observed`); what that
    step hands back too (d:attn_scores; d:gate, d:up), credited to the step.

    Hand-offs.  Between two ops the model only splits or merges heads, so the tensor an op is given
    holds the very numbers the op before it returned as that tensor (or, backwards, as its
    gradient).  Where it does not -- a split without its transpose, a gradient scaled on its way --
    the record of the receiving op says so (`handed_on`): "computed by rope_forward; but
    rope_forward was given other numbers than ... q as linear_forward returned it", naming the model
    function between the two calls, since both ops are right.  A gradient recorded before the next
    op received it (d:q_rot, d:<head>) is replaced by what that op went on with.  Sums (a residual,
    the three projections' dx) are the model's own steps, credited to it as above, not checked."""

    LINEAR_SYMBOLS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "out",
                      "gate_proj": "gate", "up_proj": "up", "down_proj": "out"}
    # What is recorded from inside an op rather than from what it returns (the forward's cache, the
    # gradient its backward hands its inner step), beside the op's output: a `use_op` replacement
    # computing these its own way leaves them unrecorded, and the trace notes which op it was.
    INSIDE = {"attention_forward": ("attn_probs",), "attention_backward": ("d:attn_probs", "d:attn_scores"),
              "swiglu_forward": ("gate", "up", "act"), "swiglu_backward": ("d:act", "d:gate", "d:up")}

    def __init__(self, trace: Trace, params: dict, config):
        self.trace = trace
        self.params = params                      # the model's (kept: its id is this recorder's key)
        self.parameter_of: dict[int, str] = {}    # id -> "....q_proj.weight", "score.weight"
        self.parameter_arrays: dict[str, np.ndarray] = {}   # name -> the array parameter_of knows it by
        self.last_layer = config.num_hidden_layers - 1
        self.replacements: dict = {}              # op name -> the `use_op` replacement in force
        self.dispatched: dict = {}                # nested op name -> its replacement, as it ran in the latest op
        self.new_pass()

    def new_pass(self):
        """Forget the last pass through the model (a new one starts with the embedding's forward)."""
        self.output_of: dict[int, str] = {}       # id(cache) -> the name of the output it belongs to
        self.parameters_of: dict[int, list] = {}  # id(cache) -> the parameters its forward was given
        self.backward_of: dict[str, str] = {}     # output name -> the backward that ran for its op
        self.allowed_of: dict[int, object] = {}   # id(attention cache) -> its mask (attention_mask), or None
        self.recorded: set[str] = set()           # names this pass recorded (each once per pass)
        self.scope = ""                           # "model.layers.i.self_attn."
        self.ropes_in_scope = 0
        # the heads on the final-normed states: output name -> a weak reference to the logits
        self.heads: dict[str, weakref.ref | None] = {}
        self.loss_of: dict[str, str] = {}         # head output name -> the name of its loss
        self.logits_of: dict[int, str] = {}       # id(cross-entropy cache) -> the head output it scored
        # What one op handed to the next, to check that the next received it: tensor name -> [the array
        # an op returned as that tensor (forward) or as its gradient (backward), that op, readers left]
        self.produced: dict[str, list] = {}
        self.returned_grad: dict[str, list] = {}

    def module_of(self, weight) -> str | None:
        """The module a parameter array belongs to ("model.layers.0.self_attn.q_proj"), or None."""
        name = self.parameter_of.get(id(weight))
        return None if name is None else name[:-len(".weight")]

    def record(self, name, value, source: str):
        if isinstance(value, (np.ndarray, np.generic)) and name not in self.recorded:
            self.recorded.add(name)
            self.trace.record(name, value, source=source)

    def record_gradient(self, name, value, receiver: str | None = None):
        """d:<name>, credited to what produced it (`gradient_source`).  receiver: the backward that
        goes on with `value`; when that is not what the backward of <name>'s reader returned for
        it, the source says so, and a d:<name> recorded from that return is replaced by `value`."""
        if not self.trace.wants("d:" + name):
            return
        changed = self.handed_on(self.returned_grad, name, value, receiver)
        if "d:" + name in self.recorded:
            if changed:
                self.trace.rerecord("d:" + name, value, self.gradient_source(name) + changed)
            return
        self.record("d:" + name, value, self.gradient_source(name) + changed)

    def handed_on(self, memory: dict, name: str, received, receiver: str | None) -> str:
        """The empty string when `received` holds the numbers the op remembered in `memory` returned
        as `name` (in either layout of the heads: (B, T, n*hd) or (B, n, T, hd)), or when nothing is
        remembered, or receiver is None (a reader whose record is not kept: let go, not compared);
        else what changed, for the record's source.  Model code only reshapes what it hands on
        between two ops, so the numbers are equal bit for bit unless that code is wrong."""
        entry = memory.get(name)
        if entry is None:
            return ""
        returned, producer, readers = entry
        if readers <= 1:
            del memory[name]
        else:
            entry[2] = readers - 1
        if receiver is None:
            return ""
        same, error = _same_numbers(returned, received)
        if same is not False:
            return ""
        gradient = memory is self.returned_grad
        what = f"the gradient {producer} returned for {name}" if gradient else f"{name} as {producer} returned it"
        return (f"; but {receiver} was given other numbers than {what} (relative error {error:.3g}): "
                f"{_CHANGED_BETWEEN.format(_code_between(name, gradient))}")

    def remember(self, memory: dict, name: str, value, producer: str) -> None:
        """Remember `value`, returned by `producer` as tensor `name` (or as its gradient), for the
        op(s) that read it next to be checked against (handed_on): only a tensor that ops read
        directly, not one a residual connection also adds into (the model sums those itself)."""
        readers, residual = self.consumers(name)
        gradient = memory is self.returned_grad
        # Kept only: a gradient from one reader alone (those of several, the normed input's q, k and v
        # projections', are summed); forwards, not a head's logits, whose reader (the loss) is not
        # checked and which may be large; and only what a wanted record is checked against, so that a
        # selective trace of a large model holds no more than it records
        # (the pattern matching last: most tensors are ruled out before it, on every op call)
        if (readers and residual is None and not (gradient and len(readers) > 1)
                and (gradient or name not in self.heads) and isinstance(value, np.ndarray)
                and (self.trace.wants("d:" + name) if gradient else any(map(self.trace.wants, readers)))):
            memory[name] = [value, producer, 1 if gradient else len(readers)]

    def bindings(self, ops_in_force: dict, head_params: Mapping) -> dict:
        from . import backend

        for name, array in {**self.params, **head_params}.items():   # (a parameter may be a new array)
            known = self.parameter_arrays.get(name)
            if known is not array:
                if known is not None:
                    self.parameter_of.pop(id(known), None)
                self.parameter_arrays[name], self.parameter_of[id(array)] = array, name
        reference = backend.ops("numpy")
        self.replacements = backend.overrides()
        wrapped = {}
        for name in vars(reference):
            fn = ops_in_force.get(name, getattr(reference, name))
            namer = getattr(self, "name_" + name.rsplit("_", 1)[0], None)
            if namer is None:
                continue
            forward = name.endswith("_forward")
            wrapped[name] = self.forward(fn, namer, name) if forward else self.backward(fn, name)
        return wrapped

    def dispatch_bindings(self, ops_in_force: dict) -> dict:
        """See Trace.dispatch_bindings."""
        from .backend import NESTED_OPS, overrides

        replacements = {name: fn for name, fn in overrides().items() if name in NESTED_OPS}
        noting = {name: _noting(self.params, name, fn) for name, fn in replacements.items()}
        enclosing = {}
        for name, fn in ops_in_force.items():   # the reference attention/SwiGLU, re-bound by use_op
            calls = {nested: noter for nested, noter in noting.items()
                     if _global_called(fn, nested) is replacements[nested]}
            if calls:
                enclosing[name] = _rebound(fn, calls)
        return {**noting, **enclosing}

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), noting the replaced nested ops it dispatches (`replaced_inside`)."""
        self.dispatched = {}
        return fn(*args, **kwargs)

    def forward(self, fn, namer, op_name):
        def recorded_forward(*args, **kwargs):
            out, cache = self.run(fn, *args, **kwargs)
            name = namer(*args)
            if op_name == "attention_forward":
                self.allowed_of[id(cache)] = _allowed_keys(*args, **kwargs)
            if op_name == "cross_entropy_forward":
                head = self.head_of(args[0])
                if head is not None and name is not None:
                    self.logits_of[id(cache)], self.loss_of[head] = head, name
                if name == "loss":   # the targets of the first loss, as the tokens: what the run ran on
                    self.note_input("targets", args[1] if len(args) > 1 else kwargs.get("targets"))
            if name is not None:
                prefix = name.rsplit(".", 1)[0] + "."
                source = self.source_of(fn)
                # checked only when this record is kept; another reader of the same input is not
                receiver = _qualname(fn) if name not in self.recorded and self.trace.wants(name) else None
                changed = "".join(self.handed_on(self.produced, tensor, args[i], receiver)
                                  for i, tensor in self.inputs_of(op_name, name) if i < len(args))
                for symbol, value in getattr(cache, "intermediates", dict)().items():
                    self.record(prefix + symbol, value, source)
                self.record(name, out, source + changed)
                self.remember(self.produced, name, out, _qualname(fn))
                self.output_of[id(cache)] = name
                if name in self.heads:
                    self.heads[name] = weakref.ref(out)
            self.note_replacements(fn, op_name, name)
            self.parameters_of[id(cache)] = [self.parameter_of[id(a)] for a in args if id(a) in self.parameter_of]
            return out, cache
        return recorded_forward

    def backward(self, fn, op_name):
        def recorded_backward(dout, cache):
            name = self.output_of.get(id(cache))
            if name is not None and op_name != "cross_entropy_backward":   # (d:loss is 1: not kept)
                # the upstream gradient, complete before this backward reads it
                layer = name.split(".self_attn.")[0].split(".mlp.")[0] + "."
                receiver = _qualname(fn)
                if name.endswith(".mlp.out"):        # out = h + mlp_out: both get the same gradient
                    self.record_gradient(layer + "out", dout, receiver)
                if name.endswith(".self_attn.out"):  # h = x + attn_out: likewise
                    self.record_gradient(layer + "residual", dout, receiver)
                self.record_gradient(name, dout, receiver)
            parameters = self.parameters_of.get(id(cache), ())
            run, observed_cache = self._observed(fn, op_name, name, cache)
            grads = self.run(run, dout, observed_cache)
            source = self.source_of(fn)   # (after the call: it names the replaced nested ops that ran)
            if name is not None:
                self.backward_of[name] = source
            for parameter in parameters:
                self.trace.note_parameter_gradient_source(parameter, source)
            if op_name == "cross_entropy_backward":
                if id(cache) in self.logits_of:
                    head = self.logits_of[id(cache)]
                    self.record("d:" + head, grads, _qualname(fn))
                    self.remember(self.returned_grad, head, grads, _qualname(fn))
            elif name is not None:
                if op_name == "attention_backward":
                    prefix = name.rsplit(".", 1)[0] + "."
                    # (d:v is recorded by v_proj's backward, in the projection's layout)
                    for symbol, grad in zip(("q_rot", "k_rot"), grads):
                        self.record_gradient(prefix + symbol, grad)
                for i, tensor in self.inputs_of(op_name.replace("_backward", "_forward"), name):
                    grad = grads if op_name == "rope_backward" else grads[i]
                    self.remember(self.returned_grad, tensor, grad, source)
            self.note_replacements(fn, op_name, name)
            return grads
        return recorded_backward

    def note_replacements(self, fn, op_name, name):
        """Tell the trace which `use_op` replacements just ran -- `fn` itself, or an op nested in it
        (softmax_backward inside the reference attention_backward) -- and which records a replaced
        op left out because it computed them its own way."""
        if fn is self.replacements.get(op_name):
            self.trace.note_replaced(op_name, _qualname(fn))
            if name is not None:
                prefix = name.rsplit(".", 1)[0] + "."
                for symbol in self.INSIDE.get(op_name, ()):
                    inside = ("d:" + prefix + symbol[2:]) if symbol.startswith("d:") else prefix + symbol
                    if inside not in self.recorded:
                        self.trace.note_unrecorded(inside, op_name)
        for nested, replacement in self.replaced_inside():
            self.trace.note_replaced(nested, _qualname(replacement))

    def replaced_inside(self) -> list[tuple[str, Callable]]:
        """(op name, replacement) of each nested op (NESTED_OPS) replaced with `use_op` that ran
        inside the latest op (`run`): softmax_forward inside the reference attention_forward,
        swiglu_act_forward inside the LoRA adapters' SwiGLU."""
        return list(self.dispatched.items())

    def source_of(self, fn) -> str:
        """The function that computed a record, and the replaced op it ran inside, if any: "computed
        by attention_forward" alone would hide that its softmax was the user's."""
        return _qualname(fn) + "".join(f", whose {nested} is {_qualname(replacement)} (use_op)"
                                       for nested, replacement in self.replaced_inside())

    # ----- where a gradient comes from --------------------------------------------------------
    def consumers(self, name: str) -> tuple[list[str], str | None]:
        """Who read `name` in a Llama's forward pass: the outputs of the ops that took it as input,
        and the tensor it was added into by a residual connection (whose gradient reaches it
        unchanged), or None."""
        if name in self.heads or name == "lm_head.out":
            return [self.loss_of.get(name, "loss")], None
        if name == "model.norm.out":
            return list(self.heads) or ["lm_head.out"], None
        if name == "model.embed_tokens.out" or (name.startswith("model.layers.") and name.count(".") == 3
                                                and name.endswith(".out")):
            i = 0 if name == "model.embed_tokens.out" else int(name.split(".")[2]) + 1
            if i > self.last_layer:
                return ["model.norm.out"], None
            return [f"model.layers.{i}.input_layernorm.out"], f"model.layers.{i}.residual"
        layer, _, step = name.partition(".self_attn.")
        if step:
            a = layer + ".self_attn."
            inside = {"q": [a + "q_rot"], "k": [a + "k_rot"], "q_rot": [a + "attn"], "k_rot": [a + "attn"],
                      "v": [a + "attn"], "attn_probs": [a + "attn"], "attn": [a + "out"]}
            if step == "out":
                return [], layer + ".residual"
            return inside.get(step, []), None
        layer, _, step = name.partition(".mlp.")
        if step:
            return ([], layer + ".out") if step == "out" else ([layer + ".mlp.out"], None)
        layer, _, step = name.rpartition(".")
        if step == "out" and layer.endswith(".input_layernorm"):
            attn = layer[:-len("input_layernorm")] + "self_attn."
            return [attn + "q", attn + "k", attn + "v"], None
        if step == "out" and layer.endswith(".post_attention_layernorm"):
            return [layer[:-len("post_attention_layernorm")] + "mlp.out"], None
        if step == "residual":
            return [layer + ".post_attention_layernorm.out"], layer + ".out"
        return [], None

    def inputs_of(self, op_name: str, name: str) -> list[tuple[int, str]]:
        """(argument index, tensor name) of the recorded tensors the op `op_name` whose output is
        `name` takes as inputs -- the same positions in its backward's gradients (consumers, read
        the other way).  Only those another op returned: a residual sum is the model's own."""
        layer, _, step = name.partition(".self_attn.")
        a = layer + ".self_attn."
        if op_name == "linear_forward":
            if step in ("q", "k", "v"):
                return [(0, layer + ".input_layernorm.out")]
            if step == "out":
                return [(0, a + "attn")]
            return [(0, "model.norm.out")] if name in self.heads else []
        if op_name == "rope_forward" and step in ("q_rot", "k_rot"):
            return [(0, a + step[0])]
        if op_name == "attention_forward" and step == "attn":
            return [(0, a + "q_rot"), (1, a + "k_rot"), (2, a + "v")]
        if op_name == "swiglu_forward" and name.endswith(".mlp.out"):
            return [(0, name[:-len("mlp.out")] + "post_attention_layernorm.out")]
        if op_name == "classifier_forward" and name in self.heads:
            return [(0, "model.norm.out")]
        if op_name == "rmsnorm_forward" and name == "model.norm.out":
            return [(0, f"model.layers.{self.last_layer}.out")]
        return []

    def gradient_source(self, name: str) -> str:
        """The function(s) whose backward produced d:<name>, in words."""
        consumers, residual = self.consumers(name)
        ran = [(c, self.backward_of[c]) for c in consumers if c in self.backward_of]
        functions = list(dict.fromkeys(fn for _, fn in ran))
        # where the parts are added: a block's backward, for its steps and for what feeds its residual
        added = f", added in {_BLOCK_BACKWARD}" if residual or name.startswith("model.layers.") else ""
        if name == "model.norm.out" and len(ran) > 1:   # two heads read the hidden states (MLM + SOP)
            added = _OBJECTIVE_SUM
        if len(functions) == 1 and len(ran) > 1:   # e.g. the three projections of the normed input
            parts = [f"{functions[0]}'s dx for {', '.join(_module(c) for c, _ in ran)}{added}"]
        else:
            parts = [f"{fn} (for {c})" if residual or len(ran) > 1 else fn for c, fn in ran]
        if residual is None:
            return " + ".join(parts) + added if len(parts) > 1 else (parts[0] if parts else _FROM_THE_CALLER)
        through = f"d:{residual}, passed back by the residual connection"
        if not parts:   # only the residual reads it: its gradient is the residual's own
            return f"{through} ({self.gradient_source(residual)})"
        return "sum of " + " and ".join(parts) + f" and {through}{added}"

    # ----- gradients inside an op's backward -------------------------------------------------
    def _observed(self, fn, op_name, name, cache):
        """(fn, cache), or fn re-bound -- the function's own code, with one inner name pointing at
        a recording wrapper -- so that the gradient the backward hands its inner step is recorded
        as it runs.  Only while tracing; the op's code is not changed."""
        if name is None or op_name not in ("attention_backward", "swiglu_backward"):
            return fn, cache
        prefix = name.rsplit(".", 1)[0] + "."
        if op_name == "attention_backward":
            wanted = any(self.trace.wants(f"d:{prefix}{s}") for s in ("attn_probs", "attn_scores"))
            inner = {"softmax_backward": self._softmax_backward_observer,
                     "_softmax_backward_rows": self._kernel_softmax_rows_observer,
                     "_softmax_backward_rows_given": self._kernel_softmax_rows_observer}
        else:
            wanted = any(self.trace.wants(f"d:{prefix}{s}") for s in ("gate", "up", "act"))
            inner = {"swiglu_act_backward": self._swiglu_act_backward_observer,
                     "_silu_mul_halves_backward": self._kernel_silu_observer}
        if not wanted:
            return fn, cache
        if hasattr(cache, "act_backward"):   # LoRA's SwiGLU carries the SiLU-gate backward it pairs with
            observer = self._swiglu_act_backward_observer(cache.act_backward, prefix, cache, fn)
            return fn, cache._replace(act_backward=observer)
        found = {n: make for n, make in inner.items() if _global_called(fn, n) is not None}
        if not found:   # an override with other inner steps: d:<inner> is not recorded for it
            return fn, cache
        observers = {n: make(fn.__globals__[n], prefix, cache, fn) for n, make in found.items()}
        return _rebound(fn, observers), cache

    def _softmax_backward_observer(self, softmax_backward, prefix, cache, op):
        def observed_softmax_backward(d_attn_probs, attn_probs, *args, **kwargs):
            allowed = self.allowed_of.get(id(cache))
            self.record("d:" + prefix + "attn_probs", _where_attended(d_attn_probs, allowed), _qualname(op))
            d_attn_scores = softmax_backward(d_attn_probs, attn_probs, *args, **kwargs)
            self.record("d:" + prefix + "attn_scores", d_attn_scores,
                        f"{_qualname(softmax_backward)} (inside {_qualname(op)})")
            return d_attn_scores
        return observed_softmax_backward

    def _swiglu_act_backward_observer(self, swiglu_act_backward, prefix, cache, op):
        def observed_swiglu_act_backward(dact, act_cache):
            self.record("d:" + prefix + "act", dact, _qualname(op))
            dgate, dup = swiglu_act_backward(dact, act_cache)
            inner = f"{_qualname(swiglu_act_backward)} (inside {_qualname(op)})"
            self.record("d:" + prefix + "gate", dgate, inner)
            self.record("d:" + prefix + "up", dup, inner)
            return dgate, dup
        return observed_swiglu_act_backward

    def _kernel_silu_observer(self, rows_backward, prefix, cache, op):
        """The Numba SwiGLU: dact (N, F) in, [dgate | dup] (N, 2F) written in place."""
        lead = cache.shape[:-1]

        def observed_rows(dact, gate_up, d_gate_up):
            rows_backward(dact, gate_up, d_gate_up)
            F = dact.shape[1]
            self.record("d:" + prefix + "act", dact.reshape(*lead, F), _qualname(op))
            self.record("d:" + prefix + "gate", d_gate_up[:, :F].reshape(*lead, F), _qualname(op))
            self.record("d:" + prefix + "up", d_gate_up[:, F:].reshape(*lead, F), _qualname(op))
        return observed_rows

    def _kernel_softmax_rows_observer(self, rows_backward, prefix, cache, op):
        """The Numba attention: block by block, d attn_probs arrives in the array the row loop
        overwrites with d scores; each block is copied in before and after, zeros where a causal
        block skipped keys (as the forward's attn_probs).  The loop folds the scale into its d scores
        (d (q k^T)), divided out here: d attn_scores, of q k^T * scale, as the reference's softmax
        backward hands back."""
        B, H, T, _ = cache.shape
        KVH, S = cache.k.shape[1], cache.k.shape[2]
        d_attn_probs = np.zeros((B, KVH, H // KVH * T, S), dtype=cache.k.dtype)
        d_attn_scores = np.zeros_like(d_attn_probs)
        blocks = iter(cache.blocks)
        left = [len(cache.blocks)]

        def observed_rows(block_probs, d_scores, *args):
            r0, r1, n_keys = next(blocks)
            d_attn_probs[:, :, r0:r1, :n_keys] = d_scores
            result = rows_backward(block_probs, d_scores, *args)
            d_attn_scores[:, :, r0:r1, :n_keys] = d_scores / cache.scale
            left[0] -= 1
            if left[0] == 0:
                self.record("d:" + prefix + "attn_probs",
                            _where_attended(d_attn_probs.reshape(B, H, T, S), self.allowed_of.get(id(cache))),
                            _qualname(op))
                self.record("d:" + prefix + "attn_scores", d_attn_scores.reshape(B, H, T, S),
                            f"{_qualname(rows_backward)} (inside {_qualname(op)})")
            return result
        return observed_rows

    # ----- one namer per op: the record name of its output, from its arguments -------------------
    def name_embedding(self, tokens, weight):
        self.new_pass()
        self.note_input("tokens", tokens)
        return "model.embed_tokens.out"

    def note_input(self, key: str, value) -> None:
        """meta[key] ("tokens", "targets"): what the first pass through the model ran on, as
        npllama.debug.run_trace and transformers_trace note theirs, so that `compare` of a trace made
        with npllama.trace() says too when two traces ran different inputs."""
        if value is not None and key not in self.trace.meta:
            self.trace.meta[key] = np.asarray(value).tolist()

    def name_rmsnorm(self, x, weight, eps):
        module = self.module_of(weight)
        if module is None:
            return None
        layer = module.rsplit(".", 1)[0]
        if module.endswith(".input_layernorm"):
            i = int(layer.rsplit(".", 1)[1])
            self.scope, self.ropes_in_scope = layer + ".self_attn.", 0
            if i > 0:  # the previous block's output is this norm's input
                self.record(f"model.layers.{i - 1}.out", x, _BLOCK_OUT)
        elif module.endswith(".post_attention_layernorm"):
            self.record(layer + ".residual", x, _BLOCK_RESIDUAL)
        elif module == "model.norm":
            self.record(f"model.layers.{self.last_layer}.out", x, _BLOCK_OUT)
        return module + ".out"

    def name_linear(self, x, weight):
        module = self.module_of(weight)
        if module in ("lm_head", "model.embed_tokens"):   # the embedding, when tied, is the LM head
            return self.head("lm_head.out")
        if module is None or "." not in module:
            return None
        parent, projection = module.rsplit(".", 1)
        symbol = self.LINEAR_SYMBOLS.get(projection)
        return None if symbol is None else f"{parent}.{symbol}"

    def name_rope(self, x, cos, sin):
        if not self.scope:
            return None
        # the tables every RoPE of the pass turns by, (T, hd): a wrong rope_theta or rope_scaling shows
        # here, before q_rot, rather than in rope_forward, which only applies them
        self.record("model.rotary_emb.cos", cos, _ROPE_TABLES)
        self.record("model.rotary_emb.sin", sin, _ROPE_TABLES)
        self.ropes_in_scope += 1
        return self.scope + ("q_rot" if self.ropes_in_scope == 1 else "k_rot")

    def name_attention(self, q, k, v, *rest, **kwargs):
        return self.scope + "attn" if self.scope else None

    def name_swiglu(self, x, w_gate, *rest):
        module = self.module_of(w_gate)
        return None if module is None else module.rsplit(".", 1)[0] + ".out"

    def name_classifier(self, hidden, score_weight, last_index):
        """A head outside the model, named by its parameter (score.weight -> score.out); the position
        it pooled is recorded first, as its input: a pad token mistaken for text shows there."""
        module = self.module_of(score_weight)
        if module is None:
            return None
        self.record(module + ".pooled_index", last_index, _POOLED_INDEX)
        return self.head(module + ".out")

    def name_cross_entropy(self, logits, targets, ignore_index=-100):
        """loss; a second loss in the same pass (the sentence-order head's beside the LM head's) is
        named by its head: sop_head.loss."""
        head = self.head_of(logits)
        if "loss" not in self.recorded:
            return "loss"
        return None if head is None else head.rsplit(".", 1)[0] + ".loss"

    def head(self, name):
        """`name`, noted as a head's output: its logits are what a cross-entropy may read next."""
        self.heads[name] = None   # (a weak reference to the output, once the op has returned it)
        return name

    def head_of(self, logits) -> str | None:
        """The head whose output `logits` is, or None."""
        return next((name for name, ref in self.heads.items() if ref is not None and ref() is logits), None)


# A gradient no recorded backward produced: Llama.backward's dlogits, hidden_backward's dhidden.
_FROM_THE_CALLER = "the upstream gradient given by the caller (no recorded op read this tensor in the pass)"
# Not computed by an op: the objective gives the classifier the positions to pool.
_POOLED_INDEX = ("npllama.ops.classifier.last_token_index (for a classifier by way of "
                 "npllama.finetune.SequenceClassifier.pooled_index, which skips its pad id)")
# Not computed by an op: the model's cached tables, rows for the positions the pass runs.
_ROPE_TABLES = "npllama.ops.rope.rope_cos_sin (by way of npllama.model.Llama.rope_tables)"
# The residual sums are plain additions in npllama.model.block_forward, not ops.
_BLOCK_OUT = "npllama.model.block_forward (out = h + mlp_out)"
_BLOCK_RESIDUAL = "npllama.model.block_forward (h = x + attn_out)"
# Where the backward adds the gradients of a tensor read twice (the residual sums, the q/k/v projections'
# dx), and of the matrix used twice (the tied embedding, the LM head): not an op, so named here.
_BLOCK_BACKWARD = "npllama.model.block_backward"
# The heads' gradients w.r.t. the hidden states they read add in the objective's own code.
_OBJECTIVE_SUM = ", added by the objective, which hands their sum to npllama.model.Llama.hidden_backward"
_TIED_SUM = ("its gradients added in npllama.model.model_backward, or for an objective's own head "
             "in npllama.model.Llama.hidden_backward")


def _same_numbers(returned, received) -> tuple[bool | None, float]:
    """(whether two arrays hold the same numbers, their relative error): equal shapes entry by entry,
    or one with its heads split (B, n, T, hd) against the other merged (B, T, n*hd).  (None, 0.0)
    when the shapes say nothing (a KV cache's keys hold more positions than this step's)."""
    a, b = np.asarray(returned), np.asarray(received)
    if a.shape != b.shape:
        merged = [x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1) if x.ndim == 4 else x
                  for x in (a, b)]
        if a.size != b.size or merged[0].shape != merged[1].shape:
            return None, 0.0
        a, b = merged
    if np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc"):
        return True, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        return False, float(rel_error(a.astype(np.float64), b.astype(np.float64), tiny=1e-300))


# What a record's source says of a tensor the model's code changed between two ops (handed_on), and
# how compare's report finds it there
_CHANGED_BETWEEN = "the code between the two calls ({}) changed them"
_CHANGED_BETWEEN_SAID = re.compile(re.escape(_CHANGED_BETWEEN).replace(re.escape("{}"), "(.*?)"))


def _code_between(name: str, gradient: bool) -> str:
    """Where the model hands tensor `name` (or its gradient) from one op to the next."""
    if ".self_attn." in name or ".mlp." in name or name.endswith("layernorm.out"):   # inside a block
        return "npllama.model.block_backward" if gradient else "npllama.model.block_forward"
    if name.startswith("model.layers."):   # the last block's output, read by the final norm
        return "npllama.model.decoder_backward" if gradient else "npllama.model.decoder_forward"
    if name == "model.norm.out":
        return ("npllama.model.model_backward and decoder_backward, or the objective's code that hands a "
                "head's gradient to Llama.hidden_backward" if gradient else
                "npllama.model.model_forward, or the objective's code that runs a head on Llama.hidden_forward")
    # a head's gradient (a head's output is never checked forwards): Llama.loss_and_grads hands dlogits
    # to model_backward, which hands it to the LM head's backward
    return "npllama.model.Llama.loss_and_grads and model_backward, or the objective's code that runs the head's loss"


def _where_attended(d_attn_probs, allowed):
    """d attn_probs, 0 where a key was masked: no gradient passes the softmax there, and the kernels
    do not compute it for the keys a causal block skips, so both backends record the same tensor.
    Masked means forbidden by `allowed` (attention_mask's, None: every key allowed); an allowed
    key whose probability underflowed to 0 keeps its gradient, or
    float32 against float64 (or two exp implementations) would differ exactly there."""
    if allowed is None:
        return d_attn_probs
    return np.where(allowed, d_attn_probs, 0).astype(d_attn_probs.dtype, copy=False)


def _allowed_keys(q, k, v, causal=True, key_padding_mask=None, q_offset=0):
    """The mask an attention forward called with these arguments applies."""
    return attention_mask(q.shape[2], k.shape[2], causal, key_padding_mask, q_offset)


def _base_parameter(name: str) -> str:
    """The model parameter a gradient belongs to: a LoRA adapter's (PEFT name) to the weight of
    the projection it adapts, whose backward computes it."""
    if name.startswith(_PEFT_PREFIX) and ".lora_" in name:
        return name[len(_PEFT_PREFIX):].split(".lora_")[0] + ".weight"
    return name


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or repr(fn)}"


def _module(name: str) -> str:
    """"model.layers.0.self_attn.q" -> "self_attn.q" (a record's place within its layer)."""
    parts = name.split(".")
    return ".".join(parts[3:]) if name.startswith("model.layers.") and len(parts) > 3 else name


def _noting(params: dict, op_name: str, replacement):
    """`replacement`, noting that it ran as `op_name` with the recorder of the trace active when it
    runs -- looked up then, not held: the LoRA adapters keep the ops they bound to this (LoraOps),
    and a LoRA SwiGLU cache its backward, after the trace's block has closed, and they must keep
    neither that trace alive nor write into it (a later trace, or none, may be running)."""
    @functools.wraps(replacement)   # (named as the replacement, in a record's source)
    def dispatched(*args, **kwargs):
        trace = _active.get()
        if trace is not None:
            recorder = trace._recorders.get(id(params))
            if recorder is not None and recorder.params is params:
                recorder.dispatched[op_name] = replacement
        return replacement(*args, **kwargs)
    return dispatched


def _global_called(fn, name: str):
    """What the global `name` that the plain function `fn` calls refers to; None when fn's code does
    not name it (or fn is no plain function: a kernel, a bound method)."""
    if not isinstance(fn, types.FunctionType) or name not in fn.__code__.co_names:
        return None
    return fn.__globals__.get(name)


def _rebound(fn, names: dict):
    """A copy of fn (same code) whose global names in `names` refer to the given functions."""
    from .backend import copy_function

    return copy_function(fn, {**fn.__globals__, **names})


@contextlib.contextmanager
def trace(include: Iterable[str] | None = None, exclude: Iterable[str] | None = None):
    """Record the named tensors of every forward/backward pass run inside the block.

    include, exclude: lists of fnmatch patterns: a name is recorded unless it matches an exclude
    pattern, and only if it matches an include pattern (include None: every name).

    Nested blocks: while an inner block is open, records go to it alone (the innermost trace).
    An include pattern that matched nothing by the end of the block is warned about (names start
    with "model.", "lm_head." or "d:", so 'layers.0.*' matches nothing)."""
    t = Trace(include, exclude)
    token = _active.set(t)
    try:
        yield t
    finally:
        _active.reset(token)
        # the recorders hold each model's parameters: a Trace kept for its records must not keep them alive
        t._recorders.clear()
    for pattern in t.include or ():
        if not any(fnmatch.fnmatchcase(name, pattern) for name in t._times_recorded):
            warnings.warn(f"trace include pattern {pattern!r} matched no record; names look like "
                          f"'model.layers.0.self_attn.q' and 'd:model.layers.0.out'"
                          + (f" (did you mean 'model.{pattern}'?)" if pattern.startswith("layers.") else ""),
                          stacklevel=3)


# ----- comparing two traces: where do they first disagree? -------------------------------------

@dataclasses.dataclass
class TensorDiff:
    """How one recorded tensor differs between trace a and trace b."""

    name: str
    shape_a: tuple
    shape_b: tuple
    diverged: bool           # beyond tolerance somewhere (or shapes differ)
    mismatched: int          # entries beyond tolerance
    size: int
    max_abs_err: float       # over entries finite in both
    rel_err: float           # norm-wise ||a - b|| / max(||a||, ||b||) over entries finite in both
    worst_index: tuple | None
    a_value: float | None
    b_value: float | None
    note: str = ""           # shape mismatch, NaN in one trace only, ...

    def describe(self) -> str:
        """One line: the shapes when they differ, else how many entries differ beyond tolerance, the
        relative error and the worst entry's values."""
        if self.shape_a != self.shape_b:
            return f"{self.name}: shapes differ, a {self.shape_a} vs b {self.shape_b}"
        where = ""
        if self.worst_index is not None:
            where = (f"; worst at index {self.worst_index}: a = {self.a_value:.8g}, b = {self.b_value:.8g}, "
                     f"|a - b| = {abs(self.a_value - self.b_value):.3g}")
        verdict = (f"{self.mismatched} of {self.size} entries differ beyond tolerance" if self.diverged
                   else "within tolerance")
        note = f" ({self.note})" if self.note else ""
        return f"{self.name} {self.shape_a}: {verdict}{note}; relative error {self.rel_err:.3g}{where}"


@dataclasses.dataclass
class Comparison:
    """The result of `compare(a, b)`: every shared tensor in a's order, and the first divergence."""

    diffs: list[TensorDiff]
    only_in_a: list[str]
    only_in_b: list[str]
    rtol: float
    atol: float | None
    labels: tuple = ("a", "b")
    traces: tuple = dataclasses.field(default=(), repr=False)   # (a, b) as Trace objects, to save or inspect
    notes: list = dataclasses.field(default_factory=list)      # differences in how a and b were run

    @property
    def first(self) -> TensorDiff | None:
        """The earliest tensor (in a's execution order) that differs beyond tolerance."""
        return next((d for d in self.diffs if d.diverged), None)

    @property
    def ok(self) -> bool:
        """True when no shared tensor diverged."""
        return self.first is None

    @property
    def diverged(self) -> list[TensorDiff]:
        """Every diverged tensor, in a's execution order (the first is `first`)."""
        return [d for d in self.diffs if d.diverged]

    def __getitem__(self, name: str) -> TensorDiff:
        for d in self.diffs:
            if d.name == name:
                return d
        raise KeyError(f"{name!r} was not compared (it is not in both traces)")

    def tolerance(self) -> str:
        """The rule an entry is held to, as text."""
        atol = "rtol * max|b| of each tensor" if self.atol is None else f"{self.atol:g}"
        return f"|a - b| <= atol + rtol * |b| with rtol = {self.rtol:g}, atol = {atol}"

    def table(self, only_diverged: bool = False) -> str:
        """A text table of every compared tensor (only the diverged ones with only_diverged=True)."""
        rows = [("#", "name", "shape", "rel err", "max abs err", "mismatched", "")]
        for i, d in enumerate(self.diffs):
            if only_diverged and not d.diverged:
                continue
            rows.append((str(i), d.name, str(d.shape_a), f"{d.rel_err:.2e}", f"{d.max_abs_err:.2e}",
                         f"{d.mismatched}/{d.size}", "DIFFERS" if d.diverged else "ok"))
        return _table(rows, right_from=3)

    def __str__(self) -> str:
        a, b = self.labels
        n = len(self.diffs)
        sides = "" if (a, b) == ("a", "b") else f", a = {a} against b = {b}"   # unnamed: nothing to say
        lines = [f"compared {n} tensor{'s' if n != 1 else ''}{sides}; tolerance, entry by entry: {self.tolerance()}"]
        lines += [f"NOTE: {note}" for note in self.notes]
        lines.append("relative error = ||a - b|| / max(||a||, ||b||), norm-wise over the whole tensor (not per entry)")
        if self.only_in_a or self.only_in_b:
            examples = [f"{names[0]}" for names in (self.only_in_a, self.only_in_b) if names]
            left_out = _left_out_by_replacements(self)
            lines.append(f"not compared (recorded on one side only): {len(self.only_in_a)} only in {a}, "
                         f"{len(self.only_in_b)} only in {b} (e.g. {', '.join(examples)})"
                         + (f"; {left_out} of them inside ops replaced with use_op (see the NOTE)" if left_out else ""))
        first = self.first
        if first is None:
            worst = max(self.diffs, key=lambda d: d.rel_err, default=None)
            lines.append("no divergence: every shared tensor agrees"
                         + (f" (largest relative error {worst.rel_err:.2e} at {worst.name})" if worst else ""))
            return "\n".join(lines)
        index = self.diffs.index(first)
        lines.append(f"FIRST DIVERGENCE at tensor #{index} (in {a}'s execution order):")
        lines.append("  " + first.describe())
        sources = {label: t.sources[first.name] for label, t in zip(self.labels, self.traces)
                   if isinstance(t, Trace) and first.name in t.sources}
        if index > 0:
            before = self.diffs[index - 1]
            if index == 1:
                lines.append(f"  the 1 tensor recorded before it, {before.name}, agrees (to a relative error of "
                             f"{before.rel_err:.2e}):")
            else:
                lines.append(f"  all {index} tensors recorded before it agree (the last one, {before.name}, to a "
                             f"relative error of {before.rel_err:.2e}):")
            # a source says when the model's code changed a tensor between the op that made it and the
            # op that read it (_Recorder.handed_on): both ops are right then
            between = [m.group(1) for source in sources.values() if (m := _CHANGED_BETWEEN_SAID.search(source))]
            lines.append(f"  suspect the code between two ops, in {between[0]}: it changed what one op handed the "
                         f"next (below)" if between else f"  suspect the step that computes {first.name}")
        else:
            lines.append("  it is the first tensor compared: suspect the inputs (tokens, parameters) or "
                         "the very first op")
        if sources:
            lines.append("  computed by " + "; ".join(f"{fn} (in {label})" for label, fn in sources.items()))
        later = len(self.diverged) - 1
        if later and first.shape_a != first.shape_b:
            reshaped = sum(d.shape_a != d.shape_b for d in self.diverged[1:])
            lines.append(f"  {later} later tensors differ too, {reshaped} of them in shape: the two runs computed "
                         f"different things (other inputs, a slice), and shapes that differ have no values to "
                         f"compare; give both the same tokens, or compare the slice you mean")
        elif later and first.name.rsplit("/", 1)[-1].startswith("d:") and first.name.endswith(".weight"):
            lines.append(f"  {_later(later)} too (not as its consequence: no step reads a "
                         f"parameter's gradient; the same bug elsewhere, most likely)")
        elif later:
            lines.append(f"  {_later(later)} too (most likely as a consequence)")
        return "\n".join(lines)


def _later(count: int) -> str:
    return "1 later tensor differs" if count == 1 else f"{count} later tensors differ"


def compare(a, b, rtol: float = 1e-5, atol: float | None = None, names: Iterable[str] | None = None,
            labels: tuple[str, str] = ("a", "b")) -> Comparison:
    """Walk trace a in execution order and compare each tensor with the one of the same name in b.

    An entry differs when |a - b| > atol + rtol * |b| (numpy.allclose's rule, NaN equal to NaN and
    equal infinities equal).  atol=None means rtol * max|b| over the tensor: errors are judged
    against the scale of the tensor they sit in, so a tiny gradient and a large logit are held to
    the same relative standard.  a, b: Trace objects, dicts name -> array, or .npz paths.
    `names` restricts the walk (in that order).  `Comparison.first` is the first divergence.
    """
    a, b = _as_trace(a, "a"), _as_trace(b, "b")
    if not _is_tolerance(rtol):
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
    if atol is not None and not _is_tolerance(atol):
        raise ValueError(f"atol must be None or a number >= 0, got {atol!r}")
    rtol, atol = float(rtol), None if atol is None else float(atol)
    # a string would be split into its letters, and a third label would fail deep in the report
    if (isinstance(labels, str) or not isinstance(labels, (tuple, list)) or len(labels) != 2
            or not all(isinstance(label, str) for label in labels)):
        raise TypeError(f"labels must be two names, (a's, b's), e.g. ('npllama', 'mine'), got {labels!r}")
    labels = tuple(labels)
    if isinstance(names, str):
        raise TypeError("names must be a list of record names, not a single string")
    order = list(names) if names is not None else a.names()
    if names is not None:
        missing = [n for n in order if n not in a.records and n not in b.records]
        if missing:
            raise ValueError(f"names holds {missing[0]!r}, recorded in neither trace"
                             + _close_names(missing[0], a))
    tokens = a.meta.get("tokens", b.meta.get("tokens"))   # what the run looked up: the embedding's rows
    diffs = [diff_tensors(n, a.records[n], b.records[n], rtol, atol, tokens)
             for n in order if n in a.records and n in b.records]
    only_a = [n for n in order if n in a.records and n not in b.records]
    only_b = [n for n in b.names() if n not in a.records]
    if not diffs:   # "no divergence" would be a lie: nothing was looked at
        raise ValueError(f"nothing to compare: no tensor is recorded in both traces ({labels[0]}: "
                         f"{len(a)} records, {labels[1]}: {len(b)})" + _patterns_of(a, b, labels)
                         + _naming_schemes(a, b, labels))
    notes = (_run_notes(a, b, labels) + _lora_notes(a, b, labels) + _replacement_notes(a, b, labels, only_a, only_b)
             + _untested_backward(a, b, [d.name for d in diffs]) + _nan_on_both_sides(a, b, [d.name for d in diffs]))
    return Comparison(diffs, only_a, only_b, rtol, atol, tuple(labels), (a, b), notes)


def _is_tolerance(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0  # NaN fails too


def _close_names(name: str, t: Trace) -> str:
    close = difflib.get_close_matches(name, t.names(), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def _patterns_of(a: Trace, b: Trace, labels) -> str:
    """The include patterns each side was recorded with (said once when both used the same), and of
    patterns that kept nothing, that they may match no name.  Patterns that kept records are named
    too: two sides that kept disjoint sets share no name."""
    sides = [(f"{label} was", t.include, len(t)) for label, t in zip(labels, (a, b)) if t.include is not None]
    if len(sides) == 2 and a.include == b.include:
        sides = [("they were", a.include, len(a) + len(b))]
    said, hinted = [], False
    for who, include, kept in sides:
        said.append(f"{who} recorded with include={include}")
        if not kept:
            said[-1] += ", which may match no name" + ("" if hinted else
                                                       " (names look like 'model.layers.0.self_attn.q' and "
                                                       "'d:model.layers.0.out')")
            hinted = True
    return "".join(f"; {s}" for s in said)


def _naming_schemes(a: Trace, b: Trace, labels) -> str:
    """A few names of each side, when both recorded something: two implementations that named
    their tensors differently (your own code under your own names) share none, and seeing both
    schemes side by side says what to rename."""
    if not len(a) or not len(b):
        return ""
    shown = [f"{label} has {', '.join(map(repr, t.names()[:2]))}" for label, t in zip(labels, (a, b))]
    return f"; {shown[0]}; {shown[1]}: record them under the same names"


def _run_notes(a: Trace, b: Trace, labels) -> list[str]:
    """What differs in how the two traces were made, said before any tensor: a different loss (next-token,
    masked-LM, classification) or different tokens (or targets) make every tensor differ; a different dtype
    makes round-off of that dtype's size expected."""
    notes = []
    # a trace made with npllama.trace() has no meta: its records say their dtype
    ran = [{"dtype": _dtype_of(t), **t.meta} for t in (a, b)]
    what = {"loss": "different losses", "tokens": "different tokens", "targets": "different targets",
            "dtype": "different dtypes"}
    differ = [key for key in what if all(r.get(key) is not None for r in ran) and ran[0][key] != ran[1][key]]
    if "tokens" in differ and "targets" in differ:
        differ.remove("targets")   # (next-token targets of other tokens: said by the tokens' note)
    for key in differ:
        shown = [str(r[key]) for r in ran]
        shown = [s if len(s) <= 60 else s[:57] + "..." for s in shown]
        # a label that is the value itself (compare_dtypes labels its traces float32, float64)
        # is said once
        said = [label if label == value else f"{label} {value}" for label, value in zip(labels, shown)]
        notes.append(f"the traces ran {what[key]}: {said[0]}, {said[1]}")
    return notes


def _replacement_notes(a: Trace, b: Trace, labels, only_a: list[str], only_b: list[str]) -> list[str]:
    """Which ops each trace ran replaced with `use_op`, and the records the other trace has alone
    because of it: a replacement records only what it returns, so the steps inside it (d:act,
    d:gate, d:up inside swiglu_backward; d:attn_probs inside attention_backward) are not recorded
    when it computes them its own way.  Without this, those names are "recorded on one side only"
    with nothing to tell a replaced op from a missing step."""
    if a.replaced and a.replaced == b.replaced and not only_a and not only_b:
        return [f"both traces ran ops replaced with use_op: {_replacements(a)}"]
    notes = []
    for t, label, other, theirs_only in ((a, labels[0], labels[1], only_b), (b, labels[1], labels[0], only_a)):
        if not t.replaced:
            continue
        note = f"{label} ran ops replaced with use_op: {_replacements(t)}"
        left_out = [n for n in theirs_only if n in t.unrecorded]
        if left_out:
            ops = list(dict.fromkeys(t.unrecorded[n] for n in left_out))
            shown = ", ".join(left_out[:3]) + (f" and {len(left_out) - 3} more" if len(left_out) > 3 else "")
            note += (f"; a replacement records only what it returns, not the steps inside it, so {shown} (inside "
                     f"{' and '.join(ops)}) {'is' if len(left_out) == 1 else 'are'} recorded in {other} only and "
                     f"not compared; what {'it returns' if len(ops) == 1 else 'they return'} is compared as usual")
        notes.append(note)
    return notes


def _lora_notes(a: Trace, b: Trace, labels) -> list[str]:
    """Which traces ran with LoRA adapters attached: the projections' outputs then include the
    adapters' contribution, and the parameter gradients are the adapters' alone (PEFT names), so
    a trace without them has none of those gradients and every base weight's instead."""
    if a.lora is None and b.lora is None:
        return []
    if a.lora == b.lora:
        return [f"both traces ran with LoRA adapters ({a.lora}): the projections' outputs include the "
                f"adapters', and the parameter gradients compared are the adapters' (lora_A, lora_B)"]
    if a.lora is not None and b.lora is not None:
        return [f"the traces ran different LoRA adapters: {labels[0]} {a.lora}, {labels[1]} {b.lora}"]
    (adapted, with_lora), other = (((labels[0], a.lora), labels[1]) if a.lora is not None
                                   else ((labels[1], b.lora), labels[0]))
    # (a trace given as a dict, or one saved before traces kept this, says nothing either way)
    return [f"{adapted} ran with LoRA adapters ({with_lora}); {other}'s trace notes none: without them, the "
            f"adapted projections' outputs differ by the adapters' contribution, and its parameter gradients are "
            f"the base weights', not the adapters'"]


def _replacements(t: Trace) -> str:
    return ", ".join(f"{op} by {function}" for op, function in t.replaced.items())


def _left_out_by_replacements(comparison) -> int:
    """How many of the names recorded on one side only the other side's replaced ops left out."""
    if len(comparison.traces) != 2:
        return 0
    a, b = comparison.traces
    return (sum(n in b.unrecorded for n in comparison.only_in_a)
            + sum(n in a.unrecorded for n in comparison.only_in_b))


def _dtype_of(t: Trace) -> str | None:
    """The dtype of a trace's first floating-point record, or None."""
    return next((v.dtype.name for v in t.records.values() if np.issubdtype(v.dtype, np.floating)), None)


def _nan_on_both_sides(a: Trace, b: Trace, names: list[str]) -> list[str]:
    """A note when tensors hold NaN at the same entries in both traces: NaN counts as equal to NaN
    (masked or padded entries can be NaN on purpose), so those tensors agree, but two runs that both
    blew up agree too, and "no divergence" must not pass for two healthy runs."""
    both = [n for n in names if a.records[n].shape == b.records[n].shape
            and np.issubdtype(a.records[n].dtype, np.inexact) and np.issubdtype(b.records[n].dtype, np.inexact)
            and np.any(np.isnan(a.records[n]) & np.isnan(b.records[n]))]
    if not both:
        return []
    count = "1 tensor holds" if len(both) == 1 else f"{len(both)} tensors hold"
    return [f"{count} NaN in both traces, first {both[0]}: NaN counts as equal to NaN, so they agree "
            f"there; unless NaN is meant there, both runs went wrong at or before it (t.summary() counts the NaNs)"]


def _untested_backward(a: Trace, b: Trace, names: list[str]) -> list[str]:
    """A note when every gradient compared is 0 on both sides: no position had a target (one
    token, or every target ignored), so "no divergence" would say nothing about any backward."""
    gradients = [n for n in names if n.rsplit("/", 1)[-1].startswith("d:")]
    if not gradients or any(np.any(t.records[n]) for n in gradients for t in (a, b)):
        return []
    return ["every gradient compared is 0 in both traces (no position had a target: a single "
            "token, or every target -100), so no backward pass was tested"]


def first_divergence(a, b, rtol: float = 1e-5, atol: float | None = None) -> TensorDiff | None:
    """The earliest tensor of a (execution order) that differs from b beyond tolerance, or None."""
    return compare(a, b, rtol, atol).first


def diff_tensors(name: str, a, b, rtol: float, atol: float | None, tokens=None) -> TensorDiff:
    """Compare two arrays entry by entry (in float64); see `compare` for the rule.  tokens: the ids
    the run looked up (a trace's meta["tokens"]), to tell when an embedding gradient differs at
    exactly the rows of the repeated ones."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return TensorDiff(name, x.shape, y.shape, True, max(x.size, y.size), max(x.size, y.size),
                          float("inf"), float("inf"), None, None, None, "shapes differ")
    with np.errstate(invalid="ignore", over="ignore"):
        same = (x == y) | (np.isnan(x) & np.isnan(y))          # equal infinities count as equal
        both_finite = np.isfinite(x) & np.isfinite(y)
        err = np.where(both_finite, np.abs(x - y), 0.0)
        finite_y = np.abs(y[np.isfinite(y)])
        abs_tol = atol if atol is not None else rtol * (float(finite_y.max()) if finite_y.size else 0.0)
        within = both_finite & (err <= abs_tol + rtol * np.abs(np.where(both_finite, y, 0.0)))
    bad = ~(same | within)
    mismatched = int(bad.sum())
    note = ""
    if mismatched:
        nonfinite_bad = bad & ~both_finite
        if nonfinite_bad.any():  # NaN/Inf in one trace only: that is the worst entry
            flat = int(np.flatnonzero(nonfinite_bad)[0])
            # inf against -inf (or NaN against inf) is not finite on either side
            one_sided = np.isfinite(x.flat[flat]) or np.isfinite(y.flat[flat])
            note = "NaN or Inf in one trace only" if one_sided else "NaN or Inf in both traces, not the same"
        else:
            flat = int(np.argmax(np.where(bad, err, -1.0)))
    elif x.size:
        flat = int(np.argmax(err))
    if mismatched:
        note = "; ".join(n for n in (note, _confined(bad), _repeated_token_rows(name, bad, tokens)) if n)
    worst = tuple(int(i) for i in np.unravel_index(flat, x.shape)) if x.size else None
    rel = rel_error(x[both_finite], y[both_finite], tiny=1e-300) if both_finite.any() else 0.0
    return TensorDiff(name, x.shape, y.shape, mismatched > 0, mismatched, int(x.size),
                      float(err.max()) if x.size else 0.0, rel, worst,
                      float(x[worst]) if worst is not None else None,
                      float(y[worst]) if worst is not None else None, note)


# ----- helpers ----------------------------------------------------------------------------------

def _confined(bad: np.ndarray) -> str:
    """Where the mismatches lie when some axis holds them at no more than half its indices, e.g.
    "only at indices [1, 2] of axis 1 (size 4)": two of four heads points at the heads' wiring
    (GQA kv heads tiled instead of repeat-interleaved), one row at one position."""
    places = []
    for axis, size in enumerate(bad.shape):
        if size < 2:
            continue
        hit = np.flatnonzero(bad.any(axis=tuple(a for a in range(bad.ndim) if a != axis)))
        if len(hit) <= size // 2:
            shown = ", ".join(map(str, hit[:8])) + (", ..." if len(hit) > 8 else "")
            places.append(f"indices [{shown}] of axis {axis} (size {size})")
    return "only at " + " and ".join(places) if places else ""


# the rows an embedding gradient differs at are exactly those of the tokens the input repeats
REPEATED_TOKEN_ROWS = ("the rows of tokens that occur more than once in the input: a scatter-add that keeps one "
                       "of the repeated updates?")


def _repeated_token_rows(name: str, bad: np.ndarray, tokens) -> str:
    """REPEATED_TOKEN_ROWS when `name` is an embedding table's gradient (V, D) whose mismatches
    `bad` lie in exactly the rows of the ids that occur more than once in `tokens`; else ""."""
    if tokens is None or not name.endswith("embed_tokens.weight") or bad.ndim != 2:
        return ""
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu":
        return ""
    ids, counts = np.unique(tokens.reshape(-1), return_counts=True)
    rows = np.flatnonzero(bad.any(axis=1))
    repeated = ids[counts > 1]
    return REPEATED_TOKEN_ROWS if repeated.size and np.array_equal(rows, repeated) else ""


def _as_trace(t, which) -> Trace:
    if isinstance(t, Trace):
        return t
    if isinstance(t, (str, os.PathLike)):
        return Trace.load(t)
    if isinstance(t, Mapping):
        out = Trace()
        out.records = {str(k): _as_array(v, str(k)) for k, v in t.items()}
        return out
    raise TypeError(f"{which} must be a Trace, a dict of arrays or the path of a saved .npz trace, "
                    f"got {type(t).__name__}")


def _as_array(value, name: str) -> np.ndarray:
    """A copy of a record's value as a NumPy array.  A tensor of another library is read through
    its own detach().cpu() (PyTorch's refuses np.asarray while it requires grad or sits on a GPU,
    and NumPy has no bfloat16: such a tensor is widened to float32), so your own implementation's
    tensors can be recorded or compared as they are."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy() if hasattr(value, "numpy") else value
    array = np.array(value, copy=True)
    if array.dtype.kind not in "biufc":
        raise TypeError(f"record {name!r} must be an array of numbers (or a tensor), got "
                        f"{type(value).__name__} with dtype {array.dtype}")
    return array


def _stats(a: np.ndarray) -> dict:
    a = np.asarray(a)
    out = {"shape": a.shape, "dtype": str(a.dtype), "nan": 0, "inf": 0,
           "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    if a.dtype.kind not in "fciub":
        return out
    if a.dtype.kind in "fc":
        out["nan"] = int(np.isnan(a).sum())
        out["inf"] = int(np.isinf(a).sum())
        finite = a[np.isfinite(a)]
    else:
        finite = a.reshape(-1)
    if finite.size:
        out.update(mean=float(np.mean(finite, dtype=np.float64)), std=float(np.std(finite, dtype=np.float64)),
                   min=float(finite.min()), max=float(finite.max()))
    return out


def _num(v: float) -> str:
    return "-" if v != v else f"{v:.4g}"


def _table(rows, right_from: int) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = io.StringIO()
    for r in rows:
        cells = [c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.write("  ".join(cells).rstrip() + "\n")
    return out.getvalue().rstrip("\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class _CallableModule(type(contextlib)):
    """Lets `npllama.trace(...)` open a trace while `npllama.trace.compare` etc. stay reachable:
    importing the submodule npllama.trace rebinds the package attribute to this module, so the
    module itself must be the callable."""

    def __call__(self, include=None, exclude=None):
        return trace(include, exclude)


sys.modules[__name__].__class__ = _CallableModule
