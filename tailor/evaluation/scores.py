"""A model's probabilities over a dataset — what evaluation scores and what a run's test split is judged by —
computed by the one inference loop (:func:`tailor.models.features.run_model`), with the mirror-image average.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tailor.distributed import Runtime
from tailor.models.features import run_model


def predict_scores(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64, tta: bool = True,
                   progress: bool = True, desc: str = "evaluating", *,
                   runtime: Runtime | None = None) -> np.ndarray:
    """Softmax probabilities for every item of ``dataset`` (which yields ``(image, label)``), computed on
    ``runtime``'s device (split across its ranks under several processes). Rows whose image cannot be decoded are dropped
    from ``dataset``.

    ``tta`` averages the prediction of each image and its mirror image: free accuracy for catalog photos,
    whose left and right are arbitrary.
    """
    out = run_model(model, lambda images: probabilities(model, images, tta), dataset, batch_size, progress, desc,
                    runtime=runtime)
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
                             progress: bool = True, *, runtime: Runtime | None = None) -> dict[str, np.ndarray]:
    """:func:`predict_scores` for a multi-attribute model: attribute → (items × classes) probabilities."""
    out = run_model(model, lambda images: attribute_probabilities(model, images, tta), dataset, batch_size,
                    progress, "evaluating", runtime=runtime)
    return {a: out[a].numpy() for a in model.head_classes}
