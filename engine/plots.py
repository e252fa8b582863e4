"""Figures written next to the numbers: training curves (the paper's Figures 2 and 3) and a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; chosen here rather than at import time
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Clip accuracy and loss per epoch, training and validation, side by side.

    history: the rows of metrics.csv (keys epoch, train_loss, train_acc, val_loss, val_acc; epochs 1-based).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax_acc, "acc", "clip accuracy"), (ax_loss, "loss", "loss")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="training", markersize=3)
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylim(0, 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (row = true class, column = prediction); class names shown up to 40."""
    plt = _pyplot()
    k = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.3 * k, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if matrix[i, j]:
                        color = "white" if norm[i, j] > 0.5 else "black"
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    with atomic_write(path) as tmp:  # tmp keeps path's suffix: savefig picks the format by it
        fig.savefig(tmp, dpi=100)
