"""Few-shot classification of novel categories with Prototypical Networks on a frozen pretrained backbone
(``configs/protonet.gin``).

The standard protocol: base classes (the training table) and novel classes (the evaluation table's classes
that the base table lacks) are disjoint. Features are computed once, each image averaged with its mirror
image; every N-way K-shot setting is then scored over hundreds of episodes in well under a second.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import gin
import torch

from tailor.data.datasets import FashionDataset
from tailor.data.episodes import EpisodeSampler
from tailor.data.transforms import DataConfig, eval_transform
from tailor.evaluation.fewshot import centre_and_normalise, evaluate_episodes
from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.features import extract_features

log = logging.getLogger(__name__)


@gin.configurable("fewshot")
def run_protonet(run_dir: Path, mode: str = "evaluate", num_epochs: int = 0, seed: int = 0,
                 backbone: str = DEFAULT_BACKBONE, n_way: int = 5, shots: Sequence[int] = (1, 5),
                 q_query: int = 15, episodes: int = 600, progress: bool = True) -> dict:
    """Score frozen-backbone prototypes on novel-class episodes; return the contents of results.json.

    Two feature treatments are reported side by side: the raw pooled features (the plain baseline) and
    CL2N — centred on the base classes' mean, then L2-normalised.
    """
    if num_epochs:
        raise NotImplementedError("episodic training of the Prototypical Network is not implemented yet: "
                                  "use main.num_epochs = 0 (prototypes on the frozen pretrained backbone)")
    model = create_backbone(backbone).eval().to(memory_format=torch.channels_last)
    config = DataConfig.from_timm(backbone_data_config(model))
    transform = eval_transform(config)

    base_spec = FashionDataset()
    base = base_spec.load(None, transform, progress=progress)
    with gin.config_scope("evaluate"):
        novel_spec = FashionDataset()
    frame = novel_spec.catalog().frame
    frame = frame[~frame["label"].isin(set(base.frame["label"]))]
    novel = novel_spec.load(None, transform, frame=frame, progress=progress)
    log.info("base: %d images of %d classes; novel: %d images of %d classes", len(base), len(base.classes),
             len(novel), len(novel.classes))

    base_mean = extract_features(model, base, progress=progress, desc="base features").mean(dim=(0, 1))
    raw = extract_features(model, novel, progress=progress, desc="novel features").mean(dim=0)
    treatments = {"raw": raw, "cl2n": centre_and_normalise(raw, base_mean)}
    labels = list(novel.frame["label"])

    results: dict = {"method": "protonet", "mode": "evaluate", "backbone": backbone, "base_images": len(base),
                     "base_classes": len(base.classes), "novel_images": len(novel), "fewshot": {}}
    for k in shots:
        sampler = EpisodeSampler(labels, n_way=n_way, k_shot=k, q_query=q_query, seed=seed)
        if sampler.excluded:
            log.info("%d-shot: %d novel classes excluded (fewer than %d images): %s", k, len(sampler.excluded),
                     k + q_query, ", ".join(sorted(sampler.excluded)))
        for name, features in treatments.items():
            start = time.perf_counter()
            scores = evaluate_episodes(features, sampler, count=episodes)
            scores["seconds"] = round(time.perf_counter() - start, 3)
            results["fewshot"][f"{n_way}-way {k}-shot ({name})"] = scores
    return results


def fewshot_table(results: dict) -> str:
    """The few-shot results as a markdown table."""
    lines = ["| setting | accuracy | 95 % CI | episodes | novel classes |", "|---|---:|---:|---:|---:|"]
    for name, r in results.get("fewshot", {}).items():
        lines.append(f"| {name} | {r['accuracy']:.4f} | ± {r['ci95']:.4f} | {r['episodes']} | {r['classes']} |")
    return "\n".join(lines) + "\n"
