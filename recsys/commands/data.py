"""``recsys data``: synth, import, stats, split."""

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
