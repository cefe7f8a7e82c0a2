"""What a run or an evaluation measured, as Python: the numbers of ``results.json`` as attributes and its
tables as pandas dataframes, with the folder that holds the plots beside them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from tailor.evaluation.artifacts import PREDICTIONS_FILE


class Results(Mapping[str, Any]):
    """``results.json`` of a run (or of :meth:`tailor.Model.evaluate`), read-only: ``results["top1"]`` and
    ``results.top1`` alike; the per-class table, the confusion matrix and the few-shot table as dataframes.
    ``folder``: where its files are (``per_class.md``, ``confusion.png``, ``report.html``…)."""

    def __init__(self, data: dict, folder: str | Path):
        self._data = dict(data)
        self.folder = Path(folder)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"these results have no {name!r}; they hold: {', '.join(self._data)}") from None

    @property
    def per_class(self) -> pd.DataFrame:
        """One row per category: support, top-1, top-5, training images, whether the model knows it."""
        if "per_class" not in self._data:
            raise AttributeError("these results have no per-class table (not a classification run)")
        return pd.DataFrame(self._data["per_class"]).set_index("class")

    @property
    def predictions(self) -> pd.DataFrame:
        """Each test image's label, predicted category and its probability."""
        path = self.folder / PREDICTIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no per-image predictions here")
        return pd.read_csv(path, dtype={"label": str, "predicted": str}, keep_default_na=False)

    @property
    def confusion(self) -> pd.DataFrame:
        """Counts of (true category → predicted category) on the test images: rows true, columns predicted."""
        table = self.predictions
        return pd.crosstab(table["label"], table["predicted"], rownames=["true"], colnames=["predicted"])

    @property
    def attributes(self) -> pd.DataFrame:
        """A multi-attribute run: one row per attribute (classes, top-1, top-5, test images)."""
        heads = self._data.get("attribute_results")
        if heads is None:
            raise AttributeError("these results have no attributes (not a multi-attribute run)")
        return pd.DataFrame([{"attribute": a, "classes": r["classes"], "top1": r["top1"], "top5": r["top5"],
                              "num_test": r["num_test"]} for a, r in heads.items()]).set_index("attribute")

    @property
    def fewshot(self) -> pd.DataFrame:
        """A few-shot run: accuracy with its 95 % confidence interval per scorer and shot count."""
        table = self._data.get("fewshot")
        if table is None:
            raise AttributeError("these results have no few-shot table (not a few-shot run)")
        return fewshot_frame(table)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._data.items() if isinstance(v, (int, float, str)) and k != "name"}
        text = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v!r}" for k, v in list(shown.items())[:8])
        return f"Results({text}, folder={str(self.folder)!r})"


def fewshot_frame(table: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``results["fewshot"]`` (setting → accuracy, ci95, episodes, classes) as a dataframe, one row a setting
    ("5-way 1-shot (cl2n)"), with its ways, shots and scorer in columns of their own."""
    rows = []
    for name, values in table.items():
        parsed = _SETTING.fullmatch(name)
        parts = ({"ways": int(parsed[1]), "shots": int(parsed[2]), "scorer": parsed[3]} if parsed else {})
        rows.append({"setting": name, **parts, **values})
    return pd.DataFrame(rows).set_index("setting")


_SETTING = re.compile(r"(\d+)-way (\d+)-shot \((.+)\)")
