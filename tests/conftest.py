"""Shared fixtures: the bundled sample, the full catalog, and small datasets the tests make from real images."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import gin
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
    """Run the ``tailor`` command as a user would, in ``cwd`` (default: the repository) — in this process
    (``tailor.cli.main`` with its output, logs included, captured as a process's would be), so a test pays
    for the imports once, not once per command. What the command leaves in gin's configuration and the
    process layout is cleared after it, as a process's exit would. ``timeout`` is kept for the call sites of
    :func:`run_tailor_process`, which runs it as a separate process (several processes, signals)."""
    from tailor import cli

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s"))
    root = logging.getLogger()
    level, where = root.level, os.getcwd()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if {"-v", "--verbose"} & set(args) else logging.INFO)
    try:
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as stop:  # argparse's usage errors
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # what -v lets through: a traceback and status 1, as the interpreter gives
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(where)
        root.removeHandler(handler)
        root.setLevel(level)
        gin.clear_config()
    return subprocess.CompletedProcess(["tailor", *args], code, out.getvalue(), err.getvalue())


def run_tailor_process(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m tailor`` as a separate process (for what needs one: several ranks, a fresh interpreter)."""
    return subprocess.run([sys.executable, "-m", "tailor", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout)


def evaluate_saved_model(model_file: Path, root: Path | str, csv_file: Path | str, output_dir: Path,
                         name: str) -> subprocess.CompletedProcess:
    """The seed's evaluation command (``configs/transfer_evaluate.gin``) on every row of ``csv_file``."""
    return run_tailor("run", "-c", "configs/transfer_evaluate.gin", "-p", f"TransferNet.saved_model_path='{model_file}'",
                      "-p", f"FashionDataset.root_dir='{root}'", "-p", f"FashionDataset.csv_file='{csv_file}'",
                      "-p", f"main.output_dir='{output_dir}'", "-p", f"main.name='{name}'", "-p", "evaluate.group='all'")


def kill_after_first_epoch(args: list[str], run_dir: Path, cwd: Path) -> int:
    """Start ``tailor *args`` and SIGKILL it as soon as ``run_dir`` holds its first epoch checkpoint; return
    the epoch that checkpoint ends (so a test can check the rerun had training left to do)."""
    from tailor.models.files import load_model_file

    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "tailor", *args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), "the run never wrote an epoch checkpoint"
    assert not (run_dir / "results.json").exists(), "the run finished before it could be killed"
    return int(load_model_file(last)["epoch"])


def assert_same_curves(run_a: Path, run_b: Path) -> None:
    """Two runs logged the same metrics.csv rows (throughput aside): no row lost or repeated by a resume."""
    a, b = (pd.read_csv(run / "metrics.csv").drop(columns="img_s", errors="ignore") for run in (run_a, run_b))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b[a.columns])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder that has the repository's configs/ (runs resolve config includes from the cwd)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


# -- runs to serve (tailor serve) -----------------------------------------------------------------------------

PROBE_RUN_CONFIG = """
main.method = 'transfer'
main.num_epochs = 0
main.seed = 3
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/styles.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
TransferNet.image_size = 32
TransferNet.backbone = 'efficientnet_lite0'
make_trainer.progress = False
"""

#: the colour probe's setting is the one its 3-fold choice over the default grid makes on this table: the same
#: model file in a tenth of the time (the choice itself is tested on test_metric.py's triplet_run and in
#: test_probe.py)
SEARCH_RUN_CONFIG = """
main.method = 'metric'
main.num_epochs = 1
main.seed = 1
main.output_dir = '{out}'
FashionDataset.root_dir = '{root}'
FashionDataset.csv_file = '{root}/styles.csv'
evaluate/FashionDataset.csv_file = '{root}/styles.csv'
metric.image_size = 32
metric.batch_size = 12
metric.train_backbone = False
metric.val_fraction = 0.25
make_trainer.progress = False
Projection.dim = 16
Projection.hidden = 32
metric.colour_powers = [0.5]
metric.colour_weight_decays = [0.01]
"""


def _tiny_run(config: str, tiny_dataset: Path, work: Path, name: str) -> Path:
    (work / f"{name}.gin").write_text(config.format(root=tiny_dataset, out=work / "experiments"))
    result = run_tailor("run", "-c", str(work / f"{name}.gin"), "-p", f"main.name='{name}'", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "experiments" / name


@pytest.fixture(scope="session")
def probe_run(tiny_dataset, tmp_path_factory) -> Path:
    """A linear-probe classifier (Watches, Sunglasses, Tshirts) that categories can be enrolled into; tests
    that enroll copy it first."""
    return _tiny_run(PROBE_RUN_CONFIG, tiny_dataset, tmp_path_factory.mktemp("probe"), "probe")


@pytest.fixture(scope="session")
def search_run(tiny_dataset, tmp_path_factory) -> Path:
    """A metric-learning run with its catalog index (the tiny dataset's 36 products)."""
    return _tiny_run(SEARCH_RUN_CONFIG, tiny_dataset, tmp_path_factory.mktemp("search"), "search")


def sample_images(article_type: str, count: int, last: bool = False) -> list[Path]:
    """Full-size (224 px) sample photos of one category, by id order (``last``: from the end)."""
    styles = pd.read_csv(SAMPLE / "styles.csv")
    ids = styles[styles["articleType"] == article_type].sort_values("id")["id"].tolist()
    chosen = ids[-count:] if last else ids[:count]
    return [SAMPLE / "images" / f"{pid}.jpg" for pid in chosen]
