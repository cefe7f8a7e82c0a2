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


def write_predictions_csv(predictions: Sequence[Prediction | AttributePrediction], path: str | Path) -> None:
    """One row per image: ``path, class1, score1, …`` — for a multi-attribute model
    ``path, <attribute>1, <attribute>_score1, …`` for every attribute."""
    if predictions and isinstance(predictions[0], AttributePrediction):
        groups = [(a, f"{a}_score", len(p.labels)) for a, p in predictions[0].attributes.items()]
        parts = lambda p: list(p.attributes.values())  # noqa: E731
    else:
        groups = [("class", "score", len(predictions[0].labels) if predictions else 0)]
        parts = lambda p: [p]  # noqa: E731
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"] + [f"{name}{i + 1}" for label, score, k in groups for i in range(k)
                                    for name in (label, score)])
        for p in predictions:
            writer.writerow([p.path] + [v for part in parts(p) for pair in zip(part.labels, part.scores)
                                        for v in (pair[0], f"{pair[1]:.4f}")])
