"""What every report figure shares (analysis/plots.py, analysis/verdict_plots.py): the colours of its
options and the axis label of each metric."""
from __future__ import annotations

from matplotlib import colormaps

LABELS = {
    "val_loss": "validation loss (nats/token)",
    "final_val_loss": "final validation loss (nats/token)",
    "val_bpb": "validation bits per byte",
    "tokens_per_s": "training throughput (tokens/s)",
}
COLOURS = colormaps["tab10"]


def label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))
