"""Metric learning (``configs/triplet.gin``): a triplet-loss embedding, kNN classification of the test
products against the training products, the t-SNE map, and the catalog index for ``tailor similar``.

Two ways to train, one saved model (backbone + projection):
- ``metric.train_backbone = False`` (default): the backbone stays as pretrained and only the projection
  learns, on cached backbone features (each image and its mirror image are the two "views" an epoch picks
  from). An epoch takes a fraction of a second on a CPU.
- ``metric.train_backbone = True``: the whole network learns from augmented images, as the seed did.
Training starts from within-class whitening of the frozen features, reduced to ``Projection.dim`` directions
(``metric.projection_start``). With ``main.num_epochs = 0`` that start is the embedding. Every trained run also
reports two training-free embeddings beside its own numbers: the frozen features centred and of unit length
("frozen"), and the whitened start estimated from every training image ("whitened").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tailor.distributed import Runtime
from tailor import run_folder
from tailor.data.catalog import CatalogError, product_ids
from tailor.data.datasets import FashionDataset, ImageDataset, RunData, top_classes
from tailor.data.samplers import EpochMPerClassSampler, training_loader
from tailor.data.splits import stratified_holdout
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.evaluation.artifacts import write_evaluation
from tailor.evaluation.embedding_map import plot_map_png, tsne_2d, write_map_html
from tailor.evaluation.knn import knn_scores
from tailor.evaluation.metrics import evaluate_scores
from tailor.models.backbones import DEFAULT_BACKBONE
from tailor.models.embedding import EmbeddingNet, Projection
from tailor.models.feature_cache import FeatureCache, model_fingerprint
from tailor.optional_steps import optional_step
from tailor.search.catalog_colours import colour_vectors, fit_colour, product_attributes
from tailor.search.ann import AnnSettings
from tailor.search.index import INDEX_FILE, EmbeddingIndex
from tailor.search.lookalike import LookalikeSettings
from tailor.tasks.colour_probe import COLOUR_POWERS, COLOUR_WEIGHT_DECAYS, colour_descriptors, colour_grid
from tailor.training import fit_best, make_trainer
from tailor.recipes.parts import RecipeParts

log = logging.getLogger(__name__)


PROJECTION_STARTS = ("whitened", "random")


class FeatureViews(Dataset):
    """Cached features ``(views, N, D)`` as a training set: each access picks one view at random (the image
    or its mirror image), the feature-space counterpart of a horizontal-flip augmentation."""

    def __init__(self, features: torch.Tensor, targets: np.ndarray):
        self.features, self.targets = features, torch.as_tensor(targets)

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, i: int):
        view = int(torch.randint(self.features.shape[0], ()))
        return self.features[view, i], self.targets[i]


def run_metric(run_dir: Path, data: RunData, mode: str = "train", num_epochs: int = 30, seed: int = 0,
               backbone: str = DEFAULT_BACKBONE, train_backbone: bool = False, image_size: int | None = None,
               batch_size: int = 128, m_per_class: int = 4, min_examples: int = 4, val_fraction: float = 0.1,
               k: int = 5, weighting: str = "softmax", temperature: float = 0.1, tsne: bool = True,
               projection_start: str = "whitened", colour_column: str | None = "baseColour",
               colour_powers: Sequence[float] = COLOUR_POWERS,
               colour_weight_decays: Sequence[float] = COLOUR_WEIGHT_DECAYS,
               num_workers: int | str = "auto", progress: bool = True, ann: AnnSettings | None = None,
               lookalike: LookalikeSettings | None = None, runtime: Runtime | None = None,
               parts: RecipeParts | None = None) -> dict:
    """Train the embedding on ``data.train`` (built from ``parts``: the projection and task classes,
    augmentation and trainer settings), then evaluate it by kNN on ``data.test`` (when there is one), on
    ``runtime``; return the contents of ``results.json``.

    ``min_examples``: classes with fewer training images are left out of training (the seed used 4); their
    images still serve as kNN references and search results.
    ``m_per_class``: images per class in each batch (``MPerClassSampler``): every anchor has positives.
    ``k``, ``weighting``, ``temperature``: the kNN classifier (see :func:`tailor.evaluation.knn.knn_scores`).
    ``projection_start``: "whitened" — a linear projection started as within-class whitening of the training
    features, reduced to ``Projection.dim`` directions (:meth:`Projection.whitening`), which training refines
    and which with ``num_epochs = 0`` is the embedding — or "random": ``Projection``'s configured layers,
    randomly initialised.
    ``colour_column``: the training table's colour column; a colour probe fitted on it gives every indexed
    product a colour vector, which look-alike search ranks by (:mod:`tailor.search.lookalike`); None: none.
    ``colour_powers`` × ``colour_weight_decays``: the class priors and regularisations among which that probe
    is chosen by 3-fold cross-validation on the training rows (27 probe fits; one of each: no cross-validation).
    ``ann``, ``lookalike``: the catalog index's approximate-search settings and the look-alike ranking's (whose
    colour weight shapes the approximate index's space), resolved by the front-end (``search.ann.*``,
    ``lookalike.settings.*``); default: their dataclasses' defaults.
    """
    if projection_start not in PROJECTION_STARTS:
        raise ValueError(f"unknown metric.projection_start {projection_start!r}: one of {PROJECTION_STARTS}")
    if mode != "train":
        raise ValueError(f"metric learning runs in mode 'train' (got {mode!r}); rerun a run folder to re-evaluate")
    spec = data.train
    table = spec.catalog().frame  # both tables are read before any image is decoded
    test_spec = data.test
    test_frame = test_spec.catalog().frame if test_spec is not None else None
    ranks = runtime = runtime or Runtime.local()
    parts = parts or RecipeParts()
    model = EmbeddingNet(backbone, image_size=image_size, projection_class=parts.projection)
    config = DataConfig.from_timm(model.data_config, model.image_size)
    plain = eval_transform(config)
    full = spec.load(None, plain, frame=table, progress=progress)
    classes = list(full.classes)
    frozen = FeatureCache(model.backbone, f"{backbone}:pretrained", repr(plain), flip=True)
    train_features = frozen.features(full, progress=progress, desc="frozen features", runtime=runtime)
    feature_mean = train_features.mean(dim=(0, 1))
    model.projection.mean.copy_(feature_mean)

    counts = full.frame["label"].value_counts()
    left_out = {c: int(n) for c, n in counts.items() if n < min_examples}
    if left_out:
        log.info("%d class(es) with fewer than %d images left out of training (still kNN references): %s",
                 len(left_out), min_examples, ", ".join(f"{c} ({n})" for c, n in sorted(left_out.items())))
    facts: dict = {"method": "metric", "mode": mode, "backbone": backbone, "train_backbone": train_backbone,
                   "train_images": len(full), "classes": classes, "left_out_classes": left_out}
    if num_epochs > 0:
        trainable = full.frame[~full.frame["label"].isin(left_out)]
        if trainable["label"].nunique() < 2:
            raise CatalogError(f"metric learning needs at least 2 classes with {min_examples}+ images; "
                               f"{trainable['label'].nunique()} have that many")
        train_frame, val_frame = stratified_holdout(trainable, val_fraction, seed)
        if projection_start == "whitened":
            seen = np.setdiff1d(np.arange(len(full)), val_frame.index)  # with the classes too small to train on
            model.projection = _whitened_start(train_features, full.targets, seen, model.projection.dim)
        facts.update(_train(model, full, train_features, train_frame.index, val_frame.index, run_dir, config,
                            num_epochs, seed, train_backbone, batch_size, m_per_class, num_workers, runtime, parts))
    else:
        model.projection = (_whitened_start(train_features, full.targets, np.arange(len(full)), model.projection.dim)
                            if projection_start == "whitened" else Projection.identity(train_features.shape[-1],
                                                                                         feature_mean))
        facts.update({"epochs": 0, "best_val_knn_acc": None})
    model.eval()
    backbone_features = (train_features if not (train_backbone and num_epochs > 0) else
                         _trained_backbone(model, plain).features(full, progress=progress, desc="training features",
                                                                  runtime=runtime))
    if colour_column:
        facts["colour"] = fit_colour(model, full, backbone_features, colour_column, seed, progress,
                                     colour_grid(colour_powers, colour_weight_decays), runtime=runtime)
    runtime.save(run_dir / run_folder.MODEL, model.export())

    if test_spec is None:
        return facts
    test = test_spec.load(classes, plain, frame=test_frame, progress=progress)
    started = time.perf_counter()
    test_features = frozen.features(test, progress=progress, desc="frozen features", runtime=runtime)
    test_backbone_features = (test_features if not (train_backbone and num_epochs > 0) else
                              _trained_backbone(model, plain).features(test, progress=progress, desc="test features",
                                                                       runtime=runtime))
    if train_backbone and num_epochs > 0:
        trained = FeatureCache(model, model_fingerprint(model), repr(plain))
        reference = _unit_mean(trained.features(full, progress=progress, desc="training embeddings",
                                                runtime=runtime))
        queries = _unit_mean(trained.features(test, progress=progress, desc="test embeddings", runtime=runtime))
    else:
        with torch.no_grad():
            reference = _embed_views(model.projection, train_features)
            queries = _embed_views(model.projection, test_features)
    embed_seconds = time.perf_counter() - started
    colours = (None, None)
    if model.colour is not None:  # a shared pass too: every rank computes the descriptors with rank 0
        colours = tuple(colour_vectors(model.colour, features,
                                       colour_descriptors(model.colour.descriptor, data, progress, runtime=runtime))
                        for data, features in ((full, backbone_features), (test, test_backbone_features)))
    if not ranks.is_zero:  # every shared pass is done; rank 0 scores and writes
        return {}
    knn = dict(k=k, weighting=weighting, temperature=temperature)
    top = top_classes(test_spec)
    scores, trained_groups = _knn_groups(reference, full, queries, test, top, knn, runtime.device)
    train_counts = {c: int(counts.get(c, 0)) for c in classes}
    result = evaluate_scores(scores, list(test.frame["label"]), classes, train_counts)
    write_evaluation(result, test, scores, classes, run_dir, title=f"{run_dir.name} — kNN (k={k}) on the test set")

    groups = {"trained": trained_groups}
    if num_epochs > 0:  # training-free embeddings, same kNN, for comparison: CL2N and the whitened start
        untrained = {"frozen": Projection.identity(train_features.shape[-1], feature_mean),
                     "whitened": _whitened_start(train_features, full.targets, np.arange(len(full)),
                                                 model.projection.dim)}
        for name, projection in untrained.items():
            with torch.no_grad():
                _, groups[name] = _knn_groups(_embed_views(projection, train_features), full,
                                              _embed_views(projection, test_features), test, top, knn,
                                              runtime.device)

    results = {**facts, **result.as_dict(), "knn": {**knn, **groups},
               "embedding_seconds": round(embed_seconds, 2), "test_csv": str(test_spec.csv_file),
               "data_root": str(test_spec.root_dir.resolve())}
    # late steps: each may fail on its own without costing the results above (they reach results.json)
    index = EmbeddingIndex.concat([_index_part(full, reference, colours[0], spec),
                                   _index_part(test, queries, colours[1], test_spec)])
    results["index_size"] = len(index)
    optional_step(results, "index", lambda: index.with_approximate_index(
        ann or AnnSettings(), (lookalike or LookalikeSettings()).colour_weight).save(run_dir / INDEX_FILE))
    if tsne:
        optional_step(results, "map", lambda: _draw_map(queries, test, run_dir, seed))
    return results


def _train(model: EmbeddingNet, full: ImageDataset, features: torch.Tensor, train_rows, val_rows, run_dir: Path,
           config: DataConfig, num_epochs: int, seed: int, train_backbone: bool, batch_size: int,
           m_per_class: int, num_workers: int | str, runtime: Runtime, parts: RecipeParts) -> dict:
    targets = full.targets
    train_rows, val_rows = np.asarray(train_rows), np.asarray(val_rows)
    n_classes = len(np.unique(targets[train_rows]))
    batch_size = max(m_per_class, min(batch_size, m_per_class * n_classes) // m_per_class * m_per_class)
    sampler = EpochMPerClassSampler(targets[train_rows], m=m_per_class, batch_size=batch_size,
                                    length_before_new_iter=max(len(train_rows), batch_size), seed=seed)
    if train_backbone:
        embedder = model
        train_set: Dataset = full.subset(train_rows).with_transform(train_transform(config, parts.augmentation))
        reference, queries = full.subset(train_rows), full.subset(val_rows)
    else:
        embedder = model.projection
        train_set = FeatureViews(features[:, train_rows], targets[train_rows])
        reference = TensorDataset(features[0, train_rows], torch.as_tensor(targets[train_rows]))
        queries = TensorDataset(features[0, val_rows], torch.as_tensor(targets[val_rows]))
    loader = training_loader(train_set, sampler, seed, batch_size, num_workers)
    val_loaders = [DataLoader(reference, batch_size=256), DataLoader(queries, batch_size=256)] if len(val_rows) else None
    task = parts.metric_task(embedder, num_classes=len(full.classes))
    trainer = make_trainer(run_dir, parts.trainer, runtime, max_epochs=num_epochs, seed=seed,
                           monitor="val/knn_acc" if val_loaders else None,
                           log_every_n_steps=max(1, min(10, len(loader))))
    log.info("training the %s on %d images of %d classes (batches of %d, %d per class), validating on %d",
             "whole network" if train_backbone else "projection", len(train_rows), n_classes, batch_size,
             m_per_class, len(val_rows))
    best_step, best_score = fit_best(trainer, task, loader, val_loaders, run_dir, seed,
                                     curves_title=f"{run_dir.name}: triplet loss and validation kNN accuracy",
                                     runtime=runtime)
    return {"loss": task.loss_name, "miner": task.miner_name, "margin": task.margin, "batch_size": batch_size,
            "m_per_class": m_per_class, "fit_images": len(train_rows), "val_images": len(val_rows),
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "best_step": best_step,
            "best_val_knn_acc": best_score}


def _whitened_start(features: torch.Tensor, targets: np.ndarray, rows, dim: int) -> Projection:
    """The whitened start, estimated from ``rows`` only (validation images stay unseen); every cached view of
    an image is a sample, so the mirror image counts as within-class variation."""
    rows = np.asarray(rows)
    views = features[:, rows]
    return Projection.whitening(views.reshape(-1, views.shape[-1]),
                                torch.as_tensor(targets[rows]).repeat(views.shape[0]), dim=dim)


def _embed_views(projection: Projection, views: torch.Tensor) -> torch.Tensor:
    """One embedding per image from its cached feature views ``(V, N, D)``."""
    v, n, d = views.shape
    return _unit_mean(projection(views.reshape(v * n, d)).reshape(v, n, -1))


def _unit_mean(views: torch.Tensor) -> torch.Tensor:
    """One embedding per image from its views ``(V, N, D)``: their mean, back on the unit sphere."""
    return F.normalize(views.float().mean(dim=0), dim=-1)


def _knn_groups(reference: torch.Tensor, full: ImageDataset, queries: torch.Tensor, test: ImageDataset,
                top: set[str] | None, knn: dict, device: torch.device) -> tuple[np.ndarray, dict]:
    """kNN scores of ``queries`` against every training product, and top-1 accuracy by group, two ways.

    Against every training product (one index, as `tailor similar` searches it): ``top20``, ``all``, ``rare``.
    Against the training products of the query's own group only (``top20_within``, ``rare_within``,
    ``all_within``): the seed kept its top-20 and rare products in separate datasets, so this is the reading of
    its numbers in which a rare product's neighbours are rare products.
    """
    # kNN is a matrix product: on the run's device
    reference, queries = reference.to(device), queries.to(device)
    scores = knn_scores(reference, full.targets, queries, len(full.classes), **knn)
    groups = _group_accuracy(scores, test, top)
    if top is None:
        return scores, groups
    reference_top = full.frame["label"].isin(top).to_numpy(copy=True)  # writable: it indexes tensors
    query_top = test.frame["label"].isin(top).to_numpy(copy=True)
    hits = np.zeros(len(query_top), dtype=bool)
    for name, in_reference, in_query in (("top20_within", reference_top, query_top),
                                         ("rare_within", ~reference_top, ~query_top)):
        if not (in_reference.any() and in_query.any()):
            groups[name] = None
            continue
        within = knn_scores(reference[in_reference], full.targets[in_reference], queries[in_query],
                            len(full.classes), **knn)
        hits[in_query] = within.argmax(1) == test.targets[in_query]
        groups[name] = float(hits[in_query].mean())
    groups["all_within"] = float(hits.mean())
    return scores, groups


def _group_accuracy(scores: np.ndarray, test: ImageDataset, top: set[str] | None) -> dict:
    """kNN top-1 accuracy as the seed reported it: on the top-20 classes, on all classes, on the rare ones."""
    hits = scores.argmax(1) == test.targets
    out = {"all": float(hits.mean())}
    if top is not None:
        in_top = test.frame["label"].isin(top).to_numpy()
        out["top20"] = float(hits[in_top].mean()) if in_top.any() else None
        out["rare"] = float(hits[~in_top].mean()) if (~in_top).any() else None
    return out


def _trained_backbone(model: EmbeddingNet, transform) -> FeatureCache:
    """The cache of a fine-tuned backbone's own features (the colour probe reads the backbone it ships with)."""
    return FeatureCache(model.backbone, model_fingerprint(model.backbone), repr(transform))


def _index_part(dataset: ImageDataset, embeddings: torch.Tensor, colours: torch.Tensor | None,
                spec: FashionDataset) -> EmbeddingIndex:
    """The index rows of ``dataset``'s products: embeddings, colour vectors (when the model has a colour
    probe) and the catalog attributes filters use."""
    frame = dataset.frame
    return EmbeddingIndex(embeddings, product_ids(frame), frame["label"].astype(str).tolist(),
                          frame["image"].astype(str).tolist(),
                          str(spec.root_dir.resolve()), colours, product_attributes(dataset))


def _draw_map(embeddings: torch.Tensor, test: ImageDataset, run_dir: Path, seed: int) -> None:
    if len(test) < 5:
        log.info("too few test images for a t-SNE map")
        return
    points = tsne_2d(embeddings.numpy(), seed=seed)
    labels = test.frame["label"].astype(str).tolist()
    title = f"{run_dir.name}: t-SNE of {len(test)} test embeddings"
    plot_map_png(points, labels, run_dir / "tsne.png", title=title)
    names = test.frame["id"].astype(str).tolist() if "id" in test.frame else [p.name for p in test.paths]
    write_map_html(points, labels, names, test.paths, run_dir / "tsne.html", title=title)
