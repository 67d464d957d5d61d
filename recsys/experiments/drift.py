"""Drift between two time windows of the split: adversarial validation on the pre-ranker's feature table.

Shapes: R rows (request, candidate), F features, G requests per window (one per user with an engagement).

**The table.** Each window's rows are built exactly as the pre-ranker's training rows
(:func:`recsys.prerank.stage.build_ranking_data`): one request per user of the window with an engagement, at
the user's first event in it, with the user's history before the window; candidates from the same retrieval
stage (trained on the retrieval window, before both windows, so neither window's labels reach an
``ann_score``); features as of the window's own start (point-in-time: the feature context fitted on the
look-back ending there, :func:`recsys.training.lookback_events`, the one the engine would serve the window
with). Differences from the training table, each to describe what serving sees rather than what training can
learn from: requests whose candidates hold no positive are kept (``all_groups``; dropping them would make
retrieval recall, which differs between windows, a selection effect), impression negatives are left out (no
source served them), and at most ``rows_per_request`` candidates per request are kept, a seeded uniform sample
(the same distribution, fewer correlated rows). ``max_users`` caps the requests per window (a seeded sample).

**The test** (:func:`offline_eval.drift.adversarial_validation`): old rows 0, new rows 1, LightGBM out-of-fold
AUC over folds grouped by user (a user in both windows lies in one fold), a bootstrap CI over users, a
permutation null over requests, and per-feature gain share, univariate AUC and KS.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from offline_eval.drift import DriftConfig, DriftResult, adversarial_validation
from recsys.features import FeatureKind
from recsys.io import atomic_output_dir, write_json

logger = logging.getLogger(__name__)

__all__ = ["DriftTable", "drift_table", "markdown", "plot_distributions", "plot_importance", "sample_rows",
           "window_rows", "write_report"]


@dataclasses.dataclass
class DriftTable:
    """X (R, F) float32; window (R,) 0 old / 1 new; users (R,) external user id; requests (R,) request index
    (unique across both windows); names / kinds (F,)."""

    X: np.ndarray
    window: np.ndarray
    users: np.ndarray
    requests: np.ndarray
    names: list[str]
    kinds: list[FeatureKind]

    def without(self, drop) -> "DriftTable":
        """The table without the features ``drop`` (names; an unknown one is an error)."""
        unknown = [d for d in drop if d not in self.names]
        if unknown:
            raise ValueError(f"--drop: unknown feature(s) {unknown}; features: {self.names}")
        keep = [j for j, n in enumerate(self.names) if n not in set(drop)]
        if not keep:
            raise ValueError("--drop: leaves no feature")
        return dataclasses.replace(self, X=self.X[:, keep], names=[self.names[j] for j in keep],
                                   kinds=[self.kinds[j] for j in keep])

    @property
    def categorical(self) -> list[int]:
        return [j for j, k in enumerate(self.kinds) if k is FeatureKind.CATEGORICAL]


def sample_rows(group: np.ndarray, m: int, seed: int) -> np.ndarray:
    """(R,) bool: at most ``m`` rows of each consecutive group (``group`` (G,) rows per group), a seeded uniform
    sample without replacement (0: all rows)."""
    r = int(group.sum())
    if m <= 0:
        return np.ones(r, bool)
    gid = np.repeat(np.arange(len(group)), group)
    order = np.lexsort((np.random.default_rng(seed).random(r), gid))  # rows by group, random within
    rank = np.empty(r, np.int64)
    rank[order] = np.arange(r) - np.repeat(np.cumsum(group) - group, group)
    return rank < m


def window_rows(ds, catalog, upstream, split, window: str, first: str, pcfg, rows_per_request: int, seed: int):
    """The served feature rows of ``window`` (see the module docstring): (X (R, F), user ids (R,), request
    index (R,) within the window, names, kinds)."""
    from recsys.prerank.stage import build_ranking_data
    from recsys.training import ContextsAt, lookback_events

    ctx = ContextsAt(ds, catalog, lookback_events(split, window, first, catalog.time_col)).get(pcfg)
    data = build_ranking_data(ds, catalog, upstream, ctx, split[window], split.before(window), pcfg,
                              all_groups=True)
    served = ~data.extra  # impression negatives: no source served them
    gid = np.repeat(np.arange(len(data.group)), data.group)[served]
    X, group = data.X[served], np.bincount(gid, minlength=len(data.group))
    keep = sample_rows(group, rows_per_request, seed)
    req = gid[keep]
    logger.info("drift: window %r: %d requests, %d rows kept of %d served", window, len(group), int(keep.sum()),
                len(keep))
    return X[keep], np.asarray(data.user_ids)[req], req, data.names, data.kinds


def drift_table(ds, catalog, retrieval, split, old: str, new: str, first: str, pcfg, retrieve_k: int,
                max_users: int = 2000, rows_per_request: int = 50, seed: int = 0) -> DriftTable:
    """Both windows' rows (:func:`window_rows`), served by one retrieval stage at ``retrieve_k`` candidates."""
    from recsys.engine import Engine

    upstream = Engine(retrieval, [], retrieve_k, catalog=catalog)
    pcfg = dataclasses.replace(pcfg, max_train_users=max_users)
    parts = [window_rows(ds, catalog, upstream, split, w, first, pcfg, rows_per_request, seed) for w in (old, new)]
    (xo, uo, ro, names, kinds), (xn, un, rn, names_n, _) = parts
    assert names == names_n, (names, names_n)  # one config, one feature list
    return DriftTable(np.concatenate([xo, xn]), np.r_[np.zeros(len(xo), np.int64), np.ones(len(xn), np.int64)],
                      np.concatenate([uo, un]), np.r_[ro, rn + (ro.max() + 1 if len(ro) else 0)], list(names),
                      list(kinds))


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _num(x, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def verdict(res: DriftResult) -> str:
    """Drift when the AUC's CI lies above 0.5 and above every permutation-null AUC (with P permutations the
    p-value cannot go below 1 / (P + 1), so it is reported, not thresholded)."""
    null_hi = max(res.null_auc) if res.null_auc else 0.5
    if res.auc_ci[0] > max(0.5, null_hi):
        strength = "strong" if res.auc >= 0.8 else ("clear" if res.auc >= 0.6 else "slight")
        return f"**{strength} drift**: the classifier tells the windows apart beyond its permutation null"
    return "**no detectable drift**: the AUC's CI reaches the AUCs the procedure gives with shuffled window labels"


def markdown(res: DriftResult, meta: dict, top: int = 25) -> str:
    rows = res.features()
    null = (f"{res.null_mean:.3f} (range {min(res.null_auc):.3f}-{max(res.null_auc):.3f}, {len(res.null_auc)} "
            f"permutations; p = {res.p_value:.3f})") if res.null_auc else "not run (--permutations 0)"
    old, new = meta["old"], meta["new"]
    lines = [
        f"# Drift: `{old}` vs `{new}` (adversarial validation on the pre-ranker's features)", "",
        f"Data `{meta['data']}`; retrieval stage trained on {meta['retrieval_trained_on']} "
        f"({'bundle ' + meta['bundle'] if meta.get('bundle') else 'trained here'}); features as of each window's "
        f"start. Rows: {res.rows[0]} old ({res.units[0]} requests), {res.rows[1]} new ({res.units[1]} requests), "
        f"{res.groups} users; at most {meta['rows_per_request']} candidates per request, at most "
        f"{meta['max_users']} requests per window. Balance: row weights (each window half of the training "
        f"weight). {res.config.folds} folds grouped by user."
        + (f" Features left out (--drop): {', '.join(f'`{d}`' for d in meta['dropped'])}." if meta.get("dropped")
           else ""), "",
        f"- Out-of-fold AUC (old 0 / new 1): **{res.auc:.3f}** (95% CI {res.auc_ci[0]:.3f}-{res.auc_ci[1]:.3f}, "
        f"bootstrap over users); per fold {', '.join(f'{a:.3f}' for a in res.fold_auc)}",
        f"- Null AUC (window labels shuffled between requests): {null}",
        f"- Verdict: {verdict(res)}.", "",
        "AUC 0.5: the windows' feature rows cannot be told apart; 1: perfectly. Features are ranked by their share "
        "of the classifier's split gain (mean over the fold models); univariate AUC > 0.5 means the feature is "
        "larger in the new window; KS is the largest gap between the two windows' CDFs (non-missing values).", "",
        "Reading it: item and user statistics are recomputed as of each window's start (counts, CTR, age, "
        "history length), so one item's or user's values differ between the windows even when the population's "
        "distribution barely moves (small KS); together they let the trees recognise an (item, window) pair, and "
        "a feature can carry a large gain share with a univariate AUC near 0.5. Ages and history lengths grow "
        "with time by construction. Rerun with `--drop` on the features you expect to drift to see what else "
        "separates the windows.", "",
        f"| # | feature | gain share | std | univariate AUC | KS | mean `{old}` | mean `{new}` | NaN `{old}` | "
        f"NaN `{new}` |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows[:top], 1):
        lines.append(f"| {i} | `{r['feature']}` | {r['importance']:.3f} | {r['importance_std']:.3f} | "
                     f"{_num(r['univariate_auc'], '.3f')} | {_num(r['ks'], '.3f')} | {_num(r['mean_old'])} | "
                     f"{_num(r['mean_new'])} | {r['nan_share_old']:.2f} | {r['nan_share_new']:.2f} |")
    if len(rows) > top:
        lines.append(f"\n{len(rows) - top} more features in results.json.")
    lines += ["", "![Gain share of each feature in the adversarial classifier](importance.png)", "",
              "![The top features' distributions in both windows](distributions.png)", ""]
    return "\n".join(lines)


def plot_importance(res: DriftResult, path: Path, top: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = res.order()[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.4))
    y = np.arange(len(order))
    up = np.nan_to_num(res.uni_auc[order], nan=0.5) >= 0.5
    ax.barh(y, res.importance[order], xerr=res.importance_std[order],
            color=np.where(up, "tab:orange", "tab:blue"))
    ax.set_yticks(y, [res.names[j] for j in order], fontsize=8)
    ax.set_xlabel(f"gain share in the adversarial classifier (mean +- std over {res.config.folds} folds)")
    ax.set_title(f"AUC {res.auc:.3f} (95% CI {res.auc_ci[0]:.3f}-{res.auc_ci[1]:.3f}); orange: larger in the new "
                 "window", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_distributions(res: DriftResult, table: DriftTable, path: Path, old: str, new: str, k: int = 3) -> None:
    """Histograms (density, shared quantile-spaced bins, non-missing values) of the k most important features
    in both windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = res.order()[:k]
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 3.2), squeeze=False)
    for ax, j in zip(axes[0], order):
        col = table.X[:, j].astype(np.float64)
        ok = ~np.isnan(col)
        vals = col[ok]
        if len(vals):
            edges = np.unique(np.quantile(vals, np.linspace(0, 1, 31)))
            if len(edges) < 2:
                edges = np.array([vals.min() - 0.5, vals.max() + 0.5])
            for w, name, c in ((0, old, "tab:blue"), (1, new, "tab:orange")):
                ax.hist(col[ok & (table.window == w)], bins=edges, density=True, histtype="step", linewidth=1.5,
                        color=c, label=name)
        ax.set_title(f"{res.names[j]} (KS {_num(res.ks[j], '.2f')})", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(res: DriftResult, table: DriftTable, out: str | Path, meta: dict, overwrite: bool = False) -> Path:
    """``report.md``, ``importance.png``, ``distributions.png``, ``results.json`` and ``report.html`` (last)."""
    from offline_eval.html_report import write_html

    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        plot_importance(res, tmp / "importance.png")
        plot_distributions(res, table, tmp / "distributions.png", meta["old"], meta["new"])
        (tmp / "report.md").write_text(markdown(res, meta), encoding="utf-8")
        write_json(tmp / "results.json", {**res.to_json(), "verdict": verdict(res).replace("*", ""), **meta})
        write_html(tmp)
    logger.info("wrote the drift report to %s", out)
    return out
