"""Read product catalogs into one validated table.

Three sources are understood:

* Kaggle's ``styles.csv`` — the 9-column layout, or the original 10-column one whose last column,
  ``productDisplayName``, sometimes holds *unquoted* commas (the extra fields belong to the name and are
  joined back; the row is never dropped for it).
* a generic ``image,label`` CSV — the relation-net notebook's dataframe format; further columns are kept.
* an ImageFolder-style tree ``root/<label>/<file>``.

Every table has an ``image`` column (a path relative to the dataset root) and a ``label`` column. Rows that
cannot be used are never silently dropped: each one is reported as a :class:`RowProblem` with its line number.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from tailor.data.decoding import IMAGE_SUFFIXES  # noqa: F401  (read here by ImageFolder trees)

log = logging.getLogger(__name__)

STYLES_COLUMNS = (
    "id", "gender", "masterCategory", "subCategory", "articleType",
    "baseColour", "season", "year", "usage",
)
NAME_COLUMN = "productDisplayName"
_MAX_ID = 2**63 - 1


class CatalogError(ValueError):
    """A catalog that cannot be read at all (missing file, unknown header, no usable rows)."""


@dataclass(frozen=True)
class RowProblem:
    """One row left out of a table, and why (``where``: "line" of a file, "row" of a dataframe)."""

    line: int
    reason: str
    where: str = "line"

    def __str__(self) -> str:
        return f"{self.where} {self.line}: {self.reason}"


@dataclass
class Catalog:
    """A validated table of products (an ``image`` path relative to ``root`` and a ``label`` per row, plus any
    other columns of the source), and the rows that were left out of it.

    Make one with :func:`read_catalog` (a CSV, Kaggle's ``styles.csv`` or an ImageFolder tree) or
    :meth:`from_frame` (a pandas dataframe); both apply the same row checks and keep every problem row with
    its reason in :attr:`problems`.
    """

    frame: pd.DataFrame
    source: str
    kind: str  # "styles", "image-label", "folder" or "dataframe"
    columns: tuple[str, ...] = ()  # the source's own columns, for writing the table back out
    problems: list[RowProblem] = field(default_factory=list)
    #: the folder the ``image`` paths are relative to (``None``: not known, e.g. a split written to disk)
    root: Path | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, root: str | Path, image: str = "image", label: str = "label",
                   source: str = "dataframe") -> "Catalog":
        """A catalog from a dataframe: ``image`` names the column of image paths (relative to ``root``, or
        absolute below it), ``label`` the column to classify. Rows with no image path or no label are left out
        and reported (:attr:`problems`, by row position); every other column is kept (catalog attributes such
        as ``gender`` or ``baseColour`` serve look-alike filters and the multi-attribute recipe)."""
        for column, role in ((image, "image"), (label, "label")):
            if column not in frame.columns:
                raise CatalogError(f"{source}: no column {column!r} for the {role}s (columns: {list(frame.columns)})")
        table = frame.reset_index(drop=True).copy()
        images = table[image].map(lambda v: "" if pd.isna(v) else str(v).strip())
        labels = table[label].map(lambda v: "" if pd.isna(v) else str(v).strip())
        problems = [RowProblem(i, "no image path", "row") for i in table.index[images == ""]]
        problems += [RowProblem(i, f"no {label}", "row") for i in table.index[(labels == "") & (images != "")]]
        keep = (images != "") & (labels != "")
        table["image"], table["label"] = images, labels
        table = table[keep]
        if table.empty:
            raise CatalogError(f"{source}: no usable rows ({len(problems)} left out)")
        catalog = cls(table, source, "dataframe", tuple(frame.columns), problems, Path(root))
        if problems:
            log.warning(catalog.problem_summary())
        return catalog

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"Catalog({len(self.frame)} products, {self.frame['label'].nunique()} classes, {self.kind} "
                f"{self.source!r}, root={str(self.root) if self.root else None!r}"
                + (f", {len(self.problems)} rows left out" if self.problems else "") + ")")

    @property
    def classes(self) -> list[str]:
        """The labels present, sorted."""
        return sorted(self.frame["label"].unique())

    def counts(self) -> pd.Series:
        """Products per label, most frequent first."""
        return self.frame["label"].value_counts()

    def subset(self, rows: pd.Series | pd.Index | Sequence) -> "Catalog":
        """The catalog restricted to ``rows`` (a boolean mask over :attr:`frame`, or index labels): the same
        source, root and columns."""
        frame = self.frame[rows] if isinstance(rows, pd.Series) and rows.dtype == bool else self.frame.loc[rows]
        return replace(self, frame=frame, problems=[])

    def with_label(self, column: str) -> "Catalog":
        """The same products labelled by another column (``baseColour``, ``gender``…); rows with no value in
        it are left out and reported."""
        if column not in self.frame.columns:
            raise CatalogError(f"{self.source}: no column {column!r} (columns: {list(self.frame.columns)})")
        value = self.frame[column].map(lambda v: "" if pd.isna(v) else str(v).strip())
        missing = [RowProblem(int(i), f"no {column}", "row") for i in self.frame.index[value == ""]]
        frame = self.frame[value != ""].assign(label=value[value != ""])
        return replace(self, frame=frame, problems=missing)

    def write_table(self, path: str | Path) -> Path:
        """Every row as an ``image,label`` CSV with the other columns after them (what a run made from Python
        is given to read, and keeps); returns the file's absolute path."""
        frame = self.frame.drop(columns=["line"], errors="ignore")
        columns = ["image", "label", *[c for c in frame.columns if c not in ("image", "label")]]
        frame[columns].to_csv(path, index=False)
        return Path(path).resolve()

    def image_paths(self) -> list[Path]:
        """Each row's image file (``root`` / ``image``)."""
        root = self.root or Path(".")
        return [root / p for p in self.frame["image"]]

    def problem_summary(self, limit: int = 5) -> str:
        """One readable paragraph: how many rows were left out and the first few reasons."""
        if not self.problems:
            return f"{self.source}: {len(self.frame)} rows read, none left out"
        shown = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; … and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return (f"{self.source}: {len(self.frame)} rows read, {len(self.problems)} left out "
                f"({shown}{more})")

    def write_csv(self, path: str | Path, frame: pd.DataFrame | None = None) -> None:
        """Write ``frame`` (default: the whole table) with the source's own columns."""
        frame = self.frame if frame is None else frame
        columns = [c for c in self.columns if c in frame.columns] or list(frame.columns)
        frame.to_csv(path, columns=columns, index=False)


def read_catalog(path: str | Path, label_column: str | None = None, root: str | Path | None = None) -> Catalog:
    """Read a Kaggle ``styles.csv``, an ``image,label`` CSV or an ImageFolder tree, whichever ``path`` is.

    ``label_column``: the column to classify (default ``articleType`` for Kaggle tables, ``label`` otherwise).
    ``root``: the folder image paths are relative to (default: the tree itself, or the CSV's folder, where
    Kaggle's ``styles.csv`` sits beside ``images/``).
    """
    path = Path(path)
    if path.is_dir():
        catalog = read_image_folder(path)
        if root is not None:
            catalog.root = Path(root)
        return catalog
    catalog = _read_table(path, label_column)
    catalog.root = Path(root) if root is not None else path.parent
    return catalog


def _read_table(path: Path, label_column: str | None) -> Catalog:
    if not path.is_file():
        raise CatalogError(f"{path}: no such file")
    text, bad_lines = _decode(path.read_bytes())
    rows = _Lines(text)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(rows)]
    except StopIteration:
        raise CatalogError(f"{path}: the file is empty") from None
    if "image" in header and (label_column or "label") in header:
        # a table with its own image paths (a user's, or one the Python API wrote): taken as it is, even when
        # it also carries Kaggle's columns
        catalog = _read_image_label(rows, header, str(path), label_column or "label")
    elif {"id", "articleType"} <= set(header):
        catalog = _read_styles(rows, header, str(path), label_column or "articleType")
    else:
        raise CatalogError(
            f"{path}: unrecognised header {header!r}; expected Kaggle's styles.csv columns "
            f"(id, …, articleType, …) or an 'image,label' CSV")
    for line in bad_lines:
        log.warning("%s line %d: bytes that are not UTF-8 were replaced", path, line)
    if catalog.problems:
        log.warning(catalog.problem_summary())
    return catalog


class _Lines:
    """CSV records, one per physical line, with ``line_num`` as in :mod:`csv`.

    The catalog has no multi-line fields, and a stray quote must not let one record swallow the lines after
    it: each line is parsed on its own, so every line is either read or reported under its own number.
    """

    def __init__(self, text: str):
        self._lines = text.split("\n")
        if self._lines and self._lines[-1] == "":
            self._lines.pop()
        self.line_num = 0

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        if self.line_num >= len(self._lines):
            raise StopIteration
        line = self._lines[self.line_num].rstrip("\r")
        self.line_num += 1
        return next(csv.reader([line]), [])


def _decode(raw: bytes) -> tuple[str, list[int]]:
    """Decode UTF-8, replacing invalid bytes (and NULs) rather than failing; return the lines touched."""
    try:
        text = raw.decode("utf-8")
        bad: list[int] = []
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad = [i + 1 for i, line in enumerate(text.splitlines()) if "\ufffd" in line]
    return text.replace("\x00", ""), bad


def _read_styles(rows, header: list[str], source: str, label_column: str) -> Catalog:
    missing = [c for c in STYLES_COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"{source}: styles header lacks {missing}")
    if label_column not in header:
        raise CatalogError(f"{source}: no column {label_column!r} to use as the label")
    width = len(header)
    name_last = header[-1] == NAME_COLUMN
    records: list[dict] = []
    problems: list[RowProblem] = []
    first_line_of_id: dict[int, int] = {}
    for fields in rows:
        line = rows.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # a blank line is not a row
        if len(fields) > width and name_last:
            fields = fields[: width - 1] + [",".join(fields[width - 1:])]
        if len(fields) != width:
            problems.append(RowProblem(line, f"{len(fields)} fields where the header has {width}"))
            continue
        record = {k: v.strip() for k, v in zip(header, fields)}
        reason = _styles_row_problem(record, label_column)
        if reason is None:
            pid = int(record["id"])
            if pid in first_line_of_id:
                reason = f"duplicate id {pid} (first on line {first_line_of_id[pid]})"
            else:
                first_line_of_id[pid] = line
        if reason:
            problems.append(RowProblem(line, reason))
            continue
        record["id"] = int(record["id"])
        record["year"] = int(record["year"])
        record["line"] = line
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[*header, "line"])
    frame["id"] = frame["id"].astype("int64")
    frame["year"] = frame["year"].astype("int64")
    frame["image"] = "images/" + frame["id"].astype(str) + ".jpg"
    frame["label"] = frame[label_column].astype(str)
    return Catalog(frame, source, "styles", tuple(header), problems)


def _styles_row_problem(record: dict[str, str], label_column: str) -> str | None:
    """Why a styles row cannot be used, or None."""
    pid = record["id"]
    if not pid.isdigit() or not 0 < int(pid) <= _MAX_ID:
        return f"id {pid[:40]!r} is not a positive integer"
    year = record["year"]
    if not year:
        return "no year"
    if not year.isdigit() or not 1000 <= int(year) <= 9999:
        return f"year {year[:40]!r} is not a four-digit year"
    if not record[label_column]:
        return f"no {label_column}"
    return None


def _read_image_label(rows, header: list[str], source: str, label_column: str) -> Catalog:
    width = len(header)
    records: list[dict] = []
    problems: list[RowProblem] = []
    for fields in rows:
        line = rows.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != width:
            problems.append(RowProblem(line, f"{len(fields)} fields where the header has {width}"))
            continue
        record = {k: v.strip() for k, v in zip(header, fields)}
        if not record["image"]:
            problems.append(RowProblem(line, "no image path"))
            continue
        if not record[label_column]:
            problems.append(RowProblem(line, f"no {label_column}"))
            continue
        record["line"] = line
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[*header, "line"])
    frame["label"] = frame[label_column].astype(str)
    return Catalog(frame, source, "image-label", tuple(header), problems)


def read_image_folder(root: str | Path) -> Catalog:
    """An ImageFolder tree: every image under ``root/<label>/`` (one level) becomes a row."""
    root = Path(root)
    records = [
        {"image": f"{d.name}/{f.name}", "label": d.name}
        for d in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not records:
        raise CatalogError(f"{root}: no images found in class sub-folders (expected {root}/<label>/<image>)")
    return Catalog(pd.DataFrame.from_records(records), str(root), "folder", ("image", "label"), root=root)


def product_ids(frame: pd.DataFrame) -> list[str]:
    """Each row's product id: its ``id`` column where the table has one (Kaggle's styles.csv), else its image
    file's name without the suffix. What an index, an audit and an evaluation call a product."""
    return frame["id"].astype(str).tolist() if "id" in frame else [Path(p).stem for p in frame["image"]]
