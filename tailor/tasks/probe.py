"""Fitting a linear head on frozen features: the *linear probe*.

On its own it is a strong, fast baseline. Before fine-tuning it is the first half of LP-FT (Kumar et al.,
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"): a head that is
already good sends small gradients into the backbone, so fine-tuning keeps the pretrained features that
generalise across a distribution shift — here, from one year's catalog to another's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from tailor.tasks.calibration import calibrate


def balanced_weights(targets: torch.Tensor, num_classes: int, power: float) -> torch.Tensor:
    """Per-sample weights ``count(class) ** -power``, scaled to average 1."""
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).double()
    weights = counts[targets] ** -power
    return (weights / weights.mean()).float()


def fit_linear_head(features: torch.Tensor, targets: torch.Tensor, num_classes: int, power: float = 1.0,
                    weight_decay: float = 1e-4, max_iter: int = 200,
                    calibration: dict | None = None,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic, seconds on a CPU), on ``device``
    (a run passes its runtime's; default: the CPU), calibration included.

    ``features``: (views, N, D) or (N, D); every view of a row shares its target. ``power``: class balancing
    of the loss (1: every class weighs the same in total, 0: every image does). ``calibration``: settings of
    :func:`~tailor.tasks.calibration.calibrate`, to lend few-shot classes the spread of similar classes first.
    Returns ``(weight, bias)`` for an ``nn.Linear(D, num_classes)``, on the CPU.
    """
    device = torch.device("cpu") if device is None else device
    features, targets = features.to(device), targets.to(device)
    if calibration:
        features, targets = calibrate(features, targets, num_classes, calibration)
    if features.dim() == 3:
        views = features.shape[0]
        features = features.reshape(-1, features.shape[-1])
        targets = targets.repeat(views)
    x = features.double()
    y = targets.long()
    w = balanced_weights(y, num_classes, power).double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (F.cross_entropy(x @ weight.T + bias, y, reduction="none") * w).mean()
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().float().cpu(), bias.detach().float().cpu()


def fit_linear_heads(features: torch.Tensor, targets: torch.Tensor, num_classes: int, widths: Sequence[int],
                     **settings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`fit_linear_head` on consecutive slices of the features, ``widths`` wide: one head per member of an
    ensemble, each on its own backbone's features (one slice for a single backbone). ``settings``: as there."""
    if sum(widths) != features.shape[-1]:
        raise ValueError(f"features of width {features.shape[-1]} do not split into heads of widths {list(widths)}")
    return [fit_linear_head(part, targets, num_classes, **settings)
            for part in features.split(list(widths), dim=-1)]


def choose_probe_settings(features: torch.Tensor, targets: torch.Tensor, num_classes: int,
                          grid: Sequence[dict], folds: int = 3, seed: int = 0,
                          device: torch.device | None = None) -> tuple[dict, list[float]]:
    """The settings of :func:`fit_linear_head` (one dict of ``grid``) whose probe names the held-out rows best
    in ``folds``-fold cross-validation on the training rows themselves — so a choice such as the class prior
    is measured on the training years, never on the test split.

    ``features``: (views, N, D) or (N, D); ``device``: where the probes are fitted. Returns the chosen settings
    and each setting's mean held-out top-1 — with one candidate, that candidate and no scores (nothing to
    choose between: the ``folds`` fits are not made).
    """
    if len(grid) == 1:
        return dict(grid[0]), []
    features = features if features.dim() == 3 else features[None]
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(folds)
    scores = []
    for settings in grid:
        correct = 0
        for held in parts:
            train = torch.ones(len(targets), dtype=torch.bool)
            train[held] = False
            weight, bias = fit_linear_head(features[:, train], targets[train], num_classes, **settings,
                                           device=device)
            logits = (features[:, held] @ weight.T + bias).mean(0)
            correct += int((logits.argmax(1) == targets[held]).sum())
        scores.append(correct / len(targets))
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    return dict(grid[best]), scores
