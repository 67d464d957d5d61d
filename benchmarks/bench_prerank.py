"""Benchmark: pre-ranking C candidates for one user (feature assembly + LightGBM predict), one thread.

A synthetic world (``--preset demo`` with ``--impressions`` impressions by default) is split as the engine
splits it; a small two-tower retrieval stage gives each test user ``--candidates`` candidates, and the
pre-ranker (``--trees`` trees of ``--leaves`` leaves, no early stopping, so the model size is fixed) is fitted
on the pre-ranker window. Then for each of ``--users`` test users, one request at a time (B = 1):

* ``score``: ``PrerankStage.score`` (feature assembly + predict): the number that matters
* ``assemble``: ``recsys.features.assemble`` alone
* ``predict`` (the peer): ``Booster.predict`` alone on the already assembled rows, i.e. what the model costs
  without features; ``score - predict`` is the feature-assembly overhead
* per feature: each feature function alone (p50), to show where assembly time goes

and the batch throughput of ``score`` over all users at once. Candidates are retrieved before timing.
Prints one JSON document (also written to ``--out``).

    .venv/bin/python benchmarks/bench_prerank.py [--users 200] [--candidates 1000] [--out bench_prerank.json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from common import bench_world, fit_stage, pct, test_requests, timed  # noqa: E402  (benchmarks/common.py)
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    return shared_machine_info()



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: synthesize a world)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--impressions", type=int, default=400_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--leaves", type=int, default=31)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the users (first one is warm-up)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(1)
    from recsys.features import FeatureInputs, assemble, resolve
    from recsys.engine import Engine
    from recsys.prerank.stage import PrerankConfig, PrerankStage

    t_setup = time.perf_counter()
    ds, split, catalog, retrieval = bench_world(args.data, args.preset, args.seed, args.impressions, args.candidates,
                                                "--candidates")
    pcfg = PrerankConfig(num_threads=1, n_estimators=args.trees, num_leaves=args.leaves, valid_fraction=0.0,
                         seed=args.seed)
    stage = fit_stage(PrerankStage(pcfg), ds, split, catalog, "prerank",
                      Engine(retrieval, [], args.candidates, catalog=catalog))  # trained on the pool it scores

    requests = test_requests(ds, split, catalog, args.users, args.seed)
    cands = retrieval.retrieve(requests, args.candidates)
    setup_s = time.perf_counter() - t_setup
    b = len(requests)
    singles = [(requests.take(np.array([i])), cands.take(np.array([i]))) for i in range(b)]
    names = stage.feature_names
    feats = resolve(names, stage.ctx)
    rows = [assemble(r, c, stage.ctx, names)[c.items >= 0] for r, c in singles]

    t = {"score": [], "assemble": [], "predict": []}
    per_feature = {n: [] for n in names}
    for rep in range(args.repeats):
        for i, (r, c) in enumerate(singles):
            ts = timed(lambda: stage.score(r, c))
            ta = timed(lambda: assemble(r, c, stage.ctx, names))
            tp = timed(lambda: stage.booster.predict(rows[i], num_threads=1))
            if rep > 0:
                t["score"].append(ts)
                t["assemble"].append(ta)
                t["predict"].append(tp)
            if rep == args.repeats - 1:
                for f in feats:
                    x = FeatureInputs(r, c, stage.ctx)
                    per_feature[f.name].append(timed(lambda: f.fn(x)))
    t_batch = min(timed(lambda: stage.score(requests, cands)) for _ in range(2))
    n_valid = float(np.mean([(c.items >= 0).sum() for _, c in singles]))
    out = {
        "benchmark": "prerank",
        "machine": machine(),
        "threads": 1,
        "sizes": {"items": catalog.n_items, "users_timed": b, "candidates": args.candidates,
                  "valid_candidates_mean": n_valid, "features": len(names),
                  "trees": stage.booster.num_trees(), "leaves": args.leaves,
                  "graph_edges": int(stage.ctx.graph.nnz), "impressions": len(ds.interactions),
                  "timed_passes": args.repeats - 1},
        "single_user": {k: pct(v) for k, v in t.items()},
        "feature_assembly_overhead_p50_ms": float(np.percentile(t["score"], 50) - np.percentile(t["predict"], 50)),
        "per_feature_p50_ms": {k: float(np.percentile(v, 50)) for k, v in
                               sorted(per_feature.items(), key=lambda kv: -np.percentile(kv[1], 50))},
        "batch": {"users": b, "total_ms": t_batch, "per_user_ms": t_batch / b},
        "target_p50_ms": 3.0,
        "meets_target": bool(np.percentile(t["score"], 50) <= 3.0),
        "setup_s": setup_s,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
