"""The catalog index of a metric-learning run (``index.pt``): every product's embedding with its id, class,
image, colour vector and catalog attributes, computed once when the run is evaluated and searched by
``tailor similar`` and ``tailor serve`` with the look-alike ranking (:mod:`tailor.search.lookalike`).

Up to ``search.ann.exact_below`` products every query scores every product. Above it an approximate index
(:mod:`tailor.search.ann`, ``index-<token>.faiss`` beside ``index.pt``) proposes each query's candidates,
filters applied inside its search, and the look-alike ranking re-scores them exactly. Each write gives the
approximate index a new name and ``index.pt``, replaced atomically last, names the one that belongs to it: a
process killed mid-write leaves the previous pair whole, and a reader never pairs files of two writes."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
import torch

from tailor import run_folder
from tailor.models.files import ModelFileError, load_model_file, save_model_file
from tailor.search.ann import AnnSettings, CatalogAnn, pack, rescored_nearest
from tailor.search.lookalike import LookalikeSettings, category_votes, lookalike_scores

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
    #: the approximate index over ``embeddings`` (None: exact search)
    ann: CatalogAnn | None = None

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if isinstance(self.root, (str, Path)):
            self.root = [str(self.root)] * n
        if not (len(self.ids) == len(self.labels) == len(self.images) == len(self.root) == n):
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.ids)} ids, "
                                   f"{len(self.labels)} labels, {len(self.images)} images, {len(self.root)} roots")
        if self.ann is not None and self.ann.size != n:
            raise SearchIndexError(f"the approximate index holds {self.ann.size} products, the index {n}")
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
            values, codes = self._codes(name, columns[name])
            where = np.searchsorted(values, value)
            found = where < len(values) and values[where] == value
            keep &= torch.from_numpy(codes == where) if found else torch.zeros(len(self), dtype=torch.bool)
        return keep

    def _codes(self, name: str, column: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """A column's distinct values (sorted) and each product's value as their number, computed once: a
        filter is then one vectorised comparison, not a Python loop over the catalog per query."""
        cache = self.__dict__.setdefault("_column_codes", {})
        if name not in cache:
            cache[name] = np.unique(np.asarray(column, dtype=object).astype(str), return_inverse=True)
        return cache[name]

    def search(self, queries: torch.Tensor, k: int = 10, colours: torch.Tensor | None = None,
               exclude: Sequence[Collection[int]] | None = None, allowed: torch.Tensor | None = None,
               settings: LookalikeSettings | None = None) -> list[list[Neighbour]]:
        """The ``k`` best look-alikes of each query embedding (with its colour vector, when given), best first.

        ``exclude``: per query, index positions never to return (the query product itself); ``allowed``:
        ``(N,)`` or ``(Q, N)`` mask of the products a query may return (filters). Fewer than ``k`` come back
        when fewer are allowed."""
        if self.ann is not None:
            return self._search_approximate(queries, k, colours, exclude, allowed, settings)
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

    def near(self, queries: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, cosines)``, both ``(Q, count)``: each query's nearest products by embedding, nearest
        first — all of them scored, or the approximate index's candidates re-scored exactly."""
        queries = queries.float().to(self.embeddings.device)
        if self.ann is None:
            top = (queries @ self.embeddings.float().T).topk(min(count, len(self)), dim=1)
            return top.indices, top.values
        return rescored_nearest(self.ann.nearest, queries, self.embeddings, count, self.ann.settings.fetch)

    def _search_approximate(self, queries: torch.Tensor, k: int, colours: torch.Tensor | None,
                            exclude: Sequence[Collection[int]] | None, allowed: torch.Tensor | None,
                            settings: LookalikeSettings | None) -> list[list[Neighbour]]:
        """:meth:`search` on the approximate index's candidates, re-ranked exactly.

        The index's space holds the embedding and colour terms of the look-alike score, not the category vote
        (it depends on the query). So the vote is taken first, from the query's nearest products; then the
        candidates are the ``fetch`` best of the whole catalog (inside the filter) together with the ``fetch``
        best of the categories that hold most of the vote, where the vote adds the same to every product and
        the indexed space ranks as the look-alike score does. A filter so narrow that the candidates hold
        fewer than ``k`` of its products is searched exactly among them (``k`` when ``k`` exist)."""
        settings = settings or LookalikeSettings()
        device = self.embeddings.device
        exclude = list(exclude or [set()] * len(queries))
        fetch = max(self.ann.settings.fetch, k + max((len(e) for e in exclude), default=0))
        queries = queries.float().to(device)
        voters, voter_similarity = self.near(queries, fetch)
        votes = category_votes(voter_similarity, self.label_codes[voters], len(self.label_names), settings.votes,
                               settings.temperature)
        mask = None if allowed is None else allowed.to(device)
        shared_bits = pack(mask.cpu().numpy()) if mask is not None and mask.dim() == 1 else None
        plain = queries.cpu().numpy()
        query_colours = _numpy(colours)
        found = []
        for row in range(len(queries)):
            row_mask = None if mask is None else (mask if mask.dim() == 1 else mask[row])
            row_bits = shared_bits if mask is None or mask.dim() == 1 else pack(row_mask.cpu().numpy())
            row_colours = query_colours[row:row + 1] if query_colours is not None else None
            voted_bits = np.bitwise_or.reduce([self._category_bits(int(c)) for c in
                                               self._voted_categories(votes[row])])
            pool = torch.cat([torch.as_tensor(self.ann.lookalike.candidates_in(plain[row:row + 1], fetch, bits,
                                                                               row_colours)[0], device=device)
                              for bits in (row_bits, voted_bits if row_bits is None else voted_bits & row_bits)])
            pool = torch.unique(pool[pool >= 0])
            skip = exclude[row] if row < len(exclude) else set()
            pool = _without(pool, skip)
            if row_mask is not None:
                pool = pool[row_mask[pool]]
                if len(pool) < k and int(row_mask.sum()) > len(pool):  # a narrow filter: search all of it
                    pool = _without(torch.nonzero(row_mask).flatten(), skip)
            if len(pool) == 0:
                found.append([])
                continue
            scores, similarity = lookalike_scores(
                queries[row:row + 1], self.embeddings[pool], self.label_codes[pool], len(self.label_names),
                colours[row:row + 1].to(device) if colours is not None else None,
                self.colours[pool] if self.colours is not None else None, settings, vote=votes[row:row + 1])
            top = scores[0].topk(min(k, len(pool)))
            chosen = pool[top.indices].tolist()
            distance = (2.0 - 2.0 * similarity[0, top.indices]).clamp_min(0).sqrt().cpu().tolist()
            found.append([Neighbour(self.ids[j], self.labels[j], self.images[j], float(d), self.root[j], float(v))
                          for j, v, d in zip(chosen, top.values.tolist(), distance)])
        return found

    def _category_bits(self, code: int) -> np.ndarray:
        """The products of category ``code`` as a FAISS bitmap, packed once per category."""
        cache = self.__dict__.setdefault("_category_bitmaps", {})
        if code not in cache:
            cache[code] = pack((self.label_codes == code).cpu().numpy())
        return cache[code]

    @staticmethod
    def _voted_categories(vote: torch.Tensor, mass: float = 0.9, most: int = 3) -> torch.Tensor:
        """The categories holding ``mass`` of a query's vote, strongest first (at most ``most``)."""
        weights, order = vote.sort(descending=True)
        enough = int((weights.cumsum(0) < mass).sum()) + 1
        return order[:min(enough, most)]

    def with_approximate_index(self, settings: AnnSettings | None = None,
                               colour_weight: float = LookalikeSettings.colour_weight) -> "EmbeddingIndex":
        """This index, with an approximate index built when it holds at least ``settings.exact_below``
        products (and none below: exact search); ``colour_weight``: the look-alike ranking's, whose space the
        candidates are found in."""
        settings = settings or AnnSettings()
        if not settings.approximates(len(self)):
            self.ann = None
        elif self.ann is None:
            self.ann = CatalogAnn.build(self.embeddings.float().cpu().numpy(), _numpy(self.colours), settings,
                                        colour_weight)
        return self

    def image_path(self, neighbour: Neighbour) -> Path:
        return Path(neighbour.root) / neighbour.image

    def to(self, device: torch.device | str) -> "EmbeddingIndex":
        """The same index with its embeddings on ``device`` (searched there)."""
        return EmbeddingIndex(self.embeddings.to(device), self.ids, self.labels, self.images, self.root,
                              self.colours.to(device) if self.colours is not None else None, self.attributes,
                              self.ann)

    def save(self, path: str | Path) -> None:
        """Write ``index.pt`` at ``path`` and, with an approximate index, a newly named ``index-<token>.faiss``
        beside it first; the files of earlier writes are removed after."""
        path = Path(path)
        ann_file = run_folder.INDEX_ANN.format(secrets.token_hex(4)) if self.ann is not None else None
        described = self.ann.save(path.with_name(ann_file)) if self.ann is not None else None
        roots = sorted(set(self.root))
        number = {r: i for i, r in enumerate(roots)}
        save_model_file(path, {"format": INDEX_FORMAT, "embeddings": self.embeddings.half().cpu(), "ids": self.ids,
                               "labels": self.labels, "images": self.images, "roots": roots,
                               "root_of": torch.tensor([number[r] for r in self.root], dtype=torch.int32),
                               "colours": self.colours.half().cpu() if self.colours is not None else None,
                               "attributes": self.attributes, "ann": described})
        current = set((described or {}).values())
        for stale in path.parent.glob(run_folder.INDEX_ANN.format("*")):  # earlier writes' (a reader that has
            if stale.name not in current:                                   # one open keeps its mapping)
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, settings: AnnSettings | None = None) -> "EmbeddingIndex":
        """An index written by :meth:`save` (any of its formats), with its approximate index when one was
        written beside it (``settings``: how it is searched)."""
        path = Path(path)
        saved = load_model_file(path)
        if saved.get("format") in OLDER_FORMATS:
            roots = saved["root"]
        elif saved.get("format") in (INDEX_FORMAT, "tailor.index/2"):
            roots = [saved["roots"][i] for i in saved["root_of"].tolist()]
        else:
            raise SearchIndexError(f"{path}: not a tailor catalog index")
        colours = saved.get("colours")
        ann = CatalogAnn.load(path.parent, saved["ann"], settings) if saved.get("ann") else None
        return cls(saved["embeddings"].float(), list(saved["ids"]), list(saved["labels"]), list(saved["images"]),
                   roots, colours.float() if colours is not None else None,
                   {k: list(v) for k, v in saved.get("attributes", {}).items()}, ann)

    @classmethod
    def open(cls, path: str | Path, settings: AnnSettings | None = None,
             colour_weight: float = LookalikeSettings.colour_weight) -> "EmbeddingIndex":
        """The index at ``path``, ready to search under ``settings``: at or above ``exact_below`` products with
        its approximate index (built and written beside it the first time: an index written before there was
        one, or by a run with a higher threshold), below it exactly."""
        settings = settings or AnnSettings()
        index = cls.load(path, settings)
        if index.ann is None and settings.approximates(len(index)):
            index.with_approximate_index(settings, colour_weight).save(path)
        return index.with_approximate_index(settings, colour_weight)  # below the threshold: exact

    def subset(self, rows: Sequence[int]) -> "EmbeddingIndex":
        """The products at positions ``rows``, in that order (an exact index: no approximate one over them)."""
        pick = torch.as_tensor(list(rows), dtype=torch.long)
        return EmbeddingIndex(self.embeddings[pick], [self.ids[i] for i in rows], [self.labels[i] for i in rows],
                              [self.images[i] for i in rows], [self.root[i] for i in rows],
                              self.colours[pick] if self.colours is not None else None,
                              {c: [v[i] for i in rows] for c, v in self.attributes.items()})

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


def _without(positions: torch.Tensor, skip: Collection[int]) -> torch.Tensor:
    """``positions`` less those in ``skip``."""
    if not skip:
        return positions
    return positions[~torch.isin(positions, torch.tensor(sorted(skip), dtype=positions.dtype,
                                                           device=positions.device))]


def _numpy(values: torch.Tensor | None) -> np.ndarray | None:
    return None if values is None else values.float().cpu().numpy()
