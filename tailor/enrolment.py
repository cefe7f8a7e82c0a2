"""Enrolment: categories added to a trained classifier after training, from a few photos or from a name alone,
without touching the network — the head is refitted on the run's stored training features plus the new
examples. The categories live in ``enrolled.pt`` beside the model (written atomically; re-read when another
process, a second server worker or ``tailor enroll``, changed it), so every path that loads the run sees them.

:class:`Enrolment` is the state and the methods a :class:`~tailor.inference.Classifier` carries for this; it
reads the classifier's model, folder and device and never predicts itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tailor import run_folder
from tailor.data.decoding import ImageError
from tailor.models.files import PROBE_FEATURES, load_model_file, save_model_file
from tailor.names.head import NameHead
from tailor.names.text import category_phrase, text_encoder
from tailor.runtime import autocast, to_device
from tailor.tasks.probe import fit_linear_heads

ENROLLED_FILE = run_folder.ENROLLED


class EnrollError(ValueError):
    """A category that cannot be enrolled (name taken, no readable image, no stored probe features)."""


class CategoryConflict(EnrollError):
    """A name that is already a trained or an enrolled category (a conflict, not a bad request)."""


class Enrolment:
    """Enrolled categories of a classifier (mixed into :class:`~tailor.inference.Classifier`, which sets
    ``model``, ``folder``, ``device``, ``exported`` and ``transform``, then calls :meth:`start_enrolment`)."""

    def start_enrolment(self) -> None:
        """Remember what the run trained (to put back when the last enrolled category goes), then read the
        categories enrolled so far."""
        model = self.model
        #: the classes of the run's linear heads; name-only classes (:mod:`tailor.names`) come after every
        #: class with images, trained or enrolled
        self.trained_classes = list(getattr(model, "image_classes", model.classes))
        self.enrolled: dict[str, torch.Tensor] = {}
        #: categories enrolled by name alone: name → {"vector", "phrase"}
        self.enrolled_names: dict[str, dict] = {}
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
        stored = load_model_file(self.folder / PROBE_FEATURES)
        features, targets = [stored["features"].float()], [stored["targets"]]
        for i, examples in enumerate(enrolled.values()):
            features.append(examples.float())
            targets.append(torch.full((examples.shape[1],), len(self.trained_classes) + i, dtype=torch.long))
        classes = self.trained_classes + list(enrolled)
        heads = fit_linear_heads(torch.cat(features, dim=1), torch.cat(targets), len(classes),
                                 [h.in_features for h in self.model.linear_heads()], power=stored["power"],
                                 weight_decay=stored["weight_decay"], calibration=stored.get("calibration"),
                                 device=self.device)
        self._save_enrolled(heads, enrolled, self.enrolled_names if named is None else named)


def _saved_heads(saved: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The refitted heads of an ``enrolled.pt``: one per ensemble member (format 2), or the one head format 1
    kept."""
    if "heads" in saved:
        return [(head["weight"], head["bias"]) for head in saved["heads"]]
    return [(saved["weight"], saved["bias"])]
