"""``recsys data``: synth, import, stats, split, explore (an exploration log with propensities on a synthetic
world), import-obd (the Open Bandit Dataset's CSV as a bandit log)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys.config import apply_overrides, from_dict, load_config, load_yaml

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="create, import, inspect and split datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser("synth", help="generate the embedded synthetic world (with ground truth)")
    p.add_argument("--preset", default="demo", help="world size preset: tiny, demo or bench (default: demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="output dataset folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a world parameter, e.g. --set n_users=1000 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.set_defaults(func=cmd_synth)

    p = dsub.add_parser("import", help="import a real dataset into the canonical format")
    p.add_argument("format", help="movielens-100k, movielens-latest, movietweetings, csv or parquet")
    p.add_argument("--path", required=True, type=Path, help="folder (or file, for csv/parquet) to read")
    p.add_argument("--out", required=True, type=Path, help="output dataset folder")
    p.add_argument("--mapping", type=Path, help="YAML column mapping (csv/parquet): see recsys.data.importers")
    p.add_argument("--map", dest="map_overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a mapping field, e.g. --map user=uid --map timestamp=ts (csv/parquet; repeatable)")
    p.add_argument("--like-threshold", type=float, help="like = rating >= this (default per format)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import)

    p = dsub.add_parser("stats", help="tables, counts, label rates, time span, popularity skew")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_stats)

    p = dsub.add_parser("split", help="cut a dataset into time windows (train, ..., test) and report them")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", type=Path, help="write each window as a dataset folder here (optional)")
    p.add_argument("--config", type=Path, help="engine config YAML (its split section is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set split.method=leave_last_n")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_split)

    p = dsub.add_parser("explore", help="simulate an exploration log with exact propensities on a synthetic world "
                                        "(recsys.data.exploration), for recsys experiment ope")
    p.add_argument("--data", required=True, type=Path, help="synthetic dataset folder (with truth/)")
    p.add_argument("--out", required=True, type=Path, help="bandit-log folder to write")
    p.add_argument("--bundle", type=Path, help="take the split from this bundle's config (default: --config)")
    p.add_argument("--config", type=Path, help="engine config YAML whose split section defines the window")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set split.method=temporal (repeatable)")
    p.add_argument("--window", default="test", help="the split window whose users and times the sessions take")
    p.add_argument("--sessions", type=int, default=100_000, help="sessions to simulate (default 100000)")
    p.add_argument("--slate-size", type=int, default=10, help="positions per session (default 10)")
    p.add_argument("--temperature", type=float, default=0.25, help="softmax temperature (default 0.25)")
    p.add_argument("--epsilon", type=float, default=0.2, help="uniform share of the logging policy (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_explore)

    p = dsub.add_parser("import-obd", help="import an Open Bandit Dataset CSV (e.g. random/all/all.csv) as a "
                                           "bandit log (recsys.data.obd)")
    p.add_argument("--csv", required=True, type=Path, help="the Open Bandit CSV, e.g. open_bandit_dataset/random/all/all.csv")
    p.add_argument("--item-context", type=Path, default=None,
                   help="its item_context.csv (default: the one beside the CSV, when present)")
    p.add_argument("--out", required=True, type=Path, help="bandit-log folder to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import_obd)


def cmd_synth(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import synthesize

    overrides = apply_overrides({}, args.overrides)
    ds = synthesize(args.preset, args.seed, args.out, overwrite=args.overwrite, **overrides)
    logger.info("wrote synthetic world %r (seed %d) to %s", args.preset, args.seed, args.out)
    _print_stats(ds)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from recsys.data.importers import ImportMapping, import_dataset
    from recsys.data.schema import write_dataset

    options: dict = {}
    if args.like_threshold is not None:
        options["like_threshold"] = args.like_threshold
    if args.mapping is not None or args.map_overrides:
        if args.format not in ("csv", "parquet"):
            raise ValueError(f"--mapping/--map apply to the csv and parquet formats, not {args.format!r}")
        raw = load_yaml(args.mapping) if args.mapping is not None else {}
        raw = apply_overrides(raw or {}, args.map_overrides)
        options["mapping"] = from_dict(ImportMapping, raw, prefix="mapping")
    ds = import_dataset(args.format, args.path, **options)
    write_dataset(ds, args.out, overwrite=args.overwrite)
    logger.info("imported %s from %s to %s", args.format, args.path, args.out)
    _print_stats(ds)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from recsys.data.schema import read_dataset
    from recsys.data.stats import dataset_stats, format_stats

    ds = read_dataset(args.data)
    stats = dataset_stats(ds)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset, write_split

    cfg = load_config(args.config, args.overrides)
    ds = read_dataset(args.data)
    split = split_dataset(ds, cfg.split)
    if args.out is not None:
        write_split(split, args.out, overwrite=args.overwrite)
    print(format_split(split.stats()))
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    import time

    from recsys.data.bandit_log import write_bandit_log
    from recsys.data.exploration import ExploreConfig, explore, explore_meta, window_contexts
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import Oracle

    from offline_eval.report import check_output

    check_output(args.out, args.overwrite)  # before any work
    ecfg = ExploreConfig(sessions=args.sessions, slate_size=args.slate_size, temperature=args.temperature,
                         epsilon=args.epsilon, seed=args.seed)
    if args.bundle is not None:
        from recsys.bundle import load_bundle
        from recsys.config import Config

        cfg = from_dict(Config, apply_overrides(load_bundle(args.bundle).manifest["config"], args.overrides))
    else:
        cfg = load_config(args.config, args.overrides)
    ds = read_dataset(args.data)
    if ds.truth_dir is None:
        raise ValueError(f"{args.data}: no truth/ folder; recsys data explore needs a synthetic world's oracle")
    t0 = time.perf_counter()
    split = split_dataset(ds, cfg.split)
    if args.window not in split.names:
        raise ValueError(f"--window: {args.window!r} is not a window of the split; windows: {split.names}")
    oracle = Oracle.load(ds.truth_dir)
    contexts = window_contexts(split[args.window])
    table = explore(oracle, contexts, ecfg)
    log = write_bandit_log(table, explore_meta(ecfg, oracle, args.window, len(contexts)), args.out,
                           overwrite=args.overwrite)
    print(f"{args.out}: {log.n_sessions:,} sessions x {ecfg.slate_size} positions on {len(contexts):,} contexts "
          f"(users of window {args.window!r}), CTR {table['click'].mean():.4f}, propensity min "
          f"{table['propensity'].min():.3g} median {table['propensity'].median():.3g}; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def cmd_import_obd(args: argparse.Namespace) -> int:
    from recsys.data.obd import import_obd

    item_context = args.item_context
    if item_context is None and (args.csv.parent / "item_context.csv").is_file():
        item_context = args.csv.parent / "item_context.csv"
    log = import_obd(args.csv, args.out, item_context, overwrite=args.overwrite)
    t = log.table
    print(f"{args.out}: {len(t):,} impressions ({log.n_sessions:,} sessions), slate size {log.slate_size}, "
          f"{log.meta['n_items']} items, CTR {t['click'].mean():.4f}")
    return 0


def format_split(stats: dict) -> str:
    """The split report as a Markdown table: counts per window and cold users/items."""
    lines = [
        f"split: {stats['method']} ({'leak-free' if stats['leak_free'] else 'not leak-free across users'})",
        "",
        "| window | interactions | positives | users | items | cold users | cold items |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, w in stats["windows"].items():
        lines.append(
            f"| {name} | {w['interactions']:,} | {w['positives']:,} | {w['users']:,} | {w['items']:,} | "
            f"{w.get('cold_users', 0):,} | {w.get('cold_items', 0):,} |"
        )
    return "\n".join(lines)


def _print_stats(ds) -> None:
    from recsys.data.stats import dataset_stats, format_stats

    sys.stdout.write(format_stats(dataset_stats(ds)) + "\n")
