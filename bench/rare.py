"""Benchmark of the seed's second stage on the bundled sample: the top-20 model fine-tuned on the rare
categories (``train_other.csv``: even years, every category outside the catalog's top 20), scored on the
odd-year products of those categories — beside the issue's yardstick, logistic regression on frozen Lite0
features of the same training images, run here in the same process.

    python bench/rare.py            # about 20 minutes on 2 CPU cores; writes bench/results/rare.md
    python bench/rare.py --reuse    # reuse finished experiments/bench_* runs

Test products of categories with no training image count as errors in every row, as in the seed (the fine-tuning
runs with ``names.enabled=False``: categories by name are measured by ``bench/zeroshot.py``); the seen-category
columns say how the methods do where an answer is possible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, SPLITS, frozen_logistic_regression, markdown, publish, start, top20_classes  # noqa: E402

SEED_RESULT = {"top1": 0.4941, "top5": 0.6298}  # the seed's README: ResNet-50, full catalog
TARGET = {"top1": 0.56, "top5": 0.76}
#: (name, backbone or None for the config's default ensemble, run-name key): each through the README's two commands
CHAINS = [("Lite0 + Lite1 + Lite2 ensemble (default)", None, "ensemble"), ("Lite0", "efficientnet_lite0", "lite0"),
          ("Lite1 (240 px)", "efficientnet_lite1", "lite1"), ("Lite2 (260 px)", "efficientnet_lite2", "lite2")]


def rare_data():
    """The even-year rare-category training images and the odd-year test products outside the top 20."""
    from tailor.data.datasets import FashionDataset
    from tailor.data.transforms import DataConfig, eval_transform

    transform = eval_transform(DataConfig(224, (0.5,) * 3, (0.5,) * 3))
    root = REPO / "data" / "sample"
    train = FashionDataset(root, SPLITS / "train_other.csv").load(None, transform, progress=False)
    top = top20_classes()
    spec = FashionDataset(root, SPLITS / "test.csv")
    frame = spec.catalog().frame
    test = spec.load(train.classes, transform, frame=frame[~frame["label"].isin(top)], progress=False)
    return train, test


def tailor_chain(label: str, backbone: str | None, key: str, reuse: bool) -> dict:
    """``configs/transfer.gin`` then ``configs/finetune.gin`` from its model, as the README shows them."""
    top20, rare = f"bench_rare_top20_{key}", f"bench_finetune_{key}"
    transfer = ["tailor", "run", "-c", "configs/transfer.gin", "-p", f"main.name='{top20}'"]
    if backbone:
        transfer += ["-p", f"TransferNet.backbone='{backbone}'"]
    finetune = ["tailor", "run", "-c", "configs/finetune.gin", "-p", f"main.name='{rare}'",
                "-p", f"TransferNet.saved_model_path='experiments/{top20}/model.pt'", "-p", "names.enabled=False"]
    for command, run in ((transfer, top20), (finetune, rare)):
        if not (reuse and (REPO / "experiments" / run / "results.json").is_file()):
            subprocess.run(command + ["--fresh"], cwd=REPO, check=True, capture_output=True)
    results = json.loads((REPO / "experiments" / rare / "results.json").read_text())
    first = json.loads((REPO / "experiments" / top20 / "results.json").read_text())
    return {"method": f"tailor: the {label} top-20 model, fine-tuned (configs/finetune.gin)", **_row(results),
            "top20_top1": first["top1"], "label": label, "seconds": results.get("seconds")}


def _row(result: dict) -> dict:
    return {key: result[key] for key in ("top1", "top5", "seen_top1", "seen_top5", "num_test")}


def main() -> None:
    args = start(__doc__.splitlines()[0], "reuse finished experiments/bench_* runs")
    train, test = rare_data()
    baseline = frozen_logistic_regression(train, test).as_dict()
    rows = [{"method": "logistic regression on frozen Lite0 features (the issue's yardstick)", **_row(baseline)}]
    rows += [tailor_chain(label, backbone, key, args.reuse) for label, backbone, key in CHAINS]
    rows.append({"method": "target", **TARGET})
    rows.append({"method": "seed: ResNet-50 fine-tune, full catalog (20× the training images)", **SEED_RESULT})
    table = markdown(rows, ["method", "top1", "top5", "seen_top1", "seen_top5", "num_test", "top20_top1"])
    unseen = baseline["unseen_fraction"]
    timings = ", ".join(f"{r['label']} {r['seconds']:.0f} s" for r in rows if r.get("seconds"))
    text = (f"## Rare categories (bundled sample: {len(train)} even-year training images in {len(train.classes)} "
            f"categories; {len(test)} odd-year test images)\n\n{table}\n\n"
            f"{unseen:.1%} of the test images belong to categories with no training image; they count as errors, "
            f"which caps top-1 and top-5 at {1 - unseen:.4f}. The fine-tuning runs took {timings} "
            f"(2 CPU threads). `top20_top1`: the first stage's own score on the odd-year top-20 products, for "
            f"choosing a backbone.\n")
    publish("rare", text)


if __name__ == "__main__":
    main()
