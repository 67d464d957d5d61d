"""``recsys experiment drift``: adversarial validation between two windows of the split.

    recsys experiment drift --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...] [--bundle PATH]
                            [--old WINDOW] [--new WINDOW] [--folds 5] [--permutations 5] [--bootstrap 1000]
                            [--max-users 2000] [--rows-per-request 50] [--drop A,B] [--seed 0]
                            [--overwrite]

Labels the pre-ranker's feature rows of ``--old`` (default: the pre-ranker's window) 0 and of ``--new``
(default: the test window) 1, and reports how well a classifier tells them apart and which features it uses
(:mod:`recsys.experiments.drift`, :mod:`offline_eval.drift`). Both windows' candidates come from one retrieval
stage trained before both: the ``--bundle``'s (refused if its two-tower was refit on a window from ``--old``
on), else one trained here on the retrieval window. Writes report.md, importance.png, distributions.png,
results.json and report.html.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

logger = logging.getLogger(__name__)


def register(exp: argparse._SubParsersAction) -> None:
    from recsys.commands.experiment import add_prerank_args

    p = exp.add_parser("drift", help="adversarial validation between two windows of the split (AUC, drifting "
                                     "features)")
    add_prerank_args(p, "prerank.features=[pop_7d,ann_score]")
    p.add_argument("--old", default=None, metavar="WINDOW", help="the earlier window (default: the pre-ranker's)")
    p.add_argument("--new", default=None, metavar="WINDOW", help="the later window (default: the test window)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds, grouped by user (default 5)")
    p.add_argument("--permutations", type=int, default=5,
                   help="refits with shuffled window labels for the null AUC (default 5; 0: none)")
    p.add_argument("--bootstrap", type=int, default=1000, help="user resamples for the AUC's CI (default 1000)")
    p.add_argument("--max-users", type=int, default=2000,
                   help="at most this many requests (users) per window, a seeded sample (default 2000; 0: all)")
    p.add_argument("--rows-per-request", type=int, default=50,
                   help="at most this many candidates per request, a seeded sample (default 50; 0: all)")
    p.add_argument("--drop", default="", metavar="NAMES",
                   help="comma-separated features to leave out of the classifier (e.g. the ones expected to "
                        "drift, to see what else separates the windows)")
    p.add_argument("--seed", type=int, default=0, help="folds, samples, bootstrap and classifier seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    from offline_eval.drift import DriftConfig, adversarial_validation
    from recsys.commands.experiment import prerank_inputs
    from recsys.experiments.drift import drift_table, verdict, write_report

    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    for flag, value in (("--max-users", args.max_users), ("--rows-per-request", args.rows_per_request)):
        if value < 0:
            raise ValueError(f"{flag}: must be >= 0 (0: all), got {value}")
    dcfg = DriftConfig(folds=args.folds, seed=args.seed, permutations=args.permutations, bootstrap=args.bootstrap)
    t0 = time.perf_counter()

    def check_new(names: list[str], windows: dict) -> None:
        old, new = args.old or windows["prerank"], args.new or windows["test"]
        if new not in names:
            raise ValueError(f"--new: unknown window {new!r}; split windows: {names}")
        if names.index(new) <= names.index(old):
            raise ValueError(f"--new: {new!r} must come after --old {old!r} (windows in time order: {names})")

    inp = prerank_inputs(args, rows_window=args.old, what="--old", check=check_new)
    windows = inp.windows
    old, new = args.old or windows["prerank"], args.new or windows["test"]
    table = drift_table(inp.ds, inp.catalog, inp.retrieval, inp.split, old, new, windows["retrieval"], inp.pcfg,
                        inp.cfg.engine.retrieve_k, max_users=args.max_users, rows_per_request=args.rows_per_request,
                        seed=args.seed)
    dropped = [d.strip() for d in args.drop.split(",") if d.strip()]
    table = table.without(dropped)
    t_rows = time.perf_counter() - t0
    res = adversarial_validation(table.X, table.window, table.users, table.names, dcfg, units=table.requests,
                                 categorical=table.categorical)
    tcol = inp.catalog.time_col
    span = {w: [int(inp.split[w][tcol].min()), int(inp.split[w][tcol].max())] for w in (old, new)}
    meta = {"old": old, "new": new, "window_time_range": span, "windows": windows,
            "retrieval_trained_on": inp.trained_on, "retrieve_k": inp.cfg.engine.retrieve_k,
            "dropped": dropped, "max_users": args.max_users, "rows_per_request": args.rows_per_request,
            "data": str(args.data),
            "bundle": None if args.bundle is None else str(args.bundle),
            "seconds": {"rows": round(t_rows, 1), "total": round(time.perf_counter() - t0, 1)}}
    write_report(res, table, args.out, meta, overwrite=args.overwrite)
    top = [r["feature"] for r in res.features()[:5]]
    print(json.dumps({"out": str(args.out), "old": old, "new": new, "auc": round(res.auc, 4),
                      "auc_ci95": [round(a, 4) for a in res.auc_ci], "null_auc_mean": res.null_mean,
                      "p_value": res.p_value, "top_features": top, "verdict": verdict(res).replace("*", "")},
                     indent=2))
    return 0
