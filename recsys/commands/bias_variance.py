"""``recsys experiment bias-variance``: bootstrap bias-variance decomposition of a stage's predictions.

    recsys experiment bias-variance --data DIR --out DIR [--stage prerank|rank|prerank,rank] [--bundle PATH]
                                    [--config FILE] [--set KEY=VALUE ...] [--resamples 5] [--seed 0]
                                    [--model-seed vary|fixed] [--task NAME] [--max-test-users N] [--overwrite]

M bootstrap resamples of the stage's training requests, M refits with the stage's config, per-instance mean and
variance of the predicted probability on the test window's rows, and MSE = bias^2 + variance + noise averaged
over them (:mod:`recsys.experiments.bias_variance`, :mod:`offline_eval.bias_variance`). ``--bundle``: its
candidate stage (and, for the heavy ranker, its pre-ranker) serve the rows, and its manifest's config is the
default config; a bundle whose two-tower was trained on the stage's window (``retrieval.refit``) is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(exp: argparse._SubParsersAction) -> None:
    p = exp.add_parser("bias-variance", help="bootstrap bias-variance decomposition of a stage's predictions")
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--stage", default="prerank", help="prerank, rank or prerank,rank (default prerank)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="use this bundle's candidate stage (and pre-ranker) and its config as the default")
    p.add_argument("--config", type=Path, help="engine config YAML (default: the bundle's, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set prerank.num_leaves=63 (repeatable)")
    p.add_argument("--resamples", type=int, default=5, help="bootstrap refits M per stage (default 5, >= 2)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--model-seed", default="vary", choices=["vary", "fixed"],
                   help="vary: refit m gets the stage seeds + m (training randomness counted in the variance); "
                        "fixed: the config's seeds (default vary)")
    p.add_argument("--task", default=None, help="heavy ranker: the task probability to decompose (default its first)")
    p.add_argument("--max-test-users", type=int, default=0,
                   help="a seeded sample of this many test-window users (default 0: all)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_bias_variance)


def cmd_bias_variance(args: argparse.Namespace) -> int:
    from recsys.commands.experiment import bundle_and_config
    from recsys.data.schema import read_dataset
    from recsys.experiments.bias_variance import BiasVarianceConfig, run_bias_variance

    bv = BiasVarianceConfig(tuple(s.strip() for s in args.stage.split(",") if s.strip()), args.resamples,
                            args.seed, args.model_seed, args.task, args.max_test_users)
    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    bundle, cfg = bundle_and_config(args)
    res = run_bias_variance(read_dataset(args.data), cfg, bv, args.out, bundle, str(args.bundle or ""),
                            overwrite=args.overwrite)
    keys = ("mse", "bias2", "variance", "noise_expected", "noise_realised", "cross", "mse_of_mean")
    print(json.dumps({"out": str(args.out), "stages": {
        r["stage"]: {k: r["terms"][k] for k in keys if k in r["terms"]} for r in res["stages"]}}, indent=2))
    return 0
