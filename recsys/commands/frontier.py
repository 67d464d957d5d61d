"""``recsys experiment frontier``: the latency-quality frontier of a bundle's serving-time knobs.

    recsys experiment frontier --bundle B --data D --out DIR [--retrieve-k 250,500,1000] [--prerank-k 25,50,100]
                               [--search-width exact,1,4,16,64] [--index FACTORY] [--budget-ms 15]
                               [--users 300] [--seed 0] [--warmup 10] [--repeats 1]
                               [--overwrite]

Sweeps retrieve_k x prerank_k x the ANN search width of the bundle's engine without retraining, measures
ndcg@10 / recall (evaluator) and single-request p50 / p95 / p99 latency (one thread) on the same sampled test
users, and writes report.md, frontier.png, results.json and report.html (:mod:`recsys.experiments.frontier`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(exp: argparse._SubParsersAction) -> None:
    p = exp.add_parser("frontier", help="latency-quality frontier over retrieve_k, prerank_k and the ANN search "
                                        "width (no retraining)")
    p.add_argument("--bundle", required=True, type=Path, help="trained bundle (a version folder or its parent)")
    p.add_argument("--data", required=True, type=Path, help="the canonical dataset folder the bundle was trained on")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--retrieve-k", default=None, metavar="LIST",
                   help="retrieve_k values (default 250,500,1000; the bundle's own point is always measured)")
    p.add_argument("--prerank-k", default=None, metavar="LIST", help="pre-ranker cut-offs (default 25,50,100)")
    p.add_argument("--search-width", default=None, metavar="LIST",
                   help="'exact' and nprobe (IVF) / efSearch (HNSW) values; default exact plus 1,4,16,64 for IVF, "
                        "128,512,2048 for HNSW; a Flat index has no width (exact only)")
    p.add_argument("--index", default=None, metavar="FACTORY",
                   help="rebuild the index over the bundle's item vectors with this FAISS factory (e.g. IVF64,Flat)"
                        " instead of using the bundle's")
    p.add_argument("--budget-ms", type=float, default=15.0, help="p99 latency budget in ms (default 15)")
    p.add_argument("--users", type=int, default=300, help="test users sampled (eval.max_users; default 300)")
    p.add_argument("--seed", type=int, default=0, help="user sample (eval.seed) and timing order seed (default 0)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up requests per point (default 10)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed passes over the users' requests per point (default 1); more passes steady the p99")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_frontier)


def cmd_frontier(args: argparse.Namespace) -> int:
    from recsys.experiments import frontier as F

    t_start = time.perf_counter()
    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    rks = None if args.retrieve_k is None else F.parse_ints("--retrieve-k", args.retrieve_k)
    pks = None if args.prerank_k is None else F.parse_ints("--prerank-k", args.prerank_k)
    widths = None if args.search_width is None else F.parse_widths("--search-width", args.search_width)
    if not (math.isfinite(args.budget_ms) and args.budget_ms > 0):
        raise ValueError(f"--budget-ms: expected a positive number of milliseconds, got {args.budget_ms}")
    if args.users < 1:
        raise ValueError(f"--users: must be >= 1, got {args.users}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"--warmup: must be >= 0, got {args.warmup}")
    if args.index is not None:
        from recsys.retrieval.index import parse_factory

        try:
            parse_factory(args.index)
        except ValueError as exc:
            raise ValueError(f"--index: {exc}") from None

    from offline_eval.evaluator import EvalData, eval_window
    from recsys.bundle import check_trained_on, load_bundle
    from recsys.config import Config, from_dict
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.training import load_system
    from recsys.validate import check_config

    bundle = load_bundle(args.bundle)
    ds = read_dataset(args.data)
    cfg = check_config(from_dict(Config, bundle.manifest["config"]), ds, stages=True, baselines=[])
    check_trained_on(bundle, cfg.split, args.data)
    engine = load_system(bundle, "engine")
    if engine.catalog is not None and Catalog.from_dataset(ds).items != engine.catalog.items:
        raise ValueError(f"{args.bundle}: the bundle's item catalogue differs from {args.data}'s")

    retrieval = engine.retrieval
    note = "the bundle's index"
    if args.index is not None:
        from recsys.retrieval.index import AnnIndex

        retrieval.index = AnnIndex.build(retrieval.item_vectors, args.index, retrieval.cfg.nprobe,
                                         retrieval.cfg.ef_search, seed=args.seed, threads=1)
        note = f"rebuilt here over the bundle's item vectors with {args.index} (two-tower unchanged)"
    index = retrieval.index
    param, stored, largest = index.search_width()
    widths, width_skips = F.check_widths(widths or F.default_widths(param), param, largest, index.factory)

    k = engine.output_k
    prerank = F.prerank_stage(engine)
    if prerank is None and pks is not None:
        raise ValueError(f"--prerank-k: the bundle's engine has no pre-ranker (stages: {engine.stage_names})")
    bundle_pk = None if prerank is None else dict((s.name, c) for s, c in engine.stages)[prerank]
    served = F.EXACT if (param is None or index.auto_exact(engine.retrieve_k)) else stored
    note += (f"; as served, auto mode searches exhaustively (N = {index.ntotal} <= 16384 or k >= N / 8)"
             if served == F.EXACT and param is not None else f"; stored {param} {stored}" if param else "")
    bundle_point = F.Point(engine.retrieve_k, bundle_pk, served, auto=True)
    points, skipped = F.grid_points(rks or F.DEFAULT_RETRIEVE_KS, pks or ((None,) if prerank is None else
                                                                      F.DEFAULT_PRERANK_KS), widths, k, bundle_point)
    logger.info("frontier: %d points (%d skipped) on %s", len(points), len(skipped) + len(width_skips), args.bundle)

    split = split_dataset(ds, cfg.split)
    window = eval_window(split)
    catalog = Catalog.from_dataset(ds, train=split.before(window))
    ecfg = dataclasses.replace(cfg.eval, max_users=args.users, seed=args.seed)
    data = EvalData.from_split(split, ecfg, catalog, window)
    setting = F.IndexSetting(index, param, stored)
    info = {"bundle": str(args.bundle), "data": str(args.data), "seed": args.seed, "index": index.factory,
            "index_rebuilt": args.index, "index_note": note, "width_param": param, "stored_width": stored,
            "n_items": index.ntotal, "machine": F.machine_note(), "window": window,
            "trained_cutoffs": {"retrieve_k": engine.retrieve_k, **{s.name: c for s, c in engine.stages}}}
    res = F.run_frontier(engine, data, ecfg, points, setting, k, args.budget_ms, args.warmup, args.seed,
                         skipped + width_skips, info, repeats=args.repeats)
    res.info["wall_seconds"] = time.perf_counter() - t_start
    F.write_report(res, args.out, overwrite=args.overwrite)
    b = res.rows[res.bundle_index]
    print(f"{len(points)} points on {data.n_users} users; bundle {b['label']}: ndcg@10 {b['ndcg@10']:.4f}, "
          f"p99 {b['p99_ms']:.2f} ms")
    if res.best_index is None:
        print(f"no point within p99 <= {args.budget_ms:g} ms")
    else:
        best = res.rows[res.best_index]
        print(f"best under p99 <= {args.budget_ms:g} ms: {best['label']}: ndcg@10 {best['ndcg@10']:.4f}, "
              f"p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms")
    print(f"frontier: {', '.join(res.rows[i]['label'] for i in res.frontier)}")
    print(f"report: {args.out / 'report.md'} ({res.info['wall_seconds']:.0f} s)")
    return 0
