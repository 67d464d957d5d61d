"""``recsys evaluate``: full-ranking offline evaluation of baselines (and the engine) on a dataset's test window.

    recsys evaluate --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...] [--systems random,popularity]
                    [--backend local|ray] [--ray-address ADDR] [--export-run] [--overwrite]

Writes the report folder (``metrics.json``, ``report.md``, plots; TREC files with ``--export-run``; see
:mod:`offline_eval.report`) and prints the systems x headline metrics table. The oracle is added automatically
when the dataset has ground truth (a synthetic world). With ``--bundle``, the split (of ``--config`` or
``--set``) and the dataset must be the ones the bundle was trained on (:func:`recsys.bundle.check_trained_on`).

More systems (e.g. the engine from a bundle) are added in :func:`build_systems`: one entry per system.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="full-ranking offline evaluation (baselines, oracle, engine) with a report")
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--config", type=Path, help="engine config YAML (its split, eval and ray sections are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set eval.max_users=500 (repeatable)")
    p.add_argument("--systems", type=_csv, default=None, metavar="NAMES",
                   help="comma-separated baselines to evaluate (default: eval.baselines of the config); "
                        "'none' for no baseline")
    p.add_argument("--backend", choices=["local", "ray"], default=None,
                   help="where shards run (default: eval.backend of the config)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto or ray://host:10001) instead of starting a local one; "
                        "implies --backend ray")
    p.add_argument("--bundle", type=Path, default=None,
                   help="evaluate the engine of this bundle (a version folder or its parent: latest) and its "
                        "ablations beside the baselines")
    p.add_argument("--export-run", action="store_true", help="also write run.trec / qrels.trec (external ids)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_evaluate)


def _csv(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    return [] if names == ["none"] else names


def build_systems(args: argparse.Namespace, ds, cfg) -> dict:
    """Systems other than the baselines, by name: the engine from ``--bundle`` and its ablations."""
    if args.bundle is None:
        return {}
    from recsys.data.catalog import Catalog
    from recsys.training import load_systems

    systems = load_systems(args.bundle)
    engine = systems["engine"]
    if engine.catalog is not None and Catalog.from_dataset(ds).items != engine.catalog.items:
        raise ValueError(
            f"{args.bundle}: the bundle's item catalogue differs from {args.data}'s; evaluate a bundle on the "
            "dataset it was trained on"
        )
    return systems


def engine_extras(systems: dict, ds, cfg) -> tuple[dict, dict]:
    """Report sections only an engine has: the heavy ranker's calibration on the test window
    (``calibration``: the engine, per task; ``calibration_by_system``: every system with a heavy ranker, plus
    the reliability bins) and the retrieval index's recall against exact search (``retrieval_index``)."""
    from recsys.data.split import split_dataset
    from recsys.experiments.evaluation import calibration_reports, index_recall

    engines = {n: s for n, s in systems.items() if hasattr(s, "stages") and hasattr(s, "retrieval")}
    if not engines:
        return {}, {}
    split = split_dataset(ds, cfg.split)
    reports, bins = calibration_reports(engines, ds, split)
    extra = {"calibration": reports.get("engine", {})}
    if reports:
        extra["calibration_by_system"] = reports
    if "engine" in engines:
        from offline_eval.evaluator import EvalData
        from recsys.data.catalog import Catalog

        last = split.names[-1]
        data = EvalData.from_split(split, cfg.eval, Catalog.from_dataset(ds, train=split.before(last)), last)
        extra["retrieval_index"] = index_recall(engines["engine"], data.requests)
    return extra, {k: v for k, v in bins.items() if k.startswith("engine/")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from offline_eval.evaluator import run_evaluation
    from offline_eval.report import check_output, format_table
    from recsys.config import load_config
    from recsys.data.schema import read_dataset

    check_output(args.out, args.overwrite)  # before any work
    bundle = None
    if args.bundle is not None:
        from recsys.bundle import load_bundle

        bundle = load_bundle(args.bundle)
    if bundle is not None and args.config is None:
        # the bundle's own resolved config: the same split windows the stages were trained on
        from recsys.config import Config, apply_overrides, from_dict

        cfg = from_dict(Config, apply_overrides(bundle.manifest["config"], args.overrides))
    else:
        cfg = load_config(args.config, args.overrides)
    if bundle is not None:
        from recsys.bundle import check_trained_on

        check_trained_on(bundle, cfg.split, args.data)  # a config's or --set's split must be the bundle's
    backend = args.backend or ("ray" if args.ray_address else cfg.eval.backend.value)
    ray_cfg = cfg.ray
    if args.ray_address:
        ray_cfg = dataclasses.replace(cfg.ray, address=args.ray_address)
    ds = read_dataset(args.data)
    systems = build_systems(args, ds, cfg)
    extra, reliability = engine_extras(systems, ds, cfg)
    metrics = run_evaluation(
        ds,
        cfg,
        args.out,
        systems=systems,
        baselines=args.systems,
        backend=backend,
        ray_cfg=ray_cfg,
        export_run=args.export_run,
        overwrite=args.overwrite,
        extra=extra,
        reliability=reliability,
    )
    print(f"{metrics['dataset']['name']}: {metrics['n_users']} test users, {metrics['dataset']['counts']['items']} "
          f"items (full ranking)")
    print(format_table(metrics))
    print(f"report: {args.out / 'report.md'}")
    return 0
