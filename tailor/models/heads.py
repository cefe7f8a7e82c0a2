"""Classification models: a pretrained backbone with a new linear head (the seed's ``TransferNet``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import gin
import torch
from timm.models import group_parameters
from torch import nn

from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.files import ModelFileError, load_model_file

log = logging.getLogger(__name__)

MODEL_FORMAT = "tailor.classifier/1"


@gin.configurable
class TransferNet(nn.Module):
    """``backbone`` → dropout → linear head over ``classes``.

    ``saved_model_path``: start from a trained tailor model (``model.pt``) or Lightning checkpoint. Its
    backbone is always reused; its head too when its classes are the same, otherwise a new head is made
    (the seed's fine-tuning on rare categories).
    ``trainable_groups``: how many of the backbone's layer groups, counted from the top, are trained
    (``None``: all — full fine-tuning; ``0``: none — a linear probe).
    ``image_size``: input size; ``None`` uses the backbone's native size.
    """

    def __init__(self, classes: Sequence[str], backbone: str = DEFAULT_BACKBONE, pretrained: bool = True,
                 dropout: float = 0.2, saved_model_path: str | None = None,
                 trainable_groups: int | None = None, image_size: int | None = None):
        super().__init__()
        saved = load_model_file(saved_model_path) if saved_model_path else None
        if saved is not None and "backbone" in saved:
            backbone = saved["backbone"]
        self.classes = list(classes)
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained and saved is None)
        self.data_config = backbone_data_config(self.backbone)
        self.image_size = int(image_size or self.data_config["input_size"][-1])
        self.dropout = dropout
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, len(self.classes)))
        if saved is not None:
            self._load_saved(saved, saved_model_path)
        self.trainable_groups = trainable_groups
        self._freeze(trainable_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _load_saved(self, saved: dict, path: str | None) -> None:
        state = saved.get("state_dict", saved)
        state = {k.removeprefix("model."): v for k, v in state.items()}
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone_state:
            raise ValueError(f"{path}: no backbone weights in this file")
        self.backbone.load_state_dict(backbone_state)
        if list(saved.get("classes", [])) == self.classes:
            self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
            log.info("loaded %s: backbone and head (%d classes)", path, len(self.classes))
        else:
            log.info("loaded %s: backbone only; a new head for %d classes", path, len(self.classes))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in timm's coarse groups, stem first, plus the head as the last group."""
        named = dict(self.backbone.named_parameters())
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        ordered = [[named[n] for n in groups[k]] for k in sorted(groups)]
        return ordered + [list(self.head.parameters())]

    def _freeze(self, trainable_groups: int | None) -> None:
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
        return [m for m in self.backbone.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and not any(p.requires_grad for p in m.parameters())]

    def export(self, train_counts: dict[str, int] | None = None) -> dict:
        """A weights-only model file: everything :func:`load_classifier` needs, nothing that can run code."""
        return {
            "format": MODEL_FORMAT,
            "backbone": self.backbone_name,
            "classes": self.classes,
            "image_size": self.image_size,
            "mean": list(self.data_config["mean"]),
            "std": list(self.data_config["std"]),
            "dropout": self.dropout,
            "train_counts": dict(train_counts or {}),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }


def load_classifier(path: str | Path) -> TransferNet:
    """Rebuild a trained :class:`TransferNet` from its model file (no network, no pretrained download)."""
    saved = load_model_file(path)
    if "classes" not in saved or "backbone" not in saved:
        raise ValueError(f"{path}: not a tailor classifier file (no classes / backbone)")
    model = TransferNet(saved["classes"], backbone=saved["backbone"], pretrained=False,
                        dropout=saved.get("dropout", 0.0), image_size=saved.get("image_size"),
                        saved_model_path=None, trainable_groups=None)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        head = saved["state_dict"].get("head.1.weight")
        raise ModelFileError(
            f"{path}: its weights do not match its class list ({len(saved['classes'])} classes, "
            f"a head for {head.shape[0] if head is not None else 'no'} classes, backbone {saved['backbone']})"
        ) from None
    model.train_counts = dict(saved.get("train_counts", {}))
    return model.eval()
