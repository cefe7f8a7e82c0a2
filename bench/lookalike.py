"""Benchmark of look-alike search on the bundled sample: how often the top-5 results share the query's
category and its colour (``baseColour``), for the category embedding alone ("today"), the look-alike ranking
and its parts, beside the rate of a random product of the query's category — all in the same run.

    python bench/lookalike.py            # about 10 minutes on 2 CPU cores (two configs/triplet.gin runs)
    python bench/lookalike.py --reuse    # reuse finished experiments/bench_lookalike{,_swapped} runs

Two directions. The weights are chosen on the years-swapped direction — a run trained on the odd years, its
even-year products searched among the odd-year ones — as the setting with the highest same-colour rate whose
same-category rate stays within CATEGORY_MARGIN of the embedding alone; then reported once on the test years
(odd-year products searched among the even-year ones, as a merchandiser searches the catalog with a new
product). Writes bench/results/lookalike.md.
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
from tailor.search.ann import AnnSettings  # noqa: E402
from tailor.search.index import EmbeddingIndex  # noqa: E402
from tailor.search.lookalike import LookalikeSettings  # noqa: E402

RUN = "bench_lookalike"
SWAPPED = "bench_lookalike_swapped"
SPLITS = REPO / "experiments" / "splits"
K = 5
CATEGORY_MARGIN = 0.01  # the choice may cost the swapped direction at most this much same-category rate
VARIANTS = {  # name → (colour weight, category weight)
    "category embedding alone (today)": (0.0, 0.0),
    "embedding + colour": (2.0, 0.0),
    "embedding + category vote": (0.0, 1.0),
    "look-alike: + colour 1 + vote 1": (1.0, 1.0),
    "look-alike: + colour 2 + vote 1": (2.0, 1.0),
    "look-alike: + colour 3 + vote 1": (3.0, 1.0),
    "look-alike: + colour 4 + vote 2 (default)": (4.0, 2.0),
    "look-alike: + colour 2 + vote 2": (2.0, 2.0),
}


def rates(gallery: EmbeddingIndex, queries: EmbeddingIndex, settings: LookalikeSettings) -> dict:
    found = gallery.search(queries.embeddings, K, queries.colours, settings=settings)
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


def directions(reuse: bool) -> dict[str, tuple[EmbeddingIndex, EmbeddingIndex]]:
    """(gallery, queries) of each direction: the swapped one chooses, the test one reports."""
    out = {}
    for name, run, train_csv, test_csv in (("swapped", SWAPPED, "test.csv", "train.csv"),
                                           ("test", RUN, "train.csv", "test.csv")):
        index_file = REPO / "experiments" / run / "index.pt"
        if not (reuse and index_file.is_file()):
            command = ["tailor", "run", "-c", "configs/triplet.gin", "-p", f"main.name='{run}'",
                       "-p", f"FashionDataset.csv_file='experiments/splits/{train_csv}'",
                       "-p", f"evaluate/FashionDataset.csv_file='experiments/splits/{test_csv}'",
                       "-p", "metric.tsne=False", "--fresh"]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, cwd=REPO, check=True)
        index = EmbeddingIndex.load(index_file)
        gallery_ids = set(pd.read_csv(SPLITS / train_csv)["id"].astype(str))
        in_gallery = np.array([i in gallery_ids for i in index.ids])
        out[name] = (index.subset(np.flatnonzero(in_gallery).tolist()),
                     index.subset(np.flatnonzero(~in_gallery).tolist()))
    return out


def approximate_rows(gallery: EmbeddingIndex, queries: EmbeddingIndex) -> list[dict]:
    """The default ranking with every query answered through the approximate index (forced on this small
    gallery: ``exact_below=1``) beside exact search, test years: with the default settings, and visiting a
    sixth of the lists (harsher than the defaults are here, where 32 lists are most of them)."""
    exact = rates(gallery, queries, LookalikeSettings())
    truth = gallery.search(queries.embeddings, K, queries.colours, settings=LookalikeSettings())
    rows = [{"search (default ranking, test years)": "exact: every product scored", **exact}]
    for nprobe in (AnnSettings.nprobe, 8):
        settings = AnnSettings(exact_below=1, nprobe=nprobe)
        approximate = gallery.subset(range(len(gallery))).with_approximate_index(settings)
        found = rates(approximate, queries, LookalikeSettings())
        answers = approximate.search(queries.embeddings, K, queries.colours, settings=LookalikeSettings())
        overlap = np.mean([len({n.id for n in a} & {n.id for n in b}) / K for a, b in zip(truth, answers)])
        lists = approximate.ann.lookalike.index.nlist
        rows.append({"search (default ranking, test years)": f"approximate: IVF-PQ, {min(nprobe, lists)} of {lists} "
                     f"lists visited, {settings.fetch} candidates re-ranked (recall@{K} {overlap:.3f})", **found,
                     "Δ same category (points)": 100 * (found["same category"] - exact["same category"]),
                     "Δ same colour (points)": 100 * (found["same colour"] - exact["same colour"])})
    return rows


def main() -> None:
    args = start(__doc__.splitlines()[0], "reuse finished experiments/bench_lookalike{,_swapped} runs")
    ensure_splits()
    pairs = directions(args.reuse)
    measured = {name: {d: rates(*pairs[d], LookalikeSettings(colour_weight=c, category_weight=v))
                       for d in pairs}
                for name, (c, v) in VARIANTS.items()}
    today = measured["category embedding alone (today)"]["swapped"]["same category"]
    eligible = [n for n in VARIANTS if measured[n]["swapped"]["same category"] >= today - CATEGORY_MARGIN]
    chosen = max(eligible, key=lambda n: measured[n]["swapped"]["same colour"])
    rows = [{"ranking": name + (" ← chosen" if name == chosen else ""), "colour weight": VARIANTS[name][0],
             "vote weight": VARIANTS[name][1],
             "swapped: same category": measured[name]["swapped"]["same category"],
             "swapped: same colour": measured[name]["swapped"]["same colour"],
             "test years: same category": measured[name]["test"]["same category"],
             "test years: same colour": measured[name]["test"]["same colour"]} for name in VARIANTS]
    rows.append({"ranking": "random product of the query's category", "swapped: same category": 1.0,
                 "swapped: same colour": random_same_category(*pairs["swapped"]), "test years: same category": 1.0,
                 "test years: same colour": random_same_category(*pairs["test"])})
    (gallery, queries), (swapped_gallery, swapped_queries) = pairs["test"], pairs["swapped"]
    text = (f"## Look-alike search: top-{K} neighbours' category and colour\n\n"
            f"Bundled sample, `configs/triplet.gin`. Swapped: a run trained on the {len(swapped_gallery)} odd-year "
            f"products (`{SWAPPED}`), the {len(swapped_queries)} even-year products searched among them; the "
            f"weights are chosen there (highest same colour with same category at most {CATEGORY_MARGIN:.0%} below "
            f"the embedding alone). Test years: the default run (`{RUN}`), the {len(queries)} odd-year products "
            f"searched among the {len(gallery)} even-year ones, reported once.\n\n"
            + markdown(rows, ["ranking", "colour weight", "vote weight", "swapped: same category",
                              "swapped: same colour", "test years: same category", "test years: same colour"])
            + "\n\n" + "### Through the approximate index\n\n"
            + markdown(approximate_rows(gallery, queries), ["search (default ranking, test years)", "same category",
                                                            "same colour", "Δ same category (points)",
                                                            "Δ same colour (points)"]) + "\n")
    publish("lookalike", text)


if __name__ == "__main__":
    main()
