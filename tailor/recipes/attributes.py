"""Every attribute of a product from one network (``configs/attributes.gin``): a head per label column,
trained LP-FT like the transfer recipe — a class-balanced linear probe per head on shared frozen features,
then ``main.num_epochs`` epochs of fine-tuning the backbone under all heads' losses together — and scored
per head on the test split.

A run with one column is a single-task model trained the same way, which is what ``bench/attributes.py``
compares the multi-task model against.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import gin
import numpy as np
import torch

from tailor import distributed
from tailor.config import model_to_evaluate
from tailor.data.attributes import (AttributeDataset, attribute_targets, attribute_values, class_counts,
                                    head_classes)
from tailor.data.datasets import FashionDataset, ImageDataset, evaluation_spec
from tailor.data.splits import stratified_holdout
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.evaluation.artifacts import write_evaluation
from tailor.evaluation.metrics import evaluate_scores, format_rate
from tailor.inference import predict_attribute_scores
from tailor.models.features import extract_features
from tailor.models.multitask import MultiTaskNet, load_multitask
from tailor.tasks.multitask import MultiTaskTask
from tailor.tasks.probe import fit_linear_head
from tailor.training import fine_tune

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = ("articleType", "baseColour", "gender", "season", "usage")


@gin.configurable("attributes")
def run_attributes(run_dir: Path, mode: str = "train", num_epochs: int = 0, seed: int = 0,
                   columns: Sequence[str] = DEFAULT_COLUMNS, min_class_count: int = 1, batch_size: int = 32,
                   val_fraction: float = 0.1, sampler_power: float = 0.0, linear_probe: bool = True,
                   probe_power: float = 1.0, probe_weight_decay: float = 3e-5, num_workers: int | str = "auto",
                   progress: bool = True) -> dict:
    """Train (``mode="train"``) or load (``mode="evaluate"``, from ``MultiTaskNet.saved_model_path``) a
    multi-attribute model, then score each head on the test data when it is configured.

    ``columns``: the label columns, one head each (any of a styles table's ``STYLES_ATTRIBUTES``, or any
    column of an ``image,label,…`` CSV).
    ``min_class_count``: an attribute value needs this many training rows to become a class.
    ``sampler_power``: class-balanced sampling of the rows by their ``FashionDataset.label_column``.
    """
    results: dict = {"method": "attributes", "mode": mode}
    test_spec = evaluation_spec(required=mode == "evaluate")
    test_frame = test_spec.catalog().frame if test_spec is not None else None  # before any image is decoded
    if mode == "train":
        model, counts, facts = _train(run_dir, list(columns), num_epochs, seed, min_class_count, batch_size,
                                      val_fraction, sampler_power, num_workers, progress,
                                      (probe_power, probe_weight_decay) if linear_probe else None)
        results.update(facts)
    elif mode == "evaluate":
        path = model_to_evaluate("MultiTaskNet.saved_model_path")
        model = load_multitask(path)
        counts = model.train_counts
        distributed.save_on_rank_zero(run_dir / "model.pt", model.export(counts))
        results["heads"] = {a: len(c) for a, c in model.head_classes.items()}
    else:
        raise ValueError(f"unknown mode {mode!r}: train or evaluate")
    if test_spec is not None:
        results.update(evaluate_attributes(model, test_spec, run_dir, counts, frame=test_frame, progress=progress))
    return results


def _train(run_dir: Path, columns: list[str], num_epochs: int, seed: int, min_class_count: int, batch_size: int,
           val_fraction: float, sampler_power: float, num_workers: int | str, progress: bool,
           probe: tuple[float, float] | None) -> tuple[MultiTaskNet, dict, dict]:
    spec = FashionDataset()
    frame = spec.catalog().frame
    head_classes(frame, columns, min_class_count)  # a wrong column fails now, before any image is read
    full = spec.load(frame=frame, progress=progress)
    heads = head_classes(full.frame, columns, min_class_count)  # of the rows whose image is readable
    model = MultiTaskNet(heads)
    config = DataConfig.from_timm(model.data_config, model.image_size)
    targets = attribute_targets(full.frame, heads)
    _log_masked(targets, heads)
    train_frame, val_frame = stratified_holdout(full.frame, val_fraction if num_epochs else 0.0, seed)
    train_rows, val_rows = train_frame.index.to_numpy(), val_frame.index.to_numpy()
    train_images = full.subset(train_rows)
    counts = class_counts(targets[train_rows], heads)
    train_counts = {a: {c: int(n) for c, n in zip(heads[a], counts[a])} for a in heads}
    facts = {"train_images": len(train_rows), "val_images": len(val_rows), "attributes": list(heads),
             "heads": {a: len(c) for a, c in heads.items()}, "linear_probe": probe is not None}
    log.info("training %d heads (%s) on %d images, validating on %d", len(heads),
             ", ".join(f"{a}: {len(c)} classes" for a, c in heads.items()), len(train_rows), len(val_rows))
    if probe is not None and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        _fit_probes(model, train_images.with_transform(eval_transform(config)), targets[train_rows], *probe,
                    progress=progress)
    if num_epochs == 0:
        distributed.save_on_rank_zero(run_dir / "model.pt", model.export(train_counts))
        return model.eval(), train_counts, {**facts, "best_step": 0, "best_val_acc": None, "epochs": 0, "steps": 0}

    train_ds = AttributeDataset(train_images.with_transform(train_transform(config)), targets[train_rows])
    val_ds = AttributeDataset(full.subset(val_rows).with_transform(eval_transform(config)), targets[val_rows])
    training = fine_tune(MultiTaskTask(model, class_counts=counts), train_ds, val_ds, train_images.targets, run_dir,
                         num_epochs, seed, batch_size, sampler_power, num_workers,
                         curves_title=f"{run_dir.name}: training and validation (mean over heads)")
    distributed.save_on_rank_zero(run_dir / "model.pt", model.export(train_counts))
    return model.eval(), train_counts, {**facts, **training}


def _log_masked(targets: np.ndarray, heads: dict[str, list[str]]) -> None:
    for j, attribute in enumerate(heads):
        missing = int((targets[:, j] < 0).sum())
        if missing:
            log.info("%s: %d row(s) without a usable value are masked for this head only", attribute, missing)


def _fit_probes(model: MultiTaskNet, train_ds: ImageDataset, targets: np.ndarray, power: float,
                weight_decay: float, progress: bool) -> None:
    """Each head as a class-balanced logistic regression on one shared pass of frozen features, fitted on the
    rows that have a value for its attribute."""
    features = extract_features(model.backbone, train_ds, progress=progress, desc="frozen features")
    targets = targets[train_ds.source_rows]  # the rows the pass could read
    ranks = distributed.current()
    heads = None
    if ranks.is_zero:  # rank 0 fits; every rank evaluates with the heads
        heads = []
        for j, attribute in enumerate(model.attributes):
            known = torch.as_tensor(targets[:, j] >= 0)
            heads.append(fit_linear_head(features[:, known], torch.as_tensor(targets[known.numpy(), j]),
                                         len(model.head_classes[attribute]), power=power, weight_decay=weight_decay))
    for attribute, (weight, bias) in zip(model.attributes, ranks.broadcast(heads)):
        linear = model.linear(attribute)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
    log.info("linear probes fitted for %d heads on %d frozen features", len(model.attributes), features.shape[-1])


@gin.configurable("evaluate_attributes")
def evaluate_attributes(model: MultiTaskNet, spec: FashionDataset, run_dir: Path,
                        train_counts: dict[str, dict[str, int]], tta: bool = True, batch_size: int = 64,
                        progress: bool = True, frame=None) -> dict:
    """Score every head on ``spec``'s rows that have a value for its attribute (values the model never saw
    count as errors). Writes ``heads/<attribute>/`` with each head's per-class table, confusion matrix and
    mistakes. Top-5 is reported only for attributes with more than five classes. ``frame``: the table, when
    already read."""
    frame = spec.catalog().frame if frame is None else frame
    config = DataConfig.from_timm(model.data_config, model.image_size)
    test = spec.load(transform=eval_transform(config), frame=frame, progress=progress)
    scores = predict_attribute_scores(model, test, batch_size=batch_size, tta=tta, progress=progress)
    if not distributed.current().is_zero:  # the pass was shared; rank 0 scores and writes
        return {}
    per_head = {}
    for attribute, classes in model.head_classes.items():
        values = attribute_values(test.frame, attribute)
        rows = np.flatnonzero(values.notna().to_numpy())
        labels = list(values.iloc[rows])
        result = evaluate_scores(scores[attribute][rows], labels, classes, train_counts.get(attribute, {}))
        if len(classes) <= 5:
            result.drop_top5()
        head_test = test.subset(rows)
        head_test = ImageDataset(head_test.root, head_test.frame.assign(label=labels), classes,
                                 images=head_test.images, max_side=head_test.max_side,
                                 min_side=head_test.min_side)
        out = run_dir / "heads" / attribute
        out.mkdir(parents=True, exist_ok=True)
        write_evaluation(result, head_test, scores[attribute][rows], classes, out,
                         title=f"{run_dir.name} — {attribute}")
        per_head[attribute] = {"classes": len(classes), "num_missing": len(test) - len(rows), **result.as_dict()}
        log.info("%s: top-1 %.4f on %d test images", attribute, result.top1, result.num_test)
    return {"test_csv": str(spec.csv_file), "data_root": str(spec.root_dir.resolve()), "num_test": len(test),
            "attribute_results": per_head,
            "mean_top1": float(np.mean([r["top1"] for r in per_head.values()]))}


def attributes_table(results: dict) -> str:
    """The per-attribute results as the markdown table ``tailor run`` prints."""
    lines = ["| attribute | classes | top-1 | top-5 | test images | unseen-value rows |", "|---|---:|---:|---:|---:|---:|"]
    for attribute, r in results["attribute_results"].items():
        lines.append(f"| {attribute} | {r['classes']} | {r['top1']:.4f} | {format_rate(r.get('top5'))} | {r['num_test']} | "
                     f"{r['num_unseen_class_rows']} |")
    return "\n".join(lines) + f"\n\nmean top-1 over {len(results['attribute_results'])} attributes: {results['mean_top1']:.4f}"
