"""The approximate index behind the look-alike search (tailor/search/ann.py): it proposes candidates, the
look-alike ranking re-scores them exactly, filters apply inside the search, the query is never its own answer,
and it is written, found and dropped beside index.pt as the exact threshold says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailor.search.ann import AnnSettings
from tailor.search.index import EmbeddingIndex
from tailor.search.lookalike import LookalikeSettings

ALWAYS = AnnSettings(exact_below=1, nprobe=16, fetch=100)


def _catalog(n: int = 3000, dim: int = 64, seed: int = 0) -> EmbeddingIndex:
    """``n`` products in 30 categories (clustered unit embeddings), colour vectors around each category's
    usual colours, and a gender each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    labels = rng.integers(0, 30, n)
    embeddings = F.normalize(torch.tensor(centres[labels] + 0.6 * rng.standard_normal((n, dim)),
                                          dtype=torch.float32), dim=1)
    palette = rng.random((30, 8)) ** 3  # each category has its usual colours, and products vary around them
    colours = F.normalize(torch.tensor(palette[labels] + 0.3 * rng.random((n, 8)), dtype=torch.float32), dim=1)
    return EmbeddingIndex(embeddings, [f"p{i}" for i in range(n)], [f"c{c}" for c in labels],
                          [f"{i}.jpg" for i in range(n)], "/catalog", colours,
                          {"gender": [("Men", "Women")[i % 7 == 0] for i in range(n)]})


def _ids(found) -> list[list[str]]:
    return [[n.id for n in row] for row in found]


@pytest.fixture(scope="module")
def both() -> tuple[EmbeddingIndex, EmbeddingIndex]:
    exact = _catalog()
    approximate = _catalog().with_approximate_index(ALWAYS)
    assert exact.ann is None and approximate.ann is not None and approximate.ann.size == len(approximate)
    return exact, approximate


def test_the_approximate_search_ranks_as_the_exact_one(both):
    exact, approximate = both
    queries, colours = exact.embeddings[:200], exact.colours[:200]
    exclude = [{i} for i in range(200)]  # the products themselves, as queries
    want = _ids(exact.search(queries, 10, colours, exclude))
    got = _ids(approximate.search(queries, 10, colours, exclude))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])
    assert recall >= 0.9, recall
    assert all(f"p{i}" not in row for i, row in enumerate(got))  # never its own answer
    first = approximate.search(queries[:1], 10, colours[:1], exclude[:1])[0]
    assert [n.score for n in first] == sorted((n.score for n in first), reverse=True)
    top = exact.search(queries[:1], 10, colours[:1], exclude[:1])[0][0]  # scores are the exact ranking's
    assert first[0].id != top.id or first[0].score == pytest.approx(top.score, abs=1e-4)


def test_filters_apply_inside_the_approximate_search_and_a_narrow_one_still_gets_k(both):
    exact, approximate = both
    women = approximate.allowed({"gender": "Women"})  # one product in seven
    found = approximate.search(approximate.embeddings[:20], 10, allowed=women)
    assert all(len(row) == 10 for row in found)
    assert all(approximate.attributes["gender"][approximate.position(n.id)] == "Women" for row in found for n in row)
    want = _ids(exact.search(exact.embeddings[:20], 10, allowed=exact.allowed({"gender": "Women"})))
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, _ids(found))]) >= 0.9
    narrow = torch.zeros(len(approximate), dtype=torch.bool)
    narrow[[5, 900, 1800, 2500, 2999, 17, 1234, 77, 2222, 1500, 42, 8]] = True  # 12 products far apart
    got = approximate.search(approximate.embeddings[:3], 10, allowed=narrow, exclude=[{5}, set(), set()])
    assert [len(row) for row in got] == [10, 10, 10]  # fewer than k in the candidates: searched among all 12
    assert "p5" not in _ids(got)[0]
    per_query = torch.stack([women, ~women])  # the same-class search masks each query differently
    got = approximate.search(approximate.embeddings[:2], 5, allowed=per_query)
    assert {approximate.attributes["gender"][approximate.position(n.id)] for n in got[0]} == {"Women"}
    assert {approximate.attributes["gender"][approximate.position(n.id)] for n in got[1]} == {"Men"}


def test_near_gives_the_nearest_products_by_exact_cosine(both):
    exact, approximate = both
    want, _ = exact.near(exact.embeddings[:50], 10)
    got, cosines = approximate.near(approximate.embeddings[:50], 10)
    assert (got[:, 0] == torch.arange(50)).all()  # each product is its own nearest
    assert torch.allclose(cosines[:, 0], torch.ones(50), atol=1e-5)
    assert (cosines[:, :-1] >= cosines[:, 1:]).all()
    assert np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(want, got)]) >= 0.9


def test_the_approximate_index_is_written_found_and_dropped_by_the_threshold(tmp_path):
    path = tmp_path / "index.pt"
    small = _catalog(600)
    small.save(path)
    assert not list(tmp_path.glob("*.faiss"))
    opened = EmbeddingIndex.open(path, AnnSettings(exact_below=500))  # above the threshold: built once, kept
    assert opened.ann is not None and len(list(tmp_path.glob("index-*.faiss"))) == 2
    again = EmbeddingIndex.load(path)
    assert again.ann is not None and again.ann.size == 600
    query = small.embeddings[:5]
    assert _ids(again.search(query, 5, exclude=[{i} for i in range(5)])) == \
        _ids(opened.search(query, 5, exclude=[{i} for i in range(5)]))
    assert EmbeddingIndex.open(path, AnnSettings(exact_below=1000)).ann is None  # below it: exact search
    opened.save(path)  # a new write: a new file, the earlier one removed
    assert len(list(tmp_path.glob("index-*.faiss"))) == 2  # the nearest and the look-alike spaces and EmbeddingIndex.load(path).ann is not None
    small.save(path)  # an index without one removes a stale approximate index
    assert not list(tmp_path.glob("*.faiss"))


def test_the_same_seed_builds_the_same_approximate_index():
    one = _catalog(800).with_approximate_index(ALWAYS)
    two = _catalog(800).with_approximate_index(ALWAYS)
    queries = one.embeddings[:20].numpy()
    assert (one.ann.lookalike.candidates(queries, 20) == two.ann.lookalike.candidates(queries, 20)).all()
    assert (one.ann.nearest.candidates(queries, 20) == two.ann.nearest.candidates(queries, 20)).all()


def test_look_alikes_of_a_run_through_the_approximate_index(search_run, tiny_dataset):
    from tailor.search.similar import ProductSearch

    exact = ProductSearch.load(search_run, settings=LookalikeSettings())
    approximate = ProductSearch.load(search_run, settings=LookalikeSettings(), ann_settings=ALWAYS)
    assert approximate.index.ann is not None and len(list(search_run.glob("index-*.faiss"))) == 2
    query = sorted((tiny_dataset / "images").glob("*.jpg"))[3]
    want, got = exact.similar(query, k=5), approximate.similar(query, k=5)
    assert [n.id for n in got] == [n.id for n in want]  # a tiny catalog: every product is a candidate
    assert str(query.stem) not in [n.id for n in got]
    approximate.index.ann = None
    approximate.index.save(search_run / "index.pt")  # the run is shared with other tests: as it was


def test_the_audit_finds_planted_copies_through_the_approximate_index():
    from tailor.auditing.duplicates import near_duplicates

    rng = np.random.default_rng(3)
    features = torch.tensor(rng.standard_normal((3000, 96)), dtype=torch.float32)
    originals = rng.choice(3000, 20, replace=False)
    copies = features[originals] + 0.01 * torch.tensor(rng.standard_normal((20, 96)), dtype=torch.float32)
    catalog = torch.cat([features, copies])  # rows 3000… copy the originals
    planted = {(int(o), 3000 + i) for i, o in enumerate(originals)}
    exact = {(i, j) for i, j, _ in near_duplicates(catalog, 0.95)}
    approximate = {(i, j) for i, j, _ in near_duplicates(catalog, 0.95, settings=AnnSettings(exact_below=1))}
    assert planted <= exact and planted <= approximate
    assert approximate == exact  # nothing else passes the threshold in random features
