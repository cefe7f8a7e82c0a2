"""Name-only classes in a classification run: which categories, with what knowledge, attached how.

``names.enabled = True`` (on in ``configs/finetune.gin``) adds every category of the catalog's category list
(``categories.csv`` beside the training table, written by ``tailor splits``) that belongs to the evaluated group
(``evaluate.group``: the top-N, the others, or all) and has no training image. The run's classifier then ranks
them beside its trained categories (:class:`~tailor.names.head.NameHead`), in every path that runs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from tailor import distributed
from tailor.errors import ConfigError
from tailor.models.files import PROBE_FEATURES, load_model_file
from tailor.names.fit import Knowledge, NameSettings, ProbeFit, build_name_head, choose_balance
from tailor.names.head import NameHead
from tailor.names.taxonomy import TaxonomyError, catalog_taxonomy, categories_beside, read_categories

log = logging.getLogger(__name__)


def name_settings(enabled: bool = False, categories: str = "auto", gamma: float = 1e4, lam: float = 1.0,
                  top: int = 10, folds: int = 3, use_start_run: bool = True, seed: int = 0,
                  max_seen_loss: float = 0.02) -> dict:
    """Bound as ``names`` by the front-ends (:mod:`tailor.run_inputs`). ``enabled``: add name-only classes.
    ``categories``: the category list ("auto": ``categories.csv`` or ``classes.txt`` beside the training table). ``gamma``/``lam``/``top``/``folds``: :class:`NameSettings`.
    ``max_seen_loss``: how much held-out top-1 the trained categories may lose to the names (the balance's
    rule, :mod:`tailor.names.fit`). ``use_start_run``: also fit the name map on the kept features of the run a fine-tuning starts from (its
    top-20 categories), when the backbone is unchanged (a probe-only run)."""
    return {"enabled": enabled, "categories": categories, "use_start_run": use_start_run,
            "fit": NameSettings(gamma=gamma, lam=lam, top=top, folds=folds, seed=seed, max_seen_loss=max_seen_loss)}


def name_only_categories(train_csv: str | Path, trained: Sequence[str], group: str,
                         categories: str = "auto") -> tuple[list[str], dict[str, tuple[str, ...]], Path]:
    """The categories to carry by name (sorted), the taxonomy of the list, and the list's path."""
    path = categories_beside(train_csv) if categories == "auto" else Path(categories)
    if path is None:
        raise ConfigError(f"names.enabled: no categories.csv or classes.txt beside {train_csv} (run tailor splits, "
                          f"or bind names.categories = 'path/to/categories.csv')")
    try:
        listed = read_categories(path)
    except TaxonomyError as err:
        raise ConfigError(f"names.categories: {err}") from None
    names = set(listed) - set(trained)
    if group in ("top", "other"):
        top_file = Path(path).parent / "top_classes.txt"
        if not top_file.is_file():
            raise ConfigError(f"names for evaluate.group = '{group}' need {top_file} (written by tailor splits)")
        top = {line.strip() for line in top_file.read_text(encoding="utf-8").splitlines() if line.strip()}
        names = {n for n in names if (n in top) == (group == "top")}
    return sorted(names), listed, Path(path)


def start_run_features(start: str | Path | None, num_epochs: int,
                       width: int) -> tuple[torch.Tensor, list[str]] | None:
    """The kept training features of the run whose model ``start`` is (``TransferNet.saved_model_path``), when
    this run keeps its backbone (no fine-tuning epochs) and their width matches: more categories to fit the
    name map on."""
    if num_epochs or not start:
        return None
    path = Path(start).parent / PROBE_FEATURES
    if not path.is_file():
        return None
    stored = load_model_file(path)
    features = stored["features"].float()
    if features.shape[-1] != width:
        return None
    return features, [stored["classes"][int(t)] for t in stored["targets"]]


def attach_name_only(model: torch.nn.Module, frame: pd.DataFrame, features: torch.Tensor, targets: torch.Tensor,
                     train_csv: str | Path, group: str, num_epochs: int, fit_probe: ProbeFit,
                     settings: dict, start_model: str | Path | None = None,
                     runtime: distributed.Runtime | None = None) -> dict:
    """Choose the balance, fit the :class:`NameHead` on the run's training features and attach it to ``model``.
    Rank 0 of ``runtime`` fits; every rank gets the same head. Returns what results.json records under
    ``names``."""
    trained = list(model.image_classes)
    name_only, listed, path = name_only_categories(train_csv, trained, group, settings["categories"])
    if not name_only:
        log.info("names: every category of %s in group '%s' has training images; none to add", path, group)
        return {"name_only_classes": 0, "categories": str(path)}
    taxonomy = {**listed, **{k: v for k, v in catalog_taxonomy(frame).items() if v}}
    widths = [h.in_features for h in model.linear_heads()]
    extra = start_run_features(start_model, num_epochs, features.shape[-1]) if settings["use_start_run"] else None
    ranks = runtime or distributed.Runtime.local()
    state, facts = None, None
    if ranks.is_zero:
        backbones = model.backbone_name if isinstance(model.backbone_name, list) else [model.backbone_name]
        knowledge = Knowledge.for_backbones(backbones)
        fit: NameSettings = settings["fit"]
        choice = choose_balance(features, targets, trained, name_only, taxonomy, widths, knowledge, fit_probe,
                                fit, extra)
        head = build_name_head(features, targets, trained, name_only, taxonomy, widths, knowledge, fit, extra,
                               scale=choice.scale, shift=choice.shift)
        state = head.state()
        facts = {"name_only_classes": len(name_only), "categories": str(path),
                 "map_categories": len(set(trained) | set(extra[1] if extra else [])),
                 "start_run_images": len(extra[1]) if extra else 0, "balance": choice.as_dict()}
    state, facts = ranks.broadcast((state, facts))
    model.attach_names(NameHead.from_state(state).to(next(model.parameters()).device))
    log.info("names: %d categories with no training image carried by name (%s)", len(name_only), path)
    return facts
