"""compare's statistics (offline_eval.compare) on repeated synthetic draws with a planted difference, and the
`recsys experiment compare` command on the tiny world.

The synthetic design is the crossed model of the module docstring: d[s, u] = delta + a_u + b_s + e_su with
skewed (shifted exponential) user effects, as per-user ranking metrics are skewed. Tolerances are binomial:
with n draws a rate r is checked to within 3.3 sd, sd = sqrt(r (1 - r) / n)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from offline_eval.compare import bootstrap_means, holm, mde, mean_se, paired_diff, two_level_bootstrap

N_DRAWS = 400
ALPHA = 0.05


def _draw(rng, s, b, delta, sa=0.1, sb=0.0, se=0.05):
    a = sa * (rng.exponential(1.0, b) - 1.0)
    return delta + a[None, :] + rng.normal(0.0, sb, s)[:, None] + rng.normal(0.0, se, (s, b))


def _tol(rate: float, n: int = N_DRAWS) -> float:
    return 3.3 * math.sqrt(rate * (1 - rate) / n)


def _t_interval(d):
    m = mean_se(d)
    half = stats.t.ppf(1 - ALPHA / 2, m.df) * m.se
    return m.mean - half, m.mean + half, m


@pytest.mark.parametrize("s, b, sb", [(1, 300, 0.0), (3, 300, 0.003), (5, 200, 0.005), (4, 150, 0.0)])
def test_t_interval_covers_a_planted_difference_at_the_nominal_rate(s, b, sb):
    rng = np.random.default_rng(s * 1000 + b)
    delta = 0.02
    hits = 0
    for _ in range(N_DRAWS):
        lo, hi, _ = _t_interval(_draw(rng, s, b, delta, sb=sb))
        hits += lo <= delta <= hi
    assert abs(hits / N_DRAWS - (1 - ALPHA)) <= _tol(1 - ALPHA), hits / N_DRAWS


def test_paired_diff_interval_is_the_t_interval_and_its_p_value_agrees_with_it():
    rng = np.random.default_rng(3)
    d = _draw(rng, 3, 200, 0.01, sb=0.004)
    r = paired_diff(d, n_samples=200)
    lo, hi, m = _t_interval(d)
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi) and r["df"] == m.df
    assert (r["p_value"] < ALPHA) == (r["ci_low"] > 0 or r["ci_high"] < 0)
    assert r["per_seed"] == pytest.approx(d.mean(axis=1).tolist()) and r["n_seeds"] == 3 and r["n_users"] == 200


def test_one_seed_is_the_paired_t_test_over_users():
    from offline_eval.significance import paired_t_test

    rng = np.random.default_rng(4)
    a, b = rng.random(120), rng.random(120)
    r = paired_diff((a - b)[None, :], n_samples=0)
    t = paired_t_test(a, b)
    assert r["p_value"] == pytest.approx(t["p_value"]) and r["ci_low"] == pytest.approx(t["ci_low"])
    assert r["df"] == 119 and "boot_low" not in r


def test_variance_components_are_recovered():
    rng = np.random.default_rng(5)
    d = _draw(rng, 40, 2000, 0.0, sa=0.1, sb=0.02, se=0.05)
    c = mean_se(d).components
    assert c["user"] == pytest.approx(0.01, rel=0.15)  # sa^2 (exponential: variance 1)
    assert c["seed"] == pytest.approx(0.0004, rel=0.6)  # sb^2 from 40 seeds
    assert c["interaction"] == pytest.approx(0.0025, rel=0.05)


def test_the_null_rejects_at_alpha():
    rng = np.random.default_rng(6)
    rejects = sum(paired_diff(_draw(rng, 3, 200, 0.0, sb=0.002), n_samples=0)["p_value"] < ALPHA
                  for _ in range(N_DRAWS))
    assert abs(rejects / N_DRAWS - ALPHA) <= _tol(ALPHA), rejects / N_DRAWS


@pytest.mark.parametrize("s, b", [(1, 300), (4, 200)])
def test_power_at_the_minimum_detectable_effect_is_the_nominal_power(s, b):
    sa, se = 0.1, 0.05
    true_se = math.sqrt(sa ** 2 / b + se ** 2 / (s * b))  # no seed effect: Var = sa2 / B + se2 / (S B)
    effect = mde(true_se, df=b - 1)
    rng = np.random.default_rng(7 + s)
    found = sum(paired_diff(_draw(rng, s, b, effect, sa=sa, se=se), n_samples=0)["p_value"] < ALPHA
                for _ in range(N_DRAWS))
    assert abs(found / N_DRAWS - 0.8) <= _tol(0.8), found / N_DRAWS
    # and the MDE each draw reports is the planted one on average
    rng = np.random.default_rng(8)
    reported = [paired_diff(_draw(rng, s, b, 0.0, sa=sa, se=se), n_samples=0)["mde"] for _ in range(50)]
    assert np.mean(reported) == pytest.approx(effect, rel=0.05)


def test_mde_is_2_8_standard_errors_for_large_samples():
    assert mde(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert mde(0.01, df=5) > mde(0.01)  # t quantiles widen it with few degrees of freedom
    with pytest.raises(ValueError, match="power"):
        mde(1.0, power=1.0)


def test_two_level_bootstrap_covers_with_one_seed():
    rng = np.random.default_rng(9)
    delta, hits, n = 0.02, 0, 200
    for i in range(n):
        lo, hi = two_level_bootstrap(_draw(rng, 1, 300, delta), n_samples=400, seed=i)
        hits += lo <= delta <= hi
    assert abs(hits / n - 0.95) <= _tol(0.95, n), hits / n


def test_bootstrap_means_match_a_slow_reference_and_are_deterministic():
    rng = np.random.default_rng(10)
    d = rng.random((3, 7))
    fast = bootstrap_means(d, 50, seed=1, chunk=8)
    assert np.array_equal(fast, bootstrap_means(d, 50, seed=1, chunk=8))
    # the reference: draw the same (rows, cols) indices chunk by chunk and take the block's mean
    ref_rng = np.random.default_rng(1)
    ref = []
    for start in range(0, 50, 8):
        n = min(8, 50 - start)
        rows, cols = ref_rng.integers(0, 3, (n, 3)), ref_rng.integers(0, 7, (n, 7))
        ref += [d[np.ix_(rows[k], cols[k])].mean() for k in range(n)]
    assert fast == pytest.approx(ref, abs=1e-12)


def test_holm_matches_hand_computed_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04 -> running max
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm(np.array([[0.001], [0.2]])).shape == (2, 1)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(11)
    m, n = 6, 2000
    p = rng.random((n, m))  # independent null p-values
    any_raw = np.mean((p < ALPHA).any(axis=1))
    any_holm = np.mean((np.apply_along_axis(holm, 1, p) <= ALPHA).any(axis=1))
    assert any_raw > 0.2  # 1 - 0.95^6 = 0.265 without a correction
    assert any_holm <= ALPHA + _tol(ALPHA, n)


def test_bad_design_is_refused():
    with pytest.raises(ValueError, match="users"):
        paired_diff(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="finite"):
        paired_diff(np.array([[0.0, np.nan, 1.0]]))
