"""Probability quality for click-style tasks: log loss, AUC, normalized entropy, calibration, ECE,
reliability diagrams, and negative downsampling with its recalibration.

Shapes: ``n`` examples; ``y (n,)`` binary labels in {0, 1}; ``p (n,)`` predicted probabilities in [0, 1].
Natural logarithms throughout (NE is a ratio, so the base cancels).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy.stats import rankdata

logger = logging.getLogger(__name__)

Bins = dict[str, np.ndarray]  # lower, upper, count, mean_p, mean_y (one entry per non-empty bin)


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y and p must be 1-D arrays of the same length, got shapes {y.shape} and {p.shape}")
    if y.size == 0:
        raise ValueError("y and p are empty")
    if y.dtype == bool:
        y = y.astype(np.float64)
    else:
        y = y.astype(np.float64)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("y must hold binary labels 0/1")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("p must hold probabilities in [0, 1] (no NaN)")
    return y, p


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    r"""Mean binary cross-entropy, with ``p`` clipped to ``[eps, 1 - eps]``.

    .. math:: \mathrm{LL} = -\frac{1}{n} \sum_i y_i \ln p_i + (1 - y_i) \ln(1 - p_i)

    Bishop, "Pattern Recognition and Machine Learning", 2006, eq. 4.90.
    """
    y, p = _check(y, p)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    r"""Area under the ROC curve from ranks (Mann-Whitney U), tied scores getting their average rank.

    .. math:: \mathrm{AUC} = \frac{\sum_{i: y_i = 1} \mathrm{rank}(p_i) - n_+(n_+ + 1)/2}{n_+ n_-}

    i.e. the probability that a random positive scores above a random negative, ties counting 1/2 (equal to
    scikit-learn's ``roc_auc_score``). Raises ValueError when ``y`` holds one class only.

    Hanley & McNeil, "The meaning and use of the area under a ROC curve", Radiology 143(1), 1982.
    """
    y, p = _check(y, p)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined when y holds only one class")
    ranks = rankdata(p, method="average")
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _entropy(rate: float) -> float:
    return float(-(rate * np.log(rate) + (1 - rate) * np.log1p(-rate)))


def normalized_entropy(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    r"""Normalized entropy: log loss divided by the entropy of the empirical base rate.

    .. math:: \mathrm{NE} = \frac{\mathrm{LL}(y, p)}{-(\bar y \ln \bar y + (1 - \bar y) \ln(1 - \bar y))}

    1 for the constant base-rate predictor; lower is better. Undefined (ValueError) if all labels are equal.

    He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, section 2.
    """
    y, p = _check(y, p)
    rate = float(y.mean())
    if rate in (0.0, 1.0):
        raise ValueError("normalized entropy is undefined when y holds only one class")
    return logloss(y, p, eps) / _entropy(rate)


def calibration_ratio(y: np.ndarray, p: np.ndarray) -> float:
    r"""Ratio of expected to observed positives, :math:`\sum_i p_i / \sum_i y_i` (1 = calibrated on average).

    He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, section 2.
    """
    y, p = _check(y, p)
    if y.sum() == 0:
        raise ValueError("calibration ratio is undefined when y has no positive")
    return float(p.sum() / y.sum())


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10, strategy: str = "uniform"
) -> tuple[float, Bins]:
    r"""Expected calibration error over ``n_bins`` bins of ``p``, and the bin table.

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n} \left| \bar p_b - \bar y_b \right|

    ``strategy="uniform"``: equal-width bins on [0, 1] (bin ``b`` holds ``b/n_bins <= p < (b+1)/n_bins``,
    the last bin also holds 1). ``strategy="quantile"``: edges at the quantiles of ``p`` (about equal counts;
    repeated edges give empty bins).

    Returns ``(ece, table)`` where the table holds, for each non-empty bin, ``lower``, ``upper``, ``count``,
    ``mean_p`` and ``mean_y`` arrays (empty bins are left out; they add nothing to the ECE).

    Naeini, Cooper & Hauskrecht, "Obtaining well calibrated probabilities using Bayesian binning", AAAI 2015;
    Guo et al., "On calibration of modern neural networks", ICML 2017.
    """
    y, p = _check(y, p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = min(edges[0], 0.0), max(edges[-1], 1.0)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    nz = count > 0
    mean_p = sum_p[nz] / count[nz]
    mean_y = sum_y[nz] / count[nz]
    ece = float(np.sum(count[nz] / y.size * np.abs(mean_p - mean_y)))
    table = {
        "lower": edges[:-1][nz],
        "upper": edges[1:][nz],
        "count": count[nz],
        "mean_p": mean_p,
        "mean_y": mean_y,
    }
    return ece, table


def reliability_diagram(tables: Mapping[str, Bins], path: str | Path, title: str = "Reliability diagram") -> Path:
    """Plot ``mean_y`` against ``mean_p`` per bin for each named table and write a PNG (atomically).

    The diagonal is perfect calibration; marker area grows with the bin count.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    if not tables:
        raise ValueError("reliability_diagram needs at least one table")
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        for name, t in tables.items():
            missing = {"count", "mean_p", "mean_y"} - set(t)
            if missing:
                raise ValueError(f"table {name!r} lacks {sorted(missing)} (use expected_calibration_error's table)")
            count = np.asarray(t["count"], dtype=np.float64)
            size = 10 + 90 * count / max(count.max(), 1.0)
            ax.plot(t["mean_p"], t["mean_y"], linewidth=1)
            ax.scatter(t["mean_p"], t["mean_y"], s=size, label=name, alpha=0.8)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(loc="upper left")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".png", dir=path.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return path


def _check_w(w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not 0 < w <= 1:
        raise ValueError(f"negative sampling rate w must be in (0, 1], got {w!r}")
    return float(w)


def downsample_negatives(y: np.ndarray, w: float, seed: int = 0) -> np.ndarray:
    """Keep mask ``(n,) bool``: every positive, and each negative independently with probability ``w``.

    He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, section 6.3.
    """
    w = _check_w(w)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    rng = np.random.default_rng(seed)
    return (y == 1) | (rng.random(y.shape[0]) < w)


def recalibrate(p: np.ndarray, w: float) -> np.ndarray:
    r"""Undo negative downsampling at rate ``w``: :math:`q = p / (p + (1 - p) / w)`.

    A model fit on data whose negatives were kept with probability ``w`` over-predicts; ``q`` is its
    prediction on the full distribution (exact for the Bayes-optimal model: the odds scale by ``w``).

    He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014, section 6.3.
    """
    w = _check_w(w)
    p = np.asarray(p, dtype=np.float64)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("p must hold probabilities in [0, 1] (no NaN)")
    return p / (p + (1.0 - p) / w)


def calibration_report(y: np.ndarray, p: np.ndarray, w: float | None = None, n_bins: int = 10) -> dict:
    """All the probability-quality numbers for one task on the full (not downsampled) distribution.

    Args:
        y: ``(n,)`` labels of the full test distribution.
        p: ``(n,)`` the model's raw outputs.
        w: negative sampling rate the model was trained with; when given, ``p`` is recalibrated with
            :func:`recalibrate` first and ``logloss_raw`` is the log loss before recalibration. When ``None``,
            ``logloss_raw == logloss``.

    Returns:
        ``{"logloss", "logloss_raw", "ne", "auc", "calibration", "ece", "base_rate", "n"}``; ``ne``, ``auc``
        and ``calibration`` are ``None`` when undefined (a single class in ``y``).
    """
    y, p = _check(y, p)
    q = recalibrate(p, w) if w is not None else p
    single_class = y.min() == y.max()
    ll = logloss(y, q)
    return {
        "logloss": ll,
        "logloss_raw": logloss(y, p) if w is not None else ll,
        "ne": None if single_class else normalized_entropy(y, q),
        "auc": None if single_class else auc(y, q),
        "calibration": None if y.sum() == 0 else calibration_ratio(y, q),
        "ece": expected_calibration_error(y, q, n_bins=n_bins)[0],
        "base_rate": float(y.mean()),
        "n": int(y.size),
    }
