"""Few-shot classification of novel categories (``configs/protonet.gin``, ``configs/relation.gin``).

The standard protocol: base classes (the training table) and novel classes (the evaluation table's classes
that the base table lacks) are disjoint. Every run first scores training-free prototypes on the frozen
pretrained backbone — raw features; CL2N (centred on the base mean, unit length), the baseline; and
calibrated prototypes compared by Mahalanobis distance, which borrow the base classes' statistics. With
``main.num_epochs > 0`` it then trains a Relation Network or a Prototypical Network episodically on the base
classes and scores it on the same novel-class episodes. Features and feature maps are computed once, so
hundreds of evaluation episodes take seconds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from tailor.distributed import Runtime
from tailor import run_folder
from tailor.errors import ConfigError
from tailor.data.datasets import ImageDataset, RunData
from tailor.data.episodes import EpisodeError, EpisodeSampler, split_classes
from tailor.data.splits import stratified_holdout
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.evaluation.fewshot import centre_and_normalise, evaluate_episodes
from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.embedding import Projection
from tailor.models.feature_cache import FeatureCache
from tailor.models.features import extract_features, run_model
from tailor.models.fewshot_nets import Conv4, FeatureMaps, RelationModule
from tailor.names.fewshot import (NamePrior, calibrated_scorer, choose_weight, cl2n_scorer, episode_name_scores,
                                  name_prior_rows)
from tailor.names.fit import Knowledge
from tailor.names.taxonomy import catalog_taxonomy, categories_beside, read_categories
from tailor.runtime import autocast, prepare_model
from tailor.tasks.calibration import CalibratedPrototypes, calibration_settings
from tailor.tasks.episodic import EpisodeDataset, FewShotNet
from tailor.recipes.parts import RecipeParts
from tailor.training import fit_best, make_trainer

log = logging.getLogger(__name__)

EMBEDDINGS = ("pretrained", "conv4")
HEAD_STARTS = ("whitened", "cl2n")


def run_fewshot(run_dir: Path, data: RunData, mode: str = "train", num_epochs: int = 0, seed: int = 0,
                backbone: str = DEFAULT_BACKBONE, method: str = "protonet", embedding: str = "pretrained",
                image_size: int | None = None, n_way: int = 5, shots: Sequence[int] = (1, 5), q_query: int = 15,
                episodes: int = 600, train_shot: int = 1, episodes_per_epoch: int = 500,
                validation: str = "base", val_episodes: int = 100, head_start: str = "whitened",
                names: bool = True, progress: bool = True, calibration: dict | None = None,
                runtime: Runtime | None = None, parts: RecipeParts | None = None) -> dict:
    """Score the frozen baseline, train ``method`` on ``data.train``'s classes when ``num_epochs`` > 0, and
    return results.json's dict; the novel classes are ``data.test``'s. Every pass and the training on
    ``runtime``, the training built from ``parts`` (the task class, augmentation and trainer settings).

    ``embedding``: "pretrained" (the frozen backbone's cached features or feature maps, a trained head on
    top) or "conv4" (the paper's four-block network, trained from scratch on images of ``image_size``,
    default 84). ``validation``: "base" — held-out images of the base classes (the notebook's own split) —
    or "novel" — half the novel classes, then excluded from testing (fully disjoint class sets).
    ``episodes_per_epoch``: validation (and a checkpoint) every this many training episodes. ``head_start``:
    where the Prototypical Network's head starts on pretrained features, "whitened" (within-class whitening of
    the base features, centred, unit length) or "cl2n" (centred, unit length). ``names``: also score CL2N
    prototypes with a prior from each class's name (:mod:`tailor.names.fewshot`; its weight chosen on the base
    classes), when the tables carry the catalog's taxonomy or a category list sits beside the base table.
    ``calibration``: the calibrated prototypes' settings (``calibration.*``, resolved by the front-end;
    default: :func:`~tailor.tasks.calibration.calibration_settings`'s).
    """
    calibration = calibration or calibration_settings()
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown few-shot embedding {embedding!r}: one of {EMBEDDINGS}")
    if head_start not in HEAD_STARTS:
        raise ValueError(f"unknown fewshot.head_start {head_start!r}: one of {HEAD_STARTS}")
    runtime = runtime or Runtime.local()
    model = create_backbone(backbone).eval().to(memory_format=torch.channels_last)
    config = DataConfig.from_timm(backbone_data_config(model))
    transform = eval_transform(config)

    base_spec = data.train
    base_frame = base_spec.catalog().frame  # both tables are read before any image is decoded
    novel_spec = data.test
    if novel_spec is None:
        raise ConfigError("few-shot evaluation needs novel classes: bind evaluate/FashionDataset.csv_file")
    frame = novel_spec.catalog().frame
    base = base_spec.load(None, transform, frame=base_frame, progress=progress)
    if frame["label"].isin(set(base.frame["label"])).all():
        raise EpisodeError(f"no novel classes: every class of {novel_spec.csv_file} is also a base class of "
                           f"{base.root}; few-shot evaluation needs classes the training table lacks")
    novel = novel_spec.load(None, transform, frame=frame[~frame["label"].isin(set(base.frame["label"]))],
                            progress=progress)
    test_classes = list(novel.classes)
    val_classes: list[str] = []
    if validation == "novel" and num_epochs:
        _, val_classes, test_classes = split_classes(novel.classes, (0.0, 0.5, 0.5), seed)
    elif validation != "base":
        raise ValueError(f"unknown validation {validation!r}: base or novel")
    log.info("base: %d images of %d classes; novel: %d images of %d classes (%d for testing)", len(base),
             len(base.classes), len(novel), len(novel.classes), len(test_classes))

    cache = FeatureCache(model, f"{backbone}:pretrained", repr(transform), flip=True)
    base_features = cache.features(base, progress=progress, desc="base features", runtime=runtime).mean(dim=0)
    base_mean = base_features.mean(dim=0)
    raw = cache.features(novel, progress=progress, desc="novel features", runtime=runtime).mean(dim=0)
    training_free: dict[str, tuple[torch.Tensor, Callable | None]] = {
        "raw": (raw, None), "cl2n": (centre_and_normalise(raw, base_mean), None),
        "calibrated": (raw, CalibratedPrototypes(base_features, torch.as_tensor(base.targets),
                                                     calibration))}
    labels = list(novel.frame["label"])
    if names:
        with_names, facts = _name_priors(backbone, base, base_features, novel, raw, base_spec.csv_file,
                                         n_way, q_query, seed, calibration)
        training_free.update(with_names)
    results: dict = {"method": method if num_epochs else "protonet", "mode": mode, "backbone": backbone,
                     "embedding": embedding, "base_images": len(base), "base_classes": len(base.classes),
                     "novel_images": len(novel), "test_classes": test_classes, "fewshot": {}}

    if names:
        results["names"] = facts
    trained = None
    if num_epochs:
        trained, facts = _train(run_dir, method, embedding, model, config, base, novel, base_features, raw,
                                val_classes, num_epochs, seed, n_way, train_shot, q_query, episodes_per_epoch,
                                val_episodes, image_size, head_start, calibration, runtime, parts or RecipeParts())
        results.update(facts)
    if not runtime.is_zero:  # every shared pass is done; rank 0 scores the episodes and writes
        return {}
    for k in shots:
        sampler = EpisodeSampler(labels, n_way=n_way, k_shot=k, q_query=q_query, classes=test_classes, seed=seed)
        if sampler.excluded:
            log.info("%d-shot: %d novel classes excluded (fewer than %d images): %s", k, len(sampler.excluded),
                     k + q_query, ", ".join(sorted(sampler.excluded)))
        scorers = dict(training_free)
        if trained is not None:
            scorers[f"{method}, trained"] = trained
        for name, (features, classify) in scorers.items():
            start = time.perf_counter()
            with torch.no_grad():
                scores = evaluate_episodes(features, sampler, count=episodes,
                                           **({"classify": classify} if classify else {}))
            scores["seconds"] = round(time.perf_counter() - start, 3)
            results["fewshot"][f"{n_way}-way {k}-shot ({name})"] = scores
    return results


def _train(run_dir: Path, method: str, embedding: str, backbone: torch.nn.Module, config: DataConfig,
           base: ImageDataset, novel: ImageDataset, base_features: torch.Tensor, novel_features: torch.Tensor,
           val_classes: list[str], num_epochs: int, seed: int,
           n_way: int, k_shot: int, q_query: int, episodes_per_epoch: int, val_episodes: int,
           image_size: int | None, head_start: str, calibration: dict,
           runtime: Runtime, parts: RecipeParts) -> tuple[tuple[torch.Tensor, Callable], dict]:
    """Train episodically on the base classes; return the novel items' embeddings with the scoring rule."""
    # A net's first weights must depend on the seed alone, not on how much of the global generator the
    # steps above drew (they draw less when the features come from the cache).
    torch.manual_seed(seed)
    if embedding == "pretrained":
        base_items, novel_items, net = _pretrained_items(method, backbone, base, novel, base_features,
                                                         novel_features, head_start, calibration, runtime)
        train_source = val_source = base_items
    else:
        scratch = DataConfig(image_size or 84, config.mean, config.std)
        net = FewShotNet(method, Conv4(), RelationModule(64) if method == "relation" else torch.nn.Flatten())
        train_source = base.with_transform(train_transform(scratch, parts.augmentation))
        val_source = base.with_transform(eval_transform(scratch))
        novel_items = novel.with_transform(eval_transform(scratch))

    labels = list(base.frame["label"])
    if val_classes:  # disjoint: validation episodes from half of the novel classes
        train_sampler = EpisodeSampler(labels, n_way, k_shot, q_query, seed=seed)
        val_sampler = EpisodeSampler(list(novel.frame["label"]), n_way, k_shot, q_query, classes=val_classes, seed=seed + 1)
        val_source = novel_items
    else:  # the notebook's split: held-out images of the base classes
        train_frame, val_frame = stratified_holdout(base.frame.reset_index(drop=True), 0.2, seed)
        held = set(val_frame.index)
        train_labels = [None if i in held else label for i, label in enumerate(labels)]
        val_labels = [label if i in held else None for i, label in enumerate(labels)]
        train_sampler = EpisodeSampler(train_labels, n_way, k_shot, q_query, classes=sorted(set(train_frame["label"])),
                                       seed=seed)
        smallest = int(val_frame["label"].value_counts().min()) if len(val_frame) else 0
        val_sampler = EpisodeSampler(val_labels, n_way, k_shot, max(1, min(q_query, 5, smallest - k_shot)),
                                     seed=seed + 1, classes=sorted(set(val_frame["label"])))
    train_data = EpisodeDataset(train_sampler, _item_getter(train_source), episodes_per_epoch)
    val_data = EpisodeDataset(val_sampler, _item_getter(val_source), val_episodes)
    task = parts.episodic_task(net)
    trainer = make_trainer(run_dir, parts.trainer, runtime, max_epochs=num_epochs, seed=seed, monitor="val/acc",
                           log_every_n_steps=max(1, episodes_per_epoch // 20), gradient_clip_val=None)
    log.info("training a %s (%s embedding) on %d-way %d-shot episodes of %d base classes; validating on %d "
             "episodes of %s every %d episodes", method, embedding, n_way, k_shot, len(train_sampler.classes),
             val_episodes, "novel classes " + ", ".join(val_classes) if val_classes else "held-out base images",
             episodes_per_epoch)
    _, best_score = fit_best(trainer, task, DataLoader(train_data, batch_size=None),
                             DataLoader(val_data, batch_size=None), run_dir, seed,
                             curves_title=f"{run_dir.name}: episodic training ({method})", runtime=runtime)
    net.eval()
    runtime.save(run_dir / run_folder.FEWSHOT_NET, {"format": "tailor.fewshot/1", "method": method,
                                                     "embedding": embedding, "state_dict": net.state_dict()})
    embedded = _embed_novel(net, novel_items, runtime)
    facts = {"train_episodes": trainer.global_step, "epochs": trainer.current_epoch, "train_shot": k_shot,
             "best_val_acc": best_score,
             "validation": "novel classes" if val_classes else "held-out base images", "val_classes": val_classes}
    return (embedded, net.scores), facts


def _name_priors(backbone: str, base: ImageDataset, base_features: torch.Tensor, novel: ImageDataset,
                 novel_features: torch.Tensor, base_csv, n_way: int, q_query: int, seed: int, calibration: dict
                 ) -> tuple[dict[str, tuple[torch.Tensor, Callable]], dict]:
    """The "cl2n + names" and "calibrated + names" scorers (rows and classify function), each with its name
    weight chosen on the base classes."""
    listed = categories_beside(base_csv)
    taxonomy = read_categories(listed) if listed is not None and listed.suffix == ".csv" else {}
    for frame in (base.frame, novel.frame):
        taxonomy.update({k: v for k, v in catalog_taxonomy(frame).items() if v})
    knowledge = Knowledge.for_backbones([backbone])
    base_labels = list(base.frame["label"])
    base_targets = torch.as_tensor(base.targets)
    scores = episode_name_scores(base_features, base_labels, novel_features, novel.classes, taxonomy, knowledge)
    scorers, facts = {}, {}
    for name, visual in (("cl2n", cl2n_scorer), ("calibrated", calibrated_scorer(calibration))):
        chosen = choose_weight(base_features, base_labels, taxonomy, knowledge, n_way, q_query, seed, visual=visual)
        to_rows, classify = visual(base_features, base_targets)
        rows = name_prior_rows(to_rows(novel_features), scores)
        scorers[f"{name} + names"] = (rows, NamePrior(novel.classes, novel_features.shape[-1], chosen["weight"],
                                                      classify))
        facts[name] = chosen
    return scorers, facts


def _embed_novel(net: FewShotNet, items: torch.Tensor | ImageDataset, runtime: Runtime) -> torch.Tensor:
    """The trained net's embedding of every novel item, on ``runtime``'s device: cached features or maps in
    chunks, images through the shared pass (decoded in workers, split across ranks)."""
    device = runtime.device
    prepare_model(net, device)
    if isinstance(items, torch.Tensor):
        with torch.no_grad(), autocast(device):
            return torch.cat([net.embed_items(chunk.to(device)).float().cpu() for chunk in items.split(256)])
    return run_model(net, net.embed_items, items, batch_size=128, progress=False, desc="novel embeddings",
                     runtime=runtime)


def _item_getter(source: torch.Tensor | ImageDataset) -> Callable[[int], torch.Tensor]:
    """Row → model input: a cached tensor's row, or a dataset item's image (its label dropped)."""
    if isinstance(source, torch.Tensor):
        return source.__getitem__
    return lambda i: source[i][0]


def _pretrained_items(method: str, backbone: torch.nn.Module, base: ImageDataset, novel: ImageDataset,
                      base_features: torch.Tensor, novel_features: torch.Tensor, head_start: str,
                      calibration: dict, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor, FewShotNet]:
    """Frozen inputs for a trained head: feature maps (Relation Network) or the cached pooled features
    (Prototypical Network: its head is a linear map onto the unit sphere, its logits scaled, that starts as a
    training-free baseline — the base classes' within-class whitening, or CL2N's identity on centred
    features — so that episodes refine a strong start)."""
    if method == "relation":
        maps = FeatureMaps(backbone)
        base_items = extract_features(maps, base, flip=False, desc="base feature maps", runtime=runtime)[0].half()
        novel_items = extract_features(maps, novel, flip=False, desc="novel feature maps", runtime=runtime)[0].half()
        net = FewShotNet("relation", _Float(), RelationModule(maps.out_channels))
        return base_items, novel_items, net
    if head_start == "whitened":
        projection = Projection.whitening(base_features, torch.as_tensor(base.targets),
                                          calibration["alpha"])
    else:
        projection = Projection.identity(base_features.shape[-1], base_features.mean(dim=0))
    return base_features, novel_features, FewShotNet("protonet", torch.nn.Identity(), projection, scale=10.0)


class _Float(torch.nn.Module):
    """Feature maps are kept in half precision (a tenth of the sample's maps is 100 MB); compute in float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def fewshot_table(results: dict) -> str:
    """The few-shot results as a markdown table."""
    lines = ["| setting | accuracy | 95 % CI | episodes | novel classes |", "|---|---:|---:|---:|---:|"]
    for name, r in results.get("fewshot", {}).items():
        lines.append(f"| {name} | {r['accuracy']:.4f} | ± {r['ci95']:.4f} | {r['episodes']} | {r['classes']} |")
    return "\n".join(lines) + "\n"
