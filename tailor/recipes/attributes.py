"""Every attribute of a product from one network (``configs/attributes.gin``): a head per label column,
trained LP-FT like the transfer recipe — a class-balanced linear probe per head on shared frozen features,
then ``main.num_epochs`` epochs of fine-tuning the backbone under all heads' losses together — and scored
per head on the test split.

A run with one column is a single-task model trained the same way, which is what ``bench/attributes.py``
compares the multi-task model against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tailor.distributed import Runtime
from tailor import run_folder
from tailor.errors import ConfigError
from tailor.data.attributes import (AttributeDataset, attribute_targets, attribute_values, class_counts,
                                    head_classes)
from tailor.data.datasets import FashionDataset, ImageDataset, RunData
from tailor.data.splits import stratified_holdout
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.evaluation.artifacts import write_evaluation
from tailor.evaluation.settings import EvaluationSettings
from tailor.evaluation.metrics import confusion_counts, evaluate_scores, format_rate
from tailor.evaluation.scores import predict_attribute_scores
from tailor.models.features import extract_features
from tailor.models.colour import dominant_colour
from tailor.models.multitask import MultiTaskNet, load_multitask
from tailor.tasks.colour_probe import (COLOUR_POWERS, COLOUR_WEIGHT_DECAYS, colour_descriptors, colour_grid,
                                       fit_colour_head)
from tailor.tasks.probe import fit_linear_head
from tailor.training import fine_tune
from tailor.recipes.parts import RecipeParts

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = ("articleType", "baseColour", "gender", "season", "usage")


def run_attributes(run_dir: Path, data: RunData, mode: str = "train", num_epochs: int = 0, seed: int = 0,
                   columns: Sequence[str] = DEFAULT_COLUMNS, min_class_count: int = 1, batch_size: int = 32,
                   val_fraction: float = 0.1, sampler_power: float = 0.0, linear_probe: bool = True,
                   probe_power: float = 1.0, probe_weight_decay: float = 3e-5,
                   colour_powers: Sequence[float] = COLOUR_POWERS,
                   colour_weight_decays: Sequence[float] = COLOUR_WEIGHT_DECAYS, num_workers: int | str = "auto",
                   progress: bool = True, saved_model: str | None = None, runtime: Runtime | None = None,
                   parts: RecipeParts | None = None, evaluation: EvaluationSettings | None = None) -> dict:
    """Train on ``data.train`` (``mode="train"``) or load (``mode="evaluate"``, ``saved_model``: the bound
    ``MultiTaskNet.saved_model_path``) a multi-attribute model, then score each head on ``data.test`` when there
    is one (as ``evaluation`` says: ``tta``, ``batch_size``), on ``runtime``, built from ``parts`` (the network
    and task classes, augmentation and trainer settings).

    ``columns``: the label columns, one head each (any of a styles table's ``STYLES_ATTRIBUTES``, or any
    column of an ``image,label,…`` CSV).
    ``min_class_count``: an attribute value needs this many training rows to become a class.
    ``sampler_power``: class-balanced sampling of the rows by their ``FashionDataset.label_column``.
    ``colour_powers`` × ``colour_weight_decays``: the class priors (0: every image weighs the same, 1: every
    class) and regularisations among which each colour head's probe (``MultiTaskNet.colour_heads``) is chosen
    by 3-fold cross-validation on the training rows. Measured on the sample: balancing costs colour accuracy.
    """
    runtime = runtime or Runtime.local()
    results: dict = {"method": "attributes", "mode": mode}
    test_spec = data.test
    test_frame = test_spec.catalog().frame if test_spec is not None else None  # before any image is decoded
    if mode == "train":
        model, counts, facts = _train(run_dir, data.train, list(columns), num_epochs, seed, min_class_count, batch_size,
                                      val_fraction, sampler_power, num_workers, progress, runtime,
                                      ProbeSettings(probe_power, probe_weight_decay, tuple(colour_powers),
                                                    tuple(colour_weight_decays), seed) if linear_probe else None,
                                      parts or RecipeParts())
        results.update(facts)
    elif mode == "evaluate":
        if not saved_model:
            raise ConfigError("evaluation needs a model: -p \"MultiTaskNet.saved_model_path='RUN/model.pt'\"")
        model = load_multitask(saved_model)
        counts = model.train_counts
        runtime.save(run_dir / run_folder.MODEL, model.export(counts))
        results["heads"] = {a: len(c) for a, c in model.head_classes.items()}
    else:
        raise ValueError(f"unknown mode {mode!r}: train or evaluate")
    if test_spec is not None:
        evaluation = evaluation or EvaluationSettings()
        results.update(evaluate_attributes(model, test_spec, run_dir, counts, frame=test_frame, progress=progress,
                                           runtime=runtime, tta=evaluation.tta, batch_size=evaluation.batch_size))
    return results


def _train(run_dir: Path, spec: FashionDataset, columns: list[str], num_epochs: int, seed: int, min_class_count: int, batch_size: int,
           val_fraction: float, sampler_power: float, num_workers: int | str, progress: bool, runtime: Runtime,
           probe: "ProbeSettings | None", parts: RecipeParts) -> tuple[MultiTaskNet, dict, dict]:
    frame = spec.catalog().frame
    head_classes(frame, columns, min_class_count)  # a wrong column fails now, before any image is read
    full = spec.load(frame=frame, progress=progress)
    heads = head_classes(full.frame, columns, min_class_count)  # of the rows whose image is readable
    model = parts.multitask_net(heads)
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
        facts["probes"] = _fit_probes(model, train_images.with_transform(eval_transform(config)),
                                      targets[train_rows], probe, progress, runtime)
    elif model.colour is not None:  # no probes to fit: the descriptor is still standardised on training images
        model.colour.fit(colour_descriptors(model.colour, train_images.with_transform(eval_transform(config)), progress,
                                            runtime=runtime))
    if num_epochs == 0:
        runtime.save(run_dir / run_folder.MODEL, model.export(train_counts))
        return model.eval(), train_counts, {**facts, "best_step": 0, "best_val_acc": None, "epochs": 0, "steps": 0}

    train_ds = AttributeDataset(train_images.with_transform(train_transform(config, parts.augmentation)),
                                targets[train_rows])
    val_ds = AttributeDataset(full.subset(val_rows).with_transform(eval_transform(config)), targets[val_rows])
    training = fine_tune(parts.multitask_task(model, class_counts=counts), train_ds, val_ds, train_images.targets,
                         run_dir,
                         num_epochs, seed, batch_size, sampler_power, num_workers,
                         curves_title=f"{run_dir.name}: training and validation (mean over heads)", runtime=runtime,
                         trainer=parts.trainer)
    runtime.save(run_dir / run_folder.MODEL, model.export(train_counts))
    return model.eval(), train_counts, {**facts, **training}


def _log_masked(targets: np.ndarray, heads: dict[str, list[str]]) -> None:
    for j, attribute in enumerate(heads):
        missing = int((targets[:, j] < 0).sum())
        if missing:
            log.info("%s: %d row(s) without a usable value are masked for this head only", attribute, missing)


@dataclass(frozen=True)
class ProbeSettings:
    """How the heads' linear probes are fitted: one class prior and weight decay for every head, and the grid
    each colour head's pair is chosen from by cross-validation on the training rows."""

    power: float
    weight_decay: float
    colour_powers: tuple[float, ...]
    colour_weight_decays: tuple[float, ...]
    seed: int


def _fit_probes(model: MultiTaskNet, train_ds: ImageDataset, targets: np.ndarray, settings: ProbeSettings,
                progress: bool, runtime: Runtime) -> dict:
    """Each head as a logistic regression on one shared pass of frozen features, fitted on the rows that have
    a value for its attribute; a colour head sees the standardised colour descriptor too, with the class prior
    and weight decay that cross-validate best (:func:`fit_colour_head`). Returns each head's settings."""
    features = extract_features(model.backbone, train_ds, progress=progress, desc="frozen features",
                                runtime=runtime)
    targets = targets[train_ds.source_rows]  # the rows the pass could read
    raw = (colour_descriptors(model.colour, train_ds, progress, runtime=runtime) if model.colour is not None
           else None)
    ranks = runtime
    heads, chosen = None, {}
    if ranks.is_zero:  # rank 0 fits; every rank evaluates with the heads
        heads = []
        for j, attribute in enumerate(model.attributes):
            y = torch.as_tensor(targets[:, j])
            classes = len(model.head_classes[attribute])
            if attribute in model.colour_heads:
                weight, bias, chosen[attribute] = fit_colour_head(
                    features, raw, y, classes, model.colour,
                    colour_grid(settings.colour_powers, settings.colour_weight_decays), settings.seed, attribute,
                    device=runtime.device)
            else:
                known = y >= 0
                chosen[attribute] = {"power": settings.power, "weight_decay": settings.weight_decay}
                weight, bias = fit_linear_head(features[:, known], y[known], classes, **chosen[attribute],
                                               device=runtime.device)
            heads.append((weight, bias))
    if model.colour is not None:  # every rank standardises the descriptor as rank 0 did
        model.colour.load_state_dict(ranks.broadcast({k: v.cpu() for k, v in model.colour.state_dict().items()}))
    for attribute, (weight, bias) in zip(model.attributes, ranks.broadcast(heads)):
        linear = model.linear(attribute)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
    log.info("linear probes fitted for %d heads on %d frozen features", len(model.attributes), features.shape[-1])
    return ranks.broadcast(chosen)


def evaluate_attributes(model: MultiTaskNet, spec: FashionDataset, run_dir: Path,
                        train_counts: dict[str, dict[str, int]], tta: bool = True, batch_size: int = 64,
                        progress: bool = True, frame=None, runtime: Runtime | None = None) -> dict:
    """Score every head on ``spec``'s rows that have a value for its attribute (values the model never saw
    count as errors). Writes ``heads/<attribute>/`` with each head's per-class table, confusion matrix and
    mistakes. Top-5 is reported only for attributes with more than five classes. ``frame``: the table, when
    already read."""
    frame = spec.catalog().frame if frame is None else frame
    config = DataConfig.from_timm(model.data_config, model.image_size)
    test = spec.load(transform=eval_transform(config), frame=frame, progress=progress)
    runtime = runtime or Runtime.local()
    scores = predict_attribute_scores(model, test, batch_size=batch_size, tta=tta, progress=progress,
                                      runtime=runtime)
    if not runtime.is_zero:  # the pass was shared; rank 0 scores and writes
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
        if attribute in model.colour_heads:
            swatches = class_swatches(head_test, progress)
            for entry in per_head[attribute]["per_class"]:
                entry["swatch"] = swatches.get(entry["class"])
            per_head[attribute]["confused_pairs"] = confused_pairs(scores[attribute][rows], labels, classes)
        log.info("%s: top-1 %.4f on %d test images", attribute, result.top1, result.num_test)
    return {"test_csv": str(spec.csv_file), "data_root": str(spec.root_dir.resolve()), "num_test": len(test),
            "attribute_results": per_head,
            "mean_top1": float(np.mean([r["top1"] for r in per_head.values()]))}


def confused_pairs(scores: np.ndarray, labels: list[str], classes: list[str], top: int = 10) -> list[dict]:
    """The ``top`` most frequent (true → predicted) mistakes: overlapping colour names (Navy Blue / Blue, Grey /
    Charcoal) show up here first."""
    matrix, true_names, predicted_names = confusion_counts(scores, labels, classes)
    pairs = [{"true": true_names[i], "predicted": predicted_names[j], "count": int(matrix[i, j])}
             for i, j in zip(*np.nonzero(matrix)) if true_names[i] != predicted_names[j]]
    return sorted(pairs, key=lambda p: (-p["count"], p["true"], p["predicted"]))[:top]


def class_swatches(dataset: ImageDataset, progress: bool = False) -> dict[str, str]:
    """Each class's colour as a person sees it in the photos: the median of its products' foreground colours
    (:func:`~tailor.models.colour.dominant_colour`), as ``#rrggbb`` — the report shows it beside the name."""
    colours = []
    for i in tqdm(range(len(dataset)), desc="colour swatches", disable=not progress, leave=False):
        colours.append(dominant_colour(dataset.image(i)[None].float() / 255)[0])
    if not colours:
        return {}
    colours = torch.stack(colours)
    labels = dataset.frame["label"].to_numpy()
    out = {}
    for label in sorted(set(labels)):
        median = colours[torch.as_tensor(labels == label)].median(dim=0).values
        out[label] = "#" + "".join(f"{round(float(v) * 255):02x}" for v in median)
    return out


def attributes_table(results: dict) -> str:
    """The per-attribute results as the markdown table ``tailor run`` prints."""
    lines = ["| attribute | classes | top-1 | top-5 | test images | unseen-value rows |", "|---|---:|---:|---:|---:|---:|"]
    for attribute, r in results["attribute_results"].items():
        lines.append(f"| {attribute} | {r['classes']} | {r['top1']:.4f} | {format_rate(r.get('top5'))} | {r['num_test']} | "
                     f"{r['num_unseen_class_rows']} |")
    return "\n".join(lines) + f"\n\nmean top-1 over {len(results['attribute_results'])} attributes: {results['mean_top1']:.4f}"
