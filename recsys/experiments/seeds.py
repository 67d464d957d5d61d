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

The report folder holds ``results.json`` (also written as ``seeds.json``, its earlier name), ``report.md``
with one section per metric, ``seeds.png`` (each system's per-seed values and mean +- sd across seeds),
``paired.png`` (engine minus system: per-seed differences and the two-level interval), ``report.html`` (the
page people read, figures inlined), and per seed ``seed<s>/`` (that seed's evaluation report) and
``bundles/seed<s>``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from offline_eval.compare import two_level_bootstrap
from recsys.config import Config
from recsys.data.schema import Dataset
from offline_eval.figures import pyplot, save, system_colors
from offline_eval.html_report import write_html
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
    per-seed reports), then write ``results.json`` (and ``seeds.json``), ``report.md``, the figures and
    ``report.html`` (the whole folder atomically; see the module docstring)."""
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
        write_json(tmp / "results.json", result)
        write_json(tmp / "seeds.json", result)
        write_folder(tmp, result, metrics)
    return result


def reported_metrics(result: dict, metrics=DEFAULT_METRICS) -> list[str]:
    """The metrics of ``metrics`` some system of ``result`` has."""
    return [m for m in metrics if any(m in v for v in result["systems"].values())]


def write_folder(folder: Path, result: dict, metrics=DEFAULT_METRICS) -> None:
    """``report.md``, ``seeds.png``, ``paired.png`` (when a system is paired with the engine) and
    ``report.html`` of ``result`` into ``folder``."""
    cols = reported_metrics(result, metrics)
    plots = []
    if plot_seeds(result, cols, folder / "seeds.png"):
        plots.append(("seeds.png", "each system's value per seed (dots) and mean +- sd across seeds (bar)"))
    if plot_paired(result, cols, folder / "paired.png"):
        plots.append(("paired.png", "engine minus system: per-seed differences (dots) and the 95% interval over "
                                    "seeds and users (bar)"))
    (folder / "report.md").write_text(markdown(result, cols, plots), encoding="utf-8")
    write_html(folder)


def markdown(result: dict, metrics=DEFAULT_METRICS, plots=()) -> str:
    """``report.md``: one table per metric (:func:`format_report`'s), the figures ``plots`` ((file, caption)
    pairs) and links to the per-seed evaluation reports."""
    lines = [_title(result), "",
             f"- config: `{result.get('config')}`; seeds {', '.join(map(str, result['seeds']))}; each seed trains "
             "the bundle and evaluates every system on the same users", "",
             "Engine minus system: the mean paired difference over seeds and users, with a two-level bootstrap "
             "interval (seeds, then users); *holds*: every seed's difference has the mean's sign and the interval "
             "excludes 0.", ""]
    for m in metrics:
        lines += [f"## {m}", "", *_table(result, m), ""]
    if plots:
        lines += ["## Figures", ""] + [f"![{cap}]({f})\n" for f, cap in plots]
    lines += ["## Per-seed reports", "",
              *(f"- seed {s}: [seed{s}/report.html](seed{s}/report.html)" for s in result["seeds"]), ""]
    return "\n".join(lines)


def _systems_by(result: dict, metric: str) -> list[str]:
    systems = result["systems"]
    return sorted((n for n in systems if metric in systems[n]), key=lambda n: -systems[n][metric]["mean"])


def plot_seeds(result: dict, metrics, path: Path) -> bool:
    """One panel per metric: each system's per-seed values (dots) and its mean +- sd across seeds (bar)."""
    return _forest(result, metrics, path, "systems", "mean over seeds +- sd (per-seed dots)")


def plot_paired(result: dict, metrics, path: Path) -> bool:
    """One panel per metric: engine minus each system, per seed (dots), mean and 95% two-level CI (bar)."""
    return _forest(result, metrics, path, "paired", "engine minus system: 95% CI over seeds x users", zero=True)


def _forest(result: dict, metrics, path: Path, section: str, title: str, zero: bool = False) -> bool:
    cols = [m for m in metrics if any(m in v for v in result[section].values())]
    if not cols:
        return False
    plt = pyplot()
    colors = system_colors(result)
    rows = max(sum(m in v for v in result[section].values()) for m in cols)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols) + 1.4, 0.5 * rows + 1.5), squeeze=False)
    for ax, m in zip(axes[0], cols):
        order = [n for n in _systems_by(result, m) if m in result[section].get(n, {})][::-1]
        for y, n in enumerate(order):
            r = result[section][n][m]
            centre = r["mean"] if section == "systems" else r["diff"]
            lo, hi = (centre - r["std"], centre + r["std"]) if section == "systems" else (r["ci_low"], r["ci_high"])
            ax.plot([lo, hi], [y, y], color=colors[n], linewidth=2.5, solid_capstyle="butt")
            ax.plot([centre], [y], "o", color=colors[n], markersize=7)
            ax.plot(r["per_seed"], np.full(len(r["per_seed"]), y + 0.22), ".", color=colors[n], alpha=0.7)
        if zero:
            ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(-0.6, len(order) - 0.2)
        ax.set_title(m)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{len(result['seeds'])} seeds, {result['n_users']} users: {title}")
    save(fig, path)
    return True


def format_report(result: dict, metric: str = "ndcg@10") -> str:
    """Markdown: systems by mean ``metric`` over seeds, with the paired difference against the engine."""
    return "\n".join([_title(result), "", *_table(result, metric)]) + "\n"


def _title(result: dict) -> str:
    window = "validation" if result.get("validation") else "test"
    return f"# {len(result['seeds'])} seeds, {result['n_users']} users ({window} window)"


def _table(result: dict, metric: str) -> list[str]:
    """Markdown table lines: systems by mean ``metric`` over seeds, with the paired difference to the engine."""
    lines = [f"| system | {metric} mean over seeds (sd) | per seed | engine minus system [95% CI, seeds x users] "
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
    return lines


__all__ = ["format_report", "markdown", "plot_paired", "plot_seeds", "reported_metrics", "run_seeds", "summarize",
           "two_level_bootstrap", "write_folder"]
