"""Load test of `tailor serve` on 127.0.0.1 beside `tailor predict`'s batch throughput of the same model.

For each model: (1) the predictor's throughput on a folder of sample photos, as `tailor predict` runs it
(decoding and preprocessing included, batches of 32); (2) a live `tailor serve` on a loopback port, loaded by
``--clients`` concurrent clients, each posting one photo per request, for ``--seconds``; (1) and (2) run in
``--turns`` turns, since this machine's speed drifts by tens of per cent over minutes; (3) ``--overload``
clients for ``--overload-seconds`` against a queue of ``--queue-limit`` images, to show that beyond the queue
the server answers 503 (with Retry-After) and nothing else. Every request loop is bounded in count and time,
and the clients run in this process, on the same two cores as the server: the served throughput pays for
them too.

    python bench/serve.py                       # the demo ensemble, Lite0, and Lite0 as int8 ONNX
    python bench/serve.py --models experiments/demo --turns 2
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, markdown, publish  # noqa: E402

DEFAULT_MODELS = ["experiments/demo", "experiments/bench_transfer_lite0",
                  "experiments/bench_export/bench_transfer_lite0-onnx_int8.onnx"]
MAX_REQUESTS = 200_000  # a bound on every load loop, whatever the time


def load_predict(model: str):
    """The predictor `tailor predict` uses for ``model``, on the CPU."""
    from tailor.distributed import Runtime
    from tailor.inference import load_predictor

    return load_predictor(REPO / model, runtime=Runtime.local("cpu"))


def predict_throughput(predictor, images: list[Path]) -> float:
    """Images per second of ``predictor`` over ``images`` as `tailor predict` runs it (after a warm-up)."""
    list(predictor.predict_files(images[:32]))
    started = time.perf_counter()
    done = sum(1 for _ in predictor.predict_files(images))
    return done / (time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, queue_limit: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "tailor", "serve", str(REPO / model), "--port", str(port),
                                "-p", f"serve.settings.queue_limit={queue_limit}"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tailor serve {model} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"tailor serve {model} did not start")


async def load(url: str, photos: list[bytes], clients: int, seconds: float, pause_after_503: float = 1.0) -> dict:
    """``clients`` concurrent loops posting one photo per request for ``seconds``: latencies and statuses."""
    import httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, session: httpx.AsyncClient) -> None:
        i = number
        while time.perf_counter() < deadline and sum(statuses.values()) < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                answer = await session.post(url + "/predict", files={"images": ("photo.jpg", photos[i % len(photos)],
                                                                                "image/jpeg")})
                status = answer.status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            statuses[status] += 1
            if status == 200:
                latencies.append(time.perf_counter() - started)
            elif status == 503:  # a well-behaved client waits as long as Retry-After says
                retry = float(answer.headers.get("retry-after", pause_after_503))
                await asyncio.sleep(max(0.0, min(retry, deadline - time.perf_counter())))
            i += clients

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": sum(statuses.values()), "ok_per_s": statuses[200] / elapsed,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "statuses": dict(statuses)}


def mean_batch(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    total = float(re.search(r'^tailor_batch_images_sum\{model="classifier"\} (\S+)', text, re.M).group(1))
    count = float(re.search(r'^tailor_batch_images_count\{model="classifier"\} (\S+)', text, re.M).group(1))
    return total / max(count, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--images", default="data/sample/images")
    parser.add_argument("--predict-images", type=int, default=256)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="each steady turn")
    parser.add_argument("--turns", type=int, default=3, help="predict, then serve, this many times in turns")
    parser.add_argument("--overload", type=int, default=64)
    parser.add_argument("--overload-seconds", type=float, default=20)
    parser.add_argument("--queue-limit", type=int, default=32)
    args = parser.parse_args()

    from tailor.machine import keep_freed_memory
    keep_freed_memory()
    paths = sorted((REPO / args.images).glob("*.jpg"))
    photos = [p.read_bytes() for p in paths[:512]]
    rows, raw = [], {}
    for model in args.models:
        if not (REPO / model).exists():
            print(f"skipping {model}: not found (make it with bench/transfer.py or bench/export.py)")
            continue
        predictor = load_predict(model)
        process, url = start_server(model, args.queue_limit)
        turns = []
        try:
            asyncio.run(load(url, photos, 4, 5))  # warm-up
            for turn in range(args.turns):  # in turns: this machine's speed drifts by tens of % over minutes
                batch_rate = predict_throughput(predictor, paths[:args.predict_images])
                steady = asyncio.run(load(url, photos, args.clients, args.seconds))
                turns.append({"predict_img_s": batch_rate, **steady})
                print(f"{model} turn {turn + 1}: predict {batch_rate:.1f} img/s, served {steady['ok_per_s']:.1f} "
                      f"img/s ({steady['ok_per_s'] / batch_rate:.2f}×), {steady['statuses']}")
            steady_batch = mean_batch(url)
            overload = asyncio.run(load(url, photos, args.overload, args.overload_seconds))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
            del predictor
            gc.collect()
        raw[model] = {"turns": turns, "overload": overload, "mean_batch": steady_batch}
        median = lambda key: float(np.median([t[key] for t in turns]))  # noqa: E731
        ratios = [t["ok_per_s"] / t["predict_img_s"] for t in turns]
        statuses: Counter = Counter()
        for t in turns:
            statuses.update(t["statuses"])
        steady_row = {"requests": sum(t["requests"] for t in turns), "ok_per_s": median("ok_per_s"),
                      "p50": median("p50"), "p95": median("p95"), "p99": median("p99"), "statuses": statuses}
        name = Path(model).name
        for phase, clients, result in (("steady", args.clients, steady_row), ("overload", args.overload, overload)):
            failed = {k: v for k, v in result["statuses"].items() if k != 200}
            rows.append({"model": name, "clients": clients, "requests": result["requests"],
                         "served img/s": result["ok_per_s"],
                         "predict img/s": median("predict_img_s") if phase == "steady" else None,
                         "× predict": (f"{np.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
                                       if phase == "steady" else ""),
                         "mean batch": steady_batch if phase == "steady" else None,
                         "p50 ms": result["p50"], "p95 ms": result["p95"], "p99 ms": result["p99"],
                         "not 200": ", ".join(f"{v} × {k}" for k, v in sorted(failed.items(), key=str)) or "0"})
        print(json.dumps(raw[model], indent=1, default=str))
    columns = ["model", "clients", "requests", "served img/s", "predict img/s", "× predict", "mean batch",
               "p50 ms", "p95 ms", "p99 ms", "not 200"]
    text = (f"# `tailor serve` under load (bench/serve.py)\n\n2 cores, server and clients on one machine; one photo "
            f"per request; queue limit {args.queue_limit} images. Steady: {args.clients} clients for {args.seconds:.0f} s, "
            f"{args.turns} times, each turn right after `tailor predict`'s predictor ran the same model over "
            f"{args.predict_images} photos (`predict img/s`); medians, and `× predict` the median (range) of the "
            f"turns' ratios. Overload: {args.overload} clients for {args.overload_seconds:.0f} s.\n\n" + markdown(rows, columns) + "\n")
    publish("serve", text)


if __name__ == "__main__":
    main()
