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
INDEX_FORMAT = "tailor.index/1"


class SearchIndexError(ModelFileError):
    """A missing or inconsistent catalog index."""


@dataclass(frozen=True)
class Neighbour:
    id: str
    label: str
    image: str        # path relative to the index's data root
    distance: float   # L2 distance between unit embeddings, in [0, 2]


@dataclass
class EmbeddingIndex:
    embeddings: torch.Tensor   # (N, D), unit rows
    ids: list[str]
    labels: list[str]
    images: list[str]
    root: str                  # the data root the image paths are relative to

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if not (len(self.ids) == len(self.labels) == len(self.images) == n):
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.ids)} ids, "
                              f"{len(self.labels)} labels, {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: torch.Tensor, k: int = 10) -> list[list[Neighbour]]:
        """The ``k`` nearest products of each query embedding, nearest first."""
        similarity, index = exact_neighbours(queries, self.embeddings, k)
        distance = (2.0 - 2.0 * similarity).clamp_min(0).sqrt()
        return [[Neighbour(self.ids[j], self.labels[j], self.images[j], float(d)) for j, d in zip(row, dist)]
                for row, dist in zip(index.tolist(), distance)]

    def image_path(self, neighbour: Neighbour) -> Path:
        return Path(self.root) / neighbour.image

    def save(self, path: str | Path) -> None:
        save_model_file(path, {"format": INDEX_FORMAT, "embeddings": self.embeddings.half(), "ids": self.ids,
                               "labels": self.labels, "images": self.images, "root": self.root})

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingIndex":
        saved = load_model_file(path)
        if saved.get("format") != INDEX_FORMAT:
            raise SearchIndexError(f"{path}: not a tailor catalog index")
        return cls(saved["embeddings"].float(), list(saved["ids"]), list(saved["labels"]), list(saved["images"]),
                   saved["root"])

    @classmethod
    def concat(cls, parts: Sequence["EmbeddingIndex"]) -> "EmbeddingIndex":
        if len({p.root for p in parts}) > 1:
            raise SearchIndexError("cannot join indexes over different data roots")
        return cls(torch.cat([p.embeddings for p in parts]), [i for p in parts for i in p.ids],
                   [x for p in parts for x in p.labels], [x for p in parts for x in p.images], parts[0].root)
