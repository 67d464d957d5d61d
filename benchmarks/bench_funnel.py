"""Whole-funnel latency for one user at a time: retrieve K -> pre-rank M -> heavy rank -> top k.

Loads a bundle (``--bundle``) and its dataset (``--data``), builds requests for test-window users exactly as
the evaluator does, and calls ``Engine.rank`` for one user per call on one thread, recording each stage's
time. The peer in the same run is the retrieval stage alone (the funnel's floor) and the same users ranked as
one batch (per-user cost when batched). Prints JSON.

    python benchmarks/bench_funnel.py --bundle runs/demo/artifacts/demo --data runs/demo/data --users 200
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def machine() -> dict:
    return shared_machine_info()


def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--retrieve-k", type=int, default=1000)
    ap.add_argument("--prerank-k", type=int, default=100)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    from offline_eval.evaluator import EvalData
    from recsys.config import Config, from_dict
    from recsys.bundle import load_bundle
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.training import load_engine

    cfg = from_dict(Config, load_bundle(args.bundle).manifest["config"])
    engine = load_engine(args.bundle)
    engine = dataclasses.replace(
        engine,
        retrieve_k=args.retrieve_k,
        stages=[(s, args.prerank_k if s.name == "prerank" else args.k) for s, _ in engine.stages],
    )
    ds = read_dataset(args.data)
    split = split_dataset(ds, cfg.split)
    catalog = Catalog.from_dataset(ds, train=split.before(split.names[-1]))
    data = EvalData.from_split(split, cfg.eval, catalog, split.names[-1])
    n = min(args.users, len(data.requests))
    reqs = data.requests.take(np.arange(n))
    for b in range(min(5, n)):  # warm-up
        engine.rank(reqs.take([b]), args.k)
    per_stage: dict[str, list[float]] = {}
    total: list[float] = []
    retrieval_only: list[float] = []
    for b in range(n):
        one = reqs.take([b])
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        engine.rank(one, args.k, timings=timings)
        total.append((time.perf_counter() - t0) * 1000)
        for k, v in timings.items():
            per_stage.setdefault(k, []).append(v)
        t0 = time.perf_counter()
        engine.retrieval.retrieve(engine.encode(one), args.retrieve_k)
        retrieval_only.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    engine.rank(reqs, args.k)
    batched = (time.perf_counter() - t0) * 1000 / n
    out = {
        "benchmark": "funnel_single_user",
        "machine": machine(),
        "bundle": str(args.bundle),
        "sizes": {"items": catalog.n_items, "users_timed": n, "retrieve_k": args.retrieve_k,
                  "prerank_k": args.prerank_k, "k": args.k, "threads": args.threads,
                  "stages": ["retrieval"] + [s.name for s, _ in engine.stages]},
        "total": pct(total),
        "stages": {k: pct(v) for k, v in per_stage.items()},
        "peer_retrieval_alone": pct(retrieval_only),
        "batched_per_user_ms": batched,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
