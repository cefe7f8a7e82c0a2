"""ConSE (Norouzi et al., 2014, "Zero-Shot Learning by Convex Combination of Semantic Embeddings"): an image's
ImageNet-head probabilities, as weights over the name vectors of the ImageNet classes, give a point in name
space; the nearest category name wins. It needs nothing trained on the catalog, which makes it the yardstick
``bench/zeroshot.py`` prints beside tailor's zero-shot heads."""

from __future__ import annotations

import functools

import torch
from torch import nn

from tailor.models.backbones import create_backbone
from tailor.names.text import TextEncoder, words


@functools.lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in the order of a pretrained head (timm's packaged list), each as its
    first, most common synonym ("bow tie, bow-tie, bowtie" → "bow tie")."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0] for i in range(info.num_classes()))


def imagenet_head(backbone: str) -> nn.Linear:
    """The pretrained ImageNet classifier of ``backbone``, which reads the same pooled features tailor's heads do."""
    model = create_backbone(backbone, keep_classifier=True)
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.out_features != 1000:
        raise ValueError(f"{backbone}: no 1000-class linear ImageNet head to take semantics from")
    return head.eval()


class ConSE:
    """Scores categories by name from an ImageNet head's top-``top`` probabilities."""

    def __init__(self, head: nn.Linear, encoder: TextEncoder, top: int = 10):
        self.head, self.top = head, top
        self.vectors = encoder.embed([words(n) for n in imagenet_names()])

    @torch.inference_mode()
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features ((views, N, D) or (N, D)) → unit points in name space (N, A)."""
        x = features.float().mean(0) if features.dim() == 3 else features.float()
        probs = self.head(x).softmax(dim=1)
        weights, rows = probs.topk(self.top, dim=1)
        points = (weights[..., None] * self.vectors[rows]).sum(1)
        return points / points.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def scores(self, features: torch.Tensor, name_vectors: torch.Tensor) -> torch.Tensor:
        """Cosine of each image's point with each category's name vector (N, C)."""
        return self.embed(features) @ name_vectors.float().T
