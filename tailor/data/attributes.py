"""Several label columns of one table as training targets: one class index per (row, attribute).

A catalog row can lack an attribute (the real ``styles.csv`` has products with no colour or usage). Such a
value is *missing* (:data:`MISSING`): masked for that attribute only. A value the model was never trained on
is *unknown* (:data:`~tailor.data.datasets.UNKNOWN`): at test time it counts as an error, as in the seed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from tailor.data.catalog import CatalogError
from tailor.data.datasets import UNKNOWN, ImageDataset

MISSING = -2
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null"})

#: The catalog's attribute columns (Kaggle styles.csv), in the order a person reads a product.
STYLES_ATTRIBUTES = ("masterCategory", "subCategory", "articleType", "baseColour", "gender", "season", "usage")


def attribute_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as strings, with the catalog's ways of saying "no value" turned into missing values (NaN)."""
    if column not in frame.columns:
        usable = [c for c in frame.columns if c not in ("id", "image", "label", "line", "year", "productDisplayName")]
        raise CatalogError(f"no column {column!r} in the table; its attribute columns are {usable}")
    values = frame[column].astype(str).str.strip()
    return values.where(~values.str.lower().isin(MISSING_VALUES), None)


def head_classes(frame: pd.DataFrame, columns: Sequence[str], min_count: int = 1) -> dict[str, list[str]]:
    """Each attribute's classes: its values with at least ``min_count`` rows in ``frame``, sorted."""
    if not columns:
        raise CatalogError("no attribute columns chosen (attributes.columns)")
    if len(set(columns)) != len(columns):
        raise CatalogError(f"attribute columns listed twice: {list(columns)}")
    heads = {}
    for column in columns:
        counts = attribute_values(frame, column).value_counts()
        classes = sorted(counts[counts >= min_count].index)
        if len(classes) < 2:
            raise CatalogError(f"attribute {column!r} has {len(classes)} value(s) with at least {min_count} "
                               f"training row(s): nothing to classify")
        heads[column] = classes
    return heads


def attribute_targets(frame: pd.DataFrame, heads: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(rows × attributes) class indices: :data:`MISSING` where a row has no value, ``UNKNOWN`` where its
    value is not one of the attribute's classes."""
    targets = np.empty((len(frame), len(heads)), dtype=np.int64)
    for j, (column, classes) in enumerate(heads.items()):
        index = {c: i for i, c in enumerate(classes)}
        values = attribute_values(frame, column)
        targets[:, j] = [MISSING if pd.isna(v) else index.get(v, UNKNOWN) for v in values]
    return targets


def class_counts(targets: np.ndarray, heads: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Training examples per class of each attribute (masked rows not counted)."""
    return {column: np.bincount(targets[:, j][targets[:, j] >= 0], minlength=len(classes))
            for j, (column, classes) in enumerate(heads.items())}


class AttributeDataset(Dataset):
    """An :class:`ImageDataset`'s images with a target vector per row (one entry per attribute; -1 where
    the attribute is missing or unknown, which the loss ignores)."""

    def __init__(self, images: ImageDataset, targets: np.ndarray):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} target rows")
        self.images = images
        self.targets = torch.as_tensor(np.where(targets >= 0, targets, -1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, _ = self.images[i]
        return image, self.targets[i]
