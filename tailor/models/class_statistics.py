"""Class statistics of features that several methods borrow: the per-class means and the pooled within-class
covariance (how products of one category vary around their category's mean, averaged over categories)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ClassStatistics(NamedTuple):
    """Float64 statistics over the classes present in some targets (sorted by label)."""

    means: torch.Tensor       # (C, D)
    covariance: torch.Tensor  # (D, D), pooled, divided by N − C: the unbiased estimate
    counts: torch.Tensor      # (C,)
    centred: torch.Tensor     # (N, D): each row minus its class's mean


def within_class_statistics(features: torch.Tensor, targets: torch.Tensor) -> ClassStatistics:
    """Per-class means and the pooled within-class covariance of ``features`` (N, D) labelled ``targets``."""
    x = features.double()
    classes, y = torch.unique(targets.long(), return_inverse=True)
    counts = torch.bincount(y, minlength=len(classes))
    means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts[:, None]
    centred = x - means[y]
    covariance = centred.T @ centred / max(len(x) - len(classes), 1)
    return ClassStatistics(means, covariance, counts, centred)
