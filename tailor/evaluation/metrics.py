"""Classification metrics as the seed reported them, plus what it left implicit.

Top-k over all test rows; rows whose class the model never learned can never be hit, so they count as
errors in the overall figures (as in the seed) and are also reported separately, with the accuracy on the
classes the model does know beside them.

A model can also carry *name-only* classes (:mod:`tailor.names`): categories it knows by name and place in the
taxonomy but never saw a photo of. Their rows are counted three ways: with everything (top-1 / top-5), on their
own (``name_only_top1``), and among the rows of classes with no training image (``num_unseen_class_rows``, as
before) — so a run with names and one without compare on the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def topk_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's target is among its ``k`` highest scores; a target of -1 (unknown) never is."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    return (top == targets[:, None]).any(axis=1) & (targets >= 0)


@dataclass
class ClassResult:
    label: str
    support: int
    top1: float
    top5: float | None
    train_count: int
    seen: bool  # the model has this class (and so could predict it)
    name_only: bool = False  # ... by its name alone: no training image

    def as_dict(self) -> dict:
        return {"class": self.label, "support": self.support, "top1": self.top1, "top5": self.top5,
                "train_count": self.train_count, "seen": self.seen, "name_only": self.name_only}


@dataclass
class ClassificationResult:
    top1: float
    top5: float | None
    num_test: int
    num_unseen: int
    seen_top1: float | None
    seen_top5: float | None
    per_class: list[ClassResult] = field(default_factory=list)
    num_name_only: int = 0          # rows of classes the model knows by name only
    name_only_top1: float | None = None
    name_only_top5: float | None = None

    def drop_top5(self) -> None:
        """Leave top-5 out: with five classes or fewer it is 1.0 by construction and says nothing."""
        self.top5 = self.seen_top5 = self.name_only_top5 = None
        for c in self.per_class:
            c.top5 = None

    def as_dict(self) -> dict:
        return {
            "top1": self.top1, "top5": self.top5, "num_test": self.num_test,
            "num_unseen_class_rows": self.num_unseen,
            "unseen_fraction": self.num_unseen / self.num_test if self.num_test else 0.0,
            "seen_top1": self.seen_top1, "seen_top5": self.seen_top5,
            **({"num_name_only_rows": self.num_name_only, "name_only_top1": self.name_only_top1,
                "name_only_top5": self.name_only_top5, "num_unknown_class_rows": self.num_unseen - self.num_name_only}
               if self.num_name_only else {}),
            "per_class": [c.as_dict() for c in self.per_class],
        }


def evaluate_scores(scores: np.ndarray, true_labels: Sequence[str], classes: Sequence[str],
                    train_counts: dict[str, int] | None = None,
                    name_only: Sequence[str] = ()) -> ClassificationResult:
    """Score ``scores`` (N rows × the model's ``classes``) against ``true_labels`` (any class names).
    ``name_only``: the model's classes that had no training image (they count apart from the trained ones)."""
    classes = list(classes)
    name_only = set(name_only) & set(classes)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray(list(true_labels), dtype=object)
    targets = np.array([index.get(label, -1) for label in labels], dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no test rows to evaluate")
    hit1 = topk_hits(scores, targets, 1)
    hit5 = topk_hits(scores, targets, 5)
    by_name = np.array([label in name_only for label in labels], dtype=bool)
    seen = (targets >= 0) & ~by_name
    train_counts = train_counts or {}
    per_class = []
    for label in sorted(set(labels)):
        rows = labels == label
        per_class.append(ClassResult(
            label=str(label), support=int(rows.sum()), top1=float(hit1[rows].mean()),
            top5=float(hit5[rows].mean()), train_count=int(train_counts.get(label, 0)),
            seen=label in index, name_only=label in name_only))
    return ClassificationResult(
        top1=float(hit1.mean()), top5=float(hit5.mean()), num_test=len(labels),
        num_unseen=int((~seen).sum()),
        seen_top1=float(hit1[seen].mean()) if seen.any() else None,
        seen_top5=float(hit5[seen].mean()) if seen.any() else None,
        per_class=per_class, num_name_only=int(by_name.sum()),
        name_only_top1=float(hit1[by_name].mean()) if by_name.any() else None,
        name_only_top5=float(hit5[by_name].mean()) if by_name.any() else None)


def confusion_counts(scores: np.ndarray, true_labels: Sequence[str], classes: Sequence[str]
                     ) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of (true class, predicted class): rows are the test's classes, columns the model's."""
    rows = sorted(set(true_labels))
    row_index = {c: i for i, c in enumerate(rows)}
    predicted = np.asarray(scores).argmax(axis=1)
    matrix = np.zeros((len(rows), len(classes)), dtype=np.int64)
    for label, p in zip(true_labels, predicted):
        matrix[row_index[label], p] += 1
    return matrix, rows, list(classes)


def per_class_markdown(result: ClassificationResult, title: str = "") -> str:
    """The seed's per-class table, with support and training counts; unseen classes starred."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        f"**Top-1 accuracy:** {result.top1:.4f}  ",
        f"**Top-5 accuracy:** {format_rate(result.top5)}  ",
        f"**Test images:** {result.num_test}"
        + (f" ({result.num_unseen} of classes with no training example"
           + (f": {result.num_name_only} of classes known by name only (†), top-1 {result.name_only_top1:.4f}, "
              f"top-5 {format_rate(result.name_only_top5)}; {result.num_unseen - result.num_name_only} of classes "
              f"the model does not know, counted as errors" if result.num_name_only else ", counted as errors")
           + f"; on the classes with training images top-1 {result.seen_top1:.4f}, "
             f"top-5 {format_rate(result.seen_top5)})"
           if result.num_unseen and result.seen_top1 is not None else ""),
        "",
        "| Class | Top-1 | Top-5 | Test images | Training images |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in result.per_class:
        mark = "†" if c.name_only else "" if c.seen else "\\*"
        lines.append(f"|{c.label}{mark}|{c.top1:.4f}|{format_rate(c.top5)}|{c.support}|{c.train_count}|")
    if any(not c.seen for c in result.per_class):
        lines += ["", "*\\*: no examples of these classes in the training set*"]
    if any(c.name_only for c in result.per_class):
        lines += ["", "*†: no training image; the model knows these classes by their names*"]
    return "\n".join(lines) + "\n"


def format_rate(value: float | None) -> str:
    """A rate to four decimals; "–" where it is not reported (top-5 of an attribute with five classes or fewer)."""
    return "–" if value is None else f"{value:.4f}"
