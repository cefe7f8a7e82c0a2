"""Plots are drawn for small and large class counts, and mark what they promise to mark."""

import numpy as np
import pandas as pd
from PIL import Image

from tailor.evaluation.plots import confusion_layout, plot_confusion, plot_curves


def test_confusion_grows_with_the_class_count(tmp_path):
    sizes = {}
    for n in (20, 120):
        rng = np.random.default_rng(n)
        matrix = rng.integers(0, 5, size=(n, n)) + np.eye(n, dtype=int) * 20
        labels = [f"category {i}" for i in range(n)]
        path = plot_confusion(matrix, labels, labels, tmp_path / f"c{n}.png")
        sizes[n] = Image.open(path).size
    assert sizes[120][0] > sizes[20][0] * 1.5 and sizes[120][1] > sizes[20][1] * 1.5


def test_confusion_with_classes_the_model_lacks(tmp_path):
    """A true class the model lacks keeps its row (sorted by support) and adds no column; rows are normalised."""
    matrix = np.array([[3, 1], [0, 2], [1, 5]])  # the third true class is not among the model's
    rows, cols, norm, support = confusion_layout(matrix, ["a", "b", "unseen"], ["a", "b"])
    assert rows == ["unseen", "a", "b"] and cols == ["a", "b"] and support.ravel().tolist() == [6, 4, 2]
    np.testing.assert_allclose(norm, [[1 / 6, 5 / 6], [0.75, 0.25], [0.0, 1.0]])
    path = plot_confusion(matrix, ["a", "b", "unseen"], ["a", "b"], tmp_path / "c.png")
    assert Image.open(path).size[0] > 100


def test_curves_mark_the_kept_checkpoint(tmp_path):
    metrics = pd.DataFrame({"step": [10, 20, 30, 40, 40], "train/loss": [2.0, 1.5, 1.0, 0.8, None],
                            "train/acc": [0.3, 0.5, 0.7, 0.8, None], "val/loss": [None] * 4 + [0.9],
                            "val/acc": [None] * 4 + [0.75]})
    plain = np.asarray(Image.open(plot_curves(metrics, tmp_path / "a.png")).convert("RGB"))
    marked = np.asarray(Image.open(plot_curves(metrics, tmp_path / "b.png", best_step=30)).convert("RGB"))
    green = lambda a: ((a[..., 1] > 120) & (a[..., 0] < 90) & (a[..., 2] < 90)).sum()  # the C2 marker line
    assert green(marked) > green(plain) + 100
