"""Benchmark of `tailor enroll` on the bundled sample: a category the top-20 model never saw, added from five
examples, without training the network.

    python bench/transfer.py --reuse && python bench/enroll.py    # about 4 minutes on 2 CPU cores

For the default top-20 model (the Lite0 + Lite1 + Lite2 ensemble) and for Lite0 alone, both made by
``bench/transfer.py``: enroll the first five even-year Innerwear Vests by id into a copy of the run, then
score the other 95 vests (how often the new category comes first) and the 794 odd-year top-20 test images
(what the trained categories lose to the newcomer). Writes bench/results/enroll.md.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, SPLITS, markdown, publish, start, top20_classes  # noqa: E402

CATEGORY, EXAMPLES = "Innerwear Vests", 5
IMAGES = REPO / "data" / "sample" / "images"
RUNS = [("Lite0 + Lite1 + Lite2 ensemble (default)", "bench_transfer"), ("Lite0 alone", "bench_transfer_lite0")]


def top1(classifier, ids: list[int], labels: list[str]) -> float:
    predictions = classifier.predict_files([IMAGES / f"{i}.jpg" for i in ids])
    return sum(p.labels[0] == label for p, label in zip(predictions, labels)) / len(ids)


def check(run: Path) -> dict:
    from tailor.inference import Classifier

    styles = pd.read_csv(REPO / "data" / "sample" / "styles.csv")
    category = styles[styles["articleType"] == CATEGORY]
    examples = category[category["year"] % 2 == 0].sort_values("id")["id"].head(EXAMPLES).tolist()
    others = category[~category["id"].isin(examples)]["id"].tolist()
    test = pd.read_csv(SPLITS / "test.csv")
    test = test[test["articleType"].isin(top20_classes())]
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("enrolled.pt", "checkpoints"))
        classifier = Classifier.load(copy)
        before = top1(classifier, test["id"].tolist(), test["articleType"].tolist())
        classifier.enroll(CATEGORY, [IMAGES / f"{i}.jpg" for i in examples])
        recognised = top1(classifier, others, [CATEGORY] * len(others))
        after = top1(classifier, test["id"].tolist(), test["articleType"].tolist())
    return {"new category recognised": recognised, "other images": len(others), "top-20 top1 before": before,
            "top-20 top1 after": after}


def main() -> None:
    start(__doc__.splitlines()[0], "unused: the runs of bench/transfer.py are always reused")
    rows = []
    for label, name in RUNS:
        run = REPO / "experiments" / name
        if not (run / "model.pt").is_file():
            raise SystemExit(f"{run}: missing — run python bench/transfer.py first")
        rows.append({"top-20 model": label, **check(run)})
    table = markdown(rows, ["top-20 model", "new category recognised", "other images", "top-20 top1 before",
                            "top-20 top1 after"])
    publish("enroll", f"## Enrolling {CATEGORY!r} from {EXAMPLES} even-year examples (bundled sample)\n\n{table}\n")


if __name__ == "__main__":
    main()
