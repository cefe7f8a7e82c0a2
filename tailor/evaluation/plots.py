"""Pictures a person would rather look at than read: training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(metrics: pd.DataFrame, path: str | Path, best_step: int | None = None,
                title: str = "Training") -> Path:
    """Loss and accuracy against optimisation steps, training and validation, with the kept checkpoint marked.

    ``metrics`` is Lightning's ``metrics.csv``: columns ``step``, ``train/loss``, ``train/acc``,
    ``val/loss``, ``val/acc`` (any may be missing; metric-learning runs log ``val/knn_acc`` instead).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", dict(alpha=0.35, lw=1)), ("val", dict(marker="o", lw=2))):
            column = f"{split}/{metric}"
            if column not in metrics and f"{split}/knn_{metric}" in metrics:  # metric-learning runs
                column = f"{split}/knn_{metric}"
            if column in metrics:
                series = metrics[["step", column]].dropna()
                if split == "train" and len(series) > 20:  # a smoothed line over the noisy raw one
                    ax.plot(series["step"], series[column], color="C0", **style)
                    smooth = series[column].rolling(max(3, len(series) // 15), min_periods=1).mean()
                    ax.plot(series["step"], smooth, color="C0", lw=2, label="train (smoothed)")
                else:
                    ax.plot(series["step"], series[column], color="C0" if split == "train" else "C1",
                            label=split, **style)
        if best_step is not None:
            ax.axvline(best_step, color="C2", ls="--", lw=1.5, label=f"kept checkpoint (step {best_step})")
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def confusion_layout(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str]
                     ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """What a confusion plot shows: rows (true classes, a class the model lacks included) sorted by support,
    largest first; columns in the rows' order where the model has the class, then its remaining classes; each
    row divided by its support. Returns the rows, the columns, the normalised matrix and the supports (a
    column)."""
    row_labels, column_labels = list(row_labels), list(column_labels)
    order = np.argsort(-matrix.sum(axis=1), kind="stable")
    rows = [row_labels[i] for i in order]
    cols = [c for c in rows if c in column_labels] + [c for c in column_labels if c not in rows]
    col_index = [column_labels.index(c) for c in cols]
    counts = matrix[order][:, col_index]
    support = counts.sum(axis=1, keepdims=True)
    return rows, cols, counts / np.maximum(support, 1), support


def plot_confusion(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                   path: str | Path, title: str = "Confusion matrix (rows normalised)") -> Path:
    """A row-normalised confusion matrix, readable from 10 to 150 classes (laid out by
    :func:`confusion_layout`). Cell text is shown only while it fits."""
    rows, cols, norm, support = confusion_layout(matrix, row_labels, column_labels)

    n = max(len(rows), len(cols))
    cell = 0.42 if n <= 30 else 0.16
    font = 9 if n <= 30 else max(4, int(240 / n))
    fig, ax = plt.subplots(figsize=(max(6, cell * len(cols) + 3), max(5, cell * len(rows) + 2.5)),
                           constrained_layout=True)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=font)
    ax.set_yticks(range(len(rows)), [f"{r} ({int(s)})" for r, s in zip(rows, support[:, 0])], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (test images)")
    if n <= 30:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=font - 2,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.03, label="fraction of the true class")
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
