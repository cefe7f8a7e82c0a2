"""Names in few-shot episodes: a training-free prior from each class's name beside its prototype.

A query's logit for an episode class is a visual scorer's — CL2N prototypes (minus the squared distance to the
mean of the class's centred, unit-length support features) or the calibrated prototypes of
:class:`~tailor.tasks.calibration.CalibratedPrototypes` — plus ``weight / k`` times the class's name score for that query
(:class:`~tailor.names.head.NameHead`, standardised over the episode's classes) — a prior that counts for less
as shots come in, the way a prior's pseudo-counts do (AM3, Xing et al., 2019, learns that mixing; here it has
one number). ``weight`` is chosen on the *base* classes: half of them hidden in turn, the name map fitted on
the other half, 1-shot episodes of the hidden half scored for each weight.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from tailor.data.episodes import EpisodeSampler
from tailor.evaluation.fewshot import centre_and_normalise, evaluate_episodes, prototype_logits
from tailor.names.fit import Knowledge, NameSettings, build_name_head
from tailor.tasks.calibration import CalibratedPrototypes

log = logging.getLogger(__name__)

WEIGHTS = (0.0,) + tuple(0.05 * 2 ** i for i in range(12))  # 0.05 … 102.4: the scorers' logits differ in scale

Classify = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (training features, their targets) → (features → the scorer's rows, the scorer): a visual scorer built on
#: base classes
VisualScorer = Callable[[torch.Tensor, torch.Tensor], tuple[Callable[[torch.Tensor], torch.Tensor], Classify]]


def cl2n_scorer(features: torch.Tensor, targets: torch.Tensor) -> tuple[Callable, Classify]:
    mean = features.mean(0)
    return (lambda f: centre_and_normalise(f, mean)), prototype_logits


def calibrated_scorer(settings: dict) -> VisualScorer:
    return lambda features, targets: ((lambda f: f), CalibratedPrototypes(features, targets, settings))


class NamePrior:
    """``classify(support, query, classes)`` for :func:`evaluate_episodes` on rows of
    ``[visual rows | name scores of every class]`` (:func:`name_prior_rows`)."""

    uses_classes = True

    def __init__(self, classes: Sequence[str], dim: int, weight: float, visual: Classify = prototype_logits):
        self.column = {c: dim + i for i, c in enumerate(classes)}
        self.dim, self.weight, self.visual = dim, weight, visual

    def __call__(self, support: torch.Tensor, query: torch.Tensor, classes: Sequence[str]) -> torch.Tensor:
        logits = self.visual(support[..., : self.dim], query[:, : self.dim])
        if not self.weight:
            return logits
        names = query[:, [self.column[c] for c in classes]]
        names = (names - names.mean(1, keepdim=True)) / names.std(1, keepdim=True).clamp_min(1e-6)
        return logits + self.weight / support.shape[1] * names


def name_prior_rows(visual_rows: torch.Tensor, name_scores: torch.Tensor) -> torch.Tensor:
    return torch.cat([visual_rows, name_scores], dim=1)


def choose_weight(base_features: torch.Tensor, base_labels: Sequence[str], taxonomy: Mapping[str, Sequence[str]],
                  knowledge: Knowledge, n_way: int, q_query: int, seed: int = 0, episodes: int = 300,
                  visual: VisualScorer = cl2n_scorer) -> dict:
    """The name weight whose 1-shot episodes on hidden base classes score best with the ``visual`` scorer built
    on the other half (module docstring)."""
    labels = np.asarray(list(base_labels), dtype=object)
    classes = sorted(set(labels))
    order = np.random.default_rng(seed).permutation(len(classes))
    halves = [sorted(classes[i] for i in order[: len(classes) // 2]), sorted(classes[i] for i in order[len(classes) // 2:])]
    scores = {w: [] for w in WEIGHTS}
    for hidden, kept in (halves, halves[::-1]):
        if len(hidden) < 2 or len(kept) < 2:
            continue  # a map needs two categories to learn from, an episode two to choose between
        train = np.flatnonzero(np.isin(labels, kept))
        held = np.flatnonzero(np.isin(labels, hidden))
        index = {c: i for i, c in enumerate(kept)}
        targets = torch.tensor([index[c] for c in labels[train]])
        head = build_name_head(base_features[train], targets, kept, hidden, taxonomy, [base_features.shape[-1]],
                               knowledge, NameSettings(seed=seed))
        to_rows, classify = visual(base_features[train], targets)
        with torch.no_grad():
            rows = name_prior_rows(to_rows(base_features[held]), head.name_scores(base_features[held]))
        sampler = EpisodeSampler(list(labels[held]), n_way=min(n_way, len(hidden)), k_shot=1, q_query=q_query, seed=seed)
        if len(sampler.classes) < 2:
            continue
        for w in WEIGHTS:
            prior = NamePrior(hidden, base_features.shape[-1], w, classify)
            scores[w].append(evaluate_episodes(rows, sampler, episodes, prior)["accuracy"])
    means = {w: float(np.mean(v)) for w, v in scores.items() if v}
    if not means:
        log.info("names in episodes: %d base classes are too few to choose the name weight; it stays 0", len(classes))
    best = max(means, key=lambda w: (means[w], -w)) if means else 0.0
    log.info("names in episodes: weight %.2f chosen on hidden base classes (1-shot %s)", best,
             ", ".join(f"{w}: {a:.3f}" for w, a in means.items()))
    return {"weight": best, "base_1shot_by_weight": means}


def episode_name_scores(base_features: torch.Tensor, base_labels: Sequence[str], novel_features: torch.Tensor,
                        novel_classes: Sequence[str], taxonomy: Mapping[str, Sequence[str]],
                        knowledge: Knowledge) -> torch.Tensor:
    """Every novel image's name scores for every novel class, the map fitted on all base classes."""
    labels = list(base_labels)
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    head = build_name_head(base_features, torch.tensor([index[c] for c in labels]), classes, list(novel_classes),
                           taxonomy, [base_features.shape[-1]], knowledge, NameSettings())
    with torch.no_grad():
        return head.name_scores(novel_features)

