"""Random-bar feature selection for the pre-ranker.

Shapes: R training rows, F real features, Q random features, S seeds.

Random noise columns are added to the pre-ranker's training rows and the model is trained over S seeds; a
real feature whose importance does not beat the best random feature's is a candidate to drop: the model
uses it no more than it uses noise (the "random probe" / shadow-feature idea: Stoppiglia et al. 2003,
"Ranking a random feature for variable and feature selection", JMLR 3; Kursa & Rudnicki 2010, "Feature
selection with the Boruta package", J. Stat. Softw. 36(11)). Gain importance of trees is biased towards
continuous, high-cardinality columns (Strobl et al. 2007, BMC Bioinformatics 8:25), so the probes include a
gaussian, a uniform and a **shuffled copy** of a real continuous feature (same marginal distribution, NaN share
and cardinality, no relation to the label).

Per seed s: fresh noise from ``np.random.default_rng(s)``, a seeded user-level holdout for early stopping
(impression negatives dropped from it, as in :class:`~recsys.prerank.stage.PrerankStage`), LightGBM with seed
s. Importance = the feature's share of the model's total split gain (``feature_importance("gain")`` / sum), so
seeds are comparable. Reported per feature: mean and std of the share over seeds, the ratio to the bar, and
in how many seeds it beat that seed's best random feature. The **bar** is the largest mean share among the
random features; a real feature is kept when its mean share is above the bar.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from offline_eval.html_report import write_html
from recsys.features import FeatureKind
from recsys.io import atomic_output_dir, write_json
from recsys.prerank.stage import PrerankConfig, RankingData, split_groups, train_booster

logger = logging.getLogger(__name__)

RANDOM_PREFIX = "random_"


@dataclasses.dataclass
class FeatureSelectionResult:
    """names (F + Q,) real then random features; share (S, F + Q) gain share per seed; the rest derived."""

    names: list[str]
    kinds: list[str]
    is_random: np.ndarray
    share: np.ndarray
    seeds: list[int]
    best_iterations: list[int]

    @property
    def mean(self) -> np.ndarray:
        return self.share.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.share.std(axis=0)

    @property
    def bar(self) -> float:
        """The best random feature's mean gain share."""
        return float(self.mean[self.is_random].max()) if self.is_random.any() else 0.0

    @property
    def beats(self) -> np.ndarray:
        """(F + Q,) in how many seeds the feature's share exceeded that seed's best random share."""
        best = self.share[:, self.is_random].max(axis=1, keepdims=True)
        return (self.share > best).sum(axis=0)

    @property
    def keep(self) -> list[str]:
        return [n for n, r, m in zip(self.names, self.is_random, self.mean) if not r and m > self.bar]

    @property
    def drop(self) -> list[str]:
        """Real features that do not beat the random bar: candidates to drop."""
        return [n for n, r, m in zip(self.names, self.is_random, self.mean) if not r and m <= self.bar]

    def rows(self) -> list[dict]:
        """One record per feature, by mean share descending (ties: name)."""
        order = sorted(range(len(self.names)), key=lambda j: (-self.mean[j], self.names[j]))
        bar = self.bar
        out = []
        for j in order:
            out.append({
                "feature": self.names[j],
                "kind": self.kinds[j],
                "random": bool(self.is_random[j]),
                "mean_gain_share": float(self.mean[j]),
                "std_gain_share": float(self.std[j]),
                "ratio_to_bar": float(self.mean[j] / bar) if bar > 0 else None,
                "beats_random_in_seeds": int(self.beats[j]),
                "verdict": "random" if self.is_random[j] else ("keep" if self.mean[j] > bar else "drop?"),
            })
        return out

    def to_json(self) -> dict:
        return {"seeds": self.seeds, "best_iterations": self.best_iterations, "bar": self.bar,
                "keep": self.keep, "drop_candidates": self.drop, "features": self.rows()}


def random_columns(data: RankingData, rng: np.random.Generator, shuffle: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(R, Q) random probes: gaussian, uniform, and a row-shuffled copy of each feature in ``shuffle``."""
    r = len(data.y)
    cols = [rng.standard_normal(r), rng.random(r)]
    names = [f"{RANDOM_PREFIX}gaussian", f"{RANDOM_PREFIX}uniform"]
    for name in shuffle:
        cols.append(data.X[rng.permutation(r), data.names.index(name)].astype(np.float64))
        names.append(f"{RANDOM_PREFIX}shuffled_{name}")
    return np.stack(cols, axis=1).astype(np.float32), names


def default_shuffle(data: RankingData) -> list[str]:
    """The real numeric feature with the most distinct values (the one gain importance favours most)."""
    best, best_n = None, -1
    for j, (name, kind) in enumerate(zip(data.names, data.kinds)):
        if kind is not FeatureKind.NUMERIC:
            continue
        col = data.X[:, j]
        n_distinct = len(np.unique(col[~np.isnan(col)]))
        if n_distinct > best_n:
            best, best_n = name, n_distinct
    return [] if best is None else [best]


def random_bar(
    data: RankingData,
    cfg: PrerankConfig,
    seeds: Sequence[int] = (0, 1, 2),
    shuffle: Sequence[str] | None = None,
) -> FeatureSelectionResult:
    """Train the pre-ranker with random probes over ``seeds`` and measure every feature's gain share.

    ``data``: the pre-ranker's training rows (:func:`recsys.prerank.stage.build_ranking_data`), all groups;
    ``shuffle``: real features to add shuffled copies of (default: :func:`default_shuffle`).
    """
    if not len(seeds):
        raise ValueError("random_bar: need at least one seed")
    clash = [n for n in data.names if n.startswith(RANDOM_PREFIX)]
    if clash:
        raise ValueError(f"random_bar: feature names {clash} use the reserved prefix {RANDOM_PREFIX!r}")
    shuffle = default_shuffle(data) if shuffle is None else list(shuffle)
    unknown = [n for n in shuffle if n not in data.names]
    if unknown:
        raise ValueError(f"random_bar: shuffle names unknown feature(s) {unknown}; features: {data.names}")
    shares, best_its, names, kinds = [], [], None, None
    for seed in seeds:
        rng = np.random.default_rng(seed)
        noise, noise_names = random_columns(data, rng, shuffle)
        d = data.with_columns(noise, noise_names, [FeatureKind.NUMERIC] * len(noise_names))
        tr, va = split_groups(len(d.group), cfg.valid_fraction, seed)
        booster, info = train_booster(d.take_groups(tr), d.take_groups(va, drop_extra=True), cfg, seed=seed)
        gain = booster.feature_importance(importance_type="gain").astype(np.float64)
        shares.append(gain / gain.sum() if gain.sum() > 0 else gain)
        best_its.append(info["best_iteration"])
        names, kinds = d.names, [k.value for k in d.kinds]
        logger.info("random bar: seed %d, best iteration %d", seed, info["best_iteration"])
    is_random = np.array([n.startswith(RANDOM_PREFIX) for n in names])
    res = FeatureSelectionResult(names, kinds, is_random, np.stack(shares), [int(s) for s in seeds], best_its)
    logger.info("random bar %.4f; keep %s; drop candidates %s", res.bar, res.keep, res.drop)
    return res


# ------------------------------------------------------------------------------------------------------------
# Time consistency of the rows
# ------------------------------------------------------------------------------------------------------------


def bundle_retrieval_windows(manifest: dict, names: Sequence[str], windows: dict[str, str]) -> list[str]:
    """The split windows a bundle's retrieval stage (two-tower) was trained on, from its manifest: the
    ``retrieval`` window, or with ``retrieval.refit`` (config, or the ``refit`` entry of its metrics) every
    window before the test window (:func:`recsys.training.refresh_snapshot`)."""
    from recsys.retrieval.config import RetrievalConfig

    retrieval_cfg = (manifest.get("config") or {}).get("retrieval") or {}
    refit_done = "refit" in ((manifest.get("metrics") or {}).get("retrieval") or {})
    refit = bool(retrieval_cfg.get("refit", RetrievalConfig().refit)) or refit_done
    if refit:
        return list(names[: list(names).index(windows["test"])])
    return [windows["retrieval"]]


def check_rows_after(names: Sequence[str], trained_on: Sequence[str], rows_window: str, source: str) -> None:
    """Refuse training rows built on ``rows_window`` with a model trained on ``trained_on`` unless every one
    of those windows is strictly earlier: otherwise the model's scores (``ann_score``, ``ann_rank``, the
    candidates themselves) on a row were computed by a model that saw the row's label, and a feature looks
    more useful than it is at serving, where the model never saw the row."""
    order = list(names)
    late = [w for w in trained_on if order.index(w) >= order.index(rows_window)]
    if late:
        raise ValueError(
            f"{source}: its two-tower was trained on windows {list(trained_on)}, which include the rows' window "
            f"{rows_window!r} (its scores would have seen the labels); use a bundle trained with "
            "--set retrieval.refit=false, or no --bundle (a two-tower is then trained on the first window)"
        )


def candidate_stage(ds, cfg, split, windows: dict[str, str], rows_window: str, bundle=None, source: str = ""):
    """The candidate (retrieval) stage and catalogue that serve rows built on ``rows_window`` (and later windows)
    without having seen their labels: the bundle's (its engine loaded; refused by :func:`check_rows_after` when
    its two-tower was trained on ``rows_window`` or later), or, with no bundle, one trained here on the
    retrieval window (``retrieval`` section of ``cfg``; early stopping on the next window).

    Returns (retrieval stage, catalogue, windows it was trained on, the bundle's engine or None)."""
    from recsys.data.catalog import Catalog
    from recsys.windows import RETRIEVAL

    if bundle is not None:
        from recsys.training import load_system

        trained_on = bundle_retrieval_windows(bundle.manifest, split.names, windows)
        check_rows_after(split.names, trained_on, rows_window, source)
        engine = load_system(bundle, "engine")
        if engine.catalog is None:
            raise ValueError(f"{source}: the bundle's engine has no catalogue")
        return engine.retrieval, engine.catalog, trained_on, engine
    from recsys.retrieval.stage import RetrievalConfig, RetrievalStage
    from recsys.stages.base import FitContext

    if getattr(getattr(cfg, "retrieval", None), "refit", False):
        logger.warning("retrieval.refit is not applied here: the rows of every window are served by the two-tower "
                       "trained on the retrieval window %r only", windows[RETRIEVAL])
    catalog = Catalog.from_dataset(ds, train=split[windows[RETRIEVAL]])
    rcfg = getattr(cfg, "retrieval", None)
    if rcfg is None:
        logger.warning("the config has no 'retrieval' section; using its defaults")
        rcfg = RetrievalConfig()
    retrieval = RetrievalStage(rcfg).fit(FitContext(
        ds, catalog, split, windows[RETRIEVAL], split.before(windows[RETRIEVAL]),
        valid=split[windows["retrieval_valid"]]))
    return retrieval, catalog, [windows[RETRIEVAL]], None


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


#: run facts of ``results.json`` listed at the top of the report, with their labels
SETUP = (("data", "dataset"), ("bundle", "bundle"), ("rows_window", "rows: window"), ("rows", "rows"),
         ("groups", "query groups"), ("retrieval_trained_on", "two-tower trained on windows"))


def markdown(res: FeatureSelectionResult, title: str = "Random-bar feature selection (pre-ranker)",
             extra: dict | None = None) -> str:
    """``report.md``: the run's setup (the :data:`SETUP` keys of ``extra`` present), the features table by
    mean gain share, the drop candidates and the importance figure (``importance.png``)."""
    bar = res.bar
    setup = [f"- {label}: `{extra[key]}`" for key, label in SETUP if (extra or {}).get(key) is not None]
    lines = [
        f"# {title}", "", *setup, *([""] if setup else []),
        f"Seeds: {', '.join(map(str, res.seeds))} (best iterations {', '.join(map(str, res.best_iterations))}). "
        f"Importance: share of the model's total split gain, mean over seeds. Random bar (best random feature's "
        f"mean share): **{bar:.4f}**.", "",
        "| # | feature | kind | mean gain share | std | x bar | beats best random (seeds) | verdict |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(res.rows(), 1):
        ratio = "-" if r["ratio_to_bar"] is None else f"{r['ratio_to_bar']:.2f}"
        name = f"*{r['feature']}*" if r["random"] else f"`{r['feature']}`"
        lines.append(f"| {i} | {name} | {r['kind']} | {r['mean_gain_share']:.4f} | {r['std_gain_share']:.4f} | "
                     f"{ratio} | {r['beats_random_in_seeds']}/{len(res.seeds)} | {r['verdict']} |")
    lines += ["", f"Candidates to drop (not above the bar): {', '.join(f'`{n}`' for n in res.drop) or 'none'}.", "",
              "![gain share of each feature against the random bar](importance.png)", ""]
    return "\n".join(lines)


def plot(res: FeatureSelectionResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res.rows()[::-1]  # largest at the top
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, [r["mean_gain_share"] for r in rows], xerr=[r["std_gain_share"] for r in rows],
            color=["tab:red" if r["random"] else ("tab:blue" if r["verdict"] == "keep" else "tab:gray") for r in rows])
    ax.axvline(res.bar, color="tab:red", linestyle="--", linewidth=1, label=f"random bar {res.bar:.4f}")
    ax.set_yticks(y, [r["feature"] for r in rows], fontsize=8)
    ax.set_xlabel(f"gain share (mean +- std over {len(res.seeds)} seeds)")
    ax.set_title("Pre-ranker feature importance vs random probes")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(res: FeatureSelectionResult, out: str | Path, overwrite: bool = False,
                 extra: dict | None = None) -> Path:
    """Write ``report.md``, ``importance.png``, ``results.json`` and ``report.html`` (report.md with the figure
    inlined) into ``out`` (atomically); ``extra``: more ``results.json`` entries (its :data:`SETUP` keys are
    also listed in the report)."""
    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "report.md").write_text(markdown(res, extra=extra), encoding="utf-8")
        plot(res, tmp / "importance.png")
        write_json(tmp / "results.json", {**res.to_json(), **(extra or {})})
        write_html(tmp)
    logger.info("wrote feature selection report to %s", out)
    return out


__all__ = ["SETUP", "FeatureSelectionResult", "bundle_retrieval_windows", "candidate_stage", "check_rows_after", "default_shuffle", "markdown",
           "plot", "random_bar", "random_columns", "write_report"]
