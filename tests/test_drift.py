"""Adversarial validation (offline_eval.drift): a planted shifted feature is found, identical windows give
~0.5 (and sit inside their permutation null), grouped folds do not leak, the statistics match references."""

from __future__ import annotations

import numpy as np
import pytest

from offline_eval.drift import DriftConfig, adversarial_validation, auc, group_folds, ks_statistic, oof_scores

FAST = DriftConfig(folds=4, permutations=3, bootstrap=200, n_estimators=40, num_leaves=7, min_data_in_leaf=20)
NAMES = ["noise_a", "noise_b", "planted", "noise_c", "noise_d"]


def table(shift: float, users: int = 400, rows: int = 10, seed: int = 0):
    """Two windows of ``users`` requests each (one user, ``rows`` candidate rows); user ids overlap across the
    windows. Column 2 (``planted``) is shifted by ``shift`` in the new window; the rest are i.i.d. N(0, 1),
    column 4 a user-level value (constant within a request)."""
    rng = np.random.default_rng(seed)
    n = 2 * users * rows
    y = np.repeat([0, 1], users * rows)
    uid = np.r_[np.repeat(np.arange(users), rows), np.repeat(np.arange(users // 2, users // 2 + users), rows)]
    X = rng.standard_normal((n, 5))
    X[:, 2] += shift * y
    X[:, 4] = np.repeat(rng.standard_normal(2 * users), rows)
    X[rng.random(n) < 0.05, 0] = np.nan
    return X, y, uid


@pytest.fixture(scope="module")
def planted():
    X, y, uid = table(shift=1.0)
    return adversarial_validation(X, y, uid, NAMES, FAST)


@pytest.fixture(scope="module")
def no_drift():
    X, y, uid = table(shift=0.0, users=600, seed=1)
    return adversarial_validation(X, y, uid, NAMES, FAST)


def test_planted_feature_found(planted):
    # a 1-sd mean shift: the Bayes AUC of one N(0,1) vs N(1,1) feature is Phi(1/sqrt 2) = 0.76
    assert planted.auc > 0.7
    assert planted.auc_ci[0] > 0.7 > max(planted.null_auc)
    assert planted.p_value == pytest.approx(1 / 4)  # all 3 nulls below
    order = planted.order()
    assert planted.names[order[0]] == "planted"
    assert planted.importance[order[0]] > 0.5
    j = NAMES.index("planted")
    assert planted.uni_auc[j] == pytest.approx(0.76, abs=0.03)
    assert planted.ks[j] > 0.3 and np.nanmax(np.delete(planted.ks, j)) < 0.1
    assert planted.mean_new[j] - planted.mean_old[j] == pytest.approx(1.0, abs=0.1)
    assert planted.features()[0]["feature"] == "planted"


def test_no_drift_is_half(no_drift):
    # 12,000 rows, 1,200 requests: the OOF AUC's sd under the null is about 0.01
    assert abs(no_drift.auc - 0.5) < 0.05
    assert no_drift.auc_ci[0] < 0.5 < no_drift.auc_ci[1] + 0.02
    assert all(abs(a - 0.5) < 0.05 for a in no_drift.null_auc)
    assert np.nanmax(no_drift.separation) < 0.05


def test_grouped_folds_do_not_leak():
    """No drift, but each request's rows are near-duplicates with a request-specific value: a row-level split
    lets the trees memorise the request and its window; the grouped split does not."""
    rng = np.random.default_rng(2)
    units, rows = 300, 20
    y = np.repeat(rng.permutation(np.repeat([0, 1], units // 2)), rows)
    g = np.repeat(np.arange(units), rows)
    X = np.repeat(rng.standard_normal((units, 3)), rows, axis=0) + 1e-3 * rng.standard_normal((units * rows, 3))
    cfg = DriftConfig(folds=4, n_estimators=40, num_leaves=7, min_data_in_leaf=5)
    row_folds = np.random.default_rng(0).integers(0, 4, len(y))
    leaky, _ = oof_scores(X, y, row_folds, cfg)
    grouped, _ = oof_scores(X, y, group_folds(g, 4, 0), cfg)
    assert auc(y, leaky) > 0.8
    assert abs(auc(y, grouped) - 0.5) < 0.1
    assert abs(adversarial_validation(X, y, g, ["a", "b", "c"], FAST).auc - 0.5) < 0.1


def test_group_folds_group_and_balance():
    g = np.repeat(np.arange(103), 3)[np.random.default_rng(0).permutation(309)]
    f = group_folds(g, 5, 7)
    assert all(len(np.unique(f[g == u])) == 1 for u in range(103))
    assert sorted(np.bincount(f) // 3) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(f, group_folds(g, 5, 7))
    with pytest.raises(ValueError, match="groups"):
        group_folds(np.arange(3), 5, 0)


def test_auc_and_ks_against_references():
    from scipy.stats import ks_2samp, mannwhitneyu

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.standard_normal(500) + 0.5 * y, 1)  # with ties
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    w = rng.integers(0, 3, 500)
    assert auc(y, s, w) == pytest.approx(auc(np.repeat(y, w), np.repeat(s, w)))
    a, b = rng.standard_normal(300), rng.standard_normal(200) + 0.3
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    assert ks_statistic(np.r_[a, np.nan], b) == pytest.approx(ks_2samp(a, b).statistic)


def test_deterministic_and_bad_input():
    X, y, uid = table(shift=0.5, users=100)
    cfg = DriftConfig(folds=3, permutations=1, bootstrap=50, n_estimators=10, num_leaves=4)
    a = adversarial_validation(X, y, uid, NAMES, cfg)
    b = adversarial_validation(X, y, uid, NAMES, cfg)
    assert a.to_json() == b.to_json()
    with pytest.raises(ValueError, match="X must be"):
        adversarial_validation(X[:, :4], y, uid, NAMES, cfg)
    with pytest.raises(ValueError, match="window must be"):
        adversarial_validation(X, y + 1, uid, NAMES, cfg)
    with pytest.raises(ValueError, match="both windows"):
        adversarial_validation(X, y, uid, NAMES, cfg, units=np.zeros(len(y)))
    with pytest.raises(ValueError, match="folds"):
        DriftConfig(folds=1)
