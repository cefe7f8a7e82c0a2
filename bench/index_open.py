"""Opening a catalog index as its size grows: N products written in tailor's format, then opened in a fresh
process — the seconds ``EmbeddingIndex.open`` takes, that process's resident memory growth, and one id lookup
and one filter over every product, timed.

    python bench/index_open.py --sizes 10000 10000000

The products are random 256-d unit vectors (fp16) with ids, 140 categories, images, one root and a gender;
no approximate index (opened with ``exact_below`` above N, nothing built), so it measures what opening reads,
not search: ``bench/search_scale.py`` measures search. At 10^7 the files are about 5.5 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown, publish  # noqa: E402

DIM = 256
SLICE = 1_000_000


def write(folder: Path, n: int) -> float:
    """Write an index of ``n`` random products in ``folder``; the seconds it took."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from tailor.search.columns import Column
    from tailor.search.index import EmbeddingIndex

    rng = np.random.default_rng(0)
    embeddings = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, SLICE):  # unit rows, a slice at a time
        part = rng.standard_normal((min(SLICE, n - start), DIM), dtype=np.float32)
        embeddings[start:start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    ids = pa.chunked_array([pc.cast(pa.array(np.arange(n)), pa.string())])

    def coded(values: list[str]) -> Column:
        codes = pa.array(rng.integers(0, len(values), n).astype(np.int32))
        return Column(pa.chunked_array([pa.DictionaryArray.from_arrays(codes, pa.array(sorted(values)))]))

    index = EmbeddingIndex(torch.from_numpy(embeddings), Column(ids), coded([f"category {i:03d}" for i in range(140)]),
                           Column(pa.chunked_array([pc.binary_join_element_wise(ids.chunk(0), ".jpg", "")])),
                           "/catalog", attributes={"gender": coded(["Boys", "Girls", "Men", "Unisex", "Women"])})
    start = time.perf_counter()
    index.save(folder / "index.pt")
    return time.perf_counter() - start


def _memory() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 / 1e9 for k in ("VmRSS", "RssAnon")}


def opened(folder: Path, n: int) -> None:
    """In a fresh process: open the index, find one id, filter by gender; print the measures as JSON."""
    import faiss  # noqa: F401  (the libraries are loaded before the baseline, as in a server: pyarrow's first
    import pandas  # noqa: F401  IPC read imports pandas, a second of this machine's time at any N)
    import pyarrow  # noqa: F401

    from tailor.search.ann import AnnSettings
    from tailor.search.index import EmbeddingIndex

    before = _memory()
    start = time.perf_counter()
    index = EmbeddingIndex.open(folder / "index.pt", AnnSettings(exact_below=n + 1))
    seconds = time.perf_counter() - start
    after = _memory()
    start = time.perf_counter()
    found = index.position(str(n - 1))
    lookup = time.perf_counter() - start
    start = time.perf_counter()
    women = int(index.allowed({"gender": "Women"}).sum())
    filtered = time.perf_counter() - start
    print(json.dumps({"N": n, "open s": seconds, "memory GB": after["VmRSS"] - before["VmRSS"],
                      "anon GB": after["RssAnon"] - before["RssAnon"], "id lookup s": lookup,
                      "filter s": filtered, "found": found == n - 1, "women": women}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--open", type=Path, help=argparse.SUPPRESS)  # the fresh process
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open:
        return opened(args.open, args.n)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="tailor-open-") as folder:
            written = write(Path(folder), n)
            size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 1e9
            done = subprocess.run([sys.executable, __file__, "--open", folder, "--n", str(n)], capture_output=True,
                                  text=True, check=True)
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "write s": written, "on disk GB": size})
            print(rows[-1], flush=True)
    publish("index_open", markdown(rows, ["N", "write s", "on disk GB", "open s", "memory GB", "anon GB",
                                          "id lookup s", "filter s"]) + "\n")


if __name__ == "__main__":
    main()
