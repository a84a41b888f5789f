"""What each objective's loss is measured in, named here alone: the lines `npllama train`,
`finetune` and `eval` print, the axis `npllama viz loss` draws and the exercises' plot all ask.

Every loss is a cross-entropy in nats; what it is a mean over differs: the next-token loss
(`causal`) every token, the masked-LM loss (`mlm`) only the masked ones, instruction tuning
(`sft`) the response tokens, a classifier (`classify`) the texts (one label each), and `finetune
sop` logs the sum of two means, the masked-LM loss and its pair head's loss.

    loss_unit("mlm")          # 'nats per masked token'
    loss_axis_label("mlm")    # 'masked-LM cross-entropy loss (nats per masked token)'
"""
from __future__ import annotations

UNITS = {
    "causal": "nats per token",
    "mlm": "nats per masked token",
    "sft": "nats per response token",
    "classify": "nats per text",
    "sop": "nats: masked-LM loss per masked token + sentence-order loss per pair",
}

# the loss of `finetune sop`'s pair head alone (one label per pair), which `eval sop` reports
# beside the masked-LM loss
PAIR_LOSS_UNIT = "nats per pair"

_NAMES = {"mlm": "masked-LM cross-entropy loss", "sop": "loss"}


def loss_unit(objective: str) -> str:
    """What one number of `objective`'s loss is measured in ("nats per masked token")."""
    try:
        return UNITS[objective]
    except (KeyError, TypeError):
        raise ValueError(f"objective must be one of {', '.join(map(repr, UNITS))}, got {objective!r}") from None


def loss_axis_label(objective: str | None) -> str:
    """A plot axis's name for `objective`'s loss, its unit in brackets; None (an objective not
    known, as of a log on its own): no unit claimed beyond nats."""
    if objective is None:
        return "cross-entropy loss (nats)"
    return f"{_NAMES.get(objective, 'cross-entropy loss')} ({loss_unit(objective)})"
