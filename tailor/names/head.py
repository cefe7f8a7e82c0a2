"""The part of a classifier that scores its *name-only* classes: categories it knows by name and place in the
taxonomy, with no training image.

Two kinds of knowledge score a name, and neither alone was best when measured on the training years (categories
hidden in turn, ``bench/zeroshot.py``):

* **ImageNet semantics** (ConSE): each backbone's own pretrained ImageNet head, averaged over the members, gives
  the image's ten most probable ImageNet classes; their name vectors, weighted by those probabilities, give a
  point in name space, compared with each category's name vector by cosine.
* **A map learned on the catalog** (ESZSL, :mod:`tailor.names.semantic_map`): from the classifier's features to
  name space, fitted on the categories that have images.

Each score is standardised by its mean and spread over the training images, and their sum, times ``scale``
plus ``shift``, is the name-only classes' logit beside the log-probabilities of the trained classes: the
calibrated stacking of generalised zero-shot learning (Chao et al., 2016), whose ``shift`` sets how readily the
model names a category it has never seen. Both are chosen on the training data (:mod:`tailor.names.fit`).

The module reads pooled features (the members' side by side, as ``features()`` of a classifier returns them),
so a classifier computes them once for both kinds of class; everything it holds is a tensor or a number, saved
in the model file under ``names`` (weights only).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NameHead(nn.Module):
    """``features`` (N, sum(widths)) → logits (N, len(classes)) of the name-only classes."""

    def __init__(self, classes: Sequence[str], name_vectors: torch.Tensor, widths: Sequence[int],
                 imagenet_weights: Sequence[torch.Tensor], imagenet_biases: Sequence[torch.Tensor],
                 imagenet_vectors: torch.Tensor, projection: torch.Tensor, offset: torch.Tensor,
                 standardise: Sequence[float], scale: float = 1.0, shift: float = 0.0, top: int = 10,
                 phrases: Sequence[str] | None = None):
        super().__init__()
        if len(classes) != len(name_vectors):
            raise ValueError(f"{len(classes)} name-only classes, {len(name_vectors)} name vectors")
        self.classes = list(classes)
        self.phrases = list(phrases) if phrases is not None else list(classes)
        self.widths = [int(w) for w in widths]
        self.top = int(top)
        self.scale, self.shift = float(scale), float(shift)
        self.standardise = [float(v) for v in standardise]  # ConSE mean, spread; map mean, spread
        self.register_buffer("name_vectors", name_vectors.float())
        for i, (weight, bias) in enumerate(zip(imagenet_weights, imagenet_biases)):
            self.register_buffer(f"imagenet_weight_{i}", weight.float())
            self.register_buffer(f"imagenet_bias_{i}", bias.float())
        self.register_buffer("imagenet_vectors", imagenet_vectors.float())
        self.register_buffer("projection", projection.float())
        self.register_buffer("offset", offset.float())

    def _imagenet(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"imagenet_weight_{i}"), getattr(self, f"imagenet_bias_{i}")

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two raw scores of every name-only class: ConSE cosine and the learned map's, each (N, C)."""
        features = features.float()
        probs = torch.stack([F.linear(part, *self._imagenet(i)).softmax(dim=1)
                             for i, part in enumerate(features.split(self.widths, dim=1))]).mean(0)
        weights, rows = probs.topk(min(self.top, probs.shape[1]), dim=1)
        point = F.normalize((weights[..., None] * self.imagenet_vectors[rows]).sum(1), dim=1)
        mapped = features @ self.projection + self.offset
        return point @ self.name_vectors.T, mapped @ self.name_vectors.T

    def name_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The standardised sum of both scores (N, C): what ranks the name-only classes among themselves."""
        conse, mapped = self.scores(features)
        c_mean, c_std, m_mean, m_std = self.standardise
        return (conse - c_mean) / c_std + (mapped - m_mean) / m_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.name_scores(features) + self.shift

    def add_class(self, name: str, vector: torch.Tensor, phrase: str | None = None) -> None:
        """Carry one more category by name (``tailor enroll --class NAME`` with no image)."""
        if name in self.classes:
            raise ValueError(f"{name!r} is already a name-only class")
        self.name_vectors = torch.cat([self.name_vectors, vector.float().reshape(1, -1).to(self.name_vectors)])
        self.classes.append(name)
        self.phrases.append(phrase or name)

    def subset(self, keep: Sequence[str]) -> "NameHead":
        """The same head for the name-only classes in ``keep`` only (in this head's order)."""
        rows = [i for i, c in enumerate(self.classes) if c in set(keep)]
        state = self.state()
        state.update(classes=[self.classes[i] for i in rows], phrases=[self.phrases[i] for i in rows],
                     name_vectors=state["name_vectors"][rows])
        return NameHead.from_state(state)

    def state(self) -> dict:
        """Tensors and numbers only: what a model file keeps under ``names``."""
        n = len(self.widths)
        return {"classes": list(self.classes), "phrases": list(self.phrases), "widths": list(self.widths),
                "top": self.top, "scale": self.scale, "shift": self.shift, "standardise": list(self.standardise),
                "name_vectors": self.name_vectors.detach().cpu(),
                "imagenet_weights": [self._imagenet(i)[0].detach().cpu() for i in range(n)],
                "imagenet_biases": [self._imagenet(i)[1].detach().cpu() for i in range(n)],
                "imagenet_vectors": self.imagenet_vectors.detach().cpu(),
                "projection": self.projection.detach().cpu(), "offset": self.offset.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "NameHead":
        return cls(state["classes"], state["name_vectors"], state["widths"], state["imagenet_weights"],
                   state["imagenet_biases"], state["imagenet_vectors"], state["projection"], state["offset"],
                   state["standardise"], state["scale"], state["shift"], state["top"], state.get("phrases"))


def stacked_logits(seen_log_probs: torch.Tensor, name_logits: torch.Tensor) -> torch.Tensor:
    """Trained classes' log-probabilities beside the name-only classes' logits: one softmax over both is the
    model's distribution over every class it knows."""
    return torch.cat([seen_log_probs, name_logits.to(seen_log_probs.dtype)], dim=1)
