"""The models a server answers with, loaded once per process: a classifier (with its enrolled categories) or
a multi-attribute model, and a catalog search when the run (or a second run) has an index.

Every forward pass and every enrolment runs on one model thread, so the heads never change under a batch
being computed; an enrolment also takes a lock file in the run folder, so several server processes
(``--workers``) or a ``tailor enroll`` beside them never lose each other's categories, and each process
reads ``enrolled.pt`` again when another one changed it.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from tailor.distributed import Runtime
from tailor.data.images import resolve_under
from tailor.files import exclusive_lock
from tailor.deploy.onnx_file import is_export_file
from tailor.inference import PREDICTORS, AttributeClassifier, Classifier, find_model_file, load_predictor
from tailor.predictions import top_labels
from tailor.models.files import load_model_file
from tailor.models.registry import model_output
from tailor.search.ann import AnnSettings
from tailor.search.index import Neighbour
from tailor.search.lookalike import LookalikeSettings
from tailor.search.qdrant_engine import QdrantCatalog
from tailor.search.similar import ProductSearch

#: neighbours computed per query; a request asks for any number up to this
MAX_NEIGHBOURS = 50
THUMBNAIL_SIDE = 256


class NotServed(LookupError):
    """A request for something this server's run cannot do (no search index, no enrolment)."""


@dataclass
class ClassScores:
    """One image's probabilities with the category names they were computed for (enrolment may change the
    list between two batches)."""
    classes: list[str]
    probabilities: np.ndarray

    def top(self, k: int) -> list[dict]:
        labels, scores = top_labels(self.probabilities, self.classes, k)
        return [{"label": label, "score": round(score, 6)} for label, score in zip(labels, scores)]


class ServedRun:
    """A run's models ready for requests. ``predictor``: what ``tailor predict`` uses (None for a run that
    only searches); ``search``: what ``tailor similar`` uses (None without an index)."""

    def __init__(self, name: str, predictor: Classifier | AttributeClassifier | None,
                 search: ProductSearch | None):
        if predictor is None and search is None:
            raise NotServed(f"{name}: nothing to serve")
        self.name, self.predictor, self.search = name, predictor, search
        #: where the models compute (the predictor's, else the search's)
        self.device = (predictor or search).device
        #: the one thread every forward pass and enrolment runs on
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailor-model")
        self._thumbnail = lru_cache(maxsize=2048)(self._make_thumbnail)

    @classmethod
    def load(cls, run: str | Path, search_run: str | Path | None = None,
             device: str | torch.device = "auto", engine: QdrantCatalog | None = None,
             settings: LookalikeSettings | None = None, ann: AnnSettings | None = None) -> "ServedRun":
        """The models of ``run`` (a run folder, its model file, or an exported ``.onnx``) on ``device``: a
        classifier or multi-attribute model answers ``/predict``; a metric-learning run, or ``search_run``,
        answers ``/similar`` from its catalog index (or from ``engine``, its catalog pushed into Qdrant), ranked
        by ``settings`` and searched approximately by ``ann`` (default: their defaults)."""
        runtime = Runtime.local(device)
        settings, ann = settings or LookalikeSettings(), ann or AnnSettings()
        predictor, search = None, None
        if is_export_file(run):
            predictor = load_predictor(run, runtime=runtime)
        else:
            saved = load_model_file(find_model_file(run))  # read once; it says which kind of run this is
            if model_output(saved) == "embedding":
                search = ProductSearch.load(run, settings=settings, ann_settings=ann,
                                            device=runtime.device, engine=engine)
            else:
                predictor = load_predictor(run, saved, runtime)
        if search_run is not None:
            search = ProductSearch.load(search_run, settings=settings, ann_settings=ann,
                                        device=runtime.device, engine=engine)
        return cls(Path(run).name, predictor, search)

    def close(self) -> None:
        self.model_thread.shutdown(wait=True)

    # --- what the run can do -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """What the served model outputs: 'classifier', 'attributes', or 'embedding' (look-alikes only)."""
        if self.predictor is None:
            return "embedding"
        return next(output for output, cls in PREDICTORS.items() if type(self.predictor) is cls)

    @property
    def can_enroll(self) -> bool:
        return isinstance(self.predictor, Classifier) and not self.predictor.exported and \
            self.predictor.folder is not None

    def describe(self) -> dict:
        """What ``GET /health`` tells a client about the run."""
        out = {"run": self.name, "model": self.kind, "similar": self.search is not None,
               "enroll": self.can_enroll, "device": str(self.device)}
        if self.search is not None:
            out["catalog_products"] = self.search.size
        return out

    def classes(self) -> dict:
        """``GET /classes``: the trained categories and the enrolled ones (every head's, for attributes)."""
        if isinstance(self.predictor, Classifier):
            self.predictor.reload_enrolled()
            return {"trained": list(self.predictor.trained_classes), "enrolled": list(self.predictor.enrolled),
                    "by_name": list(getattr(self.predictor.model, "name_only_classes", []))}
        if isinstance(self.predictor, AttributeClassifier):
            return {"attributes": {a: list(c) for a, c in self.predictor.model.head_classes.items()}}
        return {"trained": self.search.categories(), "enrolled": []}

    # --- forward passes (called on the model thread, through a batcher) ------------------------------------
    def for_classifier(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded image as the predictor's input (resized, normalised): done in the request's thread, so
        the model thread only runs forward passes."""
        return self.predictor.transform(image)

    def for_search(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded image as the search model's input."""
        return self.search.transform(image)

    def classify(self, inputs: list[torch.Tensor]) -> list[ClassScores | dict[str, ClassScores]]:
        """Probabilities for a batch of :meth:`for_classifier` inputs (one result per image); a run with a
        predictor only."""
        predictor = self.predictor
        if isinstance(predictor, Classifier):
            predictor.reload_enrolled()  # another worker process may have enrolled a category
        out = predictor.score_batch(torch.stack(inputs))
        if isinstance(out, dict):
            heads = predictor.model.head_classes
            return [{a: ClassScores(list(heads[a]), out[a][i].numpy()) for a in heads} for i in range(len(inputs))]
        classes = list(predictor.classes)
        return [ClassScores(classes, row) for row in out.numpy()]

    def neighbours(self, inputs: list[torch.Tensor]) -> list[list[Neighbour]]:
        """The :data:`MAX_NEIGHBOURS` nearest catalog products of each of a batch of :meth:`for_search` inputs;
        a run with a search only."""
        if self.search.refresh():  # products added or removed beside the server (tailor index add / remove)
            self._thumbnail.cache_clear()
        vectors = self.search.embed_batch(torch.stack(inputs))
        return self.search.search(vectors, MAX_NEIGHBOURS)

    def colours_of(self, product_ids: Sequence[str]) -> dict[str, str | None]:
        """Catalog products' colour names (None where the catalog holds none), read at once."""
        found = self.search.products(product_ids) if self.search else {}
        return {i: (found.get(i) or {}).get("baseColour") or None for i in product_ids}

    # --- enrolment (on the model thread) -------------------------------------------------------------------
    def enrollable(self) -> Classifier:
        """The classifier to enroll into, or :class:`NotServed` saying why this run cannot enroll."""
        if not self.can_enroll:
            raise NotServed(f"{self.name} cannot enroll categories: " + (
                "an exported model is fixed (serve the run it came from)" if self.predictor is not None
                and getattr(self.predictor, "exported", False) else "only a classifier run's head can be refitted"))
        return self.predictor

    def enroll(self, name: str, images: Sequence[torch.Tensor], replace: bool) -> dict:
        classifier = self.enrollable()
        with self._enrol_lock(classifier.folder):
            classifier.reload_enrolled()
            classifier.enroll_images(name, [classifier.transform(image) for image in images], replace)
        return self.classes()

    def remove(self, name: str) -> dict:
        classifier = self.enrollable()
        with self._enrol_lock(classifier.folder):
            classifier.reload_enrolled()
            classifier.remove(name)
        return self.classes()

    @staticmethod
    def _enrol_lock(folder: Path):
        """An exclusive lock on ``folder/.enroll.lock`` (released by the OS if the process dies)."""
        return exclusive_lock(folder / ".enroll.lock")

    # --- catalog thumbnails ----------------------------------------------------------------------------------
    def has_product(self, product_id: str) -> bool:
        return self.search is not None and self.search.product(product_id) is not None

    def thumbnail(self, product_id: str) -> bytes:
        """A JPEG of at most :data:`THUMBNAIL_SIDE` px of a product in the run's own index, by id (a client
        never names a path); KeyError for an id the index does not hold."""
        if not self.has_product(product_id):
            raise KeyError(product_id)
        return self._thumbnail(product_id)

    def _make_thumbnail(self, product_id: str) -> bytes:
        product = self.search.product(product_id)
        path = resolve_under(product["root"], product["image"])
        with Image.open(path) as img:
            img.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            rgb = img.convert("RGB")
        rgb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=85)
        return out.getvalue()
