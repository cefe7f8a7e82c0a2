"""Approximate nearest neighbours for catalogs too large to score every product per query: FAISS's inverted
file with product quantisation (IVF-PQ) over the unit embeddings.

It only proposes candidates. Each query's ``fetch`` best candidates by the quantised cosine are handed back,
and the look-alike ranking (:mod:`tailor.search.lookalike`: exact cosine, colour, category vote) re-scores them
exactly, so what reaches the user is ranked as exact search ranks it; what approximation can cost is a product
missing from the candidates. Filters are applied inside FAISS's search (an ``IDSelectorBitmap`` of the allowed
products), so a filtered query is not answered from an unfiltered shortlist.

The engine and its settings were chosen by measurement (``bench/search_scale.py``: exact search, IVF with
8- and 6-bit scalar quantisation, IVF-PQ with and without exact re-ranking, HNSW): IVF-PQ with 64-byte codes
and an exact re-rank of 100 candidates keeps recall@10 near 0.99 at under a tenth of float32's memory, which
the scalar quantisers (recall 0.97 at 27 % of the memory; 0.90 at 21 %) and HNSW (0.93 at 52 %) do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gin
import numpy as np

#: FAISS is imported when an approximate index is first built or read: below the exact threshold nothing needs it
_faiss = None


def _engine():
    global _faiss
    if _faiss is None:
        import faiss

        _faiss = faiss
    return _faiss


@dataclass(frozen=True)
class AnnSettings:
    #: catalogs with fewer products are searched exactly (every product scored per query)
    exact_below: int = 100_000
    #: bytes per product of the quantised code (at most: the largest that divides the embedding's dimension)
    code_bytes: int = 64
    #: inverted lists per √N products
    lists_per_sqrt: float = 4.0
    #: lists visited per query
    nprobe: int = 32
    #: candidates per query handed to the exact re-ranking (at least k)
    fetch: int = 100
    #: training sample for the coarse and product quantisers (vectors)
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.exact_below < 0 or self.code_bytes < 1 or self.nprobe < 1 or self.fetch < 1:
            raise ValueError("ann settings: exact_below >= 0, code_bytes, nprobe and fetch >= 1")

    def lists(self, n: int) -> int:
        """Inverted lists for ``n`` products: a few √N, never more than a 39th of them (FAISS's minimum
        training points per list)."""
        return max(1, min(int(self.lists_per_sqrt * math.sqrt(n)), n // 39))


@gin.configurable(module="search")
def ann(exact_below: int = AnnSettings.exact_below, code_bytes: int = AnnSettings.code_bytes,
        lists_per_sqrt: float = AnnSettings.lists_per_sqrt, nprobe: int = AnnSettings.nprobe,
        fetch: int = AnnSettings.fetch, train_size: int = AnnSettings.train_size,
        seed: int = AnnSettings.seed) -> AnnSettings:
    """The approximate index's settings, bindable with ``-p search.ann.exact_below=…``."""
    return AnnSettings(exact_below, code_bytes, lists_per_sqrt, nprobe, fetch, train_size, seed)


class ApproximateIndex:
    """An IVF-PQ index of unit vectors (inner product): candidates for the exact look-alike ranking."""

    def __init__(self, index, settings: AnnSettings):
        self.index, self.settings = index, settings

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, settings: AnnSettings | None = None) -> "ApproximateIndex":
        """Train the quantisers on a seeded sample of ``vectors`` (``(N, D)`` float32, unit rows), then add
        them all; position ``i`` in the index is row ``i``."""
        faiss = _engine()
        settings = settings or AnnSettings()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        code_bytes = max(b for b in range(1, settings.code_bytes + 1) if dim % b == 0)  # sub-vectors must tile
        bits = max(1, min(8, int(math.log2(max(2, n // 4)))))  # a small catalog: fewer centroids per code
        index = faiss.index_factory(dim, f"IVF{settings.lists(n)},PQ{code_bytes}x{bits}",
                                    faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(settings.seed)
        sample = vectors[np.sort(rng.choice(n, min(n, settings.train_size), replace=False))]
        index.cp.seed = settings.seed  # the coarse quantiser's k-means
        index.pq.cp.seed = settings.seed  # and the product quantiser's
        index.do_polysemous_training = False  # Hamming-filter training we never use: 95 % of the build time
        index.train(sample)
        index.add(vectors)
        return cls(index, settings)

    def candidates(self, queries: np.ndarray, count: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """``(Q, count)`` positions of each query's best candidates by quantised cosine, best first; ``-1``
        pads a row that found fewer. ``allowed``: ``(N,)`` booleans, or ``(Q, N)`` per query — only those
        products are searched."""
        faiss = _engine()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = max(1, min(count, self.size))
        if allowed is None or allowed.ndim == 1:
            return self._search(queries, count, allowed)
        out = np.full((len(queries), count), -1, dtype=np.int64)
        for row, mask in enumerate(allowed):  # a selector per query (the same-class search)
            out[row] = self._search(queries[row:row + 1], count, mask)[0]
        return out

    def _search(self, queries: np.ndarray, count: int, allowed: np.ndarray | None) -> np.ndarray:
        faiss = _engine()
        params = faiss.SearchParametersIVF(nprobe=self.settings.nprobe)
        bits = None
        if allowed is not None:  # FAISS keeps a pointer to the bitmap: ``bits`` lives until the search returns
            bits = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
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
    def load(cls, path: str | Path, settings: AnnSettings | None = None) -> "ApproximateIndex":
        """Read an index written by :meth:`save`, its inverted lists memory-mapped (opened in about the time
        of a small file, whatever the catalog's size)."""
        faiss = _engine()
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY),
                   settings or AnnSettings())
