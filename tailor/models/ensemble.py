"""Several pretrained backbones classifying as one: the mean of their probabilities.

Each backbone's linear probe makes different mistakes (EfficientNet-Lite0, -Lite1 and -Lite2 were trained at
different resolutions and depths), so their average is right more often than any one of them: on the bundled
sample, top-1 0.866 (Lite0 alone) → 0.880 (all three), and 0.843 → 0.852 with the years swapped
(``bench/transfer.py``).
Averaging probabilities, not features, matters: one probe on the concatenated features scored lower (0.873).

One data pipeline feeds every member: images come at the smallest member's size, and each larger member sees
them upsampled to its own inside the model, so datasets, ``tailor predict`` and evaluation treat an ensemble
like any classifier. For images no larger than that size (the bundled sample's are 224 px) this is what resizing
each image to each member's size would give. The other way round — the largest size, downsampled for the smaller
members — blurred Lite0's input and cost the ensemble a point (0.872 instead of 0.880). A member whose
backbone normalises images otherwise (ImageNet mean/std, beside the Lite models' 0.5/0.5) gets the batch
re-normalised inside the model the same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tailor.models.files import ENSEMBLE_FORMAT, ModelFileError
from tailor.models.heads import CarriesNames, TransferNet, load_transfer_net, saved_names
from tailor.names.head import stacked_logits

class EnsembleError(ValueError):
    """Members that cannot form one ensemble, or a use an ensemble does not support."""


class EnsembleNet(CarriesNames, nn.Module):
    """``members`` (classifiers over the same classes, each with ``image_size``, ``data_config``, ``features``
    and ``linear_heads``) → the log of their mean softmax, so a softmax of the output is that mean."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise EnsembleError("an ensemble needs at least two members")
        first = members[0]
        for member in members[1:]:
            if list(member.classes) != list(first.classes):
                raise EnsembleError("the members of an ensemble must classify the same classes in the same order")
        self.members = nn.ModuleList(members)
        smallest = min(members, key=lambda m: m.image_size)
        self.image_size = smallest.image_size
        self.data_config = smallest.data_config
        self.classes = list(first.classes)
        self.name_head = None
        # A member normalised otherwise (an ImageNet-statistics ResNet beside the Lite models' 0.5 / 0.5) gets
        # the input re-normalised: x · scale + shift undoes the pipeline's mean/std and applies its own.
        self._renormalise = [_renormalisation(self.data_config, m.data_config) for m in members]

    @property
    def backbone_name(self) -> list[str]:
        return [m.backbone_name for m in self.members]

    def _inputs(self, x: torch.Tensor):
        """Each member with the batch at its own size (antialiased, should a member be smaller than the input)
        and normalised its own way."""
        for member, renormalise in zip(self.members, self._renormalise):
            xi = x
            if renormalise is not None:
                scale, shift = (t.to(x.device, x.dtype) for t in renormalise)
                xi = xi * scale + shift
            if xi.shape[-1] != member.image_size or xi.shape[-2] != member.image_size:
                size = (member.image_size, member.image_size)
                xi = F.interpolate(xi, size=size, mode="bilinear", antialias=True, align_corners=False)
            yield member, xi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name_head is None:
            probs = torch.stack([member(xi).softmax(dim=1) for member, xi in self._inputs(x)]).mean(0)
            return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        features = [member.features(xi) for member, xi in self._inputs(x)]  # once, for both kinds of class
        probs = torch.stack([member.head(f).softmax(dim=1) for member, f in zip(self.members, features)]).mean(0)
        seen = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        return stacked_logits(seen, self.name_head(torch.cat(features, dim=1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' pooled features side by side; :meth:`linear_heads` say which slice is whose."""
        return torch.cat([member.features(xi) for member, xi in self._inputs(x)], dim=1)

    def feature_extractor(self) -> nn.Module:
        return _Features(self)

    def linear_heads(self) -> list[nn.Linear]:
        return [head for member in self.members for head in member.linear_heads()]

    def set_linear_heads(self, heads: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> None:
        """Replace every member's head (``(weight, bias)`` in :meth:`linear_heads` order) for ``classes``."""
        if len(heads) != len(self.members):
            raise EnsembleError(f"{len(heads)} heads for {len(self.members)} members")
        for member, head in zip(self.members, heads):
            member.set_linear_heads([head], classes)
        self.classes = list(classes) + self.name_only_classes

    def export(self, train_counts: dict[str, int] | None = None) -> dict:
        """A weights-only model file holding every member's own file."""
        return {"format": ENSEMBLE_FORMAT, "classes": self.classes, "backbone": self.backbone_name,
                "image_size": self.image_size, "train_counts": dict(train_counts or {}),
                "members": [member.export() for member in self.members], **self._names_entry()}


class _Features(nn.Module):
    """:meth:`EnsembleNet.features` as a module, for code that extracts features from a module."""

    def __init__(self, ensemble: EnsembleNet):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.features(x)


def _renormalisation(source: dict, target: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` taking images normalised by ``source``'s mean/std to ``target``'s; None if the same."""
    if tuple(source["mean"]) == tuple(target["mean"]) and tuple(source["std"]) == tuple(target["std"]):
        return None
    mean_s, std_s, mean_t, std_t = (torch.tensor(c[k], dtype=torch.float32).view(1, -1, 1, 1)
                                    for c, k in ((source, "mean"), (source, "std"), (target, "mean"), (target, "std")))
    return std_s / std_t, (mean_s - mean_t) / std_t


def load_ensemble(saved: dict, path: str) -> EnsembleNet:
    """Rebuild a trained :class:`EnsembleNet` from its model file's contents."""
    members = saved.get("members")
    if not members:
        raise ModelFileError(f"{path}: an ensemble file without members")
    ensemble = EnsembleNet([load_transfer_net(member, f"{path} (member {i + 1})") for i, member in enumerate(members)])
    ensemble.attach_names(saved_names(saved))
    ensemble.train_counts = dict(saved.get("train_counts", {}))
    return ensemble.eval()


def ensemble_from_saved(classes: Sequence[str], saved: dict, path: str,
                        network: type[TransferNet] = TransferNet) -> EnsembleNet:
    """A new ensemble for ``classes`` from a saved one: every member (a ``network``) keeps its trained backbone
    and gets a new head (or keeps its own when the classes are the same) — the seed's second fine-tuning, for
    ensembles."""
    return EnsembleNet([network.from_saved(classes, member, path) for member in saved["members"]])
