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
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    return shared_machine_info()


def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


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
    from recsys.configlib import SplitConfig
    from recsys.data.catalog import Catalog, positives
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import synthesize
    from recsys.features import FeatureInputs, assemble, resolve
    from recsys.prerank.stage import PrerankConfig, fit_on_split
    from recsys.retrieval.stage import RetrievalConfig, RetrievalStage
    from recsys.retrieval.train import TwoTowerConfig

    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            synthesize(args.preset, args.seed, Path(tmp) / "world", n_impressions=args.impressions)
            ds = read_dataset(Path(tmp) / "world")
        else:
            ds = read_dataset(args.data)
    split = split_dataset(ds, SplitConfig())
    catalog = Catalog.from_dataset(ds, train=split["train"])
    if catalog.n_items < args.candidates:
        raise SystemExit(f"the catalogue has {catalog.n_items} items < --candidates {args.candidates}")
    rcfg = RetrievalConfig(two_tower=TwoTowerConfig(dim=32, emb_dim=32, feature_dim=8, hidden=(64,), max_epochs=3,
                                                    threads=1), index_factory="Flat", index_threads=1)
    retrieval = RetrievalStage().fit(ds, catalog, split["train"], split["prerank"], rcfg)
    pcfg = PrerankConfig(num_threads=1, n_estimators=args.trees, num_leaves=args.leaves, valid_fraction=0.0,
                         candidates_k=200, seed=args.seed)
    stage = fit_on_split(ds, catalog, retrieval, split, pcfg)

    test = split["test"]
    first = test.drop_duplicates(catalog.user_col)
    first = first.iloc[np.random.default_rng(args.seed).permutation(len(first))[: args.users]]
    context = {c: first[c].to_numpy() for c in ds.schema.context_columns if c in first.columns}
    requests = catalog.requests(first[catalog.user_col].to_numpy(), first[catalog.time_col].to_numpy(),
                                positives(split.before("test"), ds.schema.positive_label), context=context)
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
