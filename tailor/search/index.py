"""The catalog index of a metric-learning run (``index.pt``): every product's embedding with its id, class
and image, computed once when the run is evaluated and searched by ``tailor similar``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tailor.models.files import ModelFileError, load_model_file, save_model_file
from tailor.search.exact import exact_neighbours

INDEX_FILE = "index.pt"
INDEX_FORMAT = "tailor.index/2"
OLDER_FORMATS = ("tailor.index/1",)  # one data root for every product


class SearchIndexError(ModelFileError):
    """A missing or inconsistent catalog index."""


@dataclass(frozen=True)
class Neighbour:
    id: str
    label: str
    image: str        # path relative to ``root``
    distance: float   # L2 distance between unit embeddings, in [0, 2]
    root: str = ""    # the data root the image lives under


@dataclass
class EmbeddingIndex:
    """Every product's embedding with its id, class and image. ``root``: the data root the image paths are
    relative to — one for all, or one per product (training and test images may live under different roots)."""

    embeddings: torch.Tensor   # (N, D), unit rows
    ids: list[str]
    labels: list[str]
    images: list[str]
    root: str | list[str]

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if isinstance(self.root, (str, Path)):
            self.root = [str(self.root)] * n
        if not (len(self.ids) == len(self.labels) == len(self.images) == len(self.root) == n):
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.ids)} ids, "
                                   f"{len(self.labels)} labels, {len(self.images)} images, {len(self.root)} roots")

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: torch.Tensor, k: int = 10) -> list[list[Neighbour]]:
        """The ``k`` nearest products of each query embedding, nearest first."""
        similarity, index = exact_neighbours(queries.to(self.embeddings.device), self.embeddings, k)
        distance = (2.0 - 2.0 * similarity).clamp_min(0).sqrt().cpu()
        return [[Neighbour(self.ids[j], self.labels[j], self.images[j], float(d), self.root[j])
                 for j, d in zip(row, dist)] for row, dist in zip(index.tolist(), distance)]

    def image_path(self, neighbour: Neighbour) -> Path:
        return Path(neighbour.root) / neighbour.image

    def to(self, device: torch.device | str) -> "EmbeddingIndex":
        """The same index with its embeddings on ``device`` (searched there)."""
        return EmbeddingIndex(self.embeddings.to(device), self.ids, self.labels, self.images, self.root)

    def save(self, path: str | Path) -> None:
        roots = sorted(set(self.root))
        number = {r: i for i, r in enumerate(roots)}
        save_model_file(path, {"format": INDEX_FORMAT, "embeddings": self.embeddings.half().cpu(), "ids": self.ids,
                               "labels": self.labels, "images": self.images, "roots": roots,
                               "root_of": torch.tensor([number[r] for r in self.root], dtype=torch.int32)})

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingIndex":
        saved = load_model_file(path)
        if saved.get("format") in OLDER_FORMATS:
            roots = saved["root"]
        elif saved.get("format") == INDEX_FORMAT:
            roots = [saved["roots"][i] for i in saved["root_of"].tolist()]
        else:
            raise SearchIndexError(f"{path}: not a tailor catalog index")
        return cls(saved["embeddings"].float(), list(saved["ids"]), list(saved["labels"]), list(saved["images"]),
                   roots)

    @classmethod
    def concat(cls, parts: Sequence["EmbeddingIndex"]) -> "EmbeddingIndex":
        """One index over the products of every part (their data roots may differ)."""
        return cls(torch.cat([p.embeddings for p in parts]), [i for p in parts for i in p.ids],
                   [x for p in parts for x in p.labels], [x for p in parts for x in p.images],
                   [r for p in parts for r in p.root])
