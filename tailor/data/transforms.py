"""Image transforms: size and normalisation come from the backbone (timm's data config); augmentation is
chosen in the config (``train_transform.*``, bound at the edge to :class:`Augmentation`). Transforms take
``uint8`` tensors (3, H, W), which is what the datasets keep in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from tailor.data.data_config import DataConfig


def _finish(config: DataConfig) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=config.mean, std=config.std)]


def eval_transform(config: DataConfig) -> v2.Compose:
    """Resize the whole image to the input size. Catalog photos are centred on a plain background, so
    a centre crop would only cut off the ends of shoes and bags."""
    return v2.Compose([v2.Resize((config.size, config.size), antialias=True), *_finish(config)])


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation (bound as ``train_transform.*``).

    ``augment``: "none", "trivial" (TrivialAugmentWide), "randaugment" or "autoaugment".
    ``scale``: the range of the random crop's area. ``hflip``: random mirror images.
    ``rotation``: degrees of random rotation (the relation-net notebook used a full turn).
    ``erasing``: probability of random erasing.
    """

    augment: str = "trivial"
    scale: tuple[float, float] = (0.6, 1.0)
    hflip: bool = True
    rotation: float = 0.0
    erasing: float = 0.0


def train_transform(config: DataConfig, augmentation: Augmentation | None = None) -> v2.Compose:
    """The training transform for ``config``'s input, with ``augmentation`` (default: :class:`Augmentation`)."""
    a = augmentation or Augmentation()
    augment, erasing = a.augment, a.erasing
    steps: list = [v2.RandomResizedCrop(config.size, scale=tuple(a.scale), antialias=True)]
    if a.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if a.rotation:
        steps.append(v2.RandomRotation(a.rotation, fill=255))
    policies = {
        "none": None,
        "trivial": lambda: v2.TrivialAugmentWide(fill=255),
        "randaugment": lambda: v2.RandAugment(fill=255),
        "autoaugment": lambda: v2.AutoAugment(fill=255),
    }
    if augment not in policies:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {sorted(policies)}")
    if policies[augment]:
        steps.append(policies[augment]())
    steps += _finish(config)
    if erasing:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)
