"""Where each category sits in the catalog: ``masterCategory`` › ``subCategory`` › ``articleType``.

A team knows a new category's name and place in the taxonomy long before it has labelled photos, so the
catalog's category list (``categories.csv``, written by ``tailor splits`` beside ``classes.txt``) is what
name-only classes come from. ``classes.txt`` alone (names, no parents) works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

PARENT_COLUMNS = ("subCategory", "masterCategory")  # nearest parent first
CATEGORIES_FILE = "categories.csv"


class TaxonomyError(ValueError):
    """A category list that cannot be read."""


def catalog_taxonomy(frame: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Every label of a catalog table → its parents (nearest first), from the table's own columns; a label
    listed under several parents takes its most frequent ones."""
    parents = [c for c in PARENT_COLUMNS if c in frame.columns]
    if not parents:
        return {str(label): () for label in sorted(frame["label"].unique())}
    counted = frame.groupby(["label", *parents], sort=True).size().reset_index(name="n")
    counted = counted.sort_values(["label", "n"], ascending=[True, False], kind="stable")
    firsts = counted.drop_duplicates("label")
    return {str(row["label"]): tuple(str(row[c]) for c in parents) for _, row in firsts.iterrows()}


def write_categories(frame: pd.DataFrame, path: str | Path) -> Path:
    """``categories.csv``: one row per category of ``frame``, with its parents and its number of products."""
    taxonomy = catalog_taxonomy(frame)
    counts = frame["label"].value_counts()
    parents = [c for c in PARENT_COLUMNS if c in frame.columns]
    rows = [{"label": label, **dict(zip(parents, up)), "products": int(counts[label])}
            for label, up in taxonomy.items()]
    path = Path(path)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def read_categories(path: str | Path) -> dict[str, tuple[str, ...]]:
    """A category list → {name: parents}: ``categories.csv`` (a ``label`` column, parents optional) or a text
    file with one name per line (``classes.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"{path}: no such category list (tailor splits writes categories.csv and classes.txt)")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "label" not in frame.columns:
            raise TaxonomyError(f"{path}: a category list needs a 'label' column (has {list(frame.columns)})")
        parents = [c for c in PARENT_COLUMNS if c in frame.columns]
        return {row["label"]: tuple(row[c] for c in parents if row[c]) for _, row in frame.iterrows()
                if row["label"].strip()}
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {name: () for name in names if name}


def categories_beside(csv_file: str | Path) -> Path | None:
    """The category list ``tailor splits`` wrote beside a split's table: categories.csv, else classes.txt."""
    folder = Path(csv_file).parent
    for name in (CATEGORIES_FILE, "classes.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def parents_of(name: str, *taxonomies: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """``name``'s parents from the first taxonomy that lists it with any."""
    for taxonomy in taxonomies:
        if taxonomy.get(name):
            return tuple(taxonomy[name])
    return ()
