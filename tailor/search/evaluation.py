"""A metric-learning run scored on any catalog as the run scored its test split: each product's embedding
classified by its nearest training products in the run's catalog index (kNN), with the run's kNN settings.

The references are the index's products that the run trained on (by product id, from the training table the
run folder records), so scoring a run's own test split gives the run's numbers; a product of the evaluated
catalog never counts as its own neighbour. Without a recorded training table, every indexed product is a
reference.
"""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tailor.data.catalog import product_ids
from tailor.data.datasets import FashionDataset
from tailor.distributed import Runtime
from tailor.evaluation.artifacts import write_evaluation
from tailor.evaluation.knn import knn_scores
from tailor.evaluation.metrics import evaluate_scores
from tailor.models.features import run_pass
from tailor.search.similar import ProductSearch

#: the kNN settings a run records (results.json's ``knn``), with knn_scores' defaults for one that records none
DEFAULT_KNN = {name: parameter.default for name, parameter in inspect.signature(knn_scores).parameters.items()
               if name in ("k", "weighting", "temperature")}


def evaluate_embedding_run(search: ProductSearch, spec: FashionDataset, frame: pd.DataFrame, out: Path,
                           knn: dict | None = None, trained_ids: set[str] | None = None, batch_size: int = 64,
                           progress: bool = True, runtime: Runtime | None = None) -> dict:
    """Score ``frame``'s products (images under ``spec.root_dir``) by kNN among ``search``'s indexed products
    whose id is in ``trained_ids`` (None: all of them), and write ``per_class.md``/``.csv``, the confusion
    matrix and the mistakes into ``out``. ``knn``: ``k``, ``weighting``, ``temperature``
    (:func:`tailor.evaluation.knn.knn_scores`). Returns what results.json holds."""
    runtime = runtime or Runtime.local()
    knn = {**DEFAULT_KNN, **{key: value for key, value in (knn or {}).items() if key in DEFAULT_KNN}}
    index = search.index
    ids = list(index.ids)
    rows = np.array([i for i, pid in enumerate(ids) if trained_ids is None or pid in trained_ids], dtype=np.int64)
    if not len(rows):
        raise ValueError("none of the run's training products is in its catalog index: nothing to compare with")
    labels = [index.labels[int(i)] for i in rows]
    classes = sorted(set(labels))
    position = {c: i for i, c in enumerate(classes)}
    reference = index.embeddings[torch.as_tensor(rows)].float()
    test = spec.load(classes, search.transform, frame=frame, progress=progress)
    queries = run_pass(lambda images: search.embed_batch(images).embeddings, test, batch_size=batch_size,
                       progress=progress, desc="embeddings", runtime=runtime).outputs
    if not runtime.is_zero:
        return {}
    reference_row = {ids[int(r)]: j for j, r in enumerate(rows)}
    leave_out = np.array([reference_row.get(pid, -1) for pid in product_ids(test.frame)], dtype=np.int64)
    scores = knn_scores(reference.to(queries.device), np.array([position[label] for label in labels]), queries,
                        len(classes), leave_out=leave_out, **knn)
    result = evaluate_scores(scores, list(test.frame["label"]), classes, dict(Counter(labels)))
    write_evaluation(result, test, scores, classes, out, title=f"{out.name} — kNN (k={knn['k']})")
    return {"method": "metric", "knn": knn, "references": int(len(rows)),
            "data_root": str(spec.root_dir.resolve()), **result.as_dict()}
