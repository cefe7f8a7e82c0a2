"""``metrics.csv`` that survives an interruption.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it opens the run folder again, so a resumed
run used to keep only what it logged after the restart: the curves lost their first epochs. This logger
writes the earlier rows back, drops those past the checkpoint the run resumed from (they are logged again),
and flushes at every checkpoint so that what a checkpoint covers is also on disk.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger writing ``run_dir/metrics.csv`` that keeps the rows of an interrupted earlier run."""

    def __init__(self, run_dir: str | Path):
        super().__init__(run_dir, name="", version="")
        self._earlier = _read_rows(Path(self.log_dir) / "metrics.csv")
        self._trim_pending = bool(self._earlier)

    @property
    @rank_zero_experiment
    def experiment(self):
        fresh = self._experiment is None
        writer = CSVLogger.experiment.fget(self)  # deletes an existing metrics.csv
        if fresh and self._earlier:
            writer.metrics = list(self._earlier)
            writer.save()
        return writer

    @rank_zero_only
    def save(self) -> None:
        writer = self.experiment
        if self._trim_pending and writer.metrics:
            # the first rows of the resumed run: earlier rows from this step on were logged after the checkpoint
            first = min(int(float(row["step"])) for row in writer.metrics if "step" in row)
            kept = [row for row in self._earlier if int(float(row.get("step") or 0)) < first]
            if len(kept) < len(self._earlier):
                Path(writer.metrics_file_path).unlink(missing_ok=True)
                writer.metrics, writer.metrics_keys = kept + writer.metrics, []
            self._trim_pending = False
        super().save()

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
