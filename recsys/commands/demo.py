"""``recsys demo``: the main job on the embedded default data (what ``make demo`` runs).

Synthesizes the demo world, splits it, prints its statistics, trains the funnel into a bundle, then
evaluates the engine, the baselines and the oracle on the test window and prints the comparison, the funnel
and the calibration. Everything is written under ``--out`` (default ``runs/demo``).

By default (``make demo``) the bundle holds only the engine's own stages (:data:`QUICK_OVERRIDES`: no model
trained for an ablation only) and the evaluated engine systems are :data:`QUICK_SYSTEMS`. ``--full``
(``make demo-full``) runs the whole study: every ablation model is trained and every ablation evaluated.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: config overrides of the quick demo: no model trained only for an ablation (the user's --set still wins)
QUICK_OVERRIDES = ("systems=[retrieval_only]",)  # no stage trained for an ablation only
#: engine systems of the quick demo (beside the baselines and the oracle)
QUICK_SYSTEMS = ("engine", "retrieval_only")  # prerank_only: +14 s of ~3 min, in demo-full


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesize the demo world and run the engine's main job on it")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--config", type=Path, default=None, help="engine config (default: configs/default.yaml)")
    p.add_argument("--preset", default="demo", help="synthetic world preset (default: demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--full", action="store_true",
                   help="the full study: also train and evaluate every ablation (make demo-full; several times "
                        "longer)")
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
    overrides = list(args.overrides) if args.full else [*QUICK_OVERRIDES, *args.overrides]
    cfg = load_config(args.config or _default_config(), overrides)
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
    from recsys.training import load_systems, train_engine

    bundle_dir = out / "artifacts" / "demo"
    say(f"-- 3. training the funnel (retrieval -> pre-ranking -> heavy ranking) -> {bundle_dir}")
    bundle = train_engine(ds, cfg, bundle_dir)
    say(f"bundle {bundle.path} (stages: {', '.join(bundle.stages)})")
    systems = load_systems(bundle.path)
    if not args.full:
        systems = {n: s for n, s in systems.items() if n in QUICK_SYSTEMS}
    from recsys.commands.evaluate import drop_identical, engine_extras

    systems, twins = drop_identical(systems)

    report_dir = out / "report"
    what = "ablations" if args.full else ", ".join(n for n in systems if n != "engine")
    say(f"-- 4. full-ranking evaluation on the test window: engine, {what}, baselines, oracle -> {report_dir}")
    extra, reliability = engine_extras(systems, ds, cfg)
    if twins:
        extra["identical_systems"] = twins
    result = run_evaluation(ds, cfg, report_dir, systems=systems, split=split, overwrite=True, extra=extra,
                            reliability=reliability)
    say(format_systems(result))
    fraction = format_oracle_fraction(result)
    if fraction:
        say(fraction)
    say("")
    say(format_funnel(result))
    if result.get("calibration"):
        say("")
        say(format_calibration(result["calibration"]))
    say("")
    say(format_comparisons(result))
    say(f"== done in {time.perf_counter() - t0:.0f} s; report: {report_dir / 'report.md'}")
    if not args.full:
        say("(the full study with every ablation: make demo-full, or recsys demo --full)")
    return 0


def format_funnel(result: dict) -> str:
    """The engine's funnel: recall of the test engagements at each stage's cut-off."""
    funnel = result.get("funnel", {}).get("engine", {})
    lines = ["funnel (engine): did the engaged item survive each stage?", "", "| stage | cut-off | recall |",
             "|---|---:|---:|"]
    for stage, row in funnel.items():
        lines.append(f"| {stage} | {row.get('C', '')} | {row.get('recall', float('nan')):.4f} |")
    oracle = result.get("funnel", {}).get("oracle", {}).get("top1000")
    if oracle:
        lines.append(f"| (oracle's top {oracle['C']}: the ceiling) | {oracle['C']} | {oracle['recall']:.4f} |")
    return "\n".join(lines)


def format_calibration(cal: dict) -> str:
    keys = ("logloss_raw", "logloss", "ne", "auc", "calibration", "ece")
    lines = ["calibration of the heavy ranker on the full (not downsampled) test impressions:", "",
             "| task | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for task, row in cal.items():
        vals = [row.get(k) for k in keys]
        lines.append(f"| {task} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


def format_comparisons(result: dict) -> str:
    """Paired bootstrap of the engine against every other system (ndcg@10, and true_ndcg@10 when known)."""
    lines = ["engine vs each system (paired bootstrap over test users, 95% CI of the difference):", "",
             "| vs | metric | diff | 95% CI | p |", "|---|---|---:|---|---:|"]
    for c in result.get("comparisons", []):
        if c["a"] == "engine":
            lines.append(f"| {c['b']} | {c['metric']} | {c['mean_diff']:+.4f} | "
                         f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.3f} |")
    return "\n".join(lines)


def format_systems(result: dict, metrics=("ndcg@10", "mrr@10", "map@10", "recall@10", "recall@100")) -> str:
    """Systems x metrics as a Markdown table, best system first by ndcg@10."""
    systems = result["systems"]
    if any("true_ndcg@10" in v for v in systems.values()):
        metrics = (*metrics, "true_ndcg@10")
    rows = sorted(systems.items(), key=lambda kv: -kv[1].get("ndcg@10", 0.0))
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(f"{vals.get(m, float('nan')):.4f}" for m in metrics) + " |")
    lines += [f"| {name} | FAILED: {why.replace('|', '/')} |" for name, why in (result.get("failed") or {}).items()]
    return "\n".join(lines)


def format_oracle_fraction(result: dict, system: str = "engine") -> str:
    """One line: ``system``'s ndcg@10 and true_ndcg@10 as fractions of the oracle's ("" without an oracle)."""
    systems = result["systems"]
    if "oracle" not in systems or system not in systems:
        return ""
    parts = []
    for m in ("ndcg@10", "true_ndcg@10"):
        o, e = systems["oracle"].get(m), systems[system].get(m)
        if o and e is not None:
            parts.append(f"{m} {e:.4f} / {o:.4f} = {e / o:.0%}")
    return f"{system} as a fraction of the oracle: " + "; ".join(parts) if parts else ""


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
