"""Serving a trained run: class probabilities for datasets and for image files (``tailor predict``)."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tailor.data.catalog import IMAGE_SUFFIXES
from tailor.data.images import ImageError, decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.models.heads import TransferNet, load_classifier

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64, tta: bool = True,
                   progress: bool = True, desc: str = "evaluating") -> np.ndarray:
    """Softmax probabilities for every item of ``dataset`` (which yields ``(image, label)``).

    ``tta`` averages the prediction of each image and its mirror image: free accuracy for catalog photos,
    whose left and right are arbitrary.
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    out = []
    for images, _ in loader:
        images = images.contiguous(memory_format=torch.channels_last)
        probs = model(images).softmax(dim=1)
        if tta:
            probs = 0.5 * (probs + model(images.flip(-1)).softmax(dim=1))
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def find_model_file(run_or_file: str | Path) -> Path:
    """A run folder's ``model.pt``, or the file itself."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_or_file}: no trained model here (expected a run folder with model.pt)")
    return path


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders become their image files, sorted."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


@dataclass
class Prediction:
    path: str
    labels: list[str]
    scores: list[float]


class Classifier:
    """A trained classifier with its preprocessing, ready for image files."""

    def __init__(self, model: TransferNet):
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.classes = model.classes
        self.transform = eval_transform(DataConfig(model.image_size, tuple(model.data_config["mean"]),
                                                   tuple(model.data_config["std"])))

    @classmethod
    def load(cls, run_or_file: str | Path) -> "Classifier":
        return cls(load_classifier(find_model_file(run_or_file)))

    @torch.inference_mode()
    def predict_files(self, paths: Sequence[Path], k: int = 5, batch_size: int = 32, tta: bool = True,
                      progress: bool = False) -> Iterator[Prediction | ImageError]:
        """Top-``k`` predictions per file, in order; an unreadable file yields its :class:`ImageError`."""
        k = min(k, len(self.classes))
        batches = range(0, len(paths), batch_size)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="predicting", unit="batch")
        for start in batches:
            chunk, tensors, errors = paths[start:start + batch_size], [], {}
            for i, path in enumerate(chunk):
                try:
                    tensors.append(self.transform(decode_image(path, max_side=512)))
                except ImageError as err:
                    errors[i] = err
            probs = iter([])
            if tensors:
                x = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
                p = self.model(x).softmax(1)
                if tta:
                    p = 0.5 * (p + self.model(x.flip(-1)).softmax(1))
                probs = iter(p.numpy())
            for i, path in enumerate(chunk):
                if i in errors:
                    yield errors[i]
                    continue
                row = next(probs)
                top = np.argsort(-row)[:k]
                yield Prediction(str(path), [self.classes[j] for j in top], [float(row[j]) for j in top])


def write_predictions_csv(predictions: Sequence[Prediction], path: str | Path, k: int) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"] + [f"{kind}{i + 1}" for i in range(k) for kind in ("class", "score")])
        for p in predictions:
            writer.writerow([p.path] + [v for pair in zip(p.labels, (f"{s:.4f}" for s in p.scores)) for v in pair])
