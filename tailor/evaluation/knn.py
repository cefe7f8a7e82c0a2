"""k-nearest-neighbour classification of embeddings: the seed's classifier for its triplet-loss embedding.

Neighbours come from :func:`tailor.search.exact_neighbours` (exact cosine similarity on unit vectors, so the
ranking is the seed's L2 ranking). Each neighbour votes for its class with a weight; the votes, normalised,
are scores like a classifier's, so top-1, top-5 and the per-class table come from the same code.
"""

from __future__ import annotations

import numpy as np
import torch

from tailor.search import exact_neighbours

#: neighbour weight as a function of cosine similarity (and a temperature)
WEIGHTINGS = ("uniform", "distance", "softmax")


def knn_scores(reference: torch.Tensor, reference_targets: np.ndarray | torch.Tensor, queries: torch.Tensor,
               num_classes: int, k: int = 5, weighting: str = "softmax", temperature: float = 0.1,
               exclude_self: bool = False, leave_out: np.ndarray | None = None) -> np.ndarray:
    """Class scores ``(M, num_classes)`` of ``queries`` from their ``k`` nearest ``reference`` embeddings.

    ``weighting``: "uniform" (one vote each), "distance" (``1 / L2 distance``) or "softmax"
    (``exp(similarity / temperature)``, which lets a clearly closest neighbour outvote far ones).
    ``exclude_self``: queries are the reference itself (leave-one-out); each row's own entry is skipped.
    ``leave_out``: for each query, the reference row it must not count (the same product), -1 for none.
    Computed on the device the embeddings are on (the run's device, :mod:`tailor.runtime`).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown kNN weighting {weighting!r}: one of {WEIGHTINGS}")
    device = queries.device
    reference = reference.to(device)
    targets = torch.as_tensor(np.asarray(reference_targets), dtype=torch.long, device=device)
    if exclude_self:
        leave_out = np.arange(len(queries))
    spare = int(leave_out is not None)
    k = min(k, len(reference) - spare)
    if k < 1:
        raise ValueError("kNN needs at least one reference embedding")
    similarity, index = exact_neighbours(queries, reference, k + spare)
    if leave_out is not None:
        own = torch.as_tensor(np.asarray(leave_out), device=index.device)
        similarity, index = _drop_own(similarity, index, own)
    if weighting == "uniform":
        weights = torch.ones_like(similarity)
    elif weighting == "distance":
        weights = 1.0 / (2.0 - 2.0 * similarity).clamp_min(1e-12).sqrt()
    else:
        weights = torch.softmax(similarity / temperature, dim=1)
    votes = torch.zeros(len(queries), num_classes, device=device)
    neighbour_targets = targets[index]
    known = neighbour_targets >= 0
    votes.scatter_add_(1, neighbour_targets.clamp_min(0), weights * known)
    return (votes / votes.sum(1, keepdim=True).clamp_min(1e-12)).cpu().numpy()


def _drop_own(similarity: torch.Tensor, index: torch.Tensor,
              own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row without the reference row ``own[row]`` (-1: none): the first k that are not it (the last
    column goes when it is absent)."""
    is_own = index == own[:, None]
    order = torch.argsort(is_own.to(torch.int8), dim=1, stable=True)[:, :-1]
    return similarity.gather(1, order), index.gather(1, order)
