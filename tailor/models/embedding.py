"""Embedding models for metric learning: a pretrained backbone followed by a projection onto the unit sphere.

The projection is a module of its own so that it can be trained either on images (through the backbone:
full fine-tuning, as the seed did) or on the backbone's cached features (the backbone frozen: seconds per
epoch on a CPU). Either way the saved model is the same: backbone + projection, one ``model.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.covariance import ledoit_wolf_shrinkage
from torch import nn

from tailor.models.backbones import DEFAULT_BACKBONE, backbone_data_config, create_backbone
from tailor.models.class_statistics import within_class_statistics
from tailor.models.colour import ColourProbe
from tailor.models.files import ModelFileError, load_model_file

EMBEDDING_FORMAT = "tailor.embedding/1"


class Projection(nn.Module):
    """Backbone features → L2-normalised embedding of size ``dim``.

    ``hidden``: width of one hidden layer (batch norm, ReLU, dropout); 0 makes the projection linear.
    The features are centred on ``mean`` first (the training features' mean): with frozen ImageNet features,
    centring alone already sharpens nearest-neighbour search.
    """

    def __init__(self, in_features: int, dim: int = 256, hidden: int = 1024, dropout: float = 0.2):
        super().__init__()
        self.in_features, self.dim, self.hidden, self.dropout = in_features, dim, hidden, dropout
        self.register_buffer("mean", torch.zeros(in_features))
        if hidden:
            self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden, dim))
        else:
            self.layers = nn.Sequential(nn.Linear(in_features, dim))

    @classmethod
    def identity(cls, in_features: int, mean: torch.Tensor) -> "Projection":
        """A linear projection that starts as the plain frozen embedding — features centred on ``mean``, then
        unit length (SimpleShot's CL2N) — so that training can only refine a strong start, never first undo a
        random one; with ``main.num_epochs = 0`` it is that baseline itself."""
        projection = cls(in_features, dim=in_features, hidden=0)
        projection.mean.copy_(mean)
        with torch.no_grad():
            projection.layers[0].weight.copy_(torch.eye(in_features))
            projection.layers[0].bias.zero_()
        return projection

    @classmethod
    def whitening(cls, features: torch.Tensor, targets: torch.Tensor, alpha: float | None = None,
                  dim: int | None = None) -> "Projection":
        """A linear projection that starts as within-class whitening of ``features`` (N, D): centred on their
        mean, multiplied by ``Σ_w^-1/2`` (``Σ_w`` the classes' pooled within-class covariance), then unit length.
        Directions along which every class varies (colour, pose, the mirror image) shrink; those that separate
        classes grow.

        ``alpha``: ``Σ_w + alpha·I``; None shrinks ``Σ_w`` toward a scaled identity by the Ledoit–Wolf rule
        instead, with no knob to tune. ``dim``: keep only the ``dim`` directions along which the whitened
        features vary most; within-class spread being equal in every direction there, those are where the
        classes differ, so a small embedding keeps what a nearest-neighbour search needs.
        """
        x = features.double()
        statistics = within_class_statistics(x, targets)
        covariance = statistics.covariance
        identity = torch.eye(x.shape[1], dtype=torch.float64)
        if alpha is None:
            shrinkage = float(ledoit_wolf_shrinkage(statistics.centred.numpy(), assume_centered=True))
            scale = covariance.diagonal().mean()
            covariance = (1 - shrinkage) * covariance + shrinkage * scale * identity
        else:
            covariance = covariance + alpha * identity
        values, vectors = torch.linalg.eigh(covariance)
        if values.min() <= 1e-12 * values.max().clamp_min(1e-300):
            raise ValueError(f"cannot whiten: the within-class covariance of {len(x)} feature vectors of dimension "
                             f"{x.shape[1]} is singular; use alpha > 0, or alpha=None for Ledoit–Wolf shrinkage")
        weight = (vectors * values.rsqrt()) @ vectors.T
        if dim is not None and dim < x.shape[1]:
            whitened = (x - x.mean(0)) @ weight
            weight = torch.linalg.svd(whitened, full_matrices=False).Vh[:dim] @ weight
        projection = cls(x.shape[1], dim=weight.shape[0], hidden=0)
        projection.mean.copy_(x.mean(0).float())
        with torch.no_grad():
            projection.layers[0].weight.copy_(weight)
            projection.layers[0].bias.zero_()
        return projection

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features - self.mean), dim=-1)

    def hyperparameters(self) -> dict:
        return {"in_features": self.in_features, "dim": self.dim, "hidden": self.hidden, "dropout": self.dropout}


class EmbeddingNet(nn.Module):
    """``backbone`` → :class:`Projection`: images to unit-length embeddings.

    ``colour_classes``: when given, a :class:`~tailor.models.colour.ColourProbe` on the backbone's features
    and the photo's colour descriptor gives each image a colour vector too (:meth:`embed_with_colour`), which
    look-alike search ranks by beside the embedding. ``projection``: the head's arguments (a saved model's);
    ``projection_class``: the head's class (the metric recipe's is bound to ``Projection.*``).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, pretrained: bool = True, image_size: int | None = None,
                 projection: dict | None = None, colour_classes: list[str] | None = None,
                 projection_class: type[Projection] = Projection):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained)
        self.data_config = backbone_data_config(self.backbone)
        self.image_size = int(image_size or self.data_config["input_size"][-1])
        options = dict(projection or {})
        options.setdefault("in_features", self.backbone.num_features)
        self.projection = projection_class(**options)
        self.colour: ColourProbe | None = None
        if colour_classes:
            self.add_colour(colour_classes)

    def add_colour(self, classes: list[str]) -> ColourProbe:
        """Give the model a (still untrained) colour probe over ``classes``."""
        self.colour = ColourProbe(self.backbone.num_features, classes, self.data_config["mean"],
                                  self.data_config["std"])
        return self.colour

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(images))

    def embed_with_colour(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embeddings and, with a colour probe, the colour vectors of a batch, from one backbone pass."""
        features = self.backbone(images)
        colour = self.colour(features, images) if self.colour is not None else None
        return self.projection(features), colour

    def export(self) -> dict:
        """A weights-only model file: everything :func:`load_embedding_net` needs, nothing that can run code."""
        return {
            "format": EMBEDDING_FORMAT,
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "mean": list(self.data_config["mean"]),
            "std": list(self.data_config["std"]),
            "projection": self.projection.hyperparameters(),
            "colour_classes": self.colour.classes if self.colour is not None else None,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }


def load_embedding_net(path: str | Path, saved: dict | None = None) -> EmbeddingNet:
    """Rebuild a trained :class:`EmbeddingNet` from its model file (no pretrained download). ``saved``: the
    file's contents, when the caller has read them already."""
    saved = load_model_file(path) if saved is None else saved
    if saved.get("format") != EMBEDDING_FORMAT:
        raise ModelFileError(f"{path}: not a tailor embedding model (format {saved.get('format')!r}); "
                             f"`tailor similar` needs a run of configs/triplet.gin")
    model = EmbeddingNet(saved["backbone"], pretrained=False, image_size=saved["image_size"],
                         projection=saved["projection"], colour_classes=saved.get("colour_classes"))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ModelFileError(f"{path}: its weights do not fit its description ({str(err).splitlines()[0]})") from None
    return model.eval()
