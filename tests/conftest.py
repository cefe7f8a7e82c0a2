"""Shared fixtures: the bundled sample, the full catalog, and small datasets the tests make from real images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
STYLES = REPO / "data" / "styles.csv"


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """Every test (and every `tailor` it starts) caches features in a scratch folder, never in ~/.cache."""
    folder = tmp_path_factory.mktemp("tailor-cache")
    os.environ["TAILOR_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def styles_csv() -> Path:
    return STYLES


def make_tiny_dataset(out: Path, classes: list[str], per_class: int, size: int = 48, even_years: bool = True) -> Path:
    """A small Kaggle-style dataset (styles.csv + images/{id}.jpg) from real sample images, shrunk to ``size``."""
    styles = pd.read_csv(SAMPLE / "styles.csv")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        chosen = styles[styles["articleType"] == label].sort_values("id").head(per_class)
        assert len(chosen) == per_class, f"the sample has too few {label}"
        for _, row in chosen.iterrows():
            img = Image.open(SAMPLE / "images" / f"{row['id']}.jpg").convert("RGB").resize((size, size))
            img.save(out / "images" / f"{row['id']}.jpg", quality=90)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "styles.csv", index=False)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three real categories, 12 images each, at 48 px."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), ["Watches", "Sunglasses", "Tshirts"], 12)


def run_tailor(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the ``tailor`` command as a user would, in ``cwd`` (default: the repository)."""
    return subprocess.run([sys.executable, "-m", "tailor", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder that has the repository's configs/ (runs resolve config includes from the cwd)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path
