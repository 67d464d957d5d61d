"""Benchmark: exact ranking metrics, our vectorized ``offline_eval.metrics.compute`` vs ``ranx.evaluate``.

Both sides get the same synthetic data, already in their own in-memory format, and are timed on the metric
computation only:

- ours: ``compute(ranked (B, K) int64, qrels (B, N) csr, metrics)`` -> per-query arrays (the means are
  taken outside the timer; they cost microseconds).
- ranx: ``ranx.evaluate(qrels, run, metrics)`` on numba typed lists (ranx's internal format: per query an
  ``(n, 2)`` float64 array of (doc id, score) sorted by score, and of (doc id, relevance) sorted by
  relevance), so its dict -> typed-list conversion is excluded too. One warm-up call first (numba JIT).
  ranx runs with all cores (its default, ``threads=0``) and again with one thread; numpy runs single-threaded.

The data: B queries x K ranked items from N items; every query has 1 + Poisson(5) relevant items with
graded gains 1..3, each retrieved with probability 0.5 at a random rank; scores are distinct, so there are
no ties (ranx and trec_eval break ties differently).

Prints one JSON object. Usage: ``python benchmarks/bench_metrics.py [--queries 100000] [--k 100]``.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offline_eval.metrics import compute  # noqa: E402

METRICS = ["ndcg@10", "mrr@10", "map@100", "recall@100"]


def make_data(n_queries: int, k: int, n_items: int, seed: int = 0) -> tuple[np.ndarray, sp.csr_matrix]:
    """``ranked (B, K)`` distinct items per row, ``qrels (B, N)`` csr of gains 1..3."""
    rng = np.random.default_rng(seed)
    B, K, N = n_queries, k, n_items
    n_rel = 1 + rng.poisson(5, B)
    max_rel = int(n_rel.max())
    stride = max(1, N // (K + max_rel + 1))
    assert stride * (K + max_rel) < N
    # row b: items (o_b + j * stride) % N, j = 0..K-1 ranked, j = K.. candidates for unretrieved relevant ones
    offset = rng.integers(0, N, B)
    perm = np.argsort(rng.random((B, K)), axis=1)  # shuffle the positions
    ranked = (offset[:, None] + perm * stride) % N
    rows = np.repeat(np.arange(B), n_rel)
    j = np.arange(rows.size) - np.repeat(np.cumsum(n_rel) - n_rel, n_rel)  # 0..n_rel-1 within the row
    retrieved = rng.random(rows.size) < 0.5
    # retrieved relevant: the item at a random distinct rank (ranks j * 7 % K are distinct for j < K)
    rank = (j * 7 + rng.integers(0, K, B)[rows]) % K
    item = np.where(retrieved, ranked[rows, rank], (offset[rows] + (K + j) * stride) % N)
    gains = rng.integers(1, 4, rows.size).astype(np.float64)
    qrels = sp.csr_matrix((gains, (rows, item)), shape=(B, N))
    qrels.sum_duplicates()
    return ranked.astype(np.int64), qrels


def to_ranx_typed_lists(ranked: np.ndarray, qrels: sp.csr_matrix):
    """ranx's internal format: numba typed lists of per-query (doc id, value) float64 arrays, sorted."""
    from numba.typed import List as TypedList

    B, K = ranked.shape
    scores = np.linspace(1.0, 0.0, K, endpoint=False)  # distinct, descending
    qrels_tl, run_tl = TypedList(), TypedList()
    for b in range(B):
        s, e = qrels.indptr[b], qrels.indptr[b + 1]
        g = qrels.data[s:e]
        order = np.argsort(-g, kind="stable")
        qrels_tl.append(np.column_stack((qrels.indices[s:e][order].astype(np.float64), g[order])))
        run_tl.append(np.column_stack((ranked[b].astype(np.float64), scores)))
    return qrels_tl, run_tl


def check_ranx_dict_path(ranked: np.ndarray, qrels: sp.csr_matrix, n: int = 500) -> float:
    """Max |diff| between ranx from Qrels/Run dicts and ranx from our typed lists on the first ``n`` queries."""
    import ranx

    B, K = ranked.shape
    scores = np.linspace(1.0, 0.0, K, endpoint=False)
    qd, rd = {}, {}
    for b in range(min(n, B)):
        s, e = qrels.indptr[b], qrels.indptr[b + 1]
        qd[f"q{b:07d}"] = {f"d{i}": int(g) for i, g in zip(qrels.indices[s:e], qrels.data[s:e])}
        rd[f"q{b:07d}"] = {f"d{i}": float(sc) for i, sc in zip(ranked[b], scores)}
    a = ranx.evaluate(ranx.Qrels(qd), ranx.Run(rd), METRICS, return_mean=False)
    qt, rt = to_ranx_typed_lists(ranked[:n], qrels[:n])
    c = ranx.evaluate(qt, rt, METRICS, return_mean=False)
    return max(float(np.max(np.abs(np.asarray(a[m]) - np.asarray(c[m])))) for m in METRICS)


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def machine_info() -> dict:
    return shared_machine_info()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numba
    import ranx

    ranked, qrels = make_data(args.queries, args.k, args.items, args.seed)
    t = time.perf_counter()
    qrels_tl, run_tl = to_ranx_typed_lists(ranked, qrels)
    ranx_convert = time.perf_counter() - t

    ours_s, ours = best_of(lambda: compute(ranked, qrels, METRICS), args.repeats)
    ours_mean = {m: float(v.mean()) for m, v in ours.items()}

    results = {}
    for threads in (0, 1):  # 0 = all cores (ranx's default)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        ranx.evaluate(qrels_tl, run_tl, METRICS, threads=threads)  # warm-up: JIT compile / load cache
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        s, r = best_of(lambda: ranx.evaluate(qrels_tl, run_tl, METRICS, threads=threads), args.repeats)
        results[threads] = (s, {m: float(v) for m, v in r.items()})
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    per_query = ranx.evaluate(qrels_tl, run_tl, METRICS, return_mean=False)
    max_diff_per_query = max(float(np.max(np.abs(ours[m] - per_query[m]))) for m in METRICS)
    ranx_all_s, ranx_mean = results[0]
    ranx_one_s, _ = results[1]

    report = {
        "benchmark": "ranking metrics: offline_eval.metrics.compute vs ranx.evaluate",
        "machine": machine_info() | {"ranx_numba_threads_default": numba.config.NUMBA_NUM_THREADS},
        "sizes": {"queries": args.queries, "ranked_per_query": args.k, "items": args.items,
                  "judged_relevant": int(qrels.nnz), "metrics": METRICS},
        "timed": "metric computation from each library's in-memory input (ours: int64 ranked + csr qrels; "
                 "ranx: numba typed lists); best of %d runs after a ranx warm-up call" % args.repeats,
        "seconds": {"ours": round(ours_s, 4), "ranx_all_threads": round(ranx_all_s, 4),
                    "ranx_1_thread": round(ranx_one_s, 4)},
        "ratio_ranx_all_threads_over_ours": round(ranx_all_s / ours_s, 3),
        "ratio_ranx_1_thread_over_ours": round(ranx_one_s / ours_s, 3),
        "ranx_conversion_seconds_excluded": round(ranx_convert, 3),
        "means": {"ours": ours_mean, "ranx": ranx_mean},
        "max_abs_diff_of_means": max(abs(ours_mean[m] - ranx_mean[m]) for m in METRICS),
        "max_abs_diff_per_query": max_diff_per_query,
        "ranx_dict_vs_typed_list_max_abs_diff_500_queries": check_ranx_dict_path(ranked, qrels),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
