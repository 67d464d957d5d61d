"""Paired significance tests for per-query metric values of two systems on the same ``B`` queries."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D per-query values of equal length, got shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"need at least 2 paired queries, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite (no NaN)")
    return a - b


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    chunk_size: int = 1 << 22,
) -> dict[str, float]:
    r"""Paired bootstrap of the mean difference ``mean(a - b)`` over queries.

    Each bootstrap sample draws ``B`` query indices with replacement and takes the mean of ``d = a - b`` on
    them (vectorized, ``chunk_size`` index draws at a time so memory stays bounded).

    - ``ci_low, ci_high``: percentile interval, the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
      bootstrap means.
    - ``p_value``: two-sided test of ``H0: E[d] = 0`` by shifting the bootstrap distribution to the null,
      :math:`p = \frac{1 + \#\{s : |\bar d^*_s - \bar d| \ge |\bar d|\}}{1 + S}` (the ``+1`` keeps ``p > 0``
      with finitely many samples).

    Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 and 16; Sakai, "Evaluating
    evaluation metrics based on the bootstrap", SIGIR 2006; Davison & Hinkley, "Bootstrap Methods and their
    Application", 1997, eq. 4.11.

    Args:
        a, b: ``(B,)`` per-query values of the two systems, aligned by query.
        n_samples: bootstrap samples ``S``.
        seed: seeds ``np.random.default_rng``.
        alpha: 1 - confidence level of the interval.

    Returns:
        ``{"mean_diff", "ci_low", "ci_high", "p_value", "n_samples", "n_queries"}``.
    """
    d = _paired(a, b)
    _check_alpha(alpha)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n = d.size
    rng = np.random.default_rng(seed)
    per_chunk = max(1, chunk_size // n)
    means = np.empty(n_samples, dtype=np.float64)
    for start in range(0, n_samples, per_chunk):
        stop = min(start + per_chunk, n_samples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    mean_diff = float(d.mean())
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # tolerance: a bootstrap mean equal to the observed one up to rounding must count as "as extreme"
    extreme = np.abs(means - mean_diff) >= abs(mean_diff) - 1e-12 * max(1.0, abs(mean_diff))
    p = (1 + int(np.count_nonzero(extreme))) / (1 + n_samples)
    return {
        "mean_diff": mean_diff,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(min(1.0, p)),
        "n_samples": int(n_samples),
        "n_queries": int(n),
    }


def paired_t_test(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    r"""Two-sided paired t-test on ``d = a - b``.

    .. math:: t = \frac{\bar d}{s_d / \sqrt{B}}, \quad \nu = B - 1

    with the ``1 - alpha`` confidence interval :math:`\bar d \pm t_{1-\alpha/2,\nu}\, s_d / \sqrt{B}`.
    All-equal differences give ``p = 1`` when they are 0 and ``p = 0`` otherwise.

    Student, "The probable error of a mean", Biometrika 6(1), 1908; Smucker, Allan & Carterette, "A
    comparison of statistical significance tests for information retrieval evaluation", CIKM 2007.

    Returns:
        ``{"mean_diff", "t", "df", "p_value", "ci_low", "ci_high", "n_queries"}``.
    """
    d = _paired(a, b)
    _check_alpha(alpha)
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    df = n - 1
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
        half = 0.0
    else:
        se = sd / math.sqrt(n)
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(1 - alpha / 2, df) * se)
    return {
        "mean_diff": mean,
        "t": float(t),
        "df": int(df),
        "p_value": p,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n_queries": int(n),
    }
