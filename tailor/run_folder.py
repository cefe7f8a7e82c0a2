"""The run folder: every file a run writes, named here once.

``tailor run``, :func:`tailor.fit` and the commands that read a run (predict, enroll, similar, export, serve,
audit, report) all find its files through these names, so a file is renamed, or a new one added, in one place.

::

    experiments/<name>/
      config.gin, operative_config.gin   the bindings asked for, then the ones used
      sources.json                        the training and test tables and image roots it was given
      results.json                        every number the run measured
      model.pt | fewshot_net.pt           the trained network (weights-only)
      probe_features.pt, enrolled.pt      what enrolling refits with, and the categories enrolled since
      index.pt                            a metric run's catalog index: a small manifest naming the files below
      index-<token>.embeddings.npy        its embeddings (fp16, memory-mapped), and colour vectors (.colours.npy)
      index-<token>.arrow                 its per-product columns: id, category, image, root, attributes (Arrow IPC)
      index-<token>.faiss                 its approximate index (catalogs above search.ann.exact_below)
      per_class.md/.csv, confusion.png, predictions.csv, mistakes.csv, curves.png, metrics.csv, report.html
      checkpoints/last.ckpt, best.ckpt    for resuming, and the best epoch
      data/train.csv, data/test.csv       the tables a run made from Python was given
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tailor.files import write_json
from tailor.paths import SAMPLE_ROOT

CONFIG = "config.gin"
OPERATIVE_CONFIG = "operative_config.gin"
RESULTS = "results.json"
MODEL = "model.pt"
FEWSHOT_NET = "fewshot_net.pt"
PROBE_FEATURES = "probe_features.pt"
ENROLLED = "enrolled.pt"
INDEX = "index.pt"
INDEX_ANN = "index-{}.faiss"  # an approximate index beside it (a new name per write: index.pt names the one in use)
INDEX_EMBEDDINGS = "index-{}.embeddings.npy"  # the index's embeddings, named by index.pt as its other files are
INDEX_COLOURS = "index-{}.colours.npy"  # its colour vectors (a model with a colour probe)
INDEX_COLUMNS = "index-{}.arrow"  # its per-product columns
INDEX_LOCK = ".index.lock"  # held while the catalog index changes (tailor index add / remove)
PER_CLASS_MD = "per_class.md"
PER_CLASS_CSV = "per_class.csv"
CONFUSION = "confusion.png"
PREDICTIONS = "predictions.csv"
MISTAKES = "mistakes.csv"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
DATA = "data"
AUDIT = "audit"
SOURCES = "sources.json"  # the tables a run was given, resolved when it started (audit and export read them)


@dataclass(frozen=True)
class DataSource:
    """Where a run's images are: a table (``None``: an ImageFolder tree at ``root``), the folder its image
    paths are relative to, and the column it labels by (``None``: the table's own default)."""

    csv_file: Path | None
    root: Path
    label_column: str | None = None

    def as_dict(self) -> dict:
        return {"csv_file": str(self.csv_file) if self.csv_file else None, "root": str(self.root),
                "label_column": self.label_column}

    @classmethod
    def from_dict(cls, saved: dict) -> "DataSource":
        return cls(Path(saved["csv_file"]) if saved.get("csv_file") else None, Path(saved["root"]),
                   saved.get("label_column"))


@dataclass(frozen=True)
class RunFolder:
    """One run's folder and the paths of its files."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def last_checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / LAST_CHECKPOINT

    def results(self) -> dict:
        """``results.json`` (empty when the run has not written it)."""
        return json.loads(self.results_file.read_text()) if self.results_file.is_file() else {}

    def write_sources(self, train: DataSource | None, test: DataSource | None) -> None:
        """Record the tables the run was given (absolute paths: a later command may start elsewhere)."""
        write_json(self.path / SOURCES, {"train": train.as_dict() if train else None,
                                         "test": test.as_dict() if test else None})

    def training_source(self) -> DataSource | None:
        """The training table and image root the run was given (None: it trained on none, e.g. it only
        evaluated a model)."""
        saved = self._sources()
        if saved is not None:
            return DataSource.from_dict(saved["train"]) if saved.get("train") else None
        return _training_source_in_config(self.config)

    def test_source(self) -> DataSource | None:
        """The test table and image root the run was evaluated on (None: none)."""
        saved = self._sources()
        if saved is not None:
            return DataSource.from_dict(saved["test"]) if saved.get("test") else None
        results = self.results()  # a run made before sources.json: what its results say
        if not results.get("test_csv") or not results.get("data_root"):
            return None
        return DataSource(Path(results["test_csv"]), Path(results["data_root"]))

    def _sources(self) -> dict | None:
        file = self.path / SOURCES
        return json.loads(file.read_text()) if file.is_file() else None

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _training_source_in_config(config: Path) -> DataSource | None:
    """A run made before ``sources.json``: the plain ``FashionDataset`` bindings of its ``config.gin`` (paths
    relative to where it was started), when it names a training table."""
    if not config.is_file():
        return None
    bound = dict(re.findall(r"^FashionDataset\.(csv_file|root_dir|label_column)\s*=\s*['\"](.+?)['\"]\s*(?:#.*)?$",
                            config.read_text(), flags=re.M))
    if "csv_file" not in bound:
        return None
    return DataSource(Path(bound["csv_file"]), Path(bound.get("root_dir", SAMPLE_ROOT)), bound.get("label_column"))
