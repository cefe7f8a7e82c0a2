"""Approximate nearest neighbours for catalogs too large to score every product per query: FAISS's inverted
file with product quantisation (IVF-PQ) over the unit embeddings.

It only proposes candidates, in the look-alike ranking's own space: a product is indexed as its embedding
beside its colour vector times √(colour weight), so the inner product of two such vectors is the embedding
cosine plus the weighted colour cosine — the first two terms of the look-alike score (the third, the category
vote, favours the query's own category, which the embedding already does). Each query's ``fetch`` (1,000) best
candidates there are handed back, and the look-alike ranking (:mod:`tailor.search.lookalike`) re-scores them
exactly, so what reaches the user is ranked as exact search ranks it; what approximation can cost is a product
missing from the candidates. Filters are applied inside FAISS's search (an ``IDSelectorBitmap`` of the allowed
products), so a filtered query is not answered from an unfiltered shortlist.

The engine and its settings were chosen by measurement (``bench/search_scale.py``: exact search, IVF with
8- and 6-bit scalar quantisation, IVF-PQ with and without exact re-ranking, HNSW; N = 10^5 real-looking
vectors): IVF-PQ with 64-byte codes and an exact re-rank of 100 candidates kept recall@10 at 0.99 with codes of
under a tenth of float32's memory, which the scalar quantisers (recall 0.97 at 27 % of the memory; 0.90 at
21 %) and HNSW (0.93 at 52 %) did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: FAISS is imported when an approximate index is first built or read: below the exact threshold nothing needs it
_faiss = None


def _engine():
    global _faiss
    if _faiss is None:
        import faiss

        _faiss = faiss
    return _faiss


ADD_ROWS = 1 << 18  # products added to an index at once (their float32 rows in memory)


@dataclass(frozen=True)
class AnnSettings:
    #: catalogs with fewer products are searched exactly (every product scored per query)
    exact_below: int = 100_000
    #: bytes per product of the quantised code (the indexed vectors are zero-padded to a multiple of it)
    code_bytes: int = 64
    #: inverted lists per √N products
    lists_per_sqrt: float = 4.0
    #: lists visited per query
    nprobe: int = 48
    #: candidates per query (and per space) handed to the exact re-ranking: on 10^6 products 300 found 0.86 of
    #: the exact look-alike top 10, 1,000 found 0.98 (bench/search_scale.py)
    fetch: int = 1000
    #: training sample for the coarse and product quantisers (vectors)
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.exact_below < 0 or self.code_bytes < 1 or self.nprobe < 1 or self.fetch < 1:
            raise ValueError("ann settings: exact_below >= 0, code_bytes, nprobe and fetch >= 1")

    def approximates(self, n: int) -> bool:
        """Whether a catalog of ``n`` products is searched through an approximate index."""
        return n >= max(1, self.exact_below)

    def lists(self, n: int) -> int:
        """Inverted lists for ``n`` products: a few √N, never more than a 39th of them (FAISS's minimum
        training points per list)."""
        return max(1, min(int(self.lists_per_sqrt * math.sqrt(n)), n // 39))


def ann(exact_below: int = AnnSettings.exact_below, code_bytes: int = AnnSettings.code_bytes,
        lists_per_sqrt: float = AnnSettings.lists_per_sqrt, nprobe: int = AnnSettings.nprobe,
        fetch: int = AnnSettings.fetch, train_size: int = AnnSettings.train_size,
        seed: int = AnnSettings.seed) -> AnnSettings:
    """The approximate index's settings (the front-ends bind it as ``search.ann``: :mod:`tailor.run_inputs`)."""
    return AnnSettings(exact_below, code_bytes, lists_per_sqrt, nprobe, fetch, train_size, seed)


class ApproximateIndex:
    """An IVF-PQ index (inner product) of products in the look-alike space: candidates for the exact ranking."""

    def __init__(self, index, settings: AnnSettings, colour_weight: float = 0.0, colour_dim: int = 0,
                 path: Path | None = None):
        self.index, self.settings = index, settings
        self.colour_weight, self.colour_dim = colour_weight, colour_dim
        self.path = path  # the file it was memory-mapped from, if any

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def space(self, embeddings: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
        """Rows of the indexed space: ``[embedding, √w · colour, 0…]`` padded to the index's width (a query
        without colour vectors, from an exported model, searches by its embedding alone)."""
        return _space(embeddings, colours, self.colour_weight, self.colour_dim, int(self.index.d))

    @classmethod
    def build(cls, embeddings: np.ndarray, colours: np.ndarray | None = None, settings: AnnSettings | None = None,
              colour_weight: float = 0.0) -> "ApproximateIndex":
        """Train the quantisers on a seeded sample of the products (``embeddings``: ``(N, D)`` unit rows, any
        float type; ``colours``: ``(N, C)`` unit rows, weighted by ``colour_weight``), then add them all, a slice
        at a time; position ``i`` in the index is row ``i``."""
        faiss = _engine()
        settings = settings or AnnSettings()
        colour_dim = colours.shape[1] if colours is not None and colour_weight > 0 else 0
        n, dim = len(embeddings), embeddings.shape[1] + colour_dim
        width = -(-dim // settings.code_bytes) * settings.code_bytes  # zero-padded: the sub-vectors tile it
        bits = max(1, min(8, int(math.log2(max(2, n // 4)))))  # a small catalog: fewer centroids per code
        index = faiss.index_factory(width, f"IVF{settings.lists(n)},PQ{settings.code_bytes}x{bits}",
                                    faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(settings.seed)
        rows = np.sort(rng.choice(n, min(n, settings.train_size), replace=False))

        def space(part) -> np.ndarray:  # rows of the indexed space, float32, made a slice at a time
            return _space(embeddings[part], colours[part] if colours is not None else None, colour_weight,
                          colour_dim, width)

        index.cp.seed = settings.seed  # the coarse quantiser's k-means
        index.pq.cp.seed = settings.seed  # and the product quantiser's
        index.do_polysemous_training = False  # Hamming-filter training we never use: 95 % of the build time
        index.train(space(rows))
        for start in range(0, n, ADD_ROWS):  # embeddings may be the memory-mapped fp16 rows: never all in float32
            index.add(space(slice(start, start + ADD_ROWS)))
        return cls(index, settings, colour_weight, colour_dim)

    def refilled(self, embeddings: np.ndarray, colours: np.ndarray | None = None) -> "ApproximateIndex":
        """The same quantisers holding these products instead (a catalog that changed: no retraining), added
        a slice at a time as :meth:`build` adds them (``embeddings`` may be fp16 rows)."""
        index = self._writable_copy()
        index.reset()
        return self._holding(index, embeddings, colours)

    def extended(self, embeddings: np.ndarray, colours: np.ndarray | None = None) -> "ApproximateIndex":
        """This index with more products after the ones it holds (position ``size + i`` is row ``i`` of
        ``embeddings``), encoded by the same quantisers: a catalog that only grew costs the new products'
        encoding, not every product's. Inverted lists keep positions in the order they were added, so the
        result is the index :meth:`refilled` would make from the old rows followed by the new."""
        return self._holding(self._writable_copy(), embeddings, colours)

    def _writable_copy(self):
        """A copy of the FAISS index in memory (a memory-mapped one cannot be cloned: its file is read again)."""
        faiss = _engine()
        return faiss.read_index(str(self.path)) if self.path is not None else faiss.clone_index(self.index)

    def _holding(self, index, embeddings: np.ndarray, colours: np.ndarray | None) -> "ApproximateIndex":
        """``index`` with the products ``embeddings`` (and ``colours``) added after those it holds, a slice
        at a time (their float32 rows in this index's space are never all in memory)."""
        for start in range(0, len(embeddings), ADD_ROWS):
            part = slice(start, start + ADD_ROWS)
            index.add(self.space(embeddings[part], colours[part] if colours is not None else None))
        return ApproximateIndex(index, self.settings, self.colour_weight, self.colour_dim)

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None = None,
                   colours: np.ndarray | None = None) -> np.ndarray:
        """``(Q, count)`` positions of each query's best candidates (embeddings ``queries``, with their colour
        vectors when known), best first; ``-1`` pads a row that found fewer. ``allowed``: ``(N,)`` booleans,
        or ``(Q, N)`` per query — only those products are searched."""
        queries = self.space(queries, colours)
        count = max(1, min(count, self.size))
        if allowed is None or allowed.ndim == 1:
            return self._search(queries, count, allowed)
        out = np.full((len(queries), count), -1, dtype=np.int64)
        for row, mask in enumerate(allowed):  # a selector per query (the same-class search)
            out[row] = self._search(queries[row:row + 1], count, mask)[0]
        return out

    def candidates_in(self, queries: np.ndarray, count: int, bits: np.ndarray | None,
                      colours: np.ndarray | None = None) -> np.ndarray:
        """:meth:`candidates` among the products set in ``bits`` (:func:`pack`: one bit per product)."""
        return self._search(self.space(queries, colours), max(1, min(count, self.size)), None, bits)

    def _search(self, queries: np.ndarray, count: int, allowed: np.ndarray | None,
                bits: np.ndarray | None = None) -> np.ndarray:
        faiss = _engine()
        params = faiss.SearchParametersIVF(nprobe=self.settings.nprobe)
        if allowed is not None:
            bits = pack(allowed)
        if bits is not None:  # FAISS keeps a pointer to the bitmap: ``bits`` lives until the search returns
            selector = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bits))
            params.sel = selector
        # pytorch-metric-learning imports faiss.contrib.torch_utils, whose search() drops ``params``; the
        # NumPy method it keeps aside still takes them
        search = getattr(self.index, "search_numpy", self.index.search)
        found = search(queries, count, params=params)[1]
        del bits
        return found

    def memory_bytes(self) -> int:
        """The index's size (codes, ids, quantisers) as FAISS serialises it."""
        return int(_engine().serialize_index(self.index).nbytes)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically (a temporary file renamed over it)."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        _engine().write_index(self.index, str(partial))
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path, settings: AnnSettings | None = None, colour_weight: float = 0.0,
             colour_dim: int = 0) -> "ApproximateIndex":
        """Read an index written by :meth:`save` (with the space it was built in), its inverted lists
        memory-mapped: opened in about the time of a small file, whatever the catalog's size."""
        faiss = _engine()
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY),
                   settings or AnnSettings(), colour_weight, colour_dim, Path(path))


def rescored_nearest(index: ApproximateIndex, queries: torch.Tensor, vectors: torch.Tensor, count: int,
                     fetch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, cosines)``, both ``(Q, count)``, nearest first: each query's ``fetch`` candidates from
    ``index`` re-scored exactly against ``vectors`` (the rows ``index`` holds, unit length, on any device);
    a row short of candidates ends in cosines of ``-inf``."""
    found = torch.as_tensor(index.candidates(queries.cpu().numpy(), max(count, fetch)), device=vectors.device)
    rows = found.clamp_min(0)
    similarity = torch.einsum("qd,qfd->qf", queries.to(vectors.device), vectors[rows].float())
    similarity = similarity.masked_fill(found < 0, -math.inf)
    top = similarity.topk(min(count, similarity.shape[1]), dim=1)
    return rows.gather(1, top.indices), top.values


def pack(allowed: np.ndarray) -> np.ndarray:
    """One bit per product (FAISS's bitmap order), from booleans."""
    return np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")


def _space(embeddings: np.ndarray, colours: np.ndarray | None, colour_weight: float, colour_dim: int,
           width: int) -> np.ndarray:
    out = np.zeros((len(embeddings), width), dtype=np.float32)
    out[:, :embeddings.shape[1]] = embeddings
    if colour_dim and colours is not None:
        out[:, embeddings.shape[1]:embeddings.shape[1] + colour_dim] = math.sqrt(colour_weight) * \
            np.asarray(colours, dtype=np.float32)  # fp16 rows (a written index) weighted in float32
    return out


class CatalogAnn:
    """The two approximate indexes of a catalog: ``nearest`` in the embedding space (a query's nearest
    products: the category vote, the same picture) and ``lookalike`` in the embedding + colour space (the
    ranking's candidates). Measured on the sample, candidates found in one space for both uses cost the vote
    3 points of same-category rate; without colour vectors the two are one."""

    def __init__(self, nearest: ApproximateIndex, lookalike: ApproximateIndex | None = None):
        self.nearest = nearest
        self.lookalike = lookalike or nearest

    @property
    def size(self) -> int:
        return self.nearest.size

    @property
    def settings(self) -> AnnSettings:
        return self.nearest.settings

    @classmethod
    def build(cls, embeddings: np.ndarray, colours: np.ndarray | None, settings: AnnSettings,
              colour_weight: float) -> "CatalogAnn":
        nearest = ApproximateIndex.build(embeddings, None, settings)
        if colours is None or colour_weight <= 0:
            return cls(nearest)
        return cls(nearest, ApproximateIndex.build(embeddings, colours, settings, colour_weight))

    def refilled(self, embeddings: np.ndarray, colours: np.ndarray | None) -> "CatalogAnn":
        """Both indexes holding these products instead (:meth:`ApproximateIndex.refilled`)."""
        return self._each("refilled", embeddings, colours)

    def extended(self, embeddings: np.ndarray, colours: np.ndarray | None) -> "CatalogAnn":
        """Both indexes with these products after theirs (:meth:`ApproximateIndex.extended`)."""
        return self._each("extended", embeddings, colours)

    def _each(self, change: str, embeddings: np.ndarray, colours: np.ndarray | None) -> "CatalogAnn":
        """``change`` applied to the nearest index (embeddings alone) and to the look-alike one (with colours)."""
        nearest = getattr(self.nearest, change)(embeddings)
        if self.lookalike is self.nearest:
            return CatalogAnn(nearest)
        return CatalogAnn(nearest, getattr(self.lookalike, change)(embeddings, colours))

    def memory_bytes(self) -> int:
        return self.nearest.memory_bytes() + (0 if self.lookalike is self.nearest else self.lookalike.memory_bytes())

    def save(self, path: Path) -> dict:
        """Write the indexes as ``path`` (and ``path`` with ``.lookalike`` before its suffix); what to read
        them back with."""
        self.nearest.save(path)
        described = {"nearest": path.name}
        if self.lookalike is not self.nearest:
            second = path.with_name(path.stem + ".lookalike" + path.suffix)
            self.lookalike.save(second)
            described.update(lookalike=second.name, colour_weight=self.lookalike.colour_weight,
                             colour_dim=self.lookalike.colour_dim)
        return described

    @classmethod
    def load(cls, folder: Path, described: dict, settings: AnnSettings | None = None) -> "CatalogAnn | None":
        """The indexes :meth:`save` described, or None when a file is missing (the catalog is then searched
        exactly until they are rebuilt)."""
        files = [folder / described["nearest"]] + ([folder / described["lookalike"]] if "lookalike" in described else [])
        if not all(f.is_file() for f in files):
            return None
        nearest = ApproximateIndex.load(files[0], settings)
        if len(files) == 1:
            return cls(nearest)
        return cls(nearest, ApproximateIndex.load(files[1], settings, described["colour_weight"],
                                                  described["colour_dim"]))
