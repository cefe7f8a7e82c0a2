"""A catalog that grows without retraining: `tailor index add / remove / info` and the same in the Python API;
updates are atomic (a kill or a failed write leaves the previous index whole) and a running search sees them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import pandas as pd
import pytest

import tailor

from conftest import REPO, make_tiny_dataset, run_tailor
from tailor.data.catalog import Catalog
from tailor.data.images import decode_image
from tailor.search import catalog_updates
from tailor.search.ann import AnnSettings, ApproximateIndex
from tailor.search.index import EmbeddingIndex
from tailor.search.similar import ProductSearch


@pytest.fixture()
def run(search_run, tmp_path) -> Path:
    """A copy of the shared metric-learning run (watches, sunglasses, T-shirts: its 36 products, indexed as
    training and as test products, 72 rows)."""
    return Path(shutil.copytree(search_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def shoes(tmp_path_factory) -> Path:
    """Six casual shoes the run never saw, and one row whose image is not an image."""
    folder = make_tiny_dataset(tmp_path_factory.mktemp("shoes"), ["Casual Shoes"], 6)
    (folder / "images" / "999999.jpg").write_bytes(b"not a jpeg")
    table = pd.read_csv(folder / "styles.csv")
    broken = table.iloc[:1].assign(id=999999)
    pd.concat([table, broken]).to_csv(folder / "styles.csv", index=False)
    return folder


def test_products_join_and_leave_the_index_and_search_finds_them(run, shoes):
    table = pd.read_csv(shoes / "styles.csv")
    first_five = shoes / "five.csv"
    table.iloc[:5].to_csv(first_five, index=False)
    n = len(EmbeddingIndex.load(run / "index.pt"))
    added = run_tailor("index", "add", str(run), str(first_five), "--images", str(shoes))
    assert added.returncode == 0, added.stderr
    assert f"5 added, 0 replaced, 0 removed: {n + 5} products" in added.stdout
    index = EmbeddingIndex.load(run / "index.pt")
    new_ids = [str(i) for i in table["id"].iloc[:5]]
    assert len(index) == n + 5 and set(new_ids) <= set(index.ids)
    assert index.attributes["gender"][index.position(new_ids[0])] == table["gender"].iloc[0]
    search = ProductSearch.load(run)
    sixth = shoes / "images" / f"{table['id'].iloc[5]}.jpg"  # a shoe photo that is not in the index
    found = search.similar(sixth, k=3, filters={"articleType": "Casual Shoes"})
    assert len(found) == 3 and {n.id for n in found} <= set(new_ids)  # searchable at once, its attributes kept
    first = shoes / "images" / f"{new_ids[0]}.jpg"  # embedded by the run's own model, as a query is
    assert float(search.embed(decode_image(first, max_side=512)).embeddings[0].cpu()
                 @ index.embeddings[index.position(new_ids[0])].float()) > 0.999

    again = run_tailor("index", "add", str(run), str(shoes / "styles.csv"))  # its images beside the table
    assert again.returncode == 0, again.stderr
    assert f"1 added, 5 replaced, 0 removed: {n + 6} products; 1 skipped" in again.stdout  # the same ids: replaced
    assert "999999.jpg" in again.stderr  # the unreadable row, by its path

    removed = run_tailor("index", "remove", str(run), new_ids[0], new_ids[1], "no-such-id")
    assert removed.returncode == 0, removed.stderr
    assert f"0 added, 0 replaced, 2 removed: {n + 4} products; 1 skipped" in removed.stdout
    assert new_ids[0] not in EmbeddingIndex.load(run / "index.pt").ids
    info = run_tailor("index", "info", str(run))
    assert f"products: {n + 4}" in info.stdout and "search: exact" in info.stdout


def test_updates_reach_the_pushed_collection_after_the_runs_own_index(run, shoes, tmp_path):
    """`tailor index add / remove --engine`: the run's index.pt changes, then the collection `tailor index push`
    made, so `tailor similar --engine` finds the new products and no longer the removed ones; the Python API
    does the same."""
    engine = tmp_path / "qdrant"
    unpushed = run_tailor("index", "add", str(run), str(shoes / "styles.csv"), "--engine", str(engine))
    assert unpushed.returncode != 0 and "no collection 'run'" in unpushed.stderr  # before embedding anything
    assert len(EmbeddingIndex.load(run / "index.pt")) == 72  # the run's index untouched
    pushed = run_tailor("index", "push", str(run), "--to", str(engine))
    assert pushed.returncode == 0, pushed.stderr
    table = pd.read_csv(shoes / "styles.csv").iloc[:6]
    table.to_csv(shoes / "six.csv", index=False)
    new_ids = [str(i) for i in table["id"]]
    added = run_tailor("index", "add", str(run), str(shoes / "six.csv"), "--images", str(shoes), "--engine", str(engine))
    assert added.returncode == 0, added.stderr
    assert "6 added" in added.stdout and "(the engine's collection: 42)" in added.stdout  # 36 products + 6
    photo = shoes / "images" / f"{new_ids[0]}.jpg"

    def engine_answers() -> list[str]:
        found = run_tailor("similar", str(run), str(photo), "--k", "5", "--engine", str(engine),
                           "--filter", "articleType=Casual Shoes", "--out", str(tmp_path / "sheet.png"))
        assert found.returncode == 0, found.stderr
        return [line.split()[1] for line in found.stdout.splitlines() if line.strip()[:1].isdigit()]

    assert sorted(engine_answers()) == sorted(new_ids[1:])  # the other five shoes, never the query itself
    removed = run_tailor("index", "remove", str(run), new_ids[1], new_ids[2], "--engine", str(engine))
    assert removed.returncode == 0, removed.stderr
    assert "2 removed" in removed.stdout and "(the engine's collection: 40)" in removed.stdout
    assert sorted(engine_answers()) == sorted(new_ids[3:])

    model = tailor.load(run)
    done = model.remove_products([new_ids[3]], engine=str(engine))
    assert done.removed == 1 and done.engine_products == 39
    assert new_ids[3] not in model.similar(photo, k=10, engine=str(engine))["id"].tolist()


def test_a_large_index_is_updated_through_its_approximate_index(run, shoes, monkeypatch):
    before = EmbeddingIndex.open(run / "index.pt", AnnSettings(exact_below=10))
    assert before.ann is not None
    table = pd.read_csv(shoes / "styles.csv").iloc[:5]
    catalog = Catalog.from_frame(table.assign(image=[f"images/{i}.jpg" for i in table["id"]],
                                                              label=table["articleType"]), root=shoes)
    done = catalog_updates.add_products(run, catalog, AnnSettings(exact_below=10), progress=False)
    assert done.added == 5 and done.products == len(before) + 5
    after = EmbeddingIndex.load(run / "index.pt")
    assert after.ann is not None and after.ann.size == len(before) + 5  # built now: the catalog passed the threshold
    # a product that only joins is encoded and appended: the index encoding every product again would make
    sixth = pd.read_csv(shoes / "styles.csv").iloc[5:6]
    with monkeypatch.context() as patched:  # encoding every product again is not needed: it must not happen
        patched.setattr(ApproximateIndex, "refilled", lambda *a, **k: pytest.fail("every product encoded again"))
        joined = catalog_updates.add_products(run, Catalog.from_frame(
            sixth.assign(image=[f"images/{i}.jpg" for i in sixth["id"]], label=sixth["articleType"]), root=shoes),
            AnnSettings(exact_below=10), progress=False)
    grown = EmbeddingIndex.load(run / "index.pt")
    assert joined.added == 1 and grown.ann.size == len(before) + 6
    refilled = grown.ann.refilled(grown.embeddings.numpy(), grown.colours.numpy())  # the same quantisers
    for appended, whole in ((grown.ann.nearest, refilled.nearest), (grown.ann.lookalike, refilled.lookalike)):
        assert _inverted_lists(appended.index) == _inverted_lists(whole.index)
    replaced = catalog_updates.add_products(run, catalog, AnnSettings(exact_below=10), progress=False)
    assert replaced.replaced == 5 and EmbeddingIndex.load(run / "index.pt").ann.size == len(before) + 6
    assert "approximate" in catalog_updates.index_info(run)["search"]
    assert {p.name for p in run.glob("index-*.faiss")} == _ann_files(run)  # the earlier write's files removed


def _inverted_lists(index) -> list[tuple[list[int], bytes]]:
    """Each inverted list of an IVF index: its positions and their codes, in order."""
    ivf = faiss.extract_index_ivf(index)
    lists = []
    for i in range(ivf.nlist):
        n = ivf.invlists.list_size(i)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(i), n).tolist() if n else []
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(i), n * ivf.code_size).tobytes() if n else b""
        lists.append((ids, codes))
    return lists


def _ann_files(run: Path) -> set[str]:
    import torch

    described = torch.load(run / "index.pt", weights_only=True)["ann"]
    return {v for v in described.values() if isinstance(v, str)}


def test_a_failed_write_leaves_the_previous_index_whole(run, shoes, monkeypatch):
    from tailor.search import index as index_module

    before = EmbeddingIndex.open(run / "index.pt", AnnSettings(exact_below=10))
    files_before = _ann_files(run)

    def crash(path, payload):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(index_module, "save_model_file", crash)  # after the new approximate index is written
    table = pd.read_csv(shoes / "styles.csv").iloc[:3]
    catalog = Catalog.from_frame(table.assign(image=[f"images/{i}.jpg" for i in table["id"]],
                                                              label=table["articleType"]), root=shoes)
    with pytest.raises(OSError, match="disk full"):
        catalog_updates.add_products(run, catalog, AnnSettings(exact_below=10), progress=False)
    monkeypatch.undo()
    kept = EmbeddingIndex.load(run / "index.pt")
    assert len(kept) == len(before) and kept.ann is not None  # the old pair, still paired
    assert _ann_files(run) == files_before
    assert kept.search(kept.embeddings[:1], 3)[0]


def test_a_killed_update_leaves_the_index_whole_and_a_rerun_completes(run, tmp_path):
    many = make_tiny_dataset(tmp_path / "many", ["Casual Shoes", "Handbags", "Jeans", "Kurtas", "Tops"], 12)
    n = len(EmbeddingIndex.load(run / "index.pt"))
    process = subprocess.Popen([sys.executable, "-m", "tailor", "index", "add", str(run), str(many / "styles.csv")],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    seen = ""
    while "embedding products" not in seen and process.poll() is None and time.time() < deadline:
        seen += process.stderr.read(1)
    assert process.poll() is None, f"the update ended before it could be killed: {seen[-500:]}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert len(EmbeddingIndex.load(run / "index.pt")) == n  # killed mid-way: the index as it was
    finished = run_tailor("index", "add", str(run), str(many / "styles.csv"))
    assert finished.returncode == 0, finished.stderr
    assert len(EmbeddingIndex.load(run / "index.pt")) == n + 60


def test_a_running_search_sees_products_added_beside_it(run, shoes):
    search = ProductSearch.load(run)
    n = len(search.index)
    assert not search.refresh()  # nothing changed
    table = pd.read_csv(shoes / "styles.csv").iloc[:2]
    catalog = Catalog.from_frame(table.assign(image=[f"images/{i}.jpg" for i in table["id"]],
                                                              label=table["articleType"]), root=shoes)
    catalog_updates.add_products(run, catalog, progress=False)
    assert search.refresh() and len(search.index) == n + 2
    assert not search.refresh()


def test_the_python_api_adds_removes_and_describes(run, shoes):
    import tailor

    model = tailor.load(run)
    n = model.index_info()["products"]
    table = pd.read_csv(shoes / "styles.csv").iloc[:2]
    catalog = tailor.Catalog.from_frame(table.assign(image=[f"images/{i}.jpg" for i in table["id"]]), root=shoes,
                                        label="articleType")
    assert model.add_products(catalog, progress=False).added == 2
    assert model.index_info()["products"] == n + 2
    assert str(table["id"].iloc[0]) in set(model.similar(shoes / "images" / f"{table['id'].iloc[1]}.jpg", k=40)["id"])
    assert model.remove_products([str(table["id"].iloc[0])]).removed == 1
    assert model.index_info()["products"] == n + 1


def test_a_pushed_index_is_searched_through_the_engine_as_in_process(run, tmp_path):
    """`tailor index push` into a Qdrant folder (the client's local mode: a server's API), then `tailor similar
    --engine`: the same look-alikes, in the same order, as the run's own index.pt; a filter on a column the
    collection lacks is a one-line error naming those it has."""
    engine = tmp_path / "qdrant"
    pushed = run_tailor("index", "push", str(run), "--to", str(engine))
    assert pushed.returncode == 0, pushed.stderr
    index = EmbeddingIndex.load(run / "index.pt")  # each product twice (as training and as test product)
    assert f"{len(set(index.ids))} products pushed" in pushed.stdout and "collection 'run'" in pushed.stdout
    assert "repeat a product id" in pushed.stderr  # one point per id, said
    photo = Path(index.root[0]) / index.images[0]  # a catalog product: left out of its own look-alikes
    rows = {}
    for name, extra in (("local", ["--k", "10"]), ("engine", ["--k", "5", "--engine", str(engine)])):
        found = run_tailor("similar", str(run), str(photo), "--out", str(tmp_path / f"{name}.png"), *extra)
        assert found.returncode == 0, found.stderr
        rows[name] = [line.split()[1] for line in found.stdout.splitlines() if line.strip()[:1].isdigit()]
    in_process = list(dict.fromkeys(rows["local"]))[:5]  # each product once, in rank order
    assert len(in_process) == 5 and rows["engine"] == in_process and index.ids[0] not in rows["engine"]
    wrong = run_tailor("similar", str(run), str(photo), "--engine", str(engine), "--filter", "fabric=Silk")
    assert wrong.returncode != 0 and "fabric" in wrong.stderr and "gender" in wrong.stderr
