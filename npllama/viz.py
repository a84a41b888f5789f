"""Pictures (needs matplotlib: pip install 'npllama[plot]'): attention maps, loss curves, gradient norms.

    plot_attention(probs, labels, "attn.png")     # a (T, S) heatmap, tokens on both axes
    plot_loss("runs/tiny", "loss.png")            # train and validation curves from log.jsonl
    plot_grad_norms(trace, "grads.png")           # per-layer gradient norms from a trace

PNG files, drawn without pyplot or a display (matplotlib.figure.Figure with the Agg canvas), so
they work on a headless machine and never change the user's matplotlib backend.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from .resuming import LOG_FILE

PLOT_EXTRA = "pip install 'npllama[plot]'  (or: pip install matplotlib)"


def new_figure(width, height):
    """A matplotlib Figure of width x height inches, made without pyplot (a Jupyter user's backend is
    left alone); ImportError saying how to install matplotlib when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"pictures need matplotlib: {PLOT_EXTRA}") from error
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig, path) -> Path:
    """Write fig to `path`, a .png file (its folders made); ValueError naming the path when it is no
    .png, a folder, or under a file.  Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the output must be a .png file, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"the output {str(path)!r} is a folder: give the path of the .png file to write")
    blocking = next((folder for folder in path.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write {str(path)!r}: {str(blocking)!r} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----- attention --------------------------------------------------------------------------------

def attention_probs(model, ids, layer: int, head: int) -> np.ndarray:
    """attn_probs (T, T) of one layer and head for the token ids, from a forward pass under a trace."""
    from .trace import trace

    cfg = model.config
    if not 0 <= layer < cfg.num_hidden_layers:
        raise ValueError(f"--layer must be in [0, {cfg.num_hidden_layers}) for this model, got {layer}")
    if not 0 <= head < cfg.num_attention_heads:
        raise ValueError(f"--head must be in [0, {cfg.num_attention_heads}) for this model, got {head}")
    name = f"model.layers.{layer}.self_attn.attn_probs"
    with trace(include=[name]) as t:   # the stack the model runs: a masked-LM one reads both ways
        model.hidden_forward(np.asarray(ids)[None], causal=model.attends_causally)
    return t[name][0, head]


def masked_cells(model, n: int) -> np.ndarray:
    """(n, n) bool: the (query, key) cells of n tokens the model's attention mask hides -- every later
    key under the causal mask; none for a masked-LM (bidirectional) model."""
    return np.triu(np.ones((n, n), dtype=bool), 1) if model.attends_causally else np.zeros((n, n), dtype=bool)


# Text from the user (token pieces, folder names) drawn as written: matplotlib otherwise reads a
# "$...$" in it as mathtext, drawing "$x^2$" as x squared and stopping at "$\frac$" with a parse error
AS_WRITTEN = {"parse_math": False}

MASKED_COLOUR = "0.8"   # light grey: apart from viridis, whose 0 is dark purple and 1 yellow


def plot_attention(probs, labels, path, title: str = "", key_labels=None, masked=None) -> Path:
    """Heatmap of attn_probs (T, S): query tokens down the side, key tokens along the top.  masked:
    optional (T, S) bool, the cells the causal mask hides (masked_cells), drawn grey -- apart from a weight the
    head learned to be near 0, which is drawn in the colour of 0."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (queries, keys), got shape {probs.shape}")
    key_labels = labels if key_labels is None else key_labels
    if len(labels) != probs.shape[0] or len(key_labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} query and {len(key_labels)} key labels for probs of shape {probs.shape}")
    T, S = probs.shape
    side = min(4 + 0.3 * max(T, S), 30)
    fig = new_figure(side + 1.5, side)
    ax = fig.subplots()
    if masked is not None:
        masked = np.asarray(masked, dtype=bool)
        if masked.shape != probs.shape:
            raise ValueError(f"masked must have the shape of probs {probs.shape}, got {masked.shape}")
    hidden = masked is not None and masked.any()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad=MASKED_COLOUR)
    image = ax.imshow(np.ma.masked_array(probs, mask=masked if hidden else False), cmap=cmap, vmin=0.0,
                      vmax=1.0, interpolation="nearest")
    families, drawn = _fonts_for([_label(s) for s in [*key_labels, *labels]])
    ax.set_xticks(range(S), drawn[:S], rotation=90, fontsize=8, fontfamily=families, **AS_WRITTEN)
    ax.set_yticks(range(T), drawn[S:], fontsize=8, fontfamily=families, **AS_WRITTEN)
    ax.xaxis.tick_top()
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title, **AS_WRITTEN)
    fig.colorbar(image, ax=ax, shrink=0.8,
                 label="attention probability" + ("  (grey: hidden by the causal mask)" if hidden else ""))
    return save_png(fig, path)


def _label(piece: str) -> str:
    return piece.replace("\u2581", "_") if piece.strip() else repr(piece)


def _fonts_for(labels: list[str]) -> tuple[list[str], list[str]]:
    """(font families, labels to draw): matplotlib's default font, then installed fonts holding the
    characters it lacks (matplotlib takes each glyph from the first family that has it).  The
    default (DejaVu Sans) has no Chinese or Japanese: a token such as "小明" would be drawn as empty
    boxes, with a warning per character.  A character no installed font holds is written as its
    escape (\\u5c0f), with one warning naming them."""
    import warnings

    from matplotlib import font_manager, rcParams

    default = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    missing = set("".join(labels)) - _characters_of(default)
    families = [font_manager.FontProperties(fname=default).get_name()]
    for font in sorted(font_manager.fontManager.ttflist, key=lambda f: f.fname) if missing else []:
        try:
            held = missing & _characters_of(font.fname)
        except (OSError, RuntimeError):   # a font file matplotlib listed but cannot read
            continue
        # Last Resort (shipped with matplotlib) maps every character to a box naming its block
        if held and font.name not in families and not font.name.startswith("Last Resort"):
            families.append(font.name)
            missing -= held
        if not missing:
            break
    if missing:
        shown = "".join(sorted(missing))
        warnings.warn(f"no installed font draws {shown[:20]}{'...' if len(shown) > 20 else ''}: the token labels show "
                      f"{'them' if len(missing) > 1 else 'it'} as \\u escapes (a font such as Noto Sans CJK, "
                      f"Debian's fonts-noto-cjk, draws Chinese and Japanese)", stacklevel=3)
        labels = ["".join(c.encode("unicode_escape").decode() if c in missing else c for c in label)
                  for label in labels]
    return families, labels


@functools.lru_cache(maxsize=None)
def _characters_of(font_file: str) -> frozenset:
    from matplotlib.ft2font import FT2Font

    return frozenset(map(chr, FT2Font(font_file).get_charmap()))


# ----- loss curves ------------------------------------------------------------------------------

def log_file(run_or_log) -> Path:
    """The log.jsonl of a run folder, or the file itself."""
    path = Path(run_or_log)
    return path / LOG_FILE if path.is_dir() else path


def loss_axis_label(run_or_log) -> str:
    """What a run's logged "loss" is a mean of, told by the settings file of the job that wrote it
    (beside its log.jsonl): a token, a masked token, a response token, a text, or (sop) the sum of
    two means (npllama.loss_units names each).  A log on its own claims no unit."""
    from . import loss_units
    from .io.describe import run_started_in
    from .io.hf import OBJECTIVES
    from .train import CONFIG_FILE

    folder = log_file(run_or_log).parent
    try:
        job = run_started_in({p.name for p in folder.iterdir()})
    except OSError:
        job = None
    if job == "train":   # a settings file without a known objective: the default, next-token loss
        objective = _train_objective(folder / CONFIG_FILE)
        return loss_units.loss_axis_label(objective if objective in OBJECTIVES else "causal")
    return loss_units.loss_axis_label(job.removeprefix("finetune ") if job else None)


def _train_objective(settings) -> str | None:
    from .io.reading import read_json

    try:
        return read_json(settings, expect=dict).get("objective")
    except (OSError, ValueError):   # damaged or not npllama's: the plain label, not a failed plot
        return None


def read_log(path) -> dict[str, list]:
    """Train and validation losses from a run's log.jsonl (or the run folder holding it): log_curves,
    and an error if it holds none yet."""
    path = log_file(path)
    curves = log_curves(path)
    if not curves["loss"] and not curves["val_loss"]:
        if path.name != LOG_FILE:
            raise _not_a_log(path)
        raise ValueError(f"{path} holds no loss values yet (lines with \"loss\" or \"val_loss\")")
    return curves


def log_curves(path) -> dict[str, list]:
    """{"step", "loss", "val_step", "val_loss"}: the losses in a run's log.jsonl (or the run folder
    holding it), none if no step has been logged yet.

    Lines like {"step": 10, "loss": 3.2, ...} are training steps, {"step": 10, "val_loss": 3.4}
    evaluations; other lines ({"skipped": ...}) are ignored.  A last line without its newline is one
    the run is still writing (or a kill cut short), and is left for the next read."""
    path = log_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {str(path)!r} (a run folder from `npllama train` or "
                                f"`npllama finetune` holds {LOG_FILE})")
    from .budget import max_read
    from .io.reading import parse_json, read_text

    curves = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    text = read_text(path, max_bytes=max_read())
    lines = text.splitlines()
    unfinished = len(lines) if lines and not text.endswith("\n") else None
    first = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}:{number}")
        except ValueError:
            if number == unfinished:
                break
            # a file of another name whose first line is no JSON (train_config.json, spread over
            # lines) is no damaged log: it is not a log at all
            if first and path.name != LOG_FILE:
                raise _not_a_log(path) from None
            raise
        first = False
        if not isinstance(record, dict) or "step" not in record:
            continue
        for key, steps in (("val_loss", "val_step"), ("loss", "step")):
            if record.get(key) is not None:
                curves[steps].append(_number(record["step"], f"{path}:{number}: step"))
                curves[key].append(_number(record[key], f"{path}:{number}: {key}"))
    return curves


def _not_a_log(path: Path) -> ValueError:
    beside = path.with_name(LOG_FILE)
    run_log = (f"; the run's log beside it is {str(beside)!r}: give that, or the run folder {str(path.parent)!r}"
               if beside.is_file() else "")
    return ValueError(f"{path} is not a training log ({LOG_FILE}: a JSON object per line, as `npllama train` and "
                      f"`npllama finetune` write, holding \"loss\" or \"val_loss\"){run_log}")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {str(value)[:40]}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{where} is too large a number, got {str(value)[:40]}...") from None


def plot_loss(run_or_log, path, title: str = "") -> Path:
    """Draw a run's training loss (each step, and a moving average past 20 steps) and validation
    loss against the step, save it as a PNG to path, and return the path written."""
    curves = read_log(run_or_log)
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    if curves["loss"]:
        # a single step is a line of no length: a marker shows it
        ax.plot(curves["step"], curves["loss"], lw=0.8, alpha=0.5, label="train (each step)",
                marker="o" if len(curves["loss"]) == 1 else None)
        if len(curves["loss"]) >= 20:   # a moving average shows the trend through the noise
            w = max(5, len(curves["loss"]) // 50) | 1   # odd: a middle step to draw each mean at
            smooth = np.convolve(curves["loss"], np.ones(w) / w, mode="valid")
            # each mean drawn at the middle of its w steps: drawn at the last, it trails the curve
            middle = w // 2
            ax.plot(curves["step"][middle:middle + len(smooth)], smooth, lw=1.8, label=f"train (mean of {w})")
    if curves["val_loss"]:
        ax.plot(curves["val_step"], curves["val_loss"], "o-", lw=1.8, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_axis_label(run_or_log))
    ax.set_title(title or "loss", **AS_WRITTEN)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


# ----- gradient norms per layer -----------------------------------------------------------------

_LAYER_GRAD = re.compile(r"^d:model\.layers\.(\d+)\.(.+)$")
PARAM_KINDS = ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
               "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
               "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def _layer_grads(trace) -> list[tuple[str, int, str]]:
    """(name, layer, kind) of the trace's gradients that grad_norms draws: a parameter's, or a layer output's."""
    matches = [(name, _LAYER_GRAD.match(name)) for name in trace.names()]
    return [(name, int(m.group(1)), m.group(2)) for name, m in matches
            if m and (m.group(2) in PARAM_KINDS or m.group(2) == "out")]


def grad_norms(trace) -> dict[str, np.ndarray]:
    """{what: norms per layer} from a trace's gradients: every parameter kind, and the gradient of
    each layer's output (the residual stream), NaN where a layer's entry was not recorded."""
    per_layer: dict[str, dict[int, float]] = {}
    for name, layer, kind in _layer_grads(trace):
        per_layer.setdefault(kind, {})[layer] = float(np.linalg.norm(np.asarray(trace[name], dtype=np.float64)))
    if not per_layer:
        include = getattr(trace, "include", None)
        filtered = (f"; it was recorded with include={include}, which keeps no gradient of a layer: add "
                    f"'d:model.layers.*' (e.g. --include 'd:model.layers.*')" if include is not None else "")
        raise ValueError("the trace holds no per-layer gradients (names like d:model.layers.0.mlp.up_proj.weight):"
                         " record one around loss_and_grads, not forward" + filtered)
    n_layers = 1 + max(i for layers in per_layer.values() for i in layers)
    return {kind: np.array([layers.get(i, np.nan) for i in range(n_layers)])
            for kind, layers in per_layer.items()}


# why a loss has no target, by the loss a trace ran (its meta["loss"], debug.loss_traced)
_NO_TARGET = {"next-token": "a single token has no next token to predict, or every target was ignored",
              "masked-LM": "no token was masked, or every target was ignored",
              "classification": "every label was ignored",
              None: "every target was ignored, or a next-token loss of a single token, which has no next token"}


def plot_grad_norms(trace, path, title: str = "") -> Path:
    """Draw each layer's gradient norms from a trace holding gradients, save it as a PNG to path and
    return the path written; a gradient holding NaN or inf is refused by name."""
    norms = grad_norms(trace)
    # NaN in grad_norms is a layer not recorded: a gradient holding NaN or inf would be drawn as one
    layer_grads = _layer_grads(trace)
    bad = [name for name, _, _ in layer_grads if not np.isfinite(np.asarray(trace[name])).all()]
    if bad:
        raise ValueError(f"{len(bad)} of the trace's {len(layer_grads)} per-layer gradients hold NaN or inf "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}), whose norms no picture can show "
                         "(a NaN or inf weight, activation or loss before them makes them): `npllama debug trace` "
                         "counts each tensor's NaN and inf, forward ones too (--include 'model.layers.*'), to find "
                         "where they start")
    recorded = np.concatenate(list(norms.values()))
    recorded = recorded[np.isfinite(recorded)]
    if not recorded.any():
        why = _NO_TARGET.get(getattr(trace, "meta", {}).get("loss"), _NO_TARGET[None])
        raise ValueError(f"every gradient norm in the trace is 0, so there is nothing to draw: a loss with no target "
                         f"gives that ({why}), as do weights that let no gradient through (e.g. a norm whose input "
                         "overflowed float32)")
    n_layers = len(next(iter(norms.values())))
    fig = new_figure(10, 4.8)
    ax = fig.subplots()
    for kind in PARAM_KINDS:
        if kind in norms:
            ax.plot(range(n_layers), norms[kind], "o-", ms=3, lw=1.2, label=kind.replace(".weight", ""))
    if "out" in norms:
        # a marker as on the other lines: a layer whose neighbours were not recorded (a one-layer model)
        # is a line of no length, which only a marker shows
        ax.plot(range(n_layers), norms["out"], "k--", marker="s", ms=4, lw=2, label="layer output (residual stream)")
    zero = not recorded.all()
    if zero:   # a log axis has no 0, and would leave such a norm out: linear below the smallest other one
        ax.set_yscale("symlog", linthresh=recorded[recorded > 0].min())
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_xticks(range(n_layers))
    ax.set_ylabel("gradient norm ||d||" + ("  (log scale, linear near 0)" if zero else ""))
    ax.set_title(title or "gradient norm per layer", **AS_WRITTEN)
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize=7, loc="outside right center")
    return save_png(fig, path)
