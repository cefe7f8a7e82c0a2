"""Distribution calibration of few-shot classes: the samples' statistics, which classes lend and borrow,
determinism, and the point of it: a class seen once is recognised more often. Then the training-free few-shot
scorer built on the same idea: calibrated prototypes compared by Mahalanobis distance."""

import pytest
import torch

from tailor.data.episodes import EpisodeSampler
from tailor.evaluation.fewshot import evaluate_episodes
from tailor.tasks.calibration import CalibratedPrototypes, calibrate, calibration_settings
from tailor.tasks.probe import fit_linear_head

DIM = 8


def clusters(sizes: list[int], centres: torch.Tensor, spread: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sizes[c]`` points around ``centres[c]`` with per-dimension standard deviations ``spread``."""
    g = torch.Generator().manual_seed(seed)
    points = [centres[c] + spread * torch.randn(n, DIM, generator=g) for c, n in enumerate(sizes)]
    targets = [torch.full((n,), c) for c, n in enumerate(sizes)]
    return torch.cat(points), torch.cat(targets)


def test_samples_centre_between_the_example_and_its_nearest_base_means():
    centres = torch.tensor([[0.0] * DIM, [10.0] * DIM, [-50.0] * DIM, [3.0] * DIM])
    features, targets = clusters([40, 40, 40, 1], centres, torch.ones(DIM), seed=0)
    settings = calibration_settings(samples=4000, alpha=0.0)
    out, out_targets = calibrate(features, targets, 4, settings)

    assert out.shape == (len(features) + 4000, DIM)
    assert torch.equal(out[: len(features)], features)  # the original rows come first, unchanged
    assert torch.equal(out_targets[len(features):], torch.full((4000,), 3))
    example = features[targets == 3][0]
    means = [features[targets == c].mean(0) for c in (0, 1)]  # class 2 is far: not a neighbour
    expected = (means[0] + means[1] + example) / 3
    samples = out[len(features):]
    assert torch.allclose(samples.mean(0), expected, atol=0.1)
    # the borrowed covariance is the neighbours' average, not a point's
    borrowed = (torch.cov(features[targets == 0].T) + torch.cov(features[targets == 1].T)) / 2
    assert torch.allclose(torch.cov(samples.T), borrowed, atol=0.12)


def test_only_classes_with_few_images_borrow_and_only_populous_ones_lend():
    centres = torch.arange(4.0)[:, None] * torch.ones(DIM) * 5
    features, targets = clusters([30, 30, 8, 3], centres, torch.ones(DIM), seed=1)
    settings = calibration_settings(max_shots=5, min_base=15, samples=10)
    _, out_targets = calibrate(torch.stack([features, features.flip(0)]), targets, 4, settings)
    added = out_targets[2 * len(targets):]
    assert torch.equal(added, torch.full((30,), 3))  # 3 examples × 10 samples; class 2 (8 images) untouched


def test_calibration_is_reproducible_and_steps_aside_without_lenders():
    centres = torch.arange(3.0)[:, None] * torch.ones(DIM)
    features, targets = clusters([20, 20, 1], centres, torch.ones(DIM), seed=2)
    settings = calibration_settings(samples=5)
    first, second = calibrate(features, targets, 3, settings), calibrate(features, targets, 3, settings)
    assert torch.equal(first[0], second[0])
    other = calibrate(features, targets, 3, calibration_settings(samples=5, seed=1))
    assert not torch.equal(first[0], other[0])

    lonely, lonely_targets = calibrate(features[20:], targets[20:], 3, settings)  # one lender, two needed
    assert torch.equal(lonely, features[20:]) and torch.equal(lonely_targets, targets[20:])


def test_settings_refuse_a_class_that_would_both_lend_and_borrow():
    with pytest.raises(ValueError, match="min_base"):
        calibration_settings(max_shots=5, min_base=5)


def test_a_class_seen_once_is_recognised_more_often():
    # Every class varies widely along the first two dimensions and little along the rest; the one-shot class 3
    # sits between classes 0 and 1. A probe sees class 3 as a point; calibration gives it their spread.
    spread = torch.tensor([3.0, 3.0] + [0.3] * (DIM - 2))
    centres = torch.zeros(4, DIM)
    centres[0, 2], centres[1, 2], centres[2, 3], centres[3, 2] = -2.0, 2.0, 4.0, 0.0
    features, targets = clusters([60, 60, 60, 1], centres, spread, seed=3)
    test, test_targets = clusters([0, 0, 0, 300], centres, spread, seed=4)

    def recall(calibration):
        weight, bias = fit_linear_head(features, targets, 4, power=1.0, weight_decay=1e-3, calibration=calibration)
        return ((test @ weight.T + bias).argmax(1) == test_targets).float().mean().item()

    plain, calibrated = recall(None), recall(calibration_settings())
    assert calibrated > plain + 0.2, (plain, calibrated)


def test_calibrated_prototypes_pull_the_support_mean_toward_the_nearest_base_means():
    centres = torch.tensor([[0.0] * DIM, [10.0] * DIM, [-50.0] * DIM, [4.0] * DIM])
    features, targets = clusters([40, 40, 40, 5], centres, torch.ones(DIM), seed=5)
    scorer = CalibratedPrototypes(features[:120], targets[:120], calibration_settings(neighbours=2))
    means = [features[targets == c].mean(0) for c in (0, 1)]  # class 2 is far: not a neighbour
    for k_shot in (1, 5):
        support = features[targets == 3][:k_shot][None]  # one class, k_shot examples
        expected = (means[0] + means[1] + k_shot * support[0].mean(0)) / (2 + k_shot)
        assert torch.allclose(scorer.prototypes(support)[0].float(), expected, atol=1e-5)

    lonely = CalibratedPrototypes(features[:40], targets[:40], calibration_settings(neighbours=2))  # one lender
    support = features[targets == 3][None]
    assert torch.allclose(lonely.prototypes(support)[0].float(), support[0].mean(0), atol=1e-6)


def test_calibrated_scores_rank_classes_by_mahalanobis_distance():
    spread = torch.tensor([4.0, 1.0] + [0.5] * (DIM - 2))
    features, targets = clusters([50, 50, 50], torch.randn(3, DIM) * 3, spread, seed=6)
    settings = calibration_settings(alpha=0.1)
    scorer = CalibratedPrototypes(features, targets, settings)
    support, query = torch.randn(4, 2, DIM), torch.randn(7, DIM)
    centred = torch.cat([features[targets == c] - features[targets == c].mean(0) for c in range(3)]).double()
    covariance = centred.T @ centred / (len(features) - 3) + 0.1 * torch.eye(DIM, dtype=torch.float64)
    difference = query.double()[:, None] - scorer.prototypes(support)[None]  # (7, 4, D)
    squared = torch.einsum("mwd,de,mwe->mw", difference, torch.linalg.inv(covariance), difference)
    gap = scorer(support, query).double() - (-0.5 * squared)  # differs from −½ d² by a per-query constant
    assert torch.allclose(gap, gap[:, :1].expand_as(gap), atol=1e-3)


def test_calibrated_prototypes_beat_euclidean_prototypes_when_categories_vary_along_shared_directions():
    # All classes vary widely along the first two dimensions (colour, pose) and differ along the others:
    # Euclidean prototypes drown in the shared variation; Mahalanobis distance discounts it.
    spread = torch.tensor([4.0, 4.0] + [0.4] * (DIM - 2))
    base, base_targets = clusters([60] * 6, torch.randn(6, DIM, generator=torch.Generator().manual_seed(7)), spread, 8)
    novel, novel_targets = clusters([30] * 5, torch.randn(5, DIM, generator=torch.Generator().manual_seed(9)), spread, 10)
    sampler = EpisodeSampler(novel_targets.tolist(), n_way=5, k_shot=1, q_query=10, seed=0)
    euclidean = evaluate_episodes(novel, sampler, count=100)["accuracy"]
    calibrated = evaluate_episodes(novel, sampler, count=100,
                                   classify=CalibratedPrototypes(base, base_targets, calibration_settings()))["accuracy"]
    assert calibrated > euclidean + 0.15, (euclidean, calibrated)


def test_a_singular_base_covariance_is_a_clear_error():
    features, targets = clusters([3, 3], torch.zeros(2, DIM), torch.ones(DIM), seed=11)  # 6 points in 8 dimensions
    with pytest.raises(ValueError, match="singular: set calibration.alpha above 0.0"):
        CalibratedPrototypes(features, targets, calibration_settings(alpha=0.0))
    assert CalibratedPrototypes(features, targets, calibration_settings(alpha=0.1)).neighbours == 0  # no lenders
    lenders, lender_targets = clusters([3, 3, 1], torch.eye(3, DIM) * 5, torch.ones(DIM), seed=12)
    with pytest.raises(ValueError, match="singular: set calibration.alpha above 0.0"):  # rank 4 in 8 dimensions
        calibrate(lenders, lender_targets, 3, calibration_settings(max_shots=1, min_base=3, alpha=0.0))
