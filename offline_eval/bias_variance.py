"""Bias-variance decomposition of pointwise probability predictions under squared loss (pure numpy).

Shapes: M refits (bootstrap resamples of the training rows), n test rows.

Given the predictions ``f (M, n)`` of M models fitted on M bootstrap resamples of the training data, the 0/1
labels ``y (n,)`` of the test rows and, where known, their true probabilities ``p (n,) = P(y = 1 | x)``:

* per test row: ``fbar_i = mean_m f_mi`` (the *main* prediction) and ``var_i = mean_m (f_mi - fbar_i)^2``;
* the **measured MSE** of a refit, averaged over the refits: ``mse = mean_{m,i} (y_i - f_mi)^2``.
  Because ``mean_m (f_mi - fbar_i) = 0`` exactly, ``mse = mean_i (y_i - fbar_i)^2 + mean_i var_i`` exactly
  (no truth needed): ``mse_of_mean + variance``. On real data (no truth) ``mse_of_mean`` is **bias^2 + noise
  together**: they cannot be told apart without ``p``;
* with the truth: ``(y - fbar)^2 = (y - p)^2 + (p - fbar)^2 + 2 (y - p)(p - fbar)``, hence the exact identity

      mse = bias2 + variance + noise_realised + cross

  with ``bias2 = mean_i (p_i - fbar_i)^2``, ``noise_realised = mean_i (y_i - p_i)^2`` and
  ``cross = mean_i 2 (y_i - p_i)(p_i - fbar_i)``. The cross term has expectation 0 (the test labels are drawn
  from ``p`` independently of the training data, so ``E[y - p | x] = 0``), and ``noise_realised`` has expectation
  ``noise_expected = mean_i p_i (1 - p_i)`` (the Bernoulli variance), so in expectation
  ``mse = bias2 + variance + noise_expected`` (Geman, Bienenstock & Doursat 1992, "Neural networks and the
  bias/variance dilemma", Neural Computation 4(1), eq. 4.3; Hastie, Tibshirani & Friedman, ESL 2nd ed., eq. 7.9).
  ``gap_expected = mse - (bias2 + variance + noise_expected) = (noise_realised - noise_expected) + cross`` is
  reported: it is the sampling error of the test labels, and goes to 0 with n.

**Finite M.** ``variance`` (divisor M) estimates the refit variance with a factor ``(M - 1) / M``, and
``(p - fbar)^2`` overstates the squared bias of the mean model by ``var / M`` on average. The debiased pair
``variance_unbiased = variance M / (M - 1)`` and ``bias2_debiased = bias2 - variance / (M - 1)`` sums to the same
``bias2 + variance``, so the identities hold with either pair (both are reported; M = 1 has no variance).

Squared loss on a probability is the Brier score (Brier 1950); for 0/1 loss see Domingos 2000, "A unified
bias-variance decomposition" (ICML), which this module does not implement.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QUANTILES", "decompose", "per_instance", "terms_by_bins"]

#: quantiles of the per-instance variance reported by :func:`decompose`
QUANTILES = (0.5, 0.9, 0.99)


def _check(predictions, y, p_true=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    f = np.asarray(predictions, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"predictions: expected shape (M refits, n rows), got {f.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != f.shape[1]:
        raise ValueError(f"y: expected shape ({f.shape[1]},) to match predictions {f.shape}, got {y.shape}")
    if f.shape[0] < 1 or f.shape[1] < 1:
        raise ValueError(f"predictions: need at least one refit and one row, got shape {f.shape}")
    y = y.astype(np.float64)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: must hold 0/1 labels")
    if not np.all(np.isfinite(f)):
        raise ValueError("predictions: must be finite (NaN or inf found)")
    p = None
    if p_true is not None:
        p = np.asarray(p_true, dtype=np.float64)
        if p.shape != y.shape:
            raise ValueError(f"p_true: expected shape {y.shape}, got {p.shape}")
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError("p_true: must hold probabilities in [0, 1] (no NaN)")
    return f, y, p


def per_instance(predictions) -> tuple[np.ndarray, np.ndarray]:
    """(fbar (n,), var (n,)): the mean over refits and the variance over refits (divisor M) of ``(M, n)``."""
    f = np.asarray(predictions, dtype=np.float64)
    fbar = f.mean(axis=0)
    return fbar, ((f - fbar) ** 2).mean(axis=0)


def decompose(predictions, y, p_true=None) -> dict:
    """The decomposition of the module docstring as a dict of floats.

    ``predictions (M, n)`` probabilities of M refits on the n test rows, ``y (n,)`` 0/1 labels, ``p_true (n,)``
    true ``P(y = 1 | x)`` or None. Always: ``mse``, ``mse_of_mean`` (bias^2 + noise when there is no truth),
    ``variance``, ``variance_unbiased``, quantiles of the per-instance variance (``variance_q50`` ...), ``M``,
    ``n``, ``label_rate``, ``mean_prediction``. With ``p_true``: ``bias2``, ``bias2_debiased``,
    ``noise_realised``, ``noise_expected``, ``cross``, ``sum_exact`` (= bias2 + variance + noise_realised + cross,
    equal to ``mse`` up to rounding), ``sum_expected`` (= bias2 + variance + noise_expected), ``gap_expected``.
    """
    f, y, p = _check(predictions, y, p_true)
    m, n = f.shape
    fbar, var = per_instance(f)
    out: dict = {"M": int(m), "n": int(n), "label_rate": float(y.mean()), "mean_prediction": float(fbar.mean()),
                 "mse": float(((y[None, :] - f) ** 2).mean()), "mse_of_mean": float(((y - fbar) ** 2).mean()),
                 "variance": float(var.mean())}
    out["variance_unbiased"] = out["variance"] * m / (m - 1) if m > 1 else float("nan")
    for q, v in zip(QUANTILES, np.quantile(var, QUANTILES)):
        out[f"variance_q{int(round(q * 100))}"] = float(v)
    if p is not None:
        out["mean_truth"] = float(p.mean())
        out["bias2"] = float(((p - fbar) ** 2).mean())
        out["bias2_debiased"] = out["bias2"] - out["variance"] / (m - 1) if m > 1 else float("nan")
        out["noise_realised"] = float(((y - p) ** 2).mean())
        out["noise_expected"] = float((p * (1.0 - p)).mean())
        out["cross"] = float((2.0 * (y - p) * (p - fbar)).mean())
        out["sum_exact"] = out["bias2"] + out["variance"] + out["noise_realised"] + out["cross"]
        out["sum_expected"] = out["bias2"] + out["variance"] + out["noise_expected"]
        out["gap_expected"] = out["mse"] - out["sum_expected"]
    return out


def terms_by_bins(predictions, y, p_true, key, n_bins: int = 10) -> list[dict]:
    """:func:`decompose` within quantile bins of ``key (n,)`` (e.g. the item's training popularity): one dict
    per non-empty bin with ``bin``, ``key_min``, ``key_max`` and the terms. Bin edges are the ``n_bins``-quantiles
    of ``key``; tied keys share a bin, so fewer bins can come back."""
    f, y, p = _check(predictions, y, p_true)
    key = np.asarray(key, dtype=np.float64)
    if key.shape != y.shape:
        raise ValueError(f"key: expected shape {y.shape}, got {key.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins: must be >= 1, got {n_bins}")
    edges = np.unique(np.quantile(key, np.linspace(0.0, 1.0, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, key, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for j in np.unique(b):
        sel = b == j
        t = decompose(f[:, sel], y[sel], None if p is None else p[sel])
        out.append({"bin": int(j), "key_min": float(key[sel].min()), "key_max": float(key[sel].max()), **t})
    return out
