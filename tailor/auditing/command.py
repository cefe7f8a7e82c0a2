"""``tailor audit RUN``: audit the table a run trained on — labels that look wrong, products listed twice —
and write ``RUN/audit/`` (``label_issues.csv``, most suspicious first; ``duplicates.csv``; ``summary.json``)
and the report's audit section.

The audit reads frozen ImageNet features of the run's backbone (cached, shared with the runs), never the
run's trained weights: a model fitted to the labels would agree with their mistakes.
"""

from __future__ import annotations

from tailor import run_folder
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from tailor.auditing.duplicates import DUPLICATE_COSINE, near_duplicates
from tailor.auditing.labels import audit_labels, check_audit_size
from tailor.data.catalog import product_ids
from tailor.data.datasets import FashionDataset, ImageDataset
from tailor.data.transforms import DataConfig, eval_transform
from tailor.distributed import Runtime
from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.feature_cache import FeatureCache
from tailor.files import atomic_write
from tailor.models.files import load_model_file

log = logging.getLogger(__name__)

AUDIT_FOLDER = run_folder.AUDIT


def training_table(run_dir: Path, csv_file: str | Path | None, images: str | Path | None) -> FashionDataset:
    """Where the run's training products are: the training table the run was given
    (:meth:`~tailor.run_folder.RunFolder.training_source`), or ``csv_file`` / ``images`` when given."""
    if csv_file is not None and images is not None:
        return FashionDataset(root_dir=images, csv_file=csv_file)
    folder = run_folder.RunFolder(run_dir)
    if not folder.config.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.gin (is this a tailor run?); or give --csv and --images")
    source = folder.training_source()
    if source is None:
        raise FileNotFoundError(f"{run_dir}: the run names no training table (it only evaluated a model); "
                                f"give --csv and --images")
    return FashionDataset(root_dir=images or source.root, csv_file=csv_file or source.csv_file,
                          label_column=source.label_column)


def run_backbone(run_dir: Path) -> str:
    """The backbone the run's model was built on (an ensemble's first member), else the default."""
    model_file = run_dir / run_folder.MODEL
    if not model_file.is_file():
        return DEFAULT_BACKBONE
    saved = load_model_file(model_file)
    name = saved.get("backbone") or next((m.get("backbone") for m in saved.get("members", [])), None)
    return name if isinstance(name, str) else DEFAULT_BACKBONE


def run_audit(run_dir: str | Path, csv_file: str | Path | None = None, images: str | Path | None = None,
              out: str | Path | None = None, folds: int = 5, seed: int = 0,
              duplicate_cosine: float = DUPLICATE_COSINE, progress: bool = True,
              device: str | torch.device = "auto") -> dict:
    """Audit the run's training table (or ``csv_file`` under ``images``), computing on ``device``; returns the
    summary it writes."""
    runtime = Runtime.local(device)
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / AUDIT_FOLDER
    spec = training_table(run_dir, csv_file, images)
    frame = spec.catalog().frame
    check_audit_size(len(frame), folds)  # a table too small fails before its images are decoded
    data = spec.load(frame=frame, progress=progress)
    name = run_backbone(run_dir)
    backbone = create_backbone(name).eval()
    transform = eval_transform(DataConfig.from_timm(backbone_data_config(backbone)))
    view = data.with_transform(transform)
    features = FeatureCache(backbone, f"{name}:pretrained", repr(transform)).features(
        view, progress=progress, desc="frozen features", runtime=runtime)
    data = view  # rows the pass could not read are gone from both
    labels = audit_labels(features, data.targets, len(data.classes), folds, seed, device=runtime.device)
    pairs = near_duplicates(features, duplicate_cosine)

    out.mkdir(parents=True, exist_ok=True)
    issues = _issues_table(data, labels)
    atomic_write(out / "label_issues.csv", lambda f: issues.to_csv(f, index=False), mode="w")
    duplicates = _duplicates_table(data, pairs)
    atomic_write(out / "duplicates.csv", lambda f: duplicates.to_csv(f, index=False), mode="w")
    summary = {"products": len(data), "classes": len(data.classes), "flagged_labels": int(labels.flagged.sum()),
               "duplicate_pairs": len(pairs), "duplicate_cosine": duplicate_cosine, "folds": folds, "seed": seed,
               "backbone": name, "csv": str(spec.csv_file), "data_root": str(Path(spec.root_dir).resolve())}
    atomic_write(out / "summary.json", lambda f: json.dump(summary, f, indent=2), mode="w")
    return summary


def _ids(data: ImageDataset) -> list[str]:
    return product_ids(data.frame)


def _issues_table(data: ImageDataset, labels) -> pd.DataFrame:
    order = labels.ranking()
    suggested = labels.probabilities.argmax(1)
    ids = _ids(data)
    return pd.DataFrame({
        "rank": range(1, len(order) + 1),
        "id": [ids[i] for i in order],
        "image": data.frame["image"].iloc[order].astype(str).tolist(),
        "label": [data.classes[data.targets[i]] for i in order],
        "suggested": [data.classes[suggested[i]] for i in order],
        "suggested_probability": labels.probabilities[order, suggested[order]].round(4),
        "label_quality": labels.quality[order].round(4),
        "flagged": labels.flagged[order]})


def _duplicates_table(data: ImageDataset, pairs: list[tuple[int, int, float]]) -> pd.DataFrame:
    ids, images, frame_labels = _ids(data), data.frame["image"].astype(str).tolist(), data.frame["label"].tolist()
    return pd.DataFrame([{"id_a": ids[i], "id_b": ids[j], "cosine": round(s, 4), "label_a": frame_labels[i],
                          "label_b": frame_labels[j], "image_a": images[i], "image_b": images[j]}
                         for i, j, s in pairs],
                        columns=["id_a", "id_b", "cosine", "label_a", "label_b", "image_a", "image_b"])
