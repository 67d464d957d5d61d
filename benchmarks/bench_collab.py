"""Benchmark: the item-item model (recsys.collab) at catalogue scale, against implicit's CosineRecommender (the
peer) and the floor (the sparse product of one history row with W) in the same run. Prints one JSON document.

Log: U users, each with ``--events`` engagements drawn from one of 1,000 taste blocks of the catalogue (80%) or
the whole catalogue by a Zipf-like popularity (20%), so items have neighbours and a heavy-tailed degree.

Measured: fit time (ours item-kNN with K neighbours, implicit's CosineRecommender with the same K, as a ratio);
per request: the ``collab`` candidate source's top 1000, the ``collab_score`` feature of 1000 candidates, the
floor (``history @ W`` alone) and implicit's ``recommend(N=1000)``, for histories of 10, 100 and 1000 items;
and the agreement of the two models' neighbour lists.

    .venv/bin/python benchmarks/bench_collab.py                      # 200k items, 100k users
    .venv/bin/python benchmarks/bench_collab.py --items 1000000 --users 300000
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from common import pct, timed  # noqa: E402  (benchmarks/common.py)
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import logging
import time

import numpy as np
import scipy.sparse as sp

from recsys.collab import CollabConfig, ItemItem, binary_history, positive_matrix
from recsys.retrieval.sources import CollabSource
from recsys.types import Ragged, Requests


def synthetic_log(n_items: int, n_users: int, events: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blocks = 1000
    block_of_user = rng.integers(0, blocks, n_users)
    users = np.repeat(np.arange(n_users), events)
    in_block = rng.random(len(users)) < 0.8
    width = max(n_items // blocks, 1)
    block_item = block_of_user[users] * width + rng.integers(0, width, len(users))
    popular = np.minimum((rng.pareto(1.2, len(users)) * n_items / 50).astype(np.int64), n_items - 1)
    items = np.where(in_block, np.minimum(block_item, n_items - 1), popular)
    return users, items.astype(np.int64)


def per_request_ms(fn, reps: int) -> dict:
    """p50 / p99 / mean / max of ``reps`` timed calls of ``fn()`` after one warm-up call (benchmarks/common.py)."""
    fn()
    return {k: round(v, 3) for k, v in pct([timed(fn) for _ in range(reps)]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=20, help="engagements per user")
    ap.add_argument("--neighbors", type=int, default=200)
    ap.add_argument("--reps", type=int, default=50, help="timed requests per history length")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import implicit
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    users, items = synthetic_log(args.items, args.users, args.events, args.seed)
    x = positive_matrix(users, items, args.items)
    out: dict = {"benchmark": "collab", "machine": machine_info(),
                 "sizes": {"items": args.items, "users": args.users, "events": int(x.nnz),
                           "neighbors": args.neighbors}}

    t0 = time.perf_counter()
    model = ItemItem(CollabConfig(method="itemknn", n_neighbors=args.neighbors)).fit(users, items, args.items)
    ours_fit = time.perf_counter() - t0
    peer = CosineRecommender(K=args.neighbors)
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        peer.fit(sp.csr_matrix(x, dtype=np.float32), show_progress=False)
        peer_fit = time.perf_counter() - t0
    out["fit_s"] = {"ours_itemknn": round(ours_fit, 2), f"implicit_{implicit.__version__}_cosine": round(peer_fit, 2),
                    "ours_over_peer": round(ours_fit / peer_fit, 2)}
    w = model.weights
    out["weights"] = {"nnz": int(w.nnz), "bytes": int(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes)}

    # agreement of the neighbour lists (implicit's similarity keeps K per row too; ties may break differently)
    sim = sp.csr_matrix(peer.similarity)
    rng = np.random.default_rng(args.seed + 1)
    sample = rng.choice(args.items, 500, replace=False)
    overlaps = []
    for i in sample:
        a = set(w.indices[w.indptr[i]:w.indptr[i + 1]].tolist())
        row = sim[i]
        b = set(row.indices[row.data > 0].tolist()) - {int(i)}
        if a or b:
            overlaps.append(len(a & b) / max(len(a | b), 1))
    out["neighbour_jaccard_vs_peer"] = round(float(np.mean(overlaps)), 4) if overlaps else None

    source = CollabSource(model)
    user_items = sp.csr_matrix(x, dtype=np.float32)
    latency = {}
    for h_len in (10, 100, 1000):
        hist = rng.choice(args.items, h_len, replace=False).astype(np.int64)
        req = Requests(users=np.zeros(1, np.int64), timestamps=np.zeros(1, np.int64),
                       history=Ragged.from_lists([hist.tolist()]), exclude=Ragged.from_lists([hist.tolist()]))
        cands = rng.choice(args.items, (1, 1000), replace=False).astype(np.int64)
        row = sp.csr_matrix((np.ones(h_len, np.float32), (np.zeros(h_len, np.int64), hist)), shape=(1, args.items))
        floor = per_request_ms(lambda: binary_history(req.history, args.items, np.float32) @ w, args.reps)
        src = per_request_ms(lambda: source.candidates(req, 1000), args.reps)
        feat = per_request_ms(lambda: model.pair_scores(req.history, cands), args.reps)
        with threadpool_limits(limits=1):
            peer_ms = per_request_ms(lambda: peer.recommend(0, row, N=1000, filter_already_liked_items=True,
                                                            recalculate_user=True), args.reps)
        latency[f"history_{h_len}"] = {
            "floor_product": floor, "source_top1000": src, "feature_1000_candidates": feat,
            "implicit_recommend_1000": peer_ms,
            "source_over_floor_p50": round(src["p50_ms"] / max(floor["p50_ms"], 1e-9), 2),
            "source_over_peer_p50": round(src["p50_ms"] / max(peer_ms["p50_ms"], 1e-9), 2),
        }
    out["per_request"] = latency
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
