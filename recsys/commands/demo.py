"""``recsys demo``: the main job on the embedded default data (what ``make demo`` runs).

Synthesizes the demo world, splits it, prints its statistics, then evaluates the baselines and the oracle
on the test window and prints the comparison. Everything is written under ``--out`` (default
``runs/demo``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesize the demo world and run the engine's main job on it")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--config", type=Path, default=None, help="engine config (default: configs/default.yaml)")
    p.add_argument("--preset", default="demo", help="synthetic world preset (default: demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)


def _default_config() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    return here if here.is_file() else None


def cmd_demo(args: argparse.Namespace) -> int:
    from recsys.commands.data import format_split
    from recsys.config import load_config
    from recsys.data.split import split_dataset
    from recsys.data.stats import dataset_stats, format_stats
    from recsys.data.synthetic import synthesize

    t0 = time.perf_counter()
    out: Path = args.out
    cfg = load_config(args.config or _default_config(), args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    say(f"== recsys demo: everything is written under {out}/")
    say(f"-- 1. synthesizing the {args.preset!r} world (seed {args.seed}) -> {data_dir}")
    ds = synthesize(args.preset, args.seed, data_dir, overwrite=True)
    say(format_stats(dataset_stats(ds)))
    say("-- 2. temporal split")
    split = split_dataset(ds, cfg.split)
    say(format_split(split.stats()))

    from offline_eval.evaluator import run_evaluation

    report_dir = out / "report"
    say(f"-- 3. full-ranking evaluation of the baselines and the oracle on the test window -> {report_dir}")
    result = run_evaluation(ds, cfg, report_dir, overwrite=True)
    say(format_systems(result))
    say(f"== done in {time.perf_counter() - t0:.0f} s; report: {report_dir / 'report.md'}")
    return 0


def format_systems(result: dict, metrics=("ndcg@10", "mrr@10", "map@10", "recall@10", "recall@100")) -> str:
    """Systems x metrics as a Markdown table, best system first by ndcg@10."""
    systems = result["systems"]
    if any("true_ndcg@10" in v for v in systems.values()):
        metrics = (*metrics, "true_ndcg@10")
    rows = sorted(systems.items(), key=lambda kv: -kv[1].get("ndcg@10", 0.0))
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(f"{vals.get(m, float('nan')):.4f}" for m in metrics) + " |")
    return "\n".join(lines)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
