"""The catalog index of a metric-learning run: every product's embedding with its id, class, image, colour
vector and catalog attributes, computed once when the run is evaluated and searched by ``tailor similar`` and
``tailor serve`` with the look-alike ranking (:mod:`tailor.search.lookalike`).

On disk (format ``tailor.index/4``) ``index.pt`` is a small manifest naming the files of one write beside it,
all named by one fresh token: the embeddings and colour vectors as fp16 ``.npy`` files, memory-mapped; the
per-product columns as one Arrow IPC file, memory-mapped (:mod:`tailor.search.columns`); and, above
``search.ann.exact_below`` products, the approximate index (:mod:`tailor.search.ann`, ``index-<token>.faiss``).
Opening reads no product: filters and the category vote compare the columns' dictionary codes as they lie in
the file, an id is found by a binary search, and a result's id, image and root are read for the results alone
— so an index of 10^7 products opens about as fast as one of 10^4, and its memory is what the searches touch.

Up to ``exact_below`` products every query scores every product (their float32 copy made at the first exact
search). Above it the approximate index proposes each query's candidates, filters applied inside its search,
and the look-alike ranking re-scores them exactly from the mapped fp16 rows. Each write names its files
anew and replaces ``index.pt`` atomically last, so a process killed mid-write leaves the previous index whole
and a reader never pairs files of two writes; the files no longer named are removed after (a reader that has
them open keeps its mapping). Files a write would write again unchanged — the data an index was read from,
when only its approximate index was built — are named again instead.

Earlier formats (``tailor.index/1`` to ``/3``: one torch file holding every column as Python lists) still
load; writing one (:meth:`EmbeddingIndex.save`, ``catalog_updates.convert_index``) converts it."""

from __future__ import annotations

import copy
import math
import os
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tailor import run_folder
from tailor.models.files import ModelFileError, load_model_file, save_model_file
from tailor.search import columns
from tailor.search.ann import AnnSettings, CatalogAnn, pack, rescored_nearest
from tailor.search.columns import ATTRIBUTE, ID, IMAGE, LABEL, ROOT, Column
from tailor.search.lookalike import LookalikeSettings, category_votes, lookalike_scores, voted_categories

INDEX_FILE = run_folder.INDEX
INDEX_FORMAT = "tailor.index/4"
# /1: one data root for every product; /2: no colours; /3: one torch file holding every column as Python lists
OLDER_FORMATS = ("tailor.index/1", "tailor.index/2", "tailor.index/3")
QUERY_CHUNK = 256  # queries scored at once: (chunk × products) floats in memory
#: every file a write puts beside ``index.pt`` (removed when a later write no longer names it)
WRITTEN_FILES = (run_folder.INDEX_EMBEDDINGS, run_folder.INDEX_COLOURS, run_folder.INDEX_COLUMNS,
                 run_folder.INDEX_ANN)
DATA = ("embeddings", "colours", "columns")  # the manifest's keys naming the data files
READ_TRIES = 3  # a write replaced index.pt between reading it and opening its files: read it again


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
    ``attributes``: catalog columns (gender, baseColour, …) by name, one value per product, for filters.

    Built from lists (a run's recipe) or read from disk, the columns are held as one Arrow table and
    ``ids``, ``labels``, ``images``, ``root`` and ``attributes``' values are read-only views of it
    (:class:`~tailor.search.columns.Column`: indexing, slicing and iterating give strings). An index read from
    disk keeps its embeddings and colour vectors as the file's memory-mapped fp16 rows."""

    embeddings: torch.Tensor   # (N, D), unit rows
    ids: Sequence[str]
    labels: Sequence[str]
    images: Sequence[str]
    root: str | Sequence[str]
    colours: torch.Tensor | None = None
    attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: the approximate index over ``embeddings`` (None: exact search)
    ann: CatalogAnn | None = None

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        roots = n if isinstance(self.root, (str, Path)) else len(self.root)
        if not (len(self.ids) == len(self.labels) == len(self.images) == roots == n):
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.ids)} ids, "
                                   f"{len(self.labels)} labels, {len(self.images)} images, {roots} roots")
        if self.ann is not None and self.ann.size != n:
            raise SearchIndexError(f"the approximate index holds {self.ann.size} products, the index {n}")
        if self.colours is not None and len(self.colours) != n:
            raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(self.colours)} colour vectors")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise SearchIndexError(f"index columns disagree: {n} embeddings, {len(values)} values of {name}")
        self._view(columns.table(self.ids, self.labels, self.images, self.root, self.attributes))

    def _view(self, table: pa.Table, id_order: np.ndarray | pa.ChunkedArray | None = None) -> None:
        """Hold ``table`` and read every column through it; the category codes come from its label column."""
        self._columns, self._id_order = table, id_order
        self.ids, self.labels = Column(table[ID]), Column(table[LABEL])
        self.images, self.root = Column(table[IMAGE]), Column(table[ROOT])
        self.attributes = {name: Column(table[ATTRIBUTE.format(name)]) for name in columns.attribute_names(table)}
        names, codes = columns.sorted_codes(table[LABEL])
        self.label_names = names.tolist()
        self.label_codes = torch.from_numpy(codes.astype(np.int64)).to(self.embeddings.device)
        self._source: _Source | None = None  # the files it was read from (a write names them again)
        self._exact: tuple[torch.Tensor, torch.Tensor | None] | None = None  # float32 rows for exact search

    def __len__(self) -> int:
        return len(self.embeddings)

    def position(self, product_id: str) -> int | None:
        """Where the product ``product_id`` is in the index (the last, if it is there twice), or None: a binary
        search of the ids in id order (read from the file, or sorted once at the first call)."""
        if self._id_order is None:
            self._id_order = columns.id_order(self._columns[ID])
        return columns.find(self._columns[ID], self._id_order, str(product_id))

    def holding(self, product_ids: Collection[str]) -> np.ndarray:
        """``(N,)`` True for the products whose id is one of ``product_ids`` (one vectorised pass)."""
        wanted = pa.array(sorted({str(i) for i in product_ids}), pa.string())
        return pc.is_in(self._columns[ID], value_set=wanted).to_numpy()

    def positions_of_file(self, path: str | Path) -> set[int]:
        """The index positions whose image is the file at ``path`` (a query that is a catalog product): the
        products whose image path ends in its file name, then each of those joined to its root."""
        target = str(Path(path).resolve())
        named = pc.ends_with(self._columns[IMAGE], os.path.basename(target)).to_numpy()
        rows = np.flatnonzero(named)
        found = zip(rows.tolist(), self.root[rows], self.images[rows]) if len(rows) else ()
        return {int(i) for i, root, image in found if os.path.normpath(os.path.join(root, image)) == target}

    def allowed(self, filters: Mapping[str, str]) -> torch.Tensor:
        """``(N,)`` True for the products whose attributes equal every ``filters`` value (``label`` is the
        category); a column the index does not hold is an error that lists those it does."""
        keep = torch.ones(len(self), dtype=torch.bool)
        names = ["label", *self.attributes]
        for name, value in filters.items():
            if name not in names:
                raise SearchIndexError(f"cannot filter by {name!r}: this index holds {', '.join(sorted(names))}")
            values, codes = self._codes(name)
            where = np.searchsorted(values, value)
            found = where < len(values) and values[where] == value
            keep &= torch.from_numpy(codes == where) if found else torch.zeros(len(self), dtype=torch.bool)
        return keep

    def _codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A column's distinct values (sorted) and each product's value as their number — the file's sorted
        dictionary and its indices, read once: a filter is then one vectorised comparison."""
        cache = self.__dict__.setdefault("_column_codes", {})
        if name not in cache:
            cache[name] = columns.sorted_codes(self._columns[LABEL if name == "label" else ATTRIBUTE.format(name)])
        return cache[name]

    def _neighbours(self, positions: list[int], scores: list[float], distances: list[float]) -> list[Neighbour]:
        """The results at ``positions``: their id, category, image and root read for them alone."""
        rows = self._columns.select([ID, LABEL, IMAGE, ROOT]).take(pa.array(positions, pa.int64())).to_pydict()
        return [Neighbour(i, label, image, float(d), root, float(v)) for i, label, image, root, v, d
                in zip(rows[ID], rows[LABEL], rows[IMAGE], rows[ROOT], scores, distances)]

    def _scored(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and colour vectors in float32 for exact search, which scores every product: converted
        from the fp16 rows once, at the first exact search (an index searched approximately never is)."""
        if self._exact is None:
            self._exact = (self.embeddings.float(), self.colours.float() if self.colours is not None else None)
        return self._exact

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
        embeddings, product_colours = self._scored()
        for start in range(0, len(queries), QUERY_CHUNK):
            stop = start + QUERY_CHUNK
            chunk_colours = colours[start:stop].to(self.embeddings.device) if colours is not None else None
            scores, similarity = lookalike_scores(queries[start:stop].to(self.embeddings.device), embeddings,
                                                  self.label_codes, len(self.label_names), chunk_colours,
                                                  product_colours, settings)
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
                kept = [i for i, v in enumerate(values) if v > -math.inf]
                found.append(self._neighbours([positions[i] for i in kept], [values[i] for i in kept],
                                              distance[row, kept].tolist()))
        return found

    def near(self, queries: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, cosines)``, both ``(Q, count)``: each query's nearest products by embedding, nearest
        first — all of them scored, or the approximate index's candidates re-scored exactly."""
        queries = queries.float().to(self.embeddings.device)
        if self.ann is None:
            top = (queries @ self._scored()[0].T).topk(min(count, len(self)), dim=1)
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
                                               voted_categories(votes[row])])
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
            found.append(self._neighbours(chosen, top.values.tolist(), distance))
        return found

    def _category_bits(self, code: int) -> np.ndarray:
        """The products of category ``code`` as a FAISS bitmap, packed once per category."""
        cache = self.__dict__.setdefault("_category_bitmaps", {})
        if code not in cache:
            cache[code] = pack((self.label_codes == code).cpu().numpy())
        return cache[code]

    def with_approximate_index(self, settings: AnnSettings | None = None,
                               colour_weight: float = LookalikeSettings.colour_weight) -> "EmbeddingIndex":
        """This index, with an approximate index built when it holds at least ``settings.exact_below``
        products (and none below: exact search); ``colour_weight``: the look-alike ranking's, whose space the
        candidates are found in."""
        settings = settings or AnnSettings()
        if not settings.approximates(len(self)):
            self.ann = None
        elif self.ann is None:
            self.ann = CatalogAnn.build(self.embeddings.cpu().numpy(), _plain(self.colours), settings,
                                        colour_weight)  # fp16 rows made float32 a slice at a time
        return self

    def image_path(self, neighbour: Neighbour) -> Path:
        return Path(neighbour.root) / neighbour.image

    def to(self, device: torch.device | str) -> "EmbeddingIndex":
        """The same index with its embeddings on ``device`` (searched there); its columns are shared."""
        moved = copy.copy(self)
        moved.embeddings = self.embeddings.to(device)
        moved.colours = self.colours.to(device) if self.colours is not None else None
        moved.label_codes = self.label_codes.to(device)
        moved._exact = None
        return moved

    def save(self, path: str | Path) -> None:
        """Write the index as ``index.pt`` at ``path`` and, first, its files beside it under a new token
        (embeddings, colour vectors, columns, the approximate index); the files of earlier writes are removed
        after. Files this index was read from, in this folder, are named again rather than written again."""
        path = Path(path)
        token = secrets.token_hex(4)
        named = self._data_files(path.parent, token)
        described = self._ann_files(path, token)
        save_model_file(path, {"format": INDEX_FORMAT, "products": len(self), **named, "ann": described})
        _remove_unnamed(path.parent, {*named.values(), *(v for v in (described or {}).values()
                                                           if isinstance(v, str))})

    def _data_files(self, folder: Path, token: str) -> dict[str, str | None]:
        """The names of the embeddings, colour and column files, written under ``token`` unless this index was
        read from them (in ``folder``, still there)."""
        if self._source is not None and self._source.holds(folder):
            return dict(self._source.data)
        if self._id_order is None:
            self._id_order = columns.id_order(self._columns[ID])
        named = {"embeddings": run_folder.INDEX_EMBEDDINGS.format(token), "columns": run_folder.INDEX_COLUMNS.format(token),
                 "colours": run_folder.INDEX_COLOURS.format(token) if self.colours is not None else None}
        _write_file(folder / named["embeddings"], lambda f: np.save(f, _half(self.embeddings)))
        if self.colours is not None:
            _write_file(folder / named["colours"], lambda f: np.save(f, _half(self.colours)))
        _write_file(folder / named["columns"], lambda f: columns.write(self._columns, self._id_order, f))
        return named

    def _ann_files(self, path: Path, token: str) -> dict | None:
        """What names the approximate index's files: those it was read from, or written under ``token``."""
        if self.ann is None:
            return None
        if self._source is not None and self._source.ann is self.ann and self._source.holds(path.parent, ann=True):
            return dict(self._source.ann_files)
        return self.ann.save(path.with_name(run_folder.INDEX_ANN.format(token)))

    @classmethod
    def load(cls, path: str | Path, settings: AnnSettings | None = None) -> "EmbeddingIndex":
        """An index written by :meth:`save` (any of its formats), with its approximate index when one was
        written beside it (``settings``: how it is searched)."""
        path = Path(path)
        for attempt in range(READ_TRIES):
            saved = load_model_file(path)
            if saved.get("format") in OLDER_FORMATS:
                return cls._from_older(path, saved, settings)
            if saved.get("format") != INDEX_FORMAT:
                raise SearchIndexError(f"{path}: not a tailor catalog index")
            try:
                return cls._read(path, saved, settings)
            except FileNotFoundError as err:  # replaced by a write since it was read: read the new one
                if attempt == READ_TRIES - 1:
                    raise SearchIndexError(f"{path}: a file it names is missing ({err.filename})") from None

    @classmethod
    def _read(cls, path: Path, saved: dict, settings: AnnSettings | None) -> "EmbeddingIndex":
        """A ``tailor.index/4`` index: its files memory-mapped, no product read."""
        folder = path.parent
        embeddings = _mapped(folder / saved["embeddings"])
        colours = _mapped(folder / saved["colours"]) if saved.get("colours") else None
        table, order = columns.read(folder / saved["columns"])
        if len(embeddings) != saved["products"]:
            raise SearchIndexError(f"{path}: names {saved['products']} products, its embeddings hold {len(embeddings)}")
        ann = CatalogAnn.load(folder, saved["ann"], settings) if saved.get("ann") else None
        index = cls(embeddings, Column(table[ID]), Column(table[LABEL]), Column(table[IMAGE]), Column(table[ROOT]),
                    colours, {name: Column(table[ATTRIBUTE.format(name)]) for name in columns.attribute_names(table)},
                    ann)
        index._id_order = order
        index._source = _Source(folder.resolve(), {k: saved.get(k) for k in DATA}, ann,
                                saved["ann"] if ann is not None else None)
        return index

    @classmethod
    def _from_older(cls, path: Path, saved: dict, settings: AnnSettings | None) -> "EmbeddingIndex":
        """An index of an earlier format: one torch file holding every column as a list (read whole)."""
        if saved["format"] in ("tailor.index/1",):
            roots = saved["root"]
        else:  # a data root per product, as numbers into the distinct roots
            codes = saved["root_of"].numpy().astype(np.int32)
            roots = Column(pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array(codes),
                                                                            pa.array(saved["roots"], pa.string()))]))
        colours = saved.get("colours")
        ann = CatalogAnn.load(path.parent, saved["ann"], settings) if saved.get("ann") else None
        index = cls(saved["embeddings"].float(), saved["ids"], saved["labels"], saved["images"], roots,
                    colours.float() if colours is not None else None, saved.get("attributes", {}), ann)
        if ann is not None:  # a conversion names its approximate index again (only its manifest changes)
            index._source = _Source(path.parent.resolve(), None, ann, saved["ann"])
        return index

    @classmethod
    def open(cls, path: str | Path, settings: AnnSettings | None = None,
             colour_weight: float = LookalikeSettings.colour_weight) -> "EmbeddingIndex":
        """The index at ``path``, ready to search under ``settings``: at or above ``exact_below`` products with
        its approximate index (built and written beside it the first time: an index written before there was
        one, or by a run with a higher threshold — an index of an earlier format is then written in the
        current one), below it exactly."""
        settings = settings or AnnSettings()
        index = cls.load(path, settings)
        if index.ann is None and settings.approximates(len(index)):
            index.with_approximate_index(settings, colour_weight).save(path)
        return index.with_approximate_index(settings, colour_weight)  # below the threshold: exact

    def subset(self, rows: Sequence[int]) -> "EmbeddingIndex":
        """The products at positions ``rows``, in that order (an exact index: no approximate one over them)."""
        pick = np.asarray(rows, dtype=np.int64).reshape(-1)
        taken = self._columns.take(pa.array(pick))
        index = torch.from_numpy(pick)
        return EmbeddingIndex(self.embeddings[index], Column(taken[ID]), Column(taken[LABEL]), Column(taken[IMAGE]),
                              Column(taken[ROOT]), self.colours[index] if self.colours is not None else None,
                              {name: Column(taken[ATTRIBUTE.format(name)]) for name in self.attributes})

    @classmethod
    def concat(cls, parts: Sequence["EmbeddingIndex"]) -> "EmbeddingIndex":
        """One index over the products of every part (their data roots may differ). Colour vectors and
        attributes are kept when every part has them."""
        colours = (torch.cat([p.colours for p in parts]) if all(p.colours is not None for p in parts) else None)
        shared = set.intersection(*(set(p.attributes) for p in parts)) if parts else set()

        def joined(name: str) -> Column:
            return Column(_joined([p._columns[name] for p in parts]))

        return cls(torch.cat([p.embeddings for p in parts]), joined(ID), joined(LABEL), joined(IMAGE), joined(ROOT),
                   colours, {name: joined(ATTRIBUTE.format(name)) for name in sorted(shared)})


@dataclass(frozen=True)
class _Source:
    """The files an index was read from: a write to the same folder names them again instead of writing
    them anew (``data``: None for an index of an earlier format, whose data is always written)."""

    folder: Path
    data: dict[str, str | None] | None
    ann: CatalogAnn | None
    ann_files: dict | None

    def holds(self, folder: Path, ann: bool = False) -> bool:
        """Whether ``folder`` is the one read from and every data file (``ann``: approximate index file) is
        still there."""
        names = ([v for v in (self.ann_files or {}).values() if isinstance(v, str)] if ann else
                 [v for v in (self.data or {}).values() if v])
        return ((self.ann_files if ann else self.data) is not None and folder.resolve() == self.folder
                and all((folder / name).is_file() for name in names))


def _joined(parts: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """One column of the parts' rows (dictionary columns stay encoded when every part's is)."""
    if any(p.type != parts[0].type for p in parts):
        parts = [p.cast(pa.string()) if pa.types.is_dictionary(p.type) else p for p in parts]
    return pa.chunked_array([c for p in parts for c in p.chunks], parts[0].type if parts else pa.string())


def _mapped(path: Path) -> torch.Tensor:
    """An ``.npy`` file's array, memory-mapped read-only (pages read as rows are used; never written to)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.load(path, mmap_mode="r"))


def _half(values: torch.Tensor) -> np.ndarray:
    return values.detach().half().cpu().numpy()


def _write_file(path: Path, write: Callable) -> None:
    """Write a file under a name no ``index.pt`` names yet, and fsync it before ``index.pt`` names it (a
    killed write leaves an unnamed file, removed by the next write)."""
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_unnamed(folder: Path, named: set[str]) -> None:
    """Remove the index files ``index.pt`` no longer names: earlier writes', and a killed write's."""
    for pattern in WRITTEN_FILES:
        for stale in folder.glob(pattern.format("*")):
            if stale.name not in named:
                stale.unlink(missing_ok=True)


def _without(positions: torch.Tensor, skip: Collection[int]) -> torch.Tensor:
    """``positions`` less those in ``skip``."""
    if not skip:
        return positions
    return positions[~torch.isin(positions, torch.tensor(sorted(skip), dtype=positions.dtype,
                                                           device=positions.device))]


def _plain(values: torch.Tensor | None) -> np.ndarray | None:
    """``values`` as a NumPy array in their own precision (the memory-mapped rows themselves, on the CPU)."""
    return None if values is None else values.detach().cpu().numpy()


def _numpy(values: torch.Tensor | None) -> np.ndarray | None:
    return None if values is None else values.float().cpu().numpy()
