"""Benchmark of sharing: one multi-attribute model against one single-task model per attribute, trained the
same way (LP-FT, same epochs, same data, same seed) on the bundled sample, scored on its odd years.

    python bench/attributes.py                 # about 25 minutes on 2 CPU cores
    python bench/attributes.py --epochs 1      # a smaller budget
    python bench/attributes.py --reuse         # reuse finished runs

The frozen-feature linear probes (``main.num_epochs=0``) are the baseline: with a frozen backbone the heads
are independent, so that row is the same for single- and multi-task models. Prints markdown tables and
writes them to bench/results/attributes.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, ensure_splits, markdown, publish  # noqa: E402

COLUMNS = ("articleType", "baseColour", "gender", "season", "usage")
CONFIG = ["tailor", "run", "-c", "configs/attributes.gin"]


def run(name: str, bindings: list[str], reuse: bool) -> dict:
    results_file = REPO / "experiments" / name / "results.json"
    if not (reuse and results_file.is_file()):
        args = CONFIG + ["-p", f"main.name='{name}'"] + [a for b in bindings for a in ("-p", b)] + ["--fresh"]
        print("$", " ".join(args), flush=True)
        subprocess.run(args, cwd=REPO, check=True)
    return json.loads(results_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of every model (default 2)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished experiments/bench_attr_* runs")
    args = parser.parse_args()
    ensure_splits()
    columns = "[" + ", ".join(f"'{c}'" for c in COLUMNS) + "]"
    probe = run("bench_attr_probe", [f"attributes.columns={columns}", "main.num_epochs=0"], args.reuse)
    multi = run("bench_attr_multi", [f"attributes.columns={columns}", f"main.num_epochs={args.epochs}"], args.reuse)
    single = {c: run(f"bench_attr_{c}", [f"attributes.columns=['{c}']", f"main.num_epochs={args.epochs}"], args.reuse)
              for c in COLUMNS}

    rows = []
    for c in COLUMNS:
        p, m, s = (r["attribute_results"][c] for r in (probe, multi, single[c]))
        rows.append({"attribute": c, "classes": p["classes"], "test images": m["num_test"],
                     "frozen probe top-1": p["top1"], "single-task top-1": s["top1"], "multi-task top-1": m["top1"],
                     "gain": f"{m['top1'] - s['top1']:+.4f}",
                     "single-task top-5": s["top5"], "multi-task top-5": m["top5"]})
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    rows.append({"attribute": "**mean**", "frozen probe top-1": mean("frozen probe top-1"),
                 "single-task top-1": mean("single-task top-1"), "multi-task top-1": mean("multi-task top-1"),
                 "gain": f"{mean('multi-task top-1') - mean('single-task top-1'):+.4f}"})
    single_seconds = sum(r["seconds"] for r in single.values())
    cost = [{"model": f"{len(COLUMNS)} single-task models", "training + evaluation s": single_seconds,
             "forward passes per product": len(COLUMNS)},
            {"model": "1 multi-task model", "training + evaluation s": multi["seconds"], "forward passes per product": 1}]
    text = (f"## Attributes: one multi-task model against one model per attribute\n\n"
            f"Bundled sample: {multi['train_images']} even-year products train (+{multi['val_images']} validation), "
            f"odd years test; every model LP-FT with {args.epochs} fine-tuning epochs, seed {multi['seed']} "
            f"(`{' '.join(CONFIG)}`, one column per single-task run). Top-5 only where an attribute has more "
            f"than five classes. The frozen probes need no checkpoint choice, so they train on all "
            f"{probe['train_images']} even-year products.\n\n"
            + markdown(rows, ["attribute", "classes", "test images", "frozen probe top-1", "single-task top-1",
                              "multi-task top-1", "gain", "single-task top-5", "multi-task top-5"])
            + "\n\n" + markdown(cost, ["model", "training + evaluation s", "forward passes per product"]) + "\n")
    publish("attributes", text)


if __name__ == "__main__":
    main()
