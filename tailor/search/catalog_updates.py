"""A catalog that grows without retraining: products join a metric-learning run's index, embedded by the run's
own model, and leave it by id (``tailor index add / remove / info``, ``Model.add_products`` and friends).

An update never loses the index. The new products are embedded first, with no lock held; then, under the run's
index lock (``.index.lock``: several processes take turns), the index is read again as it is now, changed, and
written back as :meth:`EmbeddingIndex.save` writes: its files (embeddings, columns, approximate index) under a
new token, ``index.pt`` replaced atomically last. A process killed at any point leaves the previous index
whole. A running ``tailor serve`` notices the new ``index.pt`` at its next search and reads it
(:meth:`ProductSearch.refresh`). With an ``engine`` (the run's catalog pushed into Qdrant by ``tailor index
push``), the same products are then upserted into, or deleted from, its collection: the run's own index
first, so a failure there changes nothing, and a rerun of the same update (an upsert by id) completes an
engine update that failed.

Every update writes the embeddings and the column file whole again: at 10^7 products that is some 5 GB written
per update, fine for updates made in batches. The approximate index is never retrained: products that only
join are encoded and appended to it; an update that replaces or removes products encodes every product
again with the trained quantisers (at 10^7, most of an hour on 2 cores). An
index of an earlier format is written in the current one by its first update, or by :func:`convert_index`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from tailor import run_folder
from tailor.data.catalog import Catalog, product_ids
from tailor.data.images import ImageError, UnsafePathError, decode_image, resolve_under
from tailor.files import exclusive_lock
from tailor.models.files import load_model_file
from tailor.search.ann import AnnSettings
from tailor.search.catalog_colours import FILTER_COLUMNS
from tailor.search.columns import Column, strings
from tailor.search.index import INDEX_FILE, INDEX_FORMAT, WRITTEN_FILES, EmbeddingIndex, SearchIndexError
from tailor.search.lookalike import LookalikeSettings
from tailor.search.qdrant_engine import QdrantCatalog
from tailor.search.similar import ProductSearch, catalog_index_file

log = logging.getLogger(__name__)

BATCH = 32


@dataclass
class IndexUpdate:
    """What an update did: products added (new ids), replaced (ids already there), removed, and the rows it
    could not use (with why)."""

    added: int = 0
    replaced: int = 0
    removed: int = 0
    products: int = 0
    skipped: list[str] = field(default_factory=list)
    #: the products the engine's collection holds after the update (None: no engine)
    engine_products: int | None = None

    def __str__(self) -> str:
        said = f"{self.added} added, {self.replaced} replaced, {self.removed} removed: {self.products} products"
        if self.engine_products is not None:
            said += f" (the engine's collection: {self.engine_products})"
        return said + (f"; {len(self.skipped)} skipped" if self.skipped else "")


def add_products(run: str | Path, catalog: Catalog, ann_settings: AnnSettings | None = None,
                 lookalike: LookalikeSettings | None = None, progress: bool = True,
                 device: str | torch.device = "auto", engine: QdrantCatalog | None = None) -> IndexUpdate:
    """Embed ``catalog``'s products with the run's model on ``device`` (colour vectors too, when it has a
    colour probe) and add them to its index — and then to ``engine``'s collection, when given; a product whose
    id is already there is replaced. Ids come from an ``id`` column, else the image's file name. Unreadable
    images are skipped and reported, never fatal."""
    path = catalog_index_file(run)
    lookalike = lookalike or LookalikeSettings()
    _check_engine(engine)
    # the model embeds; the index it loads is only read for its shape (searched exactly, nothing built)
    search = ProductSearch.load(path.parent, settings=lookalike, ann_settings=AnnSettings(exact_below=2 ** 62),
                                device=device)
    part, skipped = embed_catalog(search, catalog, progress)
    with exclusive_lock(path.parent / run_folder.INDEX_LOCK):
        current = EmbeddingIndex.load(path)
        new_ids = set(part.ids)
        keep = np.flatnonzero(~current.holding(new_ids))
        replaced = len(new_ids) - len(_missing(current, new_ids))
        merged = EmbeddingIndex.concat(_same_columns(current.subset(keep), part)) if len(part) else current
        # no product replaced: every earlier row keeps its position and the new ones follow
        _write(merged, path, current, ann_settings, lookalike, appended=part if len(keep) == len(current) else None)
    done = IndexUpdate(added=len(new_ids) - replaced, replaced=replaced, products=len(merged), skipped=skipped)
    if engine is not None:
        if len(part):
            engine.add(part)
        done.engine_products = len(engine)
    return done


def remove_products(run: str | Path, ids: Iterable[str], ann_settings: AnnSettings | None = None,
                    lookalike: LookalikeSettings | None = None, engine: QdrantCatalog | None = None) -> IndexUpdate:
    """Remove the products ``ids`` from the run's index — and then from ``engine``'s collection, when given;
    ids the index does not hold are reported as skipped (and still deleted from the collection)."""
    path = catalog_index_file(run)
    wanted = {str(i) for i in ids}
    _check_engine(engine)
    with exclusive_lock(path.parent / run_folder.INDEX_LOCK):
        current = EmbeddingIndex.load(path)
        keep = np.flatnonzero(~current.holding(wanted))
        if not len(keep):
            raise SearchIndexError(f"removing {len(current)} products would leave {path} empty: keep at least one")
        missing = _missing(current, wanted)
        merged = current.subset(keep)
        if len(keep) < len(current):
            _write(merged, path, current, ann_settings, lookalike or LookalikeSettings())
    done = IndexUpdate(removed=len(current) - len(keep), products=len(merged),
                       skipped=[f"{pid}: not in the index" for pid in missing])
    if engine is not None:
        engine.remove(wanted)
        done.engine_products = len(engine)
    return done


def index_info(run: str | Path) -> dict:
    """What the run's index holds and how it is searched."""
    path = catalog_index_file(run)
    index = EmbeddingIndex.load(path)
    files = [path, *(f for pattern in WRITTEN_FILES for f in path.parent.glob(pattern.format("*")))]
    info = {"index": str(path), "format": load_model_file(path).get("format"), "products": len(index),
            "dimension": int(index.embeddings.shape[1]),
            "categories": len(index.label_names), "colour vectors": index.colours is not None,
            "attributes": sorted(index.attributes),
            "search": "exact" if index.ann is None else
            f"approximate (IVF-PQ, {index.ann.lookalike.index.nlist} lists, {index.ann.settings.code_bytes}-byte "
            f"codes; {index.ann.memory_bytes() / 1e6:.1f} MB)",
            "on disk MB": round(sum(f.stat().st_size for f in files if f.is_file()) / 1e6, 1)}
    return info


def embed_catalog(search: ProductSearch, catalog: Catalog, progress: bool) -> tuple[EmbeddingIndex, list[str]]:
    """The index rows of ``catalog``'s readable products, embedded as ``search`` embeds a query, and what was
    skipped (said in the log)."""
    frame = catalog.frame.reset_index(drop=True)
    root = catalog.root if catalog.root is not None else Path(".")
    ids = product_ids(frame)
    embeddings, colours, kept, skipped = [], [], [], []
    rows = list(range(len(frame)))
    with tqdm(total=len(rows), desc="embedding products", unit="img", disable=not progress) as bar:
        for start in range(0, len(rows), BATCH):
            batch, tensors = [], []
            for row in rows[start:start + BATCH]:
                try:
                    image = decode_image(resolve_under(root, str(frame.at[row, "image"])), max_side=512)
                except (ImageError, UnsafePathError, OSError) as err:
                    skipped.append(f"row {row + 1} ({frame.at[row, 'image']}): {err}")
                    continue
                batch.append(row)
                tensors.append(search.transform(image))
            if tensors:
                vectors = search.embed_batch(torch.stack(tensors))
                embeddings.append(vectors.embeddings.cpu())
                if vectors.colours is not None:
                    colours.append(vectors.colours.cpu())
                kept += batch
            bar.update(len(rows[start:start + BATCH]))
    for problem in skipped:
        log.warning("skipped %s", problem)
    dim = search.index.embeddings.shape[1]
    table = frame.iloc[kept]
    attributes = {c: table[c].fillna("").astype(str).str.strip().tolist() for c in FILTER_COLUMNS if c in table}
    part = EmbeddingIndex(torch.cat(embeddings) if embeddings else torch.zeros(0, dim), [ids[i] for i in kept],
                          table["label"].astype(str).tolist(), table["image"].astype(str).tolist(),
                          str(Path(root).resolve()), torch.cat(colours) if colours else None, attributes)
    if search.index.colours is not None and part.colours is None and len(part):
        raise SearchIndexError("the index holds colour vectors but the model gave none: add with the run's own "
                               "model")
    return part, skipped


def convert_index(run: str | Path) -> dict:
    """Write the index of a run (a run folder, or its ``index.pt``) in the current format, under the run's
    index lock, as an update writes it: its columns, embeddings and colour vectors moved into their own
    memory-mapped files, its approximate index named again as it is. An index already in the current format
    is left as it is. Returns the format it had and whether it was converted."""
    run = Path(run)
    path = run if run.name == INDEX_FILE and run.is_file() else catalog_index_file(run)
    with exclusive_lock(path.parent / run_folder.INDEX_LOCK):
        before = load_model_file(path).get("format")
        if before != INDEX_FORMAT:
            EmbeddingIndex.load(path).save(path)
    return {"index": str(path), "format": before, "converted": before != INDEX_FORMAT}


def _check_engine(engine: QdrantCatalog | None) -> None:
    """A collection that is missing or is not a pushed catalog is an error now, before any product is embedded
    or the run's index is changed (reading its description says which)."""
    if engine is not None:
        engine.columns()


def _missing(index: EmbeddingIndex, product_ids: set[str]) -> list[str]:
    """Which of ``product_ids`` the index does not hold, sorted (one vectorised pass over its ids)."""
    asked = pa.array(sorted(product_ids), pa.string())
    return asked.filter(pc.invert(pc.is_in(asked, value_set=index.ids.array))).to_pylist()


def _same_columns(*parts: EmbeddingIndex) -> list[EmbeddingIndex]:
    """The parts with the union of their attribute columns ("" where a part lacks one), so that adding a
    table without, say, ``season`` keeps the column for the products that have it; their embeddings and colour
    vectors in the first part's precision (an index read from disk: fp16, as it is written)."""
    columns = sorted(set().union(*(p.attributes for p in parts)))
    dtype = parts[0].embeddings.dtype
    return [EmbeddingIndex(p.embeddings.to(dtype), p.ids, p.labels, p.images, p.root,
                           p.colours.to(dtype) if p.colours is not None else None,
                           {c: p.attributes.get(c) or Column(strings("", len(p))) for c in columns}) for p in parts]


def _write(index: EmbeddingIndex, path: Path, before: EmbeddingIndex, ann_settings: AnnSettings | None,
           lookalike: LookalikeSettings, appended: EmbeddingIndex | None = None) -> None:
    """Save ``index`` in place of ``before``: an approximate index when it is large enough — the previous
    one extended by the ``appended`` products when ``index`` is ``before`` followed by them (only they are
    encoded), else its quantisers refilled with every product (no retraining), else one built."""
    settings = ann_settings or AnnSettings()
    if settings.approximates(len(index)):
        if before.ann is not None and appended is not None and len(index) == len(before) + len(appended):
            # encoded from the rows as the index stores them (fp16), as a refill would read them back
            index.ann = before.ann.extended(appended.embeddings.half().numpy(),
                                            appended.colours.half().numpy() if appended.colours is not None else None)
        elif before.ann is not None:
            index.ann = before.ann.refilled(index.embeddings.numpy(),  # fp16 rows: float32 a slice at a time
                                            index.colours.numpy() if index.colours is not None else None)
        else:
            index.with_approximate_index(settings, lookalike.colour_weight)
    index.save(path)


def push_run_index(run: str | Path, location: str, collection: str | None = None,
                   colour_weight: float | None = None, api_key: str | None = None, *, shards: int | None = None,
                   replicas: int | None = None) -> QdrantCatalog:
    """Push a run's catalog index (``index.pt``) into the collection ``collection`` (default: the run folder's
    name) at ``location`` (see :meth:`QdrantCatalog.connect`); ``colour_weight``: the look-alike space's
    (default: :class:`LookalikeSettings`'; ``tailor index push`` passes the bound ``lookalike.settings``');
    ``shards``, ``replicas``: see :meth:`QdrantCatalog.push`."""
    index_file = catalog_index_file(run)
    catalog = QdrantCatalog.connect(location, collection or index_file.parent.name, api_key)
    weight = LookalikeSettings().colour_weight if colour_weight is None else colour_weight
    catalog.push(EmbeddingIndex.load(index_file), weight, shards=shards, replicas=replicas)
    return catalog
