"""Deployable models: the default ensemble and Lite0 alone, in torch fp32, ONNX fp32 and ONNX int8, on the
sample's odd-year top-20 test images — top-1, top-5 and images/s, each measured in the same process with the
same threads, end to end as ``tailor predict`` runs (decoding, preprocessing, the mirror-image average).

    python bench/export.py            # trains the two runs if missing (about 10 minutes), then measures
    python bench/export.py --reuse    # reuse the bench_transfer runs of bench/transfer.py when complete
    python bench/export.py --choose   # also the int8 settings compared on the years-swapped runs (validation)

The int8 settings (calibration method, first convolution kept in fp32 or not) are chosen on the years-swapped
direction (odd years train, even years test): ``--choose`` prints that comparison; the test split is read once,
for the table. Prints markdown and writes bench/results/export.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, SPLITS, ensure_splits, markdown, publish, top20_classes  # noqa: E402
from transfer import LITE0_ONLY, swapped_splits, tailor_run  # noqa: E402

OUT = REPO / "experiments" / "bench_export"
RUNS = (("Lite0 + Lite1 + Lite2 ensemble (default)", "bench_transfer", ()),
        ("Lite0", "bench_transfer_lite0", (LITE0_ONLY,)))


def export(run: Path, out: Path, *extra: str) -> Path:
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "tailor", "export", str(run), str(out), *extra], cwd=REPO, check=True)
    return out


def test_images(csv: Path) -> tuple[list[Path], list[str]]:
    frame = pd.read_csv(csv)
    frame = frame[frame["articleType"].isin(top20_classes())]
    return [REPO / "data" / "sample" / "images" / f"{i}.jpg" for i in frame["id"]], list(frame["articleType"])


def measure(model: str | Path, paths: list[Path], labels: list[str]) -> dict:
    """``tailor predict``'s path over ``paths``: top-1, top-5 and images/s (the second of two passes)."""
    from tailor.inference import load_predictor

    predictor = load_predictor(model)
    list(predictor.predict_files(paths[:64], k=5))  # warm-up: first-call allocations, ORT's kernel choice
    started = time.perf_counter()
    predictions = list(predictor.predict_files(paths, k=5))
    seconds = time.perf_counter() - started
    top1 = np.mean([p.labels[0] == y for p, y in zip(predictions, labels)])
    top5 = np.mean([y in p.labels for p, y in zip(predictions, labels)])
    return {"top1": float(top1), "top5": float(top5), "img/s": len(paths) / seconds}


def table(runs: list[tuple[str, Path]], paths: list[Path], labels: list[str], variants: dict[str, tuple]) -> list[dict]:
    rows = []
    for label, run in runs:
        OUT.mkdir(parents=True, exist_ok=True)
        models = {"torch fp32": run}
        for name, extra in variants.items():
            models[name] = export(run, OUT / f"{run.name}-{name.replace(' ', '_')}.onnx", *extra)
        base = None
        for fmt, model in models.items():
            result = measure(model, paths, labels)
            base = base or result
            rows.append({"model": label, "format": fmt, **result,
                         "speed-up": f"{result['img/s'] / base['img/s']:.2f}×",
                         "top-1 change (points)": f"{100 * (result['top1'] - base['top1']):+.2f}"})
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="reuse complete bench_transfer runs")
    parser.add_argument("--choose", action="store_true", help="compare int8 settings on the years-swapped runs")
    args = parser.parse_args()
    from tailor.machine import keep_freed_memory

    keep_freed_memory()
    ensure_splits()
    columns = ["model", "format", "top1", "top5", "img/s", "speed-up", "top-1 change (points)"]
    lines = []
    if args.choose:
        swapped = swapped_splits()
        run = REPO / "experiments" / "bench_transfer_lite0_swapped"
        tailor_run(args.reuse, run.name, swapped + (LITE0_ONLY,))
        paths, labels = test_images(SPLITS / "train_top20.csv")
        settings = {"int8 minmax": ("--quantize", "int8"),
                    "int8 percentile": ("--quantize", "int8", "-p", "export.quantize_int8.method='percentile'"),
                    "int8 entropy": ("--quantize", "int8", "-p", "export.quantize_int8.method='entropy'")}
        lines += ["Choosing the int8 settings on the years-swapped direction (Lite0, even-year top-20 images):", "",
                  markdown(table([("Lite0 (swapped)", run)], paths, labels, settings), columns), ""]
    runs = []
    for label, name, extra in RUNS:
        tailor_run(args.reuse, name, extra)
        runs.append((label, REPO / "experiments" / name))
    paths, labels = test_images(SPLITS / "test.csv")
    rows = table(runs, paths, labels, {"onnx fp32": (), "onnx int8": ("--quantize", "int8")})
    lines += [markdown(rows, columns), "",
              f"{len(paths)} odd-year top-20 test images of the bundled sample; {os.cpu_count()} CPU cores, "
              f"batches of 32, decoding and preprocessing included (tailor predict's path)."]
    publish("export", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
