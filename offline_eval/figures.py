"""Figures of the evaluation report folder (PNG, matplotlib Agg): the funnel's recall per stage and each
system's confidence intervals. Each ``plot_*`` returns False (and writes nothing) when its section of
``metrics.json`` is empty, so a report without a funnel (baselines only) or without CIs still renders.

Inputs are the ``metrics.json`` sections documented in :mod:`offline_eval.report`:

* ``funnel``: ``{system: {stage: {"C": C, "recall": r, "mean_candidates": m}}}``, stages in pipeline order;
* ``systems``: ``{system: {metric: mean}}`` and ``ci95``: ``{system: {metric: [low, high]}}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: metrics of the CI figure, in this order, when the systems report them
CI_METRICS = ("ndcg@10", "recall@100", "true_ndcg@10")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` as PNG and close it."""
    plt = pyplot()
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def system_colors(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One colour per system (tab10, tab20 beyond 10 systems), in the order of ``metrics["systems"]`` (the same
    in every figure)."""
    plt = pyplot()
    names = list(dict.fromkeys(list(metrics.get("systems") or {}) + list(metrics.get("funnel") or {})))
    cmap, n = (plt.cm.tab10, 10) if len(names) <= 10 else (plt.cm.tab20, 20)
    return {name: cmap(i % n) for i, name in enumerate(names)}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def plot_funnel(metrics: Mapping[str, Any], path: str | Path) -> bool:
    """Horizontal bars: recall of each stage's candidate list, grouped by system (stages top to bottom in
    pipeline order, labelled ``stage @C``); False if no system reported stages."""
    funnel = {n: s for n, s in (metrics.get("funnel") or {}).items() if s}
    rows = [(n, stage, v.get("C"), v.get("recall")) for n, stages in funnel.items() for stage, v in stages.items()
            if _finite(v.get("recall"))]
    if not rows:
        return False
    plt = pyplot()
    names = list(dict.fromkeys(r[0] for r in rows))
    colors = system_colors(metrics)
    y, pos, labels = [], 0.0, []
    for i, r in enumerate(rows):
        if i and r[0] != rows[i - 1][0]:
            pos += 0.6  # a gap between systems
        y.append(pos)
        labels.append(f"{r[0]}: {r[1]}" + (f" @{r[2]}" if r[2] is not None else ""))
        pos += 1.0
    y = -np.asarray(y)  # first row at the top
    recall = np.array([r[3] for r in rows], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 0.5 * len(names) + 1.2))
    ax.barh(y, recall, color=[colors[r[0]] for r in rows], height=0.8)
    for yy, v in zip(y, recall):
        ax.text(v + 0.01, yy, f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, min(1.0, max(1e-3, recall.max()) * 1.15 + 0.05))
    ax.set_xlabel("recall of the stage's candidates (|relevant ∩ candidates| / |relevant|)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Funnel: recall at each stage's cut-off C")
    save(fig, path)
    return True


def ci_metrics(metrics: Mapping[str, Any], candidates: Sequence[str] = CI_METRICS) -> list[str]:
    """The metrics of ``candidates`` some system has a finite mean and CI for."""
    systems, ci = metrics.get("systems") or {}, metrics.get("ci95") or {}
    return [m for m in candidates if any(_finite(systems[n].get(m)) and _ci(ci, n, m) is not None for n in systems)]


def _ci(ci: Mapping[str, Any], name: str, metric: str):
    c = (ci.get(name) or {}).get(metric)
    if c is None or len(c) != 2 or not all(_finite(x) for x in c):
        return None
    return float(c[0]), float(c[1])


def plot_cis(metrics: Mapping[str, Any], path: str | Path, candidates: Sequence[str] = CI_METRICS) -> bool:
    """Forest plot: each system's mean (dot) and 95% bootstrap CI (bar), one panel per metric of
    :func:`ci_metrics`, systems sorted by the first metric; False if no system has a CI."""
    cols = ci_metrics(metrics, candidates)
    if not cols:
        return False
    plt = pyplot()
    systems, ci = metrics["systems"], metrics.get("ci95") or {}
    first = cols[0]
    order = sorted(systems, key=lambda n: systems[n].get(first) if _finite(systems[n].get(first)) else -np.inf)
    colors = system_colors(metrics)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols) + 1.2, 0.45 * len(order) + 1.4), squeeze=False,
                             sharey=True)
    y = np.arange(len(order))
    for ax, m in zip(axes[0], cols):
        for yy, n in zip(y, order):
            v, c = systems[n].get(m), _ci(ci, n, m)
            if not _finite(v):
                continue
            if c is not None:
                ax.plot(c, [yy, yy], color=colors[n], linewidth=2.5, solid_capstyle="butt")
            ax.plot([v], [yy], "o", color=colors[n], markersize=6)
        ax.set_title(m)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, order)
    axes[0][0].set_ylim(-0.6, len(order) - 0.4)
    fig.suptitle("Mean over test users with its 95% bootstrap confidence interval")
    save(fig, path)
    return True


__all__ = ["CI_METRICS", "ci_metrics", "plot_cis", "plot_funnel", "pyplot", "save", "system_colors"]
