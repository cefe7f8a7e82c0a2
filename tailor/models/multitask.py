"""One backbone, one classification head per attribute (category, colour, gender, season, usage, …).

The relation-net notebook's author names this as the way forward: exclusive label groups get separate
heads over shared features, so "red" and "dress" stop competing for one notion of similarity — and a catalog
team gets every attribute of a product from one forward pass.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from tailor.models.backbones import DEFAULT_BACKBONE
from tailor.models.colour import DESCRIPTOR_WIDTH, ColourDescriptor
from tailor.models.files import MULTITASK_FORMAT, ModelFileError, is_multitask_file, load_model_file
from tailor.models.heads import PretrainedModel

log = logging.getLogger(__name__)

_HEAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MultiTaskNet(PretrainedModel):
    """``backbone`` → one ``dropout`` → linear head per attribute in ``heads`` (attribute → its classes).

    ``forward`` returns a dict of logits by attribute. ``saved_model_path``: start from any tailor model file
    or checkpoint (a single-attribute ``TransferNet`` too): its backbone is reused, and each of its heads whose
    attribute and classes match.
    ``colour_heads``: attributes whose head also sees the foreground colour descriptor of the photo
    (:mod:`tailor.models.colour`) beside the network's features — the network's pooled features, trained for
    ImageNet's categories, blur colour; the descriptor keeps it.
    """

    def __init__(self, heads: Mapping[str, Sequence[str]], backbone: str = DEFAULT_BACKBONE,
                 pretrained: bool = True, dropout: float = 0.2, saved_model_path: str | None = None,
                 trainable_groups: int | None = None, image_size: int | None = None,
                 colour_heads: Sequence[str] = ("baseColour",)):
        super().__init__()
        if not heads:
            raise ValueError("a multi-attribute model needs at least one attribute")
        for name, classes in heads.items():
            if not _HEAD_NAME.match(name):
                raise ValueError(f"attribute name {name!r}: use letters, digits and underscores")
            if len(classes) < 2:
                raise ValueError(f"attribute {name!r} has {len(classes)} value(s): a head needs at least two")
        saved = load_model_file(saved_model_path) if saved_model_path else None
        backbone = self._one_backbone(backbone, saved, saved_model_path)
        self.head_classes = {name: list(classes) for name, classes in heads.items()}
        self._init_backbone(backbone, pretrained and saved is None, image_size)
        self.dropout = dropout
        self.colour_heads = [name for name in colour_heads if name in self.head_classes]
        self.colour = (ColourDescriptor(self.data_config["mean"], self.data_config["std"])
                       if self.colour_heads else None)
        width = self.backbone.num_features
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Dropout(dropout),
                                nn.Linear(width + DESCRIPTOR_WIDTH * (name in self.colour_heads), len(classes)))
            for name, classes in self.head_classes.items()})
        if saved is not None:
            self._load_saved(saved, saved_model_path)
        self._freeze(trainable_groups)

    @property
    def attributes(self) -> list[str]:
        return list(self.head_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        if self.colour is None:
            return {name: head(features) for name, head in self.heads.items()}
        with_colour = torch.cat([features.float(), self.colour(x).to(features.device)], dim=1)
        return {name: head(with_colour if name in self.colour_heads else features)
                for name, head in self.heads.items()}

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def linear(self, attribute: str) -> nn.Linear:
        return self.heads[attribute][-1]

    def _load_saved(self, saved: dict, path: str | None) -> None:
        state = self._load_backbone(saved.get("state_dict", saved), path)
        saved_heads = dict(saved.get("heads", {}))
        if not saved_heads and "classes" in saved:  # a single-attribute classifier: its head is the label column's
            saved_heads = {saved.get("label_column", "articleType"): saved["classes"]}
            name = next(iter(saved_heads))
            state = {f"heads.{name}.{k.removeprefix('head.')}" if k.startswith("head.") else k: v
                     for k, v in state.items()}
        reused = []
        for name, classes in self.head_classes.items():
            prefix = f"heads.{name}."
            head_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            same_inputs = head_state.get("1.weight", torch.empty(0, 0)).shape[-1] == self.linear(name).in_features
            if list(saved_heads.get(name, [])) == classes and same_inputs:
                self.heads[name].load_state_dict(head_state)
                reused.append(name)
        colour_state = {k.removeprefix("colour."): v for k, v in state.items() if k.startswith("colour.")}
        if self.colour is not None and colour_state:
            self.colour.load_state_dict(colour_state)
        log.info("loaded %s: backbone%s", path, f" and the heads of {', '.join(reused)}" if reused else " only")

    def export(self, train_counts: Mapping[str, Mapping[str, int]] | None = None) -> dict:
        """A weights-only model file (``tailor.multitask/1``) that :func:`load_multitask` rebuilds offline."""
        return {"format": MULTITASK_FORMAT, "heads": self.head_classes, "dropout": self.dropout,
                "colour_heads": self.colour_heads,
                "train_counts": {k: dict(v) for k, v in (train_counts or {}).items()}, **self._export_common()}


def load_multitask(path: str | Path, saved: dict | None = None) -> MultiTaskNet:
    """Rebuild a trained :class:`MultiTaskNet` from its model file (no network, no pretrained download).
    ``saved``: the file's contents, when the caller has read them already."""
    saved = load_model_file(path) if saved is None else saved
    if not is_multitask_file(saved):
        raise ModelFileError(f"{path}: not a multi-attribute model file (format {saved.get('format')!r})")
    model = MultiTaskNet(saved["heads"], backbone=saved["backbone"], pretrained=False,
                         dropout=saved.get("dropout", 0.0), image_size=saved.get("image_size"),
                         saved_model_path=None, trainable_groups=None, colour_heads=saved.get("colour_heads", ()))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ModelFileError(f"{path}: its weights do not match its heads ({str(err).splitlines()[0][:160]})") from None
    model.train_counts = {k: dict(v) for k, v in saved.get("train_counts", {}).items()}
    return model.eval()
