"""The seed's split protocol reproduces every published fact about the catalog."""

import pandas as pd

from tailor.data.catalog import read_catalog
from tailor.data.splits import make_splits, stratified_holdout, write_splits

from conftest import run_tailor


def test_full_catalog_facts(styles_csv, tmp_path):
    catalog = read_catalog(styles_csv)
    splits = make_splits(catalog, top=20)
    assert (len(splits.train_top), len(splits.train_other), len(splits.test)) == (18003, 5788, 20654)
    assert len(splits.classes) == 143 and splits.classes == sorted(splits.classes)
    assert "Perfume and Body Mist" in splits.top_classes
    assert "Perfume and Body Mist" not in set(splits.train_top["label"])
    other_test = splits.test[~splits.test["label"].isin(splits.top_classes)]
    unseen = ~other_test["label"].isin(set(splits.train_other["label"]))
    assert round(unseen.mean(), 3) == 0.332
    paths = write_splits(splits, catalog, tmp_path)
    written = pd.read_csv(paths["train_top"])
    assert len(written) == 18003 and list(written.columns) == list(catalog.columns)
    assert paths["classes"].read_text().splitlines() == splits.classes


def test_sample_takes_its_categories_from_the_whole_catalog(styles_csv, sample_root):
    splits = make_splits(read_catalog(styles_csv), top=20, image_root=sample_root / "images")
    assert len(splits.train_top) + len(splits.train_other) == 1869
    assert len(splits.test) == 1010
    assert {"Backpacks", "Wallets", "Perfume and Body Mist"} <= set(splits.top_classes)
    assert "Sweaters" not in splits.top_classes  # frequent in the sample, not in the catalog


def test_stratified_holdout_is_reproducible_and_keeps_every_class(styles_csv):
    frame = read_catalog(styles_csv).frame.head(3000)
    train_a, val_a = stratified_holdout(frame, 0.2, seed=7)
    train_b, val_b = stratified_holdout(frame, 0.2, seed=7)
    _, val_c = stratified_holdout(frame, 0.2, seed=8)
    assert list(val_a.index) == list(val_b.index) and list(val_a.index) != list(val_c.index)
    assert set(train_a["label"]) == set(frame["label"])  # singletons stay in training
    assert abs(len(val_a) / len(frame) - 0.2) < 0.03
    assert set(train_a.index).isdisjoint(val_a.index)


def test_splits_command_prints_the_summary(styles_csv, tmp_path):
    result = run_tailor("splits", str(styles_csv), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "train_top20        18003" in result.stdout
    assert "1829 (33.2%)" in result.stdout
    assert "line 21287: no year" in result.stdout
    assert (tmp_path / "out" / "classes.txt").read_text().count("\n") == 143
