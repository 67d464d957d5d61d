"""Paired bootstrap and paired t-test: slow reference, scipy, null calibration, clear effects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from offline_eval.significance import paired_bootstrap, paired_t_test


def _bootstrap_slow(a, b, n_samples, seed, alpha):
    rng = np.random.default_rng(seed)
    d = a - b
    means = []
    for _ in range(n_samples):
        idx = rng.integers(0, d.size, size=d.size)
        means.append(sum(d[i] for i in idx) / d.size)
    means = np.array(means)
    obs = d.mean()
    p = (1 + sum(abs(m - obs) >= abs(obs) - 1e-12 * max(1.0, abs(obs)) for m in means)) / (1 + n_samples)
    return obs, np.quantile(means, alpha / 2), np.quantile(means, 1 - alpha / 2), p


def test_bootstrap_matches_slow_reference_and_is_chunk_invariant():
    rng = np.random.default_rng(0)
    a = rng.random(40)
    b = a - 0.05 + 0.2 * rng.standard_normal(40)
    ref = _bootstrap_slow(a, b, 300, seed=3, alpha=0.1)
    for chunk in (40, 1000, 1 << 22):  # 1, 25 and all samples per chunk
        got = paired_bootstrap(a, b, n_samples=300, seed=3, alpha=0.1, chunk_size=chunk)
        assert got["mean_diff"] == pytest.approx(ref[0], abs=1e-12)
        assert got["ci_low"] == pytest.approx(ref[1], abs=1e-12)
        assert got["ci_high"] == pytest.approx(ref[2], abs=1e-12)
        assert got["p_value"] == pytest.approx(ref[3], abs=1e-12)


def test_bootstrap_identical_systems():
    a = np.linspace(0, 1, 30)
    got = paired_bootstrap(a, a.copy(), n_samples=200)
    assert got["mean_diff"] == 0 and got["ci_low"] == 0 and got["ci_high"] == 0 and got["p_value"] == 1.0


def test_bootstrap_clear_difference():
    rng = np.random.default_rng(1)
    b = rng.random(200)
    a = b + 0.1 + 0.01 * rng.standard_normal(200)
    got = paired_bootstrap(a, b, n_samples=500, seed=2)
    assert got["p_value"] == pytest.approx(1 / 501)
    assert 0.09 < got["ci_low"] < got["mean_diff"] < got["ci_high"] < 0.11


def test_bootstrap_null_rejection_rate_near_alpha():
    rng = np.random.default_rng(4)
    rejections = 0
    trials = 200
    for t in range(trials):
        a, b = rng.random(100), rng.random(100)
        rejections += paired_bootstrap(a, b, n_samples=300, seed=t)["p_value"] < 0.05
    assert 0.01 <= rejections / trials <= 0.12


def test_bootstrap_ci_close_to_t_interval_for_normal_data():
    rng = np.random.default_rng(5)
    a = rng.normal(0.3, 1.0, 2000)
    b = rng.normal(0.25, 1.0, 2000)
    boot = paired_bootstrap(a, b, n_samples=2000, seed=0)
    tt = paired_t_test(a, b)
    assert boot["ci_low"] == pytest.approx(tt["ci_low"], abs=0.01)
    assert boot["ci_high"] == pytest.approx(tt["ci_high"], abs=0.01)


def test_t_test_matches_scipy():
    rng = np.random.default_rng(6)
    a, b = rng.random(50), rng.random(50) + 0.05
    got = paired_t_test(a, b, alpha=0.1)
    ref = stats.ttest_rel(a, b)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert got["ci_low"] == pytest.approx(ci.low, rel=1e-10) and got["ci_high"] == pytest.approx(ci.high, rel=1e-10)
    assert got["df"] == 49


def test_t_test_constant_differences():
    a = np.ones(5)
    assert paired_t_test(a, a)["p_value"] == 1.0
    assert paired_t_test(a + 1, a)["p_value"] == 0.0


@pytest.mark.parametrize(
    "a, b, kw, match",
    [
        (np.zeros(3), np.zeros(4), {}, "equal length"),
        (np.zeros(1), np.zeros(1), {}, "at least 2"),
        (np.array([0.0, np.nan]), np.zeros(2), {}, "finite"),
        (np.zeros(3), np.zeros(3), {"alpha": 1.5}, "alpha"),
        (np.zeros(3), np.zeros(3), {"n_samples": 0}, "n_samples"),
    ],
)
def test_errors(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kw)
