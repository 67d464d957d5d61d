"""``recsys experiment``: experiments on the engine's stages.

    recsys experiment feature-selection --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...]
                                        [--seeds 3] [--bundle PATH] [--overwrite]
    recsys experiment seeds --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...] [--seeds 3]
                            [--baselines a,b] [--overwrite]

``seeds`` trains and evaluates N replicates of one config and reports each system's mean and spread across
seeds and its difference to the engine paired over users and seeds (:mod:`recsys.experiments.seeds`).

``feature-selection`` runs random-bar feature selection for the pre-ranker
(:mod:`recsys.experiments.feature_selection`) on the pre-ranker's window and writes ``report.md``,
``importance.png`` and ``results.json``. It needs a retrieval stage for the candidates: the one of
``--bundle`` (its manifest's config is then the default config; a split or dataset other than the bundle's is
refused), or one trained here on the retrieval window (``retrieval`` section of the config). The rows are
time-consistent: the two-tower that retrieves their candidates and scores them was trained only on earlier
windows, so a bundle whose two-tower was refit on the pre-ranker's window (``retrieval.refit``) is refused.
``results.json`` records ``retrieval_trained_on`` and ``rows_window``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: further experiments: modules ``recsys.commands.<name>``, each with ``register(experiments_subparsers)``
#: that adds its ``recsys experiment <name>`` parser (one line here per experiment)
MODULES: tuple[str, ...] = (
    "ope",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="experiments on the engine's stages (feature selection, seeds)")
    exp = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    fs = exp.add_parser("feature-selection", help="random-bar feature selection for the pre-ranker")
    fs.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    fs.add_argument("--out", required=True, type=Path, help="report folder to write")
    fs.add_argument("--config", type=Path, help="engine config YAML (default: the bundle's, else built-in defaults)")
    fs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set prerank.num_leaves=63 (repeatable)")
    fs.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1) to train over (default 3)")
    fs.add_argument("--bundle", type=Path, default=None,
                    help="use this bundle's retrieval stage and catalogue instead of training one")
    fs.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    fs.set_defaults(func=cmd_feature_selection)
    sd = exp.add_parser("seeds", help="train and evaluate N seeds of one config; differences paired over users "
                                      "and seeds")
    sd.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    sd.add_argument("--out", required=True, type=Path, help="report folder to write (bundles, per-seed reports)")
    sd.add_argument("--config", type=Path, help="engine config YAML (default: built-in defaults)")
    sd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set split.validation=true (repeatable)")
    sd.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1) (default 3)")
    sd.add_argument("--baselines", default=None, metavar="NAMES",
                    help="comma-separated baselines (default: eval.baselines of the config); 'none' for none")
    sd.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    sd.set_defaults(func=cmd_seeds)
    for name in MODULES:
        importlib.import_module(f"recsys.commands.{name}").register(exp)


def cmd_seeds(args: argparse.Namespace) -> int:
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.experiments.seeds import format_report, run_seeds
    from recsys.io import OutputExistsError

    if args.out.exists() and not args.overwrite:  # before any work
        raise OutputExistsError(f"{args.out}: output folder exists; pass --overwrite to replace it")
    cfg = load_config(args.config, args.overrides)
    baselines = None
    if args.baselines is not None:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    result = run_seeds(read_dataset(args.data), cfg, args.out, args.seeds, baselines, overwrite=args.overwrite)
    print(format_report(result))
    print(f"report: {args.out / 'report.md'}")
    return 0


def _load_config(args: argparse.Namespace, bundle):
    from recsys.config import Config, ConfigError, apply_overrides, from_dict, load_config

    if bundle is not None and args.config is None:
        raw = apply_overrides(bundle.manifest["config"], args.overrides)
        try:
            return from_dict(Config, raw)
        except ConfigError as exc:
            raise ConfigError(f"{args.bundle}: manifest config: {exc}") from None
    return load_config(args.config, args.overrides)


def _section(cfg, name: str, default_factory):
    """``cfg.<name>`` (the engine config's stage section), or the section's defaults when the Config has none."""
    value = getattr(cfg, name, None)
    if value is None:
        logger.warning("the config has no %r section; using its defaults", name)
        return default_factory()
    return value


def cmd_feature_selection(args: argparse.Namespace) -> int:
    from recsys.configlib import to_dict
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.experiments.feature_selection import bundle_retrieval_windows, check_rows_after, random_bar
    from recsys.experiments.feature_selection import write_report
    from recsys.features import FeatureContext
    from recsys.io import OutputExistsError
    from recsys.prerank.stage import PrerankConfig, build_ranking_data
    from recsys.training import stage_windows

    if args.seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {args.seeds}")
    if args.out.exists() and not args.overwrite:  # before any work
        raise OutputExistsError(f"{args.out}: output folder exists; pass --overwrite to replace it")
    bundle = None
    if args.bundle is not None:
        from recsys.bundle import check_trained_on, load_bundle

        bundle = load_bundle(args.bundle)
    cfg = _load_config(args, bundle)
    if bundle is not None:
        check_trained_on(bundle, cfg.split, args.data)
    pcfg = _section(cfg, "prerank", PrerankConfig)
    ds = read_dataset(args.data)
    split = split_dataset(ds, cfg.split)
    windows = stage_windows(split)
    trained_on = [windows["retrieval"]]
    if bundle is not None:
        trained_on = bundle_retrieval_windows(bundle.manifest, split.names, windows)
        check_rows_after(split.names, trained_on, windows["prerank"], str(args.bundle))
        from recsys.training import load_engine

        engine = load_engine(args.bundle)
        retrieval, catalog = engine.retrieval, engine.catalog
        if catalog is None:
            raise ValueError(f"{args.bundle}: the bundle's engine has no catalogue")
    else:
        from recsys.retrieval.stage import RetrievalConfig, RetrievalStage

        from recsys.stages.base import FitContext

        catalog = Catalog.from_dataset(ds, train=split[windows["retrieval"]])
        retrieval = RetrievalStage(_section(cfg, "retrieval", RetrievalConfig)).fit(FitContext(
            ds, catalog, split, windows["retrieval"], split.before(windows["retrieval"]),
            valid=split[windows["retrieval_valid"]]))
    from recsys.engine import Engine

    upstream = Engine(retrieval, [], cfg.engine.retrieve_k, catalog=catalog)  # the pool the pre-ranker is served
    ctx = FeatureContext.fit(ds, catalog, split[windows["retrieval"]], pcfg.graph, pcfg.feature_params)
    data = build_ranking_data(ds, catalog, upstream, ctx, split[windows["prerank"]],
                              split.before(windows["prerank"]), pcfg)
    res = random_bar(data, pcfg, seeds=list(range(args.seeds)))
    extra = {"windows": windows, "retrieval_trained_on": trained_on, "rows_window": windows["prerank"],
             "prerank": to_dict(pcfg), "groups": int(len(data.group)), "rows": int(len(data.y)),
             "data": str(args.data), "bundle": None if args.bundle is None else str(args.bundle)}
    write_report(res, args.out, overwrite=args.overwrite, extra=extra)
    print(json.dumps({"out": str(args.out), "bar": res.bar, "keep": res.keep, "drop_candidates": res.drop},
                     indent=2))
    return 0
