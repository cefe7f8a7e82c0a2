"""How a run scores its test split: plain settings, bound at the edge (``evaluate.*`` for a classifier,
``evaluate_attributes.*`` for a multi-attribute model) and passed to the recipe."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSettings:
    """``group``: which test rows are scored — "all"; "top" or "other", the rows of the N most frequent
    categories or of the rest (``top_classes.txt`` beside the test CSV, written by ``tailor splits``); "model",
    the rows of classes the model knows (a classifier's only). ``tta``: each image scored averaged with its
    mirror image. ``batch_size``: images per forward pass."""

    group: str = "all"
    tta: bool = True
    batch_size: int = 64
