"""Predicting with a trained run: its model and preprocessing fed image files in batches (``tailor predict``,
the server, :meth:`tailor.Model.predict`). A classifier also carries the categories enrolled into it
(:mod:`tailor.enrolment`); probabilities over a dataset for evaluation are :mod:`tailor.evaluation.scores`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tailor.distributed import Runtime
from tailor import run_folder
from tailor.data.images import ImageError, decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.deploy.onnx_file import is_export_file
from tailor.models.ensemble import EnsembleNet
from tailor.evaluation.scores import attribute_probabilities, probabilities
from tailor.models.features import run_pass
from tailor.models.files import ModelFileError, load_model_file
from tailor.models.heads import TransferNet
from tailor.models.registry import load_classifier, load_model, model_output
from tailor.enrolment import EnrollError, Enrolment
from tailor.predictions import AttributePrediction, Prediction, top_labels
from tailor.runtime import autocast, prepare_model, to_device

log = logging.getLogger(__name__)


def find_model_file(run_or_file: str | Path) -> Path:
    """A run folder's ``model.pt``, or the file itself."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / run_folder.MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{run_or_file}: no trained model here (expected a run folder with model.pt)")
    return path




class ImageFiles(Dataset):
    """Image files as a dataset: decoded (at most ``max_side`` pixels on the longer side) and transformed when
    read, so a DataLoader's workers do it; yields ``(image, 0)``."""

    def __init__(self, paths: Sequence[Path], transform, max_side: int = 512):
        self.paths, self.transform, self.max_side = list(paths), transform, max_side
        self.images = None  # nothing in memory: decode in workers

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(decode_image(self.paths[i], self.max_side)), 0


class ImagePredictor:
    """A trained model with its preprocessing on ``runtime``'s device (default: one process on the first GPU,
    else the CPU), fed image files in batches (decoded in workers, split across ranks under several
    processes); unreadable files are reported in place, never fatal to the batch."""

    #: files per pass: predictions come out while a large folder is still being read
    chunk = 8192

    def __init__(self, model: torch.nn.Module | OnnxModel, folder: Path | None = None,
                 runtime: Runtime | None = None):
        self.runtime = runtime or Runtime.local()
        self.device = self.runtime.device
        self.model = prepare_model(model, self.device)
        #: an exported graph computes its whole output itself (mirror-image average included)
        self.exported = isinstance(model, OnnxModel)
        self.folder = folder
        self.transform = eval_transform(DataConfig.from_timm(model.data_config, model.image_size))
        #: :meth:`score_batch` averages each image with its mirror image (an exported graph does it inside)
        self.tta = True

    def _score(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's probabilities for a batch already on the device (one row per image)."""
        raise NotImplementedError

    @torch.inference_mode()
    def score_batch(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """:meth:`_score` of a batch of transformed images (on the CPU), returned on the CPU in fp32: the one
        forward step of a served model (:mod:`tailor.serve`)."""
        with autocast(self.device):
            out = self._score(to_device(images, self.device))
        if isinstance(out, dict):
            return {k: v.float().cpu() for k, v in out.items()}
        return out.float().cpu()

    def decode_files(self, paths: Sequence[Path]) -> tuple[list[torch.Tensor], dict[int, ImageError]]:
        """The model's input tensors for the readable files, and the errors of the others by position."""
        tensors, errors = [], {}
        for i, path in enumerate(paths):
            try:
                tensors.append(self.transform(decode_image(path, max_side=512)))
            except ImageError as err:
                errors[i] = err
        return tensors, errors

    def _probabilities(self, tta: bool):
        """The function of a batch that gives this model's probabilities (an exported graph: itself)."""
        raise NotImplementedError

    def score_files(self, paths: Sequence[Path], tta: bool = True, batch_size: int = 32, progress: bool = False
                    ) -> Iterator[tuple[Path, torch.Tensor | dict[str, torch.Tensor] | ImageError]]:
        """Each file with its probabilities (a tensor; a multi-attribute model: a dict of them, one per
        attribute) or its :class:`ImageError`, in order."""
        return self._outputs(paths, self._probabilities(tta), batch_size, progress)

    def _outputs(self, paths: Sequence[Path], fn, batch_size: int, progress: bool
                 ) -> Iterator[tuple[Path, torch.Tensor | dict[str, torch.Tensor] | ImageError]]:
        """Each file with its row of ``fn``'s output (a tensor or a dict of them), or its error, in order."""
        for start in range(0, len(paths), self.chunk):
            part = list(paths[start:start + self.chunk])
            result = run_pass(fn, ImageFiles(part, self.transform), batch_size, progress, "predicting",
                              runtime=self.runtime)
            problems = {p.path: p for p in result.problems}
            position = {int(r): j for j, r in enumerate(result.rows)}
            for i, path in enumerate(part):
                if i not in position:
                    problem = problems.get(str(path))
                    yield path, ImageError(path, problem.reason if problem else "could not be read")
                elif isinstance(result.outputs, dict):
                    yield path, {a: v[position[i]] for a, v in result.outputs.items()}
                else:
                    yield path, result.outputs[position[i]]


class Classifier(Enrolment, ImagePredictor):
    """A trained classifier with its preprocessing, ready for image files — with the categories enrolled
    into it from a few examples (``enrolled.pt`` beside ``model.pt``: :class:`~tailor.enrolment.Enrolment`)."""

    def __init__(self, model: TransferNet | EnsembleNet, folder: Path | None = None,
                 runtime: Runtime | None = None):
        super().__init__(model, folder, runtime)
        self.start_enrolment()

    @classmethod
    def load(cls, run_or_file: str | Path, runtime: Runtime | None = None) -> "Classifier":
        if is_export_file(run_or_file):
            raise EnrollError(f"{run_or_file}: an exported model is fixed; enroll into the run it came from "
                              f"(tailor enroll RUN …), then export that again")
        model_file = find_model_file(run_or_file)
        return cls(load_classifier(model_file), model_file.parent, runtime)

    @property
    def classes(self) -> list[str]:
        """Every class in the order of the model's outputs."""
        return list(self.model.classes)

    def _score(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) if self.exported else probabilities(self.model, images, self.tta)

    def top_k(self, row: np.ndarray, k: int = 5) -> tuple[list[str], list[float]]:
        """The ``k`` most probable categories of one row of probabilities, with their probabilities."""
        return top_labels(row, self.classes, min(k, len(self.classes)))

    def predict_files(self, paths: Sequence[Path], k: int = 5, batch_size: int = 32, tta: bool = True,
                      progress: bool = False) -> Iterator[Prediction | ImageError]:
        """Top-``k`` predictions per file, in order; an unreadable file yields its :class:`ImageError`."""
        for path, out in self.score_files(paths, tta, batch_size, progress):
            yield out if isinstance(out, ImageError) else Prediction(str(path), *self.top_k(out.numpy(), k))

    def _probabilities(self, tta: bool):
        return self.model if self.exported else lambda x: probabilities(self.model, x, tta)


class AttributeClassifier(ImagePredictor):
    """A trained multi-attribute model, ready for image files: every attribute from one forward pass."""

    def predict_files(self, paths: Sequence[Path], k: int = 5, batch_size: int = 32, tta: bool = True,
                      progress: bool = False) -> Iterator[AttributePrediction | ImageError]:
        """Each attribute's top-``k`` values per file, in order; an unreadable file yields its
        :class:`ImageError`."""
        for path, out in self.score_files(paths, tta, batch_size, progress):
            yield out if isinstance(out, ImageError) else self.top_k(str(path), out, k)

    def _probabilities(self, tta: bool):
        return self.model if self.exported else lambda x: attribute_probabilities(self.model, x, tta)

    def _score(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images) if self.exported else attribute_probabilities(self.model, images, self.tta)

    def top_k(self, path: str, out: dict[str, torch.Tensor], k: int = 5) -> AttributePrediction:
        """Each attribute's ``k`` most probable values for one image's row of every head's probabilities."""
        return AttributePrediction(path, {
            a: Prediction(path, *top_labels(out[a].numpy(), classes, min(k, len(classes))))
            for a, classes in self.model.head_classes.items()})


def load_predictor(run_or_file: str | Path, saved: dict | None = None, runtime: Runtime | None = None,
                   onnx_threads: int = 0) -> Classifier | AttributeClassifier:
    """The right predictor for a run: a classifier (with its enrolled categories) or a multi-attribute model;
    or for an exported model (``.onnx``), run by ONNX Runtime (``onnx_threads``; 0: one per core); on
    ``runtime`` (default: one process on the first GPU, else the CPU). ``saved``: the run's model file, when
    the caller has read it already."""
    runtime = runtime or Runtime.local()
    if is_export_file(run_or_file):
        exported = OnnxModel(run_or_file, onnx_threads, device=runtime.device)
        if exported.info.kind not in PREDICTORS:
            raise ValueError(f"{run_or_file}: an embedding model, which finds similar products "
                             f"(tailor similar RUN IMAGE --model {run_or_file}), and does not classify")
        return PREDICTORS[exported.info.kind](exported, runtime=runtime)
    model_file = find_model_file(run_or_file)
    if saved is None:  # read once: it says which kind of model it is, then builds it
        saved = load_model_file(model_file)
    output = model_output(saved)
    if output not in PREDICTORS:
        raise ModelFileError(f"{run_or_file}: a metric-learning run, which finds similar products "
                             f"(tailor similar {run_or_file} IMAGE), and does not classify")
    return PREDICTORS[output](load_model(model_file, saved), model_file.parent, runtime)


#: a kind's output (:mod:`tailor.models.kinds`) → the predictor that serves it; an embedding finds look-alikes
#: (:mod:`tailor.search.similar`) instead
PREDICTORS: dict[str, type[ImagePredictor]] = {"classifier": Classifier, "attributes": AttributeClassifier}
