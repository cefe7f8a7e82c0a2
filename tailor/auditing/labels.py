"""Labels that look wrong: confident learning (Northcutt et al., 2021, through the ``cleanlab`` library) on
out-of-fold predicted probabilities.

Every product's probabilities come from a linear probe that never saw it (k-fold over frozen network
features), so a wrong label cannot be memorised; cleanlab then estimates how often each class is mistaken
for each other and flags the products whose given label is least likely. Ranked by the label's
self-confidence: the probability the held-out probe gives the given label, lowest first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from tailor.tasks.probe import fit_linear_head

log = logging.getLogger(__name__)


@dataclass
class LabelAudit:
    """Per product: the held-out probabilities, the given label's quality, and cleanlab's flag."""

    probabilities: np.ndarray  # (N, C), out of fold
    quality: np.ndarray        # (N,), the given label's self-confidence, in [0, 1]
    flagged: np.ndarray        # (N,), bool: cleanlab finds the label an issue

    def ranking(self) -> np.ndarray:
        """Products most suspicious first: flagged ones, then by rising label quality."""
        return np.lexsort((self.quality, ~self.flagged))


def out_of_fold_probabilities(features: torch.Tensor, targets: torch.Tensor, num_classes: int, folds: int = 5,
                              seed: int = 0, weight_decay: float = 1e-3, power: float = 0.0,
                              device: torch.device | None = None) -> np.ndarray:
    """``(N, num_classes)`` probabilities of each row from a logistic regression fitted on the other folds
    (``features``: ``(N, D)`` or ``(views, N, D)``, averaged over views for scoring), fitted on ``device``."""
    features = features if features.dim() == 3 else features[None]
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    probabilities = np.zeros((len(targets), num_classes), dtype=np.float64)
    for held in order.chunk(folds):
        train = torch.ones(len(targets), dtype=torch.bool)
        train[held] = False
        weight, bias = fit_linear_head(features[:, train], targets[train], num_classes, power=power,
                                       weight_decay=weight_decay, device=device)
        logits = (features[:, held].float() @ weight.T + bias).mean(0)
        probabilities[held.numpy()] = torch.softmax(logits.double(), dim=1).numpy()
    return probabilities


def check_audit_size(products: int, folds: int) -> None:
    """Refuse a table too small for ``folds``-fold held-out probabilities (before any image is decoded)."""
    if products < 2 * folds:
        raise ValueError(f"an audit of labels needs at least {2 * folds} products for {folds} folds, got {products}")


def audit_labels(features: torch.Tensor, targets: np.ndarray, num_classes: int, folds: int = 5,
                 seed: int = 0, device: torch.device | None = None) -> LabelAudit:
    """Confident learning on out-of-fold probabilities of ``features`` for the given ``targets`` (the probes
    fitted on ``device``, default the CPU)."""
    check_audit_size(len(targets), folds)
    probabilities = out_of_fold_probabilities(features, torch.as_tensor(targets), num_classes, folds, seed,
                                              device=device)
    quality = get_label_quality_scores(targets, probabilities, method="self_confidence")
    flagged = np.zeros(len(targets), dtype=bool)
    flagged[find_label_issues(targets, probabilities, return_indices_ranked_by="self_confidence")] = True
    log.info("%d of %d labels look wrong (confident learning on %d-fold held-out probabilities)",
             int(flagged.sum()), len(targets), folds)
    return LabelAudit(probabilities, quality, flagged)
