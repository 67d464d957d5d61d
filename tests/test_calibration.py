"""Calibration metrics: hand-computed values, slow references, and downsampling + recalibration recovering the
true base rate."""

from __future__ import annotations

import math

import os

import numpy as np
import pytest

from offline_eval import calibration as C


def _auc_pairwise(y, p):
    """O(n^2) reference: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = p[y == 1], p[y == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def test_logloss_hand_computed():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
    assert C.logloss(y, p) == pytest.approx(expected, abs=1e-15)
    # clipping keeps a confident mistake finite
    assert C.logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-15))


def test_auc_against_pairwise_reference_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 300
        y = (rng.random(n) < 0.3).astype(int)
        p = np.round(rng.random(n) * 0.5 + 0.3 * y, 1)  # rounding -> many ties, some signal
        assert C.auc(y, p) == pytest.approx(_auc_pairwise(y, p), abs=1e-12)
    assert C.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75  # sklearn doc example
    assert C.auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_auc_single_class_is_an_error():
    with pytest.raises(ValueError, match="one class"):
        C.auc(np.array([1, 1]), np.array([0.2, 0.3]))


def test_normalized_entropy_of_base_rate_predictor_is_one():
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.07).astype(int)
    p = np.full(y.size, y.mean())
    assert C.normalized_entropy(y, p) == pytest.approx(1.0, abs=1e-12)
    # a better predictor has NE < 1
    p_good = np.where(y == 1, 0.6, 0.03)
    assert C.normalized_entropy(y, p_good) < 0.6


def test_normalized_entropy_hand_computed():
    y = np.array([1, 0, 0, 0])
    p = np.array([0.5, 0.5, 0.5, 0.5])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert C.normalized_entropy(y, p) == pytest.approx(math.log(2) / h, abs=1e-12)


def test_calibration_ratio_and_ece_hand_computed():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    assert C.calibration_ratio(y, p) == pytest.approx(2.3 / 3)
    ece, table = C.expected_calibration_error(y, p, n_bins=10)
    # bins: [0, .1): {0.05 -> y 0}; [.1, .2): {0.15, 0.15 -> y 0, 1}; [.9, 1]: {0.95, 1.0 -> y 1, 1}
    np.testing.assert_array_equal(table["count"], [1, 2, 2])
    np.testing.assert_allclose(table["mean_p"], [0.05, 0.15, 0.975])
    np.testing.assert_allclose(table["mean_y"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(table["lower"], [0.0, 0.1, 0.9])
    assert ece == pytest.approx((1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5)


def test_ece_against_slow_reference_both_strategies():
    rng = np.random.default_rng(2)
    p = rng.random(2000) ** 2
    y = (rng.random(2000) < np.sqrt(p)).astype(int)
    for strategy in ("uniform", "quantile"):
        ece, table = C.expected_calibration_error(y, p, n_bins=7, strategy=strategy)
        if strategy == "uniform":
            edges = np.linspace(0, 1, 8)
        else:
            edges = np.quantile(p, np.linspace(0, 1, 8))
            edges[0], edges[-1] = 0.0, 1.0
        ref, counts = 0.0, []
        for b in range(7):
            last = b == 6
            m = (p >= edges[b]) & ((p <= edges[b + 1]) if last else (p < edges[b + 1]))
            if m.any():
                counts.append(m.sum())
                ref += m.sum() / p.size * abs(p[m].mean() - y[m].mean())
        assert ece == pytest.approx(ref, abs=1e-12)
        np.testing.assert_array_equal(table["count"], counts)
        if strategy == "quantile":
            assert table["count"].max() - table["count"].min() <= 2


def test_input_errors():
    with pytest.raises(ValueError, match="binary"):
        C.logloss(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="probabilities"):
        C.logloss(np.array([0, 1]), np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="same length"):
        C.auc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="strategy"):
        C.expected_calibration_error(np.array([0, 1]), np.array([0.1, 0.2]), strategy="kmeans")
    for w in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            C.downsample_negatives(np.array([0, 1]), w)
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            C.recalibrate(np.array([0.5]), w)


def test_downsample_keeps_all_positives_and_about_w_negatives():
    rng = np.random.default_rng(3)
    y = (rng.random(100_000) < 0.05).astype(int)
    keep = C.downsample_negatives(y, 0.2, seed=4)
    assert keep[y == 1].all()
    assert keep[y == 0].mean() == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(keep, C.downsample_negatives(y, 0.2, seed=4))  # seeded
    assert C.downsample_negatives(y, 1.0).all()


def test_recalibrate_formula_and_identity():
    p = np.array([0.0, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(C.recalibrate(p, 1.0), p)
    np.testing.assert_allclose(C.recalibrate(p, 0.1), [0.0, 0.5 / (0.5 + 5.0), 0.8 / (0.8 + 2.0), 1.0])


def test_recalibration_recovers_base_rate_after_downsampled_training():
    """Train on negatives kept at w = 0.05 (empirical rate per feature bucket), evaluate on the full data."""
    rng = np.random.default_rng(5)
    n = 400_000
    x = rng.normal(size=n)
    true_p = 1 / (1 + np.exp(-(-4.0 + 1.2 * x)))  # base rate about 3.5%
    y = (rng.random(n) < true_p).astype(int)
    train, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
    w = 0.05
    keep = C.downsample_negatives(y[train], w, seed=6)
    xs, ys = x[train][keep], y[train][keep]
    edges = np.quantile(xs, np.linspace(0, 1, 21))[1:-1]
    bucket_rate = np.bincount(np.searchsorted(edges, xs), weights=ys, minlength=20) / np.bincount(
        np.searchsorted(edges, xs), minlength=20
    )
    p_raw = np.clip(bucket_rate[np.searchsorted(edges, x[test])], 1e-6, 1 - 1e-6)

    yt = y[test]
    raw = C.calibration_ratio(yt, p_raw)
    fixed = C.calibration_ratio(yt, C.recalibrate(p_raw, w))
    assert raw > 4  # badly over-predicting before recalibration
    assert abs(fixed - 1) < 0.05
    rep = C.calibration_report(yt, p_raw, w=w)
    assert set(rep) == {"logloss", "logloss_raw", "ne", "auc", "calibration", "ece", "base_rate", "n"}
    assert rep["calibration"] == pytest.approx(fixed)
    assert rep["logloss"] < rep["logloss_raw"]
    assert rep["ne"] < 1 and rep["auc"] > 0.75 and rep["ece"] < 0.01
    assert rep["base_rate"] == pytest.approx(yt.mean()) and rep["n"] == yt.size


def test_report_without_w_and_single_class():
    y = np.array([0, 1, 0, 0])
    p = np.array([0.2, 0.6, 0.1, 0.3])
    rep = C.calibration_report(y, p)
    assert rep["logloss_raw"] == rep["logloss"] == pytest.approx(C.logloss(y, p))
    assert rep["auc"] == 1.0
    rep0 = C.calibration_report(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]))
    assert rep0["ne"] is None and rep0["auc"] is None and rep0["calibration"] is None


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(7)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    tables = {
        "calibrated": C.expected_calibration_error(y, p)[1],
        "overconfident": C.expected_calibration_error(y, p**0.3)[1],
    }
    out = C.reliability_diagram(tables, tmp_path / "sub" / "rel.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # as readable as the rest of the report, not mkstemp's 0600
    with pytest.raises(ValueError, match="lacks"):
        C.reliability_diagram({"x": {"count": [1]}}, tmp_path / "bad.png")
