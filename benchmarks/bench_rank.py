"""Benchmark: heavy-ranking C pre-ranked candidates for one user (feature assembly + MMoE + value model), one
thread, with peers in the same run.

A synthetic world (``--preset demo`` with ``--impressions`` impressions by default) is split as the engine
splits it; a small two-tower retrieval stage and the LightGBM pre-ranker are fitted on their windows, then the
heavy ranker on its window (MMoE, ``--epochs`` epochs at most) and, as the architecture peer, the same stage
with a shared-bottom core. For each of ``--users`` test users, one request at a time (B = 1), the candidates
are what the engine hands the heavy ranker: ``--retrieve`` retrieved, pre-ranked, the best ``--candidates``
kept (prepared before timing). Timed per request:

* ``score``: ``RankStage.score`` (assemble + network + recalibration + value): the number that matters
* ``assemble``: ``recsys.features.assemble`` alone for the stage's features
* ``network``: the network alone on the already assembled rows (float64, as ``score`` runs it)
* ``network_float32``: the same network in float32 (what batch-invariant float64 scoring costs over it)
* peers: ``score`` of the shared-bottom stage, and ``PrerankStage.score`` (LightGBM) on the same candidates

and the batch throughput of ``score`` over all users at once. Prints one JSON document (also ``--out``).

    .venv/bin/python benchmarks/bench_rank.py [--users 200] [--candidates 100] [--out bench_rank.json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from common import bench_world, fit_stage, pct, test_requests, timed  # noqa: E402  (benchmarks/common.py)
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import dataclasses
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
    ap.add_argument("--retrieve", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the users (first one is warm-up)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(1)
    from recsys.engine import Engine, select_columns, top_columns
    from recsys.features import assemble
    from recsys.prerank.stage import PrerankConfig, PrerankStage
    from recsys.rank.stage import RankConfig, RankStage, _RowsModel, request_user_ids
    from recsys.rank.trainer import TrainConfig, predict

    t_setup = time.perf_counter()
    ds, split, catalog, retrieval = bench_world(args.data, args.preset, args.seed, args.impressions, args.retrieve,
                                                "--retrieve")
    prerank = fit_stage(PrerankStage(PrerankConfig(num_threads=1, seed=args.seed)), ds, split, catalog, "prerank",
                        Engine(retrieval, [], args.retrieve, catalog=catalog))
    served = Engine(retrieval, [(prerank, args.candidates)], args.retrieve, catalog=catalog)  # the ranker's pool
    cfg = RankConfig(train=TrainConfig(max_epochs=args.epochs), seed=args.seed)
    t_fit = time.perf_counter()
    mmoe = fit_stage(RankStage(cfg), ds, split, catalog, "rank", served)
    fit_s = time.perf_counter() - t_fit
    shared = fit_stage(RankStage(dataclasses.replace(cfg, arch="shared_bottom")), ds, split, catalog, "rank", served)

    requests = test_requests(ds, split, catalog, args.users, args.seed)
    cands = retrieval.retrieve(requests, args.retrieve)
    cands = select_columns(cands, top_columns(prerank.score(requests, cands)["score"], cands.items, args.candidates))
    setup_s = time.perf_counter() - t_setup
    b = len(requests)
    singles = [(requests.take(np.array([i])), cands.take(np.array([i]))) for i in range(b)]
    names = mmoe.enc.names

    def network_inputs(r, c):
        x = assemble(r, c, mmoe.ctx, names)
        ok = c.items >= 0
        bi, ci = np.nonzero(ok)
        cat, dense = mmoe.enc.transform(x[bi, ci], request_user_ids(r, mmoe.ctx.catalog)[bi])
        hist = mmoe.enc.history(r)[bi] if mmoe.enc.history_len > 0 else None
        tensors = {"cat": torch.from_numpy(cat), "dense": torch.from_numpy(dense),
                   "req": torch.arange(len(bi), dtype=torch.int64), "item_idx": torch.from_numpy(c.items[bi, ci])}
        return tensors, hist

    net64 = mmoe._scoring_net()
    inputs = [network_inputs(r, c) for r, c in singles]
    t = {"score": [], "assemble": [], "network": [], "network_float32": [], "peer_shared_bottom_score": [],
         "peer_prerank_score": []}
    for rep in range(args.repeats):
        for i, (r, c) in enumerate(singles):
            tensors, hist = inputs[i]
            t64 = {**tensors, "dense": tensors["dense"].double()}
            m64 = _RowsModel(net64, hist, mmoe.enc.n_items).eval()
            m32 = _RowsModel(mmoe.net, hist, mmoe.enc.n_items).eval()
            row = {
                "score": timed(lambda: mmoe.score(r, c)),
                "assemble": timed(lambda: assemble(r, c, mmoe.ctx, names)),
                "network": timed(lambda: predict(m64, t64, 8192, mmoe.parents)),
                "network_float32": timed(lambda: predict(m32, tensors, 8192, mmoe.parents)),
                "peer_shared_bottom_score": timed(lambda: shared.score(r, c)),
                "peer_prerank_score": timed(lambda: prerank.score(r, c)),
            }
            if rep > 0:
                for k, v in row.items():
                    t[k].append(v)
    t_batch = min(timed(lambda: mmoe.score(requests, cands)) for _ in range(2))
    n_valid = float(np.mean([(c.items >= 0).sum() for _, c in singles]))
    params = {name: int(sum(p.numel() for p in st.net.parameters())) for name, st in (("mmoe", mmoe),
                                                                                      ("shared_bottom", shared))}
    out = {
        "benchmark": "rank",
        "machine": machine(),
        "threads": 1,
        "sizes": {"items": catalog.n_items, "users_timed": b, "retrieved": args.retrieve,
                  "candidates": args.candidates, "valid_candidates_mean": n_valid, "features": len(names),
                  "embedded_features": len(mmoe.enc.embedded), "dense_columns": mmoe.enc.n_dense,
                  "history_len": mmoe.enc.history_len, "parameters": params, "impressions": len(ds.interactions),
                  "train_rows": mmoe.valid_metrics["train_rows"], "timed_passes": args.repeats - 1},
        "single_user": {k: pct(v) for k, v in t.items()},
        "batch": {"users": b, "total_ms": t_batch, "per_user_ms": t_batch / b},
        "valid_metrics": {"mmoe": mmoe.valid_metrics.get("valid"),
                          "shared_bottom": shared.valid_metrics.get("valid")},
        "fit_s": fit_s,
        "setup_s": setup_s,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
