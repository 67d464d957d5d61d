r"""Statistics of a comparison of ranking systems on the same users over training seeds (no engine needed).

Shapes: ``S`` seeds (training replicates), ``B`` users. The data of one comparison (a system against the
reference on one metric) is the paired difference ``d[s, u] = reference[s, u] - system[s, u]`` (S, B): every
seed's systems are evaluated on the same users, so users are *crossed* with seeds.

**Model.** ``d[s, u] = delta + a_u + b_s + e_su`` with user effects ``a_u ~ (0, sa2)``, seed effects
``b_s ~ (0, sb2)`` and their interaction ``e_su ~ (0, se2)``, independent (the two-way crossed random-effects
model without replication; Searle, Casella & McCulloch, "Variance Components", 1992, section 4.7). The
estimate of ``delta`` is the grand mean ``dbar``, with

.. math:: \operatorname{Var}(\bar d) = \frac{\sigma_a^2}{B} + \frac{\sigma_b^2}{S} + \frac{\sigma_e^2}{SB}.

**Interval and test** (:func:`paired_diff`). With the two-way ANOVA mean squares
``MS_u = S * sum_u (dbar_u - dbar)^2 / (B - 1)`` (users), ``MS_s = B * sum_s (dbar_s - dbar)^2 / (S - 1)``
(seeds) and ``MS_e`` the residual one (df ``(B - 1)(S - 1)``), ``E[MS_u] = se2 + S sa2``,
``E[MS_s] = se2 + B sb2``, ``E[MS_e] = se2``, so

.. math:: \widehat{\operatorname{Var}}(\bar d) = \frac{MS_u + MS_s - MS_e}{SB}

is unbiased; a variance component estimated below 0 is set to 0 (``MS_u`` or ``MS_s`` replaced by ``MS_e``).
``SE = sqrt(Var)``; its degrees of freedom are Satterthwaite's,
``nu = (sum_i c_i MS_i)^2 / sum_i (c_i MS_i)^2 / df_i`` (Satterthwaite, "An approximate distribution of
estimates of variance components", Biometrics Bulletin 2(6), 1946). The ``1 - alpha`` interval is
``dbar +- t_{1-alpha/2, nu} SE`` and the two-sided p-value ``2 P(T_nu > |dbar| / SE)``. With one seed this is
exactly the paired t-test over users (``MS_u / B = s_d^2 / B``, ``nu = B - 1``). With few seeds and a seed
effect, ``nu`` falls towards ``S - 1`` and the interval widens accordingly: a difference that flips with the
training seed is not declared significant by the number of users alone.

The two-level bootstrap of :func:`two_level_bootstrap` (resample seeds, then users) is reported beside it. It
needs no normality, but with a handful of seeds its seed level has few distinct resamples and no
small-sample correction, so it under-covers when the seed effect matters (measured in tests/test_compare.py);
the t interval is the one the tests hold to the nominal rate and the one significance is decided on.

**Multiple testing** (:func:`holm`): Holm's step-down adjusted p-values across every (system, metric) test of
one report (Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 6(2), 1979):
with the m p-values sorted ``p_(1) <= ... <= p_(m)``, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. It
controls the family-wise error rate at ``alpha`` under any dependence between the tests.

**Minimum detectable effect** (:func:`mde`): the true difference a two-sided test of size ``alpha`` detects
with probability ``power``, ``MDE = (t_{1-alpha/2, nu} + t_{power, nu}) * SE`` (``z`` quantiles for large
``nu``: ``2.80 SE`` at alpha 0.05, power 0.8; Bloom, "Minimum detectable effects: a simple way to report the
statistical power of experimental designs", Evaluation Review 19(5), 1995; Kohavi, Tang & Xu, "Trustworthy
Online Controlled Experiments", 2020, ch. 17). An observed difference below the MDE that is "not significant"
is no evidence of no effect: the design could not have seen it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

#: default size of the tests and power of the minimum detectable effect
ALPHA = 0.05
POWER = 0.8


def _as_design(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2:
        raise ValueError(f"paired differences must be (S seeds, B users), got shape {d.shape}")
    if d.shape[0] < 1 or d.shape[1] < 2:
        raise ValueError(f"paired differences need >= 1 seed and >= 2 users, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite (no NaN)")
    return d


def _check_level(name: str, x: float) -> None:
    if not 0 < x < 1:
        raise ValueError(f"{name} must be in (0, 1), got {x}")


def bootstrap_means(d: np.ndarray, n_samples: int = 2000, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """(n_samples,) means of ``d`` (S, B) over two-level resamples: S seed rows, then B user columns, each
    with replacement, the same users for every drawn seed.

    A resample's mean is ``w_s^T d w_u / (S B)`` with the draw counts ``w_s`` (S,) and ``w_u`` (B,), computed
    ``chunk`` resamples at a time (memory ``chunk x B``)."""
    d = _as_design(d)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    s, b = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_samples, dtype=np.float64)
    for start in range(0, n_samples, chunk):
        n = min(chunk, n_samples - start)
        offs = np.arange(n)[:, None]
        ws = np.bincount((offs * s + rng.integers(0, s, (n, s))).ravel(), minlength=n * s).reshape(n, s)
        wu = np.bincount((offs * b + rng.integers(0, b, (n, b))).ravel(), minlength=n * b).reshape(n, b)
        out[start:start + n] = np.einsum("nb,nb->n", ws @ d, wu) / (s * b)
    return out


def two_level_bootstrap(d: np.ndarray, n_samples: int = 2000, seed: int = 0,
                        alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval of ``mean(d)`` for ``d`` (S, B) under resampling of seeds, then of users
    (:func:`bootstrap_means`; Davison & Hinkley, "Bootstrap Methods and their Application", 1997, section 3.8,
    for hierarchical data). With S = 1 it is the paired bootstrap over users."""
    _check_level("alpha", alpha)
    lo, hi = np.quantile(bootstrap_means(d, n_samples, seed), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class MeanSE:
    """The grand mean of a (S, B) design, its standard error and the SE's degrees of freedom, with the
    variance components (``user``: sa2, ``seed``: sb2, ``interaction``: se2; see the module docstring)."""

    mean: float
    se: float
    df: float
    components: dict


def mean_se(d: np.ndarray) -> MeanSE:
    """``dbar``, ``SE(dbar)`` and Satterthwaite's degrees of freedom for ``d`` (S, B) (module docstring)."""
    d = _as_design(d)
    s, b = d.shape
    mean = float(d.mean())
    u_mean = d.mean(axis=0)
    if s == 1:
        ms_u = float(np.var(d[0], ddof=1))
        se2 = ms_u / b
        return MeanSE(mean, math.sqrt(se2), float(b - 1), {"user": ms_u, "seed": 0.0, "interaction": 0.0})
    s_mean = d.mean(axis=1)
    ms_u = s * float(np.sum((u_mean - mean) ** 2)) / (b - 1)
    ms_s = b * float(np.sum((s_mean - mean) ** 2)) / (s - 1)
    resid = d - u_mean[None, :] - s_mean[:, None] + mean
    df_e = (b - 1) * (s - 1)
    ms_e = float(np.sum(resid ** 2)) / df_e
    # Var * S * B = MS_u + MS_s - MS_e, a component below 0 set to 0 (its mean square replaced by MS_e)
    terms = [(ms_u, b - 1)] if ms_u > ms_e else []
    terms += [(ms_s, s - 1)] if ms_s > ms_e else []
    coef = 1 - len(terms)  # MS_e enters with -1 (both above), 0 (one above) or +1 (none above)
    if coef:
        terms.append((coef * ms_e, df_e))
    total = sum(t for t, _ in terms)
    denom = sum(t * t / df for t, df in terms)
    df = total * total / denom if denom > 0 else float(df_e)
    comps = {"user": max(0.0, (ms_u - ms_e) / s), "seed": max(0.0, (ms_s - ms_e) / b), "interaction": ms_e}
    return MeanSE(mean, math.sqrt(max(total, 0.0) / (s * b)), float(df), comps)


def mde(se: float, df: float = math.inf, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect ``(t_{1-alpha/2, df} + t_{power, df}) * se`` of a two-sided test of size
    ``alpha`` with the given ``power`` (``df = inf``: normal quantiles, 2.8016 se at 0.05 / 0.8)."""
    _check_level("alpha", alpha)
    _check_level("power", power)
    dist = stats.norm if not math.isfinite(df) else stats.t(df)
    return float((dist.ppf(1 - alpha / 2) + dist.ppf(power)) * se)


def paired_diff(d: np.ndarray, alpha: float = ALPHA, power: float = POWER, n_samples: int = 2000,
                seed: int = 0) -> dict:
    """Everything reported for one paired comparison ``d`` (S, B) (see the module docstring).

    Returns ``{"diff", "se", "df", "ci_low", "ci_high", "p_value", "mde", "boot_low", "boot_high",
    "per_seed", "n_seeds", "n_users", "components"}``; ``boot_*`` is the two-level bootstrap interval
    (omitted when ``n_samples`` is 0)."""
    d = _as_design(d)
    _check_level("alpha", alpha)
    m = mean_se(d)
    if m.se > 0:
        half = float(stats.t.ppf(1 - alpha / 2, m.df) * m.se)
        p = float(2 * stats.t.sf(abs(m.mean) / m.se, m.df))
    else:  # every difference equal
        half, p = 0.0, (1.0 if m.mean == 0 else 0.0)
    out = {"diff": m.mean, "se": m.se, "df": m.df, "ci_low": m.mean - half, "ci_high": m.mean + half,
           "p_value": p, "mde": mde(m.se, m.df, alpha, power), "per_seed": d.mean(axis=1).tolist(),
           "n_seeds": int(d.shape[0]), "n_users": int(d.shape[1]), "components": m.components}
    if n_samples:
        out["boot_low"], out["boot_high"] = two_level_bootstrap(d, n_samples, seed, alpha)
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as ``p_values``, any shape): with the m values sorted
    ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Reject at FWER ``alpha`` where
    ``adj <= alpha``. Holm 1979 (module docstring)."""
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    if np.any(~np.isfinite(flat)) or np.any((flat < 0) | (flat > 1)):
        raise ValueError("holm: p-values must be in [0, 1]")
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
    adj = np.empty(m)
    adj[order] = np.maximum.accumulate(scaled)
    return adj.reshape(p.shape)




# ----------------------------------------------------------------------------------------------------------
# a report's comparisons: every system against the reference on every metric, and per segment


def _design(reps: list, key: str, s: int, name: str) -> np.ndarray:
    """(S, B) values of ``key`` from a system's replicates (one replicate is used for every seed)."""
    rows = np.stack([np.asarray(r[key], dtype=np.float64) for r in reps])
    if len(rows) == s:
        return rows
    if len(rows) == 1:
        return np.repeat(rows, s, axis=0)
    raise ValueError(f"system {name!r} has {len(rows)} replicates; expected 1 or {s} (the most any system has)")


def compare_systems(values: dict, reference: str, metrics, segments: dict | None = None, alpha: float = ALPHA,
                    power: float = POWER, n_samples: int = 2000, seed: int = 0) -> dict:
    """Every system against ``reference`` on every metric, paired over users and seeds, Holm-corrected.

    Args:
        values: ``{system: [{key: (B,) per-user values}, ...]}``, one dict per replicate (training seed), the
            same B users in every one; a system has 1 replicate (a deterministic baseline, or one bundle: its
            values are paired with every seed of the others) or S, the most any system has.
        reference: the system every other one is compared with; differences are ``system - reference``.
        metrics: keys of ``values`` compared over all users.
        segments: ``{segment: (mask (B,) bool, {metric: key})}``: the users of a segment and, per metric, the
            key of the per-user values there (e.g. warm users: the metric itself; head items: a recall computed
            on the head items only).

    Returns ``{"reference", "n_seeds", "n_users", "alpha", "power", "systems", "paired", "segments"}``:
    ``systems[name][metric] = {"mean", "per_seed", "replicates"}``; ``paired[name][metric]`` is
    :func:`paired_diff` plus ``p_holm`` (Holm over every (system, metric) of ``paired``) and ``significant``
    (``p_holm <= alpha``); ``segments[segment] = {"n_users", "paired": {name: {metric: ...}}}`` the same with
    Holm over every test of ``segments`` (a second family).
    """
    _check_level("alpha", alpha)
    if reference not in values:
        raise ValueError(f"reference {reference!r} is not among the systems {sorted(values)}")
    if not values[reference]:
        raise ValueError(f"reference {reference!r} has no replicate")
    s = max(len(v) for v in values.values())
    n_users = len(next(iter(values[reference][0].values())))
    out: dict = {"reference": reference, "n_seeds": s, "n_users": int(n_users), "alpha": alpha, "power": power,
                 "systems": {}, "paired": {}, "segments": {}}
    for name, reps in values.items():
        out["systems"][name] = {}
        for m in metrics:
            x = _design(reps, m, s, name)
            out["systems"][name][m] = {"mean": float(x.mean()), "per_seed": x.mean(axis=1).tolist(),
                                       "replicates": len(reps)}
    others = [n for n in values if n != reference]

    def family(cells):  # [(system, metric, d)] -> the paired dicts, Holm over the family
        res = [paired_diff(d, alpha, power, n_samples, seed) for _, _, d in cells]
        adj = holm([r["p_value"] for r in res]) if res else []
        for r, a in zip(res, adj):
            r["p_holm"] = float(a)
            r["significant"] = bool(a <= alpha)
        return res

    cells = [(n, m, _design(values[n], m, s, n) - _design(values[reference], m, s, reference))
             for n in others for m in metrics]
    for (n, m, _), r in zip(cells, family(cells)):
        out["paired"].setdefault(n, {})[m] = r
    seg_cells = []
    for seg, (mask, keys) in (segments or {}).items():
        mask = np.asarray(mask, dtype=bool)
        out["segments"][seg] = {"n_users": int(mask.sum()), "paired": {}}
        if mask.sum() < 2:
            continue
        for n in others:
            for m, key in keys.items():
                a, ref = _design(values[n], key, s, n)[:, mask], _design(values[reference], key, s, reference)[:, mask]
                seg_cells.append((seg, n, m, a - ref, float(ref.mean()), float(a.mean())))
    res = family([(None, None, c[3]) for c in seg_cells])
    for (seg, n, m, _, ref_mean, mean), r in zip(seg_cells, res):
        out["segments"][seg]["paired"].setdefault(n, {})[m] = {"reference_mean": ref_mean, "mean": mean, **r}
    return out


__all__ = ["ALPHA", "POWER", "MeanSE", "bootstrap_means", "compare_systems", "holm", "mde", "mean_se", "paired_diff",
           "two_level_bootstrap"]
