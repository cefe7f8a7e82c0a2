"""Predictions as people read them: the top-k categories of an image, one line per attribute, and the CSV
``tailor predict`` writes. NumPy only: the torch predictors and the ONNX Runtime path both hand their
probabilities here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tailor.data.decoding import IMAGE_SUFFIXES


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders become their image files, sorted."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


@dataclass
class Prediction:
    path: str
    labels: list[str]
    scores: list[float]


@dataclass
class AttributePrediction:
    path: str
    attributes: dict[str, Prediction]  # attribute → its top-k values and scores


def top_labels(row: np.ndarray, classes: Sequence[str], k: int) -> tuple[list[str], list[float]]:
    """The ``k`` most probable of ``classes`` for one row of probabilities, most probable first, with their
    probabilities (``tailor predict``'s and the server's one ranking)."""
    top = np.argsort(-row)[:k]
    return [classes[j] for j in top], [float(row[j]) for j in top]


def prediction_row(prediction: Prediction | AttributePrediction) -> dict[str, str | float]:
    """One image's prediction as the columns people read: ``path, class1, score1, …`` — for a multi-attribute
    model ``path, <attribute>1, <attribute>_score1, …`` for every attribute (the CSV's and the API's rows)."""
    if isinstance(prediction, AttributePrediction):
        groups = [(a, f"{a}_score", p) for a, p in prediction.attributes.items()]
    else:
        groups = [("class", "score", prediction)]
    row: dict[str, str | float] = {"path": prediction.path}
    for label_column, score_column, part in groups:
        for i, (label, score) in enumerate(zip(part.labels, part.scores), 1):
            row[f"{label_column}{i}"], row[f"{score_column}{i}"] = label, score
    return row


def write_predictions_csv(predictions: Sequence[Prediction | AttributePrediction], path: str | Path) -> None:
    """One row per image (:func:`prediction_row`), probabilities to four decimals."""
    rows = [prediction_row(p) for p in predictions]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(rows[0]) if rows else ["path"])
        for row in rows:
            writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row.values()])
