"""Evidence across seeds: train and evaluate N replicates of one config and test each system against the
engine paired over users *and* seeds.

A difference that only holds over resampled users can flip with the training seed (the run-to-run change of
one config was larger than several reported effects). So for seeds ``s = 0..N-1`` this trains the bundle with
``seed = s`` (every stage's seed offset by ``s``, :func:`recsys.training.seeded`), evaluates every system of
the bundle and the configured baselines on the same users, and reports:

* per system and metric: the mean over seeds of the mean over users, the standard deviation across seeds, and
  each seed's value;
* per system, the paired difference engine minus system, ``d[s, u]`` (S seeds x B users): its mean, each
  seed's mean, and a two-level bootstrap interval (resample seeds with replacement, then users with
  replacement, the same users for every drawn seed; Davison & Hinkley 1997, section 3.8, for hierarchical
  data), and ``holds``: every seed's difference has the sign of the mean and the interval excludes 0.

Shapes: S seeds, B users.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from offline_eval.compare import two_level_bootstrap
from recsys.config import Config
from recsys.data.schema import Dataset
from recsys.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "recall@100", "true_ndcg@10")


def summarize(per_seed: list[dict], metrics=DEFAULT_METRICS, reference: str = "engine", n_samples: int = 2000,
              seed: int = 0) -> dict:
    """Aggregate ``per_seed`` ([{system: {metric: (B,) per-user values}}], one dict per seed, users aligned)
    into the report's ``systems`` and ``paired`` sections (see the module docstring)."""
    names = [n for n in per_seed[0] if all(n in p for p in per_seed)]
    out: dict = {"systems": {}, "paired": {}}
    for n in names:
        row = {}
        for m in metrics:
            if m not in per_seed[0][n]:
                continue
            vals = [float(np.mean(p[n][m])) for p in per_seed]
            row[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                      "per_seed": vals}
        out["systems"][n] = row
    if reference not in names:
        return out
    for n in names:
        if n == reference:
            continue
        row = {}
        for m in metrics:
            if m not in per_seed[0][n] or m not in per_seed[0][reference]:
                continue
            d = np.stack([np.asarray(p[reference][m], np.float64) - np.asarray(p[n][m], np.float64)
                          for p in per_seed])  # (S, B)
            lo, hi = two_level_bootstrap(d, n_samples, seed)
            by_seed = d.mean(axis=1)
            mean = float(d.mean())
            same_sign = bool(np.all(np.sign(by_seed) == np.sign(mean))) and mean != 0
            row[m] = {"diff": mean, "ci_low": lo, "ci_high": hi, "per_seed": by_seed.tolist(),
                      "holds": same_sign and (lo > 0 or hi < 0)}
        out["paired"][n] = row
    return out


def run_seeds(ds: Dataset, cfg: Config, out: str | Path, seeds: int, baselines=None, overwrite: bool = False,
              metrics=DEFAULT_METRICS) -> dict:
    """Train and evaluate ``seeds`` replicates of ``cfg`` under ``out`` (``bundles/seed<s>``, ``seed<s>/`` the
    per-seed reports), then write ``seeds.json`` and ``report.md`` (the whole folder atomically)."""
    from offline_eval.evaluator import run_evaluation
    from recsys.training import load_systems, train_engine

    if seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {seeds}")
    per_seed: list[dict] = []
    users = None
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        for s in range(seeds):
            cfg_s = dataclasses.replace(cfg, seed=s)
            logger.info("seed %d of %d: training", s + 1, seeds)
            bundle = train_engine(ds, cfg_s, tmp / "bundles" / f"seed{s}")
            systems = load_systems(bundle.path)
            evals: dict = {}
            run_evaluation(ds, cfg_s, tmp / f"seed{s}", systems=systems, baselines=baselines, evals_out=evals)
            ids = next(iter(evals.values())).user_ids
            if users is not None and not np.array_equal(users, ids):
                raise RuntimeError("seeds: the evaluation users differ between seeds")  # the split is seed-free
            users = ids
            per_seed.append({n: {m: ev.per_user[m] for m in metrics if m in ev.per_user} for n, ev in evals.items()})
        result = {"seeds": list(range(seeds)), "n_users": len(users), "config": cfg.name,
                  "validation": bool(cfg.split.validation), **summarize(per_seed, metrics)}
        write_json(tmp / "seeds.json", result)
        text = "\n".join(format_report(result, m) for m in metrics if any(m in v for v in result["systems"].values()))
        (tmp / "report.md").write_text(text, encoding="utf-8")
    return result


def format_report(result: dict, metric: str = "ndcg@10") -> str:
    """Markdown: systems by mean ``metric`` over seeds, with the paired difference against the engine."""
    window = "validation" if result.get("validation") else "test"
    lines = [f"# {len(result['seeds'])} seeds, {result['n_users']} users ({window} window)", "",
             f"| system | {metric} mean over seeds (sd) | per seed | engine minus system [95% CI, seeds x users] "
             f"| holds across seeds |", "|---|---|---|---|---|"]
    systems = result["systems"]
    order = sorted(systems, key=lambda n: -systems[n].get(metric, {"mean": -1})["mean"])
    for n in order:
        s = systems[n].get(metric)
        if s is None:
            continue
        p = result["paired"].get(n, {}).get(metric)
        diff = "-" if p is None else f"{p['diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
        holds = "-" if p is None else ("yes" if p["holds"] else "no")
        lines.append(f"| {n} | {s['mean']:.4f} ({s['std']:.4f}) | {', '.join(f'{v:.4f}' for v in s['per_seed'])} "
                     f"| {diff} | {holds} |")
    return "\n".join(lines) + "\n"


__all__ = ["format_report", "run_seeds", "summarize", "two_level_bootstrap"]
