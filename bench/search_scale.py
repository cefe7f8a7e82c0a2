"""Look-alike search at catalog scale: exact search beside FAISS's approximate indexes, on N realistic vectors.

    python bench/search_scale.py                          # N = 10^5 and 10^6 (about 15 min on 2 CPU cores)
    python bench/search_scale.py --sizes 100000 1000000 10000000
    python bench/search_scale.py --sizes 10000 1000000 --only tailor   # exact search and tailor's own rows

The vectors are the metric run's real 256-d embeddings of the sample (``experiments/triplet/index.pt``; run
``tailor run -c configs/triplet.gin`` first), multiplied into N distinct products: each synthetic product mixes
two real products of one category with a random weight, plus within-category noise scaled so that a product's
nearest neighbour is as close as it is among the real ones, and keeps the category and gender of the first —
so the clusters, their spread and the attribute filters are the catalog's own. 1,000 further vectors made the
same way are the queries. Exact search (a float32 matrix product, what tailor does today) is measured in the
same run and is the ground truth of recall@10. "filtered" asks for the 10 best products of the query's gender
that FAISS finds with the filter applied inside its search.

Memory is the index's own size in RAM (FAISS's serialised size; exact: the float32 matrix). Queries/s: 1,000
queries in batches of 100, the machine's cores all in use.

tailor's approximate row is measured as a server runs it: the index is written in tailor's format
(``EmbeddingIndex.save``: fp16 embeddings and colour vectors, an Arrow column file, the FAISS indexes), then a
fresh process opens it (``EmbeddingIndex.open``: "open s", the files cold-ish — in the page cache from the
write, not in the process) and answers the 1,000 queries one per call; its "memory GB" is that process's
resident memory growth over the open and the queries (VmRSS, which counts the pages of the memory-mapped
files it touched — the kernel may drop them again — and "anon GB" the part that is the process's own,
RssAnon).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, markdown, publish  # noqa: E402

INDEX = REPO / "experiments" / "triplet" / "index.pt"
K = 10
QUERIES = 1000


def real_index():
    """The metric run's catalog index (any format tailor reads; never written here)."""
    from tailor.search.index import EmbeddingIndex

    if not INDEX.is_file():
        raise SystemExit(f"{INDEX.relative_to(REPO)} is missing: run `tailor run -c configs/triplet.gin` first")
    return EmbeddingIndex.load(INDEX)


def real_vectors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The metric run's embeddings (unit rows), their categories and genders as codes (its colour vectors are
    read by :func:`real_colours`)."""
    saved = real_index()
    vectors = saved.embeddings.float().numpy()
    labels = np.unique(list(saved.labels), return_inverse=True)[1]
    genders = np.unique(list(saved.attributes["gender"]), return_inverse=True)[1]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels, genders


def real_colours() -> np.ndarray:
    return real_index().colours.float().numpy()


def nearest_similarity(vectors: np.ndarray) -> float:
    """The median cosine of each vector's nearest other vector."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    return float(np.median(sims.max(axis=1)))


def synthetic(vectors: np.ndarray, labels: np.ndarray, genders: np.ndarray, n: int, noise: float,
              seed: int, with_sources: bool = False):
    """``n`` products: two real products of one category mixed, plus noise; their genders (of the first) and,
    ``with_sources``, which two real products each mixes and with what weight (its category is the first's, its
    colour vector the same mix of theirs)."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(vectors), n)
    by_label = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    second = np.array([rng.choice(by_label[labels[i]]) for i in first[: min(n, 200_000)]])
    second = np.resize(second, n) if n > len(second) else second
    second = np.where(labels[second] == labels[first], second, first)  # resized rows of another category: none
    weight = rng.random((n, 1), dtype=np.float32)
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    for start in range(0, n, 500_000):  # in slices: bounded temporary memory at 10^7
        s = slice(start, start + 500_000)
        mixed = weight[s] * vectors[first[s]] + (1 - weight[s]) * vectors[second[s]]
        mixed += noise * rng.standard_normal(mixed.shape, dtype=np.float32) / np.sqrt(vectors.shape[1])
        out[s] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return (out, genders[first], (first, second, weight[:, 0])) if with_sources else (out, genders[first])


def calibrate_noise(vectors: np.ndarray, labels: np.ndarray, genders: np.ndarray) -> float:
    """The noise at which 2,879 synthetic products are as close to their nearest neighbour as the real ones."""
    target = nearest_similarity(vectors)
    best = min((abs(nearest_similarity(synthetic(vectors, labels, genders, len(vectors), s, 1)[0]) - target), s)
               for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    return best[1]


def exact(base: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The true top-k of each query (the filtered ones: among ``allowed[q]`` rows only)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    base_t = torch.from_numpy(base)
    for start in range(0, len(queries), 100):
        sims = torch.from_numpy(queries[start:start + 100]) @ base_t.T
        if allowed is not None:
            sims[~torch.from_numpy(allowed[start:start + 100])] = -np.inf
        out[start:start + 100] = sims.topk(k, dim=1).indices.numpy()
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def measure(name: str, base: np.ndarray, base_genders: np.ndarray, queries: np.ndarray, query_genders: np.ndarray,
            truth: np.ndarray, truth_filtered: np.ndarray, build, search, nbytes) -> dict:
    start = time.perf_counter()
    index = build(base)
    built = time.perf_counter() - start
    search(index, queries[:100], None)  # warm up
    start = time.perf_counter()
    found = np.concatenate([search(index, queries[i:i + 100], None) for i in range(0, len(queries), 100)])
    qps = len(queries) / (time.perf_counter() - start)
    filtered = np.concatenate([search(index, queries[i:i + 1], (base_genders, query_genders[i]))
                               for i in range(0, 200)])
    return {"index": name, "build s": built, "memory GB": nbytes(index) / 1e9, "recall@10": recall(found, truth),
            "filtered recall@10": recall(filtered, truth_filtered[:200]), "queries/s": qps}


def engines(d: int, n: int) -> dict:
    """(build, search, nbytes) of each contender; FAISS settings for ``n`` products."""
    import faiss

    lists = int(4 * np.sqrt(n))

    def filtered(params, filt):
        """``params`` searching only the products of one gender (``filt``: genders, the gender), if asked."""
        if filt is not None:
            genders, gender = filt
            params.sel = faiss.IDSelectorBatch(np.flatnonzero(genders == gender).astype(np.int64))
        return params

    def ivf(quantizer_spec: str, nprobe: int):
        def build(base):
            index = faiss.index_factory(d, f"IVF{lists},{quantizer_spec}", faiss.METRIC_INNER_PRODUCT)
            if hasattr(index, "do_polysemous_training"):
                index.do_polysemous_training = False  # Hamming-filter training, unused, most of the build time
            sample = base[np.random.default_rng(0).choice(len(base), min(len(base), 40 * lists, 100_000), replace=False)]
            index.train(sample)
            index.add(base)
            return index

        def search(index, queries, filt):
            return index.search(queries, K, params=filtered(faiss.SearchParametersIVF(nprobe=nprobe), filt))[1]

        return build, search, lambda index: faiss.serialize_index(index).nbytes

    def hnsw_sq(m: int, ef: int):
        def build(base):
            index = faiss.index_factory(d, f"HNSW{m},SQ8", faiss.METRIC_INNER_PRODUCT)
            index.train(base[:200_000])
            index.add(base)
            return index

        def search(index, queries, filt):
            return index.search(queries, K, params=filtered(faiss.SearchParametersHNSW(efSearch=ef), filt))[1]

        return build, search, lambda index: faiss.serialize_index(index).nbytes

    def reranked(quantizer_spec: str, nprobe: int, fetch: int):
        """IVF candidates (``fetch`` per query) re-ranked by exact cosine on an fp16 copy of the vectors
        memory-mapped from disk: the index in RAM holds the codes only."""
        build_ivf, _, size = ivf(quantizer_spec, nprobe)
        scratch = Path(tempfile.mkdtemp(prefix="tailor-bench-"))

        def build(base):
            index = build_ivf(base)
            path = scratch / "vectors.f16"
            np.asarray(base, dtype=np.float16).tofile(path)
            return SimpleNamespace(codes=index, vectors=np.memmap(path, dtype=np.float16, mode="r", shape=base.shape))

        def search(index, queries, filt):
            candidates = index.codes.search(queries, fetch,
                                            params=filtered(faiss.SearchParametersIVF(nprobe=nprobe), filt))[1]
            out = np.empty((len(queries), K), dtype=np.int64)
            for row, (query, ids) in enumerate(zip(queries, candidates)):
                ids = ids[ids >= 0]
                order = np.argsort(-(index.vectors[np.sort(ids)].astype(np.float32) @ query))[:K]
                out[row, :len(order)] = np.sort(ids)[order]
            return out

        return build, search, lambda index: size(index.codes)

    return {f"FAISS IVF{lists},PQ64 nprobe 32, 100 re-ranked from disk (fp16)": reranked("PQ64", 32, 100),
            f"FAISS IVF{lists},PQ32 nprobe 32, 100 re-ranked from disk (fp16)": reranked("PQ32", 32, 100),
            f"FAISS IVF{lists},SQ8 nprobe 16": ivf("SQ8", 16),
            f"FAISS IVF{lists},SQ8 nprobe 32": ivf("SQ8", 32),
            f"FAISS IVF{lists},SQ6 nprobe 32": ivf("SQ6", 32),
            f"FAISS IVF{lists},PQ64 nprobe 32": ivf("PQ64", 32),
            "FAISS HNSW32,SQ8 ef 64": hnsw_sq(32, 64)}


def tailor_rows(base: np.ndarray, base_genders: np.ndarray, sources: np.ndarray, queries: np.ndarray,
                query_sources: np.ndarray, exact_qps: float, ann_settings) -> list[dict]:
    """tailor's own look-alike search (embedding + colour + category vote) exact and approximate, one query
    per call as a served request makes it; recall@10 of the approximate against the exact look-alike ranking."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tailor.search.columns import Column
    from tailor.search.index import EmbeddingIndex

    def coded(values: np.ndarray, rows: np.ndarray) -> Column:
        distinct, codes = np.unique(values, return_inverse=True)
        return Column(pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array(codes[rows].astype(np.int32)),
                                                                       pa.array(distinct.tolist()))]))

    saved = real_index()
    names = np.asarray(list(saved.labels), dtype=object)
    gender_names = np.asarray(list(saved.attributes["gender"]), dtype=object)
    colours = torch.from_numpy(real_colours())
    n = len(base)

    def mixed_colours(mix) -> torch.Tensor:
        first, second, weight = (torch.as_tensor(v) for v in mix)
        return torch.nn.functional.normalize(weight[:, None] * colours[first] + (1 - weight[:, None]) * colours[second],
                                             dim=1)

    base_colours = mixed_colours(sources)
    all_query_colours = mixed_colours(query_sources)
    query_colours = all_query_colours[:200]
    sources = sources[0]

    def make() -> EmbeddingIndex:
        """The catalog as tailor indexes it, its columns made in Arrow (no Python object per product)."""
        ids = Column(pa.chunked_array([pc.cast(pa.array(np.arange(n)), pa.string())]))
        images = Column(pa.chunked_array([pc.binary_join_element_wise(ids.array.chunk(0), ".jpg", "")]))
        return EmbeddingIndex(torch.from_numpy(base), ids, coded(names, sources), images, "/catalog", base_colours,
                              {"gender": coded(gender_names, sources)})

    q = torch.from_numpy(queries[:200])
    q_colours = query_colours
    women = None

    def run(index: EmbeddingIndex, filtered: bool = False) -> tuple[list[list[str]], float]:
        nonlocal women
        if filtered and women is None:
            women = index.allowed({"gender": "Women"})
        start = time.perf_counter()
        found = [[x.id for x in index.search(q[i:i + 1], K, q_colours[i:i + 1],
                                             allowed=women if filtered else None)[0]] for i in range(len(q))]
        return found, len(q) / (time.perf_counter() - start)

    rows, truth, truth_women, tailor_exact_qps = [], None, None, None
    if exact_qps is not None:  # the exact ranking: the ground truth of recall
        exact_index = make()
        truth, tailor_exact_qps = run(exact_index)
        truth_women, _ = run(exact_index, filtered=True)
        del exact_index
        rows.append({"N": n, "index": "tailor look-alike search, exact (every product scored)", "build s": 0.0,
                     "memory GB": base.nbytes / 1e9, "memory / exact": 1.0, "recall@10": 1.0,
                     "filtered recall@10": 1.0, "queries/s": tailor_exact_qps, "× exact q/s": 1.0})
        print(rows[-1], flush=True)
    start = time.perf_counter()
    approximate = make().with_approximate_index(ann_settings)
    built = time.perf_counter() - start
    found, qps = run(approximate)
    found_women, _ = run(approximate, filtered=True)
    lists = approximate.ann.lookalike.index.nlist
    served = opened_and_queried(approximate, queries, all_query_colours, ann_settings)
    rows.append({"N": n, "index": f"tailor look-alike search, approximate (two IVF-PQ{ann_settings.code_bytes} spaces, "
                 f"{min(ann_settings.nprobe, lists)} of {lists} lists, {ann_settings.fetch} candidates re-ranked "
                 "from the memory-mapped fp16 embeddings; memory: a fresh process after opening it and 1,000 queries)",
                 "build s": built, **served, "memory / exact": served["memory GB"] * 1e9 / base.nbytes,
                 "recall@10": overlap(found, truth), "filtered recall@10": overlap(found_women, truth_women),
                 "queries/s": qps, "× exact q/s": qps / tailor_exact_qps if tailor_exact_qps else None})
    print(rows[-1], flush=True)
    return rows


def overlap(found: list[list[str]], truth: list[list[str]] | None) -> float | None:
    """Mean recall@K of ``found`` against ``truth`` (None: no truth measured)."""
    return None if truth is None else float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))


def opened_and_queried(index, queries: np.ndarray, colours: torch.Tensor, ann_settings) -> dict:
    """Write ``index`` in tailor's format, then open it in a fresh process and answer ``queries`` one per call
    there: the open's seconds, and that process's resident memory growth (all of it, and its own pages)."""
    folder = Path(tempfile.mkdtemp(prefix="tailor-index-"))
    start = time.perf_counter()
    index.save(folder / "index.pt")
    written = time.perf_counter() - start
    np.save(folder / "queries.npy", queries)
    np.save(folder / "query_colours.npy", colours.numpy())
    settings = {k: getattr(ann_settings, k) for k in ("exact_below", "nprobe", "fetch")}
    done = subprocess.run([sys.executable, __file__, "--serve-from", str(folder), "--ann", json.dumps(settings)],
                          capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    on_disk = sum(f.stat().st_size for f in folder.glob("index*"))
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return {**measured, "write s": written, "on disk GB": on_disk / 1e9}


def _memory() -> dict[str, float]:
    """This process's resident memory and its anonymous part, in GB (/proc/self/status)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 / 1e9 for k in ("VmRSS", "RssAnon")}


def serve_from(folder: Path, settings: dict) -> None:
    """In a fresh process: open the index in ``folder`` and answer its queries one per call; print the open's
    seconds, the queries/s and the memory growth as JSON."""
    from tailor.search.ann import AnnSettings
    from tailor.search.index import EmbeddingIndex
    from tailor.search.lookalike import LookalikeSettings

    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    colours = torch.from_numpy(np.load(folder / "query_colours.npy"))
    import faiss  # noqa: F401  (imported before the baseline: a library, not the index)
    import pyarrow  # noqa: F401

    before = _memory()
    start = time.perf_counter()
    index = EmbeddingIndex.open(folder / "index.pt", AnnSettings(**settings), LookalikeSettings().colour_weight)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(len(queries)):
        index.search(queries[i:i + 1], K, colours[i:i + 1])
    qps = len(queries) / (time.perf_counter() - start)
    after = _memory()
    print(json.dumps({"open s": opened, "served q/s": qps, "memory GB": after["VmRSS"] - before["VmRSS"],
                      "anon GB": after["RssAnon"] - before["RssAnon"]}))


def audit_row(vectors: np.ndarray, labels: np.ndarray, genders: np.ndarray, n: int, noise: float,
              planted: int = 100) -> dict:
    """``tailor audit``'s near-duplicate step on ``n`` synthetic products of which ``planted`` are copies of
    others (the copy's vector moved by a little noise, as a re-encoded photo's features move): how many copies
    it pairs with their originals, and its time."""
    from tailor.auditing.duplicates import near_duplicates

    base, _ = synthetic(vectors, labels, genders, n - planted, noise, seed=2)
    rng = np.random.default_rng(5)
    originals = rng.choice(len(base), planted, replace=False)
    copies = base[originals] + 0.02 * rng.standard_normal((planted, base.shape[1])).astype(np.float32) / 16
    catalog = torch.from_numpy(np.concatenate([base, copies]))
    start = time.perf_counter()
    pairs = near_duplicates(catalog)
    seconds = time.perf_counter() - start
    found = {(i, j) for i, j, _ in pairs}
    hits = sum((int(o), len(base) + c) in found for c, o in enumerate(originals))
    return {"N": n, "planted copies": planted, "found": hits, "pairs above 0.95": len(pairs), "seconds": seconds}


def exact_rows(rows: list[dict], only: list[str] | None, base: np.ndarray, base_genders: np.ndarray,
               queries: np.ndarray, query_genders: np.ndarray) -> float:
    """Exact search (the ground truth) and each FAISS contender measured against it, added to ``rows``;
    exact search's queries/s."""
    n = len(base)
    allowed = np.stack([base_genders == g for g in query_genders[:200]])
    start = time.perf_counter()
    truth = exact(base, queries, K)
    exact_qps = len(queries) / (time.perf_counter() - start)
    truth_filtered = exact(base, queries[:200], K, allowed)
    rows.append({"N": n, "index": "exact (float32 matrix product, today)", "build s": 0.0,
                 "memory GB": base.nbytes / 1e9, "recall@10": 1.0, "filtered recall@10": 1.0, "queries/s": exact_qps})
    print(rows[-1], flush=True)
    for name, (build, search, nbytes) in engines(base.shape[1], n).items():
        if only and not any(o in name for o in only):
            continue
        row = {"N": n, **measure(name, base, base_genders, queries, query_genders, truth, truth_filtered,
                                 build, search, nbytes)}
        row["× exact q/s"] = row["queries/s"] / exact_qps
        row["memory / exact"] = row["memory GB"] / (base.nbytes / 1e9)
        rows.append(row)
        print(row, flush=True)
    return exact_qps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--only", nargs="*", help="only the engines whose name contains one of these")
    parser.add_argument("--lists-per-sqrt", type=float, default=None, help="tailor's search.ann.lists_per_sqrt")
    parser.add_argument("--nprobe", type=int, default=None, help="tailor's search.ann.nprobe")
    parser.add_argument("--fetch", type=int, default=None, help="tailor's search.ann.fetch")
    parser.add_argument("--audit", type=int, nargs="*", default=[], help="also time tailor audit's near-duplicate "
                                                                         "step on this many products (100 planted copies)")
    parser.add_argument("--no-exact", action="store_true", help="no exact search (no recall): tailor's approximate "
                                                                     "row alone, for sizes whose exact search is too slow")
    parser.add_argument("--serve-from", type=Path, help=argparse.SUPPRESS)  # the fresh process of a measurement
    parser.add_argument("--ann", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_from:
        return serve_from(args.serve_from, args.ann)
    import faiss

    vectors, labels, genders = real_vectors()
    noise = calibrate_noise(vectors, labels, genders)
    print(f"{len(vectors)} real embeddings ({vectors.shape[1]}-d); noise {noise} matches their nearest-neighbour "
          f"cosine ({nearest_similarity(vectors):.3f}); FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    rows = []
    for n in args.sizes:
        base, base_genders, sources = synthetic(vectors, labels, genders, n, noise, seed=0, with_sources=True)
        queries, query_genders, query_sources = synthetic(vectors, labels, genders, QUERIES, noise, seed=1,
                                                          with_sources=True)
        exact_qps = None
        if not args.no_exact:
            exact_qps = exact_rows(rows, args.only, base, base_genders, queries, query_genders)
        if not args.only or any("tailor" in o for o in args.only):
            from tailor.search.ann import AnnSettings

            chosen = {k: v for k, v in (("lists_per_sqrt", args.lists_per_sqrt), ("nprobe", args.nprobe),
                                        ("fetch", args.fetch)) if v is not None}
            rows += tailor_rows(base, base_genders, sources, queries, query_sources, exact_qps,
                                AnnSettings(exact_below=1, **chosen))
        del base
    audits = [audit_row(vectors, labels, genders, n, noise) for n in args.audit]
    for row in audits:
        print(row, flush=True)
    columns = ["N", "index", "build s", "write s", "open s", "memory GB", "anon GB", "memory / exact", "on disk GB",
               "recall@10", "filtered recall@10", "queries/s", "× exact q/s", "served q/s"]
    publish("search_scale", f"noise {noise}; FAISS {faiss.__version__}; {faiss.omp_get_max_threads()} threads\n\n"
            + markdown(rows, columns) + "\n"
            + ("\n" + markdown(audits, ["N", "planted copies", "found", "pairs above 0.95", "seconds"]) + "\n"
               if audits else ""))


if __name__ == "__main__":
    main()
