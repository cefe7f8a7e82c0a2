"""The catalog index in a Qdrant collection: look-alike search for catalogs past one machine, or shared by
several services.

A Qdrant server or cluster holds the vectors and payloads, applies the filters inside its search and shards
and replicates the collection itself; tailor keeps the model (queries are embedded where the model runs) and
the look-alike ranking. The search is :meth:`ProductSearch.search <tailor.search.similar.ProductSearch.search>`
over :meth:`EmbeddingIndex._search_approximate <tailor.search.index.EmbeddingIndex>` with Qdrant proposing the
candidates: the category vote comes from the query's nearest products by embedding; the candidates are the
``fetch`` best in the look-alike space (embedding ⊕ √w·colour, whose inner product is the score's embedding and
colour terms) inside the filter, together with the ``fetch`` best inside the filter *and* the voted
categories; they come back with their vectors and are re-ranked exactly by
:func:`~tailor.search.lookalike.lookalike_scores`. On a catalog no larger than ``fetch`` every allowed product
is a candidate, so the results are those of the in-process index.

The client's local mode (``QdrantClient(path=…)`` or ``":memory:"``) has the server's API, so the same code is
tested here without a server. ``pip install 'tailor[qdrant]'`` installs the client.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from tailor.search.ann import AnnSettings
from tailor.search.index import EmbeddingIndex, Neighbour, SearchIndexError
from tailor.search.lookalike import (NEAREST, SAME_IMAGE_COSINE, LookalikeSettings, category_votes,
                                     lookalike_scores, voted_categories)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

#: the point ids of a catalog: uuid5 of the product id in this namespace (Qdrant takes integers or UUIDs only)
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "tailor/catalog")
#: the point that describes the catalog (its columns, vector sizes, colour weight): a name no product id makes
MARKER_ID = str(uuid.uuid5(NAMESPACE, "catalog"))
MARKER_KEY = "tailor_catalog"
#: payload keys every product has; an attribute column may not take one of these names
RESERVED = ("id", "label", "image", "root")
#: queries sent to the engine in one batch call (two candidate searches each)
QUERY_BATCH = 32


def point_id(product_id: str) -> str:
    """The Qdrant point id of a product: the same in every process, so an upsert of the same product replaces
    it and a removal needs no lookup."""
    return str(uuid.uuid5(NAMESPACE, f"product/{product_id}"))


class QdrantCatalog:
    """A catalog index held in a Qdrant collection: pushed from a run's ``index.pt``, updated in place, and
    searched with the look-alike ranking of the in-process index."""

    def __init__(self, client: QdrantClient, collection: str):
        """``client``: any ``QdrantClient`` (a server, a cluster, or local mode); ``collection``: its name."""
        self.client, self.collection = client, collection
        self._described: dict[str, Any] | None = None  # the marker's payload, read once (again on a miss)

    @classmethod
    def connect(cls, location: str, collection: str, api_key: str | None = None) -> "QdrantCatalog":
        """``location``: a URL (``http://host:6333``: a server or a cluster's node), a local folder (the
        client's local mode, stored there) or ``":memory:"``; ``api_key``: a server's or Qdrant Cloud's key,
        by default ``$QDRANT_API_KEY`` (a key on a command line ends up in shell histories and process lists)."""
        try:
            from qdrant_client import QdrantClient
        except ImportError as error:  # an optional dependency: say how to get it
            raise ImportError("the Qdrant backend needs the Qdrant client: pip install 'tailor[qdrant]'") from error
        if location.startswith(("http://", "https://")):
            client = QdrantClient(url=location, api_key=api_key or os.environ.get("QDRANT_API_KEY") or None)
        elif location == ":memory:":
            client = QdrantClient(location=":memory:")
        else:
            client = QdrantClient(path=str(location))
        return cls(client, collection)

    # ------------------------------------------------------------------ writing

    def push(self, index: EmbeddingIndex, colour_weight: float = LookalikeSettings.colour_weight,
             batch: int = 1024, *, shards: int | None = None, replicas: int | None = None) -> None:
        """Create (or recreate) the collection and upsert every product of ``index``.

        Named vectors: ``embedding`` (cosine: the category vote, the same picture) and, when the index has
        colour vectors and ``colour_weight`` > 0, ``lookalike`` (embedding ⊕ √colour_weight·colour, dot
        product: the candidates). Keyword payload indexes on ``label`` and every attribute column, made before
        the points, let a server filter inside its vector search. ``shards``, ``replicas``: how a cluster
        spreads and copies the collection (None: the server's defaults; local mode has one of each)."""
        from qdrant_client import models

        dim = int(index.embeddings.shape[1])
        colour_dim = int(index.colours.shape[1]) if index.colours is not None and colour_weight > 0 else 0
        columns = sorted(index.attributes)
        _check_columns(columns)
        vectors = {"embedding": models.VectorParams(size=dim, distance=models.Distance.COSINE)}
        if colour_dim:
            vectors["lookalike"] = models.VectorParams(size=dim + colour_dim, distance=models.Distance.DOT)
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self.client.create_collection(self.collection, vectors_config=vectors, shard_number=shards,
                                      replication_factor=replicas)
        with warnings.catch_warnings():  # local mode says payload indexes do nothing there: we know
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field in ("label", *columns):
                self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        self._describe({"columns": ["label", *columns], "labels": sorted(set(map(str, index.labels))), "dim": dim,
                        "colour_dim": colour_dim, "colour_weight": float(colour_weight) if colour_dim else 0.0})
        repeated = len(index) - len(set(index.ids))
        if repeated:  # one point per product id: a catalog lists a product once
            log.warning("%d row(s) of the index repeat a product id already pushed: the collection keeps one "
                        "point per id, the last row's", repeated)
        self._upsert(index, batch, progress=len(index) > batch)

    def add(self, part: EmbeddingIndex, batch: int = 1024) -> None:
        """Upsert the products of ``part`` (a product id already there is replaced); new attribute columns
        become filterable."""
        from qdrant_client import models

        described = self._description()
        if int(part.embeddings.shape[1]) != described["dim"]:
            raise SearchIndexError(f"{self.collection}: holds {described['dim']}-d embeddings, the products to "
                                   f"add have {part.embeddings.shape[1]} (another run's model?)")
        if described["colour_dim"] and part.colours is None and len(part):
            raise SearchIndexError(f"{self.collection}: holds colour vectors but the products to add have none: "
                                   f"embed them with the run's own model")
        new = sorted(set(part.attributes) - set(described["columns"]))
        _check_columns(new)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field in new:
                self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        labels = sorted(set(described.get("labels", [])) | set(map(str, part.labels)))
        if new or labels != described.get("labels"):
            self._describe({**described, "columns": [*described["columns"], *new], "labels": labels})
        self._upsert(part, batch, progress=len(part) > batch)

    def remove(self, ids: Iterable[str]) -> int:
        """Delete the products ``ids``; how many of them the collection held."""
        from qdrant_client import models

        points = [point_id(str(i)) for i in ids]
        held = [p.id for p in self.client.retrieve(self.collection, points, with_payload=False)] if points else []
        if held:
            self.client.delete(self.collection, models.PointIdsList(points=held), wait=True)
        return len(held)

    def __len__(self) -> int:
        """The products the collection holds (the marker point is not one)."""
        from qdrant_client import models

        no_marker = models.Filter(must_not=[models.HasIdCondition(has_id=[MARKER_ID])])
        return int(self.client.count(self.collection, count_filter=no_marker, exact=True).count)

    def _upsert(self, index: EmbeddingIndex, batch: int, progress: bool) -> None:
        from qdrant_client import models

        described = self._description()
        columns = [c for c in described["columns"] if c != "label"]
        embeddings = index.embeddings.float().cpu().numpy()
        lookalike = None
        if described["colour_dim"]:
            lookalike = np.concatenate([embeddings, math.sqrt(described["colour_weight"])
                                        * index.colours.float().cpu().numpy()], axis=1)
        with tqdm(total=len(index), desc=f"pushing to {self.collection}", unit="product",
                  disable=not progress) as bar:
            for start in range(0, len(index), batch):
                rows = range(start, min(start + batch, len(index)))
                vectors = {"embedding": embeddings[rows.start:rows.stop].tolist()}
                if lookalike is not None:
                    vectors["lookalike"] = lookalike[rows.start:rows.stop].tolist()
                payloads = [{**{c: str(index.attributes[c][i]) if c in index.attributes else "" for c in columns},
                             "id": str(index.ids[i]), "label": str(index.labels[i]), "image": str(index.images[i]),
                             "root": str(index.root[i])} for i in rows]
                self.client.upsert(self.collection, models.Batch(ids=[point_id(index.ids[i]) for i in rows],
                                                                 vectors=vectors, payloads=payloads), wait=True)
                bar.update(len(rows))

    def _describe(self, described: dict[str, Any]) -> None:
        """Write the marker point: a point without vectors (no search ever returns it) whose payload says
        what the collection holds, so every process that connects reads it with the data."""
        from qdrant_client import models

        self.client.upsert(self.collection, [models.PointStruct(id=MARKER_ID, vector={},
                                                                payload={MARKER_KEY: described})], wait=True)
        self._described = described

    def _description(self, again: bool = False) -> dict[str, Any]:
        """The marker's payload (read once; ``again``: read it now, another process may have added columns)."""
        if self._described is None or again:
            if not self.client.collection_exists(self.collection):
                raise SearchIndexError(f"no collection {self.collection!r} in the engine: push a run's index "
                                       f"first (push_run_index or tailor index push)")
            found = self.client.retrieve(self.collection, [MARKER_ID], with_payload=True)
            if not found or MARKER_KEY not in (found[0].payload or {}):
                raise SearchIndexError(f"{self.collection!r} is not a tailor catalog (no catalog marker point): "
                                       f"push a run's index into it")
            self._described = found[0].payload[MARKER_KEY]
        return self._described

    # ------------------------------------------------------------------ searching

    def columns(self) -> list[str]:
        """The columns a search can filter by (``label``: the category)."""
        return list(self._description()["columns"])

    def label_names(self) -> list[str]:
        """The categories pushed or added, sorted (one whose products were all removed stays listed)."""
        return list(self._description().get("labels", []))

    def products(self, ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The payloads (id, label, image, root, every attribute) of those of ``ids`` the collection holds, by
        id, in one request: what a result's thumbnail and colour are read from. A column added after a product
        reads "" for it, as in the in-process index."""
        points = [point_id(str(i)) for i in ids]
        found = self.client.retrieve(self.collection, points, with_payload=True) if points else []
        blank = dict.fromkeys(self._description()["columns"], "")
        return {p.payload["id"]: {**blank, **p.payload} for p in found}

    def search(self, embeddings: torch.Tensor, colours: torch.Tensor | None = None, k: int = 10,
               exclude_ids: list[set[str]] | None = None, filters: Mapping[str, str] | None = None,
               same_class: bool = False, classes: list[str | None] | None = None,
               settings: LookalikeSettings | None = None, fetch: int = AnnSettings.fetch) -> list[list[Neighbour]]:
        """The ``k`` best look-alikes of each query (``embeddings``: ``(Q, D)`` unit rows; ``colours``:
        ``(Q, C)`` or None), best first — what :meth:`ProductSearch.search
        <tailor.search.similar.ProductSearch.search>` returns from the in-process index.

        Never a product of ``exclude_ids[i]`` nor the same picture (embedding cosine above
        ``SAME_IMAGE_COSINE``); ``filters``: catalog attributes every result has (an unknown column is a
        :class:`SearchIndexError` naming those the collection holds); ``same_class``: the query's own
        category only — ``classes[i]`` when known, else the one its nearest products vote for."""
        from qdrant_client import models

        settings = settings or LookalikeSettings()
        filters = dict(filters or {})
        self._check_filters(filters)
        described = self._description()
        queries = embeddings.float().cpu()
        query_colours = colours.float().cpu() if colours is not None else None
        found: list[list[Neighbour]] = []
        for start in range(0, len(queries), QUERY_BATCH):
            rows = range(start, min(start + QUERY_BATCH, len(queries)))
            nearest = self.client.query_batch_points(self.collection, [
                models.QueryRequest(query=queries[i].tolist(), using="embedding", limit=max(settings.votes, NEAREST),
                                    with_payload=["label"]) for i in rows])
            plans = [self._plan(nearest[n].points, filters, same_class,
                                (classes or [])[i] if i < len(classes or []) else None,
                                (exclude_ids or [])[i] if i < len(exclude_ids or []) else set(), settings)
                     for n, i in enumerate(rows)]
            requests, using = [], "lookalike" if described["colour_dim"] else "embedding"
            for n, i in enumerate(rows):
                space = self._space(queries[i], query_colours[i] if query_colours is not None else None, described)
                for where in plans[n]["filters"]:
                    requests.append(models.QueryRequest(query=space, using=using, filter=where,
                                                        limit=max(fetch, k), with_payload=True, with_vector=True))
            answers = self.client.query_batch_points(self.collection, requests)
            for n, i in enumerate(rows):
                pool = {p.id: p for answer in answers[2 * n:2 * n + 2] for p in answer.points}
                found.append(self._ranked(queries[i], query_colours[i] if query_colours is not None else None,
                                          list(pool.values()), plans[n], k, settings, described))
        return found

    def _check_filters(self, filters: Mapping[str, str]) -> None:
        """An unknown column is an error that lists the collection's (read again first: another process may
        have pushed new ones)."""
        unknown = [c for c in filters if c not in self._description()["columns"]]
        if unknown and [c for c in filters if c not in self._description(again=True)["columns"]]:
            raise SearchIndexError(f"cannot filter by {unknown[0]!r}: the collection {self.collection!r} holds "
                                   f"{', '.join(sorted(self._description()['columns']))}")

    def _plan(self, nearest: list, filters: Mapping[str, str], same_class: bool,
              known: str | None, exclude: set[str], settings: LookalikeSettings) -> dict[str, Any]:
        """One query's vote (from its nearest products) and the two candidate searches' filters."""
        from qdrant_client import models

        labels = [p.payload["label"] for p in nearest]
        cosines = torch.tensor([p.score for p in nearest], dtype=torch.float32)
        names = sorted(set(labels))
        codes = torch.tensor([names.index(label) for label in labels], dtype=torch.long)
        vote = category_votes(cosines[None], codes, len(names), settings.votes, settings.temperature)[0] \
            if nearest else torch.zeros(0)
        must = [models.FieldCondition(key=c, match=models.MatchValue(value=str(v))) for c, v in filters.items()]
        if same_class and (known is not None or len(names)):
            wanted = known if known is not None else names[int(vote.argmax())]
            must.append(models.FieldCondition(key="label", match=models.MatchValue(value=wanted)))
        skip = {point_id(i) for i in exclude} | {p.id for p in nearest if p.score > SAME_IMAGE_COSINE}
        must_not = [models.HasIdCondition(has_id=sorted(skip))] if skip else []
        voted = [names[int(c)] for c in voted_categories(vote)] if names else []
        in_voted = [models.FieldCondition(key="label", match=models.MatchAny(any=voted))] if voted else []
        return {"labels": labels, "cosines": cosines,
                "filters": [models.Filter(must=must or None, must_not=must_not or None),
                            models.Filter(must=[*must, *in_voted] or None, must_not=must_not or None)]}

    @staticmethod
    def _space(query: torch.Tensor, colour: torch.Tensor | None, described: dict[str, Any]) -> list[float]:
        """The query in the candidates' space: ``embedding ⊕ √w·colour`` (zeros for a query without colour
        vectors, as :mod:`tailor.search.ann` does) when the collection holds one, else the embedding."""
        if not described["colour_dim"]:
            return query.tolist()
        tail = (math.sqrt(described["colour_weight"]) * colour if colour is not None
                else torch.zeros(described["colour_dim"]))
        return torch.cat([query, tail]).tolist()

    def _ranked(self, query: torch.Tensor, colour: torch.Tensor | None, pool: list, plan: dict[str, Any], k: int,
                settings: LookalikeSettings, described: dict[str, Any]) -> list[Neighbour]:
        """The candidates ``pool`` re-ranked exactly by the look-alike score, the same picture left out."""

        if not pool:
            return []
        names = sorted(set(plan["labels"]) | {p.payload["label"] for p in pool})
        number = {name: i for i, name in enumerate(names)}
        vote = category_votes(plan["cosines"][None], torch.tensor([number[x] for x in plan["labels"]]), len(names),
                              settings.votes, settings.temperature) if plan["labels"] else torch.zeros(1, len(names))
        embeddings = torch.tensor([p.vector["embedding"] for p in pool], dtype=torch.float32)
        colours = None
        if described["colour_dim"]:  # the colour part of the look-alike vector, unweighted
            dim = described["dim"]
            colours = torch.tensor([p.vector["lookalike"][dim:] for p in pool], dtype=torch.float32) \
                / math.sqrt(described["colour_weight"])
        scores, similarity = lookalike_scores(query[None], embeddings,
                                              torch.tensor([number[p.payload["label"]] for p in pool]), len(names),
                                              colour[None] if colour is not None else None, colours, settings, vote)
        scores = scores[0].masked_fill(similarity[0] > SAME_IMAGE_COSINE, -math.inf)
        top = scores.topk(min(k, len(pool)))
        distance = (2.0 - 2.0 * similarity[0, top.indices]).clamp_min(0).sqrt().tolist()
        return [Neighbour(pool[j].payload["id"], pool[j].payload["label"], pool[j].payload["image"], float(d),
                          pool[j].payload["root"], float(v))
                for j, v, d in zip(top.indices.tolist(), top.values.tolist(), distance) if v > -math.inf]


def _check_columns(columns: Iterable[str]) -> None:
    clash = sorted(set(columns) & set(RESERVED))
    if clash:
        raise SearchIndexError(f"an attribute column may not be named {', '.join(clash)}: the payload keeps "
                               f"{', '.join(RESERVED)} for every product")
