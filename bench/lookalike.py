"""Benchmark of look-alike search on the bundled sample: how often the top-5 results share the query's
category and its colour (``baseColour``), for the category embedding alone ("today"), the look-alike ranking
and its parts, beside the rate of a random product of the query's category — all in the same run.

    python bench/lookalike.py            # about 5 minutes on 2 CPU cores (trains configs/triplet.gin)
    python bench/lookalike.py --reuse    # reuse a finished experiments/bench_lookalike run

Two directions: the weights are chosen on the training years (every even-year product searched among the
other even-year products), then reported once on the test years (odd-year products searched among the
even-year products, as a merchandiser searches the catalog with a new product). Writes
bench/results/lookalike.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common import REPO, ensure_splits, markdown, publish, start  # noqa: E402
from tailor.search.index import EmbeddingIndex  # noqa: E402
from tailor.search.lookalike import LookalikeSettings  # noqa: E402

RUN = "bench_lookalike"
K = 5
VARIANTS = {  # name → (colour weight, category weight)
    "category embedding alone (today)": (0.0, 0.0),
    "embedding + colour": (2.0, 0.0),
    "embedding + category vote": (0.0, 1.0),
    "look-alike: + colour 1 + vote 1": (1.0, 1.0),
    "look-alike: + colour 2 + vote 1 (default)": (2.0, 1.0),
    "look-alike: + colour 3 + vote 1": (3.0, 1.0),
    "look-alike: + colour 4 + vote 2": (4.0, 2.0),
}


def subset(index: EmbeddingIndex, rows: np.ndarray) -> EmbeddingIndex:
    pick = torch.as_tensor(rows)
    return EmbeddingIndex(index.embeddings[pick], [index.ids[i] for i in rows], [index.labels[i] for i in rows],
                          [index.images[i] for i in rows], [index.root[i] for i in rows],
                          index.colours[pick] if index.colours is not None else None,
                          {c: [v[i] for i in rows] for c, v in index.attributes.items()})


def rates(gallery: EmbeddingIndex, queries: EmbeddingIndex, settings: LookalikeSettings, leave_one_out: bool) -> dict:
    exclude = [{i} for i in range(len(queries))] if leave_one_out else None
    found = gallery.search(queries.embeddings, K, queries.colours, exclude=exclude, settings=settings)
    colour = dict(zip(gallery.ids, gallery.attributes["baseColour"]))
    same_category = [n.label == label for row, label in zip(found, queries.labels) for n in row]
    same_colour = [colour[n.id] == c for row, c in zip(found, queries.attributes["baseColour"]) for n in row]
    return {"same category": float(np.mean(same_category)), "same colour": float(np.mean(same_colour))}


def random_same_category(gallery: EmbeddingIndex, queries: EmbeddingIndex) -> float:
    """The chance that a random gallery product of the query's category has the query's colour."""
    table = pd.DataFrame({"label": gallery.labels, "colour": gallery.attributes["baseColour"]})
    chances = []
    for label, colour in zip(queries.labels, queries.attributes["baseColour"]):
        same = table[table["label"] == label]
        if len(same):
            chances.append(float((same["colour"] == colour).mean()))
    return float(np.mean(chances))


def main() -> None:
    args = start(__doc__.splitlines()[0], "reuse a finished experiments/bench_lookalike run")
    ensure_splits()
    index_file = REPO / "experiments" / RUN / "index.pt"
    if not (args.reuse and index_file.is_file()):
        command = ["tailor", "run", "-c", "configs/triplet.gin", "-p", f"main.name='{RUN}'", "--fresh"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    index = EmbeddingIndex.load(index_file)
    train_ids = set(pd.read_csv(REPO / "experiments" / "splits" / "train.csv")["id"].astype(str))
    is_train = np.array([i in train_ids for i in index.ids])
    gallery, queries = subset(index, np.flatnonzero(is_train)), subset(index, np.flatnonzero(~is_train))

    rows = []
    for name, (colour_weight, category_weight) in VARIANTS.items():
        settings = LookalikeSettings(colour_weight=colour_weight, category_weight=category_weight)
        validation = rates(gallery, gallery, settings, leave_one_out=True)
        test = rates(gallery, queries, settings, leave_one_out=False)
        rows.append({"ranking": name, "colour weight": colour_weight, "vote weight": category_weight,
                     "train years: same category": validation["same category"],
                     "train years: same colour": validation["same colour"],
                     "test years: same category": test["same category"], "test years: same colour": test["same colour"]})
    chance = {"train": random_same_category(gallery, gallery), "test": random_same_category(gallery, queries)}
    rows.append({"ranking": "random product of the query's category", "train years: same category": 1.0,
                 "train years: same colour": chance["train"], "test years: same category": 1.0,
                 "test years: same colour": chance["test"]})
    text = (f"## Look-alike search: top-{K} neighbours' category and colour\n\n"
            f"Bundled sample, `configs/triplet.gin` (run `{RUN}`). Train years: each of the {len(gallery)} even-year "
            f"products searched among the others (the colour probe saw them: optimistic for colour, used only to "
            f"choose). Test years: the {len(queries)} odd-year products searched among the even-year ones.\n\n"
            + markdown(rows, ["ranking", "colour weight", "vote weight", "train years: same category",
                              "train years: same colour", "test years: same category", "test years: same colour"])
            + "\n")
    publish("lookalike", text)


if __name__ == "__main__":
    main()
