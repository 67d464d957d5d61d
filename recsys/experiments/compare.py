"""Compare systems of one or more bundles (and baselines) on the same test users, paired over users and seeds.

Every system is evaluated by the offline evaluator (:func:`offline_eval.evaluator.evaluate`) on one
:class:`~offline_eval.evaluator.EvalData`: the test window of the bundles' split, in the catalogue of the
items and of the users seen before it, so every system sees the same B users. A system has one replicate
(a baseline, fitted once on the engagements before the window, or a system of one bundle) or S: the same
system of S bundles trained with different seeds (``--bundle`` repeated). The statistics are
:func:`offline_eval.compare.compare_systems`: paired differences ``system - reference`` (S, B) per metric with
a t interval from the crossed seeds x users design, Holm's adjusted p-values over every (system, metric), the
minimum detectable effect, and the same per segment, with the evaluator's segments:

* ``warm_users`` / ``cold_users``: users known to the catalogue / not (``EvalData.warm``), every metric;
* ``head_items`` / ``tail_items``: ``recall@k`` on the head items only (the most engaged items making up
  ``eval.head_fraction`` of the engagements before the window, ``EvalData.head_items``) or the tail items
  only, over the users with such a relevant item (as the evaluator's segment table computes them).

On a synthetic world (ground truth in the dataset) ``true_ndcg@10`` is added for every system
(:func:`offline_eval.evaluator.add_true_value`). Shapes: S seeds, B users, K ranked positions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from recsys.config import Config
from recsys.data.schema import Dataset

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100")
TRUE_METRIC = "true_ndcg@10"
SEGMENTS = ("warm_users", "cold_users", "head_items", "tail_items")


@dataclasses.dataclass(frozen=True)
class Source:
    """One replicate of an engine system: system ``system`` of the bundle at ``bundle``."""

    bundle: Path
    system: str = "engine"


def _per_user(ev, data, metrics: list[str]) -> dict[str, np.ndarray]:
    """{key: (B,)}: ``metrics`` over all users, and ``head_items:recall@k`` / ``tail_items:recall@k`` (recall of
    the (B, K) ranked lists against the head-only / tail-only relevant items) for every recall metric."""
    from offline_eval import metrics as M
    from offline_eval.evaluator import restrict_columns

    out = {m: np.asarray(ev.per_user[m], dtype=np.float64) for m in metrics}
    recalls = [m for m in metrics if m.startswith("recall@")]
    for part, mask in (("head_items", data.head_items), ("tail_items", ~data.head_items)):
        q = restrict_columns(data.qrels, mask)
        for m, v in M.compute(ev.ranked, q, recalls).items():
            out[f"{part}:{m}"] = np.asarray(v, dtype=np.float64)
    return out


def segment_specs(data, metrics: list[str]) -> dict:
    """The segments of :func:`offline_eval.compare.compare_systems`: (mask (B,), {metric: key})."""
    from offline_eval.evaluator import restrict_columns

    recalls = [m for m in metrics if m.startswith("recall@")]
    user_keys = {m: m for m in metrics}
    specs = {"warm_users": (data.warm, user_keys), "cold_users": (~data.warm, user_keys)}
    for part, mask in (("head_items", data.head_items), ("tail_items", ~data.head_items)):
        has = np.diff(restrict_columns(data.qrels, mask).indptr) > 0  # users with a relevant item there
        specs[part] = (has, {m: f"{part}:{m}" for m in recalls})
    return specs


class _Bundles:
    """Bundles opened once each, their stages loaded once per bundle (systems of one bundle share them)."""

    def __init__(self, items) -> None:
        self.items = items  # the evaluation catalogue's items: every bundle's must be these
        self._open: dict[Path, tuple] = {}

    def system(self, src: Source):
        from recsys.bundle import load_bundle
        from recsys.training import load_catalog, load_system

        key = Path(src.bundle).resolve()
        if key not in self._open:
            bundle = load_bundle(src.bundle)
            catalog = load_catalog(bundle.stage_dir("catalog"))
            if catalog.items != self.items:
                raise ValueError(f"{src.bundle}: the bundle's item catalogue differs from the dataset's; compare "
                                 "bundles on the dataset they were trained on")
            self._open[key] = (bundle, catalog, {})
        bundle, catalog, cache = self._open[key]
        return load_system(bundle, src.system, catalog, cache)


def evaluate_all(ds: Dataset, cfg: Config, sources: dict[str, list[Source]], baselines: list[str],
                 metrics: list[str] | None = None) -> tuple[dict, object, list[str], dict]:
    """Evaluate every replicate of every system on the test users of ``cfg.split``.

    Returns ``(values, data, metrics, info)``: ``values`` {system: [{key: (B,)} per replicate]} (see
    :func:`_per_user`), the :class:`EvalData`, the metrics compared (validated; default
    :data:`DEFAULT_METRICS` plus ``true_ndcg@10`` on a synthetic world) and ``info`` (wall seconds per system,
    the evaluation window, the catalogue's user counts)."""
    from offline_eval.baselines import make_baseline
    from offline_eval.evaluator import (
        EvalData,
        OracleSystem,
        add_true_value,
        eval_window,
        evaluate,
        metric_names,
    )
    from recsys.data.catalog import Catalog
    from recsys.data.split import split_dataset

    split = split_dataset(ds, cfg.split)
    window = eval_window(split)
    before = split.before(window)
    catalog = Catalog.from_dataset(ds, train=before)
    oracle = None
    if ds.truth_dir is not None:
        from recsys.data.synthetic import Oracle

        oracle = OracleSystem(Oracle.load(ds.truth_dir), catalog)
    available = metric_names(cfg.eval) + ([TRUE_METRIC] if oracle is not None else [])
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in available] + ([TRUE_METRIC] if oracle is not None else [])
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"--metrics: {unknown} not computed; available: {', '.join(available)} (more through "
                         "--set eval.metrics=[...] / eval.ks=[...])")
    if not metrics:
        raise ValueError("--metrics: no metric to compare")
    data = EvalData.from_split(split, cfg.eval, catalog, window)

    evals: dict[tuple[str, int], object] = {}
    seconds: dict[str, float] = {}
    for b in baselines:
        t0 = time.perf_counter()
        model = make_baseline(b, seed=cfg.seed, **cfg.eval.baseline_params.of(b))
        model.fit(before, catalog, ds.schema)
        ev = evaluate(model, data, cfg.eval)
        evals[(b, 0)] = ev
        seconds[b] = time.perf_counter() - t0
    bundles = _Bundles(catalog.items)
    for name, srcs in sources.items():
        t0 = time.perf_counter()
        for r, src in enumerate(srcs):
            logger.info("evaluating %s, replicate %d of %d (%s:%s)", name, r + 1, len(srcs), src.bundle, src.system)
            evals[(name, r)] = evaluate(bundles.system(src), data, cfg.eval)
        seconds[name] = time.perf_counter() - t0
    if oracle is not None and TRUE_METRIC in metrics:
        add_true_value({f"{n}#{r}": ev for (n, r), ev in evals.items()}, oracle, data)
    values: dict[str, list] = {}
    for (name, _), ev in evals.items():
        values.setdefault(name, []).append(_per_user(ev, data, metrics))
    info = {"window": window, "eval_seconds": seconds, "users": data.stats}
    return values, data, metrics, info


def run_compare(ds: Dataset, cfg: Config, out: str | Path, sources: dict[str, list[Source]], baselines: list[str],
                reference: str, metrics: list[str] | None = None, alpha: float = 0.05, power: float = 0.8,
                n_samples: int = 2000, overwrite: bool = False, extra: dict | None = None) -> dict:
    """Evaluate, compare and write the report folder ``out`` (report.md, results.json, forest.png,
    segments.png, report.html; atomically). Returns the results."""
    from offline_eval.compare import compare_systems
    from offline_eval.html_report import write_html
    from offline_eval.report import check_output
    from recsys.io import atomic_output_dir, write_json

    check_output(out, overwrite)
    names = list(sources) + [b for b in baselines if b not in sources]
    if reference not in names:
        raise ValueError(f"--reference: {reference!r} is not among the compared systems {names}")
    if len(names) < 2:
        raise ValueError(f"compare needs two or more systems, got {names}")
    t0 = time.perf_counter()
    values, data, metrics, info = evaluate_all(ds, cfg, sources, baselines, metrics)
    values = {n: values[n] for n in [reference] + [n for n in names if n != reference]}
    res = compare_systems(values, reference, metrics, segment_specs(data, metrics), alpha, power, n_samples,
                          cfg.seed)
    res.update(metrics=metrics, dataset=ds.schema.name, config=cfg.name,
               window=info["window"], warm_users=int(data.warm.sum()), head_items=int(data.head_items.sum()),
               n_items=int(data.n_items), eval_seconds=info["eval_seconds"], users=info["users"],
               sources={n: [dataclasses.asdict(s) for s in srcs] for n, srcs in sources.items()},
               baselines=list(baselines), **(extra or {}))
    res["wall_seconds"] = time.perf_counter() - t0
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        forest_plot(res, tmp / "forest.png")
        segment_plot(res, tmp / "segments.png")
        write_json(tmp / "results.json", res)
        (tmp / "report.md").write_text(format_report(res), encoding="utf-8")
        write_html(tmp)
    return res


# ----------------------------------------------------------------------------------------------------------
# report


def _p(p: float) -> str:
    """A p-value for a table: 2 significant digits; one below the double range shown as < 1e-300."""
    return f"{p:.2g}" if p > 0 else "<1e-300"


def _ci(p: dict) -> str:
    return f"{p['diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"


def summary_table(res: dict, metric: str | None = None) -> str:
    """Markdown table of one metric: systems by mean, paired difference to the reference with its interval,
    raw and Holm p, MDE, significant."""
    metric = metric or res["metrics"][0]
    ref = res["reference"]
    lines = [(f"| system | seeds | {metric} | per seed | minus {ref} [95% CI] | bootstrap CI | p | Holm p | MDE "
              "| significant |"), "|---|---|---|---|---|---|---|---|---|---|"]
    systems = res["systems"]
    for n in sorted(systems, key=lambda x: -systems[x][metric]["mean"]):
        s = systems[n][metric]
        per_seed = ", ".join(f"{v:.4f}" for v in s["per_seed"]) if s["replicates"] > 1 else "-"
        p = res["paired"].get(n, {}).get(metric)
        if p is None:
            lines.append(f"| **{n}** (reference) | {s['replicates']} | {s['mean']:.4f} | {per_seed} | - | - | - | - "
                         "| - | - |")
            continue
        boot = f"[{p['boot_low']:+.4f}, {p['boot_high']:+.4f}]" if "boot_low" in p else "-"
        lines.append(f"| {n} | {s['replicates']} | {s['mean']:.4f} | {per_seed} | {_ci(p)} | {boot} "
                     f"| {_p(p['p_value'])} | {_p(p['p_holm'])} | {p['mde']:.4f} | "
                     f"{'yes' if p['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def segment_table(res: dict) -> str:
    ref = res["reference"]
    lines = [f"| segment | users | system | metric | {ref} | system | minus {ref} [95% CI] | p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seg, entry in res["segments"].items():
        for n, by_metric in entry["paired"].items():
            for m, p in by_metric.items():
                lines.append(f"| {seg} | {entry['n_users']} | {n} | {m} | {p['reference_mean']:.4f} | "
                             f"{p['mean']:.4f} | {_ci(p)} | {_p(p['p_value'])} | {_p(p['p_holm'])} |")
    return "\n".join(lines) + "\n"


def format_report(res: dict) -> str:
    s, b = res["n_seeds"], res["n_users"]
    alpha, power = res["alpha"], res["power"]
    lines = [
        f"# Compare: {len(res['systems'])} systems against {res['reference']}, {b} users x {s} seed{'s' * (s > 1)}",
        "",
        (f"Window `{res['window']}` of config `{res['config']}`: {b} test users ({res['warm_users']} warm, "
        f"{b - res['warm_users']} cold), {res['n_items']} items ({res['head_items']} head). Differences are "
        f"**system minus {res['reference']}**, paired over users and seeds. The interval is the t interval of the "
        "crossed seeds x users design (standard error from the two-way ANOVA mean squares, Satterthwaite degrees "
        f"of freedom; with one seed the paired t-test); *bootstrap CI* resamples seeds, then users. *Holm p*: "
        f"Holm's adjustment over every (system, metric) test of the table; *significant*: Holm p <= {alpha}. "
        f"*MDE*: the difference a test of size {alpha} detects with power {power} in this design "
        "((t_{1-a/2} + t_{power}) x SE): a non-significant difference smaller than it is no evidence of no "
        "effect."), ""]
    for m in res["metrics"]:
        lines += [f"## {m}", "", summary_table(res, m)]
    lines += ["![paired differences with 95% intervals, per metric](forest.png)", "",
              "## Segments", "",
              ("Warm / cold users: the metric over users known / unknown to the catalogue. Head / tail items: recall "
              "against only the head (most engaged, `eval.head_fraction` of the engagements before the window) / "
              "tail relevant items, over the users with such an item. Holm over every test of this table."), "",
              segment_table(res), "![per-segment paired differences](segments.png)", "",
              "## Evaluation time", "", "| system | seconds (all replicates) |", "|---|---|"]
    lines += [f"| {n} | {t:.1f} |" for n, t in res["eval_seconds"].items()]
    return "\n".join(lines) + "\n"


def _forest(ax, rows: list[tuple[str, dict]], title: str) -> None:
    y = np.arange(len(rows))[::-1]
    for yi, (label, p) in zip(y, rows):
        color = "tab:red" if p.get("significant") else "tab:blue"
        ax.errorbar(p["diff"], yi, xerr=[[p["diff"] - p["ci_low"]], [p["ci_high"] - p["diff"]]], fmt="o",
                    color=color, capsize=3)
        if "mde" in p:
            ax.plot([-p["mde"], p["mde"]], [yi - 0.3, yi - 0.3], color="0.6", lw=2, solid_capstyle="butt")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("difference (red: significant after Holm; grey: +-MDE)", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_title(title, fontsize=9)


def forest_plot(res: dict, path: Path) -> None:
    """One panel per metric: each system's difference to the reference with its 95% interval (red:
    significant after Holm) and the +-MDE band in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = res["metrics"]
    n_sys = max(1, len(res["paired"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.5 * n_sys + 1.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        _forest(ax, [(n, by[m]) for n, by in res["paired"].items() if m in by], f"{m}: minus {res['reference']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segment_plot(res: dict, path: Path) -> None:
    """One panel per segment: every (system, metric) difference to the reference with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segs = [s for s in res["segments"] if res["segments"][s]["paired"]]
    n_rows = max([sum(len(v) for v in res["segments"][s]["paired"].values()) for s in segs] or [1])
    fig, axes = plt.subplots(1, max(1, len(segs)), figsize=(3.8 * max(1, len(segs)), 0.32 * n_rows + 1.6),
                             squeeze=False)
    for ax, seg in zip(axes[0], segs):
        entry = res["segments"][seg]
        rows = [(f"{n} {m}", p) for n, by in entry["paired"].items() for m, p in by.items()]
        _forest(ax, rows, f"{seg} ({entry['n_users']} users)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["DEFAULT_METRICS", "Source", "evaluate_all", "format_report", "run_compare", "segment_specs",
           "summary_table"]
