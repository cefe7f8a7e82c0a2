"""``tailor.fit``: a catalog in, a trained :class:`~tailor.api.model.Model` out, through the same recipes,
config files and run folder as ``tailor run``.

The catalogs are written into the run folder (``data/train.csv``, ``data/test.csv``: the run keeps what it was
trained and scored on), the recipe's settings become the bindings after its config file, and the run is
the one ``tailor run -c configs/<recipe>.gin -p …`` makes with the same bindings: same results, same files.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import gin
import pandas as pd

from tailor import configurables, experiment, run_folder
from tailor.api.model import Model
from tailor.api.settings import RecipeSettings, gin_literal, recipe_settings
from tailor.data.catalog import Catalog, CatalogError
from tailor.machine import keep_freed_memory_once
from tailor.names.taxonomy import CATEGORIES_FILE, write_categories

log = logging.getLogger(__name__)

def fit(catalog: Catalog, recipe: str | RecipeSettings = "transfer", *, test: Catalog | None = None,
        out: str | Path | None = None, device: str = "auto", seed: int = 0, progress: bool = True,
        resume: bool = True, **settings: Any) -> Model:
    """Train ``recipe`` on ``catalog`` and, when ``test`` is given, score it there; returns the trained model.

    ``recipe``: "transfer", "finetune" (from ``start_from=`` a model or run), "triplet", "protonet",
    "relation" or "attributes" — or a settings object (:class:`~tailor.api.settings.TransferSettings`…).
    ``settings``: the recipe's settings by name (``epochs=3``, ``backbone="efficientnet_lite0"``…), each
    defaulting to its config file's value. ``out``: the run folder (``None``: a temporary folder, kept until
    :meth:`Model.save`). ``resume``: an interrupted run in ``out`` with the same settings carries on from its
    last checkpoint; ``False`` starts it over. The few-shot recipes need ``test``: the catalog of novel
    categories their episodes are drawn from.

    gin's configuration is process-wide: ``fit`` replaces whatever was parsed before it, and leaves it empty.
    """
    keep_freed_memory_once()  # as the tailor command does: 2.2× faster inference here, a few hundred MB kept
    settings = _as_paths(settings)
    chosen = recipe.replace(**settings) if isinstance(recipe, RecipeSettings) else recipe_settings(recipe, **settings)
    for name, given in (("catalog", catalog), ("test", test)):
        if given is not None and not isinstance(given, Catalog):
            raise TypeError(f"{name} must be a tailor.Catalog (tailor.read_catalog or Catalog.from_frame), "
                            f"not {type(given).__name__}")
        if given is not None and given.root is None:
            raise CatalogError(f"{name}: its images' folder is not known; give root= when you make the catalog")
    if chosen.needs_test and test is None:
        raise ValueError(f"recipe {chosen.recipe!r} is scored on novel categories: pass test=<their catalog>")
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tailor-")) / chosen.recipe
    bindings = run_bindings(chosen, catalog, test, run_dir, device, seed, progress)
    try:
        configurables.parse([chosen.config_file], bindings)
        results = experiment.main(fresh=not resume)
    finally:
        gin.clear_config()  # the run's bindings end with it: nothing built later in this process sees them
    return Model(results["run_dir"], device=device, temporary=out is None)


def run_bindings(settings: RecipeSettings, catalog: Catalog, test: Catalog | None, run_dir: Path, device: str,
                 seed: int, progress: bool) -> list[str]:
    """The bindings of one run, after the recipe's config file: its settings, its data (written into the run
    folder here), where it runs and how it is named."""
    data = run_dir / run_folder.DATA
    data.mkdir(parents=True, exist_ok=True)
    lines = [*settings.bindings(), *table_bindings("", catalog.write_table(data / "train.csv"), catalog.root)]
    if test is not None:
        lines += table_bindings("evaluate/", test.write_table(data / "test.csv"), test.root)
    else:
        lines.append("evaluate/FashionDataset.csv_file = None")
    if settings.recipe in ("transfer", "finetune"):
        lines.append("evaluate.group = 'all'")  # a catalog from the API has no top_classes.txt beside it
        if getattr(settings, "names", False):
            frames = [catalog.frame] + ([test.frame] if test is not None else [])
            write_categories(pd.concat(frames, ignore_index=True), data / CATEGORIES_FILE)
    lines += [f"main.output_dir = {gin_literal(run_dir.parent.resolve())}",
              f"main.name = {gin_literal(run_dir.name)}",
              f"main.seed = {int(seed)}",
              f"runtime.device = {gin_literal(str(device))}",
              f"{settings.scope}.progress = {progress}",
              f"make_trainer.progress = {progress}"]
    return lines


def table_bindings(scope: str, table: str | Path | None, root: str | Path | None = None) -> list[str]:
    """The ``FashionDataset`` bindings (under ``scope``: "" for training, "evaluate/" for the test) that read
    ``table``: an ImageFolder tree, or a CSV whose image paths are relative to ``root`` (default: its folder).
    ``None``: no bindings. The one rule for ``tailor run --train/--test`` and :func:`fit`."""
    if table is None:
        return []
    table = Path(table).resolve()
    if table.is_dir():
        return [f"{scope}FashionDataset.root_dir = {gin_literal(table)}", f"{scope}FashionDataset.csv_file = None"]
    images = Path(root).resolve() if root is not None else table.parent
    lines = [f"{scope}FashionDataset.root_dir = {gin_literal(images)}",
             f"{scope}FashionDataset.csv_file = {gin_literal(table)}"]
    with open(table, encoding="utf-8", errors="replace") as handle:
        header = {h.strip().lstrip("\ufeff") for h in handle.readline().split(",")}
    if {"image", "label"} <= header:
        lines.append(f"{scope}FashionDataset.label_column = 'label'")  # its own labels, whatever the config says
    return lines


def _as_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that name a model may be given as a :class:`Model` or a path: a path is what a binding holds."""
    value = settings.get("start_from")
    if isinstance(value, Model):
        settings = {**settings, "start_from": str(value.model_file)}
    elif isinstance(value, Path):
        settings = {**settings, "start_from": str(value)}
    if settings.get("start_from") and Path(settings["start_from"]).is_dir():
        settings["start_from"] = str(Path(settings["start_from"]) / run_folder.MODEL)
    return settings
