"""``recsys experiment``: experiments on the engine's stages.

    recsys experiment feature-selection --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...]
                                        [--seeds 3] [--bundle PATH] [--overwrite]
    recsys experiment seeds --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...] [--seeds 3]
                            [--baselines a,b] [--overwrite]

Further experiments register from their own modules (:data:`MODULES`): ``compare``, ``frontier``,
``bias-variance``, ``drift`` and ``ope`` (``recsys experiment NAME --help``; README "Ranking experiments").

``seeds`` trains and evaluates N replicates of one config and reports each system's mean and spread across
seeds and its difference to the engine paired over users and seeds (:mod:`recsys.experiments.seeds`): its
folder holds ``results.json``, ``report.md``, ``seeds.png``, ``paired.png`` and ``report.html``.

``feature-selection`` runs random-bar feature selection for the pre-ranker
(:mod:`recsys.experiments.feature_selection`) on the pre-ranker's window and writes ``report.md``,
``importance.png``, ``results.json`` and ``report.html``. It needs a retrieval stage for the candidates: the one of
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
    "compare",
    "frontier",
    "bias_variance",
    "drift",
    "ope",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="experiments: seeds, compare, ope, drift, bias-variance, frontier, feature-selection")
    exp = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    fs = exp.add_parser("feature-selection", help="random-bar feature selection for the pre-ranker")
    add_prerank_args(fs, "prerank.num_leaves=63")
    fs.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1) to train over (default 3)")
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


def add_prerank_args(p: argparse.ArgumentParser, example: str) -> None:
    """The flags of an experiment on the pre-ranker's rows (:func:`prerank_inputs`): --data, --out, --config,
    --set (``example``: an override shown in its help) and --bundle."""
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--config", type=Path, help="engine config YAML (default: the bundle's, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config override, e.g. --set {example} (repeatable)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="use this bundle's retrieval stage and catalogue instead of training one")


def cmd_seeds(args: argparse.Namespace) -> int:
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.experiments.seeds import format_report, run_seeds

    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    cfg = load_config(args.config, args.overrides)
    baselines = None
    if args.baselines is not None:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    result = run_seeds(read_dataset(args.data), cfg, args.out, args.seeds, baselines, overwrite=args.overwrite)
    print(format_report(result))
    print(f"report: {args.out / 'report.html'} ({args.out / 'report.md'}, {args.out / 'results.json'})")
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


def bundle_and_config(args: argparse.Namespace):
    """(``--bundle`` loaded or None, the config: ``--config``/``--set``, else the bundle's own), with a bundle
    refused when the config's split or ``--data`` differs from what it was trained on."""
    bundle = None
    if args.bundle is not None:
        from recsys.bundle import load_bundle

        bundle = load_bundle(args.bundle)
    cfg = _load_config(args, bundle)
    if bundle is not None:
        from recsys.bundle import check_trained_on

        check_trained_on(bundle, cfg.split, args.data)
    return bundle, cfg


def _section(cfg, name: str, default_factory):
    """``cfg.<name>`` (the engine config's stage section), or the section's defaults when the Config has none."""
    value = getattr(cfg, name, None)
    if value is None:
        logger.warning("the config has no %r section; using its defaults", name)
        return default_factory()
    return value


def prerank_inputs(args: argparse.Namespace, rows_window: str | None = None, what: str = "the rows' window",
                   check=None):
    """What an experiment on the pre-ranker's feature rows needs, shared by ``feature-selection`` and ``drift``:
    the config (``--config``/``--set``, else the ``--bundle``'s), the dataset, its split and stage windows, and
    the retrieval stage and catalogue that serve the rows: the ``--bundle``'s (refused unless its two-tower was
    trained on windows strictly before ``rows_window``, default the pre-ranker's window), or one trained here on
    the retrieval window. ``check(names, windows)``: the caller's own checks of the windows, run before any
    training. Returns a namespace (cfg, pcfg, ds, split, windows, catalog, retrieval, trained_on)."""
    from types import SimpleNamespace

    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.experiments.feature_selection import candidate_stage
    from recsys.prerank.stage import PrerankConfig
    from recsys.training import stage_windows

    bundle, cfg = bundle_and_config(args)
    pcfg = _section(cfg, "prerank", PrerankConfig)
    ds = read_dataset(args.data)
    split = split_dataset(ds, cfg.split)
    windows = stage_windows(split)
    rows_window = rows_window or windows["prerank"]
    names = split.names
    if rows_window not in names:
        raise ValueError(f"{what}: unknown window {rows_window!r}; split windows: {names}")
    if names.index(rows_window) <= names.index(windows["retrieval"]):
        raise ValueError(f"{what}: {rows_window!r} is not after the retrieval stage's training window "
                         f"{windows['retrieval']!r}; choose one of {names[names.index(windows['retrieval']) + 1:]}")
    if check is not None:
        check(names, windows)
    retrieval, catalog, trained_on, _ = candidate_stage(ds, cfg, split, windows, rows_window, bundle,
                                                        str(args.bundle))
    return SimpleNamespace(cfg=cfg, pcfg=pcfg, ds=ds, split=split, windows=windows, catalog=catalog,
                           retrieval=retrieval, trained_on=trained_on)


def cmd_feature_selection(args: argparse.Namespace) -> int:
    from recsys.configlib import to_dict
    from recsys.experiments.feature_selection import random_bar, write_report
    from recsys.features import FeatureContext
    from recsys.prerank.stage import build_ranking_data

    if args.seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {args.seeds}")
    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    inp = prerank_inputs(args)
    cfg, pcfg, ds, split, windows, catalog = inp.cfg, inp.pcfg, inp.ds, inp.split, inp.windows, inp.catalog
    trained_on = inp.trained_on
    from recsys.engine import Engine

    upstream = Engine(inp.retrieval, [], cfg.engine.retrieve_k, catalog=catalog)  # the pool the pre-ranker is served
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
