"""The evaluation report folder: ``metrics.json``, ``report.md``, PNG plots and (optionally) TREC files.

Layout of ``OUT/`` (written atomically: a failed run leaves nothing; an existing folder is refused unless
``overwrite``)::

    metrics.json        every number (documented below)
    report.md           the same as tables: systems x metrics with 95% bootstrap CIs, funnel, segments, ...
    report.html         report.md and its figures as one self-contained page (offline_eval.html_report)
    metric_at_k.png     nDCG@k and recall@k over eval.ks, one line per system
    ci.png              each system's mean and 95% CI of nDCG@10, recall@100 (and true_ndcg@10 when known)
    funnel.png          recall of each stage's candidates, per system (only when a system reports stages)
    reliability.png     reliability diagram of the heavy ranker's probabilities (only with calibration bins)
    qrels.trec          with --export-run: ``qid 0 docid rel`` (external user / item ids)
    run.trec            with --export-run: ``qid Q0 docid rank score tag`` of the primary system (``engine`` when
                        present, else the best non-oracle system by nDCG@10)
    runs/NAME.trec      with --export-run: the run of every system

``metrics.json``::

    {"dataset": {"name", "path", "counts": {"interactions", "users", "items"}},
     "split": "test", "split_stats": {...}, "n_users": B, "users": {window users, dropped and why, ...},
     "config": {eval section}, "backend": "local",
     "systems": {NAME: {"ndcg@10": x, "mrr@10": x, "map@10": x, "recall@10": x, "recall@100": x, ...}},
     "ci95": {NAME: {metric: [low, high]}},           # percentile bootstrap of the mean over users
     "beyond_accuracy": {NAME: {"coverage@10": x, "novelty@10": x, "avg_popularity@10": x, "diversity@10": x}},
     "segments": {NAME: {"warm_users"|"cold_users": {"n_users": n, metric: x}, "head_items"|"tail_items": ...}},
     "funnel": {NAME: {STAGE: {"C": C, "recall@C": x, "recall": x, "mean_candidates": x}}},
     "comparisons": [{"a", "b", "metric", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value"}],
     "timings": {NAME: {"wall_seconds", "rank_seconds", "users_per_second", "fit_seconds"?}},
     "degraded": {NAME: {reason: count}},
     "failed": {NAME: "fit failed: RuntimeError: ..."},  # baselines that raised: left out of every other section
     "calibration": {...},                             # from ``extra`` (empty when none)
     ...other ``extra`` sections}

The 95% CI of a mean is the percentile bootstrap over users (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, ch. 13), drawn as multinomial resampling weights so that all metrics of a system share the
same resamples.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from offline_eval.evaluator import HEADLINE
from offline_eval.figures import plot_cis, plot_funnel
from offline_eval.html_report import write_html
from recsys.config import Config, to_dict
from recsys.io import OutputExistsError, atomic_output_dir, write_json

if TYPE_CHECKING:  # pragma: no cover
    from offline_eval.evaluator import EvalData, SystemEval
    from recsys.data.schema import Dataset

logger = logging.getLogger(__name__)

def check_output(out: str | Path, overwrite: bool) -> None:
    """Refuse an existing output folder before any work is done (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output folder exists; pass --overwrite to replace it")


# ----------------------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(
    values: np.ndarray, n_samples: int = 1000, seed: int = 0, alpha: float = 0.05, chunk: int = 100
) -> np.ndarray:
    """(M, 2) percentile-bootstrap ``(1 - alpha)`` confidence intervals of the means of ``values`` (M, B).

    Each resample draws B users with replacement; its counts ``w`` (B,) give the resampled means of all M
    rows as one product ``w @ values.T / B`` (chunks of ``chunk`` resamples bound memory). Rows evaluated on
    the same users share the same resamples.
    """
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    m, b = x.shape
    if b == 0 or n_samples <= 0:
        return np.full((m, 2), np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_samples, m))
    for start in range(0, n_samples, chunk):
        s = min(chunk, n_samples - start)
        idx = rng.integers(0, b, size=(s, b)) + (np.arange(s) * b)[:, None]
        w = np.bincount(idx.ravel(), minlength=s * b).reshape(s, b).astype(np.float64)
        means[start : start + s] = w @ x.T / b
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return np.stack([lo, hi], axis=1)


# ----------------------------------------------------------------------------------------------------------
# metrics.json


def build_metrics(
    evals: Mapping[str, "SystemEval"],
    data: "EvalData",
    cfg: Config,
    ds: "Dataset",
    comparisons: Sequence[dict] = (),
    baselines: Sequence[str] = (),
    split_stats: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    backend: str = "local",
    failed: Mapping[str, str] | None = None,
) -> dict:
    """The ``metrics.json`` content (see the module docstring)."""
    sch = ds.schema.tables["interactions"]
    ucol = sch.names(_role("user_id"))[0]
    out: dict[str, Any] = {
        "dataset": {
            "name": ds.schema.name,
            "path": str(ds.path) if ds.path is not None else None,
            "counts": {
                "interactions": int(len(ds.interactions)),
                "users": int(ds.interactions[ucol].nunique()),
                "items": int(data.n_items),
            },
        },
        "split": data.window,
        "split_stats": dict(split_stats or {}),
        "n_users": data.n_users,
        "users": dict(data.stats),
        "positive_label": data.positive_label,
        "gains": dict(data.gains),
        "config": to_dict(cfg.eval),
        "backend": backend,
        "baselines": list(baselines),
        "systems": {},
        "ci95": {},
        "beyond_accuracy": {},
        "segments": {},
        "funnel": {},
        "comparisons": list(comparisons),
        "timings": {},
        "degraded": {},
        "failed": dict(failed or {}),
        "calibration": {},
    }
    rows = [(name, k) for name, ev in evals.items() for k in ev.per_user]
    if rows:  # one pass for all systems: the same resamples of the same users
        ci = bootstrap_ci(np.stack([evals[n].per_user[k] for n, k in rows]), cfg.eval.bootstrap_samples,
                          cfg.eval.seed)
        for (name, k), (lo, hi) in zip(rows, ci):
            out["ci95"].setdefault(name, {})[k] = [float(lo), float(hi)]
    for name, ev in evals.items():
        out["systems"][name] = dict(ev.means)
        out["beyond_accuracy"][name] = dict(ev.beyond)
        out["segments"][name] = ev.segments
        if ev.funnel:
            out["funnel"][name] = ev.funnel
        out["timings"][name] = dict(ev.timings)
        out["degraded"][name] = dict(ev.degraded)
    for key, value in (extra or {}).items():
        if key in out and key != "calibration":
            raise ValueError(f"extra report section {key!r} clashes with a built-in section of metrics.json")
        out[key] = value
    return out


def _role(name: str):
    from recsys.data.schema import Role

    return Role(name)


# ----------------------------------------------------------------------------------------------------------
# report.md


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "nan"
        return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.4g}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines + [""]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of a nested mapping, keyed by ``a/b/c`` paths (lists and arrays are skipped)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        elif isinstance(v, (int, float, str, bool, np.integer, np.floating)) or v is None:
            out[key] = v
    return out


def _section_table(section: Mapping[str, Any]) -> list[str]:
    """A mapping ``{row: {...nested scalars...}}`` as a table (rows x flattened scalar leaves)."""
    rows = {str(k): _flatten(v) if isinstance(v, Mapping) else {"value": v} for k, v in section.items()}
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    if not cols:
        return ["(no scalar values)", ""]
    return _table(["", *cols], [[name, *(r.get(c) for c in cols)] for name, r in rows.items()])


def _ks(metrics: Mapping[str, Any], base: str) -> list[int]:
    ks = set()
    for sys_metrics in metrics["systems"].values():
        for name in sys_metrics:
            m = re.fullmatch(rf"{base}@(\d+)", name)
            if m:
                ks.add(int(m.group(1)))
    return sorted(ks)


#: figures shown inside the section they illustrate (the others go to a final "Plots" section)
FIGURE_SECTION = {"ci.png": "systems", "metric_at_k.png": "cut-offs", "funnel.png": "funnel",
                  "reliability.png": "calibration"}
FIGURE_CAPTION = {"ci.png": "95% confidence interval of each system's mean",
                  "metric_at_k.png": "metric@k over the cut-offs",
                  "funnel.png": "funnel recall per stage",
                  "reliability.png": "reliability diagram"}


def render_markdown(metrics: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md`` from the ``metrics.json`` content (so a report can be re-rendered from the JSON).

    ``plots``: figure files in the folder; those of :data:`FIGURE_SECTION` are shown in their section."""
    plots = list(plots)

    def figure(section: str) -> list[str]:
        out = []
        for p in plots:
            if FIGURE_SECTION.get(p) == section:
                out += [f"![{FIGURE_CAPTION[p]}]({p})", ""]
        return out

    ds = metrics["dataset"]
    u = metrics.get("users", {})
    lines = [
        f"# Offline evaluation: {ds['name']}",
        "",
        f"- dataset: `{ds.get('path')}` ({ds['counts']['interactions']} interactions, {ds['counts']['users']} "
        f"users, {ds['counts']['items']} items)",
        f"- window: `{metrics['split']}`; {metrics['n_users']} test users ranked against the full catalogue "
        f"({u.get('warm_users', '?')} warm); dropped: {u.get('users_without_engagement', 0)} without an "
        f"engagement, {u.get('users_with_only_seen_items', 0)} whose items were all seen before"
        + (f", {u['sampled_out']} sampled out" if u.get("sampled_out") else ""),
        f"- relevance: positive label `{metrics.get('positive_label')}`, gains {metrics.get('gains')}; "
        f"exclude seen: {metrics.get('config', {}).get('exclude_seen')}; backend: {metrics.get('backend')}",
        "",
        "## Systems",
        "",
        "Mean over test users, with the 95% percentile-bootstrap confidence interval of the mean.",
        "",
    ]
    systems = metrics["systems"]
    ci = metrics.get("ci95", {})

    def cell(name: str, m: str) -> str:
        v = systems[name].get(m)
        c = ci.get(name, {}).get(m)
        if v is None:
            return "–"
        if c is None or any(x is None or (isinstance(x, float) and math.isnan(x)) for x in c):
            return _fmt(v)
        return f"{v:.4f} [{c[0]:.4f}, {c[1]:.4f}]"

    lines += _table(["system", *HEADLINE], [[n, *(cell(n, m) for m in HEADLINE)] for n in systems])
    lines += figure("systems")
    failed = metrics.get("failed") or {}
    if failed:
        lines += ["## Failed systems", "", "Left out of every table below; the other systems are unaffected.", ""]
        lines += _table(["system", "reason"], [[n, why.replace("|", "/")] for n, why in failed.items()])

    bases = []
    for sys_metrics in systems.values():
        for name in sys_metrics:
            b = name.split("@")[0]
            if b not in bases:
                bases.append(b)
    if bases:
        lines += ["## All metrics by cut-off", ""] + figure("cut-offs")
        for b in bases:
            ks = _ks(metrics, b)
            lines += [f"### {b}", ""]
            lines += _table(["system", *(f"@{k}" for k in ks)], [[n, *(systems[n].get(f"{b}@{k}") for k in ks)]
                                                                  for n in systems])

    beyond = metrics.get("beyond_accuracy", {})
    if beyond:
        cols = []
        for v in beyond.values():
            cols += [c for c in v if c not in cols]
        lines += ["## Beyond accuracy", ""]
        lines += _table(["system", *cols], [[n, *(v.get(c) for c in cols)] for n, v in beyond.items()])

    funnel = metrics.get("funnel", {})
    lines += ["## Funnel", ""]
    if funnel:
        lines += ["Recall of each stage's candidate list (|relevant ∩ candidates| / |relevant|): the ceiling it "
                  "leaves to the stages after it.", ""]
        rows = []
        for n, stages in funnel.items():
            for stage, v in stages.items():
                rows.append([n, stage, v.get("C"), v.get("recall"), v.get("mean_candidates")])
        lines += _table(["system", "stage", "C", "recall@C", "mean candidates"], rows)
        lines += figure("funnel")
    else:
        lines += ["No system reported stage candidates.", ""]

    segs = metrics.get("segments", {})
    if segs:
        lines += ["## Segments", "", "### Users: warm (seen before the window) vs cold", ""]
        user_cols = ["ndcg@10", "recall@10", "recall@100"]
        rows = []
        for n, s in segs.items():
            for seg in ("warm_users", "cold_users"):
                if seg in s:
                    rows.append([n, seg.split("_")[0], s[seg].get("n_users"), *(s[seg].get(c) for c in user_cols)])
        lines += _table(["system", "users", "n", *user_cols], rows)
        lines += ["### Items: head vs tail (recall of the relevant items of each group)", ""]
        rec_cols: list[str] = []
        for s in segs.values():
            for seg in ("head_items", "tail_items"):
                rec_cols += [c for c in s.get(seg, {}) if c.startswith("recall@") and c not in rec_cols]
        rec_cols.sort(key=lambda c: int(c.split("@")[1]))
        rows = []
        for n, s in segs.items():
            for seg in ("head_items", "tail_items"):
                if seg in s:
                    rows.append([n, seg.split("_")[0], s[seg].get("n_users"), *(s[seg].get(c) for c in rec_cols)])
        lines += _table(["system", "items", "users", *rec_cols], rows)

    comps = metrics.get("comparisons", [])
    if comps:
        lines += ["## Comparisons", "", "Paired bootstrap over users of the difference of means (a - b).", ""]
        rows = [[c["a"], c["b"], c["metric"], c.get("mean_diff"),
                 f"[{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]", c.get("p_value")] for c in comps]
        lines += _table(["a", "b", "metric", "mean diff", "95% CI", "p"], rows)

    builtin = {"dataset", "split", "split_stats", "n_users", "users", "positive_label", "gains", "config", "backend",
               "baselines", "systems", "ci95", "beyond_accuracy", "segments", "funnel", "comparisons", "timings",
               "degraded", "exports", "failed"}
    for key, section in metrics.items():
        if key in builtin or not isinstance(section, Mapping) or not section:
            continue
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""]
        lines += _section_table(section)
        lines += figure(key)

    timings = metrics.get("timings", {})
    if timings:
        cols = []
        for v in timings.values():
            cols += [c for c in v if c not in cols]
        lines += ["## Timings", ""]
        lines += _table(["system", *cols], [[n, *(v.get(c) for c in cols)] for n, v in timings.items()])
    degraded = {n: d for n, d in metrics.get("degraded", {}).items() if d}
    if degraded:
        lines += ["## Degradations", ""]
        lines += _section_table(degraded)
    placed = {p for p in plots if FIGURE_SECTION.get(p) == "systems"
              or (FIGURE_SECTION.get(p) == "funnel" and funnel)
              or (FIGURE_SECTION.get(p) == "cut-offs" and bases)
              or (FIGURE_SECTION.get(p) == "calibration" and metrics.get("calibration"))}
    rest = [p for p in plots if p not in placed]
    if rest:
        lines += ["## Plots", ""] + [f"![{FIGURE_CAPTION.get(p, p)}]({p})" for p in rest] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# plots


def plot_metric_curves(metrics: Mapping[str, Any], path: str | Path, bases: Sequence[str] = ("ndcg", "recall")) -> bool:
    """``metric@k`` over k (log axis), one line per system, one panel per metric; False if nothing to plot."""
    bases = [b for b in bases if _ks(metrics, b)]
    if not bases:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bases), figsize=(5 * len(bases), 3.8), squeeze=False)
    for ax, b in zip(axes[0], bases):
        ks = _ks(metrics, b)
        for name, sys_metrics in metrics["systems"].items():
            ys = [sys_metrics.get(f"{b}@{k}") for k in ks]
            ax.plot(ks, ys, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel(f"{b}@k")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{metrics['dataset']['name']}: {metrics['n_users']} test users")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------------
# TREC export


def _trec_ids(ids: np.ndarray, what: str) -> np.ndarray:
    s = pd.Series(np.asarray(ids)).astype(str)
    bad = s.str.contains(r"\s", regex=True)
    if bad.any():
        logger.warning("%d %s ids contain whitespace; replaced by '_' in the TREC files", int(bad.sum()), what)
        s = s.str.replace(r"\s", "_", regex=True)
    return s.to_numpy()


def write_trec_qrels(path: Path, data: "EvalData") -> None:
    """``qrels.trec``: ``qid 0 docid rel`` of ``data.qrels`` with external ids.

    Integer gains go through :func:`offline_eval.trec.write_qrels`; non-integer graded gains (which
    ``trec_eval`` cannot read) are written as decimals, with a warning.
    """
    from offline_eval import trec

    q = data.qrels
    rows = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr))
    qids = _trec_ids(data.user_ids, "user")
    docs = _trec_ids(data.catalog.items.ids, "item")
    if np.all(q.data == np.round(q.data)):
        out: dict[str, dict[str, int]] = {}
        for qid, doc, rel in zip(qids[rows], docs[q.indices], q.data.astype(np.int64)):
            out.setdefault(qid, {})[doc] = int(rel)
        trec.write_qrels(path, out)
    else:
        logger.warning("graded gains are not integers; qrels.trec holds them as decimals (trec_eval reads integers)")
        pd.DataFrame({"qid": qids[rows], "iter": 0, "docid": docs[q.indices], "rel": q.data}).to_csv(
            path, sep=" ", header=False, index=False, float_format="%.17g"
        )


def run_scores(ranked: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(B, K) scores to write in a TREC run so that ``trec_eval`` keeps the system's order.

    trec_eval re-sorts a run by score rounded to float32 (ties by docid), so a row keeps its own scores only
    when they are finite and strictly decreasing in float32 over its items; other rows get ``K - rank + 1``.
    """
    from offline_eval.trec import trec_score_key

    b, k = ranked.shape
    valid = ranked >= 0
    key = trec_score_key(np.where(valid, scores, 0.0))
    s = np.where(valid, key, -np.inf)
    finite = np.all(np.isfinite(key) | ~valid, axis=1)
    decreasing = np.all((s[:, 1:] < s[:, :-1]) | ~valid[:, 1:], axis=1)
    rank = np.broadcast_to(np.arange(1, k + 1), (b, k))
    return np.where((finite & decreasing)[:, None], scores, (k - rank + 1).astype(np.float64))


def write_trec_run(path: Path, ev: "SystemEval", data: "EvalData", tag: str) -> None:
    """``qid Q0 docid rank score tag`` of a system's final lists (padding left out), external ids."""
    from offline_eval import trec

    docs = _trec_ids(data.catalog.items.ids, "item").astype(object)
    valid = ev.ranked >= 0
    doc_ids = np.where(valid, docs[np.where(valid, ev.ranked, 0)], None)
    scores = np.where(valid, run_scores(ev.ranked, ev.scores), 0.0)
    trec.write_run(path, list(_trec_ids(data.user_ids, "user")), doc_ids, scores, tag=_trec_ids([tag], "tag")[0])


def primary_system(metrics: Mapping[str, Any]) -> str | None:
    """``engine`` when evaluated, else the best non-oracle system by nDCG@10 (None when there is none)."""
    systems = metrics["systems"]
    if "engine" in systems:
        return "engine"
    cands = [n for n in systems if n != "oracle"] or list(systems)
    return max(cands, key=lambda n: systems[n].get("ndcg@10", float("-inf"))) if cands else None


# ----------------------------------------------------------------------------------------------------------
# the folder


def write_report(
    out: str | Path,
    evals: Mapping[str, "SystemEval"],
    data: "EvalData",
    cfg: Config,
    ds: "Dataset",
    comparisons: Sequence[dict] = (),
    baselines: Sequence[str] = (),
    split_stats: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    export_run: bool = False,
    overwrite: bool = False,
    backend: str = "local",
    reliability: Mapping[str, Any] | None = None,
    failed: Mapping[str, str] | None = None,
) -> dict:
    """Write the report folder ``out`` atomically (see the module docstring); returns the metrics.json content.
    ``failed``: systems that could not be evaluated, with the reason (reported, left out of the tables)."""
    metrics = build_metrics(evals, data, cfg, ds, comparisons, baselines, split_stats, extra, backend, failed)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        plots = []
        if plot_cis(metrics, tmp / "ci.png"):
            plots.append("ci.png")
        if plot_metric_curves(metrics, tmp / "metric_at_k.png"):
            plots.append("metric_at_k.png")
        if plot_funnel(metrics, tmp / "funnel.png"):
            plots.append("funnel.png")
        if reliability:
            from offline_eval.calibration import reliability_diagram

            reliability_diagram(reliability, tmp / "reliability.png",
                                title="Heavy ranker: reliability (test window)")
            plots.append("reliability.png")
        if export_run:
            exports: dict[str, Any] = {"qrels": "qrels.trec", "runs": {}}
            write_trec_qrels(tmp / "qrels.trec", data)
            (tmp / "runs").mkdir()
            for name, ev in evals.items():
                fname = f"runs/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.trec"
                write_trec_run(tmp / fname, ev, data, name)
                exports["runs"][name] = fname
            primary = primary_system(metrics)
            if primary is not None:
                write_trec_run(tmp / "run.trec", evals[primary], data, primary)
                exports["run"] = "run.trec"
                exports["run_system"] = primary
            metrics["exports"] = exports
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(render_markdown(metrics, plots), encoding="utf-8")
        write_html(tmp)
    logger.info("wrote evaluation report to %s", out)
    return metrics


def format_table(metrics: Mapping[str, Any], columns: Sequence[str] = HEADLINE) -> str:
    """Plain-text systems x ``columns`` table of the means (for the terminal)."""
    names = list(metrics["systems"])
    w = max([len("system"), *(len(n) for n in names)])
    cw = max(10, *(len(c) for c in columns))
    lines = ["system".ljust(w) + "  " + "  ".join(c.rjust(cw) for c in columns)]
    for n in names:
        vals = [metrics["systems"][n].get(c) for c in columns]
        lines.append(n.ljust(w) + "  " + "  ".join(("–" if v is None else f"{v:.4f}").rjust(cw) for v in vals))
    lines += [f"{n.ljust(w)}  FAILED: {why}" for n, why in (metrics.get("failed") or {}).items()]
    return "\n".join(lines)


__all__ = [
    "write_report",
    "build_metrics",
    "render_markdown",
    "bootstrap_ci",
    "plot_metric_curves",
    "write_trec_qrels",
    "write_trec_run",
    "run_scores",
    "format_table",
    "check_output",
    "primary_system",
]
