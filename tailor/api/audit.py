"""``tailor.audit``: the labels of a catalog that look wrong and the products listed twice, as dataframes —
``tailor audit`` from Python."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tailor.api.model import Model
from tailor.auditing.command import run_audit
from tailor.auditing.duplicates import DUPLICATE_COSINE
from tailor.data.catalog import Catalog, CatalogError


@dataclass
class Audit:
    """What an audit found. ``label_issues``: every product, the suspicious first (``flagged``), with its
    label, the label its photo looks like and a quality score; ``duplicates``: pairs of photos so alike they
    are one product listed twice; ``summary``: the counts and settings; ``folder``: the CSVs."""

    label_issues: pd.DataFrame
    duplicates: pd.DataFrame
    summary: dict
    folder: Path

    @property
    def flagged(self) -> pd.DataFrame:
        """Only the products whose label looks wrong."""
        return self.label_issues[self.label_issues["flagged"]]

    def __repr__(self) -> str:
        return (f"Audit({self.summary['products']} products: {self.summary['flagged_labels']} labels look wrong, "
                f"{self.summary['duplicate_pairs']} near-duplicate pairs; {str(self.folder)!r})")


def audit(model: Model | str | Path, catalog: Catalog | None = None, folds: int = 5, seed: int = 0,
          duplicate_cosine: float = DUPLICATE_COSINE, out: str | Path | None = None,
          progress: bool = True) -> Audit:
    """Audit ``catalog`` (default: the table ``model``'s run trained on) with out-of-fold probabilities of a
    linear probe on the frozen features of the model's backbone (confident learning, cleanlab) and a
    near-duplicate search. ``out``: where the CSVs go (default: the run's ``audit/`` when auditing its own
    table, else a temporary folder)."""
    run = model if isinstance(model, Model) else Model(model)
    if run.folder is None:
        raise TypeError("audit a run folder, not an exported model")
    csv_file = images = None
    if catalog is not None:
        if catalog.root is None:
            raise CatalogError("audit needs a catalog whose root is known (read_catalog / from_frame)")
        work = Path(out) if out else Path(tempfile.mkdtemp(prefix="tailor-audit-"))
        work.mkdir(parents=True, exist_ok=True)
        csv_file, images = catalog.write_table(work / "audited.csv"), Path(catalog.root)
        out = work
    summary = run_audit(run.folder, csv_file, images, out, folds=folds, seed=seed,
                        duplicate_cosine=duplicate_cosine, progress=progress)
    folder = Path(out) if out else run.folder / "audit"
    issues = pd.read_csv(folder / "label_issues.csv", dtype={"id": str})
    duplicates = pd.read_csv(folder / "duplicates.csv", dtype={"id_a": str, "id_b": str})
    return Audit(issues, duplicates, summary, folder)
