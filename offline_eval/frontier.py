"""Latency-quality trade-offs: the Pareto frontier of measured configurations and the best one under a budget.

Shapes: n configurations (points), each with a latency ``l_i`` (lower is better, e.g. p99 milliseconds) and a
quality ``q_i`` (higher is better, e.g. mean ndcg@10 over the same users).

**Dominance.** Point j dominates point i when ``l_j <= l_i`` and ``q_j >= q_i`` with at least one of the two
strict. The Pareto frontier (the non-dominated set; e.g. Deb, *Multi-Objective Optimization Using
Evolutionary Algorithms*, 2001, ch. 2) is every point no other point dominates. Identical points do not
dominate each other: duplicates on the frontier are all on it.

**Best under a budget.** ``argmax_i q_i`` over the points with ``l_i <= budget``; ties in quality go to the
lower latency, then to the earlier point. It is always on the frontier (a point dominating it would be within
the budget and better or as good and faster).

Everything here is pure numpy on the numbers it is given: measuring them is the caller's business
(``recsys experiment frontier``).
"""

from __future__ import annotations

import numpy as np


def _points(latency, quality) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(latency, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if lat.ndim != 1 or q.shape != lat.shape:
        raise ValueError(f"latency and quality must be 1-d arrays of one length, got shapes {lat.shape} and {q.shape}")
    if not (np.isfinite(lat).all() and np.isfinite(q).all()):
        raise ValueError("latency and quality must be finite (no NaN or infinity)")
    return lat, q


def pareto_mask(latency, quality) -> np.ndarray:
    """(n,) bool: point i is on the Pareto frontier (no point dominates it; see the module docstring).

    O(n log n): sort by latency ascending, quality descending; within a group of equal latency only the points
    of the group's best quality can be non-dominated, and they are exactly when that quality beats every point
    of strictly lower latency (a running maximum over the earlier groups).
    """
    lat, q = _points(latency, quality)
    n = len(lat)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((-q, lat))
    ls, qs = lat[order], q[order]
    new_group = np.r_[True, ls[1:] != ls[:-1]]
    gid = np.cumsum(new_group) - 1
    gbest = qs[new_group]  # first of a group = its best quality
    before = np.r_[-np.inf, np.maximum.accumulate(gbest)[:-1]]  # best quality at strictly lower latency
    on_sorted = (qs == gbest[gid]) & (qs > before[gid])
    out = np.zeros(n, dtype=bool)
    out[order] = on_sorted
    return out


def frontier_order(latency, quality) -> np.ndarray:
    """Indices of the frontier points by increasing latency (then decreasing quality, then index): the order
    to draw the frontier as a line (latency and quality both increase along it)."""
    lat, q = _points(latency, quality)
    idx = np.flatnonzero(pareto_mask(lat, q))
    return idx[np.lexsort((idx, -q[idx], lat[idx]))]


def best_under_budget(latency, quality, budget: float) -> int | None:
    """Index of the highest-quality point with ``latency <= budget`` (ties: lower latency, then the earlier
    point), or None when no point is within the budget."""
    lat, q = _points(latency, quality)
    if not np.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    ok = np.flatnonzero(lat <= budget)
    if len(ok) == 0:
        return None
    best = ok[np.lexsort((ok, lat[ok], -q[ok]))[0]]
    return int(best)


def percentile_ci(samples, q: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile-bootstrap interval of the ``q``-th percentile (0-100) of ``samples`` (n,): the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of that percentile over ``n_boot`` resamples of the n values with replacement
    (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13). The samples are taken as
    independent; for a tail percentile of a few hundred values the interval is coarse (it moves with the few
    largest values), which is the point: it shows how far a p99 can be trusted."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError("percentile_ci: samples must be a non-empty 1-d array of finite values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile_ci: q must be in [0, 100], got {q}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"percentile_ci: need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    boot = np.percentile(x[idx], q, axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


__all__ = ["best_under_budget", "frontier_order", "pareto_mask", "percentile_ci"]
