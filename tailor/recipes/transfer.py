"""The seed's headline pipeline: fine-tune a pretrained CNN on a split, keep the best checkpoint by validation
accuracy, and score it per class on the test split. ``configs/transfer.gin``, ``finetune.gin`` and
``transfer_evaluate.gin`` all run through here."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tailor.distributed import Runtime
from tailor import run_folder
from tailor.errors import ConfigError
from tailor.data.catalog import CatalogError
from tailor.data.datasets import FashionDataset, ImageDataset, RunData, top_classes
from tailor.data.splits import stratified_holdout
from tailor.data.transforms import DataConfig, eval_transform, train_transform
from tailor.evaluation.artifacts import write_evaluation
from tailor.evaluation.metrics import evaluate_scores
from tailor.evaluation.settings import EvaluationSettings
from tailor.evaluation.scores import predict_scores
from tailor.models.features import extract_features
from tailor.models.files import PROBE_FEATURES, load_model_file
from tailor.models.ensemble import EnsembleNet, ensemble_from_saved
from tailor.models.files import is_ensemble_file
from tailor.models.heads import TransferNet
from tailor.models.registry import load_classifier
from tailor.names.classes import attach_name_only, name_only_categories, name_settings
from tailor.recipes.parts import RecipeParts
from tailor.tasks.calibration import calibration_settings
from tailor.tasks.probe import fit_linear_heads
from tailor.training import fine_tune

log = logging.getLogger(__name__)

GROUPS = ("all", "top", "other", "model")


@dataclass(frozen=True)
class TransferInputs:
    """What the transfer recipe needs from other bindings' scopes, resolved once by the front-end
    (:func:`tailor.experiment.main`) and passed in, never read back from gin here."""

    #: ``evaluate.*``: how the test split is scored; its ``group`` also says which categories names may add
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    #: ``TransferNet.backbone`` as bound: a list makes an ensemble (None: TransferNet's own default)
    backbone: str | tuple[str, ...] | list[str] | None = None
    #: ``TransferNet.saved_model_path``: the model to start from (None: ImageNet weights)
    saved_model_path: str | None = None
    #: ``TransferNet.image_size`` (None: the backbone's own)
    image_size: int | None = None
    #: ``names.*``: whether and how categories without training images are carried by name
    names: dict = field(default_factory=name_settings)
    #: ``calibration.*``: the settings of the probe's few-shot calibration (``transfer.calibrate_few_shot``)
    calibration: dict = field(default_factory=calibration_settings)

    @property
    def group(self) -> str:
        """``evaluate.group``: which test rows are scored, and which categories names may add."""
        return self.evaluation.group


def run_transfer(run_dir: Path, data: RunData, mode: str = "train", num_epochs: int = 5, seed: int = 0, batch_size: int = 32,
                 val_fraction: float = 0.1, sampler_power: float = 0.5, num_workers: int | str = "auto",
                 linear_probe: bool = True, probe_power: float = 1.0, probe_weight_decay: float = 3e-5,
                 calibrate_few_shot: bool = True, progress: bool = True,
                 inputs: TransferInputs | None = None, runtime: Runtime | None = None,
                 parts: RecipeParts | None = None) -> dict:
    """Train (``mode="train"``) or load (``mode="evaluate"``) a classifier on ``data.train``, then evaluate it on
    ``data.test`` when there is one, on ``runtime`` (where it computes, and its processes), built from ``parts``
    (the network and task classes, augmentation and trainer settings). Returns the contents of ``results.json``.

    ``linear_probe``: first fit the new head on frozen features, class-balanced by ``probe_power`` (LP-FT);
    with ``main.num_epochs = 0`` that probe is the whole training. ``calibrate_few_shot``: classes with few
    training images borrow the spread of similar classes in that probe (:mod:`tailor.tasks.calibration`,
    settings bound as ``calibration.*``). ``names.enabled``: the classifier also carries the categories of the
    catalog that have no training image, by name (:mod:`tailor.names.classes`).
    """
    inputs = inputs or TransferInputs()
    runtime = runtime or Runtime.local()
    results: dict = {"method": "transfer", "mode": mode}
    if mode not in ("train", "evaluate"):
        raise ValueError(f"unknown mode {mode!r}: train or evaluate")
    # every input the run needs is read before the first image is decoded: the training table, then the test's
    if mode == "evaluate" and not inputs.saved_model_path:
        raise ConfigError("evaluation needs a model: -p \"TransferNet.saved_model_path='RUN/model.pt'\"")
    train_frame = data.train.catalog().frame if mode == "train" else None
    test_spec = data.test
    test_frame = evaluation_table(test_spec, inputs.group) if test_spec is not None else None
    if mode == "train" and inputs.names["enabled"]:  # the category list is read now, not after the features
        name_only_categories(data.train.csv_file, sorted(train_frame["label"].unique()), inputs.group,
                             inputs.names["categories"])
    if mode == "train":
        options = dict(num_epochs=num_epochs, seed=seed, batch_size=batch_size, val_fraction=val_fraction,
                       sampler_power=sampler_power, num_workers=num_workers, progress=progress,
                       parts=parts or RecipeParts(),
                       probe=dict(power=probe_power, weight_decay=probe_weight_decay,
                                  calibration=inputs.calibration if calibrate_few_shot else None)
                       if linear_probe else None)
        model, train_counts, training = _train(run_dir, data.train, train_frame, inputs, runtime, **options)
        results.update(training)
    else:
        model = _load_any(inputs.saved_model_path)
        train_counts = getattr(model, "train_counts", {})
        runtime.save(run_dir / run_folder.MODEL, model.export(train_counts))
    if test_spec is not None:
        results.update(evaluate_classifier(model, test_spec, run_dir, train_counts, frame=test_frame,
                                           progress=progress, runtime=runtime, **asdict(inputs.evaluation)))
    return results


def evaluation_table(spec: FashionDataset, group: str = "all") -> pd.DataFrame:
    """The evaluation table, read now, before any image is decoded (not after training), with the group it
    will be scored by checked against it (``top_classes.txt`` for 'top' and 'other')."""
    try:
        frame = spec.catalog().frame
    except CatalogError as err:
        raise CatalogError(f"evaluation data (evaluate/FashionDataset.csv_file): {err}") from None
    _select_group(frame, group, spec, model_classes=[])
    return frame


def build_classifier(classes: list[str], inputs: TransferInputs | None = None,
                     network: type[TransferNet] = TransferNet) -> TransferNet | EnsembleNet:
    """The classifier the config asks for: a ``network`` (a :class:`TransferNet`, bound to ``TransferNet.*`` by
    the front-end), or an :class:`EnsembleNet` of one per backbone when ``inputs.backbone`` is a list or
    ``inputs.saved_model_path`` holds an ensemble (every other ``TransferNet.*`` binding applies to each
    member)."""
    inputs = inputs or TransferInputs()
    saved_path = inputs.saved_model_path
    if saved_path:
        saved = load_model_file(saved_path)
        if is_ensemble_file(saved):
            return ensemble_from_saved(classes, saved, saved_path, network)
        if "backbone" in saved:  # a tailor model file: its backbone, whatever TransferNet.backbone says
            return network.from_saved(classes, saved, saved_path, image_size=inputs.image_size)
        return network(classes)  # a Lightning checkpoint, which names no backbone: TransferNet.backbone's
    backbones = inputs.backbone
    if isinstance(backbones, (list, tuple)):
        if not backbones:
            raise ConfigError("TransferNet.backbone = []: name at least one backbone")
        if len(set(backbones)) < len(backbones):
            raise ConfigError(f"TransferNet.backbone = {list(backbones)}: a backbone is named twice")
        members = [network(classes, backbone=name) for name in backbones]
        return members[0] if len(members) == 1 else EnsembleNet(members)
    return network(classes)


def _load_any(path: str) -> TransferNet | EnsembleNet:
    """A tailor ``model.pt`` or a Lightning checkpoint of a classification run."""
    saved = load_model_file(path)
    if "state_dict" in saved and "format" not in saved and "classes" in saved:
        model = TransferNet(saved["classes"], backbone=saved["backbone"], pretrained=False, dropout=0.0,
                            image_size=saved.get("image_size"), saved_model_path=path, trainable_groups=None)
        model.train_counts = {}
        return model.eval()
    return load_classifier(path)


def _train(run_dir: Path, spec: FashionDataset, frame: pd.DataFrame, inputs: TransferInputs, runtime: Runtime,
           num_epochs: int, seed: int,
           batch_size: int, val_fraction: float, sampler_power: float, num_workers: int | str, progress: bool,
           probe: dict | None, parts: RecipeParts):
    classes = sorted(frame["label"].unique())
    model = build_classifier(classes, inputs, parts.transfer_net)
    if isinstance(model, EnsembleNet):
        if num_epochs:
            raise ConfigError(f"an ensemble ({' + '.join(model.backbone_name)}) is trained as linear probes only: "
                              f"set main.num_epochs = 0, or fine-tune one backbone (TransferNet.backbone = 'name')")
        if probe is None:
            raise ConfigError("an ensemble is trained as linear probes: set transfer.linear_probe = True")
    config = DataConfig.from_timm(model.data_config, model.image_size)
    full = spec.load(classes, frame=frame, progress=progress)
    # The validation split only serves to pick a fine-tuning checkpoint: a probe alone trains on every image.
    train_frame, val_frame = stratified_holdout(full.frame, val_fraction if num_epochs else 0.0, seed)
    train_ds = full.subset(train_frame.index).with_transform(train_transform(config, parts.augmentation))
    val_ds = full.subset(val_frame.index).with_transform(eval_transform(config))
    counts = np.bincount(train_ds.targets, minlength=len(classes))
    train_counts = {c: int(n) for c, n in zip(classes, counts)}
    log.info("training on %d images (%d classes), validating on %d", len(train_ds), len(classes), len(val_ds))
    names = inputs.names
    last = run_dir / "checkpoints" / "last.ckpt"
    plain_train = train_ds.with_transform(eval_transform(config))
    settings = probe or dict(power=1.0, weight_decay=3e-5, calibration=None)  # what enrolling refits with
    features = None
    if probe is not None and not last.is_file():
        features = _fit_probe(model, plain_train, settings, progress, runtime)
        if len(plain_train) < len(train_ds):  # a streaming pass met unreadable images: fine-tune without them
            train_ds.keep_rows(plain_train.source_rows)
    facts = {"train_images": len(train_ds), "val_images": len(val_ds), "classes": classes,
             "linear_probe": probe is not None}
    if num_epochs == 0:
        training = {"best_step": 0, "best_val_acc": None, "epochs": 0, "steps": 0}
    else:
        training = fine_tune(parts.classification_task(model, class_counts=counts), train_ds, val_ds, train_ds.targets,
                             run_dir, num_epochs, seed, batch_size, sampler_power, num_workers,
                             curves_title=f"{run_dir.name}: training and validation", runtime=runtime,
                             trainer=parts.trainer)
        features = None  # of the trained backbone, from here on
    features = _keep_features(run_dir, model, plain_train, features, settings, progress, runtime)
    if names["enabled"]:
        widths = [h.in_features for h in model.linear_heads()]
        facts["names"] = attach_name_only(
            model, full.frame, features, torch.as_tensor(plain_train.targets), spec.csv_file, inputs.group,
            num_epochs, lambda f, t, n: fit_linear_heads(f, t, n, widths, **settings, device=runtime.device), names,
            start_model=inputs.saved_model_path, runtime=runtime)
        train_counts.update({c: 0 for c in model.name_only_classes})
    runtime.save(run_dir / run_folder.MODEL, model.export(train_counts))
    return model.eval(), train_counts, {**facts, **training}


def _fit_probe(model: TransferNet | EnsembleNet, train_ds: ImageDataset, settings: dict,
               progress: bool, runtime: Runtime) -> torch.Tensor:
    """Set the head (each member's, in an ensemble) to a class-balanced logistic regression on frozen features
    of the training images (``settings``: :func:`fit_linear_head`'s power, weight_decay and calibration);
    return those features."""
    features = _train_features(model, train_ds, progress, "frozen features", runtime)
    widths = [h.in_features for h in model.linear_heads()]
    fitted = (fit_linear_heads(features, torch.as_tensor(train_ds.targets), len(model.classes), widths, **settings,
                               device=runtime.device)
              if runtime.is_zero else None)
    model.set_linear_heads(runtime.broadcast(fitted), model.classes)  # rank 0 fits; every rank evaluates with it
    log.info("linear probe%s fitted on %d frozen features", "s" if len(widths) > 1 else "", features.shape[-1])
    return features


def _train_features(model: TransferNet | EnsembleNet, train_ds: ImageDataset, progress: bool,
                    desc: str, runtime: Runtime) -> torch.Tensor:
    return extract_features(model.feature_extractor(), train_ds, progress=progress, desc=desc, runtime=runtime)


def _keep_features(run_dir: Path, model: TransferNet | EnsembleNet, train_ds: ImageDataset, features: torch.Tensor | None,
                   settings: dict, progress: bool, runtime: Runtime) -> torch.Tensor:
    """Keep the final backbone's features of the training images (fp16): `tailor enroll` refits a
    class-balanced head on them plus a new category's examples, in seconds, without touching the network.
    Returns them (computed here when ``features`` is None)."""
    if features is None:
        features = _train_features(model, train_ds, progress, "features for enrolling", runtime)
    runtime.save(run_dir / PROBE_FEATURES, {"features": features.half(), "targets": torch.as_tensor(train_ds.targets),
                                            "classes": list(model.image_classes), **settings})
    return features


def evaluate_classifier(model: TransferNet | EnsembleNet, spec: FashionDataset, run_dir: Path, train_counts: dict[str, int],
                        group: str = "all", tta: bool = True, batch_size: int = 64, progress: bool = True,
                        frame: pd.DataFrame | None = None, runtime: Runtime | None = None) -> dict:
    """Score ``model`` on ``spec``'s rows of ``group`` (on ``runtime``) and write ``per_class.md``/``.csv`` and
    ``confusion.png``.

    ``group``: "all" rows; "top" or "other": rows of the N most frequent categories or of the rest
    (from ``top_classes.txt`` beside the test CSV, written by ``tailor splits``); "model": rows of classes the
    model knows. ``frame``: the table, when already read.
    """
    frame = _select_group(spec.catalog().frame if frame is None else frame, group, spec, model.classes)
    config = DataConfig.from_timm(model.data_config, model.image_size)
    test = spec.load(model.classes, eval_transform(config), frame=frame, progress=progress)
    runtime = runtime or Runtime.local()
    scores = predict_scores(model, test, batch_size=batch_size, tta=tta, progress=progress, runtime=runtime)
    if not runtime.is_zero:  # the pass was shared; rank 0 scores and writes
        return {}
    result = evaluate_scores(scores, list(test.frame["label"]), model.classes, train_counts,
                             name_only=model.name_only_classes)
    write_evaluation(result, test, scores, model.classes, run_dir, title=f"{run_dir.name} — test ({group})")
    return {"test_group": group, "test_csv": str(spec.csv_file), "data_root": str(spec.root_dir.resolve()),
            **result.as_dict()}


def _select_group(frame: pd.DataFrame, group: str, spec: FashionDataset, model_classes: list[str]) -> pd.DataFrame:
    if group not in GROUPS:
        raise ValueError(f"unknown evaluation group {group!r}: one of {GROUPS}")
    if group == "all":
        return frame
    if group == "model":
        return frame[frame["label"].isin(model_classes)]
    top = top_classes(spec)
    if top is None:
        raise CatalogError(f"evaluate.group='{group}' needs top_classes.txt beside the test CSV "
                           f"(written by `tailor splits`)")
    return frame[frame["label"].isin(top) == (group == "top")]

