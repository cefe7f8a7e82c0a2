"""The seed's split protocol (``create_splits.sh``), and a stratified validation split.

Even years train, odd years test. The top-N categories are counted over *all* years of the catalog given,
so a subset of images (``image_root``) is split with the whole catalog's categories: results on the bundled
sample then stay comparable with the seed's and with a run on the full dataset.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tailor.data.catalog import Catalog
from tailor.names.taxonomy import CATEGORIES_FILE, write_categories

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """The four tables of the seed, plus the class lists that define them."""

    train_top: pd.DataFrame
    train_other: pd.DataFrame
    test: pd.DataFrame
    classes: list[str]       # every category in the catalog, alphabetical
    top_classes: list[str]   # the N most frequent, most frequent first
    top: int

    def summary_rows(self) -> list[tuple[str, int, int, int, int]]:
        """Per split: (name, rows, classes, classes with no training row, rows of such classes)."""
        top = set(self.top_classes)
        trained_top = set(self.train_top["label"])
        trained_other = set(self.train_other["label"])
        test_top = self.test[self.test["label"].isin(top)]
        test_other = self.test[~self.test["label"].isin(top)]

        def untrained(frame: pd.DataFrame, trained: set[str]) -> tuple[int, int]:
            unseen = ~frame["label"].isin(trained)
            return frame.loc[unseen, "label"].nunique(), int(unseen.sum())

        return [
            (f"train_top{self.top}", len(self.train_top), len(trained_top), len(top - trained_top), 0),
            ("train_other", len(self.train_other), len(trained_other), 0, 0),
            (f"test (top{self.top})", len(test_top), test_top["label"].nunique(), *untrained(test_top, trained_top)),
            ("test (other)", len(test_other), test_other["label"].nunique(), *untrained(test_other, trained_other)),
            ("test", len(self.test), self.test["label"].nunique(),
             *untrained(self.test, trained_top | trained_other)),
        ]


def top_categories(labels: pd.Series, n: int) -> list[str]:
    """The ``n`` most frequent labels; ties are broken alphabetically so the choice is deterministic."""
    counts = labels.value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [label for label, _ in ranked[:n]]


def make_splits(catalog: Catalog, top: int = 20, image_root: str | Path | None = None) -> Splits:
    """Split ``catalog`` by year parity and the ``top`` most frequent categories.

    With ``image_root``, categories are still ranked on the whole catalog, then only rows whose image
    exists under ``image_root`` are kept.
    """
    frame = catalog.frame
    if "year" not in frame.columns:
        raise ValueError(f"{catalog.source}: the split protocol needs a 'year' column (Kaggle's styles.csv)")
    classes = sorted(frame["label"].unique())
    top_classes = top_categories(frame["label"], top)
    if image_root is not None:
        image_root = Path(image_root)
        present = {p.name for p in image_root.iterdir()} if image_root.is_dir() else set()
        if not present:
            raise ValueError(f"{image_root}: no images there")
        frame = frame[frame["image"].map(lambda p: Path(p).name in present)]
    even = frame["year"] % 2 == 0
    in_top = frame["label"].isin(top_classes)
    return Splits(
        train_top=frame[even & in_top],
        train_other=frame[even & ~in_top],
        test=frame[~even],
        classes=classes,
        top_classes=top_classes,
        top=top,
    )


def write_splits(splits: Splits, catalog: Catalog, out_dir: str | Path) -> dict[str, Path]:
    """Write the seed's files (``train_top{N}.csv``, ``train_other.csv``, ``test.csv``, ``classes.txt``),
    plus ``train.csv`` (both training splits: what metric learning trains on), ``top_classes.txt`` and
    ``splits.json`` so evaluation knows which group a class belongs to, and ``categories.csv``: every category
    of the whole catalog with its place in the taxonomy, where name-only classes come from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "train_top": out / f"train_top{splits.top}.csv",
        "train_other": out / "train_other.csv",
        "train": out / "train.csv",
        "test": out / "test.csv",
        "classes": out / "classes.txt",
        "top_classes": out / "top_classes.txt",
        "summary": out / "splits.json",
        "categories": out / CATEGORIES_FILE,
    }
    catalog.write_csv(paths["train_top"], splits.train_top)
    catalog.write_csv(paths["train_other"], splits.train_other)
    catalog.write_csv(paths["train"], pd.concat([splits.train_top, splits.train_other]).sort_index())
    catalog.write_csv(paths["test"], splits.test)
    paths["classes"].write_text("\n".join(splits.classes) + "\n")
    paths["top_classes"].write_text("\n".join(splits.top_classes) + "\n")
    write_categories(catalog.frame, paths["categories"])
    summary = {
        "source": catalog.source,
        "top": splits.top,
        "top_classes": splits.top_classes,
        "rows": {name: rows for name, rows, *_ in splits.summary_rows()},
        "left_out": [str(p) for p in catalog.problems],
    }
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def stratified_holdout(frame: pd.DataFrame, fraction: float, seed: int,
                       label_column: str = "label") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``fraction`` of each class for validation, reproducibly from ``seed``.

    Every class keeps at least one training row, so a class with a single example is never lost to
    validation; a class with two or more gives at least one row to validation when ``fraction`` > 0.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for _, group in frame.groupby(label_column, sort=True):
        if fraction == 0 or len(group) < 2:
            continue
        n_val = min(len(group) - 1, max(1, int(round(fraction * len(group)))))
        held.extend(rng.choice(group.index.to_numpy(), size=n_val, replace=False).tolist())
    is_val = frame.index.isin(held)
    return frame[~is_val], frame[is_val]
