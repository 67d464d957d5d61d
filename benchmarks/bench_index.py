"""ANN index benchmark: HNSW and IVF against exact (Flat) inner-product search, in the same run.

Data: N unit vectors in D dimensions drawn around C cluster centres (a mixture, like learned item
embeddings; isotropic noise would be the worst case for any ANN index). Queries come from the same mixture
(not from the indexed set). For each index: build time, serialized size, single-query latency p50/p99 at k
(one query per call, ``--threads`` FAISS threads), recall@k relative to exact search; for the ANN indexes a
sweep of the query parameter (HNSW efSearch, IVF nprobe), and the fastest setting reaching ``--target``
recall with its speed-up over exact.

    .venv/bin/python benchmarks/bench_index.py                     # 1M x 64, k = 1000
    .venv/bin/python benchmarks/bench_index.py --n-items 100000    # quicker

Prints one JSON document to stdout (progress goes to stderr).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.retrieval.index import AnnIndex, overlap_recall  # noqa: E402

logger = logging.getLogger("bench_index")


def machine_info() -> dict:
    return shared_machine_info()


def clustered(rng: np.random.Generator, n: int, d: int, n_clusters: int, spread: float) -> np.ndarray:
    """(n, d) float32 unit vectors: centre_c + spread * N(0, I / d), normalised; cluster sizes Zipf-like."""
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    assign = rng.choice(n_clusters, size=n, p=p / p.sum())
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 1 << 18):  # blocks bound the temporaries
        e = min(n, s + (1 << 18))
        x = centres[assign[s:e]] + spread * rng.standard_normal((e - s, d)).astype(np.float32) / np.sqrt(d)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency(index: AnnIndex, queries: np.ndarray, k: int, exact: bool | None) -> tuple[dict, np.ndarray]:
    ids = np.empty((len(queries), k), dtype=np.int64)
    times = np.empty(len(queries))
    index.search(queries[:1], k, exact=exact)  # warm-up
    for i in range(len(queries)):
        t = time.perf_counter()
        ids[i] = index.search(queries[i : i + 1], k, exact=exact)[0][0]
        times[i] = time.perf_counter() - t
    ms = times * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}, ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--n-queries", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=0, help="mixture components (0: N // 500)")
    ap.add_argument("--spread", type=float, default=0.6)
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads for search (build uses --build-threads)")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=40, help="HNSW build beam (FAISS default 40)")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4096 at 1M, ~4 sqrt(N) otherwise)")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    import faiss

    rng = np.random.default_rng(args.seed)
    n, d, k = args.n_items, args.dim, min(args.k, args.n_items)
    n_clusters = args.clusters or max(8, n // 500)
    t = time.perf_counter()
    data = clustered(rng, n + args.n_queries, d, n_clusters, args.spread)
    x, queries = data[:n], data[n:]
    logger.info("data %d x %d (%d clusters) in %.1fs", n, d, n_clusters, time.perf_counter() - t)
    nlist = args.nlist or (4096 if n >= 1_000_000 else int(2 ** round(np.log2(4 * np.sqrt(n)))))
    out: dict = {
        "benchmark": "ann_index",
        "machine": machine_info(),
        "params": {"n_items": n, "dim": d, "k": k, "n_queries": args.n_queries, "clusters": n_clusters,
                   "spread": args.spread, "search_threads": args.threads, "build_threads": args.build_threads,
                   "ef_construction": args.ef_construction},
        "indexes": {},
    }

    # exact reference (batched ground truth + single-query latency)
    t = time.perf_counter()
    flat = AnnIndex.build(x, "Flat", threads=args.build_threads, keep_vectors=False)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(args.build_threads)
    _, truth = flat.index.search(queries, k)
    faiss.omp_set_num_threads(args.threads)
    lat, _ = latency(flat, queries, k, exact=False)
    out["indexes"]["Flat"] = {"build_s": round(build_s, 2), "bytes": flat.nbytes(), **lat, "recall": 1.0}
    exact_p50 = lat["p50_ms"]
    logger.info("Flat: %s", out["indexes"]["Flat"])
    del flat

    sweeps = {
        f"HNSW{args.hnsw_m}": ("ef_search", [k, int(1.5 * k), 2 * k, 3 * k]),
        f"IVF{nlist},Flat": ("nprobe", [4, 8, 16, 32, 64, 128, 256]),
    }
    for factory, (param, values) in sweeps.items():
        t = time.perf_counter()
        index = AnnIndex.build(x, factory, threads=args.build_threads, keep_vectors=False,
                               ef_construction=args.ef_construction)
        build_s = time.perf_counter() - t
        faiss.omp_set_num_threads(args.threads)
        entry = {"built": index.factory, "build_s": round(build_s, 2), "bytes": index.nbytes(), "sweep": []}
        logger.info("%s built in %.1fs", index.factory, build_s)
        for v in values:
            index.set_search_params(**{param: v})
            lat, ids = latency(index, queries, k, exact=False)
            rec = float(overlap_recall(ids, truth).mean())
            speedup = round(exact_p50 / lat["p50_ms"], 2)
            row = {param: v, "recall": round(rec, 4), **lat, "speedup_vs_exact_p50": speedup}
            entry["sweep"].append(row)
            logger.info("%s %s", factory, row)
            if rec >= 0.995:
                break
        ok = [r for r in entry["sweep"] if r["recall"] >= args.target]
        entry["best_at_target"] = min(ok, key=lambda r: r["p50_ms"]) if ok else None
        out["indexes"][factory] = entry
        del index
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
