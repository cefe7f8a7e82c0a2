"""Benchmark of metric learning on the bundled sample (even years train, odd years test): kNN accuracy of the
triplet-loss embedding beside the frozen ImageNet features, the seed's numbers beside both; the speed of
building `tailor similar`'s index against the backbone's bare forward speed; and a query against a
100,000-product index.

    python bench/metric.py     # about 5 minutes on 2 CPU cores; writes bench/results/metric.md
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import REPO, ensure_splits, publish, top20_classes  # noqa: E402

COMMAND = ["tailor", "run", "-c", "configs/triplet.gin", "-p", "main.name='bench_triplet'", "--fresh"]
LITE1 = ["tailor", "run", "-c", "configs/triplet.gin", "-p", "metric.backbone='efficientnet_lite1'",
         "-p", "main.name='bench_triplet_lite1'", "--fresh"]
LITE2 = ["tailor", "run", "-c", "configs/triplet.gin", "-p", "metric.backbone='efficientnet_lite2'",
         "-p", "main.name='bench_triplet_lite2'", "--fresh"]
SEED = {"top20": 0.8672, "all": 0.7466, "rare": 0.4916}
IMAGES = 512


def accuracy_table() -> tuple[str, dict]:
    """kNN accuracy of the default run (Lite0) and of the same run on the larger offline Lite1 (240 px) and
    Lite2 (260 px)."""
    runs = {}
    for command in (COMMAND, LITE1, LITE2):
        subprocess.run([sys.executable, "-m", "tailor", *command[1:]], cwd=REPO, check=True, capture_output=True)
        name = command[command.index("--fresh") - 1].split("'")[1]
        runs[name] = json.loads((REPO / "experiments" / name / "results.json").read_text())
    results, lite1, lite2 = runs["bench_triplet"], runs["bench_triplet_lite1"], runs["bench_triplet_lite2"]
    rows = [("frozen ImageNet Lite0 features, kNN", results["knn"]["frozen"]),
            ("frozen Lite0 features whitened within classes, 256-d (no training), kNN", results["knn"]["whitened"]),
            (f"tailor triplet ({results['miner']} mining, projection on frozen Lite0 features from the whitened "
             f"start), kNN", results["knn"]["trained"]),
            ("frozen ImageNet Lite1 (240 px) features, kNN", lite1["knn"]["frozen"]),
            ("frozen Lite1 features whitened within classes (no training), kNN", lite1["knn"]["whitened"]),
            ("tailor triplet, projection on frozen Lite1 features, kNN", lite1["knn"]["trained"]),
            ("frozen ImageNet Lite2 (260 px) features, kNN", lite2["knn"]["frozen"]),
            ("frozen Lite2 features whitened within classes (no training), kNN", lite2["knn"]["whitened"]),
            ("tailor triplet, projection on frozen Lite2 features, kNN", lite2["knn"]["trained"]),
            ("seed: ResNet-50 triplet fine-tune, full catalog (12× the training images)", SEED)]
    lines = ["| embedding | top-20 classes | all classes | rare classes |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['top20']:.4f} | {r['all']:.4f} | {r['rare']:.4f} |" for name, r in rows]
    lines += ["", "Each test product against the training products of its own group only (top 20 or rare), as the "
                  "seed kept them in separate datasets; the same embeddings:", "",
              "| embedding | top-20 classes | all classes | rare classes |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['top20_within']:.4f} | {r['all_within']:.4f} | {r['rare_within']:.4f} |"
              for name, r in rows if "top20_within" in r]
    lines += ["", f"Lite1 run: `{' '.join(LITE1[:6])}` ({lite1['seconds']:.0f} s); "
                  f"Lite2 run: `{' '.join(LITE2[:6])}` ({lite2['seconds']:.0f} s)."]
    return "\n".join(lines) + "\n", results


def unseen_share(results: dict) -> float:
    """The share of the rare-class test rows whose class has no training image."""
    top = top20_classes()
    rare = [c for c in results["per_class"] if c["class"] not in top]
    return sum(c["support"] for c in rare if not c["seen"]) / max(1, sum(c["support"] for c in rare))


def throughput() -> tuple[float, float]:
    """Images per second: the backbone alone on ready tensors, and the whole index build from JPEG files
    (decode, resize, normalise, forward, projection) — both single view, batch 64, same images."""
    from tailor.data.datasets import FashionDataset
    from tailor.data.transforms import DataConfig, eval_transform
    from tailor.models.embedding import load_embedding_net
    from tailor.models.feature_cache import FeatureCache
    from tailor.machine import keep_freed_memory

    keep_freed_memory()
    model = load_embedding_net(REPO / "experiments" / "bench_triplet" / "model.pt").to(memory_format=torch.channels_last)
    transform = eval_transform(DataConfig.from_timm(model.data_config, model.image_size))
    spec = FashionDataset(root_dir=REPO / "data" / "sample", csv_file=REPO / "experiments" / "splits" / "train.csv")
    frame = spec.catalog().frame.head(IMAGES)

    batch = torch.stack([transform(spec.load(None, frame=frame.head(1), progress=False).image(0))] * 64)
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model.backbone(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(IMAGES // 64):
            model.backbone(batch)
        bare = IMAGES / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = spec.load(None, transform, frame=frame, progress=False)
        features = FeatureCache(model.backbone, "bench", repr(transform), flip=False, root=Path(cache)).features(
            data, progress=False)
        with torch.inference_mode():
            model.projection(features[0])
        pipeline = IMAGES / (time.perf_counter() - start)
    return bare, pipeline


def query_latency(n: int = 100_000, dim: int = 256, repeats: int = 50) -> float:
    from tailor.search.index import EmbeddingIndex

    generator = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    index = EmbeddingIndex(vectors, [str(i) for i in range(n)], ["x"] * n, ["x.jpg"] * n, "/")
    queries = F.normalize(torch.randn(repeats, dim, generator=generator), dim=1)
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k=10)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ensure_splits()
    torch.set_num_threads(2)
    table, results = accuracy_table()
    bare, pipeline = throughput()
    latency = query_latency()
    text = (f"## Metric learning, bundled sample (train: {results['train_images']} even-year images; "
            f"test: {results['num_test']} odd-year images)\n\n{table}\n"
            f"kNN: k={results['knn']['k']}, {results['knn']['weighting']} weighting. Rare classes: the test "
            f"products outside the top 20; {unseen_share(results):.1%} of them belong to classes with no "
            f"training image and can never be right. Run: `{' '.join(COMMAND[:4])}` ({results['seconds']:.0f} s, "
            f"{results['epochs']} epochs).\n\n"
            f"## Search speed (EfficientNet-Lite0, {IMAGES} images, batch 64, 2 CPU threads)\n\n"
            f"| what | value |\n|---|---:|\n"
            f"| backbone forward alone, img/s | {bare:.1f} |\n"
            f"| index build from JPEG files (decode + transform + forward + projection), img/s | {pipeline:.1f} |\n"
            f"| index build / bare forward | {pipeline / bare:.0%} |\n"
            f"| one query against 100,000 × 256 embeddings, top 10 (median of 50), ms | {latency:.1f} |\n\n"
            f"The index of a run embeds each image and its mirror image (two forward passes per product), "
            f"so its build takes twice the time per image of the single-view rate above.\n")
    publish("metric", text)


if __name__ == "__main__":
    main()
