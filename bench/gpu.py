"""What tailor does with a GPU, in one table, within a lent machine's minutes: the default transfer run on the
bundled sample end to end, the feature pass of EfficientNet-Lite0 and of the three-backbone ensemble beside
their bare forward (bf16 autocast, channels_last, the batch already on the device), and fine-tuning
throughput (Lightning, bf16 mixed precision) — each figure measured in this run.

    python bench/gpu.py                 # on the GPU machine: about 5 minutes on one H100
    python bench/gpu.py --small         # any machine, CPU included: a few images, so it cannot rot (a test runs it)

Prints the device's name with the table and keeps it in bench/results/gpu.md (not with --small).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, markdown, publish  # noqa: E402

ENSEMBLE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few images at 64 px: checks the script, measures little")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    args = parser.parse_args(argv)

    import torch

    import tailor
    from tailor import distributed
    from tailor.machine import keep_freed_memory

    keep_freed_memory()
    runtime = distributed.Runtime.local(args.device)
    device = runtime.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    splits = tailor.year_splits(tailor.read_catalog(REPO / "data" / "styles.csv", root=REPO / "data" / "sample"),
                                only_present=True)
    train, test = splits.train_top, splits.test_top
    size = None
    if args.small:  # three categories, a dozen photos each, small inputs
        keep = train.counts().index[:3]
        train = train.subset(train.frame.index[train.frame["label"].isin(keep)][:36])
        test = test.subset(test.frame.index[test.frame["label"].isin(keep)][:12])
        size = 64
    rows = []
    work = Path(tempfile.mkdtemp(prefix="tailor-gpu-"))

    started = time.perf_counter()
    model = tailor.fit(train, "transfer", test=test, out=work / "transfer", device=args.device, progress=False,
                       **({"backbone": "efficientnet_lite0", "image_size": size} if args.small else {}))
    rows.append({"measure": "transfer run end to end (tailor.fit, default settings)", "images": len(train) + len(test),
                 "seconds": time.perf_counter() - started, "note": f"top-1 {model.results.top1:.4f}"})

    for backbones in (ENSEMBLE[:1], ENSEMBLE):
        label = "Lite0" if len(backbones) == 1 else "Lite0+1+2 ensemble"
        rows += feature_pass(label, backbones, train, runtime, size, repeats=1 if args.small else 3)

    rows.append(fine_tuning(train, work, args.device, size, epochs=1 if args.small else 2))
    for row in rows:
        row["images/s"] = row["images"] / row["seconds"] if row["seconds"] else None
    table = (f"device: {name} (torch {torch.__version__})\n\n"
             + markdown(rows, ["measure", "images", "seconds", "images/s", "note"]) + "\n")
    if args.small:
        print(table)  # a check of the script, not a result to keep
    else:
        publish("gpu", table)
    return table


def feature_pass(label: str, backbones, catalog, runtime, size: int | None, repeats: int) -> list[dict]:
    """Pooled features of ``catalog``'s images as a run computes them (decoding, batching, copies, bf16 on a GPU),
    then the same network's bare forward on one batch already on the device."""
    import torch

    from tailor.data.datasets import FashionDataset
    from tailor.data.transforms import DataConfig, eval_transform
    from tailor.models.ensemble import EnsembleNet
    from tailor.models.features import extract_features
    from tailor.models.heads import TransferNet
    from tailor.runtime import autocast, prepare_model, to_device

    classes = catalog.classes
    members = [TransferNet(classes, backbone=b, image_size=size) for b in backbones]
    model = members[0] if len(members) == 1 else EnsembleNet(members)
    extractor = model.feature_extractor()
    transform = eval_transform(DataConfig.from_timm(model.data_config, model.image_size))
    data = FashionDataset(catalog.root, in_memory=True).load(classes, transform, frame=catalog.frame, progress=False)
    extract_features(extractor, data, flip=False, progress=False, runtime=runtime)  # warm-up: kernels, allocator
    started = time.perf_counter()
    for _ in range(repeats):
        extract_features(extractor, data, flip=False, progress=False, runtime=runtime)
    streamed = {"measure": f"feature pass, {label}", "images": len(data) * repeats,
                "seconds": time.perf_counter() - started, "note": "decoded in memory, batches of 64"}

    device = runtime.device
    net = prepare_model(extractor, device)
    batch = to_device(torch.stack([data[i][0] for i in range(min(64, len(data)))]), device)
    with torch.inference_mode(), autocast(device):
        net(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started, count = time.perf_counter(), 0
        while count < len(data) * repeats:
            net(batch)
            count += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    bare = {"measure": f"bare forward, {label}", "images": count, "seconds": time.perf_counter() - started,
            "note": "bf16 autocast" if device.type == "cuda" else "fp32"}
    return [streamed, bare]


def fine_tuning(catalog, work: Path, device: str, size: int | None, epochs: int) -> dict:
    """Images per second while the whole network trains (the probe first, then ``epochs`` of fine-tuning)."""
    import pandas as pd

    import tailor

    run = tailor.fit(catalog, "transfer", out=work / "finetune", device=device, progress=False,
                     backbone="efficientnet_lite0", epochs=epochs, image_size=size, val_fraction=0.1)
    steps = pd.read_csv(run.folder / "metrics.csv")
    rates = steps["img_s"].dropna() if "img_s" in steps else pd.Series(dtype=float)
    trained = int(run.results["steps"]) * 32
    median = float(rates.iloc[1:].median()) if len(rates) > 1 else float(rates.median()) if len(rates) else 0.0
    return {"measure": "fine-tuning Lite0 (LP-FT, batch 32)", "images": trained,
            "seconds": trained / median if median else 0.0,
            "note": f"{run.results['steps']} steps, median of the logged steps"}


if __name__ == "__main__":
    main()
