"""Benchmark of few-shot classification on the bundled sample's novel categories (those outside the top 20):
training-free prototypes on the frozen backbone, raw (the plain baseline), CL2N-normalised, and calibrated
(compared by Mahalanobis distance), then the Prototypical Network trained episodically on the top-20 categories
from a whitened start — for the default
EfficientNet-Lite0 and the larger offline EfficientNet-Lite1 (240 px) and -Lite2 (260 px); 600 episodes each. (The Relation
Network takes about 20 minutes on 2 CPU cores: `tailor run -c configs/relation.gin`; its numbers are in the
README.)

    python bench/fewshot.py     # about 5 minutes on 2 CPU cores (12 the first time: Lite1/2 features);
                                # writes bench/results/fewshot.md
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, ensure_splits, publish  # noqa: E402
from tailor.recipes.fewshot import fewshot_table  # noqa: E402

#: run folder → the README's command for it
RUNS = {"bench_protonet": ["tailor", "run", "-c", "configs/protonet.gin"],
        "bench_protonet_lite1": ["tailor", "run", "-c", "configs/protonet.gin",
                                 "-p", "fewshot.backbone='efficientnet_lite1'"],
        "bench_protonet_lite2": ["tailor", "run", "-c", "configs/protonet.gin",
                                 "-p", "fewshot.backbone='efficientnet_lite2'"]}
BACKBONES = {"bench_protonet": "Lite0", "bench_protonet_lite1": "Lite1 240 px", "bench_protonet_lite2": "Lite2 260 px"}


def main() -> None:
    ensure_splits()
    merged: dict = {"fewshot": {}}
    lines = []
    for run, command in RUNS.items():
        subprocess.run(command + ["-p", f"main.name='{run}'", "--fresh"], cwd=REPO, check=True, capture_output=True)
        results = json.loads((REPO / "experiments" / run / "results.json").read_text())
        merged["fewshot"].update({k.replace(")", f", {BACKBONES[run]})"): v for k, v in results["fewshot"].items()})
        lines.append(f"- `{' '.join(command)}`: {results['train_episodes']} training episodes, "
                     f"{results['seconds']:.0f} s in all; best validation accuracy {results['best_val_acc']:.4f}")
    seconds = max(r["seconds"] for r in merged["fewshot"].values())
    text = (f"## Few-shot, novel categories of the bundled sample ({results['novel_images']} images; "
            f"base: {results['base_images']} top-20 training images)\n\n{fewshot_table(merged)}\n"
            + "\n".join(lines) + f"\n\nEach 600-episode evaluation on cached features took at most {seconds:.2f} s.\n")
    publish("fewshot", text)


if __name__ == "__main__":
    main()
