"""Benchmark: item-graph construction, global PageRank and per-user personalized PageRank at catalogue scale,
with networkx as the peer on a smaller graph in the same run. Prints one JSON document.

Graph: mean-field preferential attachment (Barabasi & Albert 1999), generated vectorized: node i > 0 sends
``m`` edges to earlier nodes j = floor(i * U^2), U ~ Uniform(0, 1), so P(j | i) is proportional to
j^(-1/2), the attachment probability of the BA model's mean-field degree sqrt(i / j). Weights are
co-engagement-like counts (1 + Geometric(0.5)); the graph is symmetrised and pruned to each item's top-50
neighbours as :func:`recsys.graph.build_item_graph` does, so it has the shape of an item graph.

    .venv/bin/python benchmarks/bench_graph.py                 # 1M items, networkx peer on 20k
    .venv/bin/python benchmarks/bench_graph.py --n 200000 --users 20
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp

from recsys.graph import (
    GraphConfig,
    GraphSource,
    PPRConfig,
    Transition,
    build_item_graph,
    pagerank,
    personalized_pagerank,
)
from recsys.graph.item_graph import _top_m_per_row
from recsys.types import Ragged, Requests


class _IterationLog(logging.Handler):
    """Collects the power iteration's 'converged after N iterations' debug records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.iterations: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "converged after" in record.getMessage():
            self.iterations.append(int(record.args[-1]))


def pa_graph(n: int, m: int, seed: int, top_m: int = 50) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    src = np.repeat(np.arange(1, n, dtype=np.int64), m)
    dst = np.floor(src * rng.random(len(src)) ** 2).astype(np.int64)
    w = 1.0 + rng.geometric(0.5, len(src)).astype(np.float64)
    a = sp.csr_matrix((w, (src, dst)), shape=(n, n))
    a = sp.csr_matrix(a + a.T)
    a.sum_duplicates()
    a = _top_m_per_row(a, top_m)
    return sp.csr_matrix(a, dtype=np.float32)


def seed_sets(adj: sp.csr_matrix, n_users: int, n_seeds: int, seed: int) -> list[np.ndarray]:
    """Each user's 'history': n_seeds items drawn proportional to degree (popular items are engaged more)."""
    rng = np.random.default_rng(seed)
    deg = np.diff(adj.indptr).astype(np.float64) + 1.0
    cdf = np.cumsum(deg) / deg.sum()
    return [np.searchsorted(cdf, rng.random(n_seeds)) for _ in range(n_users)]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def machine() -> dict:
    return shared_machine_info()


def bench_build(n_items: int, n_users: int, per_user: int, seed: int) -> dict:
    """build_item_graph on a synthetic log: users engage popular-skewed items over 30 days."""
    rng = np.random.default_rng(seed)
    r = n_users * per_user
    users = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    items = np.floor(n_items * rng.random(r) ** 2).astype(np.int64)  # popularity skew
    times = rng.integers(0, 30 * 86400, r)
    graph, secs = timed(build_item_graph, users, items, times, n_items, GraphConfig())
    return {"engagements": r, "items": n_items, "users": n_users, "edges": int(graph.nnz), "seconds": round(secs, 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="items in the large graph")
    ap.add_argument("--m", type=int, default=8, help="edges sent per new node (~2m per node after symmetrising)")
    ap.add_argument("--peer-n", type=int, default=20_000, help="items in the graph shared with networkx")
    ap.add_argument("--users", type=int, default=50, help="users timed for PPR")
    ap.add_argument("--seeds", type=int, default=20, help="history items per user (PPR seeds)")
    ap.add_argument("--eps", type=float, default=1e-6, help="forward-push threshold")
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--exact-users", type=int, default=3, help="users whose push result is checked vs power")
    ap.add_argument("--build-users", type=int, default=100_000, help="users in the build_item_graph log")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    log = _IterationLog()
    pr_logger = logging.getLogger("recsys.graph.pagerank")
    pr_logger.addHandler(log)
    pr_logger.setLevel(logging.DEBUG)
    out: dict = {"benchmark": "graph", "machine": machine(), "args": vars(args)}

    # ---- item graph construction from a log -------------------------------------------------------
    out["build_item_graph"] = bench_build(args.n, args.build_users, 20, args.seed)

    # ---- large graph: global PageRank ------------------------------------------------------------
    adj, t_gen = timed(pa_graph, args.n, args.m, args.seed)
    t, t_trans = timed(Transition.from_adjacency, adj)
    gpr, t_pr = timed(pagerank, t, 0.85, args.tol, 200)
    out["large"] = {
        "nodes": args.n,
        "edges": int(adj.nnz),
        "edges_per_node": round(adj.nnz / args.n, 2),
        "max_out_degree": int(np.diff(adj.indptr).max()),
        "max_in_degree": int(np.bincount(adj.indices, minlength=args.n).max()),
        "dangling": int(t.dangling.sum()),
        "generate_s": round(t_gen, 3),
        "transition_s": round(t_trans, 3),
        "pagerank_s": round(t_pr, 3),
        "pagerank_total_s": round(t_trans + t_pr, 3),
        "pagerank_iterations": log.iterations[-1] if log.iterations else None,
        "pagerank_target_s": 60,
        "pagerank_sum": float(gpr.sum()),
    }

    # ---- large graph: PPR per user, forward push -------------------------------------------------
    users = seed_sets(adj, args.users, args.seeds, args.seed + 1)
    lat, nnz = [], []
    personalized_pagerank(t, Ragged.from_lists([users[0]]), method="push", eps=args.eps, global_pr=gpr)  # warm
    for s in users:
        res, secs = timed(personalized_pagerank, t, Ragged.from_lists([s]), method="push", eps=args.eps,
                          global_pr=gpr)
        lat.append(secs * 1e3)
        nnz.append(res.nnz)
    lat = np.array(lat)
    exact_err = []
    for s in users[: args.exact_users]:
        seeds = Ragged.from_lists([s])
        exact, secs = timed(personalized_pagerank, t, seeds, tol=args.tol, max_iter=200)
        exact = exact[0]
        push = personalized_pagerank(t, seeds, method="push", eps=args.eps).toarray()[0]
        top = np.argsort(-exact)[:100]
        exact_err.append({
            "l1": float(np.abs(exact - push).sum()),
            "max_abs": float(np.abs(exact - push).max()),
            "top100_overlap": len(set(top.tolist()) & set(np.argsort(-push)[:100].tolist())) / 100,
            "power_ppr_ms": round(secs * 1e3, 1),
        })
    src = GraphSource(adj, PPRConfig(last_n=args.seeds, method="push", eps=args.eps))
    src.transition, src.global_pr = t, gpr  # reuse the fitted state (fit() would recompute it)
    req = Requests(users=np.arange(len(users)), timestamps=np.zeros(len(users)),
                   history=Ragged.from_lists(users), exclude=Ragged.from_lists(users))
    _, t_cand = timed(src.candidates, req, 200)
    out["large_ppr_push"] = {
        "users": len(users),
        "seeds_per_user": args.seeds,
        "eps": args.eps,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "mean_nnz": int(np.mean(nnz)),
        "vs_power": exact_err,
        "graph_source_candidates_k200_batch_ms": round(t_cand * 1e3, 1),
    }

    # ---- peer: networkx on a smaller graph --------------------------------------------------------
    import networkx as nx

    small = pa_graph(args.peer_n, args.m, args.seed + 2)
    coo = small.tocoo()
    g = nx.DiGraph()
    g.add_nodes_from(range(args.peer_n))
    _, t_nxbuild = timed(g.add_weighted_edges_from, zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()))
    ref, t_nx = timed(nx.pagerank, g, alpha=0.85, tol=args.tol, max_iter=200)
    _, t_nx_conv = timed(nx.to_scipy_sparse_array, g, weight="weight", dtype=float)  # part of every nx call
    ref = np.array([ref[i] for i in range(args.peer_n)])

    def ours_global():
        return pagerank(small, 0.85, args.tol, 200)

    ours, t_ours = timed(ours_global)
    peer_users = seed_sets(small, 10, args.seeds, args.seed + 3)
    t_nx_ppr, t_pw_ppr, t_push_ppr, err_ppr = [], [], [], []
    ts = Transition.from_adjacency(small)
    for s in peer_users:
        pers = dict(zip(*np.unique(s, return_counts=True)))
        r_nx, secs = timed(nx.pagerank, g, alpha=0.85, personalization={int(k): float(v) for k, v in pers.items()},
                           tol=args.tol, max_iter=200)
        t_nx_ppr.append(secs)
        r_pw, secs = timed(personalized_pagerank, ts, Ragged.from_lists([s]), tol=args.tol, max_iter=200)
        t_pw_ppr.append(secs)
        _, secs = timed(personalized_pagerank, ts, Ragged.from_lists([s]), method="push", eps=args.eps)
        t_push_ppr.append(secs)
        err_ppr.append(float(np.abs(r_pw[0] - np.array([r_nx[i] for i in range(args.peer_n)])).max()))
    out["peer_networkx"] = {
        "networkx": nx.__version__,
        "nodes": args.peer_n,
        "edges": int(small.nnz),
        "nx_graph_build_s": round(t_nxbuild, 3),
        "nx_pagerank_s": round(t_nx, 4),
        "nx_to_scipy_s_within_each_call": round(t_nx_conv, 4),
        "ours_pagerank_s": round(t_ours, 4),
        "speedup_pagerank": round(t_nx / t_ours, 1),
        "max_abs_diff_pagerank": float(np.abs(ours - ref).max()),
        "nx_ppr_ms_mean": round(1e3 * float(np.mean(t_nx_ppr)), 2),
        "ours_ppr_power_ms_mean": round(1e3 * float(np.mean(t_pw_ppr)), 2),
        "ours_ppr_push_ms_mean": round(1e3 * float(np.mean(t_push_ppr)), 2),
        "speedup_ppr_power": round(float(np.mean(t_nx_ppr) / np.mean(t_pw_ppr)), 1),
        "speedup_ppr_push": round(float(np.mean(t_nx_ppr) / np.mean(t_push_ppr)), 1),
        "max_abs_diff_ppr_power_vs_nx": max(err_ppr),
    }
    out["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
