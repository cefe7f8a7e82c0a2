"""``tailor audit``: planted label flips rank among the most suspicious products, copies pair with their
originals, and the command writes its tables and the report's section."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import torch

from conftest import run_tailor
from tailor.auditing.duplicates import near_duplicates
from tailor.auditing.labels import audit_labels


def _clusters(classes: int = 6, per_class: int = 40, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 3
    targets = torch.arange(classes).repeat_interleave(per_class)
    features = centres[targets] + torch.randn(len(targets), dim, generator=generator)
    return features, targets.numpy()


def test_planted_label_flips_rank_first():
    features, targets = _clusters()
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(targets), size=6, replace=False)
    noisy = targets.copy()
    noisy[flipped] = (targets[flipped] + rng.integers(1, 6, size=6)) % 6
    audit = audit_labels(features, noisy, 6, folds=5, seed=0)
    top = set(audit.ranking()[:12].tolist())  # the most suspicious 5 %
    assert len(top & set(flipped.tolist())) / 6 >= 0.8
    assert audit.flagged[flipped].all() and audit.flagged.sum() <= 12
    assert np.allclose(audit.probabilities.sum(1), 1.0)
    assert (audit.quality[flipped] < np.median(audit.quality)).all()


def test_out_of_fold_means_a_product_never_scores_its_own_label():
    """A lone product far from everything is not vouched for by itself: its held-out probe never saw it."""
    features, targets = _clusters(classes=3, per_class=20)
    features = torch.cat([features, torch.full((1, features.shape[1]), 40.0)])
    targets = np.append(targets, 2)
    audit = audit_labels(features, targets, 3, folds=5)
    assert audit.quality[-1] < 0.9


def test_near_duplicates_pair_copies_and_nothing_else():
    features, _ = _clusters()
    copies = features[[3, 100]] + 1e-4
    pairs = near_duplicates(torch.cat([features, copies]), threshold=0.99)
    assert {(i, j) for i, j, _ in pairs} == {(3, 240), (100, 241)}
    assert all(s >= 0.99 for *_, s in pairs)


def test_audit_command_writes_tables_and_a_report_section(probe_run, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_run, run)
    table = pd.read_csv(tiny_dataset / "styles.csv")
    copy = table.iloc[[0]].assign(id=999_001)
    shutil.copy(tiny_dataset / "images" / f"{table['id'][0]}.jpg", tiny_dataset / "images" / "999001.jpg")
    flipped = table.copy()
    flipped.loc[5, "articleType"] = "Watches" if flipped.loc[5, "articleType"] != "Watches" else "Tshirts"
    noisy_csv = tmp_path / "noisy.csv"
    pd.concat([flipped, copy]).to_csv(noisy_csv, index=False)
    try:
        result = run_tailor("audit", str(run), "--csv", str(noisy_csv), "--images", str(tiny_dataset), "--folds", "3")
    finally:
        (tiny_dataset / "images" / "999001.jpg").unlink()
    assert result.returncode == 0, result.stderr[-3000:]
    issues = pd.read_csv(run / "audit" / "label_issues.csv", dtype={"id": str})
    assert len(issues) == len(table) + 1 and list(issues["rank"]) == list(range(1, len(issues) + 1))
    assert str(table["id"][5]) in set(issues["id"].head(5))  # the flipped label among the most suspicious
    duplicates = pd.read_csv(run / "audit" / "duplicates.csv", dtype={"id_a": str, "id_b": str})
    assert {str(table["id"][0]), "999001"} == {duplicates["id_a"][0], duplicates["id_b"][0]}
    page = (run / "report.html").read_text()
    assert '<section id="audit">' in page and "Labels that look wrong" in page
    missing = run_tailor("audit", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "config.gin" in missing.stderr
