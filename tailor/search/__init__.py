"""Exact nearest-neighbour search over unit-length embeddings, and the catalog index of a metric run."""

from tailor.search.exact import exact_neighbours
from tailor.search.index import EmbeddingIndex, SearchIndexError, Neighbour

__all__ = ["exact_neighbours", "EmbeddingIndex", "SearchIndexError", "Neighbour"]
