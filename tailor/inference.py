"""Serving a trained run: class probabilities for datasets and for image files (``tailor predict``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tailor import distributed
from tailor import run_folder
from tailor.data.images import ImageError, decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.deploy.onnx_file import is_export_file
from tailor.models.ensemble import EnsembleNet
from tailor.models.features import run_model, run_pass
from tailor.models.files import PROBE_FEATURES, ModelFileError, load_model_file, save_model_file
from tailor.models.heads import TransferNet
from tailor.models.registry import load_classifier, load_model, model_kind
from tailor.names.head import NameHead
from tailor.predictions import AttributePrediction, Prediction, top_labels
from tailor.runtime import autocast, prepare_model, to_device

log = logging.getLogger(__name__)


def predict_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64, tta: bool = True,
                   progress: bool = True, desc: str = "evaluating") -> np.ndarray:
    """Softmax probabilities for every item of ``dataset`` (which yields ``(image, label)``), computed on the
    run's device (split across ranks under several processes). Rows whose image cannot be decoded are dropped
    from ``dataset``.

    ``tta`` averages the prediction of each image and its mirror image: free accuracy for catalog photos,
    whose left and right are arbitrary.
    """
    out = run_model(model, lambda images: probabilities(model, images, tta), dataset, batch_size, progress, desc)
    return out.numpy() if out.numel() else np.zeros((0, 0), dtype=np.float32)


def probabilities(model: torch.nn.Module, images: torch.Tensor, tta: bool = True) -> torch.Tensor:
    """Softmax of ``model`` on a batch; with ``tta``, averaged with the mirror images' softmax."""
    probs = model(images).softmax(dim=1)
    if tta:
        probs = 0.5 * (probs + model(images.flip(-1)).softmax(dim=1))
    return probs


def attribute_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: bool = True) -> dict[str, torch.Tensor]:
    """:func:`probabilities` for a multi-attribute model: every head's softmax from one forward pass
    (two with ``tta``)."""
    probs = {a: logits.softmax(dim=1) for a, logits in model(images).items()}
    if tta:
        mirrored = model(images.flip(-1))
        probs = {a: 0.5 * (p + mirrored[a].softmax(dim=1)) for a, p in probs.items()}
    return probs


def predict_attribute_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64, tta: bool = True,
                             progress: bool = True) -> dict[str, np.ndarray]:
    """:func:`predict_scores` for a multi-attribute model: attribute → (items × classes) probabilities."""
    out = run_model(model, lambda images: attribute_probabilities(model, images, tta), dataset, batch_size,
                    progress, "evaluating")
    return {a: out[a].numpy() for a in model.head_classes}


def find_model_file(run_or_file: str | Path) -> Path:
    """A run folder's ``model.pt``, or the file itself."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / run_folder.MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{run_or_file}: no trained model here (expected a run folder with model.pt)")
    return path


ENROLLED_FILE = run_folder.ENROLLED


class EnrollError(ValueError):
    """A category that cannot be enrolled (name taken, no readable image, no stored probe features)."""


class CategoryConflict(EnrollError):
    """A name that is already a trained or an enrolled category (a conflict, not a bad request)."""


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
    """A trained model with its preprocessing on the run's device, fed image files in batches (decoded in
    workers, split across ranks under several processes); unreadable files are reported in place, never fatal
    to the batch."""

    #: files per pass: predictions come out while a large folder is still being read
    chunk = 8192

    def __init__(self, model: torch.nn.Module | OnnxModel, folder: Path | None = None):
        self.device = distributed.current().device
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
            result = run_pass(fn, ImageFiles(part, self.transform), batch_size, progress, "predicting")
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


class Classifier(ImagePredictor):
    """A trained classifier with its preprocessing, ready for image files — with the categories enrolled
    into it from a few examples (``enrolled.pt`` beside ``model.pt``)."""

    def __init__(self, model: TransferNet | EnsembleNet, folder: Path | None = None):
        super().__init__(model, folder)
        #: the classes of the run's linear heads; name-only classes (:mod:`tailor.names`) come after every
        #: class with images, trained or enrolled
        self.trained_classes = list(getattr(model, "image_classes", model.classes))
        self.enrolled: dict[str, torch.Tensor] = {}
        #: categories enrolled by name alone: name → {"vector", "phrase"}
        self.enrolled_names: dict[str, dict] = {}
        #: the heads the run trained, put back when the last enrolled category is removed
        self._trained_heads = ([(h.weight.detach().clone(), h.bias.detach().clone()) for h in model.linear_heads()]
                               if not self.exported else [])
        head = getattr(model, "name_head", None)
        self._trained_names = head.state() if head is not None else None
        self._enrolled_stamp: tuple[int, int] | None = None
        self.reload_enrolled()

    @property
    def enrolled_file(self) -> Path | None:
        return self.folder / ENROLLED_FILE if self.folder else None

    def _stamp(self) -> tuple[int, int] | None:
        """What identifies the enrolled file's current version (modification time and size), or None."""
        try:
            stat = self.enrolled_file.stat() if self.enrolled_file else None
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    def reload_enrolled(self) -> bool:
        """Read ``enrolled.pt`` again if another process (a second server worker, ``tailor enroll``) changed it
        since this classifier last read or wrote it; returns whether the categories changed."""
        stamp = self._stamp()
        if stamp == self._enrolled_stamp:
            return False
        self._enrolled_stamp = stamp
        if stamp is None:
            if self.enrolled or self.enrolled_names:
                self._switch_to(self._trained_heads, {}, {})
            return True
        saved = load_model_file(self.enrolled_file)
        self._switch_to(_saved_heads(saved), dict(saved["examples"]), dict(saved.get("names", {})))
        return True

    def _switch_to(self, heads: list[tuple[torch.Tensor, torch.Tensor]], enrolled: dict[str, torch.Tensor],
                   named: dict[str, dict]) -> None:
        """Rank with ``heads`` over the trained plus ``enrolled`` categories, then the run's name-only categories
        plus ``named``."""
        self.enrolled, self.enrolled_names = dict(enrolled), dict(named)
        self.model.set_linear_heads(heads, self.trained_classes + list(enrolled))
        if self._trained_names is not None:
            head = NameHead.from_state(self._trained_names)
            for name, entry in named.items():
                head.add_class(name, entry["vector"], entry.get("phrase"))
            self.model.attach_names(head.to(self.device))

    @classmethod
    def load(cls, run_or_file: str | Path) -> "Classifier":
        if is_export_file(run_or_file):
            raise EnrollError(f"{run_or_file}: an exported model is fixed; enroll into the run it came from "
                              f"(tailor enroll RUN …), then export that again")
        model_file = find_model_file(run_or_file)
        return cls(load_classifier(model_file), model_file.parent)

    @property
    def classes(self) -> list[str]:
        """Every class in the order of the model's outputs."""
        return list(self.model.classes)

    def enroll(self, name: str, paths: Sequence[Path], replace: bool = False) -> tuple[int, list[ImageError]]:
        """Add category ``name`` from example image files (see :meth:`enroll_images`). Returns the number of
        images used and the unreadable ones."""
        self._check_enrollable(name, replace)
        tensors, failed = self.decode_files(paths)
        errors = list(failed.values())
        if not tensors:
            raise EnrollError(f"no readable image to enroll {name!r} from" + (f" ({errors[0]})" if errors else ""))
        self.enroll_images(name, tensors, replace)
        return len(tensors), errors

    def _check_enrollable(self, name: str, replace: bool, by_name: bool = False) -> None:
        if not name or not name.strip():
            raise EnrollError("a category needs a name")
        if name in self.trained_classes:
            raise CategoryConflict(f"{name!r} is a trained category of this model; enroll it under another name")
        if self._trained_names is not None and name in self._trained_names["classes"]:
            raise CategoryConflict(f"{name!r} is already carried by name; enroll images of it under another name")
        if (name in self.enrolled or name in self.enrolled_names) and not replace:
            raise CategoryConflict(f"{name!r} is already enrolled; add --replace to enroll it anew")
        if self.exported:
            raise EnrollError("an exported model is fixed; enroll into the run it came from, then export it again")
        if by_name:
            if self._trained_names is None:
                raise EnrollError("this run carries no category by name: enrolling a name with no image needs a "
                                  "run trained with names.enabled = True (as configs/finetune.gin does)")
            return
        if not (self.folder and (self.folder / PROBE_FEATURES).is_file()):
            raise EnrollError(f"no {PROBE_FEATURES} in {self.folder}: enrolling needs a run trained with the "
                              f"linear probe (transfer.linear_probe = True)")

    def enroll_images(self, name: str, images: Sequence[torch.Tensor], replace: bool = False) -> None:
        """Add category ``name`` from transformed example images without training the network: the
        class-balanced linear probe is refitted on the run's stored training features plus the new examples'
        (each with its mirror image), calibrated as the run's probe was, so trained and enrolled categories
        are ranked by one head (by each member's head, in an ensemble). Written to ``enrolled.pt`` atomically:
        a process killed mid-write leaves the previous categories whole."""
        self._check_enrollable(name, replace)
        if not images:
            raise EnrollError(f"no readable image to enroll {name!r} from")
        x = to_device(torch.stack(list(images)), self.device)
        with torch.no_grad(), autocast(self.device):  # not inference_mode: the refit needs autograd on these
            examples = torch.stack([self.model.features(x), self.model.features(x.flip(-1))]).half().cpu()
        named = {n: e for n, e in self.enrolled_names.items() if n != name}
        self._refit({**self.enrolled, name: examples}, named)

    def enroll_name(self, name: str, parents: Sequence[str] = (), replace: bool = False) -> str:
        """Add category ``name`` with no image: the run's name head scores it from its name (and ``parents``,
        its place in the taxonomy, nearest first). Returns the phrase it is known by."""
        from tailor.names.text import category_phrase, text_encoder

        self._check_enrollable(name, replace, by_name=True)
        phrase = category_phrase(name, parents)
        named = {**self.enrolled_names, name: {"vector": text_encoder().embed([phrase])[0], "phrase": phrase}}
        enrolled = {n: e for n, e in self.enrolled.items() if n != name}
        if enrolled == self.enrolled:
            self._save_enrolled(self._current_heads(), enrolled, named)
        else:
            self._refit(enrolled, named)
        return phrase

    def _current_heads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(h.weight.detach().cpu().clone(), h.bias.detach().cpu().clone()) for h in self.model.linear_heads()]

    def remove(self, name: str) -> None:
        """Take enrolled category ``name`` out again (the head is refitted without it; with none left, the
        trained head comes back and ``enrolled.pt`` goes)."""
        if name in self.trained_classes:
            raise CategoryConflict(f"{name!r} is a trained category of this model; only enrolled ones can be "
                                   f"removed")
        if name not in self.enrolled and name not in self.enrolled_names:
            raise KeyError(name)
        remaining = {n: e for n, e in self.enrolled.items() if n != name}
        named = {n: e for n, e in self.enrolled_names.items() if n != name}
        if remaining:
            self._refit(remaining, named)
        elif named:
            self._save_enrolled(self._trained_heads, {}, named)
        else:
            self.enrolled_file.unlink(missing_ok=True)
            self._switch_to(self._trained_heads, {}, {})
            self._enrolled_stamp = None

    def _save_enrolled(self, heads: list[tuple[torch.Tensor, torch.Tensor]], enrolled: dict[str, torch.Tensor],
                       named: dict[str, dict]) -> None:
        """Write ``enrolled.pt`` (atomically), then switch to what it holds."""
        save_model_file(self.enrolled_file, {
            "format": "tailor.enrolled/3", "examples": enrolled, "names": named,
            "heads": [{"weight": weight, "bias": bias} for weight, bias in heads]})
        self._switch_to(heads, enrolled, named)
        self._enrolled_stamp = self._stamp()

    def _refit(self, enrolled: dict[str, torch.Tensor], named: dict[str, dict] | None = None) -> None:
        """Fit the heads for the trained categories plus ``enrolled``, save them, then switch to them (the model
        is unchanged when fitting or saving fails)."""
        from tailor.tasks.probe import fit_linear_heads

        stored = load_model_file(self.folder / PROBE_FEATURES)
        features, targets = [stored["features"].float()], [stored["targets"]]
        for i, examples in enumerate(enrolled.values()):
            features.append(examples.float())
            targets.append(torch.full((examples.shape[1],), len(self.trained_classes) + i, dtype=torch.long))
        classes = self.trained_classes + list(enrolled)
        heads = fit_linear_heads(torch.cat(features, dim=1), torch.cat(targets), len(classes),
                                 [h.in_features for h in self.model.linear_heads()], power=stored["power"],
                                 weight_decay=stored["weight_decay"], calibration=stored.get("calibration"))
        self._save_enrolled(heads, enrolled, self.enrolled_names if named is None else named)

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


def _saved_heads(saved: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The refitted heads of an ``enrolled.pt``: one per ensemble member (format 2), or the one head format 1
    kept."""
    if "heads" in saved:
        return [(head["weight"], head["bias"]) for head in saved["heads"]]
    return [(saved["weight"], saved["bias"])]


def load_predictor(run_or_file: str | Path, saved: dict | None = None) -> Classifier | AttributeClassifier:
    """The right predictor for a run: a classifier (with its enrolled categories) or a multi-attribute model;
    or for an exported model (``.onnx``), run by ONNX Runtime. ``saved``: the run's model file, when the
    caller has read it already."""
    if is_export_file(run_or_file):
        exported = OnnxModel(run_or_file, device=distributed.current().device)
        if exported.info.kind == "embedding":
            raise ValueError(f"{run_or_file}: an embedding model, which finds similar products "
                             f"(tailor similar RUN IMAGE --model {run_or_file}), and does not classify")
        return (AttributeClassifier if exported.info.kind == "attributes" else Classifier)(exported)
    model_file = find_model_file(run_or_file)
    if saved is None:  # read once: it says which kind of model it is, then builds it
        saved = load_model_file(model_file)
    model = load_model(model_file, saved)
    if model_kind(saved) == "embedding":
        raise ModelFileError(f"{run_or_file}: a metric-learning run, which finds similar products "
                             f"(tailor similar {run_or_file} IMAGE), and does not classify")
    return (AttributeClassifier if model_kind(saved) == "attributes" else Classifier)(model, model_file.parent)
