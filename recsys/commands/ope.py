"""``recsys experiment ope``: off-policy evaluation of ranking policies on a bandit log with propensities.

    recsys experiment ope --log LOGDIR --out DIR [--bundle B --data D --systems engine,no_exposure,popularity]
                          [--policy top-ctr [--train-fraction 0.5]] [--policy-file FILE] [--seed 0] [--overwrite]

``--bundle/--data``: the bundle's systems and baselines rank every context of the log as the evaluator ranks a
test request (the log must come from the bundle's dataset, its sessions inside the log's ``window`` of the
bundle's split: ``recsys data explore`` writes such a log); with a synthetic dataset the report shows the
oracle's true value of each policy beside its estimates. ``--policy top-ctr``: the items with the highest click
rate in the first ``--train-fraction`` of the log (by time), evaluated on the rest (for a log without a model,
e.g. the Open Bandit Dataset's random policy: ``recsys data import-obd``). ``--policy-file``: a fixed ranking,
item ids best first. See :mod:`recsys.experiments.ope`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(exp: argparse._SubParsersAction) -> None:
    p = exp.add_parser("ope", help="off-policy evaluation (IPS, SNIPS, DR, item-position) on a bandit log")
    p.add_argument("--log", required=True, type=Path, help="bandit-log folder (log.yaml + log.parquet)")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--bundle", type=Path, default=None, help="rank the log's contexts with this bundle's systems")
    p.add_argument("--data", type=Path, default=None, help="the bundle's dataset folder (needed with --bundle)")
    p.add_argument("--systems", default="engine,no_exposure,popularity", metavar="NAMES",
                   help="comma-separated engine systems of the bundle and baselines (default: "
                        "engine,no_exposure,popularity)")
    p.add_argument("--policy", choices=["top-ctr"], default=None,
                   help="a context-free policy: top-ctr = the items with the highest click rate in the first "
                        "--train-fraction of the log, evaluated on the rest")
    p.add_argument("--train-fraction", type=float, default=0.5, help="share of the log (by time) top-ctr learns "
                                                                       "from (default 0.5)")
    p.add_argument("--policy-file", type=Path, default=None, help="a fixed ranking: item ids best first, one a line")
    p.add_argument("--seed", type=int, default=0, help="seed of the DR reward model's cross-fitting folds")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_ope)


def cmd_ope(args: argparse.Namespace) -> int:
    import numpy as np

    from recsys.data.bandit_log import read_bandit_log
    from recsys.experiments import ope as O

    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    if args.bundle is None and args.policy is None and args.policy_file is None:
        raise ValueError("recsys experiment ope: nothing to evaluate; give --bundle/--data, --policy or --policy-file")
    if (args.bundle is None) != (args.data is None):
        raise ValueError("--bundle and --data go together (the bundle's systems rank the dataset's contexts)")
    if not 0 < args.train_fraction < 1:
        raise ValueError(f"--train-fraction: expected a number in (0, 1), got {args.train_fraction}")
    t0 = time.perf_counter()
    log = read_bandit_log(args.log)
    arrays = O.session_arrays(log)
    rankings: dict = {}
    oracle = None
    description: dict = {"log": str(args.log), "bundle": None if args.bundle is None else str(args.bundle)}
    if args.policy == "top-ctr":
        order = np.argsort(arrays.timestamps, kind="stable")
        cut = int(round(args.train_fraction * len(order)))
        if cut < 1 or cut >= len(order):
            raise ValueError(f"--train-fraction {args.train_fraction}: leaves no session on one side of the cut")
        train, test = np.sort(order[:cut]), np.sort(order[cut:])
        rankings["top_ctr"] = O.top_ctr_policy(arrays.take(train), log.slate_size)
        arrays = arrays.take(test)
        description["top_ctr"] = {"train_sessions": int(len(train)), "eval_sessions": int(len(test)),
                                  "items": rankings["top_ctr"].tolist()}
    if args.policy_file is not None:
        rankings["policy_file"] = O.read_policy_file(args.policy_file, log.slate_size, log.table["item_id"].dtype)
        description["policy_file"] = {"path": str(args.policy_file), "items": rankings["policy_file"].tolist()}
    if args.bundle is not None:
        ranked, ds = _bundle_rankings(args, log, arrays)
        rankings.update(ranked)
        if ds.truth_dir is not None:
            from recsys.data.synthetic import Oracle

            oracle = Oracle.load(ds.truth_dir)
    res = O.run_ope(log, rankings, oracle=oracle, arrays=arrays, seed=args.seed)
    text = O.compare_text(res, "engine", "no_exposure")
    if text is not None:
        res["ranking"] = text
    res["run"] = {**description, "seconds": time.perf_counter() - t0}
    O.write_report(res, args.out, overwrite=args.overwrite)
    print(O.format_report(res).split("![")[0].rstrip())
    print(f"report: {args.out / 'report.md'}")
    return 0


def _bundle_rankings(args, log, arrays):
    """({policy: (C, L) item ids} of the bundle's systems and the baselines named in --systems, the dataset)."""
    from offline_eval.baselines import BASELINES
    from recsys.bundle import check_trained_on, load_bundle
    from recsys.config import Config, from_dict
    from recsys.data.schema import read_dataset
    from recsys.experiments.ope import system_rankings
    from recsys.training import load_systems

    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    bundle = load_bundle(args.bundle)
    have = list(bundle.manifest.get("systems", {}))
    unknown = [n for n in names if n not in have and n not in BASELINES]
    if unknown:
        raise ValueError(f"--systems: unknown system(s) {unknown}; the bundle's systems: {', '.join(have)}; "
                         f"baselines: {', '.join(BASELINES)}")
    cfg = from_dict(Config, bundle.manifest["config"])
    check_trained_on(bundle, cfg.split, args.data)
    window = log.meta.get("window")
    if window is None:
        raise ValueError(f"{args.log}/log.yaml: window: missing; a log ranked with a bundle names the split window "
                         "its sessions come from (recsys data explore writes it)")
    ds = read_dataset(args.data)
    systems = load_systems(args.bundle, [n for n in names if n in have])
    baselines = [n for n in names if n in BASELINES and n not in have]
    ranked = system_rankings(arrays, ds, cfg, systems, baselines, window, log.slate_size)
    return {n: ranked[n] for n in names}, ds
