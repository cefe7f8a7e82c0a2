"""The files every evaluated run leaves for people: the per-class table (markdown and CSV), the confusion
matrix, every test image's prediction and the most confident mistakes (for the report's gallery)."""

from __future__ import annotations

from tailor import run_folder
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tailor.data.datasets import ImageDataset
from tailor.evaluation.metrics import ClassificationResult, confusion_counts, per_class_markdown
from tailor.evaluation.plots import plot_confusion


def write_evaluation(result: ClassificationResult, test: ImageDataset, scores: np.ndarray, classes: Sequence[str],
                     run_dir: Path, title: str) -> None:
    """``per_class.md``/``.csv``, ``confusion.png``, ``predictions.csv`` and ``mistakes.csv`` of one scored test
    set."""
    (run_dir / run_folder.PER_CLASS_MD).write_text(per_class_markdown(result, title))
    pd.DataFrame([c.as_dict() for c in result.per_class]).to_csv(run_dir / run_folder.PER_CLASS_CSV, index=False)
    matrix, rows, cols = confusion_counts(scores, list(test.frame["label"]), list(classes))
    plot_confusion(matrix, rows, cols, run_dir / run_folder.CONFUSION,
                   title=f"{run_dir.name}: confusion on {len(test)} test images (rows normalised)")
    write_predictions(test, scores, classes, run_dir)
    write_mistakes(test, scores, classes, run_dir)


#: every test image with its label and the model's first choice (what a confusion matrix counts)
PREDICTIONS_FILE = run_folder.PREDICTIONS


def write_predictions(test: ImageDataset, scores: np.ndarray, classes: Sequence[str], run_dir: Path) -> None:
    """Each test image's label, predicted class and that class's probability, in the test table's order."""
    predicted = scores.argmax(1) if len(scores) else np.zeros(0, dtype=int)
    pd.DataFrame({"image": test.frame["image"], "label": test.frame["label"],
                  "predicted": [classes[j] for j in predicted],
                  "probability": scores.max(1) if len(scores) else []}).to_csv(run_dir / PREDICTIONS_FILE, index=False)


def write_mistakes(test: ImageDataset, scores: np.ndarray, classes: Sequence[str], run_dir: Path, n: int = 24) -> None:
    """The most confident wrong predictions."""
    predicted = scores.argmax(1)
    confidence = scores.max(1)
    wrong = np.flatnonzero(predicted != test.targets)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    rows = [{"image": test.frame["image"].iloc[i], "true": test.frame["label"].iloc[i],
             "predicted": classes[predicted[i]], "confidence": float(confidence[i])} for i in worst]
    pd.DataFrame(rows, columns=["image", "true", "predicted", "confidence"]).to_csv(run_dir / run_folder.MISTAKES, index=False)
