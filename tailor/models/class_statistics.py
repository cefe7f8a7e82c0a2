"""Class statistics of features that several methods borrow: the per-class means and the pooled within-class
covariance (how products of one category vary around their category's mean, averaged over categories)."""

from __future__ import annotations

import torch


def within_class_statistics(features: torch.Tensor, targets: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(class_means (C, D), pooled covariance (D, D), counts (C,))`` in float64, over the classes present in
    ``targets`` (sorted by label). The covariance divides by N − C, the unbiased pooled estimate."""
    x = features.double()
    classes, y = torch.unique(targets.long(), return_inverse=True)
    counts = torch.bincount(y, minlength=len(classes))
    class_means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts[:, None]
    centred = x - class_means[y]
    covariance = centred.T @ centred / max(len(x) - len(classes), 1)
    return class_means, covariance, counts
