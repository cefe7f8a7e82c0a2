"""`tailor serve`'s API through FastAPI's test client, on real tiny runs: every route, every refusal, enrolment
that survives a restart, the token rule, overload, and the dynamic batcher on its own."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import sample_images
from tailor.inference import Classifier
from tailor.serve.app import create_app
from tailor.serve.batching import DynamicBatcher, Overloaded
from tailor.serve.service import ServedRun
from tailor.serve.settings import ServeSettings


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _client(run: Path, search: Path | None = None, raise_server_exceptions: bool = True, **kwargs) -> TestClient:
    settings = kwargs.pop("settings", ServeSettings())
    return TestClient(create_app(ServedRun.load(run, search), settings, **kwargs),
                      raise_server_exceptions=raise_server_exceptions)


def _declared(document: dict, answer) -> bool:
    """Whether the OpenAPI ``document`` declares ``answer``'s status for the route it came from."""
    path, method = answer.request.url.path, answer.request.method.lower()
    for template, operations in document["paths"].items():
        if method in operations and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return str(answer.status_code) in operations[method]["responses"]
    return False


@pytest.fixture
def own_run(probe_run, tmp_path) -> Path:
    """A copy of the probe run that a test may enroll into."""
    return Path(shutil.copytree(probe_run, tmp_path / "run"))


def test_predict_gives_each_image_the_probabilities_tailor_predict_gives(probe_run):
    images = sample_images("Watches", 2, last=True) + sample_images("Tshirts", 1, last=True)
    with _client(probe_run) as client:
        answer = client.post("/predict?k=2", files=_files(images))
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["file"] for p in predictions] == [p.name for p in images]
    expected = list(Classifier.load(probe_run).predict_files(images, k=2))
    for served, cli in zip(predictions, expected):
        assert [t["label"] for t in served["top"]] == cli.labels
        np.testing.assert_allclose([t["score"] for t in served["top"]], cli.scores, atol=2e-5)


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8000, 8000)).save(out, format="PNG")  # 64 Mpx of black: 60 kB on disk
    return out.getvalue()


def test_bad_requests_are_json_errors_that_say_what_is_wrong(probe_run):
    photo = sample_images("Watches", 1)[0]
    settings = ServeSettings(max_images=3, max_request_bytes=400_000, max_pixels=10_000_000)
    with _client(probe_run, settings=settings) as client:
        cases = {
            "no image": (client.post("/predict"), 422, "images: Field required"),
            "not an image": (client.post("/predict", files=[("images", ("notes.txt", b"hello", "text/plain"))]),
                             415, "notes.txt: cannot be decoded"),
            "empty file": (client.post("/predict", files=[("images", ("empty.jpg", b"", "image/jpeg"))]),
                           400, "empty.jpg: the file is empty"),
            "decompression bomb": (client.post("/predict", files=[("images", ("bomb.png", _bomb(), "image/png"))]),
                                   413, "decompression bomb"),
            "too many images": (client.post("/predict", files=_files([photo] * 4)), 413, "at most 3"),
            "too large a body": (client.post("/predict", files=[("images", ("big.jpg", b"\xff" * 500_000,
                                                                            "image/jpeg"))]), 413, "400,000 bytes"),
            "k out of range": (client.post("/predict?k=0", files=_files([photo])), 422, "k:"),
            "no index": (client.post("/similar", files=_files([photo])), 404, "no catalog index"),
            "no product": (client.get("/products/15970/image"), 404, "no product"),
            "no enrolled class": (client.delete("/classes/Capes"), 404, "no enrolled category 'Capes'"),
            "trained class": (client.delete("/classes/Watches"), 409, "trained category"),
            "enrol without images": (client.post("/enroll", data={"name": "Capes"}), 422, "images: Field required"),
            "enrol without name": (client.post("/enroll", files=_files([photo])), 422, "name"),
        }
        document = client.get("/openapi.json").json()
        for case, (answer, status, words) in cases.items():
            assert answer.status_code == status, (case, answer.status_code, answer.text)
            assert answer.headers["content-type"] == "application/json", case
            assert words in answer.json()["error"], (case, answer.json())
            assert _declared(document, answer), (case, status)
        assert client.get("/health").json()["status"] == "ok"  # still serving
        metrics = client.get("/metrics").text
    assert 'tailor_requests_total{method="POST",route="/predict",status="415"} 1.0' in metrics
    assert 'status="500"' not in metrics


def test_enrolled_category_is_predicted_kept_across_restarts_and_removed(own_run):
    shoes = sample_images("Sports Shoes", 8)
    with _client(own_run) as client:
        before = client.post("/predict?k=3", files=_files(shoes[5:])).json()["predictions"]
        enrolled = client.post("/enroll", data={"name": "Sports Shoes"}, files=_files(shoes[:5]))
        assert enrolled.status_code == 201, enrolled.text
        assert enrolled.json()["images"] == 5 and enrolled.json()["classes"]["enrolled"] == ["Sports Shoes"]
        again = client.post("/enroll", data={"name": "Sports Shoes"}, files=_files(shoes[:2]))
        assert again.status_code == 409 and "already enrolled" in again.json()["error"]
        trained = client.post("/enroll", data={"name": "Watches"}, files=_files(shoes[:2]))
        assert trained.status_code == 409 and "trained category" in trained.json()["error"]
        top1 = [p["top"][0]["label"] for p in client.post("/predict", files=_files(shoes[5:])).json()["predictions"]]
        assert top1.count("Sports Shoes") >= 2, top1
    assert (own_run / "enrolled.pt").is_file()

    with _client(own_run) as restarted:  # a new server on the same run serves what was enrolled before
        assert restarted.get("/classes").json() == {"trained": ["Sunglasses", "Tshirts", "Watches"],
                                                    "enrolled": ["Sports Shoes"], "by_name": []}
        after_restart = [p["top"][0]["label"]
                         for p in restarted.post("/predict", files=_files(shoes[5:])).json()["predictions"]]
        assert after_restart == top1
        removed = restarted.delete("/classes/Sports Shoes")
        assert removed.status_code == 200 and removed.json()["classes"]["enrolled"] == []
        gone = restarted.post("/predict?k=3", files=_files(shoes[5:])).json()["predictions"]
    assert not (own_run / "enrolled.pt").exists()
    assert gone == before  # the trained head is back exactly


def test_writes_need_the_token_and_are_refused_beyond_loopback_without_one(own_run):
    photos = _files(sample_images("Sports Shoes", 2))
    token = "s3cret-token-0123456789"
    with _client(own_run, token=token) as client:
        assert client.post("/enroll", data={"name": "Shoes"}, files=photos).status_code == 401
        wrong = client.post("/enroll", data={"name": "Shoes"}, files=photos, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = client.post("/enroll", data={"name": "Shoes"}, files=photos,
                            headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 201, right.text
        assert client.delete("/classes/Shoes").status_code == 401
        document = client.get("/openapi.json").json()  # the token's scheme, its 401, and no 403
        for method, route in (("post", "/enroll"), ("delete", "/classes/{name}")):
            operation = document["paths"][route][method]
            assert operation["security"] == [{"token": []}] and "403" not in operation["responses"], route
            assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], route
        assert _declared(document, wrong)
        assert client.get("/classes").json()["enrolled"] == ["Shoes"]  # reads need no token
        assert client.delete("/classes/Shoes", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with _client(own_run, host="0.0.0.0") as exposed:
        refused = exposed.post("/enroll", data={"name": "Shoes"}, files=photos)
        assert refused.status_code == 403 and "without a token" in refused.json()["error"]
        document = exposed.get("/openapi.json").json()
        assert _declared(document, refused) and "401" not in document["paths"]["/enroll"]["post"]["responses"]
        assert exposed.post("/predict", files=photos).status_code == 200
    assert not (own_run / "enrolled.pt").exists()


def test_a_failed_enrolment_write_leaves_the_previous_categories_whole(own_run, monkeypatch):
    shoes, caps = sample_images("Sports Shoes", 3), sample_images("Caps", 3)
    with _client(own_run, raise_server_exceptions=False) as client:
        assert client.post("/enroll", data={"name": "Shoes"}, files=_files(shoes)).status_code == 201
        saved = (own_run / "enrolled.pt").read_bytes()

        def dies_mid_write(payload, handle):  # the disk fills up (or the process dies) half-way through the file
            handle.write(b"PK\x03\x04 half a file")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("tailor.models.files.torch.save", dies_mid_write)
        failed = client.post("/enroll", data={"name": "Caps"}, files=_files(caps))
        assert failed.status_code == 500 and failed.json() == {
            "error": "the server failed on this request (OSError); it is logged"}
        monkeypatch.undo()
        assert (own_run / "enrolled.pt").read_bytes() == saved
        assert not [p for p in own_run.iterdir() if p.name.startswith(".enrolled.pt")]  # no temporary left
        assert client.get("/classes").json()["enrolled"] == ["Shoes"]
    assert Classifier.load(own_run).classes[-1] == "Shoes"


def test_similar_returns_catalog_neighbours_with_thumbnails_served_by_id(probe_run, search_run, tiny_dataset):
    query = sorted((tiny_dataset / "images").glob("*.jpg"))[7]
    with _client(probe_run, search=search_run) as client:
        health = client.get("/health").json()
        assert health["similar"] and health["model"] == "classifier"
        assert health["catalog_products"] == 72  # every training and test row (the tiny table is both)
        answer = client.post("/similar?k=4", files=_files([query]))
        assert answer.status_code == 200, answer.text
        neighbours = answer.json()["results"][0]["neighbours"]
        assert len(neighbours) == 4 and query.stem not in [n["id"] for n in neighbours]  # the same picture: left out
        assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours), reverse=True)
        assert all(n["colour"] for n in neighbours)  # the index knows the catalog's colours
        assert len({n["id"] for n in neighbours}) == 4  # each product once, though the index holds it twice
        thumbnail = client.get(neighbours[1]["image_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumbnail.content)).size == (48, 48)
        for sneaky in ("../styles.csv", "..%2Fstyles.csv", "/etc/passwd", "15970"):
            assert client.get(f"/products/{sneaky}/image").status_code == 404, sneaky
    with _client(search_run) as metric_only:  # a metric-learning run alone: look-alikes, no categories
        assert metric_only.post("/similar", files=_files([query])).status_code == 200
        refused = metric_only.post("/predict", files=_files([query]))
        assert refused.status_code == 404 and "metric-learning run" in refused.json()["error"]


def test_similar_answers_from_a_qdrant_engine_as_from_the_runs_index(search_run, tiny_dataset, tmp_path):
    """`tailor serve --engine`: the catalog pushed into Qdrant (local mode) answers /similar, /health and the
    thumbnails as the run's own index does."""
    from tailor.search.catalog_updates import push_run_index

    engine = push_run_index(search_run, str(tmp_path / "qdrant"), "catalog")
    query = sorted((tiny_dataset / "images").glob("*.jpg"))[7]
    answers = {}
    for name, served in (("local", ServedRun.load(search_run)),
                         ("engine", ServedRun.load(search_run, engine=engine))):
        with TestClient(create_app(served)) as client:
            health = client.get("/health").json()
            answer = client.post("/similar?k=4", files=_files([query]))
            assert answer.status_code == 200, answer.text
            answers[name] = answer.json()["results"][0]["neighbours"]
            assert client.get(answers[name][0]["image_url"]).status_code == 200
            answers[name + " products"] = health["catalog_products"]
    assert [n["id"] for n in answers["engine"]] == [n["id"] for n in answers["local"]]
    assert [n["colour"] for n in answers["engine"]] == [n["colour"] for n in answers["local"]]
    assert answers["engine products"] == 36 and answers["local products"] == 72  # one point per product id


def test_a_full_queue_answers_503_with_retry_after_and_the_server_recovers(probe_run):
    photo = _files(sample_images("Watches", 1))
    settings = ServeSettings(queue_limit=2, max_wait=0.0)
    with _client(probe_run, settings=settings) as client:
        served, batcher = client.app.state.served, client.app.state.batchers["classifier"]
        gate = threading.Event()
        served.model_thread.submit(gate.wait)  # the model is busy: requests wait in the queue
        answers: list = []
        waiting = [threading.Thread(target=lambda: answers.append(client.post("/predict", files=photo)))
                   for _ in range(2)]
        for thread in waiting:
            thread.start()
        deadline = time.time() + 30
        while batcher.waiting < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert batcher.waiting == 2
        refused = client.post("/predict", files=photo)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        document = client.get("/openapi.json").json()
        assert _declared(document, refused)
        assert document["paths"]["/predict"]["post"]["responses"]["503"]["headers"]["Retry-After"]["required"]
        assert "busy" in refused.json()["error"]
        assert client.get("/health").status_code == 200  # the server itself stays responsive
        gate.set()
        for thread in waiting:
            thread.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        assert client.post("/predict", files=photo).status_code == 200
        metrics = client.get("/metrics").text
    assert 'tailor_overload_rejections_total{model="classifier"} 1.0' in metrics
    assert 'tailor_requests_total{method="POST",route="/predict",status="503"} 1.0' in metrics


def test_the_page_and_the_api_description_are_served_from_the_package(probe_run):
    with _client(probe_run) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="files"' in page.text
        for asset in ("/static/app.js", "/static/style.css"):
            assert client.get(asset).status_code == 200, asset
        assert "http" not in page.text.replace("https://", "").lower().split("<body")[0].split("charset")[0]
        schema = client.get("/openapi.json").json()
        assert {"/predict", "/similar", "/enroll", "/classes", "/classes/{name}", "/health"} <= set(schema["paths"])
        schemas = schema["components"]["schemas"]
        for body in ("Body_predict_predict_post", "Body_similar_similar_post", "Body_enroll_enroll_post"):
            assert "images" in schemas[body]["required"], body
        assert schemas["ErrorBody"]["required"] == ["error"]
        for route, operations in schema["paths"].items():  # refusals are {"error": ...}; a 500 is a bug, never declared
            for method, operation in operations.items():
                assert "500" not in operation["responses"], (method, route)
                for status, response in operation["responses"].items():
                    if int(status) >= 400:
                        assert response["content"] == {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorBody"}}}, (method, route, status)
        assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
        image = schema["paths"]["/products/{product_id}/image"]["get"]["responses"]["200"]["content"]
        assert set(image) == {"image/jpeg"}
    for asset in ("index.html", "app.js", "style.css"):  # no CDN, no external URL
        text = (Path(__file__).parent.parent / "tailor" / "serve" / "static" / asset).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, asset


# -- the dynamic batcher on its own ----------------------------------------------------------------------------

def _batcher(compute, **kwargs):
    from concurrent.futures import ThreadPoolExecutor

    options = dict(max_batch=4, max_wait=0.05, queue_limit=64)
    options.update(kwargs)
    return DynamicBatcher(compute, ThreadPoolExecutor(1), **options)


def test_concurrent_requests_are_computed_together_in_order():
    sizes: list[int] = []

    def compute(items):
        sizes.append(len(items))
        return [item * 10 for item in items]

    async def scenario():
        batcher = _batcher(compute)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(5)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [[i * 10, (i + 100) * 10] for i in range(5)]
    assert sizes == [4, 4, 2]  # ten images from five requests in three passes of at most four


def test_the_batcher_refuses_beyond_its_queue_and_survives_a_failing_batch():
    def compute(items):
        if "bad" in items:
            raise ValueError("this batch failed")
        return [item.upper() for item in items]

    async def scenario():
        batcher = _batcher(compute, queue_limit=3, max_batch=1, max_wait=0.0)
        batcher.start()
        with pytest.raises(Overloaded):
            await batcher.submit(["a", "b", "c", "d"])
        with pytest.raises(ValueError, match="this batch failed"):
            await batcher.submit(["bad"])
        good = await batcher.submit(["ok"])
        await batcher.stop()
        return good, batcher.waiting

    assert asyncio.run(scenario()) == (["OK"], 0)


def test_settings_refuse_nonsense_limits():
    with pytest.raises(ValueError, match="max_batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ValueError, match="max_wait"):
        ServeSettings(max_wait=-1)
    assert torch.tensor(ServeSettings().max_batch) > 0
