"""Products listed twice: pairs of catalog photos whose frozen network features are all but the same
(cosine at least ``threshold`` between centred, unit-length features — a re-upload, a copy under a new id,
or the same product photographed again).

Up to ``search.ann.exact_below`` products every product is compared with every other; above it each product's
nearest candidates come from an approximate index (:mod:`tailor.search.ann`) and are re-scored exactly, so a
catalog of a million products is audited in minutes instead of N² time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tailor.search.ann import AnnSettings, ApproximateIndex, rescored_nearest
from tailor.search.exact import exact_neighbours

#: cosine of centred features above which two photos count as the same product photographed or listed twice
DUPLICATE_COSINE = 0.95


def near_duplicates(features: torch.Tensor, threshold: float = DUPLICATE_COSINE, neighbours: int = 5,
                    settings: AnnSettings | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` with ``i < j`` for every pair above ``threshold`` among each row's ``neighbours``
    nearest rows, most similar first (``features``: ``(N, D)`` or ``(views, N, D)``, views averaged);
    ``settings``: when and how the nearest rows come from an approximate index."""
    features = features.float().mean(0) if features.dim() == 3 else features.float()
    unit = F.normalize(features - features.mean(0), dim=1)
    settings = settings or AnnSettings()
    if settings.approximates(len(unit)):
        similarity, index = _approximate_neighbours(unit, neighbours + 1, settings)
    else:
        similarity, index = exact_neighbours(unit, unit, min(neighbours + 1, len(unit)))
    pairs = {}
    for i, (sims, rows) in enumerate(zip(similarity.tolist(), index.tolist())):
        for s, j in zip(sims, rows):
            if j != i and s >= threshold:
                pairs[(min(i, j), max(i, j))] = min(1.0, s)
    return sorted(((i, j, s) for (i, j), s in pairs.items()), key=lambda p: -p[2])


def _approximate_neighbours(unit: torch.Tensor, k: int, settings: AnnSettings,
                            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` nearest rows (itself included): an approximate index's candidates, re-scored exactly."""
    index = ApproximateIndex.build(unit.numpy(), None, settings)
    fetch = settings.fetch // 10  # a copy is among the very nearest: a short list suffices
    found = [rescored_nearest(index, unit[start:start + chunk], unit, k, fetch)
             for start in range(0, len(unit), chunk)]
    return torch.cat([cosines for _, cosines in found]), torch.cat([rows for rows, _ in found])
