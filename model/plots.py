"""PNG plots of a run: the confusion matrix and the learning curves.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no global backend to
choose, no figure registry to leak, safe in any process (a DeepSpeed rank, a SLURM job).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from extract.labels import EMOTIONS


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_confusion_matrix(confusion: np.ndarray, path: Path, title: str = "", labels: Sequence[str] = EMOTIONS) -> Path:
    """Confusion matrix, each row normalised to the share of its true class; counts written in the cells."""
    confusion = np.asarray(confusion, dtype=np.int64)
    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    figure = _new_figure(6.4, 5.6)
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if shares[i, j] > 0.5 else "black"
            axes.text(j, i, str(confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_learning_curves(history: Sequence[dict[str, Any]], path: Path, best_epoch: int | None = None) -> Path:
    """Train and dev loss per epoch (left) and dev weighted F1 (right); the selected epoch marked."""
    epochs = [record["epoch"] for record in history]
    figure = _new_figure(10, 4)
    loss_axes, f1_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [record["train_loss"] for record in history], marker=".", label="train")
    loss_axes.plot(epochs, [record["dev_loss"] for record in history], marker=".", label="dev")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("cross-entropy")
    f1_axes.plot(epochs, [100 * record["dev_weighted_f1"] for record in history], marker=".", color="tab:green")
    f1_axes.set_xlabel("epoch")
    f1_axes.set_ylabel("dev weighted F1 (%)")
    if best_epoch is not None:
        for axes in (loss_axes, f1_axes):
            axes.axvline(best_epoch, color="grey", linestyle="--", label=f"selected (epoch {best_epoch})")
    loss_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return Path(path)
