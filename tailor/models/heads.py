"""Classification models: a pretrained backbone with a new linear head (the seed's ``TransferNet``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from timm.models import group_parameters
from torch import nn

from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.files import ModelFileError, is_ensemble_file, load_model_file
from tailor.names.head import NameHead, stacked_logits

log = logging.getLogger(__name__)

MODEL_FORMAT = "tailor.classifier/1"


class PretrainedModel(nn.Module):
    """What every fine-tunable model shares: a timm backbone, its preprocessing, its layer groups (for
    per-depth learning rates and partial freezing), and the batch-norm layers training must keep fixed.

    Subclasses add their heads and say which parameters those are (:meth:`head_parameters`).
    """

    def _init_backbone(self, backbone: str, pretrained: bool, image_size: int | None) -> None:
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained)
        self.data_config = backbone_data_config(self.backbone)
        self.image_size = int(image_size or self.data_config["input_size"][-1])

    @staticmethod
    def _one_backbone(backbone: str, saved: dict | None, path: str | None) -> str:
        """The backbone to build: the saved model's, when there is one. A model of this kind holds one: a list
        of names, or an ensemble's file, is refused with a message that says where ensembles are made."""
        if saved is not None and is_ensemble_file(saved):
            raise ModelFileError(f"{path}: an ensemble of {len(saved.get('members', []))} backbones, and this model "
                                 f"takes one; ensembles are loaded by the transfer configs (transfer, finetune, "
                                 f"transfer_evaluate)")
        if saved is not None and "backbone" in saved:
            backbone = saved["backbone"]
        if not isinstance(backbone, str):
            raise TypeError(f"one backbone name, not {backbone!r}: several backbones make an ensemble, which only "
                            f"the transfer recipe builds (TransferNet.backbone = [...] in its config)")
        return backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def head_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def _load_backbone(self, state: dict, path: str | None) -> dict:
        """Load the backbone part of ``state`` (a model file's or Lightning checkpoint's state dict); return
        the state with the ``model.`` prefix of a checkpoint removed, for the heads to pick from."""
        state = {k.removeprefix("model."): v for k, v in state.items()}
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone_state:
            raise ValueError(f"{path}: no backbone weights in this file")
        self.backbone.load_state_dict(backbone_state)
        return state

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in timm's coarse groups, stem first, plus the heads as the last group."""
        named = dict(self.backbone.named_parameters())
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        ordered = [[named[n] for n in groups[k]] for k in sorted(groups)]
        return ordered + [self.head_parameters()]

    def _freeze(self, trainable_groups: int | None) -> None:
        self.trainable_groups = trainable_groups
        if trainable_groups is None:
            return
        backbone_groups = self.layer_groups()[:-1]
        frozen = backbone_groups[: max(0, len(backbone_groups) - trainable_groups)]
        for group in frozen:
            for p in group:
                p.requires_grad_(False)

    def batchnorm_modules(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def frozen_modules(self) -> list[nn.Module]:
        """Backbone modules with no trainable parameter: kept in eval mode so their batch-norm statistics stay."""
        return [m for m in self.batchnorm_modules() if not any(p.requires_grad for p in m.parameters())]

    def _export_common(self) -> dict:
        return {
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "mean": list(self.data_config["mean"]),
            "std": list(self.data_config["std"]),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("name_head.")},
        }


class CarriesNames:
    """What a classifier with name-only classes shares (a :class:`TransferNet` or an ensemble): its class list is
    its linear heads' classes, then its :class:`~tailor.names.head.NameHead`'s, in the order of its outputs."""

    name_head: NameHead | None
    classes: list[str]

    def attach_names(self, head: NameHead | None) -> None:
        """Carry ``head``'s classes by name after the trained ones (None: no name-only class)."""
        trained = self.image_classes
        self.name_head = head
        self.classes = trained + (list(head.classes) if head is not None else [])

    @property
    def image_classes(self) -> list[str]:
        """The classes of the linear heads: every class that had training images (or enrolled examples)."""
        extra = len(self.name_head.classes) if self.name_head is not None else 0
        return list(self.classes[: len(self.classes) - extra])

    @property
    def name_only_classes(self) -> list[str]:
        return list(self.name_head.classes) if self.name_head is not None else []

    def _names_entry(self) -> dict:
        return {"names": self.name_head.state()} if self.name_head is not None else {}


class TransferNet(CarriesNames, PretrainedModel):
    """``backbone`` → dropout → linear head over ``classes``.

    ``saved_model_path``: start from a trained tailor model (``model.pt``) or Lightning checkpoint. Its
    backbone is always reused; its head too when its classes are the same, otherwise a new head is made
    (the seed's fine-tuning on rare categories).
    ``trainable_groups``: how many of the backbone's layer groups, counted from the top, are trained
    (``None``: all — full fine-tuning; ``0``: none — a linear probe).
    ``image_size``: input size; ``None`` uses the backbone's native size.

    A list of backbones in the config (``TransferNet.backbone = ['efficientnet_lite0', 'efficientnet_lite2']``)
    makes an :class:`~tailor.models.ensemble.EnsembleNet` of one TransferNet per backbone: the transfer recipe
    builds it (``build_classifier``); this class itself takes one backbone.
    """

    def __init__(self, classes: Sequence[str], backbone: str = DEFAULT_BACKBONE, pretrained: bool = True,
                 dropout: float = 0.2, saved_model_path: str | None = None,
                 trainable_groups: int | None = None, image_size: int | None = None):
        super().__init__()
        saved = load_model_file(saved_model_path) if saved_model_path else None
        backbone = self._one_backbone(backbone, saved, saved_model_path)
        self.classes = list(classes)
        self.name_head = None
        self._init_backbone(backbone, pretrained and saved is None, image_size)
        self.dropout = dropout
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, len(self.classes)))
        if saved is not None:
            self._load_saved(saved, saved_model_path)
        self._freeze(trainable_groups)

    @classmethod
    def from_saved(cls, classes: Sequence[str], saved: dict, path: str | Path,
                   image_size: int | None = None) -> "TransferNet":
        """A new TransferNet for ``classes`` on the trained backbone of a tailor model file whose contents the
        caller has read (``saved``), with its head too when the classes are the same: the seed's second
        fine-tuning, without reading the file again. ``image_size``: ``None`` keeps the saved model's input size.
        Dropout and trainable groups come from the config, as for a new model."""
        if "backbone" not in saved:
            raise ModelFileError(f"{path}: names no backbone (a Lightning checkpoint?); start from a run's model.pt")
        backbone = cls._one_backbone(saved["backbone"], saved, str(path))
        net = cls(classes, backbone=backbone, pretrained=False, saved_model_path=None,
                  image_size=image_size or saved.get("image_size"))
        net._load_saved(saved, str(path))
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        logits = self.head(features)
        if self.name_head is None:
            return logits
        return stacked_logits(logits.log_softmax(dim=1), self.name_head(features))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def feature_extractor(self) -> nn.Module:
        """The module whose output the linear heads read (:meth:`features` as a module)."""
        return self.backbone

    def linear_heads(self) -> list[nn.Linear]:
        """The linear layers that read :meth:`features`, in order of the feature slices they read (one here;
        an ensemble has one per member)."""
        return [self.head[-1]]

    def set_linear_heads(self, heads: Sequence[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> None:
        """Replace the head by ``heads[0]``'s ``(weight, bias)``, for ``classes`` (as enrolling a category does)."""
        (weight, bias), = heads
        device = self.head[-1].weight.device  # the model may be on a GPU, the fitted head is on the CPU
        linear = nn.Linear(weight.shape[1], weight.shape[0], device=device)
        linear.weight.data, linear.bias.data = weight.float().to(device), bias.float().to(device)
        self.head[-1] = linear
        self.classes = list(classes) + self.name_only_classes

    def _load_saved(self, saved: dict, path: str | None) -> None:
        state = self._load_backbone(saved.get("state_dict", saved), path)
        if list(saved.get("classes", [])) == self.classes:
            self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
            log.info("loaded %s: backbone and head (%d classes)", path, len(self.classes))
        else:
            log.info("loaded %s: backbone only; a new head for %d classes", path, len(self.classes))

    def export(self, train_counts: dict[str, int] | None = None) -> dict:
        """A weights-only model file: everything :func:`load_classifier` needs, nothing that can run code."""
        return {"format": MODEL_FORMAT, "classes": self.classes, "dropout": self.dropout,
                "train_counts": dict(train_counts or {}), **self._export_common(), **self._names_entry()}


def load_transfer_net(saved: dict, path: str | Path) -> TransferNet:
    """Rebuild one trained :class:`TransferNet` from its model file's contents (no network, no pretrained
    download); :func:`tailor.models.registry.load_classifier` is the way in for any classifier file."""
    if "classes" not in saved or "backbone" not in saved:
        raise ValueError(f"{path}: not a tailor classifier file (no classes / backbone)")
    names = saved_names(saved)
    trained = [c for c in saved["classes"] if names is None or c not in set(names.classes)]
    model = TransferNet(trained, backbone=saved["backbone"], pretrained=False,
                        dropout=saved.get("dropout", 0.0), image_size=saved.get("image_size"),
                        saved_model_path=None, trainable_groups=None)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        head = saved["state_dict"].get("head.1.weight")
        raise ModelFileError(
            f"{path}: its weights do not match its class list ({len(trained)} classes, "
            f"a head for {head.shape[0] if head is not None else 'no'} classes, backbone {saved['backbone']})"
        ) from None
    model.attach_names(names)
    model.train_counts = dict(saved.get("train_counts", {}))
    return model.eval()


def saved_names(saved: dict) -> NameHead | None:
    """The name-only classes a model file carries (its ``names`` entry), or None."""
    return NameHead.from_state(saved["names"]) if saved.get("names") else None
