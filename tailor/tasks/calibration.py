"""Distribution calibration of classes with few training images (Yang, Liu & Xu, ICLR 2021, "Free Lunch for
Few-shot Learning: Distribution Calibration").

A linear probe fitted to a class seen once puts that class's region tightly around one point, so its other
products land in neighbouring classes: on the bundled sample, 42 of the 47 test Kurtas (one training image)
were taken for T-shirts, tops and shirts. Calibration lends such a class the spread of the well-populated classes
it resembles. Each of its examples becomes the centre of a Gaussian whose mean is pulled toward the nearest
well-populated classes' means and whose covariance is theirs. Samples from it join the probe's training set. No
network is trained; the probe and `tailor enroll` both use it.
"""

from __future__ import annotations

import logging

import gin
import torch

log = logging.getLogger(__name__)


@gin.configurable("calibration")
def calibration_settings(max_shots: int = 5, min_base: int = 15, neighbours: int = 2, alpha: float = 0.21,
                         samples: int = 300, seed: int = 0) -> dict:
    """The settings of :func:`calibrate`, as a plain dict that is stored with a run, so that enrolling later
    calibrates exactly as training did.

    ``max_shots``: classes with at most this many training images are calibrated. ``min_base``: classes with
    at least this many lend their statistics. ``neighbours``, ``alpha``: the paper's k and covariance
    regulariser (its defaults). ``samples``: Gaussian samples drawn per example.
    """
    if min_base <= max_shots:
        raise ValueError(f"calibration.min_base ({min_base}) must exceed calibration.max_shots ({max_shots}): "
                         f"a class cannot both lend its statistics and borrow them")
    return {"max_shots": max_shots, "min_base": min_base, "neighbours": neighbours, "alpha": alpha,
            "samples": samples, "seed": seed}


def calibrate(features: torch.Tensor, targets: torch.Tensor, num_classes: int,
              settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's training set with calibrated samples added for the few-shot classes.

    ``features``: (views, N, D) or (N, D); every view of a row shares its target. Returns ``(features (M, D),
    targets (M,))``: every original view first, then the samples. Without enough well-populated classes to
    borrow from, the original set is returned unchanged.
    """
    if features.dim() == 2:
        features = features.unsqueeze(0)
    views = features.shape[0]
    flat = features.reshape(-1, features.shape[-1]).double()
    flat_targets = targets.long().repeat(views)
    counts = torch.bincount(targets.long(), minlength=num_classes)
    base = [c for c in range(num_classes) if counts[c] >= settings["min_base"]]
    few = torch.nonzero(counts[targets.long()] <= settings["max_shots"]).flatten()
    k = settings["neighbours"]
    if len(few) == 0 or len(base) < k:
        if len(few):
            log.warning("not calibrating %d few-shot example(s): %d class(es) have %d+ images, %d needed",
                        len(few), len(base), settings["min_base"], k)
        return flat.float(), flat_targets
    means = torch.stack([flat[flat_targets == c].mean(0) for c in base])
    factors: dict[tuple[int, ...], torch.Tensor] = {}
    generator = torch.Generator().manual_seed(settings["seed"])
    new_features, new_targets = [flat], [flat_targets]
    examples = features[0, few].double()  # the unmirrored view
    ranked = torch.cdist(examples, means, compute_mode="donot_use_mm_for_euclid_dist").argsort(dim=1)[:, :k]
    for i, example, row in zip(few.tolist(), examples, ranked.tolist()):
        nearest = tuple(sorted(row))
        if nearest not in factors:
            covariance = sum(torch.cov(flat[flat_targets == base[j]].T) for j in nearest) / k
            covariance += settings["alpha"] * torch.eye(len(example), dtype=torch.float64)
            factors[nearest] = torch.linalg.cholesky(covariance)
        mean = (means[list(nearest)].sum(0) + example) / (k + 1)
        noise = torch.randn(settings["samples"], len(example), generator=generator, dtype=torch.float64)
        new_features.append(mean + noise @ factors[nearest].T)
        new_targets.append(torch.full((settings["samples"],), int(targets[i])))
    log.info("calibrated %d example(s) of %d few-shot class(es) from %d well-populated ones", len(few),
             len(set(targets[few].tolist())), len(base))
    return torch.cat(new_features).float(), torch.cat(new_targets)
