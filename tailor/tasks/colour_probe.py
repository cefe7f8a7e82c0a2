"""Fitting a colour head: a linear probe on frozen network features beside the standardised foreground colour
descriptor, with the class prior and weight decay that cross-validate best on the training rows.

Both the multi-attribute model's colour head (``configs/attributes.gin``) and look-alike search's colour
vectors (``configs/triplet.gin``) are fitted this way.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from tailor.data.datasets import ImageDataset
from tailor.models.colour import ColourDescriptor
from tailor.distributed import Runtime
from tailor.models.features import run_model
from tailor.tasks.probe import choose_probe_settings, fit_linear_head

log = logging.getLogger(__name__)

#: class priors (0: every image weighs the same, 1: every class does) × weight decays tried by default
COLOUR_POWERS = (0.0, 0.5, 1.0)
COLOUR_WEIGHT_DECAYS = (0.01, 0.03, 0.1)


def colour_grid(powers: Sequence[float] = COLOUR_POWERS,
                weight_decays: Sequence[float] = COLOUR_WEIGHT_DECAYS) -> list[dict]:
    return [{"power": float(p), "weight_decay": float(w)} for p in powers for w in weight_decays]


def colour_descriptors(descriptor: ColourDescriptor, dataset: ImageDataset, progress: bool = True, *,
                       runtime: Runtime | None = None) -> torch.Tensor:
    """The raw colour descriptors of ``dataset``'s (model-transformed) images, on the CPU: one pass on
    ``runtime``'s device, shared across processes like every other pass
    (:func:`~tailor.models.features.run_model`)."""
    return run_model(descriptor, descriptor.raw, dataset, progress=progress, desc="colour descriptors",
                     runtime=runtime).cpu()


def fit_colour_head(features: torch.Tensor, raw_descriptors: torch.Tensor, targets: torch.Tensor,
                    num_classes: int, descriptor: ColourDescriptor, grid: Sequence[dict], seed: int = 0,
                    name: str = "colour", device: torch.device | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Standardise ``descriptor`` on ``raw_descriptors`` (every row, ``(N, W)``), then fit a head on the rows
    whose ``targets`` are known (≥ 0) over ``[features, descriptor]``; ``features``: ``(views, N, D)``;
    ``device``: where the probes are fitted.

    Returns ``(weight, bias, settings)`` with the chosen settings and the cross-validated top-1 of each.
    """
    descriptor.fit(raw_descriptors.cpu())
    standardised = descriptor.standardise(raw_descriptors.cpu())
    features = features if features.dim() == 3 else features[None]
    x = torch.cat([features.cpu().float(), standardised[None].expand(len(features), -1, -1)], dim=-1)
    known = targets >= 0
    x, y = x[:, known], targets[known]
    # choose on the views' mean (half the cost; the choice is the same kind of model), fit on every view
    chosen, scores = choose_probe_settings(x.mean(0), y, num_classes, list(grid), seed=seed, device=device)
    if scores:
        log.info("%s head: class prior %.2f, weight decay %g chosen by 3-fold cross-validation on the training "
                 "rows (held-out top-1 %.4f; grid %s)", name, chosen["power"], chosen["weight_decay"], max(scores),
                 ", ".join(f"{g['power']}/{g['weight_decay']}: {s:.3f}" for g, s in zip(grid, scores)))
    else:
        log.info("%s head: class prior %.2f, weight decay %g (the only candidates given)", name, chosen["power"],
                 chosen["weight_decay"])
    weight, bias = fit_linear_head(x, y, num_classes, **chosen, device=device)
    return weight, bias, {**chosen, "cv_top1": {f"{g['power']}/{g['weight_decay']}": round(s, 4)
                                                for g, s in zip(grid, scores)}}
