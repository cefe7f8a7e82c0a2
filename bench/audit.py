"""Benchmark of ``tailor audit`` on the bundled sample's training years: 2 % of the labels flipped at random
(seeded) and 20 products copied under new ids; how many of the flipped products the audit ranks in its most
suspicious 5 %, and how many of the copies it pairs with their originals.

    python bench/audit.py      # about 4 minutes on 2 CPU cores; writes bench/results/audit.md

A random ranking finds 5 % of the flipped labels in its top 5 %: that is the baseline, printed beside.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import REPO, markdown, publish, start  # noqa: E402
from tailor.auditing.command import run_audit  # noqa: E402

FLIP = 0.02
COPIES = 20
TOP = 0.05
SEED = 0


def planted_table(work: Path) -> tuple[Path, set[str], set[tuple[str, str]]]:
    """A copy of train.csv with flipped labels and copied products, and its images under ``work``."""
    table = pd.read_csv(REPO / "experiments" / "splits" / "train.csv")
    rng = np.random.default_rng(SEED)
    classes = sorted(table["articleType"].unique())
    flipped = rng.choice(len(table), size=round(FLIP * len(table)), replace=False)
    for row in flipped:
        given = table.at[row, "articleType"]
        table.at[row, "articleType"] = rng.choice([c for c in classes if c != given])
    images = work / "images"
    images.mkdir(parents=True)
    for pid in table["id"]:
        shutil.copy(REPO / "data" / "sample" / "images" / f"{pid}.jpg", images / f"{pid}.jpg")
    originals = rng.choice(np.setdiff1d(np.arange(len(table)), flipped), size=COPIES, replace=False)
    copies = table.iloc[originals].copy()
    copies["id"] = 900_000 + np.arange(COPIES)
    for (_, copy), pid in zip(copies.iterrows(), table["id"].iloc[originals]):
        shutil.copy(images / f"{pid}.jpg", images / f"{copy['id']}.jpg")
    pairs = {tuple(sorted((str(a), str(b)))) for a, b in zip(table["id"].iloc[originals], copies["id"])}
    noisy = pd.concat([table, copies], ignore_index=True)
    noisy.to_csv(work / "train_noisy.csv", index=False)
    return work / "train_noisy.csv", {str(table.at[r, "id"]) for r in flipped}, pairs


def main() -> None:
    start(__doc__.splitlines()[0], "(nothing to reuse: the audit itself is measured)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv_file, flipped, pairs = planted_table(work)
        summary = run_audit(work / "run", csv_file=csv_file, images=work, out=work / "audit", seed=SEED)
        issues = pd.read_csv(work / "audit" / "label_issues.csv", dtype={"id": str})
        duplicates = pd.read_csv(work / "audit" / "duplicates.csv", dtype={"id_a": str, "id_b": str})
    top = set(issues["id"].head(round(TOP * len(issues))))
    flagged = set(issues.loc[issues["flagged"], "id"])
    found_pairs = {tuple(sorted(p)) for p in zip(duplicates["id_a"], duplicates["id_b"])}
    rows = [
        {"selection": f"audit: most suspicious {TOP:.0%} ({len(top)} products)", "precision": len(top & flipped) / len(top),
         "recall": len(top & flipped) / len(flipped)},
        {"selection": f"audit: flagged by confident learning ({len(flagged)} products)",
         "precision": len(flagged & flipped) / max(1, len(flagged)), "recall": len(flagged & flipped) / len(flipped)},
        {"selection": f"random {TOP:.0%} (expected)", "precision": len(flipped) / len(issues), "recall": TOP},
    ]
    text = (f"## Catalog audit: planted label flips and copies\n\n"
            f"Bundled sample, training years: {summary['products']} products ({len(flipped)} labels flipped at "
            f"random to another category, seed {SEED}; {COPIES} products copied under new ids), frozen "
            f"{summary['backbone']} features, {summary['folds']}-fold out-of-fold probabilities, cleanlab.\n\n"
            + markdown(rows, ["selection", "precision", "recall"])
            + f"\n\nNear-duplicates (cosine ≥ {summary['duplicate_cosine']}): {len(found_pairs & pairs)} of the "
              f"{COPIES} planted copies paired with their originals; {len(found_pairs - pairs)} other pairs "
              f"reported (photos of the catalog that are all but the same).\n")
    publish("audit", text)


if __name__ == "__main__":
    main()
