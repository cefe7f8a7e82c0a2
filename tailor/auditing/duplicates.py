"""Products listed twice: pairs of catalog photos whose frozen network features are all but the same
(cosine at least ``threshold`` between centred, unit-length features — a re-upload, a copy under a new id,
or the same product photographed again)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tailor.search.exact import exact_neighbours

#: cosine of centred features above which two photos count as the same product photographed or listed twice
DUPLICATE_COSINE = 0.95


def near_duplicates(features: torch.Tensor, threshold: float = DUPLICATE_COSINE,
                    neighbours: int = 5) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` with ``i < j`` for every pair above ``threshold`` among each row's ``neighbours``
    nearest rows, most similar first (``features``: ``(N, D)`` or ``(views, N, D)``, views averaged)."""
    features = features.float().mean(0) if features.dim() == 3 else features.float()
    unit = F.normalize(features - features.mean(0), dim=1)
    similarity, index = exact_neighbours(unit, unit, min(neighbours + 1, len(unit)))
    pairs = {}
    for i, (sims, rows) in enumerate(zip(similarity.tolist(), index.tolist())):
        for s, j in zip(sims, rows):
            if j != i and s >= threshold:
                pairs[(min(i, j), max(i, j))] = min(1.0, s)
    return sorted(((i, j, s) for (i, j), s in pairs.items()), key=lambda p: -p[2])
