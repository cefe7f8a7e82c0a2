"""The catalog index of a metric-learning run (``index.pt``): every product's embedding with its id, class,
image, colour vector and catalog attributes, computed once when the run is evaluated and searched by
``tailor similar`` and ``tailor serve`` with the look-alike ranking (:mod:`tailor.search.lookalike`)."""

from __future__ import annotations

from tailor import run_folder
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence

import torch

from tailor.models.files import ModelFileError, load_model_file, save_model_file
from tailor.search.lookalike import LookalikeSettings, lookalike_scores

INDEX_FILE = run_folder.INDEX
INDEX_FORMAT = "tailor.index/3"
OLDER_FORMATS = ("tailor.index/1", "tailor.index/2")  # /1: one data root for every product; /2: no colours
QUERY_CHUNK = 256  # queries scored at once: (chunk × products) floats in memory


class SearchIndexError(ModelFileError):
    """A missing or inconsistent catalog index."""


@dataclass(frozen=True)
class Neighbour:
    id: str
    label: str
    image: str        # path relative to ``root``
    distance: float   # L2 distance between unit embeddings, in [0, 2]
    root: str = ""    # the data root the image lives under
    score: float = math.nan  # the look-alike score it was ranked by (higher first)


@dataclass
class EmbeddingIndex:
    """Every product's embedding with its id, class and image. ``root``: the data root the image paths are
    relative to — one for all, or one per product (training and test images may live under different roots).
    ``colours``: each product's colour vector (``(N, C)``, unit rows), when the model has a colour probe;
    ``attributes``: catalog columns (gender, baseColour, …) by name, one value per product, for filters."""

    embeddings: torch.Tensor   # (N, D), unit rows
    ids: list[str]
    labels: list[str]
    images: list[str]
    root: str | list[str]
    colours: torch.Tensor | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if isinstance(self.root, (str, Path)):
            self.root = [str(self.root)] * n
        if not (len(self.ids) == len(self.labels) == len(self.images) == len(self.root) == n):
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.ids)} ids, "
                                   f"{len(self.labels)} labels, {len(self.images)} images, {len(self.root)} roots")
        if self.colours is not None and len(self.colours) != n:
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.colours)} colour vectors")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(values)} values of {name}")
        self.label_names = sorted(set(self.labels))
        number = {label: i for i, label in enumerate(self.label_names)}
        self.label_codes = torch.tensor([number[label] for label in self.labels], dtype=torch.long,
                                        device=self.embeddings.device)
        self._positions = {pid: i for i, pid in enumerate(self.ids)}
        self._files: dict[str, set[int]] | None = None

    def __len__(self) -> int:
        return len(self.embeddings)

    def position(self, product_id: str) -> int | None:
        """Where the product ``product_id`` is in the index, or None."""
        return self._positions.get(str(product_id))

    def positions_of_file(self, path: str | Path) -> set[int]:
        """The index positions whose image is the file at ``path`` (a query that is a catalog product)."""
        if self._files is None:
            self._files = {}
            for i, (root, image) in enumerate(zip(self.root, self.images)):
                self._files.setdefault(os.path.normpath(os.path.join(root, image)), set()).add(i)
        return set(self._files.get(str(Path(path).resolve()), set()))

    def allowed(self, filters: Mapping[str, str]) -> torch.Tensor:
        """``(N,)`` True for the products whose attributes equal every ``filters`` value (``label`` is the
        category); a column the index does not hold is an error that lists those it does."""
        keep = torch.ones(len(self), dtype=torch.bool)
        columns = {"label": self.labels, **self.attributes}
        for name, value in filters.items():
            if name not in columns:
                raise SearchIndexError(f"cannot filter by {name!r}: this index holds "
                                       f"{', '.join(sorted(columns))}")
            keep &= torch.tensor([v == value for v in columns[name]], dtype=torch.bool)
        return keep

    def search(self, queries: torch.Tensor, k: int = 10, colours: torch.Tensor | None = None,
               exclude: Sequence[Collection[int]] | None = None, allowed: torch.Tensor | None = None,
               settings: LookalikeSettings | None = None) -> list[list[Neighbour]]:
        """The ``k`` best look-alikes of each query embedding (with its colour vector, when given), best first.

        ``exclude``: per query, index positions never to return (the query product itself); ``allowed``:
        ``(N,)`` or ``(Q, N)`` mask of the products a query may return (filters). Fewer than ``k`` come back
        when fewer are allowed."""
        found = []
        for start in range(0, len(queries), QUERY_CHUNK):
            stop = start + QUERY_CHUNK
            chunk_colours = colours[start:stop].to(self.embeddings.device) if colours is not None else None
            scores, similarity = lookalike_scores(queries[start:stop].to(self.embeddings.device), self.embeddings,
                                                  self.label_codes, len(self.label_names), chunk_colours,
                                                  self.colours, settings)
            if allowed is not None:
                mask = allowed.to(scores.device)
                mask = mask[start:stop] if mask.dim() == 2 else mask
                scores = scores.masked_fill(~mask, -math.inf)
            for row, skip in enumerate((exclude or [])[start:stop]):
                if skip:
                    scores[row, list(skip)] = -math.inf
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            distance = (2.0 - 2.0 * similarity.gather(1, top.indices)).clamp_min(0).sqrt().cpu()
            for row, (positions, values) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
                found.append([Neighbour(self.ids[j], self.labels[j], self.images[j], float(d), self.root[j], float(v))
                              for j, v, d in zip(positions, values, distance[row]) if v > -math.inf])
        return found

    def image_path(self, neighbour: Neighbour) -> Path:
        return Path(neighbour.root) / neighbour.image

    def to(self, device: torch.device | str) -> "EmbeddingIndex":
        """The same index with its embeddings on ``device`` (searched there)."""
        return EmbeddingIndex(self.embeddings.to(device), self.ids, self.labels, self.images, self.root,
                              self.colours.to(device) if self.colours is not None else None, self.attributes)

    def save(self, path: str | Path) -> None:
        roots = sorted(set(self.root))
        number = {r: i for i, r in enumerate(roots)}
        save_model_file(path, {"format": INDEX_FORMAT, "embeddings": self.embeddings.half().cpu(), "ids": self.ids,
                               "labels": self.labels, "images": self.images, "roots": roots,
                               "root_of": torch.tensor([number[r] for r in self.root], dtype=torch.int32),
                               "colours": self.colours.half().cpu() if self.colours is not None else None,
                               "attributes": self.attributes})

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingIndex":
        saved = load_model_file(path)
        if saved.get("format") in OLDER_FORMATS:
            roots = saved["root"]
        elif saved.get("format") in (INDEX_FORMAT, "tailor.index/2"):
            roots = [saved["roots"][i] for i in saved["root_of"].tolist()]
        else:
            raise SearchIndexError(f"{path}: not a tailor catalog index")
        colours = saved.get("colours")
        return cls(saved["embeddings"].float(), list(saved["ids"]), list(saved["labels"]), list(saved["images"]),
                   roots, colours.float() if colours is not None else None,
                   {k: list(v) for k, v in saved.get("attributes", {}).items()})

    @classmethod
    def concat(cls, parts: Sequence["EmbeddingIndex"]) -> "EmbeddingIndex":
        """One index over the products of every part (their data roots may differ). Colour vectors and
        attributes are kept when every part has them."""
        colours = (torch.cat([p.colours for p in parts]) if all(p.colours is not None for p in parts) else None)
        shared = set.intersection(*(set(p.attributes) for p in parts)) if parts else set()
        return cls(torch.cat([p.embeddings for p in parts]), [i for p in parts for i in p.ids],
                   [x for p in parts for x in p.labels], [x for p in parts for x in p.images],
                   [r for p in parts for r in p.root], colours,
                   {name: [v for p in parts for v in p.attributes[name]] for name in sorted(shared)})
