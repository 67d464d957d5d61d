"""Known-answer tests of the bias-variance decomposition (offline_eval.bias_variance) on a world where the truth
is known: x ~ U(-2, 2)^2, P(y = 1 | x) = sigmoid(1.5 x_0 - x_1), models refit on bootstrap resamples."""

import numpy as np
import pytest

from offline_eval.bias_variance import decompose, per_instance, terms_by_bins


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _world(n, rng):
    x = rng.uniform(-2.0, 2.0, size=(n, 2))
    p = _sigmoid(1.5 * x[:, 0] - x[:, 1])
    return x, p, (rng.random(n) < p).astype(np.int8)


def _logistic(x, y, l2=1e-3, iters=25):
    """Newton's method for L2-regularised logistic regression with an intercept; returns predict(x)."""
    X = np.c_[np.ones(len(x)), x]
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        q = _sigmoid(X @ w)
        g = X.T @ (q - y) + l2 * w
        H = (X * (q * (1 - q))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        w -= np.linalg.solve(H, g)
    return lambda z: _sigmoid(np.c_[np.ones(len(z)), z] @ w)


def _knn(x, y, k):
    def predict(z):
        d = ((z[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        return y[np.argsort(d, axis=1, kind="stable")[:, :k]].mean(axis=1)
    return predict


def _constant(x, y):
    return lambda z: np.full(len(z), y.mean())


def _bootstrap(fit, x, y, x_test, m, rng):
    preds = []
    for _ in range(m):
        idx = rng.integers(0, len(y), len(y))
        preds.append(fit(x[idx], y[idx].astype(np.float64))(x_test))
    return np.stack(preds)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    x, _, y = _world(200, rng)
    xt, pt, yt = _world(2000, rng)
    return x, y, xt, pt, yt


def test_terms_sum_exactly_to_the_measured_mse(world):
    x, y, xt, pt, yt = world
    f = _bootstrap(lambda a, b: _knn(a, b, 5), x, y, xt, 8, np.random.default_rng(1))
    t = decompose(f, yt, pt)
    mse = float(((yt[None, :] - f) ** 2).mean())  # measured directly
    assert t["mse"] == pytest.approx(mse, abs=1e-15)
    assert t["sum_exact"] == pytest.approx(mse, rel=1e-12, abs=1e-15)
    assert t["bias2"] + t["variance"] + t["noise_realised"] + t["cross"] == pytest.approx(mse, rel=1e-12)
    assert t["bias2_debiased"] + t["variance_unbiased"] + t["noise_realised"] + t["cross"] == pytest.approx(mse, rel=1e-12)
    assert t["mse_of_mean"] + t["variance"] == pytest.approx(mse, rel=1e-12)  # without the truth
    no_truth = decompose(f, yt)
    assert "bias2" not in no_truth and no_truth["mse_of_mean"] + no_truth["variance"] == pytest.approx(mse, rel=1e-12)
    # the expected-noise version is off only by the test labels' sampling error
    assert t["noise_expected"] == pytest.approx(float((pt * (1 - pt)).mean()), rel=1e-12)
    assert abs(t["gap_expected"]) < 0.01 and abs(t["cross"]) < 0.01


def test_realised_noise_and_cross_term_converge_to_their_expectations():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.95, 200_000)
    y = (rng.random(len(p)) < p).astype(np.int8)
    f = np.clip(p[None, :] + 0.1 + 0.05 * rng.standard_normal((3, len(p))), 0, 1)  # biased, noisy model
    t = decompose(f, y, p)
    se = np.sqrt(np.var((y - p) ** 2) / len(p))
    assert abs(t["noise_realised"] - t["noise_expected"]) < 4 * se
    assert abs(t["cross"]) < 0.002
    assert t["sum_expected"] == pytest.approx(t["mse"], abs=0.003)


def test_an_underfit_constant_model_has_bias_equal_to_the_variance_of_the_truth(world):
    x, y, xt, pt, yt = world
    f = _bootstrap(_constant, x, y, xt, 10, np.random.default_rng(3))
    t = decompose(f, yt, pt)
    # bias^2 of a constant c is Var(p) + (mean p - c)^2; c ~ mean of the training labels
    assert t["bias2"] == pytest.approx(float(pt.var()) + (pt.mean() - f.mean()) ** 2, rel=1e-9)
    assert t["bias2"] == pytest.approx(float(pt.var()), rel=0.1)
    assert t["variance"] < 0.01 * t["bias2"]  # a constant barely moves between resamples


def test_a_flexible_model_has_more_variance_and_less_bias_than_a_regularised_one(world):
    x, y, xt, pt, yt = world
    rng = np.random.default_rng(4)
    flexible = decompose(_bootstrap(lambda a, b: _knn(a, b, 1), x, y, xt, 8, rng), yt, pt)
    logistic = decompose(_bootstrap(_logistic, x, y, xt, 8, rng), yt, pt)
    constant = decompose(_bootstrap(_constant, x, y, xt, 8, rng), yt, pt)
    assert flexible["variance"] > 5 * logistic["variance"]
    assert logistic["bias2_debiased"] < 0.01 < constant["bias2"]  # well specified: little bias
    assert logistic["mse"] < min(flexible["mse"], constant["mse"])
    # 1-NN predicts 0 or 1: its variance is that of a Bernoulli of its mean (up to a rounding of the mean)
    fbar, var = per_instance(_bootstrap(lambda a, b: _knn(a, b, 1), x, y, xt, 8, rng))
    assert np.allclose(var, fbar * (1 - fbar))


def test_the_oracle_has_no_bias_and_no_variance(world):
    *_, xt, pt, yt = world
    t = decompose(np.stack([pt, pt, pt]), yt, pt)
    assert max(t["bias2"], t["variance"], abs(t["cross"])) < 1e-15  # the mean of 3 equal floats: rounding only
    assert t["mse"] == pytest.approx(t["noise_realised"], rel=1e-12)


def test_finite_m_debiasing_recovers_the_planted_variance_and_bias():
    rng = np.random.default_rng(5)
    n, m, s = 20_000, 3, 0.05
    p = rng.uniform(0.2, 0.8, n)
    y = (rng.random(n) < p).astype(np.int8)
    c = np.full(n, 0.5)
    t = decompose(c[None, :] + s * rng.standard_normal((m, n)), y, p)
    assert t["variance"] == pytest.approx(s ** 2 * (m - 1) / m, rel=0.03)
    assert t["variance_unbiased"] == pytest.approx(s ** 2, rel=0.03)
    true_bias2 = float(((p - 0.5) ** 2).mean())
    assert t["bias2_debiased"] == pytest.approx(true_bias2, rel=0.03)
    assert t["bias2"] == pytest.approx(true_bias2 + s ** 2 / m, rel=0.03)  # plain: + var / M


def test_terms_by_bins_find_where_the_variance_is():
    rng = np.random.default_rng(6)
    n = 5000
    key = rng.random(n)
    p = np.full(n, 0.3)
    y = (rng.random(n) < p).astype(np.int8)
    f = 0.3 + (0.2 * key)[None, :] * rng.standard_normal((6, n))  # spread grows with the key
    bins = terms_by_bins(f, y, p, key, n_bins=5)
    assert [b["bin"] for b in bins] == [0, 1, 2, 3, 4]
    v = [b["variance"] for b in bins]
    assert v == sorted(v) and v[-1] > 10 * v[0]
    assert sum(b["n"] for b in bins) == n
    w = np.array([b["n"] for b in bins]) / n  # the bins' terms average back to the whole
    assert float(w @ [b["mse"] for b in bins]) == pytest.approx(decompose(f, y, p)["mse"], rel=1e-12)


@pytest.mark.parametrize("args, match", [
    ((np.zeros(3), np.zeros(3)), "shape"),
    ((np.zeros((2, 3)), np.zeros(4)), "y: expected shape"),
    ((np.zeros((2, 3)), np.array([0, 2, 1])), "0/1"),
    ((np.full((2, 3), np.nan), np.zeros(3)), "finite"),
    ((np.zeros((2, 3)), np.zeros(3), np.array([0.1, 1.2, 0.3])), "p_true"),
])
def test_bad_input_is_refused(args, match):
    with pytest.raises(ValueError, match=match):
        decompose(*args)
