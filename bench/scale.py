"""Catalog scale: the feature pass on full-size photos, streamed through DataLoader workers or decoded into
memory first, beside the backbone's bare forward speed, with each configuration's peak memory.

    python bench/scale.py                      # N = 5,000 and 20,000 (about 40 minutes on 2 CPU cores)
    python bench/scale.py --sizes 2000 8000    # other catalog sizes
    python bench/scale.py --sizes 5000 --workers 0 --repeat 3 --no-sample --name scale_5000  # best of 3, in turns

The synthetic catalog is made from the bundled sample: every image re-encoded at 1800×2400 as a JPEG (the
size of the Kaggle catalog's full-size photos), and its rows replicated to N with hard links, labels kept.
Each configuration runs in a fresh process (EfficientNet-Lite0, 224 px, no mirror view, batches of 64,
decoded with ``FashionDataset``'s defaults: longer side 320, JPEG draft scale covering 224); streaming with 0
workers decodes each batch in threads of the process (what ``num_workers='auto'`` does on a CPU);
peak memory is the largest proportional set size (PSS: shared pages split between the processes that share
them) summed over the process and its DataLoader workers, sampled every 0.2 s. The 224-px rows run the same
pass on the bundled sample itself. Prints markdown and writes bench/results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, markdown, publish  # noqa: E402

SAMPLE = REPO / "data" / "sample"
DATA = REPO / "experiments" / "bench_scale"
FULL_SIZE = (1800, 2400)  # width × height of the Kaggle catalog's full-size photos
BACKBONE = "efficientnet_lite0"


def _reencode(job: tuple[str, str]) -> None:
    from PIL import Image

    source, target = job
    if not Path(target).is_file():
        with Image.open(source) as img:
            img.convert("RGB").resize(FULL_SIZE, Image.BICUBIC).save(target, quality=90)


def full_size_sources() -> pd.DataFrame:
    """The sample's rows, each image re-encoded at full size once (kept for later runs)."""
    styles = pd.read_csv(SAMPLE / "styles.csv")
    folder = DATA / "full_size"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(SAMPLE / "images" / f"{i}.jpg"), str(folder / f"{i}.jpg")) for i in styles["id"]]
    missing = [j for j in jobs if not Path(j[1]).is_file()]
    if missing:
        print(f"re-encoding {len(missing)} sample images at {FULL_SIZE[0]}×{FULL_SIZE[1]}…", file=sys.stderr)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_reencode, missing, chunksize=32))
    return styles


def catalog(n: int) -> Path:
    """A catalog of ``n`` full-size rows: ``catalog_<n>/styles.csv`` and hard links ``images/<id>.jpg``."""
    styles = full_size_sources()
    root = DATA / f"catalog_{n}"
    if (root / "styles.csv").is_file():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        row = styles.iloc[k % len(styles)].copy()
        new_id = int(row["id"]) if k < len(styles) else 10_000_000 + k
        link = root / "images" / f"{new_id}.jpg"
        if not link.exists():
            os.link(DATA / "full_size" / f"{int(row['id'])}.jpg", link)
        row["id"] = new_id
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "styles.csv", index=False)
    return root


# --- one configuration, in its own process ---------------------------------------------------------------

def one(mode: str, root: str, workers: int) -> dict:
    """The feature pass as tailor runs it (``stream`` or ``memory``), or the bare forward (``bare``)."""
    import torch

    from tailor.data.datasets import FashionDataset
    from tailor.data.transforms import DataConfig, eval_transform
    from tailor.models.backbones import backbone_data_config, create_backbone
    from tailor.models.features import extract_features
    from tailor.machine import keep_freed_memory

    keep_freed_memory()
    model = create_backbone(BACKBONE).eval().to(memory_format=torch.channels_last)
    transform = eval_transform(DataConfig.from_timm(backbone_data_config(model)))
    spec = FashionDataset(root, Path(root) / "styles.csv", in_memory=(mode == "memory"))
    if mode == "bare":  # the forward alone, on tensors already decoded and transformed
        batch = torch.stack([transform(spec.load(None, progress=False).image(i)) for i in range(64)])
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            model(batch)
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < 30:
                model(batch)
                count += len(batch)
        return {"images": count, "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    data = spec.load(None, transform, progress=False)
    features = extract_features(model, data, flip=False, progress=False, num_workers=workers)
    seconds = time.perf_counter() - started
    return {"images": int(features.shape[1]), "seconds": seconds}


# --- the driver ------------------------------------------------------------------------------------------

def _tree_pss(pid: int) -> int:
    """Proportional set size, in bytes, of ``pid`` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
            for task in os.listdir(f"/proc/{p}/task"):
                stack += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(mode: str, root: Path, workers: int = 0) -> dict:
    """Run :func:`one` in a fresh process; its result with the peak memory of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, "--one", mode, str(root), str(workers)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "TAILOR_CACHE": str(DATA / "cache")})
    peak = 0

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_pss(proc.pid))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{mode} on {root} failed")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "img_s": result["images"] / result["seconds"], "peak_gb": peak / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="catalog sizes N")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="streaming worker counts")
    parser.add_argument("--repeat", type=int, default=1, help="measure each configuration this many times, taking "
                                                                 "turns, and keep the fastest")
    parser.add_argument("--no-sample", action="store_true", help="leave out the 224-px sample's rows")
    parser.add_argument("--name", default="scale", help="the results file: bench/results/NAME.md")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "ROOT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, root, workers = args.one
        print(json.dumps(one(mode, root, int(workers))))
        return

    rows = []

    def streaming(workers: int) -> str:
        return f"streaming, {workers} worker(s)" if workers else "streaming, decoded in threads (0 workers)"

    def add(name: str, n: int, size: str, result: dict) -> dict:
        row = {"catalog": f"{n:,} × {size}", "path": name, "img/s": round(result["img_s"], 1),
               "peak memory (GB)": round(result["peak_gb"], 2)}
        rows.append(row)
        print(row, file=sys.stderr)
        return result

    def rounds(configs: list[tuple[str, Path, int]]) -> list[dict]:
        """Each configuration's fastest of ``--repeat`` runs, the configurations taking turns, so that this
        machine's drift in speed (tens of percent over minutes) falls on all of them alike."""
        best: list[dict | None] = [None] * len(configs)
        for _ in range(args.repeat):
            for i, (mode, root, workers) in enumerate(configs):
                result = measure(mode, root, workers)
                print({"mode": mode, "root": root.name, "workers": workers, "img/s": round(result["img_s"], 1)},
                      file=sys.stderr)
                best[i] = result if best[i] is None or result["img_s"] > best[i]["img_s"] else best[i]
        return best

    sample_n = len(pd.read_csv(SAMPLE / "styles.csv"))
    small, bare = {}, None
    if not args.no_sample:
        bare, *streamed = rounds([("bare", SAMPLE, 0)] + [("stream", SAMPLE, w) for w in args.workers])
        add("bare forward (decoded tensors)", sample_n, "224 px", bare)
        small = {w: add(streaming(w), sample_n, "224 px", r) for w, r in zip(args.workers, streamed)}
    by_size = {}
    for n in args.sizes:
        root = catalog(n)
        label = f"{FULL_SIZE[0]}×{FULL_SIZE[1]}"
        memory, *streamed = rounds([("memory", root, 0)] + [("stream", root, w) for w in args.workers])
        add("decode everything first (in memory)", n, label, memory)
        by_size[n] = (memory, {w: add(streaming(w), n, label, r) for w, r in zip(args.workers, streamed)})

    lines = [markdown(rows, ["catalog", "path", "img/s", "peak memory (GB)"]), "",
             f"Targets, same run (EfficientNet-Lite0, {os.cpu_count()} cores"
             + (f", each configuration the fastest of {args.repeat} runs taken in turns" if args.repeat > 1 else "") + "):"]
    if small:
        best_small = max(small.values(), key=lambda r: r["img_s"])
        lines.append(f"- 224-px sample: best streaming {best_small['img_s']:.1f} img/s = "
                     f"{best_small['img_s'] / bare['img_s']:.2f}× the bare forward (target ≥ 0.8×)")
    for n, (memory, streams) in by_size.items():
        best = max(streams.values(), key=lambda r: r["img_s"])
        lines.append(f"- N = {n:,} full-size: best streaming {best['img_s']:.1f} img/s = "
                     f"{best['img_s'] / memory['img_s']:.2f}× decode-everything-first (target ≥ 1.0×)")
    if len(by_size) > 1:
        sizes = sorted(by_size)
        low, high = (max(by_size[s][1].values(), key=lambda r: r["img_s"]) for s in (sizes[0], sizes[-1]))
        lines.append(f"- streaming peak memory, N = {sizes[-1]:,} vs {sizes[0]:,}: {high['peak_gb']:.2f} vs "
                     f"{low['peak_gb']:.2f} GB ({high['peak_gb'] / low['peak_gb'] - 1:+.1%}; target within 15 %)")
    publish(args.name, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
