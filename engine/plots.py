"""Figures written next to the numbers: training curves (the paper's Figures 2 and 3) and a confusion matrix.

Text that matplotlib's DejaVu Sans cannot draw (class names or titles in Chinese, Japanese, ...) is drawn with an
installed font that has the characters (Fonts); where none has them, the figure leaves that text out and says
where to read it, rather than drawing empty boxes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write

BASE_FONT = "DejaVu Sans"  # matplotlib's own
# A font whose every glyph is a box with the code point: it "has" every character and shows none.
NOT_A_FALLBACK = ("Last Resort",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; chosen here rather than at import time
    import matplotlib.pyplot as plt

    return plt


@functools.cache
def _charmap(font_file: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_file).get_charmap())


class Fonts:
    """The font families that draw the given texts: DejaVu Sans, then for the characters it lacks the installed
    fonts that have them (matplotlib falls back glyph by glyph along the list). can_draw(text): whether every
    character of text is in one of them."""

    def __init__(self, texts: Iterable[str]) -> None:
        from matplotlib import font_manager

        chars = {c for text in texts for c in text if not c.isspace()}
        missing = {c for c in chars if ord(c) not in _charmap(font_manager.findfont(BASE_FONT))}
        self.families = [BASE_FONT]
        for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: (e.name, e.fname)):
            if not missing:
                break
            if entry.name in self.families or entry.name.startswith(NOT_A_FALLBACK):
                continue
            try:
                has = {c for c in missing if ord(c) in _charmap(entry.fname)}
            except (OSError, RuntimeError):  # a font file FreeType cannot read: not a candidate
                continue
            if has:
                self.families.append(entry.name)
                missing -= has
        self.missing = frozenset(missing)  # characters no installed font has

    def can_draw(self, text: str) -> bool:
        return not self.missing.intersection(text)


def curve_markers(history: list[dict]) -> list[tuple[int, float]]:
    """(epoch, lr) of every epoch that ran at a lower rate than the one before it: where the lr was divided."""
    return [(b["epoch"], b["lr"]) for a, b in zip(history, history[1:], strict=False)
            if float(b["lr"]) < float(a["lr"])]


def plot_curves(history: list[dict], path: Path, title: str = "", best_epoch: int | None = None) -> None:
    """Clip accuracy and loss per epoch, training and validation, side by side; a dotted vertical line where the
    lr was divided (labelled with the new rate, curve_markers) and a star on the validation curves at best_epoch
    (best.pt's epoch).

    history: the rows of metrics.csv (keys epoch, train_loss, train_acc, val_loss, val_acc, lr; epochs 1-based).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fonts = Fonts([title])
    epochs = [r["epoch"] for r in history]
    with plt.rc_context({"font.family": fonts.families}):
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((ax_acc, "acc", "clip accuracy"), (ax_loss, "loss", "loss")):
            ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="training", markersize=3)
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation", markersize=3)
            for k, (epoch, lr) in enumerate(curve_markers(history)):
                ax.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1,
                           label="lr divided by 10" if k == 0 else None)
                ax.annotate(f"lr {float(lr):.3g}", (epoch - 0.5, 1), xycoords=("data", "axes fraction"),
                            xytext=(2, -2), textcoords="offset points", va="top", fontsize=7, color="grey")
            best = [r for r in history if r["epoch"] == best_epoch]
            if best:
                ax.plot([best_epoch], [best[0][f"val_{key}"]], "*", color="black", markersize=11, zorder=3,
                        label=f"best.pt (epoch {best_epoch})")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_acc.set_ylim(0, 1)
        if title and fonts.can_draw(title):
            fig.suptitle(title)
        fig.tight_layout()
        _save(fig, path)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (row = true class, column = prediction); class names shown up to 40 (as
    their indices where no installed font can draw them; confusion.csv has the names and counts). A title no
    installed font can draw is left out."""
    plt = _pyplot()
    k = len(class_names)
    fonts = Fonts([title, *class_names[:40]] if k <= 40 else [title])
    names_drawable = all(fonts.can_draw(name) for name in class_names[:40])
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.3 * k, 20)
    with plt.rc_context({"font.family": fonts.families}):
        fig, ax = plt.subplots(figsize=(side, side))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        axis = "class"
        if k <= 40:
            labels = class_names if names_drawable else [str(i) for i in range(k)]
            axis = "class" if names_drawable else "class index (names in confusion.csv)"
            ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
            ax.set_yticks(range(k), labels, fontsize=8)
            if k <= 15:
                for i in range(k):
                    for j in range(k):
                        if matrix[i, j]:
                            color = "white" if norm[i, j] > 0.5 else "black"
                            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
        ax.set_xlabel(f"predicted {axis}")
        ax.set_ylabel(f"true {axis}")
        ax.set_title(title if title and fonts.can_draw(title) else "confusion (row-normalised)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    with atomic_write(path) as tmp:  # tmp keeps path's suffix: savefig picks the format by it
        fig.savefig(tmp, dpi=100)
