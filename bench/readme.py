"""Write the results summary of the documentation site (``docs/results.md``) from the runs' own files: every method on the bundled sample beside
the seed's published numbers, with the command that reproduces each row, and the pictures (confusion
matrix, training curves, t-SNE map) copied to docs/images/. Nothing in the block is typed by hand. A row whose
run is not on this machine keeps the page's current line (measured by an earlier run of this script), so
re-running one benchmark refreshes its rows without the hours the others take; the script lists those rows.

    python bench/transfer.py && python bench/rare.py                                # make the runs
    python bench/metric.py && python bench/fewshot.py
    python bench/attributes.py                                                     # ~50 min on 2 CPU cores
    tailor run -c configs/relation.gin                                            # ~20 min on 2 CPU cores
    tailor run -c configs/relation.gin -p "fewshot.embedding='conv4'" -p "main.name='relation_conv4'"  # ~45 min
    python bench/readme.py                                                         # rewrite the block
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO  # noqa: E402

RUNS = REPO / "experiments"
PAGE = REPO / "docs" / "results.md"
IMAGES = REPO / "docs" / "images"
START, END = "<!-- results:start -->", "<!-- results:end -->"

#: (run folder, method, command, the seed's top-1, top-5 for that row)
CLASSIFIERS = [
    ("bench_transfer", "transfer: class-balanced, calibrated linear probes on EfficientNet-Lite0, -Lite1 and -Lite2, "
     "probabilities averaged, top-20 categories", "tailor run -c configs/transfer.gin", (0.8771, 0.9566)),
    ("bench_transfer_lite0", "transfer, as above on EfficientNet-Lite0 alone",
     "tailor run -c configs/transfer.gin -p \"TransferNet.backbone='efficientnet_lite0'\"", (0.8771, 0.9566)),
    ("bench_finetune_ensemble", "rare categories: the top-20 model fine-tuned on the other categories",
     "tailor run -c configs/finetune.gin -p \"TransferNet.saved_model_path='…/model.pt'\" -p names.enabled=False",
     (0.4941, 0.6298)),
    ("bench_finetune_lite2", "rare categories, as above from a top-20 model on EfficientNet-Lite2 (260 px)",
     "python bench/rare.py", (0.4941, 0.6298)),
]
SEED_KNN = {"top20": 0.8672, "all": 0.7466, "rare": 0.4916}
#: (run folder, backbone, command) of the metric-learning rows
TRIPLET_RUNS = [("bench_triplet", "Lite0", "tailor run -c configs/triplet.gin"),
                ("bench_triplet_lite1", "Lite1 (240 px)", "python bench/metric.py"),
                ("bench_triplet_lite2", "Lite2 (260 px)", "python bench/metric.py")]
LITE1_PROTONET = "tailor run -c configs/protonet.gin -p \"fewshot.backbone='efficientnet_lite1'\""
LITE2_PROTONET = "tailor run -c configs/protonet.gin -p \"fewshot.backbone='efficientnet_lite2'\""
FEWSHOT = [
    ("bench_protonet", "cl2n", "Prototypical Network, frozen Lite0 (CL2N), no training", "tailor run -c configs/protonet.gin"),
    ("bench_protonet", "protonet, trained", "Prototypical Network on Lite0, trained episodically from a whitened start",
     "tailor run -c configs/protonet.gin"),
    ("bench_protonet", "calibrated", "calibrated prototypes, Mahalanobis distance, frozen Lite0, no training",
     "tailor run -c configs/protonet.gin"),
    ("bench_protonet_lite1", "protonet, trained", "Prototypical Network on Lite1 at 240 px, trained from a whitened start",
     LITE1_PROTONET),
    ("bench_protonet_lite1", "calibrated", "calibrated prototypes, Mahalanobis distance, frozen Lite1 at 240 px",
     LITE1_PROTONET),
    ("bench_protonet_lite2", "cl2n", "Prototypical Network, frozen Lite2 at 260 px (CL2N), no training", LITE2_PROTONET),
    ("bench_protonet_lite2", "protonet, trained", "Prototypical Network on Lite2 at 260 px, trained from a whitened start",
     LITE2_PROTONET),
    ("bench_protonet_lite2", "calibrated", "calibrated prototypes, Mahalanobis distance, frozen Lite2 at 260 px",
     LITE2_PROTONET),
    ("relation", "relation, trained", "Relation Network on frozen Lite0 feature maps", "tailor run -c configs/relation.gin"),
    ("relation_conv4", "relation, trained", "Relation Network, the paper's Conv4 trained from scratch at 84 px",
     "tailor run -c configs/relation.gin -p \"fewshot.embedding='conv4'\""),
]


class MissingRun(LookupError):
    """A run whose results.json is not on this machine."""


def load(run: str) -> dict:
    path = RUNS / run / "results.json"
    if not path.is_file():
        raise MissingRun(str(path))
    return json.loads(path.read_text())


class Rows:
    """The block's table rows: made from the runs, or — for a run that is missing here — the page's current
    line that starts with the same first cell."""

    def __init__(self, current: str):
        self.current = current.splitlines()
        self.kept: list[str] = []

    def line(self, first_cell: str, make: Callable[[], str]) -> str:
        try:
            return make()
        except MissingRun as missing:
            old = next((ln for ln in self.current if ln.startswith(f"| {first_cell}")), None)
            if old is None:
                raise SystemExit(f"{missing}: missing, and the page has no row for {first_cell!r} to keep — "
                                 f"make the run first (see the docstring of bench/readme.py)") from None
            self.kept.append(f"{first_cell.rstrip(' (|')}  ({missing})")
            return old


def picture(run: str, name: str, alt: str) -> str:
    source, target = RUNS / run / name, IMAGES / f"{run}_{name}"
    if source.is_file():
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return f"![{alt}]({target.relative_to(PAGE.parent).as_posix()})" if target.is_file() else ""


def block(rows: Rows) -> str:
    lines = ["### Every method at a glance (generated by `python bench/readme.py` from the runs' results.json)", "",
             "| method | top-1 | top-5 | the seed's top-1 / top-5 | command |", "|---|---:|---:|---:|---|"]
    for run, method, command, seed in CLASSIFIERS:
        def classifier_line(run=run, method=method, command=command, seed=seed) -> str:
            r = load(run)
            return (f"| {method} ({r['num_test']} test images) | {r['top1']:.4f} | {r['top5']:.4f} | "
                    f"{seed[0]:.4f} / {seed[1]:.4f} | `{command}` |")
        lines.append(rows.line(f"{method} (", classifier_line))
    lines += ["", "| kNN (k = 5) on | top-20 classes | all classes | rare classes | command |", "|---|---:|---:|---:|---|"]
    for run, backbone, command in TRIPLET_RUNS:
        for key, name in (("frozen", f"frozen ImageNet {backbone} features"),
                          ("whitened", f"frozen {backbone} features whitened within classes, no training"),
                          ("trained", f"tailor triplet embedding on {backbone}")):
            def knn_line(run=run, key=key, name=name, command=command) -> str:
                g = load(run)["knn"][key]
                return f"| {name} | {g['top20']:.4f} | {g['all']:.4f} | {g['rare']:.4f} | `{command}` |"
            lines.append(rows.line(f"{name} |", knn_line))
    lines.append(f"| the seed (ResNet-50, full catalog) | {SEED_KNN['top20']:.4f} | {SEED_KNN['all']:.4f} | "
                 f"{SEED_KNN['rare']:.4f} | |")
    lines += ["", "| kNN (k = 5), each test product against its own group's training products only (the seed's "
              "separate top-20 and rare datasets) | top-20 classes | all classes | rare classes | command |",
              "|---|---:|---:|---:|---|"]
    for run, backbone, command in TRIPLET_RUNS:
        for key, name in (("whitened", f"own group: frozen {backbone} features whitened within classes"),
                          ("trained", f"own group: tailor triplet embedding on {backbone}")):
            def within_line(run=run, key=key, name=name, command=command) -> str:
                g = load(run)["knn"][key]
                return (f"| {name} | {g['top20_within']:.4f} | {g['all_within']:.4f} | {g['rare_within']:.4f} | "
                        f"`{command}` |")
            lines.append(rows.line(f"{name} |", within_line))
    lines += ["", "| few-shot, 5-way, 600 novel-class episodes | 1-shot | 5-shot | command |", "|---|---:|---:|---|"]
    for run, key, name, command in FEWSHOT:
        def fewshot_line(run=run, key=key, name=name, command=command) -> str:
            scores = load(run)["fewshot"]
            cell = lambda k: scores.get(f"5-way {k}-shot ({key})")  # noqa: E731
            text = [f"{c['accuracy']:.4f} ± {c['ci95']:.4f}" if c else "–" for c in (cell(1), cell(5))]
            return f"| {name} | {text[0]} | {text[1]} | `{command}` |"
        lines.append(rows.line(f"{name} |", fewshot_line))
    lines.append("| the relation-net notebook (its own street-style data) | 0.45 | | |")
    lines += attribute_lines(rows)
    pictures = [picture("bench_transfer", "confusion.png", "confusion matrix of the transfer run"),
                picture("bench_triplet", "tsne.png", "t-SNE map of the triplet embedding"),
                picture("bench_triplet", "curves.png", "triplet training curves"),
                picture("relation", "curves.png", "Relation Network episodic training curves")]
    lines += [""] + [p + "\n" for p in pictures if p]
    return "\n".join(lines).rstrip() + "\n"


ATTRIBUTES = ("articleType", "baseColour", "gender", "season", "usage")


def attribute_lines(rows: Rows) -> list[str]:
    """Top-1 per attribute: the frozen probes (the default config), and 2-epoch fine-tuning of one
    multi-task model against one model per attribute (bench/attributes.py)."""
    lines = ["", "| attributes, top-1 on 1,010 odd-year products | " + " | ".join(ATTRIBUTES) + " | command |",
             "|---|" + "---:|" * len(ATTRIBUTES) + "---|"]
    variants = [("one model, frozen-feature probe per head, colour from the photo's foreground too (default)", {a: "bench_attr_probe" for a in ATTRIBUTES},
                 "tailor run -c configs/attributes.gin"),
                ("one multi-task model, 2 epochs fine-tuning (before the colour descriptor)", {a: "bench_attr_multi" for a in ATTRIBUTES},
                 "python bench/attributes.py"),
                ("five single-task models, 2 epochs fine-tuning each (before the colour descriptor)", {a: f"bench_attr_{a}" for a in ATTRIBUTES},
                 "python bench/attributes.py")]
    for name, runs, command in variants:
        def attribute_line(name=name, runs=runs, command=command) -> str:
            cells = " | ".join(f"{load(runs[a])['attribute_results'][a]['top1']:.4f}" for a in ATTRIBUTES)
            return f"| {name} | {cells} | `{command}` |"
        lines.append(rows.line(f"{name} |", attribute_line))
    return lines


def main() -> None:
    text = PAGE.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{PAGE.relative_to(REPO)} has no {START} … {END} markers")
    rows = Rows(text[text.index(START):text.index(END)])
    generated = block(rows)
    PAGE.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{generated}{END}",
                             text, flags=re.S))
    print(generated)
    if rows.kept:
        print("kept the page's current line for these rows (their runs are not here):\n  " + "\n  ".join(rows.kept))


if __name__ == "__main__":
    main()
