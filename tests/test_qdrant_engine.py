"""The catalog index in a Qdrant collection (tailor/search/qdrant_engine.py), through the client's local mode
(the server's API without a server): it ranks as the in-process index that ProductSearch searches — plain
queries, colours, filters, the query's own class, its own product left out — updates in place, and says which
columns it holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailor.search.catalog_updates import push_run_index
from tailor.search.index import EmbeddingIndex, SearchIndexError
from tailor.search.lookalike import LookalikeSettings
from tailor.search.qdrant_engine import QdrantCatalog
from tailor.search.similar import ProductSearch, QueryVectors

SETTINGS = LookalikeSettings()


def _catalog(n: int = 400, dim: int = 32, seed: int = 0, prefix: str = "p") -> EmbeddingIndex:
    """``n`` products in 12 categories (clustered unit embeddings), colour vectors around each category's
    usual colours, a gender and a season each."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((12, dim))  # the same categories for every seed
    labels = rng.integers(0, 12, n)
    embeddings = F.normalize(torch.tensor(centres[labels] + 0.7 * rng.standard_normal((n, dim)),
                                          dtype=torch.float32), dim=1)
    palette = np.random.default_rng(98).random((12, 6)) ** 3
    colours = F.normalize(torch.tensor(palette[labels] + 0.3 * rng.random((n, 6)), dtype=torch.float32), dim=1)
    return EmbeddingIndex(embeddings, [f"{prefix}{i}" for i in range(n)], [f"c{c:02d}" for c in labels],
                          [f"{prefix}{i}.jpg" for i in range(n)], [f"/catalog/{i % 2}" for i in range(n)], colours,
                          {"gender": [("Men", "Women")[i % 5 == 0] for i in range(n)],
                           "season": [("Summer", "Winter", "Fall")[i % 3] for i in range(n)]})


def _in_process(index: EmbeddingIndex) -> ProductSearch:
    """ProductSearch's own search over ``index`` (in process, exact), without a model: its search() reads only
    the index and the look-alike settings."""
    search = ProductSearch.__new__(ProductSearch)
    search.index, search.settings, search.engine = index, SETTINGS, None
    return search


def _ids(found) -> list[list[str]]:
    return [[n.id for n in row] for row in found]


def _queries(index: EmbeddingIndex, count: int = 25, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """New photos of catalog products (not the same picture: cosine ≈ 0.99), with their colour vectors."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(index), count, replace=False)
    noise = 0.015 * torch.tensor(rng.standard_normal((count, index.embeddings.shape[1])), dtype=torch.float32)
    colours = F.normalize(index.colours[rows] + 0.1 * torch.tensor(rng.random((count, index.colours.shape[1])),
                                                                   dtype=torch.float32), dim=1)
    return F.normalize(index.embeddings[rows] + noise, dim=1), colours


@pytest.fixture(scope="module")
def index() -> EmbeddingIndex:
    return _catalog()


@pytest.fixture(scope="module")
def catalog(index) -> QdrantCatalog:
    catalog = QdrantCatalog.connect(":memory:", "products")
    catalog.push(index, SETTINGS.colour_weight)
    return catalog


def _assert_same(got, want, within: float = 1e-4) -> None:
    """The same products in the same order, with the same scores and distances (``within``)."""
    assert _ids(got) == _ids(want)
    assert all(len(row) > 0 for row in want)
    for a, b in zip(got, want):
        assert [n.score for n in a] == pytest.approx([n.score for n in b], abs=within)
        assert [n.distance for n in a] == pytest.approx([n.distance for n in b], abs=10 * within)
        assert [(n.label, n.image, n.root) for n in a] == [(n.label, n.image, n.root) for n in b]


def test_plain_queries_and_queries_with_colours_rank_as_in_process(index, catalog):
    queries, colours = _queries(index)
    exact = _in_process(index)
    plain = exact.search(QueryVectors(queries), k=10)
    _assert_same(catalog.search(queries, None, 10, settings=SETTINGS), plain)
    coloured = exact.search(QueryVectors(queries, colours), k=10)
    _assert_same(catalog.search(queries, colours, 10, settings=SETTINGS), coloured)
    assert _ids(plain) != _ids(coloured)  # colour changes the ranking: the colour term is compared at all
    # 10 candidates from the whole catalog and 10 from the voted categories: found where the vote puts them
    _assert_same(catalog.search(queries, colours, 10, settings=SETTINGS, fetch=10), coloured)


def test_filters_run_inside_the_search(index, catalog):
    queries, colours = _queries(index, seed=2)
    want = _in_process(index).search(QueryVectors(queries, colours), k=10, filters={"gender": "Women"})
    got = catalog.search(queries, colours, 10, filters={"gender": "Women"}, settings=SETTINGS, fetch=30)
    _assert_same(got, want)
    women = {index.ids[i] for i, g in enumerate(index.attributes["gender"]) if g == "Women"}
    assert all(n.id in women for row in got for n in row)
    both = {"gender": "Men", "season": "Winter", "label": "c03"}
    _assert_same(catalog.search(queries, colours, 10, filters=both, settings=SETTINGS),
                 _in_process(index).search(QueryVectors(queries, colours), k=10, filters=both))
    assert catalog.search(queries[:2], colours[:2], 5, filters={"gender": "Nobody"}) == [[], []]


def test_same_class_by_the_vote_or_by_the_known_class(index, catalog):
    queries, colours = _queries(index, seed=3)
    exact = _in_process(index)
    want = exact.search(QueryVectors(queries, colours), k=10, same_class=True)
    _assert_same(catalog.search(queries, colours, 10, same_class=True, settings=SETTINGS), want)
    assert all(len({n.label for n in row}) == 1 for row in want)
    classes = ["c05", None] * (len(queries) // 2) + [None] * (len(queries) % 2)
    want = exact.search(QueryVectors(queries, colours), k=10, same_class=True, classes=classes)
    got = catalog.search(queries, colours, 10, same_class=True, classes=classes, settings=SETTINGS)
    _assert_same(got, want)
    assert {n.label for n in got[0]} == {"c05"}


def test_the_query_is_never_its_own_answer(index, catalog):
    queries, colours = _queries(index, seed=4)
    sources = [index.ids[int((index.embeddings @ q).argmax())] for q in queries]  # the product each query is
    free = catalog.search(queries, colours, 10, settings=SETTINGS)
    assert [row[0].id for row in free] == sources  # without the exclusion each finds its own product first
    exact = _in_process(index)
    want = exact.search(QueryVectors(queries, colours), k=10, exclude=[{index.position(s)} for s in sources])
    got = catalog.search(queries, colours, 10, exclude_ids=[{s} for s in sources], settings=SETTINGS)
    _assert_same(got, want)
    assert all(s not in row for s, row in zip(sources, _ids(got)))
    pictures = index.embeddings[:10]  # the catalog's own pictures: left out as the same picture, unasked
    same = catalog.search(pictures, index.colours[:10], 10, settings=SETTINGS)
    _assert_same(same, exact.search(QueryVectors(pictures, index.colours[:10]), k=10))
    assert all(index.ids[i] not in row for i, row in enumerate(_ids(same)))


def test_every_copy_of_the_same_picture_is_left_out(index):
    one = index.subset([7])  # one photo indexed 40 times more: more copies than the nearest products looked at
    copies = EmbeddingIndex(one.embeddings.repeat(40, 1), [f"copy{i}" for i in range(40)], list(one.labels) * 40,
                            list(one.images) * 40, list(one.root) * 40, one.colours.repeat(40, 1),
                            {c: list(v) * 40 for c, v in one.attributes.items()})
    catalog = QdrantCatalog.connect(":memory:", "copies")
    catalog.push(EmbeddingIndex.concat([index, copies]), SETTINGS.colour_weight)
    found = catalog.search(index.embeddings[7:8], index.colours[7:8], 10, settings=SETTINGS)[0]
    assert len(found) == 10
    assert not [n.id for n in found if n.id.startswith("copy") or n.id == "p7"]


def test_add_and_remove_change_the_results_and_the_count():
    index = _catalog(300, seed=5)
    catalog = QdrantCatalog.connect(":memory:", "updates")
    catalog.push(index, SETTINGS.colour_weight)
    assert len(catalog) == 300
    queries, colours = _queries(index, 5, seed=6)
    before = catalog.search(queries, colours, 5, settings=SETTINGS)
    copies = EmbeddingIndex(queries.clone(), [f"new{i}" for i in range(5)], [row[0].label for row in before],
                            [f"new{i}.jpg" for i in range(5)], "/new", colours.clone(),
                            {"gender": ["Women"] * 5, "season": ["Summer"] * 5, "usage": ["Party"] * 5})
    copies.embeddings[:] = F.normalize(queries + 0.01 * torch.ones_like(queries), dim=1)  # near, not the same
    catalog.add(copies)
    assert len(catalog) == 305
    after = catalog.search(queries, colours, 5, settings=SETTINGS)
    assert [row[0].id for row in after] == [f"new{i}" for i in range(5)]
    assert _ids(after) == _ids(_in_process(EmbeddingIndex.concat([index, copies])).search(
        QueryVectors(queries, colours), k=5))
    party = _ids(catalog.search(queries, colours, 10, filters={"usage": "Party"}))  # a column only they have
    assert [row[0] for row in party] == [f"new{i}" for i in range(5)]
    assert all(sorted(row) == [f"new{i}" for i in range(5)] for row in party)
    assert catalog.products(["new3", "p1", "never-there"]) == {
        "new3": {"id": "new3", "label": copies.labels[3], "image": "new3.jpg", "root": "/new", "gender": "Women",
                 "season": "Summer", "usage": "Party"},
        "p1": {"id": "p1", "label": index.labels[1], "image": "p1.jpg", "root": "/catalog/1", "usage": "",
               "gender": index.attributes["gender"][1], "season": index.attributes["season"][1]}}
    assert catalog.label_names() == sorted(set(index.labels))
    catalog.add(copies.subset([0]))  # the same id again replaces it
    assert len(catalog) == 305
    assert catalog.remove(["new0", "new1", "new2", "new3", "new4", "never-there"]) == 5
    assert len(catalog) == 300
    assert _ids(catalog.search(queries, colours, 5, settings=SETTINGS)) == _ids(before)
    assert catalog.remove(["p0"]) == 1 and len(catalog) == 299
    assert all("p0" not in row for row in _ids(catalog.search(index.embeddings[:3], None, 20)))


def test_an_unknown_filter_column_names_the_columns_held(catalog, index):
    with pytest.raises(SearchIndexError, match=r"cannot filter by 'colour'.*gender, label, season"):
        catalog.search(index.embeddings[:1], None, 5, filters={"colour": "Red"})


def test_pushing_twice_is_idempotent(index, tmp_path):
    catalog = QdrantCatalog.connect(str(tmp_path / "qdrant"), "twice")
    queries, colours = _queries(index, 10, seed=7)
    catalog.push(index, SETTINGS.colour_weight)
    first = catalog.search(queries, colours, 10, settings=SETTINGS)
    catalog.push(index, SETTINGS.colour_weight, batch=64, shards=2, replicas=1)  # a cluster's settings pass
    assert len(catalog) == len(index)
    assert _ids(catalog.search(queries, colours, 10, settings=SETTINGS)) == _ids(first)
    catalog.client.close()
    reopened = QdrantCatalog.connect(str(tmp_path / "qdrant"), "twice")  # stored in the folder, read back
    assert len(reopened) == len(index) and reopened.columns() == ["label", "gender", "season"]
    assert _ids(reopened.search(queries, colours, 10, settings=SETTINGS)) == _ids(first)
    reopened.client.close()


def test_a_catalog_without_colours_searches_by_embedding():
    index = _catalog(200, seed=8)
    index.colours = None
    catalog = QdrantCatalog.connect(":memory:", "plain")
    catalog.push(index, SETTINGS.colour_weight)
    queries, colours = _queries(_catalog(200, seed=8), 8, seed=9)
    want = _in_process(index).search(QueryVectors(queries, colours), k=10, filters={"season": "Fall"})
    _assert_same(catalog.search(queries, colours, 10, filters={"season": "Fall"}, settings=SETTINGS), want)


def test_a_runs_index_is_pushed_under_the_runs_name(tmp_path):
    run = tmp_path / "shirts-run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")  # the run's model is not read: only its index is pushed
    index = _catalog(120, seed=10)
    index.save(run / "index.pt")
    catalog = push_run_index(run, str(tmp_path / "engine"))
    assert catalog.collection == "shirts-run" and len(catalog) == 120
    queries, colours = _queries(index, 6, seed=11)
    saved = EmbeddingIndex.load(run / "index.pt")  # what the run searches: half-precision vectors, a few 1e-4
    _assert_same(catalog.search(queries, colours, 10, settings=SETTINGS),  # off unit length, which the
                 _in_process(saved).search(QueryVectors(queries, colours), k=10), within=1e-3)  # engine rescales
    catalog.client.close()
    other = QdrantCatalog.connect(str(tmp_path / "engine"), "other")
    with pytest.raises(SearchIndexError, match="no collection 'other'"):
        other.search(queries, colours, 10)
    other.client.close()


def test_a_server_is_reached_by_url_with_the_key_from_the_environment(monkeypatch):
    import qdrant_client

    made = []
    monkeypatch.setattr(qdrant_client, "QdrantClient", lambda **options: made.append(options) or object())
    monkeypatch.setenv("QDRANT_API_KEY", "from-env")
    QdrantCatalog.connect("https://xyz.cloud.qdrant.io:6333", "products")
    QdrantCatalog.connect("http://localhost:6333", "products", api_key="given")
    QdrantCatalog.connect("/data/qdrant", "products")
    assert made == [{"url": "https://xyz.cloud.qdrant.io:6333", "api_key": "from-env"},
                    {"url": "http://localhost:6333", "api_key": "given"}, {"path": "/data/qdrant"}]


def test_a_product_search_on_an_engine_answers_as_on_its_index():
    """ProductSearch with ``engine=``: the same look-alikes, catalog size, categories and product rows as the
    same ProductSearch over the in-process index it was pushed from."""
    index = _catalog()
    engine = QdrantCatalog.connect(":memory:", "wired")
    engine.push(index, SETTINGS.colour_weight)
    local = _in_process(index)
    remote = ProductSearch.__new__(ProductSearch)
    remote.index, remote.settings, remote.engine, remote.ann_settings = None, SETTINGS, engine, None
    queries, colours = _queries(index)
    vectors = QueryVectors(queries, colours)
    assert _ids(remote.search(vectors, 10, filters={"gender": "Women"})) == \
        _ids(local.search(vectors, 10, filters={"gender": "Women"}))
    assert remote.size == local.size == len(index)
    assert remote.categories() == local.categories()
    some = index.ids[7]
    assert remote.product(some) == local.product(some) and remote.product("no-such-id") is None
