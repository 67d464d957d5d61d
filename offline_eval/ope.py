"""Off-policy estimators of a deterministic ranking policy's value from logged slates with propensities.

Shapes: S logged sessions (one request and one shown slate each), L slate positions of the log, K <= L positions
of the target ranking that are evaluated. All inputs are dense arrays; ``-1`` marks "no item" (a position the
log did not record, a target list shorter than K).

    logged      (S, L) int64   item code shown at each position (-1: position not logged in this session)
    click       (S, L) float64 1 clicked, 0 not (ignored where logged == -1)
    propensity  (S, L) float64 p_k(a | x): the logging policy's probability of showing that item at that
                               position in that session (the *item-position marginal*)
    target      (S, K) int64   the item the evaluated (deterministic) policy puts at each position

**Top slot** (position 0; the target's action is ``pi(x) = target[:, 0]``, the reward the click at position 0),
with ``w_s = 1[a_s = pi(x_s)] / p_0(a_s | x_s)``:

* IPS (Horvitz & Thompson 1952; for bandits Li et al. 2011, "Unbiased offline evaluation of contextual-bandit
  news article recommendation algorithms"): ``V = mean_s w_s c_s``;
* SNIPS (Swaminathan & Joachims 2015, "The self-normalized estimator for counterfactual learning"):
  ``V = sum_s w_s c_s / sum_s w_s``;
* DR (Dudík, Langford & Li 2011, "Doubly robust policy evaluation and learning"):
  ``V = mean_s [ q(x_s, pi(x_s)) + w_s (c_s - q(x_s, a_s)) ]`` with a reward model ``q`` (:func:`fit_reward_model`,
  cross-fitted so ``q`` of a session never saw its click).

**Ranked list** (the expected number of clicks on the top K positions, ``V = E_x sum_{k<K} P(click at k |
pi_k(x) shown at k)``), under the item-position click model (a click at position k depends on the item shown
there and on k only; Li, Kim, Kveton, Muthukrishnan et al. 2018, "Offline evaluation of ranking policies with
click models", KDD): with ``w_sk = 1[a_sk = pi_k(x_s)] / p_k(a_sk | x_s)`` and ``n_k`` the sessions that logged
position k,

* item-position IPS: ``V = sum_k (1/n_k) sum_{s logs k} w_sk c_sk``;
* item-position DR: the same with ``q(pi_k, k) + w_sk (c_sk - q(a_sk, k))`` per position (control variate).

**Intervals.** Every estimator is a mean over sessions of a per-session term ``z_s`` (for the list
``z_s = sum_k (S / n_k) 1[s logs k] (term_sk)``), and sessions are independent given their contexts, so the
interval is the normal one, ``V +- z_{1-alpha/2} sd(z) / sqrt(S)`` (CLT; the sd over sessions includes the spread
of the contexts, so the interval is conservative for the value on the logged contexts); SNIPS, a ratio of two
means, uses the delta method: ``se^2 = sum_s w_s^2 (c_s - V)^2 / (sum_s w_s)^2``. A percentile bootstrap over
sessions would give the same intervals at this size at many times the cost; the normal ones are checked for
their nominal coverage on repeated simulated logs (tests/test_ope.py). Heavy-tailed weights make any interval
unreliable: the effective sample size ``ESS = (sum w)^2 / sum w^2`` (Kong 1992) of the matched weights is
reported beside each estimate (for the list, over all session-position pairs: the effective number of matched
impressions).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.stats import norm

ESTIMATORS = ("ips", "snips", "dr", "ip_ips", "ip_dr")
#: which quantity each estimator estimates
TARGETS = {"ips": "top_slot", "snips": "top_slot", "dr": "top_slot", "ip_ips": "list", "ip_dr": "list"}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One estimator's value with its (1 - alpha) interval: ``value``, ``ci_low``/``ci_high``, standard error
    ``se``, the sessions ``n``, the matched (session, position) pairs ``matches``, the effective sample size
    ``ess`` of the importance weights."""

    estimator: str
    target: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    matches: int
    ess: float

    def covers(self, truth: float) -> bool:
        return bool(self.ci_low <= truth <= self.ci_high)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(logged: np.ndarray, click: np.ndarray, propensity: np.ndarray, target: np.ndarray):
    logged = np.asarray(logged, np.int64)
    click = np.asarray(click, np.float64)
    propensity = np.asarray(propensity, np.float64)
    target = np.asarray(target, np.int64)
    if logged.ndim != 2 or click.shape != logged.shape or propensity.shape != logged.shape:
        raise ValueError(f"ope: logged {logged.shape}, click {click.shape} and propensity {propensity.shape} "
                         "must be (S, L) each")
    if target.ndim != 2 or target.shape[0] != logged.shape[0] or target.shape[1] > logged.shape[1]:
        raise ValueError(f"ope: target {target.shape} must be (S, K) with K <= L = {logged.shape[1]}")
    shown = logged >= 0
    if (shown & ~((propensity > 0) & (propensity <= 1))).any():
        raise ValueError("ope: every logged propensity must be in (0, 1]")
    return logged, click, propensity, target, shown


def _weights(logged, propensity, target, shown) -> np.ndarray:
    """(S, K) ``1[a_sk = pi_k(x_s)] / p_k(a_sk | x_s)`` (0 where not logged or no target item)."""
    k = target.shape[1]
    match = shown[:, :k] & (logged[:, :k] == target) & (target >= 0)
    return np.where(match, 1.0 / np.where(shown[:, :k], propensity[:, :k], 1.0), 0.0)


def _ess(w: np.ndarray) -> float:
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def _normal(name: str, z: np.ndarray, alpha: float, matches: int, ess: float) -> Estimate:
    n = len(z)
    v = float(z.mean()) if n else float("nan")
    se = float(z.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    h = norm.ppf(1 - alpha / 2) * se
    return Estimate(name, TARGETS[name], v, v - h, v + h, se, n, matches, ess)


def ips(logged, click, propensity, target, alpha: float = 0.05) -> Estimate:
    """Top-slot IPS (see the module docstring)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    keep = shown[:, 0]
    w = _weights(logged, propensity, target, shown)[keep, 0]
    return _normal("ips", w * click[keep, 0], alpha, int((w > 0).sum()), _ess(w))


def snips(logged, click, propensity, target, alpha: float = 0.05) -> Estimate:
    """Top-slot self-normalized IPS with a delta-method interval (see the module docstring)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    keep = shown[:, 0]
    w = _weights(logged, propensity, target, shown)[keep, 0]
    c = click[keep, 0]
    sw = float(w.sum())
    n = int(keep.sum())
    if sw == 0:
        return Estimate("snips", "top_slot", float("nan"), float("nan"), float("nan"), float("nan"), n, 0, 0.0)
    v = float((w * c).sum() / sw)
    se = float(math.sqrt(((w * (c - v)) ** 2).sum()) / sw)
    h = norm.ppf(1 - alpha / 2) * se
    return Estimate("snips", "top_slot", v, v - h, v + h, se, n, int((w > 0).sum()), _ess(w))


def dr(logged, click, propensity, target, q_target: np.ndarray, q_logged: np.ndarray,
       alpha: float = 0.05) -> Estimate:
    """Top-slot doubly robust: ``q_target`` (S,) = q(x_s, pi(x_s), 0), ``q_logged`` (S,) = q(x_s, a_s, 0)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    keep = shown[:, 0]
    w = _weights(logged, propensity, target, shown)[keep, 0]
    qt = np.asarray(q_target, np.float64)[keep]
    ql = np.asarray(q_logged, np.float64)[keep]
    return _normal("dr", qt + w * (click[keep, 0] - ql), alpha, int((w > 0).sum()), _ess(w))


def _session_terms(terms: np.ndarray, shown_k: np.ndarray) -> np.ndarray:
    """(S,) ``z_s = sum_k (S / n_k) 1[s logs k] terms_sk``: the list estimate is their mean."""
    s = terms.shape[0]
    n_k = shown_k.sum(axis=0)  # (K,)
    scale = np.divide(s, n_k, out=np.zeros(len(n_k)), where=n_k > 0)
    return (np.where(shown_k, terms, 0.0) * scale).sum(axis=1)


def _per_position(name, terms: np.ndarray, shown_k: np.ndarray, w: np.ndarray, alpha: float) -> Estimate:
    return _normal(name, _session_terms(terms, shown_k), alpha, int((w > 0).sum()), _ess(w[shown_k]))


def item_position_terms(logged, click, propensity, target) -> np.ndarray:
    """(S,) the per-session terms whose mean is :func:`item_position_ips` (for paired differences)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    k = target.shape[1]
    w = _weights(logged, propensity, target, shown)
    return _session_terms(w * click[:, :k], shown[:, :k])


def paired_difference(z_a: np.ndarray, z_b: np.ndarray, alpha: float = 0.05) -> dict:
    """V_a - V_b of two policies estimated on the same sessions from their (S,) per-session terms, with the
    normal interval of the paired difference (the two estimates share the sessions, so their errors are
    correlated: the paired interval is the right one, not two separate intervals)."""
    d = np.asarray(z_a, np.float64) - np.asarray(z_b, np.float64)
    v = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    h = norm.ppf(1 - alpha / 2) * se
    return {"difference": v, "ci_low": v - h, "ci_high": v + h, "se": se, "n": int(len(d))}


def item_position_ips(logged, click, propensity, target, alpha: float = 0.05) -> Estimate:
    """Expected clicks on the target's top K under the item-position model, IPS (see the module docstring)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    k = target.shape[1]
    w = _weights(logged, propensity, target, shown)
    return _per_position("ip_ips", w * click[:, :k], shown[:, :k], w, alpha)


def item_position_dr(logged, click, propensity, target, q_target: np.ndarray, q_logged: np.ndarray,
                     alpha: float = 0.05) -> Estimate:
    """The item-position estimator with a reward-model control variate: ``q_target`` (S, K) = q(pi_k, k),
    ``q_logged`` (S, K) = q(a_sk, k)."""
    logged, click, propensity, target, shown = _check(logged, click, propensity, target)
    k = target.shape[1]
    w = _weights(logged, propensity, target, shown)
    qt = np.where(target >= 0, np.asarray(q_target, np.float64), 0.0)
    terms = qt + w * (click[:, :k] - np.asarray(q_logged, np.float64))
    return _per_position("ip_dr", terms, shown[:, :k], w, alpha)


# ----------------------------------------------------------------------------------------------------------
# the reward model of the doubly robust estimators


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """A position-based click model ``q(a, k) = theta_k * gamma_a`` (context-free).

    ``theta`` (L,): position effect, ``theta_0 = 1``, ``theta_k = CTR at k / CTR at 0`` over the log;
    ``gamma`` (A,): per item code, the click rate at position 0 shrunk to the overall position-0 rate with
    ``prior`` pseudo-impressions: ``gamma_a = (sum_{rows of a} c + prior * ctr_0) / (sum_{rows of a} theta_k +
    prior)``; items never logged get ``ctr_0``."""

    theta: np.ndarray
    gamma: np.ndarray
    base: float

    def predict(self, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        items = np.asarray(items, np.int64)
        g = np.where((items >= 0) & (items < len(self.gamma)), self.gamma[np.clip(items, 0, len(self.gamma) - 1)],
                     self.base)
        return g * self.theta[np.asarray(positions, np.int64)]


def fit_reward_model(logged, click, n_items: int, prior: float = 20.0) -> RewardModel:
    """Fit :class:`RewardModel` on (S, L) logged item codes (< ``n_items``; -1 none) and clicks."""
    logged = np.asarray(logged, np.int64)
    click = np.asarray(click, np.float64)
    shown = logged >= 0
    n_k = shown.sum(axis=0)
    ctr_k = np.divide(np.where(shown, click, 0).sum(axis=0), n_k, out=np.zeros(logged.shape[1]), where=n_k > 0)
    base = float(ctr_k[0]) if n_k[0] else float(ctr_k.max(initial=0.0))
    theta = np.divide(ctr_k, base, out=np.ones_like(ctr_k), where=base > 0)
    theta[0] = 1.0
    pos = np.broadcast_to(np.arange(logged.shape[1]), logged.shape)
    a, c, t = logged[shown], click[shown], theta[pos[shown]]
    num = np.bincount(a, weights=c, minlength=n_items) + prior * base
    den = np.bincount(a, weights=t, minlength=n_items) + prior
    return RewardModel(theta=theta, gamma=num / den, base=base)


def cross_fitted_q(logged, click, target, n_items: int, folds: int = 2, seed: int = 0,
                   prior: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(q_target (S, K), q_logged (S, K)): the reward model's predictions for the target's and the logged items
    at each position, each session's from a model fitted on the other folds (sessions split at random into
    ``folds``; Chernozhukov et al. 2018, "Double/debiased machine learning", cross-fitting)."""
    logged = np.asarray(logged, np.int64)
    target = np.asarray(target, np.int64)
    s, k = target.shape
    fold = np.random.default_rng(seed).permutation(s) % max(folds, 1)
    qt = np.zeros((s, k))
    ql = np.zeros((s, k))
    pos = np.broadcast_to(np.arange(k), (s, k))
    for f in range(max(folds, 1)):
        test = fold == f
        train = ~test if folds > 1 else test
        m = fit_reward_model(logged[train], np.asarray(click)[train], n_items, prior)
        qt[test] = m.predict(target[test], pos[test])
        ql[test] = m.predict(logged[test, :k], pos[test])
    return qt, ql


def estimate_all(logged, click, propensity, target, n_items: int, alpha: float = 0.05, seed: int = 0,
                 ranked_list: bool = True) -> dict[str, Estimate]:
    """Every estimator of :data:`ESTIMATORS` for one target policy; ``ranked_list`` False leaves out the list
    estimators (a log whose propensities are valid for position 0 only). ``seed`` draws the cross-fitting
    folds."""
    qt, ql = cross_fitted_q(logged, click, target, n_items, seed=seed)
    out = {
        "ips": ips(logged, click, propensity, target, alpha),
        "snips": snips(logged, click, propensity, target, alpha),
        "dr": dr(logged, click, propensity, target, qt[:, 0], ql[:, 0], alpha),
    }
    if ranked_list:
        out["ip_ips"] = item_position_ips(logged, click, propensity, target, alpha)
        out["ip_dr"] = item_position_dr(logged, click, propensity, target, qt, ql, alpha)
    return out


__all__ = ["ESTIMATORS", "Estimate", "RewardModel", "cross_fitted_q", "dr", "estimate_all", "fit_reward_model",
           "ips", "item_position_dr", "item_position_ips", "item_position_terms", "paired_difference", "snips"]
