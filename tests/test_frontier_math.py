"""Pareto frontier and best-under-budget (offline_eval.frontier): known answers and an O(n^2) brute force."""

import numpy as np
import pytest

from offline_eval.frontier import best_under_budget, frontier_order, pareto_mask, percentile_ci


def brute_mask(lat, q):
    n = len(lat)
    out = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if lat[j] <= lat[i] and q[j] >= q[i] and (lat[j] < lat[i] or q[j] > q[i]):
                out[i] = False
                break
    return out


def brute_best(lat, q, budget):
    best = None
    for i in range(len(lat)):
        if lat[i] > budget:
            continue
        if best is None or q[i] > q[best] or (q[i] == q[best] and lat[i] < lat[best]):
            best = i
    return best


def test_known_answer():
    lat = [10, 5, 20, 5, 12, 30]
    q = [0.30, 0.20, 0.35, 0.10, 0.25, 0.35]
    # 0: on; 1: on (fastest best); 2: on; 3: dominated by 1; 4: dominated by 0; 5: dominated by 2 (tie q, slower)
    assert pareto_mask(lat, q).tolist() == [True, True, True, False, False, False]
    assert frontier_order(lat, q).tolist() == [1, 0, 2]
    assert best_under_budget(lat, q, 15) == 0
    assert best_under_budget(lat, q, 25) == 2
    assert best_under_budget(lat, q, 5) == 1
    assert best_under_budget(lat, q, 4.9) is None


def test_ties_and_duplicates():
    # identical points: neither dominates the other, both on the frontier
    assert pareto_mask([1, 1], [0.5, 0.5]).tolist() == [True, True]
    # same latency, lower quality: dominated; same quality, higher latency: dominated
    assert pareto_mask([1, 1, 2], [0.5, 0.4, 0.5]).tolist() == [True, False, False]
    # best under budget: a quality tie goes to the faster point, an exact duplicate to the earlier one
    assert best_under_budget([3, 2, 2], [0.5, 0.5, 0.5], 10) == 1
    assert best_under_budget([2, 2], [0.5, 0.5], 10) == 0
    assert best_under_budget([2, 3], [0.5, 0.6], 3) == 1  # the budget is inclusive


def test_empty_and_bad_input():
    assert pareto_mask([], []).tolist() == []
    assert best_under_budget([], [], 1.0) is None
    with pytest.raises(ValueError, match="finite"):
        pareto_mask([1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="one length"):
        pareto_mask([1, 2], [0.1])
    with pytest.raises(ValueError, match="budget"):
        best_under_budget([1], [0.1], float("nan"))


@pytest.mark.parametrize("seed", range(30))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    # few distinct values so ties and exact duplicates are common
    lat = rng.integers(0, 8, n).astype(float)
    q = rng.integers(0, 6, n) / 10
    mask = pareto_mask(lat, q)
    assert mask.tolist() == brute_mask(lat, q).tolist()
    order = frontier_order(lat, q)
    assert sorted(order.tolist()) == np.flatnonzero(mask).tolist()
    assert np.all(np.diff(lat[order]) >= 0) and np.all(np.diff(q[order]) >= 0)
    for budget in (-1.0, 0.0, 2.5, 4.0, 100.0):
        got = best_under_budget(lat, q, budget)
        assert got == brute_best(lat, q, budget)
        if got is not None:
            assert mask[got]  # the best point under a budget is on the frontier


def test_percentile_ci():
    assert percentile_ci(np.full(50, 3.0), 99) == (3.0, 3.0)  # no spread, no interval
    rng = np.random.default_rng(1)
    x = rng.exponential(10.0, size=400)
    lo, hi = percentile_ci(x, 50, seed=3)
    assert lo < np.percentile(x, 50) < hi
    assert (lo, hi) == percentile_ci(x, 50, seed=3)  # seeded
    # coverage of the true median of Exp(10) (10 ln 2) over repeated draws, near the nominal 95%
    true = 10 * np.log(2)
    hits = [lo <= true <= hi for lo, hi in (percentile_ci(rng.exponential(10.0, 300), 50, n_boot=400, seed=s)
                                            for s in range(100))]
    assert 0.85 <= np.mean(hits) <= 1.0
    with pytest.raises(ValueError, match="q must be"):
        percentile_ci(x, 101)
