"""The catalog index on disk (tailor.index/4): a manifest naming memory-mapped fp16 embeddings and one Arrow
column file; it round-trips exactly, reads no product at open, still reads the earlier one-file format and
converts it, and a write killed midway leaves the previous index whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from tailor import run_folder
from tailor.models.files import load_model_file, save_model_file
from tailor.search.ann import AnnSettings
from tailor.search.catalog_updates import convert_index
from tailor.search.columns import Column
from tailor.search.index import INDEX_FORMAT, EmbeddingIndex

REPO = Path(__file__).resolve().parent.parent
ALWAYS = AnnSettings(exact_below=1, nprobe=16, fetch=100)


def _catalog(n: int = 2000, dim: int = 32, seed: int = 0) -> EmbeddingIndex:
    """``n`` products in 20 categories under two data roots, with colour vectors and two attributes; the
    vectors already at fp16's precision (what a written index keeps), so a read-back index scores the same."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, n)
    centres = rng.standard_normal((20, dim))
    embeddings = F.normalize(torch.tensor(centres[labels] + 0.6 * rng.standard_normal((n, dim)),
                                          dtype=torch.float32), dim=1).half().float()
    colours = F.normalize(torch.tensor(rng.random((n, 6)), dtype=torch.float32), dim=1).half().float()
    ids = [f"p{i}" for i in range(n)]
    ids[7] = "p3"  # an id indexed twice (training and test tables): found at its last position
    return EmbeddingIndex(embeddings, ids, [f"c{c:02d}" for c in labels], [f"img/{i}.jpg" for i in range(n)],
                          [("/train", "/test")[i % 2] for i in range(n)], colours,
                          {"gender": [("Men", "Women", "Unisex")[i % 3] for i in range(n)],
                           "baseColour": [("Red", "Blue", "Black", "")[i % 4] for i in range(n)]})


def _results(index: EmbeddingIndex, **kwargs) -> list:
    queries, colours = index.embeddings[:40].float(), index.colours[:40].float()
    found = index.search(queries, 10, colours, exclude=[{i} for i in range(40)], **kwargs)
    return [[(n.id, n.label, n.image, n.root, n.score, n.distance) for n in row] for row in found]


def _save_as_format_3(index: EmbeddingIndex, path: Path) -> None:
    """Write ``index`` as tailor.index/3 did: one torch file, every column a Python list."""
    roots = sorted(set(index.root))
    number = {r: i for i, r in enumerate(roots)}
    save_model_file(path, {"format": "tailor.index/3", "embeddings": index.embeddings.half(), "ids": list(index.ids),
                           "labels": list(index.labels), "images": list(index.images), "roots": roots,
                           "root_of": torch.tensor([number[r] for r in index.root], dtype=torch.int32),
                           "colours": index.colours.half(), "attributes": {k: list(v) for k, v in
                                                                           index.attributes.items()},
                           "ann": None})


def _mapping_of(address: int) -> str:
    """The file mapped at ``address`` in this process ("" for anonymous memory)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return rest[4] if len(rest) > 4 else ""
    return ""


def _index_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("index")}


def test_the_written_index_searches_exactly_as_the_one_it_was_saved_from(tmp_path):
    index = _catalog()
    index.save(tmp_path / "index.pt")
    manifest = load_model_file(tmp_path / "index.pt")
    assert manifest["format"] == INDEX_FORMAT and manifest["products"] == len(index)
    loaded = EmbeddingIndex.load(tmp_path / "index.pt")
    assert loaded.embeddings.dtype == torch.float16 and torch.equal(loaded.embeddings.float(), index.embeddings)
    assert _results(loaded) == _results(index)
    women = {"gender": "Women", "baseColour": "Red"}
    assert torch.equal(loaded.allowed(women), index.allowed(women))
    assert _results(loaded, allowed=loaded.allowed(women)) == _results(index, allowed=index.allowed(women))
    assert loaded.label_names == index.label_names and torch.equal(loaded.label_codes, index.label_codes)
    assert list(loaded.ids) == list(index.ids) and loaded.attributes == index.attributes
    assert loaded.root[1] == "/test" and loaded.images[-1] == f"img/{len(index) - 1}.jpg"
    assert loaded.position("p3") == 7 and loaded.position("p1999") == 1999 and loaded.position("nope") is None
    assert loaded.positions_of_file("/test/img/5.jpg") == {5} and loaded.positions_of_file("/train/img/5.jpg") == set()
    part = loaded.subset([5, 1, 1999])
    assert list(part.ids) == ["p5", "p1", "p1999"] and part.attributes["gender"][2] == index.attributes["gender"][1999]
    both = EmbeddingIndex.concat([part, index.subset([0])])
    assert list(both.labels) == [index.labels[i] for i in (5, 1, 1999, 0)] and both.root[3] == "/train"


def test_the_approximate_search_is_the_same_read_back(tmp_path):
    index = _catalog(800).with_approximate_index(ALWAYS)
    index.save(tmp_path / "index.pt")
    loaded = EmbeddingIndex.open(tmp_path / "index.pt", ALWAYS)
    assert loaded.ann is not None and loaded.ann.nearest.path is not None  # read from its file, not rebuilt
    assert _results(loaded) == _results(index)
    women = loaded.allowed({"gender": "Women"})
    assert _results(loaded, allowed=women) == _results(index, allowed=index.allowed({"gender": "Women"}))
    positions, cosines = loaded.near(index.embeddings[:20], 5)
    want_positions, want_cosines = index.near(index.embeddings[:20], 5)
    assert torch.equal(positions, want_positions) and torch.equal(cosines, want_cosines)


def test_opening_reads_no_product_into_python_or_arrow_memory(tmp_path):
    n = 50_000
    rng = np.random.default_rng(1)
    embeddings = F.normalize(torch.tensor(rng.standard_normal((n, 16)), dtype=torch.float32), dim=1)
    big = EmbeddingIndex(embeddings, [f"id-{i:06d}" for i in range(n)], [f"c{i % 50}" for i in range(n)],
                         [f"images/{i}.jpg" for i in range(n)], "/catalog",
                         attributes={"gender": [("Men", "Women")[i % 2] for i in range(n)]})
    big.save(tmp_path / "index.pt")
    del big
    before = pa.total_allocated_bytes()
    loaded = EmbeddingIndex.load(tmp_path / "index.pt")
    assert pa.total_allocated_bytes() - before < 10_000  # the columns are the mapped file, none decoded or copied
    assert isinstance(loaded.ids, Column) and isinstance(loaded.attributes["gender"], Column)
    assert _mapping_of(loaded.embeddings.data_ptr()).endswith(".embeddings.npy")  # the file's pages, not a copy
    per_product = [name for name, value in vars(loaded).items()
                   if isinstance(value, (list, dict, set)) and len(value) >= n]
    assert per_product == []  # no Python list, dict or set of every product (ids, labels, positions)
    assert loaded.position("id-031337") == 31337 and loaded.position("id-31337") is None
    assert loaded.allowed({"gender": "Women"}).sum() == n // 2
    found = loaded.search(loaded.embeddings[:1].float(), 3)[0]
    assert found[0].id == "id-000000" and found[0].image == "images/0.jpg" and found[0].root == "/catalog"


def test_an_index_of_the_earlier_format_loads_searches_the_same_and_converts(tmp_path):
    index = _catalog()
    path = tmp_path / "index.pt"
    _save_as_format_3(index, path)
    old = EmbeddingIndex.load(path)
    assert _results(old) == _results(index) and old.position("p3") == 7
    assert old.attributes == index.attributes and list(old.root) == list(index.root)
    done = convert_index(path)
    assert done == {"index": str(path), "format": "tailor.index/3", "converted": True}
    assert load_model_file(path)["format"] == INDEX_FORMAT
    converted = EmbeddingIndex.load(path)
    assert _results(converted) == _results(index) and converted.attributes == index.attributes
    assert convert_index(path)["converted"] is False  # already current: left as it is
    assert (tmp_path / run_folder.INDEX_LOCK).exists()  # converted under the run's index lock


def test_tailor_index_convert_says_what_it_did(tmp_path):
    from conftest import run_tailor

    path = tmp_path / "index.pt"
    _save_as_format_3(_catalog(), path)
    first = run_tailor("index", "convert", str(path))
    assert first.returncode == 0 and "converted from tailor.index/3" in first.stdout, first.stderr
    again = run_tailor("index", "convert", str(path))
    assert again.returncode == 0 and f"already {INDEX_FORMAT}, left as it is" in again.stdout


def test_converting_names_the_approximate_index_again_and_a_first_open_writes_the_current_format(tmp_path):
    index = _catalog(600).with_approximate_index(ALWAYS)
    path = tmp_path / "index.pt"
    _save_as_format_3(index, path)
    payload = load_model_file(path)
    payload["ann"] = index.ann.save(tmp_path / run_folder.INDEX_ANN.format("old1"))  # as /3 named its own
    save_model_file(path, payload)
    faiss_files = {p.name for p in tmp_path.glob("index-*.faiss")}
    assert convert_index(path)["converted"]
    assert {p.name for p in tmp_path.glob("index-*.faiss")} == faiss_files  # named again, not rebuilt
    converted = EmbeddingIndex.open(path, ALWAYS)
    assert converted.ann is not None and _results(converted) == _results(index)

    _save_as_format_3(_catalog(600), path)  # an older index without one, opened above the threshold
    opened = EmbeddingIndex.open(path, ALWAYS)
    assert load_model_file(path)["format"] == INDEX_FORMAT and opened.ann is not None
    assert not faiss_files & {p.name for p in tmp_path.glob("index-*.faiss")}  # the earlier write's removed
    assert _results(EmbeddingIndex.open(path, ALWAYS)) == _results(opened)


def test_a_write_names_its_files_anew_removes_the_earlier_ones_and_reuses_unchanged_data(tmp_path):
    path = tmp_path / "index.pt"
    _catalog(500).save(path)
    first = _index_files(tmp_path)
    reader = EmbeddingIndex.load(path)  # open while the next write replaces the files
    _catalog(600, seed=2).save(path)
    second = _index_files(tmp_path)
    assert len(first) == len(second) == 4 and not (first - {"index.pt"}) & second  # embeddings, colours, columns
    assert len(reader) == 500 and reader.search(reader.embeddings[:1].float(), 2)[0]  # its mapping survives
    again = EmbeddingIndex.load(path)
    again.with_approximate_index(ALWAYS).save(path)  # only the approximate index is new: the data named again
    third = _index_files(tmp_path)
    assert second <= third and len(third - second) == 2  # the two spaces' .faiss files
    assert len(EmbeddingIndex.load(path)) == 600


def test_a_write_killed_midway_leaves_the_previous_index_whole(tmp_path):
    path = tmp_path / "index.pt"
    before = _catalog(300)
    before.save(path)
    written = _index_files(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_index_storage import _catalog
        from tailor.search import columns
        def killed(*args, **kwargs):  # the embeddings and colours are written: die before the columns
            os.kill(os.getpid(), signal.SIGKILL)
        columns.write = killed
        _catalog(400, seed=3).save({str(path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    left = _index_files(tmp_path) - written
    assert {p.split(".", 1)[1] for p in left} == {"embeddings.npy", "colours.npy", "arrow"}  # killed mid-write
    kept = EmbeddingIndex.load(path)
    assert len(kept) == 300 and _results(kept) == _results(before)  # the previous index, whole
    _catalog(350).save(path)  # the next write removes what the killed one left
    assert len(_index_files(tmp_path)) == 4 and len(EmbeddingIndex.load(path)) == 350


def test_an_update_refills_the_approximate_index_from_the_mapped_fp16_rows(tmp_path):
    from tailor.search.catalog_updates import _write
    from tailor.search.lookalike import LookalikeSettings

    path = tmp_path / "index.pt"
    index = _catalog(600).with_approximate_index(ALWAYS)
    index.save(path)
    current = EmbeddingIndex.load(path, ALWAYS)  # the mapped fp16 rows and the approximate index's files
    _write(current.subset(range(1, 600)), path, current, ALWAYS, LookalikeSettings())
    after = EmbeddingIndex.open(path, ALWAYS)
    want = index.subset(range(1, 600))  # the same products in float32, the same quantisers refilled
    want.ann = index.ann.refilled(want.embeddings.numpy(), want.colours.numpy())
    assert after.ann is not None and after.ann.size == 599
    assert _results(after) == _results(want)
