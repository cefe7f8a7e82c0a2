"""``tailor.load`` and :class:`Model`: a trained run (or its exported ``.onnx`` file) as one Python object that
predicts, evaluates, enrols categories, finds look-alikes, exports and saves — the calls a notebook or a
pipeline step makes, on image files, folders, PIL images, arrays or a :class:`~tailor.data.catalog.Catalog`.

Every call goes through the same code as the ``tailor`` command (``predict``, ``enroll``, ``similar``,
``export``), so a model answers the same in Python, in a shell and behind ``tailor serve``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from tailor import distributed, run_folder
from tailor.api.results import Results
from tailor.data.catalog import Catalog, CatalogError, product_ids
from tailor.data.datasets import FashionDataset
from tailor.data.decoding import IMAGE_SUFFIXES
from tailor.data.images import ImageError
from tailor.deploy.export import export_model
from tailor.deploy.onnx_file import is_export_file, read_export
from tailor.enrolment import EnrollError
from tailor.evaluation.report import build_report
from tailor.files import write_json
from tailor.inference import AttributeClassifier, Classifier, ImagePredictor, find_model_file, load_predictor
from tailor.machine import keep_freed_memory_once
from tailor.models.files import load_model_file
from tailor.models.registry import model_kind
from tailor.predictions import Prediction, prediction_row
from tailor.recipes.attributes import evaluate_attributes
from tailor.recipes.transfer import evaluate_classifier
from tailor.run_folder import RunFolder
from tailor.search.catalog_updates import IndexUpdate, add_products, index_info, push_run_index, remove_products
from tailor.search.lookalike import LookalikeSettings
from tailor.search.qdrant_engine import QdrantCatalog
from tailor.search.evaluation import evaluate_embedding_run
from tailor.search.similar import ProductSearch

log = logging.getLogger(__name__)

#: the network a few-shot run trains (``recipes/fewshot.py`` writes it)
FEWSHOT_FILE = run_folder.FEWSHOT_NET

#: what :meth:`Model.predict` and friends take as one image
ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


class Model:
    """A trained model: a run folder (``model.pt`` and what the run wrote beside it) or an exported ``.onnx``
    file. Made by :func:`tailor.fit` or :func:`tailor.load`.

    ``device``: where it computes ('auto': a CUDA GPU when there is one, else the CPU).
    """

    def __init__(self, path: str | Path, device: str = "auto", temporary: bool = False):
        keep_freed_memory_once()  # as the tailor command does (fast inference on glibc)
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{path}: no such run folder or model file")
        self.device = device
        #: made by :func:`tailor.fit` with ``out=None``: lives in a temporary folder until :meth:`save`
        self.temporary = temporary
        self.exported = is_export_file(self.path)
        if not self.exported and not (self.path.is_dir() and (self.path / FEWSHOT_FILE).is_file()):
            find_model_file(self.path)  # a folder without model.pt is a quick, clear error
        self._predictor: Classifier | AttributeClassifier | None = None
        #: the look-alike searches made so far, by (engine, collection): read again when the index changes
        self._searches: dict[tuple[str | None, str | None], ProductSearch] = {}

    def _runtime(self) -> distributed.Runtime:
        """Where this model computes: one process on ``device`` (or the processes a launcher started)."""
        return distributed.start(self.device)

    # -- what it is --------------------------------------------------------------------------------------

    @property
    def folder(self) -> Path | None:
        """The run folder (``None`` for an exported file)."""
        return None if self.exported else (self.path if self.path.is_dir() else self.path.parent)

    @property
    def model_file(self) -> Path:
        if not self.exported and (self.path / FEWSHOT_FILE).is_file():
            return self.path / FEWSHOT_FILE
        return self.path if self.exported else find_model_file(self.path)

    @property
    def kind(self) -> str:
        """'classifier', 'ensemble', 'attributes', 'embedding' or 'fewshot' (a network trained episodically,
        scored on episodes: its results are what it has)."""
        if self.exported:
            return read_export(self.path)[1].kind
        if self.model_file.name == FEWSHOT_FILE:
            return "fewshot"
        return model_kind(load_model_file(self.model_file))

    @property
    def classes(self) -> list[str]:
        """The categories it ranks, in the order of its outputs (an attribute model: ``{attribute: values}``
        as :attr:`attribute_classes`)."""
        predictor = self._classifier()
        if isinstance(predictor, AttributeClassifier):
            raise TypeError("a multi-attribute model: see Model.attribute_classes")
        return list(predictor.classes)

    @property
    def attribute_classes(self) -> dict[str, list[str]]:
        """A multi-attribute model's values per attribute."""
        predictor = self._classifier()
        if not isinstance(predictor, AttributeClassifier):
            raise TypeError(f"a {self.kind} model has one set of classes: see Model.classes")
        return {a: list(c) for a, c in predictor.model.head_classes.items()}

    @property
    def results(self) -> Results:
        """What the run measured (``results.json``), with its tables as dataframes."""
        if self.folder is None or not (self.folder / run_folder.RESULTS).is_file():
            raise FileNotFoundError(f"{self.path}: no results.json (an exported model keeps no results)")
        return Results(RunFolder(self.folder).results(), self.folder)

    def __repr__(self) -> str:
        where = "temporary folder " if self.temporary else ""
        return f"Model({self.kind}, {where}{str(self.path)!r})"

    # -- predicting ----------------------------------------------------------------------------------------

    def predict(self, images: ImageLike | Iterable[ImageLike] | Catalog, k: int = 5, tta: bool = True,
                batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
        """The ``k`` most probable categories of each image, one row per image, in order: the columns
        ``tailor predict --csv`` writes (``path, class1, score1, …``; a multi-attribute model:
        ``path, <attribute>1, <attribute>_score1, …``). An image that cannot be read gets its reason in an
        ``error`` column instead of failing the others."""
        predictor = self._classifier()
        rows: list[dict] = []
        for name, out in self._scores(predictor, images, tta, batch_size, progress):
            if isinstance(out, ImageError):
                rows.append({"path": name, "error": out.reason})
            elif isinstance(out, dict):
                rows.append(prediction_row(predictor.top_k(name, out, k)))
            else:
                rows.append(prediction_row(Prediction(name, *predictor.top_k(out.numpy(), k))))
        frame = pd.DataFrame(rows)
        if "error" in frame:
            frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
        return frame

    def predict_proba(self, images: ImageLike | Iterable[ImageLike] | Catalog, tta: bool = True,
                      batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
        """Every category's probability for each image (rows: images by path, columns: :attr:`classes`); an
        unreadable image's row is empty (NaN). A classifier only."""
        predictor = self._classifier()
        if isinstance(predictor, AttributeClassifier):
            raise TypeError("a multi-attribute model: use Model.predict, which ranks every attribute")
        names, rows = [], []
        for name, out in self._scores(predictor, images, tta, batch_size, progress):
            names.append(name)
            rows.append(np.full(len(predictor.classes), np.nan) if isinstance(out, ImageError) else out.numpy())
        return pd.DataFrame(np.stack(rows) if rows else np.zeros((0, len(predictor.classes))),
                            index=pd.Index(names, name="path"), columns=predictor.classes)

    def _scores(self, predictor: ImagePredictor, images, tta: bool, batch_size: int, progress: bool):
        """``(name, probabilities or ImageError)`` per image, in the order given."""
        items = _image_items(images)
        files = [(i, item) for i, item in enumerate(items) if isinstance(item, Path)]
        out: dict[int, Any] = {}
        for (i, _), (_, scored) in zip(files, predictor.score_files([p for _, p in files], tta, batch_size,
                                                                    progress)):
            out[i] = scored
        pictures = [(i, item) for i, item in enumerate(items) if not isinstance(item, Path)]
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start:start + batch_size]
            batch = torch.stack([predictor.transform(picture) for _, picture in chunk])
            predictor.tta = tta
            scored = predictor.score_batch(batch)
            for j, (i, _) in enumerate(chunk):
                out[i] = {a: v[j] for a, v in scored.items()} if isinstance(scored, dict) else scored[j]
        for i, item in enumerate(items):
            yield (str(item) if isinstance(item, Path) else f"<image {i}>"), out[i]

    def _classifier(self) -> Classifier | AttributeClassifier:
        if self._predictor is None:
            if self.kind == "fewshot":
                raise TypeError(f"{self.path}: a few-shot run, scored on episodes (Model.results.fewshot); it "
                                f"does not classify images on its own")
            self._predictor = load_predictor(self.path, runtime=self._runtime())
        if isinstance(self._predictor, Classifier):
            self._predictor.reload_enrolled()  # another process may have enrolled a category since
        return self._predictor

    # -- scoring -----------------------------------------------------------------------------------------

    def evaluate(self, catalog: Catalog, group: str = "all", tta: bool = True, batch_size: int = 64,
                 out: str | Path | None = None, progress: bool = True) -> Results:
        """Score the model on ``catalog`` (its labels are the truth) as a run scores its test split: top-1 and
        top-5, the per-class table, the confusion matrix and the mistakes, written to ``out`` (default: a
        temporary folder) and returned as :class:`Results`. ``group``: 'all' rows, or 'model': only rows of
        categories the model knows. A classifier or a multi-attribute model; an embedding model (a triplet
        run) classifies each product by its nearest training products in the run's catalog index, with the
        run's kNN settings, as the run scored its own test split (``tta`` and ``group`` do not apply)."""
        if not isinstance(catalog, Catalog) or catalog.root is None:
            raise CatalogError("evaluate needs a tailor.Catalog whose root is known (read_catalog / from_frame)")
        if self.exported:
            raise TypeError(f"{self.path}: evaluate the run it was exported from (tailor.load(RUN).evaluate)")
        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="tailor-evaluation-"))
        folder.mkdir(parents=True, exist_ok=True)
        spec = FashionDataset(root_dir=catalog.root)
        if self.kind == "embedding":
            results = self._evaluate_embedding(catalog, spec, folder, batch_size, progress)
            results = {"test_source": catalog.source, **results}
            write_json(folder / run_folder.RESULTS, results)
            return Results(results, folder)
        predictor = self._classifier()
        model = predictor.model
        if isinstance(predictor, AttributeClassifier):
            results = evaluate_attributes(model, spec, folder, getattr(model, "train_counts", {}), tta=tta,
                                          batch_size=batch_size, progress=progress, frame=catalog.frame,
                                          runtime=predictor.runtime)
        else:
            results = evaluate_classifier(model, spec, folder, getattr(model, "train_counts", {}), group=group,
                                          tta=tta, batch_size=batch_size, progress=progress, frame=catalog.frame,
                                          runtime=predictor.runtime)
        results = {"test_source": catalog.source, **results}
        write_json(folder / run_folder.RESULTS, results)
        return Results(results, folder)

    def _evaluate_embedding(self, catalog: Catalog, spec: FashionDataset, folder: Path, batch_size: int,
                            progress: bool) -> dict:
        """kNN among the run's training products in its index (:mod:`tailor.search.evaluation`)."""
        source, trained = RunFolder(self.path).training_source(), None
        if source is not None:
            try:
                trained = set(product_ids(FashionDataset(source.root, source.csv_file,
                                                         source.label_column).catalog().frame))
            except CatalogError as err:
                log.warning("the run's training table cannot be read (%s): every indexed product is a "
                            "reference", err)
        return evaluate_embedding_run(self._product_search(), spec, catalog.frame, folder,
                                      self.results.get("knn"), trained, batch_size=batch_size, progress=progress,
                                      runtime=self._runtime())

    # -- changing the categories ---------------------------------------------------------------------------

    def enroll(self, name: str, images: ImageLike | Iterable[ImageLike] = (), parents: Sequence[str] | str = (),
               replace: bool = False) -> "Model":
        """Add category ``name`` from a few example images (files, folders, PIL images, arrays), without
        training the network: the class-balanced head is refitted on the run's stored features plus these.
        With no image, the category is added by its name alone (``parents``: its place in the taxonomy,
        nearest first or as "Accessories > Ties"; a run trained with names). Saved in the run folder
        (``enrolled.pt``), so :func:`tailor.load`, ``tailor predict`` and ``tailor serve`` see it. Returns
        the model."""
        classifier = self._enrolling()
        items = _image_items(images)
        if not items:
            if isinstance(parents, str):
                parents = [p.strip() for p in parents.split(">")[::-1] if p.strip()]
            classifier.enroll_name(name, list(parents), replace=replace)
            return self
        files = [item for item in items if isinstance(item, Path)]
        tensors, failed = classifier.decode_files(files)
        tensors += [classifier.transform(item) for item in items if not isinstance(item, Path)]
        for error in failed.values():
            log.warning("skipped %s", error)
        if not tensors:
            raise EnrollError(f"no readable image to enroll {name!r} from")
        classifier.enroll_images(name, tensors, replace)
        return self

    def remove(self, name: str) -> "Model":
        """Take an enrolled category out again. Returns the model."""
        self._enrolling().remove(name)
        return self

    @property
    def enrolled(self) -> list[str]:
        """The categories enrolled into the run after training (from images, then by name)."""
        classifier = self._classifier()
        if not isinstance(classifier, Classifier):
            return []
        return list(classifier.enrolled) + list(classifier.enrolled_names)

    def _enrolling(self) -> Classifier:
        classifier = self._classifier()
        if not isinstance(classifier, Classifier):
            raise EnrollError(f"a {self.kind} model: only a classifier takes new categories")
        return classifier

    # -- look-alikes ---------------------------------------------------------------------------------------

    def similar(self, image: ImageLike, k: int = 10, filters: Mapping[str, str] | None = None,
                same_class: bool = False, engine: str | None = None, collection: str | None = None) -> pd.DataFrame:
        """The ``k`` catalog products that look most like ``image`` (a file, PIL image or array), best first,
        never the product itself: ``rank, id, score, distance, label, image`` (the image's path) and the
        catalog attributes the index keeps. ``filters``: attributes every result must have
        (``{"gender": "Women"}``); ``same_class``: only products of the query's category. ``engine``,
        ``collection``: search the catalog :meth:`push` copied there instead of the run's index. A
        metric-learning run (``recipe="triplet"``)."""
        if self.exported:
            raise TypeError(f"{self.path}: look-alikes come from a run folder's catalog index "
                            f"(tailor.load(RUN).similar)")
        search = self._product_search(engine, collection)
        item = _image_items(image)
        if len(item) != 1:
            raise ValueError("similar takes one query image")
        if isinstance(item[0], Path):
            neighbours = search.similar(item[0], k=k, same_class=same_class, filters=dict(filters or {}))
        else:
            neighbours = search.search(search.embed(item[0]), k, None, same_class, dict(filters or {}))[0]
        rows, found = [], search.products([n.id for n in neighbours])
        for rank, n in enumerate(neighbours, 1):
            product = found.get(n.id, {})
            attributes = {a: v for a, v in product.items() if a not in ("id", "label", "image", "root")}
            rows.append({"rank": rank, "id": n.id, "score": n.score, "distance": n.distance, "label": n.label,
                         "image": str(Path(n.root) / n.image), **attributes})
        return pd.DataFrame(rows)

    def add_products(self, catalog: Catalog, progress: bool = True, engine: str | None = None,
                     collection: str | None = None) -> IndexUpdate:
        """Embed ``catalog``'s products with this model and add them to the run's catalog index (an id
        already there is replaced), without retraining: :meth:`similar` and a running ``tailor serve`` find
        them at once. Unreadable images are skipped and listed in the answer. A metric-learning run.
        ``engine``: also upsert them into the catalog pushed there (:meth:`push`'s ``location``, collection
        ``collection``, default: the run folder's name)."""
        self._needs_index()
        done = add_products(self.path, catalog, progress=progress, device=self.device,
                            engine=self._engine(engine, collection))
        self._searches.clear()  # read again at the next search
        return done

    def remove_products(self, ids: Iterable[str], engine: str | None = None,
                        collection: str | None = None) -> IndexUpdate:
        """Remove products from the run's catalog index by id (ids it does not hold are listed as skipped);
        ``engine``, ``collection``: also from the catalog pushed there, as in :meth:`add_products`."""
        self._needs_index()
        done = remove_products(self.path, ids, engine=self._engine(engine, collection))
        self._searches.clear()
        return done

    def index_info(self) -> dict:
        """What the run's catalog index holds and how it is searched (exact, or approximate above
        ``search.ann.exact_below`` products)."""
        self._needs_index()
        return index_info(self.path)

    def push(self, location: str, collection: str | None = None) -> int:
        """Copy the run's catalog index into a Qdrant collection (``tailor index push``): ``location`` a
        server's URL or a local folder, ``collection`` default the run folder's name (replaced if it exists).
        Serve it with ``tailor serve RUN --engine LOCATION``; keep it current with :meth:`add_products` /
        :meth:`remove_products` and their ``engine``. Returns the products it holds."""
        self._needs_index()
        return len(push_run_index(self.path, location, collection))

    def _product_search(self, engine: str | None = None, collection: str | None = None) -> ProductSearch:
        """The run's model with its index, or with the catalog pushed to ``engine``: loaded once."""
        key = (engine, collection)
        if key not in self._searches:
            self._searches[key] = ProductSearch.load(self.path, None, LookalikeSettings(), device=self.device,
                                                     engine=self._engine(engine, collection))
        return self._searches[key]

    def _engine(self, location: str | None, collection: str | None) -> QdrantCatalog | None:
        """The pushed catalog at ``location`` (None: none)."""
        if location is None:
            return None
        return QdrantCatalog.connect(location, collection or Path(self.folder).name)

    def _needs_index(self) -> None:
        if self.exported:
            raise TypeError(f"{self.path}: the catalog index belongs to the run folder (tailor.load(RUN))")

    # -- files ---------------------------------------------------------------------------------------------

    def export(self, path: str | Path, quantize: str | None = None, calibration: Catalog | None = None,
               calibration_images: int = 256, seed: int = 0, tta: bool = True) -> "Model":
        """The model as one ONNX file (``quantize='int8'``: int8 weights and activations, calibrated on
        ``calibration_images`` images of ``calibration``, default the run's training table), checked against
        the torch model; returns the exported model, which predicts with ONNX Runtime alone."""
        if self.exported:
            raise TypeError(f"{self.path} is exported already; export the run it came from")
        source = None
        if calibration is not None:
            table = Path(tempfile.mkdtemp(prefix="tailor-calibration-")) / "calibration.csv"
            source = run_folder.DataSource(calibration.write_table(table), Path(calibration.root))
        export_model(self.path, path, quantize=quantize, calibration=source, calibration_images=calibration_images,
                     seed=seed, tta=tta, device=self.device)
        return Model(path, device=self.device)

    def save(self, path: str | Path) -> "Model":
        """Copy the run folder (or exported file) to ``path``, which must not exist yet; returns the model
        there. A model from ``tailor.fit(out=None)`` lives in a temporary folder until it is saved."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; save to a new folder")
        if self.exported:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.path, path)
        else:
            shutil.copytree(self.folder, path)
        return Model(path, device=self.device)

    def report(self) -> Path:
        """The run's self-contained ``report.html`` (drawn again from its files)."""
        if self.folder is None:
            raise TypeError("an exported model has no run folder to report on")
        return Path(build_report(self.folder))


def load(path: str | Path, device: str = "auto") -> Model:
    """A saved model: a run folder (``tailor run``, :func:`tailor.fit`, :meth:`Model.save`), its
    ``model.pt``, or an exported ``.onnx`` file."""
    return Model(path, device=device)




def _image_items(images) -> list[Path | torch.Tensor]:
    """Images as a flat list of files (folders expanded, sorted) and decoded uint8 ``(3, H, W)`` tensors."""
    if isinstance(images, Catalog):
        return images.image_paths()
    if isinstance(images, (str, Path)) or _is_picture(images):
        images = [images]
    items: list[Path | torch.Tensor] = []
    for item in images:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                items += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                items.append(path)
        elif _is_picture(item):
            items.append(_as_tensor(item))
        else:
            raise TypeError(f"not an image: {type(item).__name__} (a path, a folder, a PIL image or an array)")
    return items


def _is_picture(item) -> bool:
    return hasattr(item, "convert") and hasattr(item, "size") or isinstance(item, (np.ndarray, torch.Tensor))


def _as_tensor(item) -> torch.Tensor:
    """A PIL image, an ``(H, W, 3)`` / ``(H, W)`` array (uint8, or floats in [0, 1]) or a ``(3, H, W)`` tensor
    as the uint8 ``(3, H, W)`` tensor the transforms take."""
    if hasattr(item, "convert"):
        return torch.from_numpy(np.array(item.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(item, torch.Tensor):
        tensor = item
        if tensor.dim() == 3 and tensor.shape[0] not in (1, 3) and tensor.shape[-1] in (1, 3):
            tensor = tensor.permute(2, 0, 1)
    else:
        array = np.asarray(item)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3):
            raise ValueError(f"an image array must be (H, W, 3) or (H, W), not {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.dtype.is_floating_point:
        tensor = (tensor.clamp(0, 1) * 255).round()
    tensor = tensor.to(torch.uint8)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor.contiguous()
