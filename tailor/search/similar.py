"""``tailor similar``: the catalog's look-alikes of an image, from a metric-learning run's model and index.

The query product is never its own result: a query photo that is one of the index's images (the same file)
or the same picture (embeddings all but identical) is left out. Filters narrow the search to products whose
catalog attributes match (``gender=Men``), or to the query's own category.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from tailor.data.images import decode_image
from tailor.data.transforms import DataConfig, eval_transform
from tailor.deploy.exported import OnnxModel
from tailor.inference import find_model_file
from tailor.models.embedding import EmbeddingNet, load_embedding_net
from tailor.runtime import autocast, prepare_model, resolve_device, to_device
from tailor.search.ann import AnnSettings
from tailor.search.index import INDEX_FILE, EmbeddingIndex, Neighbour, SearchIndexError
from tailor.search.lookalike import NEAREST, SAME_IMAGE_COSINE, LookalikeSettings, category_votes
from tailor.search.qdrant_engine import QdrantCatalog


@dataclass
class QueryVectors:
    """What a batch of query images is searched by: unit embeddings and, with a colour probe, colour vectors."""

    embeddings: torch.Tensor
    colours: torch.Tensor | None = None


class ProductSearch:
    """A run's embedding model and catalog index, ready for query images; the model and the index's
    embeddings sit on ``device`` ('auto': the first GPU when there is one, else the CPU)."""

    def __init__(self, model: EmbeddingNet | OnnxModel, index: EmbeddingIndex | None,
                 settings: LookalikeSettings | None = None, index_path: Path | None = None,
                 ann_settings: AnnSettings | None = None, device: str | torch.device = "auto",
                 engine: QdrantCatalog | None = None):
        """``index_path``: the file ``index`` was just read from (:meth:`refresh` reads it again when it
        changes); ``ann_settings``: how it is read. ``engine``: the catalog held in a Qdrant collection
        instead of an in-process index (``index`` is then None)."""
        if (index is None) == (engine is None):
            raise ValueError("a search needs an in-process index or an engine, not both")
        self.device = resolve_device(device)
        self.settings = settings
        self.model = prepare_model(model, self.device)
        self.exported = isinstance(model, OnnxModel)  # its graph averages the mirror image itself
        self.engine = engine
        self.index = index.to(self.device) if index is not None else None
        self.index_path, self.ann_settings = index_path, ann_settings
        self._read_as = _signature(index_path) if index_path is not None else None
        self.transform = eval_transform(DataConfig.from_timm(model.data_config, model.image_size))

    @classmethod
    def load(cls, run_dir: str | Path, exported: str | Path | None = None,
             settings: LookalikeSettings | None = None, ann_settings: AnnSettings | None = None,
             device: str | torch.device = "auto", engine: QdrantCatalog | None = None,
             onnx_threads: int = 0) -> "ProductSearch":
        """The run's model and index, on ``device``; ``exported``: an exported copy of the run's model to embed
        queries with instead (its embeddings must be those the index holds: export the same run), run by ONNX
        Runtime with ``onnx_threads`` (0: one per core);
        ``ann_settings``: when the index is searched approximately (:mod:`tailor.search.ann`); ``engine``: the
        run's catalog pushed into Qdrant (:mod:`tailor.search.qdrant_engine`), searched instead of its
        ``index.pt``."""
        device = resolve_device(device)
        index_file = catalog_index_file(run_dir) if engine is None else None
        if exported is None:
            model = load_embedding_net(find_model_file(run_dir))
        else:
            model = OnnxModel(exported, onnx_threads, device=device)
            if model.info.kind != "embedding":
                raise SearchIndexError(f"{exported}: a {model.info.kind} model; similar products need an exported "
                                       f"embedding model (tailor export on a configs/triplet.gin run)")
        if engine is not None:
            return cls(model, None, settings, None, ann_settings, device, engine)
        return cls(model, _open(index_file, settings, ann_settings), settings, index_file, ann_settings, device)

    @property
    def size(self) -> int:
        """How many products the catalog holds."""
        return len(self.engine) if self.engine is not None else len(self.index)

    def categories(self) -> list[str]:
        """The catalog's categories, sorted."""
        return self.engine.label_names() if self.engine is not None else list(self.index.label_names)

    def product(self, product_id: str) -> dict[str, str] | None:
        """A catalog product's ``id``, ``label``, ``image``, ``root`` and catalog attributes, or None when the
        catalog does not hold it (what a caller shows beside a result: its colour, its picture)."""
        return self.products([product_id]).get(str(product_id))

    def products(self, product_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """:meth:`product` of each id the catalog holds, read at once (one request to an engine for a whole
        list of results, not one per result)."""
        if self.engine is not None:
            return self.engine.products([str(i) for i in product_ids])
        index, found = self.index, {}
        for product_id in map(str, product_ids):
            where = index.position(product_id)
            if where is not None:
                found[product_id] = {"id": index.ids[where], "label": index.labels[where],
                                     "image": index.images[where], "root": index.root[where],
                                     **{c: values[where] for c, values in index.attributes.items()}}
        return found

    def refresh(self) -> bool:
        """Read the index again if ``index.pt`` changed since it was read (``tailor index add`` / ``remove``
        beside a running server); True when it did. One ``stat`` per call. An engine is current by itself."""
        if self.index_path is None:
            return False
        now = _signature(self.index_path)
        if now is None or now == self._read_as:
            return False
        self.index = _open(self.index_path, self.settings, self.ann_settings).to(self.device)
        self._read_as = now
        return True

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor) -> QueryVectors:
        """The query vectors of a batch of transformed images (on the CPU), each averaged with its mirror
        image's, on the run's device: the one forward step of a served search (:mod:`tailor.serve`). An
        exported model gives embeddings only (its graph has no colour probe)."""
        x = to_device(images, self.device)
        if self.exported:
            return QueryVectors(self.model(x).to(self.device))
        with autocast(self.device):
            embedding, colour = self.model.embed_with_colour(x)
            mirror, mirror_colour = self.model.embed_with_colour(x.flip(-1))
        colours = F.normalize(colour.float() + mirror_colour.float(), dim=-1) if colour is not None else None
        return QueryVectors(F.normalize(embedding.float() + mirror.float(), dim=-1), colours)

    def embed(self, image: torch.Tensor) -> QueryVectors:
        """The query vectors of one decoded image (uint8, (3, H, W))."""
        return self.embed_batch(self.transform(image)[None])

    def search(self, vectors: QueryVectors, k: int = 10, exclude: list[set[int]] | None = None,
               same_class: bool = False, filters: Mapping[str, str] | None = None,
               classes: list[str | None] | None = None) -> list[list[Neighbour]]:
        """The ``k`` best look-alikes of each query, each product once (an index over training and test tables
        that repeat products holds them twice), never the same picture or an ``exclude``-d position.

        ``filters``: catalog attributes every result must have; ``same_class``: results of the query's own
        category only — ``classes[i]`` when known (the query is a catalog product), else the category its
        nearest embeddings vote for. With an engine, ``exclude`` is not used (it holds index positions): the
        query's own picture is left out by its embedding."""
        if self.engine is not None:
            fetch = self.ann_settings.fetch if self.ann_settings is not None else AnnSettings.fetch
            return self.engine.search(vectors.embeddings, vectors.colours, k, None, filters, same_class, classes,
                                      self.settings or LookalikeSettings(), fetch)
        index = self.index
        settings = self.settings or LookalikeSettings()
        near, similarity = index.near(vectors.embeddings, max(settings.votes, NEAREST))
        same_picture = [set(row[sims > SAME_IMAGE_COSINE].tolist()) for row, sims in zip(near, similarity)]
        skip = [a | set(b) for a, b in zip(same_picture, exclude or [set()] * len(same_picture))]
        allowed = index.allowed(filters).to(near.device) if filters else None  # None: every product
        if same_class:
            wanted = category_votes(similarity, index.label_codes[near], len(index.label_names), settings.votes,
                                    settings.temperature).argmax(1)
            for i, known in enumerate(classes or []):  # a catalog product's own class beats the vote
                if known is not None:
                    wanted[i] = index.label_names.index(known)
            own = index.label_codes[None] == wanted[:, None]
            allowed = own if allowed is None else allowed[None] & own
        found = index.search(vectors.embeddings, min(2 * k, len(index)), vectors.colours, skip, allowed,
                             self.settings)
        return [_distinct_products(row)[:k] for row in found]

    def similar(self, path: str | Path, k: int = 10, same_class: bool = False,
                filters: Mapping[str, str] | None = None) -> list[Neighbour]:
        """The ``k`` best look-alikes of the image at ``path`` (never the product itself); raises ImageError
        when unreadable, SearchIndexError for a filter column the index lacks."""
        if self.engine is not None:
            return self.search(self.embed(decode_image(path, max_side=512)), k, None, same_class, filters)[0]
        itself = self.index.positions_of_file(path)
        known = self.index.labels[min(itself)] if itself else None
        return self.search(self.embed(decode_image(path, max_side=512)), k, [itself], same_class, filters,
                           [known])[0]


def catalog_index_file(run: str | Path) -> Path:
    """The catalog index (``index.pt``) of a run folder or of its model file; an error that says how one is
    made when there is none."""
    path = find_model_file(run).parent / INDEX_FILE
    if not path.is_file():
        raise SearchIndexError(f"{path}: no catalog index; it is written when a metric-learning run "
                               f"(configs/triplet.gin) evaluates on test data")
    return path


def _open(path: Path, settings: LookalikeSettings | None, ann_settings: AnnSettings | None) -> EmbeddingIndex:
    """The index at ``path``, its approximate index (if any) in the space of ``settings``' colour weight."""
    return EmbeddingIndex.open(path, ann_settings, (settings or LookalikeSettings()).colour_weight)


def _signature(path: Path) -> tuple[int, int] | None:
    """What tells one write of a file from the next (modification time and inode: a replaced file is new)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_ino


def _distinct_products(neighbours: list[Neighbour]) -> list[Neighbour]:
    """Each product once, at its nearest."""
    seen: set[str] = set()
    return [n for n in neighbours if not (n.id in seen or seen.add(n.id))]
