"""The seed's year-parity splits as catalogs: products of even years train, odd years test; the N most
frequent categories (ranked on the whole catalog) make the transfer experiment, the others the rare one."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tailor.data.catalog import Catalog
from tailor.data.splits import make_splits


@dataclass(frozen=True)
class YearSplits:
    """The seed's tables. ``train_top``: even-year products of the top categories (the transfer experiment's
    training table); ``train_other``: even-year products of the others (the rare experiment's); ``train``:
    both (metric learning's); ``test``: every odd-year product, and ``test_top`` / ``test_other`` its two
    groups. ``top_classes``: the N most frequent categories, most frequent first."""

    train_top: Catalog
    train_other: Catalog
    train: Catalog
    test: Catalog
    test_top: Catalog
    test_other: Catalog
    top_classes: list[str]

    def summary(self) -> pd.DataFrame:
        """Rows and categories of each table."""
        return pd.DataFrame([{"split": name, "products": len(c), "classes": c.frame["label"].nunique()}
                             for name, c in self.__dict__.items() if isinstance(c, Catalog)]).set_index("split")


def year_splits(catalog: Catalog, top: int = 20, only_present: bool = False) -> YearSplits:
    """Split ``catalog`` (it needs a ``year`` column: Kaggle's ``styles.csv``) by year parity and its ``top``
    most frequent categories. ``only_present``: rank the categories on every row, then keep the rows whose
    image file is under the catalog's root (a sample of a larger catalog, as ``tailor splits --images``)."""
    splits = make_splits(catalog, top=top)
    frames = {"train_top": splits.train_top, "train_other": splits.train_other,
              "train": pd.concat([splits.train_top, splits.train_other]).sort_index(), "test": splits.test}
    if only_present:
        root = catalog.root
        frames = {k: f[[(root / p).is_file() for p in f["image"]]] for k, f in frames.items()}
    in_top = frames["test"]["label"].isin(splits.top_classes)
    return YearSplits(**{k: catalog.subset(f.index) for k, f in frames.items()},
                      test_top=catalog.subset(frames["test"].index[in_top.to_numpy()]),
                      test_other=catalog.subset(frames["test"].index[~in_top.to_numpy()]),
                      top_classes=list(splits.top_classes))
