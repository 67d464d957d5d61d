"""Probability kernels shared by the stages' training and the offline evaluation: logloss, AUC, negative
downsampling and its recalibration (pure numpy; ``offline_eval.calibration`` re-exports them beside the
calibration reports)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


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


__all__ = ["auc", "downsample_negatives", "logloss", "recalibrate"]
