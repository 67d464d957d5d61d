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
from scipy.stats import rankdata  # noqa: F401

from recsys.probability import _check, _check_w, auc, downsample_negatives, logloss, recalibrate  # noqa: F401
from recsys.io import file_mode

logger = logging.getLogger(__name__)

Bins = dict[str, np.ndarray]  # lower, upper, count, mean_p, mean_y (one entry per non-empty bin)


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
            os.chmod(tmp, file_mode())  # mkstemp makes 0600; the figure is as readable as its report
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return path


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
