"""Giving a metric-learning run's model and index their colours: a colour probe fitted on the training
products' colour column (``baseColour``), and every indexed product's colour vector and catalog attributes.

Kept apart from the recipe: the recipe trains and scores the category embedding; this step only adds what
look-alike search (:mod:`tailor.search.lookalike`) ranks by beside it.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from tailor.data.attributes import STYLES_ATTRIBUTES, attribute_targets, head_classes
from tailor.distributed import Runtime
from tailor.data.datasets import ImageDataset
from tailor.models.colour import ColourProbe
from tailor.models.embedding import EmbeddingNet
from tailor.tasks.colour_probe import colour_descriptors, colour_grid, fit_colour_head

log = logging.getLogger(__name__)

#: catalog columns an index keeps for ``tailor similar --filter``
FILTER_COLUMNS = (*STYLES_ATTRIBUTES, "year")


def fit_colour(model: EmbeddingNet, train: ImageDataset, features: torch.Tensor, column: str, seed: int,
               progress: bool = True, grid: Sequence[dict] | None = None, *,
               runtime: Runtime | None = None) -> dict | None:
    """Add a colour probe to ``model``, fitted on ``train``'s ``column`` over its backbone ``features``
    (``(views, N, D)``), on ``runtime``'s device, with the settings of ``grid`` (default:
    :func:`~tailor.tasks.colour_probe.colour_grid`) that cross-validate best. Returns what was fitted, or None
    when the table has no such column with two values."""
    if column not in train.frame.columns:
        log.info("no %r column in the training table: look-alike search ranks without colour", column)
        return None
    classes = head_classes(train.frame, [column]).get(column, [])
    if len(classes) < 2:
        return None
    targets = torch.as_tensor(attribute_targets(train.frame, {column: classes})[:, 0])
    probe = model.add_colour(classes)
    raw = colour_descriptors(probe.descriptor, train, progress, runtime=runtime)
    weight, bias, chosen = fit_colour_head(features, raw, targets, len(classes), probe.descriptor,
                                           list(grid or colour_grid()), seed, name=column,
                                           device=runtime.device if runtime else None)
    with torch.no_grad():
        probe.linear.weight.copy_(weight)
        probe.linear.bias.copy_(bias)
    probe.eval()
    return {"column": column, "classes": len(classes), **chosen}


@torch.no_grad()
def colour_vectors(probe: ColourProbe, features: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Unit colour vectors ``(N, C)``, on the CPU, from backbone ``features`` (``(views, N, D)``, averaged over
    views) and raw descriptors — the same rule :meth:`ProductSearch.embed_batch` applies to a query. Computed
    where the probe is (the run's device)."""
    device = probe.linear.weight.device
    standardised = probe.descriptor.standardise(raw.to(device))
    features = features if features.dim() == 3 else features[None]
    vectors = torch.stack([probe.vectors(view.to(device).float(), standardised) for view in features]).mean(0)
    return torch.nn.functional.normalize(vectors, dim=-1).cpu()


def product_attributes(dataset: ImageDataset) -> dict[str, list[str]]:
    """The catalog columns of ``dataset``'s table that filters can use, as strings ("" where missing)."""
    frame = dataset.frame
    return {c: frame[c].fillna("").astype(str).str.strip().tolist() for c in FILTER_COLUMNS if c in frame.columns}
