"""Adversarial validation: can a classifier tell two time windows' feature rows apart?

Shapes: N rows (old window's rows then new window's, any order), F features, G groups (users), U permutation
units (requests: one user in one window), K folds, B bootstrap replicates, P permutations.

Label each row with its window (old 0, new 1) and train a binary classifier (LightGBM, Ke et al. 2017) to
predict it from the features. If the windows' feature distributions are the same, no classifier beats chance:
the out-of-fold ROC AUC is 0.5; an AUC near 1 means the windows are easy to tell apart, and the features the
classifier uses are the ones that drifted ("adversarial validation": Pan et al. 2020, "Adversarial Validation
Approach to Concept Drift Problem in User Targeting Automation Systems at Uber", arXiv:2004.03045; the
classifier two-sample test of Lopez-Paz & Oquab 2017, "Revisiting Classifier Two-Sample Tests", ICLR).

* **Grouped folds.** Rows of one group (a user: every candidate row of the user's requests, in both windows)
  share user-level features, so a row-level split lets the trees memorise a user's values and their window
  (rows of the user's request in the training folds, the rest in the held-out fold) and the AUC rises without
  any drift. Each group lies in exactly one of the K folds (:func:`group_folds`), and every row's score comes
  from the model that did not see its group (out-of-fold).
* **Balance.** Rows are weighted so each window carries half of the training weight
  (``w_i = n / (2 n_{y_i})`` within each fold's training rows): no row is discarded and the classifier has
  no prior to exploit. AUC itself does not depend on the class sizes.
* **AUC**: the Mann-Whitney statistic of the pooled out-of-fold scores, ``P(s_new > s_old) + P(tie) / 2``
  (Hanley & McNeil 1982, Radiology 143:29), with a percentile 95% CI from B bootstrap resamples of the groups
  (rows weighted by their group's multiplicity; Efron & Tibshirani 1993, ch. 13); the CI covers the sampling of
  users given the fitted fold models, not the refit variance.
* **Permutation null.** The window labels are shuffled between permutation units (requests, so each unit's
  rows keep one label, as in the real data), the same folds are refitted, and the out-of-fold AUC is recorded
  P times: the AUC the procedure reports when there is no drift at this size (it need not be exactly 0.5).
  ``p = (1 + #{null >= observed}) / (P + 1)`` (Phipson & Smyth 2010, SAGMB 9(1):39).
* **Per feature**: the gain importance share (LightGBM ``feature_importance("gain")`` over its sum, mean and
  std over the K fold models); univariate AUC of the feature's value against the window on its non-missing rows
  (``|AUC - 0.5|``: how well the feature alone separates; direction: > 0.5 means larger in the new window);
  the two-sample Kolmogorov-Smirnov statistic ``D = sup_x |F_old(x) - F_new(x)|`` on non-missing rows; the
  mean and the missing (NaN) share in each window.

No engine import: the caller builds the table (:mod:`recsys.experiments.drift`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["DriftConfig", "DriftResult", "adversarial_validation", "auc", "balance_weights", "group_folds",
           "ks_statistic", "oof_scores"]


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """The adversarial classifier and its statistics.

    folds            K grouped cross-validation folds (>= 2)
    seed             folds, bootstrap, permutations and LightGBM seed
    permutations     P refits with shuffled window labels (the null; 0: none)
    bootstrap        B group resamples for the AUC's CI
    num_leaves, learning_rate, n_estimators, min_data_in_leaf   LightGBM (fixed rounds: no early stopping,
                     the scores are out-of-fold anyway; an overfit classifier can only lower the AUC)
    num_threads      LightGBM threads
    """

    folds: int = 5
    seed: int = 0
    permutations: int = 5
    bootstrap: int = 1000
    num_leaves: int = 15
    learning_rate: float = 0.1
    n_estimators: int = 100
    min_data_in_leaf: int = 50
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name, ok, what in (
            ("folds", self.folds >= 2, ">= 2"),
            ("permutations", self.permutations >= 0, ">= 0"),
            ("bootstrap", self.bootstrap >= 0, ">= 0"),
            ("num_leaves", self.num_leaves >= 2, ">= 2"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("n_estimators", self.n_estimators >= 1, ">= 1"),
            ("min_data_in_leaf", self.min_data_in_leaf >= 1, ">= 1"),
            ("num_threads", self.num_threads >= 1, ">= 1"),
        ):
            if not ok:
                raise ValueError(f"drift.{name}: must be {what}, got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------------------


class _AUC:
    """The Mann-Whitney AUC of fixed scores under varying row weights: sort once, then each call is O(N).

    ``AUC(w) = sum_b Wnew_b (Wold_<b + Wold_b / 2) / (Wnew Wold)`` over tie blocks b of the sorted scores.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        order = np.argsort(score, kind="stable")
        s = score[order]
        self.order = order
        self.block = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1 if len(s) else np.zeros(0, np.int64)
        self.new = y[order] == 1
        self.n_blocks = int(self.block[-1]) + 1 if len(s) else 0

    def __call__(self, weight: np.ndarray | None = None) -> float:
        w = np.ones(len(self.order)) if weight is None else np.asarray(weight, np.float64)[self.order]
        wn = np.bincount(self.block, w * self.new, minlength=self.n_blocks)
        wo = np.bincount(self.block, w * ~self.new, minlength=self.n_blocks)
        tot_n, tot_o = wn.sum(), wo.sum()
        if tot_n <= 0 or tot_o <= 0:
            return float("nan")
        below = np.cumsum(wo) - wo
        return float((wn * (below + 0.5 * wo)).sum() / (tot_n * tot_o))


def auc(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """ROC AUC of ``score`` (N,) for the labels ``y`` (N,) in {0, 1} (1 = new), ties counted half, optional
    row weights (N,): ``P(s_1 > s_0) + P(s_1 = s_0) / 2`` (Hanley & McNeil 1982). NaN without both labels."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    if y.shape != score.shape:
        raise ValueError(f"auc: y {y.shape} and score {score.shape} differ in shape")
    return _AUC(y, score)(weight)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup_x |F_a(x) - F_b(x)|`` of the samples a, b (NaN dropped;
    NaN when either is empty). Equals ``scipy.stats.ks_2samp(a, b).statistic``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if not len(a) or not len(b):
        return float("nan")
    x = np.r_[a, b]
    fa = np.searchsorted(a, x, side="right") / len(a)
    fb = np.searchsorted(b, x, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def balance_weights(y: np.ndarray) -> np.ndarray:
    """(N,) ``n / (2 n_{y_i})``: each label carries half the total weight (sum = N)."""
    y = np.asarray(y)
    counts = np.bincount(y, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"balance_weights: need rows of both windows, got counts {counts.tolist()}")
    return (len(y) / (2.0 * counts))[y]


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold id in [0, k) of each row: the distinct groups are shuffled (``default_rng(seed)``) and dealt
    round-robin, so every group's rows lie in one fold and the folds hold G/k groups each (+-1)."""
    codes, uniq = pd.factorize(np.asarray(groups), sort=True)
    if len(uniq) < k:
        raise ValueError(f"group_folds: {len(uniq)} groups (users) cannot fill {k} folds; lower --folds")
    fold_of = np.empty(len(uniq), dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(len(uniq))] = np.arange(len(uniq)) % k
    return fold_of[codes]


def _params(cfg: DriftConfig) -> dict:
    return {"objective": "binary", "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate,
            "min_data_in_leaf": cfg.min_data_in_leaf, "num_threads": cfg.num_threads, "seed": cfg.seed,
            "deterministic": True, "force_col_wise": True, "verbose": -1}


def oof_scores(X: np.ndarray, y: np.ndarray, folds: np.ndarray, cfg: DriftConfig,
               categorical: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold classifier scores: for each fold f a LightGBM binary model trained on the other folds'
    rows (:func:`balance_weights` within them) scores fold f's rows. Returns ((N,) scores, (K, F) gain
    importance of each fold model)."""
    import lightgbm as lgb

    X = np.asarray(X, dtype=np.float32)
    score = np.full(len(y), np.nan)
    gains = []
    for f in np.unique(folds):
        test = folds == f
        tr = ~test
        if len(np.unique(y[tr])) < 2:
            raise ValueError(f"oof_scores: the training folds of fold {int(f)} hold one window only; lower --folds "
                             "or use larger windows")
        ds = lgb.Dataset(X[tr], label=y[tr], weight=balance_weights(y[tr]), categorical_feature=list(categorical),
                         params={"verbose": -1}, free_raw_data=True)
        booster = lgb.train(_params(cfg), ds, num_boost_round=cfg.n_estimators)
        score[test] = booster.predict(X[test])
        gains.append(booster.feature_importance(importance_type="gain").astype(np.float64))
    return score, np.stack(gains)


# ------------------------------------------------------------------------------------------------------------
# Adversarial validation
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DriftResult:
    """Per-feature arrays are (F,) in ``names`` order."""

    names: list[str]
    auc: float
    auc_ci: tuple[float, float]
    fold_auc: list[float]
    null_auc: list[float]
    p_value: float | None
    importance: np.ndarray
    importance_std: np.ndarray
    uni_auc: np.ndarray
    ks: np.ndarray
    mean_old: np.ndarray
    mean_new: np.ndarray
    nan_old: np.ndarray
    nan_new: np.ndarray
    rows: tuple[int, int]
    groups: int
    units: tuple[int, int]
    config: DriftConfig

    @property
    def separation(self) -> np.ndarray:
        """(F,) ``|univariate AUC - 0.5|`` (NaN for an all-missing feature)."""
        return np.abs(self.uni_auc - 0.5)

    def order(self) -> list[int]:
        """Feature indices by importance share descending (ties: univariate separation, then name)."""
        sep = np.nan_to_num(self.separation, nan=-1.0)
        return sorted(range(len(self.names)), key=lambda j: (-self.importance[j], -sep[j], self.names[j]))

    def features(self) -> list[dict]:
        out = []
        for j in self.order():
            out.append({"feature": self.names[j], "importance": float(self.importance[j]),
                        "importance_std": float(self.importance_std[j]), "univariate_auc": _f(self.uni_auc[j]),
                        "ks": _f(self.ks[j]), "mean_old": _f(self.mean_old[j]), "mean_new": _f(self.mean_new[j]),
                        "nan_share_old": float(self.nan_old[j]), "nan_share_new": float(self.nan_new[j])})
        return out

    @property
    def null_mean(self) -> float | None:
        return float(np.mean(self.null_auc)) if self.null_auc else None

    def to_json(self) -> dict:
        return {"auc": self.auc, "auc_ci95": list(self.auc_ci), "fold_auc": self.fold_auc,
                "null_auc": self.null_auc, "null_auc_mean": self.null_mean, "p_value": self.p_value,
                "rows": {"old": self.rows[0], "new": self.rows[1]}, "groups": self.groups,
                "requests": {"old": self.units[0], "new": self.units[1]}, "balance": "weights",
                "config": dataclasses.asdict(self.config), "features": self.features()}


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _codes(groups: np.ndarray, name: str, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"adversarial_validation: {name} must have shape ({n},), got {groups.shape}")
    return pd.factorize(groups, sort=True)[0]


def adversarial_validation(
    X: np.ndarray,
    window: np.ndarray,
    groups: np.ndarray,
    names: Sequence[str],
    cfg: DriftConfig = DriftConfig(),
    units: np.ndarray | None = None,
    categorical: Sequence[int] = (),
) -> DriftResult:
    """Adversarial validation of ``X`` (N, F) (NaN = missing) between ``window == 0`` (old) and ``== 1`` (new)
    rows: grouped K-fold out-of-fold AUC with a bootstrap CI over ``groups`` (N,) (users), a permutation
    null over ``units`` (N,) (requests, each within one window; default: (group, window) pairs), the
    per-feature statistics of the module docstring. ``categorical``: column indices LightGBM treats as
    categorical."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(window)
    n = len(y)
    if X.ndim != 2 or X.shape[0] != n or X.shape[1] != len(names):
        raise ValueError(f"adversarial_validation: X must be (N={n}, F={len(names)}), got {X.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("adversarial_validation: window must be 0 (old) or 1 (new) on every row")
    y = y.astype(np.int64)
    gcode = _codes(groups, "groups", n)
    ucode = _codes(np.c_[gcode, y] @ np.array([2, 1]) if units is None else units, "units", n)
    unit_y = np.full(ucode.max() + 1, -1)
    unit_y[ucode] = y
    if (unit_y[ucode] != y).any():
        raise ValueError("adversarial_validation: a permutation unit (request) has rows of both windows")
    n_old, n_new = int((y == 0).sum()), int((y == 1).sum())
    if not n_old or not n_new:
        raise ValueError(f"adversarial_validation: need rows of both windows, got old {n_old}, new {n_new}")
    rng = np.random.default_rng(cfg.seed)
    folds = group_folds(gcode, cfg.folds, cfg.seed)

    score, gains = oof_scores(X, y, folds, cfg, categorical)
    kernel = _AUC(y, score)
    observed = kernel()
    fold_auc = [auc(y[folds == f], score[folds == f]) for f in range(cfg.folds)]
    G = int(gcode.max()) + 1
    boot = [kernel(np.bincount(rng.integers(0, G, G), minlength=G)[gcode]) for _ in range(cfg.bootstrap)]
    boot = np.asarray([b for b in boot if np.isfinite(b)])
    ci = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) else (np.nan, np.nan)
    logger.info("adversarial validation: %d old / %d new rows, %d groups; out-of-fold AUC %.4f (95%% CI %.4f-%.4f)",
                n_old, n_new, G, observed, *ci)

    null = []
    for p in range(cfg.permutations):
        y_p = rng.permutation(unit_y)[ucode]
        s_p, _ = oof_scores(X, y_p, folds, cfg, categorical)
        null.append(auc(y_p, s_p))
        logger.info("adversarial validation: permutation %d/%d, AUC %.4f", p + 1, cfg.permutations, null[-1])
    p_value = float((1 + sum(a >= observed for a in null)) / (len(null) + 1)) if null else None

    share = gains / np.where(gains.sum(axis=1, keepdims=True) > 0, gains.sum(axis=1, keepdims=True), 1.0)
    F = X.shape[1]
    uni, ks = np.full(F, np.nan), np.full(F, np.nan)
    old, new = X[y == 0], X[y == 1]
    with np.errstate(invalid="ignore"):
        mean_old, mean_new = _nanmean(old), _nanmean(new)
    for j in range(F):
        ok = ~np.isnan(X[:, j])
        uni[j] = auc(y[ok], X[ok, j].astype(np.float64))
        ks[j] = ks_statistic(old[:, j], new[:, j])
    n_units = (int((unit_y == 0).sum()), int((unit_y == 1).sum()))
    return DriftResult(list(names), float(observed), ci, [float(a) for a in fold_auc], [float(a) for a in null],
                       p_value, share.mean(axis=0), share.std(axis=0), uni, ks, mean_old, mean_new,
                       np.isnan(old).mean(axis=0), np.isnan(new).mean(axis=0), (n_old, n_new), G, n_units, cfg)


def _nanmean(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    cnt = ok.sum(axis=0)
    tot = np.where(ok, x, 0).astype(np.float64).sum(axis=0)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
