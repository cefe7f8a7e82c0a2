"""The run folder: every file a run writes, named here once.

``tailor run``, :func:`tailor.fit` and the commands that read a run (predict, enroll, similar, export, serve,
audit, report) all find its files through these names, so a file is renamed, or a new one added, in one place.

::

    experiments/<name>/
      config.gin, operative_config.gin   the bindings asked for, then the ones used
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
from dataclasses import dataclass
from pathlib import Path

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

    def __truediv__(self, name: str) -> Path:
        return self.path / name
