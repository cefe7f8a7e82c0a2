"""Benchmark of few-shot classification on the bundled sample's novel categories (those outside the top 20):
frozen EfficientNet-Lite0 prototypes, raw (the plain baseline) and CL2N-normalised, 600 episodes each.

    python bench/fewshot.py     # about 1 minute on 2 CPU cores; writes bench/results/fewshot.md
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tailor.recipes.fewshot import fewshot_table  # noqa: E402

COMMAND = ["tailor", "run", "-c", "configs/protonet.gin", "-p", "main.name='bench_protonet'", "--fresh"]


def main() -> None:
    if not (REPO / "experiments" / "splits" / "train_top20.csv").is_file():
        subprocess.run([sys.executable, "-m", "tailor", "splits", "data/styles.csv", "experiments/splits",
                        "--images", "data/sample/images"], cwd=REPO, check=True, capture_output=True)
    subprocess.run(COMMAND, cwd=REPO, check=True, capture_output=True)
    results = json.loads((REPO / "experiments" / "bench_protonet" / "results.json").read_text())
    seconds = max(r["seconds"] for r in results["fewshot"].values())
    text = (f"## Few-shot, novel categories of the bundled sample ({results['novel_images']} images; "
            f"base: {results['base_images']} top-20 training images)\n\n{fewshot_table(results)}\n"
            f"Command: `{' '.join(COMMAND[:4])}`. Each 600-episode evaluation on cached features took at most "
            f"{seconds:.2f} s.\n")
    print(text)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fewshot.md").write_text(text)


if __name__ == "__main__":
    main()
