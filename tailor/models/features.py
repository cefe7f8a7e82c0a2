"""Frozen-backbone features, computed once per (backbone, transform, image) and reused by linear probes, kNN,
prototypes and episode evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def image_batches(dataset: Dataset, batch_size: int = 64, progress: bool = True, desc: str = "batches"):
    """The images of ``dataset`` (which yields ``(image, label)``) in order, in channels_last batches."""
    # its own generator: a loader draws a seed from the global one, which would shift a later weight init
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator())
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    for images, _ in loader:
        yield images.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 64, flip: bool = True,
                     progress: bool = True, desc: str = "features") -> torch.Tensor:
    """Pooled features of every item of ``dataset`` (which yields ``(image, label)``), in order.

    With ``flip``, returns ``(2, N, D)``: the images and their mirror images; else ``(1, N, D)``.
    """
    was_training = backbone.training
    backbone.eval()
    views: list[list[torch.Tensor]] = [[] for _ in range(2 if flip else 1)]
    for images in image_batches(dataset, batch_size, progress, desc):
        views[0].append(backbone(images).float())
        if flip:
            views[1].append(backbone(images.flip(-1)).float())
    backbone.train(was_training)
    return torch.stack([torch.cat(v) for v in views])
