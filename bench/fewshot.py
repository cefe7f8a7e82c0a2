"""Benchmark of few-shot classification on the bundled sample's novel categories (those outside the top 20):
frozen EfficientNet-Lite0 prototypes, raw (the plain baseline) and CL2N-normalised, and a Prototypical Network
trained episodically on the top-20 categories; 600 episodes each. (The Relation Network takes about 20 minutes
on 2 CPU cores: `tailor run -c configs/relation.gin`; its numbers are in the README.)

    python bench/fewshot.py     # about 2 minutes on 2 CPU cores; writes bench/results/fewshot.md
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, ensure_splits, publish  # noqa: E402
from tailor.recipes.fewshot import fewshot_table  # noqa: E402

COMMAND = ["tailor", "run", "-c", "configs/protonet.gin", "-p", "main.name='bench_protonet'", "--fresh"]
TRAINED = ["tailor", "run", "-c", "configs/relation.gin", "-p", "fewshot.method='protonet'",
           "-p", "main.name='bench_protonet_trained'", "--fresh"]


def main() -> None:
    ensure_splits()
    subprocess.run(COMMAND, cwd=REPO, check=True, capture_output=True)
    subprocess.run(TRAINED, cwd=REPO, check=True, capture_output=True)
    results = json.loads((REPO / "experiments" / "bench_protonet" / "results.json").read_text())
    trained = json.loads((REPO / "experiments" / "bench_protonet_trained" / "results.json").read_text())
    results["fewshot"].update({k: v for k, v in trained["fewshot"].items() if "trained" in k})
    seconds = max(r["seconds"] for r in results["fewshot"].values())
    text = (f"## Few-shot, novel categories of the bundled sample ({results['novel_images']} images; "
            f"base: {results['base_images']} top-20 training images)\n\n{fewshot_table(results)}\n"
            f"Commands: `{' '.join(COMMAND[:4])}`; trained: `{' '.join(TRAINED[:6])}` "
            f"({trained['train_episodes']} training episodes, {trained['seconds']:.0f} s). Each 600-episode evaluation on cached features took at most "
            f"{seconds:.2f} s.\n")
    publish("fewshot", text)


if __name__ == "__main__":
    main()
